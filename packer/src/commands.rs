//! The `push` and `pull` commands: flags to options, the summary printed.

use crate::cli::{PullArgs, PushArgs, RegistryAccessArgs};
use crate::publish::{pull, push};
use anyhow::{Context, Result};
use ferry_core::printer::Printer;
use ferry_distribution::credentials::Credentials;
use ferry_distribution::remote;

fn access(args: &RegistryAccessArgs) -> Result<remote::Access> {
    Ok(remote::Access {
        plain_http: args.plain_http,
        ca_file: args.ca_file.clone(),
        credentials: Credentials::load(&args.registry_auth)?,
    })
}

/// `ferry push INSTALLER oci://…`.
pub fn push(args: &PushArgs, printer: &Printer) -> Result<()> {
    let reference = remote::parse_reference(&args.reference, None)?;
    let opts = push::PushOptions {
        jobs: args.access.jobs,
        chunk: args.chunk_mib.clamp(1, 1024) << 20,
        resume_dir: if args.no_resume { None } else { remote::default_resume_dir() },
    };
    let s = push::push(&args.file, &reference, &access(&args.access)?, &opts, printer)
        .with_context(|| format!("ferry push {}", args.file.display()))?;
    if args.access.json {
        ferry_core::printer::stdout_line(&serde_json::to_string(&s)?);
    } else {
        printer.out(format!(
            "pushed {} to {} ({}): {} layers, {} already there; {} MiB sent, {} MiB skipped",
            args.file.display(),
            s.reference,
            s.digest,
            s.layers,
            s.layers_present,
            s.bytes_sent >> 20,
            s.bytes_present >> 20
        ));
    }
    Ok(())
}

/// `ferry pull oci://… -o FILE`.
pub fn pull(args: &PullArgs, printer: &Printer) -> Result<()> {
    let reference = remote::parse_reference(&args.reference, None)?;
    let s = pull::pull(&reference, &access(&args.access)?, &args.output, args.access.jobs, printer)?;
    if args.access.json {
        ferry_core::printer::stdout_line(&serde_json::to_string(&s)?);
    } else {
        let reused = match s.bytes_reused {
            0 => String::new(),
            n => format!("; {} MiB were already there from an interrupted pull", n >> 20),
        };
        printer.out(format!(
            "pulled {} into {}: {} {} ({} bytes, sha256 {}){reused}",
            s.reference, s.file, s.name, s.version, s.size, s.sha256
        ));
    }
    Ok(())
}
