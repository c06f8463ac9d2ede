//! `installer agent …`: the commands `installer run` starts ON each node, over SSH, as root.
//!
//! Owns the node side of every phase: `facts` (what preflight judges, as JSON), `receive`
//! (verified, resumable distribution, see [`receive`]), `prepare` (rootfs, containerd config,
//! sysctls, modules, swap, /etc/hosts, units), `registry-service` (the systemd unit running
//! `installer registry serve`), `check-pull` (containerd resolves and pulls a bundled image
//! through the mirror), `record`/`state` (per-phase records under /var/lib/ferry/state/) and
//! `lock` (the host's lock, held for the length of one operation, see [`lock`]).
//! The operator side only sends data and small JSON plans; no long shell strings.
//!
//! Every call, what it reads and what it answers are `protocol` types: [`main`] turns the
//! command line into a [`Call`], and [`serve`] checks the operator's protocol version, greets
//! with this agent's [`Hello`] and runs the call.

pub mod api;
pub mod hangup;
pub mod kernel;
#[cfg(test)]
pub mod local;
pub mod lock;
pub mod prepare;
pub mod receive;
pub mod relay;
pub mod seed;
pub mod service_route;

pub use crate::protocol::{Facts, Record};

use crate::protocol::access::{PullAccess, ServingMaterial};
use crate::protocol::{Call, DecodeError, Hello, PreparePlan, check_operator, encode_line};
use crate::registry::config::ConfigError;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

pub use crate::node::{AGENT_PATH, FERRY_DIR, INSTALLER_PATH, STATE_DIR, trailer_id};

/// Why a phase record cannot be written or the records of a cluster cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A cluster or phase name that would not stay inside the state directory.
    #[error("`{name}` is not a valid name")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The record cannot be serialized.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The record cannot be written.
    #[error(transparent)]
    Write(#[from] ConfigError),
    /// The cluster's directory or a record in it cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record does not read as one; the operator decides what to do with it.
    #[error("{}: remove it to run that phase again", path.display())]
    Unreadable {
        /// The record's file.
        path: PathBuf,
        /// Why.
        source: DecodeError,
    },
}

/// The cgroup version of the hierarchy mounted at `dir`: `v2` on a cgroup2 filesystem, `v1` on
/// tmpfs (the legacy and hybrid layouts, whose controllers are mounted below it), empty otherwise.
pub fn cgroup_version(dir: &Path) -> String {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return String::new() };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return String::new();
    }
    // f_type's width differs between libcs and architectures.
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        CGROUP2_SUPER_MAGIC => "v2".into(),
        TMPFS_MAGIC => "v1".into(),
        _ => String::new(),
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Free bytes on the filesystem holding `p` (or its nearest existing parent).
pub fn free_space(p: &Path) -> u64 {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

fn in_path(tool: &str) -> bool {
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// TCP ports in LISTEN state, with the socket inodes listening on each.
fn listening_ports() -> (Vec<u16>, Vec<(u16, u64)>) {
    let mut ports = Vec::new();
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in read(f).lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9
                && cols[3] == "0A"
                && let Some(port) = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
                if let Ok(ino) = cols[9].parse::<u64>()
                    && ino != 0
                {
                    inodes.push((port, ino));
                }
            }
        }
    }
    ports.sort();
    ports.dedup();
    (ports, inodes)
}

/// The process holding each listening socket, as `comm (pid N)`: found by matching the
/// sockets' inodes against every process's open descriptors (`socket:[INODE]`).
fn port_owners(inodes: &[(u16, u64)]) -> BTreeMap<u16, String> {
    let mut out = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let Some(ino) =
                link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
            else {
                continue;
            };
            for (port, _) in inodes.iter().filter(|(_, i)| *i == ino) {
                out.entry(*port).or_insert_with(|| {
                    let comm = read(&format!("/proc/{pid}/comm")).trim().to_string();
                    format!("{comm} (pid {pid})")
                });
            }
        }
        if inodes.iter().all(|(port, _)| out.contains_key(port)) {
            break;
        }
    }
    out
}

/// MACs of this network namespace's interfaces. Names come from /proc/net/dev and addresses
/// from SIOCGIFHWADDR, both per namespace; /sys/class/net may show another namespace's (in
/// containers it is the host's).
fn own_macs() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: plain socket for ioctls; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return out;
    }
    for line in read("/proc/net/dev").lines().skip(2) {
        let Some((name, _)) = line.split_once(':') else { continue };
        let name = name.trim();
        if name == "lo" || name.len() >= libc::IFNAMSIZ {
            continue;
        }
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in name.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        // SAFETY: req is a valid ifreq with a NUL-terminated name.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req) } == 0 {
            let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
            let mac: Vec<String> = sa.sa_data[..6].iter().map(|&b| format!("{:02x}", b as u8)).collect();
            let mac = mac.join(":");
            if mac != "00:00:00:00:00:00" {
                out.push(mac);
            }
        }
    }
    unsafe { libc::close(fd) };
    out
}

/// Gathers [`Facts`]; `tools` are checked for presence.
pub fn facts(tools: &[String]) -> Facts {
    let (hostname, arch, kernel) = uname();
    let mut macs = own_macs();
    macs.sort();
    macs.dedup();
    let (listening, inodes) = listening_ports();
    let listeners = port_owners(&inodes);
    Facts {
        hostname,
        arch,
        kernel,
        os: os_name(),
        systemd: Path::new("/run/systemd/system").is_dir(),
        cpus: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
        mem_bytes: mem_total(),
        macs,
        product_uuid: read("/sys/class/dmi/id/product_uuid").trim().to_string(),
        machine_id: read("/etc/machine-id").trim().to_string(),
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        disk_free: free_space(Path::new(FERRY_DIR)),
        swap_bytes: swap_total(),
        listening,
        listeners,
        runtimes: runtimes_present(),
        tools_missing: tools.iter().filter(|t| !in_path(t)).cloned().collect(),
        installer: trailer_id(Path::new(INSTALLER_PATH)),
        ferry_registry_active: ferry_registry_active(),
        cgroup: cgroup_version(Path::new("/sys/fs/cgroup")),
        kernel_features: kernel::KernelView::running().node_features(),
    }
}

/// (host name, machine, kernel release) from uname(2).
fn uname() -> (String, String, String) {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: out-parameter.
    unsafe { libc::uname(&mut u) };
    let s = |f: &[libc::c_char]| unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned();
    (s(&u.nodename), s(&u.machine), s(&u.release))
}

/// The distribution's PRETTY_NAME; empty when os-release has none.
fn os_name() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default()
}

/// MemTotal in bytes; 0 when /proc/meminfo does not say.
fn mem_total() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Active swap in bytes, summed over /proc/swaps.
fn swap_total() -> u64 {
    read("/proc/swaps")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2).and_then(|s| s.parse::<u64>().ok()))
        .sum::<u64>()
        * 1024
}

/// Container runtimes, kubelets and their sockets already on the host.
fn runtimes_present() -> Vec<String> {
    [
        "/usr/bin/containerd",
        "/usr/local/bin/containerd",
        "/usr/bin/dockerd",
        "/usr/bin/crio",
        "/usr/bin/kubelet",
        "/usr/local/bin/kubelet",
        "/run/containerd/containerd.sock",
        "/var/run/docker.sock",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .map(String::from)
    .collect()
}

/// Whether ferry's registry service runs here; false when systemctl cannot say.
fn ferry_registry_active() -> bool {
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "ferry-registry.service"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Writes a record atomically under /var/lib/ferry/state/<cluster>/<phase>.json.
pub fn record(root: &Path, rec: &Record) -> Result<(), StateError> {
    check_name(&rec.cluster)?;
    check_name(&rec.phase)?;
    let path = root.join(&rec.cluster).join(format!("{}.json", rec.phase));
    crate::registry::config::write_atomic(&path, serde_json::to_string_pretty(rec)?.as_bytes())?;
    Ok(())
}

/// Every record of `cluster`. No directory is no record yet; a directory or record that cannot be
/// read is an error, not taken for phases never done (which would run them all again).
pub fn state(root: &Path, cluster: &str) -> Result<BTreeMap<String, Record>, StateError> {
    check_name(cluster)?;
    let mut out = BTreeMap::new();
    let dir = root.join(cluster);
    let unreadable_dir = |source| StateError::Read { path: dir.clone(), source };
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(unreadable_dir(e)),
    };
    for e in rd {
        let p = e.map_err(unreadable_dir)?.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|source| StateError::Read { path: p.clone(), source })?;
        // An unreadable record is reported, not taken for a phase never done: the operator
        // decides (removing the file makes the phase run again).
        let r: Record = crate::protocol::decode("a phase record", &bytes)
            .map_err(|source| StateError::Unreadable { path: p.clone(), source })?;
        out.insert(r.phase.clone(), r);
    }
    Ok(out)
}

fn check_name(s: &str) -> Result<(), StateError> {
    if s.is_empty() || s.starts_with('.') || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(StateError::InvalidName { name: s.to_string() });
    }
    Ok(())
}

/// Where an agent keeps and finds things: the node's places, or a test's.
#[derive(Clone, Debug)]
pub struct Node {
    /// Per-phase records (`record`, `state`).
    pub state_dir: PathBuf,
    /// This agent's own program, placed at the start of a received copy.
    pub self_exe: PathBuf,
    /// The host's lock (`lock`).
    pub lock: lock::LockRules,
}

impl Node {
    /// The places on a real node.
    pub fn here() -> Node {
        Node {
            state_dir: PathBuf::from(STATE_DIR),
            self_exe: PathBuf::from(crate::SELF_EXE),
            lock: lock::LockRules::here(),
        }
    }
}

/// The typed call a command line asks for.
pub fn call_of(cmd: &crate::cli::AgentCommand) -> Call {
    use crate::cli::AgentCommand as C;
    match cmd.clone() {
        C::Facts { tools } => Call::Facts {
            tools: tools.iter().flat_map(|t| t.split(',')).filter(|t| !t.is_empty()).map(String::from).collect(),
        },
        C::Receive { dest, signer, allow_unsigned, relay_listen } => {
            Call::Receive { dest, signer, allow_unsigned, relay_listen }
        }
        C::Prepare => Call::Prepare,
        C::RegistryService { port, allow_unsigned } => Call::RegistryService { port, allow_unsigned },
        C::CheckPull { image, timeout, endpoints } => Call::CheckPull { image, endpoints, timeout },
        C::Record { cluster, phase, installer } => Call::Record { cluster, phase, installer },
        C::State { cluster } => Call::State { cluster },
        C::Lock { holder, force_unlock } => Call::Lock { holder, force_unlock },
        C::ApiReady { port, timeout } => Call::ApiReady { port, timeout },
    }
}

/// Entry point for `installer agent …`: stdin and stdout are the session.
pub fn main(args: &crate::cli::AgentArgs) -> Result<()> {
    let call = call_of(&args.command);
    // The lock's session ends on its own when its stdin does, and must give the lock back
    // first rather than be cut short.
    if !matches!(call, Call::Lock { .. }) {
        hangup::exit_when_operator_leaves();
    }
    if matches!(call, Call::Receive { .. }) {
        // A 1 MiB pipe from sshd instead of 64 KiB: fewer, larger reads and wake-ups while
        // chunks stream in. Not a pipe, or over the limit: stays as it is.
        // SAFETY: fcntl on stdin, which this process owns.
        unsafe { libc::fcntl(0, libc::F_SETPIPE_SZ, 1 << 20) };
    }
    let stdin = std::io::stdin();
    // A small buffer: reads of a whole chunk then go straight from the pipe into the chunk's
    // buffer instead of through this one (one copy fewer per byte).
    let mut input = std::io::BufReader::with_capacity(64 << 10, stdin.lock());
    let mut out = std::io::stdout().lock();
    serve(args.protocol, args.build.as_deref(), &call, &mut input, &mut out, &Node::here())
}

/// One agent session: greets with this agent's [`Hello`], stops when the operator speaks
/// another protocol version (`protocol`, `build`: what it said it speaks), else runs `call`.
pub fn serve(
    protocol: Option<u32>,
    build: Option<&str>,
    call: &Call,
    input: &mut impl BufRead,
    output: &mut impl Write,
    node: &Node,
) -> Result<()> {
    output.write_all(Hello::ours().line().as_bytes())?;
    output.flush()?;
    check_operator(protocol, build)?;
    match call {
        Call::Facts { tools } => answer(output, &facts(tools)),
        Call::Receive { dest, signer, allow_unsigned, relay_listen } => {
            let opts = receive::ReceiveOptions {
                dest: dest.clone(),
                signer: signer.clone(),
                allow_unsigned: *allow_unsigned,
                stub: node.self_exe.clone(),
                relay_listen: *relay_listen,
            };
            receive::receive(input, output, &opts)?;
            Ok(())
        }
        Call::Prepare => {
            let plan: PreparePlan = crate::protocol::decode_secret("the prepare plan", &read_all(input)?)?;
            answer(output, &prepare::prepare(&plan)?)
        }
        Call::RegistryService { port, allow_unsigned } => {
            let material: ServingMaterial =
                crate::protocol::decode_secret("the registry's serving material", &read_all(input)?)?;
            Ok(prepare::registry_service(*port, *allow_unsigned, &material)?)
        }
        Call::CheckPull { image, endpoints, timeout } => {
            let access: PullAccess = crate::protocol::decode_secret("the registry's pull access", &read_all(input)?)?;
            Ok(prepare::check_pull(image, endpoints, *timeout, &access)?)
        }
        Call::Record { cluster, phase, installer } => {
            let detail = read_all(input)?;
            // No detail at all is a record without one; a detail that is not JSON is refused,
            // not recorded as nothing.
            let detail = if detail.iter().all(u8::is_ascii_whitespace) {
                serde_json::Value::Null
            } else {
                crate::protocol::decode("the record's detail", &detail)?
            };
            let completed =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let rec = Record {
                cluster: cluster.clone(),
                phase: phase.clone(),
                installer: installer.clone(),
                completed,
                detail,
            };
            Ok(record(&node.state_dir, &rec)?)
        }
        Call::State { cluster } => answer(output, &state(&node.state_dir, cluster)?),
        Call::ApiReady { port, timeout } => Ok(api::ready(*port, *timeout)?),
        Call::Lock { holder, force_unlock } => Ok(lock::lock(holder, *force_unlock, &node.lock, input, output)?),
    }
}

fn read_all(input: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(input, &mut buf).context("reading stdin")?;
    Ok(buf)
}

fn answer<T: serde::Serialize>(output: &mut impl Write, msg: &T) -> Result<()> {
    output.write_all(encode_line(msg).as_bytes())?;
    output.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_this_machine() {
        let f = facts(&["sh".into(), "surely-not-a-tool".into()]);
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert!(f.cpus >= 1 && f.mem_bytes > 0 && f.time_ms > 0);
        assert_eq!(f.tools_missing, ["surely-not-a-tool"]);
        // As `stat -fc %T /sys/fs/cgroup` says: cgroup2fs is v2, tmpfs v1.
        let fs_type = std::process::Command::new("stat").args(["-fc", "%T", "/sys/fs/cgroup"]).output().unwrap();
        let want = match String::from_utf8_lossy(&fs_type.stdout).trim() {
            "cgroup2fs" => "v2",
            "tmpfs" => "v1",
            _ => "",
        };
        assert_eq!(f.cgroup, want);
        assert_eq!(cgroup_version(Path::new("/proc")), "", "neither");
    }

    #[test]
    fn a_listening_port_names_its_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = facts(&[]);
        assert!(f.listening.contains(&port), "{:?}", f.listening);
        assert!(f.listeners[&port].ends_with(&format!("(pid {})", std::process::id())), "{:?}", f.listeners);
    }

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let r = Record {
            cluster: "lab".into(),
            phase: "distribute".into(),
            installer: "ab".into(),
            completed: 1,
            detail: serde_json::from_str(r#"{"bytes":5}"#).unwrap(),
        };
        record(d.path(), &r).unwrap();
        assert_eq!(state(d.path(), "lab").unwrap()["distribute"], r);
        assert!(record(d.path(), &Record { cluster: "../x".into(), ..r }).is_err());
        // A damaged record is an error naming the file, not a phase silently taken as undone.
        std::fs::write(d.path().join("lab/prepare.json"), b"{\"cluster\":").unwrap();
        let err = crate::printer::error_chain(&state(d.path(), "lab").unwrap_err());
        assert!(err.contains("lab/prepare.json: remove it to run that phase again"), "{err}");
        assert!(err.contains("a phase record does not read"), "{err}");
    }

    /// An agent started by an operator of another protocol version (older or newer) greets with
    /// its own version, then stops, naming both; it reads nothing and answers nothing else.
    #[test]
    fn an_agent_refuses_an_operator_of_another_version() {
        use crate::protocol::{BUILD, PROTOCOL_VERSION};
        let d = tempfile::tempdir().unwrap();
        let node = Node { state_dir: d.path().into(), ..local(d.path()).node };
        let call = Call::State { cluster: "lab".into() };
        for (theirs, build) in [(Some(PROTOCOL_VERSION + 1), Some("9.0.0")), (Some(0), Some("0.0.1")), (None, None)] {
            let mut out = Vec::new();
            let err = serve(theirs, build, &call, &mut &b""[..], &mut out, &node).unwrap_err().to_string();
            assert_eq!(out, Hello::ours().line().as_bytes(), "only the hello");
            assert!(
                err.contains(&format!("this agent speaks ferry protocol {PROTOCOL_VERSION} (ferry {BUILD})"))
                    || err.contains(&format!("this agent speaks {PROTOCOL_VERSION} (ferry {BUILD})")),
                "{err}"
            );
            if let (Some(p), Some(b)) = (theirs, build) {
                assert!(err.contains(&format!("speaks {p} (ferry {b})")), "{err}");
            }
        }
    }

    fn local(dir: &Path) -> local::LocalAgent {
        local::LocalAgent::new("10.0.0.9", dir.to_path_buf(), crate::SELF_EXE.into())
    }

    /// The operator's typed calls read what this agent actually prints: facts, a record written
    /// and read back as state.
    #[tokio::test(flavor = "current_thread")]
    async fn the_operator_reads_what_the_agent_answers() {
        use crate::ssh::agent;
        let d = tempfile::tempdir().unwrap();
        let h = local(d.path());
        let f = agent::facts(&h, AGENT_PATH, &["sh".into(), "surely-not-a-tool".into()]).await.unwrap();
        assert_eq!(f.arch, std::env::consts::ARCH);
        assert_eq!(f.tools_missing, ["surely-not-a-tool"]);
        assert!(agent::state(&h, AGENT_PATH, "lab").await.unwrap().is_empty());
        let detail: serde_json::Value = serde_json::from_str(r#"{"registry_endpoints":["http://a:5000"]}"#).unwrap();
        agent::record(&h, AGENT_PATH, "lab", "prepare", "ab12", &detail).await.unwrap();
        let state = agent::state(&h, AGENT_PATH, "lab").await.unwrap();
        assert_eq!((state["prepare"].installer.as_str(), &state["prepare"].detail), ("ab12", &detail));
        // What the agent refuses reaches the operator as the agent's own words.
        let err = agent::state(&h, AGENT_PATH, "../x").await.unwrap_err().to_string();
        assert!(err.starts_with("agent state exited with status 1: `../x` is not a valid name"), "{err}");
    }

    /// An old operator meets a new agent, end to end: the call fails with the agent's message,
    /// naming both versions.
    #[tokio::test(flavor = "current_thread")]
    async fn an_operator_of_another_version_hears_why() {
        use crate::protocol::{BUILD, PROTOCOL_VERSION};
        let d = tempfile::tempdir().unwrap();
        let mut h = local(d.path());
        h.operator = (Some(PROTOCOL_VERSION + 1), Some("9.0.0".into()));
        let err = crate::ssh::agent::facts(&h, AGENT_PATH, &[]).await.unwrap_err().to_string();
        assert!(err.contains(&format!("this agent speaks ferry protocol {PROTOCOL_VERSION} (ferry {BUILD})")), "{err}");
        assert!(err.contains(&format!("speaks {} (ferry 9.0.0)", PROTOCOL_VERSION + 1)), "{err}");
    }

    /// A record's detail that is not JSON is refused, not recorded as nothing.
    #[test]
    fn a_record_detail_that_is_not_json_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let node = Node { state_dir: d.path().into(), ..local(d.path()).node };
        let call = Call::Record { cluster: "lab".into(), phase: "prepare".into(), installer: "ab".into() };
        let v = Some(crate::protocol::PROTOCOL_VERSION);
        let err = serve(v, None, &call, &mut &b"{oops"[..], &mut Vec::new(), &node).unwrap_err().to_string();
        assert!(err.contains("the record's detail does not read as the ferry protocol"), "{err}");
        assert!(state(d.path(), "lab").unwrap().is_empty());
        serve(v, None, &call, &mut &b""[..], &mut Vec::new(), &node).unwrap();
        assert_eq!(state(d.path(), "lab").unwrap()["prepare"].detail, serde_json::Value::Null);
    }

    /// Every call, rendered as the operator renders it and read back by the agent's own command
    /// line parser, is the same call carrying the same version.
    #[test]
    fn command_lines_read_back_as_the_same_call() {
        use crate::protocol::call::tests::{every_call, shell_words};
        use clap::Parser;
        for call in every_call() {
            let words = shell_words(&call.command_line("/var/lib/ferry/agent"));
            let cli = crate::cli::Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{words:?}: {e}"));
            let crate::cli::Command::Agent(args) = cli.command else { panic!("{words:?}") };
            assert_eq!(call_of(&args.command), call, "{words:?}");
            assert_eq!(args.protocol, Some(crate::protocol::PROTOCOL_VERSION));
            assert_eq!(args.build.as_deref(), Some(crate::protocol::BUILD));
        }
    }
}
