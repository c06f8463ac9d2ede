//! Phase prepare: `agent prepare` with a small JSON plan ([`crate::run::prepare_plan`]) lays the
//! rootfs, containerd and its hosts.toml, sysctls, swap off and /etc/hosts on every node.
//!
//! Owns the decision: done unless the host was prepared for another set of registry replicas or
//! another registry CA (then hosts.toml must change). The record keeps the CA's fingerprint,
//! never the credential.

use crate::run::engine::{BoxFuture, Decision, Outcome, Phase};
use crate::run::records::{self, State};
use crate::run::{Ctx, INSTALLER_PATH, prepare_plan};
use crate::ssh::RemoteHost;
use anyhow::{Result, anyhow};
use std::sync::Arc;

/// Phase prepare.
pub struct Prepare;

impl<H: RemoteHost> Phase<H> for Prepare {
    fn name(&self) -> &'static str {
        "prepare"
    }

    fn should_run(&self, ctx: &Ctx, i: usize, state: &State) -> Decision {
        let endpoints = serde_json::json!(prepare_plan(ctx, &ctx.cluster.hosts[i]).registry_endpoints);
        let ca = serde_json::json!(ca_fingerprint(ctx));
        let same_registry = state
            .get("prepare")
            .is_some_and(|r| r.detail["registry_endpoints"] == endpoints && r.detail["registry_ca"] == ca);
        if records::done(state, "prepare", &ctx.id) && same_registry {
            Decision::Skip("already done")
        } else {
            Decision::Run
        }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let host = &ctx.cluster.hosts[i];
            let plan = prepare_plan(&ctx, host);
            let endpoints = serde_json::json!(plan.registry_endpoints);
            ctx.rep.event(
                &host.ip,
                "prepare",
                "start",
                "installing rootfs, containerd, sysctls",
                serde_json::json!({}),
            );
            let fut = crate::ssh::agent::prepare(h.as_ref(), INSTALLER_PATH, &plan);
            let report =
                tokio::time::timeout(ctx.phase_timeout, fut).await.unwrap_or_else(|_| Err(anyhow!("timed out")))?;
            for w in &report.warnings {
                ctx.rep.event(&host.ip, "prepare", "warning", w, serde_json::json!({}));
            }
            let mut report = serde_json::to_value(&report)?;
            if let Some(r) = report.as_object_mut() {
                r.insert("registry_endpoints".into(), endpoints);
                r.insert("registry_ca".into(), serde_json::json!(ca_fingerprint(&ctx)));
            }
            Ok(Outcome::recorded(report))
        })
    }
}

/// Hex SHA-256 of the registry CA's certificate, as the prepare record keeps it.
pub fn ca_fingerprint(ctx: &Ctx) -> Option<String> {
    ctx.registry_ca.as_ref().map(|ca| crate::protocol::access::digest_of(ca.cert_pem().as_bytes()))
}
