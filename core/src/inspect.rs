//! Owns `inspect`, for `ferry inspect FILE` and `./installer inspect` alike: what the file
//! holds, read from the index alone (instant even for 20 GB).

use crate::metadata::{self, MetadataError, UnreadableSteps};
use crate::printer::{Printer, stdout_line};
use crate::units;
use crate::verify::{OpenError, missing_images, open_payload};
use payload_format::{Compression, Entry, EntryKind, Payload};
use std::path::Path;

/// What `inspect` is asked (the binaries fill it from their command lines).
#[derive(Clone, Debug, Default)]
pub struct InspectOptions {
    /// Print the result as JSON on stdout.
    pub json: bool,
}

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The signed metadata holds a value this build cannot read.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The launch steps cannot be read.
    #[error(transparent)]
    Launch(#[from] UnreadableSteps),
    /// The differential installer's record cannot be read.
    #[error(transparent)]
    Delta(#[from] payload_format::Error),
}

/// Runs `inspect`.
pub fn run(path: &Path, opts: &InspectOptions, printer: &Printer) -> Result<(), InspectError> {
    let payload = open_payload(path)?;
    if opts.json {
        let doc = json_document(&payload)?;
        stdout_line(&serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string()));
        return Ok(());
    }
    summary(&payload, printer)?;
    entries(payload.index().entries.as_slice(), printer);
    Ok(())
}

fn json_document(payload: &Payload) -> Result<serde_json::Value, InspectError> {
    let index = payload.index();
    let meta = &index.metadata;
    let t = payload.trailer();
    Ok(serde_json::json!({
        "file": payload.path().display().to_string(),
        "formatVersion": t.version,
        "metadata": meta,
        "created": units::rfc3339(meta.created),
        "signer": payload.claimed_signer().map(|k| k.fingerprint()),
        "signed": t.is_signed(),
        "sizes": {
            "file": payload.file_len(),
            "stub": t.stub_len,
            "stored": index.total_stored(),
            "uncompressed": index.total_size(),
            "index": t.index_len,
        },
        "chunkSize": index.chunk_size,
        "chunks": index.chunks.len(),
        "missingImages": missing_images(payload)?,
        "delta": payload.delta_record()?,
        "entries": index.entries,
    }))
}

/// Everything above the entry table.
fn summary(payload: &Payload, printer: &Printer) -> Result<(), InspectError> {
    let index = payload.index();
    let meta = &index.metadata;
    let t = payload.trailer();
    printer.out(format!("file:         {}", payload.path().display()));
    printer.out(format!("bundle:       {} {}", meta.name, meta.version));
    printer.out(format!("kubernetes:   {}", meta.kubernetes_version));
    if let Some(base) = metadata::base(&meta.extra)? {
        printer.out(format!(
            "built on:     {} {} (index {}, signature verified with {})",
            base.name, base.version, base.digest, base.signer
        ));
    }
    if let Some(d) = payload.delta_record()? {
        printer.out(format!(
            "differential: carries what {} {} lacks (index {}); run with --base naming that file",
            d.base.name, d.base.version, d.base.digest
        ));
        printer.out(format!(
            "  completes to: {} {} (index {}, {}): {} entries, {} of them ({}) from the base",
            d.complete.name,
            d.complete.version,
            d.complete.digest,
            units::bytes(d.complete.size),
            d.entries,
            d.from_base,
            units::bytes(d.bytes_from_base)
        ));
    }
    if let Some(cp) = metadata::control_plane(&meta.extra)? {
        // Where the control-plane list came from (the bundle's kubeadm, or ferry's table).
        let detail = cp.detail.as_deref().unwrap_or("source not recorded");
        let pause = cp.pause.as_deref().unwrap_or("-");
        printer.out(format!("  control plane: {} images {detail}; sandbox image {pause}", cp.images.len()));
    }
    printer.out(format!("created:      {}", units::rfc3339(meta.created)));
    printer.out(format!("built by:     {}", meta.builder));
    match payload.claimed_signer().map(|k| k.fingerprint()) {
        Some(fp) => printer.out(format!("signer:       {fp} (claimed; run `verify` to check)")),
        None => printer.out("signer:       UNSIGNED"),
    }
    printer.out(format!(
        "size:         {} file, {} program, {} stored, {} uncompressed",
        units::bytes(payload.file_len()),
        units::bytes(t.stub_len),
        units::bytes(index.total_stored()),
        units::bytes(index.total_size())
    ));
    let images = metadata::images(&meta.extra)?;
    printer.out(format!("images:       {}", images.len()));
    for image in &images {
        let source = if image.source.is_empty() { "-" } else { &image.source };
        let marks = [(image.guessed, ", guessed from chart values"), (image.outside_pod_spec, ", outside a pod spec")];
        let marks: String = marks.iter().filter(|(on, _)| *on).map(|(_, m)| *m).collect();
        printer.out(format!("  {} {} ({source}{marks})", image.reference, image.digest));
    }
    for image in missing_images(payload)? {
        printer.out(format!("  MISSING image: {image}"));
    }
    let launch = metadata::launch_steps_in(payload)?;
    printer.out(format!("launch steps: {}", launch.len()));
    for (i, step) in launch.iter().enumerate() {
        printer.out(format!("  {}. {}", i + 1, step.describe()));
    }
    Ok(())
}

/// The entry table.
fn entries(entries: &[Entry], printer: &Printer) {
    printer.out(format!("entries:      {}", entries.len()));
    printer.out(format!("{:<10} {:>10} {:>10} {:<5} PATH", "MODE", "SIZE", "STORED", "HOW"));
    for e in entries {
        let (kind, how) = match (e.kind, e.compression) {
            (EntryKind::Dir, _) => ('d', "-"),
            (EntryKind::Symlink, _) => ('l', "-"),
            (EntryKind::File, Compression::Raw) => ('-', "raw"),
            (EntryKind::File, Compression::Zstd) => ('-', "zstd"),
        };
        let target = if e.kind == EntryKind::Symlink { format!(" -> {}", e.link_target) } else { String::new() };
        printer.out(format!(
            "{kind}{:<9} {:>10} {:>10} {:<5} {}{target}",
            mode_string(e.mode),
            units::bytes(e.size),
            units::bytes(e.stored_len),
            how,
            e.path
        ));
    }
}

fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}
