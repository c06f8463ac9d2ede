//! Errors a reader, writer or verifier reports, worded for the person holding the file.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or verifying an installer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", …).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than its trailer says, or too short to have one.
    #[error(
        "{path}: the file is truncated: {detail}. It may have been cut short in transfer, or run \
         through `strip`, which silently drops the payload appended to the executable"
    )]
    Truncated {
        /// The file concerned.
        path: PathBuf,
        /// What exactly is missing.
        detail: String,
    },
    /// The last bytes are not a ferry trailer.
    #[error(
        "{path}: no ferry payload found (wrong magic at the end of the file). It is not a ferry \
         installer, or it was truncated or stripped"
    )]
    BadMagic {
        /// The file concerned.
        path: PathBuf,
    },
    /// The trailer names a format version this reader does not know.
    #[error(
        "{path}: payload format version {found} is not supported (this reader understands version \
         {supported}); use a ferry release that matches the one that built the file"
    )]
    UnsupportedVersion {
        /// The file concerned.
        path: PathBuf,
        /// Version found in the trailer.
        found: u32,
        /// Version this reader supports.
        supported: u32,
    },
    /// A structural field is inconsistent.
    #[error("{path}: the {region} is corrupt: {detail}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// Which region ("trailer", "index", …).
        region: &'static str,
        /// What is inconsistent.
        detail: String,
    },
    /// The index bytes do not hash to the digest in the trailer.
    #[error("{path}: the index does not match the digest recorded in the trailer; the file was modified or corrupted")]
    IndexDigestMismatch {
        /// The file concerned.
        path: PathBuf,
    },
    /// The file carries no signature.
    #[error("{path}: the file is UNSIGNED: nothing proves who built it")]
    Unsigned {
        /// The file concerned.
        path: PathBuf,
    },
    /// The signature does not verify.
    #[error("{path}: the signature is INVALID: the file was modified after signing, or the signature is forged")]
    BadSignature {
        /// The file concerned.
        path: PathBuf,
    },
    /// The signature is valid but by a key that is not trusted.
    #[error("{path}: signed by {fingerprint}, which is not one of the trusted keys ({trusted})")]
    UntrustedSigner {
        /// The file concerned.
        path: PathBuf,
        /// Fingerprint of the actual signer.
        fingerprint: String,
        /// Fingerprints of the trusted keys.
        trusted: String,
    },
    /// The stub's bytes do not hash to the value in the index.
    #[error(
        "{path}: the installer program itself (the stub, bytes 0..{len}) does not match the signed index; it was modified"
    )]
    StubMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Length of the stub region.
        len: u64,
    },
    /// A data chunk does not hash to the value in the index.
    #[error(
        "{path}: chunk {chunk} (bytes {start}..{end}{entry}) does not match the signed index; the file is corrupted or was modified"
    )]
    ChunkMismatch {
        /// The file concerned.
        path: PathBuf,
        /// Chunk number.
        chunk: u64,
        /// First byte of the chunk in the file.
        start: u64,
        /// One past the last byte of the chunk.
        end: u64,
        /// ", in entry X" when the chunk belongs to an entry.
        entry: String,
    },
    /// A key file could not be parsed.
    #[error("{path}: {detail}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it is unusable.
        detail: String,
    },
    /// Data could not be decompressed.
    #[error("{path}: entry {entry}: {detail}")]
    Decompress {
        /// The file concerned.
        path: PathBuf,
        /// Entry path.
        entry: String,
        /// Why.
        detail: String,
    },
    /// An extraction would overwrite, escape, or not fit.
    #[error("{0}")]
    Extract(String),
    /// The file given as a differential installer's base is not the one it completes.
    #[error("{0}")]
    WrongBase(Box<WrongBase>),
    /// A differential installer's records do not hold together, or a file is used as one when
    /// it is not.
    #[error("{path}: {detail}")]
    Delta {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, in words.
        detail: String,
    },
    /// An entry given to the writer is invalid.
    #[error("entry {path}: {detail}")]
    InvalidEntry {
        /// Entry path.
        path: String,
        /// Why it was refused.
        detail: String,
    },
}

/// The file given as a differential installer's base, and the one the delta names.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is not the base this differential installer was built on: it needs {expected_name} {expected_version} \
     ({expected}), and {path} is {found_name} {found_version} ({found}){missing}"
)]
pub struct WrongBase {
    /// The file given as the base.
    pub path: PathBuf,
    /// `sha256:` of the index of the base the delta names.
    pub expected: String,
    /// Name of the base the delta names.
    pub expected_name: String,
    /// Version of the base the delta names.
    pub expected_version: String,
    /// `sha256:` of the given file's index.
    pub found: String,
    /// Name of the given file's bundle.
    pub found_name: String,
    /// Version of the given file's bundle.
    pub found_version: String,
    /// What the given file lacks of what the delta takes from its base, in words (may be empty).
    pub missing: String,
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}
