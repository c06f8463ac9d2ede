//! The ferry packer: reads a `bundle.yaml`, gathers what it names, and writes one signed,
//! static, self-verifying `installer`.
#![deny(missing_docs)]

pub mod builder;
pub mod cli;
pub mod images;
pub mod keygen;
pub mod launch;
pub mod spec;
pub mod tree;

use clap::Parser;
use ferry_stub::printer::Printer;
use std::process::ExitCode;

/// The stub embedded at build time (see `build.rs`).
pub static EMBEDDED_STUB: &[u8] = include_bytes!(env!("FERRY_EMBEDDED_STUB"));

/// Entry point of `ferry`.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let printer = Printer::new(cli.quiet, cli.no_progress);
    let result = match cli.command {
        cli::Command::Keygen(args) => keygen::run(&args, &printer),
        cli::Command::Build(args) => builder::run(&args, &printer),
        cli::Command::Images(args) => images::run_list(args.spec_path(), args.json, &printer),
        cli::Command::Verify(args) => ferry_stub::verify::run(&args.file, &args.verify, &printer),
        cli::Command::Inspect(args) => ferry_stub::inspect::run(&args.file, &args.inspect, &printer),
    };
    ferry_stub::finish(result, &printer)
}
