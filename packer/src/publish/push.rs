//! `ferry push INSTALLER oci://REGISTRY/REPO:TAG`.
//!
//! Owns the upload of one installer: its layout read once ([`super::layout::plan`]), each layer
//! the registry lacks sent in chunks by a few workers at once, each chunk's acknowledgement saved
//! so a killed push resumes inside the blob it was sending, transient failures retried, then the
//! config and the manifest. A layer the repository already holds (an image blob of an earlier
//! release) is not sent at all.

use super::layout::{self, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, Layer, Plan};
use super::{MANIFEST_MEDIA_TYPE, Manifest, ManifestDescriptor};
use ferry_core::printer::Printer;
use ferry_distribution::remote::{Access, Reference, Remote, RemoteError};
use ferry_distribution::upload::{BlobToSend, Counters, FileSlice, MemoryBlob, Uploader, with_retries};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    let progress = |n: u64| sending.inc(n);
    let sender = Uploader {
        remote: &remote,
        chunk: opts.chunk,
        counters: &counters,
        progress: &progress,
        resume_dir: opts.resume_dir.as_deref(),
    };
    let next = AtomicUsize::new(0);
    let failures: std::sync::Mutex<Vec<RemoteError>> = std::sync::Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, 16) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = plan.layers.get(i) else { return };
                    let body = FileSlice { file: source.clone(), offset: layer.offset };
                    let blob = BlobToSend { digest: layer.digest.clone(), size: layer.size };
                    if let Err(e) = sender.send(&blob, &body, &[]) {
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
    let config_body = MemoryBlob(config.into());
    let config_counters = Counters::default();
    let quiet = Uploader { counters: &config_counters, progress: &|_| {}, resume_dir: None, ..sender };
    let config_blob = BlobToSend { digest: config_layer.digest.clone(), size: config_layer.size };
    quiet.send(&config_blob, &config_body, &[]).map_err(remote_err)?;
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
