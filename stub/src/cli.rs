//! Command-line types of `./installer`. Logic lives in the command modules; the flags of
//! `verify` and `inspect`, and which keys to trust, come from `ferry_core::cli_args`, so
//! `ferry` has the same ones.

use clap::{Args, Parser, Subcommand};
pub use ferry_core::cli_args::{InspectArgs, TrustArgs, VerifyArgs};
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
    /// Put the complete installer together from this differential one and its base (the
    /// earlier release it names), each byte checked against the complete installer's signature.
    Complete(CompleteArgs),
    /// The built-in image registry: serve the bundle's images, or write containerd's config for it.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Turn bare hosts into prepared nodes over SSH: preflight, verified resumable distribution,
    /// node preparation, registry service. With only --hosts, the first host is the master (and
    /// registry host) and the rest are workers.
    Run(Box<RunArgs>),
    /// Check the cluster: nodes Ready, control plane, CoreDNS, kube-proxy, launch workloads, and
    /// every running image in the built-in registry. Needs only --master IP (or local state).
    Check(Box<ClusterCommandArgs>),
    /// Take the cluster off its hosts (kubeadm reset -f, CNI, iptables/IPVS, ferry's units,
    /// binaries, registry and state); idempotent. `--hosts` limits it to those hosts.
    Reset(Box<ClusterCommandArgs>),
    /// Add nodes to a running cluster: --workers IP,… and/or --masters IP,… (the existing
    /// cluster is found with --master IP or the local state).
    Join(Box<ClusterCommandArgs>),
    /// Upgrade the cluster to this installer's release, node by node with the apps kept
    /// serving: preflight (versions, health, images), the installer staged on every node, an
    /// etcd snapshot, masters one at a time, workers in batches (cordon, drain, kubeadm upgrade,
    /// kubelet, Ready, uncordon). Run it again after any failure to continue.
    Upgrade(Box<UpgradeArgs>),
    /// Node-side commands `run` starts on each host over SSH (not for direct use).
    #[command(hide = true)]
    Agent(AgentArgs),
    /// The node-local Kubernetes API load balancer (runs as ferry-lb.service on every node):
    /// a TCP proxy over all masters' apiservers with health checks; SIGHUP re-reads the config.
    Lb(LbArgs),
}

/// Arguments of `installer lb`.
#[derive(Debug, Args)]
pub struct LbArgs {
    /// Config file (`listen`, `backends`, `interval`); re-read on SIGHUP. Used when it exists,
    /// or always when given explicitly.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides the file). Default 127.0.0.1:6444.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// An apiserver, `HOST:PORT`. Repeatable; added to the file's backends.
    #[arg(long = "backend", value_name = "HOST:PORT")]
    pub backends: Vec<String>,
    /// Health-check interval, e.g. `2s` or `500ms` (overrides the file).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Check each apiserver with `GET /readyz` over TLS, its certificate checked against this CA
    /// (the cluster's), not a TCP connect alone. Until the file exists the check is TCP only.
    #[arg(long, value_name = "FILE")]
    pub readyz_ca: Option<PathBuf>,
}

/// `registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the bundle's images over the OCI distribution API (pull only), straight from this file.
    Serve(RegistryServeArgs),
    /// Write containerd's certs.d/*/hosts.toml and config.toml pointing at the built-in registry.
    Config(RegistryConfigArgs),
    /// Make (or reuse) a CA, a pull credential and a serving certificate in a directory, for
    /// running `registry serve --tls-dir` and `registry config --ca-file --credential-file` by hand.
    Pki(RegistryPkiArgs),
    /// Copy every image the installer carries into the site's own registry: digests, manifests
    /// and multi-platform indexes unchanged, repository paths kept (under PREFIX if given),
    /// blobs the registry has skipped, resumable. Then `registry config --endpoint
    /// https://REGISTRY[/PREFIX]` points containerd at it.
    Push(RegistryPushArgs),
}

/// Arguments of `registry push`.
#[derive(Debug, Args)]
pub struct RegistryPushArgs {
    /// The site registry and where to put the repositories: HOST[:PORT][/PREFIX]. Image
    /// docker.io/library/nginx:1.27 goes to HOST/PREFIX/library/nginx:1.27.
    #[arg(long = "to", value_name = "REGISTRY[/PREFIX]")]
    pub to: String,
    /// A file holding the registry login as `user:password` (mode 0600 recommended), the same
    /// file `registry config --credential-file` takes. Else `--registry-auth`, else Docker's
    /// config.json.
    #[arg(long, value_name = "PATH")]
    pub credential_file: Option<PathBuf>,
    /// Registry login as HOST=USER:PASSWORD (repeatable); overrides Docker's config.json.
    #[arg(long, value_name = "HOST=USER:PASSWORD")]
    pub registry_auth: Vec<String>,
    /// Trust this CA certificate (PEM) for the registry's TLS instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Talk plain HTTP to the registry (only for a registry without TLS).
    #[arg(long)]
    pub plain_http: bool,
    /// Blobs sent at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// MiB per upload request: what a broken connection costs at worst.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub chunk_mib: u64,
    /// Do not remember upload sessions for a resumed push (kept in ~/.cache/ferry/push).
    #[arg(long)]
    pub no_resume: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// The installer file to read (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::node::SELF_EXE)]
    pub file: PathBuf,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Arguments of `registry serve`.
#[derive(Debug, Args)]
pub struct RegistryServeArgs {
    /// Address and port to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:5000")]
    pub listen: std::net::SocketAddr,
    /// The installer file to serve from (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::node::SELF_EXE)]
    pub file: PathBuf,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Do not verify the images' chunks in the background after startup; verify each chunk
    /// only when a request first needs it (either way, no unverified byte is ever served).
    #[arg(long)]
    pub no_background_verify: bool,
    /// Serve HTTPS with the certificate chain, key and credential digest in DIR (registry.crt,
    /// registry.key, credential.sha256, as `run` installs them in /etc/ferry/registry or
    /// `registry pki` makes them), and answer only requests carrying the credential.
    #[arg(long, value_name = "DIR", required_unless_present = "insecure_plain_http")]
    pub tls_dir: Option<PathBuf>,
    /// Serve plain HTTP and ask for no credential: anyone who reaches the port can pull every
    /// image. For local use only (a laptop, a test).
    #[arg(long, conflicts_with = "tls_dir")]
    pub insecure_plain_http: bool,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Arguments of `registry pki`.
#[derive(Debug, Args)]
pub struct RegistryPkiArgs {
    /// Directory for the CA (registry-ca.crt, registry-ca.key), the credential
    /// (registry-credential) and what `registry serve --tls-dir DIR` reads; existing ones are reused.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// An address or DNS name clients reach the registry by (repeat; 127.0.0.1 and localhost
    /// are always included).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
}

/// Arguments of `registry config`.
#[derive(Debug, Args)]
pub struct RegistryConfigArgs {
    /// URL of the registry as nodes reach it: the built-in one (https://10.0.0.10:5050) or the
    /// site's own, with the prefix `registry push --to` used (https://registry.site:5000/platform).
    /// Repeat for replicas: containerd tries them in the order given; the first is also `server`.
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
    /// The registry's CA certificate (PEM): copied beside each hosts.toml as `ca.crt` and named
    /// by its `ca`, so containerd trusts the registry's certificate.
    #[arg(long, value_name = "PATH", requires = "credential_file")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the pull credential as `user:password` (mode 0600 recommended): sent by
    /// containerd as HTTP Basic; the hosts.toml files are then written 0600. Needs https endpoints.
    #[arg(long, value_name = "PATH", requires = "ca_file")]
    pub credential_file: Option<PathBuf>,
    /// Keep containers' OOM scores at or above containerd's own (`restrict_oom_score_adj`):
    /// `auto` does so when this machine's root cannot lower OOM scores (no CAP_SYS_RESOURCE).
    #[arg(long, value_name = "auto|yes|no", default_value = "auto")]
    pub restrict_oom_score_adj: crate::registry::config::OomRestriction,
    /// The installer file to read (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::node::SELF_EXE)]
    pub file: PathBuf,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// Arguments of `complete`.
#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// The installer this one was built on (`inspect` names it and its digest).
    #[arg(long, value_name = "OLD_INSTALLER")]
    pub base: PathBuf,
    /// Where to write the complete installer.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// The differential installer (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::node::SELF_EXE)]
    pub file: PathBuf,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustArgs,
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

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Cluster file (`kind: Cluster`); flags below override it.
    #[arg(short = 'f', long = "cluster", value_name = "cluster.yaml")]
    pub cluster_file: Option<PathBuf>,
    /// Hosts, comma-separated or repeated. Alone: the first is the master, the rest workers.
    #[arg(long, value_name = "IP,…")]
    pub hosts: Vec<String>,
    /// Master hosts (the first also runs the registry unless the file says otherwise).
    #[arg(long, value_name = "IP,…")]
    pub masters: Vec<String>,
    /// Worker hosts.
    #[arg(long, value_name = "IP,…")]
    pub workers: Vec<String>,
    /// Cluster name (its state goes to .ferry/NAME/ beside the installer, or to the user's
    /// state directory when the installer's directory is read-only).
    #[arg(long)]
    pub name: Option<String>,
    /// Keep the operator's state (descriptions, records, the cluster's keys) in DIR/NAME/
    /// instead of beside the installer or in $XDG_STATE_HOME/ferry (~/.local/state/ferry).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// SSH user (default root; any other user works through sudo).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// SSH port.
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// SSH private key; its passphrase comes from FERRY_SSH_KEY_PASSPHRASE or a prompt.
    #[arg(short = 'i', long = "ssh-key", value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// Run commands through sudo even as root.
    #[arg(long)]
    pub sudo: bool,
    /// Jump host, `[user@]host[:port]`.
    #[arg(long, value_name = "USER@HOST:PORT")]
    pub bastion: Option<String>,
    /// known_hosts file to check host keys against (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Record unknown host keys instead of refusing them (a changed key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Prompt for the SSH password (or set FERRY_SSH_PASSWORD).
    #[arg(long)]
    pub ask_password: bool,
    /// Read the SSH password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// Prompt for the sudo password (or set FERRY_SUDO_PASSWORD; default: the SSH password).
    #[arg(long)]
    pub ask_sudo_password: bool,
    /// Port of the built-in registry on the registry host(s).
    #[arg(long)]
    pub registry_port: Option<u16>,
    /// Hosts that run the built-in registry (each holds the whole installer and is listed in
    /// every node's hosts.toml, so a pull survives a replica's death). Default: every master;
    /// hosts with the `registry` role in the cluster file count.
    #[arg(long, value_name = "N")]
    pub registry_replicas: Option<usize>,
    /// Install even where a container runtime or kubelet already exists.
    #[arg(long)]
    pub force: bool,
    /// Print the plan per host and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// End the operation that holds the hosts' lock and take it. Only for a holder that is
    /// gone (its machine died, its process was killed): a live one is cut off mid-change.
    #[arg(long)]
    pub force_unlock: bool,
    /// Set by `join`, not a flag: the operation the hosts' lock names.
    #[arg(skip)]
    pub operation: crate::protocol::lock::Operation,
    /// Set by `join`, not a flag: adding nodes does not run the bundle's launch steps again.
    #[arg(skip)]
    pub skip_launch: bool,
    /// Machine-readable events on stdout, one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub parallel: usize,
    /// Relay chains the installer feeds itself during distribution: every other host pulls
    /// from a host that already has the chunks (verified at each hop), so this machine's uplink
    /// carries each byte about once per chain. 0 sends to every host directly.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub relay_chains: usize,
    /// Seconds allowed for connecting and logging in.
    #[arg(long, default_value_t = 20, value_name = "S")]
    pub connect_timeout: u64,
    /// Seconds between SSH keepalives; a host silent for three is dropped.
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub keepalive: u64,
    /// Seconds to wait for the cluster to pass `check` (nodes Ready, pods and workloads
    /// available); `run` and `join` wait 600 by default, `check` checks once.
    #[arg(long, value_name = "S")]
    pub wait: Option<u64>,
    /// Seconds allowed for one phase on one host.
    #[arg(long, default_value_t = 3600, value_name = "S")]
    pub phase_timeout: u64,
    /// A trusted public key (`NAME.pub`); repeatable. FERRY_TRUSTED_KEYS and
    /// /etc/ferry/trusted-keys/ count too.
    #[arg(long = "trusted-key", value_name = "NAME.pub")]
    pub trusted_keys: Vec<PathBuf>,
    /// Accept an unsigned installer.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Install a file signed by a key this machine does not trust (none of --trusted-key,
    /// FERRY_TRUSTED_KEYS, /etc/ferry/trusted-keys/): the signer's fingerprint is printed and
    /// recorded in the cluster's state.
    #[arg(long)]
    pub allow_untrusted_signer: bool,
    /// The installer to deliver (default: this program's own file).
    #[arg(long, value_name = "PATH", default_value = crate::node::SELF_EXE, hide = true)]
    pub installer: PathBuf,
    /// For a differential installer: the earlier release it was built on (default: that
    /// release found beside this file or among the complete installers earlier runs kept). The
    /// complete installer is put together, and kept in the state directory's .complete/,
    /// before any host is touched.
    #[arg(long, value_name = "OLD_INSTALLER")]
    pub base: Option<PathBuf>,
    /// Set from --base, not a flag: the complete installer delivered in place of `installer`
    /// (whose directory still holds the state).
    #[arg(skip)]
    pub completed: Option<PathBuf>,
}

impl RunArgs {
    /// The file whose content is delivered: the completed installer, else `installer`.
    pub fn payload_file(&self) -> &std::path::Path {
        self.completed.as_deref().unwrap_or(&self.installer)
    }
}

/// Arguments of `check`, `reset` and `join`: where the cluster is, plus `run`'s connection
/// options (for `join`, `--masters`/`--workers` name the NEW hosts).
#[derive(Debug, Args)]
pub struct ClusterCommandArgs {
    /// The cluster's first master; its /etc/ferry/cluster.yaml describes the cluster.
    #[arg(long, value_name = "IP")]
    pub master: Option<String>,
    /// Connection and output options, as for `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Arguments of `upgrade`: where the cluster is, `run`'s connection options, and the pace.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Where the cluster is and how to reach it, as for `check`.
    #[command(flatten)]
    pub cluster: ClusterCommandArgs,
    /// Workers upgraded at once (masters always go one at a time).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unavailable: u64,
    /// Seconds one node's drain may take before the upgrade stops (PodDisruptionBudgets are
    /// respected, so a budget that allows no eviction holds the drain).
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub drain_timeout: u64,
    /// Put a node whose upgrade did not finish back as it was (its old programs, kubelet
    /// configuration and static pods), then stop.
    #[arg(long, value_name = "HOST")]
    pub revert_node: Option<String>,
}

/// `agent`: the node side of `run`, started by it over SSH. Every call first prints a hello
/// line (`{"protocol":N,"build":"…"}`), then its answer.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The ferry protocol version the calling installer speaks; the agent stops when it is not
    /// its own (see `protocol` in docs/architecture.md).
    #[arg(long, value_name = "N", global = true)]
    pub protocol: Option<u32>,
    /// The calling installer's build, for the message when the versions differ.
    #[arg(long, value_name = "VERSION", global = true)]
    pub build: Option<String>,
    /// The call.
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// `agent` subcommands (run on the node, as root, by `run`).
#[derive(Clone, Debug, Subcommand)]
pub enum AgentCommand {
    /// Print this host's facts as JSON.
    Facts {
        /// Tools to look for on PATH (comma-separated).
        #[arg(long, default_value = "")]
        tools: Vec<String>,
    },
    /// Receive a chunk stream on stdin (see docs/architecture.md).
    Receive {
        /// Final path of the installer copy.
        #[arg(long)]
        dest: PathBuf,
        /// Expected signer fingerprint.
        #[arg(long)]
        signer: Option<String>,
        /// Accept an unsigned installer.
        #[arg(long)]
        allow_unsigned: bool,
        /// Address to listen on for downstream hosts when the operator makes this host a relay.
        #[arg(long)]
        relay_listen: Option<std::net::IpAddr>,
    },
    /// Prepare this node from a JSON plan on stdin.
    Prepare,
    /// Install and start ferry-registry.service.
    RegistryService {
        /// Port.
        #[arg(long)]
        port: u16,
        /// Accept an unsigned installer.
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Wait until the Kubernetes API answers through this node's load balancer.
    ApiReady {
        /// The load balancer's port.
        #[arg(long)]
        port: u16,
        /// Seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Pull an image through containerd and the mirror.
    CheckPull {
        /// Image reference.
        #[arg(long)]
        image: String,
        /// Registry replicas (`http://IP:PORT`, comma-separated) that must each serve the
        /// image's manifest to this node.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Record a completed phase (detail JSON on stdin).
    Record {
        /// Cluster.
        #[arg(long)]
        cluster: String,
        /// Phase.
        #[arg(long)]
        phase: String,
        /// Installer id.
        #[arg(long)]
        installer: String,
    },
    /// Print this cluster's phase records as JSON.
    State {
        /// Cluster.
        #[arg(long)]
        cluster: String,
    },
    /// Take this host's lock for the calling operation and hold it until stdin ends.
    Lock {
        /// Who asks, as JSON.
        #[arg(long = "holder-json", value_name = "JSON", value_parser = holder_json)]
        holder: crate::protocol::lock::Holder,
        /// End whoever holds the lock and take it.
        #[arg(long)]
        force_unlock: bool,
    },
}

/// `--holder-json`, read as the protocol's holder.
fn holder_json(s: &str) -> Result<crate::protocol::lock::Holder, String> {
    serde_json::from_str(s).map_err(|e| format!("not a lock holder: {e}"))
}
