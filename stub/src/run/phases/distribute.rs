//! Phase distribute: the chunks each host needs stream into `agent receive` over one exec
//! channel (nodes: program + rootfs/bundle/files; registry hosts: the whole installer), in relay
//! chains ([`crate::run::relay`]) so the operator's link carries each byte only once per chain.
//!
//! Owns the per-host decision (done, unless the host has since become a registry replica and
//! needs the rest of the installer), the chain plan for this run, and the bytes it moved.

use crate::cluster::Role;
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::run::records::{self, State};
use crate::run::{Ctx, distribute, relay};
use crate::ssh::RemoteHost;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The chains of this run.
struct Chains {
    wants: Vec<Vec<u64>>,
    board: relay::Board,
    /// Hosts that are done but head a chain: they open a session only to serve it.
    serves: Vec<bool>,
}

/// Phase distribute.
pub struct Distribute {
    relay_chains: usize,
    chains: OnceLock<Chains>,
    /// Bytes each host pulled from relays rather than from this machine.
    relayed: Mutex<BTreeMap<String, u64>>,
    /// Bytes this machine sent during the phase.
    sent: Mutex<u64>,
}

impl Distribute {
    /// The phase, laying at most `relay_chains` chains.
    pub fn new(relay_chains: usize) -> Distribute {
        Distribute { relay_chains, chains: OnceLock::new(), relayed: Mutex::default(), sent: Mutex::default() }
    }

    /// Bytes each host pulled from relays (after the phase).
    pub fn relayed_per_host(&self) -> BTreeMap<String, u64> {
        self.relayed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bytes this machine sent during the phase (after it).
    pub fn bytes(&self) -> u64 {
        *self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lays the chains: hosts delivered earlier may head the chains of the ones that still need
    /// data (a join, a resumed run); with nothing to deliver, no session is opened at all.
    fn lay(&self, ctx: &Ctx, todo: &[Decision]) -> Result<&Chains> {
        let n = todo.len();
        let skip: Vec<bool> = todo.iter().map(|d| *d != Decision::Run).collect();
        let wants: Vec<Vec<u64>> =
            ctx.cluster.hosts.iter().map(|h| distribute::wanted_chunks(&ctx.payload, h)).collect();
        let holders: Vec<bool> = if skip.iter().all(|&s| s) { vec![false; n] } else { skip.clone() };
        let parents = relay::plan(&wants, &holders, self.relay_chains);
        let serves: Vec<bool> = (0..n).map(|i| holders[i] && parents.contains(&Some(i))).collect();
        let board = relay::Board::new(
            ctx.cluster.hosts.iter().map(|h| h.ip.clone()).collect(),
            parents,
            ctx.registry_ca.as_deref(),
        )?;
        Ok(self.chains.get_or_init(|| Chains { wants, board, serves }))
    }
}

impl<H: RemoteHost> Phase<H> for Distribute {
    fn name(&self) -> &'static str {
        "distribute"
    }

    fn should_run(&self, ctx: &Ctx, i: usize, state: &State) -> Decision {
        // A host that became a registry replica since needs the rest of the installer.
        let host = &ctx.cluster.hosts[i];
        let whole = state.get("distribute").is_some_and(|r| r.detail["whole"] == true);
        if records::done(state, "distribute", &ctx.id) && (whole || !host.is(Role::Registry)) {
            Decision::Skip("already done")
        } else {
            Decision::Run
        }
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let before = engine.bytes_sent();
            let chains = self.lay(&engine.ctx, &todo)?;
            let mut which = Vec::new();
            for (i, d) in todo.iter().enumerate() {
                if *d == Decision::Run || chains.serves[i] {
                    which.push(i);
                } else {
                    chains.board.skip(i);
                    engine.say_skips("distribute", &todo[i..=i]);
                }
            }
            // Every session runs at once: a host that is done keeps serving the hosts behind it.
            let all = engine.hosts.len();
            let result = engine.each(self.clone(), which, all).await;
            *self.sent.lock().unwrap_or_else(|e| e.into_inner()) = engine.bytes_sent() - before;
            result
        })
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let Some(chains) = self.chains.get() else { anyhow::bail!("distribute ran before its chains were laid") };
            let host = &ctx.cluster.hosts[i];
            let serves = chains.serves[i];
            let from = match chains.board.parent(i) {
                _ if serves => "already done; checking its copy to relay it".to_string(),
                Some(j) => format!("streaming, relayed by {}", ctx.cluster.hosts[j].ip),
                None => "streaming".to_string(),
            };
            ctx.rep.event(&host.ip, "distribute", "start", &from, serde_json::json!({}));
            // The phase timeout applies inside: a host that is done waits for the others untimed.
            let d = relay::session(&ctx, h.as_ref(), i, &chains.wants[i], &chains.board).await?;
            if serves && d.from_operator == 0 && d.from_relays == 0 {
                return Ok(Outcome::Skipped("already done; relayed".into()));
            }
            self.relayed.lock().unwrap_or_else(|e| e.into_inner()).insert(host.ip.clone(), d.from_relays);
            let by_relay = if d.from_relays > 0 {
                format!(", {} by relay", crate::units::bytes(d.from_relays))
            } else {
                String::new()
            };
            Ok(Outcome::Done {
                record: Some(
                    serde_json::json!({"bytes": d.from_operator, "relayed": d.from_relays, "whole": host.is(Role::Registry)}),
                ),
                message: format!("sent {}{by_relay}", crate::units::bytes(d.from_operator)),
                data: serde_json::json!({"bytes": d.from_operator, "relayed": d.from_relays}),
            })
        })
    }
}
