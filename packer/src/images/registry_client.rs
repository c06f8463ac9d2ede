//! A pull-only client of the OCI distribution API: manifests by tag or digest, blobs streamed
//! to disk with their digest checked on the way, Bearer-token and Basic authentication, and the
//! build machine's view of the network (`registryMirrors`, `insecureRegistries`).
//!
//! Transport rules: https with the operating system's trust store by default. Plain http, and
//! https without certificate checks, only for loopback hosts or hosts listed in
//! `insecureRegistries`. When a registry has mirrors, only the mirrors are contacted, in order,
//! so a build machine behind a mirror never tries the internet; list the upstream as the last
//! mirror to fall back to it.

use super::oci::{MANIFEST_ACCEPT, MAX_MANIFEST_LEN};
use crate::spec::Mirrors;
use ferry_distribution::credentials::Credentials;
use ferry_distribution::http::{describe_body, parse_challenge, read_limited};
use ferry_distribution::token::TokenError;
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// One place an image can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port]`, without `/v2`.
    pub url: String,
    /// `host[:port]`, for credentials.
    pub host: String,
    /// https without certificate checks (an insecure registry).
    pub skip_verify: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Why a fetch failed. The variants order failures by how much they tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// The content does not match its digest or size.
    Corrupt(String),
    /// Credentials missing or refused.
    Auth(String),
    /// The registry answered that it does not have it.
    NotFound(String),
    /// Any other answer.
    Other(String),
    /// No connection (refused, DNS, TLS handshake, timeout).
    Unreachable(String),
}

impl FetchError {
    fn rank(&self) -> u8 {
        match self {
            FetchError::Corrupt(_) => 0,
            FetchError::Auth(_) => 1,
            FetchError::NotFound(_) => 2,
            FetchError::Unreachable(_) => 3,
            FetchError::Other(_) => 4,
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Corrupt(m) => write!(f, "corrupt content: {m}"),
            FetchError::Auth(m) => write!(f, "authentication failed: {m}"),
            FetchError::NotFound(m) => write!(f, "not found: {m}"),
            FetchError::Other(m) => f.write_str(m),
            FetchError::Unreachable(m) => write!(f, "registry unreachable: {m}"),
        }
    }
}

/// A manifest as the registry sent it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, when sent.
    pub digest_header: Option<String>,
}

/// Where the build machine fetches images from.
#[derive(Clone, Debug, Default)]
pub struct Network {
    mirrors: BTreeMap<String, Vec<Endpoint>>,
    insecure: HashSet<String>,
    /// Never contact a registry.
    pub offline: bool,
}

/// Whether `host[:port]` names this machine.
pub fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map(|(h, _)| h).unwrap_or(host_port)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

/// A `registryMirrors` entry that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("registryMirrors.{registry}: `{url}`: {problem}")]
pub struct MirrorError {
    /// The registry the mirror is for.
    pub registry: String,
    /// The mirror as written.
    pub url: String,
    /// What is wrong with it.
    pub problem: MirrorProblem,
}

/// What is wrong with a mirror URL.
#[derive(Debug, thiserror::Error)]
pub enum MirrorProblem {
    /// A path, user or query, or no host.
    #[error("a mirror is scheme://host[:port], without a path or user")]
    Shape,
    /// Plain http to a host that is neither loopback nor insecure.
    #[error("plain http is only used for loopback hosts or hosts in insecureRegistries; add {0} there or use https")]
    PlainHttp(String),
    /// Not http or https.
    #[error("scheme `{0}` is not http or https")]
    Scheme(String),
}

impl Network {
    /// Checks and keeps the spec's `registryMirrors` and `insecureRegistries`.
    pub fn new(
        mirrors: &BTreeMap<String, Mirrors>,
        insecure: &[String],
        offline: bool,
    ) -> Result<Network, MirrorError> {
        let mut net = Network {
            mirrors: BTreeMap::new(),
            insecure: insecure.iter().map(|h| ferry_distribution::credentials::host_key(h)).collect(),
            offline,
        };
        for (registry, urls) in mirrors {
            let mut eps = Vec::new();
            for url in &urls.0 {
                eps.extend(net.mirror_endpoints(url).map_err(|problem| MirrorError {
                    registry: registry.clone(),
                    url: url.clone(),
                    problem,
                })?);
            }
            // Keyed as image references name registries (every Docker Hub alias is docker.io).
            net.mirrors.insert(ferry_core::image_ref::normalize_domain(registry), eps);
        }
        Ok(net)
    }

    fn insecure_or_local(&self, host: &str) -> bool {
        is_loopback(host) || self.insecure.contains(host)
    }

    fn mirror_endpoints(&self, url: &str) -> Result<Vec<Endpoint>, MirrorProblem> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (Some(s), r),
            None => (None, url),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains('@') || host.contains('?') {
            return Err(MirrorProblem::Shape);
        }
        match scheme {
            Some("http") if !self.insecure_or_local(host) => Err(MirrorProblem::PlainHttp(host.to_string())),
            Some("http") => Ok(vec![Endpoint { url: format!("http://{host}"), host: host.into(), skip_verify: false }]),
            Some("https") => Ok(vec![Endpoint {
                url: format!("https://{host}"),
                host: host.into(),
                skip_verify: self.insecure.contains(host),
            }]),
            Some(other) => Err(MirrorProblem::Scheme(other.to_string())),
            None => Ok(self.direct_endpoints(host)),
        }
    }

    /// https first; for loopback and insecure hosts plain http after it, as Docker does.
    fn direct_endpoints(&self, host: &str) -> Vec<Endpoint> {
        let api_host = if host == "docker.io" { "registry-1.docker.io" } else { host };
        let mut eps = vec![Endpoint {
            url: format!("https://{api_host}"),
            host: host.into(),
            skip_verify: self.insecure.contains(host),
        }];
        if self.insecure_or_local(host) {
            eps.push(Endpoint { url: format!("http://{api_host}"), host: host.into(), skip_verify: false });
        }
        eps
    }

    /// Where to fetch `registry`'s images from, in order.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        match self.mirrors.get(registry) {
            Some(eps) => eps.clone(),
            None => self.direct_endpoints(registry),
        }
    }

    /// Whether a realm or redirect target may be used without verified TLS.
    fn may_use_plain(&self, url: &str) -> bool {
        match url.split_once("://") {
            Some(("https", _)) => true,
            Some(("http", rest)) => self.insecure_or_local(rest.split('/').next().unwrap_or("")),
            _ => false,
        }
    }
}

/// The client. Cheap to share between threads.
pub struct RegistryClient {
    net: Network,
    creds: Credentials,
    verified: ureq::Agent,
    unverified: ureq::Agent,
    /// `Authorization` values by (endpoint, repository).
    auth: Mutex<HashMap<(String, String), String>>,
    /// Endpoints that could not be reached, with the reason, so each is tried once.
    dead: Mutex<HashMap<String, String>>,
}

const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

fn agent(skip_verify: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .disable_verification(skip_verify)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        // A stalled transfer fails instead of hanging the build; blobs may take long in total.
        .timeout_per_read(Some(Duration::from_secs(120)))
        .max_redirects(5)
        .build()
        .into()
}

impl RegistryClient {
    /// A client for `net` with `creds`.
    pub fn new(net: Network, creds: Credentials) -> RegistryClient {
        RegistryClient {
            net,
            creds,
            verified: agent(false),
            unverified: agent(true),
            auth: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashMap::new()),
        }
    }

    /// The network settings.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// GET `path` on `ep` for repository `repo`, authenticating once when challenged.
    fn get(
        &self,
        ep: &Endpoint,
        repo: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
        if self.net.offline {
            return Err(FetchError::Unreachable(format!("{ep}: not contacted (--offline)")));
        }
        if let Some(why) = self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&ep.url) {
            return Err(FetchError::Unreachable(why.clone()));
        }
        let url = format!("{}{}", ep.url, path);
        let agent = if ep.skip_verify { &self.unverified } else { &self.verified };
        let key = (ep.url.clone(), repo.to_string());
        let mut challenged = false;
        loop {
            let mut req = agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let cached = self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
            if let Some(h) = &cached {
                req = req.header("Authorization", h);
            }
            let resp = req.call().map_err(|e| self.unreachable(ep, &e))?;
            let status = resp.status().as_u16();
            if status == 401 && !challenged {
                challenged = true;
                let challenge =
                    resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let header = self.authenticate(ep, repo, &challenge)?;
                self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.clone(), header);
                continue;
            }
            if status == 401 || status == 403 {
                let body = read_limited(resp, 4096).unwrap_or_default();
                let hint = self.refusal_hint(ep);
                return Err(FetchError::Auth(format!("{ep} answered {status} ({}); {hint}", describe_body(&body))));
            }
            return Ok(resp);
        }
    }

    /// Why `ep` could not be reached. Endpoints that cannot be connected to at all (an https
    /// attempt on a plain-http registry, a closed port) are remembered, so each is tried once
    /// per build.
    fn unreachable(&self, ep: &Endpoint, e: &ureq::Error) -> FetchError {
        let mut why = format!("cannot reach {ep}: {e}");
        if why.contains("certificate") && !ep.skip_verify {
            why.push_str(&format!(" (list {} in insecureRegistries to skip certificate checks)", ep.host));
        }
        let connect_failure = matches!(
            e,
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Tls(_) | ureq::Error::Rustls(_)
        ) || matches!(e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
        if connect_failure {
            self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(ep.url.clone(), why.clone());
        }
        FetchError::Unreachable(why)
    }

    /// What to tell the user when `ep` or its token service refuses: whose credentials were
    /// refused, or how to supply some.
    fn refusal_hint(&self, ep: &Endpoint) -> String {
        match self.creds.get(&ep.host) {
            Some(l) => format!("credentials for {} from {} were refused", ep.host, l.origin),
            None => self.creds.hint(&ep.host),
        }
    }

    fn authenticate(&self, ep: &Endpoint, repo: &str, challenge: &str) -> Result<String, FetchError> {
        let (scheme, params) = parse_challenge(challenge);
        let login = self.creds.get(&ep.host);
        match scheme.as_str() {
            "basic" => match login {
                Some(l) => Ok(l.basic_header()),
                None => Err(FetchError::Auth(format!("{ep} requires a login; {}", self.creds.hint(&ep.host)))),
            },
            "bearer" => self.bearer_token(ep, repo, &params),
            "" => Err(FetchError::Auth(format!("{ep} answered 401 without a WWW-Authenticate challenge"))),
            other => {
                Err(FetchError::Auth(format!("{ep} asks for `{other}` authentication, which ferry does not support")))
            }
        }
    }

    /// A Bearer token from the token service a challenge names, asked with the login for `ep`
    /// when there is one.
    fn bearer_token(&self, ep: &Endpoint, repo: &str, params: &HashMap<String, String>) -> Result<String, FetchError> {
        let realm = params
            .get("realm")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| FetchError::Auth(format!("{ep} sent a Bearer challenge without a realm")))?;
        if !self.net.may_use_plain(realm) {
            return Err(FetchError::Auth(format!(
                "{ep} wants a token from {realm}, which is not https (allowed only for loopback or insecureRegistries)"
            )));
        }
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{repo}:pull"));
        let agent = if ep.skip_verify { &self.unverified } else { &self.verified };
        let service = params.get("service").map(String::as_str);
        ferry_distribution::token::bearer(agent, realm, &scope, service, self.creds.get(&ep.host)).map_err(
            |e| match e {
                TokenError::Unreachable(why) => {
                    FetchError::Unreachable(format!("token service {realm} of {ep}: {why}"))
                }
                TokenError::Refused { status, body } => FetchError::Auth(format!(
                    "token service {realm} answered {status} ({body}); {}",
                    self.refusal_hint(ep)
                )),
                TokenError::NoToken(what) => FetchError::Auth(format!("token service {realm} {what}")),
            },
        )
    }

    /// A manifest or index by tag or digest from one endpoint.
    pub fn manifest(&self, ep: &Endpoint, repo: &str, reference: &str) -> Result<FetchedManifest, FetchError> {
        let resp = self.get(ep, repo, &format!("/v2/{repo}/manifests/{reference}"), Some(MANIFEST_ACCEPT))?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let content_type = header("content-type");
        let digest_header = header("docker-content-digest");
        let body = read_limited(resp, MAX_MANIFEST_LEN)
            .map_err(|e| FetchError::Other(format!("{ep}: reading the manifest: {e}")))?;
        match status {
            200 => {
                if body.len() as u64 > MAX_MANIFEST_LEN {
                    return Err(FetchError::Corrupt(format!(
                        "{ep}: the manifest is larger than {MAX_MANIFEST_LEN} bytes"
                    )));
                }
                Ok(FetchedManifest { bytes: body, content_type, digest_header })
            }
            404 => Err(FetchError::NotFound(format!("{ep} has no {repo}:{reference} ({})", describe_body(&body)))),
            _ => Err(FetchError::Other(format!(
                "{ep} answered {status} for {repo}:{reference} ({})",
                describe_body(&body)
            ))),
        }
    }

    /// The first endpoint (in order) that serves the manifest, with the manifest.
    pub fn manifest_any(
        &self,
        eps: &[Endpoint],
        repo: &str,
        reference: &str,
    ) -> Result<(Endpoint, FetchedManifest), FetchError> {
        let mut errors: Vec<FetchError> = Vec::new();
        for ep in eps {
            match self.manifest(ep, repo, reference) {
                Ok(m) => return Ok((ep.clone(), m)),
                Err(e) => errors.push(e),
            }
        }
        Err(combine(errors))
    }

    /// Streams blob `digest` of `size` bytes into `dest`, checking size and digest; `dest`
    /// appears only when both hold. Retries transient failures twice.
    pub fn blob(
        &self,
        ep: &Endpoint,
        repo: &str,
        digest: &str,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), FetchError> {
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 * attempt));
            }
            match self.blob_once(ep, repo, digest, size, dest, progress) {
                Ok(()) => return Ok(()),
                Err((e, retry)) => {
                    if !retry {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn blob_once(
        &self,
        ep: &Endpoint,
        repo: &str,
        digest: &str,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), (FetchError, bool)> {
        let resp = self.get(ep, repo, &format!("/v2/{repo}/blobs/{digest}"), None).map_err(|e| (e, false))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = read_limited(resp, 4096).unwrap_or_default();
            let msg = format!("{ep} answered {status} for blob {digest} of {repo} ({})", describe_body(&body));
            return Err(match status {
                404 => (FetchError::NotFound(msg), false),
                429 | 500..=599 => (FetchError::Other(msg), true),
                _ => (FetchError::Other(msg), false),
            });
        }
        let partial = dest.with_extension("partial");
        let io_err = |e: std::io::Error| (FetchError::Other(format!("writing {}: {e}", partial.display())), false);
        let mut file = std::fs::File::create(&partial).map_err(io_err)?;
        let mut reader = resp.into_body().into_reader().take(size + 1);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err((
                        FetchError::Other(format!("{ep}: blob {digest} of {repo} broke off after {got} bytes: {e}")),
                        true,
                    ));
                }
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err)?;
            got += n as u64;
            progress(n as u64);
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != size || actual != digest {
            let _ = std::fs::remove_file(&partial);
            let detail = if got != size {
                format!(
                    "blob {digest} of {repo} from {ep}: {got}{} bytes received, its descriptor says {size}",
                    if got > size { "+" } else { "" }
                )
            } else {
                format!("blob {digest} of {repo} from {ep} hashes to {actual}")
            };
            return Err((FetchError::Corrupt(detail), true));
        }
        file.sync_all().map_err(io_err)?;
        std::fs::rename(&partial, dest).map_err(io_err)?;
        Ok(())
    }
}

/// One error out of several attempts: the most telling kind, with every answer that came back
/// (connection failures are listed only when nothing answered).
pub fn combine(errors: Vec<FetchError>) -> FetchError {
    if errors.is_empty() {
        return FetchError::Other("no endpoint to try".into());
    }
    let best = errors.iter().map(|e| e.rank()).min().unwrap();
    // A definite answer (not found, refused, corrupt) is the story; otherwise every attempt is
    // (e.g. a certificate refused over https and a 400 from the same port over http).
    let answered: Vec<&FetchError> = errors.iter().filter(|e| e.rank() <= 2).collect();
    let shown: Vec<String> = if answered.is_empty() {
        errors.iter().map(|e| inner(e).to_string()).collect()
    } else {
        answered.iter().map(|e| inner(e).to_string()).collect()
    };
    let msg = shown.join("; ");
    match best {
        0 => FetchError::Corrupt(msg),
        1 => FetchError::Auth(msg),
        2 => FetchError::NotFound(msg),
        3 => FetchError::Unreachable(msg),
        _ => FetchError::Other(msg),
    }
}

fn inner(e: &FetchError) -> &str {
    match e {
        FetchError::Corrupt(m)
        | FetchError::Auth(m)
        | FetchError::NotFound(m)
        | FetchError::Other(m)
        | FetchError::Unreachable(m) => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_rules() {
        let mut mirrors = BTreeMap::new();
        mirrors.insert("docker.io".to_string(), Mirrors(vec!["http://127.0.0.1:5000".into()]));
        let net = Network::new(&mirrors, &["reg.lan:5000".into()], false).unwrap();
        assert_eq!(
            net.endpoints("docker.io"),
            [Endpoint { url: "http://127.0.0.1:5000".into(), host: "127.0.0.1:5000".into(), skip_verify: false }]
        );
        let q = net.endpoints("quay.io");
        assert_eq!(q.len(), 1, "no plain http for public hosts: {q:?}");
        assert_eq!(q[0].url, "https://quay.io");
        let lan = net.endpoints("reg.lan:5000");
        assert_eq!(
            lan.iter().map(|e| (e.url.as_str(), e.skip_verify)).collect::<Vec<_>>(),
            [("https://reg.lan:5000", true), ("http://reg.lan:5000", false)]
        );
        let local = net.endpoints("localhost:5000");
        assert_eq!(local[1].url, "http://localhost:5000");
        let hub = Network::default().endpoints("docker.io");
        assert_eq!(hub[0].url, "https://registry-1.docker.io");
        assert_eq!(hub[0].host, "docker.io");

        let mut bad = BTreeMap::new();
        bad.insert("docker.io".to_string(), Mirrors(vec!["http://10.0.0.5:5000".into()]));
        let e = Network::new(&bad, &[], false).unwrap_err().to_string();
        assert!(e.contains("registryMirrors.docker.io") && e.contains("insecureRegistries"), "{e}");
        bad.insert("docker.io".to_string(), Mirrors(vec!["https://m.example/some/path".into()]));
        assert!(Network::new(&bad, &[], false).is_err());
        assert!(
            is_loopback("127.0.0.1:5000")
                && is_loopback("[::1]:80")
                && is_loopback("localhost")
                && !is_loopback("10.0.0.1:5000")
        );
    }

    #[test]
    fn combine_prefers_answers() {
        let e = combine(vec![
            FetchError::Unreachable("https://x: tls".into()),
            FetchError::NotFound("http://x has no a:1".into()),
        ]);
        assert_eq!(e, FetchError::NotFound("http://x has no a:1".into()));
        let e = combine(vec![FetchError::Unreachable("a".into()), FetchError::Unreachable("b".into())]);
        assert_eq!(e, FetchError::Unreachable("a; b".into()));
        let e =
            combine(vec![FetchError::Unreachable("https: certificate".into()), FetchError::Other("http: 400".into())]);
        assert_eq!(e, FetchError::Unreachable("https: certificate; http: 400".into()));
        assert!(
            describe_body(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#)
                .contains("MANIFEST_UNKNOWN")
        );
    }
}
