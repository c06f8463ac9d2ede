//! ferry's own Kubernetes knowledge held against real kubeadm, for every version the suite
//! builds (`FERRY_REAL_K8S`, see `ferry_tests::real_k8s`; unset, these tests fail saying how to
//! set it):
//!
//! * the packer's built-in control-plane table (its fallback when a bundle's kubeadm cannot run on
//!   the build machine) must equal `kubeadm config images list --kubernetes-version V`;
//! * every kubeadm configuration the installer writes (init, init with `spec.kubeadm` fragments,
//!   worker and master joins, and the cgroup v1 variants) must pass `kubeadm config validate`.

use ferry_packer::images::controlplane;
use ferry_stub::kube::config::{self as kubecfg, ClusterInputs, JoinRole, JoinSecrets, Node};
use ferry_tests::real_k8s::{self, RealKubernetes};

const TOKEN: &str = "abcdef.0123456789abcdef";
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const HASH: &str = "sha256:97fe9c8fcc81715b896710d2ce0d1fc3f3cfb64faec80d70240bfb169d899b1d";

/// A cluster file's `spec.kubeadm` with a fragment for every document kind, as a site would write.
const FRAGMENTS: &str = "clusterConfiguration:\n  apiServer:\n    certSANs: [api.site.example]\n    extraArgs:\n      - {name: audit-log-maxage, value: \"30\"}\n  controllerManager:\n    extraArgs: [{name: bind-address, value: 0.0.0.0}]\n  etcd:\n    local:\n      extraArgs: [{name: quota-backend-bytes, value: \"8589934592\"}]\n\
kubeletConfiguration:\n  maxPods: 200\n  cgroupDriver: systemd\n  serializeImagePulls: false\n\
kubeProxyConfiguration:\n  mode: iptables\n  conntrack: {maxPerCore: 0}\n\
initConfiguration:\n  nodeRegistration:\n    kubeletExtraArgs: [{name: node-ip, value: 192.168.9.9}, {name: v, value: \"2\"}]\n    taints: []\n\
joinConfiguration:\n  nodeRegistration:\n    ignorePreflightErrors: [Swap]\n";

#[test]
fn real_kubeadm_lists_what_the_builtin_table_says() {
    let mut differ = Vec::new();
    for k8s in real_k8s::all() {
        let real = k8s.kubeadm_images();
        match controlplane::images(&k8s.version) {
            Ok(table) if table == real => {}
            Ok(table) => differ.push(format!(
                "{}: kubeadm lists\n    {}\n  ferry's table says\n    {}",
                k8s.version,
                real.join("\n    "),
                table.join("\n    ")
            )),
            Err(e) => differ.push(format!("{}: {e}; kubeadm lists {}", k8s.version, real.join(" "))),
        }
    }
    assert!(
        differ.is_empty(),
        "packer/src/images/controlplane.rs TABLE disagrees with real kubeadm (update the row from \
         the newest patch's constants.go):\n{}",
        differ.join("\n")
    );
}

/// Writes `text` to `DIR/name` and runs the tree's `kubeadm config validate --config` on it;
/// returns a description of the failure, if any.
fn validate(k8s: &RealKubernetes, dir: &std::path::Path, name: &str, text: &str) -> Option<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = ferry_tests::run(k8s.kubeadm().args(["config", "validate", "--config"]).arg(&path));
    (!out.status.success()).then(|| {
        format!(
            "{} refuses {name} ({}):\n{}\n--- {name}:\n{text}",
            k8s.version,
            out.status,
            ferry_tests::text(&out).trim()
        )
    })
}

#[test]
fn real_kubeadm_validates_every_config_ferry_writes() {
    let mut refused = Vec::new();
    for k8s in real_k8s::all() {
        let dir = ferry_tests::scratch();
        let inputs = |fragments: kubecfg::Fragments, cgroup_v1_hosts: &[&str]| ClusterInputs {
            name: "lab".into(),
            kubernetes_version: k8s.version.clone(),
            endpoint: "apiserver.cluster.local".into(),
            lb_port: 6444,
            masters: vec!["10.0.0.11".into(), "10.0.0.12".into()],
            pod_subnet: None,
            service_subnet: None,
            extra_sans: vec!["k8s.example.internal".into()],
            fragments,
            pause_image: controlplane::images(&k8s.version)
                .ok()
                .and_then(|i| i.into_iter().find(|i| i.contains("/pause:")))
                .unwrap_or_else(|| "registry.k8s.io/pause:3.10.2".into()),
            cgroup_v1_hosts: cgroup_v1_hosts.iter().map(|h| h.to_string()).collect(),
        };
        let node = |ip: &str| Node { ip: ip.into(), name: None };
        let secrets = |cp: bool| JoinSecrets {
            token: TOKEN.into(),
            ca_cert_hash: HASH.into(),
            certificate_key: cp.then(|| KEY.into()),
        };
        let fragments = kubecfg::parse_fragments(FRAGMENTS, "cluster.yaml").unwrap();
        let plain = inputs(kubecfg::Fragments::default(), &[]);
        let with_fragments = inputs(fragments, &[]);
        let cgroup_v1 = inputs(kubecfg::Fragments::default(), &["10.0.0.11", "10.0.0.21"]);
        let configs = [
            ("init.yaml", kubecfg::init_config(&plain, &node("10.0.0.11"), TOKEN, KEY)),
            ("init-with-fragments.yaml", kubecfg::init_config(&with_fragments, &node("10.0.0.11"), TOKEN, KEY)),
            ("join-worker.yaml", kubecfg::join_config(&plain, &node("10.0.0.21"), &secrets(false), JoinRole::Worker)),
            (
                "join-master.yaml",
                kubecfg::join_config(&plain, &node("10.0.0.12"), &secrets(true), JoinRole::ControlPlane),
            ),
            (
                "join-worker-with-fragments.yaml",
                kubecfg::join_config(&with_fragments, &node("10.0.0.21"), &secrets(false), JoinRole::Worker),
            ),
            ("init-cgroupv1.yaml", kubecfg::init_config(&cgroup_v1, &node("10.0.0.11"), TOKEN, KEY)),
            (
                "join-worker-cgroupv1.yaml",
                kubecfg::join_config(&cgroup_v1, &node("10.0.0.21"), &secrets(false), JoinRole::Worker),
            ),
        ];
        for (name, text) in configs {
            let text = text.unwrap_or_else(|e| panic!("{}: ferry cannot write {name}: {e:#}", k8s.version));
            refused.extend(validate(&k8s, dir.path(), name, &text));
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n\n"));
}
