//! Owns what a launch step is: the bundle's `spec.launch` entries, which the packer records in
//! the metadata (`launch`) and master0 runs once the control plane is up. A step is exactly one
//! of `{manifests: PATH, namespace}` (kubectl apply), `{chart: PATH, values, namespace}` (helm)
//! or `{run: COMMAND}` (sh). Running them is the installer's business, checking the spec the
//! packer's; this module only says what a step holds and how it reads.

use serde::{Deserialize, Serialize};

/// One step. On disk it is the flat object [`LaunchStepFields`] describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LaunchStepFields", into = "LaunchStepFields")]
pub enum LaunchStep {
    /// `kubectl apply` of a payload path (file or directory).
    Manifests {
        /// Payload path.
        path: String,
        /// Namespace to apply into.
        namespace: Option<String>,
    },
    /// `helm upgrade --install` of a chart (payload path).
    Chart {
        /// Payload path of the chart (directory or `.tgz`).
        path: String,
        /// Values files (payload paths), in the order helm lays them over the chart's.
        values: Vec<String>,
        /// Namespace of the release.
        namespace: Option<String>,
        /// The release name; by default [`LaunchStep::release_name`] of the path.
        release: Option<String>,
    },
    /// A shell command.
    Run {
        /// The command.
        command: String,
    },
}

/// A step as written in `bundle.yaml` and the metadata: one optional field per kind and
/// option. Unknown fields are refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LaunchStepFields {
    /// Manifests (file or directory) for `kubectl apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
    /// A chart for `helm upgrade --install`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// Values file, or files in order, for the chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<ValuesFiles>,
    /// Namespace for the chart or the manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The chart's release name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// A shell command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// A chart step's values: one file, or several laid over the chart's values in order (as
/// repeated `helm -f`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValuesFiles {
    /// `values: site.yaml`.
    One(String),
    /// `values: [base.yaml, site.yaml]`.
    Many(Vec<String>),
}

impl ValuesFiles {
    /// The files, in order.
    pub fn files(&self) -> Vec<&str> {
        match self {
            ValuesFiles::One(f) => vec![f.as_str()],
            ValuesFiles::Many(fs) => fs.iter().map(String::as_str).collect(),
        }
    }

    /// As written for `files`: one file as a string (what older installers read), more as a list.
    pub fn from_files(mut files: Vec<String>) -> Option<ValuesFiles> {
        match files.len() {
            0 => None,
            1 => files.pop().map(ValuesFiles::One),
            _ => Some(ValuesFiles::Many(files)),
        }
    }
}

/// Why fields are not one step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Zero kinds, or two or more.
    #[error("a launch step must have exactly one of `manifests`, `chart` or `run`; it has {0}")]
    Kinds(String),
    /// `values` without `chart`.
    #[error("`values` belongs to a `chart` step")]
    ValuesWithoutChart,
    /// `namespace` on a `run` step.
    #[error("`namespace` belongs to a `manifests` or `chart` step (a `run` step sets its own)")]
    NamespaceOnRun,
    /// `release` without `chart`.
    #[error("`release` belongs to a `chart` step")]
    ReleaseWithoutChart,
    /// A release name helm refuses.
    #[error("release `{0}` must be 1-53 lowercase letters, digits or `-`, starting and ending with a letter or digit")]
    Release(String),
}

impl LaunchStepFields {
    /// The kinds given, in `manifests`, `chart`, `run` order.
    pub fn kinds(&self) -> Vec<&'static str> {
        [("manifests", self.manifests.is_some()), ("chart", self.chart.is_some()), ("run", self.run.is_some())]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect()
    }
}

impl TryFrom<LaunchStepFields> for LaunchStep {
    type Error = StepError;

    fn try_from(f: LaunchStepFields) -> Result<LaunchStep, StepError> {
        let kinds = f.kinds();
        if kinds.len() != 1 {
            let has = if kinds.is_empty() { "none".to_string() } else { format!("`{}`", kinds.join("` and `")) };
            return Err(StepError::Kinds(has));
        }
        if f.values.is_some() && f.chart.is_none() {
            return Err(StepError::ValuesWithoutChart);
        }
        if f.namespace.is_some() && f.run.is_some() {
            return Err(StepError::NamespaceOnRun);
        }
        if let Some(r) = &f.release {
            if f.chart.is_none() {
                return Err(StepError::ReleaseWithoutChart);
            }
            if !valid_release(r) {
                return Err(StepError::Release(r.clone()));
            }
        }
        Ok(match (f.manifests, f.chart, f.run) {
            (Some(path), _, _) => LaunchStep::Manifests { path, namespace: f.namespace },
            (_, Some(path), _) => {
                let values = f.values.map(|v| v.files().into_iter().map(String::from).collect()).unwrap_or_default();
                LaunchStep::Chart { path, values, namespace: f.namespace, release: f.release }
            }
            (_, _, command) => LaunchStep::Run { command: command.unwrap_or_default() },
        })
    }
}

impl From<LaunchStep> for LaunchStepFields {
    fn from(s: LaunchStep) -> LaunchStepFields {
        match s {
            LaunchStep::Manifests { path, namespace } => {
                LaunchStepFields { manifests: Some(path), namespace, ..Default::default() }
            }
            LaunchStep::Chart { path, values, namespace, release } => LaunchStepFields {
                chart: Some(path),
                values: ValuesFiles::from_files(values),
                namespace,
                release,
                ..Default::default()
            },
            LaunchStep::Run { command } => LaunchStepFields { run: Some(command), ..Default::default() },
        }
    }
}

impl LaunchStep {
    /// The namespace whose pods `check` counts as this step's workloads.
    pub fn namespace(&self) -> Option<String> {
        match self {
            LaunchStep::Manifests { namespace, .. } | LaunchStep::Chart { namespace, .. } => namespace.clone(),
            LaunchStep::Run { .. } => None,
        }
    }

    /// The payload paths master0 must extract for this step.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            LaunchStep::Manifests { path, .. } => vec![path],
            LaunchStep::Chart { path, values, .. } => {
                std::iter::once(path.as_str()).chain(values.iter().map(String::as_str)).collect()
            }
            LaunchStep::Run { .. } => Vec::new(),
        }
    }

    /// `manifests PATH`, `chart PATH` or `run COMMAND`, with the namespace and values.
    pub fn describe(&self) -> String {
        let ns = |n: &Option<String>| n.as_deref().map(|n| format!(" in namespace {n}")).unwrap_or_default();
        match self {
            LaunchStep::Manifests { path, namespace } => format!("manifests {path}{}", ns(namespace)),
            LaunchStep::Chart { path, values, namespace, .. } => {
                let values =
                    if values.is_empty() { String::new() } else { format!(" with values {}", values.join(", ")) };
                format!("chart {path}{values}{}", ns(namespace))
            }
            LaunchStep::Run { command } => format!("run {command}"),
        }
    }

    /// The release a chart step installs: its `release`, else [`LaunchStep::release_name`] of its
    /// path; `None` for other steps.
    pub fn release(&self) -> Option<String> {
        match self {
            LaunchStep::Chart { path, release, .. } => {
                Some(release.clone().unwrap_or_else(|| LaunchStep::release_name(path)))
            }
            _ => None,
        }
    }

    /// The default Helm release name for a chart: the chart directory's name, or a packaged
    /// chart's name without `.tgz` and its `-VERSION` (helm package writes `NAME-VERSION.tgz`),
    /// made a valid release name (lowercase letters, digits, `-`, at most 53 characters).
    pub fn release_name(chart: &str) -> String {
        let base = chart.trim_end_matches('/').rsplit('/').next().unwrap_or(chart);
        let mut name = base.strip_suffix(".tgz").or_else(|| base.strip_suffix(".tar.gz")).unwrap_or(base).to_string();
        if name.len() != base.len() {
            // `app-1.2.3` → `app`: cut at the last `-` followed by a version (`1.2.3`, `v1.2.3`).
            let version = |v: &str| v.trim_start_matches('v').starts_with(|c: char| c.is_ascii_digit());
            if let Some(i) = name.rfind('-').filter(|&i| version(&name[i + 1..])) {
                name.truncate(i);
            }
        }
        let mut out: String = name
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
            .collect();
        out.truncate(53);
        let out = out.trim_matches('-').to_string();
        if out.is_empty() { "app".into() } else { out }
    }
}

/// Whether helm accepts `name` as a release name (a DNS label of at most 53 characters).
fn valid_release(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=53).contains(&name.len())
        && name.chars().all(|c| ok(c) || c == '-')
        && name.starts_with(ok)
        && name.ends_with(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(v: serde_json::Value) -> Result<LaunchStep, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn release_names() {
        assert_eq!(LaunchStep::release_name("bundle/charts/app"), "app");
        assert_eq!(LaunchStep::release_name("bundle/charts/app-1.2.3.tgz"), "app");
        assert_eq!(LaunchStep::release_name("bundle/charts/cert-manager-v1.15.0.tgz"), "cert-manager");
        assert_eq!(
            LaunchStep::release_name("bundle/charts/kube-prometheus-stack-61.3.2.tar.gz"),
            "kube-prometheus-stack"
        );
        assert_eq!(LaunchStep::release_name("bundle/charts/my-chart-2"), "my-chart-2");
        assert_eq!(LaunchStep::release_name("bundle/charts/__"), "app");
    }

    #[test]
    fn describe_names_the_step() {
        let c = step(json!({"chart": "bundle/charts/a", "values": "bundle/v.yaml", "namespace": "x"})).unwrap();
        assert_eq!(c.describe(), "chart bundle/charts/a with values bundle/v.yaml in namespace x");
        assert_eq!(c.paths(), ["bundle/charts/a", "bundle/v.yaml"]);
        assert_eq!(step(json!({"run": "make it"})).unwrap().describe(), "run make it");
        assert_eq!(step(json!({"manifests": "m", "namespace": "n"})).unwrap().describe(), "manifests m in namespace n");
    }

    #[test]
    fn each_step_is_exactly_one_kind() {
        let e = step(json!({"manifests": "a", "run": "x"})).unwrap_err();
        assert!(e.contains("exactly one of `manifests`, `chart` or `run`; it has `manifests` and `run`"), "{e}");
        let e = step(json!({"namespace": "x"})).unwrap_err();
        assert!(e.contains("it has none"), "{e}");
        assert!(step(json!({"manifests": "a", "values": "v"})).unwrap_err().contains("`values` belongs to"));
        assert!(step(json!({"run": "x", "namespace": "n"})).unwrap_err().contains("`namespace` belongs to"));
        assert!(step(json!({"run": "x", "release": "r"})).unwrap_err().contains("`release` belongs to"));
        for bad in ["", "Web", "-web", "web-", "a_b", &"a".repeat(54)] {
            let e = step(json!({"chart": "c", "release": bad})).unwrap_err();
            assert!(e.contains("must be 1-53 lowercase"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_chart_step_names_its_release() {
        let named = step(json!({"chart": "bundle/charts/app-1.0.0.tgz", "release": "shop"})).unwrap();
        assert_eq!(named.release().as_deref(), Some("shop"));
        let derived = step(json!({"chart": "bundle/charts/app-1.0.0.tgz"})).unwrap();
        assert_eq!(derived.release().as_deref(), Some("app"));
        assert_eq!(step(json!({"run": "x"})).unwrap().release(), None);
    }

    #[test]
    fn unknown_fields_in_the_metadata_are_refused() {
        assert!(step(json!({"run": "x", "later": 1})).is_err());
    }

    #[test]
    fn the_json_is_the_flat_object_the_packer_always_wrote() {
        for v in [
            json!({"manifests": "bundle/manifests/a.yaml"}),
            json!({"run": "echo one >> /tmp/order"}),
            json!({"chart": "bundle/charts/app", "values": "bundle/charts/values.yaml", "namespace": "apps"}),
            json!({"manifests": "bundle/manifests/sub", "namespace": "web"}),
            json!({"chart": "bundle/charts/app", "release": "shop"}),
            json!({"chart": "bundle/charts/app", "values": ["bundle/base.yaml", "bundle/site.yaml"]}),
        ] {
            let s = step(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&s).unwrap(), v);
        }
    }
}
