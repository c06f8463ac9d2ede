//! The cluster's registry PKI, operator side: a CA, a pull credential, and the serving
//! certificate it signs for the registry hosts.
//!
//! Owns the files of the operator's local state directory (`.ferry/<cluster>/`) that make the
//! built-in registry private to its cluster, and the node-side file names `registry serve
//! --tls-dir` reads:
//!
//! * [`CA_CERT`], [`CA_KEY`] (0600): an ECDSA P-256 CA made on the first run and reused by every
//!   later `run`, `join` and upgrade, so nodes keep trusting the registry. Its key is read only
//!   here and never leaves the operator's machine: nodes get the certificate, registry hosts a
//!   serving certificate it signed.
//! * [`CREDENTIAL`] (0600): `user:password`, 256 random bits of password from the OS; containerd
//!   sends it as HTTP Basic, registry hosts keep only its digest.
//! * [`SERVING_CERT`], [`SERVING_KEY`] (0600), [`SERVING_NAMES`]: the registry hosts' serving
//!   certificate, reused while the names it covers stay the same, so a re-run does not restart
//!   every registry for a new certificate.
//!
//! * relay identities ([`ClusterCa::relay_identity`]): a certificate for one relaying host's
//!   address, for one distribution, never saved (relays are the same cluster's hosts, so the
//!   same CA vouches for them).
//!
//! A pure module: files and crypto only, its own error type, nothing of the crate above
//! `protocol`. Every error names the file; none carries a key or a password.

use crate::protocol::access::{Credential, PullAccess, RelayIdentity, Secret, ServingMaterial};
use ferry_core::fs::WriteError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The CA's certificate in the local state directory.
pub const CA_CERT: &str = "registry-ca.crt";
/// The CA's private key (0600), never copied anywhere.
pub const CA_KEY: &str = "registry-ca.key";
/// The pull credential, `user:password` (0600).
pub const CREDENTIAL: &str = "registry-credential";
/// The registry hosts' serving certificate, kept to be reused.
pub const SERVING_CERT: &str = "registry-serving.crt";
/// Its key (0600).
pub const SERVING_KEY: &str = "registry-serving.key";
/// The names it covers, one a line, to tell when it must be issued again.
pub const SERVING_NAMES: &str = "registry-serving.names";

/// In a `--tls-dir` (on a registry host, `/etc/ferry/registry`): the serving chain.
pub const TLS_CERT: &str = "registry.crt";
/// In a `--tls-dir`: the serving key (0600).
pub const TLS_KEY: &str = "registry.key";
/// In a `--tls-dir`: hex SHA-256 of the credential's `user:password` (0600).
pub const TLS_CREDENTIAL_DIGEST: &str = "credential.sha256";

/// The CA certificate's subject. Issuing from a saved CA rebuilds the issuer from it, so it must
/// never change (certificates would then name an issuer no node trusts).
const CA_NAME: &str = "ferry registry CA";
/// The credential's user name; the password is what is secret.
const USERNAME: &str = "ferry";
/// How long certificates last. Long, because an air-gapped site may go years between visits
/// and an expired registry certificate stops every pull; a day back for clocks running behind.
const CA_YEARS: u64 = 30;
const SERVING_YEARS: u64 = 10;
/// A relay identity lives one distribution; a week covers the longest one with room to spare.
const RELAY_DAYS: u64 = 7;

/// Why the registry's CA, credential or certificate cannot be loaded, made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("writing the registry's {what}")]
    Write {
        /// What the file holds, e.g. `CA key`.
        what: &'static str,
        /// Why (names the file).
        source: WriteError,
    },
    /// The directory cannot be created.
    #[error("creating directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Half a CA: one of its two files is missing.
    #[error(
        "{} exists but {} does not; restore it, or remove both to make a new CA (every node then needs `run` again to trust it)",
        present.display(), missing.display()
    )]
    HalfCa {
        /// The file that is there.
        present: PathBuf,
        /// The one that is not.
        missing: PathBuf,
    },
    /// A file does not hold what it should.
    #[error("{} does not hold {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// The key or a certificate cannot be made.
    #[error("making the registry's {what}")]
    Generate {
        /// What, e.g. `serving certificate`.
        what: &'static str,
        /// Why.
        source: rcgen::Error,
    },
    /// The OS's randomness is unavailable.
    #[error("reading random bytes for the registry's credential: {0}")]
    Random(getrandom::Error),
}

/// The cluster's CA and credential, loaded from the local state directory.
pub struct ClusterCa {
    dir: PathBuf,
    cert_pem: String,
    key: KeyPair,
    credential: Credential,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("dir", &self.dir)
            .field("key", &"<redacted>")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// Loads the CA and credential from `dir`, making (and saving) whichever is not there yet.
pub fn load_or_create(dir: &Path) -> Result<ClusterCa, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir { dir: dir.to_path_buf(), source })?;
    let (cert_pem, key) = load_or_create_ca(dir)?;
    let credential = load_or_create_credential(dir)?;
    Ok(ClusterCa { dir: dir.to_path_buf(), cert_pem, key, credential })
}

fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let key_pem = read(&key_path)?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|_| PkiError::Malformed { path: key_path, what: "a PEM private key" })?;
            let cert_pem = read(&cert_path)?;
            if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(PkiError::Malformed { path: cert_path, what: "a PEM certificate" });
            }
            Ok((cert_pem, key))
        }
        (true, false) => Err(PkiError::HalfCa { present: cert_path, missing: key_path }),
        (false, true) => Err(PkiError::HalfCa { present: key_path, missing: cert_path }),
        (false, false) => {
            let key = new_key("CA key")?;
            let cert = ca_params().self_signed(&key).map_err(|source| PkiError::Generate { what: "CA", source })?;
            // The key first: a certificate without its key would be a CA that cannot sign.
            write(&key_path, key.serialize_pem().as_bytes(), 0o600, "CA key")?;
            write(&cert_path, cert.pem().as_bytes(), 0o644, "CA certificate")?;
            Ok((cert.pem(), key))
        }
    }
}

fn load_or_create_credential(dir: &Path) -> Result<Credential, PkiError> {
    let path = dir.join(CREDENTIAL);
    if path.exists() {
        let text = read(&path)?;
        let (username, password) = text
            .trim_end()
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty())
            .ok_or(PkiError::Malformed { path, what: "a credential of the form user:password" })?;
        return Ok(Credential { username: username.to_string(), password: Secret::new(password) });
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(PkiError::Random)?;
    let credential = Credential { username: USERNAME.into(), password: Secret::new(hex::encode(bytes)) };
    let line = format!("{}:{}\n", credential.username, credential.password.expose());
    write(&path, line.as_bytes(), 0o600, "credential")?;
    Ok(credential)
}

impl ClusterCa {
    /// The CA's certificate (PEM), which every node trusts for the registry.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The pull credential.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// What every node needs to pull: the CA certificate and the credential.
    pub fn access(&self) -> PullAccess {
        PullAccess { ca_pem: self.cert_pem.clone(), credential: self.credential.clone() }
    }

    /// The serving material for registry hosts reached as `names` (IP addresses or DNS names;
    /// 127.0.0.1 and localhost are always added): the saved certificate when it covers exactly
    /// these names, else a new one, saved for the next run.
    pub fn serving(&self, names: &[String]) -> Result<ServingMaterial, PkiError> {
        let names = serving_names(names);
        let listed = names.join("\n") + "\n";
        let (cert_path, key_path, names_path) =
            (self.dir.join(SERVING_CERT), self.dir.join(SERVING_KEY), self.dir.join(SERVING_NAMES));
        if std::fs::read_to_string(&names_path).ok().as_deref() == Some(listed.as_str())
            && let (Ok(cert_pem), Ok(key_pem)) =
                (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path))
        {
            return Ok(self.material(cert_pem, key_pem));
        }
        let (cert_pem, key_pem) = self.issue(&names, DAY * 365 * SERVING_YEARS as u32)?;
        write(&key_path, key_pem.as_bytes(), 0o600, "serving key")?;
        write(&cert_path, cert_pem.as_bytes(), 0o644, "serving certificate")?;
        write(&names_path, listed.as_bytes(), 0o644, "serving certificate's names")?;
        Ok(self.material(cert_pem, key_pem))
    }

    /// A relay listener's identity for one distribution: a certificate for `name` (the address
    /// downstream hosts reach it by), signed by the CA, then the CA's, and its key. Never saved.
    pub fn relay_identity(&self, name: &str) -> Result<RelayIdentity, PkiError> {
        let (cert_pem, key_pem) = self.issue(&[name.to_string()], DAY * RELAY_DAYS as u32)?;
        Ok(RelayIdentity { cert_pem: format!("{cert_pem}{}", self.cert_pem), key_pem: Secret::new(key_pem) })
    }

    /// A new serving certificate (PEM), valid for `lasting`, and key (PKCS#8 PEM) for `names`,
    /// signed by the CA.
    fn issue(&self, names: &[String], lasting: Duration) -> Result<(String, String), PkiError> {
        let what = "serving certificate";
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|source| PkiError::Generate { what, source })?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "ferry registry");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(lasting);
        let key = new_key("serving key")?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|source| PkiError::Generate { what, source })?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The serving chain (certificate, then the CA's) with its key and the credential digest.
    fn material(&self, cert_pem: String, key_pem: String) -> ServingMaterial {
        ServingMaterial {
            cert_pem: format!("{}{}", cert_pem, self.cert_pem),
            key_pem: Secret::new(key_pem),
            credential_sha256: self.credential.digest(),
            ca_pem: self.cert_pem.clone(),
        }
    }
}

/// `names` with 127.0.0.1 and localhost (a registry host's own probes), sorted, no repeats.
fn serving_names(names: &[String]) -> Vec<String> {
    let mut all: Vec<String> = names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
    all.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
    all.sort();
    all.dedup();
    all
}

/// The CA's parameters: the same every time, so a saved CA can be rebuilt as an issuer.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = validity(DAY * 365 * CA_YEARS as u32);
    params
}

const DAY: Duration = Duration::from_secs(86_400);

/// From a day ago (for clocks running behind) to `lasting` from now.
fn validity(lasting: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = SystemTime::now();
    ((now - DAY).into(), (now + lasting).into())
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate { what, source })
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_path_buf(), source })
}

fn write(path: &Path, bytes: &[u8], mode: u32, what: &'static str) -> Result<(), PkiError> {
    ferry_core::fs::write_atomic(path, bytes, mode).map_err(|source| PkiError::Write { what, source })
}

/// Writes `material` into `dir` as `registry serve --tls-dir` reads it (key and digest 0600);
/// true when any file changed.
pub fn write_tls_dir(dir: &Path, material: &ServingMaterial) -> Result<bool, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir { dir: dir.to_path_buf(), source })?;
    let files: [(&str, &[u8], u32, &'static str); 3] = [
        (TLS_KEY, material.key_pem.expose().as_bytes(), 0o600, "serving key"),
        (TLS_CERT, material.cert_pem.as_bytes(), 0o644, "serving certificate"),
        (TLS_CREDENTIAL_DIGEST, material.credential_sha256.as_bytes(), 0o600, "credential digest"),
    ];
    let mut changed = false;
    for (name, bytes, mode, what) in files {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            write(&path, bytes, mode, what)?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests;
