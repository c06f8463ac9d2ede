//! Shared helpers for ferry's integration tests: locating the built binaries, scratch
//! directories, and (in [`lab`]) the multi-host lab.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Path of a binary built by `cargo build --release` (the test command builds them first).
pub fn release_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("release").join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release` first (scripts/test.sh does)", p.display());
    p
}

/// Runs a command and returns its output, panicking with full context if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"))
}

/// Text of stdout and stderr together, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
