//! `installer upgrade`: the command line to a [`crate::upgrade`] of the cluster it finds
//! (`--master IP`, `-f cluster.yaml`, or the local state), or `--revert-node HOST`.

use crate::cli::UpgradeArgs;
use crate::cluster::locate::Found;
use crate::protocol::lock::Operation;
use crate::run::lock::LockRequest;
use crate::run::{self, records};
use crate::upgrade::{UpgradeOptions, revert};
use anyhow::{Context, Result, anyhow};
use std::time::{Duration, Instant};

/// Entry point of `installer upgrade`.
pub fn run(mut args: UpgradeArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("upgrade").build()?;
    rt.block_on(async move {
        let found = crate::cluster::locate::locate(&super::flags::where_(&args.cluster)?).await?;
        if let Some(host) = args.revert_node.clone() {
            let rep = run::progress::Reporter::new(args.cluster.run.json, quiet, true);
            return revert_node(&found, &host, &args, &rep).await;
        }
        crate::cluster::locate::save_local(&found.local_state, &crate::cluster::to_file(&found.cluster))?;
        let a = &mut args.cluster.run;
        a.cluster_file = Some(found.local_state.join("cluster.yaml"));
        a.name = None;
        a.operation = Operation::Upgrade;
        let started = Instant::now();
        let opts = super::run::options(a, quiet, no_progress);
        let up = UpgradeOptions {
            max_unavailable: args.max_unavailable as usize,
            drain_timeout: Duration::from_secs(args.drain_timeout),
        };
        let overrides = super::flags::overrides(a, Vec::new());
        let ctx = run::setup::open(&opts, a.cluster_file.as_deref(), &overrides)?;
        let addrs: Vec<String> = ctx.cluster.hosts.iter().map(|h| h.ip.clone()).collect();
        ctx.rep.hosts(&addrs);
        let connecting = Instant::now();
        let work = async {
            let (connected, problems) = run::setup::connect(&ctx, &found.opts, opts.parallel).await?;
            crate::upgrade::upgrade(ctx.clone(), &opts, &up, connected, problems, started, connecting).await
        };
        tokio::select! {
            result = work => result,
            signal = run::interrupt::signalled() => Err(run::interrupt::stopped(&ctx, signal?).into()),
        }
    })
}

/// `--revert-node HOST`: the host and a master that speaks for the cluster, the host's lock (so
/// no other operation changes it meanwhile), then the reversal.
async fn revert_node(found: &Found, host: &str, args: &UpgradeArgs, rep: &run::progress::Reporter) -> Result<()> {
    let cluster = &found.cluster;
    if !cluster.hosts.iter().any(|h| h.ip == host) {
        return Err(anyhow!("{host} is not a host of cluster {}", cluster.name));
    }
    let speaker_ip = cluster
        .hosts
        .iter()
        .filter(|h| h.is(crate::cluster::Role::Master))
        .map(|h| h.ip.as_str())
        .find(|ip| *ip != host)
        .or_else(|| cluster.hosts.iter().find(|h| h.is(crate::cluster::Role::Master)).map(|h| h.ip.as_str()))
        .ok_or_else(|| anyhow!("cluster {} has no master", cluster.name))?;
    let h = found.connect_one(host).await.with_context(|| format!("connecting to {host}"))?;
    let req = LockRequest::here(Operation::Upgrade, &cluster.name, args.cluster.run.force_unlock);
    let lock = run::lock::take(h.as_ref(), crate::node::AGENT_PATH, &req, rep).await?;
    let result = revert_locked(found, host, args, h.as_ref(), speaker_ip).await;
    lock.release().await;
    result
}

/// The reversal of `host` (connected as `h`), its lock held.
async fn revert_locked(
    found: &Found,
    host: &str,
    args: &UpgradeArgs,
    h: &crate::ssh::client::SshHost,
    speaker_ip: &str,
) -> Result<()> {
    let cluster = &found.cluster;
    let speaker = found.connect_one(speaker_ip).await.with_context(|| format!("connecting to master {speaker_ip}"))?;
    let nodes = crate::upgrade::survey::parse_nodes(
        &crate::run::checked(
            speaker.as_ref(),
            &format!("{} get nodes -o json", crate::node::ADMIN_KUBECTL),
            b"",
            "kubectl get nodes",
        )
        .await?
        .text(),
    )?;
    let node = nodes
        .iter()
        .find(|n| n.ip == host)
        .ok_or_else(|| anyhow!("no Node of cluster {} has the address {host}", cluster.name))?;
    let state_out = crate::ssh::agent::state(h, crate::node::AGENT_PATH, &cluster.name).await.unwrap_or_default();
    let id = crate::node::trailer_id(args.cluster.run.payload_file()).unwrap_or_default();
    let finished = records::done(&state_out, "upgrade", &id);
    let kubelet = revert::revert(h, speaker.as_ref(), &revert::Target { ip: host, node: &node.name, finished }).await?;
    println!("{host} ({}) is back on its previous programs: kubelet {kubelet}, uncordoned", node.name);
    Ok(())
}
