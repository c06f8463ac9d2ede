//! `installer check`: finds the cluster, reads it through the first master that answers, and
//! prints [`crate::check`]'s report.

use crate::check::{Row, check_until_healthy, waiting_line};
use crate::cli::ClusterCommandArgs;
use crate::cluster::Role;
use anyhow::{Result, anyhow};
use std::time::Duration;

/// Entry point of `installer check`.
pub fn run(args: &ClusterCommandArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let found = crate::cluster::locate::locate(&super::flags::where_(args)?).await?;
        let payload = crate::verify::open_payload(&args.run.installer)?;
        // The first master that answers: with one down, the others still tell the truth
        // (and the dead one shows as a NotReady node, named).
        let mut unreachable = Vec::new();
        let mut reached = None;
        for m in found.cluster.hosts.iter().filter(|h| h.is(Role::Master)) {
            match found.connect_one(&m.ip).await {
                Ok(h) => {
                    reached = Some(h);
                    break;
                }
                Err(e) => {
                    eprintln!("warning: master {} does not answer ({e:#}); reading the cluster through the next", m.ip);
                    unreachable.push((m.ip.clone(), format!("{e:#}")));
                }
            }
        }
        let h = reached.ok_or_else(|| {
            anyhow!(
                "no master of cluster {} answers:\n  {}",
                found.cluster.name,
                unreachable.iter().map(|(ip, e)| format!("{ip}: {e}")).collect::<Vec<_>>().join("\n  ")
            )
        })?;
        let wait = Duration::from_secs(args.run.wait.unwrap_or(0));
        let mut report =
            check_until_healthy(&found.cluster, &payload, h.as_ref(), wait, Duration::from_secs(15), |r, waited| {
                if !args.run.json {
                    eprintln!("{}", waiting_line(r, waited));
                }
            })
            .await?;
        for (ip, e) in unreachable {
            report.rows.insert(
                0,
                Row { check: "master".into(), object: ip, ok: false, detail: format!("unreachable over SSH: {e}") },
            );
        }
        if args.run.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.table());
        }
        report.verdict()
    })
}
