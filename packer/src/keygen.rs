//! `ferry keygen`: a signing key pair. The private key never leaves the file it is written to,
//! and that file is created with mode 0600 before any key byte is written.

use crate::cli::KeygenArgs;
use anyhow::{Context, Result, bail};
use ferry_stub::printer::Printer;
use payload_format::SecretKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Runs `keygen`.
pub fn run(args: &KeygenArgs, printer: &Printer) -> Result<()> {
    let base = args.output.to_string_lossy().trim_end_matches(".key").to_string();
    let key_path = PathBuf::from(format!("{base}.key"));
    let pub_path = PathBuf::from(format!("{base}.pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() && !args.force {
            bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    let key = SecretKey::generate()?;
    let comment = Path::new(&base).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    write_atomically(&key_path, key.to_pem().as_bytes(), 0o600)?;
    write_atomically(&pub_path, key.public().to_openssh(&format!("ferry:{comment}")).as_bytes(), 0o644)?;
    printer.out(format!("private key: {} (keep it secret)", key_path.display()));
    printer.out(format!("public key:  {}", pub_path.display()));
    printer.out(format!("fingerprint: {}", key.public().fingerprint()));
    Ok(())
}

/// Writes `data` to a temporary file created with `mode`, then renames it over `path`.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("a file name is required")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
