//! What ferry puts where on a node, and which ports it uses: the names every layer shares.
//!
//! Owns: the constants that the operator side (`run`, `check`, `reset`), the node side (`lb`,
//! kubeadm's configs) and the command line all need, each defined once here so that a port or a
//! path cannot drift between the code that writes it and the code that reads it. Depends on
//! nothing in the crate.

pub use ferry_core::SELF_EXE;

/// The port every master's kube-apiserver binds (kubeadm's default `bindPort`), which the
/// node-local load balancer targets.
pub const APISERVER_PORT: u16 = 6443;

/// Port of the node-local API load balancer on every node: `controlPlaneEndpoint`'s port, the
/// LB's listen port, and a port preflight wants free. 6444, not 6443: on masters the apiserver
/// binds `0.0.0.0:6443`, so a loopback listener on 6443 would collide with it there.
pub const LB_PORT: u16 = 6444;

/// Where `run` and `join` write the load balancer's config on every node.
pub const LB_CONFIG: &str = "/etc/ferry/lb.yaml";

/// The load balancer's systemd unit.
pub const LB_UNIT: &str = "ferry-lb.service";

/// Where ferry's kubeadm configs go on the nodes.
pub const KUBEADM_DIR: &str = "/etc/ferry/kubeadm";

/// On registry hosts: the registry's serving certificate, key and credential digest (the
/// `--tls-dir` of ferry-registry.service).
pub const REGISTRY_TLS_DIR: &str = "/etc/ferry/registry";

/// The saved cluster description on master0.
pub const CLUSTER_FILE: &str = "/etc/ferry/cluster.yaml";

/// kubeadm's admin kubeconfig on masters.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// Where kubeadm leaves the cluster CA's certificate on every node.
pub const CLUSTER_CA: &str = "/etc/kubernetes/pki/ca.crt";

/// kubectl as ferry runs it on a master: the admin kubeconfig, through the node-local LB.
pub const ADMIN_KUBECTL: &str = "kubectl --kubeconfig /etc/kubernetes/admin.conf";

/// ferry's directory on every node.
pub const FERRY_DIR: &str = "/var/lib/ferry";
/// The bootstrap agent (the bare program, no payload).
pub const AGENT_PATH: &str = "/var/lib/ferry/agent";
/// The node's (partial, or for registry hosts whole) copy of the installer.
pub const INSTALLER_PATH: &str = "/var/lib/ferry/installer";
/// Per-phase records.
pub const STATE_DIR: &str = "/var/lib/ferry/state";

/// Where a host's lock and its holder's record live: root's tmpfs, so a reboot (which ends every
/// operation on the host) clears them.
pub const LOCK_DIR: &str = "/run/ferry";

/// Hex SHA-256 of the last 128 bytes of a file: identifies an installer build.
pub fn trailer_id(p: &std::path::Path) -> Option<String> {
    use payload_format::TRAILER_LEN;
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).ok()?;
    let len = f.metadata().ok()?.len();
    if len < TRAILER_LEN as u64 {
        return None;
    }
    let mut t = [0u8; TRAILER_LEN];
    f.read_exact_at(&mut t, len - TRAILER_LEN as u64).ok()?;
    Some(hex::encode(payload_format::sha256(&t)))
}
