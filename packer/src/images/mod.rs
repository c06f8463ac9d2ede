//! Images: everything between a bundle spec and the `blobs/sha256/…` entries of the installer.
//!
//! * `ferry_core::image_ref` normalises references like containerd;
//! * [`discovery`] finds the images of manifests, charts, the control plane ([`controlplane`])
//!   and `spec.images`;
//! * [`collect`] resolves them to verified blobs from registries ([`registry_client`],
//!   logins from `ferry_distribution::credentials`), OCI layouts ([`oci_layout`]) and docker archives ([`docker_archive`]),
//!   keeping them in a temporary [`store`];
//! * this module turns the outcome into the payload contract the installer's registry reads:
//!
//! | index key | value |
//! |---|---|
//! | entries `blobs/sha256/<hex>` | every manifest, index, config and layer, byte-exact, raw, deduplicated |
//! | `images` | `[{ref, registry, repository, tag, digest, mediaType, source, foundIn, guessed?, outsidePodSpec?}]`, sorted by `ref` |
//! | `manifests` | `{"sha256:…": mediaType}` for every stored manifest and index |
//! | `platforms` | `["linux/amd64", …]` |
//! | `missingImages` | references left out with `--allow-missing-images` |
//! | `controlPlaneImages` | the control plane's list in kubeadm's order, its `pause` image and where it came from ([`controlplane::ControlPlane::metadata`]) |
//!
//! For a multi-platform image the index is kept as published and only the children for
//! `spec.platforms` are stored.

pub mod collect;
pub mod controlplane;
pub mod discovery;
pub mod docker_archive;
pub mod listing;
pub mod oci;
pub mod oci_layout;
pub mod registry_client;
pub mod store;

use crate::spec::Bundle;
use discovery::{Discovery, DiscoveryError};
use ferry_core::metadata::{ImageRecord, ImagesContract};
use ferry_core::printer::Printer;
use ferry_core::units;
use oci::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use store::{Slice, Store};

/// Image-related build settings from the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Build even when some images cannot be resolved, recording them as missing.
    pub allow_missing: bool,
    /// Never contact a registry.
    pub offline: bool,
    /// `HOST=USER:PASS` values.
    pub registry_auth: Vec<String>,
    /// Parallel downloads.
    pub jobs: usize,
    /// How charts are read.
    pub discovery: discovery::Options,
    /// References a base installer already carries (`spec.base`): not resolved again.
    pub carried: std::collections::BTreeSet<String>,
}

/// What the build adds to the installer.
pub struct Collected {
    /// Keeps downloaded blobs alive until the installer is written.
    pub store: Store,
    /// Payload blobs by digest.
    pub blobs: BTreeMap<String, Slice>,
    /// The index keys of the contract (`images`, `manifests`, `platforms`, `missingImages`,
    /// `controlPlaneImages`).
    pub contract: ImagesContract,
    /// Kustomizations rendered, which the installer carries instead of their sources.
    pub kustomized: Vec<discovery::Kustomized>,
}

/// Why the bundle's images cannot be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// Discovery found problems.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A platform that is not `os/arch[/variant]`.
    #[error("{}: spec.platforms: {cause}", file.display())]
    Platform {
        /// The spec file.
        file: PathBuf,
        /// Why.
        cause: oci::PlatformError,
    },
    /// `registryMirrors` or `insecureRegistries` cannot be used.
    #[error("{}: {cause}", file.display())]
    Network {
        /// The spec file.
        file: PathBuf,
        /// Why.
        cause: registry_client::MirrorError,
    },
    /// Registry logins cannot be read.
    #[error(transparent)]
    Credentials(#[from] ferry_distribution::credentials::CredentialsError),
    /// The temporary blob store cannot be created.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Images could not be resolved and `--allow-missing-images` was not given.
    #[error(
        "{} of {total} images could not be resolved, so no installer was written:\n{}\n(--allow-missing-images builds without them and records them as missing)",
        lines.len(),
        lines.join("\n")
    )]
    Unresolved {
        /// How many images the bundle needs.
        total: usize,
        /// One line per failed image: reference, where it was found, why.
        lines: Vec<String>,
    },
}

/// `spec.platforms`, or the build machine's platform.
pub fn platforms(bundle: &Bundle) -> Result<Vec<Platform>, ImagesError> {
    let spec = &bundle.spec.spec.platforms;
    if spec.is_empty() {
        return Ok(vec![Platform::host()]);
    }
    let mut out = Vec::new();
    for p in spec {
        let p = Platform::parse(p).map_err(|cause| ImagesError::Platform { file: bundle.file.clone(), cause })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Discovers every image of the bundle, printing discovery warnings.
pub fn discover(bundle: &Bundle, opts: &discovery::Options, printer: &Printer) -> Result<Discovery, DiscoveryError> {
    let mut warnings = Vec::new();
    let found = discovery::discover(bundle, opts, &mut warnings);
    for w in warnings {
        printer.warn(w);
    }
    found
}

/// Discovers and resolves every image; fails listing every unresolved image unless
/// `allow_missing`. `temp_parent` holds the temporary blob store (next to the output).
pub fn collect(
    bundle: &Bundle,
    opts: &Options,
    temp_parent: &Path,
    printer: &Printer,
) -> Result<Collected, ImagesError> {
    let started = Instant::now();
    let found = discover(bundle, &opts.discovery, printer)?;
    printer.note(listing::control_plane_line(&found));
    if let Some(how) = &found.charts {
        printer.note(how.clone());
    }
    let carried_before = found.images.len();
    let images: Vec<_> = found.images.into_iter().filter(|d| !opts.carried.contains(&d.image.to_string())).collect();
    if images.len() < carried_before {
        printer.note(format!("images: {} already in the base installer", carried_before - images.len()));
    }
    let platforms = platforms(bundle)?;
    let spec = &bundle.spec.spec;
    let net = registry_client::Network::new(&spec.registry_mirrors, &spec.insecure_registries, opts.offline)
        .map_err(|cause| ImagesError::Network { file: bundle.file.clone(), cause })?;
    let creds = ferry_distribution::credentials::Credentials::load(&opts.registry_auth)?;
    let client = registry_client::RegistryClient::new(net, creds);
    let store = Store::new_in(temp_parent)?;
    let from_registries = images.iter().filter(|d| d.source == discovery::Source::Registry).count();
    printer.note(format!(
        "images: resolving {} ({} from registries, {} from local files) for {}",
        images.len(),
        from_registries,
        images.len() - from_registries,
        platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    ));
    let collector =
        collect::Collector { client: &client, store: &store, platforms: &platforms, jobs: opts.jobs.max(1), printer };
    let outcome = collector.run(&images);
    for w in &outcome.warnings {
        printer.warn(w);
    }
    if !outcome.failed.is_empty() {
        let lines: Vec<String> = outcome
            .failed
            .iter()
            .map(|(d, why)| format!("  - {} (from {}): {why}", d.image, d.found_in().join("; ")))
            .collect();
        if !opts.allow_missing {
            return Err(ImagesError::Unresolved { total: images.len(), lines });
        }
        for (d, why) in &outcome.failed {
            printer.warn(format!("leaving out {}: {why}", d.image));
        }
    }
    let stored: u64 = outcome.blobs.values().map(|s| s.size).sum();
    printer.note(format!(
        "images: {} resolved, {} missing; {} blobs, {} ({} pulled) in {:.1} s",
        outcome.resolved.len(),
        outcome.failed.len(),
        outcome.blobs.len(),
        units::bytes(stored),
        units::bytes(outcome.pulled),
        started.elapsed().as_secs_f64()
    ));
    let contract = metadata(&outcome, &platforms, &found.control_plane);
    Ok(Collected { store, blobs: outcome.blobs, contract, kustomized: found.kustomized })
}

/// The payload contract.
fn metadata(
    outcome: &collect::Outcome,
    platforms: &[Platform],
    control_plane: &controlplane::ControlPlane,
) -> ImagesContract {
    let mut images: Vec<ImageRecord> = outcome
        .resolved
        .iter()
        .map(|r| {
            let i = &r.discovered.image;
            ImageRecord {
                reference: i.to_string(),
                registry: i.registry.clone(),
                repository: i.repository.clone(),
                tag: i.served_tag().map(String::from),
                digest: r.digest.clone(),
                media_type: r.media_type.clone(),
                source: r.discovered.source.kind().into(),
                found_in: r.discovered.found_in(),
                guessed: r.discovered.guessed(),
                outside_pod_spec: r.discovered.section() == discovery::origin::Section::OutsidePodSpec,
            }
        })
        .collect();
    images.sort_by(|a, b| a.reference.cmp(&b.reference));
    let mut missing_images: Vec<String> = outcome.failed.iter().map(|(d, _)| d.image.to_string()).collect();
    missing_images.sort();
    ImagesContract {
        images,
        manifests: outcome.manifests.clone(),
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
        missing_images,
        control_plane: control_plane.record(),
    }
}

/// `ferry images`: the discovered list, where each image comes from and where it was found.
pub fn run_list(spec: &Path, opts: &discovery::Options, as_json: bool, printer: &Printer) -> anyhow::Result<()> {
    let bundle = Bundle::load(spec)?;
    let found = discover(&bundle, opts, printer)?;
    if as_json {
        // stdout is the JSON document; where the control plane came from goes with the diagnostics.
        eprintln!("{}", listing::control_plane_line(&found));
        println!("{}", serde_json::to_string_pretty(&listing::json(&found))?);
    } else {
        listing::print(&found, printer);
    }
    Ok(())
}
