//! Secrets ferry generates for kubeadm, and the discovery hash of the cluster CA.
//!
//! - The bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, kubeadm's format) and the certificate key
//!   (32 random bytes, hex: the AES-256 key `--upload-certs` encrypts the shared CA and
//!   service-account keys with) come from the OS's randomness (getrandom), never from a seeded
//!   generator. Both are short-lived (token 24 h, certificate key 2 h) and are never written to
//!   ferry's saved cluster state.
//! - The discovery hash is computed from the CA certificate itself: `sha256:` + hex SHA-256 of
//!   the DER SubjectPublicKeyInfo (kubeadm's `pubkeypin`), not scraped from kubeadm's output,
//!   so it is right for RSA and ECDSA CAs alike and for any kubeadm version.
//!
//! Errors are [`SecretsError`]s, and none of them holds a secret.

use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::{Decode, DecodePem, Encode};

type Result<T, E = SecretsError> = std::result::Result<T, E>;

/// A secret that cannot be made, or a CA certificate that cannot be read. No variant holds a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The OS would not give randomness.
    #[error("reading the OS's randomness for {what}: {cause}")]
    Randomness {
        /// `a bootstrap token` or `a certificate key`.
        what: &'static str,
        /// What getrandom said.
        cause: getrandom::Error,
    },
    /// PEM that is not an X.509 certificate.
    #[error("{what}: not a PEM X.509 certificate: {cause}")]
    NotPem {
        /// The certificate file.
        what: String,
        /// What the decoder said.
        cause: x509_cert::der::Error,
    },
    /// An empty certificate file.
    #[error("{what}: empty file, expected the cluster CA certificate")]
    Empty {
        /// The certificate file.
        what: String,
    },
    /// DER that is not an X.509 certificate.
    #[error("{what}: not a DER X.509 certificate: {cause}")]
    NotDer {
        /// The certificate file.
        what: String,
        /// What the decoder said.
        cause: x509_cert::der::Error,
    },
    /// The certificate's public key does not encode back to DER.
    #[error("{what}: re-encoding the certificate's public key")]
    Reencode {
        /// The certificate file.
        what: String,
        /// What the encoder said.
        #[source]
        cause: x509_cert::der::Error,
    },
}

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_chars(n: usize) -> Result<String> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|cause| SecretsError::Randomness { what: "a bootstrap token", cause })?;
        // Rejection sampling: 252 = 7 × 36, so every character is equally likely.
        for &b in buf.iter().filter(|&&b| b < 252) {
            if out.len() == n {
                break;
            }
            out.push(TOKEN_ALPHABET[(b % 36) as usize] as char);
        }
    }
    Ok(out)
}

/// A new bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn bootstrap_token() -> Result<String> {
    Ok(format!("{}.{}", random_chars(6)?, random_chars(16)?))
}

/// Whether `t` has the bootstrap token format kubeadm accepts.
pub fn is_bootstrap_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| TOKEN_ALPHABET.contains(&b));
    matches!(t.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

/// A new certificate key for `kubeadm init --upload-certs`: 32 random bytes as 64 hex digits.
pub fn certificate_key() -> Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|cause| SecretsError::Randomness { what: "a certificate key", cause })?;
    Ok(hex::encode(key))
}

/// Whether `k` has the certificate key format (64 hex digits).
pub fn is_certificate_key(k: &str) -> bool {
    k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit())
}

/// kubeadm's `--discovery-token-ca-cert-hash` for a CA certificate given as PEM or DER:
/// `sha256:<hex of SHA-256 over the DER SubjectPublicKeyInfo>`. `what` names the file in errors.
pub fn ca_cert_hash(cert: &[u8], what: &str) -> Result<String> {
    let parsed = if cert.trim_ascii_start().starts_with(b"-----BEGIN") {
        Certificate::from_pem(cert).map_err(|cause| SecretsError::NotPem { what: what.to_string(), cause })?
    } else if cert.is_empty() {
        return Err(SecretsError::Empty { what: what.to_string() });
    } else {
        Certificate::from_der(cert).map_err(|cause| SecretsError::NotDer { what: what.to_string(), cause })?
    };
    let spki = parsed
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|cause| SecretsError::Reencode { what: what.to_string(), cause })?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&spki))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/standins/pki");

    #[test]
    fn tokens_have_kubeadms_format_and_differ() {
        let a = bootstrap_token().unwrap();
        let b = bootstrap_token().unwrap();
        assert!(is_bootstrap_token(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_bootstrap_token("abcdef.0123456789abcdeF"));
        assert!(!is_bootstrap_token("abcdef0123456789abcdef"));
        // Every character of the alphabet turns up over enough tokens (no bias to a subset).
        let all: String = (0..200).map(|_| bootstrap_token().unwrap()).collect();
        assert!(TOKEN_ALPHABET.iter().all(|c| all.as_bytes().contains(c)));
    }

    #[test]
    fn certificate_keys_are_32_random_bytes() {
        let k = certificate_key().unwrap();
        assert!(is_certificate_key(&k), "{k}");
        assert_ne!(k, certificate_key().unwrap());
    }

    /// Expected values from kubeadm's documented openssl pipeline:
    /// `openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | sha256sum`.
    #[test]
    fn ca_hash_matches_openssl_for_rsa_and_ecdsa_pem_and_der() {
        let rsa = std::fs::read(format!("{PKI}/ca.crt")).unwrap();
        let want = "sha256:97fe9c8fcc81715b896710d2ce0d1fc3f3cfb64faec80d70240bfb169d899b1d";
        assert_eq!(ca_cert_hash(&rsa, "ca.crt").unwrap(), want);
        let der = Certificate::from_pem(&rsa).unwrap().to_der().unwrap();
        assert_eq!(ca_cert_hash(&der, "ca.der").unwrap(), want);
        let ec = std::fs::read(format!("{PKI}/ca-ecdsa.crt")).unwrap();
        assert_eq!(
            ca_cert_hash(&ec, "ca-ecdsa.crt").unwrap(),
            "sha256:7ad7238a83b5b795e845976a839abee1e63200b87876382659c69b9e30a3b94f"
        );
    }

    #[test]
    fn ca_hash_errors_name_the_file() {
        let e = ca_cert_hash(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "/etc/kubernetes/pki/ca.crt",
        )
        .unwrap_err();
        assert!(e.to_string().contains("/etc/kubernetes/pki/ca.crt: not a PEM X.509 certificate"), "{e}");
        assert!(ca_cert_hash(b"", "x.crt").unwrap_err().to_string().contains("x.crt: empty"));
        assert!(ca_cert_hash(b"\x30\x03\x02\x01\x00", "x.der").unwrap_err().to_string().contains("x.der: not a DER"));
    }
}
