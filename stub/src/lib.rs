//! The runtime half of ferry. `ferry build` appends a signed payload to this program and the
//! result is `./installer`. This crate holds the commands the installer runs on site; the packer
//! reuses [`verify`] and [`inspect`] so a file can always be checked by a binary that did not
//! come inside it.
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
pub mod printer;
pub mod protocol;
pub mod registry;
pub mod reset;
pub mod run;
pub mod ssh;
pub mod trust;
pub mod units;
pub mod verify;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// The path the running installer reads its own payload from. The kernel resolves it to the
/// executable actually running, so renaming or moving the file does not matter.
pub const SELF_EXE: &str = "/proc/self/exe";

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
            printer.error(&err);
            ExitCode::FAILURE
        }
    }
}
