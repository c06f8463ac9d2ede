//! Which signing keys the operator trusts: `--key` files, `FERRY_TRUSTED_KEYS`, and
//! `/etc/ferry/trusted-keys/`.

use anyhow::{Context, Result};
use payload_format::PublicKey;
use std::path::{Path, PathBuf};

/// System-wide directory of trusted `*.pub` keys.
pub const TRUSTED_KEYS_DIR: &str = "/etc/ferry/trusted-keys";

/// Collects trusted keys from explicit files, the environment and the system directory.
pub fn trusted_keys(explicit: &[PathBuf]) -> Result<Vec<PublicKey>> {
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
                .with_context(|| format!("reading trusted-key directory {}", src.display()))?
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
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading public key {}", path.display()))?;
    Ok(PublicKey::parse(&text, path)?)
}
