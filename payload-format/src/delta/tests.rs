use super::*;
use crate::test_data::bytes;
use crate::{BundleMetadata, Compression, PayloadWriter, SignatureStatus, TrustPolicy, WriterOptions};
use std::fs::OpenOptions;
use std::path::PathBuf;

/// Small chunks and frames, so a few hundred KiB span many of each.
fn opts() -> WriterOptions {
    WriterOptions { chunk_size: 64 << 10, frame_size: 32 << 10, zstd_level: 3 }
}

/// A release: `version`, and `(path, compression, bytes)` files after a `rootfs` directory.
fn release(dir: &Path, name: &str, version: &str, files: &[(&str, Compression, Vec<u8>)], key: &SecretKey) -> Payload {
    let path = dir.join(name);
    let stub = bytes(10_000, 99, false);
    let mut w = PayloadWriter::new(File::create(&path).unwrap(), &path, &mut &stub[..], opts()).unwrap();
    w.add_dir("rootfs", 0o755).unwrap();
    w.add_symlink("rootfs/link", "kubelet").unwrap();
    for (p, c, data) in files {
        w.add_file(p, 0o644, *c, &mut &data[..]).unwrap();
    }
    let meta = BundleMetadata { name: "platform".into(), version: version.into(), created: 1, ..Default::default() };
    w.finish(meta, Some(key)).unwrap();
    Payload::open(&path).unwrap()
}

fn v1_files() -> Vec<(&'static str, Compression, Vec<u8>)> {
    use Compression::{Raw, Zstd};
    vec![
        ("blobs/sha256/aa", Raw, bytes(300_000, 1, false)),
        ("blobs/sha256/bb", Raw, bytes(200_000, 2, false)),
        ("blobs/sha256/cc", Raw, bytes(150_001, 3, false)),
        ("rootfs/kubelet", Zstd, bytes(120_000, 4, true)),
        ("rootfs/empty", Raw, Vec::new()),
        ("bundle/bundle.yaml", Zstd, b"version: 1\n".to_vec()),
    ]
}

/// v2: one blob replaced, one added, the spec changed; the rest as in v1.
fn v2_files() -> Vec<(&'static str, Compression, Vec<u8>)> {
    use Compression::{Raw, Zstd};
    vec![
        ("blobs/sha256/aa", Raw, bytes(300_000, 1, false)),
        ("blobs/sha256/dd", Raw, bytes(180_000, 5, false)),
        ("blobs/sha256/cc", Raw, bytes(150_001, 3, false)),
        ("blobs/sha256/ee", Raw, bytes(10_000, 6, false)),
        ("rootfs/kubelet", Zstd, bytes(120_000, 4, true)),
        ("rootfs/empty", Raw, Vec::new()),
        ("bundle/bundle.yaml", Zstd, b"version: 2\n".to_vec()),
    ]
}

fn create(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).create_new(true).open(path).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    key: SecretKey,
    base: Payload,
    full: Payload,
    delta: Payload,
    summary: DeltaSummary,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let key = SecretKey::generate().unwrap();
    let base = release(&dir, "v1", "1", &v1_files(), &key);
    let full = release(&dir, "v2", "2", &v2_files(), &key);
    let delta_path = dir.join("delta");
    let summary = write_delta(&full, &base, create(&delta_path), &delta_path, Some(&key)).unwrap();
    let delta = Payload::open(&delta_path).unwrap();
    Fixture { _dir: tmp, dir, key, base, full, delta, summary }
}

#[test]
fn a_delta_carries_only_what_the_base_lacks_and_completes_byte_for_byte() {
    let f = fixture();
    let carried: Vec<&str> = f.delta.index().entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(carried, ["blobs/sha256/dd", "blobs/sha256/ee", "bundle/bundle.yaml", TAIL_ENTRY]);
    assert_eq!(f.summary.carried, 3);
    let record = f.delta.delta_record().unwrap().unwrap();
    assert_eq!(record, f.summary.record);
    assert_eq!(record.base.digest, index_digest(&f.base));
    assert_eq!(record.complete.digest, index_digest(&f.full));
    assert_eq!(record.complete.size, f.full.file_len());
    assert_eq!((record.entries, record.from_base), (9, 6));
    assert_eq!(record.bytes_from_base, 300_000 + 150_001 + f.full.index().entry("rootfs/kubelet").unwrap().stored_len);
    // The delta is an installer of its own: signed, every chunk intact, the complete metadata.
    let policy = TrustPolicy { trusted: vec![f.key.public()], allow_unsigned: false };
    assert!(matches!(f.delta.check_signature(&policy).unwrap(), SignatureStatus::Trusted(_)));
    f.delta.verify_stub().unwrap();
    f.delta.verify_chunks(&|_| {}).unwrap();
    assert_eq!(f.delta.index().metadata.version, "2");
    assert!(f.delta.file_len() < f.full.file_len() - 400_000);

    let out = f.dir.join("completed");
    let progress = std::sync::atomic::AtomicU64::new(0);
    let done = complete(&f.delta, &f.base, create(&out), &out, &|n| {
        progress.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(f.full.path()).unwrap());
    assert_eq!(done.file_len, f.full.file_len());
    assert_eq!(done.bytes_from_base, record.bytes_from_base);
    assert_eq!(done.bytes_from_base + done.bytes_from_delta, progress.into_inner());
    check_base(&f.delta, &f.base).unwrap();
}

#[test]
fn another_file_as_the_base_is_refused_by_digest_naming_what_it_lacks() {
    let f = fixture();
    let mut other_files = v1_files();
    other_files.remove(2);
    let other = release(&f.dir, "other", "1", &other_files, &f.key);
    let err = check_base(&f.delta, &other).unwrap_err().to_string();
    assert!(err.contains(&index_digest(&f.base)) && err.contains(&index_digest(&other)), "{err}");
    assert!(err.contains("platform 1") && err.contains("lacks 1: blobs/sha256/cc"), "{err}");

    // The same entries, another build: still refused, by digest.
    let rebuilt = release(&f.dir, "rebuilt", "1b", &v1_files(), &f.key);
    let err = check_base(&f.delta, &rebuilt).unwrap_err().to_string();
    assert!(err.contains("another build is never used"), "{err}");
    let out = f.dir.join("never");
    assert!(complete(&f.delta, &rebuilt, create(&out), &out, &|_| {}).is_err());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0, "nothing is written before the base is checked");
}

#[test]
fn a_damaged_base_is_caught_at_the_chunk_that_holds_the_damage() {
    let f = fixture();
    let entry = f.base.index().entry("blobs/sha256/cc").unwrap().clone();
    let damaged = f.dir.join("v1-damaged");
    std::fs::copy(f.base.path(), &damaged).unwrap();
    let file = OpenOptions::new().write(true).open(&damaged).unwrap();
    file.write_all_at(b"X", entry.offset + 1000).unwrap();
    let damaged = Payload::open(&damaged).unwrap();
    let out = f.dir.join("completed");
    let err = complete(&f.delta, &damaged, create(&out), &out, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("blobs/sha256/cc (from the base") && err.contains("does not match"), "{err}");
    assert!(err.contains(", damaged there)"), "the damaged entry is told from its neighbours: {err}");
}

#[test]
fn a_delta_is_neither_a_base_nor_completed_again() {
    let f = fixture();
    let out = f.dir.join("delta2");
    let err = write_delta(&f.full, &f.delta, create(&out), &out, None).unwrap_err().to_string();
    assert!(err.contains("the base is itself a differential installer"), "{err}");
    let out = f.dir.join("full-again");
    let err = complete(&f.full, &f.base, create(&out), &out, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("not a differential one"), "{err}");
}
