//! Owns the one way ferry replaces a file: written whole under a temporary name beside it,
//! flushed, then renamed over the target, so a reader sees the old file or the new one, never
//! half of either.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The path names no file.
    #[error("{}: a file name is required", .0.display())]
    NoFileName(PathBuf),
    /// A step of the write failed.
    #[error("{step} {}", path.display())]
    Io {
        /// `creating`, `writing`, `flushing` or `renaming … to`.
        step: String,
        /// The file the step was about.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// Distinguishes concurrent writes of one file by one process (blob stores write from threads).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` atomically. The temporary file is created fresh with `mode` (before
/// any byte is written, so a private key is never readable by others, even for an instant; the
/// umask applies as usual) and removed again when anything fails. The parent directory must
/// exist.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| WriteError::NoFileName(path.to_path_buf()))?.to_string_lossy();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
    let io = |step: &str, p: &Path| {
        let (step, path) = (step.to_string(), p.to_path_buf());
        move |source| WriteError::Io { step, path, source }
    };
    let result = (|| {
        // create_new: a stale temporary file of another mode is never reused.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(data).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("flushing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io(&format!("renaming {} to", tmp.display()), path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // The rename itself survives a crash only once the directory is flushed; a directory that
    // cannot be opened for that (some filesystems) still has the new file.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.toml");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    }

    #[test]
    fn private_files_get_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write_atomic(&p, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn failures_name_the_file_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/f");
        let e = write_atomic(&p, b"x", 0o644).unwrap_err().to_string();
        assert!(e.starts_with("creating ") && e.contains("missing/.f.tmp-"), "{e}");
        let target_is_dir = dir.path().join("d");
        std::fs::create_dir_all(target_is_dir.join("inner")).unwrap();
        assert!(write_atomic(&target_is_dir, b"x", 0o644).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only `d`: the temporary file is gone");
    }
}
