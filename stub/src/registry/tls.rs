//! The built-in registry's TLS and credential, both ends.
//!
//! Owns: reading a `--tls-dir` ([`super::pki::TLS_CERT`], [`super::pki::TLS_KEY`],
//! [`super::pki::TLS_CREDENTIAL_DIGEST`]) into a rustls server configuration and a
//! [`CredentialCheck`]; the client configuration ferry's own probes use, which trusts the
//! cluster CA and nothing else; and [`status_line`], the stub's one HTTP/1 client request (a
//! HEAD or GET over that TLS, answering the status line), for `agent check-pull` and the
//! registry service's readiness wait. All on ring, chosen explicitly rather than as rustls's
//! process-wide default, so another crate's choice of provider cannot change it.

use super::pki::{TLS_CERT, TLS_CREDENTIAL_DIGEST, TLS_KEY};
use hyper::header::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the registry's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the TLS directory cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{} does not hold {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// rustls refuses the certificate, key or CA.
    #[error("setting up TLS with {what}")]
    Config {
        /// What was given, e.g. `the certificate and key in /etc/ferry/registry`.
        what: String,
        /// Why.
        source: rustls::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration and credential check from the files in `dir`.
pub fn load_tls_dir(dir: &Path) -> Result<(Arc<ServerConfig>, CredentialCheck), TlsError> {
    let (cert_path, key_path, digest_path) = (dir.join(TLS_CERT), dir.join(TLS_KEY), dir.join(TLS_CREDENTIAL_DIGEST));
    let chain = read(&cert_path)?;
    let key = read(&key_path)?;
    let digest = String::from_utf8(read(&digest_path)?).ok().and_then(|d| hex::decode(d.trim()).ok());
    let digest: [u8; 32] = digest
        .and_then(|d| d.try_into().ok())
        .ok_or(TlsError::Malformed { path: digest_path, what: "a hex SHA-256 digest" })?;
    let what = || format!("the certificate and key in {}", dir.display());
    let config = server_config(&chain, &key, b"http/1.1", &what).map_err(|e| match e {
        ServerConfigError::Chain => TlsError::Malformed { path: cert_path.clone(), what: "a PEM certificate chain" },
        ServerConfigError::Key => TlsError::Malformed { path: key_path.clone(), what: "a PEM private key" },
        ServerConfigError::Tls(e) => e,
    })?;
    Ok((config, CredentialCheck { digest }))
}

/// Why [`server_config`] failed.
#[derive(Debug)]
pub enum ServerConfigError {
    /// The chain holds no PEM certificate.
    Chain,
    /// The key is not a PEM private key.
    Key,
    /// rustls refused them.
    Tls(TlsError),
}

/// A server configuration with `chain_pem` (the certificate, then its CA) and `key_pem`,
/// offering ALPN `protocol`; `what` names them in rustls's refusal.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    protocol: &[u8],
    what: &dyn Fn() -> String,
) -> Result<Arc<ServerConfig>, ServerConfigError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or(ServerConfigError::Chain)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| ServerConfigError::Key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|source| ServerConfigError::Tls(TlsError::Config { what: what(), source }))?;
    config.alpn_protocols = vec![protocol.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting only the CA certificate(s) in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let what = || "the cluster's registry CA".to_string();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert =
            cert.map_err(|_| TlsError::Config { what: what(), source: rustls::Error::NoCertificatesPresented })?;
        roots.add(cert).map_err(|source| TlsError::Config { what: what(), source })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config { what: what(), source: rustls::Error::NoCertificatesPresented });
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config { what: what(), source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Checks HTTP Basic `Authorization` headers against the credential's digest.
pub struct CredentialCheck {
    digest: [u8; 32],
}

impl std::fmt::Debug for CredentialCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCheck(<redacted>)")
    }
}

impl CredentialCheck {
    /// Whether `header` is `Basic base64(user:password)` of the credential. The comparison is of
    /// digests, in constant time, so neither the answer's timing nor a memory dump of the
    /// registry gives the password away.
    pub fn allows(&self, header: Option<&HeaderValue>) -> bool {
        use base64::Engine as _;
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let Some(encoded) = header.and_then(|h| h.to_str().ok()).and_then(basic_token) else { return false };
        let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let presented: [u8; 32] = sha2::Sha256::digest(&pair).into();
        presented.ct_eq(&self.digest).into()
    }
}

/// The token of a `Basic` authorization (the scheme is case-insensitive).
fn basic_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("basic").then_some(token)
}

/// Sends `request` (a whole HTTP/1.0 request, headers and blank line included) to `addr` over
/// TLS with `config`, checking the certificate against `host`; returns the status line.
pub fn status_line(addr: &str, host: &str, config: Arc<ClientConfig>, request: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let name = ServerName::try_from(host.to_string()).map_err(|e| invalid(format!("{host}: {e}")))?;
    let sock = addr.to_socket_addrs()?.next().ok_or_else(|| invalid(format!("{addr} resolves to no address")))?;
    let tcp = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| invalid(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = tls.read(&mut b)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&head).lines().next().unwrap_or("").trim().to_string())
}

/// The host part of `host:port` (`[v6]:port` too), as a certificate names it.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::access::{Credential, Secret};

    fn check_for(c: &Credential) -> CredentialCheck {
        CredentialCheck { digest: hex::decode(c.digest()).unwrap().try_into().unwrap() }
    }

    #[test]
    fn only_the_credential_passes() {
        let right = Credential { username: "ferry".into(), password: Secret::new("pw") };
        let wrong = Credential { username: "ferry".into(), password: Secret::new("pW") };
        let check = check_for(&right);
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(check.allows(Some(&header(right.basic_header().expose()))));
        assert!(check.allows(Some(&header(&right.basic_header().expose().replace("Basic", "basic")))));
        assert!(!check.allows(Some(&header(wrong.basic_header().expose()))));
        assert!(!check.allows(None));
        assert!(!check.allows(Some(&header("Bearer x"))));
        assert!(!check.allows(Some(&header("Basic !!!"))));
        assert!(!format!("{check:?}").contains(&right.digest()));
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("10.0.0.1:5050"), "10.0.0.1");
        assert_eq!(host_of("[::1]:5050"), "::1");
        assert_eq!(host_of("reg.example:443"), "reg.example");
    }
}
