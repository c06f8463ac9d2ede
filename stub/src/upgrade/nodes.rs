//! Phase upgrade: the nodes, one at a time for masters (master0 first, with `kubeadm upgrade
//! apply`; the others with `kubeadm upgrade node`), then the workers in batches of at most
//! `--max-unavailable`.
//!
//! Owns what happens to one node: cordon and drain (the eviction API, so PodDisruptionBudgets
//! hold; with a time limit), its old Kubernetes programs, kubelet configuration and static pod
//! manifests kept under /var/lib/ferry/previous (once per upgrade, so a resumed upgrade never
//! overwrites them with half-upgraded ones), the new rootfs laid by the agent (containerd
//! restarted when it changed), kubeadm, the kubelet restarted, the node Ready on the new version,
//! uncordoned. Every step is idempotent, so a node cut off part-way is simply done again.

use super::stage::PREVIOUS_DIR;
use super::survey::NodeFacts;
use crate::cluster::Role;
use crate::node::ADMIN_KUBECTL as KUBECTL;
use crate::node::{AGENT_PATH, FERRY_DIR, INSTALLER_PATH, LB_PORT};
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::run::records::{self, State};
use crate::run::{Ctx, checked};
use crate::ssh::{RemoteHost, quote};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How the nodes are upgraded.
pub struct Nodes<H> {
    /// The Kubernetes version the nodes go to.
    pub target: String,
    /// Each host's Node (by host index), as preflight read it.
    pub nodes: BTreeMap<usize, NodeFacts>,
    /// master0's index: it runs `kubeadm upgrade apply`.
    pub m0: usize,
    /// Workers upgraded at once.
    pub max_unavailable: usize,
    /// How long a drain may take (PodDisruptionBudgets can hold it).
    pub drain_timeout: Duration,
    /// The session kubectl runs on (master0's).
    pub speaker: OnceLock<Arc<H>>,
    /// The hosts preflight found on cgroup v1: kubeadm's SystemVerification refuses them unless
    /// told otherwise, as `run` tells it.
    pub cgroup_v1_hosts: Vec<String>,
    /// Seconds each node took.
    pub seconds: std::sync::Mutex<BTreeMap<String, f64>>,
}

impl<H: RemoteHost> Phase<H> for Nodes<H> {
    fn name(&self) -> &'static str {
        "upgrade"
    }

    fn clock(&self) -> Option<&'static str> {
        Some("nodes")
    }

    fn should_run(&self, ctx: &Ctx, _i: usize, state: &State) -> Decision {
        if records::done(state, "upgrade", &ctx.id) {
            Decision::Skip("already upgraded")
        } else if records::done(state, "prepare", &ctx.id) && !state.contains_key("upgrade") {
            // This installer made the node: there is nothing older on it to replace.
            Decision::Skip("installed by this installer")
        } else {
            Decision::Run
        }
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            engine.say_skips("upgrade", &todo);
            let _ = self.speaker.set(engine.hosts[self.m0].clone());
            let hosts = &engine.ctx.cluster.hosts;
            let run = engine.must_run(&todo);
            let mut masters: Vec<usize> = run.iter().copied().filter(|&i| hosts[i].is(Role::Master)).collect();
            // master0 applies the new version to the cluster before any other master follows.
            masters.sort_by_key(|&i| i != self.m0);
            for m in masters {
                engine.one_by_one(self.clone(), vec![m]).await?;
                api_through_every_lb(engine).await?;
            }
            let workers: Vec<usize> = run.into_iter().filter(|&i| !hosts[i].is(Role::Master)).collect();
            for batch in workers.chunks(self.max_unavailable.max(1)) {
                engine.each(self.clone(), batch.to_vec(), batch.len()).await?;
            }
            Ok(())
        })
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let started = Instant::now();
            let speaker = self.speaker.get().cloned().ok_or_else(|| anyhow!("no master to speak for the cluster"))?;
            let node = self.nodes.get(&i).cloned().ok_or_else(|| {
                anyhow!("{} has no Node in the cluster (preflight read none with its address)", ctx.cluster.hosts[i].ip)
            })?;
            let mut steps = Steps { ctx: &ctx, ip: ctx.cluster.hosts[i].ip.clone(), times: BTreeMap::new() };
            let drain = format!(
                "{KUBECTL} drain {n} --ignore-daemonsets --delete-emptydir-data --timeout={}s 2>&1",
                self.drain_timeout.as_secs(),
                n = quote(&node.name)
            );
            steps.run("drain", "cordon and drain", drained(speaker.as_ref(), &drain, &node.name)).await.with_context(|| {
                format!("the node stays cordoned; once what blocks the drain is resolved, run the same command again, or put it back with --revert-node {}", ctx.cluster.hosts[i].ip)
            })?;
            steps.run("backup", "keeping the old programs", backup(&ctx, h.as_ref())).await?;
            let plan = super::stage::plan_during(&ctx, i);
            let install = async {
                let report = crate::ssh::agent::prepare(h.as_ref(), INSTALLER_PATH, &plan).await?;
                Ok::<_, anyhow::Error>(report)
            };
            let report = steps.run("install", "new rootfs and containerd", install).await?;
            for w in &report.warnings {
                ctx.rep.event(&steps.ip, "upgrade", "warning", w, serde_json::json!({}));
            }
            let mut kubeadm = if i == self.m0 {
                format!("kubeadm upgrade apply {} --yes", quote(&self.target))
            } else {
                "kubeadm upgrade node".to_string()
            };
            if self.cgroup_v1_hosts.contains(&steps.ip) {
                kubeadm.push_str(" --ignore-preflight-errors=SystemVerification");
            }
            let detached_cmd = detached(&kubeadm);
            let fut = checked(h.as_ref(), &detached_cmd, b"", "kubeadm upgrade");
            let timed = async {
                tokio::time::timeout(ctx.phase_timeout, fut).await.unwrap_or_else(|_| Err(anyhow!("timed out")))
            };
            steps.run("kubeadm", &kubeadm, timed).await?;
            let restart = checked(
                h.as_ref(),
                "systemctl daemon-reload && systemctl restart kubelet.service",
                b"",
                "restarting the kubelet",
            );
            steps.run("kubelet", "restarting the kubelet", restart).await?;
            let ready =
                wait_ready(speaker.as_ref(), &node.name, &self.target, ctx.phase_timeout.min(Duration::from_secs(600)));
            steps.run("ready", "waiting for the node to be Ready", ready).await?;
            let uncordon = format!("{KUBECTL} uncordon {} 2>&1", quote(&node.name));
            steps.run("uncordon", "uncordon", patiently(speaker.as_ref(), &uncordon, "kubectl uncordon")).await?;
            let secs = started.elapsed().as_secs_f64();
            self.seconds.lock().unwrap_or_else(|e| e.into_inner()).insert(steps.ip.clone(), secs);
            Ok(Outcome::Done {
                record: Some(
                    serde_json::json!({"node": node.name, "from": node.kubelet, "to": self.target, "seconds": secs, "steps": steps.times}),
                ),
                message: format!("{} on {} ({:.1} s)", node.name, self.target, secs),
                data: serde_json::json!({"node": node.name, "from": node.kubelet, "to": self.target, "seconds": secs, "steps": steps.times}),
            })
        })
    }
}

/// The steps of one node: each announced, timed, and named in its error.
struct Steps<'a> {
    ctx: &'a Ctx,
    ip: String,
    times: BTreeMap<&'static str, f64>,
}

impl Steps<'_> {
    async fn run<T>(
        &mut self,
        step: &'static str,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.ctx.rep.event(&self.ip, "upgrade", "start", what, serde_json::json!({"step": step}));
        let t = Instant::now();
        let r = fut.await.with_context(|| format!("step {step}"));
        self.times.insert(step, (t.elapsed().as_secs_f64() * 100.0).round() / 100.0);
        r
    }
}

/// Runs the drain; a failure says what held it (the pods a PodDisruptionBudget protects, once
/// each) before kubectl's last words.
async fn drained<H: RemoteHost>(speaker: &H, cmd: &str, node: &str) -> Result<()> {
    // Right after a master's upgrade its apiserver may answer before its authorizer has caught
    // up (403 for the admin) or not at all: such answers are waited out, a real refusal is not.
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let out = speaker.run(cmd, b"").await?;
        if out.ok() {
            return Ok(());
        }
        if !transient(&out.text()) || Instant::now() >= deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let text = out.text();
    let mut held: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("disruption budget"))
        .filter_map(|l| l.split_once("evicting ").map(|(_, pod)| pod.split(" (").next().unwrap_or(pod)))
        .collect();
    held.sort_unstable();
    held.dedup();
    let why = if held.is_empty() {
        String::new()
    } else {
        format!("a pod disruption budget allows no eviction of {}; ", held.join(", "))
    };
    bail!("kubectl drain {node} did not finish: {why}{}", out.tail(2))
}

/// Whether kubectl's answer is one an apiserver gives while it (re)starts.
fn transient(text: &str) -> bool {
    ["Forbidden", "connection refused", "Unable to connect", "TLS handshake timeout", "the server is currently unable"]
        .iter()
        .any(|w| text.contains(w))
        && !text.contains("disruption budget")
}

/// Runs `cmd` (kubectl on the speaking master), waiting out an apiserver that is (re)starting.
async fn patiently<H: RemoteHost>(speaker: &H, cmd: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = speaker.run(cmd, b"").await?;
        if out.ok() {
            return Ok(());
        }
        if !transient(&out.text()) || Instant::now() >= deadline {
            bail!("{what} exited with status {}: {}", out.status, out.tail(4));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Keeps what the new release replaces under [`PREVIOUS_DIR`], once per upgrade (marked with the
/// new installer's id): the files of the new rootfs that exist on the node, the kubelet's
/// configuration, the static pod manifests and containerd's configuration.
async fn backup<H: RemoteHost>(ctx: &Ctx, h: &H) -> Result<()> {
    let list: String = ctx
        .payload
        .index()
        .entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("rootfs/"))
        .filter(|p| !p.is_empty())
        .map(|p| format!("{p}\n"))
        .collect();
    let script = format!(
        r#"set -e
B={PREVIOUS_DIR}
if [ "$(cat $B/for 2>/dev/null)" = "{id}" ]; then echo kept; exit 0; fi
rm -rf $B.tmp; mkdir -p -m 700 $B.tmp/root
# cp --parents keeps the path below the working directory: relative paths from /.
cd /
while IFS= read -r f; do
  if [ -f "$f" ] || [ -L "$f" ]; then cp -a --parents "$f" $B.tmp/root/; fi
done
for f in etc/kubernetes/manifests var/lib/kubelet/config.yaml var/lib/kubelet/kubeadm-flags.env etc/containerd etc/systemd/system/kubelet.service.d; do
  if [ -e "$f" ]; then cp -a --parents "$f" $B.tmp/root/; fi
done
echo "{id}" > $B.tmp/for
rm -rf $B; mv $B.tmp $B
echo saved
"#,
        id = ctx.id
    );
    let path = format!("{FERRY_DIR}/backup-list");
    crate::run::put_file(h, &path, "0600", list.as_bytes()).await?;
    checked(h, &format!("bash -c {} < {path}", quote(&script)), b"", "keeping the old programs").await?;
    Ok(())
}

/// `cmd` run so that it finishes even when the operator's session ends half-way (its output goes
/// to a log on the node, not to the session), and never twice at once: a resumed upgrade waits
/// for a kubeadm a cut-off session left running, then runs it again, which kubeadm allows.
fn detached(cmd: &str) -> String {
    let log = format!("{FERRY_DIR}/kubeadm-upgrade.log");
    format!(
        "mkdir -p /run/ferry && exec 9>/run/ferry/kubeadm-upgrade.lock && flock -w 3600 9 && \
         {{ {cmd} > {log} 2>&1; s=$?; tail -n 20 {log}; exit $s; }}"
    )
}

/// Waits until Node `name` is Ready with its kubelet at `version`.
async fn wait_ready<H: RemoteHost>(speaker: &H, name: &str, version: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let cmd = format!("{KUBECTL} get node {} -o json", quote(name));
    loop {
        let last = match speaker.run(&cmd, b"").await {
            Ok(out) if out.ok() => match super::survey::parse_node(&out.text()) {
                Some(n) if n.ready && n.kubelet == version => return Ok(()),
                Some(n) => format!("Ready={}, kubelet {}", n.ready, n.kubelet),
                None => "no Node".into(),
            },
            Ok(out) => out.tail(2),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("node {name} was not Ready on kubelet {version} within {} s (last: {last})", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// After a master: the API answers `/readyz` through every node's own load balancer (each
/// asked by its agent, the apiserver's certificate checked), so the next master goes down only
/// while every node still reaches a live one.
async fn api_through_every_lb<H: RemoteHost>(engine: &Engine<H>) -> Result<()> {
    let results = crate::run::parallel(engine.hosts.len(), engine.parallel, |i| {
        let h = engine.hosts[i].clone();
        async move { crate::ssh::agent::api_ready(h.as_ref(), AGENT_PATH, LB_PORT, 120).await }
    })
    .await;
    engine.check("upgrade", results)
}
