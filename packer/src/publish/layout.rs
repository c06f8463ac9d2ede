//! How an installer file is laid out as an OCI artifact, and back.
//!
//! Owns the artifact's shape: the file cut into segments in file order, each either an image
//! blob the installer carries (pushed as that very blob, so a registry dedups it across releases
//! and with the images themselves), a zero run (stored as nothing: the format pads entries with
//! zeros), or a part of at most [`MAX_PART`] bytes of everything else (the program, the other
//! entries, the index, the signature). The config records the whole file's size and sha256 and
//! the segments, so `pull` can put the very same bytes back and prove it.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.ferry.installer.v1";
/// The config blob's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.ferry.installer.config.v1+json";
/// A layer that is an image blob the installer carries, byte for byte.
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.ferry.installer.blob.v1";
/// A layer that is a part of the rest of the file.
pub const PART_MEDIA_TYPE: &str = "application/vnd.ferry.installer.part.v1";
/// The largest part: registries and their proxies refuse very large blobs (Harbor's 2–32 GB
/// failures), and a part is what a broken upload resends at worst.
pub const MAX_PART: u64 = 1 << 30;

/// The artifact's config: the whole file and how its segments rebuild it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactConfig {
    /// The file's length.
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
    /// The bundle's `metadata.name`.
    pub name: String,
    /// The bundle's `metadata.version`.
    pub version: String,
    /// The segments in file order, covering `0..size` exactly.
    pub segments: Vec<Segment>,
}

/// One run of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// Where it starts.
    pub offset: u64,
    /// How long it is.
    pub length: u64,
    /// The layer holding its bytes (`sha256:…`); absent for a run of zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One layer of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:…`.
    pub digest: String,
    /// Its length.
    pub size: u64,
    /// [`BLOB_MEDIA_TYPE`] or [`PART_MEDIA_TYPE`].
    pub media_type: &'static str,
    /// Where its bytes are in the file.
    pub offset: u64,
}

/// What a push sends: the config and the distinct layers, in file order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The config.
    pub config: ArtifactConfig,
    /// The layers, each digest once.
    pub layers: Vec<Layer>,
}

/// Why a file cannot be laid out, or a config does not describe a file.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The file is not a readable installer (the cause names the file).
    #[error("{cause}")]
    Payload {
        /// The file.
        path: String,
        /// Why.
        cause: payload_format::Error,
    },
    /// Reading the file failed.
    #[error("reading {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A config that does not describe a file.
    #[error("the artifact's config is not valid: {0}")]
    BadConfig(String),
}

/// A span of the file before it is hashed.
enum Span {
    Blob { hex: String },
    Other,
}

/// Lays out the installer at `path`: reads it once, hashing the whole file and every part.
pub fn plan(path: &Path, progress: &dyn Fn(u64)) -> Result<Plan, LayoutError> {
    let shown = path.display().to_string();
    let payload =
        payload_format::Payload::open(path).map_err(|cause| LayoutError::Payload { path: shown.clone(), cause })?;
    let meta = &payload.index().metadata;
    let (name, version) = (meta.name.clone(), meta.version.clone());
    let size = payload.file_len();
    let spans = spans(&payload, size);
    let file = payload.file();
    let mut whole = sha2::Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut segments = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut done = 0u64;
    for (offset, length, span) in spans {
        // A blob's digest is its name: hashing it again here would double the work, and the
        // registry checks every blob it receives against that digest.
        let mut part = matches!(span, Span::Other).then(sha2::Sha256::new);
        let mut zero = true;
        let mut at = offset;
        while at < offset + length {
            let n = (buf.len() as u64).min(offset + length - at) as usize;
            file.read_exact_at(&mut buf[..n], at).map_err(|cause| LayoutError::Read { path: shown.clone(), cause })?;
            whole.update(&buf[..n]);
            if let Some(p) = part.as_mut() {
                p.update(&buf[..n]);
                zero = zero && buf[..n].iter().all(|&b| b == 0);
            }
            at += n as u64;
            done += n as u64;
            progress(done);
        }
        let (digest, media_type) = match (span, part) {
            (Span::Blob { hex }, _) => (format!("sha256:{hex}"), BLOB_MEDIA_TYPE),
            (Span::Other, _) if zero => {
                segments.push(Segment { offset, length, digest: None });
                continue;
            }
            (Span::Other, p) => (format!("sha256:{}", hex::encode(p.unwrap_or_default().finalize())), PART_MEDIA_TYPE),
        };
        if seen.insert(digest.clone()) {
            layers.push(Layer { digest: digest.clone(), size: length, media_type, offset });
        }
        segments.push(Segment { offset, length, digest: Some(digest) });
    }
    let config = ArtifactConfig { size, sha256: hex::encode(whole.finalize()), name, version, segments };
    Ok(Plan { config, layers })
}

/// The file cut at every image blob, the rest in parts of at most [`MAX_PART`].
fn spans(payload: &payload_format::Payload, size: u64) -> Vec<(u64, u64, Span)> {
    let blobs: Vec<(u64, u64, String)> = payload
        .index()
        .entries
        .iter()
        .filter(|e| e.compression == payload_format::Compression::Raw && e.stored_len > 0)
        .filter_map(|e| {
            let hex = e.path.strip_prefix("blobs/sha256/")?;
            let digest_like = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            digest_like.then(|| (e.offset, e.stored_len, hex.to_string()))
        })
        .collect();
    cut(blobs, size, MAX_PART)
}

/// `0..size` cut at each of `blobs` (offset, length, hex), the rest in pieces of at most
/// `max_part`.
fn cut(mut blobs: Vec<(u64, u64, String)>, size: u64, max_part: u64) -> Vec<(u64, u64, Span)> {
    blobs.sort();
    let mut out = Vec::new();
    let other = |from: u64, to: u64, out: &mut Vec<(u64, u64, Span)>| {
        let mut s = from;
        while s < to {
            let n = max_part.min(to - s);
            out.push((s, n, Span::Other));
            s += n;
        }
    };
    let mut at = 0u64;
    for (offset, len, hex) in blobs {
        // The reader refuses files whose entries overlap; a blob past the end cannot be either.
        if offset < at || offset + len > size {
            continue;
        }
        other(at, offset, &mut out);
        out.push((offset, len, Span::Blob { hex }));
        at = offset + len;
    }
    other(at, size, &mut out);
    out
}

impl ArtifactConfig {
    /// Checks that the segments cover `0..size` in order, with lengths that fit the layers
    /// `sizes` (digest → size) the manifest lists.
    pub fn check(&self, sizes: &std::collections::HashMap<String, u64>) -> Result<(), LayoutError> {
        let bad = |m: String| Err(LayoutError::BadConfig(m));
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("sha256 `{}` is not a SHA-256", self.sha256));
        }
        let mut at = 0u64;
        for s in &self.segments {
            if s.offset != at || s.length == 0 {
                return bad(format!("segment at {} does not follow the one ending at {at}", s.offset));
            }
            if let Some(d) = &s.digest {
                match sizes.get(d) {
                    Some(&n) if n == s.length => {}
                    Some(&n) => {
                        return bad(format!("segment at {} is {} bytes but layer {d} is {n}", s.offset, s.length));
                    }
                    None => return bad(format!("segment at {} names {d}, which is not a layer", s.offset)),
                }
            }
            at = at.checked_add(s.length).ok_or_else(|| LayoutError::BadConfig("segments overflow".into()))?;
        }
        if at != self.size {
            return bad(format!("the segments cover {at} bytes of {}", self.size));
        }
        Ok(())
    }
}

/// SHA-256 of everything `r` yields, lowercase hex.
pub fn sha256_hex(mut r: impl Read) -> std::io::Result<String> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shape(spans: &[(u64, u64, Span)]) -> Vec<(u64, u64, &str)> {
        spans
            .iter()
            .map(|(o, l, s)| {
                (
                    *o,
                    *l,
                    match s {
                        Span::Blob { hex } => hex.as_str(),
                        Span::Other => "-",
                    },
                )
            })
            .collect()
    }

    #[test]
    fn blobs_cut_the_file_and_the_rest_is_split_in_parts() {
        let blobs = vec![(8192, 100, "b".to_string()), (4096, 10, "a".to_string())];
        let spans = cut(blobs, 10_000, 3000);
        assert_eq!(
            shape(&spans),
            vec![
                (0, 3000, "-"),
                (3000, 1096, "-"),
                (4096, 10, "a"),
                (4106, 3000, "-"),
                (7106, 1086, "-"),
                (8192, 100, "b"),
                (8292, 1708, "-"),
            ]
        );
        let covered: u64 = spans.iter().map(|(_, l, _)| l).sum();
        assert_eq!(covered, 10_000);
    }

    fn config(segments: Vec<Segment>, size: u64) -> ArtifactConfig {
        ArtifactConfig { size, sha256: "0".repeat(64), name: "n".into(), version: "1".into(), segments }
    }

    #[test]
    fn a_config_must_cover_the_file_with_its_layers() {
        let seg = |offset, length, digest: Option<&str>| Segment { offset, length, digest: digest.map(String::from) };
        let sizes: HashMap<String, u64> = [("sha256:a".to_string(), 10)].into();
        assert!(config(vec![seg(0, 10, Some("sha256:a")), seg(10, 5, None)], 15).check(&sizes).is_ok());
        let err = |c: ArtifactConfig| c.check(&sizes).unwrap_err().to_string();
        assert!(err(config(vec![seg(0, 10, Some("sha256:a"))], 15)).contains("cover 10 bytes of 15"));
        assert!(err(config(vec![seg(0, 10, Some("sha256:a")), seg(11, 4, None)], 15)).contains("does not follow"));
        assert!(err(config(vec![seg(0, 9, Some("sha256:a"))], 9)).contains("layer sha256:a is 10"));
        assert!(err(config(vec![seg(0, 10, Some("sha256:b"))], 10)).contains("not a layer"));
        let mut bad = config(vec![seg(0, 10, None)], 10);
        bad.sha256 = "xyz".into();
        assert!(err(bad).contains("not a SHA-256"));
        let overflow = config(vec![seg(0, u64::MAX, None), seg(u64::MAX, 1, None)], 0);
        assert!(overflow.check(&sizes).is_err());
    }
}
