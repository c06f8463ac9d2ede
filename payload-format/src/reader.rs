//! Opens an installer, checks its trailer, index and signature, and verifies stub and chunks.

use crate::index::MAX_INDEX_LEN;
use crate::keys::signed_message;
use crate::trailer::{SIGNATURE_BLOCK_LEN, TRAILER_LEN, Trailer};
use crate::{Digest, Entry, Error, Index, PublicKey, Result, SignatureStatus, TrustPolicy, sha256};
use rayon::prelude::*;
use sha2::Digest as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An opened installer whose trailer and index have been read and whose index digest matches
/// the trailer. Nothing in it is trusted until [`Payload::check_signature`] succeeds.
#[derive(Debug)]
pub struct Payload {
    path: PathBuf,
    file: File,
    file_len: u64,
    trailer: Trailer,
    trailer_bytes: [u8; TRAILER_LEN],
    index: Index,
    signature: Option<([u8; 32], [u8; 64])>,
}

impl Payload {
    /// Opens the installer at `path` (use `/proc/self/exe` for the running program).
    pub fn open(path: &Path) -> Result<Payload> {
        let file = File::open(path).map_err(Error::io("opening", path))?;
        Self::from_file(file, path)
    }

    /// Reads an already open file; `path` names it in errors.
    pub fn from_file(file: File, path: &Path) -> Result<Payload> {
        let file_len = file.metadata().map_err(Error::io("reading", path))?.len();
        if file_len < TRAILER_LEN as u64 {
            return Err(Error::Truncated {
                path: path.into(),
                detail: format!("{file_len} bytes cannot hold the {TRAILER_LEN}-byte trailer"),
            });
        }
        let mut trailer_bytes = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut trailer_bytes, file_len - TRAILER_LEN as u64).map_err(Error::io("reading", path))?;
        let trailer = Trailer::decode(&trailer_bytes, file_len, path)?;
        if trailer.index_len > MAX_INDEX_LEN {
            return Err(Error::Corrupt {
                path: path.into(),
                region: "trailer",
                detail: format!("index length {} exceeds the {MAX_INDEX_LEN}-byte limit", trailer.index_len),
            });
        }
        // index_len is bounded by both the file length (checked by decode) and MAX_INDEX_LEN.
        let mut index_bytes = vec![0u8; trailer.index_len as usize];
        file.read_exact_at(&mut index_bytes, trailer.index_offset).map_err(Error::io("reading", path))?;
        if sha256(&index_bytes) != trailer.index_sha256 {
            return Err(Error::IndexDigestMismatch { path: path.into() });
        }
        let signature = if trailer.is_signed() {
            let mut block = [0u8; SIGNATURE_BLOCK_LEN as usize];
            file.read_exact_at(&mut block, trailer.signature_offset).map_err(Error::io("reading", path))?;
            Some((block[..32].try_into().unwrap(), block[32..].try_into().unwrap()))
        } else {
            None
        };
        let index = Index::decode(&index_bytes, (trailer.data_offset, trailer.index_offset), path)?;
        Ok(Payload { path: path.into(), file, file_len, trailer, trailer_bytes, index, signature })
    }

    /// The file's path as given to `open`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for callers that map or stream regions of it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Total length of the file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The decoded trailer.
    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    /// The decoded index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The key the file claims to be signed by. Not verified: use [`Payload::check_signature`].
    pub fn claimed_signer(&self) -> Option<PublicKey> {
        self.signature.as_ref().and_then(|(pk, _)| PublicKey::from_bytes(pk))
    }

    /// Checks the signature with `verify_strict` and applies the trust policy.
    pub fn check_signature(&self, policy: &TrustPolicy) -> Result<SignatureStatus> {
        let Some((pk, sig)) = &self.signature else {
            if policy.allow_unsigned && policy.trusted.is_empty() {
                return Ok(SignatureStatus::Unsigned);
            }
            return Err(Error::Unsigned { path: self.path.clone() });
        };
        let key = PublicKey::from_bytes(pk).ok_or_else(|| Error::BadSignature { path: self.path.clone() })?;
        if !key.verify(&signed_message(&self.trailer_bytes), sig) {
            return Err(Error::BadSignature { path: self.path.clone() });
        }
        if policy.trusted.is_empty() {
            return Ok(SignatureStatus::ValidUnpinned(key));
        }
        if policy.trusted.contains(&key) {
            Ok(SignatureStatus::Trusted(key))
        } else {
            Err(Error::UntrustedSigner {
                path: self.path.clone(),
                fingerprint: key.fingerprint(),
                trusted: policy.trusted.iter().map(|k| k.fingerprint()).collect::<Vec<_>>().join(", "),
            })
        }
    }

    /// Hashes the stub region (`0..data_offset`, the stub and its zero padding) against the index.
    pub fn verify_stub(&self) -> Result<()> {
        let end = self.trailer.data_offset;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], pos).map_err(Error::io("reading", &self.path))?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        let digest: Digest = hasher.finalize().into();
        if digest != self.index.stub_sha256 {
            return Err(Error::StubMismatch { path: self.path.clone(), len: end });
        }
        Ok(())
    }

    /// Number of chunks in the data region.
    pub fn chunk_count(&self) -> u64 {
        self.index.chunks.len() as u64
    }

    /// Absolute byte range of chunk `n`.
    pub fn chunk_range(&self, n: u64) -> (u64, u64) {
        let cs = self.index.chunk_size as u64;
        let start = self.trailer.data_offset + n * cs;
        (start, (start + cs).min(self.trailer.index_offset))
    }

    /// The chunk holding absolute offset `offset` of the data region.
    pub fn chunk_of(&self, offset: u64) -> u64 {
        (offset - self.trailer.data_offset) / self.index.chunk_size as u64
    }

    /// Whether `bytes` are exactly chunk `n` as signed.
    pub fn chunk_matches(&self, n: u64, bytes: &[u8]) -> bool {
        self.index.chunks.get(n as usize).is_some_and(|d| *d == sha256(bytes))
    }

    /// The error for a chunk that failed its check, naming the entries whose bytes it holds
    /// (a chunk may span several small ones; the damage may be in any of them).
    pub fn chunk_error(&self, n: u64) -> Error {
        const NAMED: usize = 4;
        let (start, end) = self.chunk_range(n);
        let within: Vec<&str> = self
            .index
            .entries
            .iter()
            .filter(|e| e.stored_len > 0 && e.offset < end && start < e.offset + e.stored_len)
            .map(|e| e.path.as_str())
            .collect();
        let entry = match within.as_slice() {
            [] => String::new(),
            [one] => format!(", in entry {one}"),
            many if many.len() <= NAMED => format!(", in entries {}", many.join(", ")),
            many => format!(", in entries {} and {} more", many[..NAMED].join(", "), many.len() - NAMED),
        };
        Error::ChunkMismatch { path: self.path.clone(), chunk: n, start, end, entry }
    }

    /// The entry whose stored bytes include absolute offset `offset`.
    pub fn entry_at(&self, offset: u64) -> Option<&Entry> {
        self.index.entries.iter().find(|e| e.stored_len > 0 && e.offset <= offset && offset < e.offset + e.stored_len)
    }

    /// Verifies every chunk of the data region on all cores, reporting progress in bytes.
    pub fn verify_chunks(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<()> {
        let cs = self.index.chunk_size as usize;
        (0..self.chunk_count()).into_par_iter().try_for_each_init(
            || vec![0u8; cs],
            |buf, n| {
                let (start, end) = self.chunk_range(n);
                let len = (end - start) as usize;
                self.file.read_exact_at(&mut buf[..len], start).map_err(Error::io("reading", &self.path))?;
                if !self.chunk_matches(n, &buf[..len]) {
                    return Err(self.chunk_error(n));
                }
                progress(len as u64);
                Ok(())
            },
        )
    }

    /// Reads absolute range `start..end` of the data region, checking every chunk it touches
    /// against the index before returning any byte.
    pub fn read_verified(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let range = self.read_verified_into(start, end, &mut buf)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }

    /// Like [`Payload::read_verified`], into `buf` (resized, and reused by callers that read
    /// many ranges, so no fresh memory is touched per read): returns where `start..end` lies in
    /// it. `buf` holds the whole chunks around the range, all checked.
    pub fn read_verified_into(&self, start: u64, end: u64, buf: &mut Vec<u8>) -> Result<std::ops::Range<usize>> {
        if start >= end {
            return Ok(0..0);
        }
        let first = self.chunk_of(start);
        let last = self.chunk_of(end - 1);
        let region_start = self.chunk_range(first).0;
        let region_end = self.chunk_range(last).1;
        buf.resize((region_end - region_start) as usize, 0);
        self.file.read_exact_at(buf, region_start).map_err(Error::io("reading", &self.path))?;
        for n in first..=last {
            let (s, e) = self.chunk_range(n);
            if !self.chunk_matches(n, &buf[(s - region_start) as usize..(e - region_start) as usize]) {
                return Err(self.chunk_error(n));
            }
        }
        Ok((start - region_start) as usize..(end - region_start) as usize)
    }
}
