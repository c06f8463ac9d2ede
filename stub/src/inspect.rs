//! `inspect`: what the file holds, read from the index alone (instant even for 20 GB).

use crate::cli::InspectArgs;
use crate::printer::Printer;
use crate::units;
use crate::verify::{missing_images, open_payload};
use anyhow::Result;
use payload_format::{Compression, EntryKind};
use std::path::Path;

/// Runs `inspect`.
pub fn run(path: &Path, args: &InspectArgs, printer: &Printer) -> Result<()> {
    let payload = open_payload(path)?;
    let index = payload.index();
    let meta = &index.metadata;
    let t = payload.trailer();
    let signer = payload.claimed_signer().map(|k| k.fingerprint());
    if args.json {
        let doc = serde_json::json!({
            "file": payload.path().display().to_string(),
            "formatVersion": t.version,
            "metadata": meta,
            "created": units::rfc3339(meta.created),
            "signer": signer,
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
            "missingImages": missing_images(&payload),
            "entries": index.entries,
        });
        crate::printer::stdout_line(&serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    printer.out(format!("file:         {}", payload.path().display()));
    printer.out(format!("bundle:       {} {}", meta.name, meta.version));
    printer.out(format!("kubernetes:   {}", meta.kubernetes_version));
    if let Some(cp) = meta.extra.get(crate::registry::config::CONTROL_PLANE_KEY) {
        // Where the control-plane list came from (the bundle's kubeadm, or ferry's table).
        let n = cp.get("images").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0);
        let detail = cp.get("detail").and_then(|v| v.as_str()).unwrap_or("source not recorded");
        let pause = cp.get("pause").and_then(|v| v.as_str()).unwrap_or("-");
        printer.out(format!("  control plane: {n} images {detail}; sandbox image {pause}"));
    }
    printer.out(format!("created:      {}", units::rfc3339(meta.created)));
    printer.out(format!("built by:     {}", meta.builder));
    match &signer {
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
    let images = meta.extra.get("images").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    printer.out(format!("images:       {}", images.len()));
    for image in &images {
        let field = |k: &str| image.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        printer.out(format!("  {} {} ({})", field("ref"), field("digest"), field("source")));
    }
    for image in missing_images(&payload) {
        printer.out(format!("  MISSING image: {image}"));
    }
    let launch = crate::launch::steps(&payload)?;
    printer.out(format!("launch steps: {}", launch.len()));
    for (i, step) in launch.iter().enumerate() {
        printer.out(format!("  {}. {}", i + 1, step.describe()));
    }
    printer.out(format!("entries:      {}", index.entries.len()));
    printer.out(format!("{:<10} {:>10} {:>10} {:<5} PATH", "MODE", "SIZE", "STORED", "HOW"));
    for e in &index.entries {
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
    Ok(())
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
