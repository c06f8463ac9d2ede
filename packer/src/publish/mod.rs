//! `ferry push` and `ferry pull`: an installer kept in an OCI registry (Harbor, distribution,
//! zot…) as one artifact, and fetched back byte for byte.
//!
//! [`layout`] owns how the file maps onto the artifact, [`push`] and [`pull`] the two
//! directions (one repository over the distribution API is `ferry_distribution::remote`). The image blobs an installer
//! carries are pushed as those very blobs (same digests), so a registry stores each once across
//! releases and skips what it has; everything else goes in parts of at most 1 GiB.

pub mod layout;
pub mod pull;
pub mod push;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The OCI image manifest media type, which carries artifacts too.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The part of an OCI image manifest a ferry artifact uses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    #[serde(default)]
    pub media_type: String,
    /// [`layout::ARTIFACT_TYPE`] for an installer.
    #[serde(default)]
    pub artifact_type: String,
    /// The config blob.
    pub config: ManifestDescriptor,
    /// The layers.
    pub layers: Vec<ManifestDescriptor>,
    /// Annotations (title, version, the file's sha256).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A descriptor in a manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDescriptor {
    /// Its media type.
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Its length.
    pub size: u64,
}
