//! Owns the sizes every part of the file agrees on (alignment, chunk and frame sizes) and the
//! digest used throughout.

/// Entries (and the data region) start on multiples of this many bytes.
pub const ALIGN: u64 = 4096;

/// Size of one hashed chunk of the data region, unless the writer chooses otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Uncompressed bytes per zstd frame, unless the writer chooses otherwise.
pub const DEFAULT_FRAME_SIZE: u32 = 2 << 20;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

pub(crate) fn align_up(value: u64) -> u64 {
    value.div_ceil(ALIGN) * ALIGN
}
