//! Command-line types of `ferry`. Logic lives in the command modules; the flags of `verify`
//! and `inspect` come from `ferry_core::cli_args`, so `./installer` has the same ones.

use clap::{Args, Parser, Subcommand};
use ferry_core::cli_args::{InspectArgs, VerifyArgs};
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
    /// Push an installer to an OCI registry as one artifact; its image blobs keep their digests,
    /// so the registry skips those it has.
    Push(PushArgs),
    /// Fetch an installer from an OCI registry, byte for byte, checked against its sha256.
    Pull(PullArgs),
}

/// How to reach an OCI registry.
#[derive(Debug, Args)]
pub struct RegistryAccessArgs {
    /// Registry login as HOST=USER:PASSWORD (repeatable); overrides ~/.docker/config.json.
    #[arg(long, value_name = "HOST=USER:PASSWORD")]
    pub registry_auth: Vec<String>,
    /// Trust this CA certificate (PEM) for the registry's TLS instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Talk plain HTTP to the registry (only for a registry without TLS).
    #[arg(long)]
    pub plain_http: bool,
    /// Layers transferred at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The installer to push.
    #[arg(value_name = "INSTALLER")]
    pub file: PathBuf,
    /// Where: oci://HOST[:PORT]/REPO:TAG.
    #[arg(value_name = "oci://REGISTRY/REPO:TAG")]
    pub reference: String,
    /// MiB per upload request: what a broken connection costs at worst.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub chunk_mib: u64,
    /// Do not remember upload sessions for a resumed push (kept in ~/.cache/ferry/push).
    #[arg(long)]
    pub no_resume: bool,
    /// How to reach the registry.
    #[command(flatten)]
    pub access: RegistryAccessArgs,
}

/// Arguments of `pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// What: oci://HOST[:PORT]/REPO:TAG or oci://HOST/REPO@sha256:DIGEST.
    #[arg(value_name = "oci://REGISTRY/REPO:TAG")]
    pub reference: String,
    /// The file to write (replaced only once the whole file is checked).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// How to reach the registry.
    #[command(flatten)]
    pub access: RegistryAccessArgs,
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
    /// Write a differential installer: only what this installer (an earlier release) lacks,
    /// compared by digest. On site it runs with `--base` naming that file.
    #[arg(long, value_name = "OLD_INSTALLER")]
    pub base: Option<PathBuf>,
    /// With --base: also keep the complete installer here (what the delta completes to).
    #[arg(long, value_name = "PATH", requires = "base")]
    pub complete_output: Option<PathBuf>,
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
    /// How charts are read.
    #[command(flatten)]
    pub charts: ChartArgs,
}

/// How charts are turned into images.
#[derive(Debug, Args)]
pub struct ChartArgs {
    /// The helm that renders charts (`none`: no helm). Default: the bundle rootfs's own helm
    /// when it runs here, else `helm` on PATH.
    #[arg(long, env = "FERRY_HELM", value_name = "PATH")]
    pub helm: Option<PathBuf>,
    /// Without helm, guess chart images from values.yaml instead of failing; every image found
    /// so is marked guessed.
    #[arg(long)]
    pub chart_images_from_values: bool,
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
    /// How charts are read.
    #[command(flatten)]
    pub charts: ChartArgs,
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
    /// Verification options (the same as `./installer verify`'s).
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectFileArgs {
    /// The installer to inspect.
    pub file: PathBuf,
    /// Inspection options (the same as `./installer inspect`'s).
    #[command(flatten)]
    pub inspect: InspectArgs,
}

impl ChartArgs {
    /// The discovery options these flags give.
    pub fn options(&self) -> crate::images::discovery::Options {
        crate::images::discovery::Options {
            helm: crate::render::helm::HelmChoice::from_flag(self.helm.as_deref()),
            chart_images_from_values: self.chart_images_from_values,
        }
    }
}
