//! Finding an existing cluster for `check`, `reset` and `join`, which need only the master's
//! address: `--master IP` reads the description ferry saved on master0 (/etc/ferry/cluster.yaml),
//! reaching it with `-f FILE`'s SSH settings when a file is given too; `-f FILE` alone reads a
//! cluster file, and otherwise the description saved beside the installer
//! (`.ferry/<cluster>/cluster.yaml`; `--name` picks one when there are several).
//!
//! Owns also the local state directory beside the installer (where the description and the
//! per-host records are kept) and the secrets the connection flags ask for.

use crate::cli::ClusterCommandArgs;
use crate::cluster::{self, Cluster, Overrides};
use crate::ssh::client::{Jump, Login, SshHost, SshOptions};
use crate::ssh::{Secret, Secrets};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
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

/// The passwords and passphrases `a` asks for: from the environment, stdin or a prompt.
pub fn secrets(a: &crate::cli::RunArgs) -> Result<Secrets> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).map(Secret::new);
    let mut s = Secrets {
        ssh_password: env("FERRY_SSH_PASSWORD"),
        sudo_password: env("FERRY_SUDO_PASSWORD"),
        key_passphrase: env("FERRY_SSH_KEY_PASSPHRASE"),
    };
    if a.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
        s.ssh_password = Some(Secret::new(line.trim_end_matches(['\n', '\r']).to_string()));
    }
    if a.ask_password && s.ssh_password.is_none() {
        s.ssh_password = Some(crate::ssh::prompt_secret("SSH password")?);
    }
    if a.ask_sudo_password && s.sudo_password.is_none() {
        s.sudo_password = Some(crate::ssh::prompt_secret("sudo password")?);
    }
    Ok(s)
}

/// `.ferry/<cluster>/` beside the installer: the saved description and each host's records.
pub fn local_state_dir(installer: &Path, cluster: &str) -> PathBuf {
    let exe = if installer == Path::new(crate::node::SELF_EXE) {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("installer"))
    } else {
        installer.to_path_buf()
    };
    exe.parent().unwrap_or(Path::new(".")).join(".ferry").join(cluster)
}

/// Writes `.ferry/<cluster>/cluster.yaml`.
pub fn save_local(dir: &Path, text: &str) -> Result<()> {
    crate::registry::config::write_atomic(&dir.join("cluster.yaml"), text.as_bytes())
        .with_context(|| format!("saving the cluster description in {}", dir.display()))
}

/// Errors when `text` (a host's answer) shows no ferry cluster.
pub fn require_cluster_file(ip: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!(
            "{ip}: no ferry cluster here ({} is missing): run `installer run` first, or give the right --master",
            crate::node::CLUSTER_FILE
        );
    }
    Ok(())
}

/// The cluster-file overrides that `run`'s connection flags stand for, with `hosts` as the host list.
pub fn overrides(a: &crate::cli::RunArgs, hosts: Vec<String>) -> Overrides {
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
    let secrets = secrets(a)?;
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
        let out =
            crate::ssh::RemoteHost::run(&conn, &format!("cat {} 2>/dev/null || true", crate::node::CLUSTER_FILE), b"")
                .await?;
        require_cluster_file(master, &out.text())?;
        cluster::parse(&out.text(), &format!("{master}:{}", crate::node::CLUSTER_FILE))?
    } else if let Some(f) = &a.cluster_file {
        cluster::load(f)?
    } else {
        let base = local_state_dir(&a.installer, "x");
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
    let local_state = local_state_dir(&a.installer, &cluster.name);
    Ok(Found { cluster, opts, jump, local_state })
}
