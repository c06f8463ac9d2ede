//! The index: every entry, the chunk digests of the data region, the stub digest and the
//! bundle's metadata. Decoding never allocates by a count it has not checked against the bytes
//! actually present.

use crate::{Digest, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

const INDEX_MAGIC: [u8; 4] = *b"FIDX";
/// Upper bound on index size a reader accepts (a 20 GB installer needs well under 2 MiB).
pub(crate) const MAX_INDEX_LEN: u64 = 256 << 20;
const MAX_METADATA_LEN: usize = 64 << 20;
/// Smallest possible encoded entry, used to bound `entry_count` before allocating.
const MIN_ENTRY_LEN: usize = 2 + 1 + 1 + 4 + 8 + 8 + 8 + 2;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file with data.
    File,
    /// A directory.
    Dir,
    /// A symbolic link whose target stays inside its tree.
    Symlink,
}

/// How an entry's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as-is: the entry is a plain slice of the file.
    Raw,
    /// Independent zstd frames, each holding `frame_size` uncompressed bytes (the last may hold fewer).
    Zstd,
}

/// One entry of the table of contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Slash-separated relative path, e.g. `rootfs/usr/bin/kubeadm` or `blobs/sha256/<hex>`.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (never setuid or setgid).
    pub mode: u32,
    /// Storage method.
    pub compression: Compression,
    /// Absolute file offset of the stored bytes (a multiple of 4096 for non-empty files).
    pub offset: u64,
    /// Number of stored bytes.
    pub stored_len: u64,
    /// Uncompressed size.
    pub size: u64,
    /// Symlink target (empty otherwise).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub link_target: String,
    /// For zstd entries: uncompressed bytes per frame.
    #[serde(skip)]
    pub frame_size: u32,
    /// For zstd entries: stored length of each frame, in order.
    #[serde(skip)]
    pub frames: Vec<u32>,
}

impl Entry {
    /// Whether `other` describes the same stored bytes at (possibly) another offset: the same
    /// path, kind, mode, storage, sizes and frames. Only the chunk digests of the file holding
    /// them say whether the bytes themselves are the same.
    pub fn same_shape(&self, other: &Entry) -> bool {
        self.path == other.path
            && self.kind == other.kind
            && self.mode == other.mode
            && self.compression == other.compression
            && self.stored_len == other.stored_len
            && self.size == other.size
            && self.link_target == other.link_target
            && self.frame_size == other.frame_size
            && self.frames == other.frames
    }

    /// Stored byte range of frame `i` of a zstd entry, as absolute file offsets.
    pub fn frame_range(&self, i: usize) -> (u64, u64) {
        let start = self.offset + self.frames[..i].iter().map(|&f| f as u64).sum::<u64>();
        (start, start + self.frames[i] as u64)
    }
}

/// Facts about the bundle shown by `inspect`. Later format users add fields through `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BundleMetadata {
    /// `metadata.name` of the bundle.
    pub name: String,
    /// `metadata.version` of the bundle.
    pub version: String,
    /// Kubernetes version the bundle installs.
    pub kubernetes_version: String,
    /// Build time, seconds since the Unix epoch (`SOURCE_DATE_EPOCH` when set).
    pub created: u64,
    /// The tool that wrote the file, e.g. `ferry 0.1.0`.
    pub builder: String,
    /// Everything else (images, platforms, …), kept as JSON.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The decoded index.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    /// Bytes per hashed chunk of the data region.
    pub chunk_size: u32,
    /// SHA-256 of the stub region `0..stub_len`.
    pub stub_sha256: Digest,
    /// Bundle facts.
    pub metadata: BundleMetadata,
    /// SHA-256 of each chunk of the data region, in order.
    pub chunks: Vec<Digest>,
    /// Entries, in file order.
    pub entries: Vec<Entry>,
}

fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 1,
        EntryKind::Dir => 2,
        EntryKind::Symlink => 3,
    }
}

impl Index {
    /// Encodes the index.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.chunks.len() * 32 + self.entries.len() * 96);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.stub_sha256);
        let meta = serde_json::to_vec(&self.metadata).expect("metadata is plain JSON");
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.path.len() as u16).to_le_bytes());
            out.extend_from_slice(e.path.as_bytes());
            out.push(kind_code(e.kind));
            out.push(match e.compression {
                Compression::Raw => 0,
                Compression::Zstd => 1,
            });
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.stored_len.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&(e.link_target.len() as u16).to_le_bytes());
            out.extend_from_slice(e.link_target.as_bytes());
            if e.compression == Compression::Zstd {
                out.extend_from_slice(&e.frame_size.to_le_bytes());
                out.extend_from_slice(&(e.frames.len() as u32).to_le_bytes());
                for f in &e.frames {
                    out.extend_from_slice(&f.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes an index and checks it against the regions the trailer declares.
    ///
    /// `data` is `data_offset..index_offset`; every entry must lie inside it and the chunk table
    /// must cover it exactly.
    pub fn decode(bytes: &[u8], data: (u64, u64), path: &Path) -> Result<Index> {
        let corrupt = |detail: String| Error::Corrupt { path: path.into(), region: "index", detail };
        let mut r = Cursor { bytes, pos: 0 };
        let magic = r.take(4).ok_or_else(|| corrupt("too short".into()))?;
        if magic != INDEX_MAGIC {
            return Err(corrupt("wrong index magic".into()));
        }
        let short = || corrupt("ends early".into());
        let chunk_size = r.u32().ok_or_else(short)?;
        if !(4096..=(1 << 30)).contains(&chunk_size) {
            return Err(corrupt(format!("chunk size {chunk_size} out of range")));
        }
        let stub_sha256: Digest = r.take(32).ok_or_else(short)?.try_into().unwrap();
        let meta_len = r.u32().ok_or_else(short)? as usize;
        if meta_len > MAX_METADATA_LEN {
            return Err(corrupt(format!("metadata length {meta_len} is too large")));
        }
        let meta = r.take(meta_len).ok_or_else(short)?;
        let metadata: BundleMetadata =
            serde_json::from_slice(meta).map_err(|e| corrupt(format!("metadata is not valid: {e}")))?;
        let chunk_count = r.u64().ok_or_else(short)?;
        let (data_start, data_end) = data;
        let expected_chunks = (data_end - data_start).div_ceil(chunk_size as u64);
        if chunk_count != expected_chunks {
            return Err(corrupt(format!("{chunk_count} chunk digests for a data region needing {expected_chunks}")));
        }
        if chunk_count > (r.remaining() / 32) as u64 {
            return Err(short());
        }
        let mut chunks = Vec::with_capacity(chunk_count as usize);
        for _ in 0..chunk_count {
            chunks.push(r.take(32).ok_or_else(short)?.try_into().unwrap());
        }
        let entry_count = r.u32().ok_or_else(short)? as usize;
        if entry_count > r.remaining() / MIN_ENTRY_LEN {
            return Err(corrupt(format!("{entry_count} entries cannot fit in the index")));
        }
        let mut entries = Vec::with_capacity(entry_count);
        for n in 0..entry_count {
            let e = decode_entry(&mut r, data).map_err(|d| corrupt(format!("entry {n}: {d}")))?;
            entries.push(e);
        }
        if r.remaining() != 0 {
            return Err(corrupt(format!("{} unexpected bytes after the last entry", r.remaining())));
        }
        Ok(Index { chunk_size, stub_sha256, metadata, chunks, entries })
    }

    /// Looks an entry up by exact path.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Sum of uncompressed sizes of all files.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Sum of stored sizes of all files.
    pub fn total_stored(&self) -> u64 {
        self.entries.iter().map(|e| e.stored_len).sum()
    }
}

fn decode_entry(r: &mut Cursor<'_>, (data_start, data_end): (u64, u64)) -> std::result::Result<Entry, String> {
    let short = || "ends early".to_string();
    let path_len = r.u16().ok_or_else(short)? as usize;
    let path = r.take(path_len).ok_or_else(short)?;
    let path = std::str::from_utf8(path).map_err(|_| "path is not UTF-8".to_string())?.to_string();
    check_entry_path(&path)?;
    let kind = match r.u8().ok_or_else(short)? {
        1 => EntryKind::File,
        2 => EntryKind::Dir,
        3 => EntryKind::Symlink,
        k => return Err(format!("{path}: unknown kind {k}")),
    };
    let compression = match r.u8().ok_or_else(short)? {
        0 => Compression::Raw,
        1 => Compression::Zstd,
        c => return Err(format!("{path}: unknown compression {c}")),
    };
    let mode = r.u32().ok_or_else(short)?;
    if mode & !0o1777 != 0 {
        return Err(format!("{path}: mode {mode:o} is not allowed (setuid, setgid or type bits)"));
    }
    let offset = r.u64().ok_or_else(short)?;
    let stored_len = r.u64().ok_or_else(short)?;
    let size = r.u64().ok_or_else(short)?;
    let target_len = r.u16().ok_or_else(short)? as usize;
    let target = r.take(target_len).ok_or_else(short)?;
    let link_target = std::str::from_utf8(target).map_err(|_| format!("{path}: link target is not UTF-8"))?.to_string();
    let mut entry = Entry {
        path,
        kind,
        mode,
        compression,
        offset,
        stored_len,
        size,
        link_target,
        frame_size: 0,
        frames: Vec::new(),
    };
    if kind != EntryKind::File && (stored_len != 0 || size != 0) {
        return Err(format!("{}: a directory or symlink with data", entry.path));
    }
    if kind != EntryKind::Symlink && !entry.link_target.is_empty() {
        return Err(format!("{}: a link target on a non-symlink", entry.path));
    }
    if stored_len > 0 {
        let end = offset.checked_add(stored_len).ok_or_else(|| format!("{}: offset overflows", entry.path))?;
        if offset < data_start || end > data_end || offset % crate::ALIGN != 0 {
            return Err(format!("{}: stored bytes {offset}..{end} lie outside the data region", entry.path));
        }
    }
    match compression {
        Compression::Raw => {
            if stored_len != size {
                return Err(format!("{}: raw entry with stored length {stored_len} != size {size}", entry.path));
            }
        }
        Compression::Zstd => {
            entry.frame_size = r.u32().ok_or_else(short)?;
            let count = r.u32().ok_or_else(short)? as usize;
            if entry.frame_size == 0 || count as u64 != size.div_ceil(entry.frame_size as u64) {
                return Err(format!(
                    "{}: {count} frames of {} bytes cannot hold {size} bytes",
                    entry.path, entry.frame_size
                ));
            }
            if count > r.remaining() / 4 {
                return Err(short());
            }
            entry.frames = (0..count).map(|_| r.u32().unwrap()).collect();
            let sum: u64 = entry.frames.iter().map(|&f| f as u64).sum();
            if sum != stored_len {
                return Err(format!("{}: frames hold {sum} bytes, entry stores {stored_len}", entry.path));
            }
        }
    }
    Ok(entry)
}

/// Checks that an entry path is relative, normalised and cannot escape a destination directory.
pub(crate) fn check_entry_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') || path.contains('\0') {
        return Err(format!("path {path:?} is not a relative path"));
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("path {path:?} has an empty, `.` or `..` component"));
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        Index {
            chunk_size: 4096,
            stub_sha256: [1; 32],
            metadata: BundleMetadata { name: "demo".into(), version: "0.1.0".into(), ..Default::default() },
            chunks: vec![[2; 32], [3; 32]],
            entries: vec![
                Entry {
                    path: "rootfs/etc".into(),
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    compression: Compression::Raw,
                    offset: 0,
                    stored_len: 0,
                    size: 0,
                    link_target: String::new(),
                    frame_size: 0,
                    frames: vec![],
                },
                Entry {
                    path: "rootfs/etc/motd".into(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    compression: Compression::Zstd,
                    offset: 4096,
                    stored_len: 30,
                    size: 5000,
                    link_target: String::new(),
                    frame_size: 4096,
                    frames: vec![20, 10],
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let idx = sample();
        let bytes = idx.encode();
        assert_eq!(Index::decode(&bytes, (4096, 4096 + 8000), Path::new("x")).unwrap(), idx);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Index::decode(&bytes[..n], (4096, 12096), Path::new("x")).is_err());
        }
    }

    #[test]
    fn rejects_escaping_paths_and_setuid() {
        for bad in ["../x", "/etc", "a//b", "a/./b", ""] {
            assert!(check_entry_path(bad).is_err(), "{bad}");
        }
        let mut idx = sample();
        idx.entries[1].mode = 0o4755;
        assert!(Index::decode(&idx.encode(), (4096, 12096), Path::new("x")).is_err());
    }
}
