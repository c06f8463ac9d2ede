//! The ferry installer file format.
//!
//! An installer is one file laid out as
//!
//! ```text
//! [stub][padding][entries…][index][signature][trailer]
//! ```
//!
//! * the **stub** is the static `ferry-stub` executable, so the file runs as `./installer`;
//! * **entries** start on 4 KiB boundaries and are stored either raw (already-compressed data such
//!   as image layers, servable as a plain slice of the file) or as independent zstd frames;
//! * the **index** lists every entry and carries the SHA-256 of the stub and of every fixed-size
//!   chunk of the data region, so verification runs on all cores and a receiver can check a
//!   stream chunk by chunk;
//! * the **signature** is ed25519 over the trailer, which carries the index digest;
//! * the fixed-size **trailer** sits at the very end so a reader finds everything from the file
//!   length alone, without scanning for magic bytes.
//!
//! `docs/format.md` in the repository describes every byte. This crate is pure: it reads and
//! writes files and never prints.
#![deny(missing_docs)]

mod delta;
mod error;
mod extract;
mod index;
mod keys;
mod layout;
mod pipeline;
mod reader;
#[cfg(test)]
mod test_data;
mod trailer;
mod writer;

pub use delta::{
    CompleteSummary, DeltaRecord, DeltaSummary, InstallerRef, METADATA_KEY as DELTA_METADATA_KEY,
    TAIL_ENTRY as DELTA_TAIL_ENTRY, check_base, complete, index_digest, write_delta,
};
pub use error::{Error, Result, WrongBase};
pub use extract::{ExtractOptions, ExtractSummary};
pub use index::{BundleMetadata, Compression, Entry, EntryKind, Index};
pub use keys::{PublicKey, SecretKey, SignatureStatus, TrustPolicy};
pub(crate) use layout::align_up;
pub use layout::{ALIGN, DEFAULT_CHUNK_SIZE, DEFAULT_FRAME_SIZE, Digest, sha256};
pub use reader::Payload;
pub use trailer::{FORMAT_VERSION, TRAILER_LEN, TRAILER_MAGIC, Trailer};
pub use writer::{PayloadWriter, WriteSummary, WriterOptions};
