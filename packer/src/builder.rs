//! `ferry build`: lays out the bundle's content as payload entries and writes the installer
//! under a temporary name, renaming it into place only when everything, signature included,
//! has been written and flushed.

use crate::base::{Base, BaseError};
use crate::cli::BuildArgs;
use crate::images::ImagesError;
use crate::launch::LaunchError;
use crate::paths::PathError;
use crate::render::kustomize;
use crate::spec::{Bundle, SpecError};
use crate::tree::{self, ItemKind, TreeError, TreeItem};
use ferry_core::metadata::{ImagesContract, key};
use ferry_core::output::{OutputError, TempOutput};
use ferry_core::printer::Printer;
use ferry_core::units;
use payload_format::{BundleMetadata, Compression, PayloadWriter, SecretKey, WriteSummary, WriterOptions};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Chain, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The stub embedded at build time (see `build.rs`).
pub static EMBEDDED_STUB: &[u8] = include_bytes!(env!("FERRY_EMBEDDED_STUB"));

/// An entry to be written, keyed by its payload path.
#[derive(Debug, Clone)]
pub struct Planned {
    /// What to write.
    pub item: TreeItem,
    /// Which spec field it came from, for error messages.
    pub origin: String,
    /// For image blobs: where the verified bytes are. They are stored raw (servable as a slice
    /// of the installer) and hashed again while written, so a file changed after verification
    /// fails the build instead of producing a bad blob.
    pub blob: Option<BlobSource>,
}

/// A verified image blob: `item.size` bytes at `offset` of `item.source`, hashing to `sha256`.
#[derive(Debug, Clone)]
pub struct BlobSource {
    /// Offset in the source file (non-zero inside tars).
    pub offset: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// Everything the payload will hold, in path order (the order makes builds reproducible).
pub type Plan = BTreeMap<String, Planned>;

/// Why `ferry build` cannot write the installer. Each variant names the file, entry or key it
/// concerns; where something underneath failed, that is its source.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The spec cannot be read or used.
    #[error(transparent)]
    Spec(Box<SpecError>),
    /// A path of the spec cannot be used.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The launch steps cannot be used.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A tree or file of the spec cannot be bundled.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The images cannot be gathered.
    #[error(transparent)]
    Images(#[from] ImagesError),
    /// `spec.base` cannot be used.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// Reading the key or writing the payload failed.
    #[error(transparent)]
    Payload(#[from] payload_format::Error),
    /// A rendered kustomization cannot be staged for the payload.
    #[error("cannot stage the rendered kustomization {key} in {}: {source}", dir.display())]
    Rendered {
        /// Its payload path.
        key: String,
        /// The staging directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output's directory does not exist.
    #[error("cannot write the output: {} is not a directory", dir.display())]
    OutputDir {
        /// The directory.
        dir: PathBuf,
    },
    /// The output cannot be written in place.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The differential installer cannot be made.
    #[error(transparent)]
    Delta(#[from] crate::delta::DeltaError),
    /// `--stub` cannot be read.
    #[error("reading stub {}", path.display())]
    StubRead {
        /// The stub file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stub is not an executable.
    #[error("the stub is not an ELF executable")]
    StubNotElf,
    /// `--key` cannot be read.
    #[error("reading signing key {}", path.display())]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `SOURCE_DATE_EPOCH` is not a number.
    #[error("SOURCE_DATE_EPOCH `{value}` is not a number of seconds")]
    SourceDateEpoch {
        /// What it says.
        value: String,
        /// Why.
        source: std::num::ParseIntError,
    },
    /// The system clock is before 1970.
    #[error(transparent)]
    Clock(#[from] std::time::SystemTimeError),
    /// A `spec.rootfs` item that is not a directory.
    #[error("{}: {field} `{rel}` is not a directory", file.display())]
    NotDir {
        /// The spec file.
        file: PathBuf,
        /// The field, e.g. `spec.rootfs[0].path`.
        field: String,
        /// The path as written.
        rel: String,
    },
    /// A directory of the spec cannot be read.
    #[error("{field}: reading directory {}", path.display())]
    ReadDir {
        /// The field.
        field: String,
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A launch step names a file inside a kustomization, which is carried only rendered.
    #[error(
        "{}: {at} names {path}, inside the kustomization {dir}, which the installer carries rendered \
         (as {dir}/{KUSTOMIZED_FILE}); name the kustomization's directory instead",
        file.display()
    )]
    InsideKustomization {
        /// The spec file.
        file: PathBuf,
        /// `spec.launch[N]`.
        at: String,
        /// The payload path the step names.
        path: String,
        /// The kustomization's payload path.
        dir: String,
    },
    /// Two sources for one payload path.
    #[error("{key} is provided twice: by {first} and by {second}")]
    Twice {
        /// The payload path.
        key: String,
        /// Where it came from first.
        first: String,
        /// Where it came from again.
        second: String,
    },
    /// An image blob whose digest is not sha256.
    #[error("blob {digest} is not sha256")]
    NotSha256 {
        /// The digest.
        digest: String,
    },
    /// An entry's source cannot be opened or read.
    #[error("{origin}: reading {}", path.display())]
    Read {
        /// Where the entry came from.
        origin: String,
        /// Its source file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An entry's first bytes cannot be read to choose its compression.
    #[error("reading {}", path.display())]
    Sniff {
        /// Its source file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An entry cannot be written.
    #[error("{origin}: adding {}", path.display())]
    Add {
        /// Where the entry came from.
        origin: String,
        /// Its source file.
        path: PathBuf,
        /// Why.
        source: Box<payload_format::Error>,
    },
    /// An image blob that changed since it was verified.
    #[error(
        "{origin}: {} changed after it was verified (now {len} bytes hashing to {actual}); nothing was written",
        path.display()
    )]
    Changed {
        /// Where the blob came from.
        origin: String,
        /// Its source file.
        path: PathBuf,
        /// How many bytes it has now.
        len: u64,
        /// What they hash to.
        actual: String,
    },
    /// No zstd context.
    #[error("creating a zstd context")]
    Zstd(#[source] std::io::Error),
}

impl From<SpecError> for BuildError {
    fn from(e: SpecError) -> BuildError {
        BuildError::Spec(Box::new(e))
    }
}

/// Runs `build`.
pub fn run(args: &BuildArgs, printer: &Printer) -> anyhow::Result<()> {
    Ok(build(args, printer)?)
}

fn build(args: &BuildArgs, printer: &Printer) -> Result<(), BuildError> {
    let started = Instant::now();
    let mut bundle = Bundle::load(args.spec_path())?;
    let output_dir = output_dir(&args.output)?;
    let delta_base = args.base.as_deref().map(crate::delta::open_base).transpose()?;
    let base = match bundle.spec.spec.base.clone() {
        Some(spec) => Some(Base::load(&bundle, &spec, output_dir, &args.registry_auth, printer)?),
        None => None,
    };
    if let Some(base) = &base {
        bundle.spec.spec.platforms = base.platforms_for(&bundle)?;
    }
    let launch = crate::launch::resolve(&bundle)?;
    let key = args.key.as_deref().map(|path| load_secret_key(path, printer)).transpose()?;
    check_launch_paths(&bundle, &launch)?;
    let mut plan = plan(&bundle)?;
    let image_opts = crate::images::Options {
        allow_missing: args.allow_missing_images,
        offline: args.offline,
        registry_auth: args.registry_auth.clone(),
        jobs: args.jobs,
        discovery: args.charts.options(),
        carried: base.as_ref().map(Base::image_refs).unwrap_or_default(),
    };
    // The store lives until the installer is written: the plan points into it.
    let crate::images::Collected { store, blobs, contract, kustomized } =
        crate::images::collect(&bundle, &image_opts, output_dir, printer)?;
    add_blobs(&mut plan, &blobs)?;
    let rendered = add_kustomized(&mut plan, &kustomized, output_dir)?;
    let stub = read_stub(args.stub.as_deref())?;
    let (contract, launch) = match &base {
        Some(base) => {
            add_base(&mut plan, base, &bundle)?;
            let steps: Vec<_> = base.launch.iter().cloned().chain(launch).collect();
            (base.merge_contract(contract), steps)
        }
        None => (contract, launch),
    };
    let mut metadata = bundle_metadata(&bundle, &contract)?;
    if !launch.is_empty() {
        metadata.extra.insert(key::LAUNCH.into(), ferry_core::metadata::launch_value(&launch));
    }
    if let Some(base) = &base {
        metadata.extra.insert(key::BASE.into(), serde_json::to_value(&base.record).unwrap_or_default());
    }
    let total: u64 = plan.values().map(|p| p.item.size).sum();
    let progress = printer.progress(total, "build");
    let (complete, _temporary) = match &delta_base {
        Some(_) => crate::delta::complete_path(&args.output, args.complete_output.as_deref())?,
        None => (args.output.clone(), None),
    };
    let summary = write_installer(&complete, &stub, &plan, metadata, key.as_ref(), &|n| progress.inc(n));
    progress.finish();
    let summary = summary?;
    drop(store);
    drop(rendered);
    drop(base);
    let delta = match &delta_base {
        Some(old) => Some(crate::delta::write(&args.output, &complete, old, key.as_ref())?),
        None => None,
    };
    let built = Built { summary: &summary, delta: delta.as_ref(), contract: &contract };
    report(args, key.as_ref(), &built, started.elapsed().as_secs_f64(), printer);
    Ok(())
}

/// The directory the output goes to. Checked before downloading gigabytes of images, not after.
fn output_dir(output: &Path) -> Result<&Path, BuildError> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(BuildError::OutputDir { dir: dir.into() });
    }
    Ok(dir)
}

/// `--stub`, or the embedded stub.
fn read_stub(path: Option<&Path>) -> Result<Vec<u8>, BuildError> {
    let stub = match path {
        Some(p) => std::fs::read(p).map_err(|source| BuildError::StubRead { path: p.into(), source })?,
        None => EMBEDDED_STUB.to_vec(),
    };
    if !stub.starts_with(b"\x7fELF") {
        return Err(BuildError::StubNotElf);
    }
    Ok(stub)
}

fn bundle_metadata(bundle: &Bundle, contract: &ImagesContract) -> Result<BundleMetadata, BuildError> {
    Ok(BundleMetadata {
        name: bundle.spec.metadata.name.clone(),
        version: bundle.spec.metadata.version.clone(),
        kubernetes_version: bundle.spec.spec.kubernetes.version.clone(),
        created: build_time()?,
        builder: format!("ferry {}", env!("CARGO_PKG_VERSION")),
        extra: contract.to_extra(),
    })
}

/// What a build wrote.
struct Built<'a> {
    /// The complete installer (the output, unless a delta was asked for).
    summary: &'a WriteSummary,
    /// The differential installer written to the output, with `--base`.
    delta: Option<&'a payload_format::DeltaSummary>,
    contract: &'a ImagesContract,
}

/// Prints what was built: one JSON object with `--json`, otherwise a line and the signer.
fn report(args: &BuildArgs, key: Option<&SecretKey>, built: &Built<'_>, secs: f64, printer: &Printer) {
    let (summary, contract) = (built.summary, built.contract);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "output": args.output.display().to_string(),
                "bytes": built.delta.map_or(summary.file_len, |d| d.file_len),
                "entries": summary.entries,
                "delta": built.delta.map(|d| serde_json::json!({
                    "base": d.record.base,
                    "complete": d.record.complete,
                    "completeOutput": args.complete_output.as_ref().map(|p| p.display().to_string()),
                    "entriesCarried": d.carried,
                    "bytesCarried": d.bytes_carried,
                    "entriesFromBase": d.record.from_base,
                    "bytesFromBase": d.record.bytes_from_base,
                })),
                "signed": key.is_some(),
                "signer": key.map(|k| k.public().fingerprint()),
                "images": contract.images.len(),
                "missingImages": contract.missing_images,
                "guessedImages": contract.images.iter().filter(|i| i.guessed).map(|i| &i.reference).collect::<Vec<_>>(),
                "seconds": secs,
            })
        );
        return;
    }
    match built.delta {
        None => printer.out(format!(
            "built {} ({}, {} entries, {} of content) in {secs:.1} s",
            args.output.display(),
            units::bytes(summary.file_len),
            summary.entries,
            units::bytes(summary.size)
        )),
        Some(d) => printer.out(format!(
            "built {} ({}, differential: carries {} of {} entries; the other {} ({}) come from {} {} ({}); \
             completes to {} of {}) in {secs:.1} s",
            args.output.display(),
            units::bytes(d.file_len),
            d.carried,
            d.record.entries,
            d.record.from_base,
            units::bytes(d.record.bytes_from_base),
            d.record.base.name,
            d.record.base.version,
            d.record.base.digest,
            d.record.complete.digest,
            units::bytes(d.record.complete.size),
        )),
    }
    let guessed: Vec<&str> = contract.images.iter().filter(|i| i.guessed).map(|i| i.reference.as_str()).collect();
    if !guessed.is_empty() {
        printer.warn(format!(
            "{} image{} guessed from chart values, not rendered: {}",
            guessed.len(),
            if guessed.len() == 1 { " was" } else { "s were" },
            guessed.join(", ")
        ));
    }
    match key {
        Some(k) => printer.out(format!("signed by {}", k.public().fingerprint())),
        None => printer.warn(format!("{} is UNSIGNED; `verify` will say so loudly", args.output.display())),
    }
}

fn load_secret_key(path: &Path, printer: &Printer) -> Result<SecretKey, BuildError> {
    let read_err = |source| BuildError::KeyRead { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        printer.warn(format!("signing key {} is readable by other users; chmod 600 it", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    Ok(SecretKey::from_pem(&text, path)?)
}

/// `SOURCE_DATE_EPOCH` when set (reproducible builds), otherwise now.
fn build_time() -> Result<u64, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value.trim().parse().map_err(|source| BuildError::SourceDateEpoch { value, source }),
        Err(_) => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    }
}

/// Maps the spec onto payload paths:
/// `rootfs/…` (trees merged onto the node root), `bundle/…` (the spec, manifests and charts at
/// their spec-relative paths) and `files/…` (extra files at their destination path).
pub fn plan(bundle: &Bundle) -> Result<Plan, BuildError> {
    let mut plan = Plan::new();
    let spec = &bundle.spec.spec;
    let spec_name =
        bundle.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle.yaml".into());
    let spec_item = tree::single_file(&bundle.file, "bundle.yaml", "spec")?;
    add(&mut plan, format!("bundle/{spec_name}"), spec_item, "the spec file")?;
    for (i, item) in spec.rootfs.iter().enumerate() {
        add_rootfs(&mut plan, bundle, &format!("spec.rootfs[{i}].path"), &item.path)?;
    }
    for (field, items) in [("spec.manifests", &spec.manifests), ("spec.charts", &spec.charts)] {
        for (i, item) in items.iter().enumerate() {
            let field = format!("{field}[{i}].path");
            let real = bundle.resolve(&field, &item.path)?;
            let rel =
                real.strip_prefix(&bundle.dir).expect("resolve keeps paths inside").to_string_lossy().into_owned();
            // A kustomization is carried rendered (`add_kustomized`), not as its sources.
            if field.starts_with("spec.manifests") && real.is_dir() && kustomize::kustomization_file(&real).is_some() {
                continue;
            }
            add_path(&mut plan, &format!("bundle/{rel}"), &real, &field)?;
        }
    }
    for (i, item) in spec.files.iter().enumerate() {
        let field = format!("spec.files[{i}].path");
        let real = bundle.resolve(&field, &item.path)?;
        let dest = item.dest.trim_start_matches('/');
        add_path(&mut plan, &format!("files/{dest}"), &real, &field)?;
    }
    Ok(plan)
}

/// The payload paths of the `spec.manifests` directories that are kustomizations.
fn kustomization_dirs(bundle: &Bundle) -> Result<Vec<String>, BuildError> {
    let mut out = Vec::new();
    for (i, item) in bundle.spec.spec.manifests.iter().enumerate() {
        let real = bundle.resolve(&format!("spec.manifests[{i}].path"), &item.path)?;
        if real.is_dir() && kustomize::kustomization_file(&real).is_some() {
            let rel = real.strip_prefix(&bundle.dir).unwrap_or(&real).to_string_lossy().into_owned();
            out.push(if rel.is_empty() { "bundle".to_string() } else { format!("bundle/{rel}") });
        }
    }
    Ok(out)
}

/// Refuses launch steps that name a file inside a kustomization (only its rendering is carried),
/// before any image is downloaded.
fn check_launch_paths(bundle: &Bundle, launch: &[ferry_core::launch::LaunchStep]) -> Result<(), BuildError> {
    let dirs = kustomization_dirs(bundle)?;
    for (i, step) in launch.iter().enumerate() {
        for path in step.paths() {
            if let Some(dir) = dirs.iter().find(|d| path.starts_with(&format!("{d}/"))) {
                return Err(BuildError::InsideKustomization {
                    file: bundle.file.clone(),
                    at: format!("spec.launch[{i}]"),
                    path: path.to_string(),
                    dir: dir.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The file a rendered kustomization is carried as, inside its directory's payload path: a launch
/// step's `kubectl apply -f DIR` then applies exactly the rendered objects.
pub const KUSTOMIZED_FILE: &str = "kustomized.yaml";

/// Adds each rendered kustomization as `<dir>/kustomized.yaml`, staged in a temporary directory
/// beside the output that must live until the installer is written.
fn add_kustomized(
    plan: &mut Plan,
    kustomized: &[crate::images::discovery::Kustomized],
    output_dir: &Path,
) -> Result<Option<tempfile::TempDir>, BuildError> {
    if kustomized.is_empty() {
        return Ok(None);
    }
    let staging = |key: &str, source| BuildError::Rendered { key: key.into(), dir: output_dir.into(), source };
    let tmp =
        tempfile::Builder::new().prefix(".ferry-kustomized-").tempdir_in(output_dir).map_err(|e| staging("", e))?;
    for (i, k) in kustomized.iter().enumerate() {
        let file = tmp.path().join(format!("{i}.yaml"));
        std::fs::write(&file, &k.text).map_err(|e| staging(&k.key, e))?;
        let dir = TreeItem { rel: String::new(), source: tmp.path().into(), kind: ItemKind::Dir, mode: 0o755, size: 0 };
        merge(plan, k.key.clone(), dir, "a rendered kustomization")?;
        let item = TreeItem {
            rel: KUSTOMIZED_FILE.into(),
            source: file,
            kind: ItemKind::File,
            mode: 0o644,
            size: k.text.len() as u64,
        };
        add(plan, format!("{}/{KUSTOMIZED_FILE}", k.key), item, "a rendered kustomization")?;
    }
    Ok(Some(tmp))
}

/// Merges the tree at `rel` (spec field `field`) onto `rootfs/`.
fn add_rootfs(plan: &mut Plan, bundle: &Bundle, field: &str, rel: &str) -> Result<(), BuildError> {
    let root = bundle.resolve(field, rel)?;
    if !root.is_dir() {
        return Err(BuildError::NotDir { file: bundle.file.clone(), field: field.into(), rel: rel.into() });
    }
    for t in tree::walk(&root, field)? {
        merge(plan, format!("rootfs/{}", t.rel), t, field)?;
    }
    Ok(())
}

fn add_path(plan: &mut Plan, key: &str, real: &Path, field: &str) -> Result<(), BuildError> {
    if !real.is_dir() {
        return add(plan, key.to_string(), tree::single_file(real, key, field)?, field);
    }
    let meta = std::fs::metadata(real).map_err(|source| BuildError::ReadDir {
        field: field.into(),
        path: real.into(),
        source,
    })?;
    let dir = TreeItem {
        rel: String::new(),
        source: real.into(),
        kind: ItemKind::Dir,
        mode: meta.permissions().mode() & 0o7777,
        size: 0,
    };
    merge(plan, key.to_string(), dir, field)?;
    for t in tree::walk(real, field)? {
        merge(plan, format!("{key}/{}", t.rel), t, field)?;
    }
    Ok(())
}

fn add(plan: &mut Plan, key: String, item: TreeItem, origin: &str) -> Result<(), BuildError> {
    check_new(plan, &key, origin)?;
    plan.insert(key, Planned { item, origin: origin.into(), blob: None });
    Ok(())
}

/// Fails if `key` is planned already.
fn check_new(plan: &Plan, key: &str, origin: &str) -> Result<(), BuildError> {
    match plan.get(key) {
        Some(prev) => Err(BuildError::Twice { key: key.into(), first: prev.origin.clone(), second: origin.into() }),
        None => Ok(()),
    }
}

/// Adds verified image blobs as `blobs/sha256/<hex>`: raw, mode 0644.
pub fn add_blobs(plan: &mut Plan, blobs: &BTreeMap<String, crate::images::store::Slice>) -> Result<(), BuildError> {
    for (digest, slice) in blobs {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| BuildError::NotSha256 { digest: digest.clone() })?;
        let key = format!("blobs/sha256/{hex}");
        let item = TreeItem {
            rel: key.clone(),
            source: slice.path.clone(),
            kind: ItemKind::File,
            mode: 0o644,
            size: slice.size,
        };
        check_new(plan, &key, "the images")?;
        plan.insert(
            key,
            Planned {
                item,
                origin: format!("image blob {digest}"),
                blob: Some(BlobSource { offset: slice.offset, digest: digest.clone() }),
            },
        );
    }
    Ok(())
}

/// Lays the base installer's entries under this spec's: directories merge, an image blob both
/// hold is written once, this spec's own file replaces the base's, and any other path both
/// provide is refused naming the two.
fn add_base(plan: &mut Plan, base: &Base, bundle: &Bundle) -> Result<(), BuildError> {
    let spec_key = format!(
        "bundle/{}",
        bundle.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle.yaml".into())
    );
    let origin = format!("the base installer {} {}", base.record.name, base.record.version);
    for e in &base.entries {
        let kind = match e.kind {
            payload_format::EntryKind::File => ItemKind::File,
            payload_format::EntryKind::Dir => ItemKind::Dir,
            payload_format::EntryKind::Symlink => ItemKind::Symlink(e.link_target.clone()),
        };
        let item = TreeItem { rel: e.path.clone(), source: e.staged.clone(), kind, mode: e.mode, size: e.size };
        let blob =
            e.path.strip_prefix("blobs/sha256/").map(|hex| BlobSource { offset: 0, digest: format!("sha256:{hex}") });
        match plan.get(&e.path) {
            Some(_) if blob.is_some() || e.path == spec_key => continue,
            Some(prev) if prev.item.kind == ItemKind::Dir && item.kind == ItemKind::Dir => continue,
            Some(prev) => {
                return Err(BuildError::Twice { key: e.path.clone(), first: origin, second: prev.origin.clone() });
            }
            None => {
                plan.insert(e.path.clone(), Planned { item, origin: origin.clone(), blob });
            }
        }
    }
    Ok(())
}

/// Like `add`, but two trees may both provide the same directory.
fn merge(plan: &mut Plan, key: String, item: TreeItem, origin: &str) -> Result<(), BuildError> {
    if let Some(prev) = plan.get(&key)
        && prev.item.kind == ItemKind::Dir
        && item.kind == ItemKind::Dir
    {
        return Ok(());
    }
    add(plan, key, item, origin)
}

/// Writes `plan` to `output` atomically.
pub fn write_installer(
    output: &Path,
    stub: &[u8],
    plan: &Plan,
    metadata: BundleMetadata,
    key: Option<&SecretKey>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WriteSummary, BuildError> {
    let (file, guard) = TempOutput::create(output, "build")?;
    let tmp_path = guard.path.clone();
    let mut writer = PayloadWriter::new(file, &tmp_path, &mut Cursor::new(stub), WriterOptions::default())?;
    // One sniffing context for the whole build: this thread feeds the compression workers, and
    // creating a context per file cost about as much as sniffing a small file.
    let mut sniffer = zstd::bulk::Compressor::new(1).map_err(BuildError::Zstd)?;
    for (path, planned) in plan {
        write_entry(&mut writer, path, planned, &mut sniffer, progress)?;
    }
    let summary = writer.finish(metadata, key)?;
    guard.finish(output)?;
    Ok(summary)
}

fn write_entry(
    writer: &mut PayloadWriter,
    path: &str,
    planned: &Planned,
    sniffer: &mut zstd::bulk::Compressor,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), BuildError> {
    let item = &planned.item;
    match (&item.kind, &planned.blob) {
        (ItemKind::Dir, _) => writer.add_dir(path, item.mode)?,
        (ItemKind::Symlink(target), _) => writer.add_symlink(path, target)?,
        (ItemKind::File, Some(blob)) => write_blob(writer, path, planned, blob, progress)?,
        (ItemKind::File, None) => {
            let mut f = open(planned)?;
            let (compression, mut reader) =
                sniff(&mut f, sniffer).map_err(|source| BuildError::Sniff { path: item.source.clone(), source })?;
            let mut counted = Counting { inner: &mut reader, progress };
            writer.add_file(path, item.mode, compression, &mut counted).map_err(adding(planned))?;
        }
    }
    Ok(())
}

/// Stores an image blob raw, failing if its bytes are no longer those verified.
fn write_blob(
    writer: &mut PayloadWriter,
    path: &str,
    planned: &Planned,
    blob: &BlobSource,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), BuildError> {
    let item = &planned.item;
    let mut f = open(planned)?;
    f.seek(SeekFrom::Start(blob.offset)).map_err(reading(planned))?;
    let mut hashing = Hashing { inner: f.take(item.size), hasher: sha2::Sha256::new(), len: 0 };
    let mut counted = Counting { inner: &mut hashing, progress };
    writer.add_file(path, item.mode, Compression::Raw, &mut counted).map_err(adding(planned))?;
    let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if hashing.len != item.size || actual != blob.digest {
        return Err(BuildError::Changed {
            origin: planned.origin.clone(),
            path: item.source.clone(),
            len: hashing.len,
            actual,
        });
    }
    Ok(())
}

fn open(planned: &Planned) -> Result<File, BuildError> {
    File::open(&planned.item.source).map_err(reading(planned))
}

fn reading(planned: &Planned) -> impl FnOnce(std::io::Error) -> BuildError {
    |source| BuildError::Read { origin: planned.origin.clone(), path: planned.item.source.clone(), source }
}

fn adding(planned: &Planned) -> impl FnOnce(payload_format::Error) -> BuildError {
    |source| BuildError::Add {
        origin: planned.origin.clone(),
        path: planned.item.source.clone(),
        source: Box::new(source),
    }
}

const SNIFF_LEN: usize = 128 << 10;

/// A file read again from its start after its head was read for sniffing.
type Rewound<'a> = Chain<Cursor<Vec<u8>>, &'a mut File>;

/// Stores data that zstd cannot shrink (already-compressed layers, archives, random data) raw,
/// so it stays servable as a plain slice of the file; everything else as zstd frames.
fn sniff<'a>(f: &'a mut File, sniffer: &mut zstd::bulk::Compressor) -> std::io::Result<(Compression, Rewound<'a>)> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    f.by_ref().take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    let compression = if head.len() < 512 {
        Compression::Zstd
    } else {
        let packed = sniffer.compress(&head)?;
        if packed.len() as f64 > head.len() as f64 * 0.9 { Compression::Raw } else { Compression::Zstd }
    };
    Ok((compression, Cursor::new(head).chain(f)))
}

struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

struct Counting<'a, R> {
    inner: &'a mut R,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}
