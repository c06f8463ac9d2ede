//! `ferry push` and `ferry pull` against real registries serving TLS with a CA of their own and
//! htpasswd logins, on loopback: Debian's `docker-registry` (distribution 2.8) and distribution
//! v3's `registry` (built from Go modules by `scripts/build-go-tools.sh`).
//! A release is pushed through a link that dies half-way and the same command finishes it,
//! sending only the layers the registry lacks; a second release that shares the first one's
//! images sends none of them; a pull gives back the very file, which `verify` accepts; refusals
//! name what went wrong and leave nothing at the destination.

use super::images::{ferry_cmd, json_stdout, mirrors, push_control_plane, write_spec};
use ferry_tests::cut_link::CutLink;
use ferry_tests::registry::{Layout, Upstream};
use ferry_tests::*;
use payload_format::Payload;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const USER: &str = "vendor";
const PASSWORD: &str = "pu5h-s3cret";

/// A signed installer whose apps are `images` (each one layer of 4 MiB of noise), built with
/// `epoch` as its creation time.
fn release(dir: &Path, hub: &Upstream, key: &Path, name: &str, images: &[u64], epoch: &str) -> PathBuf {
    let b = dir.join(name);
    let layout = Layout::init(&b.join("layouts/app"));
    let mut spec = String::from("  images:\n");
    for seed in images {
        let data = noise(*seed, 4 << 20);
        layout.image(&format!("a{seed}"), &[("srv/data", Some(&data))], "amd64");
        spec.push_str(&format!("    - ref: example.com/app/a{seed}:1\n      source: oci:layouts/app:a{seed}\n"));
    }
    spec.push_str(&mirrors(&[("registry.k8s.io", hub)]));
    let spec = write_spec(&b, &spec);
    let out = dir.join(format!("{name}.installer"));
    let mut cmd = ferry_cmd(dir);
    cmd.arg("build").arg(&spec).arg("-o").arg(&out).arg("--key").arg(key.with_extension("key"));
    ok(cmd.env("SOURCE_DATE_EPOCH", epoch));
    out
}

/// The image blobs inside an installer: digest → size.
fn image_blobs(installer: &Path) -> BTreeMap<String, u64> {
    let p = Payload::open(installer).unwrap();
    p.index()
        .entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("blobs/sha256/").map(|h| (format!("sha256:{h}"), e.size)))
        .collect()
}

/// How the test reaches `up` at `addr` (the registry itself, or a relay to it).
fn access(up: &Upstream, addr: &str) -> Vec<std::ffi::OsString> {
    vec!["--registry-auth".into(), format!("{addr}={USER}:{PASSWORD}").into(), "--ca-file".into(), up.ca_cert().into()]
}

/// `ferry push FILE REFERENCE --json` through `addr`; its summary.
fn push(home: &Path, up: &Upstream, addr: &str, file: &Path, reference: &str) -> Value {
    let mut cmd = ferry_cmd(home);
    cmd.env("XDG_CACHE_HOME", home.join("cache")).arg("push").arg(file).arg(reference).arg("--json");
    json_stdout(cmd.args(access(up, addr)))
}

#[test]
fn push_resumes_skips_what_the_registry_has_and_pull_gives_the_same_file_on_distribution_2_8() {
    scenario(Upstream::start_tls_with_login(USER, PASSWORD));
}

#[test]
fn push_resumes_skips_what_the_registry_has_and_pull_gives_the_same_file_on_distribution_3() {
    scenario(Upstream::start_v3_tls_with_login(USER, PASSWORD));
}

/// The whole story against `site`, a registry serving TLS with a login of [`USER`].
fn scenario(site: Upstream) {
    let dir = scratch();
    let home = dir.path();
    let hub = Upstream::start();
    push_control_plane(&hub, &Layout::init(&home.join("cp")));
    let key = keygen(home, "vendor");
    let first = release(home, &hub, &key, "r1", &[1, 2, 3, 4], "1700000000");
    let second = release(home, &hub, &key, "r2", &[1, 2, 3, 4, 5], "1700086400");

    let reference = format!("oci://{}/vendor/platform:1.0.0", site.addr);
    let reference2 = format!("oci://{}/vendor/platform:1.1.0", site.addr);
    push_refusals(home, &site, &first, &reference);
    push_through_a_link_cut_part_way(home, &site, &first);
    push_second_release(home, &site, &first, &second, &reference2);
    // Pull gives back the very files; the installer's own verify accepts them.
    for (file, reference) in [(&first, &reference), (&second, &reference2)] {
        let out = home.join("pulled/installer");
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut pull = ferry_cmd(home);
        pull.arg("pull").arg(reference).arg("-o").arg(&out).arg("--json").args(access(&site, &site.addr));
        let pulled = json_stdout(&mut pull);
        assert_eq!(fs::read(&out).unwrap(), fs::read(file).unwrap(), "{reference}");
        assert_eq!(pulled["size"].as_u64().unwrap(), fs::metadata(file).unwrap().len());
        let verified = ok(std::process::Command::new(&out).arg("verify").arg("--key").arg(key.with_extension("pub")));
        assert!(verified.contains("OK:") && verified.contains("(trusted)"), "{verified}");
    }

    pull_through_a_link_cut_part_way(home, &site, &second);
    pull_refusals(home, &site, &first, &second, &reference2);
}

/// A pull through a link that dies part-way: the operator kills the stuck pull, nothing is at
/// the destination, and the same command run again fetches only the layers that had not
/// arrived, then leaves the very file and nothing else.
fn pull_through_a_link_cut_part_way(home: &Path, site: &Upstream, file: &Path) {
    let link = CutLink::start(&site.addr);
    let through = format!("oci://{}/vendor/platform:1.1.0", link.addr);
    let pull = |out: &Path| {
        let mut cmd = ferry_cmd(home);
        cmd.args(["pull", "--jobs", "1"]).arg(&through).arg("-o").arg(out).args(access(site, &link.addr));
        cmd
    };
    // The client's bytes of a whole pull (its requests): the cut comes after 60% of them.
    let measured = home.join("measured/installer");
    fs::create_dir_all(measured.parent().unwrap()).unwrap();
    ok(&mut pull(&measured));
    let requests = link.passed();
    let out = home.join("resumed/installer");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    link.hold_after(requests * 6 / 10);
    let mut cut = pull(&out).arg("--json").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    link.wait_until_holding(&mut cut, "pull");
    // What was on its way arrives before the operator gives up.
    std::thread::sleep(Duration::from_millis(500));
    cut.kill().unwrap();
    cut.wait().unwrap();
    assert!(!out.exists(), "an interrupted pull left a file at the destination");
    link.open();
    let resumed = json_stdout(pull(&out).arg("--json"));
    let (fetched, reused) = (resumed["bytes_fetched"].as_u64().unwrap(), resumed["bytes_reused"].as_u64().unwrap());
    eprintln!(
        "pull: cut after {} of {requests} request bytes; the rerun fetched {fetched} and reused {reused} layer bytes",
        requests * 6 / 10
    );
    assert!(reused > 0 && fetched > 0, "{resumed}");
    assert_eq!(fs::read(&out).unwrap(), fs::read(file).unwrap());
    let left: Vec<String> =
        fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(left, ["installer"], "the partial file is gone once the pull is whole");
}

/// Refusals first: no login, a wrong one, and TLS without the registry's CA.
fn push_refusals(home: &Path, site: &Upstream, first: &Path, reference: &str) {
    let err = fails(ferry_cmd(home).arg("push").arg(first).arg(reference).arg("--ca-file").arg(site.ca_cert()));
    assert!(err.contains(&site.addr) && err.contains("--registry-auth"), "{err}");
    let err = fails(
        ferry_cmd(home)
            .arg("push")
            .arg(first)
            .arg(reference)
            .arg("--ca-file")
            .arg(site.ca_cert())
            .arg("--registry-auth")
            .arg(format!("{}={USER}:wrong-pw", site.addr)),
    );
    assert!(err.contains("refused") && !err.contains("wrong-pw"), "{err}");
    let err = fails(
        ferry_cmd(home)
            .arg("push")
            .arg(first)
            .arg(reference)
            .arg("--registry-auth")
            .arg(format!("{}={USER}:{PASSWORD}", site.addr)),
    );
    assert!(err.contains(&format!("https://{}", site.addr)) && err.to_lowercase().contains("certificate"), "{err}");
    assert!(site.stored_blobs().is_empty(), "a refused push stored something");
}

/// The first release through a link that dies after about 60% of its bytes: the operator kills
/// the stuck push, and the same command, run again, sends only what is missing.
fn push_through_a_link_cut_part_way(home: &Path, site: &Upstream, first: &Path) {
    let link = CutLink::start(&site.addr);
    let through = format!("oci://{}/vendor/platform:1.0.0", link.addr);
    let total = fs::metadata(first).unwrap().len();
    link.hold_after(total * 6 / 10);
    let mut cmd = ferry_cmd(home);
    cmd.env("XDG_CACHE_HOME", home.join("cache"))
        .args(["push", "--jobs", "1", "--chunk-mib", "1"])
        .arg(first)
        .arg(&through)
        .args(access(site, &link.addr))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut cut = cmd.spawn().unwrap();
    link.wait_until_holding(&mut cut, "push");
    cut.kill().unwrap();
    cut.wait().unwrap();
    let passed = link.passed();
    let blobs = image_blobs(first);
    let held = site.stored_blobs();
    let held_bytes: u64 = held.iter().filter_map(|d| blobs.get(d)).sum();
    assert!(held.len() >= 2, "the cut came before any layer was whole: {held:?}");
    link.open();
    let resumed = push(home, site, &link.addr, first, &through);
    let layer_bytes = resumed["bytes_sent"].as_u64().unwrap() + resumed["bytes_present"].as_u64().unwrap();
    let sent = resumed["bytes_sent"].as_u64().unwrap();
    eprintln!(
        "push: {total} bytes, cut after {passed} client bytes, {} layers whole by then; the rerun sent {sent} of {layer_bytes} layer bytes",
        held.len()
    );
    assert!(resumed["layers_present"].as_u64().unwrap() >= held.len() as u64 - 1, "{resumed}");
    assert!(held_bytes > 0 && sent <= layer_bytes - held_bytes, "the rerun sent {sent}: {resumed}");
    assert!(sent > 0, "{resumed}");
}

/// The second release shares the first one's images: none of them is sent again.
fn push_second_release(home: &Path, site: &Upstream, first: &Path, second: &Path, reference2: &str) {
    let blobs = image_blobs(first);
    let pushed = push(home, site, &site.addr, second, reference2);
    let blobs2 = image_blobs(second);
    let shared: u64 = blobs2.iter().filter(|(d, _)| blobs.contains_key(*d)).map(|(_, n)| n).sum();
    let new: u64 = blobs2.iter().filter(|(d, _)| !blobs.contains_key(*d)).map(|(_, n)| n).sum();
    let rest = fs::metadata(second).unwrap().len() - blobs2.values().sum::<u64>();
    let sent2 = pushed["bytes_sent"].as_u64().unwrap();
    eprintln!("push of the second release: {sent2} bytes sent; {shared} bytes of shared images skipped, {new} new");
    assert!(pushed["bytes_present"].as_u64().unwrap() >= shared, "{pushed}");
    assert!(sent2 <= new + rest, "{pushed}");
}

/// Refusals on pull leave nothing behind: a digest that is not the manifest's, something that is
/// not an installer, and a layer the registry serves damaged.
fn pull_refusals(home: &Path, site: &Upstream, first: &Path, second: &Path, reference2: &str) {
    let (blobs, blobs2) = (image_blobs(first), image_blobs(second));
    let out = home.join("refused/installer");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let pull_fails = |reference: &str| {
        fails(ferry_cmd(home).arg("pull").arg(reference).arg("-o").arg(&out).args(access(site, &site.addr)))
    };
    let wrong = format!("oci://{}/vendor/platform@sha256:{}", site.addr, "0".repeat(64));
    let err = pull_fails(&wrong);
    assert!(err.contains(&wrong), "{err}");
    let image_layout = Layout::init(&home.join("plain-image"));
    image_layout.image("x", &[("bin/busybox", None)], "amd64");
    site.push(&image_layout.src("x"), "vendor/busybox:1");
    let err = pull_fails(&format!("oci://{}/vendor/busybox:1", site.addr));
    assert!(err.contains("not a ferry installer"), "{err}");
    let new_blob = blobs2.keys().find(|d| !blobs.contains_key(*d)).unwrap();
    let stored = site.blob_data(new_blob);
    let mut bytes = fs::read(&stored).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&stored, bytes).unwrap();
    let err = pull_fails(reference2);
    assert!(err.contains(new_blob.as_str()), "{err}");
    let left: Vec<String> =
        fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(left.is_empty(), "a refused pull left {left:?}");
}
