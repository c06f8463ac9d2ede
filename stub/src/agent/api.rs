//! `agent api-ready`: the Kubernetes API as this node sees it, through its own load balancer.
//!
//! Owns the one request: `GET /readyz` to `127.0.0.1:PORT` over TLS, the apiserver's certificate
//! checked against the cluster CA every node holds (`/etc/kubernetes/pki/ca.crt`), anonymous (the
//! health endpoints are public in kubeadm's RBAC). An upgrade asks every node after each master,
//! so a load balancer that lost its way is found before the next master goes down.

use crate::node::CLUSTER_CA;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why the API did not answer ready.
#[derive(Debug, thiserror::Error)]
pub enum ApiReadyError {
    /// The cluster CA could not be read or used.
    #[error("the cluster CA {path} cannot be used: {cause}")]
    Ca {
        /// The file.
        path: &'static str,
        /// Why.
        cause: String,
    },
    /// No ready answer within the time allowed.
    #[error(
        "the API did not answer ready through this node's load balancer (127.0.0.1:{port}) within {seconds} s: {last}"
    )]
    NotReady {
        /// The load balancer's port.
        port: u16,
        /// Seconds waited.
        seconds: u64,
        /// The last answer or error.
        last: String,
    },
}

/// Waits up to `timeout` seconds for `GET /readyz` through `127.0.0.1:port` to answer 200.
pub fn ready(port: u16, timeout: u64) -> Result<(), ApiReadyError> {
    let ca = |cause: String| ApiReadyError::Ca { path: CLUSTER_CA, cause };
    let pem = std::fs::read_to_string(Path::new(CLUSTER_CA)).map_err(|e| ca(e.to_string()))?;
    let config = crate::registry::tls::client_config(&pem).map_err(|e| ca(e.to_string()))?;
    let addr = format!("127.0.0.1:{port}");
    let request = format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let last = match crate::registry::tls::status_line(&addr, "127.0.0.1", config.clone(), &request) {
            Ok(status) if status.split_whitespace().nth(1) == Some("200") => return Ok(()),
            Ok(status) => status,
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(ApiReadyError::NotReady { port, seconds: timeout, last });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
