//! Kustomizations: a directory holding a `kustomization.yaml` is rendered on the build machine
//! with `kustomize build` or `kubectl kustomize`, so the bundle carries the stream the cluster
//! will see and the nodes need no kustomize.
//!
//! A kustomization may name remote sources (git repositories, URLs) that kustomize would fetch
//! while rendering. A build that fetched them would carry whatever the remote held that day, and
//! an air-gapped build machine cannot fetch them at all; so [`render`] refuses them before the
//! tool runs, listing each with the kustomization file that names it ([`remote_references`]),
//! and asks for them to be vendored into the bundle.

use crate::tools::{self, Ran};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The names that make a directory a kustomization, in the order kustomize tries them.
pub const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// How long rendering one kustomization may take.
pub const RENDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The fields whose entries kustomize loads: files, kustomization directories, or remote sources.
const REFERENCE_FIELDS: [&str; 6] = ["resources", "bases", "components", "generators", "transformers", "validators"];

/// The fields whose local entries must exist. Generators, transformers and validators may hold
/// inline configs instead of paths, so a string there that names no file is not an error.
const PATH_FIELDS: [&str; 3] = ["resources", "bases", "components"];

/// The file that makes `dir` a kustomization: `kustomization.yaml`, `kustomization.yml` or
/// `Kustomization`, the first that exists in kustomize's order.
pub fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES.iter().map(|name| dir.join(name)).find(|p| p.is_file())
}

/// Whether `file` is named like a kustomization file.
pub fn is_kustomization_name(file: &Path) -> bool {
    file.file_name().and_then(|n| n.to_str()).is_some_and(|n| KUSTOMIZATION_FILES.contains(&n))
}

/// The program that renders kustomizations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renderer {
    /// A kustomize binary, run as `kustomize build DIR`.
    Kustomize(PathBuf),
    /// kubectl, whose built-in kustomize is run as `kubectl kustomize DIR`.
    Kubectl(PathBuf),
}

impl Renderer {
    /// `FERRY_KUSTOMIZE` (the path of a kustomize binary), else `FERRY_KUBECTL` (the path of a
    /// kubectl), else `bundle_kubectl` (the bundle's own kubectl, when this machine can run it),
    /// else `kustomize` on `PATH`, else `kubectl` on `PATH`; `None` when there is none of them.
    pub fn find(bundle_kubectl: Option<PathBuf>) -> Option<Renderer> {
        pick(|name| std::env::var_os(name), bundle_kubectl, tools::on_path)
    }

    /// For build logs and messages: `kubectl kustomize (/usr/bin/kubectl)`.
    pub fn describe(&self) -> String {
        match self {
            Renderer::Kustomize(p) => format!("kustomize build ({})", p.display()),
            Renderer::Kubectl(p) => format!("kubectl kustomize ({})", p.display()),
        }
    }

    /// The program run.
    pub fn program(&self) -> &Path {
        match self {
            Renderer::Kustomize(p) | Renderer::Kubectl(p) => p,
        }
    }

    /// The arguments that render `dir`.
    fn args<'a>(&self, dir: &'a Path) -> [&'a OsStr; 2] {
        let verb = match self {
            Renderer::Kustomize(_) => "build",
            Renderer::Kubectl(_) => "kustomize",
        };
        [OsStr::new(verb), dir.as_os_str()]
    }
}

/// [`Renderer::find`] with the environment and `PATH` passed in. The bundle's kubectl comes
/// before any program on `PATH`: its built-in kustomize is the one that ships with the cluster's
/// version, the one `kubectl apply -k` would use at the site.
fn pick(
    env: impl Fn(&str) -> Option<OsString>,
    bundle_kubectl: Option<PathBuf>,
    on_path: impl Fn(&str) -> Option<PathBuf>,
) -> Option<Renderer> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("FERRY_KUSTOMIZE")
        .map(Renderer::Kustomize)
        .or_else(|| set("FERRY_KUBECTL").map(Renderer::Kubectl))
        .or_else(|| bundle_kubectl.map(Renderer::Kubectl))
        .or_else(|| on_path("kustomize").map(Renderer::Kustomize))
        .or_else(|| on_path("kubectl").map(Renderer::Kubectl))
}

/// A remote source named in a kustomization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRef {
    /// The kustomization file that names it.
    pub file: PathBuf,
    /// The field it is listed under: `resources`, `bases`, `components`, …
    pub field: &'static str,
    /// The entry as written.
    pub entry: String,
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} entry `{}`", self.file.display(), self.field, self.entry)
    }
}

/// Why a kustomization cannot be rendered. Every message names the file or, from [`render`], the
/// directory as the spec writes it.
#[derive(Debug, thiserror::Error)]
pub enum KustomizeError {
    /// A kustomization file cannot be read.
    #[error("{}: cannot be read: {cause}", file.display())]
    Read {
        /// The kustomization file.
        file: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A kustomization file is not valid YAML.
    #[error("{}: not valid YAML: {cause}", file.display())]
    Parse {
        /// The kustomization file.
        file: PathBuf,
        /// Why (with its line).
        cause: Box<serde_saphyr::Error>,
    },
    /// A kustomization file is YAML but not shaped as a kustomization.
    #[error("{}: {why}", file.display())]
    Shape {
        /// The kustomization file.
        file: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
    /// A local entry names a path that does not exist.
    #[error("{}: {field} entry `{entry}` names {}, which does not exist", file.display(), path.display())]
    Missing {
        /// The kustomization file.
        file: PathBuf,
        /// The field it is listed under.
        field: &'static str,
        /// The entry as written.
        entry: String,
        /// Where it leads from the kustomization's directory.
        path: PathBuf,
    },
    /// A problem in the kustomizations under a directory being rendered.
    #[error("{shown}: {problem}")]
    Tree {
        /// The directory as the spec writes it.
        shown: String,
        /// The problem, naming its file.
        problem: Box<KustomizeError>,
    },
    /// The directory holds no kustomization file.
    #[error("{shown}: {} holds no kustomization.yaml, kustomization.yml or Kustomization", dir.display())]
    NotKustomization {
        /// The directory as the spec writes it.
        shown: String,
        /// The directory on this machine.
        dir: PathBuf,
    },
    /// The kustomization names remote sources.
    #[error(
        "{shown}: the kustomization names {} remote source{}, which an air-gapped build cannot fetch; vendor {} into the bundle and refer to the local copy instead:\n{}",
        refs.len(),
        if refs.len() == 1 { "" } else { "s" },
        if refs.len() == 1 { "it" } else { "each" },
        refs.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n")
    )]
    Remote {
        /// The directory as the spec writes it.
        shown: String,
        /// Every remote source, in the order kustomize would load them.
        refs: Vec<RemoteRef>,
    },
    /// Neither kustomize nor kubectl was found.
    #[error(
        "{shown}: is a kustomization, and no kustomize or kubectl was found on the build machine to render it; install kubectl or kustomize, or set FERRY_KUBECTL or FERRY_KUSTOMIZE to the path of one"
    )]
    NoRenderer {
        /// The directory as the spec writes it.
        shown: String,
    },
    /// The renderer could not be started on this machine.
    #[error("{shown}: {renderer} could not be started: {cause}")]
    NotRunnable {
        /// The directory as the spec writes it.
        shown: String,
        /// [`Renderer::describe`].
        renderer: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The renderer ran and failed, or did not finish in time.
    #[error("{shown}: {renderer} {why}")]
    Failed {
        /// The directory as the spec writes it.
        shown: String,
        /// [`Renderer::describe`].
        renderer: String,
        /// What happened, with the end of its stderr.
        why: String,
    },
}

/// Every remote source named by the kustomization in `dir` and by the local kustomizations it
/// reaches through its entries, depth first in the order kustomize loads them. Each
/// kustomization is read once, so shared bases are listed once and cycles end.
///
/// A kustomization file that cannot be read or parsed, or a `resources`, `bases` or
/// `components` entry naming a local path that does not exist, is an error.
pub fn remote_references(dir: &Path) -> Result<Vec<RemoteRef>, KustomizeError> {
    let mut hits = Vec::new();
    walk(dir, &mut HashSet::new(), &mut hits)?;
    Ok(hits)
}

fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, hits: &mut Vec<RemoteRef>) -> Result<(), KustomizeError> {
    // kustomize reports a cycle with its own error when it renders; here it must only not loop.
    if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())) {
        return Ok(());
    }
    let Some(file) = kustomization_file(dir) else {
        return Ok(());
    };
    let fields = read(&file)?;
    for field in REFERENCE_FIELDS {
        for entry in entries(&file, &fields, field)? {
            if is_remote(entry) {
                hits.push(RemoteRef { file: file.clone(), field, entry: entry.to_string() });
                continue;
            }
            // Inline configs, and local git repositories that kustomize clones without a network.
            if entry.contains('\n') || entry.starts_with("file://") {
                continue;
            }
            let path = tidy(dir.join(entry));
            if path.is_dir() {
                walk(&path, seen, hits)?;
            } else if !path.exists() && PATH_FIELDS.contains(&field) {
                return Err(KustomizeError::Missing { file, field, entry: entry.to_string(), path });
            }
        }
    }
    Ok(())
}

/// The top-level fields of a kustomization file. An empty file is an empty kustomization, as
/// kustomize reads it.
fn read(file: &Path) -> Result<Map<String, Value>, KustomizeError> {
    let text =
        std::fs::read_to_string(file).map_err(|cause| KustomizeError::Read { file: file.to_path_buf(), cause })?;
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value = serde_saphyr::from_str(&text)
        .map_err(|cause| KustomizeError::Parse { file: file.to_path_buf(), cause: Box::new(cause) })?;
    match value {
        Value::Object(fields) => Ok(fields),
        Value::Null => Ok(Map::new()),
        other => Err(KustomizeError::Shape {
            file: file.to_path_buf(),
            why: format!("is {}, not a mapping of kustomization fields", kind(&other)),
        }),
    }
}

/// The string entries of list `field`; none when it is absent or null.
fn entries<'a>(file: &Path, fields: &'a Map<String, Value>, field: &str) -> Result<Vec<&'a str>, KustomizeError> {
    let shape = |why: String| KustomizeError::Shape { file: file.to_path_buf(), why };
    match fields.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| shape(format!("{field}[{i}] is {}, not a path or URL", kind(item))))
            })
            .collect(),
        Some(other) => Err(shape(format!("`{field}` is {}, not a list", kind(other)))),
    }
}

/// For messages: what a YAML value is.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Whether kustomize would fetch `entry` from elsewhere: an HTTP(S) URL, a git URL in any of the
/// forms kustomize accepts (`git::…`, `ssh://…`, `user@host:…`, `gh:…`, `github.com/…`), or
/// anything carrying the query parameters of a remote base (`?ref=`, `?version=`, …).
fn is_remote(entry: &str) -> bool {
    let entry = entry.trim();
    let lower = entry.to_ascii_lowercase();
    if ["http://", "https://", "git::", "ssh://", "gh:", "github.com/", "github.com:"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
    {
        return true;
    }
    // scp-like `git@host:org/repo`: a user and host before the first colon, and no slash there.
    if let Some((user_host, _)) = entry.split_once(':')
        && user_host.contains('@')
        && !user_host.contains('/')
    {
        return true;
    }
    entry.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| matches!(pair.split('=').next(), Some("ref" | "version" | "timeout" | "submodules")))
    })
}

/// `path` with `.` and `name/..` removed, for messages, when that is still the same file: a
/// symlinked directory followed by `..` leads elsewhere than the text suggests, and then `path`
/// is kept as it is.
fn tidy(path: PathBuf) -> PathBuf {
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(clean.components().next_back(), Some(Component::Normal(_))) => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    if clean.canonicalize().ok() == path.canonicalize().ok() { clean } else { path }
}

/// Renders the kustomization in `dir` (`shown` as the spec writes it, for messages) and returns
/// the YAML stream. Remote sources anywhere in its tree are refused before `renderer` runs;
/// `renderer` is given at most [`RENDER_TIMEOUT`].
pub fn render(dir: &Path, shown: &str, renderer: Option<&Renderer>) -> Result<String, KustomizeError> {
    if kustomization_file(dir).is_none() {
        return Err(KustomizeError::NotKustomization { shown: shown.into(), dir: dir.to_path_buf() });
    }
    let refs = remote_references(dir)
        .map_err(|problem| KustomizeError::Tree { shown: shown.into(), problem: Box::new(problem) })?;
    if !refs.is_empty() {
        return Err(KustomizeError::Remote { shown: shown.into(), refs });
    }
    let Some(renderer) = renderer else {
        return Err(KustomizeError::NoRenderer { shown: shown.into() });
    };
    match tools::run(renderer.program(), &renderer.args(dir), None, RENDER_TIMEOUT) {
        Ran::Ok(stream) => Ok(stream),
        Ran::NotRunnable(cause) => {
            Err(KustomizeError::NotRunnable { shown: shown.into(), renderer: renderer.describe(), cause })
        }
        Ran::Failed(why) => Err(KustomizeError::Failed { shown: shown.into(), renderer: renderer.describe(), why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn kustomization_file_names() {
        let d = tempfile::tempdir().unwrap();
        for name in KUSTOMIZATION_FILES {
            let dir = d.path().join(format!("with-{name}"));
            write(&dir.join(name), "resources: []\n");
            assert_eq!(kustomization_file(&dir), Some(dir.join(name)));
        }
        let both = d.path().join("both");
        write(&both.join("Kustomization"), "");
        write(&both.join("kustomization.yml"), "");
        assert_eq!(kustomization_file(&both), Some(both.join("kustomization.yml")));

        let none = d.path().join("none");
        write(&none.join("deployment.yaml"), "kind: Deployment\n");
        write(&none.join("kustomization.json"), "{}");
        std::fs::create_dir_all(none.join("kustomization.yaml")).unwrap();
        assert_eq!(kustomization_file(&none), None);
        assert_eq!(kustomization_file(&d.path().join("absent")), None);
    }

    #[test]
    fn remote_forms() {
        for remote in [
            "https://github.com/org/repo//deploy?ref=v1",
            "http://example.com/all.yaml",
            "HTTPS://example.com/all.yaml",
            "git::https://example.com/org/repo.git//base",
            "git@github.com:org/repo.git//base",
            "ssh://git@example.com/org/repo.git",
            "github.com/org/repo//path?ref=x",
            "github.com/org/repo",
            "gh:org/repo",
            "gitlab.com/org/repo/path?ref=main",
            "example.com/org/repo?version=v2",
            "example.com/org/repo?timeout=2m&ref=main",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["../../base", "deployment.yaml", "config/", "/srv/base", "./a:b", "file:///srv/repo", "x?y=1"] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn remote_references_follow_local_kustomizations() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(&root.join("base/kustomization.yaml"), "resources:\n  - deployment.yaml\n");
        write(&root.join("base/deployment.yaml"), "kind: Deployment\n");
        write(
            &root.join("components/tls/kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources:\n  - git@github.com:org/certs.git//tls?ref=v2\n",
        );
        write(
            &root.join("overlays/prod/kustomization.yaml"),
            "resources:\n  - ../../base\n  - https://github.com/org/repo//deploy?ref=v1\n  - github.com/org/other/path?ref=main\n  - ../loop\ncomponents:\n  - ../../components/tls\n",
        );
        // A cycle back to prod, and a second path to base: each is read once.
        write(
            &root.join("overlays/loop/Kustomization"),
            "resources:\n  - ../prod\n  - ../../base\nbases:\n  - ssh://git@example.com/org/repo.git\n",
        );
        let hits = remote_references(&root.join("overlays/prod")).unwrap();
        let prod = root.join("overlays/prod/kustomization.yaml");
        let hit = |file: &Path, field, entry: &str| RemoteRef { file: file.to_path_buf(), field, entry: entry.into() };
        assert_eq!(
            hits,
            [
                hit(&prod, "resources", "https://github.com/org/repo//deploy?ref=v1"),
                hit(&prod, "resources", "github.com/org/other/path?ref=main"),
                hit(&root.join("overlays/loop/Kustomization"), "bases", "ssh://git@example.com/org/repo.git"),
                hit(
                    &root.join("components/tls/kustomization.yaml"),
                    "resources",
                    "git@github.com:org/certs.git//tls?ref=v2"
                ),
            ]
        );
        assert_eq!(remote_references(&root.join("base")).unwrap(), []);
    }

    #[test]
    fn broken_kustomizations_name_their_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("app/kustomization.yaml");

        write(&file, "resources:\n  - deployment.yaml\n  - ../shared\n");
        write(&d.path().join("app/deployment.yaml"), "kind: Deployment\n");
        let err = remote_references(&d.path().join("app")).unwrap_err();
        assert!(
            matches!(&err, KustomizeError::Missing { file: f, field: "resources", entry, path }
                if *f == file && entry == "../shared" && *path == d.path().join("shared")),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()) && msg.contains("`../shared`"), "{msg}");

        write(&file, "resources: [deployment.yaml\n");
        let err = remote_references(&d.path().join("app")).unwrap_err();
        assert!(matches!(&err, KustomizeError::Parse { file: f, .. } if *f == file), "{err}");
        assert!(err.to_string().starts_with(&format!("{}: not valid YAML", file.display())), "{err}");

        write(&file, "resources: deployment.yaml\n");
        let err = remote_references(&d.path().join("app")).unwrap_err().to_string();
        assert!(err.contains("`resources` is a string, not a list"), "{err}");

        write(&file, "");
        assert_eq!(remote_references(&d.path().join("app")).unwrap(), []);
    }

    #[test]
    fn finding_a_renderer() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
        };
        let path = |names: &'static [&'static str]| {
            move |name: &str| names.contains(&name).then(|| PathBuf::from(format!("/usr/bin/{name}")))
        };
        let bundle = || Some(PathBuf::from("/bundle/usr/bin/kubectl"));
        let both = &["kustomize", "kubectl"][..];

        let k = pick(
            env(&[("FERRY_KUSTOMIZE", "/opt/kustomize"), ("FERRY_KUBECTL", "/opt/kubectl")]),
            bundle(),
            path(both),
        );
        assert_eq!(k, Some(Renderer::Kustomize("/opt/kustomize".into())));
        let k = pick(env(&[("FERRY_KUSTOMIZE", ""), ("FERRY_KUBECTL", "/opt/kubectl")]), bundle(), path(both));
        assert_eq!(k, Some(Renderer::Kubectl("/opt/kubectl".into())));
        assert_eq!(pick(env(&[]), bundle(), path(both)), Some(Renderer::Kubectl("/bundle/usr/bin/kubectl".into())));
        assert_eq!(pick(env(&[]), None, path(both)), Some(Renderer::Kustomize("/usr/bin/kustomize".into())));
        assert_eq!(pick(env(&[]), None, path(&["kubectl"])), Some(Renderer::Kubectl("/usr/bin/kubectl".into())));
        assert_eq!(pick(env(&[]), None, path(&[])), None);

        assert_eq!(Renderer::Kubectl("/usr/bin/kubectl".into()).describe(), "kubectl kustomize (/usr/bin/kubectl)");
        assert_eq!(Renderer::Kustomize("/opt/kustomize".into()).describe(), "kustomize build (/opt/kustomize)");
    }

    /// A stand-in for kustomize and kubectl, so these tests need neither. It records its
    /// arguments in `ran` beside itself, then prints a fixed stream for `kustomize build DIR` or
    /// `kubectl kustomize DIR`; any other call, or a DIR holding `stand-in-fails`, exits 1.
    const STAND_IN: &str = r#"#!/bin/sh
# stand-in renderer for ferry's unit tests; not kustomize, not kubectl
echo "$*" > "$(dirname "$0")/ran"
if [ "$#" -ne 2 ] || { [ "$1" != build ] && [ "$1" != kustomize ]; }; then
  echo "stand-in: unexpected arguments: $*" >&2
  exit 1
fi
if [ -e "$2/stand-in-fails" ]; then
  echo "Error: accumulating resources: stand-in failure" >&2
  exit 1
fi
cat <<'EOF'
apiVersion: v1
kind: ConfigMap
metadata:
  name: from-the-stand-in
EOF
"#;

    /// The stand-in written to `dir`, and the file it leaves when run.
    fn stand_in(dir: &Path) -> (PathBuf, PathBuf) {
        let script = dir.join("stand-in-renderer");
        write(&script, STAND_IN);
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (script, dir.join("ran"))
    }

    #[test]
    fn render_runs_the_renderer() {
        let tools = tempfile::tempdir().unwrap();
        let (script, ran) = stand_in(tools.path());
        let d = tempfile::tempdir().unwrap();
        let app = d.path().join("app");
        write(&app.join("kustomization.yaml"), "resources:\n  - configmap.yaml\n");
        write(&app.join("configmap.yaml"), "kind: ConfigMap\n");

        let want = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-the-stand-in\n";
        let out = render(&app, "spec.manifests[0] app", Some(&Renderer::Kubectl(script.clone()))).unwrap();
        assert_eq!(out, want);
        assert_eq!(std::fs::read_to_string(&ran).unwrap().trim(), format!("kustomize {}", app.display()));
        let out = render(&app, "spec.manifests[0] app", Some(&Renderer::Kustomize(script.clone()))).unwrap();
        assert_eq!(out, want);
        assert_eq!(std::fs::read_to_string(&ran).unwrap().trim(), format!("build {}", app.display()));

        write(&app.join("stand-in-fails"), "");
        let err = render(&app, "spec.manifests[0] app", Some(&Renderer::Kubectl(script.clone()))).unwrap_err();
        assert!(matches!(err, KustomizeError::Failed { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("spec.manifests[0] app: kubectl kustomize ("), "{msg}");
        assert!(msg.contains("Error: accumulating resources: stand-in failure"), "{msg}");

        let missing = Renderer::Kubectl(tools.path().join("no-such-kubectl"));
        let err = render(&app, "spec.manifests[0] app", Some(&missing)).unwrap_err();
        assert!(matches!(err, KustomizeError::NotRunnable { .. }), "{err}");
    }

    #[test]
    fn render_refuses_before_running() {
        let tools = tempfile::tempdir().unwrap();
        let (script, ran) = stand_in(tools.path());
        let renderer = Renderer::Kustomize(script);
        let d = tempfile::tempdir().unwrap();
        let shown = "spec.manifests[1] overlays/prod";
        let prod = d.path().join("overlays/prod");
        write(&d.path().join("base/kustomization.yaml"), "resources:\n  - https://example.com/all.yaml\n");
        write(&prod.join("kustomization.yaml"), "resources:\n  - ../../base\n  - github.com/org/other/path?ref=main\n");

        let err = render(&prod, shown, Some(&renderer)).unwrap_err();
        let KustomizeError::Remote { refs, .. } = &err else { panic!("{err}") };
        assert_eq!(refs.len(), 2);
        let msg = err.to_string();
        for want in [
            shown,
            "air-gapped",
            "vendor",
            &format!(
                "{}: resources entry `https://example.com/all.yaml`",
                d.path().join("base/kustomization.yaml").display()
            ),
            &format!(
                "{}: resources entry `github.com/org/other/path?ref=main`",
                prod.join("kustomization.yaml").display()
            ),
        ] {
            assert!(msg.contains(want), "{want} not in {msg}");
        }
        assert!(!ran.exists(), "the renderer ran");

        write(&prod.join("kustomization.yaml"), "resources:\n  - ../../missing\n");
        let err = render(&prod, shown, Some(&renderer)).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{shown}: {}", prod.join("kustomization.yaml").display())), "{err}");
        assert!(err.contains("`../../missing`"), "{err}");
        assert!(!ran.exists(), "the renderer ran");

        write(&prod.join("kustomization.yaml"), "resources: []\n");
        let err = render(&prod, shown, None).unwrap_err().to_string();
        for want in [shown, "no kustomize or kubectl was found", "FERRY_KUBECTL", "FERRY_KUSTOMIZE"] {
            assert!(err.contains(want), "{want} not in {err}");
        }

        let err = render(&d.path().join("base/.."), "spec.manifests[2] .", Some(&renderer)).unwrap_err();
        assert!(matches!(err, KustomizeError::NotKustomization { .. }), "{err}");
        assert!(!ran.exists(), "the renderer ran");
    }
}
