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
use super::oci_layout::{Files, OciLayout};
use super::store::Slice;
use ferry_core::image_ref::ImageRef;
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

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

impl DockerArchive {
    /// Opens and indexes the tar.
    pub fn open(path: &Path, shown: &str) -> Result<DockerArchive, String> {
        if path.is_dir() {
            return Err(format!(
                "{shown}: {} is a directory; docker-archive: takes the tar `docker save` writes",
                path.display()
            ));
        }
        let files = Files::open(path).map_err(|e| e.to_string())?;
        if files.has("oci-layout") && files.has("index.json") {
            return Ok(DockerArchive::Oci(OciLayout::from_files(files, shown).map_err(|e| e.to_string())?));
        }
        let manifest = files
            .read("manifest.json", 64 << 20)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{shown} is not `docker save` output: it has no manifest.json"))?;
        let entries: Vec<LegacyEntry> = serde_json::from_slice(&manifest)
            .map_err(|e| format!("{shown}: manifest.json is not docker save's: {e}"))?;
        Ok(DockerArchive::Legacy { files, entries, shown: shown.to_string() })
    }

    /// The legacy entry whose `RepoTags` names `image`, or the only entry.
    pub fn select_legacy<'a>(
        entries: &'a [LegacyEntry],
        image: &ImageRef,
        shown: &str,
    ) -> Result<&'a LegacyEntry, String> {
        let want = image.to_string();
        let hit = entries.iter().find(|e| {
            e.repo_tags.iter().flatten().any(|t| ImageRef::parse(t).map(|r| r.to_string() == want).unwrap_or(false))
        });
        match hit {
            Some(e) => Ok(e),
            None if entries.len() == 1 => Ok(&entries[0]),
            None => {
                let tags: Vec<String> = entries.iter().flat_map(|e| e.repo_tags.clone().unwrap_or_default()).collect();
                Err(format!(
                    "{shown} holds {} images and none is tagged {want} (it has: {})",
                    entries.len(),
                    tags.join(", ")
                ))
            }
        }
    }

    /// Writes the OCI manifest of a legacy entry, hashing its config and layers.
    pub fn synthesize(
        files: &Files,
        entry: &LegacyEntry,
        shown: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Synthesized, String> {
        let mut blobs = HashMap::new();
        let config = files.locate(&entry.config).ok_or_else(|| format!("{shown} lacks the config {}", entry.config))?;
        let config_bytes = config.read(64 << 20).map_err(|e| format!("{shown}: config {}: {e}", entry.config))?;
        let config_digest = digest_of(&config_bytes);
        blobs.insert(config_digest.clone(), config.clone());
        let mut layers = Vec::new();
        for member in &entry.layers {
            let slice = files.locate(member).ok_or_else(|| format!("{shown} lacks the layer {member}"))?;
            let (digest, media) = hash_layer(&slice, progress).map_err(|e| format!("{shown}: layer {member}: {e}"))?;
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
fn hash_layer(slice: &Slice, progress: &(dyn Fn(u64) + Sync)) -> Result<(String, &'static str), String> {
    let mut r = slice.open().map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    loop {
        let n = r.read(&mut buf).map_err(|e| e.to_string())?;
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
        let e = pick("tool:2").unwrap_err();
        assert!(e.contains("none is tagged docker.io/library/tool:2") && e.contains("tool:1, quay.io/o/b:2"), "{e}");
    }
}
