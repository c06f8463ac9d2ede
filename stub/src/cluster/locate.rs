//! Finding an existing cluster for `check`, `reset` and `join`, which need only the master's
//! address: `--master IP` reads the description ferry saved on master0 (/etc/ferry/cluster.yaml),
//! reaching it with `-f FILE`'s SSH settings when a file is given too; `-f FILE` alone reads a
//! cluster file, and otherwise the description saved beside the installer
//! (`.ferry/<cluster>/cluster.yaml`; `--name` picks one when there are several).
//!
//! Owns also the local state directory beside the installer (where the description and the
//! per-host records are kept), and [`LocateError`]. Takes plain values ([`Where`]), not the
//! command line.

use crate::cluster::{self, Cluster, ClusterError, Host, Overrides, state_dir};
use crate::ssh::Secrets;
use crate::ssh::client::{Jump, Login, SshHost, SshOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type Result<T, E = LocateError> = std::result::Result<T, E>;

/// Why an existing cluster cannot be found or reached.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// The description found does not describe a usable cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The description cannot be written into the local state.
    #[error("saving the cluster description in {}", dir.display())]
    Save {
        /// `.ferry/<cluster>/`.
        dir: PathBuf,
        /// Why.
        #[source]
        cause: crate::registry::config::ConfigError,
    },
    /// The master answered, but holds no description.
    #[error(
        "{ip}: no ferry cluster here ({} is missing): run `installer run` first, or give the right --master",
        crate::node::CLUSTER_FILE
    )]
    NoClusterHere {
        /// The master.
        ip: String,
    },
    /// A host the description does not list.
    #[error("{ip} is not a host of cluster {cluster}")]
    NotAHost {
        /// The host asked for.
        ip: String,
        /// The cluster's name.
        cluster: String,
    },
    /// `--master` names a host the given cluster file does not list.
    #[error("{master} is not in the cluster file")]
    MasterNotListed {
        /// The `--master` address.
        master: String,
    },
    /// A cluster host cannot be reached. The cause is part of the message (not a `source`), so
    /// the warnings that print this error alone still say why.
    #[error("{ip}: connecting: {cause}")]
    Connect {
        /// The host.
        ip: String,
        /// The SSH client's error.
        cause: Box<crate::ssh::SshError>,
    },
    /// The bastion cannot be reached: the SSH client's error as it gave it.
    #[error(transparent)]
    Bastion(Box<crate::ssh::SshError>),
    /// The master was reached, but reading its description failed: the SSH client's error as
    /// it gave it.
    #[error(transparent)]
    ReadDescription(anyhow::Error),
    /// Nothing is saved in the local state.
    #[error(
        "no cluster is known here (no cluster.yaml under {places}): give --master IP (the first master of a cluster ferry made), or --state-dir"
    )]
    NoneSaved {
        /// The places looked in.
        places: String,
    },
    /// More than one cluster is saved and no `--name` picks one.
    #[error("several clusters are known under {places}: pick one with --name")]
    SeveralSaved {
        /// The places looked in.
        places: String,
    },
    /// `--name` names a cluster not saved here.
    #[error("no description of cluster {name} under {places}: give --master IP, or --state-dir")]
    NoDescription {
        /// The name asked for.
        name: String,
        /// The places looked in.
        places: String,
    },
}

/// A located cluster and how to reach its hosts.
pub struct Found {
    /// The description.
    pub cluster: Cluster,
    /// SSH options.
    pub opts: SshOptions,
    /// The bastion session, if any.
    pub jump: Option<Arc<Jump>>,
    /// `.ferry/<cluster>/` beside the installer.
    pub local_state: PathBuf,
}

/// The local state of an existing cluster (the saved description and each host's records): where
/// it is found ([`state_dir`]), else where it can be written, else the first place it would go
/// (reading commands need none; writing ones fail there, naming it).
pub fn local_state_dir(installer: &Path, given: Option<&Path>, cluster: &str) -> PathBuf {
    let bases = state_dir::bases(installer, given, &state_dir::process_env);
    state_dir::find(&bases, cluster)
        .or_else(|| state_dir::choose_writable(&bases, cluster).ok())
        .map(|c| c.dir)
        .unwrap_or_else(|| bases[0].dir.join(cluster))
}

/// Writes `cluster.yaml` into a cluster's local state directory.
pub fn save_local(dir: &Path, text: &str) -> Result<()> {
    crate::registry::config::write_atomic(&dir.join("cluster.yaml"), text.as_bytes())
        .map_err(|cause| LocateError::Save { dir: dir.to_path_buf(), cause })
}

/// Errors when `text` (a host's answer) shows no ferry cluster.
pub fn require_cluster_file(ip: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(LocateError::NoClusterHere { ip: ip.to_string() });
    }
    Ok(())
}

/// How to log in to cluster host `h`, as its `ssh` settings say.
pub fn login_for(h: &cluster::Host) -> Login {
    Login { host: h.ip.clone(), port: h.ssh.port, user: h.ssh.user.clone(), key: h.ssh.key.clone(), sudo: h.ssh.sudo }
}

/// The bastion session for `c`, if it has one.
pub async fn jump_for(c: &Cluster, opts: &SshOptions) -> Result<Option<Arc<Jump>>> {
    match &c.bastion {
        Some(b) => {
            let login = Login {
                host: b.host.clone(),
                port: b.port,
                user: b.user.clone(),
                key: c.bastion_key.clone(),
                sudo: false,
            };
            Ok(Some(Jump::connect(&login, opts).await.map_err(|e| LocateError::Bastion(Box::new(e)))?))
        }
        None => Ok(None),
    }
}

impl Found {
    /// Connects to one host of the cluster (or, for hosts outside it, with the base settings).
    pub async fn connect_one(&self, ip: &str) -> Result<Arc<SshHost>> {
        let h = self
            .cluster
            .hosts
            .iter()
            .find(|h| h.ip == ip)
            .ok_or_else(|| LocateError::NotAHost { ip: ip.to_string(), cluster: self.cluster.name.clone() })?;
        connect_host(h, &self.opts, self.jump.clone()).await.map(Arc::new)
    }
}

/// Logs in to `h` as the cluster says to reach it.
async fn connect_host(h: &Host, opts: &SshOptions, jump: Option<Arc<Jump>>) -> Result<SshHost> {
    SshHost::connect(&login_for(h), opts, jump)
        .await
        .map_err(|cause| LocateError::Connect { ip: h.ip.clone(), cause: Box::new(cause) })
}

/// Where a cluster is and how to reach it: the command line's answer, as plain values.
#[derive(Clone, Debug)]
pub struct Where {
    /// The cluster's first master, whose saved description is read (`--master`).
    pub master: Option<String>,
    /// A cluster file (`-f`).
    pub cluster_file: Option<PathBuf>,
    /// Which of the clusters saved beside the installer (`--name`).
    pub name: Option<String>,
    /// The installer, beside which the local state is kept when it can be written.
    pub installer: PathBuf,
    /// `--state-dir`: the only place the local state is looked for.
    pub state_dir: Option<PathBuf>,
    /// The flags that describe the cluster and its SSH settings (no hosts).
    pub overrides: Overrides,
    /// Accept unknown host keys.
    pub accept_new: bool,
    /// Time allowed for one SSH connection.
    pub connect_timeout: Duration,
    /// SSH keepalive interval.
    pub keepalive: Duration,
    /// Passwords and passphrases.
    pub secrets: Secrets,
}

impl Where {
    fn ssh(&self, known_hosts: PathBuf) -> SshOptions {
        SshOptions {
            known_hosts,
            accept_new: self.accept_new,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            secrets: self.secrets.clone(),
        }
    }

    fn overrides(&self, hosts: Vec<String>) -> Overrides {
        Overrides { hosts, ..self.overrides.clone() }
    }
}

/// Finds the cluster `w` points at.
pub async fn locate(w: &Where) -> Result<Found> {
    let file = match (&w.master, &w.cluster_file) {
        (Some(master), _) => from_master(w, master).await?,
        (None, Some(f)) => cluster::load(f)?,
        (None, None) => cluster::load(&saved(w)?)?,
    };
    reach(w, cluster::resolve(Some(file), &w.overrides(Vec::new()))?).await
}

/// The cluster `w` points at, where hosts given on the command line alone (`run --hosts`, no
/// file, no `--master`) describe one too.
pub async fn locate_listed(w: &Where) -> Result<Found> {
    if w.master.is_some() || w.cluster_file.is_some() || w.overrides.hosts.is_empty() {
        return locate(w).await;
    }
    reach(w, cluster::resolve(None, &w.overrides)?).await
}

/// How to reach `cluster` with `w`'s SSH settings, and its local state.
async fn reach(w: &Where, cluster: Cluster) -> Result<Found> {
    let opts = w.ssh(cluster.known_hosts.clone());
    let jump = jump_for(&cluster, &opts).await?;
    let local_state = local_state_dir(&w.installer, w.state_dir.as_deref(), &cluster.name);
    Ok(Found { cluster, opts, jump, local_state })
}

/// A cluster that holds `master`, only to reach it. A cluster file given too says how: its
/// host entry for `master`, or else the file's cluster-wide SSH settings (user, key,
/// known_hosts, bastion) for a master it does not list. Flags still win.
fn master_probe(w: &Where, master: &str) -> Result<Cluster> {
    let just_master = || w.overrides(vec![master.to_string()]);
    let Some(f) = &w.cluster_file else {
        return Ok(cluster::resolve(None, &just_master())?);
    };
    let file = cluster::load(f)?;
    let listed = cluster::resolve(Some(file.clone()), &w.overrides(Vec::new()))?;
    if listed.hosts.iter().any(|h| h.ip == master) {
        return Ok(listed);
    }
    Ok(cluster::resolve(Some(file), &just_master())?)
}

/// The description ferry saved on `master`.
async fn from_master(w: &Where, master: &str) -> Result<cluster::ClusterFile> {
    let probe = master_probe(w, master)?;
    let opts = w.ssh(probe.known_hosts.clone());
    let jump = jump_for(&probe, &opts).await?;
    let h = probe
        .hosts
        .iter()
        .find(|h| h.ip == master)
        .ok_or_else(|| LocateError::MasterNotListed { master: master.to_string() })?;
    let conn = connect_host(h, &opts, jump).await?;
    let out =
        crate::ssh::RemoteHost::run(&conn, &format!("cat {} 2>/dev/null || true", crate::node::CLUSTER_FILE), b"")
            .await
            .map_err(LocateError::ReadDescription)?;
    require_cluster_file(master, &out.text())?;
    Ok(cluster::parse(&out.text(), &format!("{master}:{}", crate::node::CLUSTER_FILE))?)
}

/// The path of the description saved in the local state: `--name`'s, or the only one there.
fn saved(w: &Where) -> Result<PathBuf> {
    let bases = state_dir::bases(&w.installer, w.state_dir.as_deref(), &state_dir::process_env);
    let places = bases.iter().map(|b| b.dir.display().to_string()).collect::<Vec<_>>().join(", ");
    match &w.name {
        Some(n) => state_dir::find(&bases, n)
            .map(|c| c.dir.join("cluster.yaml"))
            .ok_or_else(|| LocateError::NoDescription { name: n.clone(), places }),
        None => {
            let mut found = state_dir::saved(&bases);
            match found.len() {
                1 => Ok(found.remove(0)),
                0 => Err(LocateError::NoneSaved { places }),
                _ => Err(LocateError::SeveralSaved { places }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::SshError;

    /// `check` prints this error on its own when a master does not answer: the cause must be in
    /// the message itself, not only in the source chain.
    #[test]
    fn a_host_that_cannot_be_reached_says_why_when_printed_alone() {
        let cause = SshError::Timeout { what: "unreachable".into(), seconds: 20 };
        let e = LocateError::Connect { ip: "10.0.0.1".into(), cause: Box::new(cause) };
        assert_eq!(e.to_string(), "10.0.0.1: connecting: unreachable: no SSH answer within 20 s");
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "10.0.0.1: connecting: unreachable: no SSH answer within 20 s"
        );
    }
}
