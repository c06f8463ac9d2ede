//! What the registry can serve, computed once at startup from the signed index.
//!
//! The packer's contract: every image blob is a raw entry `blobs/sha256/<hex>`; the metadata's
//! `images` lists one `ferry_core::metadata::ImageRecord` per image reference (`registry`,
//! `repository`, `tag` or null, `digest` of the top-level manifest or index); its `manifests`
//! maps every stored manifest and index digest to its media type.
//!
//! Repositories are keyed by (registry, repository), never by repository alone, so
//! `docker.io/library/app` and `quay.io/library/app` stay apart. Each repository may serve only
//! the blobs reachable from its own images: the closure is computed here by parsing the stored
//! manifests (an index's children that the bundle does not carry are skipped: those platforms
//! answer MANIFEST_UNKNOWN).

use super::integrity::VerifiedFile;
use ferry_core::image_ref::normalize_domain;
use ferry_core::metadata::MetadataError;
use ferry_core::{metadata, oci};
use payload_format::{Compression, EntryKind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use ferry_core::image_ref::is_sha256_digest;
pub use ferry_core::metadata::ImageRecord;
pub use ferry_core::oci::is_index_type;

/// Index of a blob in [`Store::blobs`].
pub type BlobId = u32;

/// Where a blob's bytes lie in the installer.
#[derive(Clone, Debug)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Absolute file offset.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// For manifests and indexes: the exact media type to send as Content-Type.
    pub media_type: Option<String>,
}

/// One repository of one registry.
#[derive(Debug, Default)]
pub struct Repo {
    /// Registry domain, e.g. `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub name: String,
    /// Tag → blob id of the tagged manifest or index.
    pub tags: BTreeMap<String, BlobId>,
    /// Every blob (manifests, configs, layers) reachable from this repository's images.
    pub reachable: HashSet<BlobId>,
    /// The top-level manifest or index of every image of this repository, tagged or pinned by
    /// digest.
    pub images: BTreeSet<BlobId>,
}

/// Everything the registry serves.
#[derive(Debug, Default)]
pub struct Store {
    /// Blobs by id.
    pub blobs: Vec<Blob>,
    by_digest: HashMap<String, BlobId>,
    /// Repositories by (registry, repository).
    pub repos: BTreeMap<(String, String), Repo>,
    /// Repository name → registries that carry it.
    by_name: HashMap<String, BTreeSet<String>>,
    /// Manifest or index → the stored blobs it references (children, config, layers).
    children: HashMap<BlobId, Vec<BlobId>>,
    /// Problems found while building (missing blobs, corrupt manifests); printed at startup.
    pub warnings: Vec<String>,
}

/// The parts of a manifest or index that reachability needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

impl Store {
    /// Builds the store from the payload's index, reading (and so verifying) every manifest.
    pub fn build(file: &VerifiedFile) -> Result<Store, MetadataError> {
        let extra = &file.payload().index().metadata.extra;
        let mut store = Store::default();
        store.add_blobs(file);
        store.add_media_types(&metadata::manifests(extra)?);
        store.add_images(file, &metadata::images(extra)?);
        Ok(store)
    }

    /// Every servable `blobs/sha256/<hex>` entry of the index.
    fn add_blobs(&mut self, file: &VerifiedFile) {
        for e in &file.payload().index().entries {
            let Some(hex) = e.path.strip_prefix("blobs/sha256/") else { continue };
            let digest = format!("sha256:{hex}");
            if e.kind != EntryKind::File || !is_sha256_digest(&digest) {
                continue;
            }
            if e.compression != Compression::Raw {
                // The contract stores blobs raw so they are servable slices; a compressed one
                // would need a decompressing path nobody asked for.
                self.warnings.push(format!("{}: stored compressed, cannot be served; rebuild the installer", e.path));
                continue;
            }
            let id = self.blobs.len() as BlobId;
            self.by_digest.insert(digest.clone(), id);
            self.blobs.push(Blob { digest, offset: e.offset, size: e.size, media_type: None });
        }
    }

    /// The media types the metadata records for manifests and indexes (sent as Content-Type).
    fn add_media_types(&mut self, manifests: &BTreeMap<String, String>) {
        for (digest, media_type) in manifests {
            match self.by_digest.get(digest) {
                Some(&id) => self.blobs[id as usize].media_type = Some(media_type.clone()),
                None => self.warnings.push(format!("manifest {digest} is listed in the index but not stored")),
            }
        }
    }

    /// A repository per image's (registry, repository), with its tags and reachable blobs.
    fn add_images(&mut self, file: &VerifiedFile, images: &[ImageRecord]) {
        // Parse every manifest reachable from an image once, and remember its children.
        let mut children = std::mem::take(&mut self.children);
        for image in images {
            let registry = normalize_domain(&image.registry);
            let key = (registry.clone(), image.repository.clone());
            let Some(&top) = self.by_digest.get(&image.digest) else {
                self.warnings.push(format!(
                    "image {}: its manifest {} is not stored; it cannot be pulled",
                    image.reference, image.digest
                ));
                continue;
            };
            let reachable = self.closure(file, top, &mut children);
            self.by_name.entry(image.repository.clone()).or_default().insert(registry.clone());
            let repo = self.repos.entry(key).or_insert_with(|| Repo {
                registry,
                name: image.repository.clone(),
                ..Default::default()
            });
            if let Some(tag) = &image.tag {
                repo.tags.insert(tag.clone(), top);
            }
            repo.images.insert(top);
            repo.reachable.extend(reachable);
        }
        self.children = children;
    }

    /// Every blob reachable from manifest `top` (itself included), parsing manifests as needed.
    fn closure(
        &mut self,
        file: &VerifiedFile,
        top: BlobId,
        children: &mut HashMap<BlobId, Vec<BlobId>>,
    ) -> HashSet<BlobId> {
        let mut seen = HashSet::new();
        let mut todo = vec![top];
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            if self.blobs[id as usize].media_type.is_none() && id != top {
                continue; // a config or layer: a leaf
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = children.entry(id) {
                slot.insert(self.parse_manifest(file, id));
            }
            todo.extend(children[&id].iter().copied());
        }
        seen
    }

    /// Reads and parses one manifest or index, returning the stored blobs it references.
    fn parse_manifest(&mut self, file: &VerifiedFile, id: BlobId) -> Vec<BlobId> {
        let blob = self.blobs[id as usize].clone();
        let hex = blob.digest.trim_start_matches("sha256:");
        let (a, b) = (blob.offset, blob.offset + blob.size);
        let bytes = match file.verify_blob(blob.offset, blob.size, hex, a, b) {
            Ok(()) => file.slice(a, b),
            Err(e) => {
                self.warnings.push(format!("manifest {}: {e}", blob.digest));
                return Vec::new();
            }
        };
        let doc: ManifestDoc = match serde_json::from_slice(&bytes) {
            Ok(d) => d,
            Err(e) => {
                self.warnings.push(format!("manifest {} is not valid JSON: {e}", blob.digest));
                return Vec::new();
            }
        };
        if blob.media_type.is_none() {
            // Not in metadata.manifests (an older or hand-made payload): trust the document.
            let guessed = doc
                .media_type
                .clone()
                .unwrap_or_else(|| if doc.manifests.is_some() { oci::OCI_INDEX } else { oci::OCI_MANIFEST }.into());
            self.blobs[id as usize].media_type = Some(guessed);
        }
        let mut out = Vec::new();
        let is_index = doc.manifests.is_some();
        let descriptors = doc
            .manifests
            .iter()
            .flatten()
            .chain(doc.config.iter())
            .chain(doc.layers.iter().flatten())
            .chain(doc.blobs.iter().flatten());
        for d in descriptors {
            match self.by_digest.get(&d.digest) {
                Some(&child) => {
                    if is_index && self.blobs[child as usize].media_type.is_none() {
                        self.blobs[child as usize].media_type =
                            Some(d.media_type.clone().unwrap_or_else(|| oci::OCI_MANIFEST.into()));
                    }
                    out.push(child);
                }
                // An index's child for a platform the bundle does not carry: expected.
                None if is_index => {}
                // Foreign (non-distributable) layers are fetched from their URLs, not from us.
                None if d.urls.as_ref().is_some_and(|u| !u.is_empty()) => {}
                None => self
                    .warnings
                    .push(format!("manifest {} references {}, which the bundle lacks", blob.digest, d.digest)),
            }
        }
        out
    }

    /// The blob with this digest, if stored.
    pub fn blob_id(&self, digest: &str) -> Option<BlobId> {
        self.by_digest.get(digest).copied()
    }

    /// The stored blobs manifest or index `id` references, in document order (an index's
    /// children the bundle does not carry are absent); empty for a config or layer.
    pub fn children(&self, id: BlobId) -> &[BlobId] {
        self.children.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Whether blob `id` is a manifest or an index (it has a media type to be served with).
    pub fn is_manifest(&self, id: BlobId) -> bool {
        self.blobs[id as usize].media_type.is_some()
    }

    /// The blob with this id.
    pub fn blob(&self, id: BlobId) -> &Blob {
        &self.blobs[id as usize]
    }

    /// Registries that carry a repository of this name.
    pub fn registries_of(&self, name: &str) -> Vec<String> {
        self.by_name.get(name).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// The repository `registry`/`name`.
    pub fn repo(&self, registry: &str, name: &str) -> Option<&Repo> {
        self.repos.get(&(registry.to_string(), name.to_string()))
    }

    /// Every registry in the bundle.
    pub fn registries(&self) -> BTreeSet<String> {
        self.repos.keys().map(|(r, _)| r.clone()).collect()
    }

    /// Number of distinct images (tags and digest pins) by repository.
    pub fn summary(&self) -> (usize, usize, usize) {
        let tags = self.repos.values().map(|r| r.tags.len()).sum();
        (self.repos.len(), tags, self.blobs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_registries() {
        assert!(is_sha256_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_sha256_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_sha256_digest("sha256:abc"));
        assert!(!is_sha256_digest(&format!("sha512:{}", "a".repeat(64))));
        assert_eq!(normalize_domain("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_domain("Quay.io"), "quay.io");
        assert_eq!(normalize_domain("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
