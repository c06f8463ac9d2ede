//! The registry, installer half: `installer registry serve` and `installer registry config`, against
//! real clients: skopeo, a private containerd (`ctr` pull through generated hosts.toml, then
//! `ctr run`), and raw HTTP for the headers clients depend on.
//!
//! The fixture bundle holds busybox images built offline with umoci from Debian's static
//! busybox:
//! * `docker.io/library/app:1` and `quay.io/library/app:1`: same name, different content
//!   (`/etc/marker` says which registry), to prove repositories are keyed by registry;
//! * `docker.io/library/busybox:1.36`: a multi-arch index whose arm64 child is not carried;
//! * `registry.k8s.io/pause:3.10` and `quay.io/library/app@sha256:…` (digest-pinned).
//!
//! The installer is built by the real `ferry build` from `oci:` layout sources, offline.
//!
//! Every process a test starts is stopped when the test ends (kill on drop).

use ferry_tests::containerd::Containerd;
use ferry_tests::{run, text, write_program};
use payload_format::SecretKey;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------------------------------------
// Fixtures: images, the installer, a running registry, a tiny HTTP client.

/// Runs a command that must succeed; returns stdout.
fn sh(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&payload_format::sha256(data))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI layout `dir/name` holding one busybox image tagged `1`, whose `/etc/marker` holds
/// `marker`. Returns the layout and its manifest digest.
fn busybox_layout(dir: &Path, name: &str, marker: &str) -> (PathBuf, String) {
    let layout = dir.join(name);
    let bundle = dir.join(format!("{name}-unpacked"));
    let image = format!("{}:1", layout.display());
    sh(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    sh(Command::new("umoci").args(["new", "--image", &image]));
    sh(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copying /usr/bin/busybox (apt-get install busybox-static)");
    for applet in ["sh", "cat", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/marker"), format!("{marker}\n")).unwrap();
    sh(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]));
    sh(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));
    std::fs::remove_dir_all(&bundle).unwrap();
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "1")
        .expect("tag 1 in the layout")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (layout, digest)
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap()
}

/// Everything the tests share: the layouts, the signed installer and its public key.
struct Fixture {
    dir: PathBuf,
    installer: PathBuf,
    public_key: PathBuf,
    /// Manifest digest of the docker.io and quay.io `app:1` images.
    docker_app: String,
    quay_app: String,
    /// The multi-arch index over the docker.io image.
    index: String,
    /// Digest of an arm64 manifest the index names but the bundle does not carry.
    missing_child: String,
    /// The layer of each app image.
    docker_layer: String,
    quay_layer: String,
}

/// Builds the fixture once per test binary with the real `ferry build`, under cargo's
/// per-target temporary directory (wiped at the next run).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("registry-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (docker_layout, docker_app) = busybox_layout(&dir, "docker-app", "from docker.io");
        let (quay_layout, quay_app) = busybox_layout(&dir, "quay-app", "from quay.io");
        let layer_of = |layout: &Path, digest: &str| {
            let m: Value = serde_json::from_slice(&read_blob(layout, digest)).unwrap();
            m["layers"][0]["digest"].as_str().unwrap().to_string()
        };
        let docker_layer = layer_of(&docker_layout, &docker_app);
        let quay_layer = layer_of(&quay_layout, &quay_app);

        // A multi-arch index over the docker variant, tagged 1.36 in the same layout, naming an
        // arm64 child the layout lacks (as `ctr export` without --all-platforms leaves it).
        let docker_manifest = read_blob(&docker_layout, &docker_app);
        let missing_child = format!("sha256:{}", sha256_hex(b"arm64 manifest not carried"));
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {"mediaType": MANIFEST_TYPE, "digest": docker_app, "size": docker_manifest.len(),
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": MANIFEST_TYPE, "digest": missing_child, "size": 1234,
                 "platform": {"architecture": "arm64", "os": "linux"}}
            ]
        }))
        .unwrap();
        let index_digest = format!("sha256:{}", sha256_hex(&index));
        std::fs::write(docker_layout.join("blobs/sha256").join(index_digest.trim_start_matches("sha256:")), &index)
            .unwrap();
        let index_json = docker_layout.join("index.json");
        let mut layout_index: Value = serde_json::from_slice(&std::fs::read(&index_json).unwrap()).unwrap();
        layout_index["manifests"].as_array_mut().unwrap().push(json!({
            "mediaType": INDEX_TYPE, "digest": index_digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "1.36"}
        }));
        std::fs::write(&index_json, serde_json::to_vec(&layout_index).unwrap()).unwrap();

        std::fs::write(
            dir.join("bundle.yaml"),
            format!(
                r#"apiVersion: ferry.dev/v1alpha1
kind: Bundle
metadata: {{name: registry-test, version: 1.0.0}}
spec:
  kubernetes: {{version: v1.33.4}}
  platforms: [linux/amd64]
  images:
    - {{ref: docker.io/library/app:1, source: "oci:docker-app:1"}}
    - {{ref: quay.io/library/app:1, source: "oci:quay-app:1"}}
    - {{ref: "quay.io/library/app@{quay_app}", source: "oci:quay-app:1"}}
    - {{ref: docker.io/library/busybox:1.36, source: "oci:docker-app:1.36"}}
    - {{ref: registry.k8s.io/pause:3.10, source: "oci:docker-app:1"}}
"#
            ),
        )
        .unwrap();
        let ferry = ferry_tests::release_bin("ferry");
        sh(Command::new(&ferry).arg("keygen").arg("-o").arg(dir.join("vendor")));
        let installer = dir.join("installer");
        // --offline: the control-plane images of v1.33 are discovered too, and nothing may be
        // fetched from the internet; they are recorded as missing.
        sh(Command::new(&ferry)
            .arg("build")
            .arg(dir.join("bundle.yaml"))
            .arg("-o")
            .arg(&installer)
            .arg("--key")
            .arg(dir.join("vendor.key"))
            .args(["--offline", "--allow-missing-images"])
            .env("SOURCE_DATE_EPOCH", "1700000000"));
        Fixture {
            public_key: dir.join("vendor.pub"),
            dir,
            installer,
            docker_app,
            quay_app,
            index: index_digest,
            missing_child,
            docker_layer,
            quay_layer,
        }
    })
}

/// A running `installer registry serve`, killed on drop.
pub(crate) struct Serve {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
    log: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl Serve {
    pub(crate) fn start(installer: &Path, args: &[&str]) -> Serve {
        Serve::try_start(installer, args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(installer: &Path, args: &[&str]) -> Result<Serve, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = installer.with_file_name(format!("serve-{}-{n}.log", std::process::id()));
        // Plain HTTP unless the test serves TLS: most tests look at the API, not the transport.
        let plain: &[&str] = if args.contains(&"--tls-dir") { &[] } else { &["--insecure-plain-http"] };
        let mut child = Command::new(installer)
            .args(["registry", "serve", "--listen", "127.0.0.1:0"])
            .args(plain)
            .args(args)
            .env_remove("FERRY_TRUSTED_KEYS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // From here on the guard kills the process, whatever happens (even a panic below).
        let mut serve = Serve { child, addr: String::new(), log, _stdout: stdout };
        let mut line = String::new();
        loop {
            line.clear();
            if serve._stdout.read_line(&mut line).unwrap() == 0 {
                let status = serve.child.wait().unwrap();
                return Err(format!("registry serve exited ({status}) before listening:\n{}", serve.log()));
            }
            let listening = line.strip_prefix("registry listening on ");
            if let Some(rest) = listening.and_then(|l| l.strip_prefix("http://").or_else(|| l.strip_prefix("https://")))
            {
                serve.addr = rest.split_whitespace().next().unwrap().to_string();
                return Ok(serve);
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Resp {
        http(&self.addr, "GET", path, &[])
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The signed fixture installer, served with its key pinned.
fn serve_fixture() -> Serve {
    let f = fixture();
    Serve::start(&f.installer, &["--key", f.public_key.to_str().unwrap()])
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
    fn error_message(&self) -> String {
        self.json()["errors"][0]["message"].as_str().unwrap_or("").to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to EOF.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ferry-tests\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Resp { status, headers, body }
}

/// Waits until the registry log holds `n` access lines matching `pred` (lines are written when
/// a response body finishes, which can trail the client by a moment). The limit only stops a
/// hang: the caller's assertion then shows the log.
fn wait_log(serve: &Serve, pred: impl Fn(&str) -> bool, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = serve.log();
        if log.lines().filter(|l| pred(l)).count() >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // Never read the machine's registries.conf mirrors or policy: only loopback is contacted.
    c.args(["--insecure-policy", "--registries-conf", "/dev/null"]);
    c
}

// ---------------------------------------------------------------------------------------------
// The API, header by header.

#[test]
fn base_catalog_and_tags() {
    let s = serve_fixture();
    let r = s.get("/v2/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{}");
    assert_eq!(r.header("Docker-Distribution-API-Version"), Some("registry/2.0"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));

    let cat = s.get("/v2/_catalog").json();
    assert_eq!(cat["repositories"], json!(["library/app", "library/busybox", "pause"]));
    let cat = s.get("/v2/_catalog?ns=quay.io").json();
    assert_eq!(cat["repositories"], json!(["library/app"]));
    let page = http(&s.addr, "GET", "/v2/_catalog?n=1", &[]);
    assert_eq!(page.json()["repositories"], json!(["library/app"]));
    assert!(page.header("Link").unwrap().contains("last=library/app"), "{page:?}");

    let tags = s.get("/v2/library/busybox/tags/list").json();
    assert_eq!(tags, json!({"name": "library/busybox", "tags": ["1.36"]}));
    let tags = s.get("/v2/library/app/tags/list?ns=quay.io");
    assert_eq!(tags.json()["tags"], json!(["1"]));
    assert_eq!(tags.header("OCI-Namespace"), Some("quay.io"));
    let unknown = s.get("/v2/library/nope/tags/list");
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "NAME_UNKNOWN"));
    // Every response carries the API version header, errors included.
    assert_eq!(unknown.header("Docker-Distribution-API-Version"), Some("registry/2.0"));
}

#[test]
fn manifests_are_byte_exact_and_head_carries_get_headers() {
    let f = fixture();
    let s = serve_fixture();
    for (path, digest, media_type) in [
        ("/v2/library/app/manifests/1?ns=docker.io", &f.docker_app, MANIFEST_TYPE),
        ("/v2/library/busybox/manifests/1.36", &f.index, INDEX_TYPE),
        (&*format!("/v2/library/busybox/manifests/{}", f.docker_app), &f.docker_app, MANIFEST_TYPE),
        (&*format!("/v2/library/app/manifests/{}", f.quay_app), &f.quay_app, MANIFEST_TYPE),
    ] {
        let get = s.get(path);
        assert_eq!(get.status, 200, "{path}: {}", String::from_utf8_lossy(&get.body));
        assert_eq!(format!("sha256:{}", sha256_hex(&get.body)), *digest, "{path}: bytes as stored");
        assert_eq!(get.header("Content-Type"), Some(media_type), "{path}");
        assert_eq!(get.header("Docker-Content-Digest"), Some(digest.as_str()), "{path}");
        assert_eq!(get.header("Content-Length"), Some(get.body.len().to_string().as_str()), "{path}");
        let head = http(&s.addr, "HEAD", path, &[]);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "HEAD has no body");
        for h in ["Content-Type", "Content-Length", "Docker-Content-Digest", "Docker-Distribution-API-Version", "ETag"]
        {
            assert_eq!(head.header(h), get.header(h), "{path}: HEAD's {h} must equal GET's");
        }
    }
    // An index child the bundle does not carry (its platform was not requested).
    let r = s.get(&format!("/v2/library/busybox/manifests/{}", f.missing_child));
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = s.get("/v2/library/busybox/manifests/9.9");
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    // The docker.io image's manifest is not part of quay.io's repository.
    let r = s.get(&format!("/v2/library/app/manifests/{}?ns=quay.io", f.docker_app));
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    // An Accept list that excludes the stored type is refused rather than converted.
    let r = http(
        &s.addr,
        "GET",
        "/v2/library/busybox/manifests/1.36",
        &[("Accept", "application/vnd.docker.distribution.manifest.v2+json")],
    );
    assert_eq!((r.status, r.error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = http(
        &s.addr,
        "GET",
        "/v2/library/busybox/manifests/1.36",
        &[("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json")],
    );
    assert_eq!(r.status, 200);
    let r = s.get("/v2/library/app/manifests/sha256:xyz");
    assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"));
    let r = s.get("/v2/Library/App/manifests/1");
    assert_eq!((r.status, r.error_code().as_str()), (400, "NAME_INVALID"));
}

#[test]
fn blobs_ranges_and_reachability() {
    let f = fixture();
    let s = serve_fixture();
    let path = format!("/v2/library/app/blobs/{}?ns=docker.io", f.docker_layer);
    let full = s.get(&path);
    assert_eq!(full.status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&full.body)), f.docker_layer);
    assert_eq!(full.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(full.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(full.header("Docker-Content-Digest"), Some(f.docker_layer.as_str()));
    let size = full.body.len();
    assert!(size > 1 << 20, "the busybox layer spans several chunks ({size} bytes)");

    let head = http(&s.addr, "HEAD", &path, &[]);
    assert_eq!((head.status, head.header("Content-Length")), (200, Some(size.to_string().as_str())));
    assert!(head.body.is_empty());

    let r = http(&s.addr, "GET", &path, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, full.body[100..200]);
    assert_eq!(r.header("Content-Range"), Some(format!("bytes 100-199/{size}").as_str()));
    assert_eq!(r.header("Content-Length"), Some("100"));
    // containerd resumes with an open-ended range.
    let off = size - 1000;
    let r = http(&s.addr, "GET", &path, &[("Range", &format!("bytes={off}-"))]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, full.body[off..]);
    assert_eq!(r.header("Content-Range"), Some(format!("bytes {off}-{}/{size}", size - 1).as_str()));
    let r = http(&s.addr, "GET", &path, &[("Range", "bytes=-10")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &full.body[size - 10..]));
    let r = http(&s.addr, "GET", &path, &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Content-Range"), Some(format!("bytes */{size}").as_str()));

    // A blob is served only for repositories whose images reach it.
    let r = s.get(&format!("/v2/library/app/blobs/{}?ns=docker.io", f.quay_layer));
    assert_eq!((r.status, r.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    let r = s.get(&format!("/v2/library/app/blobs/{}?ns=quay.io", f.quay_layer));
    assert_eq!(r.status, 200);
    let r = s.get(&format!("/v2/pause/blobs/{}?ns=registry.k8s.io", f.quay_layer));
    assert_eq!((r.status, r.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    // containerd falls back from /manifests/<digest> to /blobs/<digest>: manifests are blobs too.
    let r = s.get(&format!("/v2/library/busybox/blobs/{}", f.index));
    assert_eq!((r.status, format!("sha256:{}", sha256_hex(&r.body))), (200, f.index.clone()));
}

#[test]
fn writes_are_refused_with_405() {
    let s = serve_fixture();
    for (method, path) in [
        ("POST", "/v2/library/app/blobs/uploads/"),
        ("PUT", "/v2/library/app/manifests/2"),
        ("PATCH", "/v2/library/app/blobs/uploads/x"),
        ("DELETE", "/v2/library/app/manifests/1"),
    ] {
        let r = http(&s.addr, method, path, &[("Content-Length", "0")]);
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.error_code(), "UNSUPPORTED");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        assert_eq!(r.header("Docker-Distribution-API-Version"), Some("registry/2.0"));
    }
}

#[test]
fn same_name_in_two_registries_stays_apart() {
    let f = fixture();
    let s = serve_fixture();
    let d = s.get("/v2/library/app/manifests/1?ns=docker.io");
    let q = s.get("/v2/library/app/manifests/1?ns=quay.io");
    assert_eq!(d.header("Docker-Content-Digest"), Some(f.docker_app.as_str()));
    assert_eq!(q.header("Docker-Content-Digest"), Some(f.quay_app.as_str()));
    // Docker Hub's other host names mean docker.io.
    let d2 = s.get("/v2/library/app/manifests/1?ns=registry-1.docker.io");
    assert_eq!(d2.header("Docker-Content-Digest"), Some(f.docker_app.as_str()));
    // Without ns the tag is ambiguous: an explanatory error, never a guess.
    let r = s.get("/v2/library/app/manifests/1");
    assert_eq!((r.status, r.error_code().as_str()), (404, "NAME_UNKNOWN"));
    let msg = r.error_message();
    assert!(
        msg.contains("ambiguous") && msg.contains("docker.io") && msg.contains("quay.io") && msg.contains("ns="),
        "{msg}"
    );
    // …but digests are content-addressed, so they need no ns.
    let r = s.get(&format!("/v2/library/app/manifests/{}", f.quay_app));
    assert_eq!(r.status, 200);
    // A client that cannot send ns names the registry in the path.
    let r = s.get("/v2/quay.io/library/app/manifests/1");
    assert_eq!(r.header("Docker-Content-Digest"), Some(f.quay_app.as_str()));
    // A registry the bundle does not carry that name from.
    let r = s.get("/v2/library/app/manifests/1?ns=ghcr.io");
    assert_eq!((r.status, r.error_code().as_str()), (404, "NAME_UNKNOWN"));
    assert!(r.error_message().contains("docker.io, quay.io"), "{}", r.error_message());
    // Unambiguous names need no ns.
    let r = s.get("/v2/pause/manifests/3.10");
    assert_eq!(r.header("Docker-Content-Digest"), Some(f.docker_app.as_str()));
}

#[test]
fn one_access_log_line_per_request() {
    let f = fixture();
    let s = serve_fixture();
    let path = format!("/v2/library/app/blobs/{}?ns=quay.io", f.quay_layer);
    let body = s.get(&path).body;
    http(&s.addr, "HEAD", "/v2/library/app/manifests/1?ns=quay.io", &[]);
    s.get("/v2/library/nope/manifests/1");
    let log = wait_log(&s, |l| l.contains("\"ferry-tests\""), 3);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("\"ferry-tests\"")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].contains(&format!("\"GET {path}\" 200 {} ", body.len())), "{}", lines[0]);
    assert!(lines[0].contains("127.0.0.1:") && lines[0].contains("ms "), "{}", lines[0]);
    assert!(lines[1].contains("\"HEAD /v2/library/app/manifests/1?ns=quay.io\" 200 0 "), "{}", lines[1]);
    assert!(lines[2].contains("\"GET /v2/library/nope/manifests/1\" 404 "), "{}", lines[2]);
}

// ---------------------------------------------------------------------------------------------
// Integrity and trust.

/// A copy of the fixture installer with one byte of `digest`'s blob flipped. The tests run it,
/// so it is written with `write_program`: copied and patched here with `fs::copy` and a writable
/// descriptor, a child forked meanwhile by another test thread could still hold that descriptor
/// when the test starts the copy (ETXTBSY, "Text file busy").
fn corrupted_copy(name: &str, digest: &str, at: u64) -> PathBuf {
    let f = fixture();
    let p = payload_format::Payload::open(&f.installer).unwrap();
    let e = p.index().entry(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))).unwrap().clone();
    drop(p);
    let mut bytes = std::fs::read(&f.installer).unwrap();
    bytes[(e.offset + at) as usize] ^= 0x55;
    let path = f.dir.join(name);
    write_program(&path, &bytes);
    path
}

#[test]
fn a_corrupted_layer_gives_an_error_response_not_bad_bytes() {
    let f = fixture();
    let bad = corrupted_copy("installer-bad-layer", &f.docker_layer, 5000);
    // The signature covers the index, not every byte: startup succeeds, the damage is found on use.
    let s = Serve::start(&bad, &["--key", f.public_key.to_str().unwrap()]);
    let path = format!("/v2/library/app/blobs/{}?ns=docker.io", f.docker_layer);
    let r = s.get(&path);
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "UNKNOWN");
    assert!(
        r.error_message().contains("damaged") && r.error_message().contains("does not match the signed index"),
        "{}",
        r.error_message()
    );
    // Remembered as bad: still refused.
    assert_eq!(s.get(&path).status, 500);
    // Everything else is still served.
    assert_eq!(s.get("/v2/library/app/manifests/1?ns=quay.io").status, 200);
    assert_eq!(s.get(&format!("/v2/library/app/blobs/{}?ns=quay.io", f.quay_layer)).status, 200);
    let log = wait_log(&s, |l| l.contains(" 500 "), 2);
    assert!(log.contains(&format!("error: refusing to serve {}", f.docker_layer)), "{log}");
    let layer_entry = format!("entry blobs/sha256/{}", f.docker_layer.trim_start_matches("sha256:"));
    assert!(r.error_message().contains(&layer_entry), "names the damaged blob: {}", r.error_message());
    // A real client fails loudly instead of storing a bad layer.
    let out = dir_copy(&s, "docker://{addr}/docker.io/library/app:1", &f.dir.join("bad-copy"));
    assert!(!out.status.success(), "skopeo copied a corrupted layer:\n{}", text(&out));
}

#[test]
fn a_corrupted_manifest_is_refused_at_use() {
    let f = fixture();
    let bad = corrupted_copy("installer-bad-manifest", &f.quay_app, 10);
    let s = Serve::start(&bad, &["--key", f.public_key.to_str().unwrap()]);
    assert!(s.log().contains("does not match the signed index"), "startup warns:\n{}", s.log());
    let r = s.get("/v2/library/app/manifests/1?ns=quay.io");
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.get("/v2/library/app/manifests/1?ns=docker.io").status, 200);
}

#[test]
fn trust_is_checked_before_serving() {
    let f = fixture();
    // No key given: a valid signature is accepted with a warning.
    let s = Serve::start(&f.installer, &[]);
    assert!(s.log().contains("no trusted keys given"), "{}", s.log());
    drop(s);
    // A different trusted key: refused.
    let other = SecretKey::generate().unwrap();
    let other_pub = f.dir.join("other.pub");
    std::fs::write(&other_pub, other.public().to_openssh("other")).unwrap();
    let err = Serve::try_start(&f.installer, &["--key", other_pub.to_str().unwrap()])
        .err()
        .expect("untrusted signer refused");
    assert!(err.contains("not one of the trusted keys"), "{err}");
    // A file that is not an installer.
    let err = Serve::try_start(&f.installer, &["--file", "/usr/bin/busybox"]).err().expect("not an installer");
    assert!(err.contains("no ferry payload found"), "{err}");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let mut s = serve_fixture();
    assert_eq!(s.get("/v2/").status, 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(s.log().contains("registry stopped: 1 requests"), "{}", s.log());
}

// ---------------------------------------------------------------------------------------------
// Real clients.

/// `skopeo copy SRC dir:DEST`, with `{addr}` in SRC replaced by the registry's address.
fn dir_copy(s: &Serve, src: &str, dest: &Path) -> std::process::Output {
    let _ = std::fs::remove_dir_all(dest);
    run(skopeo()
        .args(["copy", "--src-tls-verify=false", &src.replace("{addr}", &s.addr)])
        .arg(format!("dir:{}", dest.display())))
}

#[test]
fn skopeo_inspects_and_copies() {
    let f = fixture();
    let s = serve_fixture();
    let out =
        sh(skopeo().args(["inspect", "--tls-verify=false", &format!("docker://{}/library/busybox:1.36", s.addr)]));
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["Digest"], json!(f.index), "skopeo reports the index it resolved");
    assert_eq!(info["Architecture"], "amd64", "and the amd64 child's config");
    let raw = sh(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/library/busybox:1.36", s.addr),
    ]));
    assert_eq!(format!("sha256:{}", sha256_hex(raw.as_bytes())), f.index);

    for (src, manifest, layer) in [
        ("docker://{addr}/docker.io/library/app:1", &f.docker_app, &f.docker_layer),
        ("docker://{addr}/quay.io/library/app:1", &f.quay_app, &f.quay_layer),
        (&*format!("docker://{{addr}}/library/app@{}", f.quay_app), &f.quay_app, &f.quay_layer),
    ] {
        let dest = f.dir.join("copy");
        let out = dir_copy(&s, src, &dest);
        assert!(out.status.success(), "{src}: {}", text(&out));
        let m = std::fs::read(dest.join("manifest.json")).unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&m)), *manifest, "{src}: manifest copied byte for byte");
        let l = std::fs::read(dest.join(layer.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&l)), *layer, "{src}");
    }
    // skopeo's own error for the ambiguous name shows our explanation.
    let out = dir_copy(&s, "docker://{addr}/library/app:1", &f.dir.join("copy"));
    assert!(!out.status.success() && text(&out).contains("ambiguous"), "{}", text(&out));
}

#[test]
fn thirty_two_concurrent_pulls_have_no_errors() {
    let f = fixture();
    let s = serve_fixture();
    let children: Vec<(PathBuf, Child)> = (0..32)
        .map(|i| {
            let dest = f.dir.join(format!("concurrent-{i}"));
            let _ = std::fs::remove_dir_all(&dest);
            let child = skopeo()
                .args(["copy", "--src-tls-verify=false", &format!("docker://{}/library/busybox:1.36", s.addr)])
                .arg(format!("dir:{}", dest.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (dest, child)
        })
        .collect();
    let mut failures = Vec::new();
    for (dest, child) in children {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        } else {
            let l = std::fs::read(dest.join(f.docker_layer.trim_start_matches("sha256:"))).unwrap();
            assert_eq!(format!("sha256:{}", sha256_hex(&l)), f.docker_layer);
        }
        let _ = std::fs::remove_dir_all(&dest);
    }
    assert!(failures.is_empty(), "{} of 32 pulls failed:\n{}", failures.len(), failures.join("\n"));
    let log = s.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("\" 5") || l.ends_with(" aborted")).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn config_writes_hosts_toml_for_every_registry_and_a_loadable_config_toml() {
    let f = fixture();
    let out = f.dir.join("node-config");
    let _ = std::fs::remove_dir_all(&out);
    let key = f.public_key.to_str().unwrap();
    let printed = sh(Command::new(&f.installer).args([
        "registry",
        "config",
        "--file",
        f.installer.to_str().unwrap(),
        "--key",
        key,
        "--containerd",
        "1.7",
        "--endpoint",
        "http://10.0.0.10:5000",
        "--endpoint",
        "http://10.0.0.11:5000",
        "--out",
        out.to_str().unwrap(),
    ]));
    for reg in ["docker.io", "quay.io", "registry.k8s.io", "_default"] {
        let hosts = std::fs::read_to_string(out.join("certs.d").join(reg).join("hosts.toml")).unwrap();
        assert!(hosts.contains("server = \"http://10.0.0.10:5000\""), "{reg}: {hosts}");
        let first = hosts.find("[host.\"http://10.0.0.10:5000\"]").expect("first replica");
        let second = hosts.find("[host.\"http://10.0.0.11:5000\"]").expect("second replica");
        assert!(first < second, "replicas in the order given");
        assert_eq!(hosts.matches("capabilities = [\"pull\", \"resolve\"]").count(), 2);
        assert!(printed.contains(&format!("certs.d/{reg}/hosts.toml")), "{printed}");
    }
    // containerd itself parses the 1.7 (version 2) file: `config dump` merges it over defaults.
    let dump = sh(Command::new("containerd").arg("--config").arg(out.join("config.toml")).args(["config", "dump"]));
    assert!(dump.contains("sandbox_image = \"registry.k8s.io/pause:3.10\""), "{dump}");
    assert!(dump.contains("config_path = \"/etc/containerd/certs.d\""), "{dump}");
    assert!(dump.contains("SystemdCgroup = true"), "{dump}");

    let out2 = f.dir.join("node-config-2");
    sh(Command::new(&f.installer).args([
        "registry",
        "config",
        "--file",
        f.installer.to_str().unwrap(),
        "--key",
        key,
        "--endpoint",
        "http://10.0.0.10:5000",
        "--out",
        out2.to_str().unwrap(),
    ]));
    let cfg = std::fs::read_to_string(out2.join("config.toml")).unwrap();
    assert!(cfg.contains("version = 3") && cfg.contains("sandbox = \"registry.k8s.io/pause:3.10\""), "{cfg}");

    // Errors name the cause.
    let bad = run(Command::new(&f.installer).args([
        "registry",
        "config",
        "--file",
        f.installer.to_str().unwrap(),
        "--key",
        key,
        "--endpoint",
        "10.0.0.10:5000",
        "--out",
        out2.to_str().unwrap(),
    ]));
    assert!(!bad.status.success() && text(&bad).contains("must start with http:// or https://"), "{}", text(&bad));
}

/// `registry pki` into `dir` for 127.0.0.1: the CA, the credential and the serving files.
fn pki(installer: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    sh(Command::new(installer).args(["registry", "pki", "--dir", dir.to_str().unwrap(), "--name", "127.0.0.1"]));
    (dir.join("registry-ca.crt"), dir.join("registry-credential"))
}

/// The registry over TLS with the credential, as nodes reach it.
fn serve_fixture_tls(pki_dir: &Path) -> Serve {
    let f = fixture();
    Serve::start(&f.installer, &["--key", f.public_key.to_str().unwrap(), "--tls-dir", pki_dir.to_str().unwrap()])
}

#[test]
fn over_tls_skopeo_pulls_only_with_the_credential_and_the_cluster_ca() {
    let f = fixture();
    let dir = f.dir.join("pki-skopeo");
    let _ = std::fs::remove_dir_all(&dir);
    let (ca, credential) = pki(&f.installer, &dir);
    let s = serve_fixture_tls(&dir);
    // skopeo reads every *.crt of a cert dir as a CA: give it the cluster CA alone.
    let certs = f.dir.join("pki-skopeo-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let creds = std::fs::read_to_string(&credential).unwrap();
    let image = format!("docker://{}/library/busybox:1.36", s.addr);
    let inspect =
        |extra: &[&str]| run(skopeo().args(["inspect", "--cert-dir", certs.to_str().unwrap()]).args(extra).arg(&image));
    let ok = inspect(&["--creds", creds.trim()]);
    assert!(
        ok.status.success(),
        "{}
{}",
        text(&ok),
        s.log()
    );
    let anonymous = inspect(&[]);
    assert!(!anonymous.status.success(), "pulled without the credential:\n{}", text(&anonymous));
    let wrong = inspect(&["--creds", "ferry:guess"]);
    assert!(!wrong.status.success(), "pulled with a wrong credential:\n{}", text(&wrong));
    assert!(!s.log().contains(creds.trim().split(':').nth(1).unwrap()), "the log never shows the password");
    assert!(s.log().contains("\" 401"), "refusals are logged as 401:\n{}", s.log());
}

#[test]
fn containerd_pulls_each_registry_through_hosts_toml_and_runs_it() {
    let f = fixture();
    let dir = f.dir.join("pki-containerd");
    let _ = std::fs::remove_dir_all(&dir);
    let (ca, credential) = pki(&f.installer, &dir);
    let s = serve_fixture_tls(&dir);
    let out = f.dir.join("containerd-config");
    let _ = std::fs::remove_dir_all(&out);
    sh(Command::new(&f.installer).args([
        "registry",
        "config",
        "--file",
        f.installer.to_str().unwrap(),
        "--key",
        f.public_key.to_str().unwrap(),
        "--containerd",
        "1.7",
        "--endpoint",
        &format!("https://{}", s.addr),
        "--ca-file",
        ca.to_str().unwrap(),
        "--credential-file",
        credential.to_str().unwrap(),
        "--config-path",
        out.join("certs.d").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("certs.d/docker.io/hosts.toml")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "hosts.toml holds the credential");
    let hosts = out.join("certs.d");
    let c = Containerd::start();
    for (image, marker) in [("docker.io/library/app:1", "from docker.io"), ("quay.io/library/app:1", "from quay.io")] {
        let pull = c.pull(image, &hosts);
        assert!(pull.status.success(), "pulling {image}: {}\nregistry log:\n{}", text(&pull), s.log());
        let id = format!("ferry-{}", image.replace(['/', ':', '.'], "-"));
        let run = c.run(image, &id, &["cat", "/etc/marker"]);
        assert!(run.status.success(), "running {image}: {}\n{}", text(&run), c.log());
        assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), marker, "{image} ran with its own registry's content");
    }
    // The multi-arch index resolves to the carried amd64 child.
    let pull = c.pull("docker.io/library/busybox:1.36", &hosts);
    assert!(pull.status.success(), "{}\n{}", text(&pull), s.log());
    let run = c.run("docker.io/library/busybox:1.36", "ferry-busybox", &["echo", "hello from the installer"]);
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "hello from the installer", "{}", text(&run));
    // A miss fails fast and stays local: server is the built-in registry too.
    let miss = c.pull("docker.io/library/absent:1", &hosts);
    assert!(!miss.status.success());
    let log = s.log();
    assert!(log.contains("\"HEAD /v2/library/app/manifests/1?ns=quay.io\" 200"), "containerd sent ns=quay.io:\n{log}");
    assert!(log.contains("\"HEAD /v2/library/app/manifests/1?ns=docker.io\" 200"), "{log}");
    assert!(log.contains("/v2/library/absent/manifests/1?ns=docker.io\" 404"), "{log}");
    assert!(!log.lines().any(|l| l.ends_with(" aborted")), "every response completed:\n{log}");
    // The images keep their original references.
    let images = sh(c.ctr().args(["images", "ls", "-q"]));
    for image in ["docker.io/library/app:1", "quay.io/library/app:1", "docker.io/library/busybox:1.36"] {
        assert!(images.lines().any(|l| l == image), "{images}");
    }
}
