//! The reports: what the agent answers to `facts`, `state` and `prepare`, and what `prepare`
//! and `record` read on stdin.
//!
//! Owns: [`Facts`], [`KernelSupport`], [`Record`], [`PreparePlan`], [`PrepareReport`]. Fields added after a
//! protocol version was released carry `#[serde(default)]` (see the module above).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What preflight needs to know about a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Kernel features a Kubernetes node needs (`overlay`, `br_netfilter`, `vxlan`), and whether
    /// each is there. Empty from an agent that did not look.
    #[serde(default)]
    pub kernel_features: BTreeMap<String, KernelSupport>,
}

/// Whether a kernel feature is usable on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelSupport {
    /// Built in or loaded: usable now.
    Present,
    /// A module for it is installed for the running kernel: `modprobe` makes it usable.
    Loadable,
    /// Neither: the kernel cannot provide it without a rebuild or another kernel package.
    Missing,
}

/// The answer to `state`: a cluster's records on one host, by phase.
pub type State = BTreeMap<String, Record>;

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

/// What the operator asks a node to do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparePlan {
    /// Built-in registry URLs (`https://IP:PORT`), in preference order.
    pub registry_endpoints: Vec<String>,
    /// The cluster CA and pull credential containerd uses for them (`None`: plain HTTP).
    #[serde(default)]
    pub registry_access: Option<super::access::PullAccess>,
    /// `/etc/hosts` entries (address, name).
    pub hosts_entries: Vec<(String, String)>,
    /// Accept an unsigned installer (the operator accepted it).
    pub allow_unsigned: bool,
    /// Filesystem root to install into (`/`; tests use a directory).
    #[serde(default = "slash")]
    pub root: PathBuf,
    /// The cluster's Service subnet, made routable when the host has no route to it.
    #[serde(default)]
    pub service_subnet: Option<String>,
    /// The address the cluster knows this host by.
    #[serde(default)]
    pub node_ip: Option<String>,
    /// Only containerd's registry configuration (hosts.toml, config.toml), nothing else and no
    /// restart: an upgrade re-points the mirrors of nodes it has not reached yet.
    #[serde(default)]
    pub containerd_only: bool,
}

fn slash() -> PathBuf {
    PathBuf::from("/")
}

/// What preparation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareReport {
    /// Files installed or replaced.
    pub changed: Vec<String>,
    /// Things that were tolerated (EPERM sysctls in containers, missing optional modules).
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let json = serde_json::to_vec(v).unwrap();
        assert_eq!(&serde_json::from_slice::<T>(&json).unwrap(), v);
    }

    #[test]
    fn reports_round_trip() {
        let facts = Facts {
            hostname: "n1".into(),
            arch: "x86_64".into(),
            listening: vec![22, 6443],
            listeners: [(22, "sshd (pid 1)".to_string())].into(),
            installer: Some("ab".into()),
            cgroup: "v2".into(),
            ..Default::default()
        };
        round_trip(&facts);
        let rec = Record {
            cluster: "lab".into(),
            phase: "prepare".into(),
            installer: "ab".into(),
            completed: 5,
            detail: serde_json::Value::from(vec![1, 2]),
        };
        let state: State = [("prepare".to_string(), rec)].into();
        round_trip(&state);
        round_trip(&PreparePlan {
            registry_endpoints: vec!["https://10.0.0.1:5000".into()],
            registry_access: Some(super::super::access::PullAccess {
                ca_pem: "CA".into(),
                credential: super::super::access::Credential {
                    username: "ferry".into(),
                    password: super::super::access::Secret::new("pw"),
                },
            }),
            hosts_entries: vec![("10.0.0.1".into(), "m1".into())],
            allow_unsigned: true,
            root: "/".into(),
            service_subnet: Some("10.96.0.0/12".into()),
            node_ip: None,
            containerd_only: true,
        });
        round_trip(&PrepareReport { changed: vec!["/etc/hosts".into()], warnings: vec!["w".into()] });
    }

    /// Within a protocol version: unknown fields are ignored, fields added later default.
    #[test]
    fn compatible_additions_are_read() {
        let mut v = serde_json::to_value(Facts::default()).unwrap();
        let m = v.as_object_mut().unwrap();
        m.remove("listeners");
        m.remove("cgroup");
        m.insert("gpus".into(), 2.into());
        let f: Facts = serde_json::from_value(v).unwrap();
        assert_eq!(f, Facts::default());
        let plan: PreparePlan =
            serde_json::from_str(r#"{"registry_endpoints":[],"hosts_entries":[],"allow_unsigned":false,"new":1}"#)
                .unwrap();
        assert_eq!(plan.root, PathBuf::from("/"));
        let report: PrepareReport = serde_json::from_str(r#"{"changed":[],"warnings":["w"],"took":3}"#).unwrap();
        assert_eq!(report.warnings, ["w"]);
    }
}
