//! Differential installers: `ferry build --base OLD -o DELTA` carries only what OLD lacks
//! (compared by digest), names OLD's digest and the complete installer in its signed index,
//! and `./DELTA complete|run --base OLD` puts together, byte for byte, the installer a plain
//! build makes. A wrong or damaged base, and a delta used alone, are refused before anything is
//! written or any host is touched.

use super::images::ferry_cmd;
use ferry_tests::registry::Layout;
use ferry_tests::*;
use payload_format::Payload;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGES: usize = 20;
const CHANGED: usize = 7;

/// A release of twenty images, each one layer of 2 MiB of its own noise; in release 2 image
/// `CHANGED` has new content under the same tag.
/// The spec sits beside the layout (`layout/`), which its sources name relative to it.
fn spec(dir: &Path, version: &str) -> PathBuf {
    spec_without(dir, version, None)
}

/// [`spec`] without image `left_out`.
fn spec_without(dir: &Path, version: &str, left_out: Option<usize>) -> PathBuf {
    let mut text = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: platform, version: {version}}}\nspec:\n  kubernetes: {{version: v1.36.3}}\n  platforms: [linux/amd64]\n  images:\n"
    );
    for i in (1..=IMAGES).filter(|i| Some(*i) != left_out) {
        let tag = if i == CHANGED && version != "1.0.0" { format!("app{i}-new") } else { format!("app{i}") };
        text.push_str(&format!("    - {{ref: docker.io/team/app{i}:1, source: \"oci:layout:{tag}\"}}\n"));
    }
    let path = dir.join(format!("bundle-{version}.yaml"));
    fs::write(&path, text).unwrap();
    path
}

fn build(home: &Path, spec: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    run(ferry_cmd(home)
        .arg("build")
        .arg(spec)
        .arg("-o")
        .arg(out)
        .arg("--key")
        .arg(home.join("vendor.key"))
        .args(["--offline", "--allow-missing-images"])
        .args(extra))
}

fn blobs(p: &Payload) -> BTreeSet<String> {
    p.index().entries.iter().filter(|e| e.path.starts_with("blobs/")).map(|e| e.path.clone()).collect()
}

fn digest_of(p: &Payload) -> String {
    payload_format::index_digest(p)
}

fn installer(file: &Path, args: &[&str]) -> std::process::Output {
    run(Command::new(file).arg("--no-progress").args(args).env("HOME", file.parent().unwrap()))
}

/// The files in `dir` (names only), to show that a refusal left nothing behind.
fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_release_that_changes_one_image_of_twenty_ships_as_that_image_and_completes_byte_for_byte() {
    let dir = scratch();
    let home = dir.path();
    let layout = Layout::init(&home.join("layout"));
    for i in 1..=IMAGES {
        layout.image(&format!("app{i}"), &[("srv/data", Some(&noise(i as u64, 2 << 20)))], "amd64");
    }
    layout.image(&format!("app{CHANGED}-new"), &[("srv/data", Some(&noise(1000, 2 << 20)))], "amd64");
    ok(Command::new(release_bin("ferry")).arg("keygen").arg("-o").arg(home.join("vendor")));
    let key = home.join("vendor.pub");
    let key = key.to_str().unwrap();

    let v1 = home.join("platform-1.installer");
    let out = build(home, &spec(home, "1.0.0"), &v1, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let v2_spec = spec(home, "2.0.0");
    let plain = home.join("platform-2.installer");
    let out = build(home, &v2_spec, &plain, &[]);
    assert!(out.status.success(), "{}", text(&out));

    let delta = home.join("platform-2.delta");
    let complete = home.join("platform-2.complete");
    let out = build(
        home,
        &v2_spec,
        &delta,
        &["--base", v1.to_str().unwrap(), "--complete-output", complete.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));

    // The delta carries the changed image's blobs, the spec and the complete index, nothing else.
    let (old, full, d) =
        (Payload::open(&v1).unwrap(), Payload::open(&complete).unwrap(), Payload::open(&delta).unwrap());
    let changed: BTreeSet<String> = blobs(&full).difference(&blobs(&old)).cloned().collect();
    assert_eq!(changed.len(), 3, "a layer, a config and a manifest: {changed:?}");
    assert_eq!(blobs(&d), changed);
    let carried: Vec<&str> =
        d.index().entries.iter().map(|e| e.path.as_str()).filter(|p| !p.starts_with("blobs/")).collect();
    assert_eq!(carried, ["bundle/bundle-2.0.0.yaml", "delta/complete-index"], "{carried:?}");
    let changed_bytes: u64 = changed.iter().map(|p| full.index().entry(p).unwrap().stored_len).sum();
    let program = d.trailer().data_offset;
    let goal = changed_bytes + full.file_len() / 100;
    assert!(
        d.file_len() - program <= goal,
        "the delta holds {} bytes besides its program; the changed blobs are {changed_bytes} and 1% of the \
         complete installer is {}",
        d.file_len() - program,
        full.file_len() / 100
    );
    assert_eq!(summary["bytes"].as_u64(), Some(d.file_len()), "{summary}");
    assert_eq!(summary["delta"]["entriesCarried"].as_u64(), Some(4), "{summary}");

    // Its signed index names the base and the complete installer; inspect shows the lineage.
    assert_eq!(fs::read(&complete).unwrap(), fs::read(&plain).unwrap(), "the complete installer is a plain build's");
    let inspected: Value = serde_json::from_slice(&installer(&delta, &["inspect", "--json"]).stdout).unwrap();
    assert_eq!(inspected["delta"]["base"]["digest"].as_str(), Some(digest_of(&old).as_str()));
    assert_eq!(inspected["delta"]["complete"]["digest"].as_str(), Some(digest_of(&full).as_str()));
    assert_eq!(inspected["delta"]["complete"]["size"].as_u64(), Some(full.file_len()));
    assert_eq!(inspected["metadata"]["version"], "2.0.0");
    let shown = ok(Command::new(release_bin("ferry")).arg("inspect").arg(&delta));
    assert!(
        shown.contains(&format!("differential: carries what platform 1.0.0 lacks (index {})", digest_of(&old))),
        "{shown}"
    );
    assert!(shown.contains(&format!("completes to: platform 2.0.0 (index {}", digest_of(&full))), "{shown}");
    let verified = installer(&delta, &["verify", "--key", key]);
    assert!(verified.status.success(), "{}", text(&verified));

    // On site: the complete installer, byte for byte, from the delta and its base.
    let site = home.join("site");
    fs::create_dir(&site).unwrap();
    let done = site.join("platform-2.installer");
    let out =
        installer(&delta, &["complete", "--base", v1.to_str().unwrap(), "-o", done.to_str().unwrap(), "--key", key]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("completed"), "{}", text(&out));
    assert_eq!(fs::read(&done).unwrap(), fs::read(&plain).unwrap());
    let verified = installer(&done, &["verify", "--key", key]);
    assert!(verified.status.success(), "{}", text(&verified));

    refusals(home, &delta, &v1, &plain, key);
    run_dry(home, &delta, &v1, &plain, key);
}

/// A wrong base, a damaged one, a delta alone and a delta as a base: each refused, nothing left.
fn refusals(home: &Path, delta: &Path, v1: &Path, plain: &Path, key: &str) {
    let site = home.join("refused");
    fs::create_dir(&site).unwrap();
    let out_file = site.join("out");
    let complete_with = |base: &Path| {
        installer(
            delta,
            &["complete", "--base", base.to_str().unwrap(), "-o", out_file.to_str().unwrap(), "--key", key],
        )
    };

    // Another installer as the base: refused by digest, naming both; one that holds every
    // entry needed (the complete release itself) as well as one that lacks an image.
    let out = complete_with(plain);
    assert!(!out.status.success());
    let said = text(&out);
    let (old, other) = (Payload::open(v1).unwrap(), Payload::open(plain).unwrap());
    assert!(said.contains(&digest_of(&old)) && said.contains(&digest_of(&other)), "{said}");
    assert!(said.contains("is not the base this differential installer was built on"), "{said}");
    assert!(said.contains("a file of another build is never used"), "{said}");
    let lacking = home.join("platform-0.installer");
    let out = build(home, &spec_without(home, "0.9.0", Some(3)), &lacking, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = complete_with(&lacking);
    assert!(!out.status.success());
    let said = text(&out);
    let needed: BTreeSet<String> = blobs(&old).intersection(&blobs(&other)).cloned().collect();
    let lacks: BTreeSet<String> = needed.difference(&blobs(&Payload::open(&lacking).unwrap())).cloned().collect();
    assert_eq!(lacks.len(), 3, "{lacks:?}");
    assert!(said.contains("of the 57 entries this installer takes from its base it lacks 3: "), "{said}");
    assert!(lacks.iter().all(|b| said.contains(b.as_str())), "{said}");
    assert!(names(&site).is_empty(), "{:?}", names(&site));

    // The base's bytes damaged inside an image the delta takes from it: caught at that blob.
    let damaged = home.join("platform-1.damaged");
    fs::copy(v1, &damaged).unwrap();
    let layer =
        old.index().entries.iter().filter(|e| e.path.starts_with("blobs/")).max_by_key(|e| e.stored_len).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&damaged).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"!", layer.offset + 4096).unwrap();
    let out = complete_with(&damaged);
    assert!(!out.status.success());
    assert!(text(&out).contains(&format!("{} (from the base", layer.path)), "{}", text(&out));
    assert!(text(&out).contains(", damaged there)"), "{}", text(&out));
    assert!(names(&site).is_empty(), "{:?}", names(&site));

    // A delta alone (no base beside it): its content is never used.
    let alone = home.join("alone");
    fs::create_dir(&alone).unwrap();
    let delta = &alone.join("installer");
    fs::copy(home.join("platform-2.delta"), delta).unwrap();
    for args in [
        vec!["extract", "--to", site.to_str().unwrap()],
        vec!["registry", "serve", "--insecure-plain-http", "--listen", "127.0.0.1:0"],
        vec!["run", "--hosts", "10.88.0.11", "--dry-run", "--trusted-key", key],
    ] {
        let out = installer(delta, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out).contains("is a differential installer") && text(&out).contains(&digest_of(&old)),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert!(names(&site).is_empty(), "{:?}", names(&site));
    let out = installer(plain, &["run", "--hosts", "10.88.0.11", "--dry-run", "--base", v1.to_str().unwrap()]);
    assert!(text(&out).contains("is complete: run it without --base"), "{}", text(&out));

    // A delta is not a base.
    let out = build(home, &spec(home, "3.0.0"), &site.join("v3"), &["--base", delta.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("itself differential"), "{}", text(&out));
    assert!(names(&site).is_empty(), "{:?}", names(&site));
}

/// `run` puts the complete installer together in the state beside the delta before anything
/// else, from the base found beside it (or named by --base), and reuses it the next time.
fn run_dry(home: &Path, delta: &Path, v1: &Path, plain: &Path, key: &str) {
    let site = home.join("usb");
    fs::create_dir(&site).unwrap();
    let here = site.join("installer");
    fs::copy(delta, &here).unwrap();
    fs::copy(v1, site.join("platform-1.0.0")).unwrap();
    let out = installer(&here, &["run", "--hosts", "10.88.0.11", "--dry-run", "--trusted-key", key]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("using {} as the base", site.join("platform-1.0.0").display())), "{said}");
    assert!(said.contains("put together the complete installer platform 2.0.0"), "{said}");
    let kept: Vec<PathBuf> = fs::read_dir(site.join(".ferry/.complete")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(&kept[0]).unwrap(), fs::read(plain).unwrap());
    let args = ["run", "--hosts", "10.88.0.11", "--dry-run", "--trusted-key", key, "--base", v1.to_str().unwrap()];
    let out = installer(&here, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("using the complete installer put together earlier"), "{}", text(&out));
}

#[test]
fn a_delta_alone_runs_on_lab_hosts_that_hold_its_base_and_the_nodes_pull_the_new_image() {
    use super::run::{NODES, bundle, inventory, lab, run_installer, wipe};
    use ferry_tests::bundles::next_release;
    use ferry_tests::lab::Host;
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let b = bundle();
    let (delta, complete) = next_release(b, b"hello from release 2\n");
    let work = scratch();
    let usb = work.path().join("usb");
    fs::create_dir(&usb).unwrap();
    let here = usb.join("installer");
    fs::copy(&delta, &here).unwrap();
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let inv = inv.to_str().unwrap();

    // Bare hosts hold no base: the delta is refused, every registry host named, none changed.
    let out = run_installer(&here, &["-f", inv], &[]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("is a differential installer"), "{said}");
    assert!(said.contains("no registry host of cluster") && said.contains("holds no installer"), "{said}");
    assert_eq!(lab.ssh_ok(Host::Node(1), "ls /var/lib/ferry 2>/dev/null | wc -l").trim(), "0");
    assert!(!usb.join(".ferry/.complete").exists() || fs::read_dir(usb.join(".ferry/.complete")).unwrap().count() == 0);

    // Release 1 runs from another machine's copy; the operator then carries only the delta.
    let earlier = work.path().join("release1");
    fs::create_dir(&earlier).unwrap();
    fs::copy(&b.installer, earlier.join("installer")).unwrap();
    let out = run_installer(&earlier.join("installer"), &["-f", inv], &[]);
    assert!(out.status.success(), "{}", text(&out));

    let out = run_installer(&here, &["--json", "-f", inv], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("copying the base") && said.contains(":/var/lib/ferry/installer"), "{said}");
    // The hosts hold release 1: they are sent only what changed, not the complete installer again.
    let sent = super::run::summary(&out)["distribute_bytes"].as_u64().unwrap();
    let whole = fs::metadata(&complete).unwrap().len();
    eprintln!("delta run to hosts holding the base: sent {sent} of a {whole}-byte complete installer");
    assert!(sent < whole / 4, "sent {sent} bytes to hosts holding the base, of a {whole}-byte installer");
    let kept: Vec<PathBuf> = fs::read_dir(usb.join(".ferry/.complete")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 1, "only the complete installer is kept, not the copy of the base: {kept:?}");
    assert_eq!(fs::read(&kept[0]).unwrap(), fs::read(&complete).unwrap());
    let state: Vec<PathBuf> = fs::read_dir(usb.join(".ferry")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(
        state.iter().any(|d| d.join("cluster.yaml").is_file()),
        "the cluster's state is beside the delta: {state:?}"
    );

    // The registry host holds the complete release and serves its new image by the same name.
    let held = lab.ssh_ok(Host::Node(1), "sha256sum /var/lib/ferry/installer | cut -d' ' -f1");
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(fs::read(&complete).unwrap()))
    };
    assert_eq!(held.trim(), want);
    lab.ssh_ok(Host::Node(3), "ctr -n k8s.io images rm --sync docker.io/library/app:1 >/dev/null 2>&1; true");
    let pull = lab.ssh(
        Host::Node(3),
        "timeout 60 ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d docker.io/library/app:1",
    );
    assert!(pull.status.success(), "{}", text(&pull));
    let said =
        lab.ssh_ok(Host::Node(3), "ctr -n k8s.io run --rm docker.io/library/app:1 delta$$ /bin/busybox cat /hello");
    assert_eq!(said.trim(), "hello from release 2");
    wipe(lab);
}
