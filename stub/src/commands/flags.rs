//! The command line's connection flags as the plain values the modules below take.
//!
//! Owns the translation from `run`'s flags (which `check`, `reset` and `join` share) to
//! [`Overrides`], [`Secrets`] and [`Where`].

use crate::cli::{ClusterCommandArgs, RunArgs};
use crate::cluster::Overrides;
use crate::cluster::locate::Where;
use crate::ssh::{Secret, Secrets};
use anyhow::{Context, Result};
use std::time::Duration;

/// The passwords and passphrases `a` asks for: from the environment, stdin or a prompt. Read
/// once per process: a delta's base may be looked for on the cluster before the command itself
/// connects, and stdin gives a password only once, a prompt should ask only once.
pub fn secrets(a: &RunArgs) -> Result<Secrets> {
    static READ: std::sync::Mutex<Option<Secrets>> = std::sync::Mutex::new(None);
    let mut read = READ.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = &*read {
        return Ok(s.clone());
    }
    let s = read_secrets(a)?;
    *read = Some(s.clone());
    Ok(s)
}

fn read_secrets(a: &RunArgs) -> Result<Secrets> {
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

/// The cluster-file overrides that `run`'s connection flags stand for, with `hosts` as the host list.
pub fn overrides(a: &RunArgs, hosts: Vec<String>) -> Overrides {
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

/// Where `run`'s flags say the cluster is (its file, its hosts, or the one saved beside the
/// installer); reads the secrets the flags ask for.
pub fn where_run(a: &RunArgs) -> Result<Where> {
    where_at(a, None, a.hosts.clone())
}

/// Where `args` say the cluster is; reads the secrets the flags ask for.
pub fn where_(args: &ClusterCommandArgs) -> Result<Where> {
    where_at(&args.run, args.master.clone(), Vec::new())
}

/// Where the cluster is: `--master`, or else `a`'s file, `hosts`, or the one saved beside the
/// installer; reads the secrets the flags ask for.
pub fn where_at(a: &RunArgs, master: Option<String>, hosts: Vec<String>) -> Result<Where> {
    Ok(Where {
        master,
        cluster_file: a.cluster_file.clone(),
        name: a.name.clone(),
        installer: a.installer.clone(),
        state_dir: a.state_dir.clone(),
        overrides: overrides(a, hosts),
        accept_new: a.accept_new_host_keys,
        connect_timeout: Duration::from_secs(a.connect_timeout),
        keepalive: Duration::from_secs(a.keepalive.max(1)),
        secrets: secrets(a)?,
    })
}
