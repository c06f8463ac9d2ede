//! A chart's files as ferry reads them without helm: `Chart.yaml`, `values.yaml`, the
//! dependencies it declares, its templates and its subcharts, from a chart directory or a
//! packaged `.tgz`.

use crate::tree::TreeError;
use ferry_core::printer::error_chain;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A chart that cannot be read.
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

/// The files of a chart that matter here (`Chart.yaml`, `requirements.yaml`, `values.yaml`,
/// `templates/…` and `charts/…`), from a directory or a `.tgz`, keyed by path relative to the
/// chart root.
pub struct ChartFiles(BTreeMap<String, Vec<u8>>);

impl ChartFiles {
    /// Reads the chart at `path` (directory or archive).
    pub fn load(path: &Path) -> Result<ChartFiles, ChartError> {
        if path.is_dir() {
            let mut map = BTreeMap::new();
            for item in crate::tree::walk(path, "chart")? {
                if item.kind == crate::tree::ItemKind::File && wanted(&item.rel) {
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
            if wanted(rel) {
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

    /// A file's bytes.
    pub fn get(&self, rel: &str) -> Option<&[u8]> {
        self.0.get(rel).map(Vec::as_slice)
    }

    /// `Chart.yaml`, parsed.
    pub fn meta(&self) -> Result<Value, String> {
        match self.get("Chart.yaml").map(serde_saphyr::from_slice::<Value>) {
            Some(Ok(v)) if v.is_object() => Ok(v),
            Some(Ok(_)) => Err("Chart.yaml is not a mapping".into()),
            Some(Err(e)) => Err(format!("Chart.yaml is not valid YAML: {e}")),
            None => Err("no Chart.yaml".into()),
        }
    }

    /// The chart's `name`.
    pub fn name(&self) -> Option<String> {
        self.meta().ok()?.get("name")?.as_str().map(String::from)
    }

    /// Dependencies the chart declares that its `charts/` directory does not hold.
    pub fn missing_dependencies(&self) -> Vec<Dependency> {
        let present: Vec<String> = self.subcharts().into_iter().map(|(name, _)| name).collect();
        self.dependencies().into_iter().filter(|d| !present.contains(&d.name)).collect()
    }

    /// `values.yaml`, parsed (an empty mapping when there is none).
    pub fn values(&self) -> Result<Value, String> {
        match self.get("values.yaml").map(serde_saphyr::from_slice::<Value>) {
            Some(Ok(Value::Null)) | None => Ok(Value::Object(Default::default())),
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(format!("values.yaml is not valid YAML: {e}")),
        }
    }

    /// The chart's dependencies (`Chart.yaml`'s `dependencies`, or `requirements.yaml`'s for
    /// apiVersion v1 charts): `(name, alias, condition, repository)`.
    pub fn dependencies(&self) -> Vec<Dependency> {
        let from = |v: &Value| -> Vec<Dependency> {
            v.get("dependencies")
                .and_then(Value::as_array)
                .map(|deps| {
                    deps.iter()
                        .filter_map(|d| {
                            let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
                            Some(Dependency {
                                name: s("name")?,
                                alias: s("alias"),
                                condition: s("condition"),
                                repository: s("repository"),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut deps = self.meta().map(|m| from(&m)).unwrap_or_default();
        if deps.is_empty()
            && let Some(Ok(req)) = self.get("requirements.yaml").map(serde_saphyr::from_slice::<Value>)
        {
            deps = from(&req);
        }
        deps
    }

    /// Subcharts: `charts/<name>/…` directories and `charts/<name>.tgz` archives, by the name
    /// their `Chart.yaml` gives.
    pub fn subcharts(&self) -> Vec<(String, Result<ChartFiles, ChartError>)> {
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
        for (name, files) in &mut out {
            if let Ok(f) = files
                && let Some(n) = f.meta().ok().and_then(|m| m.get("name").and_then(Value::as_str).map(String::from))
            {
                *name = n;
            }
        }
        out
    }

    /// The templates (own, not subcharts') that define a workload kind, by path.
    pub fn workload_templates(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(rel, _)| rel.starts_with("templates/"))
            .filter(|(_, bytes)| {
                String::from_utf8_lossy(bytes).lines().any(|l| {
                    l.trim().strip_prefix("kind:").is_some_and(|k| {
                        matches!(
                            k.trim().trim_matches(['"', '\'']),
                            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" | "Pod" | "ReplicaSet"
                        )
                    })
                })
            })
            .map(|(rel, _)| rel.clone())
            .collect()
    }
}

/// One dependency a chart declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The chart's name.
    pub name: String,
    /// The name it is used under.
    pub alias: Option<String>,
    /// The values path that turns it on or off.
    pub condition: Option<String>,
    /// Where `helm dependency build` fetches it from.
    pub repository: Option<String>,
}

fn chart_read(path: &Path) -> impl FnOnce(std::io::Error) -> ChartError {
    let path = path.to_path_buf();
    move |cause| ChartError::Read { path, cause }
}

fn wanted(rel: &str) -> bool {
    let own = |r: &str| {
        r == "Chart.yaml"
            || r == "values.yaml"
            || r == "requirements.yaml"
            || (r.starts_with("templates/") && (r.ends_with(".yaml") || r.ends_with(".yml") || r.ends_with(".tpl")))
    };
    own(rel)
        || rel.strip_prefix("charts/").is_some_and(|rest| {
            rest.ends_with(".tgz") || rest.split_once('/').is_some_and(|(_, inner)| own(inner) || wanted(inner))
        })
}
