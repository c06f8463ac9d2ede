//! Sending one blob to a repository: nothing when the repository has it, a cross-repository
//! mount when another repository of the same registry does, else a chunked upload whose every
//! acknowledged chunk is remembered on disk, so a killed run resumes inside the blob it was
//! sending. Transient failures (a broken connection, 5xx, 429) are retried from the last
//! acknowledged chunk; a session the registry no longer knows is started again once.

use crate::remote::{Remote, RemoteError};
use sha2::Digest as _;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The request body type [`BlobSource`] makes (so callers need not name the HTTP crate).
pub use ureq::SendBody;

/// One blob to send.
#[derive(Clone, Debug)]
pub struct BlobToSend {
    /// `sha256:…`.
    pub digest: String,
    /// Its length.
    pub size: u64,
}

/// Counts what is shared by every blob of a run; read back for the summary.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of blob content sent (a resumed or retried chunk counts again).
    pub sent: AtomicU64,
    /// Blobs the repository already had (or that were mounted from another).
    pub present: AtomicU64,
    /// Their bytes.
    pub present_bytes: AtomicU64,
    /// Blobs mounted from another repository of the same registry.
    pub mounted: AtomicU64,
}

/// Where a blob's bytes come from.
pub trait BlobSource: Sync {
    /// A body of `len` bytes from `from` (relative to the blob), telling `counter` what it
    /// yields.
    fn body(&self, from: u64, len: u64, counter: Arc<dyn Fn(u64) + Send + Sync>) -> SendBody<'static>;
}

/// A blob that is a slice of a file, read with `pread` as it is sent.
pub struct FileSlice {
    /// The file.
    pub file: Arc<File>,
    /// Where the blob starts in it.
    pub offset: u64,
}

impl BlobSource for FileSlice {
    fn body(&self, from: u64, len: u64, counter: Arc<dyn Fn(u64) + Send + Sync>) -> SendBody<'static> {
        let at = self.offset + from;
        SendBody::from_owned_reader(Counting { file: self.file.clone(), at, end: at + len, counter })
    }
}

/// A blob held in memory.
pub struct MemoryBlob(pub Arc<[u8]>);

impl BlobSource for MemoryBlob {
    fn body(&self, from: u64, len: u64, counter: Arc<dyn Fn(u64) + Send + Sync>) -> SendBody<'static> {
        let slice = self.0[from as usize..(from + len) as usize].to_vec();
        counter(len);
        SendBody::from_owned_reader(std::io::Cursor::new(slice))
    }
}

/// Reads `at..end` of a file with `pread`, telling `counter` what it yields.
struct Counting {
    file: Arc<File>,
    at: u64,
    end: u64,
    counter: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (buf.len() as u64).min(self.end - self.at) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file got shorter"));
        }
        self.at += n as u64;
        (self.counter)(n as u64);
        Ok(n)
    }
}

/// An upload session remembered between runs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Session {
    location: String,
    offset: u64,
}

/// The file remembering the session of `digest` in this repository.
fn session_path(dir: &Path, remote: &Remote, digest: &str) -> PathBuf {
    let key = format!("{}\n{}\n{digest}", remote.registry(), remote.reference.repo);
    dir.join(format!("{}.json", &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..32]))
}

fn load_session(path: &Path) -> Option<Session> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Saves a session atomically (temp file, then rename), readable by this user only: the
/// Location can carry the registry's upload state.
fn save_session(path: &Path, s: &Session) {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &serde_json::to_vec(s).unwrap_or_default()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, path);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Calls `f` until it succeeds, at most four times, waiting 1, 2, 4 s after transient failures.
pub fn with_retries<T>(mut f: impl FnMut() -> Result<T, RemoteError>) -> Result<T, RemoteError> {
    let mut wait = Duration::from_secs(1);
    for _ in 0..3 {
        match f() {
            Err(e) if e.is_transient() => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    f()
}

/// What every blob's upload to one repository shares.
pub struct Uploader<'a> {
    /// The repository.
    pub remote: &'a Remote,
    /// Bytes per PATCH: what a broken connection costs at worst.
    pub chunk: u64,
    /// Counted for the summary.
    pub counters: &'a Counters,
    /// Told every byte done (sent, or found present).
    pub progress: &'a (dyn Fn(u64) + Sync),
    /// Where upload sessions are remembered for a resumed run (`None`: not remembered).
    pub resume_dir: Option<&'a Path>,
}

impl Uploader<'_> {
    /// Sends `blob` unless the repository has it. `mount_from` names repositories of the same
    /// registry that hold it (sent there earlier in this run): the registry is asked to link it
    /// instead of receiving the bytes again.
    pub fn send(&self, blob: &BlobToSend, source: &dyn BlobSource, mount_from: &[String]) -> Result<(), RemoteError> {
        let Uploader { remote, counters, progress, .. } = *self;
        let present = |mounted: bool| {
            counters.present.fetch_add(1, Ordering::Relaxed);
            counters.present_bytes.fetch_add(blob.size, Ordering::Relaxed);
            if mounted {
                counters.mounted.fetch_add(1, Ordering::Relaxed);
            }
            progress(blob.size);
        };
        if with_retries(|| remote.has_blob(&blob.digest, blob.size))? {
            present(false);
            return Ok(());
        }
        // One holder is enough to ask: a registry that refuses that mount refuses the others
        // too, and asking each of hundreds of repositories would cost a request apiece.
        for from in mount_from.iter().filter(|r| **r != remote.reference.repo).take(1) {
            if with_retries(|| remote.mount_blob(&blob.digest, from))? {
                present(true);
                return Ok(());
            }
        }
        let path = self.resume_dir.map(|d| session_path(d, remote, &blob.digest));
        let mut fresh_start_left = 1;
        let mut attempt = 0;
        // The furthest byte of this blob told to `progress`: a retry from an earlier offset is
        // not counted twice.
        let mut reported = 0;
        loop {
            match self.upload(blob, source, path.as_deref(), &mut reported) {
                Ok(()) => {
                    if let Some(p) = &path {
                        let _ = std::fs::remove_file(p);
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() && attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1 << attempt));
                }
                // A session the registry no longer accepts (a stale state after a cut chunk):
                // once, forget it and send the blob again from its start.
                Err(RemoteError::Refused { status: 400 | 404 | 416, .. }) if fresh_start_left > 0 => {
                    fresh_start_left -= 1;
                    if let Some(p) = &path {
                        if let Some(s) = load_session(p) {
                            remote.cancel_upload(&s.location);
                        }
                        let _ = std::fs::remove_file(p);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try at sending a blob: from the remembered session when the registry still holds it,
    /// else from a new one.
    fn upload(
        &self,
        blob: &BlobToSend,
        source: &dyn BlobSource,
        path: Option<&Path>,
        reported: &mut u64,
    ) -> Result<(), RemoteError> {
        let Uploader { remote, chunk, counters, progress, .. } = *self;
        let mut report = |to: u64| {
            if to > *reported {
                progress(to - *reported);
                *reported = to;
            }
        };
        let remembered = path.and_then(load_session);
        let resumed = match &remembered {
            Some(s) => match remote.upload_status(&s.location)? {
                // `Range: 0-0` is also what an empty session says: the remembered offset decides.
                Some((next, location)) if next <= blob.size => Some((if s.offset == 0 { 0 } else { next }, location)),
                _ => {
                    remote.cancel_upload(&s.location);
                    None
                }
            },
            None => None,
        };
        let (mut offset, mut location) = match resumed {
            Some(r) => r,
            None => (0, remote.start_upload()?),
        };
        if let Some(p) = path {
            save_session(p, &Session { location: location.clone(), offset });
        }
        report(offset);
        while offset < blob.size {
            let n = chunk.max(1).min(blob.size - offset);
            let sent = Arc::new(AtomicU64::new(0));
            let count: Arc<dyn Fn(u64) + Send + Sync> = {
                let sent = sent.clone();
                Arc::new(move |k| {
                    sent.fetch_add(k, Ordering::Relaxed);
                })
            };
            let mut body = || Ok(source.body(offset, n, count.clone()));
            let result = remote.send_chunk(&location, offset, n, &mut body);
            counters.sent.fetch_add(sent.load(Ordering::Relaxed), Ordering::Relaxed);
            location = result?;
            offset += n;
            report(offset);
            if let Some(p) = path {
                save_session(p, &Session { location: location.clone(), offset });
            }
        }
        remote.finish_upload(&location, &blob.digest)
    }
}
