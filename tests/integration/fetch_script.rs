//! `scripts/fetch-kubernetes.sh`: it cannot be run for real here (no internet), so this checks
//! what can be checked: it parses (`bash -n`), its `--dry-run` plan names every expected upstream
//! URL with its checksum file for a version, a dry run downloads nothing (curl and wget on PATH
//! are traps that record any call) and writes nothing, and bad arguments are refused.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    ferry_tests::workspace_root().join("scripts/fetch-kubernetes.sh")
}

/// A PATH whose curl and wget record that they were called and fail (written with
/// `write_program`, so that a call is recorded rather than refused as "Text file busy").
fn trapped_path(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["curl", "wget"] {
        let script = format!("#!/bin/sh\necho \"{tool} $*\" >> {}/network-calls\nexit 1\n", dir.display());
        ferry_tests::write_program(&bin.join(tool), script.as_bytes());
    }
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

#[test]
fn fetch_script_parses_and_plans_every_download_without_network() {
    ferry_tests::ok(Command::new("bash").arg("-n").arg(script()));
    let dir = ferry_tests::scratch();
    let out = dir.path().join("out");
    let path = trapped_path(dir.path());
    let plan = ferry_tests::ok(
        Command::new(script()).args(["v1.36.3", "amd64"]).arg(&out).arg("--dry-run").env("PATH", &path),
    );
    let k8s = "https://dl.k8s.io/release/v1.36.3/bin/linux/amd64";
    let gh = "https://github.com";
    let expected = [
        (format!("{k8s}/kubeadm"), format!("{k8s}/kubeadm.sha256")),
        (format!("{k8s}/kubelet"), format!("{k8s}/kubelet.sha256")),
        (format!("{k8s}/kubectl"), format!("{k8s}/kubectl.sha256")),
        (
            format!("{gh}/containerd/containerd/releases/download/v2.4.2/containerd-static-2.4.2-linux-amd64.tar.gz"),
            format!(
                "{gh}/containerd/containerd/releases/download/v2.4.2/containerd-static-2.4.2-linux-amd64.tar.gz.sha256sum"
            ),
        ),
        (
            format!("{gh}/opencontainers/runc/releases/download/v1.5.3/runc.amd64"),
            format!("{gh}/opencontainers/runc/releases/download/v1.5.3/runc.sha256sum"),
        ),
        (
            format!("{gh}/containernetworking/plugins/releases/download/v1.10.0/cni-plugins-linux-amd64-v1.10.0.tgz"),
            format!(
                "{gh}/containernetworking/plugins/releases/download/v1.10.0/cni-plugins-linux-amd64-v1.10.0.tgz.sha256"
            ),
        ),
        (
            format!("{gh}/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-amd64.tar.gz"),
            format!(
                "{gh}/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-amd64.tar.gz.sha256"
            ),
        ),
        (
            "https://get.helm.sh/helm-v3.22.0-linux-amd64.tar.gz".into(),
            "https://get.helm.sh/helm-v3.22.0-linux-amd64.tar.gz.sha256sum".into(),
        ),
    ];
    for (url, sum) in &expected {
        assert!(
            plan.contains(&format!("fetch {url}\n  verify against {sum}\n")),
            "{url} / {sum} missing from the plan:\n{plan}"
        );
    }
    assert!(
        plan.contains(&format!(
            "fetch {gh}/flannel-io/flannel/releases/download/v0.28.10/kube-flannel.yml\n  verify sha256 <pin"
        )),
        "{plan}"
    );
    assert_eq!(plan.matches("\nfetch ").count() + usize::from(plan.starts_with("fetch ")), 9, "{plan}");
    assert!(
        !dir.path().join("network-calls").exists(),
        "a dry run called the network: {}",
        std::fs::read_to_string(dir.path().join("network-calls")).unwrap()
    );
    assert!(!out.exists(), "a dry run wrote {}", out.display());

    // arm64 and a pinned flannel digest; the crictl line follows the minor.
    let plan = ferry_tests::ok(
        Command::new(script())
            .args(["v1.34.4", "arm64"])
            .arg(&out)
            .args(["--dry-run", "--flannel-sha256", "ab".repeat(32).as_str()])
            .env("PATH", &path),
    );
    assert!(plan.contains("https://dl.k8s.io/release/v1.34.4/bin/linux/arm64/kubelet.sha256"), "{plan}");
    assert!(plan.contains("crictl-v1.34.0-linux-arm64.tar.gz"), "{plan}");
    assert!(plan.contains(&format!("verify sha256 {}", "ab".repeat(32))), "{plan}");
    assert!(!out.exists());
}

#[test]
fn fetch_script_says_it_was_not_run_here_and_refuses_bad_arguments() {
    let help = ferry_tests::ok(Command::new(script()).arg("--help"));
    assert!(help.contains("NOT RUN HERE") && help.contains("no internet"), "{help}");
    assert!(help.contains("v1.34.x (past end of life), v1.35.x, v1.36.x, v1.37.x"), "{help}");
    let dir = ferry_tests::scratch();
    let out = dir.path().join("o");
    let e = ferry_tests::fails(Command::new(script()).args(["v1.33.4", "amd64"]).arg(&out).arg("--dry-run"));
    assert!(e.contains("v1.33.4 is not supported"), "{e}");
    let e = ferry_tests::fails(Command::new(script()).args(["v1.36.3", "s390x"]).arg(&out).arg("--dry-run"));
    assert!(e.contains("s390x is not supported"), "{e}");
    let e = ferry_tests::fails(Command::new(script()).args(["v1.36.3"]));
    assert!(e.contains("usage:"), "{e}");
}
