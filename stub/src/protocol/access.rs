//! What the operator hands nodes so they can reach the built-in registry, and registry hosts so
//! they can serve it: the cluster CA's certificate, the pull credential, the serving certificate.
//!
//! Owns: [`Secret`] (a string that never prints), [`PullAccess`] (every node: CA certificate and
//! credential, for containerd's hosts.toml and `agent check-pull`) and [`ServingMaterial`]
//! (registry hosts only: certificate, key, and the credential's digest), and [`RelayIdentity`]
//! (a relaying host's certificate and key for one distribution). These travel on an
//! agent's stdin, never on a command line, and their `Debug` output redacts every secret. The
//! CA's private key has no type here: it never leaves the operator's machine.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A secret string: serialized as itself (it must reach the agent), printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The registry's pull credential: HTTP Basic user name and password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// User name (not secret).
    pub username: String,
    /// Password.
    pub password: Secret,
}

impl Credential {
    /// `user:password`, the bytes HTTP Basic encodes.
    fn pair(&self) -> String {
        format!("{}:{}", self.username, self.password.expose())
    }

    /// The `Authorization` header value: `Basic base64(user:password)`.
    pub fn basic_header(&self) -> Secret {
        use base64::Engine as _;
        Secret(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(self.pair())))
    }

    /// Hex SHA-256 of `user:password`: all a registry host keeps to check the credential. The
    /// password is 256 random bits, so a plain digest is as hard to reverse as the password
    /// is to guess.
    pub fn digest(&self) -> String {
        digest_of(self.pair().as_bytes())
    }
}

/// Hex SHA-256 of `bytes`, as [`Credential::digest`] computes it.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What every node needs to pull from the built-in registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullAccess {
    /// The cluster CA's certificate (PEM); the only root a node trusts for the registry.
    pub ca_pem: String,
    /// The pull credential.
    pub credential: Credential,
}

/// A relay listener's TLS identity for one distribution session: a certificate for the host's
/// address, signed by the cluster CA, and its key. Made per session and never saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayIdentity {
    /// The certificate (PEM), then the CA's.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: Secret,
}

/// What a registry host needs to serve: written under `/etc/ferry/registry/` by
/// `agent registry-service`, read by `registry serve --tls-dir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingMaterial {
    /// The serving certificate (PEM), signed by the cluster CA, then the CA's certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: Secret,
    /// Hex SHA-256 of the credential's `user:password` ([`Credential::digest`]).
    pub credential_sha256: String,
    /// The cluster CA's certificate, for the host's own readiness probe.
    pub ca_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> Credential {
        Credential { username: "ferry".into(), password: Secret::new("s3cr3t-pa55") }
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let access = PullAccess { ca_pem: "CA".into(), credential: credential() };
        let serving = ServingMaterial {
            cert_pem: "C".into(),
            key_pem: Secret::new("PRIVATE KEY"),
            credential_sha256: "d".into(),
            ca_pem: "CA".into(),
        };
        let shown = format!("{access:?} {access:#?} {serving:?} {:?}", credential().basic_header());
        assert!(!shown.contains("s3cr3t") && !shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("ZmVycnk6czNjcjN0LXBhNTU"), "the encoded header is a secret too: {shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn basic_header_and_digest() {
        assert_eq!(credential().basic_header().expose(), "Basic ZmVycnk6czNjcjN0LXBhNTU=");
        assert_eq!(credential().digest(), digest_of(b"ferry:s3cr3t-pa55"));
    }

    #[test]
    fn a_malformed_secret_message_is_not_quoted_back() {
        let bad = br#"{"ca_pem":"CA","credential":{"username":"ferry","password":17},"leak":"s3cr3t-pa55"}"#;
        let err = super::super::decode_secret::<PullAccess>("the pull access", bad).unwrap_err().to_string();
        assert!(err.contains("the pull access") && err.contains("line 1"), "{err}");
        assert!(!err.contains("s3cr3t") && !err.contains("17"), "{err}");
    }

    #[test]
    fn secrets_travel_as_plain_strings() {
        let json = serde_json::to_string(&credential()).unwrap();
        assert_eq!(json, r#"{"username":"ferry","password":"s3cr3t-pa55"}"#);
        assert_eq!(serde_json::from_str::<Credential>(&json).unwrap(), credential());
    }
}
