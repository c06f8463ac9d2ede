//! `registry push --to REGISTRY[/PREFIX]`: every image the installer carries, copied into the
//! site's own registry (Harbor, distribution, zot…).
//!
//! Nothing is rewritten: every manifest and index goes byte for byte under its own digest,
//! every blob under its own, so a pull by the original reference (through `hosts.toml`, see
//! [`super::config`]) or by digest gets exactly what the bundle was built with. Repository paths
//! are kept, under PREFIX when given: `docker.io/library/nginx:1.27` becomes
//! `REGISTRY/PREFIX/library/nginx:1.27`. Two source registries that would put different content
//! under the same tag are refused before anything is sent.
//!
//! Order per repository: configs and layers first (each checked against the signed index before
//! a byte leaves; skipped when the registry has it; mounted when another repository of this run
//! holds it; else sent in chunks that a killed run resumes), then manifests children first, then
//! the tags. Any failure leaves the registry with complete blobs only, and the same command
//! continues.

use super::integrity::{IntegrityError, VerifiedFile};
use super::store::{BlobId, Store};
use super::{RegistryError, open_trusted};
use crate::cli::RegistryPushArgs;
use crate::printer::Printer;
use bytes::Bytes;
use ferry_core::oci;
use ferry_distribution::credentials::{Credentials, CredentialsError, Login};
use ferry_distribution::remote::{Access, Reference, Remote, RemoteError, default_resume_dir};
use ferry_distribution::upload::{BlobSource, BlobToSend, Counters, SendBody, Uploader, with_retries};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Why `registry push` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SitePushError {
    /// `--to` is not `HOST[:PORT][/PREFIX]`.
    #[error("--to `{given}`: {why} (expected HOST[:PORT][/PREFIX], e.g. registry.site.lan:5000/platform)")]
    Target {
        /// What was given.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// The installer cannot be opened, trusted or read.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// `--registry-auth` or Docker's config cannot be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// `--credential-file` cannot be read or is not `user:password`.
    #[error("{}: {problem}", path.display())]
    CredentialFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never its content).
        problem: String,
    },
    /// Images of different source registries would share a tag with different content.
    #[error(
        "these images would land on the same tag of the site registry with different content:\n  {}\n\
         ferry keeps repository paths and never rewrites a reference; push them under different prefixes \
         from separate installers, or leave one of them out of the bundle",
        .0.join("\n  ")
    )]
    Conflicts(Vec<String>),
    /// A blob of the installer does not match the signed index.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// The registry refused or failed.
    #[error("pushing {what} to {to}: {cause}")]
    Remote {
        /// What was being pushed, e.g. `docker.io/library/app:1`.
        what: String,
        /// The site repository.
        to: String,
        /// Why.
        cause: Box<RemoteError>,
    },
    /// The registry refused an index whose platforms the installer carries only in part.
    #[error(
        "pushing {image} to {to}: {cause}. Its index names platforms the installer does not carry ({missing}), \
         and this registry wants every manifest an index names; ferry never rewrites an index. Build the \
         installer with all of the image's platforms in spec.platforms, or use a registry that accepts \
         partial indexes (zot; distribution v3 with validation.manifests.indexes.platforms: none)"
    )]
    PartialIndex {
        /// The image.
        image: String,
        /// The site repository.
        to: String,
        /// The platforms (or digests) missing.
        missing: String,
        /// The registry's answer.
        cause: Box<RemoteError>,
    },
}

/// `HOST[:PORT][/PREFIX]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]`.
    pub host: String,
    /// Path components to put repositories under (empty for none).
    pub prefix: String,
}

impl Target {
    /// The site repository for a bundle repository path.
    pub fn repository(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", self.prefix) }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() { write!(f, "{}", self.host) } else { write!(f, "{}/{}", self.host, self.prefix) }
    }
}

/// Parses `--to`.
pub fn parse_target(given: &str) -> Result<Target, SitePushError> {
    let bad = |why: &str| SitePushError::Target { given: given.to_string(), why: why.to_string() };
    if given.contains("://") {
        return Err(bad("give the registry without a scheme (https is used; --plain-http for http)"));
    }
    let trimmed = given.trim().trim_end_matches('/');
    let (host, prefix) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) {
        return Err(bad("the registry is not HOST[:PORT]"));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !prefix.is_empty() && !prefix.split('/').all(component_ok) {
        return Err(bad("the prefix must be lowercase path components of [a-z0-9._-]"));
    }
    Ok(Target { host: host.to_ascii_lowercase(), prefix: prefix.to_string() })
}

/// What one site repository receives.
#[derive(Debug, Default)]
struct RepoPlan {
    /// The site repository (PREFIX/NAME).
    target: String,
    /// The bundle's repositories that go there (`registry/name`), for messages.
    sources: Vec<String>,
    /// Configs and layers, each once.
    leaves: Vec<BlobId>,
    /// Manifests and indexes, children before the indexes naming them, each once.
    manifests: Vec<BlobId>,
    /// Tag → top-level manifest or index.
    tags: BTreeMap<String, BlobId>,
    /// Where each tag came from (`registry/name:tag`), for conflict messages.
    tag_sources: BTreeMap<String, String>,
}

/// The repositories to fill, in the bundle's order; conflicts refused.
fn plan(store: &Store, target: &Target) -> Result<Vec<RepoPlan>, SitePushError> {
    let mut by_target: BTreeMap<String, RepoPlan> = BTreeMap::new();
    let mut seen: HashMap<String, HashSet<BlobId>> = HashMap::new();
    let mut conflicts = Vec::new();
    for repo in store.repos.values() {
        let to = target.repository(&repo.name);
        let source = format!("{}/{}", repo.registry, repo.name);
        let rp = by_target.entry(to.clone()).or_insert_with(|| RepoPlan { target: to.clone(), ..Default::default() });
        rp.sources.push(source.clone());
        for (tag, &top) in &repo.tags {
            match rp.tags.get(tag) {
                Some(&other) if other != top => {
                    conflicts.push(format!("{} and {source}:{tag} → {}/{to}:{tag}", rp.tag_sources[tag], target.host))
                }
                _ => {
                    rp.tags.insert(tag.clone(), top);
                    rp.tag_sources.insert(tag.clone(), format!("{source}:{tag}"));
                }
            }
        }
        let seen = seen.entry(to).or_default();
        for &top in &repo.images {
            visit(store, top, seen, &mut rp.manifests, &mut rp.leaves);
        }
    }
    if !conflicts.is_empty() {
        return Err(SitePushError::Conflicts(conflicts));
    }
    Ok(by_target.into_values().collect())
}

/// Post-order walk: a manifest's blobs and children before the manifest itself.
fn visit(store: &Store, id: BlobId, seen: &mut HashSet<BlobId>, manifests: &mut Vec<BlobId>, leaves: &mut Vec<BlobId>) {
    if !seen.insert(id) {
        return;
    }
    if store.is_manifest(id) {
        for &child in store.children(id) {
            visit(store, child, seen, manifests, leaves);
        }
        manifests.push(id);
    } else {
        leaves.push(id);
    }
}

/// A blob that is a slice of the mapped installer, checked before it is sent.
struct MappedBlob(Bytes);

impl BlobSource for MappedBlob {
    fn body(&self, from: u64, len: u64, counter: Arc<dyn Fn(u64) + Send + Sync>) -> SendBody<'static> {
        let part = self.0.slice(from as usize..(from + len) as usize);
        SendBody::from_owned_reader(CountingBytes { bytes: part, at: 0, counter })
    }
}

/// Reads a `Bytes`, telling `counter` what it yields.
struct CountingBytes {
    bytes: Bytes,
    at: usize,
    counter: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Read for CountingBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        (self.counter)(n as u64);
        Ok(n)
    }
}

/// What `registry push` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct SitePushSummary {
    /// Always `summary`.
    pub event: &'static str,
    /// `HOST[/PREFIX]`.
    pub to: String,
    /// Site repositories written.
    pub repositories: usize,
    /// Tags written.
    pub tags: usize,
    /// Manifests and indexes written (by digest).
    pub manifests: usize,
    /// Configs and layers, counted per repository.
    pub blobs: usize,
    /// Of those, already in the repository or mounted from another one.
    pub blobs_present: u64,
    /// Of those, mounted from another repository of the same registry.
    pub blobs_mounted: u64,
    /// Bytes of blob content sent (a resumed or retried chunk counts again).
    pub bytes_sent: u64,
    /// Bytes the registry already had.
    pub bytes_present: u64,
}

/// Runs `registry push`.
pub fn run(args: &RegistryPushArgs, printer: &Printer) -> Result<(), SitePushError> {
    // With --json, stdout carries the summary alone (warnings still go to stderr).
    let quiet = Printer::new(true, true);
    let printer = if args.json { &quiet } else { printer };
    let target = parse_target(&args.to)?;
    let access = access(args, &target)?;
    let payload = open_trusted(&args.file, &args.trust, printer)?;
    let file = VerifiedFile::new(payload).map_err(RegistryError::from)?;
    let store = Store::build(&file).map_err(RegistryError::from)?;
    for w in &store.warnings {
        printer.warn(w);
    }
    let plans = plan(&store, &target)?;
    let total: u64 = plans.iter().flat_map(|p| &p.leaves).map(|&id| store.blob(id).size).sum();
    let progress = printer.progress(total, "push");
    let counters = Counters::default();
    let pusher = Pusher {
        file: &file,
        store: &store,
        target: &target,
        access: &access,
        counters: &counters,
        progress: &|n| progress.inc(n),
        chunk: args.chunk_mib.clamp(1, 4096) << 20,
        jobs: args.jobs.clamp(1, 16),
        resume_dir: if args.no_resume { None } else { default_resume_dir() },
        holders: Mutex::default(),
    };
    let mut summary = SitePushSummary { event: "summary", to: target.to_string(), ..Default::default() };
    for rp in &plans {
        pusher.push_repo(rp)?;
        summary.repositories += 1;
        summary.tags += rp.tags.len();
        summary.manifests += rp.manifests.len();
        summary.blobs += rp.leaves.len();
    }
    progress.finish();
    summary.blobs_present = counters.present.load(Ordering::Relaxed);
    summary.blobs_mounted = counters.mounted.load(Ordering::Relaxed);
    summary.bytes_sent = counters.sent.load(Ordering::Relaxed);
    summary.bytes_present = counters.present_bytes.load(Ordering::Relaxed);
    if args.json {
        crate::printer::stdout_line(&serde_json::to_string(&summary).unwrap_or_default());
    } else {
        printer.out(format!(
            "pushed {} tags in {} repositories to {}: {} manifests, {} blobs ({} already there, {} mounted), {} sent",
            summary.tags,
            summary.repositories,
            summary.to,
            summary.manifests,
            summary.blobs,
            summary.blobs_present,
            summary.blobs_mounted,
            crate::units::bytes(summary.bytes_sent)
        ));
    }
    Ok(())
}

/// How to reach and log in to the site registry: `--credential-file` for its host over
/// `--registry-auth` over Docker's config.
fn access(args: &RegistryPushArgs, target: &Target) -> Result<Access, SitePushError> {
    let mut credentials = Credentials::load(&args.registry_auth)?;
    if let Some(path) = &args.credential_file {
        let problem = |problem: &str| SitePushError::CredentialFile { path: path.clone(), problem: problem.into() };
        let text = std::fs::read_to_string(path).map_err(|e| problem(&format!("cannot be read: {e}")))?;
        let (user, password) = text.trim().split_once(':').ok_or_else(|| problem("does not hold user:password"))?;
        if user.is_empty() || password.is_empty() {
            return Err(problem("does not hold user:password"));
        }
        let origin = path.display().to_string();
        credentials.insert(&target.host, Login { user: user.into(), password: password.into(), origin });
    }
    Ok(Access { plain_http: args.plain_http, ca_file: args.ca_file.clone(), credentials })
}

/// What pushing every repository shares.
struct Pusher<'a> {
    file: &'a VerifiedFile,
    store: &'a Store,
    target: &'a Target,
    access: &'a Access,
    counters: &'a Counters,
    progress: &'a (dyn Fn(u64) + Sync),
    chunk: u64,
    jobs: usize,
    resume_dir: Option<PathBuf>,
    /// Blob digest → site repositories that hold it (so far in this run), for mounts.
    holders: Mutex<HashMap<String, Vec<String>>>,
}

impl Pusher<'_> {
    fn remote_err(&self, what: String, rp: &RepoPlan) -> impl FnOnce(RemoteError) -> SitePushError {
        let to = format!("{}/{}", self.target.host, rp.target);
        move |cause| SitePushError::Remote { what, to, cause: Box::new(cause) }
    }

    /// Fills one site repository: blobs, then manifests, then tags.
    fn push_repo(&self, rp: &RepoPlan) -> Result<(), SitePushError> {
        let what = rp.sources.join(", ");
        let reference =
            Reference { host: self.target.host.clone(), repo: rp.target.clone(), reference: "latest".into() };
        let remote = Remote::open(&reference, self.access, true).map_err(self.remote_err(what.clone(), rp))?;
        self.push_blobs(&remote, rp)?;
        for &id in &rp.manifests {
            let digest = self.store.blob(id).digest.clone();
            self.put_manifest(&remote, rp, id, &digest)?;
        }
        for (tag, &id) in &rp.tags {
            self.put_manifest(&remote, rp, id, tag)?;
        }
        Ok(())
    }

    /// Sends the repository's configs and layers, `jobs` at once.
    fn push_blobs(&self, remote: &Remote, rp: &RepoPlan) -> Result<(), SitePushError> {
        let uploader = Uploader {
            remote,
            chunk: self.chunk,
            counters: self.counters,
            progress: self.progress,
            resume_dir: self.resume_dir.as_deref(),
        };
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<SitePushError>> = Mutex::default();
        std::thread::scope(|s| {
            for _ in 0..self.jobs.min(rp.leaves.len()) {
                s.spawn(|| {
                    while let Some(&id) = rp.leaves.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if let Err(e) = self.push_blob(&uploader, rp, id) {
                            failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                            // The others stop after their current blob: the push has failed.
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            return;
                        }
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn push_blob(&self, uploader: &Uploader<'_>, rp: &RepoPlan, id: BlobId) -> Result<(), SitePushError> {
        let blob = self.store.blob(id);
        let body = MappedBlob(self.checked(id)?);
        let mount_from = self.holders.lock().unwrap_or_else(PoisonError::into_inner).get(&blob.digest).cloned();
        let to_send = BlobToSend { digest: blob.digest.clone(), size: blob.size };
        uploader
            .send(&to_send, &body, mount_from.as_deref().unwrap_or_default())
            .map_err(self.remote_err(format!("blob {} of {}", blob.digest, rp.sources.join(", ")), rp))?;
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(blob.digest.clone())
            .or_default()
            .push(rp.target.clone());
        Ok(())
    }

    /// The bytes of blob `id`, proven against the signed index.
    fn checked(&self, id: BlobId) -> Result<Bytes, SitePushError> {
        let b = self.store.blob(id);
        let hex = b.digest.trim_start_matches("sha256:");
        self.file.verify_blob(b.offset, b.size, hex, b.offset, b.offset + b.size)?;
        Ok(self.file.slice(b.offset, b.offset + b.size))
    }

    /// Stores manifest `id` byte for byte under `reference` (its digest or a tag).
    fn put_manifest(&self, remote: &Remote, rp: &RepoPlan, id: BlobId, reference: &str) -> Result<(), SitePushError> {
        let blob = self.store.blob(id);
        let bytes = self.checked(id)?;
        let media_type = blob.media_type.clone().unwrap_or_else(|| oci::OCI_MANIFEST.into());
        // Named as the bundle names it: by a tag pointing at it where there is one.
        let tagged = rp.tags.iter().find(|&(tag, &top)| top == id && (tag == reference || reference.contains(':')));
        let image = match tagged.and_then(|(tag, _)| rp.tag_sources.get(tag)) {
            Some(source) => source.clone(),
            None => format!("{}@{}", rp.sources.join(", "), blob.digest),
        };
        let result = with_retries(|| remote.put_manifest_at(reference, &bytes, &media_type));
        let Err(cause) = result else { return Ok(()) };
        let to = format!("{}/{}", self.target.host, rp.target);
        if oci::is_index_type(&media_type) {
            let missing = self.missing_children(&bytes);
            if !missing.is_empty() {
                return Err(SitePushError::PartialIndex {
                    image,
                    to,
                    missing: missing.join(", "),
                    cause: Box::new(cause),
                });
            }
        }
        Err(SitePushError::Remote { what: image, to, cause: Box::new(cause) })
    }

    /// The platforms (or digests) an index names that the installer does not carry.
    fn missing_children(&self, index: &[u8]) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Child>,
        }
        #[derive(serde::Deserialize)]
        struct Child {
            digest: String,
            #[serde(default)]
            platform: Option<Platform>,
        }
        #[derive(serde::Deserialize)]
        struct Platform {
            #[serde(default)]
            os: String,
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            variant: Option<String>,
        }
        let Ok(index) = serde_json::from_slice::<Index>(index) else { return Vec::new() };
        index
            .manifests
            .into_iter()
            .filter(|c| self.store.blob_id(&c.digest).is_none())
            .map(|c| match c.platform {
                Some(p) => match p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                },
                None => c.digest,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("registry.site.lan:5000/platform/v1").unwrap();
        assert_eq!((t.host.as_str(), t.prefix.as_str()), ("registry.site.lan:5000", "platform/v1"));
        assert_eq!(t.repository("library/nginx"), "platform/v1/library/nginx");
        assert_eq!(t.to_string(), "registry.site.lan:5000/platform/v1");
        let t = parse_target("Reg.Site:443/").unwrap();
        assert_eq!((t.host.as_str(), t.prefix.as_str()), ("reg.site:443", ""));
        assert_eq!(t.repository("pause"), "pause");
        for bad in ["https://reg/x", "", "/prefix", "reg/Upper", "reg/a//b", "reg/-x", "re g/x"] {
            let e = parse_target(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
