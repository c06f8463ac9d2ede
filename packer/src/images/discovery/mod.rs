//! Finds every image a bundle needs without a cluster (the "lite build"), never guessing
//! silently:
//!
//! * `spec.images`, with their local sources;
//! * `spec.manifests`: every YAML/JSON document ([`manifests`]); a directory holding a
//!   `kustomization.yaml` is rendered first (`crate::render::kustomize`), and the rendered
//!   objects are what the installer carries;
//! * `spec.charts`: rendered by the real helm as the installer will install them
//!   (`crate::render::helm`, [`charts`]); without helm the build stops, unless the operator
//!   allows a guess from the values ([`chart_values`]), whose images are then marked guessed;
//! * references outside pod specs (arguments, variables, custom resources, the chart image
//!   annotation), listed apart and carried unless `spec.imageExclude` names them;
//! * the control-plane images of `spec.kubernetes.version`, from the bundle's kubeadm or
//!   ferry's table ([`controlplane::resolve`]).
//!
//! The result is one entry per normalised reference with every place it was found
//! ([`origin`]), and the control plane with where its list came from.

pub mod chart_values;
pub mod charts;
pub mod manifests;
pub mod origin;

use super::controlplane;
use crate::paths::PathError;
use crate::render::helm::HelmChoice;
use crate::spec::Bundle;
use ferry_core::image_ref::ImageRef;
use ferry_core::printer::error_chain;
use origin::{Origin, Place};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub origins: Vec<Origin>,
}

impl Discovered {
    /// Each origin in words.
    pub fn found_in(&self) -> Vec<String> {
        self.origins.iter().map(Origin::describe).collect()
    }

    /// Which part of the listing it belongs to.
    pub fn section(&self) -> origin::Section {
        origin::Section::of(&self.origins)
    }

    /// Whether it was only guessed from chart values.
    pub fn guessed(&self) -> bool {
        origin::all_guessed(&self.origins)
    }
}

/// How discovery treats charts.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Which helm renders them.
    pub helm: HelmChoice,
    /// Without helm, guess chart images from their values instead of failing.
    pub chart_images_from_values: bool,
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

/// Collects the images, de-duplicated by normalised reference.
#[derive(Default)]
struct Found {
    by_ref: BTreeMap<String, Discovered>,
    errors: Vec<String>,
}

impl Found {
    fn add(&mut self, raw: &str, origin: Origin, source: Source) {
        match ImageRef::parse(raw) {
            Ok(image) => self.add_ref(image, origin, source),
            Err(e) => self.errors.push(format!("{origin}: {e}")),
        }
    }

    fn add_ref(&mut self, image: ImageRef, origin: Origin, source: Source) {
        let key = image.to_string();
        let entry = self.by_ref.entry(key.clone()).or_insert_with(|| Discovered {
            image,
            source: Source::Registry,
            origins: Vec::new(),
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
        if !entry.origins.contains(&origin) {
            entry.origins.push(origin);
        }
    }
}

/// A kustomization of `spec.manifests`, rendered: what the installer carries in its place.
#[derive(Clone, Debug)]
pub struct Kustomized {
    /// The payload directory it stands for (`bundle/overlays/prod`).
    pub key: String,
    /// The rendered YAML stream.
    pub text: String,
}

/// What discovery found.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// Every image, once per normalised reference, sorted by reference.
    pub images: Vec<Discovered>,
    /// The control-plane images and their source.
    pub control_plane: controlplane::ControlPlane,
    /// Kustomizations rendered, to carry instead of their sources.
    pub kustomized: Vec<Kustomized>,
    /// How the charts were read, for the listing (`rendered by the bundle's …/helm`).
    pub charts: Option<String>,
}

/// Finds every image of `bundle`. Problems (malformed documents, unparsable references, charts
/// that do not render or cannot be read without helm, a bundle kubeadm that fails) are collected
/// and reported together.
pub fn discover(bundle: &Bundle, opts: &Options, warnings: &mut Vec<String>) -> Result<Discovery, DiscoveryError> {
    let mut found = Found::default();
    let spec = &bundle.spec.spec;
    spec_images(bundle, &mut found);
    let kustomized = spec_manifests(bundle, &mut found, warnings);
    let charts = charts::discover(bundle, &opts.helm, opts.chart_images_from_values, warnings);
    found.errors.extend(charts.errors);
    for (raw, origin) in charts.images {
        found.add(&raw, origin, Source::Registry);
    }
    let control_plane = match controlplane::resolve(bundle, warnings) {
        Ok(cp) => {
            for i in &cp.images {
                found.add(i, Origin::control_plane(&spec.kubernetes.version), Source::Registry);
            }
            Some(cp)
        }
        Err(e) => {
            found.errors.push(format!("control-plane images of {}: {e}", spec.kubernetes.version));
            None
        }
    };
    exclude(bundle, &mut found, warnings);
    match (found.errors.is_empty(), control_plane) {
        (true, Some(control_plane)) => Ok(Discovery {
            images: found.by_ref.into_values().collect(),
            control_plane,
            kustomized,
            charts: charts.how,
        }),
        _ => Err(DiscoveryError { file: bundle.file.clone(), problems: found.errors }),
    }
}

/// Drops the images `spec.imageExclude` names. Naming a control-plane image is an error (kubeadm
/// pulls them all); naming nothing found is a warning (a typo would otherwise carry the image).
fn exclude(bundle: &Bundle, found: &mut Found, warnings: &mut Vec<String>) {
    for (i, raw) in bundle.spec.spec.image_exclude.iter().enumerate() {
        let field = format!("spec.imageExclude[{i}]");
        let key = match ImageRef::parse(raw) {
            Ok(r) => r.to_string(),
            Err(e) => {
                found.errors.push(format!("{field}: {e}"));
                continue;
            }
        };
        match found.by_ref.get(&key) {
            None => warnings.push(format!("{field} `{raw}` ({key}) names no image the bundle references")),
            Some(d) if d.origins.iter().any(Origin::is_control_plane) => found
                .errors
                .push(format!("{field} `{raw}` is a control-plane image, which kubeadm pulls on every node")),
            Some(_) => {
                found.by_ref.remove(&key);
            }
        }
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
        found.add(&item.r#ref, Origin::spec_images(), source);
    }
}

/// The images of every document of `spec.manifests`; kustomizations are rendered and returned.
fn spec_manifests(bundle: &Bundle, found: &mut Found, warnings: &mut Vec<String>) -> Vec<Kustomized> {
    let mut kustomized = Vec::new();
    for (i, item) in bundle.spec.spec.manifests.iter().enumerate() {
        let field = format!("spec.manifests[{i}].path");
        let real = match bundle.resolve(&field, &item.path) {
            Ok(r) => r,
            Err(e) => {
                found.errors.push(error_chain(&e));
                continue;
            }
        };
        let rel = real.strip_prefix(&bundle.dir).unwrap_or(&real).to_string_lossy().into_owned();
        let key = if rel.is_empty() { "bundle".to_string() } else { format!("bundle/{rel}") };
        if real.is_dir() && crate::render::kustomize::kustomization_file(&real).is_some() {
            let shown = format!("spec.manifests[{i}] `{}`", item.path);
            match kustomize(bundle, &real, &shown, warnings) {
                Ok(text) => {
                    let (hits, errors) = manifests::scan_stream(&text, &format!("{key} (rendered by kustomize)"));
                    found.errors.extend(errors);
                    for h in hits {
                        let place = Place::Kustomized { dir: key.clone(), object: h.object };
                        found.add(&h.image, Origin { place, how: h.how }, Source::Registry);
                    }
                    kustomized.push(Kustomized { key, text });
                }
                Err(e) => found.errors.push(e),
            }
            continue;
        }
        for file in manifest_files(&real, &field, &mut found.errors) {
            let rel = file.strip_prefix(&bundle.dir).unwrap_or(&file).to_string_lossy().into_owned();
            let label = format!("bundle/{rel}");
            if crate::render::kustomize::is_kustomization_name(&file) {
                found.errors.push(format!(
                    "{label}: a kustomization inside {field} `{}` would be applied as a manifest; name its directory in spec.manifests to have it rendered",
                    item.path
                ));
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let (hits, errors) = manifests::scan_stream(&text, &label);
                    found.errors.extend(errors);
                    for h in hits {
                        let place = Place::Manifest { file: label.clone(), line: h.line, object: h.object };
                        found.add(&h.image, Origin { place, how: h.how }, Source::Registry);
                    }
                }
                Err(e) => found.errors.push(format!("{label}: cannot be read: {e}")),
            }
        }
    }
    kustomized
}

/// Renders the kustomization at `real` with the bundle's kubectl when it runs here, else the
/// build machine's kustomize or kubectl.
fn kustomize(bundle: &Bundle, real: &Path, shown: &str, warnings: &mut Vec<String>) -> Result<String, String> {
    use crate::render::kustomize::{Renderer, render};
    let bundle_kubectl =
        crate::tools::in_rootfs(bundle, &["usr/local/bin/kubectl", "usr/bin/kubectl"]).and_then(|(file, real)| {
            match crate::tools::runnable_here(&file, &real) {
                Ok(()) => Some(real),
                Err(why) => {
                    warnings.push(format!("the bundle's kubectl is not used to render kustomizations: {why}"));
                    None
                }
            }
        });
    let renderer = Renderer::find(bundle_kubectl);
    render(real, shown, renderer.as_ref()).map_err(|e| error_chain(&e))
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
