//! Builds `ferry-stub` as a fully static musl executable and embeds it in `ferry`, so that
//! `cargo build --release` alone yields a packer that needs no `--stub` flag.
//!
//! The stub is built by a nested cargo into its own target directory (a shared one would
//! deadlock on cargo's build lock). Set `FERRY_STUB` to a prebuilt stub to skip the nested build.

use std::path::{Path, PathBuf};
use std::process::Command;

const STUB_TARGET: &str = "x86_64-unknown-linux-musl";

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_STUB");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for watched in [
        "stub/src",
        "stub/Cargo.toml",
        "core/src",
        "core/Cargo.toml",
        "distribution/src",
        "distribution/Cargo.toml",
        "payload-format/src",
        "payload-format/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let stub = match std::env::var_os("FERRY_STUB") {
        Some(p) => PathBuf::from(p),
        None => build_stub(&root),
    };
    println!("cargo:rustc-env=FERRY_EMBEDDED_STUB={}", stub.display());
}

fn build_stub(root: &Path) -> PathBuf {
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "debug".into());
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("stub");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--locked", "-p", "ferry-stub", "--bin", "ferry-stub", "--target", STUB_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags and wrappers are for the host target, not for the stub.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        );
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo to build ferry-stub");
    if !status.success() {
        panic!(
            "building ferry-stub for {STUB_TARGET} failed. It needs `rustup target add {STUB_TARGET}` \
             and Debian's `musl-tools` (scripts/setup.sh installs both), or set FERRY_STUB to a prebuilt stub."
        );
    }
    target_dir.join(STUB_TARGET).join(&profile).join("ferry-stub")
}
