//! The threads behind [`crate::PayloadWriter`]: the caller's thread reads, a pool of workers
//! compresses zstd frames on all cores, one placer thread takes entries strictly in the order they
//! were added, gives each its aligned offset and writes the data region in whole chunks, and one
//! hashing thread digests every finished chunk.
//!
//! So reading, compressing, writing and hashing overlap the way `tar | zstd -T0` overlaps them,
//! across file boundaries too (a tree of small files keeps every core busy), while the output is
//! exactly what a sequential writer produces: offsets are decided by the placer alone, in order.
//!
//! Memory is bounded: the queue to the placer holds at most `depth` items of at most one frame
//! (input and compressed output) each, the hashing queue a few chunks, and buffers are recycled
//! rather than allocated per frame.

use crate::{Digest, Entry, Error, Result, align_up, sha256};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Recycles buffers, so the steady state allocates nothing: a fresh buffer costs a page fault
/// and zeroing per page (and on VMs that return freed memory to the host, far more than that).
pub(crate) struct Pool<T> {
    free: Mutex<Vec<T>>,
    keep: usize,
}

impl<T> Pool<T> {
    pub(crate) fn new(keep: usize) -> Arc<Pool<T>> {
        Arc::new(Pool { free: Mutex::new(Vec::new()), keep })
    }

    fn take(&self) -> Option<T> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Returns a buffer for reuse; beyond `keep` spare buffers it is freed.
    pub(crate) fn put(&self, buf: T) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

impl Pool<Vec<u8>> {
    /// A buffer of exactly `len` bytes with unspecified contents. Buffers of one pool always have
    /// the same length, so after the first use this neither allocates nor zeroes.
    pub(crate) fn filled(&self, len: usize) -> Vec<u8> {
        let mut buf = self.take().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub(crate) fn empty(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.take().unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }
}

/// Alignment of memory, file offsets and lengths for `O_DIRECT` writes (the page size, which is
/// at least the logical block size of common devices; a device wanting more gets buffered writes).
const DIRECT_ALIGN: usize = 4096;

/// One chunk of the data region being assembled, its bytes starting on a `DIRECT_ALIGN` boundary
/// so it can be written with `O_DIRECT` straight from this memory.
pub(crate) struct ChunkBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    capacity: usize,
}

impl ChunkBuf {
    fn new(capacity: usize) -> ChunkBuf {
        // Over-allocate and start at the first aligned byte; the Vec never grows, so its memory
        // (and the alignment) stays put.
        let buf = vec![0u8; capacity + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        ChunkBuf { buf, start, len: 0, capacity }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Appends `data`, which must fit in `room()`.
    fn push(&mut self, data: &[u8]) {
        let at = self.start + self.len;
        self.buf[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }
}

/// `len` bytes of input at the start of `buf` (a pooled buffer, possibly longer).
pub(crate) struct Block {
    pub(crate) buf: Vec<u8>,
    pub(crate) len: usize,
}

/// What a compressed frame, or the reason there is none, comes back as.
type FrameResult = std::io::Result<Vec<u8>>;

/// One step of the stream of entries, in the order they were added.
pub(crate) enum Item {
    /// A directory or symlink: nothing is stored.
    Entry(Entry),
    /// A file begins: its stored bytes start at the next aligned offset.
    Begin(Entry),
    /// Bytes of the current file, stored as they are.
    Raw(Block),
    /// One zstd frame of the current file, holding `input_len` bytes, as a worker delivers it.
    Frame { input_len: usize, frame: Receiver<FrameResult> },
    /// The current file is complete.
    End,
    /// Reading the current file failed: it gets no entry. Bytes already placed stay as an
    /// unreferenced gap, which the chunk digests cover like any other byte.
    Abandon,
}

/// Worker threads turning input blocks into independent zstd frames. Jobs are bounded by the
/// placer's queue (one job per queued `Item::Frame`), so their channel needs no bound of its own.
pub(crate) struct Compressors {
    jobs: Option<Sender<(Block, SyncSender<FrameResult>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Compressors {
    pub(crate) fn start(
        count: usize,
        level: i32,
        frame_size: usize,
        inputs: Arc<Pool<Vec<u8>>>,
        outputs: Arc<Pool<Vec<u8>>>,
    ) -> std::io::Result<Compressors> {
        let (tx, rx) = channel::<(Block, SyncSender<FrameResult>)>();
        let rx = Arc::new(Mutex::new(rx));
        let mut compressors = Compressors { jobs: Some(tx), threads: Vec::new() };
        // Room for any frame, so compression never fails for want of space and the frames are
        // the same bytes `zstd::bulk::compress` produces.
        let bound = zstd::zstd_safe::compress_bound(frame_size);
        for _ in 0..count {
            let (rx, inputs, outputs) = (rx.clone(), inputs.clone(), outputs.clone());
            let thread = std::thread::Builder::new().name("ferry-zstd".into()).spawn(move || {
                // One context per thread, reused for every frame: creating one costs more than
                // compressing a small file. Each frame is still compressed on its own.
                let mut context = zstd::bulk::Compressor::new(level);
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((input, reply)) = job else { break };
                    let frame = match &mut context {
                        Ok(context) => {
                            let mut out = outputs.empty(bound);
                            context.compress_to_buffer(&input.buf[..input.len], &mut out).map(|_| out)
                        }
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                    inputs.put(input.buf);
                    // The placer may have stopped after an error and dropped the receiver.
                    let _ = reply.send(frame);
                }
            });
            // On failure, `compressors` is dropped here, which stops the threads already started.
            compressors.threads.push(thread?);
        }
        Ok(compressors)
    }

    /// Queues `input` for compression; the frame arrives on the returned receiver.
    pub(crate) fn submit(&self, input: Block) -> Receiver<FrameResult> {
        let (tx, rx) = sync_channel(1);
        if let Some(jobs) = &self.jobs {
            // The workers only stop when `jobs` is dropped; if one died anyway, the dropped reply
            // sender makes the placer report the frame as lost.
            let _ = jobs.send((input, tx));
        }
        rx
    }
}

impl Drop for Compressors {
    fn drop(&mut self) {
        // Workers finish the jobs already queued, then see the channel closed.
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What the placer leaves when the stream ends.
pub(crate) struct Placed {
    pub(crate) file: File,
    /// End of the data region.
    pub(crate) pos: u64,
    pub(crate) entries: Vec<Entry>,
    pub(crate) chunks: Vec<Digest>,
}

/// The placer thread and its queue.
pub(crate) struct Placer {
    items: Option<SyncSender<Item>>,
    thread: Option<JoinHandle<Result<Placed>>>,
    failed: Arc<AtomicBool>,
    path: PathBuf,
}

/// Settings the placer thread starts with.
pub(crate) struct PlacerSetup {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) data_offset: u64,
    pub(crate) chunk_size: usize,
    pub(crate) depth: usize,
    pub(crate) inputs: Arc<Pool<Vec<u8>>>,
    pub(crate) outputs: Arc<Pool<Vec<u8>>>,
}

impl Placer {
    pub(crate) fn start(setup: PlacerSetup) -> std::io::Result<Placer> {
        let (tx, rx) = sync_channel(setup.depth);
        let failed = Arc::new(AtomicBool::new(false));
        let path = setup.path.clone();
        let flag = failed.clone();
        let thread = std::thread::Builder::new().name("ferry-place".into()).spawn(move || {
            let chunks = Pool::new(HASH_QUEUE + 2);
            let hasher =
                ChunkHasher::start(chunks.clone()).map_err(Error::io("starting a thread to write", &setup.path));
            let result = hasher.and_then(|hasher| {
                // Direct writes need aligned offsets and lengths: every chunk but the last qualifies
                // when chunks are a multiple of the alignment (they are 1 MiB unless set otherwise).
                let direct = setup.chunk_size.is_multiple_of(DIRECT_ALIGN)
                    && setup.data_offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && set_direct(&setup.file, true).is_ok();
                let state = State {
                    chunk: ChunkBuf::new(setup.chunk_size),
                    direct,
                    file: setup.file,
                    path: setup.path,
                    chunk_size: setup.chunk_size,
                    pos: setup.data_offset,
                    written_back: 0,
                    chunks,
                    hasher,
                    inputs: setup.inputs,
                    outputs: setup.outputs,
                    entries: Vec::new(),
                    current: None,
                };
                state.run(&rx)
            });
            if result.is_err() {
                flag.store(true, Ordering::Release);
                // Keep taking items so the caller never blocks on a full queue; it sees the flag
                // and stops at its next step.
                for _ in rx {}
            }
            result
        })?;
        Ok(Placer { items: Some(tx), thread: Some(thread), failed, path })
    }

    /// Whether the placer has stopped on an error (which `finish` returns).
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Queues `item`, waiting while the queue is full. `false` when the placer is gone, which
    /// only happens after it failed.
    pub(crate) fn send(&self, item: Item) -> bool {
        self.items.as_ref().is_some_and(|items| items.send(item).is_ok())
    }

    /// Ends the stream and waits for everything queued to be written and hashed.
    pub(crate) fn finish(mut self) -> Result<Placed> {
        drop(self.items.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(Error::Io {
                action: "writing",
                path: self.path.clone(),
                source: std::io::Error::other("the writing thread stopped unexpectedly"),
            }),
        }
    }
}

impl Drop for Placer {
    fn drop(&mut self) {
        // Not finished (an error on the caller's side): let the thread drain and end before the
        // caller removes the file.
        drop(self.items.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Chunks waiting for the hashing thread; enough to ride out a slow `write`.
const HASH_QUEUE: usize = 4;

/// The placer thread's state.
struct State {
    file: File,
    path: PathBuf,
    chunk_size: usize,
    /// File offset of the next byte.
    pos: u64,
    /// The chunk being filled; it starts at `pos - chunk.len`.
    chunk: ChunkBuf,
    /// Whether the file is in `O_DIRECT` mode (see `flush_chunk`).
    direct: bool,
    written_back: u64,
    chunks: Arc<Pool<ChunkBuf>>,
    hasher: ChunkHasher,
    inputs: Arc<Pool<Vec<u8>>>,
    outputs: Arc<Pool<Vec<u8>>>,
    entries: Vec<Entry>,
    /// The file being placed.
    current: Option<Entry>,
}

impl State {
    fn run(mut self, items: &Receiver<Item>) -> Result<Placed> {
        for item in items {
            match item {
                Item::Entry(entry) => self.entries.push(entry),
                Item::Begin(mut entry) => {
                    let pad = (align_up(self.pos) - self.pos) as usize;
                    self.place(&[0u8; crate::ALIGN as usize][..pad])?;
                    entry.offset = self.pos;
                    self.current = Some(entry);
                }
                Item::Raw(block) => {
                    self.place(&block.buf[..block.len])?;
                    self.inputs.put(block.buf);
                    if let Some(entry) = &mut self.current {
                        entry.size += block.len as u64;
                        entry.stored_len += block.len as u64;
                    }
                }
                Item::Frame { input_len, frame } => {
                    let name = || self.current.as_ref().map(|e| e.path.clone()).unwrap_or_default();
                    let frame = match frame.recv() {
                        Ok(Ok(frame)) => frame,
                        Ok(Err(e)) => return Err(Error::Io { action: "compressing", path: name().into(), source: e }),
                        Err(_) => {
                            return Err(Error::Io {
                                action: "compressing",
                                path: name().into(),
                                source: std::io::Error::other("the compression thread stopped unexpectedly"),
                            });
                        }
                    };
                    self.place(&frame)?;
                    if let Some(entry) = &mut self.current {
                        entry.size += input_len as u64;
                        entry.stored_len += frame.len() as u64;
                        entry.frames.push(frame.len() as u32);
                    }
                    self.outputs.put(frame);
                }
                Item::End => {
                    if let Some(mut entry) = self.current.take() {
                        if entry.stored_len == 0 {
                            entry.offset = 0;
                        }
                        self.entries.push(entry);
                    }
                }
                Item::Abandon => self.current = None,
            }
        }
        self.flush_chunk()?;
        if self.direct {
            // The index and trailer that follow have unaligned lengths.
            set_direct(&self.file, false).map_err(Error::io("writing", &self.path))?;
        }
        let State { file, path, pos, entries, hasher, .. } = self;
        let chunks = hasher.finish().ok_or_else(|| Error::Io {
            action: "hashing",
            path,
            source: std::io::Error::other("the hashing thread stopped unexpectedly"),
        })?;
        Ok(Placed { file, pos, entries, chunks })
    }

    /// Appends `data` to the data region, writing each chunk as it fills.
    fn place(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let take = self.chunk.room().min(data.len());
            self.chunk.push(&data[..take]);
            data = &data[take..];
            self.pos += take as u64;
            if self.chunk.room() == 0 {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    /// Writes the chunk and hands it to the hashing thread.
    ///
    /// Chunks are written with `O_DIRECT` where the filesystem allows it: straight from this
    /// memory to the device, without copying gigabytes into the page cache (and evicting
    /// everything else there) only to flush them for the final `fsync` anyway. That copy, not
    /// compression, is what bounds a build of mostly raw image layers. A filesystem or device that
    /// refuses (`EINVAL`: no direct I/O, or larger alignment) gets ordinary buffered writes.
    fn flush_chunk(&mut self) -> Result<()> {
        if self.chunk.len == 0 {
            return Ok(());
        }
        let (file, direct, data) = (&self.file, &mut self.direct, self.chunk.data());
        if *direct && data.len() % DIRECT_ALIGN != 0 {
            // The short last chunk.
            set_direct(file, false).map_err(Error::io("writing", &self.path))?;
            *direct = false;
        }
        let mut done = 0;
        while done < data.len() {
            match (&*file).write(&data[done..]) {
                Ok(0) => {
                    return Err(Error::Io {
                        action: "writing",
                        path: self.path.clone(),
                        source: std::io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if *direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(file, false).map_err(Error::io("writing", &self.path))?;
                    *direct = false;
                }
                Err(e) => return Err(Error::Io { action: "writing", path: self.path.clone(), source: e }),
            }
        }
        if !self.direct {
            self.start_writeback();
        }
        let next = self.chunks.take().unwrap_or_else(|| ChunkBuf::new(self.chunk_size));
        let full = std::mem::replace(&mut self.chunk, next);
        self.chunk.len = 0;
        if !self.hasher.send(full) {
            return Err(Error::Io {
                action: "hashing",
                path: self.path.clone(),
                source: std::io::Error::other("the hashing thread stopped unexpectedly"),
            });
        }
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
            // SAFETY: a plain syscall on a file descriptor this thread owns.
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
}

/// Hashes finished chunks on its own thread, so hashing overlaps writing. The channel is bounded,
/// which bounds the memory held by chunks in flight; hashed chunks go back to the pool.
struct ChunkHasher {
    tx: SyncSender<ChunkBuf>,
    thread: JoinHandle<Vec<Digest>>,
}

impl ChunkHasher {
    fn start(pool: Arc<Pool<ChunkBuf>>) -> std::io::Result<ChunkHasher> {
        let (tx, rx) = sync_channel::<ChunkBuf>(HASH_QUEUE);
        let thread = std::thread::Builder::new().name("ferry-hash".into()).spawn(move || {
            rx.into_iter()
                .map(|chunk| {
                    let digest = sha256(chunk.data());
                    pool.put(chunk);
                    digest
                })
                .collect()
        })?;
        Ok(ChunkHasher { tx, thread })
    }

    /// `false` if the thread is gone (it does not stop before `finish`).
    fn send(&self, chunk: ChunkBuf) -> bool {
        self.tx.send(chunk).is_ok()
    }

    fn finish(self) -> Option<Vec<Digest>> {
        drop(self.tx);
        self.thread.join().ok()
    }
}

/// Turns `O_DIRECT` on or off for `file`.
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
