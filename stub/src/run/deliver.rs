//! The sequences: [`deliver`] for `installer run` (and `join`, which is a run over the grown
//! cluster), [`reset`] for `installer reset`.
//!
//! Owns the order of the phases and the summary lines; each phase is in [`super::phases`] and
//! the engine that runs them in [`super::engine`].

use super::engine::{Engine, Step};
use super::lock::LockRequest;
use super::phases::control::{Init, Join, Kubeadm, Lb, SaveState};
use super::phases::distribute::Distribute;
use super::phases::launch::{Healthy, Launch};
use super::phases::preflight::{self, Passed, Settle, Stage};
use super::phases::reset::{Forget, Going, Leave, Tally, Teardown};
use super::phases::{prepare::Prepare, registry};
use super::preflight::Problem;
use super::{Ctx, Options};
use crate::cluster::Role;
use crate::ssh::RemoteHost;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delivers the installer to the cluster's hosts: `connected[i]` is host `i`'s session (`None`
/// when it could not be reached, with its problem in `problems`). `started` is when the run
/// began, `connecting` when connecting did (preflight's clock starts there). Every host is
/// locked for this operation from preflight on, and given back at the end, whatever the end.
pub async fn deliver<H: RemoteHost>(
    ctx: Arc<Ctx>,
    opts: &Options,
    connected: Vec<Option<Arc<H>>>,
    problems: Vec<Problem>,
    started: Instant,
    connecting: Instant,
) -> Result<()> {
    let stage = Stage::new();
    let lock = LockRequest::here(opts.operation, &ctx.cluster.name, opts.force_unlock);
    let mut passed = preflight::gate(&ctx, connected, problems, opts.parallel, &stage, &lock).await?;
    // Kept from the moment hosts change, so `check`, `join` and `reset` find a cluster that
    // stopped half-way, or one of prepared nodes only.
    crate::cluster::locate::save_local(&ctx.local_state, &crate::cluster::to_file(&ctx.cluster))?;
    let locks = std::mem::take(&mut passed.locks);
    let result = phases(ctx.clone(), opts, passed, stage, started, connecting).await;
    locks.release(&ctx.rep).await;
    result
}

/// The phases after a passed preflight, then the wait for `check`.
async fn phases<H: RemoteHost>(
    ctx: Arc<Ctx>,
    opts: &Options,
    passed: Passed<H>,
    stage: Stage,
    started: Instant,
    connecting: Instant,
) -> Result<()> {
    let engine = Engine::new(ctx.clone(), passed.hosts, passed.states, opts.parallel);
    engine.add_time("preflight", connecting.elapsed());
    let distribute = Arc::new(Distribute::new(opts.relay_chains));
    let nodes: Vec<Step<H>> = vec![
        Arc::new(Settle { staged: passed.staged, stage }),
        distribute.clone(),
        Arc::new(Prepare),
        Arc::new(registry::Service::new(&ctx)?),
        Arc::new(registry::Pull::new(&ctx)?),
    ];
    engine.run(&nodes).await?;
    // A bundle without kubeadm in its rootfs (a runtime-only bundle) stops at prepared nodes:
    // there is nothing to make a cluster with.
    if !ships_kubeadm(&ctx) {
        summary(&engine, &distribute, started, false);
        return Ok(());
    }
    let kubeadm = Kubeadm::new(&ctx, passed.cgroup_v1_hosts)?;
    let mut cluster: Vec<Step<H>> = vec![
        Arc::new(Lb),
        Arc::new(Init(kubeadm.clone())),
        Arc::new(Join::new(kubeadm.clone())),
        Arc::new(SaveState(kubeadm)),
    ];
    if !opts.skip_launch {
        cluster.push(Arc::new(Launch));
    }
    engine.run(&cluster).await?;
    summary(&engine, &distribute, started, true);
    engine.run(&[Arc::new(Healthy { wait: opts.wait }) as Step<H>]).await
}

/// Takes `going`'s hosts off the cluster: they leave it (when others stay), workers are torn
/// down, then masters, then the cluster's description forgets them. Prints one line per host
/// torn down, in that order, also when another host failed.
pub async fn reset<H: RemoteHost>(engine: &Engine<H>, going: Going) -> Result<()> {
    let (ctx, going, tally) = (&engine.ctx, Arc::new(going), Tally::default());
    let [workers, masters] = Teardown::workers_then_masters(ctx, going.clone(), tally.clone());
    let phases: Vec<Step<H>> =
        vec![Arc::new(Leave(going.clone())), Arc::new(workers), Arc::new(masters), Arc::new(Forget(going.clone()))];
    let result = engine.run(&phases).await;
    ctx.rep.finish();
    let tally = tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let order = ctx
        .cluster
        .hosts
        .iter()
        .filter(|h| !h.is(Role::Master))
        .chain(ctx.cluster.hosts.iter().filter(|h| h.is(Role::Master)));
    for host in order {
        if let Some(torn) = tally.get(&host.ip) {
            ctx.rep.line(
                "reset",
                &format!("{}: {}", host.ip, torn.words()),
                serde_json::json!({"host": host.ip, "result": torn}),
            );
        }
    }
    result
}

/// Whether the bundle's rootfs brings kubeadm.
fn ships_kubeadm(ctx: &Ctx) -> bool {
    ctx.payload
        .index()
        .entries
        .iter()
        .any(|e| e.path == "rootfs/usr/bin/kubeadm" || e.path == "rootfs/usr/local/bin/kubeadm")
}

/// The run's one summary line: bytes, relays and each phase's seconds; `up` when a control plane
/// was made, else the nodes are only prepared.
fn summary<H: RemoteHost>(engine: &Engine<H>, distribute: &Distribute, started: Instant, up: bool) {
    let ctx = &engine.ctx;
    ctx.rep.finish();
    let n = ctx.cluster.hosts.len();
    let total = engine.bytes_sent();
    let per_host: BTreeMap<String, u64> = engine.hosts.iter().map(|h| (h.addr().to_string(), h.bytes_sent())).collect();
    let (elapsed, t) = (started.elapsed(), |name| engine.time(name));
    if !up {
        ctx.rep.line(
            "warning",
            "note: the bundle's rootfs ships no kubeadm, so the nodes are prepared but no control plane was made",
            serde_json::json!({}),
        );
        let seconds = serde_json::json!({"total": elapsed.as_secs_f64(), "preflight": t("preflight").as_secs_f64(), "distribute": t("distribute").as_secs_f64(), "prepare": t("prepare").as_secs_f64(), "registry": t("registry").as_secs_f64()});
        ctx.rep.line(
            "summary",
            &format!("cluster {} prepared: {} hosts in {:.1} s", ctx.cluster.name, n, elapsed.as_secs_f64()),
            serde_json::json!({"bytes_sent": total, "distribute_bytes": distribute.bytes(), "per_host": per_host, "relayed_per_host": distribute.relayed_per_host(), "seconds": seconds}),
        );
        return;
    }
    let secs = |d: Duration| (d.as_secs_f64() * 100.0).round() / 100.0;
    let seconds = serde_json::json!({"total": secs(elapsed), "preflight": secs(t("preflight")), "distribute": secs(t("distribute")), "prepare": secs(t("prepare")), "registry": secs(t("registry")), "kubeadm": secs(t("kubeadm")), "launch": secs(t("launch"))});
    ctx.rep.line(
        "summary",
        &format!(
            "cluster {} up: {} hosts, {} sent ({} of installer data) in {:.1} s (preflight {:.1} s, distribute {:.1} s, prepare {:.1} s, registry {:.1} s, lb+kubeadm {:.1} s, launch {:.1} s)",
            ctx.cluster.name,
            n,
            crate::units::bytes(total),
            crate::units::bytes(distribute.bytes()),
            elapsed.as_secs_f64(),
            t("preflight").as_secs_f64(),
            t("distribute").as_secs_f64(),
            t("prepare").as_secs_f64(),
            t("registry").as_secs_f64(),
            t("kubeadm").as_secs_f64(),
            t("launch").as_secs_f64()
        ),
        serde_json::json!({"bytes_sent": total, "distribute_bytes": distribute.bytes(), "per_host": per_host, "relayed_per_host": distribute.relayed_per_host(), "seconds": seconds}),
    );
}
