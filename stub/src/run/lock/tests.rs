//! The operator's lock sessions against this build's agent run in process
//! ([`crate::agent::local::LocalAgent`]): two operators of one host share its directory.

use super::*;
use crate::agent::local::LocalAgent;
use crate::protocol::lock::{LockRecord, tests::holder};
use crate::ssh::Output;
use crate::ssh::fake::FakeHost;
use std::path::Path;

fn host(dir: &Path) -> LocalAgent {
    LocalAgent::new("10.0.0.1", dir.to_path_buf(), crate::SELF_EXE.into())
}

fn request(operation: Operation, pid: u32) -> LockRequest {
    LockRequest { holder: Holder { operation, pid, ..holder() }, force: false }
}

fn quiet() -> Reporter {
    Reporter::new(false, true, true)
}

fn record(dir: &Path) -> Option<LockRecord> {
    let bytes = std::fs::read(dir.join("run/holder.json")).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// Waits (up to two seconds) for the host's record to be gone.
async fn record_gone(dir: &Path) -> bool {
    for _ in 0..100 {
        if record(dir).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_lock_is_held_for_the_operation_and_given_back_at_its_end() {
    let d = tempfile::tempdir().unwrap();
    let lock = take(&host(d.path()), "/agent", &request(Operation::Run, 4242), &quiet()).await.unwrap();
    assert_eq!(lock.addr(), "10.0.0.1");
    assert_eq!(record(d.path()).unwrap().holder, holder());
    Locks::from_iter([lock]).release(&quiet()).await;
    assert!(record(d.path()).is_none(), "released once release returns");
    // A lock dropped (an operation that failed on its way out) is given back too.
    let lock = take(&host(d.path()), "/agent", &request(Operation::Run, 4242), &quiet()).await.unwrap();
    drop(lock);
    assert!(record_gone(d.path()).await);
}

#[tokio::test]
async fn a_second_operation_is_refused_at_once_naming_host_and_holder() {
    let d = tempfile::tempdir().unwrap();
    let first = take(&host(d.path()), "/agent", &request(Operation::Run, 4242), &quiet()).await.unwrap();
    let t0 = std::time::Instant::now();
    let err = take(&host(d.path()), "/agent", &request(Operation::Join, 5151), &quiet()).await.err().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "refused within seconds");
    assert_eq!(
        err.to_string(),
        "10.0.0.1 is locked by `run` of cluster lab, started 2026-12-06 12:03:01 UTC by root@build1 pid 4242; \
         wait for it, or if it is gone use --force-unlock"
    );
    assert_eq!(err.downcast_ref::<Refused>().unwrap().holder, holder());
    assert_eq!(record(d.path()).unwrap().holder.pid, 4242, "the holder keeps it");
    first.release().await;
    let second = take(&host(d.path()), "/agent", &request(Operation::Join, 5151), &quiet()).await.unwrap();
    assert_eq!(record(d.path()).unwrap().holder.operation, Operation::Join);
    second.release().await;
}

#[tokio::test]
async fn a_lock_left_behind_is_taken_over_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("run")).unwrap();
    let left = LockRecord { holder: holder(), agent_pid: 1, beat_ms: 0 };
    std::fs::write(d.path().join("run/holder.json"), serde_json::to_vec(&left).unwrap()).unwrap();
    let lock = take(&host(d.path()), "/agent", &request(Operation::Reset, 77), &quiet()).await.unwrap();
    assert_eq!(record(d.path()).unwrap().holder.operation, Operation::Reset);
    lock.release().await;
}

#[test]
fn takeovers_read_for_the_operator() {
    let h = holder();
    let lines: Vec<String> = [
        (Some(&h), Takeover::Gone),
        (Some(&h), Takeover::Stale { silent_secs: 45 }),
        (None, Takeover::Unreadable { cause: "the lock's record does not read".into() }),
        (Some(&h), Takeover::Forced),
    ]
    .iter()
    .map(|(from, why)| takeover_warning("10.0.0.1", *from, why))
    .collect();
    let by = "the lock of `run` of cluster lab, started 2026-12-06 12:03:01 UTC by root@build1 pid 4242";
    assert_eq!(
        lines,
        [
            format!("warning: 10.0.0.1: took over {by}: it had ended without giving the lock back"),
            format!("warning: 10.0.0.1: took over {by}: its operator had been silent for 45 s, so its agent was ended"),
            "warning: 10.0.0.1: took over a lock whose holder is unknown: its record could not be read (the lock's record does not read), so it was taken as stale".to_string(),
            format!("warning: 10.0.0.1: took over {by}: --force-unlock ended it"),
        ]
    );
}

/// An agent that cannot start (missing, or of a build without `lock`) fails with its own words.
#[tokio::test]
async fn an_agent_that_cannot_lock_says_why() {
    let h = FakeHost::new(
        "10.0.0.2",
        Arc::new(|_: &str, _: &[u8]| Output {
            status: 127,
            stderr: b"sh: /var/lib/ferry/agent: not found\n".to_vec(),
            ..Output::default()
        }),
    );
    let err = take(&h, "/var/lib/ferry/agent", &request(Operation::Reset, 1), &quiet()).await.err().unwrap();
    assert_eq!(err.to_string(), "agent lock exited with status 127: sh: /var/lib/ferry/agent: not found");
}

/// An agent that goes while the operation works (ended by another's `--force-unlock`) is the
/// lock lost, and releasing says so.
#[tokio::test]
async fn a_lock_whose_agent_went_is_reported_lost() {
    let h = FakeHost::new("10.0.0.3", Arc::new(|_: &str, _: &[u8]| Output::default())).with_agent(Arc::new(
        |_: &Call, _: &[u8]| Output { status: 137, ..crate::ssh::fake::agent_answer(Some(&LockAnswer::Acquired)) },
    ));
    let lock = take(&h, "/agent", &request(Operation::Run, 1), &quiet()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!lock.release().await, "lost");
    let d = tempfile::tempdir().unwrap();
    let held = take(&host(d.path()), "/agent", &request(Operation::Run, 1), &quiet()).await.unwrap();
    assert!(held.release().await, "held to the end");
}

/// A holder from this machine whose process has ended is known dead at once; one from another
/// machine, one still running, or one from a machine without an id never is.
#[test]
fn a_holder_of_this_machine_whose_process_ended_is_gone() {
    let here = machine_id();
    assert!(!here.is_empty(), "this machine has no /etc/machine-id");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let ours = |pid: u32| Holder { machine: here.clone(), pid, ..holder() };
    assert!(ended_here(&ours(dead)));
    assert!(!ended_here(&ours(std::process::id())), "this very process");
    assert!(!ended_here(&ours(1)), "a live process");
    assert!(!ended_here(&Holder { machine: "another".into(), pid: dead, ..holder() }));
    assert!(!ended_here(&Holder { machine: String::new(), pid: dead, ..holder() }));
}
