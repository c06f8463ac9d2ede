//! `installer run` on the real lab (3 nodes behind a bastion, so every run here also proves the
//! bastion path): prepared nodes, pulls through the built-in registry, resume after a cut link,
//! re-runs that send nothing, access modes (key, password, ssh-agent, sudo with and without a
//! password, port 2222), host keys, and bad input: preflight reports every problem on every host
//! in one table and changes nothing.
//!
//! The bundle's rootfs carries this machine's Debian containerd, shim, ctr and runc and
//! containerd's systemd unit; its image is built offline with umoci from /bin/busybox.

use ferry_tests::bundles::{RunBundle, run_bundle, wipe_run};
use ferry_tests::lab::{Host, Lab};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The nodes a run here uses (the lab has one more, for cluster tests' joins).
pub(crate) const NODES: usize = 3;

pub(crate) fn lab() -> &'static Lab {
    Lab::shared(ferry_tests::lab::LAB_NODES, true)
}

/// The test installer (`ferry_tests::bundles`), built once per test binary, with ~100 MB of
/// padding so distribution takes long enough to be cut.
pub(crate) fn bundle() -> &'static RunBundle {
    static B: OnceLock<RunBundle> = OnceLock::new();
    B.get_or_init(|| run_bundle("run-test", 100))
}

pub(crate) fn inventory(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("cluster.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_installer(&bundle().installer, args, env)
}

/// Runs `installer` (signed with the test bundle's key) with `args`, and `env` on top of an
/// environment without ssh-agent or passwords.
pub(crate) fn run_installer(installer: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let b = bundle();
    ferry_tests::lab::refuse_lab_addresses_unless_up(args.iter().copied());
    let mut cmd = Command::new(installer);
    cmd.arg("--no-progress")
        .arg("run")
        .arg("--trusted-key")
        .arg(&b.public_key)
        .args(["--keepalive", "2", "--connect-timeout", "15"])
        .args(args);
    cmd.env_remove("SSH_AUTH_SOCK").env_remove("FERRY_SSH_PASSWORD").env_remove("FERRY_SUDO_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The `summary` event of a `--json` run.
pub(crate) fn summary(o: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in:\n{}", text(o)))
}

pub(crate) fn wipe(lab: &Lab) {
    wipe_run(lab, NODES);
}

#[test]
fn run_prepares_three_hosts_then_resumes_and_sends_nothing_twice() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let inv = inv.to_str().unwrap();

    // A cut link in the middle of distribution fails the run, naming the host.
    ex.shape(Host::Node(3), "40mbit");
    let child = {
        let b = bundle();
        Command::new(&b.installer)
            .args(["--no-progress", "run", "--json", "--keepalive", "2", "-f", inv, "--trusted-key"])
            .arg(&b.public_key)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Cut once node3 holds 20 MB of its ~130 MB.
    let part_mb = || lab.ssh(Host::Node(3), "du -m /var/lib/ferry/installer.part 2>/dev/null | cut -f1").stdout;
    let t0 = std::time::Instant::now();
    while String::from_utf8_lossy(&part_mb()).trim().parse::<u64>().unwrap_or(0) < 20 {
        assert!(t0.elapsed().as_secs() < 120, "node3 never received 20 MB");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    ex.cut(Host::Node(3));
    let first = child.wait_with_output().unwrap();
    ex.restore(Host::Node(3));
    ex.unshape(Host::Node(3));
    assert!(!first.status.success(), "{}", text(&first));
    let msg = text(&first);
    assert!(msg.contains("10.88.0.13: distribute failed"), "{msg}");
    let local =
        std::fs::read_to_string(bundle().installer.parent().unwrap().join(".ferry/lab/10.88.0.13.json")).unwrap();
    assert!(local.contains("\"failed\""), "{local}");
    // What node3 holds from the first run (allocated bytes of its sparse .part, program included).
    let kept: u64 = lab.ssh_ok(Host::Node(3), "du -B1 /var/lib/ferry/installer.part | cut -f1").trim().parse().unwrap();
    assert!(kept > 16 << 20, "{kept}");

    // The same command again completes, sending node3 only what it lacks.
    let second = run(&["--json", "-f", inv], &[]);
    assert!(second.status.success(), "{}", text(&second));
    let s = summary(&second);
    // What reached node3 on the re-run: over its SSH session, plus what it pulled from a relay
    // (node2, which already held its copy, heads node3's chain this time).
    let node3_relayed = s["relayed_per_host"]["10.88.0.13"].as_u64().unwrap_or(0);
    let node3_second = s["per_host"]["10.88.0.13"].as_u64().unwrap() + node3_relayed;
    assert!(node3_relayed > 0, "node3 was not fed by a relay on the re-run: {s}");
    let want = lab.ssh_ok(Host::Node(3), "stat -c %s /var/lib/ferry/installer").trim().parse::<u64>().unwrap();
    let node3_data: u64 =
        lab.ssh_ok(Host::Node(3), "du -B1 /var/lib/ferry/installer | cut -f1").trim().parse().unwrap();
    eprintln!(
        "node3: kept {kept} after the cut, sent {node3_second} on the re-run, holds {node3_data} (file length {want})"
    );
    assert!(
        kept + node3_second < node3_data + node3_data / 10,
        "about one copy over both runs: {kept} + {node3_second} vs {node3_data}"
    );
    assert!(node3_second < node3_data - (15 << 20), "the re-run resent what node3 had");

    for i in 1..=NODES {
        assert_eq!(
            lab.ssh_ok(Host::Node(i), "systemctl is-active containerd; systemctl is-enabled containerd")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["active", "enabled"]
        );
    }
    assert_eq!(lab.ssh_ok(Host::Node(1), "systemctl is-active ferry-registry").trim(), "active");
    for i in 2..=NODES {
        let out = lab.ssh_ok(
            Host::Node(i),
            "ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d docker.io/library/app:1 >/dev/null && ctr -n k8s.io run --rm docker.io/library/app:1 t$$ /bin/busybox cat /hello",
        );
        assert_eq!(out.trim(), "hello from the bundle");
    }

    // A run after success sends ~nothing and changes nothing.
    let before = lab
        .ssh_ok(Host::Node(2), "stat -c %Y /var/lib/ferry/installer /etc/containerd/config.toml /usr/bin/containerd");
    let third = run(&["--json", "-f", inv], &[]);
    assert!(third.status.success(), "{}", text(&third));
    let s = summary(&third);
    assert_eq!(s["distribute_bytes"], 0, "{s}");
    assert!(s["bytes_sent"].as_u64().unwrap() < 64 << 10, "{s}");
    assert_eq!(
        lab.ssh_ok(
            Host::Node(2),
            "stat -c %Y /var/lib/ferry/installer /etc/containerd/config.toml /usr/bin/containerd"
        ),
        before
    );
}

#[test]
fn access_modes_and_host_keys() {
    let lab = lab();
    let _use = lab.read();
    let work = tempfile::tempdir().unwrap();
    // Password login as guard on port 2222, sudo with the same password; preflight only.
    // The bastion keeps the cluster-wide key; the nodes' group turns it off (`key: none`).
    let guard = lab
        .inventory_as("guard", 2222, NODES)
        .replace("roles: [master, registry]}", "roles: [master, registry], ssh: {key: none}}")
        .replace("roles: [worker]}", "roles: [worker], ssh: {key: none}}");
    let inv = inventory(work.path(), &guard);
    let pw = lab.guard_password();
    // The full run is idempotent, so it runs for real (it sends ~nothing after the first test).
    let out = run(&["-f", inv.to_str().unwrap()], &[("FERRY_SSH_PASSWORD", pw.as_str())]);
    assert!(out.status.success() || text(&out).contains("problem"), "{}", text(&out));
    assert!(!text(&out).contains(&pw), "the password leaked into output");
    // Wrong password: named host, cause.
    let out = run(&["-f", inv.to_str().unwrap()], &[("FERRY_SSH_PASSWORD", "wrong")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("authentication as guard failed"), "{}", text(&out));
    // ops: key and passwordless sudo.
    let inv2 = inventory(work.path(), &lab.inventory_as("ops", 22, NODES));
    let out = run(&["-f", inv2.to_str().unwrap(), "--dry-run"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("as ops@10.88.0.11:22 via sudo"), "{}", text(&out));
    // The plan shows the relay chain: node1 (the registry) fed by this installer, node2 by node1,
    // node3 by node2.
    assert!(text(&out).contains(", streamed by this installer"), "{}", text(&out));
    assert!(text(&out).contains("pulled from 10.88.0.11 (relay)"), "{}", text(&out));
    assert!(text(&out).contains("pulled from 10.88.0.12 (relay)"), "{}", text(&out));

    // Unknown host keys are refused without the flag, recorded with it; a changed key is refused.
    let kh = work.path().join("known_hosts");
    let orig = std::fs::read_to_string(lab.known_hosts_path()).unwrap();
    // Keep the bastion's key, drop the nodes'.
    let bastion_only: String = orig
        .lines()
        .filter(|l| !l.starts_with("10.88.0.1") && !l.starts_with("[10.88.0.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&kh, &bastion_only).unwrap();
    let inv3 = inventory(
        work.path(),
        &lab.inventory(NODES).replace(&lab.known_hosts_path().display().to_string(), kh.to_str().unwrap()),
    );
    let out = run(&["-f", inv3.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown host key") && text(&out).contains("--accept-new-host-keys"), "{}", text(&out));
    let out = run(&["-f", inv3.to_str().unwrap(), "--accept-new-host-keys"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(&kh).unwrap().lines().count() > bastion_only.lines().count());
    // Swap in another host's key for node2: always refused, even with the flag.
    let mut changed = String::new();
    let node1_key: String =
        orig.lines().find(|l| l.starts_with("10.88.0.11 ")).unwrap().split_once(' ').unwrap().1.to_string();
    for l in std::fs::read_to_string(&kh).unwrap().lines() {
        if l.starts_with("10.88.0.12 ") && l.contains(node1_key.split(' ').next().unwrap()) {
            changed.push_str(&format!("10.88.0.12 {node1_key}\n"));
        } else {
            changed.push_str(&format!("{l}\n"));
        }
    }
    std::fs::write(&kh, changed).unwrap();
    let out = run(&["-f", inv3.to_str().unwrap(), "--accept-new-host-keys"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("10.88.0.12") && text(&out).contains("HOST KEY CHANGED"), "{}", text(&out));
}

#[test]
fn bad_input_is_refused_before_anything_changes() {
    // The lab routes 10.88.0.0/16 to `unreachable` while it is up: no probe leaves the machine.
    let lab = lab();
    let _use = lab.read();
    let work = tempfile::tempdir().unwrap();
    let out = run(&["--hosts", "10.88.0.11,10.88.0.12,10.88.0.11"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("10.88.0.11 is listed twice"), "{}", text(&out));
    let inv = inventory(
        work.path(),
        "apiVersion: ferry.dev/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  ssh: {user: root, password: hunter2}\n  hosts:\n    - {ips: [10.88.0.11], roles: [master]}\n",
    );
    let out = run(&["-f", inv.to_str().unwrap(), "--dry-run"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("password"), "{}", text(&out));
    let out = run(&["--masters", "10.88.0.11,10.88.0.12", "--workers", "10.88.0.13", "--dry-run"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("odd number"), "{}", text(&out));
    // Unreachable: nothing listens on this lab address.
    let out = run(&["--hosts", "10.88.0.99"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("10.88.0.99"), "{}", text(&out));
}

/// Lines `[host."URL"]` of a hosts.toml, in file order.
fn host_tables(toml: &str) -> Vec<String> {
    toml.lines().filter_map(|l| l.strip_prefix("[host.\"")?.strip_suffix("\"]").map(String::from)).collect()
}

#[test]
fn registry_replicas_survive_a_stopped_replica() {
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    // The lab's file names node1 `registry`; it counts toward the 2 replicas, node2 is added.
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let out = run(&["--json", "-f", inv.to_str().unwrap(), "--registry-replicas", "2"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    for (i, state) in [(1, "active"), (2, "active"), (3, "inactive")] {
        assert_eq!(
            lab.ssh(Host::Node(i), "systemctl is-active ferry-registry").stdout.trim_ascii(),
            state.as_bytes(),
            "node{i}"
        );
    }
    // The worker lists both replicas in cluster order; `server` is the first.
    let toml = lab.ssh_ok(Host::Node(3), "cat /etc/containerd/certs.d/docker.io/hosts.toml");
    let tables = host_tables(&toml);
    assert_eq!(tables.len(), 2, "{toml}");
    assert!(
        tables[0].starts_with(&format!("https://{}:", lab.ip(1)))
            && tables[1].starts_with(&format!("https://{}:", lab.ip(2))),
        "{toml}"
    );
    assert!(toml.contains(&format!("server = \"{}\"", tables[0])), "{toml}");
    assert_eq!(host_tables(&lab.ssh_ok(Host::Node(3), "cat /etc/containerd/certs.d/_default/hosts.toml")), tables);
    // A replica lists itself first.
    assert_eq!(
        host_tables(&lab.ssh_ok(Host::Node(2), "cat /etc/containerd/certs.d/docker.io/hosts.toml")),
        [tables[1].clone(), tables[0].clone()]
    );

    // Forget the image on the worker (blobs too), so the next pull fetches everything again.
    lab.ssh_ok(Host::Node(3), "ctr -n k8s.io images rm --sync docker.io/library/app:1 >/dev/null 2>&1; c=$(ctr -n k8s.io content ls -q); [ -z \"$c\" ] || ctr -n k8s.io content rm $c >/dev/null; true");
    assert_eq!(lab.ssh_ok(Host::Node(3), "ctr -n k8s.io content ls -q").trim(), "", "blobs left on node3");

    // The first replica dies; pulls on the worker go to the second.
    lab.ssh_ok(Host::Node(1), "systemctl stop ferry-registry");
    let port = tables[0].rsplit(':').next().unwrap().to_string();
    let probe =
        format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{}/{port}' 2>/dev/null && echo open || echo closed", lab.ip(1));
    assert_eq!(lab.ssh_ok(Host::Node(3), &probe).trim(), "closed");
    let pulls = lab.ssh_ok(
        Host::Node(3),
        "for i in 1 2 3; do (timeout 60 ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d docker.io/library/app:1 >/tmp/pull$i.log 2>&1; echo $?) & done; wait",
    );
    assert_eq!(
        pulls.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0"],
        "pulls with replica 1 stopped: {}",
        lab.ssh(Host::Node(3), "cat /tmp/pull1.log").stdout.escape_ascii()
    );
    let out =
        lab.ssh_ok(Host::Node(3), "ctr -n k8s.io run --rm docker.io/library/app:1 replicas$$ /bin/busybox cat /hello");
    assert_eq!(out.trim(), "hello from the bundle");

    // A re-run's registry phase brings the stopped replica back and checks every node against
    // both replicas again.
    let out = run(&["--json", "-f", inv.to_str().unwrap(), "--registry-replicas", "2"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.ssh_ok(Host::Node(1), "systemctl is-active ferry-registry").trim(), "active");
}

/// Runs shell commands on lab hosts when dropped (even by a panic): undoes a test's set-up.
struct Undo<'a>(&'a Lab, Vec<(Host, String)>);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        for (h, cmd) in &self.1 {
            let out = self.0.ssh(*h, cmd);
            if !out.status.success() {
                eprintln!("undo on {}: `{cmd}` failed: {}", h.name(), String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// What a run may leave on a host, listed: ferry's directory, the agents preflight stages, and
/// what prepare installs.
const TRACES: &str = "find /var/lib/ferry -mindepth 1 -printf '%p %s %T@\\n' 2>/dev/null | sort; ls -d /run/ferry-preflight.* /tmp/ferry-preflight.* /etc/containerd /usr/bin/containerd /etc/systemd/system/containerd.service /etc/systemd/system/ferry-registry.service 2>/dev/null; true";

/// An ssh-agent of the test's own (its socket in a temp dir), killed when dropped.
struct SshAgent {
    child: std::process::Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl SshAgent {
    fn start() -> SshAgent {
        let dir = tempfile::Builder::new().prefix("ferry-agent-").tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)");
        let t0 = std::time::Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed().as_secs() < 10, "ssh-agent made no socket");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        SshAgent { child, sock, _dir: dir }
    }

    fn ssh_add(&self, args: &[&std::ffi::OsStr]) {
        ferry_tests::ok(Command::new("ssh-add").args(args).env("SSH_AUTH_SOCK", &self.sock).stdin(Stdio::null()));
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ssh_agent_logs_in_without_a_key_file() {
    let lab = lab();
    let _use = lab.read();
    let work = tempfile::tempdir().unwrap();
    let key = lab.key_path();
    // The lab's cluster file without its key: the bastion and every node must log in via the agent.
    let inv = lab.inventory(NODES).replace(&format!("key: {}, ", key.display()), "");
    assert!(!inv.lines().any(|l| !l.starts_with('#') && l.contains("key:")), "{inv}");
    let inv = inventory(work.path(), &inv);
    let inv = inv.to_str().unwrap();

    let agent = SshAgent::start();
    agent.ssh_add(&[key.as_os_str()]);
    let sock = agent.sock.to_str().unwrap().to_string();
    let t0 = std::time::Instant::now();
    let out = run(&["--json", "-f", inv], &[("SSH_AUTH_SOCK", &sock)]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("run via ssh-agent: {:.1} s", t0.elapsed().as_secs_f64());
    for i in 1..=NODES {
        assert_eq!(lab.ssh_ok(Host::Node(i), "systemctl is-active containerd"), "active");
    }

    // An agent without keys, and no agent at all: refused, naming the host and what was tried.
    agent.ssh_add(&["-D".as_ref()]);
    let out = run(&["-f", inv], &[("SSH_AUTH_SOCK", &sock)]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("bastion root@10.88.1.10:22") && msg.contains("tried ssh-agent (0 keys)"), "{msg}");
    let out = run(&["-f", inv], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("bastion root@10.88.1.10:22")
            && msg.contains("no way to log in as root: give --key, run an ssh-agent"),
        "{msg}"
    );

    // The agent is the test's own: it goes when the test is done with it.
    let pid = agent.child.id();
    drop(agent);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "ssh-agent {pid} still runs");
}

/// Takes prepared nodes back to "delivered, not prepared": containerd and its files gone, and the
/// distribute, prepare and registry records removed (the installer and the agent stay, so a run
/// re-checks its chunks but sends ~nothing).
fn unprepare(lab: &Lab) {
    for i in 1..=NODES {
        lab.ssh_ok(
            Host::Node(i),
            "systemctl disable --now containerd 2>/dev/null; rm -rf /etc/containerd /usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 /usr/sbin/runc /etc/systemd/system/containerd.service /run/containerd /var/lib/ferry/state/lab/distribute.json /var/lib/ferry/state/lab/prepare.json /var/lib/ferry/state/lab/registry.json; systemctl daemon-reload",
        );
    }
}

#[test]
fn non_root_users_run_through_sudo_with_and_without_a_password() {
    let lab = lab();
    let _ex = lab.exclusive();
    let work = tempfile::tempdir().unwrap();
    // Start from delivered hosts (this sends nothing when an earlier test delivered this installer).
    let root = inventory(work.path(), &lab.inventory(NODES));
    let out = run(&["-f", root.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));

    let pw = lab.guard_password();
    // ops: passwordless sudo (`sudo -n`). guard: sudo asks for its password (`sudo -S`, the
    // password as the first line of stdin, then the chunk stream and the prepare plan).
    for (user, env) in [("ops", vec![]), ("guard", vec![("FERRY_SUDO_PASSWORD", pw.as_str())])] {
        unprepare(lab);
        let inv = inventory(work.path(), &lab.inventory_as(user, 22, NODES));
        let t0 = std::time::Instant::now();
        let out = run(&["--json", "-f", inv.to_str().unwrap()], &env);
        assert!(out.status.success(), "as {user}: {}", text(&out));
        assert!(!text(&out).contains(&pw), "the sudo password leaked into output");
        let s = summary(&out);
        eprintln!(
            "run as {user}: {:.1} s, {} bytes of installer data sent",
            t0.elapsed().as_secs_f64(),
            s["distribute_bytes"]
        );
        // Distribution really ran through sudo (the records were gone), but reused what was there.
        assert!(s["distribute_bytes"].as_u64().unwrap() < 1 << 20, "as {user}: {s}");
        for i in 1..=NODES {
            assert_eq!(
                lab.ssh_ok(Host::Node(i), "systemctl is-active containerd; systemctl is-enabled containerd; stat -c %U /var/lib/ferry/state/lab/prepare.json /etc/containerd/config.toml")
                    .split_whitespace()
                    .collect::<Vec<_>>(),
                ["active", "enabled", "root", "root"],
                "as {user} on node{i}"
            );
        }
        assert_eq!(lab.ssh_ok(Host::Node(1), "systemctl is-active ferry-registry"), "active");
    }

    // A wrong sudo password: refused on every host, named, and nothing changes.
    let before: Vec<String> = (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), TRACES)).collect();
    let inv = inventory(work.path(), &lab.inventory_as("guard", 22, NODES));
    let out = run(&["-f", inv.to_str().unwrap()], &[("FERRY_SUDO_PASSWORD", "not-guards-password")]);
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    for i in 1..=NODES {
        let row =
            msg.lines().find(|l| l.starts_with(&lab.ip(i))).unwrap_or_else(|| panic!("no row for node{i}:\n{msg}"));
        assert!(row.contains("sudo refused for guard") && row.contains("wrong sudo password"), "{row}");
    }
    assert!(!msg.contains("not-guards-password"), "the sudo password leaked into output");
    let after: Vec<String> = (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), TRACES)).collect();
    assert_eq!(before, after);
}

/// The test installer again, for `linux/arm64` only (its rootfs is one small file).
fn arm64_installer(dir: &Path) -> PathBuf {
    let b = bundle();
    std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    std::fs::write(dir.join("rootfs/etc/ferry-arm64-test"), "arm64\n").unwrap();
    std::fs::write(
        dir.join("bundle.yaml"),
        "apiVersion: ferry.dev/v1alpha1\nkind: Bundle\nmetadata: {name: run-test-arm64, version: 1.0.0}\nspec:\n  kubernetes: {version: v1.36.3}\n  platforms: [linux/arm64]\n  rootfs: [{path: rootfs}]\n",
    )
    .unwrap();
    let installer = dir.join("installer");
    ferry_tests::ok(
        Command::new(ferry_tests::release_bin("ferry"))
            .arg("build")
            .arg(dir.join("bundle.yaml"))
            .arg("-o")
            .arg(&installer)
            .arg("--key")
            .arg(b.public_key.with_extension("key"))
            .args(["--offline", "--allow-missing-images"]),
    );
    installer
}

#[test]
fn preflight_reports_every_problem_on_every_host_and_changes_nothing() {
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let installer = arm64_installer(&work.path().join("arm64"));
    let (n1, n2, n3) = (lab.ip(1), lab.ip(2), lab.ip(3));

    // node1: something listens on the API server's port and on the registry's.
    // node2: /var/lib/ferry has 1 MiB.
    // node3: user `plain` has a password but may not use sudo.
    let listen = |port: u16| {
        format!(
            "systemd-run --quiet --unit ferry-test-listen-{port} perl -MIO::Socket::INET -e 'my $s = IO::Socket::INET->new(Proto => \"tcp\", LocalPort => {port}, Listen => 5, ReuseAddr => 1) or die $!; sleep 3600' && for i in $(seq 100); do ss -Hltn | grep -q ':{port} ' && exit 0; sleep 0.1; done; systemctl status --no-pager ferry-test-listen-{port}; ss -ltnp; exit 1"
        )
    };
    let _undo = Undo(
        lab,
        vec![
            (Host::Node(1), "systemctl stop ferry-test-listen-6443 ferry-test-listen-5051; true".into()),
            (Host::Node(2), "umount /var/lib/ferry; true".into()),
            (Host::Node(3), "userdel -r plain 2>/dev/null; rm -f /etc/ssh/authorized_keys/plain; true".into()),
        ],
    );
    lab.ssh_ok(Host::Node(1), &listen(6443));
    lab.ssh_ok(Host::Node(1), &listen(5051));
    lab.ssh_ok(Host::Node(2), "mount -t tmpfs -o size=1m ferry-test-small /var/lib/ferry");
    lab.ssh_ok(
        Host::Node(3),
        "id plain >/dev/null 2>&1 || useradd --create-home --shell /bin/bash plain; echo plain:plain-password | chpasswd; cp /etc/ssh/authorized_keys/ops /etc/ssh/authorized_keys/plain",
    );
    let before: Vec<String> = (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), TRACES)).collect();

    let inv = lab
        .inventory(NODES)
        .replace(
            &format!("    - {{ips: [{n2}, {n3}], roles: [worker]}}\n"),
            &format!("    - {{ips: [{n2}], roles: [worker]}}\n    - {{ips: [{n3}], roles: [worker], ssh: {{user: plain, sudo: true}}}}\n"),
        )
        .replace("registry: {port: 5050}", "registry: {port: 5051}");
    assert!(inv.contains("user: plain") && inv.contains("port: 5051"), "{inv}");
    let inv = inventory(work.path(), &inv);
    let t0 = std::time::Instant::now();
    let out = run_installer(&installer, &["-f", inv.to_str().unwrap()], &[("FERRY_SUDO_PASSWORD", "plain-password")]);
    eprintln!("preflight with every problem: {:.1} s", t0.elapsed().as_secs_f64());
    let msg = text(&out);
    eprintln!("{msg}");
    assert!(!out.status.success(), "{msg}");
    // One table: a row per problem, each naming its host and the cause.
    let rows = |host: &str, check: &str| -> Vec<String> {
        msg.lines()
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[0] == host && cols[1] == "error" && cols[2] == check
            })
            .map(String::from)
            .collect()
    };
    for h in [&n1, &n2] {
        let arch = rows(h, "arch");
        assert_eq!(arch.len(), 1, "{msg}");
        assert!(arch[0].ends_with("the host is x86_64 (linux/amd64), the bundle is for linux/arm64"), "{}", arch[0]);
    }
    let ports = rows(&n1, "ports");
    assert_eq!(ports.len(), 2, "{msg}");
    assert!(
        ports.iter().any(|r| r.contains("port 6443 (kube-apiserver) is already in use by perl (pid ")),
        "{ports:?}"
    );
    assert!(
        ports.iter().any(|r| r.contains("port 5051 (built-in registry) is already in use by perl (pid ")),
        "{ports:?}"
    );
    let disk = rows(&n2, "disk");
    assert_eq!(disk.len(), 1, "{msg}");
    assert!(disk[0].contains("1.0 MiB (1048576 bytes) free under /var/lib/ferry; this host needs "), "{}", disk[0]);
    let need: u64 = disk[0].rsplit('(').next().unwrap().trim_end_matches(" bytes)").parse().unwrap();
    assert!(need > 64 << 20, "{}", disk[0]);
    let ssh = rows(&n3, "ssh");
    assert_eq!(ssh.len(), 1, "{msg}");
    assert!(ssh[0].contains("sudo refused for plain") && ssh[0].contains("not in the sudoers file"), "{}", ssh[0]);
    assert!(msg.contains(&format!("preflight found 6 problem(s) on {n1}, {n2}, {n3}: nothing was installed")), "{msg}");
    assert!(!msg.contains("plain-password"), "the sudo password leaked into output");

    // Nothing changed on any host: preflight ran its agent from a staged copy and removed it.
    let after: Vec<String> = (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), TRACES)).collect();
    assert_eq!(before, after);
    for (i, t) in after.iter().enumerate() {
        assert_eq!(t, "", "node{} is not bare", i + 1);
    }
}
