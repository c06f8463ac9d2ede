//! Real Kubernetes, built from Go modules by `scripts/build-kubernetes.sh`, for the tests that
//! need the real programs (kubeadm, the kubelet, the control-plane images).
//!
//! `scripts/test.sh` builds them (cached) and names the output trees in `FERRY_REAL_K8S`, a
//! colon-separated list of `OUTDIR`s. A test that needs them fails, with the command to run, when
//! the variable is missing: it never passes without having looked at the real thing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The environment variable naming the trees.
pub const ENV: &str = "FERRY_REAL_K8S";

/// One tree written by `scripts/build-kubernetes.sh VERSION OUTDIR`.
#[derive(Clone, Debug)]
pub struct RealKubernetes {
    /// `vX.Y.Z`, from the tree's `BUILD-INFO`.
    pub version: String,
    /// The OUTDIR.
    pub dir: PathBuf,
}

impl RealKubernetes {
    fn load(dir: &Path) -> RealKubernetes {
        let info = dir.join("BUILD-INFO");
        let text = std::fs::read_to_string(&info).unwrap_or_else(|e| {
            panic!(
                "{ENV} names {}, but {} cannot be read ({e}): run scripts/build-kubernetes.sh",
                dir.display(),
                info.display()
            )
        });
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("kubernetes: "))
            .unwrap_or_else(|| panic!("{} has no `kubernetes:` line", info.display()))
            .trim()
            .to_string();
        RealKubernetes { version, dir: dir.to_path_buf() }
    }

    /// The node rootfs.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// A program of the node rootfs, e.g. `usr/bin/kubeadm`.
    pub fn program(&self, rel: &str) -> PathBuf {
        self.rootfs().join(rel)
    }

    /// The tree's kubeadm.
    pub fn kubeadm(&self) -> Command {
        Command::new(self.program("usr/bin/kubeadm"))
    }

    /// The tree's `bundle.yaml`.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.yaml")
    }

    /// `kubeadm config images list --kubernetes-version V` of the tree's kubeadm, one reference
    /// a line (stdout only: kubeadm logs its warnings to stderr).
    pub fn kubeadm_images(&self) -> Vec<String> {
        let out = crate::run(self.kubeadm().args(["config", "images", "list", "--kubernetes-version", &self.version]));
        assert!(out.status.success(), "{}: kubeadm config images list failed:\n{}", self.version, crate::text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// `ferry build` of the tree into `dir/installer`, offline and signed with a new key
    /// `dir/vendor`; returns the installer, the key's base path and what the build printed. Any
    /// missing image fails it (no `--allow-missing-images`).
    pub fn build_installer(&self, dir: &Path) -> (PathBuf, PathBuf, String) {
        let key = crate::keygen(dir, "vendor");
        let installer = dir.join("installer");
        let log = crate::ok(
            Command::new(crate::release_bin("ferry"))
                .arg("build")
                .arg(self.bundle())
                .arg("-o")
                .arg(&installer)
                .arg("--key")
                .arg(key.with_extension("key"))
                .arg("--offline"),
        );
        (installer, key, log)
    }

    /// `v1.MINOR`.
    pub fn minor(&self) -> String {
        self.version.rsplit_once('.').map(|(m, _)| m.to_string()).unwrap_or_default()
    }
}

/// Every tree `FERRY_REAL_K8S` names, oldest version first. Panics with the command to run when
/// there is none.
pub fn all() -> Vec<RealKubernetes> {
    let list = std::env::var(ENV).unwrap_or_default();
    let mut trees: Vec<RealKubernetes> =
        list.split(':').filter(|s| !s.is_empty()).map(|d| RealKubernetes::load(Path::new(d))).collect();
    assert!(
        !trees.is_empty(),
        "this test needs real Kubernetes: build it with `scripts/build-kubernetes.sh v1.37.2 DIR` and set \
         {ENV}=DIR (colon-separated for several); scripts/test.sh does both"
    );
    trees.sort_by_key(|t| version_key(&t.version));
    trees
}

/// The newest tree.
pub fn newest() -> RealKubernetes {
    all().pop().expect("all() is never empty")
}

fn version_key(v: &str) -> Vec<u32> {
    v.trim_start_matches('v').split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// A signed installer built from a real tree, shared by the tests of one test binary.
pub struct RealInstaller {
    /// Keeps the directory.
    pub dir: tempfile::TempDir,
    /// The installer.
    pub installer: PathBuf,
    /// The vendor's public key.
    pub public_key: PathBuf,
    /// The tree it was built from.
    pub kubernetes: RealKubernetes,
}

/// The installer of [`newest`], built once per test binary with the release `ferry`.
pub fn newest_installer() -> &'static RealInstaller {
    static INSTALLER: OnceLock<RealInstaller> = OnceLock::new();
    INSTALLER.get_or_init(|| {
        let kubernetes = newest();
        let dir = crate::lasting(tempfile::Builder::new().prefix("ferry-real-k8s-").tempdir().unwrap());
        let (installer, key, _) = kubernetes.build_installer(dir.path());
        RealInstaller { public_key: key.with_extension("pub"), installer, kubernetes, dir }
    })
}

/// `examples/cluster` (the real platform bundle: Kubernetes, a web app, a Helm chart, a site
/// file) built into a signed installer over [`newest`]'s tree, once per test binary.
pub fn cluster_installer() -> &'static RealInstaller {
    static INSTALLER: OnceLock<RealInstaller> = OnceLock::new();
    INSTALLER.get_or_init(|| {
        let kubernetes = newest();
        let dir = crate::lasting(tempfile::Builder::new().prefix("ferry-real-cluster-").tempdir().unwrap());
        let key = crate::keygen(dir.path(), "vendor");
        let installer = build_platform(&kubernetes, dir.path(), &key, "installer", None);
        RealInstaller { public_key: key.with_extension("pub"), installer, kubernetes, dir }
    })
}

/// Builds `examples/cluster` over `kubernetes`'s tree into `dir/NAME`, signed with `key` (a
/// `keygen` base path), built at `created` (SOURCE_DATE_EPOCH) when given. The example's
/// Kubernetes version and control-plane image lines are taken from the tree, so the example
/// follows whatever version it is built with. The site file gets mode 0640 (git keeps only the
/// executable bit) so that the tests can see the mode travel.
pub fn build_platform(
    kubernetes: &RealKubernetes,
    dir: &Path,
    key: &Path,
    name: &str,
    created: Option<u64>,
) -> PathBuf {
    let d = dir.join(format!("{name}-bundle"));
    let example = crate::workspace_root().join("examples/cluster");
    crate::ok(&mut Command::new(example.join("make-images.sh")));
    let _ = std::fs::remove_dir_all(&d);
    crate::ok(Command::new("cp").arg("-a").arg(&example).arg(&d));
    let _ = std::fs::remove_dir_all(d.join("kubernetes"));
    // Hard links: the tree is hundreds of MB and the files are only read.
    crate::ok(Command::new("cp").arg("-al").arg(&kubernetes.dir).arg(d.join("kubernetes")));
    let tree_images: Vec<String> = std::fs::read_to_string(kubernetes.bundle())
        .unwrap()
        .lines()
        .filter(|l| l.contains("source: \"oci:images:"))
        .map(|l| l.replace("source: \"oci:images:", "source: \"oci:kubernetes/images:"))
        .collect();
    assert!(!tree_images.is_empty(), "{} lists no images", kubernetes.bundle().display());
    let example_yaml = std::fs::read_to_string(d.join("bundle.yaml")).unwrap();
    let mut spec = String::new();
    for line in example_yaml.lines() {
        if line.contains("oci:kubernetes/images:") {
            continue;
        }
        if line.trim_start().starts_with("version: v1.") {
            spec.push_str(&format!("    version: {}\n", kubernetes.version));
            continue;
        }
        spec.push_str(line);
        spec.push('\n');
        if line.trim_start().starts_with("images:") {
            for l in &tree_images {
                spec.push_str(l);
                spec.push('\n');
            }
        }
    }
    std::fs::write(d.join("bundle.yaml"), spec).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("files/site.conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let installer = dir.join(name);
    let mut build = Command::new(crate::release_bin("ferry"));
    build
        .arg("build")
        .arg(d.join("bundle.yaml"))
        .arg("-o")
        .arg(&installer)
        .arg("--key")
        .arg(key.with_extension("key"))
        .arg("--offline");
    if let Some(t) = created {
        build.env("SOURCE_DATE_EPOCH", t.to_string());
    }
    crate::ok(&mut build);
    let _ = std::fs::remove_dir_all(&d);
    installer
}

/// The platform released twice by one vendor: on the oldest tree and on the newest, for
/// upgrades, plus the newest built earlier than that (an older build of the same release).
pub struct Releases {
    /// Keeps the directory (each installer's state goes to `.ferry/` in it).
    pub dir: tempfile::TempDir,
    /// The vendor's public key, which signed all three.
    pub public_key: PathBuf,
    /// The platform on the oldest tree.
    pub old: PathBuf,
    /// The platform on the newest tree.
    pub new: PathBuf,
    /// The platform on the newest tree, built before `new` (and after `old`).
    pub new_built_earlier: PathBuf,
    /// The oldest tree.
    pub from: RealKubernetes,
    /// The newest tree.
    pub to: RealKubernetes,
}

/// [`Releases`], built once per test binary. Panics unless `FERRY_REAL_K8S` names two trees of
/// consecutive minor versions.
pub fn releases() -> &'static Releases {
    static RELEASES: OnceLock<Releases> = OnceLock::new();
    RELEASES.get_or_init(|| {
        let trees = all();
        assert!(
            trees.len() >= 2,
            "the upgrade tests need two Kubernetes trees in {ENV} (scripts/test.sh builds v1.36.3 and v1.37.2)"
        );
        let (from, to) = (trees[0].clone(), trees[trees.len() - 1].clone());
        let dir = crate::lasting(tempfile::Builder::new().prefix("ferry-releases-").tempdir().unwrap());
        let key = crate::keygen(dir.path(), "vendor");
        let base = 1_800_000_000;
        let old = build_platform(&from, dir.path(), &key, "installer-old", Some(base));
        let new_built_earlier = build_platform(&to, dir.path(), &key, "installer-new-early", Some(base + 100));
        let new = build_platform(&to, dir.path(), &key, "installer-new", Some(base + 200));
        Releases { public_key: key.with_extension("pub"), old, new, new_built_earlier, from, to, dir }
    })
}
