//! The upgrade's phases around the nodes: keeping the previous release's registry serving while
//! the new one is staged, pointing every node's containerd at both, the etcd snapshot, and
//! the clean-up once every node is on the new release.
//!
//! Owns the previous release's registry (`ferry-registry-previous.service`, the old installer
//! file kept as `installer.previous` by a hard link, on the registry port + 1), the containerd
//! mirror lists during and after the upgrade, and the snapshot file beside the operator's state.

use crate::node::{FERRY_DIR, INSTALLER_PATH};
use crate::run::engine::{BoxFuture, Decision, Outcome, Phase};
use crate::run::records::{self, State};
use crate::run::{Ctx, checked, prepare_plan};
use crate::ssh::RemoteHost;
use anyhow::{Context, Result, anyhow, bail};
use std::sync::Arc;

/// Where a node's previous programs and configuration are kept during an upgrade.
pub const PREVIOUS_DIR: &str = "/var/lib/ferry/previous";

/// The previous release's registry unit, on registry hosts during an upgrade.
pub const PREVIOUS_UNIT: &str = "ferry-registry-previous.service";

/// The previous release's installer file on registry hosts (a hard link to the old file).
pub fn previous_installer() -> String {
    format!("{INSTALLER_PATH}.previous")
}

/// The previous release's registry port: the cluster's registry port + 1.
pub fn previous_port(ctx: &Ctx) -> u16 {
    ctx.cluster.registry_port.wrapping_add(1)
}

/// Every registry replica's previous-release endpoint, in cluster order.
pub fn previous_endpoints(ctx: &Ctx) -> Vec<String> {
    ctx.cluster.registry_hosts().iter().map(|h| format!("https://{}:{}", h.ip, previous_port(ctx))).collect()
}

/// The prepare plan for host `i` during the upgrade: the new release's replicas first, then the
/// previous release's, so a pod that still needs an old image can pull it until the end.
pub fn plan_during(ctx: &Ctx, i: usize) -> crate::agent::prepare::Plan {
    let mut plan = prepare_plan(ctx, &ctx.cluster.hosts[i]);
    let own = ctx.cluster.hosts[i].ip.clone();
    let mut previous = previous_endpoints(ctx);
    if let Some(me) = previous.iter().position(|e| e.contains(&format!("//{own}:"))) {
        let mine = previous.remove(me);
        previous.insert(0, mine);
    }
    plan.registry_endpoints.extend(previous);
    plan
}

/// The shell that keeps the old installer and serves it: `new` is the new installer's id.
fn keep_previous_script(ctx: &Ctx, new: &str) -> String {
    let (port, pport, p) = (ctx.cluster.registry_port, previous_port(ctx), previous_installer());
    format!(
        r#"set -e
I={INSTALLER_PATH}; P={p}; U=/etc/systemd/system/{PREVIOUS_UNIT}
if [ -f "$I" ] && [ "$(tail -c 128 "$I" | sha256sum | cut -d' ' -f1)" != "{new}" ]; then
  if [ ! "$I" -ef "$P" ]; then rm -f "$P.tmp"; ln "$I" "$P.tmp"; mv -f "$P.tmp" "$P"; fi
fi
if [ ! -f "$P" ]; then echo none; exit 0; fi
sed -e "s#^ExecStart=$I #ExecStart=$P #" -e "s# --file $I # --file $P #" -e "s#0.0.0.0:{port} #0.0.0.0:{pport} #" \
    -e 's#^Description=.*#Description=ferry built-in image registry: the previous release, during an upgrade#' \
    /etc/systemd/system/ferry-registry.service > "$U.tmp"
for want in "^ExecStart=$P " " --file $P " " 0.0.0.0:{pport} "; do
  grep -q -- "$want" "$U.tmp" || {{ echo "ferry-registry.service is not as ferry wrote it (no '$want' after the rewrite)" >&2; exit 1; }}
done
mv -f "$U.tmp" "$U"
systemctl daemon-reload
systemctl enable {PREVIOUS_UNIT} >/dev/null 2>&1
systemctl restart {PREVIOUS_UNIT}
for i in $(seq 60); do
  if (exec 3<>/dev/tcp/127.0.0.1/{pport}) 2>/dev/null; then echo serving; exit 0; fi
  sleep 0.5
done
journalctl -u {PREVIOUS_UNIT} -n 5 --no-pager >&2 || true
echo "the previous release's registry did not start on port {pport}" >&2
exit 1
"#
    )
}

/// Phase keep-previous, on registry hosts: the installer the cluster runs is kept beside the new
/// one and served on the next port, so pulls of the old release's images never stop.
pub struct KeepPrevious;

impl<H: RemoteHost> Phase<H> for KeepPrevious {
    fn name(&self) -> &'static str {
        "keep-previous"
    }

    fn clock(&self) -> Option<&'static str> {
        Some("stage")
    }

    fn should_run(&self, ctx: &Ctx, i: usize, state: &State) -> Decision {
        if !ctx.cluster.hosts[i].is(crate::cluster::Role::Registry) {
            Decision::Pass
        } else if records::done(state, "keep-previous", &ctx.id) {
            Decision::Skip("already serving the previous release")
        } else {
            Decision::Run
        }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let script = keep_previous_script(&ctx, &ctx.id);
            let out = checked(h.as_ref(), "bash -s", script.as_bytes(), "serving the previous release").await?;
            let serving = out.text().trim() == "serving";
            Ok(Outcome::Done {
                record: Some(serde_json::json!({"previous": serving, "port": previous_port(&ctx)})),
                message: if serving {
                    format!("previous release served on port {}", previous_port(&ctx))
                } else {
                    "no previous release to keep".into()
                },
                data: serde_json::json!({}),
            })
        })
    }
}

/// Phase mirrors: every node's containerd lists the new release's registry replicas, then the
/// previous release's, without touching anything else on the node.
pub struct Mirrors;

impl<H: RemoteHost> Phase<H> for Mirrors {
    fn name(&self) -> &'static str {
        "mirrors"
    }

    fn clock(&self) -> Option<&'static str> {
        Some("stage")
    }

    fn should_run(&self, ctx: &Ctx, _i: usize, state: &State) -> Decision {
        if records::done(state, "mirrors", &ctx.id) { Decision::Skip("already done") } else { Decision::Run }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let mut plan = plan_during(&ctx, i);
            plan.containerd_only = true;
            let report = crate::ssh::agent::prepare(h.as_ref(), INSTALLER_PATH, &plan).await?;
            Ok(Outcome::recorded(
                serde_json::json!({"registry_endpoints": plan.registry_endpoints, "changed": report.changed}),
            ))
        })
    }
}

/// Phase snapshot, on master0: an etcd snapshot taken before any node changes, kept on the
/// master under /var/lib/ferry/backup and copied beside the operator's state (0600: etcd holds
/// the cluster's Secrets).
pub struct Snapshot {
    /// master0's index.
    pub m0: usize,
    /// The version the cluster runs, for the file's name.
    pub from: String,
}

impl<H: RemoteHost> Phase<H> for Snapshot {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    fn clock(&self) -> Option<&'static str> {
        Some("stage")
    }

    fn should_run(&self, ctx: &Ctx, i: usize, state: &State) -> Decision {
        if i != self.m0 {
            Decision::Pass
        } else if records::done(state, "snapshot", &ctx.id) {
            // Taken before the first node changed; a later one would hold a half-upgraded cluster.
            Decision::Skip("taken before the upgrade began")
        } else {
            Decision::Run
        }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let host = &ctx.cluster.hosts[i];
            let name = format!("etcd-before-{}.db", self.from);
            let remote = format!("{FERRY_DIR}/backup/{name}");
            ctx.rep.event(&host.ip, "snapshot", "start", "etcdctl snapshot save", serde_json::json!({}));
            checked(h.as_ref(), "bash -s", snapshot_script(&remote).as_bytes(), "the etcd snapshot").await?;
            let sum = checked(h.as_ref(), &format!("sha256sum {remote}"), b"", "hashing the etcd snapshot").await?;
            let want = sum.text().split_whitespace().next().unwrap_or_default().to_string();
            let out = checked(h.as_ref(), &format!("cat {remote}"), b"", "copying the etcd snapshot").await?;
            let got = hex::encode(payload_format::sha256(&out.stdout));
            if got != want || out.stdout.is_empty() {
                bail!("the etcd snapshot changed on its way here (sha256 {got}, {want} on the master)");
            }
            let local = ctx.local_state.join(&name);
            ferry_core::fs::write_atomic(&local, &out.stdout, 0o600)
                .with_context(|| format!("writing the etcd snapshot to {}", local.display()))?;
            Ok(Outcome::Done {
                record: Some(
                    serde_json::json!({"on_master": remote, "local": local, "sha256": want, "bytes": out.stdout.len()}),
                ),
                message: format!(
                    "{} ({}) kept at {remote} and {}",
                    name,
                    crate::units::bytes(out.stdout.len() as u64),
                    local.display()
                ),
                data: serde_json::json!({"local": local, "bytes": out.stdout.len()}),
            })
        })
    }
}

/// The shell that saves an etcd snapshot to `remote` with the etcdctl of the running etcd
/// container (its image carries it; its pki and data directories are the host's).
fn snapshot_script(remote: &str) -> String {
    format!(
        r#"set -e
C="crictl --runtime-endpoint unix:///run/containerd/containerd.sock"
id=$($C ps --name '^etcd$' --state running -q | head -n1)
[ -n "$id" ] || {{ echo "no running etcd container on this master" >&2; exit 1; }}
$C exec "$id" etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
  --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
  snapshot save /var/lib/etcd/ferry-snapshot.db.part >&2
mkdir -p -m 700 "$(dirname {remote})"
mv -f /var/lib/etcd/ferry-snapshot.db.part {remote}
chmod 600 {remote}
"#
    )
}

/// Phase finish: every node's containerd lists only the new release's replicas, the previous
/// release's registry stops and its file goes, and each node's prepare record names the new
/// installer (so a later `run` or `join` does not prepare it again).
pub struct Finish;

impl<H: RemoteHost> Phase<H> for Finish {
    fn name(&self) -> &'static str {
        "finish"
    }

    fn clock(&self) -> Option<&'static str> {
        Some("finish")
    }

    fn should_run(&self, ctx: &Ctx, _i: usize, state: &State) -> Decision {
        if records::done(state, "finish", &ctx.id) { Decision::Skip("already done") } else { Decision::Run }
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let host = &ctx.cluster.hosts[i];
            let mut plan = prepare_plan(&ctx, host);
            plan.containerd_only = true;
            let report = crate::ssh::agent::prepare(h.as_ref(), INSTALLER_PATH, &plan).await?;
            // Every node is on the new release: the kept programs can no longer be put back.
            checked(
                h.as_ref(),
                &format!("rm -rf {} {FERRY_DIR}/backup-list", PREVIOUS_DIR),
                b"",
                "removing the kept programs",
            )
            .await?;
            if host.is(crate::cluster::Role::Registry) {
                let cmd = format!(
                    "systemctl disable --now {PREVIOUS_UNIT} >/dev/null 2>&1; rm -f /etc/systemd/system/{PREVIOUS_UNIT} {p} {p}.tmp; systemctl daemon-reload",
                    p = previous_installer()
                );
                checked(h.as_ref(), &cmd, b"", "stopping the previous release's registry").await?;
            }
            let ca = crate::run::phases::prepare::ca_fingerprint(&ctx);
            let detail = serde_json::json!({"changed": report.changed, "warnings": report.warnings,
                "registry_endpoints": plan.registry_endpoints, "registry_ca": ca});
            records::record_on(&ctx, h.as_ref(), host, "prepare", detail).await?;
            Ok(Outcome::recorded(serde_json::json!({"registry_endpoints": plan.registry_endpoints})))
        })
    }
}

/// Whether the bundle's control-plane images (the pause image of kubeadm's health-check Job
/// among them) are all in the installer: the missing ones.
pub fn missing_control_plane_images(ctx: &Ctx) -> Result<Vec<String>> {
    let extra = &ctx.payload.index().metadata.extra;
    let cp = ferry_core::metadata::control_plane(extra)?
        .ok_or_else(|| anyhow!("the installer records no control-plane images, so it cannot upgrade Kubernetes"))?;
    let held: std::collections::BTreeSet<String> =
        ferry_core::metadata::images(extra)?.into_iter().map(|i| crate::check::normalize_image(&i.reference)).collect();
    Ok(cp.images.into_iter().filter(|r| !held.contains(&crate::check::normalize_image(r))).collect())
}
