//! Writes an installer: the stub, then entries, then index, signature and trailer.
//!
//! The writer owns the layout: the stub and its padding, the entries' checks (paths, modes,
//! duplicates), and the index, signature and trailer. Reading, compressing, placing, writing and
//! hashing the data region run as a pipeline (see `pipeline`). Output depends only on the inputs,
//! the options and the key, so builds are reproducible.

use crate::index::check_entry_path;
use crate::keys::{SecretKey, signed_message};
use crate::pipeline::{Block, Compressors, Item, Placer, PlacerSetup, Pool};
use crate::trailer::{FLAG_SIGNED, SIGNATURE_BLOCK_LEN, Trailer};
use crate::{BundleMetadata, Compression, Digest, Entry, EntryKind, Error, Index, Result, align_up, sha256};
use sha2::Digest as _;
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
///
/// `add_file` reads its input on the caller's thread and returns once everything is read and
/// queued; compression, writing and hashing go on behind it (see `pipeline`). An error there
/// (a full disk, say) is returned by the next call, or by `finish`.
pub struct PayloadWriter {
    path: PathBuf,
    opts: WriterOptions,
    stub_len: u64,
    stub_sha256: Digest,
    data_offset: u64,
    seen: HashSet<String>,
    /// `None` once stopped by an error.
    pipeline: Option<Pipeline>,
}

struct Pipeline {
    // Field order is drop order: the placer drains and ends before the workers it waits on stop.
    placer: Placer,
    compressors: Compressors,
    inputs: Arc<Pool<Vec<u8>>>,
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

        // Enough frames in flight to keep every worker busy while the placer waits on the oldest
        // one, and no more: each holds up to a frame of input and one of output.
        let workers = rayon::current_num_threads().max(1);
        let depth = 2 * workers + 2;
        let inputs = Pool::new(depth + workers + 2);
        let outputs = Pool::new(depth + workers + 2);
        let compressors =
            Compressors::start(workers, opts.zstd_level, opts.frame_size as usize, inputs.clone(), outputs.clone())
                .map_err(Error::io("starting a thread to write", path))?;
        let placer = Placer::start(PlacerSetup {
            file,
            path: path.into(),
            data_offset,
            chunk_size: opts.chunk_size as usize,
            depth,
            inputs: inputs.clone(),
            outputs,
        })
        .map_err(Error::io("starting a thread to write", path))?;
        Ok(PayloadWriter {
            path: path.into(),
            opts,
            stub_len,
            stub_sha256: hasher.finalize().into(),
            data_offset,
            seen: HashSet::new(),
            pipeline: Some(Pipeline { placer, compressors, inputs }),
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

    /// The running pipeline, or the error that stopped it (returned once; later calls say that
    /// an earlier error stopped the writer).
    fn pipeline(&mut self) -> Result<&Pipeline> {
        if self.pipeline.as_ref().is_some_and(|p| p.placer.failed()) {
            return Err(self.stop());
        }
        match &self.pipeline {
            Some(p) => Ok(p),
            None => Err(Error::Io {
                action: "writing",
                path: self.path.clone(),
                source: std::io::Error::other("the writer stopped after an earlier error"),
            }),
        }
    }

    /// Stops the pipeline after a failure and returns the placer's error.
    fn stop(&mut self) -> Error {
        let stopped = || std::io::Error::other("the writer stopped after an earlier error");
        match self.pipeline.take() {
            Some(p) => match p.placer.finish() {
                Err(e) => e,
                Ok(_) => Error::Io { action: "writing", path: self.path.clone(), source: stopped() },
            },
            None => Error::Io { action: "writing", path: self.path.clone(), source: stopped() },
        }
    }

    fn send(&mut self, item: Item) -> Result<()> {
        if self.pipeline()?.placer.send(item) { Ok(()) } else { Err(self.stop()) }
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.check_new(path, mode)?;
        self.send(Item::Entry(Self::empty_entry(path, EntryKind::Dir, mode)))
    }

    /// Adds a symlink. The caller has checked that `target` stays inside its tree.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.check_new(path, 0o777)?;
        if target.is_empty() || target.contains('\0') || target.len() > u16::MAX as usize {
            return Err(Error::InvalidEntry { path: path.into(), detail: "invalid symlink target".into() });
        }
        let mut e = Self::empty_entry(path, EntryKind::Symlink, 0o777);
        e.link_target = target.into();
        self.send(Item::Entry(e))
    }

    /// Adds a regular file read to its end from `reader`. Raw entries are stored as read; zstd
    /// entries as independent frames of `frame_size` input bytes, compressed on all cores.
    pub fn add_file(&mut self, path: &str, mode: u32, compression: Compression, reader: &mut dyn Read) -> Result<()> {
        self.check_new(path, mode)?;
        let mut entry = Self::empty_entry(path, EntryKind::File, mode);
        entry.compression = compression;
        if matches!(compression, Compression::Zstd) {
            entry.frame_size = self.opts.frame_size;
        }
        self.send(Item::Begin(entry))?;
        // Raw bytes are read in blocks of the same size: fewer, larger reads, and one pool.
        let block_len = self.opts.frame_size as usize;
        loop {
            let pipeline = self.pipeline()?;
            let mut buf = pipeline.inputs.filled(block_len);
            let n = match read_full(reader, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    pipeline.inputs.put(buf);
                    self.send(Item::Abandon)?;
                    return Err(Error::Io { action: "reading", path: PathBuf::from(path), source: e });
                }
            };
            if n == 0 {
                pipeline.inputs.put(buf);
                break;
            }
            let block = Block { buf, len: n };
            let item = match compression {
                Compression::Raw => Item::Raw(block),
                Compression::Zstd => Item::Frame { input_len: n, frame: pipeline.compressors.submit(block) },
            };
            self.send(item)?;
            // `read_full` only stops short at the end of the input.
            if n < block_len {
                break;
            }
        }
        self.send(Item::End)
    }

    /// Writes index, signature and trailer, and flushes the file to disk.
    pub fn finish(mut self, metadata: BundleMetadata, key: Option<&SecretKey>) -> Result<WriteSummary> {
        let Some(Pipeline { placer, compressors, inputs: _ }) = self.pipeline.take() else {
            return Err(self.stop());
        };
        let placed = placer.finish()?;
        drop(compressors);
        let mut file = placed.file;
        let index_offset = placed.pos;
        let index = Index {
            chunk_size: self.opts.chunk_size,
            stub_sha256: self.stub_sha256,
            metadata,
            chunks: placed.chunks,
            entries: placed.entries,
        };
        let (trailer, file_len) = write_index_and_trailer(
            &mut file,
            &self.path,
            &index,
            (self.stub_len, self.data_offset, index_offset),
            key,
        )?;
        Ok(WriteSummary {
            file_len,
            entries: index.entries.len(),
            size: index.total_size(),
            stored: index.total_stored(),
            index_sha256: trailer.index_sha256,
        })
    }
}

/// Writes `index`, the signature (when `key` is given) and the trailer at the file's current
/// position, which is `index_offset`, then flushes the file to disk. `regions` is
/// `(stub_len, data_offset, index_offset)`. Returns the trailer and the file's length.
pub(crate) fn write_index_and_trailer(
    file: &mut File,
    path: &Path,
    index: &Index,
    regions: (u64, u64, u64),
    key: Option<&SecretKey>,
) -> Result<(Trailer, u64)> {
    let (stub_len, data_offset, index_offset) = regions;
    let index_bytes = index.encode();
    file.write_all(&index_bytes).map_err(Error::io("writing", path))?;
    let index_len = index_bytes.len() as u64;
    let trailer = Trailer {
        version: crate::FORMAT_VERSION,
        flags: if key.is_some() { FLAG_SIGNED } else { 0 },
        stub_len,
        data_offset,
        index_offset,
        index_len,
        signature_offset: index_offset + index_len,
        signature_len: if key.is_some() { SIGNATURE_BLOCK_LEN } else { 0 },
        index_sha256: sha256(&index_bytes),
    };
    let trailer_bytes = trailer.encode();
    if let Some(key) = key {
        let sig = key.sign(&signed_message(&trailer_bytes));
        file.write_all(&key.public().to_bytes()).map_err(Error::io("writing", path))?;
        file.write_all(&sig).map_err(Error::io("writing", path))?;
    }
    file.write_all(&trailer_bytes).map_err(Error::io("writing", path))?;
    file.sync_all().map_err(Error::io("flushing", path))?;
    let file_len = trailer.signature_offset + trailer.signature_len + crate::TRAILER_LEN as u64;
    Ok((trailer, file_len))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::bytes;
    use crate::{Payload, TrustPolicy};

    /// What a test adds, in order.
    enum Add {
        Dir(&'static str),
        Link(&'static str, &'static str),
        File(&'static str, Compression, Vec<u8>),
    }

    fn sample(frame: usize, chunk: usize) -> Vec<Add> {
        use Compression::{Raw, Zstd};
        vec![
            Add::Dir("rootfs"),
            Add::File("rootfs/empty-raw", Raw, Vec::new()),
            Add::File("rootfs/empty-zstd", Zstd, Vec::new()),
            Add::File("rootfs/one", Zstd, vec![7]),
            Add::Link("rootfs/link", "one"),
            Add::File("rootfs/exact-frame", Zstd, bytes(frame, 1, true)),
            Add::File("rootfs/frames", Zstd, bytes(3 * frame + 17, 2, true)),
            Add::File("rootfs/noise-frames", Zstd, bytes(2 * frame + 1, 3, false)),
            Add::File("rootfs/raw-small", Raw, bytes(100, 4, false)),
            Add::File("rootfs/raw-chunks", Raw, bytes(5 * chunk + 4095, 5, false)),
            Add::Dir("rootfs/sub"),
            Add::File("rootfs/sub/after", Zstd, bytes(frame / 2 + 3, 6, true)),
            Add::File("rootfs/sub/raw-exact", Raw, bytes(2 * chunk, 7, false)),
        ]
    }

    fn metadata() -> BundleMetadata {
        BundleMetadata { name: "t".into(), version: "1".into(), created: 1, ..Default::default() }
    }

    fn write(path: &Path, stub: &[u8], adds: &[Add], opts: &WriterOptions, key: Option<&SecretKey>) -> WriteSummary {
        let file = File::create(path).unwrap();
        let mut w = PayloadWriter::new(file, path, &mut &stub[..], opts.clone()).unwrap();
        for add in adds {
            match add {
                Add::Dir(p) => w.add_dir(p, 0o755).unwrap(),
                Add::Link(p, t) => w.add_symlink(p, t).unwrap(),
                Add::File(p, c, data) => w.add_file(p, 0o644, *c, &mut &data[..]).unwrap(),
            }
        }
        w.finish(metadata(), key).unwrap()
    }

    /// The layout `docs/format.md` describes, produced the plain sequential way.
    fn reference(stub: &[u8], adds: &[Add], opts: &WriterOptions, key: Option<&SecretKey>) -> Vec<u8> {
        let mut out = stub.to_vec();
        out.resize(align_up(out.len() as u64) as usize, 0);
        let data_offset = out.len() as u64;
        let stub_sha256 = sha256(&out);
        let mut entries = Vec::new();
        for add in adds {
            let mut e = match add {
                Add::Dir(p) => PayloadWriter::empty_entry(p, EntryKind::Dir, 0o755),
                Add::Link(p, t) => {
                    let mut e = PayloadWriter::empty_entry(p, EntryKind::Symlink, 0o777);
                    e.link_target = t.to_string();
                    e
                }
                Add::File(p, _, _) => PayloadWriter::empty_entry(p, EntryKind::File, 0o644),
            };
            if let Add::File(_, c, data) = add {
                out.resize(align_up(out.len() as u64) as usize, 0);
                e.offset = out.len() as u64;
                e.compression = *c;
                e.size = data.len() as u64;
                match c {
                    Compression::Raw => out.extend_from_slice(data),
                    Compression::Zstd => {
                        e.frame_size = opts.frame_size;
                        for piece in data.chunks(opts.frame_size as usize) {
                            let frame = zstd::bulk::compress(piece, opts.zstd_level).unwrap();
                            e.frames.push(frame.len() as u32);
                            out.extend_from_slice(&frame);
                        }
                    }
                }
                e.stored_len = out.len() as u64 - e.offset;
                if e.stored_len == 0 {
                    e.offset = 0;
                }
            }
            entries.push(e);
        }
        let index_offset = out.len() as u64;
        let chunks = out[data_offset as usize..].chunks(opts.chunk_size as usize).map(sha256).collect();
        let index = Index { chunk_size: opts.chunk_size, stub_sha256, metadata: metadata(), chunks, entries };
        let index_bytes = index.encode();
        out.extend_from_slice(&index_bytes);
        let index_len = index_bytes.len() as u64;
        let trailer = Trailer {
            version: crate::FORMAT_VERSION,
            flags: if key.is_some() { FLAG_SIGNED } else { 0 },
            stub_len: stub.len() as u64,
            data_offset,
            index_offset,
            index_len,
            signature_offset: index_offset + index_len,
            signature_len: if key.is_some() { SIGNATURE_BLOCK_LEN } else { 0 },
            index_sha256: sha256(&index_bytes),
        };
        let trailer_bytes = trailer.encode();
        if let Some(key) = key {
            out.extend_from_slice(&key.public().to_bytes());
            out.extend_from_slice(&key.sign(&signed_message(&trailer_bytes)));
        }
        out.extend_from_slice(&trailer_bytes);
        out
    }

    /// Every combination of chunk size (page-aligned, so written with `O_DIRECT` where the
    /// filesystem allows, or not) and frame size gives exactly the sequential layout, reads back
    /// and verifies.
    #[test]
    fn pipelined_output_is_the_sequential_layout() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let stub = bytes(10_000, 9, false);
        for (chunk_size, frame_size) in [(4096, 8192), (5000, 3000), (1 << 20, 64 << 10), (64 << 10, 1 << 20)] {
            let opts = WriterOptions { chunk_size, frame_size, zstd_level: 3 };
            let adds = sample(frame_size as usize, chunk_size as usize);
            let path = dir.path().join(format!("installer-{chunk_size}-{frame_size}"));
            let summary = write(&path, &stub, &adds, &opts, Some(&key));
            let written = std::fs::read(&path).unwrap();
            let expected = reference(&stub, &adds, &opts, Some(&key));
            assert!(written == expected, "chunk {chunk_size}, frame {frame_size}: output differs from the layout");
            assert_eq!(summary.file_len, written.len() as u64);

            let payload = Payload::open(&path).unwrap();
            payload.check_signature(&TrustPolicy { trusted: vec![key.public()], allow_unsigned: false }).unwrap();
            payload.verify_stub().unwrap();
            payload.verify_chunks(&|_| {}).unwrap();
            for add in &adds {
                if let Add::File(p, c, data) = add {
                    let e = payload.index().entry(p).unwrap();
                    let content = match c {
                        Compression::Raw => payload.read_verified(e.offset, e.offset + e.stored_len).unwrap(),
                        Compression::Zstd => (0..e.frames.len())
                            .flat_map(|i| {
                                let (start, end) = e.frame_range(i);
                                zstd::bulk::decompress(&payload.read_verified(start, end).unwrap(), frame_size as usize)
                                    .unwrap()
                            })
                            .collect(),
                    };
                    assert!(content == *data, "{p} reads back wrong");
                }
            }
        }
    }

    /// Reader that fails after `ok` bytes.
    struct Failing {
        ok: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.ok == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.ok);
            buf[..n].fill(1);
            self.ok -= n;
            Ok(n)
        }
    }

    /// A file whose reading fails gets no entry and an error naming it; the writer goes on and
    /// the result verifies.
    #[test]
    fn a_failed_read_names_the_file_and_leaves_a_valid_installer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("installer");
        let opts = WriterOptions { chunk_size: 4096, frame_size: 8192, zstd_level: 3 };
        let mut w = PayloadWriter::new(File::create(&path).unwrap(), &path, &mut &b"stub"[..], opts).unwrap();
        for c in [Compression::Zstd, Compression::Raw] {
            let name = format!("rootfs/bad-{c:?}");
            let err = w.add_file(&name, 0o644, c, &mut Failing { ok: 20_000 }).unwrap_err().to_string();
            assert!(err.contains(&name) && err.contains("disk on fire"), "{err}");
        }
        w.add_file("rootfs/good", 0o644, Compression::Zstd, &mut &bytes(20_000, 1, true)[..]).unwrap();
        w.finish(metadata(), None).unwrap();
        let payload = Payload::open(&path).unwrap();
        payload.verify_chunks(&|_| {}).unwrap();
        let paths: Vec<_> = payload.index().entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["rootfs/good"]);
    }

    /// A write error (here: the output is read-only) comes back from a later call or `finish`,
    /// naming the output, instead of being lost on a background thread.
    #[test]
    fn a_write_error_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("installer");
        std::fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        let opts = WriterOptions { chunk_size: 4096, frame_size: 8192, zstd_level: 3 };
        // The stub write already fails on a read-only file; so start with an empty stub.
        let mut w = PayloadWriter::new(file, &path, &mut &b""[..], opts).unwrap();
        let mut result = Ok(());
        for i in 0..100 {
            result = result.and_then(|_| w.add_file(&format!("f{i}"), 0o644, Compression::Raw, &mut &[1u8; 5000][..]));
        }
        let err = result.and_then(|_| w.finish(metadata(), None).map(|_| ())).unwrap_err().to_string();
        assert!(err.contains("writing") && err.contains(&path.display().to_string()), "{err}");
    }
}
