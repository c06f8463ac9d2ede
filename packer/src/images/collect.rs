//! Resolves discovered images to verified blobs, in two phases:
//!
//! 1. **Manifests**, one image per worker: the top-level manifest or index (from the registry,
//!    an OCI layout or a docker archive), then the children for `spec.platforms`. Every manifest
//!    is checked against the digest that names it and kept byte-exact.
//! 2. **Blobs**, de-duplicated by digest across all images, on a bounded number of workers:
//!    registry blobs are streamed to the temporary store with their digest checked on the way;
//!    blobs of local layouts and archives are hashed in place and never copied.
//!
//! An image fails as a whole when its manifest or any of its blobs fails; every failure is
//! collected with its cause so the build can list them all.

use super::discovery::{Discovered, Source};
use super::docker_archive::{ArchiveError, DockerArchive};
use super::oci::{self, ClassifyError, Descriptor, IndexDoc, Kind, ManifestDoc, Platform, classify, digest_of};
use super::oci_layout::{LayoutError, OciLayout};
use super::registry_client::{Endpoint, FetchError, RegistryClient};
use super::store::{Slice, Store, StoreError};
use ferry_core::image_ref::{DigestError, parse_digest};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why one image (or one of its blobs) could not be resolved. The text is what the build prints
/// after the image in its list of failed images.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A registry did not serve the manifest or blob.
    #[error("{0}")]
    Fetch(FetchError),
    /// The OCI layout cannot be read or has no such image.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The docker archive cannot be read or has no such image.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A manifest could not be stored.
    #[error(transparent)]
    Store(Box<StoreError>),
    /// A local source lacks a manifest an index names.
    #[error("{shown} lacks blob {digest} (a manifest)")]
    NoManifest {
        /// The source as written in the spec.
        shown: String,
        /// The manifest's digest.
        digest: String,
    },
    /// A manifest of a local source cannot be read.
    #[error("{shown}: manifest {digest}: {cause}")]
    ReadManifest {
        /// The source as written in the spec.
        shown: String,
        /// The manifest's digest.
        digest: String,
        /// Why.
        cause: Box<StoreError>,
    },
    /// A local source lacks a config or layer.
    #[error("{shown} lacks blob {digest} (the {what})")]
    NoBlob {
        /// The source as written in the spec.
        shown: String,
        /// The blob's digest.
        digest: String,
        /// `config`, `layer 2 for linux/arm64`, …
        what: String,
    },
    /// A docker archive's manifest names another manifest.
    #[error("{shown}: unexpected nested manifest {digest}")]
    Nested {
        /// The archive as written in the spec.
        shown: String,
        /// The nested manifest's digest.
        digest: String,
    },
    /// A docker archive lacks a config or layer.
    #[error("{shown} lacks the {what}")]
    ArchiveLacks {
        /// The archive as written in the spec.
        shown: String,
        /// `config`, `layer 2`, …
        what: String,
    },
    /// Bytes of another length than their descriptor's.
    #[error("corrupt content: {what} {digest} is {got} bytes, its descriptor says {want}")]
    Size {
        /// What the bytes are.
        what: String,
        /// Their digest.
        digest: String,
        /// Their length.
        got: u64,
        /// The descriptor's.
        want: u64,
    },
    /// Bytes that hash to another digest than the one naming them.
    #[error("corrupt content: {what} {digest} hashes to {actual}")]
    Hash {
        /// What the bytes are.
        what: String,
        /// The digest naming them.
        digest: String,
        /// What they hash to.
        actual: String,
    },
    /// A descriptor's digest is malformed.
    #[error("{what}: {cause}")]
    Digest {
        /// Where the descriptor is.
        what: String,
        /// Why.
        cause: DigestError,
    },
    /// A local blob is not what its descriptor says.
    #[error("corrupt content: {0}")]
    Corrupt(Box<StoreError>),
    /// A registry's manifest does not hash to the pinned digest.
    #[error("corrupt content: {ep} served a manifest hashing to {digest}, not the pinned {pin}")]
    RegistryPin {
        /// Where it came from.
        ep: Endpoint,
        /// What it hashes to.
        digest: String,
        /// The pinned digest.
        pin: String,
    },
    /// A registry's `Docker-Content-Digest` disagrees with the manifest.
    #[error("corrupt content: {ep} says the manifest is {header}, but it hashes to {digest}")]
    Header {
        /// Where it came from.
        ep: Endpoint,
        /// What the registry says.
        header: String,
        /// What it hashes to.
        digest: String,
    },
    /// A registry's manifest is not an image manifest or index.
    #[error("the manifest from {ep}: {cause}")]
    RegistryManifest {
        /// Where it came from.
        ep: Endpoint,
        /// Why.
        cause: ClassifyError,
    },
    /// A docker archive cannot match a pinned digest.
    #[error(
        "{shown} yields manifest {digest}, not the pinned {pin}: docker save does not keep registry digests; use an OCI layout (skopeo copy docker://… oci:…)"
    )]
    ArchivePin {
        /// The archive as written in the spec.
        shown: String,
        /// The manifest it yields.
        digest: String,
        /// The pinned digest.
        pin: String,
    },
    /// A layout holds another digest than the pinned one.
    #[error("{shown} holds {digest} for it, not the pinned {pin}")]
    LayoutPin {
        /// The layout as written in the spec.
        shown: String,
        /// What it holds.
        digest: String,
        /// The pinned digest.
        pin: String,
    },
    /// A layout's manifest is not an image manifest or index.
    #[error("{shown}: manifest {digest}: {cause}")]
    LayoutManifest {
        /// The layout as written in the spec.
        shown: String,
        /// The manifest's digest.
        digest: String,
        /// Why.
        cause: ClassifyError,
    },
    /// Indexes inside indexes inside indexes.
    #[error("index {0} nests indexes too deeply")]
    TooDeep(String),
    /// An index or manifest that does not parse.
    #[error("{kind} {digest} is not valid: {cause}")]
    Invalid {
        /// `index` or `manifest`.
        kind: &'static str,
        /// Its digest.
        digest: String,
        /// Why.
        cause: serde_json::Error,
    },
    /// A platform's manifest of an index failed.
    #[error("manifest for {platform}: {cause}")]
    Child {
        /// The platform.
        platform: String,
        /// Why.
        cause: Box<CollectError>,
    },
    /// A platform's manifest of an index is not an image manifest.
    #[error("manifest {digest} for {platform}: {cause}")]
    ChildKind {
        /// The manifest's digest.
        digest: String,
        /// The platform.
        platform: String,
        /// Why.
        cause: ClassifyError,
    },
    /// An index with none of `spec.platforms`.
    #[error("it has no manifest for {missing} (it has: {available})")]
    NoPlatform {
        /// The platforms wanted.
        missing: String,
        /// The platforms it has, or `none`.
        available: String,
    },
    /// The config of a single-platform image cannot be read.
    #[error("config: {0}")]
    Config(Box<StoreError>),
    /// A single-platform image of another platform.
    #[error("the image is built for {platform}, not for spec.platforms ({wanted})")]
    Platform {
        /// Its platform.
        platform: String,
        /// `spec.platforms`.
        wanted: String,
    },
    /// A blob of the image failed.
    #[error("{what} {digest}: {cause}")]
    Blob {
        /// `config`, `layer 2 for linux/arm64`, …
        what: String,
        /// The blob's digest.
        digest: String,
        /// Why (shared by every image needing the blob).
        cause: Arc<CollectError>,
    },
    /// Several failures, each source's or each blob's.
    #[error("{}", join(.0))]
    All(Vec<CollectError>),
}

impl From<StoreError> for CollectError {
    fn from(e: StoreError) -> CollectError {
        CollectError::Store(Box::new(e))
    }
}

fn join(errors: &[CollectError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// How to fetch one blob.
#[derive(Clone, Debug)]
enum Fetch {
    /// Already hashed while the manifest was written (legacy docker archives).
    Verified(Slice),
    /// In a local layout or archive; hashed before use.
    Local(Slice),
    /// From a registry endpoint.
    Registry { ep: Endpoint, repo: String },
}

impl Fetch {
    fn order(&self) -> u8 {
        match self {
            Fetch::Verified(_) => 0,
            Fetch::Local(_) => 1,
            Fetch::Registry { .. } => 2,
        }
    }
}

#[derive(Clone, Debug)]
struct Need {
    digest: String,
    size: u64,
    fetch: Fetch,
    what: String,
}

/// What one image's manifests amount to.
#[derive(Default)]
struct Walked {
    top_digest: String,
    top_media: String,
    /// Manifest and index blobs: digest → (media type, stored bytes).
    manifests: Vec<(String, String, Slice)>,
    needs: Vec<Need>,
    /// Config of a single-platform image, whose platform is checked once fetched.
    config_to_check: Option<String>,
    warnings: Vec<String>,
}

/// A resolved image.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What discovery found.
    pub discovered: Discovered,
    /// Digest of the top-level manifest or index.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Every blob it needs (manifests included).
    pub blobs: BTreeSet<String>,
}

/// The outcome of collection.
#[derive(Default)]
pub struct Outcome {
    /// Images fully available.
    pub resolved: Vec<Resolved>,
    /// (reference, where it was found, why it failed).
    pub failed: Vec<(Discovered, CollectError)>,
    /// Verified blobs of the resolved images.
    pub blobs: BTreeMap<String, Slice>,
    /// Media type of every stored manifest and index of the resolved images.
    pub manifests: BTreeMap<String, String>,
    /// Things the user should know.
    pub warnings: Vec<String>,
    /// Bytes fetched from registries.
    pub pulled: u64,
}

/// Where manifests and blobs of one image come from.
trait Origin: Sync {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, CollectError>;
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<Fetch, CollectError>;
}

struct RegistryOrigin<'a> {
    client: &'a RegistryClient,
    ep: Endpoint,
    repo: String,
}

impl Origin for RegistryOrigin<'_> {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, CollectError> {
        self.client.manifest(&self.ep, &self.repo, &desc.digest).map(|m| m.bytes).map_err(CollectError::Fetch)
    }
    fn blob(&self, _: &Descriptor, _: &str) -> Result<Fetch, CollectError> {
        Ok(Fetch::Registry { ep: self.ep.clone(), repo: self.repo.clone() })
    }
}

struct LayoutOrigin<'a> {
    layout: &'a OciLayout,
}

impl Origin for LayoutOrigin<'_> {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, CollectError> {
        let shown = || self.layout.shown.clone();
        let digest = || desc.digest.clone();
        let slice = self
            .layout
            .blob(&desc.digest)
            .ok_or_else(|| CollectError::NoManifest { shown: shown(), digest: digest() })?;
        slice.read(oci::MAX_MANIFEST_LEN).map_err(|cause| CollectError::ReadManifest {
            shown: shown(),
            digest: digest(),
            cause: Box::new(cause),
        })
    }
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<Fetch, CollectError> {
        self.layout.blob(&desc.digest).map(Fetch::Local).ok_or_else(|| CollectError::NoBlob {
            shown: self.layout.shown.clone(),
            digest: desc.digest.clone(),
            what: what.to_string(),
        })
    }
}

struct LegacyOrigin<'a> {
    blobs: &'a HashMap<String, Slice>,
    shown: &'a str,
}

impl Origin for LegacyOrigin<'_> {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, CollectError> {
        Err(CollectError::Nested { shown: self.shown.to_string(), digest: desc.digest.clone() })
    }
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<Fetch, CollectError> {
        self.blobs
            .get(&desc.digest)
            .cloned()
            .map(Fetch::Verified)
            .ok_or_else(|| CollectError::ArchiveLacks { shown: self.shown.to_string(), what: what.to_string() })
    }
}

/// Records a fully available image in the outcome.
fn add_resolved(out: &mut Outcome, d: &Discovered, w: Walked, blob_results: &BlobResults) {
    let name = d.image.to_string();
    out.warnings.extend(w.warnings.iter().map(|s| s.replace("{image}", &name)));
    let mut blobs = BTreeSet::new();
    for (digest, media, slice) in &w.manifests {
        out.manifests.insert(digest.clone(), media.clone());
        out.blobs.insert(digest.clone(), slice.clone());
        blobs.insert(digest.clone());
    }
    for n in &w.needs {
        if let Ok(s) = &blob_results[&n.digest] {
            out.blobs.insert(n.digest.clone(), s.clone());
        }
        blobs.insert(n.digest.clone());
    }
    out.resolved.push(Resolved { discovered: d.clone(), digest: w.top_digest, media_type: w.top_media, blobs });
}

/// Settings of one collection.
pub struct Collector<'a> {
    /// The registry client.
    pub client: &'a RegistryClient,
    /// Temporary blob storage.
    pub store: &'a Store,
    /// `spec.platforms`.
    pub platforms: &'a [Platform],
    /// Parallel workers.
    pub jobs: usize,
    /// Where progress goes.
    pub printer: &'a ferry_core::printer::Printer,
}

/// Checks that `bytes` are what `digest` and `size` promise.
fn check(bytes: &[u8], digest: &str, size: Option<u64>, what: &str) -> Result<(), CollectError> {
    if let Some(want) = size {
        let got = bytes.len() as u64;
        if got != want {
            return Err(CollectError::Size { what: what.into(), digest: digest.into(), got, want });
        }
    }
    let actual = digest_of(bytes);
    if actual != digest {
        return Err(CollectError::Hash { what: what.into(), digest: digest.into(), actual });
    }
    Ok(())
}

fn valid_digest(d: &Descriptor, what: &str) -> Result<(), CollectError> {
    parse_digest(&d.digest).map(|_| ()).map_err(|cause| CollectError::Digest { what: what.into(), cause })
}

/// Each blob's outcome, shared by every image that needs it.
type BlobResults = HashMap<String, Result<Slice, Arc<CollectError>>>;

impl Collector<'_> {
    /// Resolves every image.
    pub fn run(&self, images: &[Discovered]) -> Outcome {
        let walked = self.manifests(images);
        let (blob_results, pulled) = self.blobs(&walked);
        let mut out = Outcome { pulled, ..Default::default() };
        for (d, w) in images.iter().zip(walked) {
            match w.and_then(|w| self.complete(&w, &blob_results).map(|()| w)) {
                Ok(w) => add_resolved(&mut out, d, w, &blob_results),
                Err(e) => out.failed.push((d.clone(), e)),
            }
        }
        out
    }

    /// Phase 1: every image's manifests, one image per worker.
    fn manifests(&self, images: &[Discovered]) -> Vec<Result<Walked, CollectError>> {
        let walked: Vec<Mutex<Option<Result<Walked, CollectError>>>> =
            images.iter().map(|_| Mutex::new(None)).collect();
        self.parallel(images.len(), |i| {
            let r = self.resolve(&images[i], &|_| {});
            *walked[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
        });
        walked
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every image ran"))
            .collect()
    }

    /// Phase 2: the unique blobs, the cheapest source of each first; also the bytes pulled.
    fn blobs(&self, walked: &[Result<Walked, CollectError>]) -> (BlobResults, u64) {
        let mut needs: BTreeMap<String, Vec<Need>> = BTreeMap::new();
        for w in walked.iter().flatten() {
            for n in &w.needs {
                needs.entry(n.digest.clone()).or_default().push(n.clone());
            }
        }
        for list in needs.values_mut() {
            list.sort_by_key(|n| n.fetch.order());
        }
        let total = needs.values().filter(|l| !matches!(l[0].fetch, Fetch::Verified(_))).map(|l| l[0].size).sum();
        let bar = self.printer.progress(total, "images");
        let progress = &|n: u64| bar.inc(n);
        let unique: Vec<(String, Vec<Need>)> = needs.into_iter().collect();
        let results: Vec<Mutex<Option<Result<Slice, CollectError>>>> =
            unique.iter().map(|_| Mutex::new(None)).collect();
        let pulled = std::sync::atomic::AtomicU64::new(0);
        self.parallel(unique.len(), |i| {
            let (digest, candidates) = &unique[i];
            let r = self.fetch(digest, candidates, progress, &pulled);
            *results[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
        });
        bar.finish();
        let blob_results = unique
            .into_iter()
            .zip(results)
            .map(|((d, _), r)| {
                let r = r.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every blob ran");
                (d, r.map_err(Arc::new))
            })
            .collect();
        (blob_results, pulled.into_inner())
    }

    /// Whether every blob of a walked image arrived (and a single-platform image's config names
    /// one of `spec.platforms`).
    fn complete(&self, w: &Walked, blob_results: &BlobResults) -> Result<(), CollectError> {
        let mut failures = Vec::new();
        let mut seen = BTreeSet::new();
        for n in &w.needs {
            if seen.insert(n.digest.clone())
                && let Err(e) = &blob_results[&n.digest]
            {
                failures.push(CollectError::Blob { what: n.what.clone(), digest: n.digest.clone(), cause: e.clone() });
            }
        }
        if failures.is_empty() {
            if let Some(cfg) = &w.config_to_check
                && let Ok(slice) = &blob_results[cfg]
            {
                self.check_config_platform(slice)?;
            }
            return Ok(());
        }
        Err(CollectError::All(failures))
    }

    /// Runs `f(0..n)` on at most `jobs` threads.
    fn parallel(&self, n: usize, f: impl Fn(usize) + Sync) {
        let next = AtomicUsize::new(0);
        let workers = self.jobs.clamp(1, n.max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        f(i);
                    }
                });
            }
        });
    }

    fn check_config_platform(&self, slice: &Slice) -> Result<(), CollectError> {
        let bytes = slice.read(64 << 20).map_err(|e| CollectError::Config(Box::new(e)))?;
        match oci::config_platform(&bytes) {
            Some(platform) if !self.platforms.iter().any(|want| want.accepts(&platform)) => {
                Err(CollectError::Platform {
                    platform: platform.to_string(),
                    wanted: self.platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                })
            }
            _ => Ok(()),
        }
    }

    fn fetch(
        &self,
        digest: &str,
        candidates: &[Need],
        progress: &(dyn Fn(u64) + Sync),
        pulled: &std::sync::atomic::AtomicU64,
    ) -> Result<Slice, CollectError> {
        let mut errors: Vec<CollectError> = Vec::new();
        for n in candidates {
            let r = match &n.fetch {
                Fetch::Verified(s) => Ok(s.clone()),
                Fetch::Local(s) => {
                    s.verify(digest, progress).map(|_| s.clone()).map_err(|e| CollectError::Corrupt(Box::new(e)))
                }
                Fetch::Registry { ep, repo } => self.pull(ep, repo, digest, n.size, progress, pulled),
            };
            match r {
                Ok(s) => return Ok(s),
                Err(e) => {
                    // Sources that fail alike are named once.
                    let text = e.to_string();
                    if !errors.iter().any(|seen| seen.to_string() == text) {
                        errors.push(e)
                    }
                }
            }
        }
        Err(if errors.len() == 1 { errors.remove(0) } else { CollectError::All(errors) })
    }

    /// Blob `digest` from a registry into the store, unless an earlier build step stored it.
    fn pull(
        &self,
        ep: &Endpoint,
        repo: &str,
        digest: &str,
        size: u64,
        progress: &(dyn Fn(u64) + Sync),
        pulled: &std::sync::atomic::AtomicU64,
    ) -> Result<Slice, CollectError> {
        let dest = self.store.path_for(digest);
        if !dest.exists() {
            self.client.blob(ep, repo, digest, size, &dest, progress).map_err(CollectError::Fetch)?;
            pulled.fetch_add(size, Ordering::Relaxed);
        }
        Ok(Slice { path: dest, offset: 0, size })
    }

    fn resolve(&self, d: &Discovered, progress: &(dyn Fn(u64) + Sync)) -> Result<Walked, CollectError> {
        match &d.source {
            Source::Registry => self.registry_image(d),
            Source::Oci { path, shown, tag } => {
                let layout = OciLayout::open(path, shown)?;
                let desc = layout.select(&d.image, tag.as_deref())?;
                self.layout_image(&layout, &desc, d)
            }
            Source::DockerArchive { path, shown } => self.archive_image(d, path, shown, progress),
        }
    }

    fn registry_image(&self, d: &Discovered) -> Result<Walked, CollectError> {
        let image = &d.image;
        let eps = self.client.network().endpoints(&image.registry);
        let (ep, m) =
            self.client.manifest_any(&eps, &image.repository, image.reference()).map_err(CollectError::Fetch)?;
        let digest = digest_of(&m.bytes);
        if let Some(pin) = &image.digest
            && &digest != pin
        {
            return Err(CollectError::RegistryPin { ep, digest, pin: pin.clone() });
        }
        if let Some(h) = m.digest_header.as_deref().filter(|h| h.starts_with("sha256:"))
            && h != digest
        {
            return Err(CollectError::Header { ep, header: h.to_string(), digest });
        }
        let (kind, media) = match classify(&m.bytes, m.content_type.as_deref()) {
            Ok(km) => km,
            Err(cause) => return Err(CollectError::RegistryManifest { ep, cause }),
        };
        let origin = RegistryOrigin { client: self.client, ep, repo: image.repository.clone() };
        self.walk_top(&origin, &m.bytes, kind, &digest, &media)
    }

    fn archive_image(
        &self,
        d: &Discovered,
        path: &std::path::Path,
        shown: &str,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Walked, CollectError> {
        let image = &d.image;
        let mut w = match DockerArchive::open(path, shown)? {
            DockerArchive::Oci(layout) => {
                let desc = layout.select(image, None)?;
                self.layout_image(&layout, &desc, d)?
            }
            DockerArchive::Legacy { files, entries, shown } => {
                let entry = DockerArchive::select_legacy(&entries, image, &shown)?;
                let synth = DockerArchive::synthesize(&files, entry, &shown, progress)?;
                let digest = digest_of(&synth.manifest);
                if let Some(pin) = &image.digest {
                    return Err(CollectError::ArchivePin { shown, digest, pin: pin.clone() });
                }
                let origin = LegacyOrigin { blobs: &synth.blobs, shown: &shown };
                self.walk_top(&origin, &synth.manifest, Kind::Manifest, &digest, oci::OCI_MANIFEST)?
            }
        };
        w.warnings.push(format!(
            "{image} comes from {shown}: docker save rewrites manifests, so its digest ({}) is not the registry's and references pinned with @sha256: to the registry's image will not resolve",
            w.top_digest
        ));
        Ok(w)
    }

    fn layout_image(&self, layout: &OciLayout, desc: &Descriptor, d: &Discovered) -> Result<Walked, CollectError> {
        valid_digest(desc, &format!("{}: index.json", layout.shown))?;
        let origin = LayoutOrigin { layout };
        let bytes = origin.manifest(desc)?;
        check(&bytes, &desc.digest, Some(desc.size), &format!("{}: manifest", layout.shown))?;
        if let Some(pin) = &d.image.digest
            && pin != &desc.digest
        {
            let (shown, digest, pin) = (layout.shown.clone(), desc.digest.clone(), pin.clone());
            return Err(CollectError::LayoutPin { shown, digest, pin });
        }
        let (kind, media) = classify(&bytes, desc.media_type.as_deref()).map_err(|cause| {
            CollectError::LayoutManifest { shown: layout.shown.clone(), digest: desc.digest.clone(), cause }
        })?;
        self.walk_top(&origin, &bytes, kind, &desc.digest, &media)
    }

    fn walk_top(
        &self,
        origin: &dyn Origin,
        bytes: &[u8],
        kind: Kind,
        digest: &str,
        media: &str,
    ) -> Result<Walked, CollectError> {
        let mut w = Walked { top_digest: digest.to_string(), top_media: media.to_string(), ..Default::default() };
        self.walk(origin, bytes, kind, digest, media, &mut w, 0, None)?;
        Ok(w)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        origin: &dyn Origin,
        bytes: &[u8],
        kind: Kind,
        digest: &str,
        media: &str,
        w: &mut Walked,
        depth: usize,
        platform: Option<&Platform>,
    ) -> Result<(), CollectError> {
        let slice = self.store.put(digest, bytes)?;
        w.manifests.push((digest.to_string(), media.to_string(), slice));
        match kind {
            Kind::Index => self.walk_index(origin, bytes, digest, w, depth),
            Kind::Manifest => walk_manifest(origin, bytes, digest, w, depth, platform),
        }
    }

    /// The children of an index for `spec.platforms`.
    fn walk_index(
        &self,
        origin: &dyn Origin,
        bytes: &[u8],
        digest: &str,
        w: &mut Walked,
        depth: usize,
    ) -> Result<(), CollectError> {
        if depth >= 2 {
            return Err(CollectError::TooDeep(digest.to_string()));
        }
        let idx: IndexDoc = serde_json::from_slice(bytes).map_err(|cause| invalid("index", digest, cause))?;
        let mut matched = vec![false; self.platforms.len()];
        let mut available = Vec::new();
        for child in &idx.manifests {
            let Some(p) = &child.platform else { continue };
            available.push(p.to_string());
            let hits: Vec<usize> =
                self.platforms.iter().enumerate().filter(|(_, want)| want.accepts(p)).map(|(i, _)| i).collect();
            if hits.is_empty() {
                continue;
            }
            for i in hits {
                matched[i] = true;
            }
            self.walk_child(origin, child, p, digest, w, depth)?;
        }
        let missing: Vec<String> =
            self.platforms.iter().zip(&matched).filter(|(_, m)| !**m).map(|(p, _)| p.to_string()).collect();
        if matched.iter().all(|m| !m) {
            available.dedup();
            return Err(CollectError::NoPlatform {
                missing: missing.join(", "),
                available: if available.is_empty() { "none".into() } else { available.join(", ") },
            });
        }
        if !missing.is_empty() && depth == 0 {
            w.warnings.push(format!(
                "{{image}} has no manifest for {}; nodes of that platform cannot run it",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    /// One platform's manifest of index `index`.
    fn walk_child(
        &self,
        origin: &dyn Origin,
        child: &Descriptor,
        p: &Platform,
        index: &str,
        w: &mut Walked,
        depth: usize,
    ) -> Result<(), CollectError> {
        valid_digest(child, &format!("index {index}"))?;
        let cbytes = origin
            .manifest(child)
            .map_err(|cause| CollectError::Child { platform: p.to_string(), cause: Box::new(cause) })?;
        check(&cbytes, &child.digest, Some(child.size), &format!("manifest for {p}"))?;
        let (ck, cm) = classify(&cbytes, child.media_type.as_deref()).map_err(|cause| CollectError::ChildKind {
            digest: child.digest.clone(),
            platform: p.to_string(),
            cause,
        })?;
        self.walk(origin, &cbytes, ck, &child.digest, &cm, w, depth + 1, Some(p))
    }
}

/// The config and layers of a manifest.
fn walk_manifest(
    origin: &dyn Origin,
    bytes: &[u8],
    digest: &str,
    w: &mut Walked,
    depth: usize,
    platform: Option<&Platform>,
) -> Result<(), CollectError> {
    let m: ManifestDoc = serde_json::from_slice(bytes).map_err(|cause| invalid("manifest", digest, cause))?;
    let on = platform.map(|p| format!(" for {p}")).unwrap_or_default();
    let what = format!("config{on}");
    valid_digest(&m.config, &what)?;
    w.needs.push(Need {
        digest: m.config.digest.clone(),
        size: m.config.size,
        fetch: origin.blob(&m.config, &what)?,
        what,
    });
    for (i, l) in m.layers.iter().enumerate() {
        let what = format!("layer {}{on}", i + 1);
        valid_digest(l, &what)?;
        w.needs.push(Need { digest: l.digest.clone(), size: l.size, fetch: origin.blob(l, &what)?, what });
    }
    if depth == 0 {
        w.config_to_check = Some(m.config.digest.clone());
    }
    Ok(())
}

fn invalid(kind: &'static str, digest: &str, cause: serde_json::Error) -> CollectError {
    CollectError::Invalid { kind, digest: digest.to_string(), cause }
}
