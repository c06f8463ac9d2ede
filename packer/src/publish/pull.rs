//! `ferry pull oci://REGISTRY/REPO:TAG -o FILE`.
//!
//! Owns the download of one installer: the manifest checked to be a ferry installer (and
//! against the digest when the reference names one), the config checked against its digest and
//! the layers, every layer fetched by a few workers at once into a partial file beside the
//! destination (`.NAME.<sha256 prefix>.part`, 0600), then the whole file checked against the
//! config's sha256 before it is renamed into place. A failure leaves nothing at the destination;
//! an interrupted pull keeps the partial file, and the same command run again fetches only the
//! layers whose bytes there do not already match their digests. Damaged content is never kept.

use super::layout::{ARTIFACT_TYPE, ArtifactConfig, CONFIG_MEDIA_TYPE, LayoutError};
use super::{MANIFEST_MEDIA_TYPE, Manifest};
use ferry_core::printer::Printer;
use ferry_distribution::remote::{Access, Reference, Remote, RemoteError};
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest manifest read (distribution's own limit).
const MAX_MANIFEST: u64 = 4 << 20;
/// Every manifest media type a registry may hold.
const ANY_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// The largest config read.
const MAX_CONFIG: u64 = 64 << 20;

/// What a pull did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PullSummary {
    /// The reference read.
    pub reference: String,
    /// The file written.
    pub file: String,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// The bundle's name and version.
    pub name: String,
    /// The bundle's version.
    pub version: String,
    /// Layer bytes downloaded by this run.
    pub bytes_fetched: u64,
    /// Layer bytes an interrupted earlier pull had already put in place, checked and kept.
    pub bytes_reused: u64,
}

/// Why a pull failed. Nothing is left at the destination.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry failed or refused.
    #[error("pulling {reference}: {cause}")]
    Remote {
        /// The reference.
        reference: String,
        /// Why.
        cause: RemoteError,
    },
    /// What arrived is not a ferry installer, or not the one named.
    #[error("pulling {reference}: {why}")]
    NotInstaller {
        /// The reference.
        reference: String,
        /// Why.
        why: String,
    },
    /// The config does not describe a file.
    #[error("pulling {reference}: {cause}")]
    Layout {
        /// The reference.
        reference: String,
        /// Why.
        cause: Box<LayoutError>,
    },
    /// The transfer stopped; what arrived is kept for the next try.
    #[error(
        "pulling {reference}: {cause}; what arrived is kept in {}: the same command continues from there",
        part.display()
    )]
    Interrupted {
        /// The reference.
        reference: String,
        /// The partial file kept.
        part: std::path::PathBuf,
        /// Why.
        cause: Box<RemoteError>,
    },
    /// Writing the file failed.
    #[error("writing {path}: {cause}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
}

/// Pulls `reference` into `output`.
pub fn pull(
    reference: &Reference,
    access: &Access,
    output: &Path,
    jobs: usize,
    printer: &Printer,
) -> Result<PullSummary, PullError> {
    let at = reference.to_string();
    let remote_err = |cause| PullError::Remote { reference: at.clone(), cause };
    let not = |why: String| PullError::NotInstaller { reference: at.clone(), why };
    let write_err = |cause| PullError::Write { path: output.display().to_string(), cause };
    let remote = Remote::open(reference, access, false).map_err(remote_err)?;
    let (manifest, config) = read_artifact(&remote, reference)?;

    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "installer".into());
    let part = Part::open(dir, &name, &config.sha256[..16.min(config.sha256.len())]).map_err(write_err)?;
    let part_write_err = |cause| PullError::Write { path: part.path.display().to_string(), cause };
    part.file.set_len(config.size).map_err(part_write_err)?;
    let mut offsets: HashMap<&str, Vec<u64>> = HashMap::new();
    for s in &config.segments {
        if let Some(d) = &s.digest {
            offsets.entry(d.as_str()).or_default().push(s.offset);
        }
    }
    let all: Vec<(&str, u64, Vec<u64>)> = manifest
        .layers
        .iter()
        .filter_map(|l| offsets.remove(l.digest.as_str()).map(|o| (l.digest.as_str(), l.size, o)))
        .collect();
    // Layers an interrupted pull already wrote whole are checked, not fetched again.
    let mut layers = Vec::new();
    let mut bytes_reused = 0;
    for layer in all {
        if part.resumed && layer_in_place(&part.file, layer.0, layer.1, &layer.2).map_err(part_write_err)? {
            bytes_reused += layer.1;
        } else {
            layers.push(layer);
        }
    }
    let total: u64 = layers.iter().map(|(_, size, _)| size).sum();
    let progress = printer.progress(total, "pull");
    let next = AtomicUsize::new(0);
    let failures: std::sync::Mutex<Vec<PullError>> = std::sync::Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, 16) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((digest, size, offsets)) = layers.get(i) else { return };
                    let fetched = fetch_into(&remote, digest, *size, offsets, &part.file, &|n| progress.inc(n));
                    if let Err(e) = fetched {
                        let e = match e {
                            Fetch::Remote(cause) => PullError::Interrupted {
                                reference: at.clone(),
                                part: part.path.clone(),
                                cause: Box::new(cause),
                            },
                            Fetch::Corrupt(why) => not(why),
                            Fetch::Write(w) => part_write_err(w),
                        };
                        failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(e);
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    progress.finish();
    if let Some(e) = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().next() {
        // Only an interrupted transfer is worth keeping; anything else starts afresh.
        if !matches!(e, PullError::Interrupted { .. }) {
            part.remove();
        }
        return Err(e);
    }
    let checking = printer.progress(config.size, "check");
    let got = super::layout::sha256_hex(ProgressRead { inner: &part.file, at: 0, progress: &checking })
        .map_err(part_write_err)?;
    checking.finish();
    if got != config.sha256 {
        let damaged = damaged_layers(&part.file, &config).map_err(part_write_err)?;
        part.remove();
        return Err(not(match damaged.is_empty() {
            false => format!("the registry served damaged layers: {}", damaged.join(", ")),
            true => format!("the file put together has sha256 {got}, not the {} its config records", config.sha256),
        }));
    }
    part.finish(output).map_err(write_err)?;
    Ok(PullSummary {
        reference: at.clone(),
        file: output.display().to_string(),
        size: config.size,
        sha256: config.sha256,
        name: config.name,
        version: config.version,
        bytes_fetched: total,
        bytes_reused,
    })
}

/// The manifest `reference` names, checked to be a ferry installer's (and the one named, for a
/// digest), and its config, checked against the manifest's layers.
fn read_artifact(remote: &Remote, reference: &Reference) -> Result<(Manifest, ArtifactConfig), PullError> {
    let at = reference.to_string();
    let remote_err = |cause| PullError::Remote { reference: at.clone(), cause };
    let not = |why: String| PullError::NotInstaller { reference: at.clone(), why };
    // Every kind of manifest is accepted, so that an image or an index under the name is
    // reported as what it is rather than as missing.
    let (bytes, content_type) = remote.get_manifest(ANY_MANIFEST, MAX_MANIFEST).map_err(remote_err)?;
    if let Some(want) = reference.reference.strip_prefix("sha256:") {
        let got = hex::encode(sha2::Sha256::digest(&bytes));
        if got != want {
            return Err(not(format!("the manifest's digest is sha256:{got}")));
        }
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|_| not(format!("it is not a ferry installer (a `{content_type}`)")))?;
    if manifest.media_type != MANIFEST_MEDIA_TYPE
        || manifest.artifact_type != ARTIFACT_TYPE
        || manifest.config.media_type != CONFIG_MEDIA_TYPE
    {
        return Err(not(format!(
            "it is not a ferry installer (artifactType `{}`, config `{}`)",
            manifest.artifact_type, manifest.config.media_type
        )));
    }
    if manifest.config.size > MAX_CONFIG {
        return Err(not(format!("its config is {} bytes", manifest.config.size)));
    }
    let config_bytes = fetch_small(remote, &manifest.config.digest, manifest.config.size).map_err(remote_err)?;
    let config: ArtifactConfig = serde_json::from_slice(&config_bytes).map_err(|e| PullError::Layout {
        reference: at.clone(),
        cause: Box::new(LayoutError::BadConfig(e.to_string())),
    })?;
    let sizes: HashMap<String, u64> = manifest.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
    config.check(&sizes).map_err(|cause| PullError::Layout { reference: at.clone(), cause: Box::new(cause) })?;
    Ok((manifest, config))
}

/// The partial file a pull writes into, beside the destination: one name per file content, so
/// an interrupted pull of the same installer finds it again and another installer never does.
struct Part {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// It was there before this run.
    resumed: bool,
}

impl Part {
    fn open(dir: &Path, name: &str, key: &str) -> std::io::Result<Part> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!(".{name}.{key}.part"));
        let resumed = path.is_file();
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        Ok(Part { path, file, resumed })
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Makes the checked file the destination: executable, on disk, renamed into place.
    fn finish(self, output: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        self.file.sync_all()?;
        std::fs::rename(&self.path, output)?;
        if let Some(dir) = output.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Whether every copy of layer `digest` (`size` bytes at `offsets`) in `file` already holds it.
fn layer_in_place(file: &std::fs::File, digest: &str, size: u64, offsets: &[u64]) -> std::io::Result<bool> {
    for &offset in offsets {
        if region_digest(file, offset, size)? != digest {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `sha256:` of `len` bytes of `file` from `offset`.
fn region_digest(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<String> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = 0;
    while at < len {
        let n = (buf.len() as u64).min(len - at) as usize;
        file.read_exact_at(&mut buf[..n], offset + at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The layers whose bytes in `file` do not match their digests, each with what it hashed to.
fn damaged_layers(file: &std::fs::File, config: &ArtifactConfig) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut checked = std::collections::HashSet::new();
    for s in &config.segments {
        let Some(digest) = s.digest.as_deref().filter(|d| checked.insert(*d)) else { continue };
        let got = region_digest(file, s.offset, s.length)?;
        if got != digest {
            out.push(format!("{digest} (its content has {got})"));
        }
    }
    Ok(out)
}

/// Why one layer could not be fetched.
enum Fetch {
    Remote(RemoteError),
    Corrupt(String),
    Write(std::io::Error),
}

/// A small blob, whole, checked against its digest.
fn fetch_small(remote: &Remote, digest: &str, size: u64) -> Result<Vec<u8>, RemoteError> {
    let mut out = Vec::new();
    remote.get_blob(digest, 0)?.take(size + 1).read_to_end(&mut out).map_err(|e| RemoteError::Unreachable {
        url: format!("{} blob {digest}", remote.registry()),
        why: e.to_string(),
    })?;
    let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out)));
    if out.len() as u64 != size || got != digest {
        return Err(RemoteError::Protocol {
            registry: remote.registry().to_string(),
            what: format!("blob {digest} arrived as {} bytes with digest {got}", out.len()),
        });
    }
    Ok(out)
}

/// Fetches layer `digest` into `file` at each of `offsets`, checking it; a broken transfer is
/// tried again from its start, up to four times.
fn fetch_into(
    remote: &Remote,
    digest: &str,
    size: u64,
    offsets: &[u64],
    file: &std::fs::File,
    progress: &dyn Fn(u64),
) -> Result<(), Fetch> {
    let mut attempt = 0;
    loop {
        match fetch_once(remote, digest, size, &mut |at, bytes| {
            offsets.iter().try_for_each(|o| file.write_all_at(bytes, o + at))?;
            progress(bytes.len() as u64);
            Ok(())
        }) {
            Err(Fetch::Remote(e)) if e.is_transient() && attempt < 3 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_secs(1 << attempt));
            }
            other => return other,
        }
    }
}

/// One download of layer `digest`, each piece handed to `put` with its offset in the layer. Its
/// content is checked once the whole file is there (one hash of every byte, not two).
fn fetch_once(
    remote: &Remote,
    digest: &str,
    size: u64,
    put: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<(), Fetch> {
    let mut r = remote.get_blob(digest, 0).map_err(Fetch::Remote)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| {
            Fetch::Remote(RemoteError::Unreachable {
                url: format!("{} blob {digest}", remote.registry()),
                why: e.to_string(),
            })
        })?;
        if n == 0 {
            break;
        }
        if at + n as u64 > size {
            return Err(Fetch::Corrupt(format!("layer {digest} is longer than the {size} bytes its manifest says")));
        }
        put(at, &buf[..n]).map_err(Fetch::Write)?;
        at += n as u64;
    }
    if at != size {
        return Err(Fetch::Corrupt(format!("layer {digest} arrived as {at} bytes, not {size}")));
    }
    Ok(())
}

/// A reader of a file from `at` on, by positioned reads, reporting what it reads.
struct ProgressRead<'a> {
    inner: &'a std::fs::File,
    at: u64,
    progress: &'a ferry_core::printer::Progress,
}

impl Read for ProgressRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read_at(buf, self.at)?;
        self.at += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }
}
