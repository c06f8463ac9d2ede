//! `spec.base`: an application team's bundle built on the platform team's installer. The new
//! installer carries the base's entries and images and its own, runs the base's launch steps
//! first, is signed by the new key alone, records the base (`inspect`), and its built-in
//! registry serves the base's images and the new ones; the base can come from a file or from a
//! registry (`oci://`). An untrusted base, a file that is not an installer, another Kubernetes
//! version, other platforms and a path both provide are refused with no output written.

use super::images::{K8S, ferry_cmd, mirrors, push_control_plane};
use ferry_tests::registry::{Layout, Upstream};
use ferry_tests::*;
use payload_format::Payload;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `dir/bundle.yaml` named `name` with `body` under `spec:` (after the Kubernetes version).
fn spec(dir: &Path, name: &str, kubernetes: &str, body: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join("bundle.yaml");
    fs::write(
        &p,
        format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: {name}, version: 1.0.0}}\nspec:\n  kubernetes: {{version: {kubernetes}}}\n{body}"
        ),
    )
    .unwrap();
    p
}

fn manifest(dir: &Path, rel: &str, image: &str) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}}}\nspec:\n  containers: [{{name: c, image: {image}}}]\n",
            rel.replace(['/', '.'], "-")
        ),
    )
    .unwrap();
}

fn build(home: &Path, spec: &Path, out: &Path, key: &Path) -> std::process::Output {
    run(ferry_cmd(home).arg("build").arg(spec).arg("-o").arg(out).arg("--key").arg(key.with_extension("key")))
}

fn inspect_json(installer: &Path) -> Value {
    serde_json::from_str(&ok(Command::new(installer).args(["inspect", "--json"]))).unwrap()
}

#[test]
fn a_bundle_built_on_a_base_carries_both_signed_by_its_own_key() {
    let dir = scratch();
    let home = dir.path();
    let hub = Upstream::start();
    let layout = Layout::init(&home.join("layout"));
    push_control_plane(&hub, &layout);
    layout.image("agent", &[("bin/busybox", None), ("etc/who", Some(b"platform agent"))], "amd64");
    hub.push(&layout.src("agent"), "platform/agent:1");
    layout.image("shop", &[("bin/busybox", None), ("etc/who", Some(b"team shop"))], "amd64");
    hub.push(&layout.src("shop"), "team/shop:2");
    let mirrors = mirrors(&[("docker.io", &hub), ("registry.k8s.io", &hub)]);
    let platform_key = keygen(home, "platform");
    let team_key = keygen(home, "team");

    let pdir = home.join("platform");
    manifest(&pdir, "platform/agent.yaml", "docker.io/platform/agent:1");
    let pspec = spec(
        &pdir,
        "platform",
        K8S,
        &format!("  manifests: [{{path: platform}}]\n  launch:\n    - manifests: platform/agent.yaml\n{mirrors}"),
    );
    let base = home.join("platform.installer");
    let out = build(home, &pspec, &base, &platform_key);
    assert!(out.status.success(), "{}", text(&out));

    let tdir = home.join("team");
    manifest(&tdir, "apps/shop.yaml", "docker.io/team/shop:2");
    fs::copy(platform_key.with_extension("pub"), tdir.join("platform.pub")).unwrap();
    let body = format!(
        "  base: {{installer: ../platform.installer, key: platform.pub}}\n  manifests: [{{path: apps}}]\n  launch:\n    - manifests: apps/shop.yaml\n{mirrors}"
    );
    let tspec = spec(&tdir, "shop", K8S, &body);
    let team = home.join("team.installer");
    let out = build(home, &tspec, &team, &team_key);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("already in the base installer"), "{said}");

    // Everything of the base, and the new content; signed by the team's key alone.
    let (b, t) = (Payload::open(&base).unwrap(), Payload::open(&team).unwrap());
    let team_paths: std::collections::BTreeSet<&str> = t.index().entries.iter().map(|e| e.path.as_str()).collect();
    for e in &b.index().entries {
        assert!(team_paths.contains(e.path.as_str()), "{} of the base is missing", e.path);
    }
    assert!(team_paths.contains("bundle/apps/shop.yaml") && team_paths.contains("bundle/platform/agent.yaml"));
    let verified = ok(Command::new(&team).arg("verify").arg("--key").arg(team_key.with_extension("pub")));
    assert!(verified.contains("(trusted)"), "{verified}");
    let refused = run(Command::new(&team).arg("verify").arg("--key").arg(platform_key.with_extension("pub")));
    assert!(!refused.status.success(), "the base's key must not vouch for the new installer");

    // The lineage, the images of both, the base's launch steps first.
    let doc = inspect_json(&team);
    let meta = &doc["metadata"];
    assert_eq!(meta["base"]["name"], "platform");
    assert_eq!(meta["base"]["version"], "1.0.0");
    assert_eq!(meta["base"]["digest"], format!("sha256:{}", hex(&b.trailer().index_sha256)));
    let refs: Vec<&str> = meta["images"].as_array().unwrap().iter().map(|i| i["ref"].as_str().unwrap()).collect();
    assert!(refs.contains(&"docker.io/platform/agent:1") && refs.contains(&"docker.io/team/shop:2"), "{refs:?}");
    assert!(refs.iter().any(|r| r.starts_with("registry.k8s.io/kube-apiserver")), "{refs:?}");
    let steps: Vec<String> = meta["launch"].as_array().unwrap().iter().map(|s| s.to_string()).collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps[0].contains("platform/agent.yaml") && steps[1].contains("apps/shop.yaml"), "{steps:?}");
    let shown = ok(Command::new(&team).arg("inspect"));
    assert!(shown.contains("built on:     platform 1.0.0"), "{shown}");

    // Its registry serves both teams' images.
    let serve = super::registry::Serve::start(&team, &["--key", team_key.with_extension("pub").to_str().unwrap()]);
    for repo in ["platform/agent:1", "team/shop:2"] {
        let out = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{repo}", serve.addr)));
        assert!(out.status.success(), "{repo}: {}", text(&out));
    }
    drop(serve);

    // The same base from a registry.
    let site = Upstream::start();
    ok(ferry_cmd(home)
        .arg("push")
        .arg(&base)
        .arg(format!("oci://{}/vendor/platform:1.0.0", site.addr))
        .arg("--plain-http"));
    let body = format!(
        "  base: {{oci: \"oci://{}/vendor/platform:1.0.0\", key: platform.pub}}\n  insecureRegistries: [\"{}\"]\n  manifests: [{{path: apps}}]\n{mirrors}",
        site.addr, site.addr
    );
    let tspec = spec(&tdir, "shop", K8S, &body);
    let from_oci = home.join("team-oci.installer");
    let out = build(home, &tspec, &from_oci, &team_key);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(inspect_json(&from_oci)["metadata"]["base"], meta["base"]);

    refusals(home, &tdir, &base, &team_key, &mirrors);
}

fn refusals(home: &Path, tdir: &Path, base: &Path, team_key: &Path, mirrors: &str) {
    let out = home.join("refused.installer");
    let refused = |body: &str, kubernetes: &str| {
        let tspec = spec(tdir, "shop", kubernetes, body);
        let o = build(home, &tspec, &out, team_key);
        assert!(!o.status.success(), "built where it must not:\n{body}");
        assert!(!out.exists(), "a refused build left {}", out.display());
        text(&o)
    };
    // Signed by another key than the one named.
    fs::copy(team_key.with_extension("pub"), tdir.join("other.pub")).unwrap();
    let err = refused(&format!("  base: {{installer: ../platform.installer, key: other.pub}}\n{mirrors}"), K8S);
    assert!(
        err.contains("platform.installer") && err.contains("other.pub") && err.contains("nothing of it was read"),
        "{err}"
    );
    // Not an installer.
    fs::write(home.join("not-an-installer"), b"#!/bin/sh\necho hi\n").unwrap();
    let err = refused(&format!("  base: {{installer: ../not-an-installer, key: platform.pub}}\n{mirrors}"), K8S);
    assert!(err.contains("not-an-installer") && err.contains("not a ferry installer"), "{err}");
    // Another Kubernetes.
    let err =
        refused(&format!("  base: {{installer: ../platform.installer, key: platform.pub}}\n{mirrors}"), "v1.35.1");
    assert!(err.contains("v1.35.1") && err.contains(K8S), "{err}");
    // Other platforms.
    let err = refused(
        &format!(
            "  base: {{installer: ../platform.installer, key: platform.pub}}\n  platforms: [linux/arm64]\n{mirrors}"
        ),
        K8S,
    );
    assert!(err.contains("linux/arm64") && err.contains("spec.platforms"), "{err}");
    // A path both provide.
    manifest(tdir, "platform/agent.yaml", "docker.io/platform/agent:1");
    let err = refused(
        &format!(
            "  base: {{installer: ../platform.installer, key: platform.pub}}\n  manifests: [{{path: platform}}]\n{mirrors}"
        ),
        K8S,
    );
    assert!(err.contains("bundle/platform/agent.yaml") && err.contains("the base installer platform 1.0.0"), "{err}");
    // Neither source, both.
    let err = refused(&format!("  base: {{key: platform.pub}}\n{mirrors}"), K8S);
    assert!(err.contains("exactly one of"), "{err}");
    let _ = base;
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
