//! The registry served in-process, over TLS with the credential and in the explicit plain mode.

use super::integrity::VerifiedFile;
use super::routes::Registry;
use super::store::Store;
use super::{pki, serve_on, tls};
use crate::protocol::access::{Credential, Secret};
use payload_format::{BundleMetadata, Compression, Payload, PayloadWriter, WriterOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha(bytes: &[u8]) -> String {
    hex::encode(payload_format::sha256(bytes))
}

/// An installer holding one image, `docker.io/library/app:1` (a config and a manifest); returns
/// its path and the manifest's bytes.
fn installer(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let config = br#"{"architecture":"amd64","os":"linux","config":{}}"#.to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": []
    }))
    .unwrap();
    let path = dir.join("installer");
    let file = std::fs::File::create(&path).unwrap();
    let mut w = PayloadWriter::new(file, &path, &mut &b"\x7fELF stub"[..], WriterOptions::default()).unwrap();
    for blob in [&config, &manifest] {
        w.add_file(&format!("blobs/sha256/{}", sha(blob)), 0o644, Compression::Raw, &mut &blob[..]).unwrap();
    }
    let digest = format!("sha256:{}", sha(&manifest));
    let mut meta = BundleMetadata::default();
    meta.extra.insert(
        "images".into(),
        serde_json::json!([{"ref": "docker.io/library/app:1", "registry": "docker.io", "repository": "library/app",
                            "tag": "1", "digest": digest, "mediaType": MANIFEST}]),
    );
    meta.extra.insert("manifests".into(), serde_json::json!({ digest: MANIFEST }));
    w.finish(meta, None).unwrap();
    (path, manifest)
}

/// A registry serving `installer` on 127.0.0.1, over TLS when `tls_dir` is given; it lives as
/// long as the returned runtime.
fn serve(installer: &Path, tls_dir: Option<&Path>) -> (tokio::runtime::Runtime, SocketAddr) {
    let file = VerifiedFile::new(Payload::open(installer).unwrap()).unwrap();
    let store = Store::build(&file).unwrap();
    let (acceptor, credential) = match tls_dir {
        Some(dir) => {
            let (config, check) = tls::load_tls_dir(dir).unwrap();
            (Some(TlsAcceptor::from(config)), Some(check))
        }
        None => (None, None),
    };
    let registry = Arc::new(Registry { file, store, credential });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(serve_on(listener, registry, acceptor, std::future::pending()));
    (rt, addr)
}

/// Sends `request` over TLS trusting `ca_pem` and reads the whole answer (HTTP/1.0: the server
/// closes after it).
fn over_tls(addr: SocketAddr, ca_pem: &str, request: &str) -> std::io::Result<String> {
    let config = tls::client_config(ca_pem).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr)?);
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn get(path: &str, authorization: Option<&Secret>) -> String {
    let auth = authorization.map(|a| format!("Authorization: {}\r\n", a.expose())).unwrap_or_default();
    format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Accept: {MANIFEST}\r\n\r\n")
}

fn status(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or("")
}

#[test]
fn over_tls_only_the_credential_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let (path, manifest) = installer(dir.path());
    let ca = pki::load_or_create(&dir.path().join("state")).unwrap();
    let tls_dir = dir.path().join("tls");
    pki::write_tls_dir(&tls_dir, &ca.serving(&[]).unwrap()).unwrap();
    let (_rt, addr) = serve(&path, Some(&tls_dir));
    let manifest_path = "/v2/library/app/manifests/1?ns=docker.io";

    let none = over_tls(addr, ca.cert_pem(), &get(manifest_path, None)).unwrap();
    assert_eq!(status(&none), "401", "{none}");
    assert!(none.to_ascii_lowercase().contains("www-authenticate: basic realm=\"ferry\""), "{none}");
    assert!(!none.contains("library/app"), "a stranger learns nothing of what is served: {none}");

    let wrong = Credential { username: "ferry".into(), password: Secret::new("guess") };
    let refused = over_tls(addr, ca.cert_pem(), &get(manifest_path, Some(&wrong.basic_header()))).unwrap();
    assert_eq!(status(&refused), "401", "{refused}");
    let version = over_tls(addr, ca.cert_pem(), &get("/v2/", Some(&wrong.basic_header()))).unwrap();
    assert_eq!(status(&version), "401", "every /v2/ route: {version}");

    let right = ca.credential().basic_header();
    let served = over_tls(addr, ca.cert_pem(), &get(manifest_path, Some(&right))).unwrap();
    assert_eq!(status(&served), "200", "{served}");
    assert!(served.ends_with(std::str::from_utf8(&manifest).unwrap()), "the manifest, byte-exact: {served}");

    // The stub's own client (check-pull, the readiness wait) gets the same answers.
    let client = tls::client_config(ca.cert_pem()).unwrap();
    let (at, host) = (addr.to_string(), tls::host_of(&addr.to_string()).to_string());
    let line = tls::status_line(&at, &host, client.clone(), &get(manifest_path, Some(&right))).unwrap();
    assert_eq!(status(&line), "200", "{line}");
    let line = tls::status_line(&at, &host, client, &get("/v2/", None)).unwrap();
    assert_eq!(status(&line), "401", "{line}");
}

#[test]
fn the_tls_port_speaks_no_plain_http_and_no_other_cas_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = installer(dir.path());
    let ca = pki::load_or_create(&dir.path().join("state")).unwrap();
    let tls_dir = dir.path().join("tls");
    pki::write_tls_dir(&tls_dir, &ca.serving(&[]).unwrap()).unwrap();
    let (_rt, addr) = serve(&path, Some(&tls_dir));

    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    plain.write_all(get("/v2/", Some(&ca.credential().basic_header())).as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1."), "plain HTTP got an HTTP answer: {answer:?}");

    let stranger = pki::load_or_create(&dir.path().join("other")).unwrap();
    let err = over_tls(addr, stranger.cert_pem(), &get("/v2/", None)).unwrap_err().to_string();
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn plain_mode_serves_anyone_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = installer(dir.path());
    let (_rt, addr) = serve(&path, None);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(get("/v2/library/app/manifests/1?ns=docker.io", None).as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(status(&answer), "200", "{answer}");
}
