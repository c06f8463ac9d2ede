//! `installer agent …`: the commands `installer run` starts ON each node, over SSH, as root.
//!
//! Owns the node side of every phase: `facts` (what preflight judges, as JSON), `receive`
//! (verified, resumable distribution, see [`receive`]), `prepare` (rootfs, containerd config,
//! sysctls, modules, swap, /etc/hosts, units), `registry-service` (the systemd unit running
//! `installer registry serve`), `check-pull` (containerd resolves and pulls a bundled image
//! through the mirror) and `record`/`state` (per-phase records under /var/lib/ferry/state/).
//! The operator side only sends data and small JSON plans; no long shell strings.

pub mod prepare;
pub mod receive;
pub mod relay;
pub mod service_route;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::node::{AGENT_PATH, FERRY_DIR, INSTALLER_PATH, STATE_DIR, trailer_id};

/// What preflight needs to know about a host.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Facts {
    /// Host name.
    pub hostname: String,
    /// `uname -m`.
    pub arch: String,
    /// Kernel release.
    pub kernel: String,
    /// PRETTY_NAME from /etc/os-release.
    pub os: String,
    /// Whether systemd is PID 1.
    pub systemd: bool,
    /// Online CPUs.
    pub cpus: u64,
    /// MemTotal in bytes.
    pub mem_bytes: u64,
    /// MAC addresses of non-loopback interfaces.
    pub macs: Vec<String>,
    /// /sys/class/dmi/id/product_uuid (empty when unreadable).
    pub product_uuid: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// Host clock, milliseconds since the epoch.
    pub time_ms: u64,
    /// Free bytes where /var/lib/ferry lives.
    pub disk_free: u64,
    /// Active swap in bytes.
    pub swap_bytes: u64,
    /// TCP ports in LISTEN state.
    pub listening: Vec<u16>,
    /// Who listens on each of those ports (`comm (pid N)`), where /proc tells.
    #[serde(default)]
    pub listeners: BTreeMap<u16, String>,
    /// Container runtimes or kubelets already present (paths or sockets).
    pub runtimes: Vec<String>,
    /// Tools from the asked list that are missing from PATH.
    pub tools_missing: Vec<String>,
    /// Trailer (hex SHA-256 of the last 128 bytes) of /var/lib/ferry/installer, if any.
    pub installer: Option<String>,
    /// Whether ferry's registry unit is active here.
    pub ferry_registry_active: bool,
    /// `v2` (unified hierarchy), `v1` (legacy or hybrid) or empty when unknown: what
    /// `stat -fc %T /sys/fs/cgroup` tells (cgroup2fs, tmpfs).
    #[serde(default)]
    pub cgroup: String,
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
    let uts = {
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: out-parameter.
        unsafe { libc::uname(&mut u) };
        let s = |f: &[libc::c_char]| unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned();
        (s(&u.nodename), s(&u.machine), s(&u.release))
    };
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default();
    let mem_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let mut macs = own_macs();
    macs.sort();
    macs.dedup();
    let swap_bytes = read("/proc/swaps")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2).and_then(|s| s.parse::<u64>().ok()))
        .sum::<u64>()
        * 1024;
    let mut runtimes = Vec::new();
    for p in [
        "/usr/bin/containerd",
        "/usr/local/bin/containerd",
        "/usr/bin/dockerd",
        "/usr/bin/crio",
        "/usr/bin/kubelet",
        "/usr/local/bin/kubelet",
        "/run/containerd/containerd.sock",
        "/var/run/docker.sock",
    ] {
        if Path::new(p).exists() {
            runtimes.push(p.to_string());
        }
    }
    let (listening, inodes) = listening_ports();
    let listeners = port_owners(&inodes);
    let ferry_registry_active = std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", "ferry-registry.service"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    Facts {
        hostname: uts.0,
        arch: uts.1,
        kernel: uts.2,
        os,
        systemd: Path::new("/run/systemd/system").is_dir(),
        cpus: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
        mem_bytes,
        macs,
        product_uuid: read("/sys/class/dmi/id/product_uuid").trim().to_string(),
        machine_id: read("/etc/machine-id").trim().to_string(),
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        disk_free: free_space(Path::new(FERRY_DIR)),
        swap_bytes,
        listening,
        listeners,
        runtimes,
        tools_missing: tools.iter().filter(|t| !in_path(t)).cloned().collect(),
        installer: trailer_id(Path::new(INSTALLER_PATH)),
        ferry_registry_active,
        cgroup: cgroup_version(Path::new("/sys/fs/cgroup")),
    }
}

/// One completed phase on one host. Holds no secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Cluster name.
    pub cluster: String,
    /// Phase name.
    pub phase: String,
    /// Installer build (trailer id).
    pub installer: String,
    /// Seconds since the epoch.
    pub completed: u64,
    /// Free-form details (bytes sent, warnings).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Writes a record atomically under /var/lib/ferry/state/<cluster>/<phase>.json.
pub fn record(root: &Path, rec: &Record) -> Result<()> {
    check_name(&rec.cluster)?;
    check_name(&rec.phase)?;
    let path = root.join(&rec.cluster).join(format!("{}.json", rec.phase));
    crate::registry::config::write_atomic(&path, serde_json::to_string_pretty(rec)?.as_bytes())
}

/// Every record of `cluster`.
pub fn state(root: &Path, cluster: &str) -> Result<BTreeMap<String, Record>> {
    check_name(cluster)?;
    let mut out = BTreeMap::new();
    let dir = root.join(cluster);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(r) = serde_json::from_slice::<Record>(&std::fs::read(&p)?)
            {
                out.insert(r.phase.clone(), r);
            }
        }
    }
    Ok(out)
}

fn check_name(s: &str) -> Result<()> {
    if s.is_empty() || s.starts_with('.') || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("`{s}` is not a valid name");
    }
    Ok(())
}

/// Entry point for `installer agent …`.
pub fn main(cmd: &crate::cli::AgentCommand) -> Result<()> {
    use crate::cli::AgentCommand as C;
    match cmd {
        C::Facts { tools } => {
            let tools: Vec<String> =
                tools.iter().flat_map(|t| t.split(',')).filter(|t| !t.is_empty()).map(String::from).collect();
            println!("{}", serde_json::to_string(&facts(&tools))?);
            Ok(())
        }
        C::Receive { dest, signer, allow_unsigned, relay_listen } => {
            let opts = receive::ReceiveOptions {
                dest: dest.clone(),
                signer: signer.clone(),
                allow_unsigned: *allow_unsigned,
                stub: PathBuf::from(crate::SELF_EXE),
                relay_listen: *relay_listen,
            };
            // A 1 MiB pipe from sshd instead of 64 KiB: fewer, larger reads and wake-ups while
            // chunks stream in. Not a pipe, or over the limit: stays as it is.
            // SAFETY: fcntl on stdin, which this process owns.
            unsafe { libc::fcntl(0, libc::F_SETPIPE_SZ, 1 << 20) };
            let stdin = std::io::stdin();
            // A small buffer: reads of a whole chunk then go straight from the pipe into the
            // chunk's buffer instead of through this one (one copy fewer per byte).
            let mut input = std::io::BufReader::with_capacity(64 << 10, stdin.lock());
            let mut out = std::io::stdout().lock();
            receive::receive(&mut input, &mut out, &opts).map(|_| ())
        }
        C::Prepare => {
            let mut plan = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut plan)?;
            let plan: prepare::Plan = serde_json::from_str(&plan).context("reading the prepare plan")?;
            let report = prepare::prepare(&plan)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        C::RegistryService { port, allow_unsigned } => prepare::registry_service(*port, *allow_unsigned),
        C::CheckPull { image, timeout, endpoints } => prepare::check_pull(image, endpoints, *timeout),
        C::Record { cluster, phase, installer } => {
            let mut detail = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut detail)?;
            let detail = serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null);
            let completed =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            record(
                Path::new(STATE_DIR),
                &Record {
                    cluster: cluster.clone(),
                    phase: phase.clone(),
                    installer: installer.clone(),
                    completed,
                    detail,
                },
            )
        }
        C::State { cluster } => {
            println!("{}", serde_json::to_string(&state(Path::new(STATE_DIR), cluster)?)?);
            Ok(())
        }
    }
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
            detail: serde_json::json!({"bytes": 5}),
        };
        record(d.path(), &r).unwrap();
        assert_eq!(state(d.path(), "lab").unwrap()["distribute"], r);
        assert!(record(d.path(), &Record { cluster: "../x".into(), ..r }).is_err());
    }
}
