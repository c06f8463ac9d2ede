//! `verify` of `./installer`: the command-line adapter of `ferry_core::verify`, which owns the
//! check (the packer's `ferry verify` runs the same code).

use crate::cli::VerifyArgs;
use crate::printer::Printer;
use anyhow::Result;
use std::path::Path;

pub use ferry_core::verify::{VerifyReport, missing_images, open_payload, verify};

/// Runs `verify` and prints the outcome.
pub fn run(path: &Path, args: &VerifyArgs, printer: &Printer) -> Result<()> {
    Ok(ferry_core::verify::run(path, &args.options(), printer)?)
}
