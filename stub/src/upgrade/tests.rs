//! The upgrade's node order and per-node steps against in-memory hosts.

use super::nodes::Nodes;
use super::survey::NodeFacts;
use crate::protocol::{Call, PrepareReport};
use crate::run::Ctx;
use crate::run::engine::{Engine, Step};
use crate::run::progress::Reporter;
use crate::run::records::State;
use crate::ssh::Output;
use crate::ssh::fake::{FakeHost, agent_answer};
use payload_format::Payload;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const IPS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
const TARGET: &str = "v1.37.2";

fn ctx(dir: &std::path::Path) -> Arc<Ctx> {
    let path = crate::run::distribute::tests::build_sized(dir, 2_000, 1_000);
    let cluster = crate::cluster::resolve(
        None,
        &crate::cluster::Overrides {
            masters: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            workers: vec!["10.0.0.3".into(), "10.0.0.4".into()],
            ..Default::default()
        },
    )
    .unwrap();
    Arc::new(Ctx {
        payload: Payload::open(&path).unwrap(),
        id: "build-2".into(),
        cluster,
        rep: Reporter::new(false, true, true),
        stub: Vec::new(),
        stub_sha: String::new(),
        allow_unsigned: true,
        signer: None,
        local_state: dir.join("state"),
        phase_timeout: Duration::from_secs(60),
        force: false,
        stall: Duration::from_secs(20),
        registry_ca: Some(crate::run::registry_ca(&dir.join("pki")).unwrap()),
    })
}

/// Every command any host ran, in the order they ran, as (host, command); `fail` makes commands
/// containing it fail on every host.
fn hosts(log: &Arc<Mutex<Vec<(String, String)>>>, fail: Option<&'static str>) -> Vec<Arc<FakeHost>> {
    IPS.iter()
        .map(|ip| {
            let (log, ip_s) = (log.clone(), ip.to_string());
            let responder = Arc::new(move |cmd: &str, _stdin: &[u8]| {
                log.lock().unwrap().push((ip_s.clone(), cmd.to_string()));
                if fail.is_some_and(|f| cmd.contains(f)) {
                    return Output { status: 1, stdout: b"evicting pod demo/web-1 (will retry): Cannot evict pod as it would violate the pod's disruption budget.\n".to_vec(), stderr: Vec::new() };
                }
                let stdout = match cmd.split_once("get node ") {
                    Some((_, rest)) => {
                        let name = rest.split_whitespace().next().unwrap_or_default();
                        serde_json::json!({"metadata": {"name": name}, "spec": {}, "status": {
                            "conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": TARGET}}})
                        .to_string()
                    }
                    None if cmd.contains("/readyz") => "ok".into(),
                    None => String::new(),
                };
                Output { status: 0, stdout: stdout.into_bytes(), stderr: Vec::new() }
            });
            let agent = Arc::new(|call: &Call, _stdin: &[u8]| match call {
                Call::Prepare => agent_answer(Some(&PrepareReport::default())),
                _ => agent_answer::<()>(None),
            });
            Arc::new(FakeHost::new(ip, responder).with_agent(agent))
        })
        .collect()
}

fn nodes_phase(max_unavailable: usize) -> Arc<Nodes<FakeHost>> {
    Arc::new(Nodes {
        target: TARGET.into(),
        nodes: IPS
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let n = NodeFacts {
                    name: format!("n{}", i + 1),
                    ip: ip.to_string(),
                    ready: true,
                    cordoned: false,
                    kubelet: "v1.36.3".into(),
                };
                (i, n)
            })
            .collect(),
        m0: 0,
        max_unavailable,
        drain_timeout: Duration::from_secs(30),
        cgroup_v1_hosts: vec!["10.0.0.3".into()],
        speaker: OnceLock::new(),
        seconds: Mutex::default(),
    })
}

/// The node each drain named, in order.
fn drains(log: &[(String, String)]) -> Vec<String> {
    log.iter()
        .filter_map(|(_, c)| {
            c.split_once(" drain ").map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        })
        .collect()
}

#[tokio::test]
async fn masters_one_at_a_time_master0_applying_then_workers() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let log = Arc::default();
    let engine = Engine::new(ctx, hosts(&log, None), vec![State::new(); 4], 8);
    engine.run(&[nodes_phase(1) as Step<FakeHost>]).await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(drains(&log), ["n1", "n2", "n3", "n4"]);
    let kubeadm: Vec<(String, String)> =
        log.iter().filter(|(_, c)| c.contains("kubeadm upgrade")).map(|(h, c)| (h.clone(), c.clone())).collect();
    assert_eq!(kubeadm.len(), 4, "{kubeadm:?}");
    assert!(kubeadm[0].0 == "10.0.0.1" && kubeadm[0].1.contains("kubeadm upgrade apply v1.37.2 --yes"), "{kubeadm:?}");
    assert!(kubeadm[1..].iter().all(|(_, c)| c.contains("kubeadm upgrade node")), "{kubeadm:?}");
    // Only the cgroup v1 host skips kubeadm's SystemVerification.
    let skipped: Vec<&str> =
        kubeadm.iter().filter(|(_, c)| c.contains("SystemVerification")).map(|(h, _)| h.as_str()).collect();
    assert_eq!(skipped, ["10.0.0.3"]);
    // Every node: drained before its kubeadm, its old programs kept first, uncordoned at the end.
    for (i, ip) in IPS.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let at = |what: &str| {
            log.iter().position(|(h, c)| (h == ip || c.contains(&name)) && c.contains(what)).unwrap_or(usize::MAX)
        };
        let drain = log.iter().position(|(_, c)| c.contains(&format!("drain {name} "))).unwrap();
        assert!(
            drain < at("/var/lib/ferry/previous") && at("/var/lib/ferry/previous") < at("kubeadm upgrade"),
            "{ip}: {log:#?}"
        );
        assert!(at("kubeadm upgrade") < at(&format!("uncordon {name}")), "{ip}");
    }
}

#[tokio::test]
async fn a_failed_drain_names_the_budget_and_stops_before_kubeadm() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let log = Arc::default();
    let engine = Engine::new(ctx, hosts(&log, Some(" drain n1 ")), vec![State::new(); 4], 8);
    let e = engine.run(&[nodes_phase(2) as Step<FakeHost>]).await.unwrap_err().to_string();
    assert!(e.contains("10.0.0.1") && e.contains("disruption budget allows no eviction of pod demo/web-1"), "{e}");
    assert!(e.contains("--revert-node 10.0.0.1"), "{e}");
    let log = log.lock().unwrap().clone();
    assert!(!log.iter().any(|(_, c)| c.contains("kubeadm upgrade")), "{log:?}");
    assert_eq!(drains(&log), ["n1"], "no other node was touched");
}

#[tokio::test]
async fn a_node_recorded_upgraded_by_this_installer_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    let log = Arc::default();
    let done = crate::agent::Record {
        cluster: ctx.cluster.name.clone(),
        phase: "upgrade".into(),
        installer: ctx.id.clone(),
        completed: 1,
        detail: serde_json::json!({}),
    };
    let mut states = vec![State::new(); 4];
    states[0] = BTreeMap::from([("upgrade".to_string(), done)]);
    let engine = Engine::new(ctx, hosts(&log, None), states, 8);
    engine.run(&[nodes_phase(1) as Step<FakeHost>]).await.unwrap();
    assert_eq!(drains(&log.lock().unwrap()), ["n2", "n3", "n4"]);
}
