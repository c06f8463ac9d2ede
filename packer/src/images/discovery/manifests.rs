//! Reads images out of Kubernetes objects: YAML streams split the way kubectl splits them,
//! workloads parsed with the `k8s-openapi` types (so a malformed workload names its field),
//! `kind: List` recursed into, any `…containers` list of other kinds and custom resources walked
//! generically, and the places outside pod specs where references are known to live:
//!
//! * a container's `--…image…=REF` (or `--…image REF`) argument or command word, and an
//!   environment variable whose name holds `IMAGE`;
//! * a custom resource's field whose name ends in `image`/`Image`, as a string or as
//!   `{registry, repository, tag, digest}`.
//!
//! Outside pod specs only a string with an explicit tag or digest counts, so that a flag like
//! `--image-pull-policy=Always` or a variable like `IMAGE_PULL_SECRET=regcred` is not mistaken
//! for an image.

use super::origin::How;
use ferry_core::image_ref::ImageRef;
use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplate, ReplicationController};
use serde_json::Value;

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

/// An image reference found in a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The reference as written.
    pub image: String,
    /// `Kind name` of the object that holds it.
    pub object: String,
    /// 1-based line of the stream where it is written (the document's line when the text
    /// cannot be found as written, e.g. when YAML escapes it).
    pub line: usize,
    /// The `# Source:` comment helm writes above each rendered document.
    pub template: Option<String>,
    /// In a pod spec, or where.
    pub how: How,
}

/// Every image of a YAML stream, and every problem, each naming `label`, the document and its
/// line.
pub fn scan_stream(text: &str, label: &str) -> (Vec<Hit>, Vec<String>) {
    let mut hits = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        let value: Value = match serde_saphyr::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{label} document {} (line {}): not valid YAML: {e}", doc.number, doc.line));
                continue;
            }
        };
        let template = doc.text.lines().find_map(|l| l.trim().strip_prefix("# Source: ")).map(str::to_string);
        let mut found = Vec::new();
        match scan_value(&value, &mut found) {
            Ok(()) => {
                for f in found {
                    let line = line_of(&doc, &f.image);
                    hits.push(Hit { image: f.image, object: f.object, line, template: template.clone(), how: f.how });
                }
            }
            Err(e) => errors.push(format!("{label} document {} (line {}): {e}", doc.number, doc.line)),
        }
    }
    (hits, errors)
}

/// The stream line on which `image` is first written in `doc`.
fn line_of(doc: &Document<'_>, image: &str) -> usize {
    let first = doc.line - doc.text[..].lines().take_while(|l| !has_content(l)).count();
    doc.text.lines().position(|l| holds_whole(l, image)).map(|i| first + i).unwrap_or(doc.line)
}

/// Whether `line` holds `word` not as part of a longer reference (`app:1` is not in
/// `quay.io/library/app:1`).
fn holds_whole(line: &str, word: &str) -> bool {
    let part_of_ref = |c: char| c.is_ascii_alphanumeric() || "./_-:@".contains(c);
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(part_of_ref) && !after.is_some_and(part_of_ref)
    })
}

fn has_content(l: &str) -> bool {
    let t = l.trim();
    !t.is_empty() && !t.starts_with('#') && t != "..." && t != "---"
}

/// One reference inside one object.
struct Found {
    image: String,
    object: String,
    how: How,
}

/// Built-in workload kinds: (apiVersion, kind), with the path of their pod spec.
fn typed_pod_spec(
    api_version: &str,
    kind: &str,
    v: &Value,
) -> Option<Result<Option<(PodSpec, &'static str)>, Mismatch>> {
    fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Mismatch> {
        serde_path_to_error::deserialize::<_, T>(v.clone())
            .map_err(|e| Mismatch { field: e.path().to_string(), cause: e.inner().to_string() })
    }
    macro_rules! typed {
        ($t:ty, $at:expr, $get:expr) => {
            if api_version == <$t>::API_VERSION && kind == <$t>::KIND {
                let f: fn($t) -> Option<PodSpec> = $get;
                return Some(parse::<$t>(v).map(|o| f(o).map(|s| (s, $at))));
            }
        };
    }
    // Since the 1.37 API the apps/v1 workloads' and CronJob's `spec` is required (k8s-openapi
    // then defaults a missing one, which has no pod spec either).
    typed!(Pod, "spec", |p| p.spec);
    typed!(Deployment, "spec.template.spec", |d| d.spec.template.spec);
    typed!(StatefulSet, "spec.template.spec", |d| d.spec.template.spec);
    typed!(DaemonSet, "spec.template.spec", |d| d.spec.template.spec);
    typed!(ReplicaSet, "spec.template.spec", |d| d.spec.template.and_then(|t| t.spec));
    typed!(ReplicationController, "spec.template.spec", |d| d.spec.and_then(|s| s.template).and_then(|t| t.spec));
    typed!(Job, "spec.template.spec", |d| d.spec.and_then(|s| s.template.spec));
    typed!(CronJob, "spec.jobTemplate.spec.template.spec", |d| d.spec.job_template.spec.and_then(|j| j.template.spec));
    typed!(PodTemplate, "template.spec", |d| d.template.and_then(|t| t.spec));
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
fn scan_value(v: &Value, out: &mut Vec<Found>) -> Result<(), DocumentError> {
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
    let mut push = |image: String, how: How| out.push(Found { image, object: what.clone(), how });
    if let Some(parsed) = typed_pod_spec(api_version, kind, v) {
        let spec =
            parsed.map_err(|m| DocumentError::Malformed { what: what.clone(), field: m.field, cause: m.cause })?;
        if let Some((spec, at)) = spec {
            pod_spec_images(&spec, at, &what, &mut push)?;
        }
        return Ok(());
    }
    walk_generic(v, "", is_custom_resource(api_version), &mut push);
    Ok(())
}

/// A container's name and image, and the container itself when its type has arguments and
/// environment (ephemeral containers' do too, but they are started by hand, not by a program).
type ContainerView<'a> = (&'a String, &'a Option<String>, Option<&'a Container>);

/// The images of a typed pod spec at `at`: each container's image, and references in its
/// arguments and environment.
fn pod_spec_images(
    spec: &PodSpec,
    at: &str,
    what: &str,
    push: &mut impl FnMut(String, How),
) -> Result<(), DocumentError> {
    let lists: [(&str, Vec<ContainerView<'_>>); 3] = [
        ("containers", spec.containers.iter().map(|c| (&c.name, &c.image, Some(c))).collect()),
        ("initContainers", spec.init_containers.iter().flatten().map(|c| (&c.name, &c.image, Some(c))).collect()),
        (
            "ephemeralContainers",
            spec.ephemeral_containers.iter().flatten().map(|c| (&c.name, &c.image, None)).collect(),
        ),
    ];
    for (list, containers) in lists {
        for (i, (name, image, container)) in containers.into_iter().enumerate() {
            match image {
                Some(img) if !img.is_empty() => push(img.clone(), How::PodSpec),
                _ => return Err(DocumentError::NoImage { what: what.into(), container: name.clone() }),
            }
            if let Some(c) = container {
                let base = format!("{at}.{list}[{i}]");
                let env = c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref()));
                container_references(&base, c.command.as_deref(), c.args.as_deref(), env, push);
            }
        }
    }
    Ok(())
}

/// References in a container's command words, arguments and environment variables.
fn container_references<'a>(
    base: &str,
    command: Option<&[String]>,
    args: Option<&[String]>,
    env: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    push: &mut impl FnMut(String, How),
) {
    for (field, words) in [("command", command), ("args", args)] {
        let words = words.unwrap_or_default();
        for (i, word) in words.iter().enumerate() {
            let (flag, value, at) = match word.split_once('=') {
                Some((flag, value)) => (flag, value, i),
                None => match words.get(i + 1) {
                    Some(next) if word.starts_with('-') && !next.starts_with('-') => {
                        (word.as_str(), next.as_str(), i + 1)
                    }
                    _ => continue,
                },
            };
            let named = flag.to_ascii_lowercase().contains("image");
            if flag.starts_with('-') && looks_like_reference(value) && (named || names_its_registry(value)) {
                push(value.to_string(), How::OutsidePodSpec { field: format!("{base}.{field}[{at}]") });
            }
        }
    }
    for (i, (name, value)) in env.enumerate() {
        if let Some(value) = value
            && looks_like_reference(value)
            && (name.to_ascii_uppercase().contains("IMAGE") || names_its_registry(value))
        {
            push(value.to_string(), How::OutsidePodSpec { field: format!("{base}.env[{i}] {name}") });
        }
    }
}

/// A string that is certainly meant as an image reference: no spaces, no URL, an explicit tag
/// or digest, and valid.
pub fn looks_like_reference(s: &str) -> bool {
    let s = s.trim();
    let last = s.rsplit('/').next().unwrap_or(s);
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && !s.contains("://")
        && !s.contains("{{")
        && !s.starts_with(['-', '/', '.', '$'])
        && (s.contains('@') || last.contains(':'))
        && ImageRef::parse(s).is_ok()
}

/// A reference that names its registry (`quay.io/…`, `registry.local:5000/…`): certain enough
/// to be an image even where the flag or variable does not say so
/// (`--prometheus-config-reloader=quay.io/prometheus-operator/prometheus-config-reloader:v0.80.0`).
fn names_its_registry(s: &str) -> bool {
    match s.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// Whether `apiVersion` belongs to a custom resource rather than a built-in kind: built-in groups
/// have no dot (`apps`, `batch`, the core group) or end in `.k8s.io`.
fn is_custom_resource(api_version: &str) -> bool {
    match api_version.rsplit_once('/') {
        Some((group, _)) => group.contains('.') && !group.ends_with(".k8s.io"),
        None => false,
    }
}

/// For kinds ferry has no type for: the `image` of every object in any list named
/// `containers`, `initContainers`, `ephemeralContainers` or `…Containers` (with their arguments
/// and environment), and, in custom resources, fields named `…image`/`…Image`.
fn walk_generic(v: &Value, path: &str, custom: bool, push: &mut impl FnMut(String, How)) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let containers_like = k == "containers" || k.ends_with("Containers");
                if containers_like && let Some(items) = child.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(img) = item.get("image").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                            push(img.to_string(), How::PodSpec);
                        }
                        generic_container_references(item, &format!("{here}[{i}]"), push);
                    }
                    continue;
                }
                if custom
                    && (k == "image" || k.ends_with("Image"))
                    && let Some(r) = field_reference(child)
                {
                    push(r, How::OutsidePodSpec { field: here });
                    continue;
                }
                walk_generic(child, &here, custom, push);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_generic(item, &format!("{path}[{i}]"), custom, push);
            }
        }
        _ => {}
    }
}

/// The command, arguments and environment of an untyped container object.
fn generic_container_references(item: &Value, base: &str, push: &mut impl FnMut(String, How)) {
    let words = |k: &str| -> Option<Vec<String>> {
        item.get(k)?.as_array().map(|a| a.iter().map(|w| w.as_str().unwrap_or_default().to_string()).collect())
    };
    let (command, args) = (words("command"), words("args"));
    let env: Vec<(&str, Option<&str>)> = item
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| (e.get("name").and_then(Value::as_str).unwrap_or(""), e.get("value").and_then(Value::as_str)))
                .collect()
        })
        .unwrap_or_default();
    container_references(base, command.as_deref(), args.as_deref(), env.into_iter(), push);
}

/// A custom resource's image field: a reference string, or `{registry?, repository, tag?, digest?}`.
fn field_reference(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if looks_like_reference(s) => Some(s.trim().to_string()),
        Value::Object(m) => {
            let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
            let repo = get("repository").or_else(|| get("name"))?;
            let mut r = match get("registry") {
                Some(reg) => format!("{}/{repo}", reg.trim_end_matches('/')),
                None => repo.to_string(),
            };
            if let Some(t) = get("tag") {
                r.push_str(&format!(":{t}"));
            }
            if let Some(d) = get("digest") {
                r.push_str(&format!("@{d}"));
            }
            looks_like_reference(&r).then_some(r)
        }
        _ => None,
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
#[cfg(test)]
mod tests {
    use super::*;

    /// (normalised reference, the lines naming it), sorted by reference; pod-spec images only.
    fn scan(yaml: &str) -> Result<Vec<(String, Vec<usize>)>, Vec<String>> {
        let (hits, errors) = scan_stream(yaml, "bundle/m.yaml");
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut by_ref: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for h in hits.into_iter().filter(|h| h.how == How::PodSpec) {
            let lines =
                by_ref.entry(ImageRef::parse(&h.image).map_err(|e| vec![e.to_string()])?.to_string()).or_default();
            if !lines.contains(&h.line) {
                lines.push(h.line);
            }
        }
        Ok(by_ref.into_iter().collect())
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
        assert_eq!(busybox, &[10, 30], "the lines naming it");
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
        assert!(errs[0].contains("Bad:Ref"), "{errs:?}");
        let errs =
            scan("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n").unwrap_err();
        assert!(errs[0].contains("container `a` has no image"), "{errs:?}");
    }

    #[test]
    fn references_outside_pod_specs_name_their_field() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: operator}
spec:
  selector: {}
  template:
    spec:
      containers:
        - name: op
          image: quay.io/acme/operator:1.4
          args:
            - --config-reloader-image=quay.io/acme/reloader:0.9
            - --image-pull-policy=Always
            - --sidecar-image
            - ghcr.io/acme/sidecar@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
            - --log-level=info
            - --prometheus-config-reloader=quay.io/acme/config-reloader:0.80
            - --server=example.com:443
          env:
            - {name: WORKER_IMAGE, value: "docker.io/acme/worker:2"}
            - {name: IMAGE_PULL_SECRET, value: regcred}
---
apiVersion: acme.example.com/v1
kind: Cluster
metadata: {name: db}
spec:
  image: "docker.io/acme/db:15.2"
  backup:
    baseImage: {registry: quay.io, repository: acme/backup, tag: "3"}
  containers: [{name: c, image: "docker.io/acme/in-cr:1", args: ["--helper-image=docker.io/acme/helper:1"]}]
  notImage: {x: 1}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {image: "docker.io/acme/in-configmap:1"}
"#;
        let (hits, errors) = scan_stream(yaml, "bundle/op.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<(&str, String, usize)> = hits
            .iter()
            .map(|h| {
                let how = match &h.how {
                    How::PodSpec => "pod spec".to_string(),
                    How::OutsidePodSpec { field } => field.clone(),
                    How::Guessed => "guessed".to_string(),
                };
                (h.image.as_str(), how, h.line)
            })
            .collect();
        let digest = "ghcr.io/acme/sidecar@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            got,
            [
                ("quay.io/acme/operator:1.4", "pod spec".to_string(), 11),
                ("quay.io/acme/reloader:0.9", "spec.template.spec.containers[0].args[0]".to_string(), 13),
                (digest, "spec.template.spec.containers[0].args[3]".to_string(), 16),
                ("quay.io/acme/config-reloader:0.80", "spec.template.spec.containers[0].args[5]".to_string(), 18),
                ("docker.io/acme/worker:2", "spec.template.spec.containers[0].env[0] WORKER_IMAGE".to_string(), 21),
                // Assembled from several fields, so not written anywhere: the document's line.
                ("quay.io/acme/backup:3", "spec.backup.baseImage".to_string(), 24),
                ("docker.io/acme/in-cr:1", "pod spec".to_string(), 31),
                ("docker.io/acme/helper:1", "spec.containers[0].args[0]".to_string(), 31),
                ("docker.io/acme/db:15.2", "spec.image".to_string(), 28),
            ]
        );
        assert!(hits.iter().all(|h| h.object == "Deployment operator" || h.object == "Cluster db"));
    }

    #[test]
    fn helm_source_comments_name_the_template() {
        let text = "---\n# Source: web/templates/deploy.yaml\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: 'nginx:1.27'}]}\n";
        let (hits, _) = scan_stream(text, "chart web");
        assert_eq!(hits[0].template.as_deref(), Some("web/templates/deploy.yaml"));
        assert_eq!((hits[0].line, hits[0].object.as_str()), (6, "Pod p"));
    }
}
