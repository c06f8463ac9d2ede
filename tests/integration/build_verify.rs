//! The file format end to end: `ferry keygen/build/verify/inspect` and `./installer verify/inspect/extract`, run as
//! real processes, including every bad-input case the format must survive.

use ferry_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn installer(path: &Path) -> Command {
    let mut c = Command::new(path);
    c.env_remove("FERRY_TRUSTED_KEYS");
    c
}

/// A bundle larger than one chunk, with compressible and incompressible files.
fn multi_chunk_bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    fs::create_dir_all(b.join("rootfs/opt/data")).unwrap();
    fs::create_dir_all(b.join("manifests")).unwrap();
    let mut random = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for byte in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    fs::write(b.join("rootfs/opt/data/layer.bin"), &random).unwrap();
    let text: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
    fs::write(b.join("rootfs/opt/data/log.txt"), text).unwrap();
    fs::write(b.join("manifests/a.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
    fs::write(
        b.join("bundle.yaml"),
        "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {name: big, version: 1.0.0}\nspec:\n  kubernetes: {version: v1.36.3}\n  rootfs: [{path: rootfs}]\n  manifests: [{path: manifests}]\n",
    )
    .unwrap();
    b.join("bundle.yaml")
}

#[test]
fn keygen_writes_a_private_key_0600_and_an_openssh_fingerprint() {
    let dir = scratch();
    let out = ok(ferry().args(["keygen", "-o"]).arg(dir.path().join("vendor")));
    let key = dir.path().join("vendor.key");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let fp = out.lines().find_map(|l| l.strip_prefix("fingerprint: ")).expect("fingerprint line").to_string();
    assert!(fp.starts_with("SHA256:"), "{out}");
    let ssh = ok(Command::new("ssh-keygen").arg("-lf").arg(dir.path().join("vendor.pub")));
    assert!(ssh.contains(&fp), "ssh-keygen says {ssh}, ferry said {fp}");
    assert!(fails(ferry().args(["keygen", "-o"]).arg(dir.path().join("vendor"))).contains("already exists"));
}

#[test]
fn build_verify_inspect_extract_round_trip() {
    let dir = scratch();
    let key = keygen(dir.path(), "vendor");
    let inst = build(&standin_bundle(), dir.path(), Some(&key));
    assert_eq!(fs::metadata(&inst).unwrap().permissions().mode() & 0o777, 0o755);

    let out = ok(installer(&inst).arg("verify").arg("--key").arg(key.with_extension("pub")));
    assert!(out.contains("OK:") && out.contains("(trusted)"), "{out}");

    let json: serde_json::Value = serde_json::from_str(&ok(installer(&inst).args(["inspect", "--json"]))).unwrap();
    assert_eq!(json["metadata"]["name"], "demo");
    assert_eq!(json["metadata"]["kubernetes_version"], "v1.36.3");
    assert_eq!(json["created"], "2023-11-14T22:13:20Z");
    assert!(json["entries"].as_array().unwrap().iter().any(|e| e["path"] == "rootfs/usr/local/bin/ferry-hello"));
    assert_eq!(json["missingImages"], serde_json::json!([]), "the demo bundle carries every image it names");
    assert!(json["metadata"]["images"].as_array().unwrap().iter().any(|i| i["ref"] == "registry.k8s.io/pause:3.10.2"));
    // The demo's rootfs has no kubeadm: the control plane came from ferry's table, and says so.
    let cp = &json["metadata"]["controlPlaneImages"];
    assert_eq!(
        (cp["source"].as_str(), cp["pause"].as_str()),
        (Some("table"), Some("registry.k8s.io/pause:3.10.2")),
        "{cp}"
    );
    assert_eq!(cp["images"].as_array().map(|a| a.len()), Some(7), "{cp}");

    let human = ok(installer(&inst).arg("inspect"));
    assert!(human.contains("bundle:       demo 0.1.0") && human.contains("rootfs/etc/ferry/motd"), "{human}");
    assert!(human.contains("images:       8") && human.contains("docker.io/library/busybox:1.36"), "{human}");
    assert!(human.contains("control plane: 7 images from ferry's built-in table"), "{human}");

    let to = dir.path().join("out");
    ok(installer(&inst).arg("extract").arg("--to").arg(&to));
    let src = workspace_root().join("tests/fixtures/standin-bundle/rootfs");
    assert_eq!(fs::read(to.join("rootfs/etc/ferry/motd")).unwrap(), fs::read(src.join("etc/ferry/motd")).unwrap());
    let hello = to.join("rootfs/usr/local/bin/ferry-hello");
    assert_eq!(fs::metadata(&hello).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(
        fs::read_link(to.join("rootfs/etc/ferry/hello")).unwrap(),
        PathBuf::from("../../usr/local/bin/ferry-hello")
    );
    assert!(to.join("bundle/manifests/web.yaml").exists());

    // Overwrites only with --force.
    let refused = fails(installer(&inst).arg("extract").arg("--to").arg(&to));
    assert!(refused.contains("refusing to overwrite") && refused.contains("--force"), "{refused}");
    ok(installer(&inst).arg("extract").arg("--force").arg("--to").arg(&to));

    // A selection extracts only what it names; an unknown one is an error.
    let sel = dir.path().join("sel");
    ok(installer(&inst).arg("extract").arg("--to").arg(&sel).arg("rootfs/etc"));
    assert!(sel.join("rootfs/etc/ferry/motd").exists() && !sel.join("bundle").exists());
    assert!(fails(installer(&inst).arg("extract").arg("--to").arg(&sel).arg("nope")).contains("no entry"));

    // The packer's own verifier agrees.
    let out = ok(ferry().arg("verify").arg(&inst).arg("--key").arg(key.with_extension("pub")));
    assert!(out.contains("OK:"), "{out}");
    ok(ferry().arg("inspect").arg(&inst));
}

#[test]
fn the_installer_is_a_static_executable() {
    let dir = scratch();
    let inst = build(&standin_bundle(), dir.path(), None);
    let file = ok(Command::new("file").arg(&inst));
    assert!(file.contains("statically linked"), "{file}");
    let ldd = run(Command::new("ldd").arg(&inst));
    assert!(!ldd.status.success() || text(&ldd).contains("not a dynamic executable"), "{}", text(&ldd));
}

#[test]
fn trust_is_enforced_from_flags_environment_and_only_for_the_right_key() {
    let dir = scratch();
    let key = keygen(dir.path(), "vendor");
    let other = keygen(dir.path(), "other");
    let inst = build(&standin_bundle(), dir.path(), Some(&key));
    let err = fails(installer(&inst).arg("verify").arg("--key").arg(other.with_extension("pub")));
    assert!(err.contains("not one of the trusted keys"), "{err}");
    let err = fails(installer(&inst).arg("verify").env("FERRY_TRUSTED_KEYS", other.with_extension("pub")));
    assert!(err.contains("not one of the trusted keys"), "{err}");
    ok(installer(&inst).arg("verify").env("FERRY_TRUSTED_KEYS", key.with_extension("pub")));
    // Any of several keys will do.
    ok(installer(&inst)
        .arg("verify")
        .arg("--key")
        .arg(other.with_extension("pub"))
        .arg("--key")
        .arg(key.with_extension("pub")));
    // Without pinning, the signature is still checked and the fingerprint printed with a warning.
    let out = ok(installer(&inst).arg("verify"));
    assert!(out.contains("no trusted keys given"), "{out}");
}

#[test]
fn unsigned_files_are_reported_loudly() {
    let dir = scratch();
    let inst = build(&standin_bundle(), dir.path(), None);
    let err = fails(installer(&inst).arg("verify"));
    assert!(err.contains("UNSIGNED"), "{err}");
    let out = ok(installer(&inst).args(["verify", "--allow-unsigned"]));
    assert!(out.contains("UNSIGNED"), "{out}");
    assert!(ok(installer(&inst).arg("inspect")).contains("UNSIGNED"));
    // A trust list never accepts an unsigned file.
    let key = keygen(dir.path(), "vendor");
    assert!(
        fails(installer(&inst).args(["verify", "--allow-unsigned", "--key"]).arg(key.with_extension("pub")))
            .contains("UNSIGNED")
    );
}

fn trailer_field(inst: &Path, offset_in_trailer: usize) -> u64 {
    let bytes = fs::read(inst).unwrap();
    let t = &bytes[bytes.len() - 128..];
    u64::from_le_bytes(t[offset_in_trailer..offset_in_trailer + 8].try_into().unwrap())
}

/// Writes `src` with one byte flipped to `dst`, a program the test runs (hence `write_program`).
fn flip(src: &Path, dst: &Path, at: u64) {
    let mut bytes = fs::read(src).unwrap();
    bytes[at as usize] ^= 0x40;
    write_program(dst, &bytes);
}

#[test]
fn a_flipped_byte_in_any_region_is_detected() {
    let dir = scratch();
    let key = keygen(dir.path(), "vendor");
    let bundle = multi_chunk_bundle(dir.path());
    let inst = build(&bundle, dir.path(), Some(&key));
    let pubkey = key.with_extension("pub");
    let len = fs::metadata(&inst).unwrap().len();
    let data_offset = trailer_field(&inst, 16);
    let index_offset = trailer_field(&inst, 24);
    let sig_offset = trailer_field(&inst, 40);
    let cases: Vec<(&str, u64, &str)> = vec![
        ("stub", 4096, "installer program itself"),
        ("stub padding", data_offset - 1, "installer program itself"),
        ("first entry", data_offset + 10, "does not match the signed index"),
        ("middle of the data", data_offset + (index_offset - data_offset) / 2, "does not match the signed index"),
        ("last data byte", index_offset - 1, "does not match the signed index"),
        ("index", index_offset + 40, "index does not match the digest"),
        ("signature key", sig_offset + 3, "signature is INVALID"),
        ("signature", sig_offset + 40, "signature is INVALID"),
        ("trailer offsets", len - 128 + 9, "corrupt"),
        ("trailer index digest", len - 128 + 60, "index does not match the digest"),
        ("trailer reserved", len - 128 + 100, "reserved"),
        ("trailer magic", len - 1, "wrong magic"),
    ];
    for (region, at, expect) in cases {
        let bad = dir.path().join(format!("bad-{}", region.replace(' ', "-")));
        flip(&inst, &bad, at);
        // Checked by a binary that did not come inside the file…
        let err = fails(ferry().arg("verify").arg(&bad).arg("--key").arg(&pubkey));
        assert!(err.contains(expect), "{region}: expected `{expect}` in:\n{err}");
        // …and by the installer itself, unless its own code is what was damaged.
        if !region.starts_with("stub") {
            let err = fails(installer(&bad).arg("verify").arg("--key").arg(&pubkey));
            assert!(err.contains(expect), "{region} (installer): expected `{expect}` in:\n{err}");
        }
    }
    // Extraction refuses corrupted data and leaves nothing under the final name.
    let bad = dir.path().join("bad-extract");
    flip(&inst, &bad, data_offset + 10);
    let to = dir.path().join("x");
    let err = fails(installer(&bad).arg("extract").arg("--to").arg(&to));
    assert!(err.contains("does not match the signed index"), "{err}");
    let leftovers: Vec<_> = walk(&to).into_iter().filter(|p| p.is_file()).collect();
    assert!(leftovers.iter().all(|p| !p.ends_with("layer.bin")), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn truncated_stripped_and_foreign_files_are_refused() {
    let dir = scratch();
    let key = keygen(dir.path(), "vendor");
    let inst = build(&standin_bundle(), dir.path(), Some(&key));
    let bytes = fs::read(&inst).unwrap();
    for cut in [bytes.len() - 1, bytes.len() - 200, bytes.len() / 2, 100] {
        let t = dir.path().join(format!("cut-{cut}"));
        fs::write(&t, &bytes[..cut]).unwrap();
        let err = fails(ferry().arg("verify").arg(&t));
        assert!(err.contains("truncated") || err.contains("wrong magic"), "cut at {cut}: {err}");
    }
    let stripped = dir.path().join("stripped");
    copy_program(&inst, &stripped);
    ok(Command::new("strip").arg(&stripped));
    let err = fails(installer(&stripped).arg("verify"));
    assert!(err.contains("strip"), "{err}");
    let err = fails(ferry().arg("inspect").arg("/bin/true"));
    assert!(err.contains("no ferry payload"), "{err}");
}

#[test]
fn unknown_versions_and_oversized_declarations_are_refused() {
    let dir = scratch();
    let inst = build(&standin_bundle(), dir.path(), None);
    let mut bytes = fs::read(&inst).unwrap();
    let t = bytes.len() - 128;
    bytes[t] = 2;
    let v2 = dir.path().join("v2");
    fs::write(&v2, &bytes).unwrap();
    let err = fails(ferry().arg("inspect").arg(&v2));
    assert!(err.contains("format version 2 is not supported"), "{err}");

    // An index claiming to be larger than the file must not be believed (or allocated).
    let mut bytes = fs::read(&inst).unwrap();
    bytes[t] = 1;
    bytes[t + 32..t + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let huge = dir.path().join("huge");
    fs::write(&huge, &bytes).unwrap();
    let err = fails(ferry().arg("inspect").arg(&huge));
    assert!(err.contains("corrupt") || err.contains("truncated"), "{err}");
}

#[test]
fn builds_are_reproducible() {
    let dir = scratch();
    let key = keygen(dir.path(), "vendor");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let bundle = multi_chunk_bundle(dir.path());
    let ia = build(&bundle, &a, Some(&key));
    let ib = build(&bundle, &b, Some(&key));
    assert!(fs::read(ia).unwrap() == fs::read(ib).unwrap(), "two builds of the same inputs differ");
}

fn spec_dir(dir: &Path, extra_spec: &str) -> PathBuf {
    let b = dir.join("spec");
    fs::create_dir_all(b.join("rootfs/etc")).unwrap();
    fs::write(b.join("rootfs/etc/a"), "a").unwrap();
    fs::write(
        b.join("bundle.yaml"),
        format!("apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: t, version: '1'}}\nspec:\n  kubernetes: {{version: v1.36.3}}\n{extra_spec}"),
    )
    .unwrap();
    b.join("bundle.yaml")
}

fn build_err(spec: &Path, out: &Path) -> String {
    let err = fails(ferry().arg("build").arg("-f").arg(spec).arg("-o").arg(out).arg("--unsigned"));
    assert!(!out.exists(), "a failed build left {}", out.display());
    err
}

#[test]
fn spec_errors_name_the_cause() {
    let dir = scratch();
    let out = dir.path().join("installer");
    let s = spec_dir(dir.path(), "  rootfs: [{path: missing}]\n");
    assert!(build_err(&s, &out).contains("spec.rootfs[0].path `missing` does not exist"));
    let s = spec_dir(dir.path(), "  rootfs: [{path: rootfs}]\n  extras: 1\n");
    let e = build_err(&s, &out);
    assert!(e.contains("unknown field `extras`") && e.contains("line 7"), "{e}");
    let s = spec_dir(dir.path(), "  rootfs: [{path: ..}]\n");
    assert!(build_err(&s, &out).contains("escapes the spec's directory"));
    let s = spec_dir(dir.path(), "  rootfs: [{path: rootfs}]\n");
    let root = s.parent().unwrap().join("rootfs");
    std::os::unix::fs::symlink("../../../etc/passwd", root.join("etc/evil")).unwrap();
    let e = build_err(&s, &out);
    assert!(e.contains("etc/evil") && e.contains("outside the tree"), "{e}");
    fs::remove_file(root.join("etc/evil")).unwrap();
    ok(Command::new("mkfifo").arg(root.join("etc/fifo")));
    assert!(build_err(&s, &out).contains("device, FIFO or socket"));
    fs::remove_file(root.join("etc/fifo")).unwrap();
    fs::set_permissions(root.join("etc/a"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert!(build_err(&s, &out).contains("setuid"));
    fs::set_permissions(root.join("etc/a"), fs::Permissions::from_mode(0o755)).unwrap();
    ok(ferry().arg("build").arg("-f").arg(&s).arg("-o").arg(&out).arg("--unsigned"));
}

#[test]
fn unwritable_output_and_full_disk_leave_nothing_behind() {
    let dir = scratch();
    let err = fails(
        ferry()
            .arg("build")
            .arg(standin_bundle())
            .arg("--unsigned")
            .arg("-o")
            .arg(dir.path().join("no/such/dir/installer")),
    );
    assert!(err.contains("cannot write the output"), "{err}");

    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&small));
    let err = run(ferry().arg("build").arg(standin_bundle()).arg("--unsigned").arg("-o").arg(small.join("installer")));
    let leftovers: Vec<_> = fs::read_dir(&small).unwrap().flatten().map(|e| e.path()).collect();
    let _ = Command::new("umount").arg(&small).status();
    let t = text(&err);
    assert!(!err.status.success() && t.contains("No space left on device"), "{t}");
    assert!(leftovers.is_empty(), "a failed build left {leftovers:?}");
}

#[test]
fn extract_checks_free_space_first() {
    let dir = scratch();
    let bundle = multi_chunk_bundle(dir.path());
    let inst = build(&bundle, dir.path(), None);
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&small));
    let out = run(installer(&inst).arg("extract").arg("--to").arg(&small));
    let leftovers: Vec<_> = walk(&small).into_iter().filter(|p| p.is_file()).collect();
    let _ = Command::new("umount").arg(&small).status();
    let t = text(&out);
    assert!(!out.status.success() && t.contains("not enough free space"), "{t}");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn launch_steps_are_checked_recorded_and_inspected() {
    // The demo bundle's steps, recorded with the payload paths the installer extracts on master0.
    let dir = scratch();
    let inst = build(&standin_bundle(), dir.path(), None);
    let json: serde_json::Value = serde_json::from_str(&ok(installer(&inst).args(["inspect", "--json"]))).unwrap();
    assert_eq!(
        json["metadata"]["launch"],
        serde_json::json!([
            {"manifests": "bundle/manifests/namespace.yaml"},
            {"manifests": "bundle/manifests/web.yaml"},
            {"run": "kubectl get --raw /readyz"},
        ])
    );
    let human = ok(installer(&inst).arg("inspect"));
    assert!(
        human.contains(
            "launch steps: 3\n  1. manifests bundle/manifests/namespace.yaml\n  2. manifests bundle/manifests/web.yaml\n  3. run kubectl get --raw /readyz\n"
        ),
        "{human}"
    );
    // Those paths are entries: exactly what the runner asks `extract` for.
    let to = dir.path().join("launch");
    ok(installer(&inst)
        .arg("extract")
        .arg("--to")
        .arg(&to)
        .args(["bundle/manifests/namespace.yaml", "bundle/manifests/web.yaml"]));
    assert!(fs::read_to_string(to.join("bundle/manifests/web.yaml")).unwrap().contains("kind: Deployment"));

    // Bad steps fail the build, naming the step, the path or the field and its line.
    let b = dir.path().join("b");
    fs::create_dir_all(b.join("manifests")).unwrap();
    fs::create_dir_all(b.join("extra")).unwrap();
    fs::write(b.join("manifests/a.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
    fs::write(b.join("extra/b.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n").unwrap();
    let head = "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {name: b, version: '1'}\nspec:\n  kubernetes: {version: v1.36.3}\n  manifests: [{path: manifests}]\n  launch:\n    - manifests: manifests/a.yaml\n";
    let fail = |tail: &str| {
        fs::write(b.join("bundle.yaml"), format!("{head}{tail}")).unwrap();
        fails(ferry().arg("build").arg(b.join("bundle.yaml")).arg("-o").arg(dir.path().join("bad")).arg("--unsigned"))
    };
    let e = fail("    - manifests: manifests/gone.yaml\n");
    assert!(e.contains("spec.launch[1].manifests `manifests/gone.yaml` does not exist"), "{e}");
    let e = fail("    - manifests: extra/b.yaml\n");
    assert!(e.contains("spec.launch[1].manifests `extra/b.yaml` is not carried by the bundle"), "{e}");
    let e = fail("    - {run: 'true', manifests: manifests/a.yaml}\n");
    assert!(e.contains("spec.launch[1] must have exactly one of `manifests`, `chart` or `run`"), "{e}");
    let e = fail("    - command: 'true'\n");
    assert!(e.contains("command") && e.contains("line 9"), "{e}");
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn output_into_a_closed_pipe_ends_with_sigpipe_status_not_a_panic() {
    // `installer inspect | head`: the reader goes away. Here it is gone before the first line.
    let dir = scratch();
    let inst = build(&standin_bundle(), dir.path(), None);
    for args in [&["inspect"][..], &["inspect", "--json"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = installer(&inst).args(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
