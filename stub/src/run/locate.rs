//! Finding an existing cluster for `check`, `reset` and `join`, which need only the master's
//! address: `--master IP` reads the description ferry saved on master0 (/etc/ferry/cluster.yaml),
//! reaching it with `-f FILE`'s SSH settings when a file is given too; `-f FILE` alone reads a
//! cluster file, and otherwise the description saved beside the installer
//! (`.ferry/<cluster>/cluster.yaml`; `--name` picks one when there are several).

use crate::cli::ClusterCommandArgs;
use crate::cluster::{self, Cluster, Overrides};
use crate::ssh::client::{Jump, Login, SshHost, SshOptions};
use anyhow::{Context, Result, anyhow, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

/// The cluster-file overrides that `run`'s connection flags stand for, with `hosts` as the host list.
pub(crate) fn overrides(a: &crate::cli::RunArgs, hosts: Vec<String>) -> Overrides {
    Overrides {
        hosts,
        masters: Vec::new(),
        workers: Vec::new(),
        name: a.name.clone(),
        user: a.user.clone(),
        port: a.port,
        key: a.ssh_key.as_ref().map(|p| p.display().to_string()),
        sudo: a.sudo,
        bastion: a.bastion.clone(),
        known_hosts: a.known_hosts.as_ref().map(|p| p.display().to_string()),
        registry_port: a.registry_port,
        registry_replicas: None,
    }
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
            Ok(Some(Jump::connect(&login, opts).await?))
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
            .ok_or_else(|| anyhow!("{ip} is not a host of cluster {}", self.cluster.name))?;
        let login = Login {
            host: h.ip.clone(),
            port: h.ssh.port,
            user: h.ssh.user.clone(),
            key: h.ssh.key.clone(),
            sudo: h.ssh.sudo,
        };
        SshHost::connect(&login, &self.opts, self.jump.clone())
            .await
            .map(Arc::new)
            .with_context(|| format!("{ip}: connecting"))
    }
}

/// Finds the cluster `args` point at.
pub async fn locate(args: &ClusterCommandArgs) -> Result<Found> {
    let a = &args.run;
    let secrets = super::secrets(a)?;
    let mk_opts = |known: PathBuf| SshOptions {
        known_hosts: known,
        accept_new: a.accept_new_host_keys,
        connect_timeout: Duration::from_secs(a.connect_timeout),
        keepalive: Duration::from_secs(a.keepalive.max(1)),
        secrets: secrets.clone(),
    };
    let file = if let Some(master) = &args.master {
        // A cluster file given too says how to reach the master (its host entry, or else the
        // file's cluster-wide SSH settings: user, key, known_hosts, bastion); flags still win.
        let probe = match &a.cluster_file {
            Some(f) => {
                let listed = cluster::resolve(Some(cluster::load(f)?), &overrides(a, Vec::new()))?;
                if listed.hosts.iter().any(|h| &h.ip == master) {
                    listed
                } else {
                    cluster::resolve(Some(cluster::load(f)?), &overrides(a, vec![master.clone()]))?
                }
            }
            None => cluster::resolve(None, &overrides(a, vec![master.clone()]))?,
        };
        let opts = mk_opts(probe.known_hosts.clone());
        let jump = jump_for(&probe, &opts).await?;
        let h = probe.hosts.iter().find(|h| &h.ip == master).expect("the probe lists the master");
        let login = Login {
            host: h.ip.clone(),
            port: h.ssh.port,
            user: h.ssh.user.clone(),
            key: h.ssh.key.clone(),
            sudo: h.ssh.sudo,
        };
        let conn = SshHost::connect(&login, &opts, jump).await.with_context(|| format!("{master}: connecting"))?;
        let out = crate::ssh::RemoteHost::run(
            &conn,
            &format!("cat {} 2>/dev/null || true", super::control::CLUSTER_FILE),
            b"",
        )
        .await?;
        super::control::require_cluster_file(master, &out.text())?;
        cluster::parse(&out.text(), &format!("{master}:{}", super::control::CLUSTER_FILE))?
    } else if let Some(f) = &a.cluster_file {
        cluster::load(f)?
    } else {
        let base = super::local_state_dir(&a.installer, "x");
        let base = base.parent().map(PathBuf::from).unwrap_or_default();
        let path = match &a.name {
            Some(n) => base.join(n).join("cluster.yaml"),
            None => {
                let found: Vec<PathBuf> = std::fs::read_dir(&base)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path().join("cluster.yaml"))
                    .filter(|p| p.exists())
                    .collect();
                match found.len() {
                    1 => found[0].clone(),
                    0 => bail!(
                        "no cluster is known here ({} holds no cluster.yaml): give --master IP (the first master of a cluster ferry made)",
                        base.display()
                    ),
                    _ => bail!("several clusters are known in {}: pick one with --name", base.display()),
                }
            }
        };
        if !path.exists() {
            bail!("no cluster description at {}: give --master IP", path.display());
        }
        cluster::load(&path)?
    };
    let cluster = cluster::resolve(Some(file), &overrides(a, Vec::new()))?;
    let opts = mk_opts(cluster.known_hosts.clone());
    let jump = jump_for(&cluster, &opts).await?;
    let local_state = super::local_state_dir(&a.installer, &cluster.name);
    Ok(Found { cluster, opts, jump, local_state })
}
