//! Progress of `run`: one line per host on a terminal (indicatif MultiProgress), plain
//! timestamped lines otherwise, and with `--json` one JSON event per line on stdout.
//!
//! Owns how events look; what the events are is the phases' business ([`super::engine`]).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// Where events go.
pub struct Reporter {
    json: bool,
    quiet: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

fn now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = t.as_secs();
    format!("{:02}:{:02}:{:02}.{:03}", (s / 3600) % 24, (s / 60) % 60, s % 60, t.subsec_millis())
}

impl Reporter {
    /// Bars only on a terminal, without --json, --quiet or --no-progress.
    pub fn new(json: bool, quiet: bool, no_progress: bool) -> Reporter {
        let bars = !json && !quiet && !no_progress && std::io::stderr().is_terminal();
        let multi = bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Reporter { json, quiet, multi, bars: Mutex::new(HashMap::new()) }
    }

    /// Whether events are JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Adds the per-host lines (terminal only).
    pub fn hosts(&self, hosts: &[String]) {
        let Some(m) = &self.multi else { return };
        let style =
            ProgressStyle::with_template("{prefix:>15} {spinner} {wide_msg} [{elapsed}]").expect("static template");
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        for h in hosts {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(h.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            bars.insert(h.clone(), b);
        }
    }

    /// A host-level event.
    pub fn event(&self, host: &str, phase: &str, event: &str, msg: &str, extra: serde_json::Value) {
        if self.json {
            let mut v =
                serde_json::json!({"time": now(), "host": host, "phase": phase, "event": event, "message": msg});
            if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            println!("{v}");
            return;
        }
        if let Some(b) = self.bars.lock().unwrap_or_else(|e| e.into_inner()).get(host) {
            b.set_message(format!("{phase}: {msg}"));
            return;
        }
        if !self.quiet || event == "error" {
            eprintln!("{} {host:>15} {phase:<10} {msg}", now());
        }
    }

    /// A run-level line (plan, tables, summaries): stdout, or a JSON event.
    pub fn line(&self, kind: &str, text: &str, extra: serde_json::Value) {
        if self.json {
            let mut v = serde_json::json!({"time": now(), "event": kind, "message": text});
            if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            println!("{v}");
        } else if let Some(m) = &self.multi {
            let _ = m.println(text);
        } else if !self.quiet || kind == "problems" {
            println!("{text}");
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        for b in self.bars.lock().unwrap_or_else(|e| e.into_inner()).values() {
            b.finish();
        }
    }
}
