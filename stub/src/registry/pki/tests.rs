use super::*;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_ca_and_credential_are_made_once_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".ferry/lab");
    let first = load_or_create(&state).unwrap();
    assert_eq!(mode(&state.join(CA_KEY)), 0o600);
    assert_eq!(mode(&state.join(CREDENTIAL)), 0o600);
    assert_eq!(mode(&state.join(CA_CERT)) & 0o600, 0o600);
    let again = load_or_create(&state).unwrap();
    assert_eq!(again.cert_pem(), first.cert_pem());
    assert_eq!(again.credential(), first.credential());
    assert_eq!(first.credential().username, "ferry");
    assert_eq!(first.credential().password.expose().len(), 64, "256 random bits, hex");
    let other = load_or_create(&dir.path().join(".ferry/other")).unwrap();
    assert_ne!(other.cert_pem(), first.cert_pem(), "each cluster its own CA");
    assert_ne!(other.credential(), first.credential(), "and its own credential");
}

#[test]
fn half_a_ca_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    load_or_create(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
    let err = load_or_create(dir.path()).unwrap_err().to_string();
    assert!(err.contains(CA_KEY) && err.contains("does not"), "{err}");
    assert!(!dir.path().join(CA_KEY).exists(), "no new key beside the old certificate");
}

#[test]
fn a_malformed_credential_names_its_file_and_not_its_content() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CREDENTIAL), "no-colon-secret\n").unwrap();
    let err = load_or_create(dir.path()).unwrap_err().to_string();
    assert!(err.contains(CREDENTIAL) && !err.contains("no-colon-secret"), "{err}");
}

fn verify(ca_pem: &str, chain_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).map(Result::unwrap).collect();
    let name = ServerName::try_from(name.to_string()).unwrap();
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).map(|_| ())
}

#[test]
fn the_serving_certificate_verifies_for_its_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_or_create(dir.path()).unwrap();
    let names = ["10.0.0.1".to_string(), "10.0.0.2".to_string(), "ferry-registry".to_string()];
    let material = ca.serving(&names).unwrap();
    // A CA loaded again signs certificates the same nodes trust.
    let reloaded = load_or_create(dir.path()).unwrap();
    for name in ["10.0.0.1", "10.0.0.2", "ferry-registry", "127.0.0.1", "localhost"] {
        verify(ca.cert_pem(), &material.cert_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify(ca.cert_pem(), &material.cert_pem, "10.0.0.3").is_err(), "not a registry host");
    let stranger = load_or_create(&dir.path().join("other")).unwrap();
    assert!(verify(stranger.cert_pem(), &material.cert_pem, "10.0.0.1").is_err(), "another cluster's CA");
    assert_eq!(mode(&dir.path().join(SERVING_KEY)), 0o600);
    assert_eq!(material.credential_sha256, ca.credential().digest());

    let same = reloaded.serving(&["ferry-registry".into(), "10.0.0.2".into(), "10.0.0.1".into()]).unwrap();
    assert_eq!(same.cert_pem, material.cert_pem, "the same names: the saved certificate");
    let grown = reloaded.serving(&["10.0.0.1".into(), "10.0.0.9".into()]).unwrap();
    assert_ne!(grown.cert_pem, material.cert_pem);
    verify(ca.cert_pem(), &grown.cert_pem, "10.0.0.9").unwrap();
    assert!(verify(ca.cert_pem(), &grown.cert_pem, "10.0.0.2").is_err(), "a replica gone is not covered");
}

#[test]
fn the_tls_dir_keeps_key_and_digest_private_and_reports_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_or_create(&dir.path().join("state")).unwrap();
    let material = ca.serving(&[]).unwrap();
    let tls = dir.path().join("etc/ferry/registry");
    assert!(write_tls_dir(&tls, &material).unwrap());
    assert!(!write_tls_dir(&tls, &material).unwrap(), "nothing changed");
    assert_eq!(mode(&tls.join(TLS_KEY)), 0o600);
    assert_eq!(mode(&tls.join(TLS_CREDENTIAL_DIGEST)), 0o600);
    let on_host = std::fs::read_to_string(tls.join(TLS_CREDENTIAL_DIGEST)).unwrap();
    assert!(!on_host.contains(ca.credential().password.expose()), "a registry host keeps only the digest");
}

#[test]
fn debug_output_redacts_the_key_and_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_or_create(dir.path()).unwrap();
    let key = std::fs::read_to_string(dir.path().join(CA_KEY)).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    let shown = format!("{ca:?} {:?} {:?}", ca.access(), ca.serving(&[]).unwrap());
    assert!(!shown.contains(ca.credential().password.expose()), "{shown}");
    assert!(!shown.contains(key_body), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}
