//! `installer join --workers IP,… [--masters IP,…]`: adds nodes to a running cluster.
//!
//! Owns only the framing (a join is a [`crate::run`] delivery over the grown cluster): it finds the cluster (`--master IP` or the local state), writes the
//! description with the new hosts to `.ferry/<cluster>/cluster.yaml`, and runs `run` on it.
//! Because `run` is resumable and its kubeadm phase counts a host done once it has joined, the
//! existing nodes are only re-checked: the new ones get preflight, distribution and preparation;
//! master0 makes a fresh bootstrap token and certificate key (`kubeadm token create`,
//! `kubeadm init phase upload-certs --upload-certs`, so an expired key is simply renewed); the
//! new hosts join; and when masters were added every node's ferry-lb gets the new backends
//! (lb.yaml rewritten, SIGHUP via `systemctl reload`). The bundle's launch steps are not run
//! again: joining adds nodes, it does not redeploy the apps.

use crate::cli::ClusterCommandArgs;
use crate::cluster::{Cluster, Host, Role, SshTarget};
use anyhow::{Result, bail};

/// Entry point of `installer join`.
pub fn run(mut args: ClusterCommandArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let split = |v: &[String]| -> Vec<String> {
        v.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    let new_masters = split(&args.run.masters);
    let mut new_workers = split(&args.run.workers);
    new_workers.extend(split(&args.run.hosts));
    if new_masters.is_empty() && new_workers.is_empty() {
        bail!("join needs the new hosts: --workers IP,… and/or --masters IP,…");
    }
    args.run.masters.clear();
    args.run.workers.clear();
    args.run.hosts.clear();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let found = rt.block_on(crate::cluster::locate::locate(&super::flags::where_(&args)?))?;
    drop(rt);
    let mut cluster = found.cluster;
    let ssh = new_hosts_ssh(&args, &cluster)?;
    grow(&mut cluster, &new_masters, &new_workers, &ssh)?;
    crate::cluster::locate::save_local(&found.local_state, &crate::cluster::to_file(&cluster))?;
    args.run.cluster_file = Some(found.local_state.join("cluster.yaml"));
    args.run.name = None;
    args.run.skip_launch = true;
    args.run.operation = crate::protocol::lock::Operation::Join;
    super::run::run(&args.run, quiet, no_progress)
}

/// How new hosts are reached: master0's SSH settings, unless the flags (or else the file's
/// cluster-wide settings) say otherwise.
fn new_hosts_ssh(args: &ClusterCommandArgs, cluster: &Cluster) -> Result<SshTarget> {
    let probe = crate::cluster::resolve(
        None,
        &crate::cluster::Overrides {
            hosts: vec!["0.0.0.0".into()],
            user: args.run.user.clone(),
            port: args.run.port,
            key: args.run.ssh_key.as_ref().map(|p| p.display().to_string()),
            sudo: args.run.sudo,
            ..Default::default()
        },
    )?;
    Ok(cluster
        .hosts
        .iter()
        .find(|h| h.is(Role::Master))
        .map(|h| h.ssh.clone())
        .filter(|_| args.run.user.is_none() && args.run.port.is_none() && args.run.ssh_key.is_none())
        .unwrap_or(probe.hosts[0].ssh.clone()))
}

/// Adds the new hosts to `cluster` (a host listed already in the same role is an earlier join
/// continued; in another role, an error).
fn grow(cluster: &mut Cluster, new_masters: &[String], new_workers: &[String], ssh: &SshTarget) -> Result<()> {
    for (ips, role) in [(new_masters, Role::Master), (new_workers, Role::Worker)] {
        for ip in ips {
            if let Some(h) = cluster.hosts.iter().find(|h| &h.ip == ip) {
                // Listed by an earlier join that stopped (or one that finished): the same command
                // again continues it; `run` skips what is done.
                if h.is(role) {
                    eprintln!("{ip} is already listed in cluster {}; continuing its join", cluster.name);
                    continue;
                }
                bail!("{ip} is already a host of cluster {}, as {}", cluster.name, h.role_names());
            }
            cluster.hosts.push(Host {
                ip: ip.clone(),
                roles: [role].into_iter().collect(),
                ssh: ssh.clone(),
                labels: Default::default(),
            });
        }
    }
    Ok(())
}
