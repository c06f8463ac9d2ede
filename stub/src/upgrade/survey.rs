//! What the cluster itself says before an upgrade: its Kubernetes version, each node's kubelet,
//! readiness and address, etcd's health, and the installer that last changed it.
//!
//! Owns reading those through a master (its own kubectl and admin kubeconfig, and the installer
//! file on a registry host) and turning them into preflight problems. The parsing is pure and
//! unit-tested; nothing here changes the cluster.

use super::versions::{self, Release, Step, Version};
use crate::node::ADMIN_KUBECTL as KUBECTL;
use crate::run::preflight::{Problem, Severity};
use crate::ssh::RemoteHost;
use anyhow::{Context, Result, anyhow};

/// One Node as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// `metadata.name`.
    pub name: String,
    /// Its `InternalIP`.
    pub ip: String,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned).
    pub cordoned: bool,
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet: String,
}

/// What preflight needs to know about the cluster.
#[derive(Clone, Debug)]
pub struct ClusterFacts {
    /// kubeadm's `ClusterConfiguration.kubernetesVersion`: the control plane's version.
    pub version: String,
    /// Every Node.
    pub nodes: Vec<NodeFacts>,
    /// `None` when etcd answers ready, else what the API said.
    pub etcd_problem: Option<String>,
}

impl ClusterFacts {
    /// The Node whose address is `ip`.
    pub fn node_by_ip(&self, ip: &str) -> Option<&NodeFacts> {
        self.nodes.iter().find(|n| n.ip == ip)
    }
}

/// Reads the cluster through `master`, waiting up to `patience` for an API that is restarting
/// (a resumed upgrade may find master0's apiserver being replaced).
pub async fn read<H: RemoteHost>(master: &H, patience: std::time::Duration) -> Result<ClusterFacts> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match read_once(master).await {
            Ok(f) => return Ok(f),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_secs(3)).await,
        }
    }
}

async fn read_once<H: RemoteHost>(master: &H) -> Result<ClusterFacts> {
    let config =
        kubectl(master, "-n kube-system get configmap kubeadm-config -o jsonpath={.data.ClusterConfiguration}")
            .await
            .context("reading kubeadm's ClusterConfiguration")?;
    let version = kubernetes_version(&config)
        .ok_or_else(|| anyhow!("kubeadm's ClusterConfiguration names no kubernetesVersion"))?;
    let nodes = parse_nodes(&kubectl(master, "get nodes -o json").await.context("listing the nodes")?)?;
    let etcd = master.run(&format!("{KUBECTL} get --raw /readyz/etcd 2>&1"), b"").await?;
    let etcd_problem = (!(etcd.ok() && etcd.text().trim() == "ok")).then(|| etcd.tail(3));
    Ok(ClusterFacts { version, nodes, etcd_problem })
}

async fn kubectl<H: RemoteHost>(h: &H, args: &str) -> Result<String> {
    let out = h.run(&format!("{KUBECTL} {args}"), b"").await?;
    if !out.ok() {
        anyhow::bail!("kubectl {args} exited with status {}: {}", out.status, out.tail(3));
    }
    Ok(out.text())
}

/// `kubernetesVersion` from a ClusterConfiguration document.
pub fn kubernetes_version(config: &str) -> Option<String> {
    config.lines().find_map(|l| {
        let v = l.trim().strip_prefix("kubernetesVersion:")?;
        Some(v.trim().trim_matches(['"', '\'']).to_string()).filter(|v| !v.is_empty())
    })
}

/// The nodes of `kubectl get nodes -o json`.
pub fn parse_nodes(json: &str) -> Result<Vec<NodeFacts>> {
    let doc: serde_json::Value = serde_json::from_str(json).context("kubectl get nodes printed no JSON")?;
    let items = doc["items"].as_array().ok_or_else(|| anyhow!("kubectl get nodes listed no items"))?;
    Ok(items
        .iter()
        .map(|n| {
            let status = &n["status"];
            let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            let addresses = status["addresses"].as_array().cloned().unwrap_or_default();
            NodeFacts {
                name: n["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                ip: addresses
                    .iter()
                    .find(|a| a["type"] == "InternalIP")
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                ready: conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"),
                cordoned: n["spec"]["unschedulable"].as_bool().unwrap_or(false),
                kubelet: status["nodeInfo"]["kubeletVersion"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect())
}

/// The Node of `kubectl get node NAME -o json`.
pub fn parse_node(json: &str) -> Option<NodeFacts> {
    parse_nodes(&format!("{{\"items\":[{json}]}}")).ok()?.into_iter().next()
}

/// The release an installer's `inspect --json` describes.
pub fn parse_release(json: &str, id: &str) -> Option<Release> {
    let doc: serde_json::Value = serde_json::from_str(json).ok()?;
    let m = &doc["metadata"];
    Some(Release {
        bundle: m["name"].as_str()?.to_string(),
        version: m["version"].as_str().unwrap_or_default().to_string(),
        created: m["created"].as_u64()?,
        id: id.to_string(),
    })
}

/// The cluster's facts judged for an upgrade to `target`, as preflight rows against `at` (the
/// master they were read through). Returns the step when nothing refuses it.
pub fn judge(facts: &ClusterFacts, target: &str, at: &str, cluster_hosts: &[String]) -> (Option<Step>, Vec<Problem>) {
    let mut rows = Vec::new();
    let mut add = |host: &str, check: &str, message: String| {
        rows.push(Problem { host: host.to_string(), severity: Severity::Error, check: check.into(), message })
    };
    let (Some(cluster), Some(target_v)) = (Version::parse(&facts.version), Version::parse(target)) else {
        add(
            at,
            "version",
            format!("cannot compare the cluster's Kubernetes {:?} with this installer's {target:?}", facts.version),
        );
        return (None, rows);
    };
    let mut kubelets = Vec::new();
    for n in &facts.nodes {
        let host = if n.ip.is_empty() { n.name.as_str() } else { n.ip.as_str() };
        match Version::parse(&n.kubelet) {
            Some(k) => kubelets.push((n.name.clone(), k)),
            None => add(host, "version", format!("node {} reports kubelet {:?}, not a version", n.name, n.kubelet)),
        }
        if !n.ready {
            add(
                host,
                "node",
                format!("node {} is not Ready: upgrade only a healthy cluster (see `installer check`)", n.name),
            );
        }
        if !cluster_hosts.contains(&n.ip) {
            add(
                host,
                "node",
                format!(
                    "node {} ({}) is not a host of this cluster's description, so it would not be upgraded",
                    n.name, n.ip
                ),
            );
        }
    }
    for ip in cluster_hosts {
        if !facts.nodes.iter().any(|n| &n.ip == ip) {
            add(ip, "node", format!("{ip} is a host of the cluster's description but no Node has that address"));
        }
    }
    if let Some(e) = &facts.etcd_problem {
        add(at, "etcd", format!("etcd is not healthy: {e}"));
    }
    let step = match versions::judge(cluster, &kubelets, target_v) {
        Ok(step) => Some(step),
        Err(refusals) => {
            for r in refusals {
                add(at, "version", r);
            }
            None
        }
    };
    (step, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"{"items":[
      {"metadata":{"name":"m1"},"spec":{},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.1"},{"type":"Hostname","address":"m1"}],
        "conditions":[{"type":"Ready","status":"True"}],"nodeInfo":{"kubeletVersion":"v1.36.3"}}},
      {"metadata":{"name":"w1"},"spec":{"unschedulable":true},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.2"}],
        "conditions":[{"type":"Ready","status":"False"}],"nodeInfo":{"kubeletVersion":"v1.36.3"}}}]}"#;

    #[test]
    fn reads_nodes_and_version() {
        let nodes = parse_nodes(NODES).unwrap();
        assert_eq!(
            nodes[0],
            NodeFacts {
                name: "m1".into(),
                ip: "10.0.0.1".into(),
                ready: true,
                cordoned: false,
                kubelet: "v1.36.3".into()
            }
        );
        assert!(nodes[1].cordoned && !nodes[1].ready);
        let config = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.36.3\n";
        assert_eq!(kubernetes_version(config).as_deref(), Some("v1.36.3"));
        assert_eq!(kubernetes_version("kind: ClusterConfiguration\n"), None);
        assert!(parse_nodes("not json").is_err());
    }

    #[test]
    fn every_problem_is_one_row() {
        let facts = ClusterFacts {
            version: "v1.35.2".into(),
            nodes: parse_nodes(NODES).unwrap(),
            etcd_problem: Some("[-]etcd failed".into()),
        };
        let hosts = vec!["10.0.0.1".to_string(), "10.0.0.2".to_string(), "10.0.0.3".to_string()];
        let (step, rows) = judge(&facts, "v1.37.2", "10.0.0.1", &hosts);
        assert_eq!(step, None);
        let checks: Vec<(&str, &str)> = rows.iter().map(|r| (r.host.as_str(), r.check.as_str())).collect();
        assert!(checks.contains(&("10.0.0.2", "node")), "{rows:?}");
        assert!(checks.contains(&("10.0.0.3", "node")), "{rows:?}");
        assert!(checks.contains(&("10.0.0.1", "etcd")), "{rows:?}");
        assert!(rows.iter().any(|r| r.message.contains("skips a minor")), "{rows:?}");
    }

    #[test]
    fn a_healthy_cluster_one_minor_behind_may_go() {
        let mut facts =
            ClusterFacts { version: "v1.36.3".into(), nodes: parse_nodes(NODES).unwrap(), etcd_problem: None };
        facts.nodes[1].ready = true;
        let hosts = vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()];
        assert_eq!(judge(&facts, "v1.37.2", "10.0.0.1", &hosts), (Some(Step::Upgrade), vec![]));
    }

    #[test]
    fn release_from_inspect() {
        let json = r#"{"metadata":{"name":"platform","version":"1.2.0","kubernetes_version":"v1.36.3","created":1700000000,"builder":"ferry"}}"#;
        let r = parse_release(json, "abc").unwrap();
        assert_eq!(
            (r.bundle.as_str(), r.version.as_str(), r.created, r.id.as_str()),
            ("platform", "1.2.0", 1700000000, "abc")
        );
        assert_eq!(parse_release("{}", "x"), None);
    }
}
