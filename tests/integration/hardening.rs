//! Hardening of `installer run` on the real lab: a damaged installer stops at once naming the
//! damage; no install without a trusted signer; the state goes where it can be written when the
//! installer sits on a read-only mount; Ctrl-C in any phase stops with what is recorded, leaves
//! no ferry process on any host, and the same command continues; the built-in registry answers
//! the cluster only, and its secrets stay where they belong.

use super::run::{NODES, bundle, inventory, lab, run, run_installer, text, wipe};
use ferry_tests::lab::{Host, Lab};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Agents of ferry running on a host (the bracket keeps the shell running pgrep out of it).
const FERRY_AGENTS: &str = "pgrep -af -- ' agent --protoco[l] ' || true";

/// Waits (up to a minute) until no ferry agent runs on any of the run's hosts.
fn no_agents_left(lab: &Lab, context: &str) {
    let t0 = Instant::now();
    loop {
        let left: Vec<String> =
            (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), FERRY_AGENTS)).filter(|s| !s.trim().is_empty()).collect();
        if left.is_empty() {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{context}: agents still running: {left:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A copy of the test installer in `dir` with one byte flipped at `offset`, as a bad USB stick
/// leaves it.
fn damaged_copy(dir: &Path, name: &str, offset: u64) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(&bundle().installer, &to).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&to).unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, offset).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x55], offset).unwrap();
    to
}

/// One byte flipped in an image blob, in a rootfs file, in the program itself: `run` stops within
/// seconds naming the entry (not at a frozen progress bar until the phase timeout), no host holds
/// the bad chunk, and `verify` names the same entry.
#[test]
fn a_damaged_installer_stops_at_once_naming_the_entry() {
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let payload = payload_format::Payload::open(&bundle().installer).unwrap();
    let entry = |pick: &dyn Fn(&payload_format::Entry) -> bool| {
        let e = payload.index().entries.iter().filter(|e| pick(e)).max_by_key(|e| e.stored_len).unwrap();
        (e.path.clone(), e.offset + e.stored_len / 2)
    };
    let cases = [
        entry(&|e| e.path.starts_with("blobs/")),
        entry(&|e| e.path == "rootfs/usr/bin/containerd"),
        // In the section headers at the end of the ELF file, which nothing reads at run time, so
        // the damaged program still starts and must find the damage itself.
        ("the installer program itself".to_string(), payload.trailer().stub_len - 16),
    ];
    for (k, (what, offset)) in cases.iter().enumerate() {
        let installer = damaged_copy(work.path(), &format!("installer-{k}"), *offset);
        let started = std::time::Instant::now();
        let out = run_installer(&installer, &["-f", inv.to_str().unwrap()], &[]);
        let took = started.elapsed();
        let msg = text(&out);
        assert!(!out.status.success(), "{what}: {msg}");
        // A stalled stream would sit until the phase timeout (an hour); seconds are expected, a
        // minute leaves room for a loaded machine.
        assert!(took < std::time::Duration::from_secs(90), "{what}: took {took:?}\n{msg}");
        assert!(msg.contains(what.as_str()) && msg.contains("this installer is damaged"), "{what}: {msg}");
        // No host holds the damaged bytes.
        if k < 2 {
            let n = payload.chunk_of(*offset);
            let (s, e) = payload.chunk_range(n);
            let bad = {
                use sha2::Digest;
                let mut b = vec![0u8; (e - s) as usize];
                let f = std::fs::File::open(&installer).unwrap();
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, s).unwrap();
                hex::encode(sha2::Sha256::digest(&b))
            };
            for i in 1..=NODES {
                let held = lab.ssh_ok(
                    Host::Node(i),
                    &format!(
                        "f=/var/lib/ferry/installer.part; [ -f $f ] || f=/var/lib/ferry/installer; [ -f $f ] && tail -c +{} $f | head -c {} | sha256sum; true",
                        s + 1,
                        e - s
                    ),
                );
                assert!(!held.contains(&bad), "{what}: node{i} holds the damaged chunk {n}");
            }
        }
        // `verify` names the same entry.
        let v = Command::new(&installer).arg("verify").arg("--key").arg(&bundle().public_key).output().unwrap();
        assert!(!v.status.success());
        if k < 2 {
            assert!(text(&v).contains(what.as_str()), "verify: {}", text(&v));
        }
    }
}

/// No trusted key: refused before any host is contacted, naming the signer and the way out.
/// With `--allow-untrusted-signer` it proceeds, saying so loudly, and the fingerprint is
/// recorded in the cluster's state.
#[test]
fn an_untrusted_signer_is_refused_unless_allowed() {
    let lab = lab();
    let _use = lab.read();
    let work = tempfile::tempdir().unwrap();
    let installer = work.path().join("installer");
    std::fs::copy(&bundle().installer, &installer).unwrap();
    let plain = |extra: &[&str]| {
        let mut c = Command::new(&installer);
        c.args(["--no-progress", "run", "--hosts", "10.88.0.11", "--connect-timeout", "15"])
            .args(extra)
            .env_remove("FERRY_TRUSTED_KEYS")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let out = plain(&[]);
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("does not trust") && msg.contains("--allow-untrusted-signer"), "{msg}");
    assert!(msg.contains("SHA256:"), "the signer's fingerprint: {msg}");
    // Refused before connecting: no host is named, no preflight ran.
    assert!(!msg.contains("10.88.0.11") && !msg.contains("preflight"), "{msg}");
    // Allowed: the plan goes ahead (a dry run, so nothing changes), the warning names the key,
    // and the state records it.
    let out = plain(&["--allow-untrusted-signer", "--dry-run"]);
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    let fingerprint = msg
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in: {msg}"))
        .trim_end_matches([',', '.']);
    assert!(msg.contains("does NOT trust"), "{msg}");
    let recorded = std::fs::read_to_string(glob_signer(work.path())).unwrap();
    assert!(recorded.contains(fingerprint) && recorded.contains("\"trusted\": false"), "{recorded}");
}

/// The one `signer.json` under `.ferry/` beside an installer in `dir`.
fn glob_signer(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join(".ferry"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("signer.json"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no signer.json under {}", dir.join(".ferry").display()))
}

/// A read-only bind mount of a directory, unmounted when dropped.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn of(src: &Path, at: &Path) -> ReadOnlyMount {
        std::fs::create_dir_all(at).unwrap();
        ferry_tests::ok(Command::new("mount").arg("--bind").arg(src).arg(at));
        let m = ReadOnlyMount(at.to_path_buf());
        ferry_tests::ok(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(at));
        m
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The installer on a read-only mount, as on a write-protected USB stick: `run` completes with
/// its state in the user's state directory, and `join` and `check` from the same mount find it.
/// With no writable place at all, `run` stops before touching any host.
#[test]
fn an_installer_on_a_read_only_mount_keeps_its_state_in_the_users_directory() {
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let stick_src = work.path().join("stick-src");
    std::fs::create_dir(&stick_src).unwrap();
    std::fs::copy(&bundle().installer, stick_src.join("installer")).unwrap();
    let stick = ReadOnlyMount::of(&stick_src, &work.path().join("stick"));
    let installer = stick.0.join("installer");
    let state_home = work.path().join("state-home");
    let env = [("XDG_STATE_HOME", state_home.to_str().unwrap())];
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let inv = inv.to_str().unwrap();

    // Nowhere to write: stopped before any host is touched.
    let before: Vec<String> =
        (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), "ls -A /var/lib/ferry 2>/dev/null; true")).collect();
    let out = run_installer(
        &installer,
        &["-f", inv],
        &[("XDG_STATE_HOME", "/proc/self/nowhere"), ("HOME", "/proc/self/nowhere")],
    );
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("no writable place") && msg.contains("--state-dir"), "{msg}");
    assert!(msg.contains("Read-only file system"), "{msg}");
    let after: Vec<String> =
        (1..=NODES).map(|i| lab.ssh_ok(Host::Node(i), "ls -A /var/lib/ferry 2>/dev/null; true")).collect();
    assert_eq!(before, after, "a host was touched");

    // The user's state directory: the run completes and says where its state went.
    let out = run_installer(&installer, &["-f", inv], &env);
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    let dir = state_home.join("ferry/lab");
    assert!(msg.contains(&format!("state: {} (in the user's state directory)", dir.display())), "{msg}");
    assert!(dir.join("cluster.yaml").is_file() || dir.join("10.88.0.11.json").is_file(), "{msg}");
    assert!(!stick.0.join(".ferry").exists());

    // join, from the same mount, finds the cluster there and adds node4.
    let mut join = Command::new(&installer);
    join.args(["--no-progress", "join", "--workers", &lab.ip(4), "--trusted-key"])
        .arg(&bundle().public_key)
        .args(["--connect-timeout", "15"])
        .envs(env)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    let out = join.output().unwrap();
    let msg = text(&out);
    assert!(out.status.success(), "join: {msg}");
    assert!(std::fs::read_to_string(dir.join("cluster.yaml")).unwrap().contains(&lab.ip(4)), "{msg}");
    // check finds it too (a cluster of prepared nodes has no Kubernetes to check, which it says).
    let out =
        Command::new(&installer).args(["--no-progress", "check"]).envs(env).stdin(Stdio::null()).output().unwrap();
    let msg = text(&out);
    assert!(!msg.contains("no cluster is known") && msg.contains(&lab.ip(1)), "check: {msg}");
    ferry_tests::bundles::wipe_run(lab, NODES + 1);
}

/// Ctrl-C at the start of each phase: the run says it stopped, what each host has recorded and
/// how to continue, exits 130, and no ferry agent is left on any host; the same command then
/// completes.
#[test]
fn ctrl_c_in_any_phase_stops_cleanly_and_the_same_command_continues() {
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let inv = inv.to_str().unwrap();
    for phase in ["preflight", "distribute", "prepare", "registry"] {
        let b = bundle();
        let mut child = Command::new(&b.installer)
            .args(["--no-progress", "run", "--json", "--keepalive", "2", "-f", inv, "--trusted-key"])
            .arg(&b.public_key)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        let mut signalled = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            seen.push(line);
            if v["phase"] == phase && v["event"] != "skip" {
                // SAFETY: a signal to our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                signalled = true;
                break;
            }
        }
        assert!(signalled, "phase {phase} never started:\n{}", seen.join("\n"));
        seen.extend(lines.map_while(Result::ok));
        let out = child.wait_with_output().unwrap();
        let msg = format!("{}{}", seen.join("\n"), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(130), "{phase}: {msg}");
        assert!(msg.contains("run the same command again to continue"), "{phase}: {msg}");
        assert!(msg.contains("\"event\":\"recorded\""), "{phase}: {msg}");
        no_agents_left(lab, phase);
    }
    let out = run(&["-f", inv], &[]);
    assert!(out.status.success(), "{}", text(&out));
    no_agents_left(lab, "after the run");
}

/// `base64` of `text`, as an HTTP Basic header carries it.
fn base64(text: &str) -> String {
    let mut c = Command::new("base64");
    c.arg("-w0").stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

/// A local port forwarded through `via` to `target` (`ssh -L`), so connections to it come from
/// that lab host; closed when dropped.
struct Forward(std::process::Child, u16);

impl Forward {
    fn through(lab: &Lab, via: Host, target: &str) -> Forward {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spec = format!("127.0.0.1:{port}:{target}");
        let child = lab
            .ssh_command("root", via, &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let f = Forward(child, port);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "the forward through {} never opened", via.name());
            std::thread::sleep(Duration::from_millis(200));
        }
        f
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The HTTP status `curl` gets for `url` with `args`, or `000` when no HTTP answer came.
fn status(url: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The built-in registry answers the cluster only: from node4, outside the cluster, it speaks no
/// plain HTTP and answers 401 without the pull credential or with a wrong one (the cluster CA
/// verifies its certificate); the credential works. The credential travels in no output and
/// lands on the nodes only in their 0600 hosts.toml files; the CA key is on no node.
#[test]
fn the_registry_answers_only_the_cluster_and_its_secrets_stay_put() {
    let lab = lab();
    let _ex = lab.exclusive();
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), &lab.inventory(NODES));
    let out = run(&["-f", inv.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let state = bundle().installer.parent().unwrap().join(".ferry/lab");
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!(mode(&state.join("registry-ca.key")), 0o600);
    assert_eq!(mode(&state.join("registry-credential")), 0o600);
    let credential = std::fs::read_to_string(state.join("registry-credential")).unwrap().trim().to_string();
    let (user, password) = credential.split_once(':').unwrap();
    let basic = base64(&credential);
    assert!(!text(&out).contains(password) && !text(&out).contains(&basic), "the credential is in the run's output");
    let key_line = std::fs::read_to_string(state.join("registry-ca.key")).unwrap().lines().nth(1).unwrap().to_string();

    for i in 1..=NODES {
        let h = Host::Node(i);
        let holders = lab.ssh_ok(
            h,
            &format!("grep -rlsF -D skip -e {password} -e {basic} /etc /run /var/log /root /var/lib/ferry/state 2>/dev/null; true"),
        );
        for f in holders.lines() {
            assert!(f.ends_with("/hosts.toml"), "node{i}: the credential is in {f}");
            assert_eq!(lab.ssh_ok(h, &format!("stat -c %a {f}")), "600", "node{i}: {f}");
        }
        assert!(!holders.is_empty(), "node{i} has no hosts.toml with the credential");
        let journal =
            lab.ssh_ok(h, &format!("journalctl --no-pager 2>/dev/null | grep -cF -e {password} -e {basic}; true"));
        assert_eq!(journal.lines().next().unwrap_or("0"), "0", "node{i}: the credential is in the journal");
        let key = lab
            .ssh_ok(h, &format!("grep -rlsF -D skip -e '{key_line}' /etc /run /var/lib/ferry /root 2>/dev/null; true"));
        assert!(key.is_empty(), "node{i}: the CA key is in {key}");
    }

    let node1 = lab.ip(Host::Node(1));
    let fwd = Forward::through(lab, Host::Node(4), &format!("{node1}:5050"));
    let ca = state.join("registry-ca.crt");
    let ca = ca.to_str().unwrap();
    // The certificate names 127.0.0.1 too, so the forwarded connection verifies against the CA.
    let https = format!("https://127.0.0.1:{}/v2/", fwd.1);
    assert_eq!(status(&https, &["--cacert", ca]), "401", "no credential");
    assert_eq!(
        status(&https, &["--cacert", ca, "-u", &format!("{user}:not-the-password")]),
        "401",
        "a wrong credential"
    );
    assert_eq!(status(&https, &["--cacert", ca, "-u", &credential]), "200", "the credential");
    let plain = status(&format!("http://127.0.0.1:{}/v2/", fwd.1), &[]);
    assert!(plain == "000" || plain.starts_with('4'), "plain HTTP got {plain}");
    assert_ne!(plain, "401", "plain HTTP reached the registry's routes");
    // A client that does not trust the cluster CA cannot verify it.
    assert_eq!(status(&https, &["-u", &credential]), "000", "verified without the cluster CA");
}
