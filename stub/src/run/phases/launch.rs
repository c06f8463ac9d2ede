//! The last phases of `run`: the bundle's launch steps on master0 ([`crate::launch`]), and the
//! wait for the new cluster to pass `check`.
//!
//! Owns only their place in the run; what they do is [`crate::launch`]'s and [`crate::check`]'s.

use super::control::master0;
use crate::run::Ctx;
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::ssh::RemoteHost;
use anyhow::{Result, bail};
use std::sync::Arc;
use std::time::Duration;

/// Phase launch: every step in order on master0; the first failure stops with its output.
pub struct Launch;

impl<H: RemoteHost> Phase<H> for Launch {
    fn name(&self) -> &'static str {
        "launch"
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, _todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let ctx = &engine.ctx;
            crate::launch::run_steps(&ctx.payload, &ctx.rep, engine.hosts[master0(ctx)?].as_ref()).await
        })
    }

    fn run_host(self: Arc<Self>, _ctx: Arc<Ctx>, _h: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async { bail!("launch runs on master0 only, as a whole") })
    }
}

/// The post-delivery check, as `installer check` runs it, once the cluster has settled: waits
/// up to `wait` for it to be healthy, then prints the report.
pub struct Healthy {
    /// How long to wait for health.
    pub wait: Duration,
}

impl<H: RemoteHost> Phase<H> for Healthy {
    fn name(&self) -> &'static str {
        "check"
    }

    fn clock(&self) -> Option<&'static str> {
        None
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, _todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let ctx = &engine.ctx;
            let h0 = engine.hosts[master0(ctx)?].as_ref();
            let master = h0.addr().to_string();
            let every = Duration::from_secs(10);
            let report =
                crate::check::check_until_healthy(&ctx.cluster, &ctx.payload, h0, self.wait, every, |r, waited| {
                    let failing = r.rows.iter().filter(|r| !r.ok).count();
                    let line = crate::check::waiting_line(r, waited);
                    ctx.rep.event(&master, "check", "waiting", &line, serde_json::json!({"failing": failing}));
                })
                .await?;
            ctx.rep.line("check", &report.table(), serde_json::to_value(&report).unwrap_or_default());
            report.verdict()
        })
    }

    fn run_host(self: Arc<Self>, _ctx: Arc<Ctx>, _h: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async { bail!("the check runs through master0 only, as a whole") })
    }
}
