//! `spec.base`: a bundle built on another installer, as an application team ships its apps on
//! top of the platform team's Kubernetes bundle.
//!
//! Owns reading the base: fetched with `ferry pull` when it is an `oci://` reference, its
//! signature checked with `spec.base.key` before any of its content is read, every chunk
//! verified, its entries extracted (verified) to a staging directory beside the output, and what
//! its metadata says (images, manifests, platforms, control plane, launch steps). The builder
//! lays its entries under this spec's and merges the metadata with [`Base::merge_contract`]; the
//! new installer records the base in `metadata.base` ([`BaseRecord`]) and is signed by the new
//! key alone.

use crate::spec::{BaseSpec, Bundle};
use ferry_core::launch::LaunchStep;
use ferry_core::metadata::{self, BaseRecord, ImagesContract, MetadataError};
use ferry_core::printer::Printer;
use payload_format::{EntryKind, ExtractOptions, Payload, SignatureStatus, TrustPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why the base cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// Neither or both of `installer` and `oci`.
    #[error("{}: spec.base needs exactly one of `installer: PATH` and `oci: oci://REGISTRY/REPO:TAG`", file.display())]
    Source {
        /// The spec file.
        file: PathBuf,
    },
    /// `spec.base.key` cannot be read.
    #[error("{}: spec.base.key: {cause}", file.display())]
    Key {
        /// The spec file.
        file: PathBuf,
        /// Why.
        cause: ferry_core::trust::TrustError,
    },
    /// The base file cannot be opened as an installer.
    #[error("spec.base: {} is not a ferry installer: {cause}", path.display())]
    NotInstaller {
        /// The base file.
        path: PathBuf,
        /// Why.
        cause: payload_format::Error,
    },
    /// The base is not signed by `spec.base.key`.
    #[error("spec.base: {} is {what}, not by the key in {} ({expected}); nothing of it was read", path.display(), key.display())]
    Untrusted {
        /// The base file.
        path: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Its fingerprint.
        expected: String,
        /// What the base's signature says.
        what: String,
    },
    /// The base's content does not match its signed index.
    #[error("spec.base: {}: {cause}", path.display())]
    Damaged {
        /// The base file.
        path: PathBuf,
        /// Why.
        cause: payload_format::Error,
    },
    /// The base's metadata does not read.
    #[error("spec.base: {}: {cause}", path.display())]
    Metadata {
        /// The base file.
        path: PathBuf,
        /// Why.
        cause: MetadataError,
    },
    /// The two bundles are for different Kubernetes versions.
    #[error(
        "{}: spec.kubernetes.version is {ours}, but the base installer {name} {version} is for {theirs}; a bundle built on a base keeps its Kubernetes",
        file.display()
    )]
    KubernetesVersion {
        /// The spec file.
        file: PathBuf,
        /// This spec's version.
        ours: String,
        /// The base's.
        theirs: String,
        /// The base's name.
        name: String,
        /// The base's version.
        version: String,
    },
    /// `spec.platforms` differs from the base's.
    #[error(
        "{}: spec.platforms is [{ours}], but the base installer carries [{theirs}]; leave spec.platforms out to use the base's",
        file.display()
    )]
    Platforms {
        /// The spec file.
        file: PathBuf,
        /// This spec's.
        ours: String,
        /// The base's.
        theirs: String,
    },
    /// Fetching the base from a registry failed.
    #[error("spec.base.oci: {0}")]
    Pull(#[from] Box<crate::publish::pull::PullError>),
    /// A bad `spec.base.oci` reference, or logins that do not read.
    #[error("spec.base.oci: {0}")]
    Reference(String),
    /// The staging directory cannot be made.
    #[error("spec.base: staging the base's content in {}: {cause}", dir.display())]
    Staging {
        /// Where.
        dir: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// One entry of the base, extracted.
#[derive(Debug, Clone)]
pub struct BaseEntry {
    /// Its payload path.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its permission bits.
    pub mode: u32,
    /// Its size (files).
    pub size: u64,
    /// Its target (symlinks).
    pub link_target: String,
    /// Where its bytes are now (files).
    pub staged: PathBuf,
}

/// A verified base installer, its content staged for the new one.
pub struct Base {
    /// What the new installer records about it.
    pub record: BaseRecord,
    /// Its images, manifests, platforms and control plane.
    pub contract: ImagesContract,
    /// Its launch steps, run before the new spec's.
    pub launch: Vec<LaunchStep>,
    /// Its entries, in index order.
    pub entries: Vec<BaseEntry>,
    /// Where they are; removed when the build is done.
    _staging: tempfile::TempDir,
    /// The pulled file, when the base came from a registry.
    _pulled: Option<tempfile::TempDir>,
}

impl Base {
    /// Reads the base `spec` names: trust first, then every chunk, then the content.
    pub fn load(
        bundle: &Bundle,
        spec: &BaseSpec,
        output_dir: &Path,
        registry_auth: &[String],
        printer: &Printer,
    ) -> Result<Base, BaseError> {
        let file = bundle.file.clone();
        let key_path = bundle.dir.join(&spec.key);
        let key = ferry_core::trust::load_public_key(&key_path)
            .map_err(|cause| BaseError::Key { file: file.clone(), cause })?;
        let staging_err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |cause| BaseError::Staging { dir, cause }
        };
        let (path, pulled) = match (&spec.installer, &spec.oci) {
            (Some(p), None) => (bundle.dir.join(p), None),
            (None, Some(reference)) => {
                let tmp = tempfile::Builder::new()
                    .prefix(".ferry-base-")
                    .tempdir_in(output_dir)
                    .map_err(staging_err(output_dir))?;
                let path = tmp.path().join("base.installer");
                pull_base(bundle, reference, &path, registry_auth, printer)?;
                (path, Some(tmp))
            }
            _ => return Err(BaseError::Source { file }),
        };
        let payload = Payload::open(&path).map_err(|cause| BaseError::NotInstaller { path: path.clone(), cause })?;
        let policy = TrustPolicy { trusted: vec![key], allow_unsigned: false };
        let untrusted = |what: String| BaseError::Untrusted {
            path: path.clone(),
            key: key_path.clone(),
            expected: key.fingerprint(),
            what,
        };
        match payload.check_signature(&policy) {
            Ok(SignatureStatus::Trusted(_)) => {}
            Ok(_) => return Err(untrusted("not signed".into())),
            Err(e) => {
                let what = match payload.claimed_signer() {
                    Some(k) => format!("signed by {} ({e})", k.fingerprint()),
                    None => format!("not signed ({e})"),
                };
                return Err(untrusted(what));
            }
        }
        let checking = printer.progress(payload.file_len(), "check base");
        payload
            .verify_chunks(&|n| checking.inc(n))
            .map_err(|cause| BaseError::Damaged { path: path.clone(), cause })?;
        checking.finish();
        let meta = &payload.index().metadata;
        let ours = &bundle.spec.spec.kubernetes.version;
        if ours.trim_start_matches('v') != meta.kubernetes_version.trim_start_matches('v') {
            return Err(BaseError::KubernetesVersion {
                file,
                ours: ours.clone(),
                theirs: meta.kubernetes_version.clone(),
                name: meta.name.clone(),
                version: meta.version.clone(),
            });
        }
        let md = |cause| BaseError::Metadata { path: path.clone(), cause };
        let contract = ImagesContract {
            images: metadata::images(&meta.extra).map_err(md)?,
            manifests: metadata::manifests(&meta.extra).map_err(md)?,
            platforms: metadata::platforms(&meta.extra).map_err(md)?,
            missing_images: metadata::missing_images(&meta.extra).map_err(md)?,
            control_plane: metadata::control_plane(&meta.extra).map_err(md)?.unwrap_or_default(),
        };
        let launch = metadata::launch_steps(&meta.extra).map_err(md)?;
        let staging =
            tempfile::Builder::new().prefix(".ferry-base-").tempdir_in(output_dir).map_err(staging_err(output_dir))?;
        let unpacking = printer.progress(payload.index().total_size(), "unpack base");
        let opts = ExtractOptions { dest: staging.path().to_path_buf(), selection: Vec::new(), force: true };
        payload
            .extract(&opts, &|n| unpacking.inc(n))
            .map_err(|cause| BaseError::Damaged { path: path.clone(), cause })?;
        unpacking.finish();
        let entries = payload
            .index()
            .entries
            .iter()
            .map(|e| BaseEntry {
                path: e.path.clone(),
                kind: e.kind,
                mode: e.mode,
                size: e.size,
                link_target: e.link_target.clone(),
                staged: staging.path().join(&e.path),
            })
            .collect();
        let record = BaseRecord {
            name: meta.name.clone(),
            version: meta.version.clone(),
            kubernetes_version: meta.kubernetes_version.clone(),
            digest: payload_format::index_digest(&payload),
            signer: key.fingerprint(),
        };
        printer.note(format!(
            "base: {} {} (index {}), signed by {}: {} entries, {} images",
            record.name,
            record.version,
            record.digest,
            record.signer,
            payload.index().entries.len(),
            contract.images.len()
        ));
        Ok(Base { record, contract, launch, entries, _staging: staging, _pulled: pulled })
    }

    /// The image references the base carries (and the new build need not fetch).
    pub fn image_refs(&self) -> BTreeSet<String> {
        self.contract.images.iter().map(|i| i.reference.clone()).collect()
    }

    /// Checks `spec.platforms` against the base's; an empty list takes the base's.
    pub fn platforms_for(&self, bundle: &Bundle) -> Result<Vec<String>, BaseError> {
        let ours = &bundle.spec.spec.platforms;
        if ours.is_empty() {
            return Ok(self.contract.platforms.clone());
        }
        let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
            (ours.iter().collect(), self.contract.platforms.iter().collect());
        if a != b {
            return Err(BaseError::Platforms {
                file: bundle.file.clone(),
                ours: ours.join(", "),
                theirs: self.contract.platforms.join(", "),
            });
        }
        Ok(ours.clone())
    }

    /// The base's images, manifests and control plane with the new build's added (the new
    /// build's record wins for a reference both hold).
    pub fn merge_contract(&self, new: ImagesContract) -> ImagesContract {
        let mut images: BTreeMap<String, metadata::ImageRecord> =
            self.contract.images.iter().map(|i| (i.reference.clone(), i.clone())).collect();
        for i in new.images {
            images.insert(i.reference.clone(), i);
        }
        let mut manifests = self.contract.manifests.clone();
        manifests.extend(new.manifests);
        let carried: BTreeSet<&String> = images.keys().collect();
        let mut missing: BTreeSet<String> =
            self.contract.missing_images.iter().chain(new.missing_images.iter()).cloned().collect();
        missing.retain(|m| !carried.contains(m));
        ImagesContract {
            images: images.into_values().collect(),
            manifests,
            platforms: self.contract.platforms.clone(),
            missing_images: missing.into_iter().collect(),
            control_plane: self.contract.control_plane.clone(),
        }
    }
}

/// `ferry pull` of `reference` into `path`, with the build's logins; plain http only for a
/// registry the spec lists in `insecureRegistries`.
fn pull_base(
    bundle: &Bundle,
    reference: &str,
    path: &Path,
    registry_auth: &[String],
    printer: &Printer,
) -> Result<(), BaseError> {
    use ferry_distribution::remote;
    let reference = remote::parse_reference(reference, None).map_err(|e| BaseError::Reference(e.to_string()))?;
    let credentials = ferry_distribution::credentials::Credentials::load(registry_auth)
        .map_err(|e| BaseError::Reference(e.to_string()))?;
    let plain_http = bundle.spec.spec.insecure_registries.iter().any(|h| h.eq_ignore_ascii_case(&reference.host));
    let access = remote::Access { plain_http, ca_file: None, credentials };
    crate::publish::pull::pull(&reference, &access, path, 4, printer).map_err(Box::new)?;
    Ok(())
}
