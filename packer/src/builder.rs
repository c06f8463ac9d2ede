//! `ferry build`: lays out the bundle's content as payload entries and writes the installer
//! under a temporary name, renaming it into place only when everything, signature included,
//! has been written and flushed.

use crate::cli::BuildArgs;
use crate::spec::Bundle;
use crate::tree::{self, ItemKind, TreeItem};
use anyhow::{Context, Result, bail};
use ferry_core::metadata::key;
use ferry_core::printer::Printer;
use ferry_core::units;
use payload_format::{BundleMetadata, Compression, PayloadWriter, SecretKey, WriterOptions};
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

/// Runs `build`.
pub fn run(args: &BuildArgs, printer: &Printer) -> Result<()> {
    let started = Instant::now();
    let bundle = Bundle::load(args.spec_path())?;
    let launch = crate::launch::resolve(&bundle)?;
    let key = match &args.key {
        Some(path) => Some(load_secret_key(path, printer)?),
        None => None,
    };
    let mut plan = plan(&bundle)?;
    let output_dir = args.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Fail before downloading gigabytes of images, not after.
    if !output_dir.is_dir() {
        bail!("cannot write the output: {} is not a directory", output_dir.display());
    }
    let image_opts = crate::images::Options {
        allow_missing: args.allow_missing_images,
        offline: args.offline,
        registry_auth: args.registry_auth.clone(),
        jobs: args.jobs,
    };
    // The store lives until the installer is written: the plan points into it.
    let images = crate::images::collect(&bundle, &image_opts, output_dir, printer)?;
    add_blobs(&mut plan, &images.blobs)?;
    let stub = match &args.stub {
        Some(p) => std::fs::read(p).with_context(|| format!("reading stub {}", p.display()))?,
        None => EMBEDDED_STUB.to_vec(),
    };
    if !stub.starts_with(b"\x7fELF") {
        bail!("the stub is not an ELF executable");
    }
    let metadata = BundleMetadata {
        name: bundle.spec.metadata.name.clone(),
        version: bundle.spec.metadata.version.clone(),
        kubernetes_version: bundle.spec.spec.kubernetes.version.clone(),
        created: build_time()?,
        builder: format!("ferry {}", env!("CARGO_PKG_VERSION")),
        extra: images.contract.to_extra(),
    };
    let mut metadata = metadata;
    if !launch.is_empty() {
        metadata.extra.insert(key::LAUNCH.into(), ferry_core::metadata::launch_value(&launch));
    }
    let metadata_images = images.contract.images.len();
    let metadata_missing = images.contract.missing_images.clone();
    let total: u64 = plan.values().map(|p| p.item.size).sum();
    let progress = printer.progress(total, "build");
    let summary = write_installer(&args.output, &stub, &plan, metadata, key.as_ref(), &|n| progress.inc(n));
    progress.finish();
    let summary = summary?;
    drop(images);
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "output": args.output.display().to_string(),
                "bytes": summary.file_len,
                "entries": summary.entries,
                "signed": key.is_some(),
                "signer": key.as_ref().map(|k| k.public().fingerprint()),
                "images": metadata_images,
                "missingImages": metadata_missing,
                "seconds": secs,
            })
        );
    } else {
        printer.out(format!(
            "built {} ({}, {} entries, {} of content) in {secs:.1} s",
            args.output.display(),
            units::bytes(summary.file_len),
            summary.entries,
            units::bytes(summary.size)
        ));
        match &key {
            Some(k) => printer.out(format!("signed by {}", k.public().fingerprint())),
            None => printer.warn(format!("{} is UNSIGNED; `verify` will say so loudly", args.output.display())),
        }
    }
    Ok(())
}

fn load_secret_key(path: &Path, printer: &Printer) -> Result<SecretKey> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading signing key {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        printer.warn(format!("signing key {} is readable by other users; chmod 600 it", path.display()));
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading signing key {}", path.display()))?;
    Ok(SecretKey::from_pem(&text, path)?)
}

/// `SOURCE_DATE_EPOCH` when set (reproducible builds), otherwise now.
fn build_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH `{v}` is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    }
}

/// Maps the spec onto payload paths:
/// `rootfs/…` (trees merged onto the node root), `bundle/…` (the spec, manifests and charts at
/// their spec-relative paths) and `files/…` (extra files at their destination path).
pub fn plan(bundle: &Bundle) -> Result<Plan> {
    let mut plan = Plan::new();
    let spec = &bundle.spec.spec;
    let spec_name =
        bundle.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle.yaml".into());
    let spec_item = tree::single_file(&bundle.file, "bundle.yaml", "spec")?;
    add(&mut plan, format!("bundle/{spec_name}"), spec_item, "the spec file")?;
    for (i, item) in spec.rootfs.iter().enumerate() {
        let field = format!("spec.rootfs[{i}].path");
        let root = bundle.resolve(&field, &item.path)?;
        if !root.is_dir() {
            bail!("{}: {field} `{}` is not a directory", bundle.file.display(), item.path);
        }
        for t in tree::walk(&root, &field)? {
            let key = format!("rootfs/{}", t.rel);
            merge(&mut plan, key, t, &field)?;
        }
    }
    for (field, items) in [("spec.manifests", &spec.manifests), ("spec.charts", &spec.charts)] {
        for (i, item) in items.iter().enumerate() {
            let field = format!("{field}[{i}].path");
            let real = bundle.resolve(&field, &item.path)?;
            let rel =
                real.strip_prefix(&bundle.dir).expect("resolve keeps paths inside").to_string_lossy().into_owned();
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

fn add_path(plan: &mut Plan, key: &str, real: &Path, field: &str) -> Result<()> {
    if real.is_dir() {
        let meta = std::fs::metadata(real)?;
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
    } else {
        add(plan, key.to_string(), tree::single_file(real, key, field)?, field)
    }
}

fn add(plan: &mut Plan, key: String, item: TreeItem, origin: &str) -> Result<()> {
    if let Some(prev) = plan.get(&key) {
        bail!("{key} is provided twice: by {} and by {origin}", prev.origin);
    }
    plan.insert(key, Planned { item, origin: origin.into(), blob: None });
    Ok(())
}

/// Adds verified image blobs as `blobs/sha256/<hex>`: raw, mode 0644.
pub fn add_blobs(plan: &mut Plan, blobs: &BTreeMap<String, crate::images::store::Slice>) -> Result<()> {
    for (digest, slice) in blobs {
        let hex = digest.strip_prefix("sha256:").with_context(|| format!("blob {digest} is not sha256"))?;
        let key = format!("blobs/sha256/{hex}");
        let item = TreeItem {
            rel: key.clone(),
            source: slice.path.clone(),
            kind: ItemKind::File,
            mode: 0o644,
            size: slice.size,
        };
        if let Some(prev) = plan.get(&key) {
            bail!("{key} is provided twice: by {} and by the images", prev.origin);
        }
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

/// Like `add`, but two trees may both provide the same directory.
fn merge(plan: &mut Plan, key: String, item: TreeItem, origin: &str) -> Result<()> {
    if let Some(prev) = plan.get(&key) {
        if prev.item.kind == ItemKind::Dir && item.kind == ItemKind::Dir {
            return Ok(());
        }
    }
    add(plan, key, item, origin)
}

/// Deletes the temporary output unless the build completed.
struct TempOutput {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `plan` to `output` atomically.
pub fn write_installer(
    output: &Path,
    stub: &[u8],
    plan: &Plan,
    metadata: BundleMetadata,
    key: Option<&SecretKey>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<payload_format::WriteSummary> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = output.file_name().with_context(|| format!("{} is not a file name", output.display()))?;
    if output.is_dir() {
        bail!("output {} is a directory", output.display());
    }
    let tmp_path = dir.join(format!(".{}.ferry-build-{}", name.to_string_lossy(), std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)
        .with_context(|| format!("cannot write the output: creating {}", tmp_path.display()))?;
    let mut guard = TempOutput { path: tmp_path.clone(), keep: false };
    let mut writer = PayloadWriter::new(file, &tmp_path, &mut Cursor::new(stub), WriterOptions::default())?;
    // One sniffing context for the whole build: this thread feeds the compression workers, and
    // creating a context per file cost about as much as sniffing a small file.
    let mut sniffer = zstd::bulk::Compressor::new(1).context("creating a zstd context")?;
    for (path, planned) in plan {
        let item = &planned.item;
        match &item.kind {
            ItemKind::Dir => writer.add_dir(path, item.mode)?,
            ItemKind::Symlink(target) => writer.add_symlink(path, target)?,
            ItemKind::File if planned.blob.is_some() => {
                let blob = planned.blob.as_ref().expect("checked");
                let mut f = File::open(&item.source)
                    .with_context(|| format!("{}: reading {}", planned.origin, item.source.display()))?;
                f.seek(SeekFrom::Start(blob.offset))?;
                let mut hashing = Hashing { inner: f.take(item.size), hasher: sha2::Sha256::new(), len: 0 };
                let mut counted = Counting { inner: &mut hashing, progress };
                writer
                    .add_file(path, item.mode, Compression::Raw, &mut counted)
                    .with_context(|| format!("{}: adding {}", planned.origin, item.source.display()))?;
                let actual = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
                if hashing.len != item.size || actual != blob.digest {
                    bail!(
                        "{}: {} changed after it was verified (now {} bytes hashing to {actual}); nothing was written",
                        planned.origin,
                        item.source.display(),
                        hashing.len
                    );
                }
            }
            ItemKind::File => {
                let mut f = File::open(&item.source)
                    .with_context(|| format!("{}: reading {}", planned.origin, item.source.display()))?;
                let (compression, mut reader) =
                    sniff(&mut f, &mut sniffer).with_context(|| format!("reading {}", item.source.display()))?;
                let mut counted = Counting { inner: &mut reader, progress };
                writer
                    .add_file(path, item.mode, compression, &mut counted)
                    .with_context(|| format!("{}: adding {}", planned.origin, item.source.display()))?;
            }
        }
    }
    let summary = writer.finish(metadata, key)?;
    std::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting mode of {}", tmp_path.display()))?;
    std::fs::rename(&tmp_path, output)
        .with_context(|| format!("renaming {} to {}", tmp_path.display(), output.display()))?;
    guard.keep = true;
    Ok(summary)
}

const SNIFF_LEN: usize = 128 << 10;

/// Stores data that zstd cannot shrink (already-compressed layers, archives, random data) raw,
/// so it stays servable as a plain slice of the file; everything else as zstd frames.
fn sniff<'a>(
    f: &'a mut File,
    sniffer: &mut zstd::bulk::Compressor,
) -> std::io::Result<(Compression, Chain<Cursor<Vec<u8>>, &'a mut File>)> {
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
