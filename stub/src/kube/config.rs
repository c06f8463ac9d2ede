//! The kubeadm configuration ferry generates: `kubeadm.k8s.io/v1beta4` InitConfiguration,
//! ClusterConfiguration and JoinConfiguration (worker and control-plane variants), and the
//! `kubelet.config.k8s.io/v1beta1` KubeletConfiguration, with the cluster file's `spec.kubeadm`
//! fragments deep-merged over ferry's defaults.
//!
//! Field names follow `cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go` and the kubeadm v1beta4
//! reference (kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/); v1beta4 is read
//! by kubeadm 1.31 and later (1.37 still reads it; its `kubeadm.k8s.io/v1` is experimental), which
//! covers every version ferry supports. `tests/integration/kubeadm_real.rs` runs `kubeadm config
//! validate` of real kubeadm releases over these files.
//!
//! Choices that matter:
//! - `kubernetesVersion` is always set: without it kubeadm asks dl.k8s.io for `stable-1.txt`.
//! - `controlPlaneEndpoint` is the API endpoint *name* and the node-local LB port
//!   (`apiserver.cluster.local:6444`): the name resolves to 127.0.0.1 on every node, where
//!   `installer lb` forwards to all apiservers (see [`crate::lb`]). The name, 127.0.0.1,
//!   `localhost` and every master IP go into `apiServer.certSANs`, so masters can be reached
//!   directly too and added later without re-issuing certificates for the usual names.
//! - `imageRepository: registry.k8s.io`: references are never rewritten; containerd's mirror
//!   configuration sends pulls to the built-in registry.
//! - The pause image has no kubeadm field (the kubelet flag is gone since 1.35); containerd's
//!   sandbox image carries it, the one the bundle recorded from its own control-plane list
//!   ([`crate::registry::config::bundle_pause_image`]). It is recorded as a comment at the top
//!   of every config so the two can be compared on a node.
//! - `cgroupDriver: systemd` in the KubeletConfiguration, matching containerd's `SystemdCgroup`.
//! - cgroup v1 hosts (preflight's facts): from 1.35 the kubelet refuses cgroup v1 unless its
//!   configuration says `failCgroupV1: false`, and kubeadm's SystemVerification preflight check
//!   fails there. When any host is v1, the cluster-wide KubeletConfiguration gets
//!   `failCgroupV1: false`, and each v1 host's Init/JoinConfiguration ignores SystemVerification.
//!   The KubeletConfiguration is written only by `kubeadm init`, so a v1 host that joins a cluster
//!   made without it gets the same setting as a kubeadm patch of its own kubelet configuration
//!   ([`kubelet_patches`], under [`PATCHES_DIR`]; a `joinConfiguration.patches` fragment
//!   replaces that directory, and must then carry the patch itself). Real sites should use v2.
//! - The bootstrap token, certificate key and CA hash come from [`super::secrets`].
//!
//! `spec.kubeadm` schema (unknown keys are errors naming the full path):
//!
//! ```yaml
//! spec:
//!   kubeadm:
//!     initConfiguration: {...}      # merged over InitConfiguration
//!     clusterConfiguration: {...}   # merged over ClusterConfiguration
//!     kubeletConfiguration: {...}   # merged over KubeletConfiguration
//!     kubeProxyConfiguration: {...} # a KubeProxyConfiguration for kubeadm init (kube-proxy's defaults otherwise)
//!     joinConfiguration: {...}      # merged over both JoinConfiguration variants
//! ```
//!
//! Each fragment is checked against the v1beta4 fields (nested all the way for the kubeadm
//! kinds; top-level field names for the KubeletConfiguration and the KubeProxyConfiguration, whose
//! nested structures are passed through). Fields ferry owns are refused with the reason (`kubernetesVersion`,
//! `controlPlaneEndpoint`, `networking.podSubnet/serviceSubnet` — set in `spec.network`,
//! `bootstrapTokens`, `certificateKey`, `localAPIEndpoint`, `discovery`, `controlPlane`,
//! `apiVersion`, `kind`). Merge rules: maps merge key by key; lists of `{name: …}` items
//! (`extraArgs`, `kubeletExtraArgs`, `extraEnvs`, `extraVolumes`) merge by `name`, a fragment's
//! item replacing ferry's of the same name; `certSANs`-like lists are unions; any other value
//! replaces ferry's.
//!
//! Errors: [`KubeadmConfigError`] for inputs kubeadm would refuse, [`FragmentError`] for a
//! fragment ferry refuses (named by its full path), [`FragmentsParseError`] for `spec.kubeadm`
//! text on its own.

use super::yaml;
use serde::Deserialize;
use serde_json::{Value, json};

type Result<T, E = KubeadmConfigError> = std::result::Result<T, E>;

/// Inputs from which ferry will not write kubeadm's configuration.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmConfigError {
    /// A Kubernetes version kubeadm could not pin without asking dl.k8s.io.
    #[error("Kubernetes version `{0}` is not of the form vX.Y.Z; kubeadm needs an exact version offline")]
    Version(String),
    /// No sandbox image for the header (the bundle recorded none).
    #[error("no sandbox (pause) image is known for Kubernetes {0}")]
    NoPauseImage(String),
    /// No control-plane node.
    #[error("no master: kubeadm needs at least one control-plane node")]
    NoMaster,
    /// An empty API endpoint name.
    #[error("the API endpoint name is empty")]
    NoEndpoint,
    /// A bootstrap token kubeadm would refuse.
    #[error("bootstrap token is not of kubeadm's form [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Token,
    /// A certificate key kubeadm would refuse.
    #[error("certificate key is not 64 hex digits")]
    CertificateKey,
    /// A discovery hash kubeadm would refuse.
    #[error("CA hash `{0}` is not sha256:<64 hex digits>")]
    CaHash(String),
    /// A control-plane join without the key that decrypts the uploaded certificates.
    #[error("joining {0} as a master needs the certificate key from `kubeadm init --upload-certs` (none was given)")]
    NoCertificateKey(String),
    /// The `spec.kubeadm` fragments.
    #[error(transparent)]
    Fragment(#[from] FragmentError),
}

/// A `spec.kubeadm` fragment ferry refuses. Every message names the field's full path, so it
/// can be found in the cluster file.
#[derive(Debug, thiserror::Error)]
pub enum FragmentError {
    /// A fragment that is not a map.
    #[error("spec.kubeadm.{name} must be a map of {name} fields")]
    NotAMap {
        /// `initConfiguration`, `clusterConfiguration`, …
        name: &'static str,
    },
    /// `apiVersion` or `kind` in a fragment.
    #[error("spec.kubeadm.{name}.{key}: ferry writes the API version and kind; leave them out")]
    TypeMeta {
        /// The fragment.
        name: &'static str,
        /// `apiVersion` or `kind`.
        key: &'static str,
    },
    /// A top-level field the KubeletConfiguration or KubeProxyConfiguration does not have.
    #[error("spec.kubeadm.{name}.{key}: unknown {kind} field ({api})")]
    UnknownComponentField {
        /// The component's kind.
        kind: &'static str,
        /// Its API version.
        api: &'static str,
        /// The fragment.
        name: &'static str,
        /// The field as written.
        key: String,
    },
    /// A field ferry sets from elsewhere.
    #[error("spec.kubeadm.{path}: set by ferry, not by a fragment ({why})")]
    Owned {
        /// Path below `spec.kubeadm`.
        path: String,
        /// Where it comes from instead.
        why: &'static str,
    },
    /// A field kubeadm v1beta4 does not have.
    #[error("spec.kubeadm.{path}: unknown field (kubeadm {KUBEADM_API} has {known})")]
    UnknownField {
        /// Path below `spec.kubeadm`.
        path: String,
        /// The fields that exist there, comma-separated.
        known: String,
    },
    /// Something other than a map where v1beta4 has a structure.
    #[error("spec.kubeadm.{path}: expected a map, found {found}")]
    ExpectedMap {
        /// Path below `spec.kubeadm`.
        path: String,
        /// What was there (`a list`, `a string`, …).
        found: &'static str,
    },
    /// Something other than a list where v1beta4 has a list.
    #[error("spec.kubeadm.{path}: expected a list (v1beta4 takes a list of {{name, value}}), found {found}")]
    ExpectedList {
        /// Path below `spec.kubeadm`.
        path: String,
        /// What was there.
        found: &'static str,
    },
}

/// `spec.kubeadm` text ([`parse_fragments`]) that does not read, or that ferry refuses.
#[derive(Debug, thiserror::Error)]
pub enum FragmentsParseError {
    /// Not YAML, or an unknown fragment name.
    #[error("{origin}: spec.kubeadm: {cause}")]
    Syntax {
        /// Where the text came from.
        origin: String,
        /// What the parser said.
        cause: Box<serde_saphyr::Error>,
    },
    /// A fragment ferry refuses.
    #[error("{origin}: {cause}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// Which field and why.
        cause: FragmentError,
    },
}

/// kubeadm's config API group/version.
pub const KUBEADM_API: &str = "kubeadm.k8s.io/v1beta4";
/// The kubelet's config API group/version.
pub const KUBELET_API: &str = "kubelet.config.k8s.io/v1beta1";
/// The KubeProxyConfiguration API version kubeadm reads.
pub const KUBE_PROXY_API: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// containerd's CRI socket.
pub const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";
/// The apiserver's port on each master (kubeadm's default `bindPort`).
pub use crate::node::APISERVER_PORT;
/// Pod subnet when `spec.network.podSubnet` is not set (flannel's default, the default CNI).
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/16";
/// Service subnet when `spec.network.serviceSubnet` is not set (kubeadm's default).
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";
/// The first Kubernetes minor whose kubelet refuses cgroup v1 by default.
pub const CGROUP_V1_REFUSED_FROM_MINOR: u32 = 35;
/// kubeadm's patch directory for joins of cgroup v1 hosts ([`kubelet_patches`]).
pub const PATCHES_DIR: &str = "/etc/ferry/kubeadm/patches";

/// `spec.kubeadm` in cluster.yaml: fragments merged over ferry's generated documents.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fragments {
    /// Merged over the InitConfiguration.
    #[serde(default)]
    pub init_configuration: Option<Value>,
    /// Merged over the ClusterConfiguration.
    #[serde(default)]
    pub cluster_configuration: Option<Value>,
    /// Merged over the KubeletConfiguration.
    #[serde(default)]
    pub kubelet_configuration: Option<Value>,
    /// kube-proxy's configuration, written for `kubeadm init` (kubeadm keeps it in the
    /// kube-proxy ConfigMap, and upgrades keep it).
    #[serde(default)]
    pub kube_proxy_configuration: Option<Value>,
    /// Merged over both JoinConfiguration variants.
    #[serde(default)]
    pub join_configuration: Option<Value>,
}

/// Cluster-wide inputs, the same for every node.
#[derive(Clone, Debug)]
pub struct ClusterInputs {
    /// Cluster name (`clusterName`).
    pub name: String,
    /// `vX.Y.Z`.
    pub kubernetes_version: String,
    /// The API endpoint name, e.g. `apiserver.cluster.local`.
    pub endpoint: String,
    /// Port of the node-local LB (`controlPlaneEndpoint`'s port).
    pub lb_port: u16,
    /// Master addresses, master0 first.
    pub masters: Vec<String>,
    /// `spec.network.podSubnet`.
    pub pod_subnet: Option<String>,
    /// `spec.network.serviceSubnet`.
    pub service_subnet: Option<String>,
    /// `spec.apiServer.certSANs`.
    pub extra_sans: Vec<String>,
    /// `spec.kubeadm`.
    pub fragments: Fragments,
    /// The sandbox (pause) image containerd pins: the bundle's
    /// ([`crate::registry::config::bundle_pause_image`]). Shown in the configs' header.
    pub pause_image: String,
    /// Addresses of the hosts whose `/sys/fs/cgroup` is cgroup v1 (from preflight).
    pub cgroup_v1_hosts: Vec<String>,
}

/// One node.
#[derive(Clone, Debug)]
pub struct Node {
    /// The address it is known by (advertise address, kubelet `node-ip`).
    pub ip: String,
    /// Node name; `None` lets kubeadm use the hostname.
    pub name: Option<String>,
}

/// What joining needs besides the cluster inputs.
#[derive(Clone, Debug)]
pub struct JoinSecrets {
    /// Bootstrap token.
    pub token: String,
    /// `sha256:…` from [`super::secrets::ca_cert_hash`].
    pub ca_cert_hash: String,
    /// Certificate key (control-plane joins only).
    pub certificate_key: Option<String>,
}

/// Which JoinConfiguration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRole {
    /// A worker.
    Worker,
    /// An additional master.
    ControlPlane,
}

impl ClusterInputs {
    /// `host:port` of the control-plane endpoint.
    pub fn control_plane_endpoint(&self) -> String {
        format!("{}:{}", self.endpoint, self.lb_port)
    }

    /// Whether this Kubernetes version's kubelet refuses cgroup v1 unless told otherwise.
    pub fn kubelet_refuses_cgroup_v1(&self) -> bool {
        minor(&self.kubernetes_version).is_some_and(|m| m >= CGROUP_V1_REFUSED_FROM_MINOR)
    }

    /// Whether ferry must let `ip`'s kubelet and kubeadm accept cgroup v1 (see the module docs).
    pub fn cgroup_v1_opt_in(&self, ip: &str) -> bool {
        self.kubelet_refuses_cgroup_v1() && self.cgroup_v1_hosts.iter().any(|h| h == ip)
    }

    fn check(&self) -> Result<()> {
        if !self.kubernetes_version.starts_with('v')
            || self.kubernetes_version.split('.').count() != 3
            || minor(&self.kubernetes_version).is_none()
        {
            return Err(KubeadmConfigError::Version(self.kubernetes_version.clone()));
        }
        if self.pause_image.trim().is_empty() {
            return Err(KubeadmConfigError::NoPauseImage(self.kubernetes_version.clone()));
        }
        if self.masters.is_empty() {
            return Err(KubeadmConfigError::NoMaster);
        }
        if self.endpoint.is_empty() {
            return Err(KubeadmConfigError::NoEndpoint);
        }
        Ok(validate(&self.fragments)?)
    }

    fn cert_sans(&self) -> Vec<Value> {
        let mut sans: Vec<String> = vec![self.endpoint.clone(), "127.0.0.1".into(), "localhost".into()];
        sans.extend(self.masters.iter().cloned());
        sans.extend(self.extra_sans.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        sans.into_iter().filter(|s| seen.insert(s.clone())).map(Value::String).collect()
    }
}

/// The minor of `vX.Y.Z` (`36` for v1.36.3).
fn minor(version: &str) -> Option<u32> {
    version.strip_prefix('v')?.split('.').nth(1)?.parse().ok()
}

fn node_registration(c: &ClusterInputs, node: &Node) -> Value {
    let mut nr = json!({
        "criSocket": CRI_SOCKET,
        "imagePullPolicy": "IfNotPresent",
        "kubeletExtraArgs": [{"name": "node-ip", "value": node.ip}],
    });
    if let Some(n) = &node.name {
        nr["name"] = json!(n);
    }
    if c.cgroup_v1_opt_in(&node.ip) {
        // kubeadm's SystemVerification errors on cgroup v1 from 1.35 (system-validators).
        nr["ignorePreflightErrors"] = json!(["SystemVerification"]);
    }
    nr
}

fn local_api_endpoint(node: &Node) -> Value {
    json!({"advertiseAddress": node.ip, "bindPort": APISERVER_PORT})
}

/// ferry's InitConfiguration for master0 (before fragments).
fn init_defaults(c: &ClusterInputs, node: &Node, token: &str, certificate_key: &str) -> Value {
    json!({
        "apiVersion": KUBEADM_API,
        "kind": "InitConfiguration",
        "bootstrapTokens": [{
            "token": token,
            "description": "created by ferry for joining nodes",
            "ttl": "24h0m0s",
            "usages": ["signing", "authentication"],
            "groups": ["system:bootstrappers:kubeadm:default-node-token"],
        }],
        "certificateKey": certificate_key,
        "localAPIEndpoint": local_api_endpoint(node),
        "nodeRegistration": node_registration(c, node),
    })
}

fn cluster_defaults(c: &ClusterInputs) -> Value {
    json!({
        "apiVersion": KUBEADM_API,
        "kind": "ClusterConfiguration",
        "clusterName": c.name,
        "kubernetesVersion": c.kubernetes_version,
        "controlPlaneEndpoint": c.control_plane_endpoint(),
        "imageRepository": "registry.k8s.io",
        "certificatesDir": "/etc/kubernetes/pki",
        "networking": {
            "podSubnet": c.pod_subnet.as_deref().unwrap_or(DEFAULT_POD_SUBNET),
            "serviceSubnet": c.service_subnet.as_deref().unwrap_or(DEFAULT_SERVICE_SUBNET),
            "dnsDomain": "cluster.local",
        },
        "apiServer": {"certSANs": c.cert_sans()},
        "etcd": {"local": {"dataDir": "/var/lib/etcd"}},
    })
}

fn kubelet_defaults(c: &ClusterInputs) -> Value {
    let mut k = json!({"apiVersion": KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": "systemd"});
    if c.kubelet_refuses_cgroup_v1() && !c.cgroup_v1_hosts.is_empty() {
        // Cluster-wide: kubeadm hands every node this one configuration.
        k["failCgroupV1"] = json!(false);
    }
    k
}

/// kubeadm patches (path on the node, contents) that `node` needs before `kubeadm join`: for a
/// cgroup v1 host, `failCgroupV1: false` on its own kubelet configuration, which holds even when
/// the cluster's KubeletConfiguration was made without it.
pub fn kubelet_patches(c: &ClusterInputs, node: &Node) -> Vec<(String, String)> {
    if !c.cgroup_v1_opt_in(&node.ip) {
        return Vec::new();
    }
    vec![(format!("{PATCHES_DIR}/kubeletconfiguration+merge.yaml"), "failCgroupV1: false\n".to_string())]
}

fn join_defaults(c: &ClusterInputs, node: &Node, s: &JoinSecrets, role: JoinRole) -> Result<Value> {
    let mut j = json!({
        "apiVersion": KUBEADM_API,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {
            "apiServerEndpoint": c.control_plane_endpoint(),
            "token": s.token,
            "caCertHashes": [s.ca_cert_hash],
        }},
        "nodeRegistration": node_registration(c, node),
    });
    if !kubelet_patches(c, node).is_empty() {
        j["patches"] = json!({"directory": PATCHES_DIR});
    }
    if role == JoinRole::ControlPlane {
        let Some(key) = &s.certificate_key else {
            return Err(KubeadmConfigError::NoCertificateKey(node.ip.clone()));
        };
        j["controlPlane"] = json!({"localAPIEndpoint": local_api_endpoint(node), "certificateKey": key});
    }
    Ok(j)
}

fn header(c: &ClusterInputs, what: &str) -> String {
    format!(
        "# Generated by ferry ({what}). kubeadm {KUBEADM_API}; Kubernetes {}.\n\
         # Sandbox (pause) image, set in containerd's config (kubeadm has no field for it): {}\n",
        c.kubernetes_version, c.pause_image
    )
}

/// The file for `kubeadm init --upload-certs --config FILE` on master0: InitConfiguration,
/// ClusterConfiguration and KubeletConfiguration.
pub fn init_config(c: &ClusterInputs, node: &Node, token: &str, certificate_key: &str) -> Result<String> {
    c.check()?;
    check_secrets(token, Some(certificate_key))?;
    let mut init = init_defaults(c, node, token, certificate_key);
    let mut cluster = cluster_defaults(c);
    let mut kubelet = kubelet_defaults(c);
    merge_opt(&mut init, &c.fragments.init_configuration);
    merge_opt(&mut cluster, &c.fragments.cluster_configuration);
    merge_opt(&mut kubelet, &c.fragments.kubelet_configuration);
    let mut docs = vec![init, cluster, kubelet];
    if c.fragments.kube_proxy_configuration.is_some() {
        let mut proxy = json!({"apiVersion": KUBE_PROXY_API, "kind": "KubeProxyConfiguration"});
        merge_opt(&mut proxy, &c.fragments.kube_proxy_configuration);
        docs.push(proxy);
    }
    Ok(header(c, &format!("kubeadm init on {}", node.ip)) + &yaml::documents(&docs))
}

/// The file for `kubeadm join --config FILE` on a worker or an additional master.
pub fn join_config(c: &ClusterInputs, node: &Node, s: &JoinSecrets, role: JoinRole) -> Result<String> {
    c.check()?;
    check_secrets(&s.token, s.certificate_key.as_deref())?;
    if !s.ca_cert_hash.starts_with("sha256:") || s.ca_cert_hash.len() != 7 + 64 {
        return Err(KubeadmConfigError::CaHash(s.ca_cert_hash.clone()));
    }
    let mut join = join_defaults(c, node, s, role)?;
    merge_opt(&mut join, &c.fragments.join_configuration);
    let what = match role {
        JoinRole::Worker => format!("kubeadm join of worker {}", node.ip),
        JoinRole::ControlPlane => format!("kubeadm join of master {}", node.ip),
    };
    Ok(header(c, &what) + &yaml::document(&join))
}

fn check_secrets(token: &str, key: Option<&str>) -> Result<()> {
    if !super::secrets::is_bootstrap_token(token) {
        return Err(KubeadmConfigError::Token);
    }
    if let Some(k) = key
        && !super::secrets::is_certificate_key(k)
    {
        return Err(KubeadmConfigError::CertificateKey);
    }
    Ok(())
}

// ------------------------------------------------------------------------------ merge

fn merge_opt(base: &mut Value, frag: &Option<Value>) {
    if let Some(f) = frag {
        merge(base, f, "");
    }
}

/// Lists merged as sets of strings.
const UNION_LISTS: &[&str] = &["certSANs", "serverCertSANs", "peerCertSANs", "ignorePreflightErrors", "skipPhases"];

/// Deep-merges `over` into `base` (rules in the module docs).
pub fn merge(base: &mut Value, over: &Value, key: &str) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v, k),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if is_named_list(b) && is_named_list(o) => {
            for item in o {
                match b.iter_mut().find(|x| x.get("name") == item.get("name")) {
                    Some(slot) => *slot = item.clone(),
                    None => b.push(item.clone()),
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if UNION_LISTS.contains(&key) => {
            for item in o {
                if !b.contains(item) {
                    b.push(item.clone());
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn is_named_list(a: &[Value]) -> bool {
    a.iter().all(|x| x.get("name").is_some_and(Value::is_string))
}

// ------------------------------------------------------------------------------ schema

/// The shape of a config subtree, for refusing unknown fields.
enum Shape {
    /// Any value (maps keyed by user names, nested kubelet structures, taints' values, …).
    Any,
    /// An object with these fields.
    Obj(&'static [(&'static str, &'static Shape)]),
    /// A list of items of a shape.
    List(&'static Shape),
}
use Shape::{Any, List, Obj};

const ARG: Shape = Obj(&[("name", &Any), ("value", &Any)]);
const ENV: Shape = Obj(&[("name", &Any), ("value", &Any), ("valueFrom", &Any)]);
const VOLUME: Shape =
    Obj(&[("name", &Any), ("hostPath", &Any), ("mountPath", &Any), ("readOnly", &Any), ("pathType", &Any)]);
const COMPONENT: Shape =
    Obj(&[("extraArgs", &List(&ARG)), ("extraVolumes", &List(&VOLUME)), ("extraEnvs", &List(&ENV))]);
const API_SERVER: Shape = Obj(&[
    ("extraArgs", &List(&ARG)),
    ("extraVolumes", &List(&VOLUME)),
    ("extraEnvs", &List(&ENV)),
    ("certSANs", &Any),
]);
const TAINT: Shape = Obj(&[("key", &Any), ("value", &Any), ("effect", &Any), ("timeAdded", &Any)]);
const NODE_REGISTRATION: Shape = Obj(&[
    ("name", &Any),
    ("criSocket", &Any),
    ("taints", &List(&TAINT)),
    ("kubeletExtraArgs", &List(&ARG)),
    ("ignorePreflightErrors", &Any),
    ("imagePullPolicy", &Any),
    ("imagePullSerial", &Any),
]);
const TIMEOUTS: Shape = Obj(&[
    ("controlPlaneComponentHealthCheck", &Any),
    ("kubeletHealthCheck", &Any),
    ("kubernetesAPICall", &Any),
    ("etcdAPICall", &Any),
    ("tlsBootstrap", &Any),
    ("discovery", &Any),
    ("upgradeManifests", &Any),
]);
const PATCHES: Shape = Obj(&[("directory", &Any)]);
const INIT: Shape = Obj(&[
    ("bootstrapTokens", &Any),
    ("dryRun", &Any),
    ("nodeRegistration", &NODE_REGISTRATION),
    ("localAPIEndpoint", &Any),
    ("certificateKey", &Any),
    ("skipPhases", &Any),
    ("patches", &PATCHES),
    ("timeouts", &TIMEOUTS),
]);
const LOCAL_ETCD: Shape = Obj(&[
    ("imageRepository", &Any),
    ("imageTag", &Any),
    ("dataDir", &Any),
    ("extraArgs", &List(&ARG)),
    ("extraEnvs", &List(&ENV)),
    ("serverCertSANs", &Any),
    ("peerCertSANs", &Any),
]);
const EXTERNAL_ETCD: Shape =
    Obj(&[("endpoints", &Any), ("httpEndpoints", &Any), ("caFile", &Any), ("certFile", &Any), ("keyFile", &Any)]);
const CLUSTER: Shape = Obj(&[
    ("etcd", &Obj(&[("local", &LOCAL_ETCD), ("external", &EXTERNAL_ETCD)])),
    ("networking", &Obj(&[("serviceSubnet", &Any), ("podSubnet", &Any), ("dnsDomain", &Any)])),
    ("kubernetesVersion", &Any),
    ("controlPlaneEndpoint", &Any),
    ("apiServer", &API_SERVER),
    ("controllerManager", &COMPONENT),
    ("scheduler", &COMPONENT),
    ("dns", &Obj(&[("imageRepository", &Any), ("imageTag", &Any), ("disabled", &Any)])),
    ("proxy", &Obj(&[("disabled", &Any)])),
    ("certificatesDir", &Any),
    ("imageRepository", &Any),
    ("featureGates", &Any),
    ("clusterName", &Any),
    ("encryptionAlgorithm", &Any),
    ("certificateValidityPeriod", &Any),
    ("caCertificateValidityPeriod", &Any),
]);
const JOIN: Shape = Obj(&[
    ("dryRun", &Any),
    ("nodeRegistration", &NODE_REGISTRATION),
    ("caCertPath", &Any),
    ("discovery", &Any),
    ("controlPlane", &Any),
    ("skipPhases", &Any),
    ("patches", &PATCHES),
    ("timeouts", &TIMEOUTS),
]);

/// KubeletConfiguration (kubelet.config.k8s.io/v1beta1) top-level fields, as of 1.34.
const KUBELET_FIELDS: &[&str] = &[
    "enableServer",
    "staticPodPath",
    "podLogsDir",
    "syncFrequency",
    "fileCheckFrequency",
    "httpCheckFrequency",
    "staticPodURL",
    "staticPodURLHeader",
    "address",
    "port",
    "readOnlyPort",
    "tlsCertFile",
    "tlsPrivateKeyFile",
    "tlsCipherSuites",
    "tlsMinVersion",
    "rotateCertificates",
    "serverTLSBootstrap",
    "authentication",
    "authorization",
    "registryPullQPS",
    "registryBurst",
    "imagePullCredentialsVerificationPolicy",
    "preloadedImagesVerificationAllowlist",
    "eventRecordQPS",
    "eventBurst",
    "enableDebuggingHandlers",
    "enableContentionProfiling",
    "healthzPort",
    "healthzBindAddress",
    "oomScoreAdj",
    "clusterDomain",
    "clusterDNS",
    "streamingConnectionIdleTimeout",
    "nodeStatusUpdateFrequency",
    "nodeStatusReportFrequency",
    "nodeLeaseDurationSeconds",
    "imageMinimumGCAge",
    "imageMaximumGCAge",
    "imageGCHighThresholdPercent",
    "imageGCLowThresholdPercent",
    "volumeStatsAggPeriod",
    "kubeletCgroups",
    "systemCgroups",
    "cgroupRoot",
    "cgroupsPerQOS",
    "cgroupDriver",
    "cpuManagerPolicy",
    "singleProcessOOMKill",
    "cpuManagerPolicyOptions",
    "cpuManagerReconcilePeriod",
    "memoryManagerPolicy",
    "topologyManagerPolicy",
    "topologyManagerScope",
    "topologyManagerPolicyOptions",
    "qosReserved",
    "runtimeRequestTimeout",
    "hairpinMode",
    "maxPods",
    "podCIDR",
    "podPidsLimit",
    "resolvConf",
    "runOnce",
    "cpuCFSQuota",
    "cpuCFSQuotaPeriod",
    "nodeStatusMaxImages",
    "maxOpenFiles",
    "contentType",
    "kubeAPIQPS",
    "kubeAPIBurst",
    "serializeImagePulls",
    "maxParallelImagePulls",
    "evictionHard",
    "evictionSoft",
    "evictionSoftGracePeriod",
    "evictionPressureTransitionPeriod",
    "evictionMaxPodGracePeriod",
    "evictionMinimumReclaim",
    "mergeDefaultEvictionSettings",
    "podsPerCore",
    "enableControllerAttachDetach",
    "protectKernelDefaults",
    "makeIPTablesUtilChains",
    "iptablesMasqueradeBit",
    "iptablesDropBit",
    "featureGates",
    "failSwapOn",
    "memorySwap",
    "containerLogMaxSize",
    "containerLogMaxFiles",
    "containerLogMaxWorkers",
    "containerLogMonitorInterval",
    "configMapAndSecretChangeDetectionStrategy",
    "systemReserved",
    "kubeReserved",
    "reservedSystemCPUs",
    "showHiddenMetricsForVersion",
    "systemReservedCgroup",
    "kubeReservedCgroup",
    "enforceNodeAllocatable",
    "allowedUnsafeSysctls",
    "volumePluginDir",
    "providerID",
    "kernelMemcgNotification",
    "logging",
    "enableSystemLogHandler",
    "enableSystemLogQuery",
    "shutdownGracePeriod",
    "shutdownGracePeriodCriticalPods",
    "shutdownGracePeriodByPodPriority",
    "crashLoopBackOff",
    "reservedMemory",
    "enableProfilingHandler",
    "enableDebugFlagsHandler",
    "seccompDefault",
    "memoryThrottlingFactor",
    "registerWithTaints",
    "registerNode",
    "tracing",
    "localStorageCapacityIsolation",
    "containerRuntimeEndpoint",
    "imageServiceEndpoint",
    "failCgroupV1",
    "userNamespaces",
];

/// Fields ferry sets from elsewhere, with where to set them instead.
const OWNED: &[(&str, &str)] = &[
    ("*.apiVersion", "ferry writes the API version"),
    ("*.kind", "ferry writes the kind"),
    ("clusterConfiguration.kubernetesVersion", "it is the bundle's Kubernetes version"),
    (
        "clusterConfiguration.controlPlaneEndpoint",
        "it is spec.apiServer.endpoint and the node-local load balancer's port",
    ),
    ("clusterConfiguration.networking.podSubnet", "set spec.network.podSubnet"),
    ("clusterConfiguration.networking.serviceSubnet", "set spec.network.serviceSubnet"),
    ("initConfiguration.bootstrapTokens", "ferry creates the bootstrap token"),
    ("initConfiguration.certificateKey", "ferry creates the certificate key"),
    (
        "initConfiguration.localAPIEndpoint",
        "it is each master's address and port 6443, which the load balancer targets",
    ),
    ("joinConfiguration.discovery", "ferry sets the endpoint, token and CA hash"),
    ("joinConfiguration.controlPlane", "ferry sets it for masters from their address and the certificate key"),
];

/// How a fragment is checked: all the way down, or its top-level field names only.
enum Check {
    Shape(&'static Shape),
    TopLevel(&'static str, &'static str, &'static [&'static str]),
}

/// KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) top-level fields.
const KUBE_PROXY_FIELDS: &[&str] = &[
    "bindAddress",
    "bindAddressHardFail",
    "clientConnection",
    "clusterCIDR",
    "configSyncPeriod",
    "conntrack",
    "detectLocal",
    "detectLocalMode",
    "enableProfiling",
    "featureGates",
    "healthzBindAddress",
    "hostnameOverride",
    "iptables",
    "ipvs",
    "linux",
    "logging",
    "metricsBindAddress",
    "mode",
    "nftables",
    "nodePortAddresses",
    "oomScoreAdj",
    "portRange",
    "showHiddenMetricsForVersion",
    "windows",
    "winkernel",
];

/// Checks `spec.kubeadm` against the v1beta4 fields; the error names the full path.
pub fn validate(f: &Fragments) -> Result<(), FragmentError> {
    let parts: [(&str, &Option<Value>, Check); 5] = [
        ("initConfiguration", &f.init_configuration, Check::Shape(&INIT)),
        ("clusterConfiguration", &f.cluster_configuration, Check::Shape(&CLUSTER)),
        (
            "kubeletConfiguration",
            &f.kubelet_configuration,
            Check::TopLevel("KubeletConfiguration", KUBELET_API, KUBELET_FIELDS),
        ),
        (
            "kubeProxyConfiguration",
            &f.kube_proxy_configuration,
            Check::TopLevel("KubeProxyConfiguration", KUBE_PROXY_API, KUBE_PROXY_FIELDS),
        ),
        ("joinConfiguration", &f.join_configuration, Check::Shape(&JOIN)),
    ];
    for (name, frag, shape) in parts {
        let Some(v) = frag else { continue };
        let Value::Object(m) = v else {
            return Err(FragmentError::NotAMap { name });
        };
        for key in ["apiVersion", "kind"] {
            if m.contains_key(key) {
                return Err(FragmentError::TypeMeta { name, key });
            }
        }
        match shape {
            Check::Shape(s) => walk(v, s, name)?,
            Check::TopLevel(kind, api, fields) => {
                for k in m.keys() {
                    if !fields.contains(&k.as_str()) {
                        return Err(FragmentError::UnknownComponentField { kind, api, name, key: k.clone() });
                    }
                }
            }
        }
    }
    Ok(())
}

fn walk(v: &Value, shape: &Shape, path: &str) -> Result<(), FragmentError> {
    if let Some((_, why)) = OWNED.iter().find(|(p, _)| *p == path) {
        return Err(FragmentError::Owned { path: path.to_string(), why });
    }
    match (shape, v) {
        (Any, _) => Ok(()),
        (Obj(fields), Value::Object(m)) => {
            for (k, sub) in m {
                let p = format!("{path}.{k}");
                match fields.iter().find(|(name, _)| name == k) {
                    Some((_, s)) => walk(sub, s, &p)?,
                    None => return Err(FragmentError::UnknownField { path: p, known: names(fields) }),
                }
            }
            Ok(())
        }
        (Obj(_), other) => Err(FragmentError::ExpectedMap { path: path.to_string(), found: kind_of(other) }),
        (List(item), Value::Array(a)) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (List(_), other) => Err(FragmentError::ExpectedList { path: path.to_string(), found: kind_of(other) }),
    }
}

fn names(fields: &[(&str, &Shape)]) -> String {
    fields.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Parses `spec.kubeadm` on its own (for callers holding the YAML text), validating it.
pub fn parse_fragments(text: &str, origin: &str) -> Result<Fragments, FragmentsParseError> {
    let f: Fragments = serde_saphyr::from_str(text)
        .map_err(|e| FragmentsParseError::Syntax { origin: origin.to_string(), cause: Box::new(e) })?;
    validate(&f).map_err(|cause| FragmentsParseError::Invalid { origin: origin.to_string(), cause })?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/kubeadm");
    const TOKEN: &str = "abcdef.0123456789abcdef";
    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const HASH: &str = "sha256:97fe9c8fcc81715b896710d2ce0d1fc3f3cfb64faec80d70240bfb169d899b1d";

    fn inputs(version: &str, fragments: Fragments) -> ClusterInputs {
        ClusterInputs {
            name: "lab".into(),
            kubernetes_version: version.into(),
            endpoint: "apiserver.cluster.local".into(),
            lb_port: 6444,
            masters: vec!["10.0.0.11".into(), "10.0.0.12".into(), "10.0.0.13".into()],
            pod_subnet: None,
            service_subnet: Some("10.96.0.0/12".into()),
            extra_sans: vec!["k8s.example.internal".into()],
            fragments,
            pause_image: crate::registry::config::kubeadm_pause_image(version).unwrap().into(),
            cgroup_v1_hosts: Vec::new(),
        }
    }

    fn node(ip: &str) -> Node {
        Node { ip: ip.into(), name: None }
    }

    fn secrets(cp: bool) -> JoinSecrets {
        JoinSecrets { token: TOKEN.into(), ca_cert_hash: HASH.into(), certificate_key: cp.then(|| KEY.into()) }
    }

    /// Compares with `tests/golden/kubeadm/NAME`; `FERRY_UPDATE_GOLDEN=1` rewrites the file.
    fn golden(name: &str, text: &str) {
        let path = format!("{GOLDEN}/{name}");
        if std::env::var_os("FERRY_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(GOLDEN).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e} (FERRY_UPDATE_GOLDEN=1 writes it)"));
        assert_eq!(text, want, "{path} differs; review, then FERRY_UPDATE_GOLDEN=1");
    }

    fn docs(text: &str) -> Vec<Value> {
        text.split("\n---\n")
            .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
            .collect()
    }

    fn fragments() -> Fragments {
        parse_fragments(
            "clusterConfiguration:\n  apiServer:\n    certSANs: [api.site.example]\n    extraArgs:\n      - {name: audit-log-maxage, value: \"30\"}\n  controllerManager:\n    extraArgs: [{name: bind-address, value: 0.0.0.0}]\n  dns: {imageTag: v1.12.0}\n\
             kubeletConfiguration:\n  maxPods: 200\n  cgroupDriver: systemd\n\
             initConfiguration:\n  nodeRegistration:\n    kubeletExtraArgs: [{name: node-ip, value: 192.168.9.9}, {name: v, value: \"2\"}]\n    taints: []\n\
             joinConfiguration:\n  nodeRegistration:\n    ignorePreflightErrors: [Swap]\n",
            "cluster.yaml",
        )
        .unwrap()
    }

    #[test]
    fn init_config_golden() {
        let text = init_config(&inputs("v1.37.2", Fragments::default()), &node("10.0.0.11"), TOKEN, KEY).unwrap();
        golden("init-v1.37.yaml", &text);
        let d = docs(&text);
        assert_eq!(d.len(), 3);
        assert_eq!(
            (d[0]["apiVersion"].as_str(), d[0]["kind"].as_str()),
            (Some(KUBEADM_API), Some("InitConfiguration"))
        );
        assert_eq!(d[0]["bootstrapTokens"][0]["token"], TOKEN);
        assert_eq!(d[0]["certificateKey"], KEY);
        assert_eq!(d[0]["nodeRegistration"]["kubeletExtraArgs"], json!([{"name": "node-ip", "value": "10.0.0.11"}]));
        assert_eq!(d[1]["kind"], "ClusterConfiguration");
        assert_eq!(d[1]["kubernetesVersion"], "v1.37.2");
        assert_eq!(d[1]["controlPlaneEndpoint"], "apiserver.cluster.local:6444");
        assert_eq!(d[1]["imageRepository"], "registry.k8s.io");
        assert_eq!(d[1]["networking"]["podSubnet"], DEFAULT_POD_SUBNET);
        let sans = d[1]["apiServer"]["certSANs"].as_array().unwrap();
        for s in ["apiserver.cluster.local", "127.0.0.1", "10.0.0.11", "10.0.0.12", "10.0.0.13", "k8s.example.internal"]
        {
            assert!(sans.contains(&json!(s)), "{s} in {sans:?}");
        }
        assert_eq!((d[2]["apiVersion"].as_str(), d[2]["cgroupDriver"].as_str()), (Some(KUBELET_API), Some("systemd")));
        assert!(d[2].get("failCgroupV1").is_none() && d[0]["nodeRegistration"].get("ignorePreflightErrors").is_none());
        assert!(text.contains("registry.k8s.io/pause:3.10.2\n"), "the pause image in the header:\n{text}");
    }

    #[test]
    fn kube_proxy_configuration_is_a_fourth_document_when_given() {
        let f = parse_fragments("kubeProxyConfiguration:\n  conntrack: {maxPerCore: 0}\n", "cluster.yaml").unwrap();
        let text = init_config(&inputs("v1.36.3", f), &node("10.0.0.11"), TOKEN, KEY).unwrap();
        let d = docs(&text);
        assert_eq!(d.len(), 4);
        assert_eq!(
            (d[3]["apiVersion"].as_str(), d[3]["kind"].as_str()),
            (Some(KUBE_PROXY_API), Some("KubeProxyConfiguration"))
        );
        assert_eq!(d[3]["conntrack"]["maxPerCore"], 0);
        let e = parse_fragments("kubeProxyConfiguration:\n  conntrak: {}\n", "cluster.yaml").unwrap_err().to_string();
        assert!(e.contains("spec.kubeadm.kubeProxyConfiguration.conntrak") && e.contains(KUBE_PROXY_API), "{e}");
    }

    #[test]
    fn the_header_names_the_bundles_pause_image() {
        let mut c = inputs("v1.36.3", Fragments::default());
        c.pause_image = "registry.k8s.io/pause:3.10.9".into();
        let text = init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap();
        assert!(
            text.contains(
                "image, set in containerd's config (kubeadm has no field for it): registry.k8s.io/pause:3.10.9\n"
            ),
            "{text}"
        );
        c.pause_image = String::new();
        let e = init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap_err();
        assert!(e.to_string().contains("no sandbox (pause) image") && e.to_string().contains("v1.36.3"), "{e}");
        c.pause_image = "registry.k8s.io/pause:3.10.2".into();
        c.kubernetes_version = "v1.x.0".into();
        assert!(init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap_err().to_string().contains("not of the form"));
    }

    #[test]
    fn join_configs_golden() {
        let c = inputs("v1.36.3", Fragments::default());
        let w = join_config(&c, &node("10.0.0.21"), &secrets(false), JoinRole::Worker).unwrap();
        golden("join-worker-v1.36.yaml", &w);
        let d = docs(&w);
        assert_eq!(d[0]["kind"], "JoinConfiguration");
        assert_eq!(
            d[0]["discovery"]["bootstrapToken"],
            json!({"apiServerEndpoint": "apiserver.cluster.local:6444", "token": TOKEN, "caCertHashes": [HASH]})
        );
        assert!(d[0].get("controlPlane").is_none());
        let m = join_config(&c, &node("10.0.0.12"), &secrets(true), JoinRole::ControlPlane).unwrap();
        golden("join-master-v1.36.yaml", &m);
        let d = docs(&m);
        assert_eq!(
            d[0]["controlPlane"],
            json!({"localAPIEndpoint": {"advertiseAddress": "10.0.0.12", "bindPort": 6443}, "certificateKey": KEY})
        );
        let e = join_config(&c, &node("10.0.0.12"), &secrets(false), JoinRole::ControlPlane).unwrap_err();
        assert!(e.to_string().contains("10.0.0.12") && e.to_string().contains("certificate key"), "{e}");
    }

    #[test]
    fn fragments_merge_over_defaults_golden() {
        let c = inputs("v1.35.4", fragments());
        let text = init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap();
        golden("init-with-fragments-v1.35.yaml", &text);
        let d = docs(&text);
        // extraArgs by name: the fragment's node-ip replaces ferry's, v is added.
        assert_eq!(
            d[0]["nodeRegistration"]["kubeletExtraArgs"],
            json!([{"name": "node-ip", "value": "192.168.9.9"}, {"name": "v", "value": "2"}])
        );
        assert_eq!(d[0]["nodeRegistration"]["taints"], json!([]));
        assert_eq!(d[0]["nodeRegistration"]["criSocket"], CRI_SOCKET, "untouched defaults stay");
        let sans = d[1]["apiServer"]["certSANs"].as_array().unwrap();
        assert!(
            sans.contains(&json!("api.site.example")) && sans.contains(&json!("apiserver.cluster.local")),
            "certSANs are a union: {sans:?}"
        );
        assert_eq!(d[1]["apiServer"]["extraArgs"], json!([{"name": "audit-log-maxage", "value": "30"}]));
        assert_eq!(d[1]["dns"]["imageTag"], "v1.12.0");
        assert_eq!(d[2]["maxPods"], 200);
        let j = join_config(&c, &node("10.0.0.21"), &secrets(false), JoinRole::Worker).unwrap();
        assert_eq!(docs(&j)[0]["nodeRegistration"]["ignorePreflightErrors"], json!(["Swap"]));
    }

    #[test]
    fn cgroup_v1_hosts_opt_in_from_1_35_golden() {
        // master0 and one worker on cgroup v1, another worker on v2.
        let mut c = inputs("v1.35.4", Fragments::default());
        c.cgroup_v1_hosts = vec!["10.0.0.11".into(), "10.0.0.21".into()];
        let init = init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap();
        golden("init-cgroupv1-v1.35.yaml", &init);
        let d = docs(&init);
        assert_eq!(d[0]["nodeRegistration"]["ignorePreflightErrors"], json!(["SystemVerification"]));
        assert_eq!(d[2]["failCgroupV1"], json!(false));
        let w = join_config(&c, &node("10.0.0.21"), &secrets(false), JoinRole::Worker).unwrap();
        golden("join-worker-cgroupv1-v1.35.yaml", &w);
        let d = docs(&w);
        assert_eq!(d[0]["nodeRegistration"]["ignorePreflightErrors"], json!(["SystemVerification"]));
        assert_eq!(d[0]["patches"], json!({"directory": PATCHES_DIR}));
        assert_eq!(
            kubelet_patches(&c, &node("10.0.0.21")),
            [(format!("{PATCHES_DIR}/kubeletconfiguration+merge.yaml"), "failCgroupV1: false\n".to_string())]
        );
        let v2 = join_config(&c, &node("10.0.0.22"), &secrets(false), JoinRole::Worker).unwrap();
        let d = docs(&v2);
        assert!(d[0]["nodeRegistration"].get("ignorePreflightErrors").is_none() && d[0].get("patches").is_none());
        assert!(kubelet_patches(&c, &node("10.0.0.22")).is_empty());

        // A v2 master0 with a v1 worker: the cluster-wide kubelet setting, no skipped check on master0.
        c.cgroup_v1_hosts = vec!["10.0.0.21".into()];
        let d = docs(&init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap());
        assert_eq!(d[2]["failCgroupV1"], json!(false));
        assert!(d[0]["nodeRegistration"].get("ignorePreflightErrors").is_none());

        // A fragment's ignorePreflightErrors joins ferry's.
        let mut c = inputs("v1.37.2", fragments());
        c.cgroup_v1_hosts = vec!["10.0.0.21".into()];
        let j = join_config(&c, &node("10.0.0.21"), &secrets(false), JoinRole::Worker).unwrap();
        assert_eq!(docs(&j)[0]["nodeRegistration"]["ignorePreflightErrors"], json!(["SystemVerification", "Swap"]));

        // Before 1.35 the kubelet only warns about cgroup v1: nothing is changed.
        let mut c = inputs("v1.34.4", Fragments::default());
        c.cgroup_v1_hosts = vec!["10.0.0.11".into(), "10.0.0.21".into()];
        let d = docs(&init_config(&c, &node("10.0.0.11"), TOKEN, KEY).unwrap());
        assert!(d[2].get("failCgroupV1").is_none() && d[0]["nodeRegistration"].get("ignorePreflightErrors").is_none());
        assert!(kubelet_patches(&c, &node("10.0.0.21")).is_empty());
    }

    #[test]
    fn cluster_file_carries_and_checks_spec_kubeadm() {
        let head = "apiVersion: ferry.dev/v1alpha1\nkind: Cluster\nmetadata: {name: lab}\nspec:\n  kubeadm:\n";
        let f = crate::cluster::parse(
            &format!("{head}    clusterConfiguration: {{dns: {{imageTag: v1.12.0}}}}\n"),
            "cluster.yaml",
        )
        .unwrap();
        let k = f.spec.kubeadm.unwrap();
        assert_eq!(k.cluster_configuration.unwrap()["dns"]["imageTag"], "v1.12.0");
        let e =
            crate::cluster::parse(&format!("{head}    clusterConfiguration: {{dns: {{tag: v1}}}}\n"), "cluster.yaml")
                .unwrap_err();
        assert!(
            e.to_string().contains("cluster.yaml: spec.kubeadm.clusterConfiguration.dns.tag: unknown field"),
            "{e}"
        );
        let e = crate::cluster::parse(&format!("{head}    resetConfiguration: {{}}\n"), "cluster.yaml").unwrap_err();
        assert!(e.to_string().contains("resetConfiguration"), "{e}");
    }

    #[test]
    fn bad_fragments_name_the_field() {
        let cases = [
            (
                "clusterConfiguration:\n  apiServer:\n    certSAN: [x]\n",
                "spec.kubeadm.clusterConfiguration.apiServer.certSAN: unknown field",
            ),
            (
                "clusterConfiguration:\n  apiServer:\n    extraArgs: {audit-log-maxage: \"30\"}\n",
                "spec.kubeadm.clusterConfiguration.apiServer.extraArgs: expected a list",
            ),
            (
                "clusterConfiguration:\n  apiServer:\n    extraArgs: [{name: a, valeu: b}]\n",
                "spec.kubeadm.clusterConfiguration.apiServer.extraArgs[0].valeu: unknown field",
            ),
            (
                "clusterConfiguration:\n  kubernetesVersion: v1.30.0\n",
                "spec.kubeadm.clusterConfiguration.kubernetesVersion: set by ferry",
            ),
            ("clusterConfiguration:\n  networking: {podSubnet: 10.0.0.0/8}\n", "set spec.network.podSubnet"),
            (
                "initConfiguration:\n  nodeRegistration: {kubeletExtraArg: []}\n",
                "spec.kubeadm.initConfiguration.nodeRegistration.kubeletExtraArg: unknown field",
            ),
            ("joinConfiguration:\n  discovery: {}\n", "spec.kubeadm.joinConfiguration.discovery: set by ferry"),
            (
                "kubeletConfiguration:\n  cgroupsDriver: systemd\n",
                "spec.kubeadm.kubeletConfiguration.cgroupsDriver: unknown KubeletConfiguration field",
            ),
            (
                "kubeletConfiguration:\n  kind: KubeletConfiguration\n",
                "spec.kubeadm.kubeletConfiguration.kind: ferry writes",
            ),
            ("clusterConfiguration: [a]\n", "spec.kubeadm.clusterConfiguration must be a map"),
        ];
        for (yaml, want) in cases {
            let e = format!("{:#}", parse_fragments(yaml, "cluster.yaml").unwrap_err());
            assert!(e.contains(want) && e.starts_with("cluster.yaml: "), "{yaml}\n→ {e}\nwanted: {want}");
        }
        let e = format!("{:#}", parse_fragments("resetConfiguration: {}\n", "cluster.yaml").unwrap_err());
        assert!(e.contains("resetConfiguration"), "{e}");
    }
}
