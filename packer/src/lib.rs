//! The ferry packer: reads a `bundle.yaml`, gathers what it names, and writes one signed,
//! static, self-verifying `installer`.
#![deny(missing_docs)]

pub mod base;
pub mod builder;
pub mod cli;
mod commands;
pub mod delta;
pub mod images;
pub mod keygen;
pub mod launch;
pub mod paths;
pub mod publish;
pub mod render;
pub mod spec;
pub mod tools;
pub mod tree;

use clap::Parser;
use ferry_core::printer::Printer;
use std::process::ExitCode;

/// Entry point of `ferry`.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let printer = Printer::new(cli.quiet, cli.no_progress);
    let result = match cli.command {
        cli::Command::Keygen(args) => keygen::run(&args, &printer),
        cli::Command::Build(args) => builder::run(&args, &printer),
        cli::Command::Images(args) => images::run_list(args.spec_path(), &args.charts.options(), args.json, &printer),
        cli::Command::Verify(args) => {
            ferry_core::verify::run(&args.file, &args.verify.options(), &printer).map_err(Into::into)
        }
        cli::Command::Inspect(args) => {
            ferry_core::inspect::run(&args.file, &args.inspect.options(), &printer).map_err(Into::into)
        }
        cli::Command::Push(args) => commands::push(&args, &printer),
        cli::Command::Pull(args) => commands::pull(&args, &printer),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            printer.error(err.as_ref());
            ExitCode::FAILURE
        }
    }
}
