//! Differential installers: a file carrying only what an older installer (its base) lacks, and
//! the complete installer put back together from the two.
//!
//! A delta is an ordinary installer: the same program, the same format, its own signature. Its
//! data region holds the complete installer's entries that the base does not hold with the very
//! same stored bytes (compared by SHA-256, never by name or tag alone), plus one entry,
//! [`TAIL_ENTRY`], holding the complete installer's index, signature and trailer. Its metadata
//! is the complete installer's, plus a [`DeltaRecord`] under [`METADATA_KEY`] naming the base's
//! and the complete installer's index digests.
//!
//! Completing writes every entry of the complete installer at its own offset, from the delta or
//! from the base, and checks each chunk against the complete installer's signed chunk digests as
//! it is written: the result is byte for byte the complete installer the vendor signed, or an
//! error. The base is trusted through the delta's signature alone (its index digest is signed
//! into the delta), so a base signed by a retired key still serves.

use crate::trailer::{TRAILER_LEN, Trailer};
use crate::writer::write_index_and_trailer;
use crate::{Compression, Digest, Entry, EntryKind, Error, Index, Payload, Result, SecretKey, align_up, sha256};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The metadata key of a delta's [`DeltaRecord`].
pub const METADATA_KEY: &str = "delta";
/// The delta's entry holding the complete installer's index, signature and trailer.
pub const TAIL_ENTRY: &str = "delta/complete-index";
/// Bytes copied or hashed per step.
const STEP: u64 = 8 << 20;
/// Entries a refusal names before it counts the rest.
const NAMED: usize = 12;

/// One installer as a delta names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallerRef {
    /// `metadata.name` of its bundle.
    pub name: String,
    /// `metadata.version` of its bundle.
    pub version: String,
    /// `sha256:` and the hex SHA-256 of its index: what its signature covers, through the trailer.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
}

impl InstallerRef {
    /// The reference to an opened installer.
    pub fn of(payload: &Payload) -> InstallerRef {
        let meta = &payload.index().metadata;
        InstallerRef {
            name: meta.name.clone(),
            version: meta.version.clone(),
            digest: index_digest(payload),
            size: payload.file_len(),
        }
    }
}

/// `sha256:` and the hex SHA-256 of an installer's index, which identifies the build.
pub fn index_digest(payload: &Payload) -> String {
    format!("sha256:{}", hex::encode(payload.trailer().index_sha256))
}

/// What a delta's metadata says about its lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeltaRecord {
    /// The installer this delta is completed with.
    pub base: InstallerRef,
    /// The installer it completes to.
    pub complete: InstallerRef,
    /// Entries of the complete installer.
    pub entries: u64,
    /// Of those, the entries taken from the base.
    pub from_base: u64,
    /// Stored bytes taken from the base.
    pub bytes_from_base: u64,
}

/// What writing a delta produced.
#[derive(Clone, Debug)]
pub struct DeltaSummary {
    /// The delta's length.
    pub file_len: u64,
    /// Entries the delta carries (its own tail entry not counted).
    pub carried: usize,
    /// Stored bytes of those entries.
    pub bytes_carried: u64,
    /// The lineage recorded in the delta.
    pub record: DeltaRecord,
}

/// What completing a delta wrote.
#[derive(Clone, Debug)]
pub struct CompleteSummary {
    /// The complete installer's length.
    pub file_len: u64,
    /// Stored bytes copied from the base.
    pub bytes_from_base: u64,
    /// Stored bytes copied from the delta.
    pub bytes_from_delta: u64,
    /// The lineage the delta recorded.
    pub record: DeltaRecord,
}

impl Payload {
    /// The delta record, when this file is a differential installer.
    pub fn delta_record(&self) -> Result<Option<DeltaRecord>> {
        match self.index().metadata.extra.get(METADATA_KEY) {
            None => Ok(None),
            Some(value) => serde_json::from_value(value.clone()).map(Some).map_err(|e| Error::Delta {
                path: self.path().into(),
                detail: format!("its metadata.{METADATA_KEY} is malformed: {e}"),
            }),
        }
    }
}

fn by_path(index: &Index) -> HashMap<&str, &Entry> {
    index.entries.iter().map(|e| (e.path.as_str(), e)).collect()
}

fn delta_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Delta { path: path.into(), detail: detail.into() }
}

/// SHA-256 of an entry's stored bytes, every chunk they touch checked first.
fn stored_digest(payload: &Payload, entry: &Entry, buf: &mut Vec<u8>) -> Result<Digest> {
    let mut hasher = sha2::Sha256::new();
    let end = entry.offset + entry.stored_len;
    let mut at = entry.offset;
    while at < end {
        let step_end = step_end(payload, at, end);
        let range = payload.read_verified_into(at, step_end, buf)?;
        hasher.update(&buf[range]);
        at = step_end;
    }
    Ok(hasher.finalize().into())
}

/// Where a step reading from `at` should stop: at a chunk boundary, so no chunk is read twice.
fn step_end(payload: &Payload, at: u64, end: u64) -> u64 {
    let chunks_per_step = (STEP / payload.index().chunk_size as u64).max(1);
    let last = (payload.chunk_of(at) + chunks_per_step - 1).min(payload.chunk_count().saturating_sub(1));
    payload.chunk_range(last).1.min(end)
}

/// Chunks hashed together, on all cores, before they are written.
const BATCH_CHUNKS: usize = 32;

/// The data region being written front to back, hashed chunk by chunk (a batch of chunks at a
/// time, on all cores); when completing, each chunk is compared with the signed digest before
/// it is written.
struct DataOut<'a> {
    out: &'a File,
    path: &'a Path,
    chunk_size: usize,
    data_offset: u64,
    /// The next byte's absolute offset.
    pos: u64,
    /// Bytes not yet hashed and written, starting at a chunk boundary.
    pending: Vec<u8>,
    chunks: Vec<Digest>,
    expect: Option<&'a Index>,
    /// Where each entry comes from, for naming the source of a bad chunk.
    origins: Option<Origins<'a>>,
}

/// The two files a complete installer is put together from, and which entries each gives.
#[derive(Clone, Copy)]
struct Origins<'a> {
    delta: &'a Payload,
    base: &'a Payload,
    sources: &'a Sources<'a>,
}

impl Origins<'_> {
    /// `path`, where it comes from, and whether its bytes there fail that file's own chunk
    /// digests (which is what tells a damaged entry from its neighbours in a bad chunk).
    fn describe(&self, path: &str) -> (bool, String) {
        let (file, entry, whence) = match (self.sources.from_delta.get(path), self.sources.from_base.get(path)) {
            (Some(e), _) => (self.delta, *e, "this installer".to_string()),
            (None, Some(e)) => (self.base, *e, format!("the base {}", self.base.path().display())),
            (None, None) => return (false, format!("{path} (from neither file)")),
        };
        let damaged = file.read_verified(entry.offset, entry.offset + entry.stored_len).is_err();
        let note = if damaged { ", damaged there" } else { "" };
        (damaged, format!("{path} (from {whence}{note})"))
    }
}

impl<'a> DataOut<'a> {
    fn new(out: &'a File, path: &'a Path, data_offset: u64, chunk_size: u32) -> DataOut<'a> {
        DataOut {
            out,
            path,
            chunk_size: chunk_size as usize,
            data_offset,
            pos: data_offset,
            pending: Vec::with_capacity(BATCH_CHUNKS * chunk_size as usize),
            chunks: Vec::new(),
            expect: None,
            origins: None,
        }
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        let batch = BATCH_CHUNKS * self.chunk_size;
        while !bytes.is_empty() {
            let take = (batch - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            self.pos += take as u64;
            bytes = &bytes[take..];
            if self.pending.len() == batch {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn zeros_to(&mut self, offset: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < offset {
            let n = (offset - self.pos).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Hashes the pending chunks (the last may be short), checks them, and writes them.
    fn flush(&mut self) -> Result<()> {
        let first = self.chunks.len();
        let digests: Vec<Digest> = self.pending.par_chunks(self.chunk_size).map(sha256).collect();
        if let Some(index) = self.expect
            && let Some(n) = (0..digests.len()).find(|i| index.chunks.get(first + i) != Some(&digests[*i]))
        {
            return Err(self.bad_chunk(index, (first + n) as u64));
        }
        (&*self.out).write_all(&self.pending).map_err(Error::io("writing", self.path))?;
        self.chunks.extend(digests);
        self.pending.clear();
        Ok(())
    }

    fn bad_chunk(&self, index: &Index, n: u64) -> Error {
        let start = self.data_offset + n * self.chunk_size as u64;
        let end = start + self.chunk_size as u64;
        let mut within: Vec<(bool, String)> = index
            .entries
            .iter()
            .filter(|e| e.stored_len > 0 && e.offset < end && start < e.offset + e.stored_len)
            .map(|e| match self.origins {
                Some(o) => o.describe(&e.path),
                None => (false, format!("{} (from this installer)", e.path)),
            })
            .collect();
        // The damaged entries first: a chunk can hold hundreds of small entries.
        within.sort_by_key(|(damaged, _)| !damaged);
        const SHOWN: usize = 4;
        let more = within.len().saturating_sub(SHOWN);
        let mut within: Vec<String> = within.into_iter().take(SHOWN).map(|(_, s)| s).collect();
        if more > 0 {
            within.push(format!("and {more} more"));
        }
        delta_error(
            self.path,
            format!(
                "chunk {n} of the completed installer (bytes {start}..{end}, {}) does not match the complete \
                 installer's signed index: the base or this installer is damaged; run `verify` on each",
                if within.is_empty() { "padding".to_string() } else { within.join(", ") }
            ),
        )
    }

    /// Ends the data region: the last, short chunk hashed; returns its end and the digests.
    fn finish(mut self) -> Result<(u64, Vec<Digest>)> {
        if !self.pending.is_empty() {
            self.flush()?;
        }
        Ok((self.pos, self.chunks))
    }
}

/// Copies `len` bytes at `offset` of `from` into `out`, as stored (no check: the caller checks
/// what it writes, or read them checked before).
fn copy_raw(from: &Payload, offset: u64, len: u64, out: &mut DataOut<'_>, buf: &mut Vec<u8>) -> Result<()> {
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(STEP) as usize;
        buf.resize(n, 0);
        from.file().read_exact_at(buf, at).map_err(Error::io("reading", from.path()))?;
        out.write(buf)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies an entry's stored bytes, every chunk they touch checked against `from`'s index.
fn copy_verified(from: &Payload, entry: &Entry, out: &mut DataOut<'_>, buf: &mut Vec<u8>) -> Result<()> {
    let end = entry.offset + entry.stored_len;
    let mut at = entry.offset;
    while at < end {
        let step_end = step_end(from, at, end);
        let range = from.read_verified_into(at, step_end, buf)?;
        out.write(&buf[range])?;
        at = step_end;
    }
    Ok(())
}

fn refuse_delta(payload: &Payload, role: &str) -> Result<()> {
    if payload.index().metadata.extra.contains_key(METADATA_KEY) {
        return Err(delta_error(
            payload.path(),
            format!("{role} is itself a differential installer; complete it first (`./FILE complete --base …`)"),
        ));
    }
    Ok(())
}

/// Writes into `out` (named `out_path` in errors; the caller renames it into place) the delta
/// that turns `base` into `complete`, signed with `key`. Both files' chunks are checked as they
/// are read.
pub fn write_delta(
    complete: &Payload,
    base: &Payload,
    mut out: File,
    out_path: &Path,
    key: Option<&SecretKey>,
) -> Result<DeltaSummary> {
    refuse_delta(complete, "the new installer")?;
    refuse_delta(base, "the base")?;
    if complete.index().entry(TAIL_ENTRY).is_some() {
        return Err(delta_error(complete.path(), format!("it has an entry named {TAIL_ENTRY}, which deltas reserve")));
    }
    complete.verify_stub()?;
    let taken = taken_from_base(complete, base)?;
    let trailer = complete.trailer();
    let mut stub = vec![0u8; trailer.data_offset as usize];
    complete.file().read_exact_at(&mut stub, 0).map_err(Error::io("reading", complete.path()))?;
    out.write_all(&stub).map_err(Error::io("writing", out_path))?;
    drop(stub);

    let mut data = DataOut::new(&out, out_path, trailer.data_offset, complete.index().chunk_size);
    let mut buf = Vec::new();
    let mut entries = Vec::new();
    let (mut carried, mut bytes_carried) = (0, 0);
    for entry in complete.index().entries.iter().filter(|e| !taken.contains_key(e.path.as_str())) {
        let mut placed = entry.clone();
        if entry.stored_len > 0 {
            data.zeros_to(align_up(data.pos))?;
            placed.offset = data.pos;
            copy_verified(complete, entry, &mut data, &mut buf)?;
        } else {
            placed.offset = 0;
        }
        carried += 1;
        bytes_carried += entry.stored_len;
        entries.push(placed);
    }
    let tail = read_tail(complete)?;
    data.zeros_to(align_up(data.pos))?;
    entries.push(Entry {
        path: TAIL_ENTRY.into(),
        kind: EntryKind::File,
        mode: 0o644,
        compression: Compression::Raw,
        offset: data.pos,
        stored_len: tail.len() as u64,
        size: tail.len() as u64,
        link_target: String::new(),
        frame_size: 0,
        frames: Vec::new(),
    });
    data.write(&tail)?;
    let (index_offset, chunks) = data.finish()?;

    let record = DeltaRecord {
        base: InstallerRef::of(base),
        complete: InstallerRef::of(complete),
        entries: complete.index().entries.len() as u64,
        from_base: taken.len() as u64,
        bytes_from_base: taken.values().map(|e| e.stored_len).sum(),
    };
    let mut metadata = complete.index().metadata.clone();
    metadata.extra.insert(METADATA_KEY.into(), serde_json::to_value(&record).expect("plain JSON"));
    let index = Index {
        chunk_size: complete.index().chunk_size,
        stub_sha256: complete.index().stub_sha256,
        metadata,
        chunks,
        entries,
    };
    let (_, file_len) = write_index_and_trailer(
        &mut out,
        out_path,
        &index,
        (trailer.stub_len, trailer.data_offset, index_offset),
        key,
    )?;
    Ok(DeltaSummary { file_len, carried, bytes_carried, record })
}

/// The complete installer's entries the base holds with the same stored bytes, by path.
fn taken_from_base<'a>(complete: &'a Payload, base: &'a Payload) -> Result<HashMap<&'a str, &'a Entry>> {
    let base_entries = by_path(base.index());
    let candidates: Vec<(&Entry, &Entry)> = complete
        .index()
        .entries
        .iter()
        .filter_map(|e| base_entries.get(e.path.as_str()).filter(|old| e.same_shape(old)).map(|old| (e, *old)))
        .collect();
    let same: Vec<bool> = candidates
        .par_iter()
        .map_init(Vec::new, |buf, (new, old)| -> Result<bool> {
            Ok(new.stored_len == 0 || stored_digest(complete, new, buf)? == stored_digest(base, old, buf)?)
        })
        .collect::<Result<_>>()?;
    Ok(candidates.iter().zip(same).filter(|(_, same)| *same).map(|((new, _), _)| (new.path.as_str(), *new)).collect())
}

/// The bytes from the index to the end of the file: index, signature, trailer.
fn read_tail(payload: &Payload) -> Result<Vec<u8>> {
    let start = payload.trailer().index_offset;
    let mut tail = vec![0u8; (payload.file_len() - start) as usize];
    payload.file().read_exact_at(&mut tail, start).map_err(Error::io("reading", payload.path()))?;
    if sha256(&tail[..payload.trailer().index_len as usize]) != payload.trailer().index_sha256 {
        return Err(Error::IndexDigestMismatch { path: payload.path().into() });
    }
    Ok(tail)
}

/// The complete installer's index, signature and trailer as a delta carries them.
struct CompleteTail {
    trailer: Trailer,
    index: Index,
    bytes: Vec<u8>,
}

impl CompleteTail {
    /// Reads the tail entry (its chunks checked) and checks it against the delta's record.
    fn read(delta: &Payload, record: &DeltaRecord) -> Result<CompleteTail> {
        let path = delta.path();
        let entry = delta
            .index()
            .entry(TAIL_ENTRY)
            .ok_or_else(|| delta_error(path, format!("it names a base but carries no {TAIL_ENTRY}")))?;
        let bytes = delta.read_verified(entry.offset, entry.offset + entry.stored_len)?;
        let size = record.complete.size;
        if bytes.len() < TRAILER_LEN || bytes.len() as u64 > size {
            return Err(delta_error(path, "its record of the complete installer has an impossible length"));
        }
        let trailer_bytes: &[u8; TRAILER_LEN] = bytes[bytes.len() - TRAILER_LEN..].try_into().expect("length checked");
        let trailer = Trailer::decode(trailer_bytes, size, path)?;
        if trailer.index_offset != size - bytes.len() as u64 {
            return Err(delta_error(path, "its record of the complete installer does not line up with its trailer"));
        }
        let index_bytes = &bytes[..trailer.index_len as usize];
        let digest = sha256(index_bytes);
        if digest != trailer.index_sha256 || format!("sha256:{}", hex::encode(digest)) != record.complete.digest {
            return Err(delta_error(
                path,
                "the complete installer's index it carries does not match the digest it names",
            ));
        }
        let index = Index::decode(index_bytes, (trailer.data_offset, trailer.index_offset), path)?;
        Ok(CompleteTail { trailer, index, bytes })
    }
}

/// The complete installer's entries with stored bytes, and which file each comes from.
struct Sources<'a> {
    from_delta: HashMap<&'a str, &'a Entry>,
    from_base: HashMap<&'a str, &'a Entry>,
}

/// Checks that `base` is the installer `delta` was built on, before anything is written:
/// refused by digest, naming every entry the given file lacks.
pub fn check_base(delta: &Payload, base: &Payload) -> Result<DeltaRecord> {
    let record = delta.delta_record()?.ok_or_else(|| {
        delta_error(delta.path(), "it is a complete installer, not a differential one: it needs no base")
    })?;
    let tail = CompleteTail::read(delta, &record)?;
    sources(delta, &record, &tail, base)?;
    Ok(record)
}

fn sources<'a>(
    delta: &'a Payload,
    record: &DeltaRecord,
    tail: &'a CompleteTail,
    base: &'a Payload,
) -> Result<Sources<'a>> {
    let carried = by_path(delta.index());
    let base_entries = by_path(base.index());
    let mut from_delta = HashMap::new();
    let mut from_base = HashMap::new();
    let mut missing = Vec::new();
    let mut needed = 0usize;
    for entry in tail.index.entries.iter().filter(|e| e.stored_len > 0) {
        if let Some(own) = carried.get(entry.path.as_str()).filter(|own| own.stored_len == entry.stored_len) {
            from_delta.insert(entry.path.as_str(), *own);
            continue;
        }
        needed += 1;
        match base_entries.get(entry.path.as_str()).filter(|old| entry.same_shape(old)) {
            Some(old) => {
                from_base.insert(entry.path.as_str(), *old);
            }
            None => missing.push(entry.path.as_str()),
        }
    }
    let found = index_digest(base);
    if found != record.base.digest {
        let meta = &base.index().metadata;
        let missing = match missing.len() {
            0 => format!(
                "; it has an entry of the same name and size for each of the {needed} this installer takes from \
                 its base, but a file of another build is never used"
            ),
            n => format!(
                "; of the {needed} entries this installer takes from its base it lacks {n}: {}{}",
                missing.iter().take(NAMED).copied().collect::<Vec<_>>().join(", "),
                if n > NAMED { format!(" and {} more", n - NAMED) } else { String::new() }
            ),
        };
        return Err(Error::WrongBase(Box::new(crate::error::WrongBase {
            path: base.path().into(),
            expected: record.base.digest.clone(),
            expected_name: record.base.name.clone(),
            expected_version: record.base.version.clone(),
            found,
            found_name: meta.name.clone(),
            found_version: meta.version.clone(),
            missing,
        })));
    }
    if !missing.is_empty() {
        return Err(delta_error(
            delta.path(),
            format!(
                "its base {} lacks {} of the entries it should provide ({}): the delta's records do not hold together",
                base.path().display(),
                missing.len(),
                missing.iter().take(NAMED).copied().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(Sources { from_delta, from_base })
}

/// Writes into `out` (named `out_path` in errors; the caller renames it into place) the complete
/// installer `delta` turns `base` into. The base is checked by digest before anything is
/// written, and every chunk written is checked against the complete installer's signed index.
pub fn complete(
    delta: &Payload,
    base: &Payload,
    mut out: File,
    out_path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<CompleteSummary> {
    let record = delta.delta_record()?.ok_or_else(|| {
        delta_error(delta.path(), "it is a complete installer, not a differential one: it needs no base")
    })?;
    let tail = CompleteTail::read(delta, &record)?;
    let sources = sources(delta, &record, &tail, base)?;
    let dir = out_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let free = crate::extract::free_space(dir)?;
    if free < record.complete.size {
        return Err(delta_error(
            out_path,
            format!(
                "the complete installer needs {} bytes and {} has {free} free; free some space or complete it elsewhere",
                record.complete.size,
                dir.display()
            ),
        ));
    }
    let t = &tail.trailer;
    if delta.trailer().stub_len != t.stub_len || delta.trailer().data_offset != t.data_offset {
        return Err(delta_error(delta.path(), "its program differs from the complete installer's"));
    }
    let mut stub = vec![0u8; t.data_offset as usize];
    delta.file().read_exact_at(&mut stub, 0).map_err(Error::io("reading", delta.path()))?;
    if sha256(&stub) != tail.index.stub_sha256 {
        return Err(Error::StubMismatch { path: delta.path().into(), len: t.data_offset });
    }
    out.write_all(&stub).map_err(Error::io("writing", out_path))?;
    drop(stub);

    let mut data = DataOut::new(&out, out_path, t.data_offset, tail.index.chunk_size);
    data.expect = Some(&tail.index);
    data.origins = Some(Origins { delta, base, sources: &sources });
    let mut buf = Vec::new();
    let (mut bytes_from_base, mut bytes_from_delta) = (0, 0);
    for entry in tail.index.entries.iter().filter(|e| e.stored_len > 0) {
        if entry.offset < data.pos {
            return Err(delta_error(
                delta.path(),
                format!("the complete installer's entries overlap at {}", entry.path),
            ));
        }
        data.zeros_to(entry.offset)?;
        let (from, source) = match sources.from_delta.get(entry.path.as_str()) {
            Some(own) => {
                bytes_from_delta += entry.stored_len;
                (delta, *own)
            }
            None => {
                bytes_from_base += entry.stored_len;
                (base, sources.from_base[entry.path.as_str()])
            }
        };
        copy_raw(from, source.offset, entry.stored_len, &mut data, &mut buf)?;
        progress(entry.stored_len);
    }
    data.zeros_to(t.index_offset)?;
    let (_, chunks) = data.finish()?;
    if chunks.len() != tail.index.chunks.len() {
        return Err(delta_error(delta.path(), "the complete installer's chunk count does not match its data"));
    }
    out.write_all(&tail.bytes).map_err(Error::io("writing", out_path))?;
    out.sync_all().map_err(Error::io("flushing", out_path))?;
    Ok(CompleteSummary { file_len: record.complete.size, bytes_from_base, bytes_from_delta, record })
}

#[cfg(test)]
mod tests;
