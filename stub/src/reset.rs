//! `installer reset [--hosts …]`: takes ferry's cluster off its hosts, leaving each ready for a
//! fresh `run`.
//!
//! Owns what ties a teardown to real hosts: which hosts go, the context, and sessions opened
//! only when a phase first needs them ([`OnDemand`]), so a host that is down and not involved
//! (a master that stays, while a worker goes) does not stop the reset. The sequence is
//! [`crate::run::deliver::reset`]; its phases are [`crate::run::phases::reset`].
//!
//! Before anything changes, the hosts the reset changes (those going, and the master that stays
//! and speaks for the cluster) are locked with their installed agent ([`lock_hosts`]): a host
//! another operation holds stops the reset. A host whose agent cannot lock (none installed, or
//! one of a build from before the lock) is reset without its lock, with a warning: a teardown
//! must work on half-made and half-reset hosts.

use crate::agent::AGENT_PATH;
use crate::cluster::locate::Found;
use crate::protocol::lock::Operation;
use crate::run::Ctx;
use crate::run::deliver;
use crate::run::engine::Engine;
use crate::run::lock::{self, LockRequest, Locks, Refused};
use crate::run::phases::reset::{Going, keeper};
use crate::run::progress::Reporter;
use crate::ssh::RemoteHost;
use crate::ssh::client::SshHost;
use crate::ssh::on_demand::{Connector, OnDemand};
use anyhow::{Result, anyhow, bail};
use payload_format::Payload;
use std::collections::BTreeSet;
use std::sync::Arc;

/// How a reset reports and how wide it goes.
pub struct Options {
    /// One JSON event per line on stdout.
    pub json: bool,
    /// Print only errors.
    pub quiet: bool,
    /// Never draw progress bars.
    pub no_progress: bool,
    /// Hosts torn down at once.
    pub parallel: usize,
    /// End the operations holding the hosts and take their locks.
    pub force_unlock: bool,
}

/// Takes ferry off `found`'s hosts, or only the `only` ones: they leave the cluster first (when
/// some stay), then are torn down (workers first), then the cluster forgets them. `known` says
/// whether `found` is a cluster ferry knows (rather than bare hosts from the flags).
pub async fn reset(found: Found, only: Vec<String>, known: bool, payload: Payload, opts: &Options) -> Result<()> {
    let going = going(&found, &only, known)?;
    let id = crate::agent::trailer_id(payload.path()).ok_or_else(|| anyhow!("cannot read the installer's trailer"))?;
    let rep = Reporter::new(opts.json, opts.quiet, opts.no_progress);
    rep.hosts(&going.hosts.iter().cloned().collect::<Vec<_>>());
    let found = Arc::new(found);
    let hosts: Vec<Arc<OnDemand<SshHost>>> =
        found.cluster.hosts.iter().map(|h| Arc::new(OnDemand::new(&h.ip, connector(&found, &h.ip)))).collect();
    let ctx = Ctx::for_teardown(payload, id, found.cluster.clone(), rep, found.local_state.clone());
    let engine = Engine::unrecorded(Arc::new(ctx), hosts, opts.parallel);
    let locks = lock_hosts(&engine, &going, opts).await?;
    let result = deliver::reset(&engine, going).await;
    locks.release(&engine.ctx.rep).await;
    result
}

/// Locks the hosts a reset of `going` changes. Stops on a host another operation holds; a host
/// that cannot be locked otherwise is a warning.
pub async fn lock_hosts<H: RemoteHost>(engine: &Engine<H>, going: &Going, opts: &Options) -> Result<Locks> {
    let ctx = &engine.ctx;
    let keeper = keeper(ctx, going);
    let changed: Vec<Arc<H>> = (ctx.cluster.hosts.iter().enumerate())
        .filter(|(i, h)| going.hosts.contains(&h.ip) || Some(*i) == keeper)
        .map(|(i, _)| engine.hosts[i].clone())
        .collect();
    let req = LockRequest::here(Operation::Reset, &ctx.cluster.name, opts.force_unlock);
    let (locks, failed) = lock::take_each(ctx, &changed, AGENT_PATH, &req, opts.parallel).await;
    let (refused, other): (Vec<_>, Vec<_>) = failed.into_iter().partition(|(_, e)| e.is::<Refused>());
    if !refused.is_empty() {
        locks.release(&ctx.rep).await;
        let why: Vec<String> = refused.iter().map(|(_, e)| e.to_string()).collect();
        bail!("{}; nothing was reset", why.join("; "));
    }
    for (host, e) in other {
        ctx.rep.line(
            "warning",
            &format!("warning: {host} could not be locked ({e:#}); it is reset without its lock"),
            serde_json::json!({"host": host}),
        );
    }
    Ok(locks)
}

/// The hosts `only` names (every host of the cluster when it names none); each must be one.
fn going(found: &Found, only: &[String], known: bool) -> Result<Going> {
    let all: Vec<&String> = found.cluster.hosts.iter().map(|h| &h.ip).collect();
    if let Some(stranger) = only.iter().find(|ip| !all.contains(ip)) {
        bail!("{stranger} is not a host of cluster {}", found.cluster.name);
    }
    let hosts: BTreeSet<String> =
        if only.is_empty() { all.into_iter().cloned().collect() } else { only.iter().cloned().collect() };
    let whole = found.cluster.hosts.iter().all(|h| hosts.contains(&h.ip));
    Ok(Going { hosts, whole, known })
}

/// Opens the session to `ip` the way the cluster says to reach it.
fn connector(found: &Arc<Found>, ip: &str) -> Connector<SshHost> {
    let (found, ip) = (found.clone(), ip.to_string());
    Box::new(move || {
        let (found, ip) = (found.clone(), ip.clone());
        Box::pin(async move { Ok(found.connect_one(&ip).await?) })
    })
}
