//! `installer run`: turns bare hosts into prepared nodes over SSH.
//!
//! Owns the orchestration: resolve the cluster, connect (bounded parallelism, timeouts,
//! keepalives), then the phases, each on every host in parallel:
//!
//! 1. **preflight**: connect, stage ferry's agent in a private directory under /run (only if
//!    /var/lib/ferry/agent is missing or different, see [`Stage`]), gather [`Facts`], judge them
//!    all, print one table of every problem on every host (unreachable ones included), stop on
//!    any error, removing what it staged: a failed preflight changes nothing on any host. When it
//!    passes, the staged agents move to /var/lib/ferry/agent. Each host's cgroup version is
//!    reported and recorded (kubeadm's configs depend on it, see [`control`]);
//! 2. **distribute**: stream the chunks each host needs into `agent receive` over one exec
//!    channel (nodes: program + rootfs/bundle/files; registry hosts: the whole installer);
//! 3. **prepare**: `agent prepare` with a small JSON plan;
//! 4. **registry**: `agent registry-service` on every registry replica (every master unless
//!    `--registry-replicas` says otherwise), then `agent check-pull` on every node: the phase ends
//!    only when each node gets a bundled image's manifest from every replica and its containerd
//!    pulls the image through hosts.toml (which lists all replicas, so a pull survives one's death).
//!
//! Each completed phase is recorded on the host (/var/lib/ferry/state/<cluster>/) and beside the
//! installer (.ferry/<cluster>/<host>.json); a re-run skips what is recorded for this installer.
//! Errors name the host, the phase and the last lines of output.

pub mod control;
pub mod distribute;
pub mod locate;
pub mod preflight;
pub mod progress;
pub mod relay;

use crate::agent::{AGENT_PATH, Facts, INSTALLER_PATH, Record};
use crate::cli::RunArgs;
use crate::cluster::{self, Cluster, Host, Overrides, Role};
use crate::ssh::client::{Jump, Login, SshHost, SshOptions};
use crate::ssh::{RemoteHost, Secret, Secrets, quote};
use anyhow::{Context, Result, anyhow, bail};
use payload_format::{Payload, SignatureStatus, TrustPolicy};
use progress::Reporter;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tools the kubelet and kube-proxy call on the host.
pub const KUBELET_TOOLS: &[&str] = &["mount", "umount", "nsenter", "iptables", "ip", "conntrack", "socat"];
/// Port of the local API load balancer on every node (one constant: [`control::LB_PORT`]).
pub const LB_PORT: u16 = control::LB_PORT;

/// Everything shared by the phases.
pub struct Ctx {
    /// The installer being delivered.
    pub payload: Payload,
    /// Its build id (hex SHA-256 of the trailer).
    pub id: String,
    /// The cluster.
    pub cluster: Cluster,
    /// Progress output.
    pub rep: Reporter,
    /// The program (stub) bytes, sent as the agent.
    pub stub: Vec<u8>,
    /// Hex SHA-256 of `stub`.
    pub stub_sha: String,
    /// The operator accepted an unsigned installer.
    pub allow_unsigned: bool,
    /// Signer fingerprint, passed to agents so they check it too.
    pub signer: Option<String>,
    /// Local state directory.
    pub local_state: PathBuf,
    /// Per-phase timeout.
    pub phase_timeout: Duration,
    /// Refuse nothing for an existing runtime.
    pub force: bool,
    /// A stream that moves nothing for this long has lost its host.
    pub stall: Duration,
}

/// Seconds `run` and `join` wait for the new cluster to pass `check` unless `--wait` says.
pub const DEFAULT_WAIT_SECS: u64 = 600;

/// Runs `installer run`.
pub fn run(args: &RunArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("run").build()?;
    rt.block_on(run_async(args, quiet, no_progress))
}

pub(crate) fn secrets(args: &RunArgs) -> Result<Secrets> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).map(Secret::new);
    let mut s = Secrets {
        ssh_password: env("FERRY_SSH_PASSWORD"),
        sudo_password: env("FERRY_SUDO_PASSWORD"),
        key_passphrase: env("FERRY_SSH_KEY_PASSPHRASE"),
    };
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
        s.ssh_password = Some(Secret::new(line.trim_end_matches(['\n', '\r']).to_string()));
    }
    if args.ask_password && s.ssh_password.is_none() {
        s.ssh_password = Some(crate::ssh::prompt_secret("SSH password")?);
    }
    if args.ask_sudo_password && s.sudo_password.is_none() {
        s.sudo_password = Some(crate::ssh::prompt_secret("sudo password")?);
    }
    Ok(s)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs `f(i)` for `0..n` with at most `limit` at once; results in input order.
pub async fn parallel<T, F, Fut>(n: usize, limit: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let fut = f(i);
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, fut.await)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, v) = r.expect("a phase task panicked");
        out[i] = Some(v);
    }
    out.into_iter().map(|v| v.expect("every task finished")).collect()
}

/// Per-host bytes the installer will send and unpack.
fn host_plan(payload: &Payload, host: &Host) -> (Vec<u64>, u64, u64) {
    let want = distribute::wanted_chunks(payload, host);
    let bytes = distribute::chunk_bytes(payload, &want);
    let rootfs: u64 = payload.index().entries.iter().filter(|e| e.path.starts_with("rootfs/")).map(|e| e.size).sum();
    (want, bytes, rootfs)
}

pub(crate) fn local_state_dir(installer: &Path, cluster: &str) -> PathBuf {
    let exe = if installer == Path::new(crate::SELF_EXE) {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("installer"))
    } else {
        installer.to_path_buf()
    };
    exe.parent().unwrap_or(Path::new(".")).join(".ferry").join(cluster)
}

/// Merges a phase into the local record of a host (`.ferry/<cluster>/<host>.json`).
pub(crate) fn local_record(ctx: &Ctx, host: &Host, phase: &str, status: &str, detail: serde_json::Value) {
    let path = ctx.local_state.join(format!("{}.json", host.ip.replace([':', '/'], "_")));
    let mut v: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"host": host.ip, "roles": host.role_names(), "phases": {}}));
    v["installer"] = ctx.id.clone().into();
    v["phases"][phase] = serde_json::json!({"status": status, "at": now_secs(), "installer": ctx.id, "detail": detail});
    let _ =
        crate::registry::config::write_atomic(&path, serde_json::to_string_pretty(&v).unwrap_or_default().as_bytes());
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

pub(crate) async fn checked<H: RemoteHost>(h: &H, cmd: &str, stdin: &[u8], what: &str) -> Result<crate::ssh::Output> {
    let out = h.run(cmd, stdin).await.with_context(|| format!("running {what}"))?;
    if !out.ok() {
        bail!("{what} exited with status {}: {}", out.status, out.tail(4));
    }
    Ok(out)
}

/// What preflight learned about a host.
pub struct Surveyed {
    /// Facts.
    pub facts: Facts,
    /// Operator minus host clock.
    pub skew_ms: i64,
    /// Records on the host for this cluster.
    pub state: BTreeMap<String, Record>,
    /// The private directory holding the agent preflight ran, when the host had no agent of
    /// this build yet ([`Stage::dir`]).
    pub staged: Option<String>,
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
        let f = crate::agent::FERRY_DIR;
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

/// Preflight on one host: arch probe, the agent (staged if missing, see [`Stage`]), facts, state.
/// Changes nothing on the host but the staged directory.
pub async fn survey<H: RemoteHost>(ctx: &Ctx, h: &H, tools: &[String], stage: &Stage) -> Result<Surveyed> {
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
        return Ok(Surveyed {
            facts: Facts {
                arch,
                systemd: true,
                cpus: 64,
                mem_bytes: u64::MAX,
                disk_free: u64::MAX,
                ..Default::default()
            },
            skew_ms: 0,
            state: BTreeMap::new(),
            staged: None,
        });
    }
    let (agent, staged) = if agent_sha == ctx.stub_sha {
        (AGENT_PATH.to_string(), None)
    } else {
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
        (format!("{dir}/agent"), Some(dir))
    };
    let facts_and_state = async {
        let before = now_ms();
        let out =
            checked(h, &format!("{agent} agent facts --tools {}", quote(&tools.join(","))), b"", "agent facts").await?;
        let after = now_ms();
        let facts: Facts = serde_json::from_slice(&out.stdout).context("reading the agent's facts")?;
        let skew_ms = (before + after) / 2 - facts.time_ms as i64;
        let out =
            checked(h, &format!("{agent} agent state --cluster {}", quote(&ctx.cluster.name)), b"", "agent state")
                .await?;
        let state = serde_json::from_slice(&out.stdout).context("reading the agent's state")?;
        Ok::<_, anyhow::Error>((facts, skew_ms, state))
    };
    match facts_and_state.await {
        Ok((facts, skew_ms, state)) => Ok(Surveyed { facts, skew_ms, state, staged }),
        Err(e) => {
            if staged.is_some() {
                let _ = h.run(&stage.cleanup_cmd(), b"").await;
            }
            Err(e)
        }
    }
}

fn done(state: &BTreeMap<String, Record>, phase: &str, id: &str) -> bool {
    state.get(phase).is_some_and(|r| r.installer == id)
}

pub(crate) async fn record_on<H: RemoteHost>(
    ctx: &Ctx,
    h: &H,
    host: &Host,
    phase: &str,
    detail: serde_json::Value,
) -> Result<()> {
    let cmd = format!(
        "{AGENT_PATH} agent record --cluster {} --phase {phase} --installer {}",
        quote(&ctx.cluster.name),
        ctx.id
    );
    checked(h, &cmd, detail.to_string().as_bytes(), "recording the phase").await?;
    local_record(ctx, host, phase, "done", detail);
    Ok(())
}

/// The registry replicas' URLs (`http://IP:PORT`), in cluster order.
pub fn registry_endpoints(c: &Cluster) -> Vec<String> {
    c.registry_hosts().iter().map(|h| format!("http://{}:{}", h.ip, c.registry_port)).collect()
}

/// The prepare plan for one host. Every replica is listed in its hosts.toml, in cluster order,
/// except that a replica lists itself first (its own pulls never cross the network).
pub fn prepare_plan(ctx: &Ctx, host: &Host) -> crate::agent::prepare::Plan {
    let c = &ctx.cluster;
    let mut registries: Vec<&Host> = c.registry_hosts();
    if let Some(me) = registries.iter().position(|h| h.ip == host.ip) {
        let own = registries.remove(me);
        registries.insert(0, own);
    }
    crate::agent::prepare::Plan {
        registry_endpoints: registries.iter().map(|h| format!("http://{}:{}", h.ip, c.registry_port)).collect(),
        // The API endpoint name is the node-local LB (ferry-lb.service on 127.0.0.1:LB_PORT),
        // which is why it is in the apiserver certificate's SANs.
        hosts_entries: vec![
            ("127.0.0.1".into(), c.api_endpoint.clone()),
            (registries[0].ip.clone(), "ferry-registry".into()),
        ],
        allow_unsigned: ctx.allow_unsigned,
        root: PathBuf::from("/"),
        service_subnet: Some(
            c.network
                .as_ref()
                .and_then(|n| n.service_subnet.clone())
                .unwrap_or_else(|| crate::kube::config::DEFAULT_SERVICE_SUBNET.to_string()),
        ),
        node_ip: Some(host.ip.clone()),
    }
}

/// The image every node pulls through the mirror to prove the registry phase.
pub fn probe_image(payload: &Payload) -> Option<String> {
    let images = ferry_core::metadata::images(&payload.index().metadata.extra).ok()?;
    let mut refs: Vec<String> = images.into_iter().map(|i| i.reference).collect();
    refs.sort_by_key(|r| (!r.contains("pause"), r.clone()));
    refs.into_iter().next()
}

fn print_plan(ctx: &Ctx, relay_chains: usize) {
    // The chains as a first run would lay them (a resumed run also lets delivered hosts head them).
    let wants: Vec<Vec<u64>> = ctx.cluster.hosts.iter().map(|h| distribute::wanted_chunks(&ctx.payload, h)).collect();
    let parents = relay::plan(&wants, &vec![false; wants.len()], relay_chains);
    let mut s = format!(
        "plan for cluster {} ({} hosts, installer {}):\n",
        ctx.cluster.name,
        ctx.cluster.hosts.len(),
        &ctx.id[..12]
    );
    for (i, h) in ctx.cluster.hosts.iter().enumerate() {
        let plan = prepare_plan(ctx, h);
        let source = match parents[i] {
            Some(j) => format!(", pulled from {} (relay)", ctx.cluster.hosts[j].ip),
            None => ", streamed by this installer".to_string(),
        };
        let (want, bytes, rootfs) = host_plan(&ctx.payload, h);
        s.push_str(&format!(
            "  {} [{}] as {}@{}:{}{}\n    preflight: facts (agent staged under /run, moved to {AGENT_PATH} once every host passes)\n    distribute: {} chunks ({}) to {INSTALLER_PATH}{}{}\n    prepare: rootfs ({}), containerd via {}, sysctls, swap off, /etc/hosts\n{}",
            h.ip,
            h.role_names(),
            h.ssh.user,
            h.ip,
            h.ssh.port,
            if h.ssh.sudo { " via sudo" } else { "" },
            want.len(),
            crate::units::bytes(bytes),
            if h.is(Role::Registry) { " (the whole installer)" } else { "" },
            source,
            crate::units::bytes(rootfs),
            plan.registry_endpoints.join(", "),
            if h.is(Role::Registry) { format!("    registry: ferry-registry.service on port {}\n", ctx.cluster.registry_port) } else { String::new() },
        ));
    }
    ctx.rep.line("plan", s.trim_end(), serde_json::json!({"cluster": ctx.cluster}));
}

pub use locate::locate;

async fn run_async(args: &RunArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let started = Instant::now();
    let rep = Reporter::new(args.json, quiet, no_progress);
    let payload = crate::verify::open_payload(&args.installer)?;
    let policy =
        TrustPolicy { trusted: crate::trust::trusted_keys(&args.trusted_keys)?, allow_unsigned: args.allow_unsigned };
    let signer = match payload.check_signature(&policy)? {
        SignatureStatus::Trusted(k) | SignatureStatus::ValidUnpinned(k) => Some(k.fingerprint()),
        SignatureStatus::Unsigned => {
            rep.line(
                "warning",
                "warning: the installer is UNSIGNED (accepted because of --allow-unsigned)",
                serde_json::json!({}),
            );
            None
        }
    };
    payload.verify_stub()?;
    let stub_len = payload.trailer().stub_len as usize;
    let mut stub = vec![0u8; stub_len];
    std::os::unix::fs::FileExt::read_exact_at(payload.file(), &mut stub, 0).context("reading the installer program")?;
    let stub_sha = hex::encode(payload_format::sha256(&stub));
    let id = crate::agent::trailer_id(payload.path())
        .or_else(|| crate::agent::trailer_id(&args.installer))
        .ok_or_else(|| anyhow!("cannot read the installer's trailer"))?;

    let file = args.cluster_file.as_deref().map(cluster::load).transpose()?;
    let overrides = Overrides {
        masters: args.masters.clone(),
        workers: args.workers.clone(),
        registry_replicas: args.registry_replicas,
        ..locate::overrides(args, args.hosts.clone())
    };
    let cluster = cluster::resolve(file, &overrides)?;
    for w in &cluster.warnings {
        rep.line("warning", &format!("warning: {w}"), serde_json::json!({}));
    }
    let local_state = local_state_dir(&args.installer, &cluster.name);
    let ctx = Arc::new(Ctx {
        payload,
        id,
        cluster,
        rep,
        stub,
        stub_sha,
        allow_unsigned: signer.is_none(),
        signer,
        local_state,
        phase_timeout: Duration::from_secs(args.phase_timeout),
        force: args.force,
        stall: Duration::from_secs(args.keepalive.max(1) * 4 + 10),
    });
    if args.dry_run {
        print_plan(&ctx, args.relay_chains);
        ctx.rep.line("dry-run", "dry run: nothing was changed", serde_json::json!({}));
        return Ok(());
    }
    let secrets = secrets(args)?;
    let opts = SshOptions {
        known_hosts: ctx.cluster.known_hosts.clone(),
        accept_new: args.accept_new_host_keys,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        keepalive: Duration::from_secs(args.keepalive.max(1)),
        secrets: secrets.clone(),
    };
    let addrs: Vec<String> = ctx.cluster.hosts.iter().map(|h| h.ip.clone()).collect();
    ctx.rep.hosts(&addrs);

    // Connect.
    let t0 = Instant::now();
    let jump = match &ctx.cluster.bastion {
        Some(b) => {
            let key = ctx.cluster.bastion_key.clone();
            let login = Login { host: b.host.clone(), port: b.port, user: b.user.clone(), key, sudo: false };
            Some(Jump::connect(&login, &opts).await?)
        }
        None => None,
    };
    let n = ctx.cluster.hosts.len();
    let conns = parallel(n, args.parallel, |i| {
        let ctx = ctx.clone();
        let opts = opts.clone();
        let jump = jump.clone();
        async move {
            let h = &ctx.cluster.hosts[i];
            ctx.rep.event(&h.ip, "connect", "start", "connecting", serde_json::json!({}));
            let login = Login {
                host: h.ip.clone(),
                port: h.ssh.port,
                user: h.ssh.user.clone(),
                key: h.ssh.key.clone(),
                sudo: h.ssh.sudo,
            };
            SshHost::connect(&login, &opts, jump).await.map(Arc::new)
        }
    })
    .await;
    // A host that cannot be reached, logged in to or made root on is a row of the preflight
    // table; the other hosts are still checked, so one run shows every problem on every host.
    let mut connected: Vec<Option<Arc<SshHost>>> = Vec::new();
    let mut problems = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        match c {
            Ok(h) => connected.push(Some(h)),
            Err(e) => {
                problems.push(preflight::Problem {
                    host: ctx.cluster.hosts[i].ip.clone(),
                    severity: preflight::Severity::Error,
                    check: "ssh".into(),
                    message: format!("{e:#}"),
                });
                connected.push(None);
            }
        }
    }

    // Preflight.
    let tools: Vec<String> = KUBELET_TOOLS
        .iter()
        .filter(|t| {
            !["usr/bin", "usr/sbin", "bin", "sbin", "usr/local/bin", "usr/local/sbin"]
                .iter()
                .any(|d| ctx.payload.index().entries.iter().any(|e| e.path == format!("rootfs/{d}/{t}")))
        })
        .map(|t| t.to_string())
        .collect();
    let stage = Stage::new();
    let surveys = parallel(n, args.parallel, |i| {
        let (ctx, h, tools, stage) = (ctx.clone(), connected[i].clone(), tools.clone(), stage.clone());
        async move {
            let h = h?;
            ctx.rep.event(h.addr(), "preflight", "start", "checking", serde_json::json!({}));
            Some(
                tokio::time::timeout(ctx.phase_timeout, survey(&ctx, h.as_ref(), &tools, &stage))
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
                problems.push(preflight::Problem {
                    host: ctx.cluster.hosts[i].ip.clone(),
                    severity: preflight::Severity::Error,
                    check: "agent".into(),
                    message: format!("{e:#}"),
                });
                surveyed.push(None);
            }
        }
    }
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
        lb_port: LB_PORT,
        force: ctx.force,
        max_skew_ms: 30_000,
    };
    problems.extend(preflight::judge(&judged, &rules));
    drop(judged);
    // On a node ferry already made part of this cluster, the Kubernetes ports are taken by its
    // own apiserver, kubelet and LB: expected on a re-run or a `join`, not a problem.
    let installed: Vec<String> = surveyed
        .iter()
        .enumerate()
        .filter(|(_, s)| s.as_ref().is_some_and(|s| s.state.contains_key("lb") || s.state.contains_key("kubeadm")))
        .map(|(i, _)| ctx.cluster.hosts[i].ip.clone())
        .collect();
    problems.retain(|p| !(p.check == "ports" && installed.contains(&p.host)));
    let errors = problems.iter().any(|p| p.severity == preflight::Severity::Error);
    if errors {
        // Preflight changes nothing: remove the agents it staged (on every host, so a survey that
        // timed out is cleaned up too).
        let _ = parallel(n, args.parallel, |i| {
            let (h, cmd) = (connected[i].clone(), stage.cleanup_cmd());
            async move {
                if let Some(h) = h {
                    let _ = tokio::time::timeout(Duration::from_secs(30), h.run(&cmd, b"")).await;
                }
            }
        })
        .await;
        return stop_with(&ctx, problems, "preflight");
    }
    let hosts: Vec<Arc<SshHost>> =
        connected.into_iter().map(|h| h.expect("no ssh problem, so every host is connected")).collect();
    if !problems.is_empty() {
        ctx.rep.line("problems", &preflight::table(&problems), serde_json::json!({"problems": problems}));
    }
    let cgroups: Vec<String> =
        surveyed.iter().map(|s| s.as_ref().map(|s| s.facts.cgroup.clone()).unwrap_or_default()).collect();
    for (h, cgroup) in ctx.cluster.hosts.iter().zip(&cgroups) {
        let shown = if cgroup.is_empty() { "unknown" } else { cgroup.as_str() };
        local_record(&ctx, h, "preflight", "done", serde_json::json!({"cgroup": shown}));
        ctx.rep.event(
            &h.ip,
            "preflight",
            "done",
            &format!("ok (cgroup {shown})"),
            serde_json::json!({"cgroup": shown}),
        );
    }
    let cgroup_v1_hosts: Vec<String> =
        ctx.cluster.hosts.iter().zip(&cgroups).filter(|(_, c)| *c == "v1").map(|(h, _)| h.ip.clone()).collect();
    let t_preflight = t0.elapsed();
    let staged: Vec<Option<String>> = surveyed.iter().map(|s| s.as_ref().and_then(|s| s.staged.clone())).collect();
    let states: Arc<Vec<BTreeMap<String, Record>>> =
        Arc::new(surveyed.into_iter().map(|s| s.map(|s| s.state).unwrap_or_default()).collect());

    // Preflight passed: the agents it staged move to their place under /var/lib/ferry.
    let results = parallel(n, args.parallel, |i| {
        let (ctx, h, dir, stage) = (ctx.clone(), hosts[i].clone(), staged[i].clone(), stage.clone());
        async move {
            let Some(dir) = dir else { return Ok(()) };
            let out = checked(h.as_ref(), &stage.settle_cmd(&dir), b"", "placing the agent").await?;
            if out.text().trim() != ctx.stub_sha {
                bail!("the agent was damaged on the host (sha256 {} instead of {})", out.text().trim(), ctx.stub_sha);
            }
            Ok(())
        }
    })
    .await;
    check_phase(&ctx, "distribute", results)?;

    // Distribute.
    let t1 = Instant::now();
    let bytes_before: u64 = hosts.iter().map(|h| h.bytes_sent()).sum();
    // A host that became a registry replica since needs the rest of the installer.
    let skip: Vec<bool> = (0..n)
        .map(|i| {
            let host = &ctx.cluster.hosts[i];
            let whole = states[i].get("distribute").is_some_and(|r| r.detail["whole"] == true);
            done(&states[i], "distribute", &ctx.id) && (whole || !host.is(Role::Registry))
        })
        .collect();
    let wants: Arc<Vec<Vec<u64>>> =
        Arc::new(ctx.cluster.hosts.iter().map(|h| distribute::wanted_chunks(&ctx.payload, h)).collect());
    // Hosts delivered earlier may head the chains of the ones that still need data (a join, a
    // resumed run); with nothing to deliver, no session is opened at all.
    let holders: Vec<bool> = if skip.iter().all(|&s| s) { vec![false; n] } else { skip.clone() };
    let parents = relay::plan(&wants, &holders, args.relay_chains);
    let serves: Vec<bool> = (0..n).map(|i| holders[i] && parents.contains(&Some(i))).collect();
    let board = Arc::new(relay::Board::new(ctx.cluster.hosts.iter().map(|h| h.ip.clone()).collect(), parents)?);
    let relayed: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    // Every session runs at once: a host that is done keeps serving the hosts behind it.
    let results = parallel(n, n, |i| {
        let (ctx, h, wants, board, relayed) = (ctx.clone(), hosts[i].clone(), wants.clone(), board.clone(), relayed.clone());
        let (skip, serves) = (skip[i], serves[i]);
        async move {
            let host = &ctx.cluster.hosts[i];
            if skip && !serves {
                board.skip(i);
                ctx.rep.event(&host.ip, "distribute", "skip", "already done", serde_json::json!({}));
                return Ok(());
            }
            let from = match board.parent(i) {
                _ if serves => "already done; checking its copy to relay it".to_string(),
                Some(j) => format!("streaming, relayed by {}", ctx.cluster.hosts[j].ip),
                None => "streaming".to_string(),
            };
            ctx.rep.event(&host.ip, "distribute", "start", &from, serde_json::json!({}));
            // The phase timeout applies inside: a host that is done waits for the others untimed.
            let d = relay::session(&ctx, h.as_ref(), i, &wants[i], &board).await?;
            if serves && d.from_operator == 0 && d.from_relays == 0 {
                ctx.rep.event(&host.ip, "distribute", "skip", "already done; relayed", serde_json::json!({}));
                return Ok(());
            }
            relayed.lock().unwrap().insert(host.ip.clone(), d.from_relays);
            record_on(
                &ctx,
                h.as_ref(),
                host,
                "distribute",
                serde_json::json!({"bytes": d.from_operator, "relayed": d.from_relays, "whole": host.is(Role::Registry)}),
            )
            .await?;
            let relayed = if d.from_relays > 0 { format!(", {} by relay", crate::units::bytes(d.from_relays)) } else { String::new() };
            ctx.rep.event(
                &host.ip,
                "distribute",
                "done",
                &format!("sent {}{relayed}", crate::units::bytes(d.from_operator)),
                serde_json::json!({"bytes": d.from_operator, "relayed": d.from_relays}),
            );
            Ok(())
        }
    })
    .await;
    check_phase(&ctx, "distribute", results)?;
    let t_distribute = t1.elapsed();
    let distribute_bytes: u64 = hosts.iter().map(|h| h.bytes_sent()).sum::<u64>() - bytes_before;
    // Bytes each host pulled from relays rather than from this machine.
    let relayed_per_host = std::mem::take(&mut *relayed.lock().unwrap());

    // Prepare.
    let t2 = Instant::now();
    let results = parallel(n, args.parallel, |i| {
        let (ctx, h, states) = (ctx.clone(), hosts[i].clone(), states.clone());
        async move {
            let host = &ctx.cluster.hosts[i];
            let plan = prepare_plan(&ctx, host);
            let endpoints = serde_json::json!(plan.registry_endpoints);
            let plan = serde_json::to_vec(&plan)?;
            // Prepared for another set of registry replicas: hosts.toml must change.
            let same_replicas = states[i].get("prepare").is_some_and(|r| r.detail["registry_endpoints"] == endpoints);
            if done(&states[i], "prepare", &ctx.id) && same_replicas {
                ctx.rep.event(&host.ip, "prepare", "skip", "already done", serde_json::json!({}));
                return Ok(());
            }
            ctx.rep.event(
                &host.ip,
                "prepare",
                "start",
                "installing rootfs, containerd, sysctls",
                serde_json::json!({}),
            );
            let cmd = format!("{INSTALLER_PATH} agent prepare");
            let fut = checked(h.as_ref(), &cmd, &plan, "agent prepare");
            let out =
                tokio::time::timeout(ctx.phase_timeout, fut).await.unwrap_or_else(|_| Err(anyhow!("timed out")))?;
            let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for w in report["warnings"].as_array().into_iter().flatten() {
                ctx.rep.event(&host.ip, "prepare", "warning", w.as_str().unwrap_or(""), serde_json::json!({}));
            }
            if let Some(r) = report.as_object_mut() {
                r.insert("registry_endpoints".into(), endpoints);
            }
            record_on(&ctx, h.as_ref(), host, "prepare", report).await?;
            ctx.rep.event(&host.ip, "prepare", "done", "ok", serde_json::json!({}));
            Ok(())
        }
    })
    .await;
    check_phase(&ctx, "prepare", results)?;
    let t_prepare = t2.elapsed();

    // Registry.
    let t3 = Instant::now();
    let results = parallel(n, args.parallel, |i| {
        let (ctx, h) = (ctx.clone(), hosts[i].clone());
        async move {
            let host = &ctx.cluster.hosts[i];
            if !host.is(Role::Registry) {
                return Ok(());
            }
            ctx.rep.event(&host.ip, "registry", "start", "starting ferry-registry.service", serde_json::json!({}));
            let cmd = format!(
                "{INSTALLER_PATH} agent registry-service --port {}{}",
                ctx.cluster.registry_port,
                if ctx.allow_unsigned { " --allow-unsigned" } else { "" }
            );
            checked(h.as_ref(), &cmd, b"", "agent registry-service").await.map(|_| ())
        }
    })
    .await;
    check_phase(&ctx, "registry", results)?;
    // Every node must resolve the probe image through every replica (so any of them can take
    // over), and containerd must pull it through its hosts.toml.
    let image = probe_image(&ctx.payload);
    let replicas = registry_endpoints(&ctx.cluster);
    let results = parallel(n, args.parallel, |i| {
        let (ctx, h, image, replicas) = (ctx.clone(), hosts[i].clone(), image.clone(), replicas.clone());
        async move {
            let host = &ctx.cluster.hosts[i];
            if let Some(image) = &image {
                ctx.rep.event(
                    &host.ip,
                    "registry",
                    "progress",
                    &format!("containerd pulls {image} through the mirror ({} replicas)", replicas.len()),
                    serde_json::json!({"replicas": replicas}),
                );
                let cmd = format!(
                    "{INSTALLER_PATH} agent check-pull --image {} --endpoints {}",
                    quote(image),
                    quote(&replicas.join(","))
                );
                checked(h.as_ref(), &cmd, b"", "agent check-pull").await?;
            }
            record_on(&ctx, h.as_ref(), host, "registry", serde_json::json!({"image": image, "replicas": replicas}))
                .await?;
            ctx.rep.event(&host.ip, "registry", "done", "ok", serde_json::json!({}));
            Ok(())
        }
    })
    .await;
    check_phase(&ctx, "registry", results)?;
    if image.is_none() {
        ctx.rep.line(
            "warning",
            "warning: the bundle carries no images, so the registry could not be checked through containerd",
            serde_json::json!({}),
        );
    }
    let t_registry = t3.elapsed();

    // Load balancers, kubeadm, saved state, launch steps. A bundle without kubeadm in its rootfs
    // (a runtime-only bundle) stops at prepared nodes: there is nothing to make a cluster with.
    if !ctx
        .payload
        .index()
        .entries
        .iter()
        .any(|e| e.path == "rootfs/usr/bin/kubeadm" || e.path == "rootfs/usr/local/bin/kubeadm")
    {
        ctx.rep.finish();
        ctx.rep.line(
            "warning",
            "note: the bundle's rootfs ships no kubeadm, so the nodes are prepared but no control plane was made",
            serde_json::json!({}),
        );
        ctx.rep.line("summary", &format!("cluster {} prepared: {} hosts in {:.1} s", ctx.cluster.name, n, started.elapsed().as_secs_f64()), serde_json::json!({
            "bytes_sent": hosts.iter().map(|h| h.bytes_sent()).sum::<u64>(), "distribute_bytes": distribute_bytes,
            "per_host": hosts.iter().map(|h| (h.addr().to_string(), h.bytes_sent())).collect::<BTreeMap<String, u64>>(),
            "relayed_per_host": relayed_per_host,
            "seconds": {"total": started.elapsed().as_secs_f64(), "preflight": t_preflight.as_secs_f64(), "distribute": t_distribute.as_secs_f64(), "prepare": t_prepare.as_secs_f64(), "registry": t_registry.as_secs_f64()}
        }));
        return Ok(());
    }
    let t4 = Instant::now();
    control::bootstrap(&ctx, &hosts, &states, cgroup_v1_hosts, args.parallel).await?;
    let t_kubeadm = t4.elapsed();
    let t5 = Instant::now();
    let m0 = ctx.cluster.hosts.iter().position(|h| h.is(Role::Master)).expect("resolve() guarantees a master");
    if !args.skip_launch {
        crate::launch::run_steps(&ctx, hosts[m0].as_ref()).await?;
    }
    let t_launch = t5.elapsed();
    ctx.rep.finish();
    let total: u64 = hosts.iter().map(|h| h.bytes_sent()).sum();
    let per_host: BTreeMap<String, u64> = hosts.iter().map(|h| (h.addr().to_string(), h.bytes_sent())).collect();
    let secs = |d: Duration| (d.as_secs_f64() * 100.0).round() / 100.0;
    ctx.rep.line(
        "summary",
        &format!(
            "cluster {} up: {} hosts, {} sent ({} of installer data) in {:.1} s (preflight {:.1} s, distribute {:.1} s, prepare {:.1} s, registry {:.1} s, lb+kubeadm {:.1} s, launch {:.1} s)",
            ctx.cluster.name,
            n,
            crate::units::bytes(total),
            crate::units::bytes(distribute_bytes),
            started.elapsed().as_secs_f64(),
            t_preflight.as_secs_f64(),
            t_distribute.as_secs_f64(),
            t_prepare.as_secs_f64(),
            t_registry.as_secs_f64(),
            t_kubeadm.as_secs_f64(),
            t_launch.as_secs_f64()
        ),
        serde_json::json!({
            "bytes_sent": total, "distribute_bytes": distribute_bytes, "per_host": per_host, "relayed_per_host": relayed_per_host,
            "seconds": {"total": secs(started.elapsed()), "preflight": secs(t_preflight), "distribute": secs(t_distribute), "prepare": secs(t_prepare), "registry": secs(t_registry), "kubeadm": secs(t_kubeadm), "launch": secs(t_launch)}
        }),
    );
    // The post-delivery check, as `installer check` runs it, once the cluster has settled.
    let wait = Duration::from_secs(args.wait.unwrap_or(DEFAULT_WAIT_SECS));
    let master = hosts[m0].addr().to_string();
    let every = Duration::from_secs(10);
    let report =
        crate::check::check_until_healthy(&ctx.cluster, &ctx.payload, hosts[m0].as_ref(), wait, every, |r, waited| {
            let failing = r.rows.iter().filter(|r| !r.ok).count();
            let line = crate::check::waiting_line(r, waited);
            ctx.rep.event(&master, "check", "waiting", &line, serde_json::json!({"failing": failing}));
        })
        .await?;
    ctx.rep.line("check", &report.table(), serde_json::to_value(&report).unwrap_or_default());
    report.verdict()
}

fn stop_with(ctx: &Ctx, mut problems: Vec<preflight::Problem>, phase: &str) -> Result<()> {
    // Hosts in cluster order, errors first.
    let order = |h: &str| ctx.cluster.hosts.iter().position(|c| c.ip == h).unwrap_or(usize::MAX);
    problems.sort_by(|a, b| (order(&a.host), b.severity, &a.check).cmp(&(order(&b.host), a.severity, &b.check)));
    ctx.rep.finish();
    ctx.rep.line("problems", &preflight::table(&problems), serde_json::json!({"problems": problems}));
    let mut hosts: Vec<&str> =
        problems.iter().filter(|p| p.severity == preflight::Severity::Error).map(|p| p.host.as_str()).collect();
    hosts.dedup();
    for h in &ctx.cluster.hosts {
        let mine: Vec<&preflight::Problem> = problems.iter().filter(|p| p.host == h.ip).collect();
        let status = if mine.iter().any(|p| p.severity == preflight::Severity::Error) { "failed" } else { "ok" };
        local_record(ctx, h, phase, status, serde_json::json!({"problems": mine}));
    }
    let n = problems.iter().filter(|p| p.severity == preflight::Severity::Error).count();
    bail!("{phase} found {n} problem(s) on {}: nothing was installed; fix them and run again", hosts.join(", "))
}

pub(crate) fn check_phase(ctx: &Ctx, phase: &'static str, results: Vec<Result<()>>) -> Result<()> {
    let mut errs = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            let host = &ctx.cluster.hosts[i];
            let he = HostError { host: host.ip.clone(), phase, error: e };
            ctx.rep.event(&host.ip, phase, "error", &format!("{:#}", he.error), serde_json::json!({}));
            local_record(ctx, host, phase, "failed", serde_json::json!({"error": format!("{:#}", he.error)}));
            errs.push(he);
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    ctx.rep.finish();
    let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    bail!(
        "{phase} failed on {} host(s); completed phases are recorded, so running the same command again continues from here:\n  {}",
        errs.len(),
        lines.join("\n  ")
    )
}
