//! Preflight, the gate before any phase changes a host, and the settling of the agent it staged.
//!
//! Owns: the survey of one host (arch probe, ferry's agent staged if missing, see [`Stage`], the
//! host's lock taken with it before anything else runs there, facts, recorded state), the
//! judgement of every host together ([`crate::run::preflight`]'s
//! rules), the one table of every problem on every host (unreachable ones included), and the
//! stop on any error, removing what it staged and giving the locks back: a failed preflight
//! changes nothing on any host. A host another operation holds is a `lock` row of the table, and
//! the error names its holder.
//! When it passes, each host's cgroup version is reported and recorded, and [`Settle`] moves the
//! staged agents to /var/lib/ferry/agent.

use crate::agent::{AGENT_PATH, FERRY_DIR, Facts};
use crate::run::engine::{BoxFuture, Decision, Outcome, Phase};
use crate::run::lock::{HostLock, LockRequest, Locks, Refused};
use crate::run::preflight::{self, Problem, Severity};
use crate::run::records::{self, State};
use crate::run::{Ctx, checked, host_plan, parallel};
use crate::ssh::RemoteHost;
use anyhow::{Result, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Tools the kubelet and kube-proxy call on the host.
pub const KUBELET_TOOLS: &[&str] = &["mount", "umount", "nsenter", "iptables", "ip", "conntrack", "socat"];

/// The largest clock difference between the operator and a host that preflight accepts.
const MAX_SKEW_MS: i64 = 30_000;

/// What preflight learned about a host.
pub struct Surveyed {
    /// Facts.
    pub facts: Facts,
    /// Operator minus host clock.
    pub skew_ms: i64,
    /// Records on the host for this cluster.
    pub state: State,
    /// The private directory holding the agent preflight ran, when the host had no agent of
    /// this build yet (one of [`Stage`]'s directories).
    pub staged: Option<String>,
    /// The host's lock, held by that agent (none where it cannot run).
    pub lock: Option<HostLock>,
}

/// Where preflight puts ferry's agent on a host that lacks it: a private directory named for
/// this run, in /run (root's tmpfs, gone at reboot) or else /tmp. Nothing under /var/lib/ferry
/// changes before preflight passes: then the agent moves there ([`Stage::settle_cmd`]); if it
/// fails, the directory is removed ([`Stage::cleanup_cmd`]).
#[derive(Clone, Debug)]
pub struct Stage {
    id: String,
}

impl Stage {
    /// A name unique to this run.
    pub fn new() -> Stage {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Stage { id: format!("{:x}{:x}", nanos, std::process::id()) }
    }

    fn dirs(&self) -> [String; 2] {
        [format!("/run/ferry-preflight.{}", self.id), format!("/tmp/ferry-preflight.{}", self.id)]
    }

    /// Receives the agent on stdin; prints the directory and the agent's sha256.
    fn place_cmd(&self) -> String {
        let [run, tmp] = self.dirs();
        // mkdir (not -p) fails on anything already there, so nothing is followed or reused.
        format!(
            "umask 077; d=; for x in {run} {tmp}; do mkdir -m 0700 \"$x\" 2>/dev/null && d=$x && break; done; \
             [ -n \"$d\" ] || {{ echo 'cannot make a private directory in /run or /tmp' >&2; exit 1; }}; \
             if cat > \"$d/agent\" && chmod 0700 \"$d/agent\"; then echo \"$d\"; sha256sum \"$d/agent\" | cut -d' ' -f1; \
             else rm -rf \"$d\"; exit 1; fi"
        )
    }

    /// Removes whatever this run staged on a host.
    pub fn cleanup_cmd(&self) -> String {
        let [run, tmp] = self.dirs();
        format!("rm -rf {run} {tmp}")
    }

    /// Moves the staged agent to its place; prints its sha256.
    fn settle_cmd(&self, dir: &str) -> String {
        let f = FERRY_DIR;
        format!(
            "umask 077 && mkdir -p {f} && cp {dir}/agent {f}/.agent.tmp && chmod 0700 {f}/.agent.tmp && mv -f {f}/.agent.tmp {AGENT_PATH} && rm -rf {dir} && sha256sum {AGENT_PATH} | cut -d' ' -f1"
        )
    }
}

impl Default for Stage {
    fn default() -> Self {
        Stage::new()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Preflight on one host: arch probe, the agent (staged if missing, see [`Stage`]), the host's
/// lock for `lock`, facts, state. Changes nothing on the host but the staged directory and the
/// lock.
pub async fn survey<H: RemoteHost>(
    ctx: &Ctx,
    h: &H,
    tools: &[String],
    stage: &Stage,
    lock: &LockRequest,
) -> Result<Surveyed> {
    let probe = checked(
        h,
        &format!("uname -m; (sha256sum {AGENT_PATH} 2>/dev/null || echo none) | cut -d' ' -f1"),
        b"",
        "the first command",
    )
    .await?;
    let text = probe.text();
    let mut lines = text.lines();
    let arch = lines.next().unwrap_or("").trim().to_string();
    let agent_sha = lines.next().unwrap_or("").trim().to_string();
    if arch != std::env::consts::ARCH {
        // The agent could not run there; report as a fact and let judge() word it.
        let facts =
            Facts { arch, systemd: true, cpus: 64, mem_bytes: u64::MAX, disk_free: u64::MAX, ..Default::default() };
        return Ok(Surveyed { facts, skew_ms: 0, state: BTreeMap::new(), staged: None, lock: None });
    }
    let (agent, staged) = if agent_sha == ctx.stub_sha {
        (AGENT_PATH.to_string(), None)
    } else {
        let dir = stage_agent(ctx, h, stage).await?;
        (format!("{dir}/agent"), Some(dir))
    };
    // The lock before anything else the agent does: facts read while another operation changes
    // the host would be judged on what is about to be untrue.
    let surveyed: Result<Surveyed> = async {
        let lock = crate::run::lock::take(h, &agent, lock, &ctx.rep).await?;
        let (facts, skew_ms, state) = facts_and_state(ctx, h, &agent, tools).await?;
        Ok(Surveyed { facts, skew_ms, state, staged: staged.clone(), lock: Some(lock) })
    }
    .await;
    if surveyed.is_err() && staged.is_some() {
        let _ = h.run(&stage.cleanup_cmd(), b"").await;
    }
    surveyed
}

/// Puts this build's agent in a private directory of `stage`; returns the directory.
async fn stage_agent<H: RemoteHost>(ctx: &Ctx, h: &H, stage: &Stage) -> Result<String> {
    ctx.rep.event(h.addr(), "preflight", "progress", "staging ferry's agent", serde_json::json!({}));
    let out = checked(h, &stage.place_cmd(), &ctx.stub, "staging the agent").await?;
    let text = out.text();
    let mut lines = text.lines();
    let dir = lines.next().unwrap_or("").trim().to_string();
    let sha = lines.next().unwrap_or("").trim().to_string();
    if !stage.dirs().contains(&dir) {
        let _ = h.run(&stage.cleanup_cmd(), b"").await;
        bail!("staging the agent printed {text:?}, not one of {:?}", stage.dirs());
    }
    if sha != ctx.stub_sha {
        let _ = h.run(&stage.cleanup_cmd(), b"").await;
        bail!("the agent arrived damaged (sha256 {sha} instead of {})", ctx.stub_sha);
    }
    Ok(dir)
}

/// The host's facts (with the clock skew measured around them) and its recorded state.
async fn facts_and_state<H: RemoteHost>(
    ctx: &Ctx,
    h: &H,
    agent: &str,
    tools: &[String],
) -> Result<(Facts, i64, State)> {
    let before = now_ms();
    let facts = crate::ssh::agent::facts(h, agent, tools).await?;
    let after = now_ms();
    let skew_ms = (before + after) / 2 - facts.time_ms as i64;
    let state = crate::ssh::agent::state(h, agent, &ctx.cluster.name).await?;
    Ok((facts, skew_ms, state))
}

/// What a passed preflight hands the phases.
pub struct Passed<H> {
    /// Every host, connected, in cluster order.
    pub hosts: Vec<Arc<H>>,
    /// What each host recorded.
    pub states: Vec<State>,
    /// Where each host's agent was staged, if it was.
    pub staged: Vec<Option<String>>,
    /// The hosts found on cgroup v1.
    pub cgroup_v1_hosts: Vec<String>,
    /// Every host's lock, held until the operation ends.
    pub locks: Locks,
}

/// The kubelet's tools the bundle's rootfs does not bring: the hosts must have them.
fn tools_needed(ctx: &Ctx) -> Vec<String> {
    KUBELET_TOOLS
        .iter()
        .filter(|t| {
            !["usr/bin", "usr/sbin", "bin", "sbin", "usr/local/bin", "usr/local/sbin"]
                .iter()
                .any(|d| ctx.payload.index().entries.iter().any(|e| e.path == format!("rootfs/{d}/{t}")))
        })
        .map(|t| t.to_string())
        .collect()
}

/// Preflight over every host, each locked for `lock`: `connected[i]` is host `i`'s session, or
/// `None` when it could not be reached (its problem is in `problems` already). Stops, having
/// changed nothing and given every lock back, on any error.
pub async fn gate<H: RemoteHost>(
    ctx: &Arc<Ctx>,
    connected: Vec<Option<Arc<H>>>,
    mut problems: Vec<Problem>,
    limit: usize,
    stage: &Stage,
    lock: &LockRequest,
) -> Result<Passed<H>> {
    let mut surveyed = survey_all(ctx, &connected, &mut problems, limit, stage, lock).await;
    let locks: Locks = surveyed.iter_mut().filter_map(|s| s.as_mut()?.lock.take()).collect();
    problems.extend(judge_all(ctx, &surveyed)?);
    // On a node ferry already made part of this cluster, the Kubernetes ports are taken by its
    // own apiserver, kubelet and LB: expected on a re-run or a `join`, not a problem.
    let installed: Vec<String> = surveyed
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_ref().is_some_and(|s| s.state.contains_key("lb") || s.state.contains_key("kubeadm")))
        .map(|(i, _)| ctx.cluster.hosts[i].ip.clone())
        .collect();
    problems.retain(|p| !(p.check == "ports" && installed.contains(&p.host)));
    if problems.iter().any(|p| p.severity == Severity::Error) {
        locks.release(&ctx.rep).await;
        // Preflight changes nothing: remove the agents it staged (on every host, so a survey that
        // timed out is cleaned up too).
        let _ = parallel(connected.len(), limit, |i| {
            let (h, cmd) = (connected[i].clone(), stage.cleanup_cmd());
            async move {
                if let Some(h) = h {
                    let _ = tokio::time::timeout(Duration::from_secs(30), h.run(&cmd, b"")).await;
                }
            }
        })
        .await;
        let refused: Vec<String> =
            problems.iter().filter(|p| p.check == LOCK_CHECK).map(|p| p.message.clone()).collect();
        let err = stop_with(ctx, problems, "preflight");
        return Err(if refused.is_empty() { err } else { err.context(refused.join("; ")) });
    }
    let hosts: Vec<Arc<H>> = connected.into_iter().flatten().collect();
    if !problems.is_empty() {
        ctx.rep.line("problems", &preflight::table(&problems), serde_json::json!({"problems": problems}));
    }
    passed(ctx, hosts, surveyed, locks)
}

/// The preflight table's check for a host another operation holds.
const LOCK_CHECK: &str = "lock";

/// Surveys every connected host; a survey that fails is a problem of its host.
async fn survey_all<H: RemoteHost>(
    ctx: &Arc<Ctx>,
    connected: &[Option<Arc<H>>],
    problems: &mut Vec<Problem>,
    limit: usize,
    stage: &Stage,
    lock: &LockRequest,
) -> Vec<Option<Surveyed>> {
    let tools = tools_needed(ctx);
    let surveys = parallel(connected.len(), limit, |i| {
        let (ctx, h, tools) = (ctx.clone(), connected[i].clone(), tools.clone());
        let (stage, lock) = (stage.clone(), lock.clone());
        async move {
            let h = h?;
            ctx.rep.event(h.addr(), "preflight", "start", "checking", serde_json::json!({}));
            Some(
                tokio::time::timeout(ctx.phase_timeout, survey(&ctx, h.as_ref(), &tools, &stage, &lock))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timed out"))),
            )
        }
    })
    .await;
    let mut surveyed = Vec::new();
    for (i, s) in surveys.into_iter().enumerate() {
        match s {
            None => surveyed.push(None),
            Some(Ok(s)) => surveyed.push(Some(s)),
            Some(Err(e)) => {
                let check = if e.downcast_ref::<Refused>().is_some() { LOCK_CHECK } else { "agent" };
                problems.push(Problem {
                    host: ctx.cluster.hosts[i].ip.clone(),
                    severity: Severity::Error,
                    check: check.into(),
                    message: format!("{e:#}"),
                });
                surveyed.push(None);
            }
        }
    }
    surveyed
}

/// Every surveyed host judged against the bundle and the cluster.
fn judge_all(ctx: &Ctx, surveyed: &[Option<Surveyed>]) -> Result<Vec<Problem>> {
    let judged: Vec<preflight::HostFacts> = surveyed
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let s = s.as_ref()?;
            let host = &ctx.cluster.hosts[i];
            let (_, bytes, rootfs) = host_plan(&ctx.payload, host);
            let have = s.facts.installer.as_deref() == Some(ctx.id.as_str());
            let disk_needed = if have { 0 } else { bytes } + 2 * rootfs + (64 << 20);
            let ours = s.state.contains_key("prepare");
            Some(preflight::HostFacts { host, facts: &s.facts, disk_needed, skew_ms: s.skew_ms, ours })
        })
        .collect();
    let rules = preflight::Rules {
        arch: std::env::consts::ARCH.into(),
        platforms: ferry_core::metadata::platforms(&ctx.payload.index().metadata.extra)?,
        registry_port: ctx.cluster.registry_port,
        lb_port: crate::node::LB_PORT,
        force: ctx.force,
        max_skew_ms: MAX_SKEW_MS,
    };
    Ok(preflight::judge(&judged, &rules))
}

/// Reports and records each host's pass (with its cgroup version).
fn passed<H>(ctx: &Ctx, hosts: Vec<Arc<H>>, surveyed: Vec<Option<Surveyed>>, locks: Locks) -> Result<Passed<H>> {
    let cgroups: Vec<String> =
        surveyed.iter().map(|s| s.as_ref().map(|s| s.facts.cgroup.clone()).unwrap_or_default()).collect();
    for (h, cgroup) in ctx.cluster.hosts.iter().zip(&cgroups) {
        let shown = if cgroup.is_empty() { "unknown" } else { cgroup.as_str() };
        records::write_local(ctx, h, "preflight", "done", serde_json::json!({"cgroup": shown}))?;
        ctx.rep.event(
            &h.ip,
            "preflight",
            "done",
            &format!("ok (cgroup {shown})"),
            serde_json::json!({"cgroup": shown}),
        );
    }
    let cgroup_v1_hosts =
        ctx.cluster.hosts.iter().zip(&cgroups).filter(|(_, c)| *c == "v1").map(|(h, _)| h.ip.clone()).collect();
    let staged = surveyed.iter().map(|s| s.as_ref().and_then(|s| s.staged.clone())).collect();
    let states = surveyed.into_iter().map(|s| s.map(|s| s.state).unwrap_or_default()).collect();
    Ok(Passed { hosts, states, staged, cgroup_v1_hosts, locks })
}

/// Prints the table of `problems`, records each host's result, and the error to stop with.
pub fn stop_with(ctx: &Ctx, mut problems: Vec<Problem>, phase: &str) -> anyhow::Error {
    // Hosts in cluster order, errors first.
    let order = |h: &str| ctx.cluster.hosts.iter().position(|c| c.ip == h).unwrap_or(usize::MAX);
    problems.sort_by(|a, b| (order(&a.host), b.severity, &a.check).cmp(&(order(&b.host), a.severity, &b.check)));
    ctx.rep.finish();
    ctx.rep.line("problems", &preflight::table(&problems), serde_json::json!({"problems": problems}));
    let mut hosts: Vec<&str> =
        problems.iter().filter(|p| p.severity == Severity::Error).map(|p| p.host.as_str()).collect();
    hosts.dedup();
    let mut unrecorded = None;
    for h in &ctx.cluster.hosts {
        let mine: Vec<&Problem> = problems.iter().filter(|p| p.host == h.ip).collect();
        let status = if mine.iter().any(|p| p.severity == Severity::Error) { "failed" } else { "ok" };
        if let Err(e) = records::write_local(ctx, h, phase, status, serde_json::json!({"problems": mine})) {
            unrecorded.get_or_insert(e);
        }
    }
    let n = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let err =
        anyhow!("{phase} found {n} problem(s) on {}: nothing was installed; fix them and run again", hosts.join(", "));
    match unrecorded {
        None => err,
        Some(e) => anyhow!("{err:#}; the result could not be recorded either: {e:#}"),
    }
}

/// Preflight passed: the agents it staged move to their place under /var/lib/ferry. Its failures
/// are reported as distribute's, the phase that needs the agent there.
pub struct Settle {
    /// Where each host's agent was staged, if it was.
    pub staged: Vec<Option<String>>,
    /// The run's staging names.
    pub stage: Stage,
}

impl<H: RemoteHost> Phase<H> for Settle {
    fn name(&self) -> &'static str {
        "distribute"
    }

    fn clock(&self) -> Option<&'static str> {
        None
    }

    fn should_run(&self, _ctx: &Ctx, i: usize, _state: &State) -> Decision {
        if self.staged.get(i).is_some_and(|s| s.is_some()) { Decision::Run } else { Decision::Pass }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let Some(Some(dir)) = self.staged.get(i) else { return Ok(Outcome::Quiet) };
            let out = checked(h.as_ref(), &self.stage.settle_cmd(dir), b"", "placing the agent").await?;
            if out.text().trim() != ctx.stub_sha {
                bail!("the agent was damaged on the host (sha256 {} instead of {})", out.text().trim(), ctx.stub_sha);
            }
            Ok(Outcome::Quiet)
        })
    }
}
