//! What ferry's packer (`ferry`) and installer (`./installer`) share, and nothing that needs a
//! network stack: output ([`printer`], [`units`]), atomic file writes ([`fs`]), the one image
//! reference type ([`image_ref`]), OCI media types ([`oci`]), the typed bundle metadata the
//! packer writes for the installer ([`metadata`], [`launch`]), and the two commands both
//! binaries offer, [`verify`] and [`inspect`], with the keys they trust ([`trust`]) and the
//! flags that ask for them ([`cli_args`]). Each binary keeps its own command line, flattens
//! those flags into it and converts them into this crate's option structs.
#![deny(missing_docs)]

pub mod cli_args;
pub mod fs;
pub mod image_ref;
pub mod inspect;
pub mod launch;
pub mod metadata;
pub mod oci;
pub mod output;
pub mod printer;
pub mod trust;
pub mod units;
pub mod verify;

/// The path the running installer reads its own payload from. The kernel resolves it to the
/// executable actually running, so renaming or moving the file does not matter.
pub const SELF_EXE: &str = "/proc/self/exe";
