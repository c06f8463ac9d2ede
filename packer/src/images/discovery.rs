//! Finds every image a bundle needs without a cluster (the "lite build"):
//!
//! * `spec.images`, with their local sources;
//! * `spec.manifests`: every YAML/JSON document, workloads parsed with the `k8s-openapi` types
//!   (so a malformed workload fails the build with its file and document number), `kind: List`
//!   recursed into, and any `*containers` array of other kinds and CRDs walked generically;
//! * `spec.charts`: rendered with `helm template` when helm is available, otherwise scanned
//!   (`values.yaml` image patterns, `Chart.yaml` `appVersion` as the default tag, the
//!   `artifacthub.io/images` annotation, subcharts included);
//! * the control-plane images of `spec.kubernetes.version`, from the bundle's kubeadm or
//!   ferry's table ([`controlplane::resolve`]).
//!
//! The result is one entry per normalised reference with every place it was found, and the
//! control plane with where its list came from.

use super::controlplane;
use crate::paths::PathError;
use crate::spec::Bundle;
use crate::tree::TreeError;
use ferry_core::image_ref::ImageRef;
use ferry_core::printer::error_chain;
use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplate, ReplicationController};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where an image's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Its registry, or that registry's mirror.
    Registry,
    /// An OCI image layout directory or tar.
    Oci {
        /// The layout on the build machine.
        path: PathBuf,
        /// As written in the spec.
        shown: String,
        /// The `:TAG` of `oci:PATH:TAG`.
        tag: Option<String>,
    },
    /// A `docker save` tar.
    DockerArchive {
        /// The tar on the build machine.
        path: PathBuf,
        /// As written in the spec.
        shown: String,
    },
}

impl Source {
    /// `registry`, `oci` or `docker-archive`, as recorded in the index.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Registry => "registry",
            Source::Oci { .. } => "oci",
            Source::DockerArchive { .. } => "docker-archive",
        }
    }

    /// For listings: `registry`, `oci:images/app`, …
    pub fn describe(&self) -> String {
        match self {
            Source::Registry => "registry".into(),
            Source::Oci { shown, .. } | Source::DockerArchive { shown, .. } => shown.clone(),
        }
    }
}

/// One image the bundle needs.
#[derive(Clone, Debug)]
pub struct Discovered {
    /// The normalised reference.
    pub image: ImageRef,
    /// Where to get it.
    pub source: Source,
    /// Every place that named it, in discovery order.
    pub found_in: Vec<String>,
}

/// How charts are turned into images.
#[derive(Clone, Debug)]
pub enum ChartMode {
    /// `helm template` with this binary.
    Helm(PathBuf),
    /// Scan `values.yaml`, `Chart.yaml` and annotations.
    Scan,
}

impl ChartMode {
    /// `FERRY_HELM` (a path, or `none` to force scanning), else `helm` on `PATH`, else scanning.
    pub fn detect() -> ChartMode {
        match std::env::var_os("FERRY_HELM") {
            Some(v) if v == "none" || v.is_empty() => return ChartMode::Scan,
            Some(v) => return ChartMode::Helm(PathBuf::from(v)),
            None => {}
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("helm");
            if candidate.is_file() {
                return ChartMode::Helm(candidate);
            }
        }
        ChartMode::Scan
    }
}

/// Discovery found problems; all of them are listed, each naming its file, document or chart.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: {} problem{} while finding the bundle's images:\n{}",
    file.display(),
    problems.len(),
    if problems.len() == 1 { "" } else { "s" },
    problems.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n")
)]
pub struct DiscoveryError {
    /// The spec file.
    pub file: PathBuf,
    /// Every problem, in discovery order.
    pub problems: Vec<String>,
}

/// A `spec.images[].source` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Its path cannot be resolved (printed with its cause).
    #[error("{}", error_chain(.0))]
    Path(#[from] PathError),
    /// Neither `oci:` nor `docker-archive:`.
    #[error("{field}.source `{given}` must be `oci:PATH[:TAG]` or `docker-archive:PATH`")]
    Scheme {
        /// `spec.images[N]`.
        field: String,
        /// The source as written.
        given: String,
    },
}

/// A Kubernetes document whose images cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not a mapping.
    #[error("a Kubernetes document is a mapping with apiVersion and kind, not {0}")]
    NotMapping(&'static str),
    /// A list whose `items` is not a list.
    #[error("{0}: `items` must be a list")]
    Items(String),
    /// An item of a list.
    #[error("{what} items[{index}]: {cause}")]
    Item {
        /// The list (`List`, `PodList name`).
        what: String,
        /// The item's position.
        index: usize,
        /// Why.
        cause: Box<DocumentError>,
    },
    /// A workload of a removed API group.
    #[error("{what} uses apiVersion {api_version}, which Kubernetes no longer serves")]
    Removed {
        /// Kind and name.
        what: String,
        /// Its apiVersion.
        api_version: String,
    },
    /// A workload that does not match its type.
    #[error("{what} is malformed: {}", if .field == "." { .cause.clone() } else { format!("{}: {}", .field, .cause) })]
    Malformed {
        /// Kind and name.
        what: String,
        /// The field path (`.` for the whole document).
        field: String,
        /// Why.
        cause: String,
    },
    /// A container without an image.
    #[error("{what}: container `{container}` has no image")]
    NoImage {
        /// Kind and name.
        what: String,
        /// The container.
        container: String,
    },
}

/// A chart that cannot be read for scanning.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The chart directory cannot be walked (printed with its cause).
    #[error("{}", error_chain(.0))]
    Tree(#[from] TreeError),
    /// A file cannot be read.
    #[error("{}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Not a gzipped tar.
    #[error("not a .tgz chart: {0}")]
    NotTgz(std::io::Error),
    /// A member of the archive cannot be read.
    #[error("{0}")]
    Member(std::io::Error),
    /// No `Chart.yaml`.
    #[error("no Chart.yaml in the archive")]
    NoChartYaml,
}

/// Collects the images, de-duplicated by normalised reference.
#[derive(Default)]
struct Found {
    by_ref: BTreeMap<String, Discovered>,
    errors: Vec<String>,
}

impl Found {
    fn add(&mut self, raw: &str, origin: &str, source: Source) {
        match ImageRef::parse(raw) {
            Ok(image) => self.add_ref(image, origin, source),
            Err(e) => self.errors.push(format!("{origin}: {e}")),
        }
    }

    fn add_ref(&mut self, image: ImageRef, origin: &str, source: Source) {
        let key = image.to_string();
        let entry = self.by_ref.entry(key.clone()).or_insert_with(|| Discovered {
            image,
            source: Source::Registry,
            found_in: Vec::new(),
        });
        if source != Source::Registry {
            if entry.source != Source::Registry && entry.source != source {
                self.errors.push(format!(
                    "{origin}: {key} is given two sources: {} and {}",
                    entry.source.describe(),
                    source.describe()
                ));
            }
            entry.source = source;
        }
        if !entry.found_in.iter().any(|f| f == origin) {
            entry.found_in.push(origin.to_string());
        }
    }
}

/// What discovery found.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// Every image, once per normalised reference, sorted by reference.
    pub images: Vec<Discovered>,
    /// The control-plane images and their source.
    pub control_plane: controlplane::ControlPlane,
}

/// Finds every image of `bundle`. Problems (malformed documents, unparsable references, charts
/// that do not render, a bundle kubeadm that fails) are collected and reported together.
pub fn discover(bundle: &Bundle, charts: &ChartMode, warnings: &mut Vec<String>) -> Result<Discovery, DiscoveryError> {
    let mut found = Found::default();
    let spec = &bundle.spec.spec;
    spec_images(bundle, &mut found);
    spec_manifests(bundle, &mut found);
    for (i, item) in spec.charts.iter().enumerate() {
        let field = format!("spec.charts[{i}].path");
        match bundle.resolve(&field, &item.path) {
            Ok(real) => scan_chart(&real, &item.path, &spec.kubernetes.version, charts, &mut found, warnings),
            Err(e) => found.errors.push(error_chain(&e)),
        }
    }
    let control_plane = match controlplane::resolve(bundle, warnings) {
        Ok(cp) => {
            let origin = format!("kubernetes {} control plane", spec.kubernetes.version);
            for i in &cp.images {
                found.add(i, &origin, Source::Registry);
            }
            Some(cp)
        }
        Err(e) => {
            found.errors.push(format!("control-plane images of {}: {e}", spec.kubernetes.version));
            None
        }
    };
    match (found.errors.is_empty(), control_plane) {
        (true, Some(control_plane)) => Ok(Discovery { images: found.by_ref.into_values().collect(), control_plane }),
        _ => Err(DiscoveryError { file: bundle.file.clone(), problems: found.errors }),
    }
}

/// `spec.images`, with their sources.
fn spec_images(bundle: &Bundle, found: &mut Found) {
    for (i, item) in bundle.spec.spec.images.iter().enumerate() {
        let field = format!("spec.images[{i}]");
        let source = match &item.source {
            None => Source::Registry,
            Some(s) => match local_source(bundle, &field, s) {
                Ok(src) => src,
                Err(e) => {
                    found.errors.push(e.to_string());
                    continue;
                }
            },
        };
        found.add(&item.r#ref, "spec.images", source);
    }
}

/// The images of every document of `spec.manifests`.
fn spec_manifests(bundle: &Bundle, found: &mut Found) {
    for (i, item) in bundle.spec.spec.manifests.iter().enumerate() {
        let field = format!("spec.manifests[{i}].path");
        let real = match bundle.resolve(&field, &item.path) {
            Ok(r) => r,
            Err(e) => {
                found.errors.push(error_chain(&e));
                continue;
            }
        };
        for file in manifest_files(&real, &field, &mut found.errors) {
            let rel = file.strip_prefix(&bundle.dir).unwrap_or(&file).to_string_lossy().into_owned();
            let label = format!("bundle/{rel}");
            match std::fs::read_to_string(&file) {
                Ok(text) => scan_manifests(&text, &label, found),
                Err(e) => found.errors.push(format!("{label}: cannot be read: {e}")),
            }
        }
    }
}

/// `oci:PATH[:TAG]` or `docker-archive:PATH`, resolved inside the spec's directory.
fn local_source(bundle: &Bundle, field: &str, s: &str) -> Result<Source, SourceError> {
    if let Some(rest) = s.strip_prefix("oci:") {
        // `oci:PATH:TAG` is ambiguous when PATH holds a colon: a path that exists as written wins.
        let (path, tag) = if bundle.dir.join(rest).exists() {
            (rest, None)
        } else {
            match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !t.is_empty() => (p, Some(t.to_string())),
                _ => (rest, None),
            }
        };
        let real = bundle.resolve(&format!("{field}.source"), path)?;
        Ok(Source::Oci { path: real, shown: s.to_string(), tag })
    } else if let Some(path) = s.strip_prefix("docker-archive:") {
        let real = bundle.resolve(&format!("{field}.source"), path)?;
        Ok(Source::DockerArchive { path: real, shown: s.to_string() })
    } else {
        Err(SourceError::Scheme { field: field.to_string(), given: s.to_string() })
    }
}

/// The YAML and JSON files of a manifest path, in sorted order.
fn manifest_files(real: &Path, field: &str, errors: &mut Vec<String>) -> Vec<PathBuf> {
    if !real.is_dir() {
        return vec![real.to_path_buf()];
    }
    match crate::tree::walk(real, field) {
        Ok(items) => items
            .into_iter()
            .filter(|t| t.kind == crate::tree::ItemKind::File)
            .filter(|t| matches!(Path::new(&t.rel).extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .map(|t| t.source)
            .collect(),
        Err(e) => {
            errors.push(error_chain(&e));
            Vec::new()
        }
    }
}

/// One YAML document of a stream: its 1-based number among non-empty documents, the line it
/// starts on, and its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Document<'a> {
    /// 1-based number among the stream's non-empty documents.
    pub number: usize,
    /// 1-based line of the document's first line.
    pub line: usize,
    /// The document's text.
    pub text: &'a str,
}

/// Splits a YAML stream at `---` lines the way kubectl does, numbering only documents that hold
/// more than comments and blank lines (so numbers match what a reader counts).
pub fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs: Vec<Document<'_>> = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    fn push<'t>(text: &'t str, from: usize, to: usize, line: usize, docs: &mut Vec<Document<'t>>) {
        let chunk = &text[from..to];
        // The document's line is that of its first line with content.
        let first = chunk.lines().position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "..."
        });
        if let Some(skip) = first {
            let number = docs.len() + 1;
            docs.push(Document { number, line: line + skip, text: chunk });
        }
    }
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let body = line.trim_end_matches(['\n', '\r']);
        let is_sep = body == "---" || (body.starts_with("---") && body[3..].starts_with([' ', '\t']));
        if is_sep {
            push(text, start, offset, start_line, &mut docs);
            // Content after `--- ` on the same line belongs to the next document.
            start = offset + 3;
            start_line = line_no;
        }
        offset += line.len();
    }
    push(text, start, text.len(), start_line, &mut docs);
    docs
}

/// Scans a multi-document YAML stream labelled `label` (`bundle/manifests/web.yaml`).
fn scan_manifests(text: &str, label: &str, found: &mut Found) {
    for doc in split_documents(text) {
        let origin = format!("{label}#{}", doc.number);
        let value: Value = match serde_saphyr::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                found.errors.push(format!("{label} document {} (line {}): not valid YAML: {e}", doc.number, doc.line));
                continue;
            }
        };
        let mut images = Vec::new();
        match scan_value(&value, &mut images) {
            Ok(()) => {
                for i in images {
                    found.add(&i, &origin, Source::Registry);
                }
            }
            Err(e) => found.errors.push(format!("{label} document {} (line {}): {e}", doc.number, doc.line)),
        }
    }
}

/// Built-in workload kinds: (apiVersion, kind).
fn typed_pod_spec(api_version: &str, kind: &str, v: &Value) -> Option<Result<Option<PodSpec>, Mismatch>> {
    fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Mismatch> {
        serde_path_to_error::deserialize::<_, T>(v.clone())
            .map_err(|e| Mismatch { field: e.path().to_string(), cause: e.inner().to_string() })
    }
    macro_rules! typed {
        ($t:ty, $get:expr) => {
            if api_version == <$t>::API_VERSION && kind == <$t>::KIND {
                let f: fn($t) -> Option<PodSpec> = $get;
                return Some(parse::<$t>(v).map(f));
            }
        };
    }
    // Since the 1.37 API the apps/v1 workloads' and CronJob's `spec` is required (k8s-openapi
    // then defaults a missing one, which has no pod spec either).
    typed!(Pod, |p| p.spec);
    typed!(Deployment, |d| d.spec.template.spec);
    typed!(StatefulSet, |d| d.spec.template.spec);
    typed!(DaemonSet, |d| d.spec.template.spec);
    typed!(ReplicaSet, |d| d.spec.template.and_then(|t| t.spec));
    typed!(ReplicationController, |d| d.spec.and_then(|s| s.template).and_then(|t| t.spec));
    typed!(Job, |d| d.spec.and_then(|s| s.template.spec));
    typed!(CronJob, |d| d.spec.job_template.spec.and_then(|j| j.template.spec));
    typed!(PodTemplate, |d| d.template.and_then(|t| t.spec));
    None
}

/// Where and why a document does not match its type.
struct Mismatch {
    /// The field path, `.` for the whole document.
    field: String,
    /// Why.
    cause: String,
}

/// Workload kinds whose apiVersion Kubernetes no longer serves.
const REMOVED_GROUPS: &[&str] =
    &["extensions/v1beta1", "apps/v1beta1", "apps/v1beta2", "batch/v1beta1", "batch/v2alpha1"];
const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"];

/// The images of one parsed document.
fn scan_value(v: &Value, out: &mut Vec<String>) -> Result<(), DocumentError> {
    let Some(obj) = v.as_object() else {
        return Err(DocumentError::NotMapping(json_type(v)));
    };
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let what = if name.is_empty() { kind.to_string() } else { format!("{kind} {name}") };
    if kind == "List" || (kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array)) {
        let items = obj.get("items").and_then(Value::as_array).ok_or_else(|| DocumentError::Items(what.clone()))?;
        for (index, item) in items.iter().enumerate() {
            scan_value(item, out).map_err(|e| DocumentError::Item { what: what.clone(), index, cause: Box::new(e) })?;
        }
        return Ok(());
    }
    if WORKLOAD_KINDS.contains(&kind) && REMOVED_GROUPS.contains(&api_version) {
        return Err(DocumentError::Removed { what, api_version: api_version.to_string() });
    }
    if let Some(parsed) = typed_pod_spec(api_version, kind, v) {
        let spec =
            parsed.map_err(|m| DocumentError::Malformed { what: what.clone(), field: m.field, cause: m.cause })?;
        if let Some(spec) = spec {
            let named = spec.containers.iter().map(|c| (&c.name, &c.image));
            let init = spec.init_containers.iter().flatten().map(|c| (&c.name, &c.image));
            let eph = spec.ephemeral_containers.iter().flatten().map(|c| (&c.name, &c.image));
            for (cname, image) in named.chain(init).chain(eph) {
                match image {
                    Some(i) if !i.is_empty() => out.push(i.clone()),
                    _ => return Err(DocumentError::NoImage { what, container: cname.clone() }),
                }
            }
        }
        return Ok(());
    }
    walk_generic(v, out);
    Ok(())
}

/// For kinds ferry has no type for (CRDs, operators' pod templates): the `image` of every object
/// in any array named `containers`, `initContainers`, `ephemeralContainers` or `…Containers`.
fn walk_generic(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let containers_like = k == "containers" || k.ends_with("Containers");
                if containers_like && let Some(items) = child.as_array() {
                    for item in items {
                        if let Some(img) = item.get("image").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                            out.push(img.to_string());
                        }
                    }
                }
                walk_generic(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| walk_generic(i, out)),
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "an empty value",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn scan_chart(
    real: &Path,
    shown: &str,
    kube_version: &str,
    mode: &ChartMode,
    found: &mut Found,
    warnings: &mut Vec<String>,
) {
    match mode {
        ChartMode::Helm(helm) => {
            let name = chart_name(real).unwrap_or_else(|| shown.to_string());
            let label = format!("chart:{name}");
            let out = Command::new(helm)
                .args(["template", "ferry-discovery"])
                .arg(real)
                .args(["--kube-version", kube_version])
                .output();
            match out {
                Ok(o) if o.status.success() => match String::from_utf8(o.stdout) {
                    Ok(text) => scan_manifests(&text, &label, found),
                    Err(_) => {
                        found.errors.push(format!("chart {shown}: `helm template` printed something that is not UTF-8"))
                    }
                },
                Ok(o) => {
                    let stderr = String::from_utf8_lossy(&o.stderr);
                    let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
                    found.errors.push(format!(
                        "chart {shown} does not render: `helm template` failed ({}): {}",
                        o.status,
                        tail.join(" / ")
                    ));
                }
                Err(e) => found.errors.push(format!("chart {shown}: cannot run {}: {e}", helm.display())),
            }
        }
        ChartMode::Scan => match ChartFiles::load(real) {
            Ok(files) => scan_chart_files(&files, shown, None, found, warnings),
            Err(e) => found.errors.push(format!("chart {shown} cannot be read: {e}")),
        },
    }
}

/// `name` from a chart directory's or archive's `Chart.yaml`.
fn chart_name(real: &Path) -> Option<String> {
    let files = ChartFiles::load(real).ok()?;
    let meta: Value = serde_saphyr::from_slice(files.get("Chart.yaml")?).ok()?;
    meta.get("name")?.as_str().map(String::from)
}

/// The files of a chart that matter for scanning (`Chart.yaml`, `values.yaml` and `charts/…`),
/// from a directory or a `.tgz`, keyed by path relative to the chart root.
struct ChartFiles(BTreeMap<String, Vec<u8>>);

impl ChartFiles {
    fn load(path: &Path) -> Result<ChartFiles, ChartError> {
        if path.is_dir() {
            let mut map = BTreeMap::new();
            for item in crate::tree::walk(path, "chart")? {
                if item.kind == crate::tree::ItemKind::File && wanted_chart_file(&item.rel) {
                    let bytes = std::fs::read(&item.source).map_err(chart_read(&item.source))?;
                    map.insert(item.rel, bytes);
                }
            }
            Ok(ChartFiles(map))
        } else {
            let f = std::fs::File::open(path).map_err(chart_read(path))?;
            ChartFiles::from_tgz(f)
        }
    }

    fn from_tgz(r: impl Read) -> Result<ChartFiles, ChartError> {
        let mut map = BTreeMap::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(r));
        let entries = archive.entries().map_err(ChartError::NotTgz)?;
        for entry in entries {
            let mut entry = entry.map_err(ChartError::NotTgz)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(ChartError::Member)?.to_string_lossy().into_owned();
            // Helm archives hold `<chart-name>/…`.
            let Some((_, rel)) = path.trim_start_matches("./").split_once('/') else { continue };
            if wanted_chart_file(rel) {
                let mut bytes = Vec::new();
                entry.by_ref().take(64 << 20).read_to_end(&mut bytes).map_err(ChartError::Member)?;
                map.insert(rel.to_string(), bytes);
            }
        }
        if !map.contains_key("Chart.yaml") {
            return Err(ChartError::NoChartYaml);
        }
        Ok(ChartFiles(map))
    }

    fn get(&self, rel: &str) -> Option<&[u8]> {
        self.0.get(rel).map(Vec::as_slice)
    }

    /// Subcharts: `charts/<name>/…` directories and `charts/<name>.tgz` archives.
    fn subcharts(&self) -> Vec<(String, Result<ChartFiles, ChartError>)> {
        let mut out = Vec::new();
        let mut dirs: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        for (rel, bytes) in &self.0 {
            let Some(rest) = rel.strip_prefix("charts/") else { continue };
            match rest.split_once('/') {
                Some((sub, inner)) => {
                    dirs.entry(sub.to_string()).or_default().insert(inner.to_string(), bytes.clone());
                }
                None if rest.ends_with(".tgz") => {
                    out.push((rest.trim_end_matches(".tgz").to_string(), ChartFiles::from_tgz(&bytes[..])))
                }
                None => {}
            }
        }
        for (sub, files) in dirs {
            if files.contains_key("Chart.yaml") {
                out.push((sub, Ok(ChartFiles(files))));
            }
        }
        out
    }
}

fn chart_read(path: &Path) -> impl FnOnce(std::io::Error) -> ChartError {
    let path = path.to_path_buf();
    move |cause| ChartError::Read { path, cause }
}

fn wanted_chart_file(rel: &str) -> bool {
    rel == "Chart.yaml"
        || rel == "values.yaml"
        || (rel.starts_with("charts/")
            && (rel.ends_with("/Chart.yaml") || rel.ends_with("/values.yaml") || rel.ends_with(".tgz")))
}

fn scan_chart_files(
    files: &ChartFiles,
    shown: &str,
    parent: Option<&str>,
    found: &mut Found,
    warnings: &mut Vec<String>,
) {
    let meta: Value = match files.get("Chart.yaml").map(serde_saphyr::from_slice::<Value>) {
        Some(Ok(v)) => v,
        Some(Err(e)) => return found.errors.push(format!("chart {shown}: Chart.yaml is not valid YAML: {e}")),
        None => return found.errors.push(format!("chart {shown}: no Chart.yaml")),
    };
    let name = meta.get("name").and_then(Value::as_str).unwrap_or(shown).to_string();
    let full = match parent {
        Some(p) => format!("{p}/{name}"),
        None => name.clone(),
    };
    let label = format!("chart:{full}");
    let app_version = meta.get("appVersion").and_then(scalar_string);
    if let Some(ann) = meta.pointer("/annotations/artifacthub.io~1images").and_then(Value::as_str) {
        match serde_saphyr::from_str::<Vec<Value>>(ann) {
            Ok(list) => {
                for item in list {
                    if let Some(img) = item.get("image").and_then(Value::as_str) {
                        found.add(img, &label, Source::Registry);
                    }
                }
            }
            Err(e) => {
                found.errors.push(format!("chart {full}: the artifacthub.io/images annotation is not a YAML list: {e}"))
            }
        }
    }
    if let Some(bytes) = files.get("values.yaml") {
        match serde_saphyr::from_slice::<Value>(bytes) {
            Ok(values) => {
                let mut hits = Vec::new();
                scan_values(&values, "", app_version.as_deref(), &mut hits);
                for (path, candidate) in hits {
                    match ImageRef::parse(&candidate) {
                        Ok(r) => found.add_ref(r, &label, Source::Registry),
                        Err(e) => warnings.push(format!("chart {full}: values.yaml {path}: {e}; not bundled (list the image in spec.images if it is one)")),
                    }
                }
            }
            Err(e) => found.errors.push(format!("chart {full} does not render: values.yaml is not valid YAML: {e}")),
        }
    }
    for (sub, files) in files.subcharts() {
        match files {
            Ok(f) => scan_chart_files(&f, &sub, Some(&full), found, warnings),
            Err(e) => found.errors.push(format!("chart {full}: subchart {sub} cannot be read: {e}")),
        }
    }
}

/// Strings and numbers as text (`tag: 1.27` is a number to YAML).
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The common values.yaml image patterns, with the values path each was found at:
/// * `{registry?, repository, tag?, digest?}` (also `image: {…}`),
/// * `image: "repo[:tag]"` with an optional sibling `tag`,
/// * the chart's `appVersion` as the tag when none is given.
///
/// Values holding template syntax are skipped: they are only known after rendering.
pub fn scan_values(v: &Value, path: &str, app_version: Option<&str>, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(yaml: &str) -> Result<Vec<(String, Vec<String>)>, Vec<String>> {
        let mut found = Found::default();
        scan_manifests(yaml, "bundle/m.yaml", &mut found);
        if found.errors.is_empty() {
            Ok(found.by_ref.into_values().map(|d| (d.image.to_string(), d.found_in)).collect())
        } else {
            Err(found.errors)
        }
    }

    #[test]
    fn splits_documents_like_kubectl() {
        let t = "# leading comment\n---\na: 1\n---\n# only a comment\n---\n\n---\nb: 2\n--- # trailing\nc: 3\n...\n";
        let docs = split_documents(t);
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert_eq!((docs[0].number, docs[0].line), (1, 3));
        assert!(docs[1].text.contains("b: 2"));
        assert_eq!(docs[1].line, 9);
        assert!(docs[2].text.contains("c: 3"));
        assert_eq!((docs[2].number, docs[2].line), (3, 11));
        assert_eq!(split_documents("a: 1\n").len(), 1);
        assert_eq!(split_documents("").len(), 0);
        // `---` inside a value does not split.
        assert_eq!(split_documents("a: |\n  ---\n  x\n").len(), 1);
    }

    #[test]
    fn workloads_of_every_kind() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      initContainers: [{name: init, image: busybox:1.36}]
      containers: [{name: web, image: nginx:1.27, resources: {limits: {cpu: 1}}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: c}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: c, image: quay.io/example/cron:2}]
          restartPolicy: Never
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: a, image: "registry.k8s.io/pause:3.10"}]
  ephemeralContainers: [{name: dbg, image: "docker.io/library/busybox:1.36"}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: s}
spec:
  selector: {}
  serviceName: s
  template: {spec: {containers: [{name: s, image: "redis:7"}]}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: d}
spec:
  selector: {}
  template: {spec: {containers: [{name: d, image: "ds:1"}]}}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: r}
spec:
  selector: {}
  template: {spec: {containers: [{name: r, image: "rs:1"}]}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: j}
spec:
  template: {spec: {containers: [{name: j, image: "job:1"}], restartPolicy: Never}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {image: "not-an-image-field:1"}
"#;
        let got = scan(yaml).unwrap();
        let refs: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            refs,
            [
                "docker.io/library/busybox:1.36",
                "docker.io/library/ds:1",
                "docker.io/library/job:1",
                "docker.io/library/nginx:1.27",
                "docker.io/library/redis:7",
                "docker.io/library/rs:1",
                "quay.io/example/cron:2",
                "registry.k8s.io/pause:3.10",
            ]
        );
        let busybox = &got[0].1;
        assert_eq!(busybox, &["bundle/m.yaml#1", "bundle/m.yaml#3"], "document numbers, deduplicated");
    }

    #[test]
    fn lists_and_crds() {
        let yaml = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: in-list}
    spec:
      selector: {}
      template: {spec: {containers: [{name: a, image: "a:1"}]}}
  - apiVersion: v1
    kind: List
    items: [{apiVersion: v1, kind: Pod, metadata: {name: nested}, spec: {containers: [{name: b, image: "b:1"}]}}]
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: r}
spec:
  template:
    spec:
      containers: [{name: app, image: "ghcr.io/example/rollout:3"}]
      initContainers: [{name: i, image: "ghcr.io/example/init:3"}]
---
apiVersion: example.com/v1
kind: Operator
spec:
  deep: {workerContainers: [{image: "quay.io/op/worker:1"}, {name: noimage}]}
  image: "quay.io/op/not-in-a-containers-array:1"
"#;
        let got = scan(yaml).unwrap();
        let refs: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            refs,
            [
                "docker.io/library/a:1",
                "docker.io/library/b:1",
                "ghcr.io/example/init:3",
                "ghcr.io/example/rollout:3",
                "quay.io/op/worker:1",
            ]
        );
    }

    #[test]
    fn malformed_workloads_name_file_document_and_field() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: [{name: web, image: 42, ports: [{containerPort: \"http\"}]}]\n";
        let errs = scan(yaml).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        assert!(e.contains("bundle/m.yaml document 2 (line 5)"), "{e}");
        assert!(e.contains("Deployment web is malformed"), "{e}");
        assert!(e.contains("spec.template.spec.containers[0]"), "{e}");

        let errs = scan("a: [unclosed\n---\n- just a list\n---\napiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\n").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("document 1") && errs[0].contains("not valid YAML"), "{errs:?}");
        assert!(errs[1].contains("document 2") && errs[1].contains("mapping"), "{errs:?}");
        assert!(errs[2].contains("document 3") && errs[2].contains("extensions/v1beta1"), "{errs:?}");

        let errs =
            scan("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: 'Bad:Ref'}]}\n")
                .unwrap_err();
        assert!(errs[0].contains("bundle/m.yaml#1") && errs[0].contains("Bad:Ref"), "{errs:?}");
        let errs =
            scan("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n").unwrap_err();
        assert!(errs[0].contains("container `a` has no image"), "{errs:?}");
    }

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
        assert_eq!(refs.len(), 6, "{out:?}");
        assert!(out.iter().any(|(p, _)| p == "image.repository"), "{out:?}");
    }
}
