//! `installer run`: turns bare hosts into prepared nodes, and those into a cluster, over SSH.
//!
//! Owns the delivery: [`setup`] opens the installer and connects (bounded parallelism,
//! timeouts, keepalives); [`deliver`] is the sequence, a short list of phases run by one
//! [`engine`] over the hosts, each on every host in parallel:
//!
//! preflight ([`phases::preflight`], the gate: nothing changes on any host unless every host
//! passes) → distribute → prepare → registry → lb → kubeadm → launch, then the wait for `check`.
//!
//! Each completed phase is recorded on the host (/var/lib/ferry/state/<cluster>/) and beside the
//! installer (.ferry/<cluster>/<host>.json), see [`records`]; a re-run skips what is recorded for
//! this installer. Errors name the host, the phase and the last lines of output. Every host is
//! locked for the operation from preflight to the end ([`lock`]), so a second one is refused.
//!
//! This module holds what every phase shares ([`Ctx`], the remote-command helpers, the
//! per-host plans); it depends on no phase, so phases, `launch` and `check` may use it.

pub mod deliver;
pub mod distribute;
pub mod engine;
pub mod interrupt;
pub mod lock;
pub mod phases;
pub mod preflight;
pub mod progress;
pub mod records;
pub mod relay;
pub mod setup;

use crate::agent::{AGENT_PATH, INSTALLER_PATH};
use crate::cluster::{Cluster, Host};
use crate::registry::pki::ClusterCa;
use crate::ssh::{RemoteHost, quote};
use anyhow::{Context, Result, bail};
use payload_format::Payload;
use progress::Reporter;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// The cluster's registry CA and pull credential, from `local_state` ([`registry_ca`]);
    /// `None` where nothing is delivered (a dry run, a teardown).
    pub registry_ca: Option<Arc<ClusterCa>>,
}

impl Ctx {
    /// The context of a teardown (`reset`): the installer only lends its index (what the rootfs
    /// laid down), so no agent is sent and nothing is checked against a signer.
    pub fn for_teardown(payload: Payload, id: String, cluster: Cluster, rep: Reporter, local_state: PathBuf) -> Ctx {
        Ctx {
            payload,
            id,
            cluster,
            rep,
            stub: Vec::new(),
            stub_sha: String::new(),
            allow_unsigned: false,
            signer: None,
            local_state,
            phase_timeout: Duration::from_secs(600),
            force: false,
            stall: Duration::from_secs(60),
            registry_ca: None,
        }
    }

    /// The registry CA, which every run that delivers loads ([`registry_ca`]).
    pub fn registry_ca(&self) -> Result<&ClusterCa> {
        self.registry_ca.as_deref().context("the cluster's registry CA was not loaded (a dry run delivers nothing)")
    }
}

/// Loads the cluster's registry CA and pull credential from the local state directory, making
/// them on the first run; every later `run`, `join` and upgrade reuses them, so nodes keep
/// trusting the registry.
pub fn registry_ca(local_state: &std::path::Path) -> Result<Arc<ClusterCa>> {
    let ca = crate::registry::pki::load_or_create(local_state)
        .with_context(|| format!("loading the cluster's registry CA from {}", local_state.display()))?;
    Ok(Arc::new(ca))
}

/// Seconds `run` and `join` wait for the new cluster to pass `check` unless `--wait` says.
pub const DEFAULT_WAIT_SECS: u64 = 600;

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
        match r {
            Ok((i, v)) => out[i] = Some(v),
            // A task that panicked takes the run down with its message, as it would unspawned.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out.into_iter().map(|v| v.unwrap_or_else(|| unreachable!("every task reported"))).collect()
}

/// Per-host bytes the installer will send and unpack.
pub fn host_plan(payload: &Payload, host: &Host) -> (Vec<u64>, u64, u64) {
    let want = distribute::wanted_chunks(payload, host);
    let bytes = distribute::chunk_bytes(payload, &want);
    let rootfs: u64 = payload.index().entries.iter().filter(|e| e.path.starts_with("rootfs/")).map(|e| e.size).sum();
    (want, bytes, rootfs)
}

/// Runs `cmd` on `h`; an error unless it exits 0, naming `what` and the last lines of output.
pub async fn checked<H: RemoteHost>(h: &H, cmd: &str, stdin: &[u8], what: &str) -> Result<crate::ssh::Output> {
    let out = h.run(cmd, stdin).await.with_context(|| format!("running {what}"))?;
    if !out.ok() {
        bail!("{what} exited with status {}: {}", out.status, out.tail(4));
    }
    Ok(out)
}

/// Writes `bytes` to `path` on the host atomically with `mode`.
pub async fn put_file<H: RemoteHost>(h: &H, path: &str, mode: &str, bytes: &[u8]) -> Result<()> {
    let dir = std::path::Path::new(path).parent().map(|p| p.display().to_string()).unwrap_or_else(|| "/".into());
    let cmd = format!(
        "umask 077 && mkdir -p {d} && cat > {p}.ferry-tmp && chmod {mode} {p}.ferry-tmp && mv -f {p}.ferry-tmp {p}",
        d = quote(&dir),
        p = quote(path)
    );
    checked(h, &cmd, bytes, &format!("writing {path}")).await.map(|_| ())
}

/// The registry replicas' URLs (`https://IP:PORT`), in cluster order.
pub fn registry_endpoints(c: &Cluster) -> Vec<String> {
    c.registry_hosts().iter().map(|h| registry_endpoint(c, h)).collect()
}

fn registry_endpoint(c: &Cluster, h: &Host) -> String {
    format!("https://{}:{}", h.ip, c.registry_port)
}

/// The name every node reaches the first registry replica by (its /etc/hosts entry).
pub const REGISTRY_NAME: &str = "ferry-registry";

/// The names the registry's serving certificate covers: every replica's address, and
/// [`REGISTRY_NAME`].
pub fn registry_names(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = c.registry_hosts().iter().map(|h| h.ip.clone()).collect();
    names.push(REGISTRY_NAME.to_string());
    names
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
        registry_endpoints: registries.iter().map(|h| registry_endpoint(c, h)).collect(),
        registry_access: ctx.registry_ca.as_ref().map(|ca| ca.access()),
        // The API endpoint name is the node-local LB (ferry-lb.service on 127.0.0.1:LB_PORT),
        // which is why it is in the apiserver certificate's SANs.
        hosts_entries: vec![
            ("127.0.0.1".into(), c.api_endpoint.clone()),
            (registries[0].ip.clone(), REGISTRY_NAME.into()),
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
        containerd_only: false,
    }
}

/// The image every node pulls through the mirror to prove the registry phase.
pub fn probe_image(payload: &Payload) -> Option<String> {
    let images = ferry_core::metadata::images(&payload.index().metadata.extra).ok()?;
    let mut refs: Vec<String> = images.into_iter().map(|i| i.reference).collect();
    refs.sort_by_key(|r| (!r.contains("pause"), r.clone()));
    refs.into_iter().next()
}

/// How a run was asked to go (the command line's choices, as plain values).
#[derive(Clone, Debug)]
pub struct Options {
    /// The installer the operator ran: its directory holds the state.
    pub installer: PathBuf,
    /// The file whose content is delivered: `installer`, or the complete installer put together
    /// from a differential one and its base.
    pub payload: PathBuf,
    /// Trusted public keys given on the command line.
    pub trusted_keys: Vec<PathBuf>,
    /// Accept an unsigned installer.
    pub allow_unsigned: bool,
    /// Accept a signature by a key not trusted here.
    pub allow_untrusted_signer: bool,
    /// `--state-dir`: where the local state goes instead of the default places.
    pub state_dir: Option<PathBuf>,
    /// One JSON event per line on stdout.
    pub json: bool,
    /// Print only errors.
    pub quiet: bool,
    /// Never draw progress bars.
    pub no_progress: bool,
    /// Time allowed for one phase on one host.
    pub phase_timeout: Duration,
    /// Refuse nothing for an existing runtime.
    pub force: bool,
    /// SSH keepalive interval (at least a second).
    pub keepalive: Duration,
    /// Hosts worked on at once.
    pub parallel: usize,
    /// Relay chains at most.
    pub relay_chains: usize,
    /// Leave the bundle's launch steps out (`join`).
    pub skip_launch: bool,
    /// How long to wait for the new cluster to pass `check`.
    pub wait: Duration,
    /// The operation the hosts' locks name (`run`, or `join`).
    pub operation: crate::protocol::lock::Operation,
    /// End the operations holding the hosts and take their locks.
    pub force_unlock: bool,
    /// Only print the plan: nothing is made, not even the registry CA.
    pub dry_run: bool,
}
