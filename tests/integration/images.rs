//! Images, packer side: `ferry build` gathers images from a real upstream registry
//! (`docker-registry` on loopback, with and without Basic auth), OCI layouts and docker
//! archives, stores them byte-exact and deduplicated, and fails listing every image it cannot
//! resolve. `ferry images` lists what discovery finds. Test images are built offline with umoci
//! from `/bin/busybox` and pushed with skopeo.

use ferry_tests::registry::{Layout, Upstream, digest};
use ferry_tests::*;
use payload_format::{Compression, Payload};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const K8S: &str = "v1.36.3";

/// What `kubeadm config images list --kubernetes-version v1.36.3` names (the packer's table
/// must agree; this list is written out independently on purpose).
const CONTROL_PLANE: &[&str] = &[
    "kube-apiserver:v1.36.3",
    "kube-controller-manager:v1.36.3",
    "kube-scheduler:v1.36.3",
    "kube-proxy:v1.36.3",
    "coredns/coredns:v1.14.2",
    "pause:3.10.2",
    "etcd:3.6.8-0",
];

/// `ferry`, isolated from the caller's Docker logins and test-suite defaults.
pub(crate) fn ferry_cmd(home: &Path) -> Command {
    let mut c = Command::new(release_bin("ferry"));
    c.env_remove("FERRY_OFFLINE")
        .env_remove("FERRY_ALLOW_MISSING_IMAGES")
        .env("DOCKER_CONFIG", home.join("no-docker-config"))
        .env("FERRY_HELM", "none")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("--no-progress");
    c
}

/// The JSON document a command that must succeed prints on stdout (its stderr carries
/// diagnostics, such as where the control-plane list came from).
pub(crate) fn json_stdout(cmd: &mut Command) -> Value {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd:?} printed no JSON on stdout ({e}):\n{}", text(&out)))
}

pub(crate) fn build_cmd(spec: &Path, out: &Path) -> Command {
    let mut c = ferry_cmd(spec.parent().unwrap());
    c.arg("build").arg(spec).arg("-o").arg(out).arg("--unsigned");
    c
}

/// A scratch bundle directory with `bundle.yaml` = header + `spec_body` (indented under spec:).
pub(crate) fn write_spec(dir: &Path, spec_body: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let text = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: images-test, version: 0.1.0}}\nspec:\n  kubernetes: {{version: {K8S}}}\n{spec_body}"
    );
    let p = dir.join("bundle.yaml");
    fs::write(&p, text).unwrap();
    p
}

/// Pushes a small stand-in under every control-plane name, so builds resolve them from `up`
/// (configured as the mirror of registry.k8s.io) instead of the internet.
pub(crate) fn push_control_plane(up: &Upstream, layout: &Layout) {
    layout.image("cp", &[("bin/busybox", None), ("etc/role", Some(b"control-plane stand-in"))], "amd64");
    for name in CONTROL_PLANE {
        up.push(&layout.src("cp"), name);
    }
}

pub(crate) fn mirrors(lines: &[(&str, &Upstream)]) -> String {
    let mut s = "  registryMirrors:\n".to_string();
    for (registry, up) in lines {
        s.push_str(&format!("    {registry}: {}\n", up.url()));
    }
    s
}

pub(crate) fn metadata(installer: &Path) -> serde_json::Map<String, Value> {
    Payload::open(installer).unwrap().index().metadata.extra.clone()
}

pub(crate) fn image<'a>(meta: &'a serde_json::Map<String, Value>, r: &str) -> &'a Value {
    meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ref"] == r)
        .unwrap_or_else(|| panic!("{r} not in {:#}", meta["images"]))
}

/// Every `blobs/sha256/<hex>` entry: raw, 0644, hashing to its name. Returns digest → bytes.
fn blobs(installer: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let p = Payload::open(installer).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for e in &p.index().entries {
        if let Some(hex) = e.path.strip_prefix("blobs/sha256/") {
            assert_eq!(e.compression, Compression::Raw, "{} must be raw", e.path);
            assert_eq!(e.mode, 0o644, "{}", e.path);
            let bytes = p.read_verified(e.offset, e.offset + e.size).unwrap();
            assert_eq!(digest(&bytes), format!("sha256:{hex}"), "{} holds other bytes", e.path);
            out.insert(format!("sha256:{hex}"), bytes);
        }
    }
    out
}

/// Checks the contract's closure: every manifest in `manifests` is stored, and every config and
/// layer they name (for stored children) is stored; nothing else is.
fn assert_closed(installer: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let meta = metadata(installer);
    let stored = blobs(installer);
    let mut expected = BTreeSet::new();
    for (d, _media) in meta["manifests"].as_object().unwrap() {
        let bytes = stored.get(d).unwrap_or_else(|| panic!("manifest {d} is listed but not stored"));
        expected.insert(d.clone());
        let doc: Value = serde_json::from_slice(bytes).unwrap();
        if let Some(cfg) = doc.get("config") {
            expected.insert(cfg["digest"].as_str().unwrap().to_string());
            for l in doc["layers"].as_array().unwrap() {
                expected.insert(l["digest"].as_str().unwrap().to_string());
            }
        }
    }
    for i in meta["images"].as_array().unwrap() {
        assert!(
            meta["manifests"].get(i["digest"].as_str().unwrap()).is_some(),
            "top-level {} not in manifests",
            i["digest"]
        );
    }
    let have: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(have, expected, "stored blobs differ from what the manifests need");
    stored
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-images-") || n.contains("ferry-build") || n == "installer")
        .collect()
}

#[test]
fn pulls_through_mirrors_byte_exact_deduplicated_and_keyed_by_registry() {
    let dir = scratch();
    let hub = Upstream::start();
    let quay = Upstream::start();
    let layout = Layout::init(&dir.path().join("layout"));
    push_control_plane(&hub, &layout);
    layout.image("app-hub", &[("bin/busybox", None), ("etc/app", Some(b"from docker.io"))], "amd64");
    layout.image("app-quay", &[("bin/busybox", None), ("etc/app", Some(b"from quay.io"))], "amd64");
    // docker.io/library/app:1 as a Docker schema 2 manifest, quay.io/library/app:1 as OCI.
    hub.push_with(&layout.src("app-hub"), "library/app:1", &["--format", "v2s2"]);
    quay.push(&layout.src("app-quay"), "library/app:1");

    let b = dir.path().join("bundle");
    fs::create_dir_all(b.join("manifests")).unwrap();
    fs::write(
        b.join("manifests/web.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      initContainers: [{name: init, image: 'quay.io/library/app:1'}]\n      containers: [{name: web, image: 'app:1'}]\n",
    )
    .unwrap();
    let spec = write_spec(
        &b,
        &format!(
            "  manifests: [{{path: manifests}}]\n  images: [docker.io/library/app:1]\n{}",
            mirrors(&[("docker.io", &hub), ("registry.k8s.io", &hub), ("quay.io", &quay)])
        ),
    );
    let out = dir.path().join("installer");
    let log = ok(&mut build_cmd(&spec, &out));
    assert!(log.contains("images: 9 resolved, 0 missing"), "{log}");

    let verified = ok(ferry_cmd(dir.path()).arg("verify").arg(&out).arg("--allow-unsigned"));
    assert!(verified.contains("OK:"), "{verified}");
    let meta = metadata(&out);
    assert_eq!(meta["platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(meta["missingImages"], serde_json::json!([]));
    let refs: Vec<&str> = meta["images"].as_array().unwrap().iter().map(|i| i["ref"].as_str().unwrap()).collect();
    let mut sorted = refs.clone();
    sorted.sort();
    assert_eq!(refs, sorted, "images are sorted by ref");
    assert_eq!(refs.len(), 9, "{refs:?}");

    let hub_app = image(&meta, "docker.io/library/app:1");
    let quay_app = image(&meta, "quay.io/library/app:1");
    let hub_raw = hub.raw_manifest("library/app:1");
    let quay_raw = quay.raw_manifest("library/app:1");
    assert_eq!(hub_app["digest"], digest(&hub_raw));
    assert_eq!(quay_app["digest"], digest(&quay_raw));
    assert_ne!(hub_app["digest"], quay_app["digest"], "docker.io/x and quay.io/x must not collide");
    assert_eq!(hub_app["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(quay_app["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        (hub_app["registry"].as_str(), hub_app["repository"].as_str(), hub_app["tag"].as_str()),
        (Some("docker.io"), Some("library/app"), Some("1"))
    );
    assert_eq!(hub_app["source"], "registry");
    assert_eq!(hub_app["foundIn"], serde_json::json!(["spec.images", "bundle/manifests/web.yaml:14 (Deployment web)"]));
    assert_eq!(quay_app["foundIn"], serde_json::json!(["bundle/manifests/web.yaml:13 (Deployment web)"]));
    let cp = image(&meta, "registry.k8s.io/coredns/coredns:v1.14.2");
    assert_eq!(cp["foundIn"], serde_json::json!([format!("kubernetes {K8S} control plane")]));

    let stored = assert_closed(&out);
    assert_eq!(stored[hub_app["digest"].as_str().unwrap()], hub_raw, "manifests are stored byte-exact");
    assert_eq!(stored[quay_app["digest"].as_str().unwrap()], quay_raw);
    assert_eq!(
        meta["manifests"][hub_app["digest"].as_str().unwrap()],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // Seven control-plane names share one manifest, config and layer: deduplicated by digest.
    let cp_digests: BTreeSet<&str> = CONTROL_PLANE
        .iter()
        .map(|n| image(&meta, &format!("registry.k8s.io/{n}"))["digest"].as_str().unwrap())
        .collect();
    assert_eq!(cp_digests.len(), 1);
    assert_eq!(stored.len(), 9, "3 blobs for each of the 3 distinct images: {:?}", stored.keys());
    assert!(leftovers(dir.path()).iter().all(|n| n == "installer"), "{:?}", leftovers(dir.path()));
}

#[test]
fn basic_auth_from_the_flag_or_docker_config_and_refused_without() {
    let dir = scratch();
    let hub = Upstream::start_with_login("ferry", "s3cret-pw");
    let layout = Layout::init(&dir.path().join("layout"));
    push_control_plane(&hub, &layout);
    layout.image("app", &[("bin/busybox", None)], "amd64");
    hub.push(&layout.src("app"), "library/app:1");
    let b = dir.path().join("bundle");
    let spec =
        write_spec(&b, &format!("  images: [app:1]\n{}", mirrors(&[("docker.io", &hub), ("registry.k8s.io", &hub)])));
    let out = dir.path().join("installer");

    let err = fails(&mut build_cmd(&spec, &out));
    assert!(err.contains("8 of 8 images could not be resolved"), "{err}");
    assert!(err.contains("docker.io/library/app:1") && err.contains("authentication failed"), "{err}");
    assert!(err.contains(&format!("--registry-auth {}=", hub.addr)), "{err}");
    assert!(!out.exists());

    let err = fails(build_cmd(&spec, &out).arg("--registry-auth").arg(format!("{}=ferry:wrong-pw", hub.addr)));
    assert!(err.contains("authentication failed") && err.contains("were refused"), "{err}");
    assert!(!err.contains("wrong-pw"), "a password was printed: {err}");
    assert!(!out.exists());

    let log = ok(build_cmd(&spec, &out).arg("--registry-auth").arg(format!("{}=ferry:s3cret-pw", hub.addr)));
    assert!(!log.contains("s3cret-pw"), "{log}");
    assert_eq!(image(&metadata(&out), "docker.io/library/app:1")["digest"], digest(&hub.raw_manifest("library/app:1")));
    let bytes = fs::read(&out).unwrap();
    assert!(!bytes.windows(9).any(|w| w == b"s3cret-pw"), "the password is stored in the installer");
    fs::remove_file(&out).unwrap();

    let cfg_dir = dir.path().join("docker-config");
    fs::create_dir_all(&cfg_dir).unwrap();
    let auth = ok(Command::new("sh").arg("-c").arg("printf %s ferry:s3cret-pw | base64 -w0"));
    fs::write(cfg_dir.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, hub.addr, auth.trim()))
        .unwrap();
    ok(build_cmd(&spec, &out).env("DOCKER_CONFIG", &cfg_dir));
    assert!(out.exists());
}

#[test]
fn oci_layouts_dir_and_tar_and_docker_archives_old_and_new() {
    let dir = scratch();
    let hub = Upstream::start();
    let b = dir.path().join("bundle");
    fs::create_dir_all(&b).unwrap();
    let cp_layout = Layout::init(&dir.path().join("cp-layout"));
    push_control_plane(&hub, &cp_layout);

    let app = Layout::init(&b.join("layouts/app"));
    app.image("2.1", &[("bin/busybox", None), ("etc/app", Some(b"oci layout"))], "amd64");
    ok(Command::new("tar").arg("-C").arg(&app.path).arg("-cf").arg(b.join("app.tar")).arg("."));
    // `docker save` of engines before 25, as skopeo writes it.
    app.image("tool", &[("bin/busybox", None), ("etc/app", Some(b"docker archive"))], "amd64");
    ok(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(app.src("tool"))
        .arg(format!("docker-archive:{}:example/tool:1", b.join("tool.tar").display())));
    // moby >= 25: an OCI layout plus manifest.json, tagged with containerd's annotation.
    let new = Layout::init(&dir.path().join("moby25"));
    new.image("x", &[("bin/busybox", None), ("etc/app", Some(b"moby 25"))], "amd64");
    let mut idx = new.index();
    idx["manifests"][0]["annotations"] = serde_json::json!({"io.containerd.image.name": "docker.io/example/new:1", "org.opencontainers.image.ref.name": "1"});
    fs::write(new.path.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    fs::write(
        new.path.join("manifest.json"),
        r#"[{"Config":"blobs/sha256/x","RepoTags":["example/new:1"],"Layers":[]}]"#,
    )
    .unwrap();
    ok(Command::new("tar").arg("-C").arg(&new.path).arg("-cf").arg(b.join("moby25.tar")).arg("."));

    let spec = write_spec(
        &b,
        &format!(
            "  images:\n    - ref: quay.io/example/app:2.1\n      source: oci:layouts/app:2.1\n    - ref: quay.io/example/tarred:2.1\n      source: oci:app.tar\n    - {{ref: docker.io/example/tool:1, source: 'docker-archive:tool.tar'}}\n    - {{ref: example/new:1, source: 'docker-archive:moby25.tar'}}\n{}",
            mirrors(&[("registry.k8s.io", &hub)])
        ),
    );
    let out = dir.path().join("installer");
    let log = ok(&mut build_cmd(&spec, &out));
    assert!(
        log.contains("docker.io/example/tool:1 comes from docker-archive:tool.tar") && log.contains("will not resolve"),
        "{log}"
    );
    assert!(log.contains("docker.io/example/new:1 comes from docker-archive:moby25.tar"), "{log}");
    let meta = metadata(&out);
    let stored = assert_closed(&out);
    let want = app.descriptor("2.1")["digest"].as_str().unwrap().to_string();
    for r in ["quay.io/example/app:2.1", "quay.io/example/tarred:2.1"] {
        let i = image(&meta, r);
        assert_eq!(i["source"], "oci");
        assert_eq!(i["digest"], want, "{r} keeps the layout's digest");
    }
    assert_eq!(stored[&want], app.blob(&want), "byte-exact from the layout");
    let tool = image(&meta, "docker.io/example/tool:1");
    assert_eq!(tool["source"], "docker-archive");
    assert_eq!(tool["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let tool_manifest: Value = serde_json::from_slice(&stored[tool["digest"].as_str().unwrap()]).unwrap();
    assert_eq!(tool_manifest["layers"].as_array().unwrap().len(), 1);
    let newi = image(&meta, "docker.io/example/new:1");
    assert_eq!(newi["digest"], new.index()["manifests"][0]["digest"]);
    assert_eq!(newi["source"], "docker-archive");
}

#[test]
fn multi_arch_index_is_kept_and_only_wanted_platforms_are_carried() {
    let dir = scratch();
    let hub = Upstream::start();
    let layout = Layout::init(&dir.path().join("layout"));
    push_control_plane(&hub, &layout);
    layout.image("amd", &[("bin/busybox", None), ("etc/arch", Some(b"amd64"))], "amd64");
    layout.image("arm", &[("etc/arch", Some(b"arm64"))], "arm64");
    layout.index_of("multi", &[("amd", "amd64"), ("arm", "arm64")]);
    hub.push(&layout.src("multi"), "library/multi:1");
    let raw_index = hub.raw_manifest("library/multi:1");
    let index: Value = serde_json::from_slice(&raw_index).unwrap();
    let child = |arch: &str| {
        index["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == arch).unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (amd, arm) = (child("amd64"), child("arm64"));
    let arm_manifest: Value = serde_json::from_slice(&layout.blob(&arm)).unwrap();
    let arm_layer = arm_manifest["layers"][0]["digest"].as_str().unwrap().to_string();

    let b = dir.path().join("bundle");
    let mirrors = mirrors(&[("docker.io", &hub), ("registry.k8s.io", &hub)]);
    let out = dir.path().join("installer");
    let spec = write_spec(&b, &format!("  images: [multi:1]\n{mirrors}"));
    ok(&mut build_cmd(&spec, &out));
    let meta = metadata(&out);
    let stored = assert_closed(&out);
    let m = image(&meta, "docker.io/library/multi:1");
    assert_eq!(m["digest"], digest(&raw_index));
    assert_eq!(m["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(stored[m["digest"].as_str().unwrap()], raw_index, "the index is kept as published");
    assert!(stored.contains_key(&amd) && meta["manifests"].get(&amd).is_some());
    assert!(!stored.contains_key(&arm) && !stored.contains_key(&arm_layer), "arm64 is not in spec.platforms");
    assert!(meta["manifests"].get(&arm).is_none());
    fs::remove_file(&out).unwrap();

    let spec = write_spec(&b, &format!("  platforms: [linux/amd64, linux/arm64]\n  images: [multi:1]\n{mirrors}"));
    ok(&mut build_cmd(&spec, &out));
    let stored = assert_closed(&out);
    assert!(stored.contains_key(&arm) && stored.contains_key(&arm_layer) && stored.contains_key(&amd));
    assert_eq!(metadata(&out)["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
    fs::remove_file(&out).unwrap();

    let spec = write_spec(&b, &format!("  platforms: [linux/s390x]\n  images: [multi:1]\n{mirrors}"));
    let err = fails(&mut build_cmd(&spec, &out));
    assert!(
        err.contains("docker.io/library/multi:1")
            && err.contains("no manifest for linux/s390x (it has: linux/amd64, linux/arm64)"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn unresolvable_images_are_all_listed_and_nothing_is_written() {
    let dir = scratch();
    let hub = Upstream::start();
    let layout = Layout::init(&dir.path().join("layout"));
    push_control_plane(&hub, &layout);
    layout.image("app", &[("bin/busybox", None), ("etc/app", Some(b"to be corrupted"))], "amd64");
    hub.push(&layout.src("app"), "library/corrupt:1");
    let manifest: Value = serde_json::from_slice(&hub.raw_manifest("library/corrupt:1")).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    // Same size, different bytes: the registry serves it without noticing.
    let data = hub.blob_data(&layer);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, bytes).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let b = dir.path().join("bundle");
    let spec = write_spec(
        &b,
        &format!(
            "  images: [nope:1, 'quay.io/x/missing:2', 'corrupt:1']\n{}    quay.io: http://{closed}\n",
            mirrors(&[("docker.io", &hub), ("registry.k8s.io", &hub)])
        ),
    );
    let out = dir.path().join("installer");
    let err = fails(&mut build_cmd(&spec, &out));
    assert!(err.contains("3 of 10 images could not be resolved, so no installer was written"), "{err}");
    assert!(
        err.contains("docker.io/library/nope:1 (from spec.images): not found") && err.contains("MANIFEST_UNKNOWN"),
        "{err}"
    );
    assert!(
        err.contains("quay.io/x/missing:2 (from spec.images): registry unreachable")
            && err.contains(&closed.to_string()),
        "{err}"
    );
    assert!(
        err.contains("docker.io/library/corrupt:1") && err.contains("corrupt content") && err.contains(&layer),
        "{err}"
    );
    assert!(err.contains("--allow-missing-images"), "{err}");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));

    // With --allow-missing-images the gap is recorded and shown by verify and inspect.
    let log = ok(build_cmd(&spec, &out).arg("--allow-missing-images"));
    assert!(log.contains("leaving out docker.io/library/nope:1"), "{log}");
    let meta = metadata(&out);
    assert_eq!(
        meta["missingImages"],
        serde_json::json!(["docker.io/library/corrupt:1", "docker.io/library/nope:1", "quay.io/x/missing:2"])
    );
    assert_eq!(meta["images"].as_array().unwrap().len(), 7);
    assert!(!blobs(&out).contains_key(&layer), "a corrupt blob must never be stored");
    let v = ok(ferry_cmd(dir.path()).arg("verify").arg(&out).arg("--allow-unsigned"));
    assert!(v.contains("lacks image docker.io/library/nope:1"), "{v}");
    let i = ok(ferry_cmd(dir.path()).arg("inspect").arg(&out));
    assert!(i.contains("MISSING image: quay.io/x/missing:2"), "{i}");
}

#[test]
fn local_source_and_discovery_errors_name_the_image_or_file() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    fs::create_dir_all(&b).unwrap();
    let out = dir.path().join("installer");
    let app = Layout::init(&b.join("layout"));
    app.image("1", &[("bin/busybox", None)], "amd64");
    let desc = app.descriptor("1");
    let manifest: Value = serde_json::from_slice(&app.blob(desc["digest"].as_str().unwrap())).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    fs::remove_file(app.blob_path(&layer)).unwrap();
    // Offline: only local sources; the control plane then fails too, and is listed with them.
    let spec = write_spec(&b, "  images: [{ref: 'quay.io/example/app:1', source: 'oci:layout:1'}]\n");
    let err = fails(build_cmd(&spec, &out).arg("--offline"));
    assert!(
        err.contains("quay.io/example/app:1 (from spec.images)")
            && err.contains(&format!("oci:layout:1 lacks blob {layer} (the layer 1)")),
        "{err}"
    );
    assert!(err.contains("registry.k8s.io/pause:3.10.2") && err.contains("--offline"), "{err}");
    assert!(!out.exists());

    fs::create_dir_all(b.join("manifests")).unwrap();
    fs::write(
        b.join("manifests/bad.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# second\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {}\n  template: {spec: {containers: [{name: web, image: 42}]}}\n",
    )
    .unwrap();
    let spec = write_spec(&b, "  manifests: [{path: manifests}]\n");
    let err = fails(&mut build_cmd(&spec, &out));
    assert!(err.contains("bundle/manifests/bad.yaml document 2 (line 6): Deployment web is malformed: spec.template.spec.containers[0].image"), "{err}");

    fs::create_dir_all(b.join("chart")).unwrap();
    fs::write(b.join("chart/Chart.yaml"), "apiVersion: v2\nname: broken\nversion: 1.0.0\n").unwrap();
    fs::write(b.join("chart/values.yaml"), "image: {repository: [unclosed\n").unwrap();
    let spec = write_spec(&b, "  charts: [{path: chart}]\n");
    let err = fails(build_cmd(&spec, &out).arg("--chart-images-from-values"));
    assert!(err.contains("chart broken does not render"), "{err}");
    // With helm on the build machine, a failing `helm template` names the chart too.
    let helm = dir.path().join("helm");
    write_program(&helm, b"#!/bin/sh\necho 'Error: template: broken/templates/x.yaml:3: nil pointer' >&2\nexit 1\n");
    let err = fails(build_cmd(&spec, &out).env("FERRY_HELM", &helm));
    assert!(
        err.contains("chart chart does not render (release chart in namespace default") && err.contains("nil pointer"),
        "{err}"
    );

    let spec = write_spec(&b, "");
    fs::write(&spec, fs::read_to_string(&spec).unwrap().replace(K8S, "v1.29.0")).unwrap();
    let err = fails(&mut build_cmd(&spec, &out));
    assert!(
        err.contains("Kubernetes v1.29.0 is not supported")
            && err.contains("v1.34.x, v1.35.x, v1.36.x, v1.37.x")
            && err.contains("has no usr/local/bin/kubeadm or usr/bin/kubeadm"),
        "{err}"
    );

    app.image("t", &[("bin/busybox", None)], "amd64");
    ok(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(app.src("t"))
        .arg(format!("docker-archive:{}:t:1", b.join("t.tar").display())));
    let pin = format!("t@sha256:{}", "a".repeat(64));
    let spec = write_spec(&b, &format!("  images: [{{ref: '{pin}', source: 'docker-archive:t.tar'}}]\n"));
    let err = fails(build_cmd(&spec, &out).arg("--offline"));
    assert!(err.contains("docker save does not keep registry digests"), "{err}");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn ferry_images_lists_every_discovered_image_and_where_it_was_found() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    fs::create_dir_all(b.join("manifests")).unwrap();
    fs::create_dir_all(b.join("chart/charts/sub")).unwrap();
    fs::write(
        b.join("manifests/all.yaml"),
        "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: a, image: 'nginx:1.27'}]}}\n---\napiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\nspec: {template: {spec: {containers: [{name: r, image: 'ghcr.io/example/rollout:3'}]}}}\n",
    )
    .unwrap();
    fs::write(
        b.join("chart/Chart.yaml"),
        "apiVersion: v2\nname: web\nversion: 1.0.0\nappVersion: \"2.4\"\nannotations:\n  artifacthub.io/images: |\n    - name: proxy\n      image: quay.io/example/proxy:9\n",
    )
    .unwrap();
    fs::write(
        b.join("chart/values.yaml"),
        "image:\n  registry: quay.io\n  repository: example/web\n  tag: \"\"\nsidecar: {image: 'nginx', tag: '1.27'}\n",
    )
    .unwrap();
    fs::write(b.join("chart/charts/sub/Chart.yaml"), "apiVersion: v2\nname: sub\nversion: 0.1.0\n").unwrap();
    fs::write(b.join("chart/charts/sub/values.yaml"), "image: {repository: bitnami/redis, tag: '7.2'}\n").unwrap();
    let spec = write_spec(
        &b,
        "  manifests: [{path: manifests}]\n  charts: [{path: chart}]\n  images: ['registry.k8s.io/pause:3.10.2']\n",
    );

    // No helm: refused, unless the operator accepts a guess from the values.
    let err = fails(ferry_cmd(dir.path()).arg("images").arg(&spec));
    assert!(err.contains("no helm to render 1 chart (chart)"), "{err}");
    let json =
        json_stdout(ferry_cmd(dir.path()).arg("images").arg("--json").arg("--chart-images-from-values").arg(&spec));
    let list = json["images"].as_array().unwrap();
    let get = |r: &str| list.iter().find(|i| i["ref"] == r).unwrap_or_else(|| panic!("{r} missing from {json:#}"));
    assert_eq!(
        get("docker.io/library/nginx:1.27")["foundIn"],
        serde_json::json!([
            "bundle/manifests/all.yaml:4 (Pod p)",
            "chart web values.yaml sidecar.image, guessed without helm"
        ])
    );
    assert_eq!(get("docker.io/library/nginx:1.27")["guessed"], false, "a manifest names it too");
    assert_eq!(
        get("ghcr.io/example/rollout:3")["foundIn"],
        serde_json::json!(["bundle/manifests/all.yaml:9 (Rollout r)"])
    );
    assert_eq!(
        get("quay.io/example/web:2.4")["foundIn"],
        serde_json::json!(["chart web values.yaml image.repository, guessed without helm"]),
        "appVersion is the default tag"
    );
    assert_eq!(get("quay.io/example/web:2.4")["guessed"], true);
    assert_eq!(
        get("quay.io/example/proxy:9")["foundIn"],
        serde_json::json!(["chart web Chart.yaml at annotations.artifacthub.io/images, outside a pod spec"])
    );
    assert_eq!(get("quay.io/example/proxy:9")["section"], "outsidePodSpec");
    assert_eq!(
        get("docker.io/bitnami/redis:7.2")["foundIn"],
        serde_json::json!(["chart web/sub values.yaml image.repository, guessed without helm"])
    );
    assert_eq!(
        get("registry.k8s.io/pause:3.10.2")["foundIn"],
        serde_json::json!(["spec.images", format!("kubernetes {K8S} control plane")])
    );
    assert_eq!(list.len(), 5 + 7, "{json:#}");
    assert_eq!(
        json["totals"],
        serde_json::json!({"images": 12, "apps": 4, "outsidePodSpec": 1, "controlPlane": 7, "guessed": 2})
    );

    let text = ok(ferry_cmd(dir.path()).arg("images").arg("--chart-images-from-values").arg(&spec));
    assert!(text.contains("Images the apps run (4):"), "{text}");
    assert!(text.contains("quay.io/example/web:2.4 (guessed)"), "{text}");
    assert!(
        text.contains("12 images: 4 the apps run (2 guessed), 1 referenced outside a pod spec, 7 of the control plane"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "control plane of Kubernetes {K8S}: 7 images from ferry's built-in table (values of kubeadm v1.36.3; \
             kubeadm not runnable here: the bundle's rootfs has no usr/local/bin/kubeadm or usr/bin/kubeadm)"
        )),
        "{text}"
    );

    // With helm available its rendering replaces the values.yaml scan (a STAND-IN helm here that
    // prints one object; the real helm is used in charts.rs).
    let helm = dir.path().join("helm");
    write_program(
        &helm,
        b"#!/bin/sh\n[ \"$1\" = template ] || exit 2\ncat <<'EOF'\n---\n# Source: web/templates/deploy.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {}\n  template: {spec: {containers: [{name: w, image: 'quay.io/example/rendered:2.4'}]}}\nEOF\n",
    );
    let json = json_stdout(ferry_cmd(dir.path()).env("FERRY_HELM", &helm).arg("images").arg("--json").arg(&spec));
    let refs: Vec<&str> = json["images"].as_array().unwrap().iter().map(|i| i["ref"].as_str().unwrap()).collect();
    assert!(refs.contains(&"quay.io/example/rendered:2.4") && !refs.contains(&"quay.io/example/web:2.4"), "{refs:?}");
}

#[test]
fn https_is_verified_unless_listed_insecure_and_plain_http_is_only_for_loopback() {
    let dir = scratch();
    let tls = Upstream::start_tls();
    let plain = Upstream::start();
    let layout = Layout::init(&dir.path().join("layout"));
    push_control_plane(&plain, &layout);
    layout.image("app", &[("bin/busybox", None)], "amd64");
    tls.push(&layout.src("app"), "library/app:1");
    plain.push(&layout.src("app"), "direct/app:1");
    let b = dir.path().join("bundle");
    let out = dir.path().join("installer");
    // References naming the registries themselves (no mirror): https first, and for loopback
    // hosts plain http after it.
    let images = format!(
        "  images: ['{}/library/app:1', '{}/direct/app:1']\n{}",
        tls.addr,
        plain.addr,
        mirrors(&[("registry.k8s.io", &plain)])
    );

    let spec = write_spec(&b, &images);
    let err = fails(&mut build_cmd(&spec, &out));
    assert!(err.contains("1 of 9 images could not be resolved"), "{err}");
    assert!(err.contains(&format!("{}/library/app:1 (from spec.images): registry unreachable", tls.addr)), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "the self-signed certificate is refused: {err}");
    assert!(!out.exists());

    let spec = write_spec(&b, &format!("{images}  insecureRegistries: ['{}']\n", tls.addr));
    ok(&mut build_cmd(&spec, &out));
    let meta = metadata(&out);
    assert_eq!(
        image(&meta, &format!("{}/library/app:1", tls.addr))["digest"],
        digest(&tls.raw_manifest("library/app:1"))
    );
    assert_eq!(image(&meta, &format!("{}/direct/app:1", plain.addr))["registry"], plain.addr.as_str());
    fs::remove_file(&out).unwrap();

    // Plain http to anything but loopback must be allowed explicitly; refused before any traffic.
    let spec = write_spec(&b, "  images: [app:1]\n  registryMirrors: {docker.io: 'http://registry.invalid:5000'}\n");
    let err = fails(&mut build_cmd(&spec, &out));
    assert!(err.contains("registryMirrors.docker.io") && err.contains("insecureRegistries"), "{err}");
}

/// A STAND-IN for kubeadm (a shell script, not kubeadm) in a bundle's rootfs: it answers
/// `version -o short` and `config images list --kubernetes-version V` like the real one, with an
/// etcd tag of its own so its list can be told from ferry's table.
const STANDIN_KUBEADM: &str = "#!/bin/sh\n# STAND-IN for kubeadm (ferry images test)\ncase \"$1 $2\" in\n\
  'version -o') echo v1.36.3 ;;\n\
  'config images') for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do echo registry.k8s.io/$c:$5; done\n\
    echo registry.k8s.io/coredns/coredns:v1.14.2; echo registry.k8s.io/pause:3.10.2; echo registry.k8s.io/etcd:3.6.8-0-standin ;;\n\
  *) echo \"stand-in kubeadm: $* is not modelled\" >&2; exit 3 ;;\nesac\n";

#[test]
fn the_bundles_kubeadm_names_the_control_plane_and_a_failing_one_stops_discovery() {
    let dir = scratch();
    let b = dir.path().join("bundle");
    let kubeadm = b.join("rootfs/usr/bin/kubeadm");
    fs::create_dir_all(kubeadm.parent().unwrap()).unwrap();
    // write_program: ferry runs it (a copy this process had open for writing might not run).
    write_program(&kubeadm, STANDIN_KUBEADM.as_bytes());
    let spec = write_spec(&b, "  rootfs: [{path: rootfs}]\n");

    let listed = ok(ferry_cmd(dir.path()).arg("images").arg(&spec));
    assert!(listed.contains("registry.k8s.io/etcd:3.6.8-0-standin"), "kubeadm's list, not the table's:\n{listed}");
    assert!(
        listed.contains(&format!(
            "control plane of Kubernetes {K8S}: 7 images from the bundle's kubeadm v1.36.3 (rootfs/usr/bin/kubeadm)"
        )),
        "{listed}"
    );
    assert!(listed.contains("ferry's built-in table differs from rootfs/usr/bin/kubeadm"), "{listed}");
    // --json keeps stdout a JSON document; the source goes to stderr.
    let out = run(ferry_cmd(dir.path()).arg("images").arg("--json").arg(&spec));
    assert_eq!(
        json_stdout(ferry_cmd(dir.path()).arg("images").arg("--json").arg(&spec))["images"].as_array().unwrap().len(),
        7
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("from the bundle's kubeadm v1.36.3"), "{}", text(&out));

    // Runs, but fails: the build stops naming the file and what kubeadm said.
    write_program(&kubeadm, STANDIN_KUBEADM.replace("'config images')", "'config nothing')").as_bytes());
    let err = fails(ferry_cmd(dir.path()).arg("images").arg(&spec));
    assert!(
        err.contains("rootfs/usr/bin/kubeadm: `kubeadm config images list --kubernetes-version v1.36.3` failed")
            && err.contains("stand-in kubeadm: config images list --kubernetes-version v1.36.3 is not modelled"),
        "{err}"
    );

    // Not executable: the table, with the reason.
    write_program(&kubeadm, STANDIN_KUBEADM.as_bytes());
    ok(Command::new("chmod").arg("-x").arg(&kubeadm));
    let listed = ok(ferry_cmd(dir.path()).arg("images").arg(&spec));
    assert!(listed.lines().any(|l| l.trim() == "registry.k8s.io/etcd:3.6.8-0"), "{listed}");
    assert!(
        listed.contains(
            "from ferry's built-in table (values of kubeadm v1.36.3; kubeadm not runnable here: rootfs/usr/bin/kubeadm is not executable (mode 0"
        ),
        "{listed}"
    );
}
