//! `extract`: writes entries out, each byte checked against the signed index on the way.

use crate::cli::ExtractArgs;
use crate::printer::Printer;
use crate::units;
use crate::verify::open_payload;
use anyhow::Result;
use payload_format::ExtractOptions;
use std::path::Path;
use std::time::Instant;

/// Runs `extract`.
pub fn run(path: &Path, args: &ExtractArgs, printer: &Printer) -> Result<()> {
    let started = Instant::now();
    let payload = open_payload(path)?;
    if !payload.trailer().is_signed() {
        printer.warn(format!(
            "{} is UNSIGNED: extracting anyway, but nothing proves who built it",
            payload.path().display()
        ));
    }
    let opts = ExtractOptions { dest: args.to.clone(), selection: args.paths.clone(), force: args.force };
    let total: u64 = payload.select(&opts.selection)?.iter().map(|e| e.size).sum();
    let progress = printer.progress(total, "extract");
    let result = payload.extract(&opts, &|n| progress.inc(n));
    progress.finish();
    let summary = result?;
    printer.out(format!(
        "extracted {} files, {} directories, {} symlinks ({}) to {} in {:.1} s",
        summary.files,
        summary.dirs,
        summary.symlinks,
        units::bytes(summary.bytes),
        args.to.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
