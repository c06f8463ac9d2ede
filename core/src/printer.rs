//! Owns where output goes: results on stdout, progress and diagnostics on stderr. Progress bars
//! are drawn only on a terminal; elsewhere (CI, logs, pipes) the commands print plain summary
//! lines.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

/// Output settings for one command run.
#[derive(Clone, Debug)]
pub struct Printer {
    quiet: bool,
    bars: bool,
}

impl Printer {
    /// Bars only when stderr is a terminal and the user did not turn them off.
    pub fn new(quiet: bool, no_progress: bool) -> Printer {
        Printer { quiet, bars: !quiet && !no_progress && std::io::stderr().is_terminal() }
    }

    /// A result line on stdout.
    pub fn out(&self, line: impl AsRef<str>) {
        if !self.quiet {
            stdout_line(line.as_ref());
        }
    }

    /// A line about work under way, on stderr, so stdout keeps only results (and `--json`
    /// output stays one document); not printed when quiet.
    pub fn note(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", line.as_ref());
        }
    }

    /// A warning on stderr (printed even when quiet: warnings matter).
    pub fn warn(&self, line: impl AsRef<str>) {
        eprintln!("warning: {}", line.as_ref());
    }

    /// Prints an error with its chain of causes (an `anyhow::Error` is passed as `err.as_ref()`).
    pub fn error(&self, err: &(dyn std::error::Error + 'static)) {
        eprintln!("error: {err}");
        let mut cause = err.source();
        while let Some(c) = cause {
            eprintln!("  caused by: {c}");
            cause = c.source();
        }
    }

    /// A byte-counting progress indicator for `total` bytes.
    pub fn progress(&self, total: u64, label: &str) -> Progress {
        let bar = if self.bars {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            Some(bar)
        } else {
            None
        };
        Progress { bar, done: AtomicU64::new(0) }
    }
}

/// Progress of one long operation; safe to update from many threads.
pub struct Progress {
    bar: Option<ProgressBar>,
    done: AtomicU64,
}

impl Progress {
    /// Records `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause` (as `anyhow` writes `{:#}`).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Writes one line to stdout. When the reader has gone (`installer inspect | head`), ends the
/// process with status 141, as a tool killed by SIGPIPE would, instead of panicking (Rust
/// ignores SIGPIPE, so `println!` panics on the broken pipe). Never 0: a `verify` cut short has
/// not verified anything.
pub fn stdout_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        panic!("failed printing to stdout: {e}");
    }
}
