//! Real Kubernetes on the lab, end to end: `installer run` of `examples/cluster` (Kubernetes built
//! from Go modules by scripts/build-kubernetes.sh, a web app, a Helm chart, a site file) onto bare
//! lab hosts, then what an operator does with the cluster: `check` green and red, `reset` of a node
//! and of the cluster, `join` of a worker and a master, HA with a master powered off, and a run cut
//! during `kubeadm join` and resumed. Nothing here is a stand-in.
//!
//! The tests share the lab (one per machine) and each takes it exclusively with fresh hosts, and
//! leaves it fresh ([`FreshLab`]), so their order does not matter. `lifecycle` keeps one cluster
//! for its steps (apps, check, reset, join) because making a cluster is the slow part.

use ferry_tests::lab::{Exclusive, Host, Lab};
use ferry_tests::real_k8s::{RealInstaller, cluster_installer};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn lab() -> &'static Lab {
    Lab::shared(ferry_tests::lab::LAB_NODES, true)
}

pub(crate) const KUBECTL: &str = "kubectl --kubeconfig /etc/kubernetes/admin.conf";

fn installer(b: &RealInstaller, args: &[&str]) -> Output {
    let mut cmd = Command::new(&b.installer);
    cmd.arg("--no-progress").args(args).arg("--trusted-key").arg(&b.public_key);
    cmd.env_remove("SSH_AUTH_SOCK").stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn text(o: &Output) -> String {
    ferry_tests::text(o)
}

/// A cluster file for the lab with `masters` and `workers` (node numbers); the first master is
/// also the registry.
pub(crate) fn cluster_file(lab: &Lab, dir: &Path, masters: &[usize], workers: &[usize]) -> String {
    let ip = |i: &usize| lab.ip(Host::Node(*i));
    let list = |v: &[usize]| v.iter().map(ip).collect::<Vec<_>>().join(", ");
    let mut hosts = format!("  hosts:\n    - {{ips: [{}], roles: [master]}}\n", list(masters));
    if !workers.is_empty() {
        hosts.push_str(&format!("    - {{ips: [{}], roles: [worker]}}\n", list(workers)));
    }
    let mut out = String::new();
    let mut skipping = false;
    for l in lab.inventory(lab.hosts()).lines() {
        if l == "  hosts:" {
            out.push_str(&hosts);
            skipping = true;
            continue;
        }
        if skipping && l.trim_start().starts_with("- {ips:") {
            continue;
        }
        skipping = false;
        out.push_str(l);
        out.push('\n');
    }
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, out).unwrap();
    file.display().to_string()
}

/// Leaves every lab node bare within a test (between two clusters): no cluster, no ferry, no
/// Kubernetes programs, and none of their processes, mounts, links or rules.
pub(crate) fn wipe(lab: &Lab) {
    for i in 1..=lab.hosts() {
        lab.ssh_ok(
            Host::Node(i),
            "command -v kubeadm >/dev/null && timeout 120 kubeadm reset -f >/dev/null 2>&1; \
             command -v crictl >/dev/null && { timeout 60 crictl rmp -af >/dev/null 2>&1; }; \
             systemctl disable --now kubelet ferry-lb ferry-registry ferry-service-route containerd >/dev/null 2>&1; \
             for p in containerd-shim kube-apiserver kube-controller kube-scheduler kube-proxy etcd flanneld coredns httpd sleep; do pkill -9 -x $p; done 2>/dev/null; \
             sleep 1; \
             grep -oE ' (/var/lib/kubelet|/run/containerd|/var/lib/containerd|/run/netns/cni)[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null; \
             for l in cni0 flannel.1; do ip link delete $l 2>/dev/null; done; \
             ip route del 10.96.0.0/12 2>/dev/null; \
             for t in filter nat mangle raw; do iptables -t $t -F 2>/dev/null; iptables -t $t -X 2>/dev/null; done; \
             rm -rf /var/lib/ferry/* /etc/ferry /etc/kubernetes /var/lib/kubelet/* /var/lib/etcd/* /etc/cni /var/lib/cni /run/flannel /opt/cni \
               /etc/systemd/system/ferry-*.service /etc/containerd /var/lib/containerd/* /run/containerd /etc/platform /root/admin.conf \
               /usr/local/bin/containerd* /usr/local/bin/ctr /usr/bin/kube* /usr/bin/crictl /usr/bin/helm /usr/sbin/runc /etc/crictl.yaml \
               /etc/systemd/system/containerd.service /etc/systemd/system/kubelet.service*; \
             systemctl daemon-reload; true",
        );
    }
}

/// The lab, exclusively ours, with fresh hosts now and again when dropped (passed or failed). A
/// real cluster leaves processes, cgroups and mounts behind that no wipe removes reliably, and the
/// other lab tests expect bare hosts; a fresh lab takes seconds.
pub(crate) struct FreshLab {
    ex: Exclusive<'static>,
}

impl FreshLab {
    pub(crate) fn take() -> FreshLab {
        let ex = lab().exclusive();
        ex.down();
        ex.up();
        FreshLab { ex }
    }
}

impl std::ops::Deref for FreshLab {
    type Target = Exclusive<'static>;
    fn deref(&self) -> &Exclusive<'static> {
        &self.ex
    }
}

impl Drop for FreshLab {
    fn drop(&mut self) {
        // Never a panic here: this may run while unwinding from one.
        let fresh = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.ex.down();
            self.ex.up();
        }));
        if fresh.is_err() {
            eprintln!("real_cluster: making the lab fresh after the test failed");
        }
    }
}

pub(crate) fn kubectl(lab: &Lab, node: usize, args: &str) -> String {
    lab.ssh_ok(Host::Node(node), &format!("{KUBECTL} {args}"))
}

pub(crate) fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// Polls `f` every 2 s until it returns `Some` or `limit` passes (then panics with `what` and the
/// last thing `f` said). For states a cluster reaches in its own time (a node going NotReady takes
/// the node controller's grace period), never for speed.
pub(crate) fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let t = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if t.elapsed() >= limit => panic!("{what}: not so after {limit:?}; last: {last}"),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

/// Node name → Ready, from master `m`.
pub(crate) fn nodes_ready(lab: &Lab, m: usize) -> Vec<(String, bool)> {
    let v = json(&kubectl(lab, m, "get nodes -o json"));
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (n["metadata"]["name"].as_str().unwrap().to_string(), ready)
        })
        .collect()
}

/// Running pods of kube-system as (name prefix, node).
fn system_pods(lab: &Lab, m: usize) -> Vec<(String, String)> {
    let v = json(&kubectl(lab, m, "-n kube-system get pods -o json"));
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            let name = p["metadata"]["name"].as_str().unwrap();
            let component = p["metadata"]["labels"]["component"]
                .as_str()
                .or(p["metadata"]["labels"]["k8s-app"].as_str())
                .unwrap_or(name)
                .to_string();
            (component, p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Runs a command in a throwaway busybox pod pinned to `node_name`, returning its output.
fn from_pod_on(lab: &Lab, m: usize, node_name: &str, pod: &str, cmd: &str) -> String {
    let overrides = serde_json::json!({"spec": {"nodeName": node_name}}).to_string();
    let run = format!(
        "{KUBECTL} -n demo run {pod} --image=docker.io/library/busybox:1.36 --restart=Never --overrides='{overrides}' -- sleep 600 >/dev/null && \
         {KUBECTL} -n demo wait --for=condition=Ready pod/{pod} --timeout=120s >/dev/null && \
         {KUBECTL} -n demo exec {pod} -- sh -c '{cmd}'"
    );
    let out = lab.ssh(Host::Node(m), &run);
    let _ = lab.ssh(Host::Node(m), &format!("{KUBECTL} -n demo delete pod {pod} --now >/dev/null 2>&1"));
    assert!(out.status.success(), "from a pod on {node_name}: `{cmd}` failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What is left of ferry and Kubernetes on a node, one line per leftover; empty when bare. The
/// lab's state directories are mount points (a data disk), so they count when not empty.
fn leftovers(lab: &Lab, node: usize) -> Vec<String> {
    let out = lab.ssh_ok(
        Host::Node(node),
        "pgrep -x kubelet >/dev/null && echo process:kubelet; pgrep -x containerd >/dev/null && echo process:containerd; \
         for l in cni0 flannel.1; do ip link show $l >/dev/null 2>&1 && echo link:$l; done; \
         iptables -t nat -S 2>/dev/null | grep -q KUBE- && echo iptables:KUBE-chains; \
         ls /etc/systemd/system | grep -E '^(ferry-|kubelet)' | grep -v '^ferry-lab-' | sed 's/^/unit:/'; \
         for p in /etc/ferry /etc/kubernetes /etc/cni/net.d /usr/bin/kubelet /etc/platform/site.conf; do [ -e $p ] && echo path:$p; done; \
         for d in /var/lib/ferry /var/lib/kubelet /var/lib/etcd; do [ -n \"$(ls -A $d 2>/dev/null)\" ] && echo not-empty:$d; done; true",
    );
    out.lines().map(String::from).filter(|l| !l.is_empty()).collect()
}

fn assert_bare(lab: &Lab, node: usize) {
    let left = leftovers(lab, node);
    assert!(left.is_empty(), "node{node} after reset still has: {left:?}");
}

/// Every image containerd holds on `node` (its Kubernetes namespace), by reference.
fn containerd_images(lab: &Lab, node: usize) -> Vec<String> {
    lab.ssh_ok(Host::Node(node), "ctr -n k8s.io images ls -q")
        .lines()
        .filter(|l| !l.starts_with("sha256:"))
        .map(String::from)
        .collect()
}

/// The one cluster of 1 master + 2 workers, and everything an operator does with it.
#[test]
fn lifecycle_on_real_kubernetes() {
    let lab = lab();
    let _ex = FreshLab::take();
    let b = cluster_installer();
    let work = tempfile::tempdir().unwrap();
    let file = cluster_file(lab, work.path(), &[1], &[2, 3]);
    let out = installer(b, &["run", "-f", &file]);
    let o = text(&out);
    assert!(out.status.success(), "run failed:\n{o}");
    assert!(o.contains("healthy:"), "{o}");

    cluster_is_whole(lab, b, &[1, 2, 3]);
    apps_answer_across_nodes(lab);
    files_landed(lab, &[1, 2, 3]);
    check_goes_red(lab, b);
    reset_node_and_join_it_back(lab, b);
    join_a_master(lab, b);

    // The whole cluster goes; every host is bare; `run` on the same hosts then succeeds.
    let out = installer(b, &["reset"]);
    assert!(out.status.success(), "reset:\n{}", text(&out));
    for n in 1..=4 {
        assert_bare(lab, n);
    }
    let out = installer(b, &["run", "-f", &file]);
    assert!(out.status.success(), "run after reset:\n{}", text(&out));
    assert_eq!(nodes_ready(lab, 1).iter().filter(|(_, r)| *r).count(), 3);
}

/// Every node Ready; the control plane, both CoreDNS replicas and one kube-proxy per node
/// Running; every image came from the built-in registry under its original name.
fn cluster_is_whole(lab: &Lab, b: &RealInstaller, nodes: &[usize]) {
    let ready = nodes_ready(lab, 1);
    assert_eq!(ready.len(), nodes.len(), "{ready:?}");
    assert!(ready.iter().all(|(_, r)| *r), "{ready:?}");
    let pods = system_pods(lab, 1);
    for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"] {
        assert!(pods.iter().any(|(n, node)| n == c && node == "node1"), "{c} not running on node1: {pods:?}");
    }
    assert_eq!(pods.iter().filter(|(n, _)| n == "kube-dns").count(), 2, "CoreDNS replicas: {pods:?}");
    for n in nodes {
        let name = format!("node{n}");
        assert!(pods.iter().any(|(c, node)| c == "kube-proxy" && *node == name), "no kube-proxy on {name}: {pods:?}");
    }
    // containerd's view: every image on every node is one the bundle carries, by the reference
    // the bundle names (nothing rewritten, nothing from elsewhere; the lab has no route out).
    let bundle_refs: Vec<String> = std::fs::read_to_string(b.kubernetes.bundle())
        .unwrap()
        .lines()
        .filter_map(|l| l.split("ref: ").nth(1).and_then(|r| r.split(',').next()).map(String::from))
        .chain(["docker.io/library/busybox:1.36".to_string()])
        .collect();
    for n in nodes {
        let images = containerd_images(lab, *n);
        assert!(images.iter().any(|i| i.starts_with("registry.k8s.io/")), "node{n}: {images:?}");
        // containerd lists each image by tag and by `name@digest`; both must be the bundle's.
        let repo =
            |r: &str| r.split('@').next().unwrap().rsplit_once(':').map(|(n, _)| n.to_string()).unwrap_or_default();
        for i in &images {
            let ours = match i.split_once('@') {
                Some((name, _)) => bundle_refs.iter().any(|r| repo(r) == name),
                None => bundle_refs.contains(i),
            };
            assert!(ours, "node{n} holds {i}, which the bundle does not carry: {bundle_refs:?}");
        }
        // …and containerd pulled them through the built-in registry, named in its hosts.toml.
        let hosts = lab.ssh_ok(Host::Node(*n), "cat /etc/containerd/certs.d/registry.k8s.io/hosts.toml");
        assert!(hosts.contains(&format!("https://{}:", lab.ip(Host::Node(1)))), "node{n}: {hosts}");
    }
    let log = lab.ssh_ok(Host::Node(1), "journalctl -u ferry-registry --no-pager -o cat");
    for n in nodes {
        let ip = lab.ip(Host::Node(*n));
        assert!(
            log.lines().any(|l| l.contains(&ip) && l.contains("/v2/kube-proxy/manifests/")),
            "the built-in registry served no kube-proxy manifest to node{n}:\n{log}"
        );
    }
}

/// Pods on different nodes reach each other, and a pod on one node reaches the web app and the
/// chart's Service by their DNS names (CoreDNS, kube-proxy and the CNI together).
fn apps_answer_across_nodes(lab: &Lab) {
    let web = json(&kubectl(lab, 1, "-n demo get pods -l app=web -o json"));
    let pods: Vec<(String, String)> = web["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["spec"]["nodeName"].as_str().unwrap().to_string(), p["status"]["podIP"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    // The client runs on the worker with the fewest web pods, so at least one pod it reaches is
    // on another node (the scheduler may have put both on one worker: the apps are applied while
    // the nodes are still becoming Ready).
    let client_node =
        ["node2", "node3"].into_iter().min_by_key(|n| pods.iter().filter(|(node, _)| node == n).count()).unwrap();
    let mut probes = vec!["timeout 10 wget -qO- http://web.demo.svc.cluster.local/".to_string()];
    probes.push("timeout 10 wget -qO- http://hello.hello.svc.cluster.local/".into());
    for (node, ip) in &pods {
        if node != client_node {
            probes.push(format!("timeout 10 wget -qO- http://{ip}:8080/"));
        }
    }
    assert!(probes.len() >= 3, "no web pod outside {client_node}: {pods:?}");
    let said = from_pod_on(lab, 1, client_node, "probe", &probes.join(" && "));
    assert!(said.contains("hello from the demo web app"), "{said}");
    assert!(said.contains("hello from a Helm chart"), "{said}");
    assert_eq!(said.matches("hello from the demo web app").count(), probes.len() - 1, "{said}");
    let releases = lab.ssh_ok(Host::Node(1), "helm --kubeconfig /etc/kubernetes/admin.conf list -n hello -o json");
    assert!(releases.contains("\"name\":\"hello\"") && releases.contains("\"status\":\"deployed\""), "{releases}");
}

/// `spec.files` is on every node at its dest with the mode it had.
fn files_landed(lab: &Lab, nodes: &[usize]) {
    for n in nodes {
        let got = lab.ssh_ok(
            Host::Node(*n),
            "stat -c '%a %s' /etc/platform/site.conf && grep -c site=lab /etc/platform/site.conf",
        );
        assert_eq!(got.lines().next().unwrap().split(' ').next(), Some("640"), "node{n}: {got}");
        assert!(got.ends_with('1'), "node{n}: {got}");
    }
}

/// `check` is red, naming the cause, for a workload that is not Available because its image is not
/// in the built-in registry, and for a node whose kubelet stopped; green again once fixed.
fn check_goes_red(lab: &Lab, b: &RealInstaller) {
    // A Deployment, in a namespace no launch step names, whose image the built-in registry does
    // not hold (and nothing else can serve: the lab has no route out).
    lab.ssh_ok(
        Host::Node(1),
        &format!("{KUBECTL} create namespace extra >/dev/null && {KUBECTL} -n extra create deployment broken --image=example.com/missing:1 >/dev/null"),
    );
    let o = eventually(Duration::from_secs(120), "check names the missing image", || {
        let out = installer(b, &["check"]);
        let o = text(&out);
        let named =
            o.lines().any(|l| l.contains("example.com/missing:1") && l.contains("missing from the built-in registry"));
        if !out.status.success() && named { Ok(o) } else { Err(o) }
    });
    assert!(o.lines().any(|l| l.contains("deployment extra/broken") && l.contains("FAILED")), "{o}");
    lab.ssh_ok(Host::Node(1), &format!("{KUBECTL} delete namespace extra --wait=true >/dev/null"));

    // A node whose kubelet stops goes NotReady once the node controller's grace period is over.
    lab.ssh_ok(Host::Node(3), "systemctl stop kubelet");
    let red = eventually(Duration::from_secs(180), "check names node3 NotReady", || {
        let out = installer(b, &["check"]);
        let o = text(&out);
        let named = o.lines().any(|l| l.contains("node3") && l.contains("FAILED") && l.contains("NotReady"));
        if !out.status.success() && named { Ok(o) } else { Err(o) }
    });
    assert!(red.contains("UNHEALTHY"), "{red}");
    lab.ssh_ok(Host::Node(3), "systemctl start kubelet");
    let out = installer(b, &["check", "--wait", "300"]);
    assert!(out.status.success(), "check after the kubelet came back:\n{}", text(&out));
}

/// `reset` of one worker takes it out of the cluster and leaves the host bare; `join` brings it
/// back with a fresh token.
fn reset_node_and_join_it_back(lab: &Lab, b: &RealInstaller) {
    let node3 = lab.ip(Host::Node(3));
    let out = installer(b, &["reset", "--hosts", &node3]);
    assert!(out.status.success(), "reset of node3:\n{}", text(&out));
    assert_bare(lab, 3);
    let names: Vec<String> = nodes_ready(lab, 1).into_iter().map(|(n, _)| n).collect();
    assert!(!names.contains(&"node3".to_string()), "node3 still listed: {names:?}");
    let t = Instant::now();
    let out = installer(b, &["join", "--workers", &node3]);
    let o = text(&out);
    assert!(out.status.success(), "join of node3:\n{o}");
    eprintln!("join of a worker took {:.1} s", t.elapsed().as_secs_f64());
    assert!(!o.contains("kubeadm init"), "join re-initialised the control plane:\n{o}");
    assert!(nodes_ready(lab, 1).contains(&("node3".to_string(), true)));
    files_landed(lab, &[3]);
}

/// A master joins the running cluster (fresh certificate key), and its control plane runs.
fn join_a_master(lab: &Lab, b: &RealInstaller) {
    let node4 = lab.ip(Host::Node(4));
    let out = installer(b, &["join", "--masters", &node4]);
    assert!(out.status.success(), "join of master node4:\n{}", text(&out));
    let ready = nodes_ready(lab, 1);
    assert_eq!(ready.len(), 4, "{ready:?}");
    assert!(ready.iter().all(|(_, r)| *r), "{ready:?}");
    let pods = system_pods(lab, 1);
    for c in ["kube-apiserver", "etcd"] {
        assert!(pods.iter().any(|(n, node)| n == c && node == "node4"), "{c} not running on node4: {pods:?}");
    }
    // The new master answers the API itself.
    assert!(kubectl(lab, 4, "get nodes").contains("node4"));
}

/// 3 masters + 1 worker: masters join one at a time; with the first master powered off, the API
/// answers through every other node's load balancer, the app keeps serving and `check` names the
/// dead master; powered on again, the master returns to Ready by itself and `check` is green.
#[test]
fn ha_survives_a_powered_off_master() {
    let lab = lab();
    let ex = FreshLab::take();
    let b = cluster_installer();
    let work = tempfile::tempdir().unwrap();
    let file = cluster_file(lab, work.path(), &[1, 2, 3], &[4]);
    let out = installer(b, &["run", "-f", &file]);
    let o = text(&out);
    assert!(out.status.success(), "run of 3 masters + 1 worker:\n{o}");
    let at = |ip: String, msg: &str| {
        o.lines()
            .position(|l| l.contains(&format!(" {ip} ")) && l.contains(" kubeadm ") && l.trim_end().ends_with(msg))
            .unwrap_or_else(|| panic!("no `{msg}` for {ip}:\n{o}"))
    };
    let (ip2, ip3, ip4) = (lab.ip(Host::Node(2)), lab.ip(Host::Node(3)), lab.ip(Host::Node(4)));
    assert!(
        at(ip2.clone(), "joined") < at(ip3.clone(), "kubeadm join (control plane)"),
        "masters joined together:\n{o}"
    );
    assert!(at(ip3, "joined") < at(ip4.clone(), "kubeadm join"), "the worker joined before the masters:\n{o}");

    // The worker reaches the API only through its own ferry-lb (the admin kubeconfig names the
    // cluster endpoint, which every node's /etc/hosts maps to its local LB).
    let admin = lab.ssh_ok(Host::Node(1), "cat /etc/kubernetes/admin.conf");
    lab.ssh_ok(Host::Node(4), &format!("umask 077; cat > /root/admin.conf <<'EOF'\n{admin}\nEOF"));
    ex.poweroff(Host::Node(1));
    for (node, kubeconfig) in [(4, "/root/admin.conf"), (2, "/etc/kubernetes/admin.conf")] {
        let nodes = eventually(Duration::from_secs(60), "kubectl through the LB with master 1 off", || {
            let out = lab.ssh(Host::Node(node), &format!("kubectl --kubeconfig {kubeconfig} get nodes -o name"));
            if out.status.success() { Ok(text(&out)) } else { Err(text(&out)) }
        });
        assert!(nodes.contains("node/node4"), "{nodes}");
    }
    // By the Service's address: DNS may be down for a while if both CoreDNS replicas ran on the
    // powered-off master (the apps are applied while nodes become Ready), until they move.
    let web = kubectl(lab, 2, "-n demo get service web -o jsonpath={.spec.clusterIP}");
    let said = from_pod_on(lab, 2, "node4", "ha-probe", &format!("timeout 10 wget -qO- http://{web}/"));
    assert!(said.contains("hello from the demo web app"), "{said}");
    let red = eventually(Duration::from_secs(180), "check names the dead master", || {
        let out = installer(b, &["check"]);
        let o = text(&out);
        let node_named = o.lines().any(|l| l.contains("node1") && l.contains("FAILED") && l.contains("NotReady"));
        if !out.status.success() && node_named { Ok(o) } else { Err(o) }
    });
    assert!(red.lines().any(|l| l.contains(&lab.ip(Host::Node(1))) && l.contains("unreachable")), "{red}");

    // Powered back on, the master rejoins with no operator action: its kubelet, containerd,
    // etcd member and apiserver come back from the units and manifests `run` left.
    ex.boot(Host::Node(1));
    eventually(Duration::from_secs(420), "the master is Ready again after boot", || {
        let ready = lab.ssh(
            Host::Node(2),
            &format!("{KUBECTL} get node node1 -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"),
        );
        let ready = text(&ready);
        if ready.trim() == "True" {
            Ok(())
        } else {
            let diag = lab.ssh(
                Host::Node(1),
                "systemctl is-active containerd kubelet ferry-lb; crictl pods 2>&1 | tail -8; \
                 journalctl -u kubelet --no-pager -n 15 2>&1",
            );
            Err(format!("{ready}\n{}", text(&diag)))
        }
    });
    let green = eventually(Duration::from_secs(300), "check is green with the master back", || {
        let out = installer(b, &["check"]);
        if out.status.success() { Ok(text(&out)) } else { Err(text(&out)) }
    });
    assert!(green.contains("node1"), "{green}");
}

/// A worker cut off the network during its `kubeadm join`: the run fails naming the host and the
/// phase; once the host is back, running again finishes without initialising the control plane
/// again or touching the nodes that were done.
#[test]
fn run_cut_during_kubeadm_join_resumes() {
    let lab = lab();
    let ex = FreshLab::take();
    let b = cluster_installer();
    let work = tempfile::tempdir().unwrap();
    let file = cluster_file(lab, work.path(), &[1], &[2, 3]);
    let ip3 = lab.ip(Host::Node(3));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg(&b.installer)
        .args(["--no-progress", "run", "-f", &file, "--keepalive", "3", "--trusted-key"])
        .arg(&b.public_key)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut cut = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if !cut
            && line.contains(&format!(" {ip3} "))
            && line.contains(" kubeadm ")
            && line.trim_end().ends_with("kubeadm join")
        {
            ex.cut(Host::Node(3));
            cut = true;
        }
        said.push_str(&line);
        said.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(cut, "node3 never started kubeadm join:\n{said}");
    assert!(!status.success(), "the run passed with node3 cut off:\n{said}");
    let last = said.lines().rev().find(|l| l.starts_with("error")).unwrap_or_default().to_string();
    assert!(said.contains(&ip3) && said.contains("kubeadm"), "{said}");
    assert!(
        said.lines()
            .any(|l| l.contains(&ip3) && l.contains("kubeadm") && (l.contains("error") || l.contains("failed"))),
        "{said}\n{last}"
    );

    // What was done stays done: master 1's apiserver container and node 2's kubelet.
    let apiserver = lab.ssh_ok(Host::Node(1), "crictl ps --name kube-apiserver -q");
    let kubelet2 = lab.ssh_ok(Host::Node(2), "systemctl show kubelet -p ActiveEnterTimestampMonotonic");
    ex.restore(Host::Node(3));
    let out = installer(b, &["run", "-f", &file]);
    let o = text(&out);
    assert!(out.status.success(), "the run after node3 came back:\n{o}");
    assert!(!o.contains("kubeadm init"), "the control plane was initialised again:\n{o}");
    assert!(o.contains("already initialised"), "{o}");
    assert_eq!(
        lab.ssh_ok(Host::Node(1), "crictl ps --name kube-apiserver -q"),
        apiserver,
        "master 1's apiserver restarted"
    );
    assert_eq!(
        lab.ssh_ok(Host::Node(2), "systemctl show kubelet -p ActiveEnterTimestampMonotonic"),
        kubelet2,
        "node 2's kubelet restarted"
    );
    assert!(nodes_ready(lab, 1).iter().all(|(_, r)| *r));
}

/// Failures name the host, the step and the cause: kubeadm refusing its configuration shows the
/// node, `kubeadm init` and the last lines kubeadm printed; a node that cannot reach the built-in
/// registry is named in the registry phase, before any kubeadm.
#[test]
fn failures_name_host_step_and_cause() {
    let lab = lab();
    let _ex = FreshLab::take();
    let b = cluster_installer();
    let work = tempfile::tempdir().unwrap();
    let file = cluster_file(lab, work.path(), &[1], &[2, 3]);
    // A domain kubeadm's own validation refuses (ferry passes spec.kubeadm through to it).
    let bad = work.path().join("bad.yaml");
    let text_ = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &bad,
        format!("{text_}    clusterConfiguration:\n      networking: {{dnsDomain: 'not a domain!'}}\n"),
    )
    .unwrap();
    let out = installer(b, &["run", "-f", bad.to_str().unwrap(), "--wait", "0"]);
    let o = text(&out);
    assert!(!out.status.success(), "{o}");
    let ip1 = lab.ip(Host::Node(1));
    let error = o.lines().skip_while(|l| !l.starts_with("error")).collect::<Vec<_>>().join("\n");
    assert!(error.contains(&ip1) && error.contains("kubeadm init"), "{o}");
    assert!(error.contains("dnsDomain") || error.contains("not a domain"), "kubeadm's own words are missing:\n{o}");

    // node3 cannot reach the registry on node1 (its packets to the registry port are refused).
    wipe(lab);
    lab.ssh_ok(Host::Node(3), &format!("iptables -I OUTPUT -d {ip1} -p tcp --dport 5050 -j REJECT"));
    let out = installer(b, &["run", "-f", &file]);
    lab.ssh_ok(Host::Node(3), &format!("iptables -D OUTPUT -d {ip1} -p tcp --dport 5050 -j REJECT"));
    let o = text(&out);
    assert!(!out.status.success(), "{o}");
    let ip3 = lab.ip(Host::Node(3));
    let error = o.lines().skip_while(|l| !l.starts_with("error")).collect::<Vec<_>>().join("\n");
    assert!(error.contains(&ip3) && error.contains("registry"), "{o}");
    assert!(!o.contains("kubeadm init"), "kubeadm ran with a node that cannot pull:\n{o}");
}
