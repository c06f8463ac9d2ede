//! `agent prepare`, `agent registry-service`, `agent check-pull`: node preparation, run from
//! the node's own copy of the installer (/var/lib/ferry/installer), every file written
//! atomically and left alone when already right, so a re-run changes nothing.

pub use crate::protocol::{PreparePlan as Plan, PrepareReport as Report};

use super::kernel::module_present;
use super::service_route::{CommandError, RouteError, sh};
use crate::node::{FERRY_DIR, INSTALLER_PATH, REGISTRY_TLS_DIR};
use crate::printer::error_chain;
use crate::protocol::access::{Credential, PullAccess, ServingMaterial};
use crate::registry::RegistryError;
use crate::registry::config::{ConfigError, Containerd, OomRestriction, write_atomic};
use crate::registry::{pki, tls};
use ferry_core::verify::OpenError;
use payload_format::Payload;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel settings Kubernetes nodes need.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("vm.overcommit_memory", "1"),
    ("kernel.panic", "10"),
    ("fs.inotify.max_user_instances", "8192"),
];
/// Modules they need.
pub const MODULES: &[&str] = &["overlay", "br_netfilter"];

/// Why a file of the node could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A directory of the extracted tree cannot be listed.
    #[error("reading {}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A directory of the node cannot be created.
    #[error("creating {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file (or its temporary twin) cannot be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The temporary twin cannot be renamed over the file.
    #[error("installing {}", path.display())]
    Install {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Reading the extracted file, its mode or its link target failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The atomic write failed (and the file did not exist to be written in place).
    #[error(transparent)]
    Atomic(#[from] ConfigError),
}

/// Why `agent prepare` or `agent registry-service` stopped.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The node's copy of the installer cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The rootfs and files cannot be extracted into the staging directory.
    #[error("extracting the rootfs and files")]
    Extract(#[source] payload_format::Error),
    /// An extracted tree cannot be laid onto the node.
    #[error("installing the bundle's {tree}")]
    InstallTree {
        /// `rootfs` or `files`.
        tree: &'static str,
        /// Why.
        source: FileError,
    },
    /// A configuration file or unit cannot be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// systemctl (or another program) failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A sysctl Kubernetes cannot do without cannot be set.
    #[error("setting sysctl {key}={value}: {cause}")]
    Sysctl {
        /// The key.
        key: &'static str,
        /// The value.
        value: &'static str,
        /// The kernel's refusal (part of the message).
        cause: io::Error,
    },
    /// The Service subnet cannot be routed.
    #[error("routing the Service subnet")]
    Route(#[source] RouteError),
    /// The bundle's pause image cannot be worked out.
    #[error("choosing containerd's sandbox (pause) image")]
    SandboxImage(#[source] ConfigError),
    /// containerd's files cannot be written.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// `systemctl is-active` could not be run.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// containerd is not running after its restart.
    #[error("containerd did not start: {journal}")]
    ContainerdDown {
        /// The last lines of its journal.
        journal: String,
    },
    /// The registry's certificate, key or credential digest cannot be written, or its CA loaded.
    #[error("installing the registry's TLS files in {dir}")]
    RegistryTls {
        /// The directory.
        dir: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry service did not answer in time.
    #[error("the registry did not answer on port {port} over TLS within 30 s (last: {last}): {journal}")]
    RegistryDown {
        /// Its port.
        port: u16,
        /// The last probe's answer or failure.
        last: String,
        /// The last lines of its journal.
        journal: String,
    },
}

/// Why `agent check-pull` failed.
#[derive(Debug, thiserror::Error)]
pub enum PullCheckError {
    /// A replica does not answer the manifest request with 200.
    #[error("registry replica {endpoint} does not serve {image} to this node")]
    Replica {
        /// The replica.
        endpoint: String,
        /// The image.
        image: String,
        /// Why.
        source: ReplicaError,
    },
    /// ctr could not be run.
    #[error("running ctr")]
    Ctr(#[source] io::Error),
    /// containerd could not pull the image.
    #[error("containerd could not pull {image} through the built-in registry: {tail}")]
    Pull {
        /// The image.
        image: String,
        /// The last lines of ctr's stderr.
        tail: String,
    },
}

/// Why a replica did not serve an image's manifest.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The built-in registry is asked over TLS only.
    #[error("only https:// replicas can be checked directly, not {endpoint}")]
    NotHttps {
        /// The replica.
        endpoint: String,
    },
    /// The image reference has no repository.
    #[error("image `{image}` has no repository")]
    NoRepository {
        /// The image.
        image: String,
    },
    /// The image reference has neither tag nor digest.
    #[error("image `{image}` has no tag")]
    NoTag {
        /// The image.
        image: String,
    },
    /// The cluster CA given to this node does not load.
    #[error(transparent)]
    Tls(Box<crate::registry::tls::TlsError>),
    /// Connecting, the TLS handshake (the certificate checked against the cluster CA), sending or
    /// reading failed.
    #[error("asking {addr} over TLS")]
    Request {
        /// `host:port`.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// It answered, but not 200.
    #[error("it answered `{status}`")]
    Answered {
        /// Its status line.
        status: String,
    },
}

/// Writes `text` unless the file already holds exactly it.
fn put(path: &Path, text: &[u8], report: &mut Report) -> Result<(), FileError> {
    if std::fs::read(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    match write_atomic(path, text) {
        Ok(()) => {}
        // A bind-mounted file (e.g. /etc/hosts in containers) cannot be replaced by rename; the
        // write in place below reports its own failure, which then is the one that matters.
        Err(_) if path.exists() => {
            std::fs::write(path, text).map_err(|source| FileError::Write { path: path.to_path_buf(), source })?
        }
        Err(e) => return Err(e.into()),
    }
    report.changed.push(path.display().to_string());
    Ok(())
}

/// Lays an extracted tree (`rootfs/`, `files/`) onto `root`, file by file, skipping identical files.
fn install_tree(src: &Path, dst: &Path, report: &mut Report) -> Result<(), FileError> {
    let entries = std::fs::read_dir(src).map_err(|source| FileError::ReadDir { path: src.to_path_buf(), source })?;
    for e in entries {
        let e = e?;
        let ft = e.file_type()?;
        let from = e.path();
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            if !to.exists() {
                std::fs::create_dir_all(&to).map_err(|source| FileError::CreateDir { path: to.clone(), source })?;
            }
            install_tree(&from, &to, report)?;
        } else if ft.is_symlink() {
            install_symlink(&from, &to, report)?;
        } else {
            install_file(&from, &to, report)?;
        }
    }
    Ok(())
}

/// Points `to` where the extracted link `from` points, unless it already does.
fn install_symlink(from: &Path, to: &Path, report: &mut Report) -> Result<(), FileError> {
    let target = std::fs::read_link(from)?;
    if std::fs::read_link(to).ok() == Some(target.clone()) {
        return Ok(());
    }
    let tmp = temp_beside(to);
    // A leftover of an interrupted run; if it cannot go, creating the link below says why.
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)?;
    std::fs::rename(&tmp, to).map_err(|source| FileError::Install { path: to.to_path_buf(), source })?;
    report.changed.push(to.display().to_string());
    Ok(())
}

/// Copies the extracted file `from` to `to` with its mode, unless `to` already is the same.
fn install_file(from: &Path, to: &Path, report: &mut Report) -> Result<(), FileError> {
    let new = std::fs::read(from)?;
    let mode = std::fs::metadata(from)?.permissions();
    let same = std::fs::read(to).ok().as_deref() == Some(&new[..])
        && std::fs::metadata(to).map(|m| m.permissions() == mode).unwrap_or(false);
    if same {
        return Ok(());
    }
    // Rename, never write in place: a running binary (containerd) is replaced, not overwritten
    // (which would fail with ETXTBSY).
    let tmp = temp_beside(to);
    std::fs::write(&tmp, &new).map_err(|source| FileError::Write { path: tmp.clone(), source })?;
    std::fs::set_permissions(&tmp, mode)?;
    std::fs::rename(&tmp, to).map_err(|source| FileError::Install { path: to.to_path_buf(), source })?;
    report.changed.push(to.display().to_string());
    Ok(())
}

/// The temporary name `to` is installed through: hidden, in the same directory, so the rename
/// that puts it in place is atomic.
fn temp_beside(to: &Path) -> PathBuf {
    to.with_file_name(format!(".{}.ferry-tmp", to.file_name().unwrap_or_default().to_string_lossy()))
}

fn hosts_block(existing: &str, entries: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in existing.lines() {
        if line == "# BEGIN ferry" {
            skipping = true;
        } else if line == "# END ferry" {
            skipping = false;
        } else if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# BEGIN ferry\n");
    for (ip, name) in entries {
        out.push_str(&format!("{ip} {name}\n"));
    }
    out.push_str("# END ferry\n");
    out
}

fn fstab_without_swap(text: &str) -> String {
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if !l.trim_start().starts_with('#') && f.len() >= 3 && f[2] == "swap" {
                format!("# {l}  # disabled by ferry: kubelet needs swap off")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Runs every preparation step.
pub fn prepare(plan: &Plan) -> Result<Report, PrepareError> {
    let mut report = Report::default();
    let root = &plan.root;
    let payload = crate::verify::open_payload(Path::new(crate::SELF_EXE))?;
    if plan.containerd_only {
        // containerd reads hosts.toml on each pull; config.toml waits for the node's own
        // restart, so running containers are not disturbed here.
        configure_containerd(plan, &payload, &mut report)?;
        return Ok(report);
    }
    install_bundle_trees(&payload, root, &mut report)?;
    let systemd = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
    if systemd {
        sh("systemctl", &["daemon-reload"])?;
    }
    load_modules(root, &mut report)?;
    persist_sysctls(root, &mut report)?;
    if root == Path::new("/") {
        apply_sysctls(&mut report)?;
        swap_off_now(&mut report);
    }
    if systemd && let (Some(cidr), Some(ip)) = (&plan.service_subnet, &plan.node_ip) {
        route_service_subnet(root, cidr, ip, &mut report)?;
    }
    swap_off_in_fstab(root, &mut report)?;
    write_hosts(root, &plan.hosts_entries, &mut report)?;
    if !plan.registry_endpoints.is_empty() {
        configure_containerd(plan, &payload, &mut report)?;
        if systemd {
            start_containerd(&report)?;
        }
    }
    Ok(report)
}

/// Step 1, rootfs and spec.files: extracts them (verified) into a staging directory, then lays
/// each onto `root`, file by file through a temporary name, modes kept.
fn install_bundle_trees(payload: &Payload, root: &Path, report: &mut Report) -> Result<(), PrepareError> {
    let stage = Path::new(FERRY_DIR).join("stage");
    // What an earlier run left; the extraction below overwrites whatever of it remains.
    let _ = std::fs::remove_dir_all(&stage);
    let trees: Vec<&str> = ["rootfs", "files"]
        .into_iter()
        .filter(|t| payload.index().entries.iter().any(|e| e.path.starts_with(&format!("{t}/"))))
        .collect();
    if trees.is_empty() {
        return Ok(());
    }
    let opts = payload_format::ExtractOptions {
        dest: stage.clone(),
        selection: trees.iter().map(|t| t.to_string()).collect(),
        force: true,
    };
    payload.extract(&opts, &|_| {}).map_err(PrepareError::Extract)?;
    for &tree in &trees {
        install_tree(&stage.join(tree), root, report).map_err(|source| PrepareError::InstallTree { tree, source })?;
    }
    // Everything is installed; what is left is a second copy of the trees taking disk space.
    if let Err(e) = std::fs::remove_dir_all(&stage)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        report.warnings.push(format!("the staging directory {} was not removed: {e}", stage.display()));
    }
    Ok(())
}

/// Step 2, modules: built in or loaded counts; modprobe only when neither. Persisted for boot.
fn load_modules(root: &Path, report: &mut Report) -> Result<(), FileError> {
    let mut modules_conf = String::from("# Written by ferry.\n");
    for m in MODULES {
        modules_conf.push_str(&format!("{m}\n"));
        if !module_present(m) && Command::new("modprobe").arg(m).status().map(|s| !s.success()).unwrap_or(true) {
            report.warnings.push(format!("kernel module {m} is neither loaded nor built in, and modprobe failed"));
        }
    }
    put(&root.join("etc/modules-load.d/ferry.conf"), modules_conf.as_bytes(), report)
}

/// Step 3a: the sysctls, persisted for boot.
fn persist_sysctls(root: &Path, report: &mut Report) -> Result<(), FileError> {
    let mut conf = String::from("# Written by ferry.\n");
    for (k, v) in SYSCTLS {
        conf.push_str(&format!("{k} = {v}\n"));
    }
    put(&root.join("etc/sysctl.d/99-ferry.conf"), conf.as_bytes(), report)
}

/// Step 3b: the sysctls, applied now. EPERM/EROFS on non-net keys happen in containers whose
/// kernel settings belong to the host; that is tolerated, not hidden.
fn apply_sysctls(report: &mut Report) -> Result<(), PrepareError> {
    for (k, v) in SYSCTLS {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        if std::fs::read_to_string(&p).map(|c| c.trim() == *v).unwrap_or(false) {
            continue;
        }
        if let Err(e) = std::fs::write(&p, v) {
            let tolerated = !k.starts_with("net.") || (k.starts_with("net.bridge.") && !module_present("br_netfilter"));
            if tolerated {
                report.warnings.push(format!("sysctl {k}={v} not applied here ({e})"));
            } else {
                return Err(PrepareError::Sysctl { key: k, value: v, cause: e });
            }
        }
    }
    Ok(())
}

/// Step 4a: swap off now. A failure is reported, not fatal: the kubelet's own check decides.
fn swap_off_now(report: &mut Report) {
    if std::fs::read_to_string("/proc/swaps").map(|s| s.lines().count() > 1).unwrap_or(false)
        && let Err(e) = sh("swapoff", &["-a"])
    {
        report.warnings.push(format!("swapoff: {}", error_chain(&e)));
    }
}

/// Step 4b: a route to the Service subnet where the host has none (no default route).
fn route_service_subnet(root: &Path, cidr: &str, ip: &str, report: &mut Report) -> Result<(), PrepareError> {
    let units = root.join("etc/systemd/system");
    if let Some(done) = super::service_route::ensure(&units, cidr, ip).map_err(PrepareError::Route)? {
        report.changed.push(done);
    }
    Ok(())
}

/// Step 4c: swap stays off after a reboot.
fn swap_off_in_fstab(root: &Path, report: &mut Report) -> Result<(), FileError> {
    let fstab = root.join("etc/fstab");
    if let Ok(text) = std::fs::read_to_string(&fstab) {
        let fixed = fstab_without_swap(&text);
        if fixed != text {
            put(&fstab, fixed.as_bytes(), report)?;
        }
    }
    Ok(())
}

/// Step 5, /etc/hosts: one managed block.
fn write_hosts(root: &Path, entries: &[(String, String)], report: &mut Report) -> Result<(), FileError> {
    let hosts = root.join("etc/hosts");
    let text = std::fs::read_to_string(&hosts).unwrap_or_default();
    put(&hosts, hosts_block(&text, entries).as_bytes(), report)
}

/// Step 6a, containerd: config.toml and hosts.toml from the registry module; /etc/containerd is
/// listed as changed when anything under it did.
fn configure_containerd(plan: &Plan, payload: &Payload, report: &mut Report) -> Result<(), PrepareError> {
    let root = &plan.root;
    // No answer (containerd missing or broken) means the 1.7 dialect; a containerd that cannot
    // run is reported when it is (re)started.
    let version = sh("containerd", &["--version"]).unwrap_or_default();
    let containerd = if version.split_whitespace().nth(2).is_some_and(|v| v.trim_start_matches('v').starts_with('2')) {
        Containerd::V2
    } else {
        Containerd::V1_7
    };
    let out = root.join("etc/containerd");
    let before = snapshot(&out);
    let meta = &payload.index().metadata;
    let sandbox = crate::registry::config::bundle_pause_image(meta).map_err(PrepareError::SandboxImage)?;
    // Asked once: the choice goes into containerd's config and, when it restricts, the report.
    let restrict_oom = !crate::registry::config::host_can_lower_oom_scores();
    let args = crate::cli::RegistryConfigArgs {
        endpoints: plan.registry_endpoints.clone(),
        out: out.clone(),
        containerd,
        config_path: out.join("certs.d").display().to_string(),
        sandbox_image: Some(sandbox),
        restrict_oom_score_adj: if restrict_oom { OomRestriction::Yes } else { OomRestriction::No },
        file: PathBuf::from(crate::SELF_EXE),
        trust: crate::cli::TrustArgs { keys: Vec::new(), allow_unsigned: plan.allow_unsigned },
        // The CA and credential come from the plan, not from files.
        ca_file: None,
        credential_file: None,
    };
    let printer = crate::printer::Printer::new(true, true);
    crate::registry::config_with(&args, plan.registry_access.clone(), &printer)?;
    if restrict_oom {
        report.warnings.push(
            "root cannot lower OOM scores here (no CAP_SYS_RESOURCE): containerd keeps containers' OOM scores \
             at or above its own (restrict_oom_score_adj), so pods lose the kubelet's OOM protection"
                .into(),
        );
    }
    if snapshot(&out) != before {
        report.changed.push(out.display().to_string());
    }
    Ok(())
}

/// Step 6b: containerd enabled, and (re)started when its config or binaries changed (the report
/// lists a changed path naming containerd) or it is not running.
fn start_containerd(report: &Report) -> Result<(), PrepareError> {
    sh("systemctl", &["enable", "containerd.service"])?;
    let active = Command::new("systemctl").args(["is-active", "--quiet", "containerd.service"]).status()?.success();
    if !active || report.changed.iter().any(|c| c.contains("containerd")) {
        sh("systemctl", &["restart", "containerd.service"])?;
    }
    let active = Command::new("systemctl").args(["is-active", "--quiet", "containerd.service"]).status()?.success();
    if !active {
        // The journal only explains the failure; without it the failure is still reported.
        let journal = sh("journalctl", &["-u", "containerd", "-n", "5", "--no-pager"]).unwrap_or_default();
        return Err(PrepareError::ContainerdDown { journal });
    }
    Ok(())
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
                }
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// Installs and starts `ferry-registry.service` serving this node's installer over TLS with
/// `material` (written to [`REGISTRY_TLS_DIR`], key and digest 0600; never on a command line).
pub fn registry_service(port: u16, allow_unsigned: bool, material: &ServingMaterial) -> Result<(), PrepareError> {
    let unit = format!(
        "# Written by ferry: the built-in registry, served straight from the installer file over TLS.\n\
         [Unit]\nDescription=ferry built-in image registry\nAfter=network-online.target\n\n\
         [Service]\nExecStart={INSTALLER_PATH} --no-progress registry serve --listen 0.0.0.0:{port} --file {INSTALLER_PATH} --tls-dir {REGISTRY_TLS_DIR}{}\n\
         Restart=always\nRestartSec=2\nNoNewPrivileges=yes\n\n[Install]\nWantedBy=multi-user.target\n",
        if allow_unsigned { " --allow-unsigned" } else { "" }
    );
    let path = Path::new("/etc/systemd/system/ferry-registry.service");
    let mut report = Report::default();
    put(path, unit.as_bytes(), &mut report)?;
    let tls_error =
        |source: Box<dyn std::error::Error + Send + Sync>| PrepareError::RegistryTls { dir: REGISTRY_TLS_DIR, source };
    let tls_changed = pki::write_tls_dir(Path::new(REGISTRY_TLS_DIR), material).map_err(|e| tls_error(e.into()))?;
    let probe = tls::client_config(&material.ca_pem).map_err(|e| tls_error(e.into()))?;
    // The unit also changes meaning when the installer file under it was replaced. An installer
    // without a readable trailer has no id: the marker never matches it, so the service restarts.
    let id = crate::node::trailer_id(Path::new(INSTALLER_PATH)).unwrap_or_default();
    let marker = Path::new(FERRY_DIR).join("registry.serving");
    let stale = std::fs::read_to_string(&marker).unwrap_or_default() != id;
    sh("systemctl", &["daemon-reload"])?;
    sh("systemctl", &["enable", "ferry-registry.service"])?;
    let active = Command::new("systemctl").args(["is-active", "--quiet", "ferry-registry.service"]).status()?.success();
    if !report.changed.is_empty() || tls_changed || stale || !active {
        sh("systemctl", &["restart", "ferry-registry.service"])?;
    }
    write_atomic(&marker, id.as_bytes()).map_err(FileError::from)?;
    wait_for_registry(port, probe)
}

/// Waits up to 30 s for the registry on `port` to answer `GET /v2/` over TLS, its certificate
/// checked against the cluster CA, with 401: serving, and refusing a request without the
/// credential (this host keeps only the credential's digest, so it cannot ask with it).
fn wait_for_registry(port: u16, probe: std::sync::Arc<rustls::ClientConfig>) -> Result<(), PrepareError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let addr = format!("127.0.0.1:{port}");
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    loop {
        let last = match tls::status_line(&addr, "127.0.0.1", probe.clone(), &request) {
            Ok(status) if status.split_whitespace().nth(1) == Some("401") => return Ok(()),
            Ok(status) => format!("it answered `{status}`"),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() > deadline {
            let journal = sh("journalctl", &["-u", "ferry-registry", "-n", "5", "--no-pager"]).unwrap_or_default();
            return Err(PrepareError::RegistryDown { port, last, journal });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Proves this node resolves `image` through every replica in `endpoints` (a manifest request
/// to each over TLS with the credential, as containerd would send it), then pulls it through
/// containerd with the node's hosts.toml.
pub fn check_pull(image: &str, endpoints: &[String], timeout: u64, access: &PullAccess) -> Result<(), PullCheckError> {
    let replica_error =
        |e: &String, source| PullCheckError::Replica { endpoint: e.clone(), image: image.to_string(), source };
    let config = tls::client_config(&access.ca_pem)
        .map_err(|source| replica_error(&endpoints.join(", "), ReplicaError::Tls(Box::new(source))))?;
    for e in endpoints {
        manifest_served(e, image, config.clone(), access).map_err(|source| replica_error(e, source))?;
    }
    let out = Command::new("timeout")
        .args([
            &timeout.to_string(),
            "ctr",
            "-n",
            "k8s.io",
            "images",
            "pull",
            "--hosts-dir",
            "/etc/containerd/certs.d",
            image,
        ])
        .output()
        .map_err(PullCheckError::Ctr)?;
    if !out.status.success() {
        return Err(PullCheckError::Pull {
            image: image.to_string(),
            tail: crate::ssh::tail_lines(&String::from_utf8_lossy(&out.stderr), 3),
        });
    }
    Ok(())
}

/// The manifest request containerd sends a mirror for `image`, with the credential:
/// `HEAD /v2/<name>/manifests/<ref>?ns=<registry>`. Returns the replica's `host:port` and the
/// request, which holds the credential and so is never shown.
fn manifest_request(endpoint: &str, image: &str, credential: &Credential) -> Result<(String, String), ReplicaError> {
    let Some(addr) = endpoint.strip_prefix("https://") else {
        return Err(ReplicaError::NotHttps { endpoint: endpoint.to_string() });
    };
    let full = ferry_core::image_ref::ImageRef::normalized_or_raw(image);
    let (registry, rest) =
        full.split_once('/').ok_or_else(|| ReplicaError::NoRepository { image: image.to_string() })?;
    let (name, reference) = match rest.split_once('@') {
        Some((n, d)) => (n, d),
        None => rest.rsplit_once(':').ok_or_else(|| ReplicaError::NoTag { image: image.to_string() })?,
    };
    let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
    let req = format!(
        "HEAD /v2/{name}/manifests/{reference}?ns={registry} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nAuthorization: {}\r\n\r\n",
        credential.basic_header().expose()
    );
    Ok((addr.to_string(), req))
}

fn manifest_served(
    endpoint: &str,
    image: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    access: &PullAccess,
) -> Result<(), ReplicaError> {
    let (addr, req) = manifest_request(endpoint, image, &access.credential)?;
    let status = tls::status_line(&addr, tls::host_of(&addr), config, &req)
        .map_err(|source| ReplicaError::Request { addr: addr.clone(), source })?;
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ReplicaError::Answered { status });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_block_is_replaced_not_appended() {
        let e = vec![("10.0.0.1".to_string(), "apiserver.cluster.local".to_string())];
        let once = hosts_block("127.0.0.1 localhost\n", &e);
        assert_eq!(hosts_block(&once, &e), once);
        assert!(once.starts_with("127.0.0.1 localhost\n# BEGIN ferry\n10.0.0.1 apiserver.cluster.local\n"));
    }

    #[test]
    fn manifest_request_as_containerd_sends_it() {
        let c = Credential { username: "ferry".into(), password: crate::protocol::access::Secret::new("pw") };
        let (addr, req) = manifest_request("https://10.0.0.1:5050", "app:1", &c).unwrap();
        assert_eq!(addr, "10.0.0.1:5050");
        assert!(
            req.starts_with("HEAD /v2/library/app/manifests/1?ns=docker.io HTTP/1.0\r\nHost: 10.0.0.1:5050\r\n"),
            "{req}"
        );
        assert!(req.ends_with("Authorization: Basic ZmVycnk6cHc=\r\n\r\n"), "{req}");
        let (_, req) = manifest_request("https://r:1", "quay.io/a/b@sha256:00", &c).unwrap();
        assert!(req.starts_with("HEAD /v2/a/b/manifests/sha256:00?ns=quay.io "), "{req}");
        let err = manifest_request("http://r:1", "app:1", &c).unwrap_err().to_string();
        assert!(err.contains("https://"), "never the credential in the clear: {err}");
    }

    #[test]
    fn fstab_swap_commented() {
        let t = "UUID=x / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n";
        let f = fstab_without_swap(t);
        assert!(f.contains("# /swapfile none swap"));
        assert_eq!(fstab_without_swap(&f), f);
    }
}
