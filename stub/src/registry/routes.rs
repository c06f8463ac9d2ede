//! The pull-only OCI distribution API: request parsing, repository resolution (`?ns=`),
//! headers, Range, and spec error bodies.
//!
//! When the registry has a credential (it serves TLS), every request without it gets 401 and
//! `WWW-Authenticate: Basic realm="ferry"`, before anything is routed: not even which
//! repositories exist is told to a stranger.
//!
//! Routing works on the last `/manifests/`, `/blobs/` or `/tags/list` segment because repository
//! names contain `/`. Every response carries `Docker-Distribution-API-Version: registry/2.0`.
//! HEAD answers carry exactly GET's headers (containerd builds descriptors from them) and no
//! body. Manifests are served byte-exact with their stored media type.

use super::access_log::{ServeBody, note};
use super::integrity::{IntegrityError, VerifiedFile};
use super::store::{Blob, BlobId, Repo, Store, is_sha256_digest};
use super::tls::CredentialCheck;
use bytes::Bytes;
use ferry_core::image_ref::normalize_domain;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use std::sync::Arc;

/// The state every request shares.
pub struct Registry {
    /// The mapped, lazily verified installer.
    pub file: VerifiedFile,
    /// What it serves.
    pub store: Store,
    /// The credential every request must carry; `None` serves anyone (`--insecure-plain-http`).
    pub credential: Option<CredentialCheck>,
}

/// Distribution's API-version header; old Docker clients check it.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// The parts of a request the registry looks at.
#[derive(Debug)]
pub struct Req<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Raw path (percent-encoded).
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// Handles one request.
pub async fn handle(reg: Arc<Registry>, req: Req<'_>) -> Response<ServeBody> {
    let query = Query::parse(req.query);
    let allowed = reg.credential.as_ref().is_none_or(|c| c.allows(req.headers.get(header::AUTHORIZATION)));
    let mut resp = if allowed { route(&reg, &req, &query).await } else { unauthorized() };
    if req.method == Method::HEAD {
        // Error documents too: HEAD gets their headers (Content-Length included), no body.
        resp = resp.map(|_| ServeBody::empty());
    }
    let h = resp.headers_mut();
    h.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    if let Some(ns) = query.ns.as_deref().and_then(|ns| HeaderValue::from_str(ns).ok()) {
        // distribution-spec "Registry Proxying": echo the namespace that was honoured.
        h.insert("oci-namespace", ns);
    }
    resp
}

async fn route(reg: &Arc<Registry>, req: &Req<'_>, query: &Query) -> Response<ServeBody> {
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{} is not supported: this is a read-only registry served from the installer file", req.method),
            None,
        );
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = req.method == Method::HEAD;
    let Some(path) = percent_decode(req.path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "the request path is not valid percent-encoded UTF-8".into(),
            None,
        );
    };
    let Some(rest) = path.strip_prefix("/v2") else {
        return not_found(&path);
    };
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return json(StatusCode::OK, Bytes::from_static(b"{}"), head);
    }
    if rest == "_catalog" {
        return catalog(reg, query, head);
    }
    match split_route(rest) {
        Some(Route::Manifest { name, reference }) => manifest(reg, req, query, name, reference, head).await,
        Some(Route::Blob { name, digest }) => blob(reg, req, query, name, digest, head).await,
        Some(Route::Tags { name }) => tags(reg, query, name, head),
        None => not_found(&path),
    }
}

#[derive(Debug, PartialEq)]
enum Route<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Tags { name: &'a str },
}

/// Splits `<name>/manifests/<ref>`, `<name>/blobs/<digest>` or `<name>/tags/list` on the last
/// marker, so names such as `a/manifests/b` still route.
fn split_route(rest: &str) -> Option<Route<'_>> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    let m = rest.rfind("/manifests/");
    let b = rest.rfind("/blobs/");
    match (m, b) {
        (Some(m), b) if b.is_none_or(|b| m > b) => {
            Some(Route::Manifest { name: &rest[..m], reference: &rest[m + "/manifests/".len()..] })
        }
        (_, Some(b)) => Some(Route::Blob { name: &rest[..b], digest: &rest[b + "/blobs/".len()..] }),
        _ => None,
    }
}

/// The query parameters the registry honours.
#[derive(Debug, Default)]
struct Query {
    ns: Option<String>,
    n: Option<usize>,
    last: Option<String>,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(v) = percent_decode(&v.replace('+', " ")) else { continue };
            match k {
                "ns" if !v.is_empty() => out.ns = Some(normalize_domain(&v)),
                "n" => out.n = v.parse().ok(),
                "last" => out.last = Some(v),
                _ => {}
            }
        }
        out
    }

    /// `&ns=…` for pagination links.
    fn ns_suffix(&self) -> String {
        self.ns.as_ref().map(|ns| format!("&ns={ns}")).unwrap_or_default()
    }
}

/// Which repositories a request may be answered from.
enum Resolved<'a> {
    One(&'a Repo),
    /// Several registries carry this name and the request said none (no `ns`).
    Many(Vec<&'a Repo>),
}

/// Maps a name (and `ns`, when containerd sends it) to repositories. The error is the finished
/// response (large, but built only on the error path).
#[allow(clippy::result_large_err)]
fn resolve<'a>(reg: &'a Registry, name: &str, query: &Query) -> Result<Resolved<'a>, Response<ServeBody>> {
    if !valid_name(name) {
        return Err(error(StatusCode::BAD_REQUEST, "NAME_INVALID", format!("invalid repository name `{name}`"), None));
    }
    let store = &reg.store;
    if let Some(ns) = &query.ns {
        return match store.repo(ns, name) {
            Some(repo) => Ok(Resolved::One(repo)),
            None => {
                let elsewhere = store.registries_of(name);
                let hint = if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(" (the bundle has {name} from {} only)", elsewhere.join(", "))
                };
                Err(error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("repository {ns}/{name} is not in this bundle{hint}"),
                    Some(serde_json::json!({"registry": ns, "name": name})),
                ))
            }
        };
    }
    let registries = store.registries_of(name);
    match registries.len() {
        1 => Ok(Resolved::One(store.repo(&registries[0], name).expect("by_name and repos agree"))),
        0 => {
            // `/v2/quay.io/library/app/…`: a client that cannot send ?ns= may name the registry
            // as the first path component.
            if let Some((first, rest)) = name.split_once('/')
                && let Some(repo) = store.repo(first, rest)
            {
                return Ok(Resolved::One(repo));
            }
            Err(error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("repository {name} is not in this bundle"),
                Some(serde_json::json!({"name": name})),
            ))
        }
        _ => Ok(Resolved::Many(registries.iter().filter_map(|r| store.repo(r, name)).collect())),
    }
}

fn ambiguous(name: &str, repos: &[&Repo]) -> Response<ServeBody> {
    let registries: Vec<&str> = repos.iter().map(|r| r.registry.as_str()).collect();
    error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        format!(
            "repository {name} is ambiguous: the bundle holds it from {}, with different content; \
             say which with ?ns=<registry> (containerd does so through hosts.toml) or name it as \
             <registry>/{name}, e.g. {}/{name}",
            registries.join(" and "),
            registries[0]
        ),
        Some(serde_json::json!({"name": name, "registries": registries})),
    )
}

/// Whether a digest is reachable from any of the resolved repositories.
fn reachable(resolved: &Resolved<'_>, id: BlobId) -> bool {
    match resolved {
        Resolved::One(r) => r.reachable.contains(&id),
        // Content-addressed: the same digest is the same bytes whichever registry it came from.
        Resolved::Many(rs) => rs.iter().any(|r| r.reachable.contains(&id)),
    }
}

async fn manifest(
    reg: &Arc<Registry>,
    req: &Req<'_>,
    query: &Query,
    name: &str,
    reference: &str,
    head: bool,
) -> Response<ServeBody> {
    let resolved = match resolve(reg, name, query) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let id = match manifest_id(reg, &resolved, name, reference) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let blob = reg.store.blob(id);
    let media_type = blob.media_type.as_deref().unwrap_or(ferry_core::oci::OCI_MANIFEST);
    if !accepts(req.headers, media_type) {
        return manifest_unknown(
            name,
            reference,
            format!(
                "manifest {} is stored as {media_type}, which the request's Accept header does not include; \
                 the registry serves manifests exactly as published and never converts them",
                blob.digest
            ),
        );
    }
    let mut resp = match content(reg, blob, 0, blob.size, head).await {
        Ok(body) => plain(StatusCode::OK, body),
        Err(resp) => return resp,
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, value(media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size));
    h.insert("docker-content-digest", value(&blob.digest));
    h.insert(header::ETAG, value(&format!("\"{}\"", blob.digest)));
    resp
}

/// The manifest or index a reference (a digest or a tag) names in the resolved repositories. The
/// error is the finished response.
#[allow(clippy::result_large_err)]
fn manifest_id(
    reg: &Registry,
    resolved: &Resolved<'_>,
    name: &str,
    reference: &str,
) -> Result<BlobId, Response<ServeBody>> {
    if reference.contains(':') {
        if !is_sha256_digest(reference) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("`{reference}` is not a sha256 digest"),
                None,
            ));
        }
        return match reg.store.blob_id(reference) {
            Some(id) if reachable(resolved, id) && reg.store.blob(id).media_type.is_some() => Ok(id),
            _ => Err(manifest_unknown(
                name,
                reference,
                format!("manifest {reference} is not in repository {name} of this bundle"),
            )),
        };
    }
    if !valid_tag(reference) {
        return Err(error(StatusCode::BAD_REQUEST, "TAG_INVALID", format!("`{reference}` is not a valid tag"), None));
    }
    match resolved {
        Resolved::One(repo) => repo.tags.get(reference).copied().ok_or_else(|| {
            manifest_unknown(name, reference, format!("{}/{name}:{reference} is not in this bundle", repo.registry))
        }),
        Resolved::Many(repos) => {
            let ids: Vec<Option<BlobId>> = repos.iter().map(|r| r.tags.get(reference).copied()).collect();
            match ids.first() {
                Some(Some(first)) if ids.iter().all(|i| *i == Some(*first)) => Ok(*first),
                _ if ids.iter().all(Option::is_none) => {
                    Err(manifest_unknown(name, reference, format!("tag {reference} of {name} is not in this bundle")))
                }
                _ => Err(ambiguous(name, repos)),
            }
        }
    }
}

/// MANIFEST_UNKNOWN for `name`:`reference`, saying `what`.
fn manifest_unknown(name: &str, reference: &str, what: String) -> Response<ServeBody> {
    error(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        what,
        Some(serde_json::json!({"name": name, "reference": reference})),
    )
}

async fn blob(
    reg: &Arc<Registry>,
    req: &Req<'_>,
    query: &Query,
    name: &str,
    digest: &str,
    head: bool,
) -> Response<ServeBody> {
    let resolved = match resolve(reg, name, query) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !is_sha256_digest(digest) {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("`{digest}` is not a sha256 digest"), None);
    }
    let blob = match reg.store.blob_id(digest) {
        Some(id) if reachable(&resolved, id) => reg.store.blob(id),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob {digest} is not in repository {name} of this bundle"),
                Some(serde_json::json!({"name": name, "digest": digest})),
            );
        }
    };
    let size = blob.size;
    let range = match req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|v| parse_range(v, size)) {
        None | Some(RangeSpec::Ignore) => None,
        Some(RangeSpec::Unsatisfiable) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                format!("the requested range is outside blob {digest} ({size} bytes)"),
                None,
            );
            r.headers_mut().insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
            return r;
        }
        Some(RangeSpec::Bytes(a, b)) => Some((a, b)),
    };
    let (start, end) = range.unwrap_or((0, size));
    let mut resp = match content(reg, blob, start, end, head).await {
        Ok(body) => plain(if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK }, body),
        Err(resp) => return resp,
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-content-digest", value(&blob.digest));
    h.insert(header::ETAG, value(&format!("\"{}\"", blob.digest)));
    // Content-addressed: a digest's bytes never change.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
    if range.is_some() {
        h.insert(header::CONTENT_RANGE, value(&format!("bytes {}-{}/{size}", start, end - 1)));
    }
    resp
}

/// The body for `start..end` of a blob: empty for HEAD; otherwise verified against the signed
/// index first (hashing off the async workers when a chunk has not been checked yet).
async fn content(
    reg: &Arc<Registry>,
    blob: &Blob,
    start: u64,
    end: u64,
    head: bool,
) -> Result<ServeBody, Response<ServeBody>> {
    if head {
        return Ok(ServeBody::empty());
    }
    let (a, b) = (blob.offset + start, blob.offset + end);
    let checked = if reg.file.is_verified(a, b) || reg.file.blob_proven(blob.offset) {
        Ok(())
    } else {
        let (r, offset, size, digest) = (reg.clone(), blob.offset, blob.size, blob.digest.clone());
        tokio::task::spawn_blocking(move || {
            r.file.verify_blob(offset, size, digest.trim_start_matches("sha256:"), a, b)
        })
        .await
        .unwrap_or_else(|e| Err(IntegrityError::Unfinished { digest: blob.digest.clone(), reason: e.to_string() }))
    };
    match checked {
        Ok(()) => Ok(ServeBody::new(reg.file.slice(a, b))),
        Err(err) => {
            note(&format!("error: refusing to serve {}: {err}", blob.digest));
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                format!(
                    "refusing to serve {}: the installer file is damaged ({err}). Nothing was sent. \
                     Replace the installer; `installer verify` checks a copy",
                    blob.digest
                ),
                Some(serde_json::json!({"digest": blob.digest, "chunk": err.chunk()})),
            ))
        }
    }
}

fn tags(reg: &Arc<Registry>, query: &Query, name: &str, head: bool) -> Response<ServeBody> {
    let repo = match resolve(reg, name, query) {
        Ok(Resolved::One(repo)) => repo,
        Ok(Resolved::Many(repos)) => return ambiguous(name, &repos),
        Err(resp) => return resp,
    };
    let all: Vec<&String> = repo.tags.keys().collect();
    let (page, next) = paginate(&all, query);
    let mut resp = json(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(&serde_json::json!({"name": name, "tags": page})).unwrap()),
        head,
    );
    if let Some(last) = next {
        let link =
            format!("</v2/{name}/tags/list?n={}&last={last}{}>; rel=\"next\"", query.n.unwrap_or(0), query.ns_suffix());
        resp.headers_mut().insert(header::LINK, value(&link));
    }
    resp
}

fn catalog(reg: &Arc<Registry>, query: &Query, head: bool) -> Response<ServeBody> {
    let mut names: Vec<&String> = reg
        .store
        .repos
        .values()
        .filter(|r| query.ns.as_ref().is_none_or(|ns| &r.registry == ns))
        .map(|r| &r.name)
        .collect();
    names.sort();
    names.dedup();
    let (page, next) = paginate(&names, query);
    let mut resp = json(
        StatusCode::OK,
        Bytes::from(serde_json::to_vec(&serde_json::json!({"repositories": page})).unwrap()),
        head,
    );
    if let Some(last) = next {
        let link = format!("</v2/_catalog?n={}&last={last}{}>; rel=\"next\"", query.n.unwrap_or(0), query.ns_suffix());
        resp.headers_mut().insert(header::LINK, value(&link));
    }
    resp
}

/// Applies `last` and `n` to a sorted list; returns the page and the `last` of a next page.
fn paginate<'a>(all: &[&'a String], query: &Query) -> (Vec<&'a String>, Option<String>) {
    let start = match &query.last {
        Some(last) => all.partition_point(|s| s.as_str() <= last.as_str()),
        None => 0,
    };
    let rest = &all[start..];
    match query.n {
        Some(n) if n < rest.len() => {
            let page = rest[..n].to_vec();
            let next = page.last().map(|s| s.to_string());
            (page, next)
        }
        _ => (rest.to_vec(), None),
    }
}

/// Whether an Accept header list admits `media_type`. No Accept, `*/*` or `application/*` admit
/// everything; only an explicit list naming neither the type nor a wildcard refuses.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { return true };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !any
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// Serve the whole blob (no range, a malformed one, or several ranges: RFC 9110 lets a
    /// server ignore Range).
    Ignore,
    Unsatisfiable,
    /// `start..end`, end exclusive.
    Bytes(u64, u64),
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range against a blob of `size` bytes.
fn parse_range(v: &str, size: u64) -> RangeSpec {
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return RangeSpec::Ignore };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeSpec::Ignore };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        return match b.parse::<u64>() {
            Ok(0) => RangeSpec::Unsatisfiable,
            Ok(_) if size == 0 => RangeSpec::Unsatisfiable,
            Ok(n) => RangeSpec::Bytes(size - n.min(size), size),
            Err(_) => RangeSpec::Ignore,
        };
    }
    let Ok(start) = a.parse::<u64>() else { return RangeSpec::Ignore };
    let end = if b.is_empty() {
        size
    } else {
        match b.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(start, end)
}

/// Repository names per the distribution spec:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// Tags per the spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn value(s: &str) -> HeaderValue {
    // Everything passed here is a digest, a media type from the signed index, or built from
    // validated names; fall back to an empty value rather than panic on anything odd.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn plain(status: StatusCode, body: ServeBody) -> Response<ServeBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, body: Bytes, head: bool) -> Response<ServeBody> {
    let len = body.len();
    let mut r = plain(status, if head { ServeBody::empty() } else { ServeBody::new(body) });
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// A spec error body: `{"errors":[{"code":…,"message":…,"detail":…}]}`.
pub fn error(
    status: StatusCode,
    code: &str,
    message: String,
    detail: Option<serde_json::Value>,
) -> Response<ServeBody> {
    let mut e = serde_json::json!({"code": code, "message": message});
    if let Some(d) = detail {
        e["detail"] = d;
    }
    let body = serde_json::to_vec(&serde_json::json!({"errors": [e]})).expect("plain JSON");
    json(status, Bytes::from(body), false)
}

/// 401 with the challenge clients answer with the credential.
fn unauthorized() -> Response<ServeBody> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "this registry serves only its cluster's nodes: send the cluster's pull credential".into(),
        None,
    );
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ferry\""));
    r
}

fn not_found(path: &str) -> Response<ServeBody> {
    error(
        StatusCode::NOT_FOUND,
        "UNSUPPORTED",
        format!("no such endpoint: {path}; this registry serves the pull API under /v2/"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_on_the_last_marker() {
        assert_eq!(
            split_route("library/nginx/manifests/1.27"),
            Some(Route::Manifest { name: "library/nginx", reference: "1.27" })
        );
        assert_eq!(split_route("a/blobs/b/manifests/c"), Some(Route::Manifest { name: "a/blobs/b", reference: "c" }));
        assert_eq!(
            split_route("a/manifests/b/blobs/sha256:x"),
            Some(Route::Blob { name: "a/manifests/b", digest: "sha256:x" })
        );
        assert_eq!(split_route("a/b/tags/list"), Some(Route::Tags { name: "a/b" }));
        assert_eq!(split_route("a/b/referrers/sha256:x"), None);
    }

    #[test]
    fn names_and_tags() {
        for ok in ["library/nginx", "a", "a.b/c__d/e-f---g", "quay.io/x", "0/1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A/b", "a//b", "-a", "a-", "a/", "a..b", "a___b", "a:b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.27.0-rc_1"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), RangeSpec::Bytes(0, 100));
        assert_eq!(parse_range("bytes=100-", 1000), RangeSpec::Bytes(100, 1000));
        assert_eq!(parse_range("bytes=990-5000", 1000), RangeSpec::Bytes(990, 1000));
        assert_eq!(parse_range("bytes=-10", 1000), RangeSpec::Bytes(990, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000), RangeSpec::Bytes(0, 1000));
        assert_eq!(parse_range("bytes=1000-", 1000), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 1000), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 1000), RangeSpec::Ignore);
    }

    #[test]
    fn accept_lists() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, "application/vnd.oci.image.index.v1+json"));
        h.append(header::ACCEPT, HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"));
        assert!(!accepts(&h, "application/vnd.oci.image.index.v1+json"));
        h.append(header::ACCEPT, HeaderValue::from_static("application/vnd.oci.image.index.v1+json; q=0.5"));
        assert!(accepts(&h, "application/vnd.oci.image.index.v1+json"));
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("application/json, */*"));
        assert!(accepts(&h, "application/vnd.oci.image.manifest.v1+json"));
    }

    #[test]
    fn queries_and_escapes() {
        let q = Query::parse(Some("ns=registry-1.docker.io&n=2&last=a%2Fb"));
        assert_eq!(q.ns.as_deref(), Some("docker.io"));
        assert_eq!(q.n, Some(2));
        assert_eq!(q.last.as_deref(), Some("a/b"));
        assert_eq!(percent_decode("/v2/x/blobs/sha256%3Aab").as_deref(), Some("/v2/x/blobs/sha256:ab"));
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn pagination() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let refs: Vec<&String> = names.iter().collect();
        let q = Query { n: Some(2), ..Default::default() };
        let (page, next) = paginate(&refs, &q);
        assert_eq!(page, vec!["a", "b"]);
        assert_eq!(next.as_deref(), Some("b"));
        let q = Query { n: Some(2), last: Some("b".into()), ..Default::default() };
        let (page, next) = paginate(&refs, &q);
        assert_eq!(page, vec!["c", "d"]);
        assert_eq!(next, None);
    }
}
