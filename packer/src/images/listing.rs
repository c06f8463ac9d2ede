//! `ferry images`: every image the bundle needs, in three sections (what the apps run, what is
//! referenced only outside pod specs, the control plane), each row with where it comes from and
//! every place that named it, guesses marked, totals per section; or all of it as JSON.

use super::discovery::origin::{Origin, Section};
use super::discovery::{Discovered, Discovery, Source};
use ferry_core::printer::Printer;
use serde_json::{Value, json};

/// Prints the listing of `found`.
pub fn print(found: &Discovery, printer: &Printer) {
    if let Some(how) = &found.charts {
        printer.out(how.clone());
    }
    let ref_width = found.images.iter().map(|d| reference(d).len()).max().unwrap_or(3).max(3);
    let source_width = found.images.iter().map(|d| d.source.describe().len()).max().unwrap_or(6).max(6);
    for (section, title) in
        [(Section::Apps, "Images the apps run"), (Section::OutsidePodSpec, "Referenced outside a pod spec")]
    {
        let rows: Vec<&Discovered> = found.images.iter().filter(|d| d.section() == section).collect();
        if rows.is_empty() {
            continue;
        }
        printer.out(format!("{title} ({}):", rows.len()));
        printer.out(format!("  {:<ref_width$}  {:<source_width$}  FOUND IN", "REF", "SOURCE"));
        for d in rows {
            let origins: Vec<&Origin> = d.origins.iter().filter(|o| !o.is_control_plane()).collect();
            for (i, o) in origins.iter().enumerate() {
                let (r, s) = if i == 0 { (reference(d), d.source.describe()) } else { (String::new(), String::new()) };
                printer.out(format!("  {r:<ref_width$}  {s:<source_width$}  {o}"));
            }
        }
    }
    let cp = &found.control_plane;
    printer.out(format!("{}:", control_plane_line(found)));
    for i in &cp.images {
        let source = found.images.iter().find(|d| d.image.to_string() == *i).map(|d| d.source.describe());
        match source {
            Some(s) if s != "registry" => printer.out(format!("  {i:<ref_width$}  {s}")),
            _ => printer.out(format!("  {i}")),
        }
    }
    printer.out(totals_line(found));
}

/// The line saying where the control-plane list came from.
pub fn control_plane_line(d: &Discovery) -> String {
    let cp = &d.control_plane;
    format!("control plane of Kubernetes {}: {} images {}", cp.kubernetes_version, cp.images.len(), cp.describe())
}

/// The reference, with `(guessed)` when only a guess found it.
fn reference(d: &Discovered) -> String {
    if d.guessed() { format!("{} (guessed)", d.image) } else { d.image.to_string() }
}

fn count(found: &Discovery, section: Section) -> usize {
    found.images.iter().filter(|d| d.section() == section).count()
}

fn totals_line(found: &Discovery) -> String {
    let guessed = found.images.iter().filter(|d| d.guessed()).count();
    let guessed = if guessed > 0 { format!(" ({guessed} guessed)") } else { String::new() };
    format!(
        "{} images: {} the apps run{guessed}, {} referenced outside a pod spec, {} of the control plane",
        found.images.len(),
        count(found, Section::Apps),
        count(found, Section::OutsidePodSpec),
        found.control_plane.images.len()
    )
}

/// The listing as JSON: `{images: [...], totals, controlPlane, charts}`.
pub fn json(found: &Discovery) -> Value {
    let images: Vec<Value> = found
        .images
        .iter()
        .map(|d| {
            json!({
                "ref": d.image.to_string(),
                "registry": d.image.registry,
                "repository": d.image.repository,
                "tag": d.image.served_tag(),
                "digest": d.image.digest,
                "source": d.source.kind(),
                "sourcePath": match &d.source { Source::Registry => None, s => Some(s.describe()) },
                "section": d.section().key(),
                "guessed": d.guessed(),
                "foundIn": d.found_in(),
                "origins": d.origins.iter().map(Origin::to_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "images": images,
        "totals": {
            "images": found.images.len(),
            "apps": count(found, Section::Apps),
            "outsidePodSpec": count(found, Section::OutsidePodSpec),
            "controlPlane": found.control_plane.images.len(),
            "guessed": found.images.iter().filter(|d| d.guessed()).count(),
        },
        "controlPlane": found.control_plane.record(),
        "charts": found.charts,
    })
}
