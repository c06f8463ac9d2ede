//! The parts of the OCI image spec (and Docker's schema 2) the packer reads: media types,
//! descriptors, indexes, manifests and platforms. Parsing is lenient about fields it does not
//! need, because the bytes are stored as published and never re-serialised.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

pub use ferry_core::oci::{
    DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR,
    OCI_LAYER_ZSTD, OCI_MANIFEST,
};

/// containerd refuses manifests larger than this; so does the packer.
pub const MAX_MANIFEST_LEN: u64 = 4 * 1048 * 1048;

/// A content descriptor.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    #[serde(default)]
    pub media_type: Option<String>,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size of the target in bytes.
    pub size: u64,
    /// For index entries.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (tags in `index.json` of OCI layouts).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An index or manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexDoc {
    /// The children.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What a manifest-like document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An index or manifest list.
    Index,
    /// An image manifest.
    Manifest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Why bytes are not a manifest or index ferry can store.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// Not JSON.
    #[error("it is not a JSON manifest ({0})")]
    NotJson(#[source] serde_json::Error),
    /// Docker schema 1.
    #[error(
        "it is a Docker schema 1 manifest, which is deprecated and not supported; re-push the image with a current client"
    )]
    Schema1,
    /// A media type of something else.
    #[error("media type `{0}` is not an image manifest or index")]
    MediaType(String),
    /// JSON of another shape.
    #[error("it is neither an image manifest nor an index")]
    Shape,
}

/// A platform that is not `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform `{0}` must be os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm/v7")]
pub struct PlatformError(pub String);

/// Decides what `bytes` are and which media type they are served with. The document's own
/// `mediaType` wins, then `declared` (the registry's `Content-Type` or the referring
/// descriptor's type), then the shape of the JSON.
pub fn classify(bytes: &[u8], declared: Option<&str>) -> Result<(Kind, String), ClassifyError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(ClassifyError::NotJson)?;
    if probe.schema_version == Some(1) {
        return Err(ClassifyError::Schema1);
    }
    let declared = declared.map(|d| d.split(';').next().unwrap_or(d).trim()).filter(|d| !d.is_empty());
    let media = probe.media_type.as_deref().or(declared.filter(|d| kind_of(d).is_some()));
    let kind = match media.and_then(kind_of) {
        Some(k) => k,
        None => match media {
            Some(m) => return Err(ClassifyError::MediaType(m.to_string())),
            None if probe.manifests.is_some() => Kind::Index,
            None if probe.config.is_some() => Kind::Manifest,
            None => return Err(ClassifyError::Shape),
        },
    };
    let media = media.map(String::from).unwrap_or_else(|| match kind {
        Kind::Index => OCI_INDEX.to_string(),
        Kind::Manifest => OCI_MANIFEST.to_string(),
    });
    Ok((kind, media))
}

fn kind_of(media: &str) -> Option<Kind> {
    match media {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// `os/arch[/variant]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v7`, `v8`, …
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(v.to_string()) })
            }
            _ => Err(PlatformError(s.to_string())),
        }
    }

    /// The platform of the machine running the packer.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform { os: "linux".into(), architecture: arch.into(), variant: None }
    }

    /// Whether an image built for `image` satisfies this requested platform. A request without a
    /// variant takes any variant; `arm64` images without a variant are `v8`.
    pub fn accepts(&self, image: &Platform) -> bool {
        if self.os != image.os || self.architecture != image.architecture {
            return false;
        }
        match (&self.variant, &image.variant) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform fields of an image config.
#[derive(Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

/// The platform an image config declares, when it declares one.
pub fn config_platform(config: &[u8]) -> Option<Platform> {
    let c: ConfigPlatform = serde_json::from_slice(config).ok()?;
    Some(Platform { os: c.os?, architecture: c.architecture?, variant: c.variant })
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(payload_format::sha256(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_prefers_the_document() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert_eq!(classify(idx, Some("application/json")).unwrap(), (Kind::Index, DOCKER_LIST.into()));
        let bare = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(classify(bare, Some(OCI_INDEX)).unwrap().0, Kind::Index);
        assert_eq!(classify(bare, Some("text/plain")).unwrap(), (Kind::Index, OCI_INDEX.into()));
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[]}"#;
        assert_eq!(
            classify(m, Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8")).unwrap(),
            (Kind::Manifest, OCI_MANIFEST.into())
        );
        assert!(classify(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err().to_string().contains("schema 1"));
        assert!(classify(b"not json", None).is_err());
        assert!(classify(br#"{"mediaType":"application/vnd.oci.image.layer.v1.tar"}"#, None).is_err());
    }

    #[test]
    fn platforms() {
        let amd = Platform::parse("linux/amd64").unwrap();
        assert!(amd.accepts(&Platform::parse("linux/amd64").unwrap()));
        assert!(!amd.accepts(&Platform::parse("linux/arm64").unwrap()));
        assert!(!amd.accepts(&Platform::parse("windows/amd64").unwrap()));
        let arm = Platform::parse("linux/arm64").unwrap();
        assert!(arm.accepts(&Platform::parse("linux/arm64/v8").unwrap()));
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(v8.accepts(&Platform::parse("linux/arm64").unwrap()));
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(!v7.accepts(&Platform::parse("linux/arm/v6").unwrap()));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!(Platform::parse("amd64").is_err());
        assert!(Platform::parse("linux/AMD64").is_err());
        assert_eq!(config_platform(br#"{"os":"linux","architecture":"amd64"}"#), Some(amd));
    }
}
