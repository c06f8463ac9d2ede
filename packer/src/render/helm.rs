//! Charts rendered by the real helm, exactly as the installer will install them: the same release
//! name, namespace and values file as the launch step that installs the chart, and
//! `--kube-version` from `spec.kubernetes.version`. Images are then read from the rendered
//! objects, so tags made in helpers, global registries, digests and `enabled` flags come out as
//! the cluster will see them.
//!
//! The helm used is, in order: the one named by `--helm` (or `FERRY_HELM`), the bundle rootfs's
//! own `usr/local/bin/helm` or `usr/bin/helm` when this machine runs it (the very program the
//! installer will run), or `helm` on `PATH`.
//!
//! Test hooks (`templates/tests/`) are left out, as `helm upgrade --install` never runs them.

use super::chart::ChartFiles;
use crate::spec::Bundle;
use crate::tools::{self, Ran};
use ferry_core::launch::LaunchStep;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where helm may sit in a rootfs, in the order a node's `PATH` finds it.
pub const HELM_PATHS: [&str; 2] = ["usr/local/bin/helm", "usr/bin/helm"];

/// How long one `helm template` may take.
const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The helm program that renders charts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Helm {
    /// The program.
    pub program: PathBuf,
    /// Where it came from, for messages (`the bundle's kubernetes/rootfs/usr/bin/helm`).
    pub shown: String,
}

/// What `--helm`/`FERRY_HELM` said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HelmChoice {
    /// Find one (the default).
    #[default]
    Find,
    /// `none`: render no chart with helm.
    Never,
    /// This program.
    Program(PathBuf),
}

impl HelmChoice {
    /// From the flag's value: absent → find, `none` (or empty) → never, else a path.
    pub fn from_flag(value: Option<&Path>) -> HelmChoice {
        match value {
            None => HelmChoice::Find,
            Some(p) if p.as_os_str().is_empty() || p == Path::new("none") => HelmChoice::Never,
            Some(p) => HelmChoice::Program(p.to_path_buf()),
        }
    }
}

impl Helm {
    /// The helm to render `bundle`'s charts with, per `choice` (see the module docs). `notes`
    /// gets why the bundle's own helm was passed over.
    pub fn find(bundle: &Bundle, choice: &HelmChoice, notes: &mut Vec<String>) -> Option<Helm> {
        match choice {
            HelmChoice::Never => return None,
            HelmChoice::Program(p) => return Some(Helm { program: p.clone(), shown: p.display().to_string() }),
            HelmChoice::Find => {}
        }
        if let Some((file, real)) = tools::in_rootfs(bundle, &HELM_PATHS) {
            match tools::runnable_here(&file, &real) {
                Ok(()) => return Some(Helm { program: real, shown: format!("the bundle's {file}") }),
                Err(why) => notes.push(format!("the bundle's helm is not used to render charts: {why}")),
            }
        }
        tools::on_path("helm").map(|p| Helm { shown: p.display().to_string(), program: p })
    }
}

/// A chart the bundle carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chart {
    /// On this machine.
    pub real: PathBuf,
    /// As the spec reaches it (`charts/web`).
    pub shown: String,
}

/// One install of a chart: what the installer's `helm upgrade --install` will be given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// The chart.
    pub chart: Chart,
    /// The release name.
    pub name: String,
    /// The namespace.
    pub namespace: String,
    /// The values files in order, on this machine and as the spec names them.
    pub values: Vec<(PathBuf, String)>,
    /// The launch step that installs it (`spec.launch[2]`); `None` for a chart carried but
    /// installed by no step, rendered with its defaults.
    pub step: Option<String>,
}

impl Release {
    /// `release web in namespace apps (spec.launch[2])`.
    pub fn describe(&self) -> String {
        let step = self
            .step
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_else(|| " (no launch step installs it; defaults)".into());
        let values = if self.values.is_empty() {
            String::new()
        } else {
            format!(" with values {}", self.values.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(", "))
        };
        format!("release {} in namespace {}{values}{step}", self.name, self.namespace)
    }
}

/// The charts of `spec.charts`: each entry that is a chart (a directory with `Chart.yaml`, or a
/// `.tgz`), or, for a directory of charts, each chart in it. Problems are returned named.
pub fn charts(bundle: &Bundle) -> (Vec<Chart>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in bundle.spec.spec.charts.iter().enumerate() {
        let field = format!("spec.charts[{i}].path");
        let real = match bundle.resolve(&field, &item.path) {
            Ok(r) => r,
            Err(e) => {
                errors.push(ferry_core::printer::error_chain(&e));
                continue;
            }
        };
        let shown = item.path.trim_end_matches('/').to_string();
        if !real.is_dir() {
            // A packaged chart; any other file (a values file carried beside the charts) is no chart.
            if is_packaged(&real) {
                out.push(Chart { real, shown });
            }
            continue;
        }
        if real.join("Chart.yaml").is_file() {
            out.push(Chart { real, shown });
            continue;
        }
        let mut inner: Vec<Chart> = match std::fs::read_dir(&real) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("Chart.yaml").is_file() || (p.is_file() && is_packaged(p)))
                .map(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    Chart { shown: format!("{shown}/{name}"), real: p }
                })
                .collect(),
            Err(e) => {
                errors.push(format!("{field} `{}` cannot be read: {e}", item.path));
                continue;
            }
        };
        if inner.is_empty() {
            errors
                .push(format!("{field} `{}` is neither a chart (no Chart.yaml) nor a directory of charts", item.path));
        }
        inner.sort_by(|a, b| a.shown.cmp(&b.shown));
        out.extend(inner);
    }
    (out, errors)
}

/// Whether `path` is named like a packaged chart.
fn is_packaged(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.ends_with(".tgz") || name.ends_with(".tar.gz")
}

/// The releases the installer will install: one per chart launch step, with its name, namespace
/// and values, and one with the defaults for each chart no step installs.
pub fn releases(bundle: &Bundle, charts: &[Chart]) -> (Vec<Release>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut installed = vec![false; charts.len()];
    for (i, step) in bundle.spec.spec.launch.iter().enumerate() {
        let Some(path) = &step.chart else { continue };
        let at = format!("spec.launch[{i}]");
        let real = match bundle.resolve(&format!("{at}.chart"), path) {
            Ok(r) => r,
            Err(e) => {
                errors.push(ferry_core::printer::error_chain(&e));
                continue;
            }
        };
        let mut values = Vec::new();
        for v in step.values.as_ref().map(|v| v.files()).unwrap_or_default() {
            match bundle.resolve(&format!("{at}.values"), v) {
                Ok(r) => values.push((r, v.to_string())),
                Err(e) => errors.push(ferry_core::printer::error_chain(&e)),
            }
        }
        if let Some(k) = charts.iter().position(|c| c.real == real) {
            installed[k] = true;
        }
        let shown = path.trim_end_matches('/').to_string();
        out.push(Release {
            chart: Chart { real, shown },
            name: step.release.clone().unwrap_or_else(|| LaunchStep::release_name(path)),
            namespace: step.namespace.clone().unwrap_or_else(|| "default".into()),
            values,
            step: Some(at),
        });
    }
    for (chart, done) in charts.iter().zip(installed) {
        if !done {
            out.push(Release {
                chart: chart.clone(),
                name: LaunchStep::release_name(&chart.shown),
                namespace: "default".into(),
                values: Vec::new(),
                step: None,
            });
        }
    }
    (out, errors)
}

/// Why a chart cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A dependency is not in `charts/`.
    #[error(
        "chart {chart} depends on {} that {} not in its charts/ directory; run `helm dependency build {chart}` on the connected machine so the chart carries {}",
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
        if missing.len() == 1 { "it" } else { "them" }
    )]
    MissingDependencies {
        /// The chart, as the spec reaches it.
        chart: String,
        /// `name (from REPOSITORY)`.
        missing: Vec<String>,
    },
    /// helm failed.
    #[error("chart {chart} does not render ({release}): `helm template` {why}")]
    Helm {
        /// The chart.
        chart: String,
        /// The release.
        release: String,
        /// What helm said.
        why: String,
    },
    /// helm cannot run.
    #[error("chart {chart}: {helm} cannot be run: {cause}")]
    NotRunnable {
        /// The chart.
        chart: String,
        /// Which helm.
        helm: String,
        /// Why.
        cause: std::io::Error,
    },
}

/// Renders `release` (whose chart's files are `files`) with `helm template`, after checking that the chart carries every
/// dependency it declares (helm would otherwise fail, or a later `helm dependency build`
/// would reach for the network on the site).
pub fn template(helm: &Helm, release: &Release, files: &ChartFiles, kube_version: &str) -> Result<String, RenderError> {
    let chart = release.chart.shown.clone();
    let missing: Vec<String> = files
        .missing_dependencies()
        .into_iter()
        .map(|d| match d.repository {
            Some(r) if !r.is_empty() => format!("{} (from {r})", d.name),
            _ => d.name,
        })
        .collect();
    if !missing.is_empty() {
        return Err(RenderError::MissingDependencies { chart, missing });
    }
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("template"),
        OsStr::new(&release.name),
        release.chart.real.as_os_str(),
        OsStr::new("--namespace"),
        OsStr::new(&release.namespace),
        OsStr::new("--kube-version"),
        OsStr::new(kube_version),
        OsStr::new("--skip-tests"),
    ];
    for (real, _) in &release.values {
        args.push(OsStr::new("--values"));
        args.push(real.as_os_str());
    }
    match tools::run(&helm.program, &args, None, TEMPLATE_TIMEOUT) {
        Ran::Ok(text) => Ok(text),
        Ran::Failed(why) => Err(RenderError::Helm { chart, release: release.describe(), why }),
        Ran::NotRunnable(cause) => Err(RenderError::NotRunnable { chart, helm: helm.shown.clone(), cause }),
    }
}
