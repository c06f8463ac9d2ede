//! `installer reset`: finds the cluster (or just the `--hosts` given), then [`crate::reset`].

use super::flags;
use crate::cli::ClusterCommandArgs;
use crate::cluster::locate::{self, Found};
use crate::ssh::client::SshOptions;
use anyhow::Result;
use std::time::Duration;

/// Entry point of `installer reset`.
pub fn run(args: &ClusterCommandArgs, quiet: bool, no_progress: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let only: Vec<String> = args
            .run
            .hosts
            .iter()
            .flat_map(|h| h.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        // The cluster as ferry knows it (--master, -f, or the state beside the installer); with
        // `--hosts` and nothing known, just those hosts, reached with the flags' SSH settings (a
        // cluster may be gone or half-made, so nothing else is needed).
        let located = if only.is_empty() || args.master.is_some() || args.run.cluster_file.is_some() {
            Some(locate::locate(&flags::where_(args)?).await?)
        } else {
            locate::locate(&flags::where_(args)?).await.ok()
        };
        let known = located.is_some();
        let found = match located {
            Some(found) => found,
            None => bare_hosts(args, &only).await?,
        };
        let payload = crate::verify::open_payload(&args.run.installer)?;
        let opts = crate::reset::Options {
            json: args.run.json,
            quiet,
            no_progress,
            parallel: args.run.parallel,
            force_unlock: args.run.force_unlock,
        };
        tokio::select! {
            result = crate::reset::reset(found, only, known, payload, &opts) => result,
            signal = crate::run::interrupt::signalled() => Err(crate::run::interrupt::Stopped { signal: signal? }.into()),
        }
    })
}

/// `only`, reached with the flags' SSH settings, as a cluster of their own.
async fn bare_hosts(args: &ClusterCommandArgs, only: &[String]) -> Result<Found> {
    let a = &args.run;
    let cluster = crate::cluster::resolve(None, &flags::overrides(a, only.to_vec()))?;
    let opts = SshOptions {
        known_hosts: cluster.known_hosts.clone(),
        accept_new: a.accept_new_host_keys,
        connect_timeout: Duration::from_secs(a.connect_timeout),
        keepalive: Duration::from_secs(a.keepalive.max(1)),
        secrets: flags::secrets(a)?,
    };
    let jump = locate::jump_for(&cluster, &opts).await?;
    let local_state = locate::local_state_dir(&a.installer, a.state_dir.as_deref(), &cluster.name);
    Ok(Found { cluster, opts, jump, local_state })
}
