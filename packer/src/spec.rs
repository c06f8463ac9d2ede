//! `bundle.yaml`: the bundle spec, Kubernetes-style. Unknown fields are errors naming the field
//! and its line; every path is resolved against the spec's directory and may not escape it.

use crate::launch::LaunchError;
use crate::paths::PathError;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The only `apiVersion` this packer reads.
pub const API_VERSION: &str = "ferry.dev/v1alpha1";

/// A parsed `bundle.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BundleFile {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be `Bundle`.
    pub kind: String,
    /// Name and version.
    pub metadata: Metadata,
    /// What the bundle carries.
    pub spec: Spec,
}

/// `metadata`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Bundle name.
    pub name: String,
    /// Bundle version.
    pub version: String,
}

/// `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Kubernetes version.
    pub kubernetes: Kubernetes,
    /// Directory trees laid onto each node's filesystem root.
    #[serde(default)]
    pub rootfs: Vec<PathItem>,
    /// YAML files or directories carried for the apply step.
    #[serde(default)]
    pub manifests: Vec<PathItem>,
    /// Helm chart directories or `.tgz` files, carried as-is.
    #[serde(default)]
    pub charts: Vec<PathItem>,
    /// Extra files placed at `dest` on the nodes.
    #[serde(default)]
    pub files: Vec<FileItem>,
    /// Platforms whose image manifests and layers the bundle carries (`linux/amd64`);
    /// default: the build machine's.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Images carried besides those discovered in manifests, charts and the control plane.
    #[serde(default)]
    pub images: Vec<ImageItem>,
    /// Discovered images the bundle must not carry (references, normalised before comparing):
    /// an image an operator pulls itself at run time from a registry the site has, say.
    #[serde(default)]
    pub image_exclude: Vec<String>,
    /// Where the build machine pulls each registry's images from, instead of the registry
    /// itself: `docker.io: http://127.0.0.1:5000`, or a list tried in order.
    #[serde(default)]
    pub registry_mirrors: BTreeMap<String, Mirrors>,
    /// Registries (`host:port`) the build machine may reach over plain http or unverified TLS.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Launch steps run in order on master0 after the control plane is up: `{manifests: PATH}`,
    /// `{chart: PATH, values: PATH, namespace: NS, release: NAME}` or `{run: COMMAND}` (checked and mapped onto
    /// payload paths by [`crate::launch`]).
    #[serde(default)]
    pub launch: Vec<ferry_core::launch::LaunchStepFields>,
    /// An installer this bundle is built on: its signature checked with `key` before anything
    /// is read, its whole content carried, its launch steps run before this spec's.
    #[serde(default)]
    pub base: Option<BaseSpec>,
}

/// `spec.base`: `{installer: PATH, key: PUB}` or `{oci: oci://REGISTRY/REPO:TAG, key: PUB}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// The base installer's file, relative to the spec.
    #[serde(default)]
    pub installer: Option<String>,
    /// Or where `ferry pull` would fetch it from.
    #[serde(default)]
    pub oci: Option<String>,
    /// The public key the base must be signed with, relative to the spec.
    pub key: String,
}

/// One `spec.images` item: a reference, or a reference with a local source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// The reference the cluster uses.
    pub r#ref: String,
    /// `oci:PATH[:TAG]` or `docker-archive:PATH`; `None` pulls from the registry.
    pub source: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageItemMap {
    r#ref: String,
    #[serde(default)]
    source: Option<String>,
}

impl<'de> Deserialize<'de> for ImageItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ImageItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an image reference, or a map with `ref` and optional `source`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ImageItem, E> {
                Ok(ImageItem { r#ref: v.to_string(), source: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<ImageItem, A::Error> {
                let m = ImageItemMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ImageItem { r#ref: m.r#ref, source: m.source })
            }
        }
        d.deserialize_any(V)
    }
}

/// One or more mirror URLs of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors(pub Vec<String>);

impl<'de> Deserialize<'de> for Mirrors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Mirrors;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mirror URL or a list of mirror URLs")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Mirrors, E> {
                Ok(Mirrors(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Mirrors, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Mirrors(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `spec.kubernetes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// For example `v1.36.3`.
    pub version: String,
}

/// `{path: …}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathItem {
    /// Relative to the spec's directory.
    pub path: String,
}

/// `{path: …, dest: …}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileItem {
    /// Relative to the spec's directory.
    pub path: String,
    /// Absolute destination on the nodes.
    pub dest: String,
}

/// Why a spec cannot be used. Each variant names the spec file and the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file cannot be read.
    #[error("reading bundle spec {}", path.display())]
    Read {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a spec: bad YAML, an unknown or missing field (with its line).
    #[error("{}: {cause}", path.display())]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// Why.
        cause: Box<serde_saphyr::Error>,
    },
    /// The spec's directory cannot be resolved.
    #[error("resolving the directory of {}", path.display())]
    Dir {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another `apiVersion`.
    #[error("{}: apiVersion is `{found}`; this ferry reads `{API_VERSION}`", file.display())]
    ApiVersion {
        /// The spec file.
        file: PathBuf,
        /// What it says.
        found: String,
    },
    /// Another `kind`.
    #[error("{}: kind is `{found}`; expected `Bundle`", file.display())]
    Kind {
        /// The spec file.
        file: PathBuf,
        /// What it says.
        found: String,
    },
    /// A `metadata.name` that is no DNS name.
    #[error("{}: metadata.name `{name}` must be 1-63 lowercase letters, digits, `-` or `.`", file.display())]
    Name {
        /// The spec file.
        file: PathBuf,
        /// What it says.
        name: String,
    },
    /// An empty `metadata.version`.
    #[error("{}: metadata.version is empty", .0.display())]
    Version(PathBuf),
    /// A Kubernetes version that is not `vX.Y.Z`.
    #[error("{}: spec.kubernetes.version `{version}` is not of the form vMAJOR.MINOR.PATCH", file.display())]
    KubernetesVersion {
        /// The spec file.
        file: PathBuf,
        /// What it says.
        version: String,
    },
    /// A platform that is not `os/arch[/variant]`.
    #[error("{}: spec.platforms: {cause}", file.display())]
    Platform {
        /// The spec file.
        file: PathBuf,
        /// Why.
        cause: crate::images::oci::PlatformError,
    },
    /// An image reference that does not parse.
    #[error("{}: spec.images[{index}]: {cause}", file.display())]
    ImageRef {
        /// The spec file.
        file: PathBuf,
        /// Its position in `spec.images`.
        index: usize,
        /// Why.
        cause: ferry_core::image_ref::RefError,
    },
    /// An image source of neither kind.
    #[error(
        "{}: spec.images[{index}].source `{given}` must be `oci:PATH[:TAG]` or `docker-archive:PATH`",
        file.display()
    )]
    ImageSource {
        /// The spec file.
        file: PathBuf,
        /// Its position in `spec.images`.
        index: usize,
        /// The source as written.
        given: String,
    },
    /// A registry with an empty list of mirrors.
    #[error("{}: registryMirrors.{registry} lists no mirror", file.display())]
    NoMirror {
        /// The spec file.
        file: PathBuf,
        /// The registry.
        registry: String,
    },
    /// A `spec.files` destination that is not an absolute file path.
    #[error("{}: spec.files dest `{dest}` must be an absolute file path without `..`", file.display())]
    FileDest {
        /// The spec file.
        file: PathBuf,
        /// The destination as written.
        dest: String,
    },
    /// A path field that cannot be used.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A launch step that cannot be used.
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// A spec with its location, ready to resolve paths.
#[derive(Debug)]
pub struct Bundle {
    /// The spec file.
    pub file: PathBuf,
    /// Canonical directory of the spec file.
    pub dir: PathBuf,
    /// The parsed spec.
    pub spec: BundleFile,
}

impl Bundle {
    /// Reads and checks a spec file.
    pub fn load(path: &Path) -> Result<Bundle, SpecError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SpecError::Read { path: path.to_path_buf(), source })?;
        let spec: BundleFile = serde_saphyr::from_str(&text)
            .map_err(|e| SpecError::Parse { path: path.to_path_buf(), cause: Box::new(e) })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .canonicalize()
            .map_err(|source| SpecError::Dir { path: path.to_path_buf(), source })?;
        let bundle = Bundle { file: path.to_path_buf(), dir, spec };
        bundle.check_header()?;
        bundle.check_spec()?;
        crate::launch::resolve(&bundle)?;
        Ok(bundle)
    }

    /// `apiVersion`, `kind`, `metadata` and the Kubernetes version.
    fn check_header(&self) -> Result<(), SpecError> {
        let s = &self.spec;
        let file = self.file.clone();
        if s.api_version != API_VERSION {
            return Err(SpecError::ApiVersion { file, found: s.api_version.clone() });
        }
        if s.kind != "Bundle" {
            return Err(SpecError::Kind { file, found: s.kind.clone() });
        }
        let name_ok = !s.metadata.name.is_empty()
            && s.metadata.name.len() <= 63
            && s.metadata.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !name_ok {
            return Err(SpecError::Name { file, name: s.metadata.name.clone() });
        }
        if s.metadata.version.trim().is_empty() {
            return Err(SpecError::Version(file));
        }
        if parse_kubernetes_version(&s.spec.kubernetes.version).is_none() {
            return Err(SpecError::KubernetesVersion { file, version: s.spec.kubernetes.version.clone() });
        }
        Ok(())
    }

    /// Platforms, images, mirrors and file destinations.
    fn check_spec(&self) -> Result<(), SpecError> {
        let s = &self.spec.spec;
        let file = || self.file.clone();
        for p in &s.platforms {
            crate::images::oci::Platform::parse(p).map_err(|cause| SpecError::Platform { file: file(), cause })?;
        }
        for (index, item) in s.images.iter().enumerate() {
            ferry_core::image_ref::ImageRef::parse(&item.r#ref).map_err(|cause| SpecError::ImageRef {
                file: file(),
                index,
                cause,
            })?;
            if let Some(src) = &item.source
                && !(src.starts_with("oci:") || src.starts_with("docker-archive:"))
            {
                return Err(SpecError::ImageSource { file: file(), index, given: src.clone() });
            }
        }
        for (registry, mirrors) in &s.registry_mirrors {
            if mirrors.0.is_empty() {
                return Err(SpecError::NoMirror { file: file(), registry: registry.clone() });
            }
        }
        for item in &s.files {
            let d = Path::new(&item.dest);
            if !d.is_absolute() || d.components().any(|c| matches!(c, Component::ParentDir)) || item.dest.ends_with('/')
            {
                return Err(SpecError::FileDest { file: file(), dest: item.dest.clone() });
            }
        }
        Ok(())
    }

    /// Resolves `rel` (from field `field`) against the spec directory, refusing paths that do
    /// not exist or that lead outside it.
    pub fn resolve(&self, field: &str, rel: &str) -> Result<PathBuf, PathError> {
        crate::paths::resolve_inside(&self.file, &self.dir, field, rel)
    }
}

impl crate::launch::SpecPaths for Bundle {
    fn file(&self) -> &Path {
        &self.file
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn launch(&self) -> &[ferry_core::launch::LaunchStepFields] {
        &self.spec.spec.launch
    }

    fn manifest_roots(&self) -> Result<Vec<PathBuf>, PathError> {
        self.roots(&self.spec.spec.manifests, "spec.manifests")
    }

    fn chart_roots(&self) -> Result<Vec<PathBuf>, PathError> {
        self.roots(&self.spec.spec.charts, "spec.charts")
    }

    fn resolve(&self, field: &str, rel: &str) -> Result<PathBuf, PathError> {
        Bundle::resolve(self, field, rel)
    }
}

impl Bundle {
    fn roots(&self, items: &[PathItem], field: &str) -> Result<Vec<PathBuf>, PathError> {
        items.iter().enumerate().map(|(i, it)| self.resolve(&format!("{field}[{i}].path"), &it.path)).collect()
    }
}

/// `vX.Y.Z` → (X, Y, Z).
pub fn parse_kubernetes_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.strip_prefix('v')?.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Bundle, SpecError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bundle.yaml");
        std::fs::write(&p, yaml).unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let b = Bundle::load(&p);
        drop(dir);
        b
    }

    const GOOD: &str = "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata:\n  name: demo\n  version: 0.1.0\nspec:\n  kubernetes:\n    version: v1.36.3\n  rootfs:\n    - path: rootfs\n  manifests: []\n  charts: []\n  files: []\n";

    #[test]
    fn parses_the_documented_shape() {
        let b = load(GOOD).unwrap();
        assert_eq!(b.spec.metadata.name, "demo");
        assert_eq!(b.spec.spec.rootfs[0].path, "rootfs");
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let yaml = GOOD.replace("  charts: []\n", "  charts: []\n  chartz: []\n");
        let err = format!("{:#}", load(&yaml).unwrap_err());
        assert!(err.contains("chartz"), "{err}");
        assert!(err.contains("line 13") || err.contains("13:"), "{err}");
    }

    #[test]
    fn image_fields() {
        let yaml = GOOD.replace(
            "  files: []\n",
            "  files: []\n  platforms: [linux/amd64, linux/arm64]\n  images:\n    - nginx:1.27\n    - ref: quay.io/example/app:2.1\n      source: oci:images/app-layout:2.1\n  registryMirrors:\n    docker.io: http://127.0.0.1:5000\n    quay.io: [https://a.example, https://b.example]\n  insecureRegistries: [127.0.0.1:5000]\n",
        );
        let b = load(&yaml).unwrap();
        let s = &b.spec.spec;
        assert_eq!(s.platforms, ["linux/amd64", "linux/arm64"]);
        assert_eq!(s.images[0], ImageItem { r#ref: "nginx:1.27".into(), source: None });
        assert_eq!(s.images[1].source.as_deref(), Some("oci:images/app-layout:2.1"));
        assert_eq!(s.registry_mirrors["docker.io"].0, ["http://127.0.0.1:5000"]);
        assert_eq!(s.registry_mirrors["quay.io"].0.len(), 2);
        assert_eq!(s.insecure_registries, ["127.0.0.1:5000"]);
    }

    #[test]
    fn bad_image_fields_are_named_with_lines() {
        let yaml = GOOD.replace("  files: []\n", "  files: []\n  images:\n    - ref: nginx\n      sauce: oci:x\n");
        let err = format!("{:#}", load(&yaml).unwrap_err());
        assert!(err.contains("sauce") && err.contains("line 16"), "{err}");
        let yaml = GOOD.replace("  files: []\n", "  files: []\n  images: [Nginx]\n");
        let err = format!("{:#}", load(&yaml).unwrap_err());
        assert!(err.contains("spec.images[0]") && err.contains("lowercase"), "{err}");
        let yaml = GOOD.replace("  files: []\n", "  files: []\n  images: [{ref: a, source: 'http://x'}]\n");
        assert!(format!("{:#}", load(&yaml).unwrap_err()).contains("oci:PATH"));
        let yaml = GOOD.replace("  files: []\n", "  files: []\n  platforms: [amd64]\n");
        assert!(format!("{:#}", load(&yaml).unwrap_err()).contains("spec.platforms"));
    }

    #[test]
    fn bad_versions_and_kinds_are_named() {
        assert!(
            format!("{:#}", load(&GOOD.replace("v1.36.3", "1.36")).unwrap_err()).contains("spec.kubernetes.version")
        );
        assert!(format!("{:#}", load(&GOOD.replace("kind: Bundle", "kind: Pod")).unwrap_err()).contains("kind"));
    }
}
