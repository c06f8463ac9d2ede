//! The fixed-size trailer at the very end of an installer.

use crate::{Digest, Error, Result};
use std::path::Path;

/// Length of the trailer in bytes.
pub const TRAILER_LEN: usize = 128;

/// The last eight bytes of every installer. The `\r\n` catches text-mode mangling, as in PNG.
pub const TRAILER_MAGIC: [u8; 8] = *b"\x89FERRY\r\n";

/// The payload format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Flag bit: the file carries a signature block.
pub(crate) const FLAG_SIGNED: u32 = 1;

/// Length of a signature block: ed25519 public key then signature.
pub(crate) const SIGNATURE_BLOCK_LEN: u64 = 32 + 64;

/// Where every region of the file lies. All offsets are absolute file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Format version.
    pub version: u32,
    /// Flag bits; bit 0 means signed.
    pub flags: u32,
    /// The stub occupies `0..stub_len`.
    pub stub_len: u64,
    /// First byte of the data region (a multiple of 4096).
    pub data_offset: u64,
    /// First byte of the index; the data region ends here.
    pub index_offset: u64,
    /// Length of the index.
    pub index_len: u64,
    /// First byte of the signature block.
    pub signature_offset: u64,
    /// Length of the signature block (0 when unsigned).
    pub signature_len: u64,
    /// SHA-256 of the index bytes.
    pub index_sha256: Digest,
}

impl Trailer {
    /// Whether the file claims to be signed.
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// Encodes the trailer as its 128 on-disk bytes.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&self.version.to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.stub_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.data_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.index_offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.index_len.to_le_bytes());
        out[40..48].copy_from_slice(&self.signature_offset.to_le_bytes());
        out[48..56].copy_from_slice(&self.signature_len.to_le_bytes());
        out[56..88].copy_from_slice(&self.index_sha256);
        // 88..120 reserved, zero.
        out[120..128].copy_from_slice(&TRAILER_MAGIC);
        out
    }

    /// Decodes and checks a trailer read from the end of a file of `file_len` bytes.
    ///
    /// Every offset is checked against `file_len`, so nothing later allocates or seeks by an
    /// untrusted size.
    pub fn decode(bytes: &[u8; TRAILER_LEN], file_len: u64, path: &Path) -> Result<Trailer> {
        if bytes[120..128] != TRAILER_MAGIC {
            return Err(Error::BadMagic { path: path.into() });
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let version = u32_at(0);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { path: path.into(), found: version, supported: FORMAT_VERSION });
        }
        let trailer = Trailer {
            version,
            flags: u32_at(4),
            stub_len: u64_at(8),
            data_offset: u64_at(16),
            index_offset: u64_at(24),
            index_len: u64_at(32),
            signature_offset: u64_at(40),
            signature_len: u64_at(48),
            index_sha256: bytes[56..88].try_into().unwrap(),
        };
        let corrupt = |detail: String| Error::Corrupt { path: path.into(), region: "trailer", detail };
        if trailer.flags & !FLAG_SIGNED != 0 {
            return Err(corrupt(format!("unknown flag bits {:#x}", trailer.flags)));
        }
        if bytes[88..120].iter().any(|&b| b != 0) {
            return Err(corrupt("reserved bytes are not zero".into()));
        }
        let expected_sig_len = if trailer.is_signed() { SIGNATURE_BLOCK_LEN } else { 0 };
        if trailer.signature_len != expected_sig_len {
            return Err(corrupt(format!("signature length {} (expected {expected_sig_len})", trailer.signature_len)));
        }
        let declared_end = trailer
            .signature_offset
            .checked_add(trailer.signature_len)
            .and_then(|e| e.checked_add(TRAILER_LEN as u64))
            .ok_or_else(|| corrupt("offsets overflow".into()))?;
        if declared_end > file_len {
            return Err(Error::Truncated {
                path: path.into(),
                detail: format!("the trailer describes {declared_end} bytes but the file has {file_len}"),
            });
        }
        if declared_end != file_len {
            return Err(corrupt(format!(
                "the trailer describes {declared_end} bytes but the file has {file_len}; data was appended or the file was spliced"
            )));
        }
        let index_end = trailer.index_offset.checked_add(trailer.index_len);
        if trailer.data_offset != crate::align_up(trailer.stub_len)
            || trailer.data_offset > trailer.index_offset
            || index_end != Some(trailer.signature_offset)
        {
            return Err(corrupt(format!(
                "regions out of order (stub {}, data {}, index {}+{}, signature {})",
                trailer.stub_len,
                trailer.data_offset,
                trailer.index_offset,
                trailer.index_len,
                trailer.signature_offset
            )));
        }
        Ok(trailer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trailer {
        Trailer {
            version: FORMAT_VERSION,
            flags: FLAG_SIGNED,
            stub_len: 4000,
            data_offset: 4096,
            index_offset: 8192,
            index_len: 50,
            signature_offset: 8242,
            signature_len: 96,
            index_sha256: [7; 32],
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        let len = 8242 + 96 + 128;
        assert_eq!(Trailer::decode(&t.encode(), len, Path::new("x")).unwrap(), t);
    }

    #[test]
    fn rejects_wrong_magic_version_and_sizes() {
        let t = sample();
        let len = 8242 + 96 + 128;
        let mut b = t.encode();
        b[127] ^= 1;
        assert!(matches!(Trailer::decode(&b, len, Path::new("x")), Err(Error::BadMagic { .. })));
        let mut b = t.encode();
        b[0] = 9;
        assert!(matches!(Trailer::decode(&b, len, Path::new("x")), Err(Error::UnsupportedVersion { found: 9, .. })));
        assert!(matches!(Trailer::decode(&t.encode(), len - 1, Path::new("x")), Err(Error::Truncated { .. })));
        let mut big = t.clone();
        big.index_len = u64::MAX;
        assert!(Trailer::decode(&big.encode(), len, Path::new("x")).is_err());
    }
}
