//! `scripts/build-kubernetes.sh` on bad input: versions the Go module proxy does not serve or
//! ferry does not support are refused before anything is built, a component that fails to build
//! is named with the end of its build log, and OUTDIR is never left half-made: it is either
//! untouched or whole. (Its real output is checked by `real_bundle` and `real_kubelet`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::real_k8s;

fn script() -> PathBuf {
    ferry_tests::workspace_root().join("scripts/build-kubernetes.sh")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn build_kubernetes_refuses_versions_it_cannot_build() {
    let dir = ferry_tests::scratch();
    let out = dir.path().join("out");

    // Not served: the proxy has no such release; the served ones are listed.
    let e = ferry_tests::fails(Command::new(script()).arg("v1.36.99").arg(&out));
    assert!(e.contains("k8s.io/kubernetes v1.36.99 is not served"), "{e}");
    let newest = real_k8s::newest();
    assert!(e.contains(&newest.version), "the served versions are listed ({}): {e}", newest.version);
    assert!(!out.exists());

    // Not supported, not a version, not an architecture, not a call.
    let e = ferry_tests::fails(Command::new(script()).arg("v1.33.4").arg(&out));
    assert!(e.contains("v1.33.4 is not supported") && e.contains("v1.37"), "{e}");
    let e = ferry_tests::fails(Command::new(script()).arg("1.36").arg(&out));
    assert!(e.contains("not of the form v1.MINOR.PATCH"), "{e}");
    let e = ferry_tests::fails(Command::new(script()).arg(&newest.version).arg(&out).args(["--arch", "s390x"]));
    assert!(e.contains("s390x is not supported"), "{e}");
    let e = ferry_tests::fails(Command::new(script()).arg(&newest.version));
    assert!(e.contains("usage:"), "{e}");
    assert!(!out.exists());
}

#[test]
fn build_kubernetes_names_a_failing_component_and_leaves_outdir_untouched() {
    // The components before containerd are cached from scripts/test.sh's build, so this reaches
    // containerd in seconds, where a version that does not exist makes its build fail.
    let newest = real_k8s::newest();
    let dir = ferry_tests::scratch();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep-me"), "an earlier build").unwrap();

    let e =
        ferry_tests::fails(Command::new(script()).arg(&newest.version).arg(&out).env("CONTAINERD_VERSION", "9.99.0"));
    assert!(e.contains("FAILED: containerd v9.99.0"), "{e}");
    assert!(e.contains("the last lines of its build log"), "{e}");
    assert!(e.contains("v9.99.0"), "the log's own words are shown: {e}");
    assert_eq!(listing(&out), ["keep-me"], "OUTDIR is untouched");
    assert_eq!(listing(dir.path()), ["out"], "no half-made tree beside it");
}
