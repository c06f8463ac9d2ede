//! Image references as containerd names them.
//!
//! Owns the normalisation `check` compares running images with and node preparation pulls by:
//! a leaf, so the node side can use it without the rest of `check`.

/// `docker.io/library/` and `:latest` made explicit, as containerd names images.
pub fn normalize_image(r: &str) -> String {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_domain = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        let (dom, rest) = name.split_once('/').unwrap_or((name, ""));
        format!("{}/{rest}", crate::registry::store::normalize_registry(dom))
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if digest.is_none() && !last.contains(':') {
        full.push_str(":latest");
    }
    if let Some(d) = digest {
        full.push('@');
        full.push_str(d);
    }
    full
}
