//! Command-line types of `./installer`. Logic lives in the command modules.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// ferry installer: a signed, self-verifying Kubernetes platform delivery.
#[derive(Debug, Parser)]
#[command(name = "installer", version, about, long_about = None)]
pub struct Cli {
    /// Options for every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// The installer's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prove the file intact and signed: trailer, index and signature, the program itself, then every chunk.
    Verify(VerifyArgs),
    /// Show what the file holds, reading only its index.
    Inspect(InspectArgs),
    /// Extract entries, verifying each byte, writing each file atomically.
    Extract(ExtractArgs),
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A trusted public key (`NAME.pub`). Repeatable. Keys in `FERRY_TRUSTED_KEYS` (colon-separated
    /// files or directories) and `/etc/ferry/trusted-keys/` are trusted too.
    #[arg(long = "key", value_name = "NAME.pub")]
    pub keys: Vec<PathBuf>,
    /// Accept a file with no signature (it is still reported loudly).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Destination directory.
    #[arg(long = "to", value_name = "DIR", default_value = ".")]
    pub to: PathBuf,
    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
    /// Entry paths or directory prefixes to extract (default: everything).
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}
