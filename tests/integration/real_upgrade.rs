//! `installer upgrade` on the lab with real Kubernetes: the platform of `examples/cluster` made
//! with the installer of the older tree (v1.36.x) and upgraded with the newer one (v1.37.x),
//! both signed by one vendor key, with apps serving throughout.
//!
//! - 1 master + 2 workers: an app of 2 replicas behind a PodDisruptionBudget, a client on the
//!   master calling its Service every 100 ms; refusals (untrusted, skipped minor) before, the
//!   operator killed during master0's `kubeadm upgrade apply` and the same command run again,
//!   every node on the new version and `check` green, the client's failures counted; refusals
//!   after (downgrade, an older build); `join` after the upgrade on the new version.
//! - 3 masters + 1 worker: the API polled through every node's load balancer during the whole
//!   upgrade; a drain held by a PodDisruptionBudget stops it with its cause; a worker cut off
//!   part-way is put back with `--revert-node`; the same command then completes.

use super::real_cluster::{FreshLab, KUBECTL, cluster_file, eventually, json, kubectl, lab, text};
use ferry_tests::lab::{Host, Lab};
use ferry_tests::real_k8s::{Releases, releases};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `installer ARGS --trusted-key VENDOR.pub`.
fn installer(file: &Path, key: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(file);
    cmd.arg("--no-progress").args(args).arg("--trusted-key").arg(key);
    cmd.env_remove("SSH_AUTH_SOCK").env_remove("FERRY_TRUSTED_KEYS").stdin(Stdio::null()).output().unwrap()
}

/// Runs `installer ARGS` and kills it (SIGKILL, as a lost laptop would) at the first output line
/// that has all of `at`; returns what it printed. Panics when no such line came.
fn killed_at(file: &Path, key: &Path, args: &[&str], at: &[&str]) -> String {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg(file)
        .arg("--no-progress")
        .args(args)
        .arg("--trusted-key")
        .arg(key)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut killed = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if at.iter().all(|w| line.contains(w)) {
            child.kill().unwrap();
            killed = true;
            break;
        }
    }
    let _ = child.wait();
    assert!(killed, "no line with {at:?}:\n{said}");
    said
}

/// Each node's kubelet version, by node name.
fn kubelets(lab: &Lab, m: usize) -> Vec<(String, String)> {
    let v = json(&kubectl(lab, m, "get nodes -o json"));
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let name = n["metadata"]["name"].as_str().unwrap().to_string();
            (name, n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap().to_string())
        })
        .collect()
}

fn cluster_version(lab: &Lab, m: usize) -> String {
    let config =
        kubectl(lab, m, "-n kube-system get configmap kubeadm-config -o jsonpath={.data.ClusterConfiguration}");
    config.lines().find_map(|l| l.trim().strip_prefix("kubernetesVersion:")).unwrap_or_default().trim().to_string()
}

/// The cluster file for `masters` and `workers`, named `name` (each test its own local state).
fn named_cluster_file(lab: &Lab, dir: &Path, name: &str, masters: &[usize], workers: &[usize]) -> String {
    let file = cluster_file(lab, dir, masters, workers);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("metadata: {name: lab}", &format!("metadata: {{name: {name}}}"));
    std::fs::write(&file, text).unwrap();
    file
}

/// The old release's cluster, made with `run`.
fn old_cluster(r: &Releases, file: &str) {
    let out = installer(&r.old, &r.public_key, &["run", "-f", file]);
    assert!(out.status.success(), "run of {}:\n{}", r.from.version, text(&out));
}

/// A PodDisruptionBudget over the web app (2 replicas) and a client DaemonSet on node1 (a
/// master; drains leave DaemonSet pods alone) calling the web Service every 100 ms and counting
/// (`timeout`, not `wget -T`, which crashes the busybox built here).
fn client_and_budget(lab: &Lab) {
    let ip = kubectl(lab, 1, "-n demo get service web -o jsonpath={.spec.clusterIP}");
    let manifest = format!(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: web, namespace: demo}}
spec:
  minAvailable: 1
  selector: {{matchLabels: {{app: web}}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: client, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: node1}}
      tolerations: [{{operator: Exists}}]
      containers:
        - name: client
          image: docker.io/library/busybox:1.36
          command:
            - sh
            - -c
            - 'ok=0; fail=0; while :; do if timeout 2 wget -q -O /dev/null http://{ip}/; then ok=$((ok+1)); else fail=$((fail+1)); echo "failed at $(date +%T)"; fi; echo "$ok $fail" > /tmp/count; sleep 0.1; done'
          volumeMounts: [{{name: tmp, mountPath: /tmp}}]
      volumes: [{{name: tmp, emptyDir: {{}}}}]
"#
    );
    lab.ssh_ok(Host::Node(1), &format!("{KUBECTL} apply -f - <<'EOF'\n{manifest}EOF"));
    eventually(Duration::from_secs(180), "the client calls the web app", || {
        let (ok, _) = client_counts(lab)?;
        if ok >= 10 { Ok(()) } else { Err(format!("{ok} calls so far")) }
    });
}

/// The client's (successful, failed) calls so far, or what kubectl said instead.
fn client_counts(lab: &Lab) -> Result<(u64, u64), String> {
    let out = lab.ssh(
        Host::Node(1),
        &format!(
            "{KUBECTL} -n demo exec $({KUBECTL} -n demo get pods -l app=client -o name | head -n1) -- cat /tmp/count"
        ),
    );
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = t.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(ok), Some(failed)) => Ok((ok, failed)),
        _ => {
            let pods = lab.ssh(
                Host::Node(1),
                &format!(
                    "{KUBECTL} -n demo get pods -o wide; {KUBECTL} -n demo describe pods -l app=client | tail -n 15"
                ),
            );
            Err(format!("{}\n{}", text(&out), text(&pods)))
        }
    }
}

#[test]
fn upgrade_keeps_apps_serving_resumes_and_refuses() {
    let lab = lab();
    let _ex = FreshLab::take();
    let r = releases();
    let (from, to) = (r.from.version.clone(), r.to.version.clone());
    let work = tempfile::tempdir().unwrap();
    let file = named_cluster_file(lab, work.path(), "upgrade", &[1], &[2, 3]);
    old_cluster(r, &file);
    client_and_budget(lab);

    // Refused before anything changes: an installer nobody trusts, then a cluster that reports a
    // minor version too old (ferry reads the version from the cluster itself).
    let mut untrusted = Command::new(&r.new);
    untrusted.args(["--no-progress", "upgrade", "-f", &file]).env_remove("FERRY_TRUSTED_KEYS").stdin(Stdio::null());
    let out = untrusted.output().unwrap();
    assert!(!out.status.success() && text(&out).contains("does not trust"), "{}", text(&out));
    let minor = |v: &str| v.rsplit_once('.').unwrap().0.to_string();
    let older_minor = format!("v1.{}.4", minor(&from).rsplit_once('.').unwrap().1.parse::<u32>().unwrap() - 1);
    let patch = |a: &str, b: &str| {
        lab.ssh_ok(
            Host::Node(1),
            &format!("{KUBECTL} -n kube-system get configmap kubeadm-config -o yaml | sed 's/kubernetesVersion: {a}/kubernetesVersion: {b}/' | {KUBECTL} apply -f - >/dev/null"),
        )
    };
    patch(&from, &older_minor);
    let out = installer(&r.new, &r.public_key, &["upgrade", "-f", &file]);
    patch(&older_minor, &from);
    let o = text(&out);
    assert!(!out.status.success() && o.contains("skips a minor") && o.contains(&older_minor) && o.contains(&to), "{o}");
    assert!(lab.ssh(Host::Node(1), "systemctl is-active ferry-registry-previous").status.code() != Some(0), "{o}");
    let out = installer(&r.new, &r.public_key, &["upgrade", "-f", &file, "--dry-run"]);
    assert!(out.status.success() && text(&out).contains(&format!("Kubernetes {from} → {to}")), "{}", text(&out));

    // The operator dies while master0 runs `kubeadm upgrade apply`; the same command continues.
    let ip1 = lab.ip(Host::Node(1));
    let said = killed_at(&r.new, &r.public_key, &["upgrade", "-f", &file], &[&ip1, "kubeadm upgrade apply"]);
    assert!(said.contains("etcd-before-"), "{said}");
    let out = installer(&r.new, &r.public_key, &["upgrade", "-f", &file]);
    let o = text(&out);
    assert!(out.status.success(), "the upgrade run again:\n{o}");
    assert!(o.contains("taken before the upgrade began"), "the snapshot was taken again:\n{o}");
    assert!(o.contains(&format!("upgraded from {from} to {to}")) && o.contains("healthy:"), "{o}");
    let summary = o.lines().find(|l| l.contains("upgraded from")).unwrap();
    eprintln!("upgrade: {summary}");

    for (node, kubelet) in kubelets(lab, 1) {
        assert_eq!(kubelet, to, "{node}");
    }
    assert_eq!(cluster_version(lab, 1), to);
    let out = installer(&r.new, &r.public_key, &["check", "-f", &file]);
    assert!(out.status.success(), "check:\n{}", text(&out));
    let (ok, failed) = client_counts(lab).unwrap_or_else(|e| panic!("the client's count: {e}"));
    let log = lab.ssh(Host::Node(1), &format!("{KUBECTL} -n demo logs ds/client"));
    eprintln!(
        "upgrade: the client's calls to the web Service during the upgrade: {ok} answered, {failed} failed\n{}",
        text(&log)
    );
    let restarts = kubectl(
        lab,
        1,
        "-n demo get pods -l app=client -o jsonpath={.items[0].status.containerStatuses[0].restartCount}",
    );
    assert_eq!(restarts, "0", "the client restarted, so its count is not the whole upgrade's");
    assert!(ok > 100, "the client hardly ran: {ok} answered, {failed} failed");
    assert_eq!(failed, 0, "calls to the web Service failed during the upgrade ({ok} answered)");
    // The snapshot beside the operator's state, private.
    let snapshot = r.dir.path().join(format!(".ferry/upgrade/etcd-before-{from}.db"));
    let meta = std::fs::metadata(&snapshot).unwrap_or_else(|e| panic!("{}: {e}", snapshot.display()));
    use std::os::unix::fs::PermissionsExt;
    assert!(meta.len() > 0 && meta.permissions().mode() & 0o777 == 0o600, "{meta:?}");
    // The previous release's registry and the kept programs are gone once every node is done.
    let leftovers = lab.ssh(
        Host::Node(1),
        "systemctl is-active ferry-registry-previous; ls /var/lib/ferry/installer.previous /var/lib/ferry/previous",
    );
    assert!(!leftovers.status.success(), "{}", text(&leftovers));

    // Refused after: going back down, and an older build of the same release.
    let out = installer(&r.old, &r.public_key, &["upgrade", "-f", &file]);
    let o = text(&out);
    assert!(!out.status.success() && o.contains("downgrade") && o.contains(&from) && o.contains(&to), "{o}");
    let out = installer(&r.new_built_earlier, &r.public_key, &["upgrade", "-f", &file]);
    let o = text(&out);
    assert!(!out.status.success() && o.contains("older than the one that last changed the cluster"), "{o}");

    // A node joined after the upgrade runs the new version.
    let ip4 = lab.ip(Host::Node(4));
    let out = installer(&r.new, &r.public_key, &["join", "-f", &file, "--workers", &ip4]);
    assert!(out.status.success(), "join after the upgrade:\n{}", text(&out));
    let joined = kubelets(lab, 1);
    assert!(joined.iter().any(|(n, v)| n == "node4" && *v == to), "{joined:?}");
}

/// Starts, on every node in `nodes`, a loop asking the API `/readyz` through the node's own load
/// balancer every 0.5 s (with a copy of the admin kubeconfig, whose server is the LB).
fn start_api_pollers(lab: &Lab, nodes: &[usize]) {
    let conf = lab.ssh_ok(Host::Node(1), "cat /etc/kubernetes/admin.conf");
    for &n in nodes {
        lab.ssh_ok(Host::Node(n), &format!("umask 077; cat > /root/poll.conf <<'EOF'\n{conf}\nEOF"));
        lab.ssh_ok(
            Host::Node(n),
            "nohup sh -c ': ferry-api-poll; while :; do if timeout 3 kubectl --kubeconfig /root/poll.conf get --raw /readyz >/dev/null 2>&1; then r=ok; else r=fail; fi; echo \"$(date +%s.%N) $r\"; sleep 0.5; done' >/root/api-poll.log 2>&1 </dev/null &",
        );
    }
}

/// Stops the pollers; per node: (answered, failed, longest run of failures in seconds).
fn stop_api_pollers(lab: &Lab, nodes: &[usize]) -> Vec<(usize, u64, u64, f64)> {
    nodes
        .iter()
        .map(|&n| {
            // The bracket keeps the pattern from matching this command's own shell.
            lab.ssh_ok(Host::Node(n), "pkill -f 'ferry-api-pol[l]'; true");
            let log = lab.ssh_ok(Host::Node(n), "cat /root/api-poll.log");
            let (mut ok, mut failed, mut longest, mut since) = (0, 0, 0.0f64, None::<f64>);
            for l in log.lines() {
                let mut w = l.split_whitespace();
                let (Some(t), Some(r)) = (w.next().and_then(|t| t.parse::<f64>().ok()), w.next()) else { continue };
                if r == "ok" {
                    ok += 1;
                    if let Some(s) = since.take() {
                        longest = longest.max(t - s);
                    }
                } else {
                    failed += 1;
                    since.get_or_insert(t);
                }
            }
            (n, ok, failed, longest)
        })
        .collect()
}

#[test]
fn upgrade_of_three_masters_keeps_the_api_and_reverts_a_node() {
    let lab = lab();
    let ex = FreshLab::take();
    let r = releases();
    let (from, to) = (r.from.version.clone(), r.to.version.clone());
    let work = tempfile::tempdir().unwrap();
    let file = named_cluster_file(lab, work.path(), "upgrade-ha", &[1, 2, 3], &[4]);
    old_cluster(r, &file);
    let all = [1, 2, 3, 4];
    start_api_pollers(lab, &all);

    // A budget that allows no eviction holds node4's drain: the upgrade stops there, naming it.
    lab.ssh_ok(
        Host::Node(1),
        &format!(
            "{KUBECTL} -n demo create deployment stuck --image=docker.io/library/busybox:1.36 -- sleep 100000 >/dev/null && \
             {KUBECTL} -n demo create poddisruptionbudget stuck --selector=app=stuck --min-available=1 >/dev/null && \
             {KUBECTL} -n demo rollout status deployment/stuck --timeout=180s >/dev/null"
        ),
    );
    let ip4 = lab.ip(Host::Node(4));
    let out = installer(&r.new, &r.public_key, &["upgrade", "-f", &file, "--drain-timeout", "20"]);
    let o = text(&out);
    assert!(!out.status.success(), "the upgrade passed a drain the budget forbids:\n{o}");
    let error = o.lines().skip_while(|l| !l.starts_with("error")).collect::<Vec<_>>().join("\n");
    assert!(error.contains(&ip4) && error.contains("drain") && error.contains("disruption budget"), "{o}");
    let versions = kubelets(lab, 1);
    for (node, v) in &versions {
        let want = if node == "node4" { &from } else { &to };
        assert_eq!(v, want, "{node}: {versions:?}");
    }

    // With the budget gone, the operator is cut off while node4 runs kubeadm; node4 is put back
    // as it was, then the same command completes.
    lab.ssh_ok(Host::Node(1), &format!("{KUBECTL} -n demo delete poddisruptionbudget stuck >/dev/null"));
    killed_at(&r.new, &r.public_key, &["upgrade", "-f", &file], &[&ip4, "kubeadm upgrade node"]);
    let out = installer(&r.new, &r.public_key, &["upgrade", "-f", &file, "--revert-node", &ip4]);
    let o = text(&out);
    assert!(out.status.success() && o.contains(&from), "revert-node:\n{o}");
    let versions = kubelets(lab, 1);
    assert!(versions.iter().any(|(n, v)| n == "node4" && *v == from), "{versions:?}");
    let schedulable = kubectl(lab, 1, "get node node4 -o jsonpath={.spec.unschedulable}");
    assert_eq!(schedulable, "", "node4 is still cordoned");
    let out = installer(&r.new, &r.public_key, &["upgrade", "-f", &file]);
    let o = text(&out);
    assert!(out.status.success(), "the upgrade after the revert:\n{o}");
    for (node, v) in kubelets(lab, 1) {
        assert_eq!(v, to, "{node}");
    }

    let polls = stop_api_pollers(lab, &all);
    for (n, ok, failed, longest) in &polls {
        eprintln!(
            "upgrade-ha: node{n}: the API through its load balancer answered {ok} times, failed {failed}, longest outage {longest:.1} s"
        );
    }
    for (n, ok, failed, longest) in polls {
        assert!(ok > 100, "node{n}'s poller hardly ran");
        // The load balancers send no new request to an apiserver that is not ready; what fails
        // is what was already on its way when one stopped.
        assert!(failed * 20 <= ok + failed, "node{n}: {failed} of {} polls failed", ok + failed);
        // A request in flight when an apiserver stops can fail; the API as a whole must not.
        assert!(longest < 10.0, "node{n}: the API was unreachable for {longest:.1} s through its load balancer");
    }
    drop(ex);
}
