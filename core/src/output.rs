//! Writing a large file the binaries produce (an installer, a delta, a completed installer):
//! under a temporary name beside it, made executable and renamed into place only when complete,
//! removed otherwise, so a failure never leaves a partial file at the output's name. Small files
//! written from memory use [`crate::fs::write_atomic`].

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why an output cannot be written in place.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output has no file name.
    #[error("{} is not a file name", output.display())]
    OutputName {
        /// The output path.
        output: PathBuf,
    },
    /// The output is a directory.
    #[error("output {} is a directory", output.display())]
    OutputIsDir {
        /// The output path.
        output: PathBuf,
    },
    /// The temporary output cannot be created.
    #[error("cannot write the output: creating {}", path.display())]
    Create {
        /// The temporary output.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The temporary output cannot be made executable.
    #[error("setting mode of {}", path.display())]
    Chmod {
        /// The temporary output.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The temporary output cannot be renamed into place.
    #[error("renaming {} to {}", from.display(), to.display())]
    Rename {
        /// The temporary output.
        from: PathBuf,
        /// The output.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A temporary file beside an output, deleted on drop unless kept.
pub struct TempOutput {
    /// Its path.
    pub path: PathBuf,
    keep: bool,
}

impl TempOutput {
    /// Creates (truncating) the temporary file `purpose` writes for `output`.
    pub fn create(output: &Path, purpose: &str) -> Result<(File, TempOutput), OutputError> {
        let guard = TempOutput::named(output, purpose)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&guard.path)
            .map_err(|source| OutputError::Create { path: guard.path.clone(), source })?;
        Ok((file, guard))
    }

    /// The temporary name `purpose` uses for `output`, removed on drop; nothing is created.
    pub fn named(output: &Path, purpose: &str) -> Result<TempOutput, OutputError> {
        let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = output.file_name().ok_or_else(|| OutputError::OutputName { output: output.into() })?;
        if output.is_dir() {
            return Err(OutputError::OutputIsDir { output: output.into() });
        }
        let path = dir.join(format!(".{}.ferry-{purpose}-{}", name.to_string_lossy(), std::process::id()));
        Ok(TempOutput { path, keep: false })
    }

    /// Makes the written file executable and renames it to `output`.
    pub fn finish(mut self, output: &Path) -> Result<(), OutputError> {
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755))
            .map_err(|source| OutputError::Chmod { path: self.path.clone(), source })?;
        std::fs::rename(&self.path, output).map_err(|source| OutputError::Rename {
            from: self.path.clone(),
            to: output.into(),
            source,
        })?;
        self.keep = true;
        // The rename is durable only once the directory is; a failure here loses nothing.
        let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
