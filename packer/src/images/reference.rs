//! Image references, normalised the way containerd and the Docker CLI do
//! (`github.com/distribution/reference`'s `ParseNormalizedNamed`):
//!
//! * no registry domain → `docker.io`, and a single-component Docker Hub name gets `library/`
//!   (`nginx` → `docker.io/library/nginx`);
//! * the first component is a domain when it contains `.` or `:`, is `localhost`, or has an
//!   uppercase letter; the domain is kept as written (`quay.io/x` never collides with `docker.io/x`);
//! * no tag and no digest → `:latest`; `name:tag@sha256:…` keeps both, the digest wins for pulls.
//!
//! The normalised string is the key the installer's registry serves the image under, so it must
//! match what containerd computes from the same reference on the node.

use std::fmt;

/// The default registry of unqualified references.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// Registry host, with port when given (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/nginx`).
    pub repository: String,
    /// Tag, when given or defaulted (`latest`).
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid image reference: {reason}")]
pub struct RefError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ImageRef {
    /// Parses and normalises `input`.
    pub fn parse(input: &str) -> Result<ImageRef, RefError> {
        let err = |reason: &str| RefError { input: input.to_string(), reason: reason.to_string() };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s != input {
            return Err(err("it has leading or trailing whitespace"));
        }
        if s.contains("://") {
            return Err(err("a reference has no URL scheme; write `host/repo:tag`"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(parse_digest(d).map_err(|r| err(&r))?)),
            None => (s, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it belongs to a `host:port`).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(err(&format!("tag `{t}` must be 1-128 of [A-Za-z0-9_.-], not starting with `.` or `-`")));
            }
        }
        if name.is_empty() {
            return Err(err("the repository name is empty"));
        }
        let (registry, repository) = split_domain(name);
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_domain(&registry) {
            return Err(err(&format!("registry `{registry}` is not a valid host[:port]")));
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository names must be lowercase"));
        }
        if !valid_repository(&repository) {
            return Err(err(&format!(
                "repository `{repository}` must be `/`-separated components of [a-z0-9] joined by `.`, `_`, `__` or `-`"
            )));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(err("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What a registry is asked for: the digest when pinned, else the tag.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).expect("a parsed reference has a tag or a digest")
    }

    /// The tag the bundle serves this image under: none for digest-pinned references, whose
    /// clients always ask by digest.
    pub fn served_tag(&self) -> Option<&str> {
        if self.digest.is_some() { None } else { self.tag.as_deref() }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks `sha256:<64 lowercase hex>`; other algorithms are refused because the payload stores
/// blobs under `blobs/sha256/`.
pub fn parse_digest(d: &str) -> Result<String, String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("digest `{d}` must look like sha256:<64 hex digits>"));
    };
    if alg != "sha256" {
        return Err(format!("digest algorithm `{alg}` is not supported (only sha256)"));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest `{d}` must be sha256: followed by 64 lowercase hex digits"));
    }
    Ok(d.to_string())
}

fn split_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !t.starts_with(['.', '-'])
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_repository(r: &str) -> bool {
    r.split('/').all(valid_path_component)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or any number of `-`.
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_shorthands() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("index.docker.io/library/nginx:1"), "docker.io/library/nginx:1");
        assert_eq!(norm("docker.io/library/nginx:1.27"), "docker.io/library/nginx:1.27");
    }

    #[test]
    fn domains_are_kept() {
        assert_eq!(norm("quay.io/example/app:2.1"), "quay.io/example/app:2.1");
        assert_eq!(norm("quay.io/nginx"), "quay.io/nginx:latest", "no library/ outside Docker Hub");
        assert_eq!(norm("registry.k8s.io/coredns/coredns:v1.11.3"), "registry.k8s.io/coredns/coredns:v1.11.3");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(norm("127.0.0.1:5000/a/b/c:x"), "127.0.0.1:5000/a/b/c:x");
        assert_eq!(norm("[::1]:5000/app:1"), "[::1]:5000/app:1");
        // A first component without `.`/`:` is a Docker Hub namespace, not a host.
        assert_eq!(norm("myhost/app"), "docker.io/myhost/app:latest");
        let r = ImageRef::parse("quay.io/example/app:2.1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("quay.io", "example/app", Some("2.1"))
        );
    }

    #[test]
    fn digests() {
        let r = ImageRef::parse(&format!("nginx@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/nginx@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.served_tag(), None);
        assert_eq!(r.reference(), D);
        let r = ImageRef::parse(&format!("host:5000/x:1.0@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("host:5000/x:1.0@{D}"));
        assert_eq!(r.reference(), D, "the digest wins");
        assert_eq!(r.served_tag(), None);
        assert!(ImageRef::parse("nginx@sha256:abc").is_err());
        assert!(ImageRef::parse(&format!("nginx@sha512:{}", "a".repeat(128))).unwrap_err().reason.contains("sha512"));
        assert!(ImageRef::parse(&format!("nginx@{}", D.to_uppercase().replace("SHA256", "sha256"))).is_err());
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            " nginx",
            "Nginx",
            "docker.io/Library/nginx",
            "nginx:",
            "nginx:-x",
            "nginx:a/b",
            "https://quay.io/x",
            "a//b",
            "a/-b",
            "a/b_",
            "a/b___c",
            "host:port/x",
            "{{ .Values.image }}",
            &format!("a/b:{}", "t".repeat(129)),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        // Separators allowed by the grammar.
        for good in ["a/b.c", "a/b_c", "a/b__c", "a/b---c", "a:1", "a:_x", "A.io/b"] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} should parse");
        }
        let e = ImageRef::parse("Nginx").unwrap_err();
        assert!(e.to_string().contains("`Nginx`") && e.to_string().contains("lowercase"), "{e}");
    }
}
