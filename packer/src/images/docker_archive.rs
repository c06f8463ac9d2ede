//! `docker save` tarballs, both layouts:
//!
//! * moby ≥ 25 writes an OCI image layout (plus `manifest.json`): read as such;
//! * older engines write `manifest.json` (`Config`, `RepoTags`, `Layers`) with `<id>/layer.tar`
//!   members and no registry manifest at all: ferry writes one OCI image manifest for it (config
//!   and layers referenced by their sha256, layers as the uncompressed tars they are).
//!
//! Either way the image's digests are not the registry's (Docker regenerates manifests and
//! stores layers uncompressed), so `name@sha256:…` references to the registry's image will not
//! resolve against it. The packer warns about that.

use super::oci::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST, digest_of};
use super::oci_layout::{Files, LayoutError, OciLayout};
use super::store::{Slice, StoreError};
use ferry_core::image_ref::ImageRef;
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One image of a legacy `manifest.json`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LegacyEntry {
    /// Member holding the image config.
    pub config: String,
    /// `name:tag` strings.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Members holding the layer tars, base first.
    pub layers: Vec<String>,
}

/// An opened docker archive.
pub enum DockerArchive {
    /// moby ≥ 25: an OCI layout.
    Oci(OciLayout),
    /// Older engines.
    Legacy {
        /// The tar's members.
        files: Files,
        /// `manifest.json`.
        entries: Vec<LegacyEntry>,
        /// As written in the spec.
        shown: String,
    },
}

/// An image manifest written for a legacy archive, with where its blobs are.
pub struct Synthesized {
    /// The manifest bytes (an OCI image manifest).
    pub manifest: Vec<u8>,
    /// Config and layers by digest, each already hashed.
    pub blobs: HashMap<String, Slice>,
}

/// A `docker save` tar that cannot be read as one.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A directory where the tar belongs.
    #[error("{shown}: {} is a directory; docker-archive: takes the tar `docker save` writes", path.display())]
    Directory {
        /// The source as written in the spec.
        shown: String,
        /// The directory.
        path: PathBuf,
    },
    /// The tar (or the OCI layout inside it) cannot be read.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// No `manifest.json`.
    #[error("{0} is not `docker save` output: it has no manifest.json")]
    NoManifest(String),
    /// A `manifest.json` of another shape.
    #[error("{shown}: manifest.json is not docker save's: {source}")]
    BadManifest {
        /// The source as written in the spec.
        shown: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Several images and none tagged as the reference.
    #[error("{shown} holds {count} images and none is tagged {want} (it has: {tags})")]
    NotTagged {
        /// The source as written in the spec.
        shown: String,
        /// Images in the tar.
        count: usize,
        /// The reference.
        want: String,
        /// The tags it has.
        tags: String,
    },
    /// A member `manifest.json` names is not in the tar.
    #[error("{shown} lacks the {what} {member}")]
    Missing {
        /// The source as written in the spec.
        shown: String,
        /// `config` or `layer`.
        what: &'static str,
        /// The member.
        member: String,
    },
    /// The config cannot be read.
    #[error("{shown}: config {member}: {source}")]
    Config {
        /// The source as written in the spec.
        shown: String,
        /// The member.
        member: String,
        /// Why (boxed: it holds paths and an I/O error, and errors should stay small).
        source: Box<StoreError>,
    },
    /// A layer cannot be read.
    #[error("{shown}: layer {member}: {source}")]
    Layer {
        /// The source as written in the spec.
        shown: String,
        /// The member.
        member: String,
        /// Why.
        source: std::io::Error,
    },
}

impl DockerArchive {
    /// Opens and indexes the tar.
    pub fn open(path: &Path, shown: &str) -> Result<DockerArchive, ArchiveError> {
        if path.is_dir() {
            return Err(ArchiveError::Directory { shown: shown.to_string(), path: path.to_path_buf() });
        }
        let files = Files::open(path)?;
        if files.has("oci-layout") && files.has("index.json") {
            return Ok(DockerArchive::Oci(OciLayout::from_files(files, shown)?));
        }
        let manifest =
            files.read("manifest.json", 64 << 20)?.ok_or_else(|| ArchiveError::NoManifest(shown.to_string()))?;
        let entries: Vec<LegacyEntry> = serde_json::from_slice(&manifest)
            .map_err(|source| ArchiveError::BadManifest { shown: shown.to_string(), source })?;
        Ok(DockerArchive::Legacy { files, entries, shown: shown.to_string() })
    }

    /// The legacy entry whose `RepoTags` names `image`, or the only entry.
    pub fn select_legacy<'a>(
        entries: &'a [LegacyEntry],
        image: &ImageRef,
        shown: &str,
    ) -> Result<&'a LegacyEntry, ArchiveError> {
        let want = image.to_string();
        let hit = entries.iter().find(|e| {
            e.repo_tags.iter().flatten().any(|t| ImageRef::parse(t).map(|r| r.to_string() == want).unwrap_or(false))
        });
        match hit {
            Some(e) => Ok(e),
            None if entries.len() == 1 => Ok(&entries[0]),
            None => {
                let tags: Vec<String> = entries.iter().flat_map(|e| e.repo_tags.clone().unwrap_or_default()).collect();
                Err(ArchiveError::NotTagged {
                    shown: shown.to_string(),
                    count: entries.len(),
                    want,
                    tags: tags.join(", "),
                })
            }
        }
    }

    /// Writes the OCI manifest of a legacy entry, hashing its config and layers.
    pub fn synthesize(
        files: &Files,
        entry: &LegacyEntry,
        shown: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Synthesized, ArchiveError> {
        let mut blobs = HashMap::new();
        let missing =
            |what, member: &str| ArchiveError::Missing { shown: shown.to_string(), what, member: member.into() };
        let config = files.locate(&entry.config).ok_or_else(|| missing("config", &entry.config))?;
        let config_bytes = config.read(64 << 20).map_err(|source| ArchiveError::Config {
            shown: shown.to_string(),
            member: entry.config.clone(),
            source: Box::new(source),
        })?;
        let config_digest = digest_of(&config_bytes);
        blobs.insert(config_digest.clone(), config.clone());
        let mut layers = Vec::new();
        for member in &entry.layers {
            let slice = files.locate(member).ok_or_else(|| missing("layer", member))?;
            let (digest, media) = hash_layer(&slice, progress).map_err(|source| ArchiveError::Layer {
                shown: shown.to_string(),
                member: member.clone(),
                source,
            })?;
            layers.push(serde_json::json!({"mediaType": media, "digest": digest, "size": slice.size}));
            blobs.insert(digest, slice);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.size},
            "layers": layers,
        });
        Ok(Synthesized { manifest: serde_json::to_vec(&manifest).expect("plain JSON"), blobs })
    }
}

/// The layer's digest and media type (by its first bytes: gzip, zstd or plain tar).
fn hash_layer(slice: &Slice, progress: &(dyn Fn(u64) + Sync)) -> std::io::Result<(String, &'static str)> {
    let mut r = slice.open()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < 4 {
            head.extend_from_slice(&buf[..n.min(4)]);
        }
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    let media = if head.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER_TAR
    };
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), media))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_selection() {
        let entries: Vec<LegacyEntry> = serde_json::from_str(
            r#"[{"Config":"a.json","RepoTags":["tool:1"],"Layers":["x/layer.tar"]},{"Config":"b.json","RepoTags":["quay.io/o/b:2"],"Layers":[]}]"#,
        )
        .unwrap();
        let pick =
            |r: &str| DockerArchive::select_legacy(&entries, &ImageRef::parse(r).unwrap(), "docker-archive:t.tar");
        assert_eq!(pick("docker.io/library/tool:1").unwrap().config, "a.json");
        assert_eq!(pick("quay.io/o/b:2").unwrap().config, "b.json");
        let e = pick("tool:2").unwrap_err().to_string();
        assert!(e.contains("none is tagged docker.io/library/tool:2") && e.contains("tool:1, quay.io/o/b:2"), "{e}");
    }
}
