//! `installer reset [--hosts …]`: takes ferry's cluster off its hosts, leaving each ready for a
//! fresh `run`.
//!
//! Owns what ties a teardown to real hosts: which hosts go, the context, and sessions opened
//! only when a phase first needs them ([`OnDemand`]), so a host that is down and not involved
//! (a master that stays, while a worker goes) does not stop the reset. The sequence is
//! [`crate::run::deliver::reset`]; its phases are [`crate::run::phases::reset`].

use crate::cluster::locate::Found;
use crate::run::Ctx;
use crate::run::deliver;
use crate::run::engine::Engine;
use crate::run::phases::reset::Going;
use crate::run::progress::Reporter;
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
    deliver::reset(&engine, going).await
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
