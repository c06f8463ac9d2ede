//! `installer check`: is the delivered cluster healthy?
//!
//! Owns the judgement and its table. It reads the API through master0's admin kubeconfig by
//! running the rootfs's own `kubectl --kubeconfig /etc/kubernetes/admin.conf get … -o json` on
//! master0 over SSH (the same russh session every other command uses), and deserializes the
//! answers into `k8s-openapi` types (`List<Node>`, `List<Pod>`). kubectl on the master rather
//! than an HTTP client through a forward: it carries the admin client certificate, TLS and API
//! discovery for us, needs nothing from the operator's machine, and is what an operator would
//! type. Checked:
//!
//! - every node of the cluster description is registered and Ready;
//! - per master: kube-apiserver, kube-controller-manager, kube-scheduler and etcd pods Ready;
//! - CoreDNS (k8s-app=kube-dns) and kube-proxy (one per node) Ready;
//! - every Deployment, StatefulSet and DaemonSet Available (wherever it came from), and the bare
//!   pods of the launch steps' namespaces Ready;
//! - every image of a running pod is held by the built-in registry (the payload's image table,
//!   which is exactly what `registry serve` answers from).
//!
//! Runs at the end of `run`; exits non-zero naming each unhealthy row.

use crate::cluster::{Cluster, Role};
use crate::ssh::RemoteHost;
use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use payload_format::Payload;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod workloads;

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was checked (`node`, `control-plane`, `coredns`, `kube-proxy`, `workload`, `image`).
    pub check: String,
    /// The object.
    pub object: String,
    /// Healthy or not.
    pub ok: bool,
    /// Why not (or a short confirmation).
    pub detail: String,
}

/// The whole result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Master the API was read through.
    pub master: String,
    /// Every check.
    pub rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, check: &str, object: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.rows.push(Row { check: check.into(), object: object.into(), ok, detail: detail.into() });
    }

    /// Whether everything is healthy.
    pub fn healthy(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    /// The printed table.
    pub fn table(&self) -> String {
        let w0 = self.rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
        let w1 = self.rows.iter().map(|r| r.object.len()).max().unwrap_or(6).max(6);
        let mut s = format!(
            "check of the cluster through {}:\n  {:w0$}  {:w1$}  {:6}  DETAIL\n",
            self.master, "CHECK", "OBJECT", "STATUS"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "  {:w0$}  {:w1$}  {:6}  {}\n",
                r.check,
                r.object,
                if r.ok { "ok" } else { "FAILED" },
                r.detail
            ));
        }
        let bad = self.rows.iter().filter(|r| !r.ok).count();
        if bad == 0 {
            s.push_str(&format!("healthy: {} checks passed", self.rows.len()));
        } else {
            s.push_str(&format!("UNHEALTHY: {bad} of {} checks failed", self.rows.len()));
        }
        s
    }

    /// Ok when healthy, else an error naming every failed row.
    pub fn verdict(&self) -> Result<()> {
        let bad: Vec<String> =
            self.rows.iter().filter(|r| !r.ok).map(|r| format!("{} {}: {}", r.check, r.object, r.detail)).collect();
        if bad.is_empty() {
            return Ok(());
        }
        bail!("the cluster is unhealthy ({} problem(s)):\n  {}", bad.len(), bad.join("\n  "))
    }
}

/// `docker.io/library/` and `:latest` made explicit, as containerd names images
/// (`ferry_core::image_ref::ImageRef`; a name it cannot parse is kept as given).
pub fn normalize_image(r: &str) -> String {
    ferry_core::image_ref::ImageRef::normalized_or_raw(r)
}

/// Image references (normalized) and digests the built-in registry serves.
pub fn registry_images(payload: &Payload) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut refs = BTreeSet::new();
    let mut digests = BTreeSet::new();
    // Unreadable records hold nothing: every running image then shows as not held.
    for i in ferry_core::metadata::images(&payload.index().metadata.extra).unwrap_or_default() {
        refs.insert(normalize_image(&i.reference));
        digests.insert(i.digest);
    }
    (refs, digests)
}

fn held(image: &str, refs: &BTreeSet<String>, digests: &BTreeSet<String>) -> bool {
    let n = normalize_image(image);
    if refs.contains(&n) {
        return true;
    }
    // Pinned by digest: the registry serves any digest it holds under its repository.
    n.split_once('@').is_some_and(|(_, d)| digests.contains(d))
}

/// The containers of `p` waiting because their image cannot be pulled.
fn pull_failures(p: &Pod) -> Vec<String> {
    let statuses = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses
        .into_iter()
        .flatten()
        .filter(|c| {
            let reason = c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
            matches!(reason, Some("ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName"))
        })
        .map(|c| c.name.clone())
        .collect()
}

fn pod_ready(p: &Pod) -> (bool, String) {
    let st = p.status.as_ref();
    let phase = st.and_then(|s| s.phase.clone()).unwrap_or_default();
    let cond = st
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    let containers = st.and_then(|s| s.container_statuses.as_ref()).map(|cs| cs.iter().all(|c| c.ready));
    let ready = phase == "Running" && cond.unwrap_or(false) && containers.unwrap_or(true);
    let detail = if ready {
        "Running, Ready".to_string()
    } else {
        let mut unready: Vec<String> = Vec::new();
        if let Some(statuses) = st.and_then(|s| s.container_statuses.as_ref()) {
            for c in statuses {
                if !c.ready {
                    unready.push(c.name.clone());
                }
            }
        }
        let shown_phase = if phase.is_empty() { "?".to_string() } else { phase.clone() };
        let containers =
            if unready.is_empty() { String::new() } else { format!(" (containers: {})", unready.join(", ")) };
        format!("phase {shown_phase}, not Ready{containers}")
    };
    (ready, detail)
}

fn label<'a>(p: &'a Pod, k: &str) -> Option<&'a str> {
    p.metadata.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str)
}

async fn kubectl<H: RemoteHost>(h: &H, args: &str) -> Result<Vec<u8>> {
    let cmd = format!("kubectl --kubeconfig {} {args}", crate::node::ADMIN_CONF);
    let out = h.run(&cmd, b"").await.with_context(|| format!("{}: running {cmd}", h.addr()))?;
    if !out.ok() {
        bail!("{}: `{cmd}` failed (status {}): {}", h.addr(), out.status, out.tail(3));
    }
    Ok(out.stdout)
}

/// Reads the API on `master` and judges the cluster described by `cluster`.
pub async fn check<H: RemoteHost>(cluster: &Cluster, payload: &Payload, master: &H) -> Result<Report> {
    let ip = master.addr().to_string();
    let probe = master.run(&format!("test -f {} && echo yes || echo no", crate::node::ADMIN_CONF), b"").await?;
    if probe.text().trim() != "yes" {
        bail!(
            "{ip}: no Kubernetes control plane here ({} is missing): the cluster does not exist or was reset; run `installer run`",
            crate::node::ADMIN_CONF
        );
    }
    let nodes = ListOf::<Node> {
        items: list_items(&kubectl(master, "get nodes -o json").await?)
            .map_err(|e| anyhow!("{ip}: kubectl's node list does not parse: {e}"))?,
    };
    let pods = ListOf::<Pod> {
        items: list_items(&kubectl(master, "get pods -A -o json").await?)
            .map_err(|e| anyhow!("{ip}: kubectl's pod list does not parse: {e}"))?,
    };
    let mut r = Report { master: ip.clone(), rows: Vec::new() };
    let node_names = judge_nodes(cluster, &nodes.items, &mut r);
    judge_system_pods(cluster, &node_names, &pods.items, &mut r);
    // Workloads, wherever they came from; and pods of the launch steps' namespaces that no
    // controller owns (a bare Pod has no workload to be judged by).
    let workloads = kubectl(master, "get deployments,statefulsets,daemonsets -A -o json").await?;
    judge_workloads(&ip, &workloads, &mut r)?;
    judge_bare_pods(payload, &pods.items, &mut r)?;
    judge_images(payload, &pods.items, &mut r);
    Ok(r)
}

/// Every node of the description registered and Ready, matched by InternalIP; returns the node
/// names by address.
fn judge_nodes(cluster: &Cluster, nodes: &[Node], r: &mut Report) -> BTreeMap<String, String> {
    // Nodes, matched to the description by InternalIP.
    let node_ip = |n: &Node| -> Option<String> {
        n.status.as_ref()?.addresses.as_ref()?.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone())
    };
    let mut node_names = BTreeMap::new();
    for h in &cluster.hosts {
        let Some(n) = nodes.iter().find(|n| node_ip(n).as_deref() == Some(h.ip.as_str())) else {
            r.add("node", &h.ip, false, "not registered with the API server");
            continue;
        };
        let name = n.metadata.name.clone().unwrap_or_default();
        node_names.insert(h.ip.clone(), name.clone());
        let ready =
            n.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => r.add("node", format!("{name} ({})", h.ip), true, "Ready"),
            Some(c) => r.add(
                "node",
                format!("{name} ({})", h.ip),
                false,
                format!("NotReady: {} {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default())
                    .trim()
                    .to_string(),
            ),
            None => r.add("node", format!("{name} ({})", h.ip), false, "no Ready condition"),
        }
    }

    node_names
}

/// The control plane on every master, CoreDNS, and kube-proxy on every node.
fn judge_system_pods(cluster: &Cluster, node_names: &BTreeMap<String, String>, pods: &[Pod], r: &mut Report) {
    let on = |p: &Pod, node: &str| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    // Control plane per master.
    for h in cluster.hosts.iter().filter(|h| h.is(Role::Master)) {
        let Some(node) = node_names.get(&h.ip) else { continue };
        for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"] {
            match pods.iter().find(|p| label(p, "component") == Some(c) && on(p, node)) {
                Some(p) => {
                    let (ok, d) = pod_ready(p);
                    r.add("control-plane", format!("{c} on {node}"), ok, d);
                }
                None => r.add("control-plane", format!("{c} on {node}"), false, "no pod"),
            }
        }
    }
    // CoreDNS.
    let dns: Vec<&Pod> = pods.iter().filter(|p| label(p, "k8s-app") == Some("kube-dns")).collect();
    if dns.is_empty() {
        r.add("coredns", "kube-system/coredns", false, "no CoreDNS pod");
    }
    for p in dns {
        let (ok, d) = pod_ready(p);
        r.add("coredns", p.metadata.name.clone().unwrap_or_default(), ok, d);
    }
    // kube-proxy on every node.
    for node in node_names.values() {
        match pods.iter().find(|p| label(p, "k8s-app") == Some("kube-proxy") && on(p, node)) {
            Some(p) => {
                let (ok, d) = pod_ready(p);
                r.add("kube-proxy", format!("on {node}"), ok, d);
            }
            None => r.add("kube-proxy", format!("on {node}"), false, "no kube-proxy pod"),
        }
    }
}

/// Every Deployment, StatefulSet and DaemonSet Available.
fn judge_workloads(ip: &str, workloads: &[u8], r: &mut Report) -> Result<()> {
    let items: Vec<serde_json::Value> =
        list_items(workloads).map_err(|e| anyhow!("{ip}: kubectl's workload list does not parse: {e}"))?;
    for (n, item) in items.into_iter().enumerate() {
        let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let bad = |e: serde_json::Error| anyhow!("{ip}: workload {n} ({kind}) does not parse: {e}");
        let judged = match kind.as_str() {
            "Deployment" => workloads::deployment(&serde_json::from_value(item).map_err(bad)?),
            "StatefulSet" => workloads::stateful_set(&serde_json::from_value(item).map_err(bad)?),
            "DaemonSet" => workloads::daemon_set(&serde_json::from_value(item).map_err(bad)?),
            _ => None,
        };
        if let Some((object, ok, detail)) = judged {
            r.add("workload", object, ok, detail);
        }
    }
    Ok(())
}

/// The bare pods of the launch steps' namespaces Ready.
fn judge_bare_pods(payload: &Payload, pods: &[Pod], r: &mut Report) -> Result<()> {
    let launch_ns: BTreeSet<String> = crate::launch::steps(payload)?.iter().filter_map(|s| s.namespace()).collect();
    let bare = |p: &&Pod| p.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty());
    for p in pods.iter().filter(|p| p.metadata.namespace.as_ref().is_some_and(|n| launch_ns.contains(n))).filter(bare) {
        let (ok, d) = pod_ready(p);
        r.add(
            "workload",
            format!(
                "pod {}/{}",
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default()
            ),
            ok,
            d,
        );
    }
    Ok(())
}

/// Every image of a running pod (or of one stuck pulling) held by the built-in registry.
fn judge_images(payload: &Payload, pods: &[Pod], r: &mut Report) {
    // Images of running pods, and of pods stuck pulling, in the built-in registry.
    let (refs, digests) = registry_images(payload);
    let mut seen = BTreeSet::new();
    for p in pods {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let stuck = pull_failures(p);
        if !running && stuck.is_empty() {
            continue;
        }
        for c in p.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default() {
            let Some(img) = &c.image else { continue };
            if !running && !stuck.contains(&c.name) {
                continue;
            }
            if !seen.insert(img.clone()) {
                continue;
            }
            if held(img, &refs, &digests) {
                r.add("image", img, true, "in the built-in registry");
            } else {
                let who = format!(
                    "{}/{}",
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default()
                );
                r.add("image", img, false, format!("used by {who} but missing from the built-in registry"));
            }
        }
    }
}

/// [`check`] until the cluster is healthy or `wait` has passed, whichever comes first; returns the
/// last report. `progress` sees an unhealthy report at most once per `every` while it waits (a
/// freshly made cluster needs a minute or two for its CNI, CoreDNS and workloads to become Ready).
pub async fn check_until_healthy<H: RemoteHost>(
    cluster: &Cluster,
    payload: &Payload,
    master: &H,
    wait: Duration,
    every: Duration,
    mut progress: impl FnMut(&Report, Duration),
) -> Result<Report> {
    let started = Instant::now();
    let mut last_said: Option<Instant> = None;
    loop {
        let report = check(cluster, payload, master).await?;
        if report.healthy() || started.elapsed() >= wait {
            return Ok(report);
        }
        if last_said.is_none_or(|t| t.elapsed() >= every) {
            progress(&report, started.elapsed());
            last_said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(3).min(wait.saturating_sub(started.elapsed()))).await;
    }
}

/// One line for a report that is not healthy yet: how many checks are still failing and the first.
pub fn waiting_line(report: &Report, waited: Duration) -> String {
    let bad: Vec<&Row> = report.rows.iter().filter(|r| !r.ok).collect();
    match bad.first() {
        Some(first) => format!(
            "waiting for the cluster ({:.0} s): {} of {} checks not yet passing, e.g. {} {}: {}",
            waited.as_secs_f64(),
            bad.len(),
            report.rows.len(),
            first.check,
            first.object,
            first.detail
        ),
        None => format!("waiting for the cluster ({:.0} s)", waited.as_secs_f64()),
    }
}

/// The items of a list as kubectl prints it. `kubectl get … -o json` says `kind: List` (not
/// `PodList`), which `k8s_openapi::List` refuses, so each item is parsed with its own type.
struct ListOf<T> {
    items: Vec<T>,
}

fn list_items<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let items = v.get("items").and_then(|i| i.as_array()).ok_or("no `items` array")?;
    items
        .iter()
        .enumerate()
        .map(|(n, item)| serde_json::from_value(item.clone()).map_err(|e| format!("item {n}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize_like_containerd() {
        assert_eq!(normalize_image("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize_image("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_image("me/app:1"), "docker.io/me/app:1");
        assert_eq!(
            normalize_image("registry.k8s.io/coredns/coredns:v1.12.0"),
            "registry.k8s.io/coredns/coredns:v1.12.0"
        );
        assert_eq!(normalize_image("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalize_image("index.docker.io/library/a:1"), "docker.io/library/a:1");
        assert_eq!(normalize_image("q.io/a@sha256:ab"), "q.io/a@sha256:ab");
    }

    #[test]
    fn standin_shaped_pods_parse_and_judge() {
        let j = r#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":""},"items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"coredns-1","namespace":"kube-system","labels":{"k8s-app":"kube-dns"}},"spec":{"nodeName":"n1","containers":[{"name":"coredns","image":"registry.k8s.io/coredns/coredns:v1.12.0"}]},"status":{"phase":"Running","conditions":[{"type":"Ready","status":"False"}],"containerStatuses":[{"name":"coredns","image":"x","imageID":"","ready":false,"restartCount":0}]}}]}"#;
        let l = ListOf::<Pod> { items: list_items(j.as_bytes()).unwrap() };
        let (ok, d) = pod_ready(&l.items[0]);
        assert!(!ok);
        assert!(d.contains("containers: coredns"), "{d}");
    }
}
