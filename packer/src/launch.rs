//! `spec.launch`: the bundle's launch steps, the apps applied once the control plane is up. Each
//! step is exactly one of `{manifests: PATH, namespace: NS}`, `{chart: PATH, values: PATH or
//! [PATH, …], namespace: NS, release: NAME}` or `{run: COMMAND}`. Paths are relative to the spec's directory and must lie
//! inside what the bundle carries (manifests inside `spec.manifests`, charts inside `spec.charts`,
//! values files inside either). [`resolve`] checks all that and maps every path onto the payload
//! entry path the builder gives it (`bundle/<path>`), which is what the installer's runner
//! extracts and hands to kubectl, helm or sh on master0. The builder records the result in the
//! payload metadata as `launch` (`ferry_core::launch::LaunchStep`).
//!
//! It reads the spec through [`SpecPaths`], which `spec::Bundle` implements, so the spec can
//! check its launch steps when it loads without this module depending on it.

use crate::paths::PathError;
use ferry_core::launch::{LaunchStep, LaunchStepFields, StepError, ValuesFiles};
use std::path::{Path, PathBuf};

/// What resolving the steps needs from the loaded spec.
pub trait SpecPaths {
    /// The spec file, for messages.
    fn file(&self) -> &Path;
    /// The spec's directory (canonical).
    fn dir(&self) -> &Path;
    /// `spec.launch` as written.
    fn launch(&self) -> &[LaunchStepFields];
    /// `spec.manifests` paths, resolved.
    fn manifest_roots(&self) -> Result<Vec<PathBuf>, PathError>;
    /// `spec.charts` paths, resolved.
    fn chart_roots(&self) -> Result<Vec<PathBuf>, PathError>;
    /// Resolves `rel` (from field `field`) inside the spec's directory.
    fn resolve(&self, field: &str, rel: &str) -> Result<PathBuf, PathError>;
}

/// A launch step that cannot be used. Each variant names the spec file and the step
/// (`spec.launch[2]`).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// None or several of `manifests`, `chart` and `run`.
    #[error("{}: {at} must have exactly one of `manifests`, `chart` or `run`; it has {has}", file.display())]
    Kinds {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
        /// What it has, in words.
        has: String,
    },
    /// `values` without `chart`.
    #[error("{}: {at}: `values` belongs to a `chart` step", file.display())]
    Values {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
    },
    /// `namespace` on a `run` step.
    #[error(
        "{}: {at}: `namespace` belongs to a `manifests` or `chart` step (a `run` step sets its own)",
        file.display()
    )]
    NamespaceOnRun {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
    },
    /// A namespace that is no DNS label.
    #[error(
        "{}: {at}.namespace `{namespace}` must be 1-63 lowercase letters, digits or `-`, starting and ending with a letter or digit",
        file.display()
    )]
    Namespace {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
        /// The namespace as written.
        namespace: String,
    },
    /// An empty `run`.
    #[error("{}: {at}.run is empty", file.display())]
    EmptyRun {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
    },
    /// A path outside what the bundle carries.
    #[error(
        "{}: {at}.{field} `{rel}` is not carried by the bundle: it must be inside {carried_by} (add it, or its directory, there)",
        file.display()
    )]
    NotCarried {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
        /// `manifests`, `chart` or `values`.
        field: &'static str,
        /// The path as written.
        rel: String,
        /// The spec fields that may carry it.
        carried_by: &'static str,
    },
    /// A step the shared launch-step rules refuse.
    #[error("{}: {at}: {cause}", file.display())]
    Step {
        /// The spec file.
        file: PathBuf,
        /// The step.
        at: String,
        /// Why.
        cause: StepError,
    },
    /// A path that cannot be resolved.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Checks `spec.launch` and returns the steps with payload entry paths, in order.
pub fn resolve(bundle: &impl SpecPaths) -> Result<Vec<LaunchStep>, LaunchError> {
    if bundle.launch().is_empty() {
        return Ok(Vec::new());
    }
    let manifests = bundle.manifest_roots()?;
    let charts = bundle.chart_roots()?;
    let both: Vec<PathBuf> = manifests.iter().chain(&charts).cloned().collect();
    let mut out = Vec::with_capacity(bundle.launch().len());
    for (i, s) in bundle.launch().iter().enumerate() {
        let at = format!("spec.launch[{i}]");
        check_step(bundle.file(), &at, s)?;
        let map = |field, rel: &str, within: &[PathBuf], carried_by| -> Result<String, LaunchError> {
            map_path(bundle, &at, Carried { field, rel, within, carried_by })
        };
        let mapped = LaunchStepFields {
            manifests: s.manifests.as_deref().map(|p| map("manifests", p, &manifests, "spec.manifests")).transpose()?,
            chart: s.chart.as_deref().map(|p| map("chart", p, &charts, "spec.charts")).transpose()?,
            values: match &s.values {
                Some(v) => ValuesFiles::from_files(
                    v.files()
                        .into_iter()
                        .map(|p| map("values", p, &both, "spec.manifests or spec.charts"))
                        .collect::<Result<_, _>>()?,
                ),
                None => None,
            },
            namespace: s.namespace.clone(),
            release: s.release.clone(),
            run: s.run.clone(),
        };
        let file = bundle.file().to_path_buf();
        out.push(LaunchStep::try_from(mapped).map_err(|cause| LaunchError::Step { file, at, cause })?);
    }
    Ok(out)
}

/// The rules a step's fields follow among themselves.
fn check_step(file: &Path, at: &str, s: &LaunchStepFields) -> Result<(), LaunchError> {
    let (file, at) = (file.to_path_buf(), at.to_string());
    let given = s.kinds();
    if given.len() != 1 {
        let has = if given.is_empty() { "none".to_string() } else { format!("`{}`", given.join("` and `")) };
        return Err(LaunchError::Kinds { file, at, has });
    }
    if s.values.is_some() && s.chart.is_none() {
        return Err(LaunchError::Values { file, at });
    }
    if let Some(ns) = &s.namespace {
        if s.run.is_some() {
            return Err(LaunchError::NamespaceOnRun { file, at });
        }
        if !dns_label(ns) {
            return Err(LaunchError::Namespace { file, at, namespace: ns.clone() });
        }
    }
    if let Some(cmd) = &s.run
        && cmd.trim().is_empty()
    {
        return Err(LaunchError::EmptyRun { file, at });
    }
    Ok(())
}

/// A path of a step and the spec paths that must carry it.
struct Carried<'a> {
    field: &'static str,
    rel: &'a str,
    within: &'a [PathBuf],
    carried_by: &'static str,
}

/// The payload entry path of a step's path, which must lie inside what the bundle carries.
fn map_path(bundle: &impl SpecPaths, at: &str, c: Carried<'_>) -> Result<String, LaunchError> {
    let real = bundle.resolve(&format!("{at}.{}", c.field), c.rel)?;
    if !c.within.iter().any(|r| real.starts_with(r)) {
        return Err(LaunchError::NotCarried {
            file: bundle.file().to_path_buf(),
            at: at.to_string(),
            field: c.field,
            rel: c.rel.to_string(),
            carried_by: c.carried_by,
        });
    }
    // resolve keeps paths inside the directory; the prefix is there.
    let inner = real.strip_prefix(bundle.dir()).unwrap_or(&real).to_string_lossy().into_owned();
    Ok(if inner.is_empty() { "bundle".into() } else { format!("bundle/{inner}") })
}

/// A Kubernetes namespace name (RFC 1123 label).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Bundle;

    /// A bundle directory with manifests/{a.yaml,sub/b.yaml}, charts/app/Chart.yaml,
    /// charts/values.yaml and other/c.yaml; `launch` is appended to the spec.
    fn load(launch: &str) -> (tempfile::TempDir, Result<Bundle, crate::spec::SpecError>) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in ["rootfs", "manifests/sub", "charts/app", "other"] {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        for p in
            ["manifests/a.yaml", "manifests/sub/b.yaml", "charts/app/Chart.yaml", "charts/values.yaml", "other/c.yaml"]
        {
            std::fs::write(d.join(p), "kind: ConfigMap\n").unwrap();
        }
        let spec = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {{name: t, version: '1'}}\nspec:\n  kubernetes: {{version: v1.36.3}}\n  rootfs: [{{path: rootfs}}]\n  manifests: [{{path: manifests}}]\n  charts: [{{path: charts}}]\n  launch:\n{launch}"
        );
        std::fs::write(d.join("bundle.yaml"), spec).unwrap();
        let b = Bundle::load(&d.join("bundle.yaml"));
        (dir, b)
    }

    fn err(launch: &str) -> String {
        format!("{:#}", load(launch).1.unwrap_err())
    }

    #[test]
    fn steps_keep_their_order_and_get_payload_paths() {
        let (_d, b) = load(
            "    - manifests: manifests/a.yaml\n    - run: echo one >> /tmp/order\n    - {chart: charts/app, values: charts/values.yaml, namespace: apps}\n    - {manifests: manifests/sub, namespace: web}\n    - manifests: ./manifests\n",
        );
        let steps = resolve(&b.unwrap()).unwrap();
        let json = serde_json::to_value(&steps).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"manifests": "bundle/manifests/a.yaml"},
                {"run": "echo one >> /tmp/order"},
                {"chart": "bundle/charts/app", "values": "bundle/charts/values.yaml", "namespace": "apps"},
                {"manifests": "bundle/manifests/sub", "namespace": "web"},
                {"manifests": "bundle/manifests"},
            ])
        );
    }

    #[test]
    fn the_mapped_paths_are_entries_the_builder_writes() {
        let (_d, b) =
            load("    - manifests: manifests/sub/b.yaml\n    - {chart: charts/app, values: charts/values.yaml}\n");
        let b = b.unwrap();
        let plan = crate::builder::plan(&b).unwrap();
        for s in resolve(&b).unwrap() {
            for p in s.paths() {
                assert!(plan.contains_key(p), "{p} is not a payload entry: {:?}", plan.keys().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let e = err("    - manifests: manifests/a.yaml\n    - run: true\n      namespce: x\n");
        assert!(e.contains("namespce") && e.contains("line 12"), "{e}");
    }

    #[test]
    fn each_step_is_exactly_one_kind() {
        let e = err("    - {manifests: manifests/a.yaml, run: 'true'}\n");
        assert!(e.contains("spec.launch[0] must have exactly one of") && e.contains("`manifests` and `run`"), "{e}");
        let e = err("    - run: 'true'\n    - {namespace: x}\n");
        assert!(e.contains("spec.launch[1] must have exactly one of") && e.contains("it has none"), "{e}");
        let e = err("    - {manifests: manifests/a.yaml, values: charts/values.yaml}\n");
        assert!(e.contains("spec.launch[0]: `values` belongs to a `chart` step"), "{e}");
        let e = err("    - {run: 'true', namespace: x}\n");
        assert!(e.contains("spec.launch[0]: `namespace` belongs to"), "{e}");
        let e = err("    - {manifests: manifests/a.yaml, namespace: Web_1}\n");
        assert!(e.contains("spec.launch[0].namespace `Web_1`"), "{e}");
        let e = err("    - run: '  '\n");
        assert!(e.contains("spec.launch[0].run is empty"), "{e}");
    }

    #[test]
    fn paths_must_exist_and_be_carried() {
        let e = err("    - run: 'true'\n    - manifests: manifests/nope.yaml\n");
        assert!(e.contains("spec.launch[1].manifests `manifests/nope.yaml` does not exist"), "{e}");
        let e = err("    - manifests: other/c.yaml\n");
        assert!(
            e.contains(
                "spec.launch[0].manifests `other/c.yaml` is not carried by the bundle: it must be inside spec.manifests"
            ),
            "{e}"
        );
        let e = err("    - chart: manifests/sub\n");
        assert!(e.contains("spec.launch[0].chart `manifests/sub` is not carried") && e.contains("spec.charts"), "{e}");
        let (_d, b) =
            load("    - {chart: charts/app, values: [charts/values.yaml, manifests/a.yaml], release: app-1}\n");
        let steps = resolve(&b.unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&steps[0]).unwrap(),
            serde_json::json!({"chart": "bundle/charts/app", "values": ["bundle/charts/values.yaml", "bundle/manifests/a.yaml"], "release": "app-1"})
        );
        let e = err("    - {chart: charts/app, values: [charts/values.yaml, other/c.yaml]}\n");
        assert!(e.contains("spec.launch[0].values `other/c.yaml` is not carried"), "{e}");
        let e = err("    - {chart: charts/app, values: other/c.yaml}\n");
        assert!(e.contains("spec.launch[0].values `other/c.yaml` is not carried"), "{e}");
        let e = err("    - manifests: ../outside.yaml\n");
        assert!(e.contains("spec.launch[0].manifests `../outside.yaml`"), "{e}");
        let e = err("    - manifests: /etc/passwd\n");
        assert!(e.contains("spec.launch[0].manifests `/etc/passwd` must be relative"), "{e}");
    }

    #[test]
    fn no_launch_is_no_steps() {
        let (_d, b) = load("    []\n");
        assert!(resolve(&b.unwrap()).unwrap().is_empty());
    }
}
