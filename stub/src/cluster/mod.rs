//! The cluster description `installer run` works from: `cluster.yaml`
//! (`apiVersion: ferry.dev/v1alpha1`, `kind: Cluster`) and the `--hosts/--masters/--workers`
//! flags, resolved into one list of [`Host`]s with roles and SSH settings.
//!
//! Owns: parsing (serde-saphyr, unknown fields are errors naming the field and line), the
//! flag-over-file rules, input checks (duplicate addresses, role counts) and their
//! [`ClusterError`], and the description ferry saves ([`to_file`]). It never connects anywhere
//! (finding and reaching an existing cluster is [`locate`]'s). No password is ever read from
//! the file: there is no field for one.
//!
//! Roles when only `--hosts` is given: the first host is the master (and the registry host),
//! the others are workers.

pub mod locate;
pub mod state_dir;

use crate::kube::config::FragmentError;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// A cluster description ferry will not work from: a cluster file that does not read, or a
/// file and flags that together describe no usable cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster file cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML, or an unknown or missing field (the parser names it and its line).
    #[error("{origin}: {cause}")]
    Syntax {
        /// Where the text came from.
        origin: String,
        /// What the parser said.
        cause: Box<serde_saphyr::Error>,
    },
    /// Another `apiVersion`.
    #[error("{origin}: apiVersion `{found}` is not supported; use ferry.dev/v1alpha1")]
    ApiVersion {
        /// Where the text came from.
        origin: String,
        /// What it says.
        found: String,
    },
    /// Another `kind`.
    #[error("{origin}: kind `{found}` is not a Cluster")]
    Kind {
        /// Where the text came from.
        origin: String,
        /// What it says.
        found: String,
    },
    /// A `spec.kubeadm` fragment ferry refuses.
    #[error("{origin}: {cause}")]
    Kubeadm {
        /// Where the text came from.
        origin: String,
        /// Which field and why.
        cause: FragmentError,
    },
    /// A name that cannot be a directory name under `.ferry/`.
    #[error("cluster name `{0}` must be letters, digits, `-`, `_` or `.`")]
    Name(String),
    /// A `spec.hosts` entry with an empty `ips`.
    #[error("a spec.hosts entry has no ips")]
    NoIps,
    /// A `spec.hosts` entry with an empty `roles`.
    #[error("hosts {} have no roles; give master, worker and/or registry", ips.join(", "))]
    NoRoles {
        /// The entry's addresses.
        ips: Vec<String>,
    },
    /// Neither the flags nor the file name a host.
    #[error("no hosts: give --hosts IP,IP,… or a cluster file with spec.hosts")]
    NoHosts,
    /// Something that cannot be an SSH host address.
    #[error("`{0}` is not a host address")]
    Address(String),
    /// The same address twice.
    #[error("host {0} is listed twice; each address may appear once")]
    Duplicate(String),
    /// No control plane.
    #[error("no host has the master role")]
    NoMaster,
    /// `--registry-replicas 0`.
    #[error("--registry-replicas 0: at least one host must run the registry (nodes pull every image from it)")]
    NoReplicas,
    /// More registry replicas than hosts.
    #[error("--registry-replicas {replicas}: the cluster has only {hosts} hosts")]
    ReplicasOverHosts {
        /// As asked.
        replicas: usize,
        /// Hosts in the cluster.
        hosts: usize,
    },
    /// Fewer registry replicas than the file already names.
    #[error(
        "--registry-replicas {replicas}, but {named} hosts already have the registry role in the cluster file; raise it to at least {named}"
    )]
    ReplicasUnderNamed {
        /// As asked.
        replicas: usize,
        /// Hosts the file gives the `registry` role.
        named: usize,
    },
    /// A bastion `@host` with nothing before the `@`.
    #[error("bastion `{0}`: empty user before `@`")]
    BastionUser(String),
    /// A bastion port that is not a number.
    #[error("bastion `{given}`: `{port}` is not a port")]
    BastionPort {
        /// The bastion as given.
        given: String,
        /// The part after `:`.
        port: String,
    },
    /// A bastion with no host.
    #[error("bastion `{0}` has no host")]
    BastionHost(String),
}

/// The file as written.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterFile {
    /// Must be `ferry.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `Cluster`.
    pub kind: String,
    /// `name` names the state directory `.ferry/<name>/`.
    pub metadata: Metadata,
    /// Everything else.
    pub spec: Spec,
}

/// `metadata`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Cluster name.
    pub name: String,
}

/// `spec`.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// SSH defaults for every host.
    #[serde(default)]
    pub ssh: SshSpec,
    /// Host groups.
    #[serde(default)]
    pub hosts: Vec<HostGroup>,
    /// Pod and service subnets.
    #[serde(default)]
    pub network: Option<Network>,
    /// API server endpoint name and extra certificate names.
    #[serde(default)]
    pub api_server: Option<ApiServer>,
    /// Built-in registry settings.
    #[serde(default)]
    pub registry: Option<RegistrySpec>,
    /// kubeadm fragments merged over ferry's generated configs (schema: [`crate::kube::config`]).
    #[serde(default)]
    pub kubeadm: Option<crate::kube::config::Fragments>,
}

/// SSH settings (cluster-wide, or per host group where they override the cluster's).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshSpec {
    /// Login user.
    pub user: Option<String>,
    /// sshd port.
    pub port: Option<u16>,
    /// Private key file (`~/` expands to $HOME).
    pub key: Option<String>,
    /// Run commands through sudo (implied for any user but root).
    pub sudo: Option<bool>,
    /// `[user@]host[:port]` of a jump host.
    pub bastion: Option<String>,
    /// known_hosts file to check host keys against (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<String>,
}

/// One entry of `spec.hosts`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostGroup {
    /// Addresses of the hosts in this group.
    pub ips: Vec<String>,
    /// `master`, `worker`, `registry`.
    pub roles: Vec<Role>,
    /// SSH overrides for this group.
    #[serde(default)]
    pub ssh: Option<SshSpec>,
    /// Node labels. Kept with the host and in the saved description; nothing applies them to
    /// the nodes yet.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `spec.network`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Pod CIDR.
    pub pod_subnet: Option<String>,
    /// Service CIDR.
    pub service_subnet: Option<String>,
}

/// `spec.apiServer`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiServer {
    /// DNS name nodes use for the API server (an /etc/hosts entry on every node).
    pub endpoint: Option<String>,
    /// Extra certificate names.
    #[serde(default, rename = "certSANs")]
    pub cert_sans: Vec<String>,
}

/// `spec.registry`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Port the built-in registry listens on.
    pub port: Option<u16>,
}

/// A host role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Control plane (and etcd).
    Master,
    /// Runs workloads.
    Worker,
    /// Runs the built-in registry service and holds the whole installer.
    Registry,
}

/// How to reach and become root on one host. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SshTarget {
    /// Login user.
    pub user: String,
    /// sshd port.
    pub port: u16,
    /// Private key file, if any.
    pub key: Option<PathBuf>,
    /// Whether commands go through sudo.
    pub sudo: bool,
}

/// One resolved host.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Host {
    /// Address as given.
    pub ip: String,
    /// Roles.
    pub roles: BTreeSet<Role>,
    /// SSH settings.
    pub ssh: SshTarget,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Host {
    /// Whether the host has `role`.
    pub fn is(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
    /// Short role list for tables, e.g. `master,registry`.
    pub fn role_names(&self) -> String {
        self.roles.iter().map(|r| format!("{r:?}").to_lowercase()).collect::<Vec<_>>().join(",")
    }
}

/// A jump host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Bastion {
    /// Login user.
    pub user: String,
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// The resolved cluster.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cluster {
    /// Cluster name (state lives in `.ferry/<name>/`).
    pub name: String,
    /// Hosts in order.
    pub hosts: Vec<Host>,
    /// Jump host, if any.
    pub bastion: Option<Bastion>,
    /// Key for the jump host (the cluster-wide `spec.ssh.key`).
    pub bastion_key: Option<PathBuf>,
    /// known_hosts file.
    pub known_hosts: PathBuf,
    /// Registry port.
    pub registry_port: u16,
    /// API endpoint name.
    pub api_endpoint: String,
    /// Warnings to show before anything runs (e.g. an even number of masters).
    pub warnings: Vec<String>,
    /// `spec.network` (pod and service subnets).
    pub network: Option<Network>,
    /// `spec.apiServer.certSANs`.
    pub cert_sans: Vec<String>,
    /// `spec.kubeadm` fragments.
    pub kubeadm: crate::kube::config::Fragments,
}

impl Cluster {
    /// Hosts with the registry role.
    pub fn registry_hosts(&self) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.is(Role::Registry)).collect()
    }
}

/// Command-line overrides (the parts of `run`'s flags that describe the cluster).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--hosts`.
    pub hosts: Vec<String>,
    /// `--masters`.
    pub masters: Vec<String>,
    /// `--workers`.
    pub workers: Vec<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--key`.
    pub key: Option<String>,
    /// `--sudo`.
    pub sudo: bool,
    /// `--bastion`.
    pub bastion: Option<String>,
    /// `--known-hosts`.
    pub known_hosts: Option<String>,
    /// `--registry-port`.
    pub registry_port: Option<u16>,
    /// `--registry-replicas`: how many hosts run the registry (default: every master, plus any
    /// host the file gives the `registry` role).
    pub registry_replicas: Option<usize>,
}

/// Default registry port (5000 is often taken by other registries on site).
pub const DEFAULT_REGISTRY_PORT: u16 = 5050;
/// Default API endpoint name.
pub const DEFAULT_API_ENDPOINT: &str = "apiserver.cluster.local";

/// Parses cluster.yaml text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<ClusterFile> {
    let origin = || origin.to_string();
    let file: ClusterFile =
        serde_saphyr::from_str(text).map_err(|e| ClusterError::Syntax { origin: origin(), cause: Box::new(e) })?;
    if file.api_version != "ferry.dev/v1alpha1" {
        return Err(ClusterError::ApiVersion { origin: origin(), found: file.api_version });
    }
    if file.kind != "Cluster" {
        return Err(ClusterError::Kind { origin: origin(), found: file.kind });
    }
    if let Some(k) = &file.spec.kubeadm {
        crate::kube::config::validate(k).map_err(|cause| ClusterError::Kubeadm { origin: origin(), cause })?;
    }
    Ok(file)
}

/// Reads and parses a cluster file.
pub fn load(path: &Path) -> Result<ClusterFile> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ClusterError::Read { path: path.to_path_buf(), source })?;
    parse(&text, &path.display().to_string())
}

/// Expands a leading `~/`.
pub fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root")).join(rest),
        None => PathBuf::from(p),
    }
}

fn split_list(items: &[String]) -> Vec<String> {
    items.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Parses `[user@]host[:port]`.
pub fn parse_bastion(s: &str, default_user: &str) -> Result<Bastion> {
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) if !u.is_empty() => (u.to_string(), r),
        Some(_) => return Err(ClusterError::BastionUser(s.to_string())),
        None => (default_user.to_string(), s),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !rest.starts_with('[') => {
            let port = p.parse::<u16>().map_err(|_| ClusterError::BastionPort { given: s.into(), port: p.into() })?;
            (h.to_string(), port)
        }
        _ => (rest.to_string(), 22),
    };
    if host.is_empty() {
        return Err(ClusterError::BastionHost(s.to_string()));
    }
    Ok(Bastion { user, host, port })
}

/// Resolves the file (if any) and the flags into a [`Cluster`]. Flags win over the file; host
/// flags replace the file's host list entirely.
pub fn resolve(file: Option<ClusterFile>, o: &Overrides) -> Result<Cluster> {
    let (name, spec) = match file {
        Some(f) => (f.metadata.name, f.spec),
        None => ("default".to_string(), Spec::default()),
    };
    let name = checked_name(o.name.clone().unwrap_or(name))?;
    let base = base_ssh(&spec.ssh, o);
    let mut hosts = match hosts_from_flags(o, &base) {
        Some(hosts) => hosts,
        None => hosts_from_file(&spec.hosts, &base)?,
    };
    let master_count = check_hosts(&hosts)?;
    assign_registry_replicas(&mut hosts, o.registry_replicas)?;
    let warnings = quorum_warning(master_count).into_iter().collect();
    let default_user = base.user.clone().unwrap_or_else(|| "root".into());
    let bastion = base.bastion.as_deref().map(|b| parse_bastion(b, &default_user)).transpose()?;
    let known_hosts = expand_home(base.known_hosts.as_deref().unwrap_or("~/.ssh/known_hosts"));
    let registry_port =
        o.registry_port.or(spec.registry.as_ref().and_then(|r| r.port)).unwrap_or(DEFAULT_REGISTRY_PORT);
    let api_endpoint =
        spec.api_server.as_ref().and_then(|a| a.endpoint.clone()).unwrap_or_else(|| DEFAULT_API_ENDPOINT.to_string());
    let bastion_key = base.key.as_deref().filter(|k| !k.is_empty() && *k != "none").map(expand_home);
    let cert_sans = spec.api_server.as_ref().map(|a| a.cert_sans.clone()).unwrap_or_default();
    Ok(Cluster {
        name,
        hosts,
        bastion,
        bastion_key,
        known_hosts,
        registry_port,
        api_endpoint,
        warnings,
        network: spec.network.clone(),
        cert_sans,
        kubeadm: spec.kubeadm.clone().unwrap_or_default(),
    })
}

/// `name`, if it can name the state directory `.ferry/<name>/` (no path separator, not hidden).
fn checked_name(name: String) -> Result<String> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        return Err(ClusterError::Name(name));
    }
    Ok(name)
}

/// The cluster-wide SSH settings: the file's `spec.ssh` with the flags over it.
fn base_ssh(file: &SshSpec, o: &Overrides) -> SshSpec {
    let mut base = file.clone();
    if o.user.is_some() {
        base.user = o.user.clone();
    }
    if o.port.is_some() {
        base.port = o.port;
    }
    if o.key.is_some() {
        base.key = o.key.clone();
    }
    if o.sudo {
        base.sudo = Some(true);
    }
    if o.bastion.is_some() {
        base.bastion = o.bastion.clone();
    }
    if o.known_hosts.is_some() {
        base.known_hosts = o.known_hosts.clone();
    }
    base
}

/// How to reach a host: its group's settings (`over`) where given, else the cluster-wide ones.
fn ssh_target(base: &SshSpec, over: Option<&SshSpec>) -> SshTarget {
    let pick = |f: fn(&SshSpec) -> Option<String>| over.and_then(f).or_else(|| f(base));
    let user = pick(|s| s.user.clone()).unwrap_or_else(|| "root".into());
    let port = over.and_then(|s| s.port).or(base.port).unwrap_or(22);
    // `key: none` (or empty) in a group turns off a cluster-wide key for those hosts.
    let key = pick(|s| s.key.clone()).filter(|k| !k.is_empty() && k != "none").map(|k| expand_home(&k));
    // Installing needs root, which any other login reaches only through sudo.
    let sudo = over.and_then(|s| s.sudo).or(base.sudo).unwrap_or(false) || user != "root";
    SshTarget { user, port, key, sudo }
}

fn host(ip: &str, roles: &[Role], ssh: SshTarget, labels: BTreeMap<String, String>) -> Host {
    Host { ip: ip.to_string(), roles: roles.iter().copied().collect(), ssh, labels }
}

/// The hosts `--hosts/--masters/--workers` name, or `None` when they name none (the file's
/// hosts apply then). `--hosts` alone: the first is the master, the rest workers. With
/// `--masters` or `--workers`, `--hosts` fills in what they leave out: its first host is the
/// master when `--masters` is not given, and its other hosts are workers.
fn hosts_from_flags(o: &Overrides, base: &SshSpec) -> Option<Vec<Host>> {
    let (all, masters, workers) = (split_list(&o.hosts), split_list(&o.masters), split_list(&o.workers));
    if all.is_empty() && masters.is_empty() && workers.is_empty() {
        return None;
    }
    let ssh = ssh_target(base, None);
    let with = |ips: &[String], roles: &[Role]| -> Vec<Host> {
        ips.iter().map(|ip| host(ip, roles, ssh.clone(), BTreeMap::new())).collect()
    };
    if masters.is_empty() && workers.is_empty() {
        let (first, rest) = all.split_at(1);
        return Some([with(first, &[Role::Master, Role::Registry]), with(rest, &[Role::Worker])].concat());
    }
    let masters = if masters.is_empty() { all.first().cloned().into_iter().collect() } else { masters };
    let mut rest = workers.clone();
    rest.extend(all.iter().filter(|h| !masters.contains(h) && !workers.contains(h)).cloned());
    Some([with(&masters, &[Role::Master]), with(&rest, &[Role::Worker])].concat())
}

/// The hosts of the file's `spec.hosts`, each group's SSH settings over the cluster-wide ones.
fn hosts_from_file(groups: &[HostGroup], base: &SshSpec) -> Result<Vec<Host>> {
    let mut hosts = Vec::new();
    for g in groups {
        if g.ips.is_empty() {
            return Err(ClusterError::NoIps);
        }
        if g.roles.is_empty() {
            return Err(ClusterError::NoRoles { ips: g.ips.clone() });
        }
        let ssh = ssh_target(base, g.ssh.as_ref());
        hosts.extend(g.ips.iter().map(|ip| host(ip, &g.roles, ssh.clone(), g.labels.clone())));
    }
    Ok(hosts)
}

/// Refuses a host list ferry cannot install (none, an address SSH cannot take, one twice, no
/// master); returns how many masters it has.
fn check_hosts(hosts: &[Host]) -> Result<usize> {
    if hosts.is_empty() {
        return Err(ClusterError::NoHosts);
    }
    let mut seen = BTreeSet::new();
    for h in hosts {
        if h.ip.is_empty() || h.ip.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(ClusterError::Address(h.ip.clone()));
        }
        if !seen.insert(h.ip.clone()) {
            return Err(ClusterError::Duplicate(h.ip.clone()));
        }
    }
    match hosts.iter().filter(|h| h.is(Role::Master)).count() {
        0 => Err(ClusterError::NoMaster),
        n => Ok(n),
    }
}

/// A warning for an even number of masters: etcd's quorum makes the last one add no tolerance.
fn quorum_warning(master_count: usize) -> Option<String> {
    if !master_count.is_multiple_of(2) {
        return None;
    }
    Some(format!(
        "{master_count} masters: etcd needs an odd number of members to keep quorum ({} tolerate{} as many failures as {})",
        master_count,
        if master_count == 1 { "s" } else { "" },
        master_count - 1
    ))
}

/// Gives the registry role to the replica hosts. Hosts that already have it count. By default
/// every master is a replica; with `replicas = Some(n)`, exactly `n` hosts are: those named
/// `registry`, then masters, then workers, in listed order.
fn assign_registry_replicas(hosts: &mut [Host], replicas: Option<usize>) -> Result<()> {
    let named = hosts.iter().filter(|h| h.is(Role::Registry)).count();
    let Some(n) = replicas else {
        for h in hosts.iter_mut().filter(|h| h.is(Role::Master)) {
            h.roles.insert(Role::Registry);
        }
        return Ok(());
    };
    if n == 0 {
        return Err(ClusterError::NoReplicas);
    }
    if n > hosts.len() {
        return Err(ClusterError::ReplicasOverHosts { replicas: n, hosts: hosts.len() });
    }
    if named > n {
        return Err(ClusterError::ReplicasUnderNamed { replicas: n, named });
    }
    let mut need = n - named;
    for masters in [true, false] {
        for h in hosts.iter_mut().filter(|h| !h.is(Role::Registry) && h.is(Role::Master) == masters) {
            if need == 0 {
                return Ok(());
            }
            h.roles.insert(Role::Registry);
            need -= 1;
        }
    }
    Ok(())
}

/// The cluster's description as a cluster file (`kind: Cluster`), for ferry's saved state
/// (`/etc/ferry/cluster.yaml` on master0, `.ferry/<cluster>/cluster.yaml` beside the installer).
/// It holds addresses, roles, SSH users/ports/key *paths*, network and kubeadm fragments: no
/// password, passphrase, token or certificate key ever reaches it. JSON is YAML, so [`parse`]
/// reads it back and `join`/`check`/`reset` need nothing else.
pub fn to_file(c: &Cluster) -> String {
    let hosts = c
        .hosts
        .iter()
        .map(|h| HostGroup {
            ips: vec![h.ip.clone()],
            roles: h.roles.iter().copied().collect(),
            ssh: Some(SshSpec {
                user: Some(h.ssh.user.clone()),
                port: Some(h.ssh.port),
                key: Some(h.ssh.key.as_ref().map(|k| k.display().to_string()).unwrap_or_else(|| "none".into())),
                sudo: Some(h.ssh.sudo),
                bastion: None,
                known_hosts: None,
            }),
            labels: h.labels.clone(),
        })
        .collect();
    let file = ClusterFile {
        api_version: "ferry.dev/v1alpha1".into(),
        kind: "Cluster".into(),
        metadata: Metadata { name: c.name.clone() },
        spec: Spec {
            ssh: SshSpec {
                user: None,
                port: None,
                key: c.bastion_key.as_ref().map(|k| k.display().to_string()),
                sudo: None,
                bastion: c.bastion.as_ref().map(|b| format!("{}@{}:{}", b.user, b.host, b.port)),
                known_hosts: Some(c.known_hosts.display().to_string()),
            },
            hosts,
            network: c.network.clone(),
            api_server: Some(ApiServer { endpoint: Some(c.api_endpoint.clone()), cert_sans: c.cert_sans.clone() }),
            registry: Some(RegistrySpec { port: Some(c.registry_port) }),
            kubeadm: Some(c.kubeadm.clone()),
        },
    };
    format!(
        "# Written by ferry: this cluster's description (no secrets). Read by join, check and reset.\n{}\n",
        serde_json::to_string_pretty(&file).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Cluster
metadata: {name: prod}
spec:
  ssh: {user: root, port: 22, key: ~/.ssh/id_ed25519, sudo: false, bastion: ops@10.0.0.254:22}
  hosts:
    - {ips: [10.0.0.1], roles: [master, registry]}
    - {ips: [10.0.0.2, 10.0.0.3], roles: [worker], ssh: {user: ops, sudo: true}, labels: {zone: a}}
  network: {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12}
  apiServer: {endpoint: apiserver.cluster.local, certSANs: []}
  registry: {port: 5050}
"#;

    #[test]
    fn registry_replicas() {
        let reg = |c: &Cluster| c.registry_hosts().iter().map(|h| h.ip.clone()).collect::<Vec<_>>();
        // Default: every master, in order.
        let o = Overrides { masters: vec!["m1,m2,m3".into()], workers: vec!["w1".into()], ..Default::default() };
        assert_eq!(reg(&resolve(None, &o).unwrap()), ["m1", "m2", "m3"]);
        // N: masters first, then workers.
        let o = Overrides { registry_replicas: Some(2), ..o };
        assert_eq!(reg(&resolve(None, &o).unwrap()), ["m1", "m2"]);
        let o = Overrides {
            masters: vec!["m1".into()],
            workers: vec!["w1,w2".into()],
            registry_replicas: Some(2),
            ..Default::default()
        };
        assert_eq!(reg(&resolve(None, &o).unwrap()), ["m1", "w1"]);
        // Hosts named `registry` in the file count; the default adds the masters to them.
        let file = || {
            parse(
                EXAMPLE
                    .replace("roles: [master, registry]", "roles: [master]")
                    .replace("[10.0.0.2, 10.0.0.3], roles: [worker]", "[10.0.0.2, 10.0.0.3], roles: [worker, registry]")
                    .as_str(),
                "x",
            )
            .unwrap()
        };
        assert_eq!(reg(&resolve(Some(file()), &Overrides::default()).unwrap()), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let err = resolve(Some(file()), &Overrides { registry_replicas: Some(1), ..Default::default() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 hosts already have the registry role"), "{err}");
        assert!(
            resolve(None, &Overrides { hosts: vec!["a,b".into()], registry_replicas: Some(0), ..Default::default() })
                .is_err()
        );
        assert!(
            resolve(None, &Overrides { hosts: vec!["a,b".into()], registry_replicas: Some(3), ..Default::default() })
                .is_err()
        );
        let o = Overrides { hosts: vec!["a,b".into()], registry_replicas: Some(2), ..Default::default() };
        assert_eq!(reg(&resolve(None, &o).unwrap()), ["a", "b"]);
    }

    #[test]
    fn parses_the_example() {
        let c = resolve(Some(parse(EXAMPLE, "x").unwrap()), &Overrides::default()).unwrap();
        assert_eq!(c.name, "prod");
        assert_eq!(c.hosts.len(), 3);
        assert!(c.hosts[0].is(Role::Master) && c.hosts[0].is(Role::Registry));
        assert_eq!(c.hosts[1].ssh.user, "ops");
        assert!(c.hosts[1].ssh.sudo);
        assert!(!c.hosts[0].ssh.sudo);
        assert_eq!(c.hosts[2].labels["zone"], "a");
        assert_eq!(c.bastion, Some(Bastion { user: "ops".into(), host: "10.0.0.254".into(), port: 22 }));
        assert_eq!(c.registry_port, 5050);
        assert!(c.hosts[1].ssh.key.as_ref().unwrap().ends_with(".ssh/id_ed25519"));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn unknown_fields_name_the_field_and_line() {
        let bad = EXAMPLE.replace("sudo: false,", "sudo: false, pasword: x,");
        let err = format!("{:#}", parse(&bad, "cluster.yaml").unwrap_err());
        assert!(err.contains("pasword"), "{err}");
        assert!(err.contains("line") || err.contains(":6"), "{err}");
    }

    #[test]
    fn hosts_flag_makes_first_master_rest_workers() {
        let o = Overrides { hosts: vec!["a,b".into(), "c".into()], ..Default::default() };
        let c = resolve(None, &o).unwrap();
        let roles: Vec<String> = c.hosts.iter().map(|h| h.role_names()).collect();
        assert_eq!(roles, ["master,registry", "worker", "worker"]);
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            masters: vec!["m1".into()],
            workers: vec!["w1,w2".into()],
            user: Some("guard".into()),
            ..Default::default()
        };
        let c = resolve(Some(parse(EXAMPLE, "x").unwrap()), &o).unwrap();
        assert_eq!(c.hosts.iter().map(|h| h.ip.as_str()).collect::<Vec<_>>(), ["m1", "w1", "w2"]);
        assert!(c.hosts.iter().all(|h| h.ssh.user == "guard" && h.ssh.sudo));
        assert!(c.hosts[0].is(Role::Registry));
    }

    #[test]
    fn duplicates_and_even_masters() {
        let o = Overrides { hosts: vec!["a,b,a".into()], ..Default::default() };
        assert!(format!("{:#}", resolve(None, &o).unwrap_err()).contains("a is listed twice"));
        let o = Overrides { masters: vec!["a,b".into()], workers: vec!["c".into()], ..Default::default() };
        let c = resolve(None, &o).unwrap();
        assert!(c.warnings[0].contains("odd number"), "{:?}", c.warnings);
    }

    #[test]
    fn bastion_forms() {
        assert_eq!(
            parse_bastion("10.1.1.1", "root").unwrap(),
            Bastion { user: "root".into(), host: "10.1.1.1".into(), port: 22 }
        );
        assert_eq!(parse_bastion("ops@h:2200", "root").unwrap().port, 2200);
        assert!(parse_bastion("ops@h:x", "root").is_err());
    }

    #[test]
    fn hosts_fills_in_what_masters_and_workers_leave_out() {
        let ips = |o: &Overrides| {
            let c = resolve(None, o).unwrap();
            c.hosts.iter().map(|h| format!("{}={}", h.ip, h.role_names())).collect::<Vec<_>>()
        };
        let o = Overrides { hosts: vec!["a,b,c".into()], masters: vec!["b".into()], ..Default::default() };
        assert_eq!(ips(&o), ["b=master,registry", "a=worker", "c=worker"]);
        let o = Overrides { hosts: vec!["a,b,c".into()], workers: vec!["c".into()], ..Default::default() };
        assert_eq!(ips(&o), ["a=master,registry", "c=worker", "b=worker"]);
        let o = Overrides { hosts: vec![" , ".into()], ..Default::default() };
        assert!(resolve(None, &o).unwrap_err().to_string().starts_with("no hosts:"));
    }
}
