//! `ferry build --base OLD`: the release written as a differential installer carrying only what
//! OLD lacks (the format's `write_delta`), the complete installer kept only when asked for.
//!
//! Owns the command's side of it: the base opened and refused early (before any image is
//! fetched), the temporary complete installer, the delta written atomically beside the output.

use crate::builder::{BuildError, TempOutput, temp_path};
use payload_format::{DeltaSummary, Payload, SecretKey};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The base, opened: an installer (its index checked against its trailer) and not itself a delta.
pub(crate) fn open_base(path: &Path) -> Result<Payload, BuildError> {
    let base = Payload::open(path)?;
    if base.delta_record()?.is_some() {
        return Err(BuildError::DeltaBase { path: path.into() });
    }
    Ok(base)
}

/// Where the complete installer goes while the delta is made from it: `kept` when asked for,
/// else a temporary name beside the output, removed when the returned guard drops.
pub(crate) fn complete_path(output: &Path, kept: Option<&Path>) -> Result<(PathBuf, Option<TempOutput>), BuildError> {
    match kept {
        Some(path) => Ok((path.to_path_buf(), None)),
        None => {
            let path = temp_path(output, "complete")?;
            Ok((path.clone(), Some(TempOutput { path, keep: false })))
        }
    }
}

/// Writes the delta from `complete` (a finished installer) and `base` to `output`, atomically.
pub(crate) fn write(
    output: &Path,
    complete: &Path,
    base: &Payload,
    key: Option<&SecretKey>,
) -> Result<DeltaSummary, BuildError> {
    let complete = Payload::open(complete)?;
    let tmp = temp_path(output, "build")?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|source| BuildError::Create { path: tmp.clone(), source })?;
    let mut guard = TempOutput { path: tmp.clone(), keep: false };
    let summary = payload_format::write_delta(&complete, base, file, &tmp, key)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|source| BuildError::Chmod { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, output).map_err(|source| BuildError::Rename {
        from: tmp.clone(),
        to: output.into(),
        source,
    })?;
    guard.keep = true;
    Ok(summary)
}
