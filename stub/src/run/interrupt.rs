//! Ctrl-C and SIGTERM during `run`, `join` and `reset`: the operation stops, says what is
//! recorded, and says how to continue.
//!
//! Owns waiting for the signal and the words said after it. Stopping is dropping the operation:
//! its SSH sessions close with the process, and every agent notices its operator is gone and
//! exits (`agent::hangup`), so no agent or relay listener is left running on any host. What was
//! recorded stays recorded; the same command again continues from there.

use super::Ctx;
use std::collections::BTreeMap;

/// The signal that stopped an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// The exit status a shell expects of a process stopped by this signal.
    pub fn exit_status(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "interrupted (Ctrl-C)",
            Signal::Terminate => "terminated (SIGTERM)",
        }
    }
}

/// An operation stopped by a signal; main exits with [`Signal::exit_status`].
#[derive(Debug, thiserror::Error)]
#[error("{}: stopped; run the same command again to continue from what is recorded", signal.name())]
pub struct Stopped {
    /// The signal.
    pub signal: Signal,
}

/// Resolves at the first SIGINT or SIGTERM.
pub async fn signalled() -> std::io::Result<Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = int.recv() => Signal::Interrupt,
        _ = term.recv() => Signal::Terminate,
    })
}

/// Says what each host has recorded (from the local records) and returns the error to stop with.
pub fn stopped(ctx: &Ctx, signal: Signal) -> Stopped {
    ctx.rep.finish();
    let recorded = recorded_phases(ctx);
    for host in &ctx.cluster.hosts {
        let phases = recorded.get(&host.ip).cloned().unwrap_or_default();
        let text = if phases.is_empty() {
            format!("{}: nothing recorded yet", host.ip)
        } else {
            format!("{}: recorded done: {}", host.ip, phases.join(", "))
        };
        ctx.rep.line("recorded", &text, serde_json::json!({"host": host.ip, "done": phases}));
    }
    ctx.rep.line(
        "interrupted",
        &format!("{}; the records are in {}", signal.name(), ctx.local_state.display()),
        serde_json::json!({"signal": format!("{signal:?}"), "state_dir": ctx.local_state}),
    );
    Stopped { signal }
}

/// The phases each host's local record shows done by this installer, in the order they ran.
fn recorded_phases(ctx: &Ctx) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for host in &ctx.cluster.hosts {
        let Some(v) = std::fs::read(super::records::local_path(ctx, host))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        let mut done: Vec<(u64, String)> = v["phases"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, p)| p["status"] == "done" && p["installer"] == ctx.id.as_str())
            .map(|(name, p)| (p["at"].as_u64().unwrap_or(0), name.clone()))
            .collect();
        done.sort();
        out.insert(host.ip.clone(), done.into_iter().map(|(_, n)| n).collect());
    }
    out
}
