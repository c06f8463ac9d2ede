//! The multi-host lab: real Debian hosts (systemd-nspawn containers with their own network
//! namespace, sshd, systemd and private disk) on this machine, driven by `scripts/testhosts`.
//!
//! A test binary brings the lab up once and shares it between its tests:
//!
//! ```no_run
//! use ferry_tests::lab::Lab;
//! let lab = Lab::shared(ferry_tests::lab::LAB_NODES, false);
//! let _use = lab.read();                       // keep fault-injecting tests out meanwhile
//! let out = lab.ssh(2, "hostname");
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node2");
//! ```
//!
//! Tests that change the lab (shaping, cutting links, stopping sshd, powering hosts off) do so
//! through [`Lab::exclusive`], which waits until no other test uses the lab. When its guard is
//! dropped, even by a panic, every fault is undone (`testhosts heal`).
//!
//! The lab is torn down (`testhosts down`) when the test binary exits, whether its tests passed,
//! failed or panicked (an `atexit` handler). If the process is killed instead, a small watchdog
//! process notices that its pipe closed and tears the lab down. `testhosts up` also cleans up
//! whatever a crashed run left. Set `FERRY_LAB_KEEP=1` to leave the lab up after the tests,
//! for a look around with `scripts/testhosts ssh 1`.
//!
//! There is one lab per machine. A test process holds [`SESSION_LOCK`] while it uses the lab,
//! so a second test process (another test binary, or another engineer's run) waits until the
//! first has torn its lab down, and `scripts/testhosts up`/`down` run by hand refuse to touch
//! the lab meanwhile.
//!
//! The lab needs root, which the project's machines and CI have.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::{text, workspace_root};

/// The lab's node network, `10.88.0.0/24`: node *i* is `10.88.0.(10+i)`.
pub const NODE_NET: &str = "10.88.0";
/// The bastion's address on the operator's network (with a bastion, the only address of the lab
/// the test process can reach directly).
pub const BASTION_IP: &str = "10.88.1.10";
/// The bastion's address on the nodes' network.
pub const BASTION_INNER_IP: &str = "10.88.0.10";

/// How `scripts/testhosts` names a host's network namespace: this prefix and the host's name.
pub const NS_PREFIX: &str = "ferrylab-";

/// Whether `h` is up: its network namespace exists.
pub fn is_up(h: Host) -> bool {
    Path::new("/run/netns").join(format!("{NS_PREFIX}{}", h.name())).exists()
}

/// Panics before any connection to `h` while it is not up: a lab address must never be tried
/// while no lab is there to answer (the machine refuses the range, but a helper must not rely on
/// that alone).
pub fn refuse_unless_up(h: Host) {
    assert!(is_up(h), "refusing to connect to {} ({}): the lab is not up", h.ip(), h.name());
}

/// Panics when any of `args` names a lab address (`10.88.…`) while no lab host is up: commands
/// the tests start (an installer given `--hosts`, a cluster file's path aside) must not try the
/// lab's range with no lab there.
pub fn refuse_lab_addresses_unless_up<'a>(args: impl IntoIterator<Item = &'a str>) {
    let any_up = is_up(Host::Node(1)) || is_up(Host::Bastion);
    for a in args {
        assert!(any_up || !a.contains("10.88."), "refusing to run with lab address {a}: the lab is not up");
    }
}

/// One host of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// `node<i>`, counted from 1.
    Node(usize),
    /// The bastion (jump host), present in labs brought up with a bastion.
    Bastion,
}

impl From<usize> for Host {
    fn from(i: usize) -> Host {
        Host::Node(i)
    }
}

impl Host {
    /// How `scripts/testhosts` names the host: `2` or `bastion`.
    pub fn arg(self) -> String {
        match self {
            Host::Node(i) => i.to_string(),
            Host::Bastion => "bastion".to_string(),
        }
    }

    /// Its hostname: `node2` or `bastion`.
    pub fn name(self) -> String {
        match self {
            Host::Node(i) => format!("node{i}"),
            Host::Bastion => "bastion".to_string(),
        }
    }

    /// The address the operator (the test process) uses for it.
    pub fn ip(self) -> String {
        match self {
            Host::Node(i) => format!("{NODE_NET}.{}", 10 + i),
            Host::Bastion => BASTION_IP.to_string(),
        }
    }
}

/// How many nodes every lab test of the integration binary shares (plus the bastion): 3 for a
/// 1-master, 2-worker cluster and a 4th to join, or 3 masters and a worker for HA.
pub const LAB_NODES: usize = 4;

/// A running lab. Get the shared one with [`Lab::shared`].
#[derive(Debug)]
pub struct Lab {
    hosts: usize,
    bastion: bool,
    dir: PathBuf,
    /// Readers use the lab, the writer changes it (faults, shaping, down/up).
    usage: RwLock<()>,
    /// How long the first `up` took.
    first_up: Duration,
}

static SHARED: OnceLock<Result<Lab, String>> = OnceLock::new();
/// There is one lab per machine: a test process holds this lock (an flock, released by the
/// kernel when the process and its watchdog are gone) from bringing the lab up to tearing it
/// down, and a second test process waits for it.
pub const SESSION_LOCK: &str = "/run/lock/ferry-lab.session";
/// The watchdog's stdin: it tears the lab down when this pipe closes without a "done" line.
static WATCHDOG: Mutex<Option<(Child, ChildStdin)>> = Mutex::new(None);

/// The state dir `scripts/testhosts` uses (`FERRY_LAB_DIR`, default `/srv/ferry-lab`).
pub fn lab_dir() -> PathBuf {
    std::env::var_os("FERRY_LAB_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/srv/ferry-lab"))
}

/// Path of `scripts/testhosts`.
pub fn testhosts_script() -> PathBuf {
    workspace_root().join("scripts").join("testhosts")
}

/// A `scripts/testhosts` command run on behalf of this process, which holds [`SESSION_LOCK`]
/// (the script refuses `up` and `down` while another process holds it).
fn testhosts_command() -> Command {
    let mut c = Command::new(testhosts_script());
    c.env("FERRY_LAB_SESSION_HELD", "1").stdin(Stdio::null());
    c
}

/// Runs `scripts/testhosts ARGS…` and returns its output, whatever its exit status.
pub fn testhosts(args: &[&str]) -> Output {
    crate::run(testhosts_command().args(args))
}

/// Takes [`SESSION_LOCK`] for the rest of this process's life, waiting while another test
/// process uses the lab. Returns the lock's file descriptor.
fn take_session_lock() -> Result<libc::c_int, String> {
    use std::os::fd::IntoRawFd;
    let path = Path::new(SESSION_LOCK);
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("{SESSION_LOCK}: {e}"))?;
    let fd = f.into_raw_fd();
    // SAFETY: fd is an open file descriptor that this function owns.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("lab: another test process is using the lab ({SESSION_LOCK}); waiting for it");
        let t0 = Instant::now();
        // SAFETY: as above; a blocking flock.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(format!("flock {SESSION_LOCK}: {}", std::io::Error::last_os_error()));
        }
        eprintln!("lab: got the lab after {:.1?}", t0.elapsed());
    }
    Ok(fd)
}

/// Runs `scripts/testhosts ARGS…` and panics with its output unless it succeeds.
pub fn testhosts_ok(args: &[&str]) -> Output {
    let out = testhosts(args);
    assert!(out.status.success(), "scripts/testhosts {} failed ({}):\n{}", args.join(" "), out.status, text(&out));
    out
}

extern "C" fn teardown_at_exit() {
    if std::env::var_os("FERRY_LAB_KEEP").is_some() {
        eprintln!("lab: FERRY_LAB_KEEP is set, leaving the lab up ({} down removes it)", testhosts_script().display());
        return;
    }
    let out = testhosts(&["down"]);
    if !out.status.success() {
        eprintln!("lab: scripts/testhosts down failed:\n{}", text(&out));
    }
    // Tell the watchdog the lab is down, so that it exits without doing anything.
    if let Ok(mut w) = WATCHDOG.lock()
        && let Some((mut child, mut stdin)) = w.take()
    {
        let _ = stdin.write_all(b"done\n");
        drop(stdin);
        let _ = child.wait();
    }
}

/// Registers the teardown: an `atexit` handler for a normal exit (tests passed, failed or
/// panicked), and a watchdog process in its own process group for a process that is killed.
/// The watchdog shares the session lock `lock_fd`, so that no other test process takes the lab
/// before the watchdog has torn it down.
fn register_teardown(lock_fd: libc::c_int) {
    // SAFETY: atexit takes a plain extern "C" fn with no arguments; registering it is sound.
    unsafe {
        libc::atexit(teardown_at_exit);
    }
    if std::env::var_os("FERRY_LAB_KEEP").is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let script = testhosts_script();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"read -r line; [ "$line" = done ] || exec "$0" down"#)
        .arg(&script)
        .env("FERRY_LAB_SESSION_HELD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // keep the session lock open across exec (std opens files close-on-exec)
            if libc::fcntl(lock_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    match spawned {
        Ok(mut child) => {
            let stdin = child.stdin.take().expect("piped stdin");
            *WATCHDOG.lock().unwrap_or_else(|e| e.into_inner()) = Some((child, stdin));
        }
        Err(e) => eprintln!("lab: could not start the teardown watchdog: {e}"),
    }
}

impl Lab {
    /// The lab of this test binary: `hosts` nodes, plus a bastion if `bastion`. The first caller
    /// brings it up (installing the Debian packages and building the rootfs if needed) and later
    /// callers share it. A later caller that wants more hosts, or a bastion the running lab lacks,
    /// gets a panic: every test of one binary should ask for the same lab.
    ///
    /// With a bastion, the test process reaches the nodes only through it: [`Lab::ssh`] and the
    /// cluster file from [`Lab::inventory`] jump through it by themselves.
    pub fn shared(hosts: usize, bastion: bool) -> &'static Lab {
        let lab = SHARED.get_or_init(|| Lab::bring_up(hosts, bastion));
        let lab = match lab {
            Ok(lab) => lab,
            Err(e) => panic!("the lab could not be brought up:\n{e}"),
        };
        assert!(
            lab.hosts >= hosts && (lab.bastion || !bastion),
            "this test binary's lab has {} hosts{}, but a test asked for {hosts}{}: ask for the same lab everywhere",
            lab.hosts,
            if lab.bastion { " and a bastion" } else { "" },
            if bastion { " and a bastion" } else { "" },
        );
        lab
    }

    fn bring_up(hosts: usize, bastion: bool) -> Result<Lab, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the lab needs root (systemd-nspawn, network namespaces)".into());
        }
        let deps = testhosts(&["deps"]);
        if !deps.status.success() {
            return Err(format!("scripts/testhosts deps failed:\n{}", text(&deps)));
        }
        let lock_fd = take_session_lock()?;
        register_teardown(lock_fd);
        let lab = Lab { hosts, bastion, dir: lab_dir(), usage: RwLock::new(()), first_up: Duration::ZERO };
        let t0 = Instant::now();
        let out = lab.up_raw();
        if !out.status.success() {
            return Err(format!("scripts/testhosts up failed ({}):\n{}", out.status, text(&out)));
        }
        Ok(Lab { first_up: t0.elapsed(), ..lab })
    }

    fn up_raw(&self) -> Output {
        let n = self.hosts.to_string();
        let mut args = vec!["up", n.as_str()];
        if self.bastion {
            args.push("--bastion");
        }
        crate::run(testhosts_command().args(&args))
    }

    /// Marks the calling test as a user of the lab: fault-injecting tests (which hold
    /// [`Lab::exclusive`]) wait until the guard is dropped, and the other way round.
    pub fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.usage.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive use of the lab, for tests that shape, cut, stop or power off hosts. Waits until
    /// no other test uses the lab. When the returned guard is dropped, even by a panic, every fault
    /// and limit is undone (`scripts/testhosts heal`).
    pub fn exclusive(&self) -> Exclusive<'_> {
        let guard = self.usage.write().unwrap_or_else(|e| e.into_inner());
        Exclusive { lab: self, _guard: guard }
    }

    /// Number of nodes.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Whether the lab has a bastion.
    pub fn has_bastion(&self) -> bool {
        self.bastion
    }

    /// How long bringing the lab up took the first time (including a rootfs build, if one was needed).
    pub fn first_up_time(&self) -> Duration {
        self.first_up
    }

    /// The address of a host (node *i* counted from 1, or [`Host::Bastion`]).
    pub fn ip(&self, host: impl Into<Host>) -> String {
        let h = host.into();
        self.check(h);
        h.ip()
    }

    /// The lab's state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private key that logs in as root, ops and guard on every host.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// A known_hosts file with every host's key, for `ip` and `[ip]:2222`.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// An ssh client configuration for the lab (`ssh -F <this> <ip>`): the key, known_hosts,
    /// batch mode, and with a bastion a ProxyJump for the nodes.
    pub fn ssh_config_path(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The password of user `guard` (for password logins and its sudo).
    pub fn guard_password(&self) -> String {
        let p = self.dir.join("guard.password");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).trim().to_string()
    }

    /// The cluster file (`installer run -f`) for the lab's first `nodes` nodes, as root on port 22.
    pub fn inventory(&self, nodes: usize) -> String {
        let nodes = nodes.to_string();
        String::from_utf8_lossy(&testhosts_ok(&["inventory", "--nodes", &nodes]).stdout).into_owned()
    }

    /// The cluster file for the first `nodes` nodes, logging in as `user` on `port` (sudo is on
    /// for users other than root).
    pub fn inventory_as(&self, user: &str, port: u16, nodes: usize) -> String {
        let (port, nodes) = (port.to_string(), nodes.to_string());
        let args = ["inventory", "--user", user, "--port", &port, "--nodes", &nodes];
        String::from_utf8_lossy(&testhosts_ok(&args).stdout).into_owned()
    }

    fn check(&self, h: Host) {
        refuse_unless_up(h);
        match h {
            Host::Node(i) => assert!(i >= 1 && i <= self.hosts, "the lab has node1..node{}, not node{i}", self.hosts),
            Host::Bastion => assert!(self.bastion, "this lab has no bastion"),
        }
    }

    /// An `ssh` command for `user@host`, configured for the lab (key, known_hosts, bastion jump),
    /// with extra ssh `options` (e.g. `["-p", "2222"]`) before the destination. Add the remote
    /// command with `.arg(…)`. Its stdin is null unless you set it.
    pub fn ssh_command(&self, user: &str, host: impl Into<Host>, options: &[&str]) -> Command {
        let h = host.into();
        self.check(h);
        let mut c = Command::new("ssh");
        c.arg("-F").arg(self.ssh_config_path()).args(options).arg(format!("{user}@{}", h.ip())).stdin(Stdio::null());
        c
    }

    /// Runs a shell command on a host as root, over ssh.
    pub fn ssh(&self, host: impl Into<Host>, cmd: &str) -> Output {
        crate::run(self.ssh_command("root", host, &[]).arg(cmd))
    }

    /// Runs a shell command on a host as `user`, over ssh with the lab key.
    pub fn ssh_as(&self, user: &str, host: impl Into<Host>, cmd: &str) -> Output {
        crate::run(self.ssh_command(user, host, &[]).arg(cmd))
    }

    /// Runs a shell command on a host as root and returns its trimmed stdout, panicking with the
    /// full output if it fails.
    pub fn ssh_ok(&self, host: impl Into<Host>, cmd: &str) -> String {
        let h = host.into();
        let out = self.ssh(h, cmd);
        assert!(out.status.success(), "on {}: `{cmd}` failed ({}):\n{}", h.name(), out.status, text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Exclusive use of the lab (see [`Lab::exclusive`]): the fault-injection and shaping helpers.
/// Dropping it undoes every fault and limit.
pub struct Exclusive<'a> {
    lab: &'a Lab,
    _guard: RwLockWriteGuard<'a, ()>,
}

impl std::ops::Deref for Exclusive<'_> {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        let out = testhosts(&["heal"]);
        if !out.status.success() {
            // Not a panic: this may run while unwinding from one.
            eprintln!("lab: scripts/testhosts heal failed:\n{}", text(&out));
        }
    }
}

impl Exclusive<'_> {
    fn host_cmd(&self, verb: &str, host: Host, extra: &[&str]) {
        self.lab.check(host);
        let arg = host.arg();
        let mut args = vec![verb, arg.as_str()];
        args.extend_from_slice(extra);
        testhosts_ok(&args);
    }

    /// Limits a host's link to `rate` in both directions (`tc tbf`; `rate` as tc spells it, e.g. `100mbit`).
    pub fn shape(&self, host: impl Into<Host>, rate: &str) {
        self.host_cmd("shape", host.into(), &[rate]);
    }

    /// Removes the limit of [`Exclusive::shape`].
    pub fn unshape(&self, host: impl Into<Host>) {
        self.host_cmd("unshape", host.into(), &[]);
    }

    /// Adds `ms` milliseconds of latency each way to a host's link (vde2 wirefilter); 0 removes it.
    pub fn delay(&self, host: impl Into<Host>, ms: u32) {
        self.host_cmd("delay", host.into(), &[&ms.to_string()]);
    }

    /// Takes a host off the network (its links go down; it keeps running).
    pub fn cut(&self, host: impl Into<Host>) {
        self.host_cmd("cut", host.into(), &[]);
    }

    /// Puts a cut host back on the network.
    pub fn restore(&self, host: impl Into<Host>) {
        self.host_cmd("restore", host.into(), &[]);
    }

    /// Stops a host's sshd on `port` (22 or 2222); open sessions live on.
    pub fn kill_sshd(&self, host: impl Into<Host>, port: u16) {
        self.host_cmd("kill-sshd", host.into(), &[&port.to_string()]);
    }

    /// Starts a host's sshd on `port` again.
    pub fn start_sshd(&self, host: impl Into<Host>, port: u16) {
        self.host_cmd("start-sshd", host.into(), &[&port.to_string()]);
    }

    /// Powers a host off cleanly; its disk is kept.
    pub fn poweroff(&self, host: impl Into<Host>) {
        self.host_cmd("poweroff", host.into(), &[]);
    }

    /// Boots a powered-off host and waits until it is up.
    pub fn boot(&self, host: impl Into<Host>) {
        self.host_cmd("boot", host.into(), &[]);
    }

    /// Tears the whole lab down (`scripts/testhosts down`) and returns how long that took.
    /// Bring it back with [`Exclusive::up`] before the guard is dropped.
    pub fn down(&self) -> Duration {
        let t0 = Instant::now();
        testhosts_ok(&["down"]);
        t0.elapsed()
    }

    /// Brings the lab up again with the same shape (fresh hosts) and returns how long that took.
    pub fn up(&self) -> Duration {
        let t0 = Instant::now();
        let out = self.lab.up_raw();
        assert!(out.status.success(), "scripts/testhosts up failed ({}):\n{}", out.status, text(&out));
        t0.elapsed()
    }
}
