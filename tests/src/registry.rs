//! A real upstream registry for the packer to pull from, and test images built offline.
//!
//! [`Upstream`] runs Debian's `docker-registry` (distribution 2.8) on a free loopback port with
//! its storage in a temporary directory, optionally behind htpasswd Basic auth, and stops it on
//! drop. [`Layout`] builds small images with `umoci` from files such as `/bin/busybox` (from
//! `busybox-static`) and pushes them with `skopeo`, so no test touches the internet.
//!
//! Needs the Debian packages `docker-registry`, `skopeo`, `umoci`, `busybox-static` and
//! `apache2-utils` (for `htpasswd`).

use crate::{ok, run, text};
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `docker-registry` on 127.0.0.1.
pub struct Upstream {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `(user, password)` when started with Basic auth.
    pub login: Option<(String, String)>,
    /// Serves https (self-signed).
    pub tls: bool,
}

/// Which registry program runs.
#[derive(Clone, Copy)]
enum Program {
    /// Debian's `docker-registry` (distribution 2.8).
    Debian,
    /// distribution v3's `registry`.
    DistributionV3,
}

impl Program {
    fn path(self) -> PathBuf {
        match self {
            Program::Debian => PathBuf::from("docker-registry"),
            Program::DistributionV3 => std::env::var_os("FERRY_REGISTRY_V3")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::workspace_root().join("target/go-tools/registry")),
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Program::Debian => "apt-get install docker-registry",
            Program::DistributionV3 => "scripts/build-go-tools.sh target/go-tools registry builds it",
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("binding a loopback port").local_addr().unwrap().port()
}

impl Upstream {
    /// A registry without authentication.
    pub fn start() -> Upstream {
        Upstream::start_inner(Program::Debian, None, false)
    }

    /// A registry that requires `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_login(user: &str, password: &str) -> Upstream {
        Upstream::start_inner(Program::Debian, Some((user.to_string(), password.to_string())), false)
    }

    /// A registry serving https with a certificate for 127.0.0.1 from a CA of its own (made with
    /// openssl, see [`Upstream::ca_cert`]).
    pub fn start_tls() -> Upstream {
        Upstream::start_inner(Program::Debian, None, true)
    }

    /// A registry serving https (self-signed, see [`Upstream::ca_cert`]) that requires
    /// `user`/`password`.
    pub fn start_tls_with_login(user: &str, password: &str) -> Upstream {
        Upstream::start_inner(Program::Debian, Some((user.to_string(), password.to_string())), true)
    }

    /// Like [`Upstream::start_tls_with_login`], run by distribution v3's `registry` (a second
    /// implementation, built from Go modules by `scripts/build-go-tools.sh`; its path in
    /// `FERRY_REGISTRY_V3`).
    pub fn start_v3_tls_with_login(user: &str, password: &str) -> Upstream {
        Upstream::start_inner(Program::DistributionV3, Some((user.to_string(), password.to_string())), true)
    }

    /// The CA that signed a TLS registry's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The digests of every blob the registry stores, whole (uploads in progress are elsewhere).
    pub fn stored_blobs(&self) -> Vec<String> {
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        for prefix in fs::read_dir(&root).into_iter().flatten().flatten() {
            for blob in fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
                if blob.path().join("data").exists() {
                    out.push(format!("sha256:{}", blob.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }

    fn start_inner(program: Program, login: Option<(String, String)>, tls: bool) -> Upstream {
        let mut last_log = String::new();
        // The port is free when chosen; retry in the rare case another process takes it first.
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("ferry-registry-").tempdir().unwrap();
            let addr = format!("127.0.0.1:{}", free_port());
            let mut config = format!(
                "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}}}\n",
                dir.path().join("data").display()
            );
            if let Some((user, password)) = &login {
                let htpasswd = ok(Command::new("htpasswd").args(["-Bbn", user, password]));
                fs::write(dir.path().join("htpasswd"), htpasswd.trim()).unwrap();
                config.push_str(&format!(
                    "auth: {{htpasswd: {{realm: ferry-test, path: {}}}}}\n",
                    dir.path().join("htpasswd").display()
                ));
            }
            if tls {
                let (crt, key) = server_certificate(dir.path(), &["127.0.0.1"]);
                config = config.replace(
                    &format!("http: {{addr: {addr}}}"),
                    &format!("http: {{addr: {addr}, tls: {{certificate: {}, key: {}}}}}", crt.display(), key.display()),
                );
            }
            let cfg = dir.path().join("config.yml");
            fs::write(&cfg, config).unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(program.path())
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e} ({})", program.path().display(), program.hint()));
            let mut up = Upstream { child, dir, addr, login: login.clone(), tls };
            if up.wait_ready() {
                return up;
            }
            last_log = fs::read_to_string(up.dir.path().join("registry.log")).unwrap_or_default();
            // Dropping `up` stops the process and removes its directory.
        }
        panic!("docker-registry did not start: {last_log}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                if self.tls {
                    // Anything listening is ready; the TLS handshake is the client's business.
                    return true;
                }
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut s, &mut buf).map(|n| n >= 12).unwrap_or(false) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `http://127.0.0.1:PORT` (`https://` for a TLS registry).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// The storage file of blob `digest` (to corrupt it in tests).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Pushes `src` (a skopeo source such as `oci:/path:tag`) as `repo:tag`, all platforms.
    pub fn push(&self, src: &str, repo_tag: &str) {
        self.push_with(src, repo_tag, &[]);
    }

    /// Like [`Upstream::push`] with extra skopeo flags (e.g. `--format v2s2`).
    pub fn push_with(&self, src: &str, repo_tag: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"]).args(extra);
        if let Some((u, p)) = &self.login {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(src).arg(format!("docker://{}/{repo_tag}", self.addr));
        ok(&mut cmd);
    }

    /// The raw manifest bytes the registry serves for `repo:ref`.
    pub fn raw_manifest(&self, repo_ref: &str) -> Vec<u8> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some((u, p)) = &self.login {
            cmd.arg("--creds").arg(format!("{u}:{p}"));
        }
        let out = run(cmd.arg(format!("docker://{}/{repo_ref}", self.addr)));
        assert!(out.status.success(), "skopeo inspect failed: {}", text(&out));
        out.stdout
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.crt`, `ca.key`) and a server certificate it signs for the IP addresses `ips`
/// (`tls.crt`, `tls.key`), made with openssl in `dir`; returns the certificate and key paths.
/// Verifiers refuse a CA certificate used as the server's own, hence the two.
pub fn server_certificate(dir: &Path, ips: &[&str]) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (ca, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    ok(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ferry test CA"])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    let csr = dir.join("tls.csr");
    ok(Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj"])
        .arg(format!("/CN={}", ips[0]))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("tls.ext");
    let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    fs::write(
        &ext,
        format!("basicConstraints=CA:FALSE\nsubjectAltName={}\nextendedKeyUsage=serverAuth\n", sans.join(",")),
    )
    .unwrap();
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    (crt, key)
}

/// An OCI image layout on disk, built with umoci.
pub struct Layout {
    /// The layout directory.
    pub path: PathBuf,
}

impl Layout {
    /// Creates an empty layout at `path`.
    pub fn init(path: &Path) -> Layout {
        ok(Command::new("umoci").args(["init", "--layout"]).arg(path));
        Layout { path: path.to_path_buf() }
    }

    /// The layout [`Layout::init`] made at `path` earlier.
    pub fn open(path: &Path) -> Layout {
        assert!(path.join("index.json").is_file(), "{} is not an OCI layout", path.display());
        Layout { path: path.to_path_buf() }
    }

    /// Adds image `tag` with one layer holding `files` (path in the image → content; `None`
    /// copies the host's `/bin/busybox`), for `arch`, running `cmd`.
    pub fn image(&self, tag: &str, files: &[(&str, Option<&[u8]>)], arch: &str) -> &Layout {
        let img = format!("{}:{tag}", self.path.display());
        ok(Command::new("umoci").args(["new", "--image", &img]));
        let staging = tempfile::tempdir().unwrap();
        for (p, content) in files {
            let dest = staging.path().join(p.trim_start_matches('/'));
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            match content {
                Some(c) => fs::write(&dest, c).unwrap(),
                None => {
                    fs::copy("/bin/busybox", &dest).expect("copying /bin/busybox (apt-get install busybox-static)");
                }
            }
        }
        let tar = staging.path().with_extension("tar");
        ok(Command::new("tar")
            .arg("--sort=name")
            .arg("--mtime=@0")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-C")
            .arg(staging.path())
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        ok(Command::new("umoci").args(["raw", "add-layer", "--image", &img]).arg(&tar));
        let _ = fs::remove_file(&tar);
        ok(Command::new("umoci").args([
            "config",
            "--image",
            &img,
            "--os",
            "linux",
            "--architecture",
            arch,
            "--config.cmd",
            "/bin/sh",
        ]));
        self
    }

    /// The skopeo source `oci:PATH:tag`.
    pub fn src(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.path.display())
    }

    /// `index.json`.
    pub fn index(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.path.join("index.json")).unwrap()).unwrap()
    }

    /// The descriptor `index.json` holds for `tag`.
    pub fn descriptor(&self, tag: &str) -> serde_json::Value {
        self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {}", self.path.display()))
            .clone()
    }

    /// A blob's bytes.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).unwrap()
    }

    /// A blob's path.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.path.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Writes `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> String {
        let hex: String = payload_format::sha256(bytes).iter().map(|b| format!("{b:02x}")).collect();
        fs::write(self.path.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    /// Adds an OCI index tagged `tag` over the images tagged `children` (with their platforms),
    /// the way `docker buildx` publishes a multi-arch image.
    pub fn index_of(&self, tag: &str, children: &[(&str, &str)]) -> String {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(child, arch)| {
                let d = self.descriptor(child);
                serde_json::json!({
                    "mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"],
                    "platform": {"architecture": arch, "os": "linux"}
                })
            })
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let bytes = serde_json::to_vec_pretty(&index).unwrap();
        let digest = self.put_blob(&bytes);
        let mut top = self.index();
        top["manifests"].as_array_mut().unwrap().push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
        fs::write(self.path.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
        digest
    }
}

/// sha256 of `bytes` as `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", payload_format::sha256(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}
