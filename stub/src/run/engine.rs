//! The phase engine: runs a list of phases over the hosts of a cluster.
//!
//! Owns the order and the bookkeeping every phase shares, after k0sctl's `phase` package: each
//! [`Phase`] has a name, a test of whether it must run on a host given what that host recorded
//! ([`Phase::should_run`]), and its work ([`Phase::run_host`], or [`Phase::run`] for a phase that
//! schedules its hosts itself). The engine decides per host, says "skip" for hosts that are
//! done, runs the rest (in parallel, bounded), records what each host did ([`super::records`]),
//! reports "done" and "error" events, and stops after the first phase that failed anywhere:
//! every host finishes that phase, and no host gets a later one. The error names each failed
//! host, the phase and the cause; what completed is recorded, so the same command continues.
//! An engine made [`Engine::unrecorded`] keeps no records (a teardown, whose steps are
//! idempotent and which removes the records anyway).
//!
//! The engine is generic over [`RemoteHost`], so phase order, resume and failure are tested
//! against [`crate::ssh::fake::FakeHost`].

use super::records::{self, State};
use super::{Ctx, parallel};
use crate::ssh::RemoteHost;
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A boxed future, so that phases of different types fit in one list.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether a phase must run on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It must.
    Run,
    /// It is done already: a "skip" event says so with this message.
    Skip(&'static str),
    /// The phase has nothing to do on this host, and nothing to say.
    Pass,
}

/// What a phase did on one host; the engine records and reports it.
#[derive(Debug)]
pub enum Outcome {
    /// Done. `record` (when given) is the detail recorded on the host and beside the installer;
    /// then a "done" event with `message` and `data`.
    Done {
        /// Detail to record, or nothing to record.
        record: Option<serde_json::Value>,
        /// The "done" event's message.
        message: String,
        /// The "done" event's extra fields.
        data: serde_json::Value,
    },
    /// Done already after all (a "skip" event with this message); nothing recorded.
    Skipped(String),
    /// Done, with nothing to record or say.
    Quiet,
}

impl Outcome {
    /// Done: record `record`, then say "ok".
    pub fn recorded(record: serde_json::Value) -> Outcome {
        Outcome::Done { record: Some(record), message: "ok".into(), data: serde_json::json!({}) }
    }
}

/// One phase of a delivery.
pub trait Phase<H: RemoteHost>: Send + Sync + 'static {
    /// The phase's name: its events, records and errors carry it.
    fn name(&self) -> &'static str;

    /// The summary's clock this phase's time counts toward (phases may share one).
    fn clock(&self) -> Option<&'static str> {
        Some(self.name())
    }

    /// Must the phase run on host `i`, given what the host recorded (its state at preflight)?
    fn should_run(&self, _ctx: &Ctx, _i: usize, _state: &State) -> Decision {
        Decision::Run
    }

    /// Its work on host `i` (`h` is that host); the engine records and reports the outcome.
    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>>;

    /// Runs the phase: by default every host that must, in parallel (at most the engine's
    /// `parallel` at once). A phase that schedules its hosts otherwise overrides this.
    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>>
    where
        Self: Sized,
    {
        Box::pin(async move {
            engine.say_skips(self.name(), &todo);
            engine.each(self, engine.must_run(&todo), engine.parallel).await
        })
    }
}

/// A phase as the engine holds it in a list.
pub type Step<H> = Arc<dyn AnyPhase<H>>;

/// The object-safe face of a [`Phase`] (its `run` needs the concrete type).
pub trait AnyPhase<H: RemoteHost>: Send + Sync {
    /// [`Phase::name`].
    fn name(&self) -> &'static str;
    /// [`Phase::clock`].
    fn clock(&self) -> Option<&'static str>;
    /// [`Phase::should_run`].
    fn should_run(&self, ctx: &Ctx, i: usize, state: &State) -> Decision;
    /// [`Phase::run`].
    fn start<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>>;
}

impl<H: RemoteHost, P: Phase<H>> AnyPhase<H> for P {
    fn name(&self) -> &'static str {
        Phase::name(self)
    }
    fn clock(&self) -> Option<&'static str> {
        Phase::clock(self)
    }
    fn should_run(&self, ctx: &Ctx, i: usize, state: &State) -> Decision {
        Phase::should_run(self, ctx, i, state)
    }
    fn start<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Phase::run(self, engine, todo)
    }
}

/// A failure of one host in one phase.
#[derive(Debug)]
pub struct HostError {
    /// Host address.
    pub host: String,
    /// Phase.
    pub phase: &'static str,
    /// Cause.
    pub error: anyhow::Error,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} failed: {:#}", self.host, self.phase, self.error)
    }
}

/// Runs phases over the connected hosts of one delivery.
pub struct Engine<H> {
    /// What every phase shares.
    pub ctx: Arc<Ctx>,
    /// `hosts[i]` reaches `ctx.cluster.hosts[i]`.
    pub hosts: Vec<Arc<H>>,
    /// What each host recorded, as preflight read it.
    pub states: Arc<Vec<State>>,
    /// Hosts worked on at once.
    pub parallel: usize,
    clocks: Mutex<BTreeMap<&'static str, Duration>>,
    records: Records,
}

/// Whether an engine keeps per-host records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Records {
    /// Completed phases and failures are recorded; a re-run resumes from them.
    Kept,
    /// Nothing is recorded: the work itself is idempotent (a teardown, which also removes the
    /// records), so running it again is how it continues.
    None,
}

impl<H: RemoteHost> Engine<H> {
    /// An engine over `hosts` (in cluster order) with their recorded `states`.
    pub fn new(ctx: Arc<Ctx>, hosts: Vec<Arc<H>>, states: Vec<State>, parallel: usize) -> Engine<H> {
        Engine { ctx, hosts, states: Arc::new(states), parallel, clocks: Mutex::default(), records: Records::Kept }
    }

    /// An engine over `hosts` that records nothing, for work that is idempotent (a teardown):
    /// every host starts with no recorded state, and a failure is reported, not recorded.
    pub fn unrecorded(ctx: Arc<Ctx>, hosts: Vec<Arc<H>>, parallel: usize) -> Engine<H> {
        let states = vec![State::new(); hosts.len()];
        Engine { records: Records::None, ..Engine::new(ctx, hosts, states, parallel) }
    }

    /// Runs `phases` in order; the first that fails stops the list.
    pub async fn run(&self, phases: &[Step<H>]) -> Result<()> {
        for phase in phases {
            let started = Instant::now();
            let todo: Vec<Decision> =
                (0..self.hosts.len()).map(|i| phase.should_run(&self.ctx, i, &self.states[i])).collect();
            let result = phase.clone().start(self, todo).await;
            if let Some(clock) = phase.clock() {
                self.add_time(clock, started.elapsed());
            }
            result?;
        }
        Ok(())
    }

    /// Adds `d` to the clock `name` (the summary's per-phase seconds).
    pub fn add_time(&self, name: &'static str, d: Duration) {
        *self.clocks.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default() += d;
    }

    /// The time spent under clock `name`.
    pub fn time(&self, name: &str) -> Duration {
        self.clocks.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or_default()
    }

    /// Bytes sent to all hosts so far.
    pub fn bytes_sent(&self) -> u64 {
        self.hosts.iter().map(|h| h.bytes_sent()).sum()
    }

    /// The hosts `todo` says must run.
    pub fn must_run(&self, todo: &[Decision]) -> Vec<usize> {
        (0..todo.len()).filter(|&i| todo[i] == Decision::Run).collect()
    }

    /// A "skip" event for each host `todo` says is done.
    pub fn say_skips(&self, phase: &str, todo: &[Decision]) {
        for (i, d) in todo.iter().enumerate() {
            if let Decision::Skip(msg) = d {
                self.ctx.rep.event(&self.ctx.cluster.hosts[i].ip, phase, "skip", msg, serde_json::json!({}));
            }
        }
    }

    /// Runs `phase` on `which` hosts, `limit` at once; every one finishes, then any failure
    /// stops the run naming each failed host.
    pub async fn each<P: Phase<H>>(&self, phase: Arc<P>, which: Vec<usize>, limit: usize) -> Result<()> {
        let results = parallel(which.len(), limit, |k| {
            let (phase, ctx, i, records) = (phase.clone(), self.ctx.clone(), which[k], self.records);
            let h = self.hosts[i].clone();
            async move {
                let name = phase.name();
                let outcome = phase.run_host(ctx.clone(), h.clone(), i).await?;
                settle(&ctx, h.as_ref(), i, name, outcome, records).await
            }
        })
        .await;
        let mut full: Vec<Result<()>> = (0..self.hosts.len()).map(|_| Ok(())).collect();
        for (k, r) in results.into_iter().enumerate() {
            full[which[k]] = r;
        }
        self.check(phase.name(), full)
    }

    /// Runs `phase` on `which` hosts one at a time, in order; the first failure stops it.
    pub async fn one_by_one<P: Phase<H>>(&self, phase: Arc<P>, which: Vec<usize>) -> Result<()> {
        for i in which {
            let (ctx, h) = (self.ctx.clone(), self.hosts[i].clone());
            let r = match phase.clone().run_host(ctx.clone(), h.clone(), i).await {
                Ok(outcome) => settle(&ctx, h.as_ref(), i, phase.name(), outcome, self.records).await,
                Err(e) => Err(e),
            };
            r.map_err(|e| self.fail_one(phase.name(), i, e))?;
        }
        Ok(())
    }

    /// Reports host `i`'s failure in `phase` and records it; the error to stop with.
    pub fn fail_one(&self, phase: &'static str, i: usize, e: anyhow::Error) -> anyhow::Error {
        let he = self.failed(phase, i, e);
        self.ctx.rep.finish();
        anyhow!("{he}")
    }

    fn failed(&self, phase: &'static str, i: usize, e: anyhow::Error) -> HostError {
        let host = &self.ctx.cluster.hosts[i];
        let msg = format!("{e:#}");
        self.ctx.rep.event(&host.ip, phase, "error", &msg, serde_json::json!({}));
        let error = match self.records {
            Records::None => e,
            Records::Kept => {
                match records::write_local(&self.ctx, host, phase, "failed", serde_json::json!({"error": msg})) {
                    Ok(()) => e,
                    Err(re) => anyhow!("{msg}; the failure could not be recorded either: {re:#}"),
                }
            }
        };
        HostError { host: host.ip.clone(), phase, error }
    }

    /// Stops the run when any host failed `phase` (`results[i]` is host `i`'s).
    pub fn check(&self, phase: &'static str, results: Vec<Result<()>>) -> Result<()> {
        let errs: Vec<HostError> =
            results.into_iter().enumerate().filter_map(|(i, r)| r.err().map(|e| self.failed(phase, i, e))).collect();
        if errs.is_empty() {
            return Ok(());
        }
        self.ctx.rep.finish();
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let again = match self.records {
            Records::Kept => "completed phases are recorded, so running the same command again continues from here",
            Records::None => {
                "every step tolerates what is already done, so running the same command again continues from here"
            }
        };
        bail!("{phase} failed on {} host(s); {again}:\n  {}", errs.len(), lines.join("\n  "))
    }
}

/// Records (when the engine keeps records) and reports what a phase did on host `i`.
async fn settle<H: RemoteHost>(
    ctx: &Ctx,
    h: &H,
    i: usize,
    phase: &str,
    outcome: Outcome,
    records: Records,
) -> Result<()> {
    let host = &ctx.cluster.hosts[i];
    match outcome {
        Outcome::Done { record, message, data } => {
            if let (Some(detail), Records::Kept) = (record, records) {
                records::record_on(ctx, h, host, phase, detail).await?;
            }
            ctx.rep.event(&host.ip, phase, "done", &message, data);
        }
        Outcome::Skipped(message) => ctx.rep.event(&host.ip, phase, "skip", &message, serde_json::json!({})),
        Outcome::Quiet => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
