//! Phases 5–6 and 9 of `installer run`: the node-local API load balancer, the kubeadm
//! control plane, and the saved cluster description.
//!
//! Owns, on top of the prepared nodes from phases 1–4:
//!
//! - **lb**: every node gets `ferry-lb.service` (`installer lb`, see [`crate::lb`]) with every
//!   master's apiserver as a backend. Always re-checked, never skipped by a record: when `join`
//!   adds masters the file changes, and the running LB is told by `systemctl reload` (SIGHUP).
//! - **kubeadm**: ferry generates the configs ([`crate::kube::config`]) and the token and
//!   certificate key ([`crate::kube::secrets`]), writes them to `/etc/ferry/kubeadm/` (0600:
//!   they hold the short-lived token), runs `kubeadm init --upload-certs --config …` on master0,
//!   computes the discovery CA hash from master0's `/etc/kubernetes/pki/ca.crt` itself, joins the
//!   other masters one at a time (etcd grows one member at a time) and the workers in parallel.
//!   Hosts preflight found on cgroup v1 get what Kubernetes 1.35 and later need to run there (see
//!   [`crate::kube::config`]), and the run says so for each of them.
//!   When master0 was initialised by an earlier run, a fresh token (`kubeadm token create`) and
//!   a fresh certificate-key upload (`kubeadm init phase upload-certs --upload-certs`) are made
//!   for this run's joins: ferry never stores either, and the key expires after 2 hours anyway.
//! - **state**: the cluster file ([`crate::cluster::to_file`], no secrets) on master0 under
//!   `/etc/ferry/cluster.yaml` and beside the installer under `.ferry/<cluster>/cluster.yaml`.
//!
//! Each host's kubeadm phase is recorded like phases 1–4, but counted done whatever installer
//! build recorded it: a node that joined stays joined when a newer installer is run.
//! The commands are exactly the ones real kubeadm takes; the lab's rootfs has stand-ins of the
//! same names (tests/standins).

use super::{Ctx, checked, local_record, parallel, record_on};
use crate::agent::{AGENT_PATH, Record};
use crate::cluster::{Host, Role};
use crate::kube::config::{ClusterInputs, JoinRole, JoinSecrets, Node};
use crate::ssh::{RemoteHost, quote};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Port of the node-local API load balancer on every node: `controlPlaneEndpoint`'s port, the
/// LB's listen port, and a port preflight wants free. 6444, not 6443: see [`crate::lb`].
pub const LB_PORT: u16 = 6444;
/// Where ferry's kubeadm configs go on the nodes.
pub const KUBEADM_DIR: &str = "/etc/ferry/kubeadm";
/// The saved cluster description on master0.
pub const CLUSTER_FILE: &str = "/etc/ferry/cluster.yaml";
/// kubeadm's admin kubeconfig on masters.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

/// The kubeadm inputs for this cluster and bundle; `cgroup_v1_hosts` are the addresses preflight
/// found on cgroup v1.
pub fn inputs(ctx: &Ctx, cgroup_v1_hosts: Vec<String>) -> Result<ClusterInputs> {
    let c = &ctx.cluster;
    let meta = &ctx.payload.index().metadata;
    Ok(ClusterInputs {
        name: c.name.clone(),
        kubernetes_version: meta.kubernetes_version.clone(),
        endpoint: c.api_endpoint.clone(),
        lb_port: LB_PORT,
        masters: c.hosts.iter().filter(|h| h.is(Role::Master)).map(|h| h.ip.clone()).collect(),
        pod_subnet: c.network.as_ref().and_then(|n| n.pod_subnet.clone()),
        service_subnet: c.network.as_ref().and_then(|n| n.service_subnet.clone()),
        extra_sans: c.cert_sans.clone(),
        fragments: c.kubeadm.clone(),
        pause_image: crate::registry::config::bundle_pause_image(meta)
            .with_context(|| format!("the sandbox (pause) image of bundle {} {}", meta.name, meta.version))?,
        cgroup_v1_hosts,
    })
}

/// Says, before `host`'s kubeadm config is used, that ferry let it run on cgroup v1.
fn say_cgroup_v1(ctx: &Ctx, inputs: &ClusterInputs, host: &Host) {
    if inputs.cgroup_v1_opt_in(&host.ip) {
        ctx.rep.line(
            "warning",
            &format!(
                "warning: cgroup v1 on {}: kubelet failCgroupV1=false set, kubeadm's SystemVerification skipped; real sites should use cgroup v2",
                host.ip
            ),
            serde_json::json!({"host": host.ip, "cgroup": "v1"}),
        );
    }
}

/// Writes `bytes` to `path` on the host atomically with `mode`.
pub async fn put_file<H: RemoteHost>(h: &H, path: &str, mode: &str, bytes: &[u8]) -> Result<()> {
    let dir = std::path::Path::new(path).parent().map(|p| p.display().to_string()).unwrap_or_else(|| "/".into());
    let cmd = format!(
        "umask 077 && mkdir -p {d} && cat > {p}.ferry-tmp && chmod {mode} {p}.ferry-tmp && mv -f {p}.ferry-tmp {p}",
        d = quote(&dir),
        p = quote(path)
    );
    checked(h, &cmd, bytes, &format!("writing {path}")).await.map(|_| ())
}

/// The LB config every node gets: all masters' apiservers.
pub fn lb_config(ctx: &Ctx) -> crate::lb::LbConfig {
    crate::lb::LbConfig {
        listen: Some(format!("127.0.0.1:{LB_PORT}")),
        backends: ctx
            .cluster
            .hosts
            .iter()
            .filter(|h| h.is(Role::Master))
            .map(|h| format!("{}:{}", h.ip, crate::kube::config::APISERVER_PORT))
            .collect(),
        interval: Some("2s".into()),
    }
}

/// Installs or updates ferry-lb.service on one node; reloads it when only the backends changed.
async fn lb_one<H: RemoteHost>(ctx: &Ctx, h: &H, host: &Host) -> Result<()> {
    let cfg = lb_config(ctx).render();
    let unit = crate::lb::systemd_unit(AGENT_PATH, crate::lb::DEFAULT_CONFIG);
    let unit_path = format!("/etc/systemd/system/{}", crate::lb::UNIT_NAME);
    // One short script: compare, write what differs, then start or reload. Content arrives on
    // stdin as two NUL-free parts separated by a marker line.
    let now = checked(
        h,
        &format!(
            "cat {} 2>/dev/null; echo '@@ferry@@'; cat {} 2>/dev/null; true",
            crate::lb::DEFAULT_CONFIG,
            quote(&unit_path)
        ),
        b"",
        "reading the LB files",
    )
    .await?;
    let text = now.text();
    let (old_cfg, old_unit) = text.split_once("@@ferry@@\n").unwrap_or(("", ""));
    let cfg_changed = old_cfg != cfg;
    let unit_changed = old_unit != unit;
    if cfg_changed {
        put_file(h, crate::lb::DEFAULT_CONFIG, "0644", cfg.as_bytes()).await?;
    }
    if unit_changed {
        put_file(h, &unit_path, "0644", unit.as_bytes()).await?;
        checked(h, "systemctl daemon-reload", b"", "systemctl daemon-reload").await?;
    }
    let action = if unit_changed {
        "restart"
    } else if cfg_changed {
        "reload-or-restart"
    } else {
        "start"
    };
    checked(
        h,
        &format!(
            "systemctl enable {u} >/dev/null 2>&1; systemctl {action} {u} && systemctl is-active {u}",
            u = crate::lb::UNIT_NAME
        ),
        b"",
        "starting ferry-lb.service",
    )
    .await?;
    record_on(
        ctx,
        h,
        host,
        "lb",
        serde_json::json!({"backends": lb_config(ctx).backends, "changed": cfg_changed || unit_changed}),
    )
    .await
}

/// The phases' view of which hosts have joined already: kubeadm records from any build.
fn joined(states: &[BTreeMap<String, Record>], i: usize) -> bool {
    states.get(i).is_some_and(|s| s.contains_key("kubeadm"))
}

/// Fresh join material on an initialised master0: a new bootstrap token, and a new certificate
/// key uploaded with the control-plane certificates (the old one expires after 2 hours).
pub async fn fresh_join_secrets<H: RemoteHost>(h: &H, masters_to_join: bool) -> Result<(String, Option<String>)> {
    // kubeadm makes the token (it prints only the token) and stores it as a Secret.
    let out = checked(h, "kubeadm token create --ttl 24h0m0s", b"", "kubeadm token create").await?;
    let token = out
        .text()
        .lines()
        .map(str::trim)
        .rfind(|l| crate::kube::secrets::is_bootstrap_token(l))
        .map(String::from)
        .ok_or_else(|| anyhow!("kubeadm token create printed no token: {}", out.tail(3)))?;
    let key = if masters_to_join {
        let key = crate::kube::secrets::certificate_key()?;
        // With master0's own init configuration (the new key in place of the old): without a
        // configuration kubeadm asks the internet for the version and the default route for the
        // address, and an air-gapped host has neither.
        let cmd = format!(
            "umask 077 && sed 's/^certificateKey: .*/certificateKey: \"{key}\"/' {KUBEADM_DIR}/init.yaml > {KUBEADM_DIR}/upload-certs.yaml && \
             kubeadm init phase upload-certs --upload-certs --config {KUBEADM_DIR}/upload-certs.yaml"
        );
        checked(h, &cmd, b"", "kubeadm init phase upload-certs").await?;
        Some(key)
    } else {
        None
    };
    Ok((token, key))
}

/// Phases lb and kubeadm on every host, then the saved state. `hosts[i]` is `ctx.cluster.hosts[i]`;
/// `cgroup_v1_hosts` are the addresses preflight found on cgroup v1.
pub async fn bootstrap<H: RemoteHost>(
    ctx: &Arc<Ctx>,
    hosts: &[Arc<H>],
    states: &Arc<Vec<BTreeMap<String, Record>>>,
    cgroup_v1_hosts: Vec<String>,
    limit: usize,
) -> Result<()> {
    let n = ctx.cluster.hosts.len();
    let inputs = inputs(ctx, cgroup_v1_hosts)?;
    // Checked before anything changes: a bad fragment names the field here.
    crate::kube::config::validate(&inputs.fragments).context("spec.kubeadm")?;

    // Phase lb, everywhere in parallel.
    let results = parallel(n, limit, |i| {
        let (ctx, h) = (ctx.clone(), hosts[i].clone());
        async move {
            let host = &ctx.cluster.hosts[i];
            ctx.rep.event(&host.ip, "lb", "start", "ferry-lb.service", serde_json::json!({}));
            lb_one(&ctx, h.as_ref(), host).await?;
            ctx.rep.event(&host.ip, "lb", "done", "ok", serde_json::json!({}));
            Ok(())
        }
    })
    .await;
    super::check_phase(ctx, "lb", results)?;

    // kubeadm init on master0.
    let m0 = ctx.cluster.hosts.iter().position(|h| h.is(Role::Master)).expect("resolve() guarantees a master");
    let master0 = &ctx.cluster.hosts[m0];
    let h0 = hosts[m0].clone();
    let masters_pending: Vec<usize> =
        (0..n).filter(|&i| i != m0 && ctx.cluster.hosts[i].is(Role::Master) && !joined(states, i)).collect();
    let workers_pending: Vec<usize> =
        (0..n).filter(|&i| !ctx.cluster.hosts[i].is(Role::Master) && !joined(states, i)).collect();
    let (token, key) = if joined(states, m0) {
        ctx.rep.event(&master0.ip, "kubeadm", "skip", "already initialised", serde_json::json!({}));
        if masters_pending.is_empty() && workers_pending.is_empty() {
            (String::new(), None)
        } else {
            fresh_join_secrets(h0.as_ref(), !masters_pending.is_empty())
                .await
                .map_err(|e| phase_error(ctx, master0, e))?
        }
    } else {
        let token = crate::kube::secrets::bootstrap_token()?;
        let key = crate::kube::secrets::certificate_key()?;
        let node = Node { ip: master0.ip.clone(), name: None };
        let config = crate::kube::config::init_config(&inputs, &node, &token, &key)?;
        say_cgroup_v1(ctx, &inputs, master0);
        let path = format!("{KUBEADM_DIR}/init.yaml");
        ctx.rep.event(&master0.ip, "kubeadm", "start", "kubeadm init --upload-certs", serde_json::json!({}));
        let r: Result<()> = async {
            put_file(h0.as_ref(), &path, "0600", config.as_bytes()).await?;
            checked(h0.as_ref(), "systemctl enable kubelet.service 2>&1", b"", "systemctl enable kubelet").await?;
            let cmd = format!("kubeadm init --upload-certs --config {path}");
            let fut = checked(h0.as_ref(), &cmd, b"", "kubeadm init");
            tokio::time::timeout(ctx.phase_timeout, fut)
                .await
                .unwrap_or_else(|_| Err(anyhow!("kubeadm init timed out")))?;
            record_on(ctx, h0.as_ref(), master0, "kubeadm", serde_json::json!({"role": "init", "config": path})).await
        }
        .await;
        r.map_err(|e| phase_error(ctx, master0, e))?;
        ctx.rep.event(&master0.ip, "kubeadm", "done", "control plane initialised", serde_json::json!({}));
        (token, Some(key))
    };

    if !masters_pending.is_empty() || !workers_pending.is_empty() {
        let ca = checked(h0.as_ref(), "cat /etc/kubernetes/pki/ca.crt", b"", "reading /etc/kubernetes/pki/ca.crt")
            .await
            .map_err(|e| phase_error(ctx, master0, e))?;
        let hash =
            crate::kube::secrets::ca_cert_hash(&ca.stdout, &format!("{}:/etc/kubernetes/pki/ca.crt", master0.ip))?;
        let secrets = JoinSecrets { token: token.clone(), ca_cert_hash: hash, certificate_key: key.clone() };
        // Masters one at a time: each new etcd member must be in before the next.
        for &i in &masters_pending {
            join_one(
                ctx,
                h0.as_ref(),
                hosts[i].as_ref(),
                &ctx.cluster.hosts[i],
                &inputs,
                &secrets,
                JoinRole::ControlPlane,
            )
            .await
            .map_err(|e| phase_error(ctx, &ctx.cluster.hosts[i], e))?;
        }
        let results = parallel(workers_pending.len(), limit, |k| {
            let i = workers_pending[k];
            let (ctx, h0, h, inputs, secrets) =
                (ctx.clone(), h0.clone(), hosts[i].clone(), inputs.clone(), secrets.clone());
            async move {
                join_one(&ctx, h0.as_ref(), h.as_ref(), &ctx.cluster.hosts[i], &inputs, &secrets, JoinRole::Worker)
                    .await
                    .map_err(|e| (i, e))
            }
        })
        .await;
        let mut full: Vec<Result<()>> = (0..n).map(|_| Ok(())).collect();
        for r in results {
            if let Err((i, e)) = r {
                full[i] = Err(e);
            }
        }
        super::check_phase(ctx, "kubeadm", full)?;
    } else {
        for i in (0..n).filter(|&i| i != m0) {
            ctx.rep.event(&ctx.cluster.hosts[i].ip, "kubeadm", "skip", "already joined", serde_json::json!({}));
        }
    }

    // Phase 9: the saved description, on master0 and beside the installer.
    let text = crate::cluster::to_file(&ctx.cluster);
    put_file(h0.as_ref(), CLUSTER_FILE, "0644", text.as_bytes()).await.map_err(|e| phase_error(ctx, master0, e))?;
    save_local(&ctx.local_state, &text)?;
    Ok(())
}

/// Writes `.ferry/<cluster>/cluster.yaml`.
pub fn save_local(dir: &std::path::Path, text: &str) -> Result<()> {
    crate::registry::config::write_atomic(&dir.join("cluster.yaml"), text.as_bytes())
        .with_context(|| format!("saving the cluster description in {}", dir.display()))
}

fn phase_error(ctx: &Ctx, host: &Host, e: anyhow::Error) -> anyhow::Error {
    ctx.rep.event(&host.ip, "kubeadm", "error", &format!("{e:#}"), serde_json::json!({}));
    local_record(ctx, host, "kubeadm", "failed", serde_json::json!({"error": format!("{e:#}")}));
    ctx.rep.finish();
    anyhow!("{}: kubeadm failed: {e:#}", host.ip)
}

/// A join an earlier run started but never recorded (its host cut off or the run killed) leaves
/// kubeadm's files on the host, and maybe a Node object; either makes a new `kubeadm join` fail,
/// so both go first. A host ferry recorded as joined never comes here.
async fn clear_unfinished_join<H: RemoteHost>(master0: &H, h: &H) -> Result<()> {
    let script = "pkill -x kubeadm 2>/dev/null; \
        if [ -e /etc/kubernetes/kubelet.conf ] || [ -e /etc/kubernetes/bootstrap-kubelet.conf ] || \
           [ -n \"$(ls -A /etc/kubernetes/manifests 2>/dev/null)\" ]; then \
          kubeadm reset -f >/dev/null 2>&1 || exit 1; echo \"cleared $(hostname | tr A-Z a-z)\"; fi";
    let out = checked(h, script, b"", "clearing an unfinished kubeadm join").await?;
    if let Some(name) = out.text().trim().strip_prefix("cleared ") {
        let cmd = format!("kubectl --kubeconfig {ADMIN_CONF} delete node {} --ignore-not-found 2>&1", quote(name));
        checked(master0, &cmd, b"", "deleting the Node of an unfinished join").await?;
    }
    Ok(())
}

async fn join_one<H: RemoteHost>(
    ctx: &Ctx,
    master0: &H,
    h: &H,
    host: &Host,
    inputs: &ClusterInputs,
    s: &JoinSecrets,
    role: JoinRole,
) -> Result<()> {
    let node = Node { ip: host.ip.clone(), name: None };
    let config = crate::kube::config::join_config(inputs, &node, s, role)?;
    say_cgroup_v1(ctx, inputs, host);
    let path = format!("{KUBEADM_DIR}/join.yaml");
    let what = if role == JoinRole::ControlPlane { "kubeadm join (control plane)" } else { "kubeadm join" };
    ctx.rep.event(&host.ip, "kubeadm", "start", what, serde_json::json!({}));
    clear_unfinished_join(master0, h).await?;
    for (patch, text) in crate::kube::config::kubelet_patches(inputs, &node) {
        put_file(h, &patch, "0644", text.as_bytes()).await?;
    }
    put_file(h, &path, "0600", config.as_bytes()).await?;
    checked(h, "systemctl enable kubelet.service 2>&1", b"", "systemctl enable kubelet").await?;
    let cmd = format!("kubeadm join --config {path}");
    let fut = checked(h, &cmd, b"", "kubeadm join");
    tokio::time::timeout(ctx.phase_timeout, fut).await.unwrap_or_else(|_| Err(anyhow!("kubeadm join timed out")))?;
    record_on(ctx, h, host, "kubeadm", serde_json::json!({"role": if role == JoinRole::ControlPlane { "control-plane" } else { "worker" }, "config": path})).await?;
    ctx.rep.event(&host.ip, "kubeadm", "done", "joined", serde_json::json!({}));
    Ok(())
}

/// Errors when `text` (a host's answer) shows no ferry cluster.
pub fn require_cluster_file(ip: &str, text: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!(
            "{ip}: no ferry cluster here ({CLUSTER_FILE} is missing): run `installer run` first, or give the right --master"
        );
    }
    Ok(())
}
