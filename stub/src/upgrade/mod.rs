//! `installer upgrade`: a rolling, resumable Kubernetes upgrade of a running cluster, run from
//! the newer installer.
//!
//! Owns the sequence, on [`crate::run`]'s engine, preflight and records:
//!
//! preflight (the cluster's versions, nodes, etcd and the installer's images judged by
//! [`survey`] and [`versions`], with `run`'s host checks and locks, in one table) → stage (the
//! new installer to every node, verified and relayed; the previous release's registry kept
//! serving beside the new one; an etcd snapshot, [`stage`]) → the nodes, masters one at a time
//! then workers in batches ([`nodes`]) → the load balancers, the clean-up, the bundle's launch
//! steps → the `check` table.
//!
//! Every phase is recorded per host with the new installer's id, so running the same command
//! after any failure continues where it stopped; [`revert`] puts back a node that did not finish.

pub mod nodes;
pub mod revert;
pub mod stage;
pub mod survey;
pub mod versions;

#[cfg(test)]
mod tests;

use crate::cluster::Role;
use crate::node::INSTALLER_PATH;
use crate::run::engine::{Engine, Step};
use crate::run::lock::LockRequest;
use crate::run::phases::control::{Lb, master0};
use crate::run::phases::distribute::Distribute;
use crate::run::phases::launch::{Healthy, Launch};
use crate::run::phases::preflight::{self, Settle, Stage};
use crate::run::phases::registry;
use crate::run::preflight::{Problem, Severity};
use crate::run::{Ctx, Options};
use crate::ssh::RemoteHost;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The upgrade's own choices, beside `run`'s.
#[derive(Clone, Debug)]
pub struct UpgradeOptions {
    /// Workers upgraded at once.
    pub max_unavailable: usize,
    /// How long one node's drain may take.
    pub drain_timeout: Duration,
}

/// Upgrades the cluster of `ctx` to the installer's release: `connected[i]` is host `i`'s session
/// (`None`, with its problem in `problems`, when it could not be reached).
pub async fn upgrade<H: RemoteHost>(
    ctx: Arc<Ctx>,
    opts: &Options,
    up: &UpgradeOptions,
    connected: Vec<Option<Arc<H>>>,
    mut problems: Vec<Problem>,
    started: Instant,
    connecting: Instant,
) -> Result<()> {
    let m0 = master0(&ctx)?;
    let target = ctx.payload.index().metadata.kubernetes_version.clone();
    let m0_ip = ctx.cluster.hosts[m0].ip.clone();
    let mut row = |host: &str, check: &str, message: String| {
        problems.push(Problem { host: host.into(), severity: Severity::Error, check: check.into(), message })
    };
    let facts = match &connected[m0] {
        Some(h) => match survey::read(h.as_ref(), Duration::from_secs(120)).await {
            Ok(f) => Some(f),
            Err(e) => {
                row(&m0_ip, "cluster", format!("cannot read the cluster through master0: {e:#}"));
                None
            }
        },
        None => None,
    };
    let hosts: Vec<String> = ctx.cluster.hosts.iter().map(|h| h.ip.clone()).collect();
    let step = facts.as_ref().and_then(|f| {
        let (step, rows) = survey::judge(f, &target, &m0_ip, &hosts);
        rows.into_iter().for_each(|r| row(&r.host, &r.check, r.message));
        step
    });
    match stage::missing_control_plane_images(&ctx) {
        Ok(missing) => {
            for image in missing {
                row(
                    "installer",
                    "images",
                    format!("{image}, which Kubernetes {target} needs, is not in this installer"),
                );
            }
        }
        Err(e) => row("installer", "images", format!("{e:#}")),
    }
    if let Some(refusal) = installed_release(&ctx, &connected).await {
        row(&m0_ip, "installer", refusal);
    }
    let from = facts.as_ref().map(|f| f.version.clone()).unwrap_or_default();
    if opts.dry_run {
        print_plan(&ctx, &from, &target, up, &problems);
        return Ok(());
    }
    let stage_names = Stage::new();
    let lock = LockRequest::here(opts.operation, &ctx.cluster.name, opts.force_unlock);
    let mut passed = preflight::gate(&ctx, connected, problems, opts.parallel, &stage_names, &lock).await?;
    let (Some(facts), Some(_step)) = (facts, step) else {
        passed.locks.release(&ctx.rep).await;
        anyhow::bail!("the cluster could not be read, so nothing was changed");
    };
    ctx.rep.line(
        "upgrade",
        &format!("upgrading cluster {} from Kubernetes {from} to {target}", ctx.cluster.name),
        serde_json::json!({"from": from, "to": target}),
    );
    let locks = std::mem::take(&mut passed.locks);
    let nodes: BTreeMap<usize, survey::NodeFacts> = ctx
        .cluster
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| facts.node_by_ip(&h.ip).map(|n| (i, n.clone())))
        .collect();
    let plan = Plan {
        m0,
        from,
        target,
        nodes,
        staged: passed.staged.clone(),
        stage: stage_names,
        cgroup_v1_hosts: passed.cgroup_v1_hosts.clone(),
    };
    let engine = Engine::new(ctx.clone(), passed.hosts, passed.states, opts.parallel);
    engine.add_time("preflight", connecting.elapsed());
    let result = phases(&engine, opts, up, plan, started).await;
    locks.release(&ctx.rep).await;
    result
}

/// What preflight settled for the phases.
struct Plan {
    m0: usize,
    from: String,
    target: String,
    nodes: BTreeMap<usize, survey::NodeFacts>,
    staged: Vec<Option<String>>,
    stage: Stage,
    cgroup_v1_hosts: Vec<String>,
}

async fn phases<H: RemoteHost>(
    engine: &Engine<H>,
    opts: &Options,
    up: &UpgradeOptions,
    plan: Plan,
    started: Instant,
) -> Result<()> {
    let ctx = &engine.ctx;
    let distribute = Arc::new(Distribute::new(opts.relay_chains));
    let stage: Vec<Step<H>> = vec![
        Arc::new(Settle { staged: plan.staged, stage: plan.stage }),
        Arc::new(stage::KeepPrevious),
        distribute.clone(),
        Arc::new(stage::Mirrors),
        Arc::new(registry::Service::new(ctx)?),
        Arc::new(registry::Pull::new(ctx)?),
        // The load balancers on the new agent before any master goes down: their health check
        // (`/readyz`) keeps traffic off an apiserver that is restarting.
        Arc::new(Lb),
        Arc::new(stage::Snapshot { m0: plan.m0, from: plan.from.clone() }),
    ];
    engine.run(&stage).await?;
    let nodes = Arc::new(nodes::Nodes {
        target: plan.target.clone(),
        nodes: plan.nodes,
        m0: plan.m0,
        max_unavailable: up.max_unavailable,
        drain_timeout: up.drain_timeout,
        cgroup_v1_hosts: plan.cgroup_v1_hosts,
        speaker: OnceLock::new(),
        seconds: Mutex::default(),
    });
    engine.run(&[nodes.clone() as Step<H>]).await?;
    let mut end: Vec<Step<H>> = vec![Arc::new(Lb), Arc::new(stage::Finish)];
    if !opts.skip_launch {
        end.push(Arc::new(Launch));
    }
    engine.run(&end).await?;
    summary(engine, &distribute, &nodes, &plan.from, &plan.target, started);
    engine.run(&[Arc::new(Healthy { wait: opts.wait }) as Step<H>]).await
}

/// The upgrade's summary line: each phase's seconds and each node's.
fn summary<H: RemoteHost>(
    engine: &Engine<H>,
    distribute: &Distribute,
    nodes: &nodes::Nodes<H>,
    from: &str,
    target: &str,
    started: Instant,
) {
    let ctx = &engine.ctx;
    ctx.rep.finish();
    let secs = |name: &str| (engine.time(name).as_secs_f64() * 100.0).round() / 100.0;
    let per_node = nodes.seconds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let total = started.elapsed().as_secs_f64();
    let seconds = serde_json::json!({"total": (total * 100.0).round() / 100.0, "preflight": secs("preflight"),
        "stage": secs("stage"), "distribute": secs("distribute"), "registry": secs("registry"),
        "nodes": secs("nodes"), "finish": secs("finish") + secs("kubeadm"), "launch": secs("launch")});
    let each: Vec<String> = per_node.iter().map(|(ip, s)| format!("{ip} {s:.1} s")).collect();
    ctx.rep.line(
        "summary",
        &format!(
            "cluster {} upgraded from {from} to {target}: {} hosts in {total:.1} s (preflight {:.1} s, stage {:.1} s, distribute {:.1} s, registry {:.1} s, nodes {:.1} s{}; {} sent)",
            ctx.cluster.name,
            ctx.cluster.hosts.len(),
            secs("preflight"),
            secs("stage"),
            secs("distribute"),
            secs("registry"),
            secs("nodes"),
            if each.is_empty() { String::new() } else { format!(": {}", each.join(", ")) },
            crate::units::bytes(engine.bytes_sent()),
        ),
        serde_json::json!({"from": from, "to": target, "seconds": seconds, "per_node": per_node,
            "bytes_sent": engine.bytes_sent(), "distribute_bytes": distribute.bytes()}),
    );
}

/// The installer that last changed the cluster (read from the first reachable registry host's
/// copy), judged against this one: a refusal when this one is older.
async fn installed_release<H: RemoteHost>(ctx: &Ctx, connected: &[Option<Arc<H>>]) -> Option<String> {
    let i = ctx.cluster.hosts.iter().position(|h| h.is(Role::Registry))?;
    let h = connected.get(i)?.as_ref()?;
    let script = format!(
        r#"I={INSTALLER_PATH}; P={p}
id() {{ tail -c 128 "$1" | sha256sum | cut -d' ' -f1; }}
if [ -f "$P" ] && [ "$(id "$I")" = "{new}" ]; then I=$P; fi
[ -f "$I" ] || exit 0
id "$I"
"$I" --no-progress inspect --json"#,
        p = stage::previous_installer(),
        new = ctx.id
    );
    let out = h.run(&format!("bash -c {}", crate::ssh::quote(&script)), b"").await.ok()?;
    let text = out.text();
    let (id, json) = text.split_once('\n')?;
    let installed = survey::parse_release(json, id.trim())?;
    let meta = &ctx.payload.index().metadata;
    let new = versions::Release {
        bundle: meta.name.clone(),
        version: meta.version.clone(),
        created: meta.created,
        id: ctx.id.clone(),
    };
    versions::judge_release(&installed, &new).err()
}

/// `--dry-run`: the versions, the order of the nodes and what preflight found.
fn print_plan(ctx: &Ctx, from: &str, target: &str, up: &UpgradeOptions, problems: &[Problem]) {
    let c = &ctx.cluster;
    let masters: Vec<&str> = c.hosts.iter().filter(|h| h.is(Role::Master)).map(|h| h.ip.as_str()).collect();
    let workers: Vec<&str> = c.hosts.iter().filter(|h| !h.is(Role::Master)).map(|h| h.ip.as_str()).collect();
    let mut s = format!(
        "upgrade plan for cluster {} (installer {}): Kubernetes {} → {target}\n  stage: the installer to every node, the previous release served on port {}, an etcd snapshot on {}\n",
        c.name,
        &ctx.id[..12],
        if from.is_empty() { "(unknown)" } else { from },
        c.registry_port.wrapping_add(1),
        masters.first().copied().unwrap_or("-"),
    );
    for (k, m) in masters.iter().enumerate() {
        let how = if k == 0 { format!("kubeadm upgrade apply {target}") } else { "kubeadm upgrade node".into() };
        s.push_str(&format!(
            "  master {m}: drain, keep the old programs, new rootfs, {how}, kubelet, Ready, uncordon\n"
        ));
    }
    for (k, batch) in workers.chunks(up.max_unavailable.max(1)).enumerate() {
        s.push_str(&format!(
            "  workers batch {}: {} (drain, new rootfs, kubeadm upgrade node, kubelet, Ready, uncordon)\n",
            k + 1,
            batch.join(", ")
        ));
    }
    s.push_str("  then: load balancers, the previous release's registry stopped, launch steps, check");
    ctx.rep.line("plan", &s, serde_json::json!({"from": from, "to": target, "masters": masters, "workers": workers}));
    if !problems.is_empty() {
        ctx.rep.line("problems", &crate::run::preflight::table(problems), serde_json::json!({"problems": problems}));
    }
    ctx.rep.line("dry-run", "dry run: nothing was changed", serde_json::json!({}));
}
