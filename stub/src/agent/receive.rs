//! `agent receive`: the node end of distribution.
//!
//! The installer on the operator's machine streams the chunks this host needs into stdin, or
//! tells this agent to pull them from a relay host that already has them (see
//! [`super::relay`]); either way this side writes them at their own offsets of a full-length
//! sparse copy of the installer, so the result is itself a runnable, `Payload`-readable installer
//! holding exactly the entries this host needs. The stream and the answer lines are
//! `protocol::receive`.
//!
//! Every chunk is checked against the signed index before it is written; chunks already present
//! and correct (in the finished file or in an interrupted `.part`) are not asked for again; the
//! finished file replaces the old one by rename, so readers see the old file or the new one.

use super::relay::{self, RelayError, Shelf};
use crate::printer::error_chain;
use crate::protocol::codec::{FrameError, read_u64};
use crate::protocol::receive::{
    END, Event, Header, KEEPALIVE, Offer, Opening, Outcome, PULL, RelayPort, Word, decode_pull,
};
use crate::protocol::relay::Upstream;
use payload_format::{Payload, TRAILER_LEN, Trailer};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// What the receiving side insists on.
#[derive(Clone, Debug, Default)]
pub struct ReceiveOptions {
    /// Final path, e.g. /var/lib/ferry/installer.
    pub dest: PathBuf,
    /// Expected signer fingerprint (`SHA256:…`); `None` with `allow_unsigned` accepts an unsigned file.
    pub signer: Option<String>,
    /// Accept an unsigned installer.
    pub allow_unsigned: bool,
    /// The program bytes to place at the start of the file (this agent's own stub).
    pub stub: PathBuf,
    /// Where to listen for downstream hosts when the operator makes this host a relay (it
    /// sends the secret in the header); `None` never listens.
    pub relay_listen: Option<std::net::IpAddr>,
}

pub use crate::protocol::receive::Received;

/// Why `agent receive` stopped. The operator reads it, as a chain, in the session's last line.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The stream's framing is wrong or it ended early.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The header's tail cannot hold a trailer.
    #[error("the tail is shorter than a trailer")]
    ShortTail(#[source] std::array::TryFromSliceError),
    /// The index, trailer or signature of the installer does not read or check out.
    #[error(transparent)]
    Payload(#[from] payload_format::Error),
    /// The trailer and the tail disagree about where the index is.
    #[error("the index does not start where the trailer says")]
    IndexOffset,
    /// A directory or the `.part` file cannot be created.
    #[error("creating {}", path.display())]
    Create {
        /// What was being created.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another receiver holds the destination and did not let go.
    #[error("another ferry distribution into {} is running (pid {holder})", dest.display())]
    Busy {
        /// The destination.
        dest: PathBuf,
        /// The process holding its lock, as its lock file says (0: unknown).
        holder: i32,
    },
    /// The installer is unsigned and the sender did not allow that.
    #[error("the installer streamed here is unsigned, and the sender did not allow that")]
    Unsigned,
    /// The installer is signed by another key than the sender said.
    #[error("the installer streamed here is signed by {actual}, not by {expected}")]
    WrongSigner {
        /// The fingerprint of the key that signed it.
        actual: String,
        /// The fingerprint the sender expected.
        expected: String,
    },
    /// A chunk asked for is not in the installer.
    #[error("chunk {chunk} does not exist (the installer has {count})")]
    NoSuchChunk {
        /// The chunk.
        chunk: u64,
        /// How many chunks the installer has.
        count: u64,
    },
    /// A chunk arrived although the answer was that nothing is missing.
    #[error("chunk {chunk} was sent although nothing was missing")]
    Unexpected {
        /// The chunk.
        chunk: u64,
    },
    /// A finished copy cannot be copied to grow it.
    #[error("copying {}", path.display())]
    Copy {
        /// The finished copy.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// This agent's own program cannot be read.
    #[error("reading {}", path.display())]
    ReadStub {
        /// The program.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// This agent is not the program the installer carries.
    #[error(
        "this agent's program differs from the installer being sent; re-run so the matching agent is installed first"
    )]
    StubMismatch(#[source] payload_format::Error),
    /// Starting the relay listener failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A chunk does not match the signed index.
    #[error("a chunk arrived damaged")]
    Damaged(#[source] payload_format::Error),
    /// A chunk cannot be written into the `.part` file.
    #[error("writing {}", path.display())]
    Write {
        /// The `.part` file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The source sent a chunk this host did not ask it for.
    #[error("chunk {chunk} was not asked for")]
    NotAsked {
        /// The chunk (or the out-of-place word read as one).
        chunk: u64,
    },
    /// The stream ended in the middle of a chunk.
    #[error("the stream ended inside chunk {chunk}")]
    Truncated {
        /// The chunk.
        chunk: u64,
        /// Why.
        source: io::Error,
    },
    /// The operator ended the stream with chunks still missing.
    #[error("the stream ended with {count} chunks still missing (first: {first})")]
    Incomplete {
        /// How many.
        count: usize,
        /// The first of them.
        first: u64,
    },
    /// The received file cannot be flushed to disk.
    #[error("flushing the received file")]
    Flush(#[source] io::Error),
    /// The finished file cannot be renamed into place.
    #[error("renaming into {}", dest.display())]
    Rename {
        /// The destination.
        dest: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Opening, reading or writing a file or the session failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn same_tail(path: &Path, file_len: u64, trailer: &[u8]) -> bool {
    let Ok(f) = File::open(path) else { return false };
    if f.metadata().map(|m| m.len()).unwrap_or(0) != file_len {
        return false;
    }
    let mut t = [0u8; TRAILER_LEN];
    f.read_exact_at(&mut t, file_len - TRAILER_LEN as u64).is_ok() && t[..] == trailer[..]
}

/// The chunks of `want` that `file` does not hold intact.
fn missing(payload: &Payload, file: &File, want: &[u64]) -> Vec<u64> {
    let cs = payload.index().chunk_size as usize;
    let mut buf = vec![0u8; cs];
    let mut out = Vec::new();
    for &n in want {
        let (s, e) = payload.chunk_range(n);
        let len = (e - s) as usize;
        // A chunk never written is a hole of the sparse copy: missing, without reading and
        // hashing a mebibyte of zeros (for a fresh copy, that was most of the time to start).
        if super::seed::is_hole(file, s, e) {
            out.push(n);
            continue;
        }
        if file.read_exact_at(&mut buf[..len], s).is_err() || !payload.chunk_matches(n, &buf[..len]) {
            out.push(n);
        }
    }
    out
}

fn check_signer(payload: &Payload, opts: &ReceiveOptions) -> Result<(), ReceiveError> {
    if !payload.trailer().is_signed() {
        if opts.allow_unsigned {
            return Ok(());
        }
        return Err(ReceiveError::Unsigned);
    }
    let policy = payload_format::TrustPolicy { trusted: Vec::new(), allow_unsigned: false };
    let status = payload.check_signature(&policy)?;
    if let (Some(want), payload_format::SignatureStatus::ValidUnpinned(k)) = (&opts.signer, &status)
        && &k.fingerprint() != want
    {
        return Err(ReceiveError::WrongSigner { actual: k.fingerprint(), expected: want.clone() });
    }
    Ok(())
}

/// Runs the receiving side of the protocol over `input`/`output`.
pub fn receive(
    input: &mut impl BufRead,
    output: &mut impl Write,
    opts: &ReceiveOptions,
) -> Result<Received, ReceiveError> {
    let mut relaying = false;
    match receive_inner(input, output, opts, &mut relaying) {
        Ok(r) => {
            output.write_all(Event::Finished(Outcome::Done(r.clone())).line().as_bytes())?;
            output.flush()?;
            if relaying {
                // Downstream hosts may still be pulling from this one: keep the listener until
                // the operator, who knows when every host is done, closes the session.
                let mut rest = [0u8; 4096];
                while matches!(input.read(&mut rest), Ok(n) if n > 0) {}
            }
            Ok(r)
        }
        Err(e) => {
            // Best effort: when the session itself is what failed, this line cannot go out
            // either, and the error returned (printed on stderr) is the one to keep.
            let _ = output.write_all(Event::Finished(Outcome::Failed(error_chain(&e))).line().as_bytes());
            let _ = output.flush();
            Err(e)
        }
    }
}

/// Where [`land`] stopped.
enum Stop {
    /// The source sent END.
    End,
    /// The operator said to pull from a relay.
    Pull(Upstream),
}

/// Where chunks come from in one [`land`] call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The operator's stream on stdin: chunks, END or PULL.
    Operator,
    /// A relay host's stream: chunks, KEEPALIVE or END.
    Relay,
}

/// The stream's header, with the trailer it carries decoded.
struct Incoming {
    header: Header,
    trailer_bytes: [u8; TRAILER_LEN],
    trailer: Trailer,
}

/// The copy being filled: chunks are checked against `payload`'s signed index, written into
/// `file` (at `path`), and put on `shelf` for the relay.
struct PartFile<'a> {
    payload: &'a Payload,
    file: &'a File,
    path: &'a Path,
    shelf: &'a Shelf,
}

fn receive_inner(
    input: &mut impl BufRead,
    output: &mut impl Write,
    opts: &ReceiveOptions,
    relaying: &mut bool,
) -> Result<Received, ReceiveError> {
    let incoming = read_header(input, &opts.dest)?;
    let want = &incoming.header.want;
    let dir = opts.dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|source| ReceiveError::Create { path: dir.to_path_buf(), source })?;
    // Held until this function returns: the whole distribution into `dest` is ours.
    let _lock = lock_destination(&opts.dest)?;
    if let Some(done) = already_complete(input, output, opts, &incoming, relaying)? {
        return Ok(done);
    }
    let (part, fresh) = prepare_part(opts, &incoming)?;
    let file = OpenOptions::new().read(true).write(true).open(&part)?;
    let payload = Arc::new(Payload::open(&part)?);
    check_signer(&payload, opts)?;
    payload.verify_stub().map_err(ReceiveError::StubMismatch)?;
    check_want(&payload, want)?;
    if fresh {
        super::seed::from_previous(&opts.dest, &payload, &file, want);
    }
    let need = missing(&payload, &file, want);
    let shelf = offer(output, opts, &incoming, &payload, &need, relaying)?;
    let mut remaining: BTreeSet<u64> = need.iter().copied().collect();
    let mut got = Received { had: (want.len() - need.len()) as u64, ..Default::default() };
    let target = PartFile { payload: &payload, file: &file, path: &part, shelf: &shelf };
    take_chunks(input, output, &target, &mut remaining, &mut got)?;
    if let Some(&first) = remaining.first() {
        return Err(ReceiveError::Incomplete { count: remaining.len(), first });
    }
    put_in_place(&file, &part, &opts.dest)?;
    Ok(got)
}

/// Reads the stream's header and checks that its tail (index and trailer) hangs together.
fn read_header(input: &mut impl BufRead, dest: &Path) -> Result<Incoming, ReceiveError> {
    let header = Header::decode(input, TRAILER_LEN as u64)?;
    let tail = &header.tail;
    let trailer_bytes: [u8; TRAILER_LEN] =
        tail[tail.len() - TRAILER_LEN..].try_into().map_err(ReceiveError::ShortTail)?;
    let trailer = Trailer::decode(&trailer_bytes, header.file_len, dest)?;
    if trailer.index_offset != header.file_len - tail.len() as u64 {
        return Err(ReceiveError::IndexOffset);
    }
    Ok(Incoming { header, trailer_bytes, trailer })
}

/// Takes the lock of `dest`: one receiver per destination at a time. A receiver whose link was
/// cut can sit blocked on stdin until sshd notices (possibly hours): a new run takes over by
/// stopping it, since only `run` starts receivers and the newest one is the one the operator is
/// waiting for. The lock lasts as long as the returned file is open.
fn lock_destination(dest: &Path) -> Result<File, ReceiveError> {
    let lock_path = with_suffix(dest, ".lock");
    let lock = OpenOptions::new().create(true).read(true).write(true).truncate(false).mode(0o600).open(&lock_path)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    let mut tries = 0;
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder: i32 = std::fs::read_to_string(&lock_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let is_agent = holder > 0
            && std::fs::read(format!("/proc/{holder}/cmdline"))
                .map(|c| c.windows(7).any(|w| w == b"receive"))
                .unwrap_or(false);
        if tries == 0 && is_agent {
            // SAFETY: signalling a process we identified as a stale receiver.
            unsafe { libc::kill(holder, libc::SIGTERM) };
        }
        tries += 1;
        if tries > 50 {
            return Err(ReceiveError::Busy { dest: dest.to_path_buf(), holder });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The pid is how a later run finds this receiver to stop it; without it the lock still
    // holds, and a later run waits for it instead of taking over.
    if let Err(e) = lock.set_len(0).and_then(|()| lock.write_all_at(std::process::id().to_string().as_bytes(), 0)) {
        eprintln!("warning: cannot record this receiver's pid in {}: {e}", lock_path.display());
    }
    Ok(lock)
}

/// Opens the relay listener (when the operator asked for one) over what this host holds, and
/// gives the first answer: what is missing.
fn offer(
    output: &mut impl Write,
    opts: &ReceiveOptions,
    incoming: &Incoming,
    payload: &Arc<Payload>,
    need: &[u64],
    relaying: &mut bool,
) -> Result<Arc<Shelf>, ReceiveError> {
    let want = &incoming.header.want;
    let shelf = Arc::new(Shelf::new(payload.chunk_count(), want, need));
    let mut offer = Offer { missing: need.to_vec(), have: (want.len() - need.len()) as u64, relay: None };
    if let (Some(secret), Some(bind)) = (incoming.header.secret, opts.relay_listen) {
        let tls = incoming.header.identity.as_ref().map(relay::server_tls).transpose()?;
        let l = relay::serve(bind, secret, tls, payload.clone(), shelf.clone())?;
        offer.relay = Some(RelayPort { port: l.port });
        *relaying = true;
    }
    output.write_all(Opening::Offer(offer).line().as_bytes())?;
    output.flush()?;
    Ok(shelf)
}

/// When the finished file already holds everything asked for: says so, changes nothing, and
/// returns what was had. `None` when chunks are missing.
fn already_complete(
    input: &mut impl BufRead,
    output: &mut impl Write,
    opts: &ReceiveOptions,
    incoming: &Incoming,
    relaying: &mut bool,
) -> Result<Option<Received>, ReceiveError> {
    let want = &incoming.header.want;
    if !same_tail(&opts.dest, incoming.header.file_len, &incoming.trailer_bytes) {
        return Ok(None);
    }
    let payload = Arc::new(Payload::open(&opts.dest)?);
    check_signer(&payload, opts)?;
    check_want(&payload, want)?;
    let f = File::open(&opts.dest)?;
    if !missing(&payload, &f, want).is_empty() {
        return Ok(None);
    }
    offer(output, opts, incoming, &payload, &[], relaying)?;
    expect_end(input)?;
    Ok(Some(Received { chunks: 0, bytes: 0, had: want.len() as u64 }))
}

/// The `.part` file chunks land in: an interrupted one of the same installer is kept, a
/// finished copy of it is grown from, anything else is started afresh as a sparse file holding
/// this agent's program and the index (and then seeded from the installer held before: the
/// returned flag).
fn prepare_part(opts: &ReceiveOptions, incoming: &Incoming) -> Result<(PathBuf, bool), ReceiveError> {
    let Incoming { header, trailer_bytes, trailer } = incoming;
    let part = with_suffix(&opts.dest, ".part");
    if same_tail(&part, header.file_len, trailer_bytes) {
        return Ok((part, false));
    }
    // A part of another installer, or none. One that cannot be removed makes the copy or the
    // creation below fail, with the reason.
    let _ = std::fs::remove_file(&part);
    if same_tail(&opts.dest, header.file_len, trailer_bytes) {
        // Grow a finished file (e.g. a node that became a registry host) without touching it.
        std::fs::copy(&opts.dest, &part).map_err(|source| ReceiveError::Copy { path: opts.dest.clone(), source })?;
        return Ok((part, false));
    }
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o700)
        .open(&part)
        .map_err(|source| ReceiveError::Create { path: part.clone(), source })?;
    f.set_len(header.file_len)?;
    let stub =
        std::fs::read(&opts.stub).map_err(|source| ReceiveError::ReadStub { path: opts.stub.clone(), source })?;
    let stub = &stub[..stub.len().min(trailer.stub_len as usize)];
    f.write_all_at(stub, 0)?;
    f.write_all_at(&header.tail, trailer.index_offset)?;
    Ok((part, true))
}

/// Lands chunks from the operator's stream, and from relays whenever the operator says to pull
/// from one, until the operator sends END or a relay delivered the last missing chunk.
fn take_chunks(
    input: &mut impl BufRead,
    output: &mut impl Write,
    target: &PartFile<'_>,
    remaining: &mut BTreeSet<u64>,
    got: &mut Received,
) -> Result<(), ReceiveError> {
    loop {
        match land(input, Source::Operator, target, remaining, got, &mut |_| {})? {
            Stop::End => return Ok(()),
            Stop::Pull(up) => {
                if pull_from_relay(output, &up, target, remaining, got)? {
                    return Ok(());
                }
            }
        }
    }
}

/// Lands what relay `up` sends. Returns whether nothing is missing any more; when the relay
/// fails or ends early, tells the operator (who names another source) and returns false.
fn pull_from_relay(
    output: &mut impl Write,
    up: &Upstream,
    target: &PartFile<'_>,
    remaining: &mut BTreeSet<u64>,
    got: &mut Received,
) -> Result<bool, ReceiveError> {
    let mut last = std::time::Instant::now();
    let mut heartbeat = |bytes: u64| {
        // Also a heartbeat: the operator takes a silent host for a lost one.
        if last.elapsed() >= std::time::Duration::from_millis(500) {
            last = std::time::Instant::now();
            // An operator that cannot be written to is gone; the next answer line fails and
            // ends the session.
            let _ = output.write_all(Event::Progress { progress: bytes }.line().as_bytes());
            let _ = output.flush();
        }
    };
    let pulled = relay::connect(up, remaining)
        .map_err(ReceiveError::from)
        .and_then(|mut stream| land(&mut stream, Source::Relay, target, remaining, got, &mut heartbeat));
    match pulled {
        Ok(_) if remaining.is_empty() => return Ok(true),
        Ok(_) => report_lost(output, &format!("{} ended its stream early", up.addr), remaining)?,
        Err(e) => report_lost(output, &format!("pulling from {}: {}", up.addr, error_chain(&e)), remaining)?,
    }
    Ok(false)
}

/// Flushes the finished `.part` and renames it over `dest`, so readers see the old file or the
/// new one.
fn put_in_place(file: &File, part: &Path, dest: &Path) -> Result<(), ReceiveError> {
    file.sync_all().map_err(ReceiveError::Flush)?;
    std::fs::set_permissions(part, std::fs::Permissions::from_mode(0o700))?;
    std::fs::rename(part, dest).map_err(|source| ReceiveError::Rename { dest: dest.to_path_buf(), source })?;
    // The rename is done either way; without the directory's fsync a crash may undo it, and
    // the next run then finds the complete .part and only renames it.
    let dir = dest.parent().unwrap_or(Path::new("/"));
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        eprintln!("warning: flushing {} after the rename: {e}", dir.display());
    }
    Ok(())
}

/// Tells the operator a relay failed, with what is still missing; the operator answers with
/// another source.
fn report_lost(output: &mut impl Write, why: &str, remaining: &BTreeSet<u64>) -> Result<(), ReceiveError> {
    let lost = Event::Lost { lost: why.to_string(), missing: remaining.iter().copied().collect() };
    output.write_all(lost.line().as_bytes())?;
    output.flush()?;
    Ok(())
}

/// Chunks in flight between the stream and the checkers (1 MiB each by default).
const IN_FLIGHT: usize = 6;

/// The first failure of a landing. Later ones are usually its consequences (a checker that
/// stops mid-stream cuts the stream short), so only the first is kept.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    error: Mutex<Option<ReceiveError>>,
}

impl Failure {
    fn set(&self, e: ReceiveError) {
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn happened(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn into_result(self) -> Result<(), ReceiveError> {
        match self.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Reads chunks off one source and lands them: each is checked against the signed index, then
/// written at its offset, then put on the relay shelf. Reading the stream, hashing and writing
/// overlap: this thread only reads, and checkers on other threads hash and write, so the stream
/// never waits for a hash or a write to finish. A chunk is written only after its own check
/// passed; the first failure stops everything. `progress` gets the bytes received so far after
/// each chunk and keepalive.
fn land(
    input: &mut impl BufRead,
    source: Source,
    target: &PartFile<'_>,
    remaining: &mut BTreeSet<u64>,
    got: &mut Received,
    progress: &mut dyn FnMut(u64),
) -> Result<Stop, ReceiveError> {
    let checkers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4);
    let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(IN_FLIGHT);
    let job_rx = Mutex::new(job_rx);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let failure = Failure::default();
    // Chunks leave `remaining` only once written: whatever a failed source did not deliver
    // intact is asked of the next one.
    let asked = remaining.clone();
    let remaining_now = Mutex::new(std::mem::take(remaining));
    let mut stop = Stop::End;
    std::thread::scope(|scope| {
        for _ in 0..checkers {
            let free_tx = free_tx.clone();
            let (job_rx, failure, remaining_now) = (&job_rx, &failure, &remaining_now);
            scope.spawn(move || check_chunks(target, job_rx, &free_tx, failure, remaining_now));
        }
        drop(free_tx);
        let mut reader = Reader {
            input,
            source,
            payload: target.payload,
            asked,
            got,
            progress,
            free: free_rx,
            allocated: 0,
            max_buffers: IN_FLIGHT + checkers + 1,
        };
        let read = reader.run(&job_tx, &failure);
        drop(job_tx);
        match read {
            Ok(s) => stop = s,
            Err(e) => failure.set(e),
        }
    });
    *remaining = remaining_now.into_inner().unwrap_or_else(|e| e.into_inner());
    failure.into_result()?;
    Ok(stop)
}

/// A checker thread of [`land`]: checks and writes the chunks it is handed until the reading
/// side hangs up, handing every buffer back.
fn check_chunks(
    target: &PartFile<'_>,
    jobs: &Mutex<mpsc::Receiver<(u64, Vec<u8>)>>,
    free: &mpsc::Sender<Vec<u8>>,
    failure: &Failure,
    remaining: &Mutex<BTreeSet<u64>>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((n, buf)) = job else { return };
        // Chunks already read are landed even after a failure elsewhere (a cut link, a damaged
        // neighbour): each is checked on its own, and whatever lands now is not sent again by
        // the next run.
        match land_one(target, n, &buf) {
            Ok(()) => {
                remaining.lock().unwrap_or_else(|e| e.into_inner()).remove(&n);
                target.shelf.landed(n);
            }
            Err(e) => failure.set(e),
        }
        // Always hand the buffer back, so the reading side never waits for one. A reading side
        // that has finished no longer takes them: nothing is lost.
        let _ = free.send(buf);
    }
}

/// Checks chunk `n` against the signed index and writes it at its offset.
fn land_one(target: &PartFile<'_>, n: u64, buf: &[u8]) -> Result<(), ReceiveError> {
    let (s, _) = target.payload.chunk_range(n);
    if !target.payload.chunk_matches(n, buf) {
        return Err(ReceiveError::Damaged(target.payload.chunk_error(n)));
    }
    target
        .file
        .write_all_at(buf, s)
        .map_err(|source| ReceiveError::Write { path: target.path.to_path_buf(), source })?;
    // Start writing the chunk out now, so the fsync before the rename finds little left to do
    // instead of the whole file at once.
    // SAFETY: sync_file_range on an fd we own; it only starts writeback.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(target.file),
            s as libc::off64_t,
            buf.len() as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    Ok(())
}

/// The reading side of [`land`]: takes chunks off the stream into buffers and hands them to
/// the checkers.
struct Reader<'a, R> {
    input: &'a mut R,
    source: Source,
    payload: &'a Payload,
    /// Chunks asked of this source and not yet read.
    asked: BTreeSet<u64>,
    got: &'a mut Received,
    progress: &'a mut dyn FnMut(u64),
    /// Buffers the checkers are done with.
    free: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    /// At most this many buffers exist: IN_FLIGHT queued, one per checker, one being read.
    max_buffers: usize,
}

impl<R: BufRead> Reader<'_, R> {
    /// Reads until the source stops (END, or PULL from the operator), a failure is known, or the
    /// checkers are gone.
    fn run(&mut self, jobs: &mpsc::SyncSender<(u64, Vec<u8>)>, failure: &Failure) -> Result<Stop, ReceiveError> {
        loop {
            let n = match Word::of(read_u64(self.input)?) {
                Word::End => return Ok(Stop::End),
                Word::Keepalive if self.source == Source::Relay => {
                    (self.progress)(self.got.bytes);
                    continue;
                }
                Word::Pull if self.source == Source::Operator => return Ok(Stop::Pull(decode_pull(self.input)?)),
                Word::Chunk(n) => n,
                // A word out of place reads as the chunk number it is, which no chunk has:
                // refused below as not asked for.
                Word::Keepalive => KEEPALIVE,
                Word::Pull => PULL,
            };
            if failure.happened() {
                return Ok(Stop::End);
            }
            if !self.asked.remove(&n) {
                return Err(ReceiveError::NotAsked { chunk: n });
            }
            let Some(buf) = self.read_chunk(n)? else { return Ok(Stop::End) };
            if jobs.send((n, buf)).is_err() {
                return Ok(Stop::End);
            }
        }
    }

    /// Reads chunk `n`'s bytes into a buffer. `None` when the checkers are gone.
    fn read_chunk(&mut self, n: u64) -> Result<Option<Vec<u8>>, ReceiveError> {
        let (s, e) = self.payload.chunk_range(n);
        let len = (e - s) as usize;
        let Some(mut buf) = self.buffer() else { return Ok(None) };
        buf.resize(len, 0);
        self.input.read_exact(&mut buf).map_err(|source| ReceiveError::Truncated { chunk: n, source })?;
        self.got.chunks += 1;
        self.got.bytes += len as u64;
        (self.progress)(self.got.bytes);
        Ok(Some(buf))
    }

    /// A buffer a checker is done with, a new one while fewer than the most exist, or else the
    /// next one handed back. `None` when the checkers are gone.
    fn buffer(&mut self) -> Option<Vec<u8>> {
        match self.free.try_recv() {
            Ok(b) => Some(b),
            Err(_) if self.allocated < self.max_buffers => {
                self.allocated += 1;
                Some(Vec::with_capacity(self.payload.index().chunk_size as usize))
            }
            Err(_) => self.free.recv().ok(),
        }
    }
}

fn check_want(payload: &Payload, want: &[u64]) -> Result<(), ReceiveError> {
    if let Some(&chunk) = want.iter().find(|&&n| n >= payload.chunk_count()) {
        return Err(ReceiveError::NoSuchChunk { chunk, count: payload.chunk_count() });
    }
    Ok(())
}

fn expect_end(input: &mut impl Read) -> Result<(), ReceiveError> {
    let n = read_u64(input)?;
    if n != END {
        return Err(ReceiveError::Unexpected { chunk: n });
    }
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
