//! Owns which signing keys the operator trusts: `--key` files, `FERRY_TRUSTED_KEYS`, and
//! `/etc/ferry/trusted-keys/`.

use payload_format::PublicKey;
use std::path::{Path, PathBuf};

/// System-wide directory of trusted `*.pub` keys.
pub const TRUSTED_KEYS_DIR: &str = "/etc/ferry/trusted-keys";

/// A trusted key that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A directory of keys could not be listed.
    #[error("reading trusted-key directory {}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("reading public key {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not a key.
    #[error(transparent)]
    Parse(#[from] payload_format::Error),
}

/// Collects trusted keys from explicit files, the environment and the system directory.
pub fn trusted_keys(explicit: &[PathBuf]) -> Result<Vec<PublicKey>, TrustError> {
    let mut sources: Vec<PathBuf> = explicit.to_vec();
    if let Some(env) = std::env::var_os("FERRY_TRUSTED_KEYS") {
        sources.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    let system = Path::new(TRUSTED_KEYS_DIR);
    if system.is_dir() {
        sources.push(system.to_path_buf());
    }
    let mut keys = Vec::new();
    for src in sources {
        if src.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
                .map_err(|source| TrustError::Dir { path: src.clone(), source })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect();
            files.sort();
            for f in files {
                keys.push(load_public_key(&f)?);
            }
        } else {
            keys.push(load_public_key(&src)?);
        }
    }
    keys.dedup();
    Ok(keys)
}

/// Reads one public key file.
pub fn load_public_key(path: &Path) -> Result<PublicKey, TrustError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read { path: path.to_path_buf(), source })?;
    Ok(PublicKey::parse(&text, path)?)
}
