//! One operation per host on the real lab: a second `run` on hosts a `run` holds is refused in
//! seconds naming the first; so are a `run` while a `reset` holds them and a `join` while a
//! `run` does; a `run` whose operator was SIGKILLed (and whose lock agent died with it) leaves a
//! lock the next `run` takes over with a warning, then completes; a hung operator's lock goes
//! stale and is taken over, its agent ended.
//!
//! The first operation is kept busy long enough to be caught: node2's link is shaped, so
//! distributing the test installer's padding takes tens of seconds; a `reset` is held up by a
//! `kubeadm` on node1 that sleeps (the teardown runs `kubeadm reset -f` when one is on PATH).

use super::run::{bundle, lab, text};
use ferry_tests::bundles::wipe_run;
use ferry_tests::lab::{Host, Lab};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The nodes the first operation uses; node3 is the one `join` adds.
const NODES: usize = 2;

/// A refusal must come within this (connect, stage the agent, ask for the lock).
const REFUSED_WITHIN: Duration = Duration::from_secs(30);

fn inventory(dir: &Path, nodes: usize) -> PathBuf {
    let p = dir.join("cluster.yaml");
    std::fs::write(&p, lab().inventory(nodes)).unwrap();
    p
}

fn command(args: &[&str]) -> Command {
    let b = bundle();
    let mut cmd = Command::new(&b.installer);
    cmd.arg("--no-progress").args(args).arg("--trusted-key").arg(&b.public_key).args([
        "--keepalive",
        "2",
        "--connect-timeout",
        "15",
    ]);
    cmd.env_remove("SSH_AUTH_SOCK").env_remove("FERRY_SSH_PASSWORD").env_remove("FERRY_SUDO_PASSWORD");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs the installer to its end.
fn installer(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

/// Starts the installer, its output collected for `wait_with_output`.
fn start(args: &[&str]) -> Child {
    command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The lock's record on `node`, empty when nobody holds it.
fn record(lab: &Lab, node: usize) -> String {
    lab.ssh_ok(Host::Node(node), "cat /run/ferry/holder.json 2>/dev/null; true")
}

/// Waits until `operation` holds `node`'s lock.
fn wait_held(lab: &Lab, node: usize, operation: &str) {
    let t0 = Instant::now();
    while !record(lab, node).contains(&format!("\"operation\":\"{operation}\"")) {
        assert!(t0.elapsed() < Duration::from_secs(120), "`{operation}` never locked node{node}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until nobody holds `node`'s lock.
fn wait_free(lab: &Lab, node: usize) {
    let t0 = Instant::now();
    while !record(lab, node).trim().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "node{node}'s lock was not given back: {}", record(lab, node));
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wipe(lab: &Lab) {
    wipe_run(lab, NODES + 1);
}

/// Asserts `out` failed within [`REFUSED_WITHIN`] of `t0`, refused on `host` by `holder`'s
/// `operation` of pid `pid`.
fn assert_refused(out: &Output, t0: Instant, host: &str, operation: &str, pid: u32) {
    let msg = text(out);
    assert!(!out.status.success(), "{msg}");
    assert!(t0.elapsed() < REFUSED_WITHIN, "refused only after {:?}:\n{msg}", t0.elapsed());
    assert!(msg.contains(&format!("{host} is locked by `{operation}` of cluster ")), "{msg}");
    assert!(msg.contains(&format!(" pid {pid}; wait for it, or if it is gone use --force-unlock")), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
}

#[test]
fn a_second_run_on_the_same_hosts_is_refused_in_seconds_naming_the_first() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), NODES);
    let inv = inv.to_str().unwrap();
    ex.shape(Host::Node(2), "20mbit");
    let first = start(&["run", "-f", inv]);
    wait_held(lab, 1, "run");
    wait_held(lab, 2, "run");
    let t0 = Instant::now();
    let second = installer(&["run", "-f", inv]);
    assert_refused(&second, t0, &lab.ip(Host::Node(1)), "run", first.id());
    assert!(text(&second).contains("nothing was installed"), "{}", text(&second));
    ex.unshape(Host::Node(2));
    // The first is undisturbed, and gives its locks back when it ends.
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    for node in 1..=NODES {
        assert_eq!(record(lab, node).trim(), "", "node{node} still locked");
    }
}

#[test]
fn a_run_while_a_reset_runs_is_refused_naming_the_reset() {
    let lab = lab();
    let _ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), NODES);
    let inv = inv.to_str().unwrap();
    let run = installer(&["run", "-f", inv]);
    assert!(run.status.success(), "{}", text(&run));
    // A kubeadm that takes its time holds the reset (and its lock) in node1's teardown.
    let _undo = Undo(lab, 1, "rm -f /usr/local/bin/kubeadm");
    lab.ssh_ok(
        Host::Node(1),
        "printf '#!/bin/sh\\nsleep 20\\n' > /usr/local/bin/kubeadm && chmod 0755 /usr/local/bin/kubeadm",
    );
    let reset = start(&["reset", "-f", inv]);
    wait_held(lab, 1, "reset");
    let t0 = Instant::now();
    let refused = installer(&["run", "-f", inv]);
    assert_refused(&refused, t0, &lab.ip(Host::Node(1)), "reset", reset.id());
    let reset = reset.wait_with_output().unwrap();
    assert!(reset.status.success(), "{}", text(&reset));
    wait_free(lab, 1);
    let again = installer(&["run", "-f", inv]);
    assert!(again.status.success(), "once the reset ended: {}", text(&again));
}

#[test]
fn a_join_while_a_run_runs_is_refused_and_changes_nothing_on_the_new_host() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), NODES);
    let inv = inv.to_str().unwrap();
    ex.shape(Host::Node(2), "20mbit");
    let run = start(&["run", "-f", inv]);
    wait_held(lab, 1, "run");
    let new = lab.ip(Host::Node(3));
    let t0 = Instant::now();
    let join = installer(&["join", "-f", inv, "--workers", &new]);
    assert_refused(&join, t0, &lab.ip(Host::Node(1)), "run", run.id());
    ex.unshape(Host::Node(2));
    wait_free(lab, 3);
    assert_eq!(lab.ssh_ok(Host::Node(3), "ls /var/lib/ferry 2>/dev/null; true").trim(), "", "node3 was changed");
    let run = run.wait_with_output().unwrap();
    assert!(run.status.success(), "{}", text(&run));
}

#[test]
fn a_run_killed_with_its_agent_leaves_a_lock_the_next_run_takes_over() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), NODES);
    let inv = inv.to_str().unwrap();
    ex.shape(Host::Node(2), "20mbit");
    let mut first = start(&["run", "-f", inv]);
    wait_held(lab, 1, "run");
    wait_held(lab, 2, "run");
    let pid = first.id();
    // node1's lock agent dies without a word (as on a host whose session died with it), then
    // the operator does: node1 keeps the record with nobody holding the lock. (Killed the other
    // way round, the agent sees its session close and gives the lock back cleanly first.)
    lab.ssh_ok(Host::Node(1), "kill -9 $(sed -n 's/.*\"agent_pid\":\\([0-9]*\\).*/\\1/p' /run/ferry/holder.json)");
    first.kill().unwrap();
    first.wait().unwrap();
    ex.unshape(Host::Node(2));
    // node2's agent saw its session close and let go by itself.
    wait_free(lab, 2);
    assert!(record(lab, 1).contains(&format!("\"pid\":{pid}")), "{}", record(lab, 1));
    let next = installer(&["run", "-f", inv]);
    let msg = text(&next);
    assert!(next.status.success(), "{msg}");
    let n1 = lab.ip(Host::Node(1));
    assert!(msg.contains(&format!("warning: {n1}: took over the lock of `run` of cluster ")), "{msg}");
    assert!(msg.contains(&format!(" pid {pid}: it had ended without giving the lock back")), "{msg}");
    for node in 1..=NODES {
        assert_eq!(record(lab, node).trim(), "", "node{node} still locked");
    }
}

#[test]
fn a_hung_run_goes_stale_and_is_taken_over_with_its_agent_ended() {
    let lab = lab();
    let ex = lab.exclusive();
    wipe(lab);
    let work = tempfile::tempdir().unwrap();
    let inv = inventory(work.path(), NODES);
    let inv = inv.to_str().unwrap();
    ex.shape(Host::Node(2), "20mbit");
    let mut hung = start(&["run", "-f", inv]);
    wait_held(lab, 1, "run");
    wait_held(lab, 2, "run");
    let signal =
        |sig: &str| assert!(Command::new("kill").args([sig, &hung.id().to_string()]).status().unwrap().success());
    signal("-STOP");
    ex.unshape(Host::Node(2));
    // Silent, but not yet for long: refused.
    let t0 = Instant::now();
    let early = installer(&["run", "-f", inv]);
    assert_refused(&early, t0, &lab.ip(Host::Node(1)), "run", hung.id());
    // Thirty seconds of silence make it stale (unless sshd dropped the stopped operator's
    // session first, which releases the lock as cleanly): either way the next run completes.
    std::thread::sleep(Duration::from_secs(35));
    let next = installer(&["run", "-f", inv]);
    let msg = text(&next);
    signal("-KILL");
    hung.wait().unwrap();
    assert!(next.status.success(), "{msg}");
    if msg.contains("took over") {
        assert!(msg.contains("its operator had been silent for "), "{msg}");
        assert!(msg.contains("so its agent was ended"), "{msg}");
    }
}

/// Runs a command on a node when dropped, to undo what a test set up there.
struct Undo<'a>(&'a Lab, usize, &'static str);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let _ = self.0.ssh(Host::Node(self.1), self.2);
    }
}
