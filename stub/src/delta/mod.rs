//! Differential installers on site: `installer complete --base OLD -o FILE`, and `--base` for
//! `run`, `join` and `upgrade`, which put the complete installer together before any host is
//! touched and then deliver it in place of this file. A delta used alone is refused, naming the
//! base it needs, by every command that reads its content.
//!
//! Owns the command side: trust, where the complete installer is kept (`.complete/` in the
//! state directory, so the next release's delta finds its base there), the atomic write and the
//! messages. The bytes are `payload_format`'s (`check_base`, `complete`).

use crate::cli::{CompleteArgs, RunArgs};
use crate::cluster::locate::Where;
use crate::printer::Printer;
use crate::units;
use anyhow::{Result, anyhow, bail};
use ferry_core::output::TempOutput;
use payload_format::{CompleteSummary, DeltaRecord, Payload, SignatureStatus, TrustPolicy, index_digest};
use std::path::{Path, PathBuf};

mod from_hosts;

/// Where the complete installers put together for runs are kept, under a state directory.
const COMPLETE_DIR: &str = ".complete";

/// What to say when a delta is used without its base.
fn needs_base(path: &Path, record: &DeltaRecord) -> String {
    format!(
        "{} is a differential installer: it carries only what {} {} ({}) lacks. Give that installer with \
         --base OLD_INSTALLER, or put the complete one together first: `{} complete --base OLD_INSTALLER -o FILE`",
        path.display(),
        record.base.name,
        record.base.version,
        record.base.digest,
        invoked_as(path)
    )
}

/// How the operator would name this file in a command.
fn invoked_as(path: &Path) -> String {
    if path == Path::new(crate::SELF_EXE) {
        std::env::args().next().unwrap_or_else(|| "./installer".into())
    } else {
        path.display().to_string()
    }
}

/// Refuses to read a differential installer's content without its base. A file that cannot
/// be opened passes: the command that reads it says why, in its own words.
pub fn refuse_alone(path: &Path) -> Result<()> {
    let Ok(payload) = Payload::open(path) else { return Ok(()) };
    match payload.delta_record()? {
        Some(record) => Err(anyhow!(needs_base(payload.path(), &record))),
        None => Ok(()),
    }
}

/// Puts the complete installer together at `out` (atomically, mode 0755) from `delta` and the
/// base at `base_path`, after checking the base by digest; then checks that the result is
/// signed by the key that signed `delta`.
pub fn complete_file(delta: &Payload, base_path: &Path, out: &Path, printer: &Printer) -> Result<CompleteSummary> {
    let base = crate::verify::open_payload(base_path)?;
    let record = payload_format::check_base(delta, &base)?;
    let (file, guard) = TempOutput::create(out, "complete")?;
    let tmp = guard.path.clone();
    let progress = printer.progress(record.complete.size, "complete");
    let summary = payload_format::complete(delta, &base, file, &tmp, &|n| progress.inc(n));
    progress.finish();
    let summary = summary?;
    let completed = Payload::open(&tmp)?;
    let same_signer = TrustPolicy {
        trusted: delta.claimed_signer().into_iter().collect(),
        allow_unsigned: delta.claimed_signer().is_none(),
    };
    if completed.check_signature(&same_signer).is_err() {
        bail!(
            "the complete installer {} describes is not signed by the key that signed it; refusing it",
            delta.path().display()
        );
    }
    guard.finish(out)?;
    Ok(summary)
}

/// `installer complete`.
pub fn run(path: &Path, args: &CompleteArgs, printer: &Printer) -> Result<()> {
    let delta = crate::verify::open_payload(path)?;
    let policy = TrustPolicy {
        trusted: crate::trust::trusted_keys(&args.trust.keys)?,
        allow_unsigned: args.trust.allow_unsigned,
    };
    let signer = match delta.check_signature(&policy)? {
        SignatureStatus::Trusted(k) => k.fingerprint(),
        SignatureStatus::ValidUnpinned(k) => bail!(
            "{} is signed by {}, and no key is trusted here; give the vendor's key with --key VENDOR.pub \
             (or FERRY_TRUSTED_KEYS, /etc/ferry/trusted-keys/)",
            delta.path().display(),
            k.fingerprint()
        ),
        SignatureStatus::Unsigned => "nobody (UNSIGNED)".into(),
    };
    if delta.delta_record()?.is_none() {
        bail!("{} is a complete installer already: it needs no base", delta.path().display());
    }
    let s = complete_file(&delta, &args.base, &args.output, printer)?;
    let r = &s.record;
    if args.json {
        crate::printer::stdout_line(
            &serde_json::json!({
                "output": args.output.display().to_string(),
                "complete": r.complete,
                "base": r.base,
                "bytesFromBase": s.bytes_from_base,
                "bytesFromDelta": s.bytes_from_delta,
                "signer": signer,
            })
            .to_string(),
        );
        return Ok(());
    }
    printer.out(format!(
        "completed {} ({}, {} {} {}): {} from the base {}, {} from {}; signed by {signer}",
        args.output.display(),
        units::bytes(s.file_len),
        r.complete.name,
        r.complete.version,
        r.complete.digest,
        units::bytes(s.bytes_from_base),
        args.base.display(),
        units::bytes(s.bytes_from_delta),
        invoked_as(path),
    ));
    Ok(())
}

/// For `run`, `join` and `upgrade`: when the installer is differential, puts the complete one
/// together from `--base` (or reuses the one put together earlier) and makes it the file they
/// deliver. Without `--base`, the base is looked for on this machine, and then on the registry
/// hosts of the cluster `cluster` says how to reach (called only then: it may read a password).
/// Refuses `--base` with a complete installer.
pub fn prepare_run(args: &mut RunArgs, printer: &Printer, cluster: &dyn Fn(&RunArgs) -> Result<Where>) -> Result<()> {
    let delta = crate::verify::open_payload(&args.installer)?;
    let record = match (delta.delta_record()?, &args.base) {
        (None, None) => return Ok(()),
        (None, Some(base)) => bail!(
            "--base {} is for a differential installer, and {} is complete: run it without --base",
            base.display(),
            invoked_as(&args.installer)
        ),
        (Some(record), None) => {
            if let Some(found) = find_base(&args.installer, args.state_dir.as_deref(), &record) {
                printer.note(format!(
                    "using {} as the base: it is {} {}, the installer this one was built on (index {})",
                    found.display(),
                    record.base.name,
                    record.base.version,
                    record.base.digest
                ));
                args.base = Some(found);
            }
            record
        }
        (Some(record), Some(_)) => record,
    };
    let out = kept_complete(&args.installer, args.state_dir.as_deref(), &record)?;
    let reusable = Payload::open(&out).is_ok_and(|p| index_digest(&p) == record.complete.digest);
    if reusable {
        printer.note(format!("using the complete installer put together earlier: {}", out.display()));
    } else {
        // Kept until the complete installer is written: removed when this scope ends, either way.
        let mut fetched = None;
        let base = match &args.base {
            Some(base) => base.clone(),
            None => fetched.insert(base_from_cluster(args, &record, &out, printer, cluster)?).path.clone(),
        };
        let s = complete_file(&delta, &base, &out, printer)?;
        let from = if fetched.is_some() {
            format!("the base copied from {}", record.base.name)
        } else {
            base.display().to_string()
        };
        printer.note(format!(
            "put together the complete installer {} {} ({}) at {}: {} from {}, {} from this file",
            record.complete.name,
            record.complete.version,
            units::bytes(s.file_len),
            out.display(),
            units::bytes(s.bytes_from_base),
            from,
            units::bytes(s.bytes_from_delta),
        ));
    }
    args.completed = Some(out);
    Ok(())
}

/// Copies the base from a registry host of the cluster into a temporary file beside `out`,
/// removed when the returned guard is dropped (it is never renamed into place).
fn base_from_cluster(
    args: &RunArgs,
    record: &DeltaRecord,
    out: &Path,
    printer: &Printer,
    cluster: &dyn Fn(&RunArgs) -> Result<Where>,
) -> Result<TempOutput> {
    let (file, scratch) = TempOutput::create(out, "base")?;
    let found = cluster(args).and_then(|w| from_hosts::fetch(&w, record, file, &scratch.path, printer));
    match found {
        Ok(()) => Ok(scratch),
        Err(e) => Err(anyhow!(
            "{}\nIt is not on this machine (beside the installer, or kept by an earlier run), and asking the cluster failed: {e:#}",
            needs_base(&args.installer, record)
        )),
    }
}

/// The base, when this machine holds it where an earlier run left it or the operator keeps
/// releases: a file whose index digest is the one the delta names, among the complete
/// installers kept in the state directories (`.complete/`) and the files beside the delta.
/// Only each file's trailer and index are read.
fn find_base(installer: &Path, state_dir: Option<&Path>, record: &DeltaRecord) -> Option<PathBuf> {
    let beside =
        if installer == Path::new(crate::SELF_EXE) { std::env::current_exe().ok() } else { Some(installer.into()) };
    let mut dirs: Vec<PathBuf> =
        crate::cluster::state_dir::bases(installer, state_dir, &crate::cluster::state_dir::process_env)
            .into_iter()
            .map(|b| b.dir.join(COMPLETE_DIR))
            .collect();
    dirs.extend(
        beside
            .as_deref()
            .and_then(Path::parent)
            .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
            .map(Path::to_path_buf),
    );
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .find(|p| Payload::open(p).is_ok_and(|c| index_digest(&c) == record.base.digest))
}

/// Where the complete installer a delta describes is kept: `.complete/NAME-VERSION-DIGEST` in the
/// first state directory that can be written (beside the installer, else the user's, or
/// `--state-dir`).
fn kept_complete(installer: &Path, state_dir: Option<&Path>, record: &DeltaRecord) -> Result<PathBuf> {
    let bases = crate::cluster::state_dir::bases(installer, state_dir, &crate::cluster::state_dir::process_env);
    let mut tried = Vec::new();
    for base in bases {
        let dir = base.dir.join(COMPLETE_DIR);
        match crate::cluster::state_dir::prove_writable(&dir) {
            Ok(()) => return Ok(dir.join(file_name(record))),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    bail!("no writable place for the complete installer: {}; give --state-dir DIR", tried.join("; "))
}

/// `NAME-VERSION-<12 hex of the digest>`, with anything but `[A-Za-z0-9._-]` replaced.
fn file_name(record: &DeltaRecord) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
    };
    let hex = record.complete.digest.trim_start_matches("sha256:");
    format!("{}-{}-{}", clean(&record.complete.name), clean(&record.complete.version), &hex[..hex.len().min(12)])
}
