//! `inspect` of `./installer`: the command-line adapter of `ferry_core::inspect`, which owns
//! the listing (the packer's `ferry inspect` runs the same code).

use crate::cli::InspectArgs;
use crate::printer::Printer;
use anyhow::Result;
use std::path::Path;

/// Runs `inspect`.
pub fn run(path: &Path, args: &InspectArgs, printer: &Printer) -> Result<()> {
    Ok(ferry_core::inspect::run(path, &args.options(), printer)?)
}
