//! Where verified blobs wait until the installer is written: a temporary directory next to the
//! output (same filesystem, so gigabytes of layers do not land on a tmpfs `/tmp`), plus slices of
//! local files (OCI layouts and docker archives are read in place, never copied).

use sha2::Digest as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// `size` bytes at `offset` of `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The file.
    pub path: PathBuf,
    /// Where the bytes start.
    pub offset: u64,
    /// How many bytes.
    pub size: u64,
}

impl Slice {
    /// A reader over the slice.
    pub fn open(&self) -> std::io::Result<std::io::Take<std::fs::File>> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f.take(self.size))
    }

    /// The whole slice in memory (manifests and configs only; they are small).
    pub fn read(&self, limit: u64) -> Result<Vec<u8>, StoreError> {
        if self.size > limit {
            return Err(StoreError::TooLarge { size: self.size, limit });
        }
        let mut out = Vec::with_capacity(self.size as usize);
        self.open().and_then(|mut r| r.read_to_end(&mut out)).map_err(|source| StoreError::Io {
            step: "reading",
            path: self.path.clone(),
            source,
        })?;
        if out.len() as u64 != self.size {
            return Err(StoreError::Short { path: self.path.clone() });
        }
        Ok(out)
    }

    /// Hashes the slice, failing unless it is `size` bytes hashing to `digest`.
    pub fn verify(&self, digest: &str, progress: &(dyn Fn(u64) + Sync)) -> Result<(), StoreError> {
        let read = |source| StoreError::Io { step: "reading", path: self.path.clone(), source };
        let mut r = self.open().map_err(read)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(read)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n as u64;
            progress(n as u64);
        }
        if got != self.size {
            return Err(StoreError::Size { path: self.path.clone(), got, want: self.size });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(StoreError::Digest { path: self.path.clone(), actual });
        }
        Ok(())
    }
}

/// A stored blob that is not what its descriptor says, or cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// `reading`.
        step: &'static str,
        /// The blob file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing a blob failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The blob file.
        path: PathBuf,
        /// Why.
        source: ferry_core::fs::WriteError,
    },
    /// The temporary directory cannot be created.
    #[error("creating a temporary directory for images in {}", parent.display())]
    TempDir {
        /// Where it was to be.
        parent: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// Larger than a document of its kind may be.
    #[error("{size} bytes, more than the {limit} expected")]
    TooLarge {
        /// Its length.
        size: u64,
        /// The most expected.
        limit: u64,
    },
    /// Shorter than its descriptor says.
    #[error("{} ends early", path.display())]
    Short {
        /// The blob file.
        path: PathBuf,
    },
    /// Another length than the descriptor's.
    #[error("{} holds {got} bytes of it, its descriptor says {want}", path.display())]
    Size {
        /// The blob file.
        path: PathBuf,
        /// Its length.
        got: u64,
        /// The descriptor's.
        want: u64,
    },
    /// Another digest than the descriptor's.
    #[error("its content in {} hashes to {actual}", path.display())]
    Digest {
        /// The blob file.
        path: PathBuf,
        /// What it hashes to.
        actual: String,
    },
}

/// The temporary blob directory; removed when dropped.
pub struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    /// Creates the directory inside `parent`.
    pub fn new_in(parent: &Path) -> Result<Store, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix(".ferry-images-")
            .tempdir_in(parent)
            .map_err(|cause| StoreError::TempDir { parent: parent.to_path_buf(), cause })?;
        Ok(Store { dir })
    }

    /// Where blob `digest` is (or will be) stored.
    pub fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.path().join(digest.replace(':', "-"))
    }

    /// Stores small bytes already verified against `digest` (manifests); idempotent.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<Slice, StoreError> {
        let path = self.path_for(digest);
        if !path.exists() {
            // Atomic: another thread may store the same manifest at the same time.
            ferry_core::fs::write_atomic(&path, bytes, 0o666)
                .map_err(|source| StoreError::Write { path: path.clone(), source })?;
        }
        Ok(Slice { path, offset: 0, size: bytes.len() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new_in(dir.path()).unwrap();
        let data = b"hello blob";
        let digest = crate::images::oci::digest_of(data);
        let s = store.put(&digest, data).unwrap();
        assert!(s.verify(&digest, &|_| {}).is_ok());
        assert_eq!(s.read(100).unwrap(), data);
        let inner = Slice { path: s.path.clone(), offset: 6, size: 4 };
        assert_eq!(inner.read(100).unwrap(), b"blob");
        assert!(inner.verify(&digest, &|_| {}).unwrap_err().to_string().contains("hashes to"));
        let long = Slice { path: s.path.clone(), offset: 6, size: 40 };
        assert!(
            long.verify(&crate::images::oci::digest_of(b"blob"), &|_| {})
                .unwrap_err()
                .to_string()
                .contains("descriptor says 40")
        );
        let path = s.path.clone();
        drop(store);
        assert!(!path.exists(), "the store is removed with it");
    }
}
