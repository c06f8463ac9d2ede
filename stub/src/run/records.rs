//! Each host's progress, recorded where a later run reads it back.
//!
//! Owns the per-host record format: a completed phase is recorded on the host (`agent record`,
//! under /var/lib/ferry/state/<cluster>/, which preflight reads back as the host's [`State`]) and
//! beside the installer (`.ferry/<cluster>/<host>.json`: `{host, roles, installer, phases: {NAME:
//! {status, at, installer, detail}}}`), the latter also for failures. Writing either is an error
//! when it fails: a record silently lost would make the next run redo, or skip, the wrong work.

use super::Ctx;
use crate::agent::{AGENT_PATH, Record};
use crate::cluster::Host;
use crate::ssh::RemoteHost;
use anyhow::{Context, Result};
use std::collections::BTreeMap;

/// What one host recorded for this cluster, by phase name (as preflight read it).
pub type State = BTreeMap<String, Record>;

/// Whether `state` records `phase` as done by this installer build (`id`).
pub fn done(state: &State, phase: &str, id: &str) -> bool {
    state.get(phase).is_some_and(|r| r.installer == id)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the local record of `host` is kept (`<local state>/<host>.json`).
pub fn local_path(ctx: &Ctx, host: &Host) -> std::path::PathBuf {
    ctx.local_state.join(format!("{}.json", host.ip.replace([':', '/'], "_")))
}

/// Merges a phase into the local record of a host (`.ferry/<cluster>/<host>.json`).
pub fn write_local(ctx: &Ctx, host: &Host, phase: &str, status: &str, detail: serde_json::Value) -> Result<()> {
    let path = local_path(ctx, host);
    let mut v: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"host": host.ip, "roles": host.role_names(), "phases": {}}));
    v["installer"] = ctx.id.clone().into();
    v["phases"][phase] = serde_json::json!({"status": status, "at": now_secs(), "installer": ctx.id, "detail": detail});
    let text = serde_json::to_string_pretty(&v).with_context(|| format!("writing the record of {}", host.ip))?;
    crate::registry::config::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("recording phase {phase} of {} in {}", host.ip, path.display()))
}

/// Records a completed phase on the host, then beside the installer.
pub async fn record_on<H: RemoteHost>(
    ctx: &Ctx,
    h: &H,
    host: &Host,
    phase: &str,
    detail: serde_json::Value,
) -> Result<()> {
    crate::ssh::agent::record(h, AGENT_PATH, &ctx.cluster.name, phase, &ctx.id, &detail).await?;
    write_local(ctx, host, phase, "done", detail)
}
