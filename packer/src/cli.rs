//! Command-line types of `ferry`. Logic lives in the command modules.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// ferry: build one signed installer that delivers a whole Kubernetes platform into an air-gapped site.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The packer's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an ed25519 signing key pair: NAME.key (mode 0600) and NAME.pub.
    Keygen(KeygenArgs),
    /// Build an installer from a bundle.yaml.
    Build(BuildArgs),
    /// List every image the bundle needs and where each was found (no registry is contacted).
    Images(ImagesArgs),
    /// Verify an installer with this binary (not with the program inside the file).
    Verify(VerifyFileArgs),
    /// Show an installer's contents from its index.
    Inspect(InspectFileArgs),
}

/// Arguments of `keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Base name of the key files.
    #[arg(short = 'o', long = "output", value_name = "NAME")]
    pub output: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The bundle spec.
    #[arg(value_name = "BUNDLE.yaml", default_value = "bundle.yaml")]
    pub spec_positional: PathBuf,
    /// The bundle spec (same as the positional argument).
    #[arg(short = 'f', long = "file", value_name = "BUNDLE.yaml")]
    pub spec: Option<PathBuf>,
    /// Output file.
    #[arg(short = 'o', long = "output", default_value = "installer")]
    pub output: PathBuf,
    /// Signing key from `ferry keygen`.
    #[arg(long, value_name = "NAME.key", required_unless_present = "unsigned", conflicts_with = "unsigned")]
    pub key: Option<PathBuf>,
    /// Build without a signature; `verify` will report the file loudly as unsigned.
    #[arg(long)]
    pub unsigned: bool,
    /// Use this stub instead of the one built into ferry.
    #[arg(long, value_name = "PATH")]
    pub stub: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Build even when images cannot be resolved; the installer records them as missing.
    #[arg(long, env = "FERRY_ALLOW_MISSING_IMAGES", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_missing_images: bool,
    /// Never contact a registry (images then come only from local sources).
    #[arg(long, env = "FERRY_OFFLINE", value_parser = clap::builder::FalseyValueParser::new())]
    pub offline: bool,
    /// Registry login as HOST=USER:PASSWORD (repeatable); overrides ~/.docker/config.json.
    #[arg(long, value_name = "HOST=USER:PASSWORD")]
    pub registry_auth: Vec<String>,
    /// Parallel image downloads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
}

/// Arguments of `images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// The bundle spec.
    #[arg(value_name = "BUNDLE.yaml", default_value = "bundle.yaml")]
    pub spec_positional: PathBuf,
    /// The bundle spec (same as the positional argument).
    #[arg(short = 'f', long = "file", value_name = "BUNDLE.yaml")]
    pub spec: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl ImagesArgs {
    /// The spec file, from `-f` or the positional argument.
    pub fn spec_path(&self) -> &PathBuf {
        self.spec.as_ref().unwrap_or(&self.spec_positional)
    }
}

impl BuildArgs {
    /// The spec file, from `-f` or the positional argument.
    pub fn spec_path(&self) -> &PathBuf {
        self.spec.as_ref().unwrap_or(&self.spec_positional)
    }
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyFileArgs {
    /// The installer to check.
    pub file: PathBuf,
    /// Verification options.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectFileArgs {
    /// The installer to inspect.
    pub file: PathBuf,
    /// Inspection options.
    #[command(flatten)]
    pub inspect: InspectArgs,
}

/// Options of `verify` (the same as `./installer verify`'s).
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

impl VerifyArgs {
    /// What the shared `verify` is asked.
    pub fn options(&self) -> ferry_core::verify::VerifyOptions {
        ferry_core::verify::VerifyOptions {
            keys: self.keys.clone(),
            allow_unsigned: self.allow_unsigned,
            json: self.json,
        }
    }
}

/// Options of `inspect` (the same as `./installer inspect`'s).
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl InspectArgs {
    /// What the shared `inspect` is asked.
    pub fn options(&self) -> ferry_core::inspect::InspectOptions {
        ferry_core::inspect::InspectOptions { json: self.json }
    }
}
