//! Phases lb, kubeadm and state of `installer run`: the node-local API load balancer, the
//! kubeadm control plane, and the saved cluster description.
//!
//! Owns, on top of the prepared nodes:
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
//! Each host's kubeadm phase is recorded like the others, but counted done whatever installer
//! build recorded it: a node that joined stays joined when a newer installer is run.
//! The commands are exactly the ones real kubeadm takes; the lab's rootfs has stand-ins of the
//! same names (tests/standins).

use crate::agent::AGENT_PATH;
use crate::cluster::{Host, Role};
use crate::kube::config::{ClusterInputs, JoinRole, JoinSecrets, Node};
use crate::node::{ADMIN_CONF, APISERVER_PORT, CLUSTER_FILE, KUBEADM_DIR, LB_CONFIG, LB_PORT, LB_UNIT};
use crate::run::engine::{BoxFuture, Decision, Engine, Outcome, Phase};
use crate::run::records::State;
use crate::run::{Ctx, checked, put_file};
use crate::ssh::{RemoteHost, quote};
use anyhow::{Context, Result, anyhow};
use std::sync::{Arc, Mutex, OnceLock};

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

/// The LB config every node gets: all masters' apiservers.
pub fn lb_config(ctx: &Ctx) -> crate::lb::LbConfig {
    crate::lb::LbConfig {
        listen: Some(format!("127.0.0.1:{LB_PORT}")),
        backends: ctx
            .cluster
            .hosts
            .iter()
            .filter(|h| h.is(Role::Master))
            .map(|h| format!("{}:{}", h.ip, APISERVER_PORT))
            .collect(),
        interval: Some("2s".into()),
    }
}

/// Installs or updates ferry-lb.service on one node; reloads it when only the backends changed.
/// Returns whether anything changed.
async fn lb_one<H: RemoteHost>(ctx: &Ctx, h: &H) -> Result<bool> {
    let cfg = lb_config(ctx).render();
    let unit = crate::lb::systemd_unit(AGENT_PATH, LB_CONFIG);
    let unit_path = format!("/etc/systemd/system/{LB_UNIT}");
    // One short script: compare, write what differs, then start or reload. Content arrives on
    // stdin as two NUL-free parts separated by a marker line.
    let now = checked(
        h,
        &format!("cat {LB_CONFIG} 2>/dev/null; echo '@@ferry@@'; cat {} 2>/dev/null; true", quote(&unit_path)),
        b"",
        "reading the LB files",
    )
    .await?;
    let text = now.text();
    let (old_cfg, old_unit) = text.split_once("@@ferry@@\n").unwrap_or(("", ""));
    let cfg_changed = old_cfg != cfg;
    let unit_changed = old_unit != unit;
    if cfg_changed {
        put_file(h, LB_CONFIG, "0644", cfg.as_bytes()).await?;
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
            "systemctl enable {LB_UNIT} >/dev/null 2>&1; systemctl {action} {LB_UNIT} && systemctl is-active {LB_UNIT}"
        ),
        b"",
        "starting ferry-lb.service",
    )
    .await?;
    Ok(cfg_changed || unit_changed)
}

/// Phase lb: every node's ferry-lb.service over every master's apiserver. Always re-checked,
/// never skipped by a record.
pub struct Lb;

impl<H: RemoteHost> Phase<H> for Lb {
    fn name(&self) -> &'static str {
        "lb"
    }

    fn clock(&self) -> Option<&'static str> {
        Some("kubeadm")
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            ctx.rep.event(&ctx.cluster.hosts[i].ip, "lb", "start", "ferry-lb.service", serde_json::json!({}));
            let changed = lb_one(&ctx, h.as_ref()).await?;
            Ok(Outcome::recorded(serde_json::json!({"backends": lb_config(&ctx).backends, "changed": changed})))
        })
    }
}

/// The kubeadm phases' shared material: the inputs, master0, and the join secrets.
pub struct Kubeadm {
    inputs: ClusterInputs,
    m0: usize,
    /// The token and certificate key `kubeadm init` was given, when this run initialised.
    init_keys: Mutex<Option<(String, String)>>,
    secrets: OnceLock<JoinSecrets>,
}

impl Kubeadm {
    /// The material for `ctx`'s cluster; `cgroup_v1_hosts` are the addresses preflight found on
    /// cgroup v1. Checked before anything changes: a bad fragment names the field here.
    pub fn new(ctx: &Ctx, cgroup_v1_hosts: Vec<String>) -> Result<Arc<Kubeadm>> {
        Kubeadm::with_inputs(ctx, inputs(ctx, cgroup_v1_hosts)?)
    }

    /// The material for `ctx`'s cluster with these kubeadm `inputs`.
    pub fn with_inputs(ctx: &Ctx, inputs: ClusterInputs) -> Result<Arc<Kubeadm>> {
        crate::kube::config::validate(&inputs.fragments).context("spec.kubeadm")?;
        let m0 = master0(ctx)?;
        Ok(Arc::new(Kubeadm { inputs, m0, init_keys: Mutex::default(), secrets: OnceLock::new() }))
    }
}

/// The index of master0, the first master.
pub fn master0(ctx: &Ctx) -> Result<usize> {
    ctx.cluster
        .hosts
        .iter()
        .position(|h| h.is(Role::Master))
        .ok_or_else(|| anyhow!("cluster {} has no master", ctx.cluster.name))
}

/// Whether a host has joined: a kubeadm record from any build.
fn joined(state: &State) -> bool {
    state.contains_key("kubeadm")
}

/// Phase kubeadm on master0: `kubeadm init`, unless an earlier run did it.
pub struct Init(pub Arc<Kubeadm>);

impl<H: RemoteHost> Phase<H> for Init {
    fn name(&self) -> &'static str {
        "kubeadm"
    }

    fn should_run(&self, _ctx: &Ctx, i: usize, state: &State) -> Decision {
        match (i == self.0.m0, joined(state)) {
            (false, _) => Decision::Pass,
            (true, true) => Decision::Skip("already initialised"),
            (true, false) => Decision::Run,
        }
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            engine.say_skips("kubeadm", &todo);
            engine.one_by_one(self, engine.must_run(&todo)).await
        })
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h0: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let k = &self.0;
            let master0 = &ctx.cluster.hosts[i];
            let token = crate::kube::secrets::bootstrap_token()?;
            let key = crate::kube::secrets::certificate_key()?;
            let node = Node { ip: master0.ip.clone(), name: None };
            let config = crate::kube::config::init_config(&k.inputs, &node, &token, &key)?;
            say_cgroup_v1(&ctx, &k.inputs, master0);
            let path = format!("{KUBEADM_DIR}/init.yaml");
            ctx.rep.event(&master0.ip, "kubeadm", "start", "kubeadm init --upload-certs", serde_json::json!({}));
            put_file(h0.as_ref(), &path, "0600", config.as_bytes()).await?;
            checked(h0.as_ref(), "systemctl enable kubelet.service 2>&1", b"", "systemctl enable kubelet").await?;
            let cmd = format!("kubeadm init --upload-certs --config {path}");
            let fut = checked(h0.as_ref(), &cmd, b"", "kubeadm init");
            tokio::time::timeout(ctx.phase_timeout, fut)
                .await
                .unwrap_or_else(|_| Err(anyhow!("kubeadm init timed out")))?;
            *k.init_keys.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, key));
            Ok(Outcome::Done {
                record: Some(serde_json::json!({"role": "init", "config": path})),
                message: "control plane initialised".into(),
                data: serde_json::json!({}),
            })
        })
    }
}

/// Phase kubeadm on the other hosts: the masters join one at a time (each new etcd member must
/// be in before the next), then the workers in parallel.
pub struct Join<H> {
    k: Arc<Kubeadm>,
    /// master0's session, which deletes the Node of an unfinished join.
    h0: OnceLock<Arc<H>>,
}

impl<H: RemoteHost> Join<H> {
    /// The joins, with the material `k` shares with [`Init`].
    pub fn new(k: Arc<Kubeadm>) -> Join<H> {
        Join { k, h0: OnceLock::new() }
    }

    /// The join secrets: this run's init keys, or fresh ones from master0; and the CA hash.
    async fn secrets(&self, engine: &Engine<H>, masters_to_join: bool) -> Result<()> {
        let k = &self.k;
        let (ctx, h0) = (&engine.ctx, engine.hosts[k.m0].as_ref());
        let master0 = &ctx.cluster.hosts[k.m0];
        let init_keys = k.init_keys.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (token, key) = match init_keys {
            Some((token, key)) => (token, Some(key)),
            None => fresh_join_secrets(h0, masters_to_join).await.map_err(|e| engine.fail_one("kubeadm", k.m0, e))?,
        };
        let ca = checked(h0, "cat /etc/kubernetes/pki/ca.crt", b"", "reading /etc/kubernetes/pki/ca.crt")
            .await
            .map_err(|e| engine.fail_one("kubeadm", k.m0, e))?;
        let hash =
            crate::kube::secrets::ca_cert_hash(&ca.stdout, &format!("{}:/etc/kubernetes/pki/ca.crt", master0.ip))?;
        let _ = k.secrets.set(JoinSecrets { token, ca_cert_hash: hash, certificate_key: key });
        Ok(())
    }
}

impl<H: RemoteHost> Phase<H> for Join<H> {
    fn name(&self) -> &'static str {
        "kubeadm"
    }

    fn should_run(&self, _ctx: &Ctx, i: usize, state: &State) -> Decision {
        if i == self.k.m0 {
            Decision::Pass
        } else if joined(state) {
            Decision::Skip("already joined")
        } else {
            Decision::Run
        }
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let pending = engine.must_run(&todo);
            if pending.is_empty() {
                engine.say_skips("kubeadm", &todo);
                return Ok(());
            }
            let is_master = |i: &usize| engine.ctx.cluster.hosts[*i].is(Role::Master);
            let (masters, workers): (Vec<usize>, Vec<usize>) = pending.into_iter().partition(is_master);
            let _ = self.h0.set(engine.hosts[self.k.m0].clone());
            self.secrets(engine, !masters.is_empty()).await?;
            engine.one_by_one(self.clone(), masters).await?;
            engine.each(self, workers, engine.parallel).await
        })
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h: Arc<H>, i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let k = &self.k;
            let (Some(secrets), Some(h0)) = (k.secrets.get(), self.h0.get()) else {
                anyhow::bail!("kubeadm join ran before its secrets were made")
            };
            let host = &ctx.cluster.hosts[i];
            let role = if host.is(Role::Master) { JoinRole::ControlPlane } else { JoinRole::Worker };
            join_one(&ctx, h0.as_ref(), h.as_ref(), host, &k.inputs, secrets, role).await
        })
    }
}

/// Phase state: the saved description, on master0 and beside the installer. Its failure is
/// kubeadm's, the step it completes.
pub struct SaveState(pub Arc<Kubeadm>);

impl<H: RemoteHost> Phase<H> for SaveState {
    fn name(&self) -> &'static str {
        "kubeadm"
    }

    fn run<'a>(self: Arc<Self>, engine: &'a Engine<H>, _todo: Vec<Decision>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let m0 = self.0.m0;
            engine.one_by_one(self, vec![m0]).await?;
            let text = crate::cluster::to_file(&engine.ctx.cluster);
            crate::cluster::locate::save_local(&engine.ctx.local_state, &text)?;
            Ok(())
        })
    }

    fn run_host(self: Arc<Self>, ctx: Arc<Ctx>, h0: Arc<H>, _i: usize) -> BoxFuture<'static, Result<Outcome>> {
        Box::pin(async move {
            let text = crate::cluster::to_file(&ctx.cluster);
            put_file(h0.as_ref(), CLUSTER_FILE, "0644", text.as_bytes()).await?;
            Ok(Outcome::Quiet)
        })
    }
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

/// One host's `kubeadm join`, as a control-plane member or a worker.
async fn join_one<H: RemoteHost>(
    ctx: &Ctx,
    master0: &H,
    h: &H,
    host: &Host,
    inputs: &ClusterInputs,
    s: &JoinSecrets,
    role: JoinRole,
) -> Result<Outcome> {
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
    let role = if role == JoinRole::ControlPlane { "control-plane" } else { "worker" };
    Ok(Outcome::Done {
        record: Some(serde_json::json!({"role": role, "config": path})),
        message: "joined".into(),
        data: serde_json::json!({}),
    })
}
