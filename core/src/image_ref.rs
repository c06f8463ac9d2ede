//! The one image reference type. Owns parsing and normalising references for the packer
//! (discovery, pulls, the metadata it writes), the installer's registry (the hosts it keys
//! repositories by), `check` (what the cluster runs against what the bundle holds) and node
//! preparation (the manifest request containerd sends).
//!
//! The rule is containerd's (`github.com/distribution/reference`'s `ParseNormalizedNamed`),
//! which is what the node computes from the same text, plus two normalisations of the domain:
//!
//! * the first `/`-separated component is a domain when it contains `.` or `:`, is `localhost`,
//!   or has an upper-case letter; otherwise the name is on Docker Hub, as `docker.io`, and a
//!   one-component Docker Hub name gets `library/` (`nginx` → `docker.io/library/nginx`);
//! * the domain is lower-cased (DNS names are case-insensitive, and the installer's registry
//!   has always keyed repositories by the lower-cased host: `Quay.io/x` and `quay.io/x` are one
//!   image) and Docker Hub's other names (`index.docker.io`, `registry-1.docker.io`,
//!   `registry.hub.docker.com`) become `docker.io`, so every spelling of one Docker Hub image
//!   is one key; a port stays part of the domain (`localhost:5000`, `[::1]:5000`);
//! * a first component that is a domain only by its upper case (`Host/app`) is refused: lower
//!   case it is a Docker Hub namespace, so it has no one meaning;
//! * the repository path must be lower case (containerd refuses upper case there too);
//! * no tag and no digest → `:latest`; `name:tag@sha256:…` keeps both, and the digest wins for
//!   pulls. Only `sha256` digests are accepted: the payload stores blobs under `blobs/sha256/`.
//!
//! The normalised text ([`ImageRef`]'s `Display`) is the key the installer's registry serves
//! the image under, so it must match what containerd computes on the node.

use std::fmt;

/// The default registry of unqualified references.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference (see the module docs for the rule).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// The domain: registry host, lower case, with port when given (`docker.io`,
    /// `localhost:5000`).
    pub registry: String,
    /// The path: the repository inside the registry (`library/nginx`).
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
            Some((r, d)) => (r, Some(parse_digest(d).map_err(|e| err(&e.to_string()))?)),
            None => (s, None),
        };
        // A tag is a `:` after the last `/` (a `:` before it belongs to a `host:port`).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(err(&format!("tag `{t}` must be 1-128 of [A-Za-z0-9_.-], not starting with `.` or `-`")));
        }
        if name.is_empty() {
            return Err(err("the repository name is empty"));
        }
        let (registry, repository) = split_domain(name);
        let registry = normalize_domain(&registry);
        if !is_domain(&registry) {
            // `Host/app`: a domain only by its upper case, which lowering takes away.
            return Err(err(&format!(
                "registry `{registry}` needs a `.` or a port (or is `localhost`) when written in lower case"
            )));
        }
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

    /// The normalised text of `input` (what [`ImageRef`]'s `Display` writes).
    pub fn normalize(input: &str) -> Result<String, RefError> {
        ImageRef::parse(input).map(|r| r.to_string())
    }

    /// The normalised text of `input`, or `input` unchanged when it is not a reference this
    /// type accepts (a digest of another algorithm, say). For comparing what a cluster runs
    /// with what the bundle holds: an unparsable name then simply matches nothing.
    pub fn normalized_or_raw(input: &str) -> String {
        ImageRef::normalize(input).unwrap_or_else(|_| input.to_string())
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What a registry is asked for: the digest when pinned, else the tag.
    pub fn reference(&self) -> &str {
        // A parsed reference always has one of the two; `latest` is what the registry would
        // assume for a hand-built value with neither.
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
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

/// Why a digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest `{0}` must look like sha256:<64 hex digits>")]
    Shape(String),
    /// Not sha256.
    #[error("digest algorithm `{0}` is not supported (only sha256)")]
    Algorithm(String),
    /// Not 64 lower-case hex digits.
    #[error("digest `{0}` must be sha256: followed by 64 lowercase hex digits")]
    Hex(String),
}

/// Checks `sha256:<64 lowercase hex>`; other algorithms are refused because the payload stores
/// blobs under `blobs/sha256/`.
pub fn parse_digest(d: &str) -> Result<String, DigestError> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(DigestError::Shape(d.to_string()));
    };
    if alg != "sha256" {
        return Err(DigestError::Algorithm(alg.to_string()));
    }
    if !is_sha256_hex(hex) {
        return Err(DigestError::Hex(d.to_string()));
    }
    Ok(d.to_string())
}

/// Whether `s` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_sha256_hex)
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The one spelling of a registry host: lower case, and `docker.io` for Docker Hub's aliases.
pub fn normalize_domain(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.into(),
        _ => host,
    }
}

/// containerd's test for "the first component is a domain", upper case aside.
fn is_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn split_domain(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest)) if is_domain(first) || first.chars().any(|c| c.is_ascii_uppercase()) => {
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
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
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

    #[test]
    fn docker_hub_aliases_are_one_registry() {
        for alias in ["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "Docker.IO"] {
            assert_eq!(norm(&format!("{alias}/nginx:1")), "docker.io/library/nginx:1", "{alias}");
            assert_eq!(norm(&format!("{alias}/library/nginx:1")), "docker.io/library/nginx:1", "{alias}");
        }
        assert_eq!(normalize_domain("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_domain("Quay.io"), "quay.io");
        assert_eq!(normalize_domain("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn upper_case_domains_are_lowered_upper_case_paths_refused() {
        // A first component with upper case is a domain (containerd's rule), spelled lower case.
        assert_eq!(norm("Quay.IO/example/app:2"), "quay.io/example/app:2");
        assert_eq!(norm("A.io/b"), "a.io/b:latest");
        assert!(ImageRef::parse("quay.io/Example/app").is_err());
        assert!(ImageRef::parse("Host/app").unwrap_err().reason.contains("`host` needs a `.`"));
        // Tags keep their case.
        assert_eq!(norm("app:V1"), "docker.io/library/app:V1");
    }

    #[test]
    fn what_a_cluster_runs_normalizes_like_containerd() {
        let n = ImageRef::normalized_or_raw;
        assert_eq!(n("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("me/app:1"), "docker.io/me/app:1");
        assert_eq!(n("registry.k8s.io/coredns/coredns:v1.12.0"), "registry.k8s.io/coredns/coredns:v1.12.0");
        assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(n("index.docker.io/library/a:1"), "docker.io/library/a:1");
        assert_eq!(n("q.io/a@sha256:ab"), "q.io/a@sha256:ab", "not a digest ferry stores: kept as given");
        assert_eq!(n(&format!("Q.io/a@{D}")), format!("q.io/a@{D}"));
    }

    #[test]
    fn digests_are_checked() {
        assert!(is_sha256_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_sha256_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_sha256_digest("sha256:abc"));
        assert!(!is_sha256_digest(&format!("sha512:{}", "a".repeat(64))));
        assert_eq!(parse_digest("abc"), Err(DigestError::Shape("abc".into())));
    }
}

/// Parsing and normalising agree on thousands of generated references.
#[cfg(test)]
mod props {
    use super::*;

    /// Cases per property; the generator is seeded so every run checks the same references.
    const CASES: usize = 3000;

    fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
        items[rng.usize(..items.len())]
    }

    fn component(rng: &mut fastrand::Rng) -> String {
        let mut c = String::new();
        for i in 0..rng.usize(1..4) {
            if i > 0 {
                c.push_str(pick(rng, &[".", "_", "__", "-", "--"]));
            }
            let len = rng.usize(1..6);
            c.extend((0..len).map(|_| pick(rng, &["a", "b", "z", "0", "9", "x"]).chars().next().unwrap_or('a')));
        }
        c
    }

    /// A valid reference, in one of the spellings people write.
    fn valid(rng: &mut fastrand::Rng) -> String {
        let domain = pick(
            rng,
            &[
                "",
                "docker.io/",
                "index.docker.io/",
                "registry-1.docker.io/",
                "registry.hub.docker.com/",
                "Docker.io/",
                "quay.io/",
                "Quay.IO/",
                "localhost/",
                "localhost:5000/",
                "10.0.0.1:5000/",
                "[::1]:5000/",
                "registry.k8s.io/",
                "My-Registry.example:443/",
            ],
        );
        let mut path: Vec<String> = (0..rng.usize(1..4)).map(|_| component(rng)).collect();
        if domain.is_empty() && path.len() > 1 {
            // A first component with a `.` would be read as a domain (rightly).
            path[0] = path[0].replace('.', "-");
        }
        let mut r = format!("{domain}{}", path.join("/"));
        match rng.usize(..4) {
            0 => {}
            1 => r.push_str(&format!(":{}", pick(rng, &["1", "v1.2.3", "latest", "Tag_x", "_a", "A-b.c"]))),
            2 => r.push_str(&format!("@sha256:{}", hex(rng))),
            _ => r.push_str(&format!(":{}@sha256:{}", pick(rng, &["1", "v2"]), hex(rng))),
        }
        r
    }

    fn hex(rng: &mut fastrand::Rng) -> String {
        (0..64).map(|_| pick(rng, &["0", "7", "a", "f"])).collect()
    }

    /// A string near a reference: a valid one broken by one edit.
    fn mangled(rng: &mut fastrand::Rng) -> String {
        let mut r = valid(rng);
        let at = rng.usize(..=r.len());
        let at = (0..=at).rev().find(|&i| r.is_char_boundary(i)).unwrap_or(0);
        r.insert_str(at, pick(rng, &["//", "@", ":", " ", "A", "-", ".", "___", "://", "@sha256:", "é", ""]));
        if rng.bool() {
            let cut = rng.usize(..=r.len());
            let cut = (0..=cut).rev().find(|&i| r.is_char_boundary(i)).unwrap_or(0);
            r.truncate(cut);
        }
        r
    }

    #[test]
    fn parsing_and_normalising_agree() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_f377);
        for _ in 0..CASES {
            let input = valid(&mut rng);
            let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
            let text = r.to_string();
            assert_eq!(ImageRef::parse(&text).as_ref(), Ok(&r), "parse(to_string) of {input:?}");
            assert_eq!(ImageRef::normalize(&text).as_deref(), Ok(text.as_str()), "idempotent on {input:?}");
            assert_eq!(r.registry, normalize_domain(&r.registry), "{input:?}: domain normalised");
            assert!(!r.registry.chars().any(|c| c.is_ascii_uppercase()), "{input:?}");
            assert!(r.tag.is_some() || r.digest.is_some(), "{input:?}: a tag or a digest");
            if r.registry == DOCKER_HUB {
                assert!(r.repository.contains('/'), "{input:?}: Docker Hub names have a namespace");
            }
        }
    }

    #[test]
    fn every_alias_of_an_image_is_one_value() {
        let mut rng = fastrand::Rng::with_seed(0xa11a5);
        for _ in 0..CASES {
            let name = component(&mut rng);
            let tag = pick(&mut rng, &["", ":1", ":v2.0"]);
            let want = ImageRef::parse(&format!("docker.io/library/{name}{tag}")).unwrap_or_else(|e| panic!("{e}"));
            for alias in [
                format!("{name}{tag}"),
                format!("library/{name}{tag}"),
                format!("docker.io/{name}{tag}"),
                format!("index.docker.io/{name}{tag}"),
                format!("registry-1.docker.io/library/{name}{tag}"),
                format!("REGISTRY.hub.docker.com/{name}{tag}"),
            ] {
                assert_eq!(ImageRef::parse(&alias).as_ref(), Ok(&want), "{alias}");
            }
        }
    }

    #[test]
    fn invalid_input_is_an_error_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(0xbad);
        let mut refused = 0;
        for _ in 0..CASES {
            let input = mangled(&mut rng);
            match std::panic::catch_unwind(|| ImageRef::parse(&input)) {
                Ok(Ok(r)) => {
                    let text = r.to_string();
                    assert_eq!(ImageRef::parse(&text).as_ref(), Ok(&r), "parse(to_string) of {input:?}");
                }
                Ok(Err(e)) => {
                    refused += 1;
                    assert!(e.to_string().contains("is not a valid image reference"), "{e}");
                    assert_eq!(ImageRef::normalized_or_raw(&input), input);
                }
                Err(_) => panic!("parsing {input:?} panicked"),
            }
        }
        assert!(refused > CASES / 4, "the generator should break most references ({refused} refused)");
    }
}
