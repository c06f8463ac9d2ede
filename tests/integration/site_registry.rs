//! `installer registry push --to REGISTRY[/PREFIX]` against Debian's docker-registry serving TLS
//! with a CA of its own and an htpasswd login, on loopback: every image lands byte for byte
//! under its own digests (a multi-platform index with its children), repository paths kept under
//! the prefix, a repository holding blobs another one already received gets them mounted, a
//! second push sends nothing, a push through a link that dies part-way is finished by the same
//! command, and refusals name the cause (login, CA, target, trust, a damaged blob, a partial
//! index, two registries' images on one tag). The lab test that a node pulls by the original
//! reference from the site registry is in `run.rs`.

use super::images::{ferry_cmd, mirrors, push_control_plane, write_spec};
use ferry_tests::cut_link::CutLink;
use ferry_tests::registry::{Layout, Upstream, digest};
use ferry_tests::*;
use payload_format::Payload;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const USER: &str = "site";
const PASSWORD: &str = "s1te-pa55";

/// The hub the bundles are built from: the control plane, `library/app:1` (two layers of
/// noise), `mirror/app:1` (the same image), `team/multi:1` (an amd64 + arm64 index) and
/// `team/multi:2` (its amd64 child alone).
struct Hub {
    up: Upstream,
    layout: Layout,
}

fn hub(dir: &Path) -> Hub {
    let up = Upstream::start();
    let layout = Layout::init(&dir.join("hub-layout"));
    push_control_plane(&up, &layout);
    layout.image("app", &[("srv/a", Some(&noise(1, 3 << 20))), ("srv/b", Some(&noise(2, 3 << 20)))], "amd64");
    up.push(&layout.src("app"), "library/app:1");
    up.push(&layout.src("app"), "mirror/app:1");
    layout.image("amd", &[("etc/arch", Some(b"amd64")), ("srv/c", Some(&noise(3, 2 << 20)))], "amd64");
    layout.image("arm", &[("etc/arch", Some(b"arm64"))], "arm64");
    layout.index_of("multi", &[("amd", "amd64"), ("arm", "arm64")]);
    up.push(&layout.src("multi"), "team/multi:1");
    up.push(&layout.src("amd"), "team/multi:2");
    Hub { up, layout }
}

/// A signed installer of `images`, resolved through `mirrors`, for `platforms`.
fn installer(dir: &Path, name: &str, key: &Path, body: &str) -> PathBuf {
    let spec = write_spec(&dir.join(name), body);
    let out = dir.join(format!("{name}.installer"));
    let mut cmd = ferry_cmd(dir);
    ok(cmd.arg("build").arg(&spec).arg("-o").arg(&out).arg("--key").arg(key.with_extension("key")));
    out
}

/// `installer registry push --to TO` with `extra` flags, HOME and the upload sessions in `home`.
fn site_push(home: &Path, installer: &Path, to: &str, extra: &[OsString]) -> Output {
    run(Command::new(installer)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("DOCKER_CONFIG", home.join("no-docker-config"))
        .arg("--no-progress")
        .args(["registry", "push", "--to", to])
        .args(extra))
}

/// The flags that reach `site` with its CA and the login in `cred`, trusting `key`.
fn access(site: &Upstream, cred: &Path, key: &Path) -> Vec<OsString> {
    vec!["--ca-file".into(), site.ca_cert().into(), "--credential-file".into(), cred.into(), "--key".into(), key.into()]
}

/// [`access`] and `--json`.
fn access_json(site: &Upstream, cred: &Path, key: &Path) -> Vec<OsString> {
    let mut v = access(site, cred, key);
    v.push("--json".into());
    v
}

fn summary(out: &Output) -> Value {
    assert!(out.status.success(), "registry push failed:\n{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{}", text(out)))
}

fn refusal(out: &Output) -> String {
    assert!(!out.status.success(), "registry push succeeded where it must not:\n{}", text(out));
    text(out)
}

/// The raw manifest `repo_ref` (`repo:tag` or `repo@digest`) as the site registry serves it.
fn raw_manifest(site: &Upstream, repo_ref: &str) -> Vec<u8> {
    let out = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg(format!("docker://{}/{repo_ref}", site.addr)));
    assert!(out.status.success(), "skopeo inspect {repo_ref}: {}", text(&out));
    out.stdout
}

/// The installer's image records: reference → (repository, tag, digest).
fn images(installer: &Path) -> BTreeMap<String, (String, String, String)> {
    let p = Payload::open(installer).unwrap();
    let images = p.index().metadata.extra["images"].as_array().unwrap().clone();
    images
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or_default().to_string();
            (s("ref"), (s("repository"), s("tag"), s("digest")))
        })
        .collect()
}

#[test]
fn registry_push_copies_every_image_byte_for_byte_into_a_site_registry() {
    let dir = scratch();
    let home = dir.path();
    let hub = hub(home);
    let quay = Upstream::start();
    quay.push(&hub.layout.src("multi"), "team/multi:1");
    let key = keygen(home, "vendor");
    let public = key.with_extension("pub");
    let mirrors = mirrors(&[("docker.io", &hub.up), ("registry.k8s.io", &hub.up), ("quay.io", &quay)]);
    let both = installer(
        home,
        "both",
        &key,
        &format!(
            "  platforms: [linux/amd64, linux/arm64]\n  images: [docker.io/library/app:1, docker.io/mirror/app:1, quay.io/team/multi:1, docker.io/team/multi:2]\n{mirrors}"
        ),
    );
    let site = Upstream::start_tls_with_login(USER, PASSWORD);
    let cred = home.join("site.credential");
    fs::write(&cred, format!("{USER}:{PASSWORD}\n")).unwrap();
    let to = format!("{}/platform", site.addr);

    refusals(home, &site, &both, &cred, &public);

    // Every image under PREFIX/REPOSITORY, manifests byte for byte; the second repository of
    // the same image gets its blobs mounted, not sent.
    let pushed = summary(&site_push(home, &both, &to, &access_json(&site, &cred, &public)));
    let records = images(&both);
    let repositories: BTreeSet<&String> = records.values().map(|(repository, _, _)| repository).collect();
    assert_eq!(pushed["repositories"], repositories.len(), "{pushed}");
    assert_eq!(pushed["tags"], records.len(), "{pushed}");
    assert!(pushed["blobs_mounted"].as_u64().unwrap() >= 2, "mirror/app's blobs come from library/app: {pushed}");
    for (reference, (repository, tag, digest_of)) in records {
        let raw = raw_manifest(&site, &format!("platform/{repository}:{tag}"));
        assert_eq!(digest(&raw), digest_of, "{reference} as the site registry serves it");
    }
    let index: Value = serde_json::from_slice(&raw_manifest(&site, "platform/team/multi:1")).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        let d = child["digest"].as_str().unwrap();
        assert_eq!(digest(&raw_manifest(&site, &format!("platform/team/multi@{d}"))), d);
    }
    // skopeo pulls the arm64 variant through the index: the layers are there too.
    let copied = home.join("arm-copy");
    ok(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false", "--override-arch", "arm64", "--src-creds"])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg(format!("docker://{}/platform/team/multi:1", site.addr))
        .arg(format!("oci:{}:arm", copied.display())));

    // Again: nothing to send.
    let again = summary(&site_push(home, &both, &to, &access_json(&site, &cred, &public)));
    assert_eq!(again["bytes_sent"], 0, "{again}");
    assert_eq!(again["blobs_present"], again["blobs"], "{again}");

    // distribution v3 keeps what arrived of a chunk cut off, so the rerun resumes inside the
    // layer that was cut (2.8 drops that layer's upload and the rerun sends it again whole).
    let v3 = Upstream::start_v3_tls_with_login(USER, PASSWORD);
    through_a_link_cut_part_way(home, &v3, &both, &cred, &public);

    // An index of which the installer carries one platform: distribution wants every child.
    let amd_only = installer(home, "amd-only", &key, &format!("  images: [quay.io/team/multi:1]\n{mirrors}"));
    let err = refusal(&site_push(home, &amd_only, &format!("{}/partial", site.addr), &access(&site, &cred, &public)));
    assert!(
        err.contains("linux/arm64") && err.contains("spec.platforms") && err.contains("quay.io/team/multi:1"),
        "{err}"
    );

    // docker.io/team/multi:1 and quay.io/team/multi:1 are different images: one tag, refused
    // before anything is sent.
    hub.up.push(&hub.layout.src("app"), "team/multi:1");
    let clash = installer(
        home,
        "clash",
        &key,
        &format!(
            "  platforms: [linux/amd64, linux/arm64]\n  images: [docker.io/team/multi:1, quay.io/team/multi:1]\n{mirrors}"
        ),
    );
    let err = refusal(&site_push(home, &clash, &format!("{}/clash", site.addr), &access(&site, &cred, &public)));
    assert!(
        err.contains("docker.io/team/multi:1 and quay.io/team/multi:1") && err.contains("clash/team/multi:1"),
        "{err}"
    );
}

/// Refusals: the target, trust, the login, the CA and a damaged blob, each named; nothing
/// stored.
fn refusals(home: &Path, site: &Upstream, installer: &Path, cred: &Path, key: &Path) {
    let to = format!("{}/platform", site.addr);
    let err = refusal(&site_push(home, installer, &format!("https://{to}"), &access(site, cred, key)));
    assert!(err.contains("without a scheme"), "{err}");
    let err = refusal(&site_push(home, installer, &format!("{}/Platform", site.addr), &access(site, cred, key)));
    assert!(err.contains("lowercase"), "{err}");
    let stranger = keygen(home, "stranger");
    let err = refusal(&site_push(home, installer, &to, &access(site, cred, &stranger.with_extension("pub"))));
    assert!(err.to_lowercase().contains("trusted"), "{err}");
    let wrong = home.join("wrong.credential");
    fs::write(&wrong, format!("{USER}:wrong-pw")).unwrap();
    let err = refusal(&site_push(home, installer, &to, &access(site, &wrong, key)));
    assert!(err.contains("refused") && err.contains(&site.addr) && !err.contains("wrong-pw"), "{err}");
    let err = refusal(&site_push(
        home,
        installer,
        &to,
        &["--credential-file".into(), cred.into(), "--key".into(), key.into()],
    ));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let not_a_login = home.join("not-a-login");
    fs::write(&not_a_login, "just-a-token").unwrap();
    let err = refusal(&site_push(home, installer, &to, &access(site, &not_a_login, key)));
    assert!(err.contains("not-a-login") && err.contains("user:password") && !err.contains("just-a-token"), "{err}");
    // A layer byte flipped in a copy: found before it is sent.
    let damaged = home.join("damaged.installer");
    fs::copy(installer, &damaged).unwrap();
    let p = Payload::open(installer).unwrap();
    let layer = p
        .index()
        .entries
        .iter()
        .filter(|e| e.path.starts_with("blobs/sha256/"))
        .max_by_key(|e| e.size)
        .unwrap()
        .clone();
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[(layer.offset + layer.size / 2) as usize] ^= 0x55;
    fs::write(&damaged, bytes).unwrap();
    let err = refusal(&site_push(home, &damaged, &format!("{}/damaged", site.addr), &access(site, cred, key)));
    assert!(err.contains("does not match the signed index"), "{err}");
    assert!(!site.stored_blobs().contains(&format!("sha256:{}", layer.path.trim_start_matches("blobs/sha256/"))));
}

/// A push through a link that dies after about 60% of the image bytes: the operator kills the
/// stuck command, and the same command finishes, sending only what the registry lacks.
fn through_a_link_cut_part_way(home: &Path, site: &Upstream, installer: &Path, cred: &Path, key: &Path) {
    let link = CutLink::start(&site.addr);
    let to = format!("{}/cut", link.addr);
    let total: u64 = Payload::open(installer)
        .unwrap()
        .index()
        .entries
        .iter()
        .filter(|e| e.path.starts_with("blobs/sha256/"))
        .map(|e| e.size)
        .sum();
    link.hold_after(total * 6 / 10);
    let mut cmd = Command::new(installer);
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("DOCKER_CONFIG", home.join("no-docker-config"))
        .args(["--no-progress", "registry", "push", "--to", &to, "--jobs", "1", "--chunk-mib", "1"])
        .args(access(site, cred, key))
        .stdout(Stdio::null())
        .stderr(fs::File::create(home.join("cut-push.log")).unwrap());
    let mut cut = cmd.spawn().unwrap();
    link.wait_until_holding(&mut cut, "push");
    cut.kill().unwrap();
    cut.wait().unwrap();
    link.open();
    let rerun = site_push(home, installer, &to, &access_json(site, cred, key));
    let resumed = summary(&rerun);
    let sent = resumed["bytes_sent"].as_u64().unwrap();
    eprintln!("registry push: cut after {} client bytes; the rerun sent {sent} of {total} blob bytes", link.passed());
    // At most the 40% the link did not pass, plus the 1 MiB chunk it cut.
    let log = fs::read_to_string(home.join("cut-push.log")).unwrap_or_default();
    assert!(
        sent > 0 && sent < total * 7 / 10,
        "the rerun sent {sent} of {total}: {resumed}\nthe cut push said:\n{log}\nthe rerun said:\n{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let raw = raw_manifest(site, "cut/library/app:1");
    assert_eq!(digest(&raw), images(installer)["docker.io/library/app:1"].2);
}

/// A site's own registry on the lab's bastion (Debian's docker-registry copied there, TLS for
/// both of its addresses, an htpasswd login): the operator reaches it at 10.88.1.10, the nodes
/// at 10.88.0.10. Stopped and removed on drop.
struct BastionRegistry<'a> {
    lab: &'a ferry_tests::lab::Lab,
    /// Its CA.
    ca: PathBuf,
}

const BASTION_REGISTRY_PORT: u16 = 5443;

impl<'a> BastionRegistry<'a> {
    fn start(lab: &'a ferry_tests::lab::Lab, dir: &Path) -> BastionRegistry<'a> {
        use ferry_tests::lab::Host;
        let operator_side = Host::Bastion.ip();
        let (crt, key) = ferry_tests::registry::server_certificate(dir, &[&operator_side, "10.88.0.10"]);
        let htpasswd = ok(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
        fs::write(dir.join("htpasswd"), htpasswd.trim()).unwrap();
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: /var/lib/site-registry}}}}\n\
             http: {{addr: 0.0.0.0:{BASTION_REGISTRY_PORT}, tls: {{certificate: /etc/site-registry/tls.crt, key: /etc/site-registry/tls.key}}}}\n\
             auth: {{htpasswd: {{realm: site, path: /etc/site-registry/htpasswd}}}}\n"
        );
        fs::write(dir.join("config.yml"), config).unwrap();
        let copy = |from: &Path, to: &str, mode: &str| {
            let out = run(lab
                .ssh_command("root", Host::Bastion, &[])
                .arg(format!("mkdir -p $(dirname {to}) && cat > {to} && chmod {mode} {to}"))
                .stdin(fs::File::open(from).unwrap()));
            assert!(out.status.success(), "copying {} to the bastion: {}", from.display(), text(&out));
        };
        copy(Path::new("/usr/bin/docker-registry"), "/usr/local/bin/site-registry", "755");
        copy(&crt, "/etc/site-registry/tls.crt", "644");
        copy(&key, "/etc/site-registry/tls.key", "600");
        copy(&dir.join("htpasswd"), "/etc/site-registry/htpasswd", "600");
        copy(&dir.join("config.yml"), "/etc/site-registry/config.yml", "644");
        let registry = BastionRegistry { lab, ca: dir.join("ca.crt") };
        lab.ssh_ok(
            Host::Bastion,
            "systemctl reset-failed site-registry 2>/dev/null; systemd-run --unit site-registry /usr/local/bin/site-registry serve /etc/site-registry/config.yml",
        );
        let probe = format!(
            "for i in $(seq 100); do timeout 1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{BASTION_REGISTRY_PORT}' 2>/dev/null && exit 0; sleep 0.1; done; journalctl -u site-registry --no-pager | tail -20; exit 1"
        );
        lab.ssh_ok(Host::Bastion, &probe);
        registry
    }
}

impl Drop for BastionRegistry<'_> {
    fn drop(&mut self) {
        let _ = self.lab.ssh(
            ferry_tests::lab::Host::Bastion,
            "systemctl stop site-registry; rm -rf /var/lib/site-registry /etc/site-registry /usr/local/bin/site-registry",
        );
    }
}

#[test]
fn a_node_pulls_by_the_original_reference_from_the_site_registry_with_the_built_in_one_stopped() {
    use super::run::{NODES, bundle, inventory, lab, run as installer_run, wipe};
    use ferry_tests::lab::Host;
    let lab = lab();
    assert!(lab.has_bastion(), "the run tests' lab has a bastion");
    let _ex = lab.exclusive();
    wipe(lab);
    let work = scratch();
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let out = installer_run(&["--json", "-f", inv.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));

    let site = BastionRegistry::start(lab, work.path());
    let cred = work.path().join("site.credential");
    fs::write(&cred, format!("{USER}:{PASSWORD}\n")).unwrap();
    let b = bundle();
    let to = format!("{}:{BASTION_REGISTRY_PORT}/site", Host::Bastion.ip());
    let flags: Vec<OsString> = vec![
        "--ca-file".into(),
        site.ca.clone().into(),
        "--credential-file".into(),
        cred.clone().into(),
        "--key".into(),
        b.public_key.clone().into(),
        "--json".into(),
    ];
    let pushed = summary(&site_push(work.path(), &b.installer, &to, &flags));
    assert!(pushed["tags"].as_u64().unwrap() >= 1, "{pushed}");

    // containerd's files for the site registry, as the node reaches it, made where the
    // installer is and put in place on the worker.
    let files = work.path().join("site-containerd");
    ok(Command::new(&b.installer)
        .args(["--no-progress", "registry", "config", "--endpoint"])
        .arg(format!("https://10.88.0.10:{BASTION_REGISTRY_PORT}/site"))
        .arg("--out")
        .arg(&files)
        .arg("--ca-file")
        .arg(&site.ca)
        .arg("--credential-file")
        .arg(&cred)
        .arg("--key")
        .arg(&b.public_key));
    let tar = run(Command::new("tar").arg("-C").arg(&files).args(["-cf", "-", "certs.d"]));
    assert!(tar.status.success());
    let tar_file = work.path().join("certs.tar");
    fs::write(&tar_file, &tar.stdout).unwrap();
    let put = run(lab
        .ssh_command("root", Host::Node(3), &[])
        .arg("rm -rf /etc/containerd/certs.d && tar -x -C /etc/containerd")
        .stdin(fs::File::open(&tar_file).unwrap()));
    assert!(put.status.success(), "{}", text(&put));
    let hosts = lab.ssh_ok(Host::Node(3), "cat /etc/containerd/certs.d/docker.io/hosts.toml");
    assert!(hosts.contains(&format!("https://10.88.0.10:{BASTION_REGISTRY_PORT}/v2/site")), "{hosts}");

    // The built-in registry stops; the worker forgets the image and pulls it again by its
    // original reference.
    for i in 1..=NODES {
        lab.ssh_ok(Host::Node(i), "systemctl stop ferry-registry 2>/dev/null; true");
    }
    lab.ssh_ok(Host::Node(3), "ctr -n k8s.io images rm --sync docker.io/library/app:1 >/dev/null 2>&1; c=$(ctr -n k8s.io content ls -q); [ -z \"$c\" ] || ctr -n k8s.io content rm $c >/dev/null; true");
    assert_eq!(lab.ssh_ok(Host::Node(3), "ctr -n k8s.io content ls -q"), "", "blobs left on node3");
    let pull = lab.ssh(
        Host::Node(3),
        "timeout 60 ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d docker.io/library/app:1",
    );
    assert!(pull.status.success(), "pull from the site registry: {}", text(&pull));
    let out =
        lab.ssh_ok(Host::Node(3), "ctr -n k8s.io run --rm docker.io/library/app:1 site$$ /bin/busybox cat /hello");
    assert_eq!(out.trim(), "hello from the bundle");
    let listed = lab.ssh_ok(Host::Node(3), "ctr -n k8s.io images ls -q");
    assert!(listed.lines().any(|l| l == "docker.io/library/app:1"), "{listed}");
    wipe(lab);
}
