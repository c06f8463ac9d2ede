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
    /// The built-in image registry: serve the bundle's images, or write containerd's config for it.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

/// `registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the bundle's images over the OCI distribution API (pull only), straight from this file.
    Serve(RegistryServeArgs),
    /// Write containerd's certs.d/*/hosts.toml and config.toml pointing at the built-in registry.
    Config(RegistryConfigArgs),
}

/// Which signing keys to trust (shared by commands that open the payload for use).
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// A trusted public key (`NAME.pub`). Repeatable. Keys in `FERRY_TRUSTED_KEYS` (colon-separated
    /// files or directories) and `/etc/ferry/trusted-keys/` are trusted too.
    #[arg(long = "key", value_name = "NAME.pub")]
    pub keys: Vec<PathBuf>,
    /// Accept a file with no signature (it is still reported loudly).
    #[arg(long)]
    pub allow_unsigned: bool,
}

/// Arguments of `registry serve`.
#[derive(Debug, Args)]
pub struct RegistryServeArgs {
    /// Address and port to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:5000")]
    pub listen: std::net::SocketAddr,
    /// The installer file to serve from (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::SELF_EXE)]
    pub file: PathBuf,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Arguments of `registry config`.
#[derive(Debug, Args)]
pub struct RegistryConfigArgs {
    /// URL of the built-in registry as nodes reach it, e.g. http://10.0.0.10:5000. Repeat for
    /// replicas: containerd tries them in the order given; the first is also `server`.
    #[arg(long = "endpoint", value_name = "URL", required = true)]
    pub endpoints: Vec<String>,
    /// Directory to write `certs.d/` and `config.toml` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// containerd release line the config.toml is for: 1.7 (config version 2) or 2 (version 3).
    #[arg(long, value_name = "1.7|2", default_value = "2")]
    pub containerd: crate::registry::config::Containerd,
    /// Where certs.d will be on the nodes (containerd's `config_path`).
    #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
    pub config_path: String,
    /// Pin this sandbox (pause) image instead of the one kubeadm expects for the bundle's version.
    #[arg(long, value_name = "IMAGE")]
    pub sandbox_image: Option<String>,
    /// The installer file to read (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::SELF_EXE)]
    pub file: PathBuf,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustArgs,
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
