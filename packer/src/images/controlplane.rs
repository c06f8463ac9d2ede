//! The images `kubeadm init` pulls for a Kubernetes version: kube-apiserver,
//! kube-controller-manager, kube-scheduler, kube-proxy, etcd, coredns and pause, all from
//! `registry.k8s.io` (the default `imageRepository`, under which CoreDNS lives at
//! `registry.k8s.io/coredns/coredns`).
//!
//! The etcd, CoreDNS and pause tags are those of kubeadm's `cmd/kubeadm/app/constants` in the
//! `.0` release of each minor. Later patch releases of kubeadm have bumped etcd now and then, so
//! the installer should pin what this table says through `ClusterConfiguration`
//! (`etcd.local.imageTag`, `dns.imageTag`) and containerd's sandbox image, rather than rely on
//! kubeadm's compiled-in defaults. Compare with `kubeadm config images list
//! --kubernetes-version vX.Y.Z` when adding a row.

use crate::spec::parse_kubernetes_version;

/// The registry and repository prefix kubeadm uses by default.
pub const IMAGE_REPOSITORY: &str = "registry.k8s.io";

/// One row of the table: what kubeadm of a minor release deploys besides the versioned
/// Kubernetes components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Kubernetes minor version (`33` for v1.33).
    pub minor: u32,
    /// etcd image tag.
    pub etcd: &'static str,
    /// CoreDNS image tag.
    pub coredns: &'static str,
    /// pause (sandbox) image tag.
    pub pause: &'static str,
}

/// The supported Kubernetes minors.
pub const TABLE: &[Row] = &[
    Row { minor: 31, etcd: "3.5.15-0", coredns: "v1.11.3", pause: "3.10" },
    Row { minor: 32, etcd: "3.5.16-0", coredns: "v1.11.3", pause: "3.10" },
    Row { minor: 33, etcd: "3.5.21-0", coredns: "v1.12.0", pause: "3.10" },
    Row { minor: 34, etcd: "3.6.4-0", coredns: "v1.12.1", pause: "3.10.1" },
];

/// The supported versions, for messages: `v1.31, v1.32, …`.
pub fn supported() -> String {
    TABLE.iter().map(|r| format!("v1.{}.x", r.minor)).collect::<Vec<_>>().join(", ")
}

/// The table row for `version` (`vX.Y.Z`).
pub fn row(version: &str) -> Result<Row, String> {
    let (major, minor, _) = parse_kubernetes_version(version)
        .ok_or_else(|| format!("Kubernetes version `{version}` is not of the form vMAJOR.MINOR.PATCH"))?;
    TABLE.iter().find(|r| major == 1 && r.minor == minor).copied().ok_or_else(|| {
        format!("Kubernetes {version} is not supported: ferry knows the control-plane images of {}", supported())
    })
}

/// The full references `kubeadm init` needs for `version`, in kubeadm's order.
pub fn images(version: &str) -> Result<Vec<String>, String> {
    let r = row(version)?;
    let repo = IMAGE_REPOSITORY;
    let mut out: Vec<String> = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"]
        .iter()
        .map(|c| format!("{repo}/{c}:{version}"))
        .collect();
    out.push(format!("{repo}/coredns/coredns:{}", r.coredns));
    out.push(format!("{repo}/pause:{}", r.pause));
    out.push(format!("{repo}/etcd:{}", r.etcd));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_31_matches_kubeadm_config_images_list() {
        // `kubeadm config images list --kubernetes-version v1.31.0` (see docs/notes k8s-offline §3.6)
        assert_eq!(
            images("v1.31.0").unwrap(),
            [
                "registry.k8s.io/kube-apiserver:v1.31.0",
                "registry.k8s.io/kube-controller-manager:v1.31.0",
                "registry.k8s.io/kube-scheduler:v1.31.0",
                "registry.k8s.io/kube-proxy:v1.31.0",
                "registry.k8s.io/coredns/coredns:v1.11.3",
                "registry.k8s.io/pause:3.10",
                "registry.k8s.io/etcd:3.5.15-0",
            ]
        );
    }

    #[test]
    fn pause_changes_at_1_34() {
        // kubeadm's PauseVersion: 3.10 for 1.31-1.33, 3.10.1 from 1.34.
        for (v, pause) in [("v1.31.2", "3.10"), ("v1.32.0", "3.10"), ("v1.33.4", "3.10"), ("v1.34.1", "3.10.1")] {
            assert_eq!(row(v).unwrap().pause, pause, "{v}");
            assert!(images(v).unwrap().contains(&format!("registry.k8s.io/pause:{pause}")));
        }
    }

    #[test]
    fn every_row_yields_seven_valid_references() {
        for r in TABLE {
            let v = format!("v1.{}.3", r.minor);
            let imgs = images(&v).unwrap();
            assert_eq!(imgs.len(), 7);
            for i in &imgs {
                let parsed = crate::images::reference::ImageRef::parse(i).unwrap();
                assert_eq!(parsed.registry, "registry.k8s.io");
                assert_eq!(&parsed.to_string(), i, "already normalised");
            }
            assert!(imgs.iter().any(|i| i.ends_with(&format!("kube-proxy:{v}"))));
        }
        let minors: Vec<u32> = TABLE.iter().map(|r| r.minor).collect();
        assert!(minors.windows(2).all(|w| w[1] == w[0] + 1), "no gaps: {minors:?}");
    }

    #[test]
    fn unsupported_versions_list_the_supported_ones() {
        let e = row("v1.29.0").unwrap_err();
        assert!(e.contains("v1.29.0") && e.contains("v1.31.x") && e.contains("v1.34.x"), "{e}");
        assert!(row("v2.33.0").is_err());
        assert!(row("1.33").is_err());
    }
}
