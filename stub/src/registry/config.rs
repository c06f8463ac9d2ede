//! `registry config`: the node files that point containerd at the built-in registry.
//!
//! * `certs.d/<registry>/hosts.toml` for every registry the bundle carries images from, plus
//!   `certs.d/_default/hosts.toml`. `server` is the built-in registry, never the upstream: when
//!   `server` is omitted containerd falls back to the image's own registry, which on an air-gapped
//!   node is a doomed DNS/TLS attempt. Each endpoint (replicas, in the order given) is a
//!   `[host."URL"]` table with pull and resolve capabilities; containerd tries them in file order,
//!   then `server`. Per-registry copies exist because `_default` is only read when no
//!   registry-specific directory exists (and containerd before 1.6.17 has no `_default`).
//!   With the cluster's [`PullAccess`] (how `run` configures nodes), endpoints are https: each
//!   directory gets the cluster CA as `ca.crt`, named by `ca` for `server` and every `[host]`
//!   (it is the only root containerd trusts for them), and an `authorization` header carrying
//!   the pull credential; such hosts.toml files are written 0600, as they hold the credential.
//! * `config.toml` for containerd 1.7 (config version 2) or 2.x (version 3) with `config_path`,
//!   `SystemdCgroup = true` (kubeadm's kubelets use the systemd cgroup driver) and the sandbox
//!   image pinned to the pause image kubeadm expects for the bundle's Kubernetes version (the
//!   kubelet flag for it is gone since 1.35; containerd's setting is the only one that counts).
//!   That image is the one the packer recorded from the bundle's own control-plane list
//!   ([`bundle_pause_image`]); the table here only serves bundles that lack the record.
//!   Where root on the node cannot lower OOM scores (no `CAP_SYS_RESOURCE`, as in some container
//!   hosts), `restrict_oom_score_adj` keeps every container's OOM score at or above containerd's
//!   own; otherwise runc fails to start each pod's sandbox, which the kubelet gives -998.
//!
//! Every file is written atomically (temporary name, fsync, rename).

use crate::protocol::access::PullAccess;
use ferry_core::fs::WriteError;
use ferry_core::metadata::PauseError;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why `registry config` cannot write containerd's files, or a node file cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bundle's recorded pause image is not an image reference.
    #[error(transparent)]
    RecordedPause(#[from] PauseError),
    /// The bundle's Kubernetes version does not read as v1.MINOR.
    #[error(
        "Kubernetes version `{version}` is not of the form v1.MINOR.PATCH; pass --sandbox-image to name the pause image"
    )]
    VersionForm {
        /// The version as the bundle gives it.
        version: String,
    },
    /// A Kubernetes minor version the pause table does not cover.
    #[error(
        "ferry does not know which pause image kubeadm v1.{minor} expects (it knows {known}); \
         pass --sandbox-image registry.k8s.io/pause:<version> as listed by `kubeadm config images list`"
    )]
    UnknownMinor {
        /// The minor version.
        minor: u32,
        /// The range the table covers, e.g. `v1.31–v1.37`.
        known: String,
    },
    /// An `--endpoint` without a scheme.
    #[error("endpoint `{url}` must start with http:// or https://")]
    EndpointScheme {
        /// The endpoint as given.
        url: String,
    },
    /// An `--endpoint` with more than a scheme and host.
    #[error(
        "endpoint `{url}` must be a scheme, host[:port] and optionally the prefix images were pushed under, e.g. \
         http://10.0.0.10:5000 or https://registry.site:5000/platform (lowercase path components; containerd adds /v2 itself)"
    )]
    EndpointForm {
        /// The endpoint as given.
        url: String,
    },
    /// A registry of the bundle that cannot be a certs.d directory name.
    #[error("registry `{registry}` in the bundle's image list is not a host name")]
    HostDir {
        /// The registry.
        registry: String,
    },
    /// A CA or credential for an endpoint that would carry it in the clear.
    #[error(
        "endpoint `{url}` is plain HTTP: the registry's CA and credential need https:// endpoints (the credential would cross the network in the clear)"
    )]
    CredentialInClear {
        /// The endpoint as given.
        url: String,
    },
    /// `--ca-file` or `--credential-file` cannot be read or does not hold what it should.
    #[error("{}: {problem}", path.display())]
    AccessFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never its content).
        problem: String,
    },
    /// No `--endpoint` at all.
    #[error("give at least one --endpoint URL of the built-in registry")]
    NoEndpoints,
    /// The directory of a file to write cannot be created.
    #[error("creating directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file itself cannot be written.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The pause image kubeadm expects, by Kubernetes minor version: kubeadm's `PauseVersion` in
/// `cmd/kubeadm/app/constants/constants.go` (3.10 in 1.31–1.33, 3.10.1 in 1.34–1.35, 3.10.2 in
/// 1.36–1.37). Only a fallback: bundles record the pause image of their own control-plane list
/// (see [`bundle_pause_image`]). Extend it when a new minor is supported.
const PAUSE_BY_MINOR: &[(u32, u32, &str)] = &[
    (31, 33, "registry.k8s.io/pause:3.10"),
    (34, 35, "registry.k8s.io/pause:3.10.1"),
    (36, 37, "registry.k8s.io/pause:3.10.2"),
];

/// The index metadata key where the packer records the bundle's control-plane images
/// (`ferry_core::metadata::ControlPlaneRecord`).
pub const CONTROL_PLANE_KEY: &str = ferry_core::metadata::key::CONTROL_PLANE;

/// The pause image of the bundle: the one recorded in its metadata under [`CONTROL_PLANE_KEY`]
/// (from the bundle's kubeadm, or the packer's table), else kubeadm's for the bundle's version
/// from [`kubeadm_pause_image`].
pub fn bundle_pause_image(meta: &payload_format::BundleMetadata) -> Result<String, ConfigError> {
    match ferry_core::metadata::recorded_pause(&meta.extra)? {
        Some(p) => Ok(p),
        None => Ok(kubeadm_pause_image(&meta.kubernetes_version)?.to_string()),
    }
}

/// The pause image kubeadm uses for Kubernetes `version` (`v1.36.3`, `1.36`, …).
pub fn kubeadm_pause_image(version: &str) -> Result<&'static str, ConfigError> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor =
        parts.next().and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next()).and_then(|p| p.parse::<u32>().ok());
    let known = format!(
        "v1.{}–v1.{}",
        PAUSE_BY_MINOR.first().map(|r| r.0).unwrap_or(0),
        PAUSE_BY_MINOR.last().map(|r| r.1).unwrap_or(0)
    );
    let (Some(1), Some(minor)) = (major, minor) else {
        return Err(ConfigError::VersionForm { version: version.to_string() });
    };
    PAUSE_BY_MINOR
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&minor))
        .map(|r| r.2)
        .ok_or(ConfigError::UnknownMinor { minor, known })
}

/// containerd major line the config.toml is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// containerd 1.7 (and 1.6): config version 2, `io.containerd.grpc.v1.cri`.
    V1_7,
    /// containerd 2.x: config version 3, `io.containerd.cri.v1.images` / `.runtime`.
    V2,
}

impl std::str::FromStr for Containerd {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.7" | "1.6" | "1" => Ok(Containerd::V1_7),
            "2" | "2.0" | "2.1" | "2.2" | "2.x" => Ok(Containerd::V2),
            _ => Err(format!("containerd version `{s}` is not supported: use 1.7 or 2")),
        }
    }
}

/// Everything the generated files depend on.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// Built-in registry URLs, first is `server`; all are `[host]` tables in this order.
    pub endpoints: Vec<String>,
    /// Registries in the bundle (normalised, e.g. `docker.io`).
    pub registries: BTreeSet<String>,
    /// Which config.toml dialect.
    pub containerd: Containerd,
    /// Where certs.d will live on the node.
    pub config_path: String,
    /// The pause image to pin.
    pub sandbox_image: String,
    /// `name version` of the bundle, for the header comment.
    pub bundle: String,
    /// Keep containers' OOM scores at or above containerd's own (see [`host_can_lower_oom_scores`]).
    pub restrict_oom_score_adj: bool,
    /// The cluster CA and pull credential; `None` for a plain-HTTP registry.
    pub access: Option<PullAccess>,
}

/// One file `registry config` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFile {
    /// Relative to `--out`.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
    /// Its mode before the umask: 0600 where it holds the credential, else world-readable.
    pub mode: u32,
}

/// Whether `restrict_oom_score_adj` is set: `auto` asks this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OomRestriction {
    /// Restrict when this machine's root cannot lower OOM scores.
    Auto,
    /// Always restrict.
    Yes,
    /// Never restrict.
    No,
}

/// `CAP_SYS_RESOURCE`'s bit in `/proc/PID/status` capability masks.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process may lower OOM scores (`oom_score_adj` below its current minimum), which
/// needs `CAP_SYS_RESOURCE` in its effective set. Unknown (no /proc) counts as yes: a real node.
pub fn host_can_lower_oom_scores() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return true };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Checks an endpoint URL: http or https, a host with optional port, and optionally the path
/// prefix the images were pushed under (`registry push --to HOST/PREFIX`); no query or userinfo.
pub fn check_endpoint(url: &str) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::EndpointScheme { url: url.to_string() })?;
    let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if host.is_empty()
        || host.contains(['?', '#', '@', '"', '\\', ' '])
        || (!prefix.is_empty() && (prefix == "v2" || prefix.starts_with("v2/") || !prefix.split('/').all(component_ok)))
    {
        return Err(ConfigError::EndpointForm { url: url.to_string() });
    }
    Ok(url.to_string())
}

/// How containerd is to reach an endpoint: the URL for `hosts.toml` and whether it carries the
/// API root itself (`override_path`). A prefixed endpoint `https://reg/PREFIX` serves image
/// `library/app` at `/v2/PREFIX/library/app`, which containerd reaches only with the path
/// given whole (without `override_path` it would ask `/PREFIX/v2/library/app`).
fn containerd_host(endpoint: &str) -> (String, bool) {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
    match rest.split_once('/') {
        Some((host, prefix)) => (format!("{scheme}://{host}/v2/{prefix}"), true),
        None => (endpoint.to_string(), false),
    }
}

/// containerd's directory name for a registry host (`host:port` stays as is on Linux).
fn host_dir(registry: &str) -> Result<&str, ConfigError> {
    if registry.is_empty()
        || registry.starts_with('.')
        || registry.contains(['/', '\\', '\0'])
        || registry == "_default"
    {
        return Err(ConfigError::HostDir { registry: registry.to_string() });
    }
    Ok(registry)
}

/// Renders every file, paths relative to `--out`.
pub fn render(inputs: &Inputs) -> Result<Vec<NodeFile>, ConfigError> {
    if inputs.endpoints.is_empty() {
        return Err(ConfigError::NoEndpoints);
    }
    if inputs.access.is_some()
        && let Some(url) = inputs.endpoints.iter().find(|e| !e.starts_with("https://"))
    {
        return Err(ConfigError::CredentialInClear { url: url.clone() });
    }
    let mut dirs: Vec<(&str, String)> = Vec::new();
    for registry in &inputs.registries {
        dirs.push((host_dir(registry)?, format!("{registry} images")));
    }
    dirs.push(("_default", "images of every other registry".into()));
    let hosts_mode = if inputs.access.is_some() { 0o600 } else { 0o666 };
    let mut files = Vec::new();
    for (dir, what) in dirs {
        let at = Path::new("certs.d").join(dir);
        if let Some(access) = &inputs.access {
            files.push(NodeFile { path: at.join("ca.crt"), text: access.ca_pem.clone(), mode: 0o666 });
        }
        let ca = format!("{}/{dir}/ca.crt", inputs.config_path.trim_end_matches('/'));
        files.push(NodeFile { path: at.join("hosts.toml"), text: hosts_toml(inputs, &what, &ca), mode: hosts_mode });
    }
    files.push(NodeFile { path: PathBuf::from("config.toml"), text: config_toml(inputs), mode: 0o666 });
    Ok(files)
}

/// One namespace's hosts.toml; `ca` is where that namespace's copy of the CA lands on the node.
fn hosts_toml(inputs: &Inputs, what: &str, ca: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Written by `installer registry config` for bundle {}.", inputs.bundle);
    let _ =
        writeln!(s, "# Pulls of {what} go to the registries below (the installer's or the site's), never upstream:");
    let _ = writeln!(s, "# `server` is the first of them too, so a miss fails fast on an air-gapped node.");
    let access = inputs.access.as_ref().map(|a| (toml_str(ca), toml_str(a.credential.basic_header().expose())));
    if access.is_some() {
        let _ =
            writeln!(s, "# Its certificate is trusted only through the given CA; the header is the pull credential.");
    }
    let (server, server_override) = containerd_host(&inputs.endpoints[0]);
    let _ = writeln!(s, "server = {}", toml_str(&server));
    if server_override {
        let _ = writeln!(s, "override_path = true");
    }
    if let Some((ca, auth)) = &access {
        let _ = writeln!(s, "ca = {ca}");
        let _ = writeln!(s, "\n[header]\n  authorization = {auth}");
    }
    for e in &inputs.endpoints {
        let (url, override_path) = containerd_host(e);
        let host = toml_str(&url);
        let _ = writeln!(s);
        let _ = writeln!(s, "[host.{host}]");
        let _ = writeln!(s, "  capabilities = [\"pull\", \"resolve\"]");
        if override_path {
            let _ = writeln!(s, "  override_path = true");
        }
        if let Some((ca, auth)) = &access {
            let _ = writeln!(s, "  ca = {ca}");
            let _ = writeln!(s, "  [host.{host}.header]\n    authorization = {auth}");
        }
    }
    s
}

fn config_toml(inputs: &Inputs) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Written by `installer registry config` for bundle {}.", inputs.bundle);
    let sandbox = toml_str(&inputs.sandbox_image);
    let path = toml_str(&inputs.config_path);
    const WHY: &str = "  # Root on this host cannot lower OOM scores (no CAP_SYS_RESOURCE): containers keep\n  \
                       # containerd's own score or higher, or runc could not start pod sandboxes.\n";
    let (restrict, restrict_v3) = if inputs.restrict_oom_score_adj {
        (
            format!("{WHY}  restrict_oom_score_adj = true\n"),
            format!("\n[plugins.\"io.containerd.cri.v1.runtime\"]\n{WHY}  restrict_oom_score_adj = true\n"),
        )
    } else {
        (String::new(), String::new())
    };
    match inputs.containerd {
        Containerd::V1_7 => {
            let _ = write!(
                s,
                r#"# containerd 1.7 (config version 2). Registry mirrors live in hosts.toml files under
# config_path; never add the legacy `registry.mirrors` table (containerd refuses both).
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  # The pause image kubeadm expects for this Kubernetes version; the bundle carries it.
  sandbox_image = {sandbox}
{restrict}
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {path}

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # kubeadm configures the kubelet for the systemd cgroup driver; containerd must match.
  SystemdCgroup = true
"#
            );
        }
        Containerd::V2 => {
            let _ = write!(
                s,
                r#"# containerd 2.x (config version 3). Registry mirrors live in hosts.toml files under
# config_path; never add the legacy `registry.mirrors` table (containerd refuses both).
version = 3
{restrict_v3}
[plugins."io.containerd.cri.v1.images".pinned_images]
  # The pause image kubeadm expects for this Kubernetes version; the bundle carries it.
  sandbox = {sandbox}

[plugins."io.containerd.cri.v1.images".registry]
  config_path = {path}

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  # kubeadm configures the kubelet for the systemd cgroup driver; containerd must match.
  SystemdCgroup = true
"#
            );
        }
    }
    s
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `contents` to `path` atomically (`ferry_core::fs::write_atomic`: a temporary file in
/// the same directory, flushed to disk, then renamed over the target, so a reader sees the old
/// file or the new one, never half), creating the directory first. The node's files are
/// world-readable, as `File::create` would make them.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    write_atomic_mode(path, contents, 0o666)
}

/// [`write_atomic`] with `mode` (0600 for a file holding the credential).
pub fn write_atomic_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| ConfigError::CreateDir { dir: dir.to_path_buf(), source })?;
    Ok(ferry_core::fs::write_atomic(path, contents, mode)?)
}

/// Reads `--ca-file` and `--credential-file` (`user:password`) into the access nodes need.
/// Errors name the file and what is wrong with it, never what it holds.
pub fn read_access(ca_file: &Path, credential_file: &Path) -> Result<PullAccess, ConfigError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| ConfigError::AccessFile { path: path.to_path_buf(), problem: format!("cannot be read: {e}") })
    };
    let ca_pem = read(ca_file)?;
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::AccessFile {
            path: ca_file.to_path_buf(),
            problem: "holds no PEM certificate".into(),
        });
    }
    let text = read(credential_file)?;
    let (username, password) =
        text.trim_end().split_once(':').filter(|(u, p)| !u.is_empty() && !p.is_empty()).ok_or_else(|| {
            ConfigError::AccessFile {
                path: credential_file.to_path_buf(),
                problem: "is not of the form user:password".into(),
            }
        })?;
    let credential = crate::protocol::access::Credential {
        username: username.to_string(),
        password: crate::protocol::access::Secret::new(password),
    };
    Ok(PullAccess { ca_pem, credential })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(containerd: Containerd, endpoints: &[&str]) -> Inputs {
        Inputs {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            registries: ["docker.io", "quay.io", "registry.k8s.io", "10.1.2.3:5000"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            containerd,
            config_path: "/etc/containerd/certs.d".into(),
            sandbox_image: kubeadm_pause_image("v1.33.4").unwrap().into(),
            restrict_oom_score_adj: false,
            bundle: "demo 1.0.0 (Kubernetes v1.33.4)".into(),
            access: None,
        }
    }

    fn access() -> PullAccess {
        use crate::protocol::access::{Credential, Secret};
        PullAccess {
            ca_pem: "-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n".into(),
            credential: Credential { username: "ferry".into(), password: Secret::new("pw") },
        }
    }

    fn snapshot_all(name: &str, inputs: &Inputs) {
        // The CA copies are the input itself; the test that makes them compares them.
        for file in render(inputs).unwrap().into_iter().filter(|f| !f.path.ends_with("ca.crt")) {
            let snap = format!("{name}__{}", file.path.display().to_string().replace(['/', ':'], "_"));
            insta::assert_snapshot!(snap, file.text);
        }
    }

    #[test]
    fn restricted_oom_scores_go_into_each_dialects_cri_runtime_table() {
        for (containerd, table) in [
            (Containerd::V1_7, "[plugins.\"io.containerd.grpc.v1.cri\"]"),
            (Containerd::V2, "[plugins.\"io.containerd.cri.v1.runtime\"]"),
        ] {
            let mut i = inputs(containerd, &["http://10.0.0.10:5000"]);
            let plain = config_toml(&i);
            assert!(!plain.contains("restrict_oom_score_adj"), "{plain}");
            i.restrict_oom_score_adj = true;
            let text = config_toml(&i);
            let at = text.find(table).unwrap_or_else(|| panic!("{table} missing:\n{text}"));
            let next = text[at + table.len()..].find("\n[").map_or(text.len(), |n| at + table.len() + n);
            assert!(text[at..next].contains("restrict_oom_score_adj = true"), "{containerd:?}:\n{text}");
            assert_eq!(text.matches(table).count(), 1, "one table of that name:\n{text}");
        }
    }

    #[test]
    fn a_site_registry_with_a_prefix_is_reached_through_its_whole_path() {
        let i = inputs(Containerd::V2, &["https://reg.site:5000/platform"]);
        snapshot_all("v2_site_prefix", &i);
        let text = hosts_toml(&i, "docker.io images", "/etc/containerd/certs.d/docker.io/ca.crt");
        assert!(text.contains("server = \"https://reg.site:5000/v2/platform\"\noverride_path = true\n"), "{text}");
        assert!(text.contains("[host.\"https://reg.site:5000/v2/platform\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"), "{text}");
        let plain = hosts_toml(&inputs(Containerd::V2, &["https://reg.site:5000"]), "x", "ca");
        assert!(!plain.contains("override_path"), "{plain}");
    }

    #[test]
    fn containerd_1_7_single_endpoint() {
        let i = inputs(Containerd::V1_7, &["http://10.0.0.10:5000"]);
        let files: Vec<String> = render(&i).unwrap().iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(
            files,
            [
                "certs.d/10.1.2.3:5000/hosts.toml",
                "certs.d/docker.io/hosts.toml",
                "certs.d/quay.io/hosts.toml",
                "certs.d/registry.k8s.io/hosts.toml",
                "certs.d/_default/hosts.toml",
                "config.toml"
            ]
        );
        snapshot_all("v1_7", &i);
    }

    #[test]
    fn containerd_2_replicas() {
        let mut i = inputs(Containerd::V2, &["http://10.0.0.10:5000", "http://10.0.0.11:5000"]);
        i.sandbox_image = kubeadm_pause_image("v1.34.1").unwrap().into();
        i.registries = ["docker.io".to_string()].into_iter().collect();
        snapshot_all("v2_replicas", &i);
    }

    #[test]
    fn tls_with_the_credential() {
        let mut i = inputs(Containerd::V2, &["https://10.0.0.10:5050", "https://10.0.0.11:5050"]);
        i.registries = ["docker.io".to_string()].into_iter().collect();
        i.access = Some(access());
        let files = render(&i).unwrap();
        let modes: Vec<(String, u32)> = files.iter().map(|f| (f.path.display().to_string(), f.mode)).collect();
        assert_eq!(
            modes,
            [
                ("certs.d/docker.io/ca.crt".to_string(), 0o666),
                ("certs.d/docker.io/hosts.toml".to_string(), 0o600),
                ("certs.d/_default/ca.crt".to_string(), 0o666),
                ("certs.d/_default/hosts.toml".to_string(), 0o600),
                ("config.toml".to_string(), 0o666),
            ]
        );
        assert_eq!(files[0].text, access().ca_pem);
        let hosts = &files[1].text;
        assert_eq!(
            hosts.matches("authorization = \"Basic ZmVycnk6cHc=\"").count(),
            3,
            "server and both hosts:\n{hosts}"
        );
        assert_eq!(hosts.matches("ca = \"/etc/containerd/certs.d/docker.io/ca.crt\"").count(), 3, "{hosts}");
        snapshot_all("v2_tls", &i);
        // Never a credential over plain HTTP.
        i.endpoints.push("http://10.0.0.12:5050".into());
        let err = render(&i).unwrap_err().to_string();
        assert!(err.contains("http://10.0.0.12:5050") && !err.contains("ZmVycnk6cHc"), "{err}");
    }

    #[test]
    fn access_files_are_checked_without_showing_them() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cred) = (dir.path().join("ca.crt"), dir.path().join("credential"));
        std::fs::write(&ca, access().ca_pem).unwrap();
        std::fs::write(&cred, "ferry:pw\n").unwrap();
        assert_eq!(read_access(&ca, &cred).unwrap(), access());
        std::fs::write(&cred, "secret-without-user").unwrap();
        let err = read_access(&ca, &cred).unwrap_err().to_string();
        assert!(err.contains("user:password") && !err.contains("secret-without-user"), "{err}");
        std::fs::write(&ca, "nope").unwrap();
        assert!(read_access(&ca, &cred).unwrap_err().to_string().contains("no PEM certificate"));
    }

    #[test]
    fn pause_table() {
        assert_eq!(kubeadm_pause_image("v1.31.0").unwrap(), "registry.k8s.io/pause:3.10");
        assert_eq!(kubeadm_pause_image("1.33").unwrap(), "registry.k8s.io/pause:3.10");
        assert_eq!(kubeadm_pause_image("v1.34.1").unwrap(), "registry.k8s.io/pause:3.10.1");
        assert_eq!(kubeadm_pause_image("v1.35.4").unwrap(), "registry.k8s.io/pause:3.10.1");
        assert_eq!(kubeadm_pause_image("v1.36.3").unwrap(), "registry.k8s.io/pause:3.10.2");
        assert_eq!(kubeadm_pause_image("v1.37.0-rc.1").unwrap(), "registry.k8s.io/pause:3.10.2");
        let err = kubeadm_pause_image("v1.29.3").unwrap_err().to_string();
        assert!(err.contains("v1.29") && err.contains("--sandbox-image"), "{err}");
        assert!(kubeadm_pause_image("latest").is_err());
        assert!(kubeadm_pause_image("v2.0.0").is_err());
        assert!(kubeadm_pause_image("v1.38.0").is_err());
    }

    #[test]
    fn the_recorded_pause_image_wins_over_the_table() {
        let mut meta = payload_format::BundleMetadata { kubernetes_version: "v1.36.3".into(), ..Default::default() };
        assert_eq!(bundle_pause_image(&meta).unwrap(), "registry.k8s.io/pause:3.10.2", "no record: the table");
        meta.extra.insert(
            CONTROL_PLANE_KEY.into(),
            serde_json::json!({"pause": "registry.k8s.io/pause:3.10.9", "source": "kubeadm"}),
        );
        assert_eq!(bundle_pause_image(&meta).unwrap(), "registry.k8s.io/pause:3.10.9");
        // A version the table does not know, recorded by a bundle that carried its kubeadm.
        meta.kubernetes_version = "v1.40.0".into();
        assert_eq!(bundle_pause_image(&meta).unwrap(), "registry.k8s.io/pause:3.10.9");
        meta.extra.insert(CONTROL_PLANE_KEY.into(), serde_json::json!({"pause": 3}));
        assert!(bundle_pause_image(&meta).unwrap_err().to_string().contains("controlPlaneImages.pause is 3"));
        meta.extra.insert(CONTROL_PLANE_KEY.into(), serde_json::json!({"source": "kubeadm"}));
        assert!(bundle_pause_image(&meta).unwrap_err().to_string().contains("v1.40"), "no pause recorded: the table");
    }

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(check_endpoint("http://10.0.0.10:5000/").unwrap(), "http://10.0.0.10:5000");
        assert!(check_endpoint("10.0.0.10:5000").is_err());
        assert!(check_endpoint("http://10.0.0.10:5000/v2").is_err());
        assert_eq!(check_endpoint("https://reg.site:5000/platform/v1/").unwrap(), "https://reg.site:5000/platform/v1");
        assert!(check_endpoint("https://reg.site/Platform").is_err());
        assert!(check_endpoint("https://reg.site/a//b").is_err());
        assert!(check_endpoint("https://user@reg.site").is_err());
        assert!(check_endpoint("http://").is_err());
        assert!(render(&inputs(Containerd::V2, &[])).is_err());
    }

    #[test]
    fn strings_escape() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/f.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic_mode(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temporary file left behind");
    }
}
