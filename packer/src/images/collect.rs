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
use super::docker_archive::DockerArchive;
use super::oci::{self, Descriptor, IndexDoc, Kind, ManifestDoc, Platform, classify, digest_of};
use super::oci_layout::OciLayout;
use super::registry_client::{Endpoint, RegistryClient};
use super::store::{Slice, Store};
use ferry_core::image_ref::parse_digest;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    pub failed: Vec<(Discovered, String)>,
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
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, String>;
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<Fetch, String>;
}

struct RegistryOrigin<'a> {
    client: &'a RegistryClient,
    ep: Endpoint,
    repo: String,
}

impl Origin for RegistryOrigin<'_> {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, String> {
        self.client.manifest(&self.ep, &self.repo, &desc.digest).map(|m| m.bytes).map_err(|e| e.to_string())
    }
    fn blob(&self, _: &Descriptor, _: &str) -> Result<Fetch, String> {
        Ok(Fetch::Registry { ep: self.ep.clone(), repo: self.repo.clone() })
    }
}

struct LayoutOrigin<'a> {
    layout: &'a OciLayout,
}

impl Origin for LayoutOrigin<'_> {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, String> {
        let slice = self
            .layout
            .blob(&desc.digest)
            .ok_or_else(|| format!("{} lacks blob {} (a manifest)", self.layout.shown, desc.digest))?;
        slice.read(oci::MAX_MANIFEST_LEN).map_err(|e| format!("{}: manifest {}: {e}", self.layout.shown, desc.digest))
    }
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<Fetch, String> {
        self.layout
            .blob(&desc.digest)
            .map(Fetch::Local)
            .ok_or_else(|| format!("{} lacks blob {} (the {what})", self.layout.shown, desc.digest))
    }
}

struct LegacyOrigin<'a> {
    blobs: &'a HashMap<String, Slice>,
    shown: &'a str,
}

impl Origin for LegacyOrigin<'_> {
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, String> {
        Err(format!("{}: unexpected nested manifest {}", self.shown, desc.digest))
    }
    fn blob(&self, desc: &Descriptor, what: &str) -> Result<Fetch, String> {
        self.blobs
            .get(&desc.digest)
            .cloned()
            .map(Fetch::Verified)
            .ok_or_else(|| format!("{} lacks the {what}", self.shown))
    }
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
fn check(bytes: &[u8], digest: &str, size: Option<u64>, what: &str) -> Result<(), String> {
    if let Some(s) = size {
        if bytes.len() as u64 != s {
            return Err(format!("corrupt content: {what} {digest} is {} bytes, its descriptor says {s}", bytes.len()));
        }
    }
    let actual = digest_of(bytes);
    if actual != digest {
        return Err(format!("corrupt content: {what} {digest} hashes to {actual}"));
    }
    Ok(())
}

fn valid_digest(d: &Descriptor, what: &str) -> Result<(), String> {
    parse_digest(&d.digest).map(|_| ()).map_err(|e| format!("{what}: {e}"))
}

impl Collector<'_> {
    /// Resolves every image.
    pub fn run(&self, images: &[Discovered]) -> Outcome {
        // Phase 1: manifests.
        let walked: Vec<Mutex<Option<Result<Walked, String>>>> = images.iter().map(|_| Mutex::new(None)).collect();
        self.parallel(images.len(), |i| {
            let r = self.resolve(&images[i], &|_| {});
            *walked[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
        });
        let walked: Vec<Result<Walked, String>> = walked
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every image ran"))
            .collect();

        // Phase 2: unique blobs; the cheapest source of each first.
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
        let results: Vec<Mutex<Option<Result<Slice, String>>>> = unique.iter().map(|_| Mutex::new(None)).collect();
        let pulled = std::sync::atomic::AtomicU64::new(0);
        self.parallel(unique.len(), |i| {
            let (digest, candidates) = &unique[i];
            let r = self.fetch(digest, candidates, progress, &pulled);
            *results[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
        });
        bar.finish();
        let blob_results: HashMap<String, Result<Slice, String>> = unique
            .into_iter()
            .zip(results)
            .map(|((d, _), r)| {
                (d, r.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every blob ran"))
            })
            .collect();

        // Assemble per image.
        let mut out = Outcome { pulled: pulled.into_inner(), ..Default::default() };
        for (d, w) in images.iter().zip(walked) {
            let w = match w {
                Ok(w) => w,
                Err(e) => {
                    out.failed.push((d.clone(), e));
                    continue;
                }
            };
            let mut failures: Vec<String> = Vec::new();
            let mut seen = BTreeSet::new();
            for n in &w.needs {
                if seen.insert(n.digest.clone()) {
                    if let Err(e) = &blob_results[&n.digest] {
                        failures.push(format!("{} {}: {e}", n.what, n.digest));
                    }
                }
            }
            if failures.is_empty() {
                if let Some(cfg) = &w.config_to_check {
                    if let Err(e) = self.check_config_platform(&blob_results[cfg]) {
                        failures.push(e);
                    }
                }
            }
            if !failures.is_empty() {
                out.failed.push((d.clone(), failures.join("; ")));
                continue;
            }
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
        out
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

    fn check_config_platform(&self, config: &Result<Slice, String>) -> Result<(), String> {
        let Ok(slice) = config else { return Ok(()) };
        let bytes = slice.read(64 << 20).map_err(|e| format!("config: {e}"))?;
        match oci::config_platform(&bytes) {
            Some(p) if !self.platforms.iter().any(|want| want.accepts(&p)) => Err(format!(
                "the image is built for {p}, not for spec.platforms ({})",
                self.platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            )),
            _ => Ok(()),
        }
    }

    fn fetch(
        &self,
        digest: &str,
        candidates: &[Need],
        progress: &(dyn Fn(u64) + Sync),
        pulled: &std::sync::atomic::AtomicU64,
    ) -> Result<Slice, String> {
        let mut errors = Vec::new();
        for n in candidates {
            let r = match &n.fetch {
                Fetch::Verified(s) => Ok(s.clone()),
                Fetch::Local(s) => {
                    s.verify(digest, progress).map(|_| s.clone()).map_err(|e| format!("corrupt content: {e}"))
                }
                Fetch::Registry { ep, repo } => {
                    let dest = self.store.path_for(digest);
                    if dest.exists() {
                        Ok(Slice { path: dest, offset: 0, size: n.size })
                    } else {
                        self.client
                            .blob(ep, repo, digest, n.size, &dest, progress)
                            .map(|_| {
                                pulled.fetch_add(n.size, Ordering::Relaxed);
                                Slice { path: dest, offset: 0, size: n.size }
                            })
                            .map_err(|e| e.to_string())
                    }
                }
            };
            match r {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if !errors.contains(&e) {
                        errors.push(e)
                    }
                }
            }
        }
        Err(errors.join("; "))
    }

    fn resolve(&self, d: &Discovered, progress: &(dyn Fn(u64) + Sync)) -> Result<Walked, String> {
        let image = &d.image;
        match &d.source {
            Source::Registry => {
                let eps = self.client.network().endpoints(&image.registry);
                let (ep, m) =
                    self.client.manifest_any(&eps, &image.repository, image.reference()).map_err(|e| e.to_string())?;
                let digest = digest_of(&m.bytes);
                if let Some(pin) = &image.digest {
                    if &digest != pin {
                        return Err(format!(
                            "corrupt content: {ep} served a manifest hashing to {digest}, not the pinned {pin}"
                        ));
                    }
                }
                if let Some(h) = m.digest_header.as_deref().filter(|h| h.starts_with("sha256:")) {
                    if h != digest {
                        return Err(format!(
                            "corrupt content: {ep} says the manifest is {h}, but it hashes to {digest}"
                        ));
                    }
                }
                let (kind, media) = classify(&m.bytes, m.content_type.as_deref())
                    .map_err(|e| format!("the manifest from {ep}: {e}"))?;
                let origin = RegistryOrigin { client: self.client, ep, repo: image.repository.clone() };
                self.walk_top(&origin, &m.bytes, kind, &digest, &media)
            }
            Source::Oci { path, shown, tag } => {
                let layout = OciLayout::open(path, shown).map_err(|e| e.to_string())?;
                let desc = layout.select(image, tag.as_deref()).map_err(|e| e.to_string())?;
                self.from_layout(&layout, &desc, d)
            }
            Source::DockerArchive { path, shown } => {
                let mut w = match DockerArchive::open(path, shown).map_err(|e| e.to_string())? {
                    DockerArchive::Oci(layout) => {
                        let desc = layout.select(image, None).map_err(|e| e.to_string())?;
                        self.from_layout(&layout, &desc, d)?
                    }
                    DockerArchive::Legacy { files, entries, shown } => {
                        let entry = DockerArchive::select_legacy(&entries, image, &shown).map_err(|e| e.to_string())?;
                        let synth =
                            DockerArchive::synthesize(&files, entry, &shown, progress).map_err(|e| e.to_string())?;
                        let digest = digest_of(&synth.manifest);
                        if let Some(pin) = &image.digest {
                            return Err(format!(
                                "{shown} yields manifest {digest}, not the pinned {pin}: docker save does not keep registry digests; use an OCI layout (skopeo copy docker://… oci:…)"
                            ));
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
        }
    }

    fn from_layout(&self, layout: &OciLayout, desc: &Descriptor, d: &Discovered) -> Result<Walked, String> {
        valid_digest(desc, &format!("{}: index.json", layout.shown))?;
        let origin = LayoutOrigin { layout };
        let bytes = origin.manifest(desc)?;
        check(&bytes, &desc.digest, Some(desc.size), &format!("{}: manifest", layout.shown))?;
        if let Some(pin) = &d.image.digest {
            if pin != &desc.digest {
                return Err(format!("{} holds {} for it, not the pinned {pin}", layout.shown, desc.digest));
            }
        }
        let (kind, media) = classify(&bytes, desc.media_type.as_deref())
            .map_err(|e| format!("{}: manifest {}: {e}", layout.shown, desc.digest))?;
        self.walk_top(&origin, &bytes, kind, &desc.digest, &media)
    }

    fn walk_top(
        &self,
        origin: &dyn Origin,
        bytes: &[u8],
        kind: Kind,
        digest: &str,
        media: &str,
    ) -> Result<Walked, String> {
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
    ) -> Result<(), String> {
        let slice = self.store.put(digest, bytes).map_err(|e| e.to_string())?;
        w.manifests.push((digest.to_string(), media.to_string(), slice));
        match kind {
            Kind::Index => {
                if depth >= 2 {
                    return Err(format!("index {digest} nests indexes too deeply"));
                }
                let idx: IndexDoc =
                    serde_json::from_slice(bytes).map_err(|e| format!("index {digest} is not valid: {e}"))?;
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
                    valid_digest(child, &format!("index {digest}"))?;
                    let cbytes = origin.manifest(child).map_err(|e| format!("manifest for {p}: {e}"))?;
                    check(&cbytes, &child.digest, Some(child.size), &format!("manifest for {p}"))?;
                    let (ck, cm) = classify(&cbytes, child.media_type.as_deref())
                        .map_err(|e| format!("manifest {} for {p}: {e}", child.digest))?;
                    self.walk(origin, &cbytes, ck, &child.digest, &cm, w, depth + 1, Some(p))?;
                }
                let missing: Vec<String> =
                    self.platforms.iter().zip(&matched).filter(|(_, m)| !**m).map(|(p, _)| p.to_string()).collect();
                if matched.iter().all(|m| !m) {
                    available.dedup();
                    return Err(format!(
                        "it has no manifest for {} (it has: {})",
                        missing.join(", "),
                        if available.is_empty() { "none".into() } else { available.join(", ") }
                    ));
                }
                if !missing.is_empty() && depth == 0 {
                    w.warnings.push(format!(
                        "{{image}} has no manifest for {}; nodes of that platform cannot run it",
                        missing.join(", ")
                    ));
                }
            }
            Kind::Manifest => {
                let m: ManifestDoc =
                    serde_json::from_slice(bytes).map_err(|e| format!("manifest {digest} is not valid: {e}"))?;
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
            }
        }
        Ok(())
    }
}
