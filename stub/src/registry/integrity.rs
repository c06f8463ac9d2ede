//! The memory-mapped installer and the "never serve an unverified byte" rule.
//!
//! The whole file is mapped once and wrapped in [`Bytes`], so a response body is an O(1) slice of
//! the mapping: no per-request copy, and pages are read on demand by the kernel. Before any byte
//! leaves the process, every payload chunk (the signed index's chunk table, 1 MiB by default)
//! that the byte range touches is hashed and compared with the index. A chunk is hashed at most
//! once per process: the outcome is remembered in two atomic bitsets (verified, known bad).
//!
//! Concurrent first requests for the same blob do not hash the same chunk twice: chunks are
//! guarded by striped mutexes, and a thread that finds a chunk's stripe busy moves on to the
//! next chunk and comes back later, so several requests hash a large layer together.
//!
//! A chunk (1 MiB) usually holds several small blobs. When one of them is damaged, its chunk
//! fails, but the others are still provably intact: a blob's name `blobs/sha256/<hex>` is part of
//! the signed index, so bytes that hash to that digest are exactly the signed bytes.
//! [`VerifiedFile::verify_blob`] falls back to that check, so damage takes down only the blob
//! that is actually damaged.
//!
//! [`VerifiedFile::verify_in_background`] walks the chunks that hold image blobs once after
//! startup, at the lowest CPU priority, so pulls rarely wait for hashing and damage is reported
//! before anyone asks for it. It reads with `pread` into one buffer rather than through the
//! mapping, so it does not add the whole file to the server's resident set.

use bytes::Bytes;
use payload_format::{Error as FormatError, Payload};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

/// Number of mutex stripes guarding chunk hashing (a power of two).
const STRIPES: usize = 64;

/// A verified-on-first-use view of the installer's data region.
pub struct VerifiedFile {
    payload: Payload,
    map: Bytes,
    verified: Bitset,
    bad: Bitset,
    stripes: Vec<Mutex<()>>,
    /// Blobs (by absolute offset) proven intact by their digest despite a failed chunk.
    blobs_by_digest: Mutex<HashSet<u64>>,
}

/// Why bytes of the installer are not served: they do not match the signed index.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// A chunk does not hash to its digest in the index. The message names the file, the byte
    /// range and the entry the chunk starts in.
    #[error("{mismatch}")]
    Chunk {
        /// Chunk number.
        chunk: u64,
        /// The payload's own account of the mismatch.
        mismatch: FormatError,
    },
    /// A blob whose chunk failed and whose bytes do not hash to the digest its signed name gives.
    #[error(
        "{}: entry blobs/sha256/{digest} (bytes {offset}..{end}) does not match the signed index \
         (its bytes no longer hash to its digest; chunk {chunk} fails); the file is corrupted or was modified",
        path.display()
    )]
    Blob {
        /// The installer.
        path: PathBuf,
        /// The digest the signed name gives (64 hex digits).
        digest: String,
        /// Absolute offset of the blob.
        offset: u64,
        /// One past its last byte.
        end: u64,
        /// The failed chunk that made the blob's own digest decide.
        chunk: u64,
    },
    /// The check itself did not finish (its thread panicked or was cancelled), so nothing proves
    /// the bytes intact.
    #[error("verifying {digest}: the check did not finish: {reason}")]
    Unfinished {
        /// The blob (`sha256:<hex>`).
        digest: String,
        /// What stopped it.
        reason: String,
    },
}

impl IntegrityError {
    /// The chunk the failure is about; `u64::MAX` when no chunk was decided.
    pub fn chunk(&self) -> u64 {
        match self {
            IntegrityError::Chunk { chunk, .. } | IntegrityError::Blob { chunk, .. } => *chunk,
            IntegrityError::Unfinished { .. } => u64::MAX,
        }
    }
}

/// Why the installer cannot be mapped for serving.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// `mmap` failed.
    #[error("mapping {} into memory: {cause}", path.display())]
    Map {
        /// The installer.
        path: PathBuf,
        /// The operating system's reason (part of the message, as the file it concerns is).
        cause: std::io::Error,
    },
    /// The file's length changed between opening and mapping.
    #[error("{} changed size while being opened", path.display())]
    Resized {
        /// The installer.
        path: PathBuf,
    },
}

impl VerifiedFile {
    /// Maps the payload's file. The payload's trailer, index and signature must already have
    /// been checked by the caller; chunk contents are checked here, lazily.
    pub fn new(payload: Payload) -> Result<VerifiedFile, MapError> {
        // SAFETY: the mapping is read-only. If someone truncates or rewrites the installer while
        // it runs, reads may fault or change; every byte served is hashed against the signed
        // index first, so changed content is refused rather than served.
        let map = unsafe { memmap2::Mmap::map(payload.file()) }
            .map_err(|cause| MapError::Map { path: payload.path().to_path_buf(), cause })?;
        if (map.len() as u64) != payload.file_len() {
            return Err(MapError::Resized { path: payload.path().to_path_buf() });
        }
        let chunks = payload.chunk_count() as usize;
        Ok(VerifiedFile {
            map: Bytes::from_owner(map),
            verified: Bitset::new(chunks),
            bad: Bitset::new(chunks),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            blobs_by_digest: Mutex::new(HashSet::new()),
            payload,
        })
    }

    /// The opened payload (index, trailer, path).
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Bytes `start..end` (absolute file offsets) as a zero-copy slice of the mapping. Callers
    /// must have called [`VerifiedFile::verify`] (or [`VerifiedFile::is_verified`]) first.
    pub fn slice(&self, start: u64, end: u64) -> Bytes {
        self.map.slice(start as usize..end as usize)
    }

    /// The chunks touched by absolute range `start..end` of the data region.
    fn chunks_of(&self, start: u64, end: u64) -> std::ops::RangeInclusive<u64> {
        if start >= end {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        self.payload.chunk_of(start)..=self.payload.chunk_of(end - 1)
    }

    /// Whether every chunk under `start..end` is already known good (cheap: no hashing).
    pub fn is_verified(&self, start: u64, end: u64) -> bool {
        self.chunks_of(start, end).all(|n| self.verified.get(n))
    }

    /// Checks every chunk under `start..end` against the signed index, hashing those not yet
    /// checked. Blocking (hashes up to the whole range): call it off the async workers.
    pub fn verify(&self, start: u64, end: u64) -> Result<(), IntegrityError> {
        let range = self.chunks_of(start, end);
        // First pass: hash every chunk whose stripe is free; skip busy ones, another request is
        // hashing them (or a neighbour on the same stripe) right now.
        let mut deferred = Vec::new();
        for n in range {
            if self.verified.get(n) {
                continue;
            }
            match self.stripes[n as usize % STRIPES].try_lock() {
                Ok(_guard) => self.check_locked(n)?,
                Err(TryLockError::WouldBlock) => deferred.push(n),
                Err(TryLockError::Poisoned(_)) => self.check_locked(n)?,
            }
        }
        // Second pass: wait for the busy ones; usually they are done by now.
        for n in deferred {
            if self.verified.get(n) {
                continue;
            }
            let _guard = self.stripes[n as usize % STRIPES].lock().unwrap_or_else(|p| p.into_inner());
            self.check_locked(n)?;
        }
        Ok(())
    }

    /// Hashes chunk `n` unless already decided. The caller holds the chunk's stripe.
    fn check_locked(&self, n: u64) -> Result<(), IntegrityError> {
        if self.verified.get(n) {
            return Ok(());
        }
        if self.bad.get(n) {
            return Err(self.corrupt(n));
        }
        let (s, e) = self.payload.chunk_range(n);
        if self.payload.chunk_matches(n, &self.map[s as usize..e as usize]) {
            self.verified.set(n);
            Ok(())
        } else {
            self.bad.set(n);
            Err(self.corrupt(n))
        }
    }

    fn corrupt(&self, n: u64) -> IntegrityError {
        IntegrityError::Chunk { chunk: n, mismatch: self.payload.chunk_error(n) }
    }

    /// Checks bytes `start..end` of the blob stored at `offset..offset+size` whose signed name
    /// says its SHA-256 is `digest` (64 hex digits). Chunks first; if one fails, the whole blob is
    /// hashed and compared with its digest, which proves it intact even when a neighbour sharing
    /// the chunk is damaged. Blocking.
    pub fn verify_blob(
        &self,
        offset: u64,
        size: u64,
        digest: &str,
        start: u64,
        end: u64,
    ) -> Result<(), IntegrityError> {
        let err = match self.verify(start, end) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let proven = |set: &HashSet<u64>| set.contains(&offset);
        if proven(&self.blobs_by_digest.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        let actual = payload_format::sha256(&self.map[offset as usize..(offset + size) as usize]);
        let hex: String = actual.iter().map(|b| format!("{b:02x}")).collect();
        if hex == digest {
            self.blobs_by_digest.lock().unwrap_or_else(|p| p.into_inner()).insert(offset);
            Ok(())
        } else {
            // The chunk error names the chunk's first entry; this blob is the one proven bad.
            Err(IntegrityError::Blob {
                path: self.payload.path().to_path_buf(),
                digest: digest.to_string(),
                offset,
                end: offset + size,
                chunk: err.chunk(),
            })
        }
    }

    /// Verifies `chunks` (sorted) one by one, skipping any a request is hashing right now, and
    /// returns (verified, bad) counts. Meant for a background thread; see the module docs.
    pub fn verify_in_background(&self, chunks: &[u64], mut on_bad: impl FnMut(&IntegrityError)) -> (u64, u64) {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.payload.index().chunk_size as usize];
        let (mut good, mut bad) = (0, 0);
        for &n in chunks {
            if self.verified.get(n) || self.bad.get(n) {
                continue;
            }
            // A busy stripe means a request is hashing this chunk (or a neighbour) right now.
            let Ok(_guard) = self.stripes[n as usize % STRIPES].try_lock() else { continue };
            if self.verified.get(n) || self.bad.get(n) {
                continue;
            }
            let (s, e) = self.payload.chunk_range(n);
            let data = &mut buf[..(e - s) as usize];
            if self.payload.file().read_exact_at(data, s).is_err() {
                continue; // left to the on-demand path, which reports it with the request
            }
            if self.payload.chunk_matches(n, data) {
                self.verified.set(n);
                good += 1;
            } else {
                self.bad.set(n);
                bad += 1;
                on_bad(&self.corrupt(n));
            }
        }
        (good, bad)
    }

    /// The chunks touched by absolute range `start..end`, for building background work lists.
    pub fn chunk_span(&self, start: u64, end: u64) -> std::ops::RangeInclusive<u64> {
        self.chunks_of(start, end)
    }

    /// Whether the blob at `offset` was proven intact by its digest (cheap).
    pub fn blob_proven(&self, offset: u64) -> bool {
        self.blobs_by_digest.lock().unwrap_or_else(|p| p.into_inner()).contains(&offset)
    }

    /// Number of chunks verified so far (for the shutdown summary).
    pub fn verified_chunks(&self) -> u64 {
        self.verified.count()
    }
}

/// A fixed-size set of bits that many threads set concurrently.
struct Bitset(Vec<AtomicU64>);

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset((0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }
    fn get(&self, n: u64) -> bool {
        // Acquire pairs with `set`'s Release: whoever sees the bit also sees the check's result.
        self.0.get((n / 64) as usize).is_some_and(|w| w.load(Ordering::Acquire) & (1 << (n % 64)) != 0)
    }
    fn set(&self, n: u64) {
        if let Some(w) = self.0.get((n / 64) as usize) {
            w.fetch_or(1 << (n % 64), Ordering::Release);
        }
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payload_format::{BundleMetadata, Compression, PayloadWriter, WriterOptions};
    use std::io::Write;

    fn build(dir: &std::path::Path, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join("installer");
        let file = std::fs::File::create(&path).unwrap();
        let opts = WriterOptions { chunk_size: 4096, ..Default::default() };
        let mut w = PayloadWriter::new(file, &path, &mut &b"\x7fELF stub"[..], opts).unwrap();
        w.add_file("blobs/sha256/aa", 0o644, Compression::Raw, &mut &data[..]).unwrap();
        w.finish(BundleMetadata::default(), None).unwrap();
        path
    }

    #[test]
    fn verifies_once_and_refuses_corrupt_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let path = build(dir.path(), &data);
        let vf = VerifiedFile::new(Payload::open(&path).unwrap()).unwrap();
        let e = vf.payload().index().entry("blobs/sha256/aa").unwrap().clone();
        assert!(!vf.is_verified(e.offset, e.offset + e.size));
        vf.verify(e.offset, e.offset + e.size).unwrap();
        assert_eq!(&vf.slice(e.offset, e.offset + e.size)[..], &data[..]);
        assert!(vf.is_verified(e.offset, e.offset + e.size));
        assert_eq!(vf.verified_chunks(), 5);

        // Flip one byte in the third chunk of the entry and reopen.
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(&[data[9000] ^ 0xff], e.offset + 9000).unwrap();
        f.flush().unwrap();
        let vf = VerifiedFile::new(Payload::open(&path).unwrap()).unwrap();
        assert!(vf.verify(e.offset, e.offset + 4096).is_ok(), "chunks before the damage still serve");
        let err = vf.verify(e.offset, e.offset + e.size).unwrap_err();
        assert_eq!(err.chunk(), 2);
        assert!(err.to_string().contains("blobs/sha256/aa"), "{err}");
        // Remembered as bad: still refused, without rehashing.
        assert!(vf.verify(e.offset + 8192, e.offset + 8193).is_err());
        // The blob's own digest does not match either: refused.
        let hex: String = payload_format::sha256(&data).iter().map(|b| format!("{b:02x}")).collect();
        let err = vf.verify_blob(e.offset, e.size, &hex, e.offset, e.offset + e.size).unwrap_err();
        assert!(err.to_string().contains(&format!("entry blobs/sha256/{hex}")), "{err}");
    }

    #[test]
    fn a_damaged_neighbour_does_not_take_down_an_intact_blob() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("installer");
        let file = std::fs::File::create(&path).unwrap();
        let opts = WriterOptions { chunk_size: 1 << 20, ..Default::default() };
        let mut w = PayloadWriter::new(file, &path, &mut &b"\x7fELF stub"[..], opts).unwrap();
        w.add_file("blobs/sha256/a", 0o644, Compression::Raw, &mut &b"first blob"[..]).unwrap();
        w.add_file("blobs/sha256/b", 0o644, Compression::Raw, &mut &b"second blob"[..]).unwrap();
        w.finish(BundleMetadata::default(), None).unwrap();
        let p = Payload::open(&path).unwrap();
        let (a, b) =
            (p.index().entry("blobs/sha256/a").unwrap().clone(), p.index().entry("blobs/sha256/b").unwrap().clone());
        assert_eq!(p.chunk_of(a.offset), p.chunk_of(b.offset), "both blobs share one chunk");
        drop(p);
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_at(b"X", b.offset).unwrap();
        let vf = VerifiedFile::new(Payload::open(&path).unwrap()).unwrap();
        let hex = |d: &[u8]| payload_format::sha256(d).iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert!(vf.verify(a.offset, a.offset + a.size).is_err(), "the shared chunk fails");
        vf.verify_blob(a.offset, a.size, &hex(b"first blob"), a.offset, a.offset + a.size).unwrap();
        assert!(vf.blob_proven(a.offset));
        assert!(vf.verify_blob(b.offset, b.size, &hex(b"second blob"), b.offset, b.offset + b.size).is_err());
    }

    #[test]
    fn background_verification_marks_chunks_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
        let path = build(dir.path(), &data);
        let e = Payload::open(&path).unwrap().index().entry("blobs/sha256/aa").unwrap().clone();
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_at(b"!", e.offset + 4096 * 3 + 7).unwrap();
        let vf = VerifiedFile::new(Payload::open(&path).unwrap()).unwrap();
        let chunks: Vec<u64> = vf.chunk_span(e.offset, e.offset + e.size).collect();
        let mut reported = Vec::new();
        assert_eq!(vf.verify_in_background(&chunks, |c| reported.push(c.chunk())), (4, 1));
        assert_eq!(reported, vec![3]);
        assert!(vf.is_verified(e.offset, e.offset + 4096 * 3));
        assert!(vf.verify(e.offset, e.offset + e.size).is_err(), "the bad chunk stays refused");
        assert_eq!(vf.verify_in_background(&chunks, |_| panic!("reported twice")), (0, 0));
    }

    #[test]
    fn empty_ranges_need_no_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = build(dir.path(), b"x");
        let vf = VerifiedFile::new(Payload::open(&path).unwrap()).unwrap();
        assert!(vf.verify(5000, 5000).is_ok());
        assert!(vf.is_verified(5000, 5000));
    }
}
