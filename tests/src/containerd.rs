//! A private containerd for tests: its own root, state, sockets and namespace in a temporary
//! directory, so it never touches the machine's `/var/lib/containerd` or another test's daemon.
//! Stopped (and its shims, containers and mounts cleaned up) when dropped, even on panic.
//!
//! ```no_run
//! use ferry_tests::containerd::Containerd;
//! let c = Containerd::start();
//! let out = c.ctr().args(["images", "pull", "--plain-http", "--hosts-dir", "/tmp/certs.d", "docker.io/library/app:1"]).output();
//! ```
//!
//! The CRI plugin is disabled (no kubelet here, and it would want CNI); pulls go through `ctr`
//! with `--hosts-dir`, which uses the same resolver, hosts.toml handling and `?ns=` as CRI.
//! Needs root, `containerd` and `runc` (Debian packages of the same names).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running private containerd.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
    namespace: String,
}

impl Containerd {
    /// Starts containerd and waits until it answers (panics with its log if it does not).
    pub fn start() -> Containerd {
        let dir =
            tempfile::Builder::new().prefix("ferry-containerd-").tempdir().expect("creating containerd's directory");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("writing containerd's config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("creating containerd's log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting containerd (apt-get install containerd runc): {e}"));
        // A namespace of our own keeps images and containers apart from any other daemon's.
        let namespace = format!("ferry-test-{}", std::process::id());
        let mut c = Containerd { dir, child, socket, namespace };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.child.try_wait().expect("polling containerd") {
                panic!("containerd exited at startup ({status}):\n{}", c.log());
            }
            if c.socket.exists() && c.ctr().arg("version").output().is_ok_and(|o| o.status.success()) {
                return c;
            }
            if Instant::now() > deadline {
                panic!("containerd did not answer on {} within 20 s:\n{}", c.socket.display(), c.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `ctr` command bound to this daemon and its namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).arg("--namespace").arg(&self.namespace);
        cmd
    }

    /// `ctr images pull` through the hosts.toml files under `hosts_dir`.
    pub fn pull(&self, image: &str, hosts_dir: &Path) -> Output {
        self.ctr()
            .args(["images", "pull", "--hosts-dir"])
            .arg(hosts_dir)
            .arg(image)
            .output()
            .expect("running ctr images pull")
    }

    /// `ctr run --rm IMAGE ID ARGS…`: runs a container to completion.
    pub fn run(&self, image: &str, id: &str, args: &[&str]) -> Output {
        self.ctr().args(["run", "--rm", image, id]).args(args).output().expect("running ctr run")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Shims outlive the daemon by design; ours name our socket on their command line.
        let ours = self.dir.path().to_string_lossy().into_owned();
        for shim in processes_mentioning(&ours) {
            // SAFETY: killing a specific process we started (through containerd), by pid.
            unsafe { libc::kill(shim, libc::SIGKILL) };
        }
        // Snapshot mounts left by a container that did not exit cleanly.
        for m in mounts_under(self.dir.path()) {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: a path string we own; MNT_DETACH never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Pids whose command line contains `needle` (never our own).
fn processes_mentioning(needle: &str) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Mount points below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> =
        text.lines().filter_map(|l| l.split(' ').nth(4)).map(PathBuf::from).filter(|p| p.starts_with(dir)).collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out
}
