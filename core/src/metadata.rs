//! Owns the bundle metadata the packer writes for the installer: the typed values under the
//! index's `metadata` keys beside name, version and Kubernetes version (`payload_format`'s
//! `BundleMetadata::extra`). The packer builds them with [`ImagesContract::to_extra`] and
//! [`launch_value`]; the installer reads each key with the function named after it. The JSON on
//! disk is what `docs/format.md` describes (keys sorted, as `serde_json` writes maps).
//!
//! | key | type |
//! |---|---|
//! | `images` | [`ImageRecord`]s, sorted by `ref` |
//! | `manifests` | digest → media type of every stored manifest and index |
//! | `platforms` | `os/arch[/variant]` strings |
//! | `missingImages` | references left out with `--allow-missing-images` |
//! | `controlPlaneImages` | [`ControlPlaneRecord`] |
//! | `launch` | [`LaunchStep`]s, in order |
//! | `base` | [`BaseRecord`]: the installer this one was built on (`spec.base`), if any |

use payload_format::Payload;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The keys, as written on disk.
pub mod key {
    /// [`super::ImageRecord`]s.
    pub const IMAGES: &str = "images";
    /// Digest → media type.
    pub const MANIFESTS: &str = "manifests";
    /// Platforms carried.
    pub const PLATFORMS: &str = "platforms";
    /// References left out.
    pub const MISSING_IMAGES: &str = "missingImages";
    /// [`super::ControlPlaneRecord`].
    pub const CONTROL_PLANE: &str = "controlPlaneImages";
    /// [`super::LaunchStep`]s.
    pub const LAUNCH: &str = "launch";
    /// [`super::BaseRecord`].
    pub const BASE: &str = "base";
}

/// The installer a bundle was built on (`spec.base`): what it was, proven by whom.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseRecord {
    /// The base's bundle name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its Kubernetes version.
    pub kubernetes_version: String,
    /// `sha256:` of its signed index: what its signature covers, so it names the base exactly.
    pub digest: String,
    /// Fingerprint of the key its signature was verified with.
    pub signer: String,
}

/// `base` (none when the bundle was not built on another).
pub fn base(extra: &Map<String, Value>) -> Result<Option<BaseRecord>, MetadataError> {
    read(extra, key::BASE, "a base installer record")
}

/// A key whose value is not what the packer writes.
#[derive(Debug, thiserror::Error)]
#[error("the index's metadata.{key} is not {expected}: {source}")]
pub struct MetadataError {
    /// The key.
    pub key: &'static str,
    /// What it should be, in words.
    pub expected: &'static str,
    /// Why it is not.
    #[source]
    pub source: serde_json::Error,
}

/// One image the bundle carries (an element of `images`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The normalised reference, e.g. `docker.io/library/nginx:1.27`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Registry domain.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// The tag it is served under; null for digest-pinned references.
    #[serde(default)]
    pub tag: Option<String>,
    /// Digest of the top-level manifest or index.
    pub digest: String,
    /// Media type of that manifest or index.
    #[serde(default)]
    pub media_type: String,
    /// Where it came from: `registry`, `oci` or `docker-archive`.
    #[serde(default)]
    pub source: String,
    /// The places of the bundle that name it, in words.
    #[serde(default)]
    pub found_in: Vec<String>,
    /// Only guessed from chart values, without helm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guessed: bool,
    /// Named only outside pod specs (an argument, a variable, a custom resource field, a chart
    /// annotation): what pulls it is a program, not kubelet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside_pod_spec: bool,
}

/// Where the control-plane image list came from, and the list (`controlPlaneImages`). Every
/// field is optional when read, so an older installer's record still shows what it has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneRecord {
    /// `spec.kubernetes.version`.
    #[serde(default)]
    pub kubernetes_version: String,
    /// Full references, in kubeadm's order.
    #[serde(default)]
    pub images: Vec<String>,
    /// Where the list came from, in words (`from the bundle's kubeadm v1.36.3 (…)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `kubeadm` or `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The kubeadm version asked, for `source: kubeadm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeadm: Option<String>,
    /// The kubeadm version whose values the table holds, for `source: table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_from: Option<String>,
    /// The sandbox (pause) image of the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// What the packer's image collection adds to the metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImagesContract {
    /// Every image, sorted by reference.
    pub images: Vec<ImageRecord>,
    /// Digest → media type of every stored manifest and index.
    pub manifests: BTreeMap<String, String>,
    /// `linux/amd64`, …
    pub platforms: Vec<String>,
    /// References left out, sorted.
    pub missing_images: Vec<String>,
    /// The control plane's list.
    pub control_plane: ControlPlaneRecord,
}

impl ImagesContract {
    /// The metadata keys, as the installer reads them.
    pub fn to_extra(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(key::IMAGES.into(), to_value(&self.images));
        m.insert(key::MANIFESTS.into(), to_value(&self.manifests));
        m.insert(key::PLATFORMS.into(), to_value(&self.platforms));
        m.insert(key::MISSING_IMAGES.into(), to_value(&self.missing_images));
        m.insert(key::CONTROL_PLANE.into(), to_value(&self.control_plane));
        m
    }
}

/// The `launch` value for `steps`.
pub fn launch_value(steps: &[LaunchStep]) -> Value {
    to_value(steps)
}

/// Plain data (strings, lists, string maps) always converts; `Null` stands for the impossible.
fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn read<T: serde::de::DeserializeOwned + Default>(
    extra: &Map<String, Value>,
    key: &'static str,
    expected: &'static str,
) -> Result<T, MetadataError> {
    match extra.get(key) {
        None => Ok(T::default()),
        Some(v) => T::deserialize(v).map_err(|source| MetadataError { key, expected, source }),
    }
}

/// `images` (none when absent).
pub fn images(extra: &Map<String, Value>) -> Result<Vec<ImageRecord>, MetadataError> {
    read(extra, key::IMAGES, "a list of image records")
}

/// `manifests` (none when absent).
pub fn manifests(extra: &Map<String, Value>) -> Result<BTreeMap<String, String>, MetadataError> {
    read(extra, key::MANIFESTS, "a digest → media type map")
}

/// `platforms` (none when absent).
pub fn platforms(extra: &Map<String, Value>) -> Result<Vec<String>, MetadataError> {
    read(extra, key::PLATFORMS, "a list of platforms")
}

/// `missingImages` (none when absent).
pub fn missing_images(extra: &Map<String, Value>) -> Result<Vec<String>, MetadataError> {
    read(extra, key::MISSING_IMAGES, "a list of image references")
}

/// `controlPlaneImages`, when recorded.
pub fn control_plane(extra: &Map<String, Value>) -> Result<Option<ControlPlaneRecord>, MetadataError> {
    read(extra, key::CONTROL_PLANE, "a control-plane record")
}

/// The sandbox image recorded under `controlPlaneImages.pause`, when there is one.
pub fn recorded_pause(extra: &Map<String, Value>) -> Result<Option<String>, PauseError> {
    match extra.get(key::CONTROL_PLANE).and_then(|cp| cp.get("pause")) {
        None => Ok(None),
        Some(Value::String(p)) if !p.trim().is_empty() => Ok(Some(p.trim().to_string())),
        Some(other) => Err(PauseError(other.to_string())),
    }
}

/// `controlPlaneImages.pause` is there but names no image.
#[derive(Debug, thiserror::Error)]
#[error(
    "the index's metadata.{key}.pause is {0}, not an image reference; the installer is damaged or from an incompatible ferry",
    key = key::CONTROL_PLANE
)]
pub struct PauseError(pub String);

/// `launch` (none when absent).
pub fn launch_steps(extra: &Map<String, Value>) -> Result<Vec<LaunchStep>, MetadataError> {
    read(extra, key::LAUNCH, "a list of launch steps")
}

/// The metadata's `launch` value cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: the launch steps in its metadata are unreadable ({cause}); was it built by a newer ferry?", file.display())]
pub struct UnreadableSteps {
    /// The installer.
    pub file: PathBuf,
    /// What is wrong with the value.
    pub cause: serde_json::Error,
}

/// The steps the payload carries (none when the bundle declares none). A `launch` entry this
/// installer cannot read is an error, not silently no steps.
pub fn launch_steps_in(payload: &Payload) -> Result<Vec<LaunchStep>, UnreadableSteps> {
    launch_steps(&payload.index().metadata.extra)
        .map_err(|e| UnreadableSteps { file: payload.path().to_path_buf(), cause: e.source })
}

pub use crate::launch::{LaunchStep, LaunchStepFields, StepError};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_images_contract_is_written_with_the_keys_the_installer_reads() {
        let contract = ImagesContract {
            images: vec![ImageRecord {
                reference: "docker.io/library/a@sha256:00".into(),
                registry: "docker.io".into(),
                repository: "library/a".into(),
                tag: None,
                digest: "sha256:00".into(),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                source: "registry".into(),
                found_in: vec!["manifests/a.yaml".into()],
                guessed: false,
                outside_pod_spec: false,
            }],
            manifests: [("sha256:00".to_string(), "application/vnd.oci.image.index.v1+json".to_string())].into(),
            platforms: vec!["linux/amd64".into()],
            missing_images: vec![],
            control_plane: ControlPlaneRecord {
                kubernetes_version: "v1.36.3".into(),
                images: vec!["registry.k8s.io/pause:3.10.2".into()],
                detail: Some("from ferry's built-in table".into()),
                source: Some("table".into()),
                table_from: Some("v1.36.3".into()),
                pause: Some("registry.k8s.io/pause:3.10.2".into()),
                ..Default::default()
            },
        };
        // The bytes the packer wrote before these types existed (keys sorted, `tag: null`).
        let want = r#"{"controlPlaneImages":{"detail":"from ferry's built-in table","images":["registry.k8s.io/pause:3.10.2"],"kubernetesVersion":"v1.36.3","pause":"registry.k8s.io/pause:3.10.2","source":"table","tableFrom":"v1.36.3"},"images":[{"digest":"sha256:00","foundIn":["manifests/a.yaml"],"mediaType":"application/vnd.oci.image.index.v1+json","ref":"docker.io/library/a@sha256:00","registry":"docker.io","repository":"library/a","source":"registry","tag":null}],"manifests":{"sha256:00":"application/vnd.oci.image.index.v1+json"},"missingImages":[],"platforms":["linux/amd64"]}"#;
        let extra = contract.to_extra();
        assert_eq!(serde_json::to_string(&extra).unwrap(), want);
        assert_eq!(images(&extra).unwrap(), contract.images);
        assert_eq!(manifests(&extra).unwrap(), contract.manifests);
        assert_eq!(platforms(&extra).unwrap(), contract.platforms);
        assert_eq!(control_plane(&extra).unwrap(), Some(contract.control_plane.clone()));
        assert_eq!(recorded_pause(&extra).unwrap().as_deref(), Some("registry.k8s.io/pause:3.10.2"));
    }

    #[test]
    fn absent_keys_are_empty_and_wrong_ones_are_named() {
        let mut extra = Map::new();
        assert!(images(&extra).unwrap().is_empty() && launch_steps(&extra).unwrap().is_empty());
        assert_eq!(control_plane(&extra).unwrap(), None);
        assert_eq!(recorded_pause(&extra).unwrap(), None);
        extra.insert("images".into(), json!({"ref": "x"}));
        extra.insert("manifests".into(), json!(["x"]));
        let e = images(&extra).unwrap_err().to_string();
        assert!(e.starts_with("the index's metadata.images is not a list of image records: "), "{e}");
        let e = manifests(&extra).unwrap_err().to_string();
        assert!(e.starts_with("the index's metadata.manifests is not a digest → media type map: "), "{e}");
        extra.insert("controlPlaneImages".into(), json!({"pause": 3}));
        assert!(recorded_pause(&extra).unwrap_err().to_string().contains("controlPlaneImages.pause is 3"));
    }

    #[test]
    fn older_image_records_without_the_descriptive_fields_still_read() {
        let mut extra = Map::new();
        extra.insert(
            "images".into(),
            json!([{"ref": "q.io/a:1", "registry": "q.io", "repository": "a", "tag": "1", "digest": "sha256:1"}]),
        );
        let i = images(&extra).unwrap();
        assert_eq!((i[0].tag.as_deref(), i[0].found_in.len()), (Some("1"), 0));
    }
}
