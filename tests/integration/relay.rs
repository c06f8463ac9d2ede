//! Relay distribution on the real lab: a run on 4 hosts behind the bastion is one
//! chain, node1 (the registry, fed by the installer) → node2 → node3 → node4, each pulling from
//! the host before it over a token-guarded listener and checking every chunk. node2 is taken off
//! the network while node3 pulls from it: node3 goes around it to node1, node3 and node4 finish
//! with copies that verify, and the run fails naming node2 alone. A re-run then completes.

use ferry_tests::bundles::{RunBundle, run_bundle, wipe_run};
use ferry_tests::lab::{Host, LAB_NODES, Lab};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn lab() -> &'static Lab {
    Lab::shared(LAB_NODES, true)
}

fn bundle() -> &'static RunBundle {
    static B: OnceLock<RunBundle> = OnceLock::new();
    B.get_or_init(|| run_bundle("relay-test", 100))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_command(inv: &std::path::Path) -> Command {
    let b = bundle();
    let mut c = Command::new(&b.installer);
    c.args(["--no-progress", "run", "--json", "--keepalive", "2", "-f"])
        .arg(inv)
        .arg("--trusted-key")
        .arg(&b.public_key)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn wipe(lab: &Lab) {
    wipe_run(lab, LAB_NODES);
}

/// The padding file, extracted from the host's own copy by the installer there (which checks
/// every chunk against the signed index as it goes), hashed.
fn pad_sha256_on(lab: &Lab, i: usize) -> String {
    let out = lab.ssh_ok(
        Host::Node(i),
        "rm -rf /var/tmp/relay-x && /var/lib/ferry/installer extract --to /var/tmp/relay-x files/opt/ferry-test/pad.bin >/dev/null && sha256sum /var/tmp/relay-x/files/opt/ferry-test/pad.bin | cut -d' ' -f1; rm -rf /var/tmp/relay-x",
    );
    out.trim().to_string()
}

#[test]
fn relay_host_cut_mid_transfer_is_routed_around() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let b = bundle();
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("cluster.yaml");
    std::fs::write(&inv, lab.inventory(LAB_NODES)).unwrap();
    // Slow enough to cut in the middle: node1's link carries everything into the chain.
    ex.shape(Host::Node(1), "40mbit");
    let child = run_command(&inv).spawn().unwrap();
    let part_mb = |i: usize| -> u64 {
        let out = lab.ssh(Host::Node(i), "du -m /var/lib/ferry/installer.part 2>/dev/null | cut -f1").stdout;
        String::from_utf8_lossy(&out).trim().parse().unwrap_or(0)
    };
    let t0 = Instant::now();
    // node3 pulls from node2 as node2's chunks land: cut node2 once node3 has some of them.
    while part_mb(3) < 15 {
        assert!(t0.elapsed() < Duration::from_secs(180), "node3 never received 15 MB");
        std::thread::sleep(Duration::from_millis(300));
    }
    let node4_at_cut = part_mb(4);
    ex.cut(Host::Node(2));
    let first = child.wait_with_output().unwrap();
    ex.restore(Host::Node(2));
    ex.unshape(Host::Node(1));
    let msg = text(&first);
    assert!(!first.status.success(), "{msg}");
    assert!(msg.contains("10.88.0.12: distribute failed"), "{msg}");
    for other in ["10.88.0.11: distribute failed", "10.88.0.13: distribute failed", "10.88.0.14: distribute failed"] {
        assert!(!msg.contains(other), "only node2 fails:\n{msg}");
    }
    // node3 noticed, and went around node2 to node1.
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&first.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        events.iter().any(|e| e["host"] == "10.88.0.13" && e["lost"] == "10.88.0.12"),
        "node3 never reported losing node2:\n{msg}"
    );
    assert!(
        events.iter().any(|e| e["host"] == "10.88.0.13" && e["relay"] == "10.88.0.11"),
        "node3 was not sent to node1:\n{msg}"
    );
    eprintln!("relay: node4 held {node4_at_cut} MB at the cut");
    // node3 and node4 hold complete copies whose bytes verify, equal to what was built.
    for i in [1, 3, 4] {
        assert_eq!(pad_sha256_on(lab, i), b.pad_sha256, "node{i}'s copy");
    }
    // The operator's uplink carried about one copy: node1's (plus node3's detour through
    // node1, which node1 served, not the operator).
    let sent_total: u64 = events
        .iter()
        .filter(|e| e["phase"] == "distribute" && e["event"] == "done")
        .filter_map(|e| e["bytes"].as_u64())
        .sum();
    assert!(sent_total < 140 << 20, "the operator sent {sent_total} bytes for a ~105 MB installer");

    // The same command again finishes node2, which keeps what it had.
    let second = run_command(&inv).output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(pad_sha256_on(lab, 2), b.pad_sha256, "node2's copy");
    for i in 1..=LAB_NODES {
        assert_eq!(lab.ssh_ok(Host::Node(i), "systemctl is-active containerd").trim(), "active", "node{i}");
    }
    wipe(lab);
}
