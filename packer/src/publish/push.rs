//! `ferry push INSTALLER oci://REGISTRY/REPO:TAG`.
//!
//! Owns the upload of one installer: its layout read once ([`super::layout::plan`]), each layer
//! the registry lacks sent in chunks by a few workers at once, each chunk's acknowledgement saved
//! so a killed push resumes inside the blob it was sending, transient failures retried, then the
//! config and the manifest. A layer the repository already holds (an image blob of an earlier
//! release) is not sent at all.

use super::layout::{self, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, Layer, Plan};
use super::remote::{Access, Reference, Remote, RemoteError};
use super::{MANIFEST_MEDIA_TYPE, Manifest, ManifestDescriptor};
use ferry_core::printer::Printer;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How a push runs.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Layers sent at once.
    pub jobs: usize,
    /// Bytes per PATCH: what a broken connection costs at worst.
    pub chunk: u64,
    /// Where upload sessions are remembered for a resumed push (`None`: not remembered).
    pub resume_dir: Option<PathBuf>,
}

/// What a push did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PushSummary {
    /// The reference written.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    /// The installer's size.
    pub size: u64,
    /// Layers in the manifest.
    pub layers: usize,
    /// Layers the registry already had.
    pub layers_present: usize,
    /// Bytes of blob content sent (a resumed or retried chunk counts again).
    pub bytes_sent: u64,
    /// Bytes the registry already had.
    pub bytes_present: u64,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file cannot be laid out.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// The registry failed or refused.
    #[error("pushing {reference}: {cause}")]
    Remote {
        /// The reference.
        reference: String,
        /// Why.
        cause: RemoteError,
    },
}

/// Pushes `file` to `reference`.
pub fn push(
    file: &Path,
    reference: &Reference,
    access: &Access,
    opts: &PushOptions,
    printer: &Printer,
) -> Result<PushSummary, PushError> {
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let reading = printer.progress(len, "read");
    let plan = layout::plan(file, &|done| reading.inc(done.saturating_sub(reading.done())))?;
    reading.finish();
    let remote_err = |cause| PushError::Remote { reference: reference.to_string(), cause };
    let remote = Remote::open(reference, access, true).map_err(remote_err)?;
    let source = Arc::new(
        File::open(file).map_err(|cause| remote_err(RemoteError::Local { path: file.display().to_string(), cause }))?,
    );
    let total: u64 = plan.layers.iter().map(|l| l.size).sum();
    let sending = printer.progress(total, "push");
    let counters = Counters::default();
    let resume = opts.resume_dir.as_deref();
    let sender = Sender { remote: &remote, chunk: opts.chunk, counters: &counters, progress: &sending };
    let next = AtomicUsize::new(0);
    let failures: std::sync::Mutex<Vec<RemoteError>> = std::sync::Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, 16) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = plan.layers.get(i) else { return };
                    let body = FileSlice { file: source.clone(), offset: layer.offset };
                    if let Err(e) = send_blob(&sender, layer, &body, resume) {
                        failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e);
                        // The others stop after their current layer: the push has failed.
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    sending.finish();
    if let Some(e) = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().next() {
        return Err(remote_err(e));
    }
    let (manifest, config_layer, config) = manifest(&plan, file)?;
    let config_body = MemoryBlob(Arc::new(config));
    let quiet = Sender { counters: &Counters::default(), progress: &printer.progress(0, "config"), ..sender };
    send_blob(&quiet, &config_layer, &config_body, None).map_err(remote_err)?;
    with_retries(|| remote.put_manifest(&manifest, MANIFEST_MEDIA_TYPE)).map_err(remote_err)?;
    Ok(PushSummary {
        reference: reference.to_string(),
        digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest))),
        size: plan.config.size,
        layers: plan.layers.len(),
        layers_present: counters.present.load(Ordering::Relaxed) as usize,
        bytes_sent: counters.sent.load(Ordering::Relaxed),
        bytes_present: counters.present_bytes.load(Ordering::Relaxed),
    })
}

/// The manifest's bytes, the config as a layer to send, and the config's bytes.
fn manifest(plan: &Plan, file: &Path) -> Result<(Vec<u8>, Layer, Vec<u8>), PushError> {
    let config = serde_json::to_vec(&plan.config).expect("the config serialises");
    let config_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    let title = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "installer".into());
    let mut annotations = BTreeMap::new();
    annotations.insert("org.opencontainers.image.title".to_string(), title);
    annotations.insert("org.opencontainers.image.version".to_string(), plan.config.version.clone());
    annotations.insert("dev.ferry.installer.name".to_string(), plan.config.name.clone());
    annotations.insert("dev.ferry.installer.sha256".to_string(), plan.config.sha256.clone());
    let m = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: ManifestDescriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: config_digest.clone(),
            size: config.len() as u64,
        },
        layers: plan
            .layers
            .iter()
            .map(|l| ManifestDescriptor { media_type: l.media_type.into(), digest: l.digest.clone(), size: l.size })
            .collect(),
        annotations,
    };
    let bytes = serde_json::to_vec(&m).expect("the manifest serialises");
    let config_layer =
        Layer { digest: config_digest, size: config.len() as u64, media_type: CONFIG_MEDIA_TYPE, offset: 0 };
    Ok((bytes, config_layer, config))
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    present: AtomicU64,
    present_bytes: AtomicU64,
}

/// Where a layer's bytes come from.
trait BlobSource: Sync {
    /// A body of `len` bytes from `from` (relative to the blob), counting what it yields.
    fn body(&self, from: u64, len: u64, counter: Arc<dyn Fn(u64) + Send + Sync>) -> ureq::SendBody<'static>;
}

/// A blob that is a slice of the installer file.
struct FileSlice {
    file: Arc<File>,
    offset: u64,
}

impl BlobSource for FileSlice {
    fn body(&self, from: u64, len: u64, counter: Arc<dyn Fn(u64) + Send + Sync>) -> ureq::SendBody<'static> {
        let at = self.offset + from;
        ureq::SendBody::from_owned_reader(Counting { file: self.file.clone(), at, end: at + len, counter })
    }
}

/// A blob held in memory (the config).
struct MemoryBlob(Arc<Vec<u8>>);

impl BlobSource for MemoryBlob {
    fn body(&self, from: u64, len: u64, _: Arc<dyn Fn(u64) + Send + Sync>) -> ureq::SendBody<'static> {
        let slice = self.0[from as usize..(from + len) as usize].to_vec();
        ureq::SendBody::from_owned_reader(std::io::Cursor::new(slice))
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
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the installer file got shorter"));
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
fn with_retries<T>(mut f: impl FnMut() -> Result<T, RemoteError>) -> Result<T, RemoteError> {
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

/// What every layer's upload shares.
struct Sender<'a> {
    remote: &'a Remote,
    /// Bytes per PATCH.
    chunk: u64,
    counters: &'a Counters,
    progress: &'a ferry_core::printer::Progress,
}

/// Sends one layer unless the repository has it, resuming a remembered session; transient
/// failures are retried from the last acknowledged chunk.
fn send_blob(
    to: &Sender<'_>,
    layer: &Layer,
    source: &dyn BlobSource,
    resume: Option<&Path>,
) -> Result<(), RemoteError> {
    let Sender { remote, counters, progress, .. } = *to;
    if with_retries(|| remote.has_blob(&layer.digest, layer.size))? {
        counters.present.fetch_add(1, Ordering::Relaxed);
        counters.present_bytes.fetch_add(layer.size, Ordering::Relaxed);
        progress.inc(layer.size);
        return Ok(());
    }
    let path = resume.map(|d| session_path(d, remote, &layer.digest));
    let mut fresh_start_left = 1;
    let mut attempt = 0;
    loop {
        match upload(to, layer, source, path.as_deref()) {
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
            // A session the registry no longer accepts (a stale state after a cut chunk): once,
            // forget it and send the blob again from its start.
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

/// One try at sending a layer: from the remembered session when the registry still holds it,
/// else from a new one.
fn upload(to: &Sender<'_>, layer: &Layer, source: &dyn BlobSource, path: Option<&Path>) -> Result<(), RemoteError> {
    let Sender { remote, chunk, counters, progress } = *to;
    let remembered = path.and_then(load_session);
    let resumed = match &remembered {
        Some(s) => match remote.upload_status(&s.location)? {
            // `Range: 0-0` is also what an empty session says: the remembered offset decides.
            Some((next, location)) if next <= layer.size => Some((if s.offset == 0 { 0 } else { next }, location)),
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
    progress.inc(offset);
    while offset < layer.size {
        let n = chunk.min(layer.size - offset);
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
        progress.inc(n);
        if let Some(p) = path {
            save_session(p, &Session { location: location.clone(), offset });
        }
    }
    remote.finish_upload(&location, &layer.digest)
}
