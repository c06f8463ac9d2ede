//! A chart's values read without helm: the values
//! leaves that let a rendered image be traced back to the values it was made of
//! ([`attribute`]), and the guess ([`guess`]) used only when the build machine has no helm and
//! the operator asked for it (`--chart-images-from-values`): the common `values.yaml` image
//! patterns, components whose `enabled` is false and subcharts whose `condition` is false left
//! out, the `artifacthub.io/images` annotation read. A guess can be wrong (a tag made of
//! `"v" + .Chart.AppVersion`, a name assembled in a helper), so every image it finds is marked
//! guessed, and a chart whose templates define workloads but whose values give no image is an
//! error rather than a silent zero.

use super::origin::{How, Origin, Place};
use crate::render::chart::ChartFiles;
use ferry_core::image_ref::ImageRef;
use serde_json::Value;

/// Strings and numbers as text (`tag: 1.27` is a number to YAML).
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The value at a dotted path (`redis.enabled`).
fn lookup<'v>(values: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(values, |v, k| v.get(k))
}

/// What a guess found: images with their origins, and problems.
#[derive(Default)]
pub struct Guess {
    /// (reference, origin).
    pub images: Vec<(String, Origin)>,
    /// Problems, each naming the chart.
    pub errors: Vec<String>,
    /// Values that look like images but are not valid references.
    pub warnings: Vec<String>,
}

/// Guesses the images of the chart `files` (shown as `shown`) from its values, without helm.
/// `values` are the operator's values (a launch step's values file), laid over the chart's.
pub fn guess(files: &ChartFiles, shown: &str, overrides: Option<&Value>) -> Guess {
    let mut out = Guess::default();
    guess_into(files, shown, None, overrides, &mut out);
    out
}

fn guess_into(files: &ChartFiles, shown: &str, parent: Option<&str>, overrides: Option<&Value>, out: &mut Guess) {
    let meta = match files.meta() {
        Ok(m) => m,
        Err(e) => return out.errors.push(format!("chart {shown}: {e}")),
    };
    let name = meta.get("name").and_then(Value::as_str).unwrap_or(shown).to_string();
    let full = match parent {
        Some(p) => format!("{p}/{name}"),
        None => name.clone(),
    };
    let before = out.images.len();
    if let Some(ann) = meta.pointer("/annotations/artifacthub.io~1images").and_then(Value::as_str) {
        match annotation_images(ann) {
            Ok(list) => out.images.extend(list.into_iter().map(|i| {
                let how = How::OutsidePodSpec { field: "annotations.artifacthub.io/images".into() };
                (i, Origin { place: Place::ChartAnnotation { chart: full.clone() }, how })
            })),
            Err(e) => {
                out.errors.push(format!("chart {full}: the artifacthub.io/images annotation is not a YAML list: {e}"))
            }
        }
    }
    let mut values = match files.values() {
        Ok(v) => v,
        Err(e) => return out.errors.push(format!("chart {full} does not render: {e}")),
    };
    if let Some(o) = overrides {
        merge(&mut values, o);
    }
    let app_version = meta.get("appVersion").and_then(scalar_string);
    let mut hits = Vec::new();
    scan_values(&values, "", app_version.as_deref(), &mut hits);
    for (path, candidate) in hits {
        match ImageRef::parse(&candidate) {
            Ok(_) => out.images.push((
                candidate,
                Origin { place: Place::ChartValues { chart: full.clone(), path }, how: How::Guessed },
            )),
            Err(e) => out.warnings.push(format!(
                "chart {full}: values {path}: {e}; not bundled (list the image in spec.images if it is one)"
            )),
        }
    }
    let own_found = out.images.len() > before;
    let workloads = files.workload_templates();
    if !own_found && !workloads.is_empty() {
        out.errors.push(format!(
            "chart {full}: its templates define workloads ({}) but no image was found in its values; without helm \
             the images cannot be known: install helm on the build machine, or list them in spec.images",
            workloads.join(", ")
        ));
    }
    let deps = files.dependencies();
    for (sub, sub_files) in files.subcharts() {
        let dep = deps.iter().find(|d| d.name == sub);
        let key = dep.and_then(|d| d.alias.clone()).unwrap_or_else(|| sub.clone());
        let off = dep
            .and_then(|d| d.condition.as_deref())
            .map(|c| c.split(',').map(str::trim).find_map(|c| lookup(&values, c).and_then(Value::as_bool)))
            .is_some_and(|enabled| enabled == Some(false));
        if off {
            continue;
        }
        match sub_files {
            Ok(f) => guess_into(&f, &sub, Some(&full), values.get(&key), out),
            Err(e) => out.errors.push(format!("chart {full}: subchart {sub} cannot be read: {e}")),
        }
    }
}

/// The `image` fields of an `artifacthub.io/images` annotation.
pub fn annotation_images(ann: &str) -> Result<Vec<String>, String> {
    let list = serde_saphyr::from_str::<Vec<Value>>(ann).map_err(|e| e.to_string())?;
    Ok(list.iter().filter_map(|i| i.get("image").and_then(Value::as_str)).map(str::to_string).collect())
}

/// Lays `over` onto `base` the way helm coalesces values: mappings merge key by key, anything
/// else replaces.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The common values.yaml image patterns, with the values path each was found at:
/// * `{registry?, repository, tag?, digest?}` (also `image: {…}`),
/// * `image: "repo[:tag]"` with an optional sibling `tag`,
/// * the chart's `appVersion` as the tag when none is given.
///
/// Values holding template syntax are skipped: they are only known after rendering. So is a
/// mapping whose `enabled` is false, with everything under it: a component turned off deploys
/// nothing.
pub fn scan_values(v: &Value, path: &str, app_version: Option<&str>, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            if map.get("enabled").and_then(Value::as_bool) == Some(false) {
                return;
            }
            let get = |k: &str| map.get(k).and_then(scalar_string).filter(|s| !s.contains("{{"));
            if let Some(repo) = get("repository").filter(|r| !r.contains("://") && !r.ends_with(".git")) {
                let mut r = match get("registry") {
                    Some(reg) => format!("{}/{}", reg.trim_end_matches('/'), repo),
                    None => repo,
                };
                match (get("tag"), get("digest")) {
                    (tag, Some(d)) => {
                        if let Some(t) = tag {
                            r.push_str(&format!(":{t}"));
                        }
                        r.push_str(&format!("@{d}"));
                    }
                    (Some(t), None) => r.push_str(&format!(":{t}")),
                    (None, None) => {
                        if let Some(a) = app_version {
                            r.push_str(&format!(":{a}"));
                        }
                    }
                }
                out.push((format!("{path}.repository").trim_start_matches('.').to_string(), r));
            }
            if let Some(image) =
                map.get("image").and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty() && !s.contains("{{"))
            {
                let mut r = image.to_string();
                let last = r.rsplit('/').next().unwrap_or("");
                if !last.contains(':')
                    && !r.contains('@')
                    && let Some(t) = get("tag").or_else(|| app_version.map(String::from))
                {
                    r.push_str(&format!(":{t}"));
                }
                out.push((format!("{path}.image").trim_start_matches('.').to_string(), r));
            }
            for (k, child) in map {
                if child.is_object() || child.is_array() {
                    scan_values(child, &format!("{path}.{k}"), app_version, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                scan_values(item, &format!("{path}[{i}]"), app_version, out);
            }
        }
        _ => {}
    }
}

/// The string leaves of a chart's values (and its subcharts', under their names), for tracing a
/// rendered reference back to the values that made it.
pub struct Leaves {
    leaves: Vec<(String, String)>,
    app_versions: Vec<(String, String)>,
}

impl Leaves {
    /// The leaves of `files`' values with `overrides` laid over them.
    pub fn of(files: &ChartFiles, overrides: Option<&Value>) -> Leaves {
        let mut values = files.values().unwrap_or(Value::Null);
        if let Some(o) = overrides {
            merge(&mut values, o);
        }
        let mut leaves = Vec::new();
        collect_leaves(&values, "", &mut leaves);
        let mut app_versions = Vec::new();
        if let Ok(meta) = files.meta()
            && let Some(a) = meta.get("appVersion").and_then(scalar_string)
        {
            let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
            app_versions.push((name.to_string(), a));
        }
        for (sub, f) in files.subcharts() {
            if let Ok(f) = f {
                let mut sub_values = f.values().unwrap_or(Value::Null);
                if let Some(o) = values.get(&sub) {
                    merge(&mut sub_values, o);
                }
                collect_leaves(&sub_values, &sub, &mut leaves);
                if let Some(a) = f.meta().ok().and_then(|m| m.get("appVersion").and_then(scalar_string)) {
                    app_versions.push((sub, a));
                }
            }
        }
        Leaves { leaves, app_versions }
    }
}

fn collect_leaves(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| collect_leaves(c, &join(k), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| collect_leaves(c, &format!("{path}[{i}]"), out)),
        other => {
            if let Some(s) = scalar_string(other) {
                out.push((path.to_string(), s));
            }
        }
    }
}

/// The values paths a rendered `image` is made of, best effort: a value holding the whole
/// reference, else values naming its repository (or its last part) with their siblings naming
/// its registry, path parts, tag or digest, and `global.…` values naming its registry; and
/// `Chart.yaml appVersion` when the tag is the appVersion (or `v` + it) and no value gives it.
pub fn attribute(image: &ImageRef, raw: &str, leaves: &Leaves) -> Vec<String> {
    if let Some((p, _)) = leaves.leaves.iter().find(|(_, v)| v == raw) {
        return vec![p.clone()];
    }
    let repo = &image.repository;
    let parts: Vec<&str> = repo.split('/').collect();
    let short = repo.strip_prefix("library/").unwrap_or(repo);
    let is_repo = |v: &str| {
        let v = v.trim_end_matches('/');
        v == repo || v == short || repo.ends_with(&format!("/{v}")) || v == format!("{}/{repo}", image.registry)
    };
    let parent = |p: &str| p.rsplit_once('.').map(|(a, _)| a.to_string()).unwrap_or_default();
    let anchors: Vec<String> = leaves.leaves.iter().filter(|(_, v)| is_repo(v)).map(|(p, _)| parent(p)).collect();
    let part_of = |v: &str| {
        v == image.registry
            || parts.contains(&v)
            || image.tag.as_deref() == Some(v)
            || image.digest.as_deref() == Some(v)
            || is_repo(v)
    };
    let mut out: Vec<String> = leaves
        .leaves
        .iter()
        .filter(|(p, v)| {
            (anchors.contains(&parent(p)) && part_of(v)) || (p.starts_with("global.") && *v == image.registry)
        })
        .map(|(p, _)| p.clone())
        .collect();
    let tag_given = out.iter().any(|p| leaves.leaves.iter().any(|(q, v)| q == p && image.tag.as_deref() == Some(v)));
    if !out.is_empty()
        && !tag_given
        && let Some(tag) = image.tag.as_deref()
        && let Some((chart, _)) =
            leaves.app_versions.iter().find(|(_, a)| tag == a || tag.strip_prefix('v') == Some(a.as_str()))
    {
        let v = if tag.starts_with('v') && !a_is(tag, &leaves.app_versions) { "\"v\" + " } else { "" };
        out.push(format!("{v}appVersion of chart {chart}"));
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// Whether `tag` is itself one of the appVersions (so no `v` was added).
fn a_is(tag: &str, app_versions: &[(String, String)]) -> bool {
    app_versions.iter().any(|(_, a)| a == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_patterns() {
        let values: Value = serde_saphyr::from_str(
            r#"
image:
  registry: quay.io
  repository: example/app
  tag: ""
sidecar:
  image: nginx
  tag: "1.27"
pinned:
  image: {repository: ghcr.io/x/y, digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
plain: {image: "docker.io/bitnami/redis:7.2"}
numeric: {repository: busybox, tag: 1.36}
list: [{image: "a/b:1"}]
templated: {image: "{{ .Values.x }}"}
chartRepo: {repository: "https://charts.example.com"}
metrics: {enabled: false, image: {repository: example/exporter, tag: "1"}}
"#,
        )
        .unwrap();
        let mut out = Vec::new();
        scan_values(&values, "", Some("2.1"), &mut out);
        let refs: Vec<String> = out.iter().map(|(_, r)| ImageRef::parse(r).unwrap().to_string()).collect();
        assert!(refs.contains(&"quay.io/example/app:2.1".to_string()), "{out:?}");
        assert!(refs.contains(&"docker.io/library/nginx:1.27".to_string()), "{out:?}");
        assert!(refs.iter().any(|r| r.starts_with("ghcr.io/x/y@sha256:0123")), "{out:?}");
        assert!(refs.contains(&"docker.io/bitnami/redis:7.2".to_string()), "{out:?}");
        assert!(refs.contains(&"docker.io/library/busybox:1.36".to_string()), "{out:?}");
        assert!(refs.contains(&"docker.io/a/b:1".to_string()), "{out:?}");
        assert_eq!(refs.len(), 6, "a disabled component is left out: {out:?}");
        assert!(out.iter().any(|(p, _)| p == "image.repository"), "{out:?}");
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn leaves(values: &str, app_version: &str) -> Leaves {
        let v: Value = serde_saphyr::from_str(values).unwrap();
        let mut l = Vec::new();
        collect_leaves(&v, "", &mut l);
        Leaves { leaves: l, app_versions: vec![("web".into(), app_version.into())] }
    }

    #[test]
    fn rendered_references_are_traced_to_their_values() {
        let l = leaves(
            &format!(
                "global: {{image: {{registry: reg.example.com}}}}\nimage: {{repository: team/web, digest: '{D}'}}\nother: {{tag: '1.0'}}\n"
            ),
            "1.0",
        );
        let raw = format!("reg.example.com/team/web:v1.0@{D}");
        let r = ImageRef::parse(&raw).unwrap();
        assert_eq!(
            attribute(&r, &raw, &l),
            ["global.image.registry", "image.digest", "image.repository", "\"v\" + appVersion of chart web"]
        );
        let l = leaves("img: {registry: quay.io, namespace: acme, name: agent}\n", "2.3");
        let r = ImageRef::parse("quay.io/acme/agent:2.3").unwrap();
        assert_eq!(
            attribute(&r, "quay.io/acme/agent:2.3", &l),
            ["img.name", "img.namespace", "img.registry", "appVersion of chart web"]
        );
        let l = leaves("whole: 'quay.io/acme/agent:2.3'\n", "1");
        assert_eq!(attribute(&r, "quay.io/acme/agent:2.3", &l), ["whole"]);
        assert!(attribute(&r, "quay.io/acme/agent:2.3", &leaves("x: y\n", "1")).is_empty());
    }
}
