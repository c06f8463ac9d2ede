//! Owns `verify`, for `ferry verify FILE` and `./installer verify` alike: trailer, index and
//! signature first, then the program's own bytes, then every chunk of every entry on all
//! cores. Success only when all of it holds.

use crate::printer::{Printer, error_chain, stdout_line};
use crate::trust::{self, TrustError};
use crate::{metadata, units};
use payload_format::{Payload, SignatureStatus, TrustPolicy};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `verify` is asked (the binaries fill it from their command lines).
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Trusted public key files or directories, beside the environment's and the system's.
    pub keys: Vec<PathBuf>,
    /// Accept a file with no signature (still reported loudly).
    pub allow_unsigned: bool,
    /// Print the result as JSON on stdout.
    pub json: bool,
}

/// Why a file did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A trusted key could not be read.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The file is damaged, tampered with or not trusted.
    #[error(transparent)]
    Payload(#[from] payload_format::Error),
    /// The signed metadata holds a value this build cannot read.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
}

/// The file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The running installer's own file.
    #[error("opening {}: {cause}", shown.display())]
    SelfExe {
        /// The installer's real path.
        shown: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Any other file.
    #[error(transparent)]
    Payload(#[from] payload_format::Error),
}

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
pub fn open_payload(path: &Path) -> Result<Payload, OpenError> {
    if path == Path::new(crate::SELF_EXE) {
        let shown = std::env::current_exe().unwrap_or_else(|_| path.to_path_buf());
        let file = std::fs::File::open(path).map_err(|cause| OpenError::SelfExe { shown: shown.clone(), cause })?;
        Ok(Payload::from_file(file, &shown)?)
    } else {
        Ok(Payload::open(path)?)
    }
}

/// Runs `verify` and prints the outcome (as JSON too when asked).
pub fn run(path: &Path, opts: &VerifyOptions, printer: &Printer) -> Result<(), VerifyError> {
    match verify(path, &opts.keys, opts.allow_unsigned, printer) {
        Ok(report) => {
            if opts.json {
                let doc = serde_json::json!({"ok": true, "report": report});
                stdout_line(&serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string()));
            }
            Ok(())
        }
        Err(err) => {
            if opts.json {
                stdout_line(&serde_json::json!({"ok": false, "error": error_chain(&err)}).to_string());
            }
            Err(err)
        }
    }
}

/// Verifies the file and returns what was established.
pub fn verify(
    path: &Path,
    keys: &[PathBuf],
    allow_unsigned: bool,
    printer: &Printer,
) -> Result<VerifyReport, VerifyError> {
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
    let (signature, signer) = signature(&payload, &policy, &shown, printer)?;
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
        threads()
    ));
    let missing_images = missing_images(&payload)?;
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

/// Checks the signature against `policy` and reports who signed.
fn signature(
    payload: &Payload,
    policy: &TrustPolicy,
    shown: &str,
    printer: &Printer,
) -> Result<(&'static str, Option<String>), VerifyError> {
    Ok(match payload.check_signature(policy)? {
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
    })
}

/// Image references the index records as missing.
pub fn missing_images(payload: &Payload) -> Result<Vec<String>, metadata::MetadataError> {
    metadata::missing_images(&payload.index().metadata.extra)
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
