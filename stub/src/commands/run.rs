//! `installer run`: the command line to a [`crate::run`] delivery.

use super::flags;
use crate::cli::RunArgs;
use crate::cluster::Overrides;
use crate::run::{self, DEFAULT_WAIT_SECS, Options};
use crate::ssh::client::SshOptions;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Runs `installer run`.
pub fn run(args: &RunArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("run").build()?;
    rt.block_on(deliver(args, quiet, no_progress))
}

/// The run's options from its flags.
pub fn options(args: &RunArgs, quiet: bool, no_progress: bool) -> Options {
    Options {
        installer: args.installer.clone(),
        payload: args.payload_file().to_path_buf(),
        trusted_keys: args.trusted_keys.clone(),
        allow_unsigned: args.allow_unsigned,
        allow_untrusted_signer: args.allow_untrusted_signer,
        state_dir: args.state_dir.clone(),
        json: args.json,
        quiet,
        no_progress,
        phase_timeout: Duration::from_secs(args.phase_timeout),
        force: args.force,
        keepalive: Duration::from_secs(args.keepalive.max(1)),
        parallel: args.parallel,
        relay_chains: args.relay_chains,
        skip_launch: args.skip_launch,
        wait: Duration::from_secs(args.wait.unwrap_or(DEFAULT_WAIT_SECS)),
        operation: args.operation,
        force_unlock: args.force_unlock,
        dry_run: args.dry_run,
    }
}

async fn deliver(args: &RunArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let started = Instant::now();
    let opts = options(args, quiet, no_progress);
    let overrides = Overrides {
        masters: args.masters.clone(),
        workers: args.workers.clone(),
        registry_replicas: args.registry_replicas,
        ..flags::overrides(args, args.hosts.clone())
    };
    let ctx = run::setup::open(&opts, args.cluster_file.as_deref(), &overrides)?;
    if args.dry_run {
        run::setup::print_plan(&ctx, args.relay_chains);
        ctx.rep.line("dry-run", "dry run: nothing was changed", serde_json::json!({}));
        return Ok(());
    }
    let ssh = SshOptions {
        known_hosts: ctx.cluster.known_hosts.clone(),
        accept_new: args.accept_new_host_keys,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        keepalive: opts.keepalive,
        secrets: flags::secrets(args)?,
    };
    let addrs: Vec<String> = ctx.cluster.hosts.iter().map(|h| h.ip.clone()).collect();
    ctx.rep.hosts(&addrs);
    let connecting = Instant::now();
    let delivery = async {
        let (connected, problems) = run::setup::connect(&ctx, &ssh, args.parallel).await?;
        run::deliver::deliver(ctx.clone(), &opts, connected, problems, started, connecting).await
    };
    tokio::select! {
        result = delivery => result,
        signal = run::interrupt::signalled() => Err(run::interrupt::stopped(&ctx, signal?).into()),
    }
}
