//! Signing keys, public keys, fingerprints and the trust decision.
//!
//! Private keys are PKCS#8 PEM. Public keys are written as one OpenSSH `ssh-ed25519` line, so
//! `ssh-keygen -lf NAME.pub` prints the same `SHA256:` fingerprint ferry does.

use crate::{Digest, Error, Result, sha256};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::path::Path;

/// Domain separation so a ferry signature can never be replayed as anything else.
const SIGNING_CONTEXT: &[u8] = b"ferry payload signature v1\0";

/// An ed25519 signing key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key { path: "<random>".into(), detail: e.to_string() })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// PKCS#8 PEM text of the key.
    pub fn to_pem(&self) -> String {
        let pem = self
            .0
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an ed25519 key always encodes");
        pem.to_string()
    }

    /// Parses PKCS#8 PEM text; `path` names the file in errors.
    pub fn from_pem(text: &str, path: &Path) -> Result<SecretKey> {
        SigningKey::from_pkcs8_pem(text).map(SecretKey).map_err(|e| Error::Key {
            path: path.into(),
            detail: format!("not an ed25519 private key in PKCS#8 PEM form ({e}); create one with `ferry keygen`"),
        })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut m = SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(message);
        self.0.sign(&m).to_bytes()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug output.
        write!(f, "SecretKey({})", self.public().fingerprint())
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Builds a key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(bytes).ok().map(PublicKey)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    fn ssh_wire_blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(51);
        for part in [&b"ssh-ed25519"[..], &self.0.to_bytes()[..]] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        blob
    }

    /// `SHA256:<base64>` of the OpenSSH wire form, exactly as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", STANDARD_NO_PAD.encode(sha256(&self.ssh_wire_blob())))
    }

    /// One OpenSSH public-key line: `ssh-ed25519 <base64> <comment>`.
    pub fn to_openssh(&self, comment: &str) -> String {
        format!("ssh-ed25519 {} {comment}\n", STANDARD.encode(self.ssh_wire_blob()))
    }

    /// Parses a public key file: an OpenSSH `ssh-ed25519` line or an SPKI PEM block.
    pub fn parse(text: &str, path: &Path) -> Result<PublicKey> {
        let bad = |detail: String| Error::Key { path: path.into(), detail };
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(trimmed)
                .map(PublicKey)
                .map_err(|e| bad(format!("not an ed25519 public key PEM ({e})")));
        }
        let mut fields = trimmed.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("ssh-ed25519"), Some(b64)) => {
                let blob = STANDARD.decode(b64).map_err(|_| bad("the key is not valid base64".into()))?;
                let expected_prefix = [&[0, 0, 0, 11][..], b"ssh-ed25519", &[0, 0, 0, 32]].concat();
                if blob.len() != expected_prefix.len() + 32 || !blob.starts_with(&expected_prefix) {
                    return Err(bad("the ssh-ed25519 key blob is malformed".into()));
                }
                let raw: [u8; 32] = blob[expected_prefix.len()..].try_into().unwrap();
                PublicKey::from_bytes(&raw).ok_or_else(|| bad("the key is not a valid ed25519 point".into()))
            }
            (Some(other), _) => Err(bad(format!("expected an `ssh-ed25519` public key, found `{other}`"))),
            _ => Err(bad("the file is empty".into())),
        }
    }

    /// Verifies `signature` over `message` with `verify_strict`, which also rejects weak keys and
    /// malleable signatures.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let mut m = SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(message);
        self.0.verify_strict(&m, &Signature::from_bytes(signature)).is_ok()
    }
}

/// Which signers are acceptable.
#[derive(Clone, Debug, Default)]
pub struct TrustPolicy {
    /// Trusted keys. When empty, any valid signature is accepted and the caller should say the
    /// signer was not pinned.
    pub trusted: Vec<PublicKey>,
    /// Accept a file with no signature at all.
    pub allow_unsigned: bool,
}

/// The outcome of a successful signature check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Signed by a key in the trust list.
    Trusted(PublicKey),
    /// Validly signed, but no trust list was given.
    ValidUnpinned(PublicKey),
    /// Unsigned, and the policy allowed it.
    Unsigned,
}

/// The bytes a signature covers: the whole trailer, which carries the index digest.
pub(crate) fn signed_message(trailer_bytes: &[u8]) -> Digest {
    sha256(trailer_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_and_openssh_round_trip() {
        let k = SecretKey::generate().unwrap();
        let k2 = SecretKey::from_pem(&k.to_pem(), Path::new("k")).unwrap();
        assert_eq!(k.public(), k2.public());
        let line = k.public().to_openssh("ferry");
        assert_eq!(PublicKey::parse(&line, Path::new("p")).unwrap(), k.public());
        assert!(k.public().fingerprint().starts_with("SHA256:"));
        assert!(!format!("{k:?}").contains(&k.to_pem()));
    }

    #[test]
    fn signatures_verify_only_for_the_message_and_key() {
        let k = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let sig = k.sign(b"abc");
        assert!(k.public().verify(b"abc", &sig));
        assert!(!k.public().verify(b"abd", &sig));
        assert!(!other.public().verify(b"abc", &sig));
    }

    #[test]
    fn rejects_garbage_keys() {
        assert!(PublicKey::parse("ssh-rsa AAAA", Path::new("p")).is_err());
        assert!(PublicKey::parse("ssh-ed25519 !!!", Path::new("p")).is_err());
        assert!(SecretKey::from_pem("nope", Path::new("k")).is_err());
    }
}
