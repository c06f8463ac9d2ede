//! The images of `spec.charts`: each release the installer will install, rendered by helm and
//! read like manifests, with every image traced to its chart, template and values; or, without
//! helm and only when the operator allows it, guessed from the values and marked so.

use super::chart_values::{self, Leaves};
use super::manifests;
use super::origin::{How, Origin, Place};
use crate::render::chart::ChartFiles;
use crate::render::helm::{self, Helm, HelmChoice, Release};
use crate::spec::Bundle;
use ferry_core::image_ref::ImageRef;
use serde_json::Value;

/// What the charts gave.
#[derive(Default)]
pub struct ChartImages {
    /// (reference as written, where).
    pub images: Vec<(String, Origin)>,
    /// Problems, each naming its chart.
    pub errors: Vec<String>,
    /// How the charts were read, when there are any.
    pub how: Option<String>,
}

/// Finds the images of every chart of `bundle`.
pub fn discover(bundle: &Bundle, helm: &HelmChoice, allow_guess: bool, warnings: &mut Vec<String>) -> ChartImages {
    let mut out = ChartImages::default();
    let (charts, errors) = helm::charts(bundle);
    out.errors.extend(errors);
    if charts.is_empty() {
        return out;
    }
    let (releases, errors) = helm::releases(bundle, &charts);
    out.errors.extend(errors);
    let mut notes = Vec::new();
    match Helm::find(bundle, helm, &mut notes) {
        Some(h) => {
            out.how = Some(format!("charts rendered by helm ({})", h.shown));
            warnings.extend(notes);
            for r in &releases {
                rendered(&h, r, &bundle.spec.spec.kubernetes.version, &mut out);
            }
        }
        None if allow_guess => {
            out.how = Some("chart images guessed from values.yaml without helm (--chart-images-from-values)".into());
            warnings.push(format!(
                "no helm: the images of {} are guessed from their values and marked guessed; check them with \
                 `ferry images` (a tag made of \"v\" + appVersion or a name assembled in a template is missed)",
                names(&releases)
            ));
            for r in &releases {
                guessed(r, &mut out, warnings);
            }
        }
        None => {
            let why = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
            out.errors.push(format!(
                "no helm to render {}{why}: ferry renders charts with helm so that their images are exact. \
                 Install helm 3 on this build machine (https://helm.sh/docs/intro/install/), put it in the \
                 bundle's rootfs (usr/bin/helm), or name it with --helm or FERRY_HELM; or pass \
                 --chart-images-from-values to guess the images from values.yaml (each then marked guessed)",
                names(&releases)
            ));
        }
    }
    out
}

fn names(releases: &[Release]) -> String {
    let mut charts: Vec<&str> = releases.iter().map(|r| r.chart.shown.as_str()).collect();
    charts.dedup();
    let n = charts.len();
    format!("{} chart{} ({})", n, if n == 1 { "" } else { "s" }, charts.join(", "))
}

/// The operator's values files of a release, parsed and laid over each other in order.
fn overrides(r: &Release) -> Result<Option<Value>, String> {
    let mut merged: Option<Value> = None;
    for (real, shown) in &r.values {
        let text = std::fs::read_to_string(real).map_err(|e| format!("{shown}: cannot be read: {e}"))?;
        match serde_saphyr::from_str::<Value>(&text) {
            Ok(Value::Null) => {}
            Ok(v) => match &mut merged {
                Some(m) => chart_values::merge(m, &v),
                None => merged = Some(v),
            },
            Err(e) => return Err(format!("{shown}: not valid YAML: {e}")),
        }
    }
    Ok(merged)
}

/// The chart of `r` and its operator's values.
fn chart_and_values(r: &Release) -> Result<(ChartFiles, Option<Value>), String> {
    let files = ChartFiles::load(&r.chart.real).map_err(|e| format!("chart {} cannot be read: {e}", r.chart.shown))?;
    Ok((files, overrides(r)?))
}

/// Renders `r` with helm and reads its images.
fn rendered(h: &Helm, r: &Release, kube_version: &str, out: &mut ChartImages) {
    let (files, values) = match chart_and_values(r) {
        Ok(both) => both,
        Err(e) => return out.errors.push(e),
    };
    let text = match helm::template(h, r, &files, kube_version) {
        Ok(t) => t,
        Err(e) => return out.errors.push(e.to_string()),
    };
    let leaves = Leaves::of(&files, values.as_ref());
    let top = files.name().unwrap_or_else(|| r.chart.shown.clone());
    let label = format!("chart {} ({})", r.chart.shown, r.describe());
    let (hits, errors) = manifests::scan_stream(&text, &label);
    out.errors.extend(errors);
    let mut used_subcharts = Vec::new();
    for hit in hits {
        // helm writes `# Source: <chart>/templates/x.yaml`, `<chart>/charts/<sub>/templates/…` for subcharts.
        let template =
            hit.template.as_deref().map(|t| t.split_once('/').map(|(_, rest)| rest).unwrap_or(t).to_string());
        let sub = template
            .as_deref()
            .and_then(|t| t.strip_prefix("charts/"))
            .and_then(|t| t.split_once('/'))
            .map(|(s, _)| s.to_string());
        let chart = match &sub {
            Some(s) => {
                used_subcharts.push(s.clone());
                format!("{top}/{s}")
            }
            None => top.clone(),
        };
        let values =
            ImageRef::parse(&hit.image).map(|i| chart_values::attribute(&i, &hit.image, &leaves)).unwrap_or_default();
        let place = Place::Chart {
            chart,
            release: r.name.clone(),
            namespace: r.namespace.clone(),
            template,
            object: hit.object,
            values,
        };
        out.images.push((hit.image, Origin { place, how: hit.how }));
    }
    annotations(&files, &top, &used_subcharts, out);
}

/// The `artifacthub.io/images` annotation of the chart and of the subcharts that rendered.
fn annotations(files: &ChartFiles, top: &str, used_subcharts: &[String], out: &mut ChartImages) {
    let mut charts = vec![(top.to_string(), files.meta().ok())];
    for (sub, f) in files.subcharts() {
        if used_subcharts.contains(&sub) {
            charts.push((format!("{top}/{sub}"), f.ok().and_then(|f| f.meta().ok())));
        }
    }
    for (chart, meta) in charts {
        let Some(ann) =
            meta.as_ref().and_then(|m| m.pointer("/annotations/artifacthub.io~1images")).and_then(Value::as_str)
        else {
            continue;
        };
        match chart_values::annotation_images(ann) {
            Ok(list) => out.images.extend(list.into_iter().map(|i| {
                let how = How::OutsidePodSpec { field: "annotations.artifacthub.io/images".into() };
                (i, Origin { place: Place::ChartAnnotation { chart: chart.clone() }, how })
            })),
            Err(e) => {
                out.errors.push(format!("chart {chart}: the artifacthub.io/images annotation is not a YAML list: {e}"))
            }
        }
    }
}

/// Guesses the images of `r` from its values.
fn guessed(r: &Release, out: &mut ChartImages, warnings: &mut Vec<String>) {
    let (files, values) = match chart_and_values(r) {
        Ok(both) => both,
        Err(e) => return out.errors.push(e),
    };
    let g = chart_values::guess(&files, &r.chart.shown, values.as_ref());
    out.images.extend(g.images);
    out.errors.extend(g.errors);
    warnings.extend(g.warnings);
}
