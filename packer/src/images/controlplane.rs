//! The control-plane images of a bundle: what `kubeadm init` pulls for `spec.kubernetes.version`
//! (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS, pause and
//! etcd, all from `registry.k8s.io`, the default `imageRepository`, under which CoreDNS lives at
//! `registry.k8s.io/coredns/coredns`).
//!
//! The authority is the bundle's own kubeadm, the program that will pull these images on the
//! nodes. When the rootfs holds a `usr/local/bin/kubeadm` or `usr/bin/kubeadm` that this machine
//! can run, [`resolve`] runs `kubeadm config images list --kubernetes-version V` and the bundle
//! carries exactly what it prints. Only when there is no kubeadm, or it cannot run here (another
//! architecture, not executable, no interpreter), is the built-in [`TABLE`] used, and the build
//! says so with the reason. A kubeadm that runs but fails stops the build, naming the file and
//! what kubeadm printed: guessing would only move the failure to the site.
//!
//! The table holds, per minor, kubeadm's `SupportedEtcdVersion[minor]` (its `DefaultEtcdVersion`
//! when the map has no such key), `CoreDNSVersion` and `PauseVersion` from
//! `cmd/kubeadm/app/constants/constants.go` of the newest patch release read ([`Row::read_from`]).
//! Patch releases do change them (etcd above all), so the table is only as current as that
//! release; `tests/integration/kubeadm_real.rs` compares it with real kubeadm binaries.
//!
//! The outcome is recorded in the installer's metadata under [`METADATA_KEY`], where the
//! installer takes the pause image (containerd's sandbox image) from.

use crate::spec::{Bundle, parse_kubernetes_version};
use crate::tools::{self, Ran};
use ferry_core::image_ref::ImageRef;
use ferry_core::metadata::ControlPlaneRecord;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

/// The registry and repository prefix kubeadm uses by default.
pub const IMAGE_REPOSITORY: &str = "registry.k8s.io";

/// The index metadata key holding the resolved control plane ([`ControlPlane::metadata`]); the
/// installer reads it there.
pub const METADATA_KEY: &str = ferry_core::metadata::key::CONTROL_PLANE;

/// How long the bundle's kubeadm may take to answer one command.
pub const KUBEADM_TIMEOUT: Duration = Duration::from_secs(20);

/// Where kubeadm may sit in a rootfs, in the order a node's `PATH` finds it.
pub const KUBEADM_PATHS: [&str; 2] = ["usr/local/bin/kubeadm", "usr/bin/kubeadm"];

/// One row of the table: what kubeadm of a minor release deploys besides the versioned
/// Kubernetes components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Kubernetes minor version (`36` for v1.36).
    pub minor: u32,
    /// etcd image tag.
    pub etcd: &'static str,
    /// CoreDNS image tag.
    pub coredns: &'static str,
    /// pause (sandbox) image tag.
    pub pause: &'static str,
    /// The kubeadm release whose constants these are.
    pub read_from: &'static str,
    /// Upstream no longer patches this minor.
    pub end_of_life: bool,
}

/// The fallback when the bundle's kubeadm cannot be run here. v1.33 is past its end of life and
/// its row was read from v1.33.0 only, never re-checked against later patches; it remains so
/// that existing v1.33 bundles still build, with a warning.
pub const TABLE: &[Row] = &[
    Row { minor: 33, etcd: "3.5.21-0", coredns: "v1.12.0", pause: "3.10", read_from: "v1.33.0", end_of_life: true },
    Row { minor: 34, etcd: "3.6.5-0", coredns: "v1.12.1", pause: "3.10.1", read_from: "v1.34.4", end_of_life: true },
    Row { minor: 35, etcd: "3.6.6-0", coredns: "v1.13.1", pause: "3.10.1", read_from: "v1.35.4", end_of_life: false },
    Row { minor: 36, etcd: "3.6.8-0", coredns: "v1.14.2", pause: "3.10.2", read_from: "v1.36.3", end_of_life: false },
    Row { minor: 37, etcd: "3.7.0-0", coredns: "v1.14.6", pause: "3.10.2", read_from: "v1.37.2", end_of_life: false },
];

/// The minors the table knows, for messages: `v1.33.x, v1.34.x, …`.
pub fn supported() -> String {
    TABLE.iter().map(|r| format!("v1.{}.x", r.minor)).collect::<Vec<_>>().join(", ")
}

/// A Kubernetes version the table cannot answer for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Not `vX.Y.Z`.
    #[error("Kubernetes version `{0}` is not of the form vMAJOR.MINOR.PATCH")]
    Malformed(String),
    /// A minor the table does not hold.
    #[error("Kubernetes {0} is not supported: ferry's built-in table knows the control-plane images of {1}")]
    Unsupported(String, String),
}

/// Why the control-plane images could not be named.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The bundle's kubeadm ran and failed, or answered nonsense.
    #[error("{file}: `{command}` {problem}")]
    Kubeadm {
        /// The kubeadm as the spec reaches it.
        file: String,
        /// The command run.
        command: String,
        /// What went wrong.
        problem: KubeadmProblem,
    },
    /// No kubeadm to ask, and the table does not know the version.
    #[error("{source} (or give the bundle a kubeadm this machine can run: {reason})")]
    Table {
        /// Why the table cannot answer.
        source: VersionError,
        /// Why kubeadm was not asked.
        reason: String,
    },
}

/// What went wrong running kubeadm.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmProblem {
    /// It could not be started.
    #[error("could not be started: {0}")]
    NotStarted(std::io::Error),
    /// It failed (status and output, in words).
    #[error("{0}")]
    Failed(String),
    /// It printed nothing.
    #[error("printed nothing")]
    Nothing,
    /// It printed no images.
    #[error("printed no images")]
    NoImages,
    /// It printed a line that is no image reference.
    #[error("printed `{line}`, which is not an image reference ({source})")]
    NotAnImage {
        /// The line.
        line: String,
        /// Why.
        source: ferry_core::image_ref::RefError,
    },
}

/// The table row for `version` (`vX.Y.Z`).
pub fn row(version: &str) -> Result<Row, VersionError> {
    let (major, minor, _) =
        parse_kubernetes_version(version).ok_or_else(|| VersionError::Malformed(version.to_string()))?;
    TABLE
        .iter()
        .find(|r| major == 1 && r.minor == minor)
        .copied()
        .ok_or_else(|| VersionError::Unsupported(version.to_string(), supported()))
}

/// The full references the table gives for `version`, in kubeadm's order.
pub fn images(version: &str) -> Result<Vec<String>, VersionError> {
    let r = row(version)?;
    let repo = IMAGE_REPOSITORY;
    let mut out: Vec<String> = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"]
        .iter()
        .map(|c| format!("{repo}/{c}:{version}"))
        .collect();
    out.push(format!("{repo}/coredns/coredns:{}", r.coredns));
    out.push(format!("{repo}/pause:{}", r.pause));
    out.push(format!("{repo}/etcd:{}", r.etcd));
    Ok(out)
}

/// Where a control-plane image list came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `kubeadm config images list` of the bundle's kubeadm.
    Kubeadm {
        /// The program, as the spec reaches it (`rootfs/usr/bin/kubeadm`).
        file: String,
        /// What `kubeadm version -o short` printed.
        version: String,
    },
    /// The built-in [`TABLE`].
    Table {
        /// The kubeadm release the row was read from.
        read_from: String,
        /// Why the bundle's kubeadm was not asked.
        reason: String,
    },
}

/// The control-plane images of a bundle, in kubeadm's order, and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// `spec.kubernetes.version`.
    pub kubernetes_version: String,
    /// Full references.
    pub images: Vec<String>,
    /// Who said so.
    pub source: Source,
}

impl ControlPlane {
    /// The pause (sandbox) image of the list, if it has one.
    pub fn pause(&self) -> Option<&str> {
        self.images
            .iter()
            .find(|i| ImageRef::parse(i).is_ok_and(|r| r.repository.rsplit('/').next() == Some("pause")))
            .map(String::as_str)
    }

    /// For build logs and `ferry images`: `from the bundle's kubeadm v1.36.3 (rootfs/usr/bin/kubeadm)`
    /// or `from ferry's built-in table (…; kubeadm not runnable here: REASON)`.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Kubeadm { file, version } => format!("from the bundle's kubeadm {version} ({file})"),
            Source::Table { read_from, reason } => format!(
                "from ferry's built-in table (values of kubeadm {read_from}; kubeadm not runnable here: {reason})"
            ),
        }
    }

    /// The [`METADATA_KEY`] record: `{kubernetesVersion, images, pause, source, kubeadm | tableFrom, detail}`.
    pub fn record(&self) -> ControlPlaneRecord {
        let (source, kubeadm, table_from) = match &self.source {
            Source::Kubeadm { version, .. } => ("kubeadm", Some(version.clone()), None),
            Source::Table { read_from, .. } => ("table", None, Some(read_from.clone())),
        };
        ControlPlaneRecord {
            kubernetes_version: self.kubernetes_version.clone(),
            images: self.images.clone(),
            detail: Some(self.describe()),
            source: Some(source.into()),
            kubeadm,
            table_from,
            pause: self.pause().map(String::from),
        }
    }

    /// [`ControlPlane::record`] as JSON.
    pub fn metadata(&self) -> Value {
        serde_json::to_value(self.record()).unwrap_or(Value::Null)
    }
}

/// The control-plane images of `bundle`: from its kubeadm when this machine can run it, else from
/// the table (see the module docs). `warnings` gets version skew, a table that disagrees with
/// kubeadm, and minors past their end of life.
pub fn resolve(bundle: &Bundle, warnings: &mut Vec<String>) -> Result<ControlPlane, ControlPlaneError> {
    let version = bundle.spec.spec.kubernetes.version.clone();
    let spec_minor = parse_kubernetes_version(&version).map(|v| (v.0, v.1));
    if let Some((1, minor)) = spec_minor
        && TABLE.iter().any(|r| r.minor == minor && r.end_of_life)
    {
        warnings
            .push(format!("Kubernetes {version}: v1.{minor} is past its upstream end of life and gets no more fixes"));
    }
    let reason = match tools::in_rootfs(bundle, &KUBEADM_PATHS) {
        None => format!("the bundle's rootfs has no {}", KUBEADM_PATHS.join(" or ")),
        Some((file, real)) => match ask_kubeadm(&file, &real, &version)? {
            Asked::Listed { version: kubeadm_version, images } => {
                let kubeadm_minor = parse_kubernetes_version(kubeadm_version.split(['-', '+']).next().unwrap_or(""))
                    .map(|v| (v.0, v.1));
                if kubeadm_minor != spec_minor {
                    warnings.push(format!(
                        "{file} is kubeadm {kubeadm_version} but spec.kubernetes.version is {version}; the nodes will run this kubeadm"
                    ));
                }
                if let Ok(table) = self::images(&version)
                    && table != images
                {
                    warnings.push(format!(
                        "ferry's built-in table differs from {file} for {version} (using kubeadm's list): table {}, kubeadm {}",
                        table.join(" "),
                        images.join(" ")
                    ));
                }
                return Ok(ControlPlane {
                    kubernetes_version: version,
                    images,
                    source: Source::Kubeadm { file, version: kubeadm_version },
                });
            }
            Asked::NotRunnable(why) => why,
        },
    };
    let r = row(&version);
    let (r, images) = match r.and_then(|r| Ok((r, images(&version)?))) {
        Ok(both) => both,
        Err(source) => return Err(ControlPlaneError::Table { source, reason }),
    };
    Ok(ControlPlane {
        images,
        kubernetes_version: version,
        source: Source::Table { read_from: r.read_from.to_string(), reason },
    })
}

/// Arguments as the OS strings [`tools::run`] takes.
fn args<'a>(a: &'a [&'a str]) -> Vec<&'a OsStr> {
    a.iter().map(OsStr::new).collect()
}

/// What asking the bundle's kubeadm gave.
enum Asked {
    /// It answered.
    Listed { version: String, images: Vec<String> },
    /// It cannot run on this machine, for this reason.
    NotRunnable(String),
}

/// Runs `kubeadm version -o short` and `kubeadm config images list --kubernetes-version V`.
/// Not runnable here → [`Asked::NotRunnable`]; ran and failed → `Err` naming the file.
fn ask_kubeadm(file: &str, real: &Path, version: &str) -> Result<Asked, ControlPlaneError> {
    let fail =
        |command: &str, problem| ControlPlaneError::Kubeadm { file: file.into(), command: command.into(), problem };
    if let Err(why) = tools::runnable_here(file, real) {
        return Ok(Asked::NotRunnable(why));
    }
    let kubeadm_version = match tools::run(real, &args(&["version", "-o", "short"]), None, KUBEADM_TIMEOUT) {
        Ran::NotRunnable(e) => return Ok(Asked::NotRunnable(format!("{file} cannot be run here: {e}"))),
        Ran::Failed(why) => return Err(fail("kubeadm version -o short", KubeadmProblem::Failed(why))),
        Ran::Ok(out) => out.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string(),
    };
    if kubeadm_version.is_empty() {
        return Err(fail("kubeadm version -o short", KubeadmProblem::Nothing));
    }
    let what = format!("kubeadm config images list --kubernetes-version {version}");
    let out = match tools::run(
        real,
        &args(&["config", "images", "list", "--kubernetes-version", version]),
        None,
        KUBEADM_TIMEOUT,
    ) {
        Ran::Ok(out) => out,
        Ran::NotRunnable(e) => return Err(fail(&what, KubeadmProblem::NotStarted(e))),
        Ran::Failed(why) => return Err(fail(&what, KubeadmProblem::Failed(why))),
    };
    let mut images = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let image = ImageRef::parse(line)
            .map_err(|source| fail(&what, KubeadmProblem::NotAnImage { line: line.into(), source }))?;
        images.push(image.to_string());
    }
    if images.is_empty() {
        return Err(fail(&what, KubeadmProblem::NoImages));
    }
    Ok(Asked::Listed { version: kubeadm_version, images })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rows_are_kubeadms_constants() {
        // constants.go of each release: SupportedEtcdVersion[minor] (else DefaultEtcdVersion),
        // CoreDNSVersion, PauseVersion.
        let want = [
            ("v1.34.4", "3.6.5-0", "v1.12.1", "3.10.1"),
            ("v1.35.4", "3.6.6-0", "v1.13.1", "3.10.1"),
            ("v1.36.3", "3.6.8-0", "v1.14.2", "3.10.2"),
            ("v1.37.2", "3.7.0-0", "v1.14.6", "3.10.2"),
        ];
        for (v, etcd, coredns, pause) in want {
            let r = row(v).unwrap();
            assert_eq!((r.etcd, r.coredns, r.pause, r.read_from), (etcd, coredns, pause, v), "{v}");
        }
        assert_eq!(
            images("v1.36.3").unwrap(),
            [
                "registry.k8s.io/kube-apiserver:v1.36.3",
                "registry.k8s.io/kube-controller-manager:v1.36.3",
                "registry.k8s.io/kube-scheduler:v1.36.3",
                "registry.k8s.io/kube-proxy:v1.36.3",
                "registry.k8s.io/coredns/coredns:v1.14.2",
                "registry.k8s.io/pause:3.10.2",
                "registry.k8s.io/etcd:3.6.8-0",
            ]
        );
    }

    #[test]
    fn every_row_yields_seven_valid_references() {
        for r in TABLE {
            let v = format!("v1.{}.3", r.minor);
            let imgs = images(&v).unwrap();
            assert_eq!(imgs.len(), 7);
            for i in &imgs {
                let parsed = ImageRef::parse(i).unwrap();
                assert_eq!(parsed.registry, "registry.k8s.io");
                assert_eq!(&parsed.to_string(), i, "already normalised");
            }
            assert!(imgs.iter().any(|i| i.ends_with(&format!("kube-proxy:{v}"))));
        }
        let minors: Vec<u32> = TABLE.iter().map(|r| r.minor).collect();
        assert!(minors.windows(2).all(|w| w[1] == w[0] + 1), "no gaps: {minors:?}");
        assert_eq!(minors.last(), Some(&37));
    }

    #[test]
    fn unsupported_versions_list_the_supported_ones() {
        let e = row("v1.32.0").unwrap_err().to_string();
        assert!(e.contains("v1.32.0") && e.contains("v1.34.x") && e.contains("v1.37.x"), "{e}");
        assert!(row("v2.36.0").is_err());
        assert!(row("1.36").is_err());
    }

    /// A bundle in a temp dir whose rootfs holds `kubeadm` (at `rel`) with `script` as its text.
    fn bundle(version: &str, kubeadm: Option<(&str, &str, u32)>) -> (tempfile::TempDir, Bundle) {
        let d = tempfile::tempdir().unwrap();
        let spec = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: t, version: '1'}}\nspec:\n  kubernetes: {{version: {version}}}\n  rootfs: [{{path: rootfs}}]\n"
        );
        std::fs::write(d.path().join("bundle.yaml"), spec).unwrap();
        std::fs::create_dir_all(d.path().join("rootfs/usr/bin")).unwrap();
        if let Some((rel, script, mode)) = kubeadm {
            let p = d.path().join("rootfs").join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let b = Bundle::load(&d.path().join("bundle.yaml")).unwrap();
        (d, b)
    }

    /// A STAND-IN kubeadm (a shell script, not kubeadm): answers `version -o short` and
    /// `config images list --kubernetes-version V` as the real one does, with its own etcd tag
    /// so a test can tell its list from the table's.
    const STANDIN: &str = "#!/bin/sh\n# STAND-IN for kubeadm (ferry packer tests)\ncase \"$1 $2\" in\n\
        'version -o') echo v1.36.3 ;;\n\
        'config images') v=$5; for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do echo registry.k8s.io/$c:$v; done\n\
        echo registry.k8s.io/coredns/coredns:v1.14.2; echo registry.k8s.io/pause:3.10.2; echo registry.k8s.io/etcd:3.6.9-0-standin ;;\n\
        *) echo \"stand-in kubeadm: $* not modelled\" >&2; exit 2 ;;\nesac\n";

    #[test]
    fn a_runnable_kubeadm_is_the_authority() {
        let (_d, b) = bundle("v1.36.3", Some(("usr/bin/kubeadm", STANDIN, 0o755)));
        let mut w = Vec::new();
        let cp = resolve(&b, &mut w).unwrap();
        assert_eq!(cp.source, Source::Kubeadm { file: "rootfs/usr/bin/kubeadm".into(), version: "v1.36.3".into() });
        assert_eq!(cp.images.len(), 7);
        assert_eq!(cp.images[6], "registry.k8s.io/etcd:3.6.9-0-standin", "kubeadm's list, not the table's");
        assert_eq!(cp.pause(), Some("registry.k8s.io/pause:3.10.2"));
        assert_eq!(cp.describe(), "from the bundle's kubeadm v1.36.3 (rootfs/usr/bin/kubeadm)");
        assert!(w.iter().any(|w| w.contains("table differs") && w.contains("3.6.8-0")), "{w:?}");
        let m = cp.metadata();
        assert_eq!((m["source"].as_str(), m["kubeadm"].as_str()), (Some("kubeadm"), Some("v1.36.3")));
        assert_eq!(m["pause"], "registry.k8s.io/pause:3.10.2");
        assert_eq!(m["images"].as_array().unwrap().len(), 7);

        // Another minor than the spec's: used, with a warning.
        let (_d, b) = bundle("v1.37.2", Some(("usr/local/bin/kubeadm", STANDIN, 0o755)));
        let mut w = Vec::new();
        let cp = resolve(&b, &mut w).unwrap();
        assert!(matches!(cp.source, Source::Kubeadm { ref file, .. } if file == "rootfs/usr/local/bin/kubeadm"));
        assert!(cp.images[0].ends_with("kube-apiserver:v1.37.2"));
        assert!(w.iter().any(|w| w.contains("is kubeadm v1.36.3 but spec.kubernetes.version is v1.37.2")), "{w:?}");

        // A version outside the table is fine when kubeadm answers.
        let (_d, b) = bundle("v1.38.0", Some(("usr/bin/kubeadm", STANDIN, 0o755)));
        assert!(resolve(&b, &mut Vec::new()).unwrap().images[0].ends_with(":v1.38.0"));
    }

    #[test]
    fn a_kubeadm_that_fails_stops_the_build_naming_file_and_stderr() {
        let failing = "#!/bin/sh\n# STAND-IN for a broken kubeadm\n[ \"$1\" = version ] && { echo v1.36.3; exit 0; }\necho 'unknown flag: --kubernetes-version' >&2\nexit 1\n";
        let (_d, b) = bundle("v1.36.3", Some(("usr/bin/kubeadm", failing, 0o755)));
        let e = resolve(&b, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            e.starts_with("rootfs/usr/bin/kubeadm: `kubeadm config images list --kubernetes-version v1.36.3` failed")
                && e.contains("unknown flag: --kubernetes-version"),
            "{e}"
        );
        let garbage = "#!/bin/sh\n# STAND-IN printing junk\n[ \"$1\" = version ] && { echo v1.36.3; exit 0; }\necho 'Not An Image!'\n";
        let (_d, b) = bundle("v1.36.3", Some(("usr/bin/kubeadm", garbage, 0o755)));
        let e = resolve(&b, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("printed `Not An Image!`, which is not an image reference"), "{e}");
        let version_fails = "#!/bin/sh\necho 'segmentation fault' >&2\nexit 139\n";
        let (_d, b) = bundle("v1.36.3", Some(("usr/bin/kubeadm", version_fails, 0o755)));
        let e = resolve(&b, &mut Vec::new()).unwrap_err().to_string();
        assert!(
            e.contains("rootfs/usr/bin/kubeadm: `kubeadm version -o short` failed") && e.contains("segmentation fault"),
            "{e}"
        );
    }

    #[test]
    fn without_a_runnable_kubeadm_the_table_is_used_with_the_reason() {
        let (_d, b) = bundle("v1.36.3", None);
        let cp = resolve(&b, &mut Vec::new()).unwrap();
        assert_eq!(cp.images, images("v1.36.3").unwrap());
        assert_eq!(
            cp.describe(),
            "from ferry's built-in table (values of kubeadm v1.36.3; kubeadm not runnable here: the bundle's rootfs has no usr/local/bin/kubeadm or usr/bin/kubeadm)"
        );
        assert_eq!(cp.metadata()["source"], "table");
        assert_eq!(cp.metadata()["pause"], "registry.k8s.io/pause:3.10.2");

        let (_d, b) = bundle("v1.35.4", Some(("usr/bin/kubeadm", STANDIN, 0o644)));
        let cp = resolve(&b, &mut Vec::new()).unwrap();
        assert!(cp.describe().contains("rootfs/usr/bin/kubeadm is not executable (mode 0644)"), "{}", cp.describe());
        assert_eq!(cp.images, images("v1.35.4").unwrap());

        // Another architecture's program is not run.
        let other = if std::env::consts::ARCH == "aarch64" { 62u16 } else { 183u16 };
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1];
        elf.resize(18, 0);
        elf.extend(other.to_le_bytes());
        elf.resize(64, 0);
        let (d, b) = bundle("v1.37.2", None);
        let p = d.path().join("rootfs/usr/bin/kubeadm");
        std::fs::write(&p, &elf).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cp = resolve(&b, &mut Vec::new()).unwrap();
        assert!(
            cp.describe().contains("is a ") && cp.describe().contains("program and this machine is"),
            "{}",
            cp.describe()
        );

        // Not even the table knows it: the error says both.
        let (_d, b) = bundle("v1.32.1", None);
        let e = resolve(&b, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("v1.32.1 is not supported") && e.contains("has no usr/local/bin/kubeadm"), "{e}");
    }

    #[test]
    fn end_of_life_minors_warn() {
        let (_d, b) = bundle("v1.34.4", None);
        let mut w = Vec::new();
        resolve(&b, &mut w).unwrap();
        assert!(w.iter().any(|w| w.contains("v1.34 is past its upstream end of life")), "{w:?}");
        let (_d, b) = bundle("v1.36.3", None);
        let mut w = Vec::new();
        resolve(&b, &mut w).unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn symlinks_resolve_inside_the_rootfs() {
        let (d, b) = bundle("v1.36.3", Some(("opt/k8s/kubeadm", STANDIN, 0o755)));
        std::os::unix::fs::symlink("/opt/k8s/kubeadm", d.path().join("rootfs/usr/bin/kubeadm")).unwrap();
        let cp = resolve(&b, &mut Vec::new()).unwrap();
        assert!(matches!(cp.source, Source::Kubeadm { ref file, .. } if file == "rootfs/usr/bin/kubeadm"), "{cp:?}");
        std::fs::remove_file(d.path().join("rootfs/usr/bin/kubeadm")).unwrap();
        std::os::unix::fs::symlink("../../opt/k8s/kubeadm", d.path().join("rootfs/usr/bin/kubeadm")).unwrap();
        assert!(matches!(resolve(&b, &mut Vec::new()).unwrap().source, Source::Kubeadm { .. }));
    }
}
