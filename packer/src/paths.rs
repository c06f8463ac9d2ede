//! Paths a spec names: relative to the spec's directory, existing, and inside it.

use std::path::{Path, PathBuf};

/// A path of the spec that cannot be used. Each variant names the spec file, the field and the
/// path as written.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// An absolute path.
    #[error("{}: {field} `{rel}` must be relative to the spec's directory", file.display())]
    Absolute {
        /// The spec file.
        file: PathBuf,
        /// The field, e.g. `spec.rootfs[0].path`.
        field: String,
        /// The path as written.
        rel: String,
    },
    /// A path that does not exist (or cannot be resolved).
    #[error("{}: {field} `{rel}` does not exist ({})", file.display(), joined.display())]
    Missing {
        /// The spec file.
        file: PathBuf,
        /// The field.
        field: String,
        /// The path as written.
        rel: String,
        /// Where it was looked for.
        joined: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A path leading out of the spec's directory.
    #[error(
        "{}: {field} `{rel}` escapes the spec's directory {} (it resolves to {})",
        file.display(),
        dir.display(),
        real.display()
    )]
    Escapes {
        /// The spec file.
        file: PathBuf,
        /// The field.
        field: String,
        /// The path as written.
        rel: String,
        /// The spec's directory.
        dir: PathBuf,
        /// Where it leads.
        real: PathBuf,
    },
}

/// Resolves `rel` (from field `field` of spec `file`) against the spec directory `dir`
/// (canonical), refusing paths that do not exist or that lead outside it.
pub fn resolve_inside(file: &Path, dir: &Path, field: &str, rel: &str) -> Result<PathBuf, PathError> {
    let (file, field, rel_s) = (file.to_path_buf(), field.to_string(), rel.to_string());
    if Path::new(rel).is_absolute() {
        return Err(PathError::Absolute { file, field, rel: rel_s });
    }
    let joined = dir.join(rel);
    let real = match joined.canonicalize() {
        Ok(real) => real,
        Err(source) => return Err(PathError::Missing { file, field, rel: rel_s, joined, source }),
    };
    if !real.starts_with(dir) {
        return Err(PathError::Escapes { file, field, rel: rel_s, dir: dir.to_path_buf(), real });
    }
    Ok(real)
}
