//! STAND-INS, for speed: what ferry writes and runs around kubeadm (its generated kubeadm configs
//! with `spec.kubeadm` fragments merged, launch steps in order and a failing one stopping the run,
//! `check` red and green, `reset`, `run` again), checked in seconds. The same flows on real
//! Kubernetes are tests/integration/real_cluster.rs. The rootfs is tests/standins/make-rootfs.sh: Kubernetes STAND-INS
//! (kubeadm, kubelet, kubectl, a plain-HTTP apiserver) over the real containerd/runc, run by the
//! real systemd units; ferry's code path is the production one. Images are the demo's offline
//! stand-ins (tests/fixtures/standin-bundle/make-images.sh).

use ferry_tests::lab::{Host, Lab};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn lab() -> &'static Lab {
    // The same lab as run.rs (one per test binary): 3 nodes behind a bastion.
    Lab::shared(ferry_tests::lab::LAB_NODES, true)
}

/// The bundle's Kubernetes version (the stand-ins answer as this version).
const K8S: &str = "v1.36.3";

struct Bundle {
    _dir: tempfile::TempDir,
    installer: PathBuf,
    public_key: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let dir = ferry_tests::lasting(tempfile::Builder::new().prefix("ferry-cluster-").tempdir().unwrap());
        let d = dir.path();
        ferry_tests::ok(Command::new(root().join("tests/standins/make-rootfs.sh")).arg(d.join("rootfs")).arg(K8S));
        ferry_tests::ok(&mut Command::new(root().join("tests/fixtures/standin-bundle/make-images.sh")));
        ferry_tests::ok(Command::new("cp").arg("-a").arg(root().join("tests/fixtures/standin-bundle/images")).arg(d.join("images")));
        std::fs::create_dir_all(d.join("manifests/app")).unwrap();
        std::fs::write(d.join("manifests/namespace.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n")
            .unwrap();
        std::fs::write(
            d.join("manifests/app/web.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: apps\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: docker.io/library/busybox:1.36}]\n",
        )
        .unwrap();
        let mut spec = String::from("apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {name: cluster-test, version: 1.0.0}\nspec:\n  kubernetes: {version: v1.36.3}\n  platforms: [linux/amd64]\n  rootfs: [{path: rootfs}]\n  manifests: [{path: manifests}]\n");
        spec.push_str(LAUNCH);
        spec.push_str("  images:\n");
        for (r, tag) in [
            ("docker.io/library/busybox:1.36", "busybox-1.36"),
            ("registry.k8s.io/kube-apiserver:v1.36.3", "kube-apiserver-v1.36.3"),
            ("registry.k8s.io/kube-controller-manager:v1.36.3", "kube-controller-manager-v1.36.3"),
            ("registry.k8s.io/kube-scheduler:v1.36.3", "kube-scheduler-v1.36.3"),
            ("registry.k8s.io/kube-proxy:v1.36.3", "kube-proxy-v1.36.3"),
            ("registry.k8s.io/etcd:3.6.8-0", "etcd-3.6.8-0"),
            ("registry.k8s.io/coredns/coredns:v1.14.2", "coredns-v1.14.2"),
            ("registry.k8s.io/pause:3.10.2", "pause-3.10.2"),
        ] {
            spec.push_str(&format!("    - {{ref: {r}, source: \"oci:images/standins:{tag}\"}}\n"));
        }
        std::fs::write(d.join("bundle.yaml"), spec).unwrap();
        let ferry = ferry_tests::release_bin("ferry");
        ferry_tests::ok(Command::new(&ferry).arg("keygen").arg("-o").arg(d.join("vendor")));
        let installer = d.join("installer");
        ferry_tests::ok(Command::new(&ferry).arg("build").arg(d.join("bundle.yaml")).arg("-o").arg(&installer).arg("--key").arg(d.join("vendor.key")).arg("--offline"));
        Bundle { public_key: d.join("vendor.pub"), installer, _dir: dir }
    })
}

/// The bundle's launch steps: `run` steps leave marks in the stand-ins' calls.log, where the
/// kubectl stand-in logs its applies, so one file shows the order; step 4 fails on demand.
const LAUNCH: &str = "  launch:
    - run: 'echo \"$(date +%s) launch-1 in $PWD with $KUBECONFIG\" >> /var/lib/ferry-standin/calls.log'
    - manifests: manifests/namespace.yaml
    - {manifests: manifests/app, namespace: apps}
    - run: 'test ! -e /var/lib/ferry-standin/fail-launch || { echo \"launch-4 refuses - $(cat /var/lib/ferry-standin/fail-launch)\"; exit 3; }'
    - run: 'echo \"$(date +%s) launch-5\" >> /var/lib/ferry-standin/calls.log'
";

/// The launch marks and kubectl applies in master0's calls.log after its first `skip` lines.
fn launch_trace(lab: &Lab, skip: usize) -> Vec<String> {
    lab.ssh_ok(Host::Node(1), &format!("tail -n +{} /var/lib/ferry-standin/calls.log", skip + 1))
        .lines()
        .filter(|l| l.contains(" launch-") || l.contains(" apply "))
        .map(|l| l.split_once(' ').map(|(_, rest)| rest).unwrap_or(l).to_string())
        .collect()
}

fn calls_len(lab: &Lab, i: usize) -> usize {
    lab.ssh_ok(Host::Node(i), "wc -l < /var/lib/ferry-standin/calls.log").trim().parse().unwrap()
}

const APPLIES: [&str; 2] = [
    "kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f bundle/manifests/namespace.yaml",
    "kubectl --kubeconfig /etc/kubernetes/admin.conf apply --namespace apps -f bundle/manifests/app",
];

fn installer(args: &[&str]) -> Output {
    let b = bundle();
    let mut cmd = Command::new(&b.installer);
    cmd.arg("--no-progress").args(args).arg("--trusted-key").arg(&b.public_key);
    cmd.env_remove("SSH_AUTH_SOCK").stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The documents of a YAML stream, parsed by PyYAML (python3-yaml, scripts/setup.sh): an
/// independent parser, not ferry's own emitter read back.
fn yaml_docs(doc: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (scripts/setup.sh installs python3-yaml)");
    child.stdin.take().unwrap().write_all(doc.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not valid YAML ({}):\n{doc}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts that every `extraArgs`/`kubeletExtraArgs` under `v` is v1beta4's list of
/// `{name, value}` (not v1beta3's map); returns how many it saw.
fn assert_args_are_lists(v: &serde_json::Value, whole: &str) -> usize {
    let mut n = 0;
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "extraArgs" || k == "kubeletExtraArgs" {
                    let items = x.as_array().unwrap_or_else(|| panic!("{k} is not a list:\n{whole}"));
                    for it in items {
                        assert!(
                            it["name"].is_string() && it["value"].is_string() && it.as_object().unwrap().len() == 2,
                            "{k} item {it} is not {{name, value}}:\n{whole}"
                        );
                    }
                    n += 1;
                }
                n += assert_args_are_lists(x, whole);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| n += assert_args_are_lists(x, whole)),
        _ => {}
    }
    n
}

/// Leaves the nodes as run.rs's tests leave them or bare: no cluster, no ferry.
fn wipe(lab: &Lab) {
    for i in 1..=lab.hosts() {
        lab.ssh_ok(Host::Node(i), "command -v kubeadm >/dev/null && kubeadm reset -f >/dev/null 2>&1; systemctl disable --now kubelet ferry-lb ferry-registry containerd >/dev/null 2>&1; rm -rf /var/lib/ferry /etc/ferry /etc/kubernetes /var/lib/kubelet /var/lib/ferry-standin /etc/systemd/system/ferry-*.service /etc/containerd /usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /etc/systemd/system/containerd.service /etc/systemd/system/kubelet.service*; systemctl daemon-reload; true");
    }
}

#[test]
fn run_to_green_check_then_red_reset_and_run_again() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("cluster.yaml");
    // A spec.kubeadm fragment: an extra SAN and an apiserver flag, so the generated config
    // shows both merged (certSANs as a union, extraArgs in v1beta4's list form).
    // The lab inventory ends with its own `kubeadm:` block; the fragment extends it.
    let fragment = "    clusterConfiguration:\n      apiServer:\n        certSANs: [api.lab.example]\n        extraArgs: [{name: audit-log-maxage, value: \"30\"}]\n";
    std::fs::write(&inv, format!("{}{fragment}", lab.inventory(3))).unwrap();
    let inv = inv.to_str().unwrap();
    let (m, w1, w2) = (lab.ip(Host::Node(1)), lab.ip(Host::Node(2)), lab.ip(Host::Node(3)));

    // A full run ends with a green check.
    let t = std::time::Instant::now();
    let out = installer(&["run", "-f", inv]);
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out));
    let o = text(&out);
    assert!(o.contains("healthy:"), "{o}");
    eprintln!("run on 1 master + 2 workers took {secs:.1} s");
    // The launch steps ran in order on master0: from the launch dir with the admin kubeconfig,
    // kubectl applied the extracted manifests, and the files reached the (stand-in) kubectl.
    assert_eq!(
        launch_trace(lab, 0),
        ["launch-1 in /var/lib/ferry/launch with /etc/kubernetes/admin.conf", APPLIES[0], APPLIES[1], "launch-5"],
        "{o}"
    );
    assert!(lab.ssh_ok(Host::Node(1), "cat /var/lib/ferry-standin/applied/web.yaml").contains("kind: Deployment"));
    assert!(o.contains("launch step 3 (manifests bundle/manifests/app in namespace apps)"), "{o}");
    for i in [2, 3] {
        assert_eq!(lab.ssh_ok(Host::Node(i), "grep -c launch- /var/lib/ferry-standin/calls.log; true"), "0", "node{i}");
    }

    // The generated configs on the hosts parse as YAML and carry the expected fields.
    let init = lab.ssh_ok(Host::Node(1), "cat /etc/ferry/kubeadm/init.yaml");
    let docs = yaml_docs(&init);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("")).collect();
    // The lab's inventory gives kube-proxy its configuration (conntrack left alone).
    assert_eq!(
        kinds,
        ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration", "KubeProxyConfiguration"],
        "{init}"
    );
    assert_eq!(docs[3]["conntrack"]["maxPerCore"], 0, "{init}");
    let (ic, cc, kc) = (&docs[0], &docs[1], &docs[2]);
    assert_eq!(ic["apiVersion"], "kubeadm.k8s.io/v1beta4", "{init}");
    assert_eq!(cc["apiVersion"], "kubeadm.k8s.io/v1beta4", "{init}");
    assert_eq!(cc["kubernetesVersion"], K8S, "{init}");
    assert_eq!(cc["controlPlaneEndpoint"], "apiserver.cluster.local:6444", "{init}");
    let sans: Vec<&str> = cc["apiServer"]["certSANs"]
        .as_array()
        .unwrap_or_else(|| panic!("no certSANs:\n{init}"))
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for want in ["apiserver.cluster.local", m.as_str(), "api.lab.example"] {
        assert!(sans.contains(&want), "certSANs {sans:?} lack {want}");
    }
    assert!(
        cc["apiServer"]["extraArgs"]
            .as_array()
            .is_some_and(|a| a.contains(&serde_json::json!({"name": "audit-log-maxage", "value": "30"}))),
        "the fragment's apiserver flag, as a list item:\n{init}"
    );
    assert!(
        ic["nodeRegistration"]["kubeletExtraArgs"]
            .as_array()
            .is_some_and(|a| a.contains(&serde_json::json!({"name": "node-ip", "value": m}))),
        "{init}"
    );
    let mut arg_lists = 0;
    for d in &docs {
        arg_lists += assert_args_are_lists(d, &init);
    }
    assert!(arg_lists >= 2, "{init}");
    assert_eq!(kc["cgroupDriver"], "systemd", "{init}");
    assert_eq!(kc["apiVersion"], "kubelet.config.k8s.io/v1beta1", "{init}");
    // Preflight saw each host's cgroup version; on cgroup v1 (1.35 and later) ferry opts the
    // kubelet in cluster-wide, skips kubeadm's SystemVerification there, and says so.
    let v1: Vec<bool> =
        (1..=3).map(|i| lab.ssh_ok(Host::Node(i), "stat -fc %T /sys/fs/cgroup").trim() == "tmpfs").collect();
    for (i, ip) in [&m, &w1, &w2].into_iter().enumerate() {
        let version = if v1[i] { "v1" } else { "v2" };
        let reported = format!("ok (cgroup {version})");
        assert!(o.lines().any(|l| l.contains(ip.as_str()) && l.contains("preflight") && l.contains(&reported)), "{o}");
        let said = format!("cgroup v1 on {ip}: kubelet failCgroupV1=false set");
        assert_eq!(o.contains(&said), v1[i], "{said}\n{o}");
    }
    assert_eq!(kc["failCgroupV1"] == serde_json::json!(false), v1.contains(&true), "{init}");
    assert_eq!(
        ic["nodeRegistration"]["ignorePreflightErrors"] == serde_json::json!(["SystemVerification"]),
        v1[0],
        "{init}"
    );
    let calls = lab.ssh_ok(Host::Node(1), "cat /var/lib/ferry-standin/calls.log");
    assert!(calls.contains("kubeadm init --upload-certs --config /etc/ferry/kubeadm/init.yaml"), "{calls}");
    let ca_hash = lab.ssh_ok(Host::Node(1), "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1");
    for i in [2, 3] {
        let join = lab.ssh_ok(Host::Node(i), "cat /etc/ferry/kubeadm/join.yaml");
        let jd = yaml_docs(&join);
        assert_eq!(jd.len(), 1, "{join}");
        assert_eq!(
            (jd[0]["apiVersion"].as_str(), jd[0]["kind"].as_str()),
            (Some("kubeadm.k8s.io/v1beta4"), Some("JoinConfiguration")),
            "{join}"
        );
        assert_eq!(jd[0]["discovery"]["bootstrapToken"]["apiServerEndpoint"], "apiserver.cluster.local:6444", "{join}");
        assert_eq!(
            jd[0]["discovery"]["bootstrapToken"]["caCertHashes"],
            serde_json::json!([format!("sha256:{}", ca_hash.trim())]),
            "{join}"
        );
        assert!(jd[0].get("controlPlane").is_none(), "{join}");
        assert_eq!(jd[0].get("patches").is_some(), v1[i - 1], "a cgroup v1 host's own kubelet patch:\n{join}");
        if v1[i - 1] {
            let patch = lab.ssh_ok(Host::Node(i), "cat /etc/ferry/kubeadm/patches/kubeletconfiguration+merge.yaml");
            assert_eq!(patch.trim(), "failCgroupV1: false");
        }
        assert_args_are_lists(&jd[0], &join);
        assert!(
            join.contains("kind: JoinConfiguration")
                && join.contains("apiServerEndpoint: apiserver.cluster.local:6444"),
            "{join}"
        );
        assert!(join.contains(&format!("sha256:{}", ca_hash.trim())), "the CA pin is master0's CA:\n{join}");
        assert!(!join.contains("controlPlane:"), "{join}");
        assert_eq!(
            lab.ssh_ok(Host::Node(i), "systemctl is-active ferry-lb kubelet").split_whitespace().collect::<Vec<_>>(),
            ["active", "active"]
        );
        assert!(lab.ssh_ok(Host::Node(i), "cat /etc/ferry/lb.yaml").contains(&format!("{m}:6443")));
        assert!(lab.ssh_ok(Host::Node(i), "grep apiserver.cluster.local /etc/hosts").starts_with("127.0.0.1 "));
    }
    // The saved description holds no secret.
    let saved = lab.ssh_ok(Host::Node(1), "cat /etc/ferry/cluster.yaml");
    assert!(saved.contains(&w2) && !saved.contains("token") && !saved.contains("certificateKey"), "{saved}");

    // check from the local state: green; and red, naming the cause.
    let ok = installer(&["check"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let node3 = lab.ssh_ok(Host::Node(3), "hostname").trim().to_string();
    lab.ssh_ok(Host::Node(1), &format!("echo {node3} > /var/lib/ferry-standin/notready"));
    let red = installer(&["check"]);
    lab.ssh_ok(Host::Node(1), "rm -f /var/lib/ferry-standin/notready");
    assert!(!red.status.success());
    assert!(text(&red).contains(&format!("node {node3} ({w2}): NotReady")), "{}", text(&red));
    lab.ssh_ok(Host::Node(1), r#"mkdir -p /var/lib/ferry-standin/apiserver/pods.d && echo '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"rogue","namespace":"default"},"spec":{"containers":[{"name":"c","image":"quay.io/nowhere/rogue:9"}]},"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}],"containerStatuses":[{"name":"c","image":"quay.io/nowhere/rogue:9","imageID":"","ready":true,"restartCount":0}]}}' > /var/lib/ferry-standin/apiserver/pods.d/rogue.json"#);
    let red = installer(&["check", "--json"]);
    lab.ssh_ok(Host::Node(1), "rm -f /var/lib/ferry-standin/apiserver/pods.d/rogue.json");
    assert!(!red.status.success());
    assert!(
        text(&red).contains("quay.io/nowhere/rogue:9: used by default/rogue but missing from the built-in registry"),
        "{}",
        text(&red)
    );

    // A failing launch step stops the run with its output; the steps after it do not run.
    let mark = calls_len(lab, 1);
    lab.ssh_ok(Host::Node(1), "echo 'no apps today' > /var/lib/ferry-standin/fail-launch");
    let failed = installer(&["run", "-f", inv]);
    lab.ssh_ok(Host::Node(1), "rm /var/lib/ferry-standin/fail-launch");
    assert!(!failed.status.success(), "{}", text(&failed));
    let f = text(&failed);
    assert!(
        f.contains(&format!("{m}: launch step 4 (run test ! -e /var/lib/ferry-standin/fail-launch || ")),
        "names the host and the step:\n{f}"
    );
    assert!(f.contains("failed (status 3); its output:\n  launch-4 refuses - no apps today"), "{f}");
    assert!(!f.contains("healthy:"), "{f}");
    let trace = launch_trace(lab, mark);
    assert_eq!(trace.len(), 3, "steps 1-3 ran again, step 5 did not: {trace:?}");
    assert!(trace[0].starts_with("launch-1 ") && trace[1..] == APPLIES, "{trace:?}");

    // A second run changes nothing and is still green.
    let again = installer(&["run", "-f", inv]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already initialised"), "{}", text(&again));

    // reset: clean hosts, then a no-op with a note, then check errors clearly, then run again.
    let reset = installer(&["reset"]);
    assert!(reset.status.success(), "{}", text(&reset));
    for i in 1..=3 {
        let left = lab.ssh_ok(Host::Node(i), "find /var/lib/ferry /var/lib/kubelet /etc/kubernetes -mindepth 1 2>/dev/null; ls -d /etc/ferry /etc/kubernetes/admin.conf /etc/kubernetes/kubelet.conf /etc/systemd/system/ferry-lb.service /usr/bin/kubeadm /usr/bin/containerd /etc/containerd 2>/dev/null; systemctl is-active kubelet ferry-lb containerd 2>/dev/null; grep -c 'BEGIN ferry' /etc/hosts; true");
        assert_eq!(
            left.split_whitespace().collect::<Vec<_>>(),
            ["inactive", "inactive", "inactive", "0"],
            "node{i} keeps: {left}"
        );
    }
    let noop = installer(&[
        "reset",
        "--hosts",
        &w1,
        "-i",
        lab.key_path().to_str().unwrap(),
        "--known-hosts",
        lab.known_hosts_path().to_str().unwrap(),
        "--bastion",
        &format!("root@{}", lab.ip(Host::Bastion)),
    ]);
    assert!(noop.status.success(), "{}", text(&noop));
    assert!(text(&noop).contains("nothing to do (note: ferry never installed this host)"), "{}", text(&noop));
    // The same on a host ferry has truly never touched (the bastion, seen from the nodes' side),
    // and it leaves nothing there.
    let inner = ferry_tests::lab::BASTION_INNER_IP;
    let never = installer(&[
        "reset",
        "--hosts",
        inner,
        "-i",
        lab.key_path().to_str().unwrap(),
        "--known-hosts",
        lab.known_hosts_path().to_str().unwrap(),
        "--bastion",
        &format!("root@{}", lab.ip(Host::Bastion)),
    ]);
    assert!(never.status.success(), "{}", text(&never));
    assert!(
        text(&never).contains(&format!("{inner}: nothing to do (note: ferry never installed this host)")),
        "{}",
        text(&never)
    );
    assert_eq!(lab.ssh_ok(Host::Bastion, "ls -d /etc/ferry /etc/systemd/system/ferry-lb.service /etc/systemd/system/ferry-registry.service /tmp/ferry-reset.log 2>/dev/null; find /var/lib/ferry -mindepth 1 2>/dev/null; true"), "", "reset left traces on the never-installed bastion");
    let gone = installer(&[
        "check",
        "--master",
        &m,
        "-i",
        lab.key_path().to_str().unwrap(),
        "--known-hosts",
        lab.known_hosts_path().to_str().unwrap(),
        "--bastion",
        &format!("root@{}", lab.ip(Host::Bastion)),
    ]);
    assert!(!gone.status.success());
    assert!(text(&gone).contains(&format!("{m}: no ferry cluster here")), "{}", text(&gone));

    // run again on the reset hosts; then `join` adds the 4th lab host as a worker.
    let t = std::time::Instant::now();
    let rerun = installer(&["run", "-f", inv]);
    assert!(rerun.status.success(), "{}", text(&rerun));
    assert!(text(&rerun).contains("healthy:"), "{}", text(&rerun));
    eprintln!("run after reset (1 master + 2 workers) took {:.1} s", t.elapsed().as_secs_f64());
    let nodes = || {
        lab.ssh_ok(Host::Node(1), "cat /var/lib/ferry-standin/apiserver/nodes/*")
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(nodes(), [m.clone(), w1.clone(), w2.clone()].into_iter().collect(), "the cluster before join");
    let w3 = lab.ip(Host::Node(4));
    assert_eq!(
        lab.ssh_ok(Host::Node(4), "systemctl is-active kubelet ferry-lb 2>/dev/null; true")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["inactive", "inactive"]
    );
    let joins = |i| {
        lab.ssh_ok(Host::Node(i), "grep -c 'kubeadm join' /var/lib/ferry-standin/calls.log; true").trim().to_string()
    };
    let (m_calls, w_joins) = (calls_len(lab, 1), [joins(2), joins(3)]);

    // A join while master0 is down stops in preflight, naming it, and changes nothing on node4;
    // the same command once the master is back continues and completes the join.
    ex.cut(Host::Node(1));
    let down = installer(&["join", "--workers", &w3, "--connect-timeout", "5"]);
    ex.restore(Host::Node(1));
    assert!(!down.status.success(), "{}", text(&down));
    assert!(text(&down).contains(m.as_str()) && text(&down).contains("nothing was installed"), "{}", text(&down));
    assert!(!text(&down).contains("panicked"), "{}", text(&down));
    assert_eq!(lab.ssh_ok(Host::Node(4), "ls /var/lib/ferry 2>/dev/null; true").trim(), "", "node4 was changed");

    let t = std::time::Instant::now();
    let join = installer(&["join", "--workers", &w3]);
    let join_secs = t.elapsed().as_secs_f64();
    assert!(join.status.success(), "{}", text(&join));
    assert!(text(&join).contains("healthy:"), "join ends with a green check:\n{}", text(&join));
    eprintln!("join of a 4th host (worker) took {join_secs:.1} s");
    assert_eq!(
        nodes(),
        [m.clone(), w1.clone(), w2.clone(), w3.clone()].into_iter().collect(),
        "the cluster after join"
    );
    // master0 made fresh join material; the workers were not joined again; node4 joined with a
    // pin of master0's CA through its own node-local LB, which lists the master.
    let new_calls = lab.ssh_ok(Host::Node(1), &format!("tail -n +{} /var/lib/ferry-standin/calls.log", m_calls + 1));
    assert!(new_calls.contains("kubeadm token create"), "{new_calls}");
    assert!(!new_calls.contains("kubeadm init --"), "{new_calls}");
    assert!(!new_calls.contains(" launch-") && !new_calls.contains(" apply "), "join ran launch steps:\n{new_calls}");
    assert_eq!([joins(2), joins(3)], w_joins, "node2/node3 joined again");
    let join4 = yaml_docs(&lab.ssh_ok(Host::Node(4), "cat /etc/ferry/kubeadm/join.yaml"));
    let ca_hash = lab.ssh_ok(Host::Node(1), "openssl x509 -pubkey -noout -in /etc/kubernetes/pki/ca.crt | openssl pkey -pubin -outform der | sha256sum | cut -d' ' -f1");
    assert_eq!(
        join4[0]["discovery"]["bootstrapToken"]["caCertHashes"],
        serde_json::json!([format!("sha256:{}", ca_hash.trim())])
    );
    assert_eq!(join4[0]["discovery"]["bootstrapToken"]["apiServerEndpoint"], "apiserver.cluster.local:6444");
    assert_eq!(
        lab.ssh_ok(Host::Node(4), "systemctl is-active ferry-lb kubelet").split_whitespace().collect::<Vec<_>>(),
        ["active", "active"]
    );
    assert!(lab.ssh_ok(Host::Node(4), "cat /etc/ferry/lb.yaml").contains(&format!("{m}:6443")));
    assert!(lab.ssh_ok(Host::Node(4), "grep apiserver.cluster.local /etc/hosts").starts_with("127.0.0.1 "));
    assert!(
        lab.ssh_ok(Host::Node(1), "cat /etc/ferry/cluster.yaml").contains(&w3),
        "the saved description lists the new worker"
    );
    // `--master` with the cluster file: the file says how to reach the master (bastion,
    // known_hosts), the master's saved description which hosts there are.
    let ok = installer(&["check", "--master", &m, "-f", inv]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains(&w3), "check covers the joined node:\n{}", text(&ok));

    // Leave the shared lab as found: the other lab tests start from bare hosts.
    reset_all(lab);
}

/// `installer reset` of the cluster in the local state; every lab node is left bare.
fn reset_all(lab: &Lab) {
    let reset = installer(&["reset"]);
    assert!(reset.status.success(), "{}", text(&reset));
    for i in 1..=lab.hosts() {
        assert_eq!(
            lab.ssh_ok(
                Host::Node(i),
                "systemctl is-active kubelet ferry-lb 2>/dev/null; find /var/lib/ferry -mindepth 1 2>/dev/null; true"
            )
            .split_whitespace()
            .collect::<Vec<_>>(),
            ["inactive", "inactive"],
            "node{i}"
        );
    }
}

#[test]
fn kubeadm_fragment_with_unknown_fields_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("bad.yaml");
    std::fs::write(&inv, "apiVersion: ferry.dev/v1alpha1\nkind: Cluster\nmetadata: {name: bad}\nspec:\n  hosts: [{ips: [10.88.0.11], roles: [master]}]\n  kubeadm:\n    clusterConfiguration:\n      notAField: 1\n").unwrap();
    let out = installer(&["run", "--dry-run", "-f", inv.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("notAField"), "{}", text(&out));
}
