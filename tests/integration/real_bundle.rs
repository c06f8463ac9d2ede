//! Bundles of real Kubernetes (`scripts/build-kubernetes.sh`): `ferry build` takes each tree
//! unchanged and offline, with no image missing, and `installer inspect` lists exactly the
//! control-plane images the tree's own kubeadm asks for, plus the CNI's.

use std::process::Command;

use ferry_tests::real_k8s;
use ferry_tests::{ok, text};

#[test]
fn real_bundles_build_offline_with_every_image_and_inspect_lists_kubeadms_images() {
    for k8s in real_k8s::all() {
        let version = ok(k8s.kubeadm().args(["version", "-o", "short"]));
        assert_eq!(version.trim(), k8s.version, "kubeadm reports the version it was built as");
        let kubelet = ok(Command::new(k8s.program("usr/bin/kubelet")).arg("--version"));
        assert_eq!(kubelet.trim(), format!("Kubernetes {}", k8s.version));

        let dir = ferry_tests::scratch();
        // A build that cannot find an image fails.
        let (installer, key, build) = k8s.build_installer(dir.path());
        assert!(!build.contains("MISSING"), "{}: {build}", k8s.version);

        let inspect = ok(Command::new(&installer).args(["inspect", "--json"]));
        let doc: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(doc["metadata"]["kubernetes_version"], k8s.version.as_str(), "{inspect}");
        let missing = doc["missingImages"].as_array().cloned().unwrap_or_default();
        assert!(missing.is_empty(), "{}: missing images {missing:?}", k8s.version);
        let listed: Vec<String> = doc["metadata"]["images"]
            .as_array()
            .unwrap_or_else(|| panic!("no images in the metadata: {inspect}"))
            .iter()
            .map(|i| i["ref"].as_str().unwrap().to_string())
            .collect();
        let wanted = k8s.kubeadm_images();
        assert_eq!(
            wanted.len(),
            7,
            "kubeadm lists apiserver, controller-manager, scheduler, proxy, CoreDNS, pause, etcd: {wanted:?}"
        );
        for image in &wanted {
            assert!(listed.contains(image), "{}: kubeadm's {image} is not in the installer: {listed:?}", k8s.version);
        }
        assert!(
            listed.iter().any(|i| i.starts_with("ghcr.io/flannel-io/flannel:")),
            "the CNI's image is carried: {listed:?}"
        );
        assert_eq!(listed.len(), wanted.len() + 1, "nothing else: {listed:?}");

        // The human listing names them too, and `verify` holds.
        let human = ok(Command::new(&installer).arg("inspect"));
        for image in &wanted {
            assert!(human.contains(image.as_str()), "{human}");
        }
        let verify =
            ferry_tests::run(Command::new(&installer).arg("verify").arg("--key").arg(key.with_extension("pub")));
        assert!(verify.status.success(), "{}", text(&verify));
    }
}
