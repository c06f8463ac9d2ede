//! The runtime half of ferry. `ferry build` appends a signed payload to this program and the
//! result is `./installer`. This crate holds the commands the installer runs on site. What the
//! packer needs too (output, `verify`, `inspect`, the metadata and image reference types) lives
//! in `ferry_core`; the paths `crate::printer`, `crate::units` and `crate::trust` re-export it.
#![deny(missing_docs)]

pub mod agent;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod extract;
pub mod inspect;
pub mod join;
pub mod kube;
pub mod launch;
pub mod lb;
pub mod registry;
pub mod reset;
pub mod run;
pub mod ssh;
pub mod verify;

pub use ferry_core::{SELF_EXE, printer, trust, units};

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Entry point of `./installer`.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let printer = printer::Printer::new(cli.global.quiet, cli.global.no_progress);
    let own_file = PathBuf::from(SELF_EXE);
    let result = match cli.command {
        cli::Command::Verify(args) => verify::run(&own_file, &args, &printer),
        cli::Command::Inspect(args) => inspect::run(&own_file, &args, &printer),
        cli::Command::Extract(args) => extract::run(&own_file, &args, &printer),
        cli::Command::Registry(cli::RegistryCommand::Serve(args)) => registry::serve(&args, &printer),
        cli::Command::Registry(cli::RegistryCommand::Config(args)) => registry::config(&args, &printer),
        cli::Command::Run(args) => run::run(&args, cli.global.quiet, cli.global.no_progress),
        cli::Command::Check(args) => check::run(&args),
        cli::Command::Reset(args) => reset::run(&args),
        cli::Command::Join(args) => join::run(*args, cli.global.quiet, cli.global.no_progress),
        cli::Command::Agent(cmd) => agent::main(&cmd),
        cli::Command::Lb(args) => lb::run(&args),
    };
    finish(result, &printer)
}

/// Turns a command's result into an exit code, printing the error chain for the user.
pub fn finish(result: anyhow::Result<()>, printer: &printer::Printer) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            printer.error(err.as_ref());
            ExitCode::FAILURE
        }
    }
}
