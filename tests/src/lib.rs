//! Shared helpers for ferry's integration tests: locating the built binaries, scratch
//! directories, and (in [`lab`]) the multi-host lab.
#![deny(missing_docs)]

pub mod bundles;
pub mod containerd;
pub mod cut_link;
pub mod real_k8s;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Path of a binary built by `cargo build --release` (the test command builds them first).
pub fn release_bin(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let p = target.join("release").join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release` first (scripts/test.sh does)", p.display());
    p
}

/// Runs a command and returns its output, panicking with full context if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    // A program this process wrote with `fs::write` or `fs::copy` can still be open for writing
    // in a child another test thread is forking (see `write_program`): exec then fails with
    // ETXTBSY until that child has exec'd. The tests write programs with `write_program`, which
    // never leaves such a descriptor; this retry is a fallback for code that does not. It clears
    // as soon as the other child execs, so the limit (30 s) only stops a file that stays busy.
    let mut tries = 0;
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 1500 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}")),
        }
    }
}

/// Writes `bytes` to `path` as a program (mode 0755) that this process then runs, itself or
/// through a child. Use it (or [`copy_program`]) instead of `fs::write`/`fs::copy` for every
/// file a test executes.
///
/// Why: Linux refuses to exec a file that any process has open for writing (ETXTBSY, "Text file
/// busy"). std opens files close-on-exec, but a child that another test thread forks while this
/// thread has the file open gets a copy of the descriptor, and holds it until that child calls
/// exec, which on a loaded machine can be well after this thread has closed its own. So the
/// program is never opened for writing in this process: the bytes go to a scratch file beside
/// it, and `install` (a child process, exited when this returns) creates the program afresh.
pub fn write_program(path: &Path, bytes: &[u8]) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_else(|| panic!("{} has no file name", path.display()));
    let scratch = path.with_file_name(format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id()));
    std::fs::write(&scratch, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", scratch.display()));
    copy_program(&scratch, path);
    let _ = std::fs::remove_file(&scratch);
}

/// Copies `from` to `to` as a program (mode 0755) to run; see [`write_program`] for why not
/// `fs::copy`. `install` replaces an existing `to` with a new file.
pub fn copy_program(from: &Path, to: &Path) {
    ok(Command::new("install").arg("-m").arg("0755").arg(from).arg(to));
}

/// Text of stdout and stderr together, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A `ferry` command (the release packer). The format tests' bundles name images (the demo's busybox,
/// the control plane) that no test registry serves, so this command never contacts a registry
/// and records them as missing; the image tests (`integration/images.rs`) use their own command.
pub fn ferry() -> Command {
    let mut c = Command::new(release_bin("ferry"));
    c.env("FERRY_OFFLINE", "1").env("FERRY_ALLOW_MISSING_IMAGES", "1");
    c
}

/// `dir`, also removed when this test binary exits. What a `static` builds once (an installer,
/// a containerd, a registry) keeps its directory in the static, and a static is never dropped,
/// so without this every run would leave its installers behind in /tmp.
pub fn lasting(dir: tempfile::TempDir) -> tempfile::TempDir {
    static PATHS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_lasting() {
        for path in PATHS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    // SAFETY: registers a plain function with no arguments; it runs once, at process exit.
    HOOK.call_once(|| unsafe {
        libc::atexit(remove_lasting);
    });
    PATHS.lock().unwrap_or_else(|e| e.into_inner()).push(dir.path().to_path_buf());
    dir
}

/// A fresh scratch directory, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("ferry-test-").tempdir().expect("creating a scratch directory")
}

/// Runs a command that must succeed and returns its combined output.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let t = text(&out);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{t}", out.status);
    t
}

/// Runs a command that must fail and returns its combined output.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let t = text(&out);
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded:\n{t}");
    assert!(!t.contains("panicked"), "{cmd:?} panicked:\n{t}");
    t
}

/// Creates a signing key pair `NAME.key`/`NAME.pub` in `dir` and returns the key's base path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let base = dir.join(name);
    ok(ferry().arg("keygen").arg("-o").arg(&base));
    base
}

/// Builds `bundle` into `dir/installer`, signed with `key` (`None` = unsigned).
pub fn build(bundle: &Path, dir: &Path, key: Option<&Path>) -> PathBuf {
    let out = dir.join("installer");
    let mut cmd = ferry();
    cmd.arg("build").arg(bundle).arg("-o").arg(&out).env("SOURCE_DATE_EPOCH", "1700000000");
    match key {
        Some(k) => cmd.arg("--key").arg(k.with_extension("key")),
        None => cmd.arg("--unsigned"),
    };
    ok(&mut cmd);
    out
}

/// The small test bundle under `tests/fixtures/standin-bundle`, with its images built (once per
/// process). Its images are STAND-INS (one busybox image under every upstream name, control plane
/// included): it is for the fast format, build and registry tests, not for a cluster.
pub fn standin_bundle() -> PathBuf {
    static IMAGES: std::sync::Once = std::sync::Once::new();
    IMAGES.call_once(|| {
        ok(&mut Command::new(workspace_root().join("tests/fixtures/standin-bundle/make-images.sh")));
    });
    workspace_root().join("tests/fixtures/standin-bundle/bundle.yaml")
}
pub mod lab;

/// `len` bytes that do not compress (xorshift from `seed`): an image layer made of them is as
/// large in the installer as on the wire.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
