//! Before the phases: the installer opened and checked, the context built, the plan printed
//! (`--dry-run`), and the hosts connected over SSH.
//!
//! Owns everything of a run that is tied to the real installer file and to russh; the phases
//! after it see only [`Ctx`] and [`RemoteHost`]s.

use super::preflight::{Problem, Severity};
use super::progress::Reporter;
use super::{Ctx, Options, distribute, host_plan, parallel, prepare_plan, relay};
use crate::agent::{AGENT_PATH, INSTALLER_PATH};
use crate::cluster::{self, Overrides, Role};
use crate::ssh::client::{SshHost, SshOptions};
use anyhow::{Context, Result, anyhow};
use payload_format::{SignatureStatus, TrustPolicy};
use std::path::Path;
use std::sync::Arc;

/// A signature by a key not trusted here, refused without `--allow-untrusted-signer`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the installer is signed by {fingerprint}, a key this machine does not trust, so nothing proves who made it. \
     Give the vendor's public key (--trusted-key VENDOR.pub, FERRY_TRUSTED_KEYS, or /etc/ferry/trusted-keys/), \
     or install anyway with --allow-untrusted-signer"
)]
pub struct UntrustedSigner {
    /// The signing key's fingerprint.
    pub fingerprint: String,
}

/// Who signed the installer being delivered, and whether this machine trusts the key.
#[derive(Debug, serde::Serialize)]
struct Signer {
    fingerprint: String,
    trusted: bool,
}

/// Records the signer in the cluster's local state (`signer.json`), so an install from a key
/// nobody vouched for stays on record after the terminal is gone.
fn record_signer(dir: &Path, s: &Signer) -> Result<()> {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let text = serde_json::json!({"fingerprint": s.fingerprint, "trusted": s.trusted, "recorded_unix": at});
    let path = dir.join("signer.json");
    ferry_core::fs::write_atomic(&path, format!("{text:#}\n").as_bytes(), 0o600)
        .with_context(|| format!("recording the signer in {}", path.display()))
}

/// Opens and checks the installer, then resolves the cluster (`file`, if given, with
/// `overrides`): the context every phase shares.
pub fn open(opts: &Options, file: Option<&Path>, overrides: &Overrides) -> Result<Arc<Ctx>> {
    let rep = Reporter::new(opts.json, opts.quiet, opts.no_progress);
    let payload = crate::verify::open_payload(&opts.payload)?;
    let policy =
        TrustPolicy { trusted: crate::trust::trusted_keys(&opts.trusted_keys)?, allow_unsigned: opts.allow_unsigned };
    let signer = match payload.check_signature(&policy)? {
        SignatureStatus::Trusted(k) => Some(Signer { fingerprint: k.fingerprint(), trusted: true }),
        SignatureStatus::ValidUnpinned(k) if !opts.allow_untrusted_signer => {
            return Err(UntrustedSigner { fingerprint: k.fingerprint() }.into());
        }
        SignatureStatus::ValidUnpinned(k) => {
            let fingerprint = k.fingerprint();
            rep.line(
                "warning",
                &format!(
                    "WARNING: installing a file signed by {fingerprint}, a key this machine does NOT trust \
                     (accepted because of --allow-untrusted-signer): nothing proves who made it. \
                     The fingerprint is recorded in the cluster's state."
                ),
                serde_json::json!({"signer": fingerprint, "trusted": false}),
            );
            Some(Signer { fingerprint, trusted: false })
        }
        SignatureStatus::Unsigned => {
            rep.line(
                "warning",
                "warning: the installer is UNSIGNED (accepted because of --allow-unsigned)",
                serde_json::json!({}),
            );
            None
        }
    };
    payload.verify_stub().context("this installer is damaged; run `./installer verify` and use an intact copy")?;
    let stub_len = payload.trailer().stub_len as usize;
    let mut stub = vec![0u8; stub_len];
    std::os::unix::fs::FileExt::read_exact_at(payload.file(), &mut stub, 0).context("reading the installer program")?;
    let stub_sha = hex::encode(payload_format::sha256(&stub));
    let id = crate::agent::trailer_id(payload.path())
        .or_else(|| crate::agent::trailer_id(&opts.payload))
        .ok_or_else(|| anyhow!("cannot read the installer's trailer"))?;
    let file = file.map(cluster::load).transpose()?;
    let cluster = cluster::resolve(file, overrides)?;
    for w in &cluster.warnings {
        rep.line("warning", &format!("warning: {w}"), serde_json::json!({}));
    }
    let bases = cluster::state_dir::bases(&opts.installer, opts.state_dir.as_deref(), &cluster::state_dir::process_env);
    let state = cluster::state_dir::choose_writable(&bases, &cluster.name)?;
    rep.line(
        "state",
        &state.describe(),
        serde_json::json!({"state_dir": state.dir, "origin": format!("{:?}", state.origin)}),
    );
    if let Some(s) = &signer {
        record_signer(&state.dir, s)?;
    }
    let local_state = state.dir;
    let registry_ca = if opts.dry_run { None } else { Some(super::registry_ca(&local_state)?) };
    Ok(Arc::new(Ctx {
        registry_ca,
        payload,
        id,
        cluster,
        rep,
        stub,
        stub_sha,
        allow_unsigned: signer.is_none(),
        signer: signer.map(|s| s.fingerprint),
        local_state,
        phase_timeout: opts.phase_timeout,
        force: opts.force,
        stall: opts.keepalive * 4 + std::time::Duration::from_secs(10),
    }))
}

/// Connects to every host, at most `limit` at once. A host that cannot be reached, logged in to
/// or made root on is a row of the preflight table (`None` here); the other hosts are still
/// checked, so one run shows every problem on every host.
pub async fn connect(
    ctx: &Arc<Ctx>,
    opts: &SshOptions,
    limit: usize,
) -> Result<(Vec<Option<Arc<SshHost>>>, Vec<Problem>)> {
    let jump = cluster::locate::jump_for(&ctx.cluster, opts).await?;
    let conns = parallel(ctx.cluster.hosts.len(), limit, |i| {
        let (ctx, opts, jump) = (ctx.clone(), opts.clone(), jump.clone());
        async move {
            let h = &ctx.cluster.hosts[i];
            ctx.rep.event(&h.ip, "connect", "start", "connecting", serde_json::json!({}));
            let login = cluster::locate::login_for(h);
            SshHost::connect(&login, &opts, jump).await.map(Arc::new)
        }
    })
    .await;
    let mut connected = Vec::new();
    let mut problems = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        match c {
            Ok(h) => connected.push(Some(h)),
            Err(e) => {
                problems.push(Problem {
                    host: ctx.cluster.hosts[i].ip.clone(),
                    severity: Severity::Error,
                    check: "ssh".into(),
                    message: format!("{e:#}"),
                });
                connected.push(None);
            }
        }
    }
    Ok((connected, problems))
}

/// Prints what a run would do on each host (`--dry-run`).
pub fn print_plan(ctx: &Ctx, relay_chains: usize) {
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
            "  {} [{}] as {}@{}:{}{}\n    preflight: the host locked for this run, facts (agent staged under /run, moved to {AGENT_PATH} once every host passes)\n    distribute: {} chunks ({}) to {INSTALLER_PATH}{}{}\n    prepare: rootfs ({}), containerd via {}, sysctls, swap off, /etc/hosts\n{}",
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
