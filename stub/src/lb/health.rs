//! How the load balancer judges one apiserver: a TCP connect, then, when the cluster CA is
//! known, `GET /readyz` over TLS.
//!
//! A TCP connect alone calls an apiserver healthy as soon as its port is open, which is seconds
//! before it can serve (post-start hooks, an authorizer that has not synced), and while it shuts
//! down; during a rolling upgrade a third of the requests would land on it. `/readyz` is the
//! apiserver's own word for "send me traffic", readable anonymously in kubeadm's RBAC. Its
//! certificate is checked against the cluster CA: the probe carries no secret, but a verdict
//! from whoever answers on the port is worth nothing. Where the conversation fails on its
//! content (a backend that does not speak TLS, a certificate the CA did not sign) readiness
//! cannot be judged, and the TCP verdict stands, said once in the log.

use rustls::ClientConfig;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// The name every kubeadm apiserver certificate carries, whatever the node's address.
const APISERVER_NAME: &str = "kubernetes";

/// How long a `/readyz` answer may take: generous, since a loaded apiserver is slow but alive,
/// and a backend wrongly marked down only moves to the end of the list.
const READYZ_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/readyz` check: the cluster CA, read once it exists (a node that is joining gets it
/// from kubeadm after the LB has started; until then the check is TCP only).
pub struct Readyz {
    ca: PathBuf,
    config: Mutex<Option<Arc<ClientConfig>>>,
    /// Whether an apiserver that does not speak TLS as expected has been reported.
    said_unjudged: AtomicBool,
}

impl Readyz {
    /// A check trusting the CA certificate at `ca`.
    pub fn new(ca: PathBuf) -> Readyz {
        Readyz { ca, config: Mutex::new(None), said_unjudged: AtomicBool::new(false) }
    }

    /// The TLS client, once the CA file can be read and used.
    fn client(&self) -> Option<Arc<ClientConfig>> {
        let mut cached = self.config.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.is_none() {
            let pem = std::fs::read_to_string(&self.ca).ok()?;
            *cached = crate::registry::tls::client_config(&pem).ok();
        }
        cached.clone()
    }
}

/// Whether `addr` should get traffic: `Err` says why not.
pub async fn probe(addr: &str, connect_timeout: Duration, readyz: Option<&Readyz>) -> Result<(), String> {
    match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer to a TCP connect within {} ms", connect_timeout.as_millis())),
    }
    let Some(readyz) = readyz else { return Ok(()) };
    let Some(config) = readyz.client() else { return Ok(()) };
    let (target, request) = (addr.to_string(), format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n"));
    let ask = tokio::task::spawn_blocking(move || {
        crate::registry::tls::status_line(&target, APISERVER_NAME, config, &request)
    });
    match tokio::time::timeout(READYZ_TIMEOUT, ask).await {
        Ok(Ok(Ok(status))) => verdict(&status),
        // A TLS conversation that fails on its content (not an apiserver's TLS, a certificate
        // the cluster CA did not sign) cannot judge readiness: the TCP verdict stands.
        Ok(Ok(Err(e))) if matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::InvalidInput) => {
            if !readyz.said_unjudged.swap(true, Ordering::Relaxed) {
                eprintln!("ferry-lb: {addr}: /readyz cannot be judged over TLS ({e}); judging by TCP connect");
            }
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(format!("/readyz: {e}")),
        Ok(Err(e)) => Err(format!("/readyz: {e}")),
        Err(_) => Err(format!("/readyz did not answer within {} s", READYZ_TIMEOUT.as_secs())),
    }
}

/// The verdict on `/readyz`'s status line. 401 and 403 mean anonymous requests are turned off:
/// the apiserver is up and authenticating, which is all the LB can learn then.
fn verdict(status_line: &str) -> Result<(), String> {
    match status_line.split_whitespace().nth(1) {
        Some("200" | "401" | "403") => Ok(()),
        _ if status_line.is_empty() => Err("/readyz: the connection closed without an answer".into()),
        _ => Err(format!("/readyz answered `{status_line}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_or_unjudgeable_answers_take_traffic() {
        assert_eq!(verdict("HTTP/1.1 200 OK"), Ok(()));
        assert_eq!(verdict("HTTP/1.1 403 Forbidden"), Ok(()), "anonymous requests refused: up, not judged");
        assert_eq!(verdict("HTTP/1.1 401 Unauthorized"), Ok(()));
        assert!(verdict("HTTP/1.1 500 Internal Server Error").unwrap_err().contains("500"));
        assert!(verdict("HTTP/1.1 503 Service Unavailable").is_err(), "a shutting-down apiserver");
        assert!(verdict("").unwrap_err().contains("closed"));
        assert!(verdict("garbage").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_down_and_an_open_one_up_without_a_ca() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert_eq!(probe(&open, Duration::from_secs(5), None).await, Ok(()));
        // A CA that does not exist yet leaves the TCP verdict standing.
        let missing = Readyz::new("/nonexistent/ca.crt".into());
        assert_eq!(probe(&open, Duration::from_secs(5), Some(&missing)).await, Ok(()));
        drop(listener);
        assert!(probe(&open, Duration::from_secs(5), None).await.is_err());
    }

    #[tokio::test]
    async fn a_backend_that_does_not_speak_tls_is_judged_by_tcp() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Answers whatever arrives in plain HTTP, as a stand-in apiserver does.
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let _ = c.read(&mut [0u8; 1024]);
                let _ = c.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
            }
        });
        let readyz = Readyz::new(ca);
        assert_eq!(probe(&addr, Duration::from_secs(5), Some(&readyz)).await, Ok(()));
        assert!(readyz.said_unjudged.load(Ordering::Relaxed));
    }
}
