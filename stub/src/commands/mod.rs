//! The command adapters: one thin function per subcommand, turning the parsed command line
//! ([`crate::cli`]) into calls of the modules that do the work.
//!
//! Owns the dispatch and nothing else. It sits on top of the crate: the command line's types
//! are named here and in the few node-side modules that take their own flags as they are
//! (`agent`, `registry`, `verify`, `inspect`, `extract`), and no module below calls back up.

pub mod check;
pub mod flags;
pub mod join;
pub mod reset;
pub mod run;
pub mod upgrade;

use crate::cli::{self, Command, RegistryCommand};
use crate::printer::Printer;
use std::path::PathBuf;
use std::process::ExitCode;

/// Entry point of `./installer`.
pub fn main() -> ExitCode {
    use clap::Parser;
    let mut cli = cli::Cli::parse();
    let printer = Printer::new(cli.global.quiet, cli.global.no_progress);
    let own_file = PathBuf::from(crate::node::SELF_EXE);
    let (quiet, no_progress) = (cli.global.quiet, cli.global.no_progress);
    if let Err(e) = complete_first(&mut cli.command, &printer) {
        return crate::finish(Err(e), &printer);
    }
    let result = match cli.command {
        Command::Verify(args) => crate::verify::run(&own_file, &args, &printer),
        Command::Inspect(args) => crate::inspect::run(&own_file, &args, &printer),
        Command::Extract(args) => crate::extract::run(&own_file, &args, &printer),
        Command::Complete(args) => crate::delta::run(&args.file, &args, &printer),
        Command::Registry(RegistryCommand::Serve(args)) => crate::registry::serve(&args, &printer).map_err(Into::into),
        Command::Registry(RegistryCommand::Config(args)) => {
            crate::registry::config(&args, &printer).map_err(Into::into)
        }
        Command::Registry(RegistryCommand::Pki(args)) => crate::registry::pki(&args, &printer).map_err(Into::into),
        Command::Registry(RegistryCommand::Push(args)) => {
            crate::registry::site_push::run(&args, &printer).map_err(Into::into)
        }
        Command::Run(args) => run::run(&args, quiet, no_progress),
        Command::Check(args) => check::run(&args),
        Command::Reset(args) => reset::run(&args, quiet, no_progress),
        Command::Join(args) => join::run(*args, quiet, no_progress),
        Command::Upgrade(args) => upgrade::run(*args, quiet, no_progress),
        Command::Agent(cmd) => crate::agent::main(&cmd),
        Command::Lb(args) => lb(&args),
    };
    crate::finish(result, &printer)
}

/// A differential installer's content is only used with its base: `run`, `join` and `upgrade`
/// put the complete installer together from `--base` first; the other commands that read the
/// content refuse a delta, naming its base.
fn complete_first(command: &mut Command, printer: &Printer) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => crate::delta::prepare_run(args, printer, &flags::where_run),
        Command::Join(args) => {
            let master = args.master.clone();
            crate::delta::prepare_run(&mut args.run, printer, &|a| flags::where_at(a, master.clone(), Vec::new()))
        }
        Command::Upgrade(args) => {
            let master = args.cluster.master.clone();
            crate::delta::prepare_run(&mut args.cluster.run, printer, &|a| {
                flags::where_at(a, master.clone(), Vec::new())
            })
        }
        Command::Extract(_) => crate::delta::refuse_alone(std::path::Path::new(crate::node::SELF_EXE)),
        Command::Registry(RegistryCommand::Serve(args)) => crate::delta::refuse_alone(&args.file),
        Command::Registry(RegistryCommand::Push(args)) => crate::delta::refuse_alone(&args.file),
        _ => Ok(()),
    }
}

/// `installer lb`.
fn lb(args: &cli::LbArgs) -> anyhow::Result<()> {
    crate::lb::run(&crate::lb::Options {
        config: args.config.clone(),
        listen: args.listen,
        backends: args.backends.clone(),
        interval: args.interval.clone(),
        readyz_ca: args.readyz_ca.clone(),
    })
}
