//! ferry's client of the OCI distribution API, shared by the packer (`ferry build` pulls,
//! `ferry push`/`pull`) and the installer (`installer registry push` into a site's registry).
//!
//! * [`credentials`] owns logins: `--registry-auth` and Docker's `config.json`, never printed;
//! * [`http`] owns what every request shares (bounded bodies, error bodies, challenges);
//! * [`token`] owns Bearer tokens from a registry's token service;
//! * [`remote`] owns one repository of one registry: references, transport, login, and the
//!   requests (blobs, uploads, mounts, manifests);
//! * [`upload`] owns sending one blob: skipped when present, chunked, retried, and resumed
//!   from the last acknowledged chunk across runs.
//!
//! Blocking I/O on threads, no async runtime: a push is a handful of long uploads.
#![deny(missing_docs)]

pub mod credentials;
pub mod http;
pub mod remote;
pub mod token;
pub mod upload;
