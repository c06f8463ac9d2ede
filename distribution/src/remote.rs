//! One repository of one registry, over the OCI distribution API, for `push` and `pull`.
//!
//! Owns the reference (`oci://HOST[:PORT]/REPO[:TAG|@DIGEST]`), the transport (https with the
//! system's roots or `--ca-file`; plain http only with `--plain-http`), authentication (asked
//! once with `GET /v2/`, Basic or a Bearer token for pull and push, renewed once when a request
//! is refused), and the requests: blob existence, chunked uploads that resume from the last
//! acknowledged chunk, manifests, and blob downloads. Credentials go only to the registry's own
//! host: an upload `Location` elsewhere is refused.

use crate::credentials::{Credentials, Login};
use crate::http::{describe_body, parse_challenge, percent_encode, read_limited};
use crate::token::{TokenError, bearer};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use ureq::http::{Method, Request, Response};
use ureq::{Body, SendBody};

/// `oci://HOST[:PORT]/REPO[:TAG|@DIGEST]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub host: String,
    /// The repository path.
    pub repo: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.contains(':') { '@' } else { ':' };
        write!(f, "oci://{}/{}{sep}{}", self.host, self.repo, self.reference)
    }
}

/// Why talking to the registry failed. Every message names the registry or the reference.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A reference that is not `oci://HOST/REPO:TAG`.
    #[error("`{given}` is not an OCI reference: {why} (expected oci://HOST[:PORT]/REPO[:TAG] or …@sha256:DIGEST)")]
    BadReference {
        /// What was given.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// The CA file cannot be used.
    #[error("the CA file {path}: {why}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// No connection.
    #[error("cannot reach {url}: {why}")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why.
        why: String,
    },
    /// Credentials missing or refused.
    #[error("{registry} refused access: {why}")]
    Auth {
        /// The registry.
        registry: String,
        /// Why, with a hint.
        why: String,
    },
    /// The registry answered something else than the protocol allows.
    #[error("{registry}: {what} answered {status} ({body})")]
    Refused {
        /// The registry.
        registry: String,
        /// The request, in words.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The error body, summarised.
        body: String,
    },
    /// Something arrived that is not what was asked for.
    #[error("{registry}: {what}")]
    Protocol {
        /// The registry.
        registry: String,
        /// What is wrong.
        what: String,
    },
    /// Reading the local file failed.
    #[error("reading {path}: {cause}")]
    Local {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
}

impl RemoteError {
    /// Whether trying the same request again could help (a broken connection, a 5xx, a 429).
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Unreachable { .. } => true,
            RemoteError::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// Parses `oci://HOST[:PORT]/REPO[:TAG|@DIGEST]`; `default_tag` when neither is given.
pub fn parse_reference(given: &str, default_tag: Option<&str>) -> Result<Reference, RemoteError> {
    let bad = |why: &str| RemoteError::BadReference { given: given.to_string(), why: why.to_string() };
    let rest = given.strip_prefix("oci://").ok_or_else(|| bad("it does not start with oci://"))?;
    let (host, path) = rest.split_once('/').ok_or_else(|| bad("no repository after the host"))?;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) {
        return Err(bad("the host is not HOST[:PORT]"));
    }
    let (repo, reference) = if let Some((repo, digest)) = path.split_once('@') {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(bad("the digest is not sha256: and 64 lowercase hex digits"));
        }
        (repo, digest.to_string())
    } else {
        match path.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((repo, tag)) => (repo, tag.to_string()),
            None => (path, default_tag.ok_or_else(|| bad("no tag or digest"))?.to_string()),
        }
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !repo.split('/').all(component_ok) {
        return Err(bad("the repository must be lowercase path components of [a-z0-9._-]"));
    }
    let tag_ok = reference.contains(':')
        || (reference.len() <= 128
            && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !reference.starts_with(['.', '-']));
    if !tag_ok {
        return Err(bad("the tag must be up to 128 of [A-Za-z0-9._-], not starting with . or -"));
    }
    Ok(Reference { host: host.to_ascii_lowercase(), repo: repo.to_string(), reference })
}

/// How to reach and log in to the registry.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Plain http (only when asked: a site registry without TLS).
    pub plain_http: bool,
    /// A CA certificate (PEM) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Logins: `--registry-auth`, then Docker's config.
    pub credentials: Credentials,
}

/// An open repository.
pub struct Remote {
    agent: ureq::Agent,
    /// `scheme://host[:port]`.
    base: String,
    /// The reference it was opened for.
    pub reference: Reference,
    login: Option<Login>,
    hint: String,
    push: bool,
    authorization: Mutex<Option<String>>,
}

const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

fn agent(access: &Access) -> Result<ureq::Agent, RemoteError> {
    let roots = match &access.ca_file {
        Some(path) => {
            let ca = |why: String| RemoteError::Ca { path: path.clone(), why };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no PEM certificate in it".into()));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        }
        None => ureq::tls::RootCerts::PlatformVerifier,
    };
    let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(300)))
        // A stalled transfer fails (and is retried) instead of hanging.
        .timeout_per_read(Some(Duration::from_secs(120)))
        .timeout_per_write(Some(Duration::from_secs(120)))
        // Uploads must not follow a redirect with a body and credentials; blob downloads may be
        // sent to storage, which is followed by hand.
        .max_redirects(0)
        .build()
        .into())
}

impl Remote {
    /// Opens `reference` for pulling, or for pushing too: asks `GET /v2/` and logs in as the
    /// registry asks.
    pub fn open(reference: &Reference, access: &Access, push: bool) -> Result<Remote, RemoteError> {
        let scheme = if access.plain_http { "http" } else { "https" };
        let remote = Remote {
            agent: agent(access)?,
            base: format!("{scheme}://{}", reference.host),
            reference: reference.clone(),
            login: access.credentials.get(&reference.host).cloned(),
            hint: access.credentials.hint(&reference.host),
            push,
            authorization: Mutex::new(None),
        };
        let resp = remote.send(Method::GET, &format!("{}/v2/", remote.base), &[], None, false)?;
        match resp.status().as_u16() {
            200 => {}
            401 => remote.authenticate(&resp)?,
            status => return Err(remote.refused("GET /v2/", resp, status)),
        }
        Ok(remote)
    }

    /// The registry, for messages.
    pub fn registry(&self) -> &str {
        &self.base
    }

    fn refused(&self, what: &str, resp: Response<Body>, status: u16) -> RemoteError {
        let body = read_limited(resp, 4096).unwrap_or_default();
        if status == 401 || status == 403 {
            return self.auth_error(format!("{what} answered {status} ({})", describe_body(&body)));
        }
        RemoteError::Refused { registry: self.base.clone(), what: what.into(), status, body: describe_body(&body) }
    }

    fn auth_error(&self, why: String) -> RemoteError {
        let hint = match &self.login {
            Some(l) => format!("the login for {} from {} was refused", self.reference.host, l.origin),
            None => self.hint.clone(),
        };
        RemoteError::Auth { registry: self.base.clone(), why: format!("{why}; {hint}") }
    }

    /// Learns the `Authorization` value the challenge in `resp` asks for.
    fn authenticate(&self, resp: &Response<Body>) -> Result<(), RemoteError> {
        let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (scheme, params) = parse_challenge(challenge);
        let value = match scheme.as_str() {
            "basic" => match &self.login {
                Some(l) => l.basic_header(),
                None => return Err(self.auth_error("it asks for a login".into())),
            },
            "bearer" => self.bearer_token(&params)?,
            "" => return Err(self.auth_error("401 without a WWW-Authenticate challenge".into())),
            other => {
                return Err(
                    self.auth_error(format!("it asks for `{other}` authentication, which ferry does not support"))
                );
            }
        };
        *self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
        Ok(())
    }

    fn bearer_token(&self, params: &std::collections::HashMap<String, String>) -> Result<String, RemoteError> {
        let realm = params
            .get("realm")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| self.auth_error("a Bearer challenge without a realm".into()))?;
        if realm.starts_with("http://") && !self.base.starts_with("http://") {
            return Err(self.auth_error(format!("its token service {realm} is not https")));
        }
        let actions = if self.push { "pull,push" } else { "pull" };
        let scope = format!("repository:{}:{actions}", self.reference.repo);
        let service = params.get("service").map(String::as_str);
        bearer(&self.agent, realm, &scope, service, self.login.as_ref()).map_err(|e| match e {
            TokenError::Unreachable(why) => RemoteError::Unreachable { url: realm.clone(), why },
            TokenError::Refused { status, body } => {
                self.auth_error(format!("its token service {realm} answered {status} ({body})"))
            }
            TokenError::NoToken(what) => self.auth_error(format!("its token service {realm} {what}")),
        })
    }

    /// `url` made absolute against the registry; a URL on another host is refused, since it
    /// would receive the credentials.
    fn resolve(&self, location: &str) -> Result<String, RemoteError> {
        if location.starts_with('/') {
            return Ok(format!("{}{location}", self.base));
        }
        if location.starts_with(&format!("{}/", self.base)) {
            return Ok(location.to_string());
        }
        Err(RemoteError::Protocol {
            registry: self.base.clone(),
            what: format!(
                "it sent the upload to another server ({location}); ferry sends credentials only to {}",
                self.base
            ),
        })
    }

    /// One request with the current authorization; a 401 renews it once (a token that expired
    /// during a long push), sending the body again from `body`.
    fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        mut body: Option<&mut dyn FnMut() -> Result<SendBody<'static>, RemoteError>>,
        renew: bool,
    ) -> Result<Response<Body>, RemoteError> {
        let mut renewed = !renew;
        loop {
            let mut req = Request::builder().method(method.clone()).uri(url);
            if let Some(a) = self.authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
                req = req.header("Authorization", a);
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let sent = match body.as_mut() {
                Some(make) => self.agent.run(req.body(make()?).map_err(|e| self.protocol(e.to_string()))?),
                None => self.agent.run(req.body(()).map_err(|e| self.protocol(e.to_string()))?),
            };
            let resp = sent.map_err(|e| RemoteError::Unreachable { url: url.to_string(), why: e.to_string() })?;
            if resp.status().as_u16() == 401 && !renewed {
                renewed = true;
                self.authenticate(&resp)?;
                continue;
            }
            return Ok(resp);
        }
    }

    fn protocol(&self, what: String) -> RemoteError {
        RemoteError::Protocol { registry: self.base.clone(), what }
    }

    fn repo_url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.reference.repo)
    }

    /// Whether the repository holds blob `digest` of `size` bytes.
    pub fn has_blob(&self, digest: &str, size: u64) -> Result<bool, RemoteError> {
        let resp = self.send(Method::HEAD, &self.repo_url(&format!("blobs/{digest}")), &[], None, true)?;
        match resp.status().as_u16() {
            200 => {
                let len = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                Ok(len.is_none_or(|n| n == size))
            }
            404 => Ok(false),
            status => Err(self.refused(&format!("HEAD blob {digest}"), resp, status)),
        }
    }

    /// Starts an upload session; its Location.
    pub fn start_upload(&self) -> Result<String, RemoteError> {
        let resp =
            self.send(Method::POST, &self.repo_url("blobs/uploads/"), &[("Content-Length", "0".into())], None, true)?;
        match resp.status().as_u16() {
            202 => self.location(&resp, "starting an upload"),
            status => Err(self.refused("starting an upload", resp, status)),
        }
    }

    fn location(&self, resp: &Response<Body>, what: &str) -> Result<String, RemoteError> {
        let loc = resp.headers().get("location").and_then(|v| v.to_str().ok());
        let loc = loc.ok_or_else(|| self.protocol(format!("{what}: the answer has no Location")))?;
        self.resolve(loc)
    }

    /// The bytes an upload session holds: `Some(next offset, fresh Location)`, or `None` when
    /// the session is gone (expired, cancelled, unknown to a restarted registry).
    pub fn upload_status(&self, location: &str) -> Result<Option<(u64, String)>, RemoteError> {
        let resp = self.send(Method::GET, location, &[], None, true)?;
        match resp.status().as_u16() {
            204 | 200 => {
                let next = range_end(&resp).map_or(0, |e| e + 1);
                Ok(Some((next, self.location(&resp, "the upload's status")?)))
            }
            400 | 404 | 416 => Ok(None),
            status => Err(self.refused("the upload's status", resp, status)),
        }
    }

    /// Sends `len` bytes starting at `offset` of the blob; the next Location. `body` makes the
    /// body (again, when a renewed login needs it sent twice).
    pub fn send_chunk(
        &self,
        location: &str,
        offset: u64,
        len: u64,
        body: &mut dyn FnMut() -> Result<SendBody<'static>, RemoteError>,
    ) -> Result<String, RemoteError> {
        let headers = [
            ("Content-Type", "application/octet-stream".to_string()),
            ("Content-Range", format!("{offset}-{}", offset + len - 1)),
            ("Content-Length", len.to_string()),
        ];
        let resp = self.send(Method::PATCH, location, &headers, Some(body), true)?;
        match resp.status().as_u16() {
            202 | 204 => {
                if let Some(end) = range_end(&resp).filter(|&e| e != offset + len - 1) {
                    return Err(self.protocol(format!(
                        "after a chunk ending at byte {} the upload holds bytes up to {end}",
                        offset + len - 1
                    )));
                }
                self.location(&resp, "sending a chunk")
            }
            status => Err(self.refused("sending a chunk", resp, status)),
        }
    }

    /// Ends an upload as blob `digest`.
    pub fn finish_upload(&self, location: &str, digest: &str) -> Result<(), RemoteError> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", percent_encode(digest));
        let resp = self.send(Method::PUT, &url, &[("Content-Length", "0".into())], None, true)?;
        match resp.status().as_u16() {
            201 | 204 => Ok(()),
            status => Err(self.refused(&format!("completing blob {digest}"), resp, status)),
        }
    }

    /// Cancels an upload session; failures do not matter.
    pub fn cancel_upload(&self, location: &str) {
        let _ = self.send(Method::DELETE, location, &[], None, false);
    }

    /// Asks the registry to link blob `digest`, which repository `from` of the same registry
    /// holds, into this one; whether it did (else the blob must be sent).
    pub fn mount_blob(&self, digest: &str, from: &str) -> Result<bool, RemoteError> {
        let url =
            self.repo_url(&format!("blobs/uploads/?mount={}&from={}", percent_encode(digest), percent_encode(from)));
        let resp = self.send(Method::POST, &url, &[("Content-Length", "0".into())], None, true)?;
        match resp.status().as_u16() {
            201 => Ok(true),
            // The registry started an ordinary upload instead: not wanted here.
            202 => {
                if let Ok(location) = self.location(&resp, "mounting a blob") {
                    self.cancel_upload(&location);
                }
                Ok(false)
            }
            // Some registries refuse mounts outright (or the token does not cover `from`).
            401 | 403 | 404 | 405 => Ok(false),
            status => Err(self.refused(&format!("mounting blob {digest} from {from}"), resp, status)),
        }
    }

    /// Stores `manifest` under the reference's tag or digest.
    pub fn put_manifest(&self, manifest: &[u8], media_type: &str) -> Result<(), RemoteError> {
        self.put_manifest_at(&self.reference.reference.clone(), manifest, media_type)
    }

    /// Stores `manifest`, byte for byte, under `reference` (a tag, or its own digest) of this
    /// repository.
    pub fn put_manifest_at(&self, reference: &str, manifest: &[u8], media_type: &str) -> Result<(), RemoteError> {
        let url = self.repo_url(&format!("manifests/{reference}"));
        let bytes = manifest.to_vec();
        let mut body = || Ok(SendBody::from_owned_reader(std::io::Cursor::new(bytes.clone())));
        let headers = [("Content-Type", media_type.to_string()), ("Content-Length", manifest.len().to_string())];
        let resp = self.send(Method::PUT, &url, &headers, Some(&mut body), true)?;
        match resp.status().as_u16() {
            201 | 200 | 204 => Ok(()),
            status => Err(self.refused(
                &format!(
                    "storing the manifest {}/{}{}{reference}",
                    self.reference.host,
                    self.reference.repo,
                    if reference.contains(':') { '@' } else { ':' }
                ),
                resp,
                status,
            )),
        }
    }

    /// The manifest the reference names, at most `limit` bytes, with its media type.
    pub fn get_manifest(&self, accept: &str, limit: u64) -> Result<(Vec<u8>, String), RemoteError> {
        let url = self.repo_url(&format!("manifests/{}", self.reference.reference));
        let resp = self.send(Method::GET, &url, &[("Accept", accept.to_string())], None, true)?;
        match resp.status().as_u16() {
            200 => {
                let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let body =
                    read_limited(resp, limit).map_err(|e| RemoteError::Unreachable { url, why: e.to_string() })?;
                if body.len() as u64 > limit {
                    return Err(
                        self.protocol(format!("the manifest of {} is larger than {limit} bytes", self.reference))
                    );
                }
                Ok((body, ct))
            }
            404 => Err(self.protocol(format!("{} does not exist", self.reference))),
            status => Err(self.refused(&format!("fetching the manifest {}", self.reference), resp, status)),
        }
    }

    /// A reader of blob `digest`, from byte `from` on (a resumed download). Redirects to
    /// storage are followed without the registry's credentials.
    pub fn get_blob(&self, digest: &str, from: u64) -> Result<Box<dyn Read + Send>, RemoteError> {
        let url = self.repo_url(&format!("blobs/{digest}"));
        let range = [("Range", format!("bytes={from}-"))];
        let headers: &[(&str, String)] = if from > 0 { &range } else { &[] };
        let mut resp = self.send(Method::GET, &url, headers, None, true)?;
        for _ in 0..5 {
            let status = resp.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                break;
            }
            let to = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let to = if to.starts_with('/') { format!("{}{to}", self.base) } else { to };
            let mut req = self.agent.get(&to);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            resp = req.call().map_err(|e| RemoteError::Unreachable { url: to.clone(), why: e.to_string() })?;
        }
        match (resp.status().as_u16(), from) {
            (200, 0) | (206, _) => Ok(Box::new(resp.into_body().into_reader())),
            (200, _) => Err(self.protocol(format!("blob {digest}: the registry ignored the range asked for"))),
            (status, _) => Err(self.refused(&format!("fetching blob {digest}"), resp, status)),
        }
    }
}

/// The end of `Range: 0-N` (distribution's form, without `bytes=`).
fn range_end(resp: &Response<Body>) -> Option<u64> {
    let r = resp.headers().get("range")?.to_str().ok()?;
    let r = r.trim().trim_start_matches("bytes=");
    r.split_once('-')?.1.trim().parse().ok()
}

/// Where a push keeps its upload sessions, so a killed push resumes: `$XDG_CACHE_HOME/ferry/push`
/// or `~/.cache/ferry/push`.
pub fn default_resume_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|d| d.join("ferry/push"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("oci://127.0.0.1:5000/vendor/platform:1.2.0", None).unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "vendor/platform", "1.2.0")
        );
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/vendor/platform:1.2.0");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("oci://reg.example/p@{d}"), None).unwrap();
        assert_eq!(r.reference, d);
        assert_eq!(r.to_string(), format!("oci://reg.example/p@{d}"));
        let r = parse_reference("oci://reg.example:443/p", Some("latest")).unwrap();
        assert_eq!(r.reference, "latest");
        for bad in [
            "reg.example/p:1",
            "oci://reg.example",
            "oci://reg.example/P:1",
            "oci://reg.example/p",
            "oci://reg.example/p:-x",
            "oci://reg.example/p@sha256:abc",
            "oci://reg.example/p@md5:abc",
            "oci:///p:1",
        ] {
            let e = parse_reference(bad, None).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
