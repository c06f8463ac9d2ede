//! `verify`: trailer, index and signature first, then the program's own bytes, then every chunk
//! of every entry on all cores. Exit status 0 only when all of it holds.

use crate::cli::VerifyArgs;
use crate::printer::Printer;
use crate::{trust, units};
use anyhow::Result;
use payload_format::{Payload, SignatureStatus, TrustPolicy};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What a successful verification established.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// The file verified.
    pub file: String,
    /// `trusted`, `valid-unpinned` or `unsigned`.
    pub signature: &'static str,
    /// Signer fingerprint, when signed.
    pub signer: Option<String>,
    /// Number of entries.
    pub entries: usize,
    /// Number of chunks hashed.
    pub chunks: u64,
    /// Bytes hashed (stub and data).
    pub bytes: u64,
    /// Images the bundle lacks (built with `--allow-missing-images`).
    pub missing_images: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Opens the payload at `path`; the running installer's own file is named by its real path.
pub fn open_payload(path: &Path) -> Result<Payload> {
    if path == Path::new(crate::SELF_EXE) {
        let shown = std::env::current_exe().unwrap_or_else(|_| path.to_path_buf());
        let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", shown.display()))?;
        Ok(Payload::from_file(file, &shown)?)
    } else {
        Ok(Payload::open(path)?)
    }
}

/// Runs `verify` and prints the outcome.
pub fn run(path: &Path, args: &VerifyArgs, printer: &Printer) -> Result<()> {
    match verify(path, &args.keys, args.allow_unsigned, printer) {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"ok": true, "report": report}))?);
            }
            Ok(())
        }
        Err(err) => {
            if args.json {
                println!("{}", serde_json::json!({"ok": false, "error": format!("{err:#}")}));
            }
            Err(err)
        }
    }
}

/// Verifies the file and returns what was established.
pub fn verify(
    path: &Path,
    keys: &[std::path::PathBuf],
    allow_unsigned: bool,
    printer: &Printer,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let policy = TrustPolicy { trusted: trust::trusted_keys(keys)?, allow_unsigned };
    let payload = open_payload(path)?;
    let shown = payload.path().display().to_string();
    let index = payload.index();
    printer.out(format!("verifying {shown}"));
    printer.out(format!(
        "  trailer and index  ok (format v{}, {} entries, {} stored)",
        payload.trailer().version,
        index.entries.len(),
        units::bytes(index.total_stored())
    ));
    let status = payload.check_signature(&policy)?;
    let (signature, signer) = match &status {
        SignatureStatus::Trusted(k) => {
            printer.out(format!("  signature          ok, signed by {} (trusted)", k.fingerprint()));
            ("trusted", Some(k.fingerprint()))
        }
        SignatureStatus::ValidUnpinned(k) => {
            printer.out(format!("  signature          ok, signed by {}", k.fingerprint()));
            printer.warn(format!(
                "no trusted keys given: the signature is valid, but only `--key NAME.pub` (or {} / FERRY_TRUSTED_KEYS) proves it is the key you expect",
                trust::TRUSTED_KEYS_DIR
            ));
            ("valid-unpinned", Some(k.fingerprint()))
        }
        SignatureStatus::Unsigned => {
            printer.warn(format!(
                "{shown} is UNSIGNED: nothing proves who built it (accepted because of --allow-unsigned)"
            ));
            ("unsigned", None)
        }
    };
    payload.verify_stub()?;
    printer.out(format!("  installer program  ok ({} bytes)", payload.trailer().data_offset));
    let data_len = payload.trailer().index_offset - payload.trailer().data_offset;
    let progress = printer.progress(data_len, "verify");
    let result = payload.verify_chunks(&|n| progress.inc(n));
    progress.finish();
    result?;
    let chunks = payload.chunk_count();
    printer.out(format!(
        "  data               ok ({chunks} chunks, {} verified on {} threads)",
        units::bytes(data_len),
        rayon_threads()
    ));
    let missing_images = missing_images(&payload);
    for image in &missing_images {
        printer.warn(format!("the bundle lacks image {image} (built with --allow-missing-images)"));
    }
    let seconds = started.elapsed().as_secs_f64();
    match &signer {
        Some(fp) => printer.out(format!("OK: {shown} is intact and signed by {fp} ({seconds:.1} s)")),
        None => printer.out(format!("OK: {shown} is intact but UNSIGNED ({seconds:.1} s)")),
    }
    Ok(VerifyReport {
        file: shown,
        signature,
        signer,
        entries: index.entries.len(),
        chunks,
        bytes: data_len + payload.trailer().data_offset,
        missing_images,
        seconds,
    })
}

/// Image references the index records as missing.
pub fn missing_images(payload: &Payload) -> Vec<String> {
    payload
        .index()
        .metadata
        .extra
        .get("missingImages")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
