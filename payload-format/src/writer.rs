//! Writes an installer: the stub, then entries, then index, signature and trailer.
//!
//! The writer hashes the data region chunk by chunk as it goes (batches of chunks are hashed on
//! all cores) and compresses zstd entries as independent frames on all cores. Output depends only
//! on the inputs, the options and the key, so builds are reproducible.

use crate::index::check_entry_path;
use crate::keys::{SecretKey, signed_message};
use crate::trailer::{FLAG_SIGNED, SIGNATURE_BLOCK_LEN, Trailer};
use crate::{BundleMetadata, Compression, Digest, Entry, EntryKind, Error, Index, Result, align_up, sha256};
use rayon::prelude::*;
use sha2::Digest as _;
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Tuning knobs; the defaults suit images of many gigabytes.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Bytes per hashed chunk.
    pub chunk_size: u32,
    /// Uncompressed bytes per zstd frame.
    pub frame_size: u32,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { chunk_size: crate::DEFAULT_CHUNK_SIZE, frame_size: crate::DEFAULT_FRAME_SIZE, zstd_level: 3 }
    }
}

/// What a finished write produced.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    /// Total file length.
    pub file_len: u64,
    /// Number of entries.
    pub entries: usize,
    /// Sum of uncompressed entry sizes.
    pub size: u64,
    /// Sum of stored entry sizes.
    pub stored: u64,
    /// SHA-256 of the index.
    pub index_sha256: Digest,
}

/// Streams an installer into an open file. The caller owns the file's name (write to a temporary
/// name and rename on success).
pub struct PayloadWriter {
    file: File,
    path: PathBuf,
    opts: WriterOptions,
    stub_len: u64,
    stub_sha256: Digest,
    data_offset: u64,
    pos: u64,
    chunk_buf: Vec<u8>,
    hasher: Option<ChunkHasher>,
    entries: Vec<Entry>,
    seen: HashSet<String>,
    written_back: u64,
}

/// Hashes finished chunks on its own thread, so hashing overlaps reading, compressing and
/// writing. The channel is bounded, which bounds the memory held by chunks in flight.
struct ChunkHasher {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    thread: std::thread::JoinHandle<Vec<Digest>>,
}

impl ChunkHasher {
    fn start() -> ChunkHasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let thread = std::thread::spawn(move || rx.into_iter().map(|chunk| sha256(&chunk)).collect());
        ChunkHasher { tx, thread }
    }

    fn send(&self, chunk: Vec<u8>) {
        // The receiver lives until `finish`, so sending cannot fail.
        let _ = self.tx.send(chunk);
    }

    fn finish(self) -> Vec<Digest> {
        drop(self.tx);
        self.thread.join().expect("the hashing thread does not panic")
    }
}

impl PayloadWriter {
    /// Starts a file with the stub read from `stub`. `path` names the file in errors.
    pub fn new(mut file: File, path: &Path, stub: &mut dyn Read, opts: WriterOptions) -> Result<PayloadWriter> {
        if opts.chunk_size < 4096 || opts.frame_size == 0 || opts.frame_size > (1 << 28) {
            return Err(Error::InvalidEntry {
                path: "<options>".into(),
                detail: "chunk or frame size out of range".into(),
            });
        }
        let mut hasher = sha2::Sha256::new();
        let mut stub_len = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stub.read(&mut buf).map_err(Error::io("reading the stub for", path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(Error::io("writing", path))?;
            stub_len += n as u64;
        }
        let data_offset = align_up(stub_len);
        let pad = vec![0u8; (data_offset - stub_len) as usize];
        hasher.update(&pad);
        file.write_all(&pad).map_err(Error::io("writing", path))?;
        Ok(PayloadWriter {
            file,
            path: path.into(),
            chunk_buf: Vec::with_capacity(opts.chunk_size as usize),
            opts,
            stub_len,
            stub_sha256: hasher.finalize().into(),
            data_offset,
            pos: data_offset,
            hasher: Some(ChunkHasher::start()),
            entries: Vec::new(),
            seen: HashSet::new(),
            written_back: 0,
        })
    }

    fn check_new(&mut self, path: &str, mode: u32) -> Result<()> {
        check_entry_path(path).map_err(|detail| Error::InvalidEntry { path: path.into(), detail })?;
        if mode & 0o6000 != 0 {
            return Err(Error::InvalidEntry {
                path: path.into(),
                detail: "setuid and setgid files are refused".into(),
            });
        }
        if !self.seen.insert(path.to_string()) {
            return Err(Error::InvalidEntry { path: path.into(), detail: "added twice".into() });
        }
        Ok(())
    }

    fn empty_entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: mode & 0o1777,
            compression: Compression::Raw,
            offset: 0,
            stored_len: 0,
            size: 0,
            link_target: String::new(),
            frame_size: 0,
            frames: Vec::new(),
        }
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.check_new(path, mode)?;
        self.entries.push(Self::empty_entry(path, EntryKind::Dir, mode));
        Ok(())
    }

    /// Adds a symlink. The caller has checked that `target` stays inside its tree.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.check_new(path, 0o777)?;
        if target.is_empty() || target.contains('\0') || target.len() > u16::MAX as usize {
            return Err(Error::InvalidEntry { path: path.into(), detail: "invalid symlink target".into() });
        }
        let mut e = Self::empty_entry(path, EntryKind::Symlink, 0o777);
        e.link_target = target.into();
        self.entries.push(e);
        Ok(())
    }

    /// Adds a regular file read to its end from `reader`.
    pub fn add_file(&mut self, path: &str, mode: u32, compression: Compression, reader: &mut dyn Read) -> Result<()> {
        self.check_new(path, mode)?;
        let mut entry = Self::empty_entry(path, EntryKind::File, mode);
        entry.compression = compression;
        self.pad_to_alignment()?;
        entry.offset = self.pos;
        let read_err = |e: std::io::Error| Error::Io { action: "reading", path: PathBuf::from(path), source: e };
        match compression {
            Compression::Raw => {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = read_full(reader, &mut buf).map_err(read_err)?;
                    if n == 0 {
                        break;
                    }
                    self.write_data(&buf[..n])?;
                    entry.size += n as u64;
                }
                entry.stored_len = entry.size;
            }
            Compression::Zstd => {
                entry.frame_size = self.opts.frame_size;
                let batch = rayon::current_num_threads().max(1) * 2;
                loop {
                    let mut inputs = Vec::with_capacity(batch);
                    for _ in 0..batch {
                        let mut buf = vec![0u8; self.opts.frame_size as usize];
                        let n = read_full(reader, &mut buf).map_err(read_err)?;
                        if n == 0 {
                            break;
                        }
                        buf.truncate(n);
                        inputs.push(buf);
                    }
                    let done = inputs.len() < batch;
                    let level = self.opts.zstd_level;
                    let frames: Vec<std::io::Result<Vec<u8>>> =
                        inputs.par_iter().map(|input| zstd::bulk::compress(input, level)).collect();
                    for (input, frame) in inputs.iter().zip(frames) {
                        let frame =
                            frame.map_err(|e| Error::Io { action: "compressing", path: path.into(), source: e })?;
                        self.write_data(&frame)?;
                        entry.size += input.len() as u64;
                        entry.stored_len += frame.len() as u64;
                        entry.frames.push(frame.len() as u32);
                    }
                    if done {
                        break;
                    }
                }
            }
        }
        if entry.stored_len == 0 {
            entry.offset = 0;
        }
        self.entries.push(entry);
        Ok(())
    }

    fn pad_to_alignment(&mut self) -> Result<()> {
        let pad = align_up(self.pos) - self.pos;
        if pad > 0 {
            self.write_data(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }

    fn write_data(&mut self, mut data: &[u8]) -> Result<()> {
        let chunk_size = self.opts.chunk_size as usize;
        while !data.is_empty() {
            let take = (chunk_size - self.chunk_buf.len()).min(data.len());
            self.chunk_buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.pos += take as u64;
            if self.chunk_buf.len() == chunk_size {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<()> {
        if self.chunk_buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.chunk_buf).map_err(Error::io("writing", &self.path))?;
        self.start_writeback();
        let full = std::mem::replace(&mut self.chunk_buf, Vec::with_capacity(self.opts.chunk_size as usize));
        self.hasher.as_ref().expect("hasher runs until finish").send(full);
        Ok(())
    }

    /// Starts writing back each finished 64 MiB window while the build goes on, so the final
    /// `fsync` (which makes the rename durable) does not wait for gigabytes at once. Advisory:
    /// an error here only means the final flush does the work.
    fn start_writeback(&mut self) {
        const WINDOW: u64 = 64 << 20;
        let end = self.pos - self.pos % WINDOW;
        if end > self.written_back {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a file descriptor this writer owns.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.written_back as i64,
                    (end - self.written_back) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.written_back = end;
        }
    }

    /// Writes index, signature and trailer, and flushes the file to disk.
    pub fn finish(mut self, metadata: BundleMetadata, key: Option<&SecretKey>) -> Result<WriteSummary> {
        self.flush_chunk()?;
        let chunks = self.hasher.take().expect("finish runs once").finish();
        let index_offset = self.pos;
        let index = Index {
            chunk_size: self.opts.chunk_size,
            stub_sha256: self.stub_sha256,
            metadata,
            chunks,
            entries: std::mem::take(&mut self.entries),
        };
        let index_bytes = index.encode();
        self.file.write_all(&index_bytes).map_err(Error::io("writing", &self.path))?;
        let index_len = index_bytes.len() as u64;
        let trailer = Trailer {
            version: crate::FORMAT_VERSION,
            flags: if key.is_some() { FLAG_SIGNED } else { 0 },
            stub_len: self.stub_len,
            data_offset: self.data_offset,
            index_offset,
            index_len,
            signature_offset: index_offset + index_len,
            signature_len: if key.is_some() { SIGNATURE_BLOCK_LEN } else { 0 },
            index_sha256: sha256(&index_bytes),
        };
        let trailer_bytes = trailer.encode();
        if let Some(key) = key {
            let sig = key.sign(&signed_message(&trailer_bytes));
            self.file.write_all(&key.public().to_bytes()).map_err(Error::io("writing", &self.path))?;
            self.file.write_all(&sig).map_err(Error::io("writing", &self.path))?;
        }
        self.file.write_all(&trailer_bytes).map_err(Error::io("writing", &self.path))?;
        self.file.sync_all().map_err(Error::io("flushing", &self.path))?;
        Ok(WriteSummary {
            file_len: trailer.signature_offset + trailer.signature_len + crate::TRAILER_LEN as u64,
            entries: index.entries.len(),
            size: index.total_size(),
            stored: index.total_stored(),
            index_sha256: trailer.index_sha256,
        })
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
