//! `ferry keygen`: a signing key pair. The private key never leaves the file it is written to,
//! and that file is created with mode 0600 before any key byte is written.

use crate::cli::KeygenArgs;
use anyhow::{Result, bail};
use ferry_core::fs::write_atomic;
use ferry_core::printer::Printer;
use payload_format::SecretKey;
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
    write_atomic(&key_path, key.to_pem().as_bytes(), 0o600)?;
    write_atomic(&pub_path, key.public().to_openssh(&format!("ferry:{comment}")).as_bytes(), 0o644)?;
    printer.out(format!("private key: {} (keep it secret)", key_path.display()));
    printer.out(format!("public key:  {}", pub_path.display()));
    printer.out(format!("fingerprint: {}", key.public().fingerprint()));
    Ok(())
}
