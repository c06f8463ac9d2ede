//! `ferry build --base OLD`: the release written as a differential installer carrying only what
//! OLD lacks (the format's `write_delta`), the complete installer kept only when asked for.
//!
//! Owns the command's side of it: the base opened and refused early (before any image is
//! fetched), the temporary complete installer, the delta written atomically beside the output.

use ferry_core::output::{OutputError, TempOutput};
use payload_format::{DeltaSummary, Payload, SecretKey};
use std::path::{Path, PathBuf};

/// Why a differential installer cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// `--base` names a differential installer.
    #[error(
        "{}: --base must be a complete installer, and this one is itself differential; complete it first \
         (`./FILE complete --base …`) and build on that",
        path.display()
    )]
    BaseIsDelta {
        /// The file given.
        path: PathBuf,
    },
    /// Reading the base or the complete installer, or writing the delta, failed.
    #[error(transparent)]
    Payload(#[from] payload_format::Error),
    /// The delta cannot be written in place.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// The base, opened: an installer (its index checked against its trailer) and not itself a delta.
pub fn open_base(path: &Path) -> Result<Payload, DeltaError> {
    let base = Payload::open(path)?;
    if base.delta_record()?.is_some() {
        return Err(DeltaError::BaseIsDelta { path: path.into() });
    }
    Ok(base)
}

/// Where the complete installer goes while the delta is made from it: `kept` when asked for,
/// else a temporary name beside the output, removed when the returned guard drops.
pub fn complete_path(output: &Path, kept: Option<&Path>) -> Result<(PathBuf, Option<TempOutput>), DeltaError> {
    match kept {
        Some(path) => Ok((path.to_path_buf(), None)),
        None => {
            let guard = TempOutput::named(output, "complete")?;
            Ok((guard.path.clone(), Some(guard)))
        }
    }
}

/// Writes the delta from `complete` (a finished installer) and `base` to `output`, atomically.
pub fn write(
    output: &Path,
    complete: &Path,
    base: &Payload,
    key: Option<&SecretKey>,
) -> Result<DeltaSummary, DeltaError> {
    let complete = Payload::open(complete)?;
    let (file, guard) = TempOutput::create(output, "build")?;
    let summary = payload_format::write_delta(&complete, base, file, &guard.path, key)?;
    guard.finish(output)?;
    Ok(summary)
}
