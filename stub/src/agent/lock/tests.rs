//! The lock agent on this machine: each case runs [`lock`] on a thread with its session on a
//! socket pair, and earlier holders that must be ended are real processes holding the `flock`.

use super::*;
use crate::protocol::lock::{Operation, tests::holder};
use std::io::{BufReader, Read};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

fn rules(dir: &Path) -> LockRules {
    LockRules { dir: dir.join("run/ferry"), stale_after: Duration::from_secs(30), settle: Duration::from_secs(5) }
}

fn reset_by(user: &str) -> Holder {
    Holder { operation: Operation::Reset, user: user.into(), pid: 77, ..holder() }
}

/// A lock agent running on a thread: its answer, and the operator's end of its session.
struct Session {
    answer: LockAnswer,
    operator: UnixStream,
    agent: std::thread::JoinHandle<Result<(), LockError>>,
}

impl Session {
    fn start(holder: Holder, force: bool, rules: &LockRules) -> Session {
        let (theirs, operator) = UnixStream::pair().unwrap();
        let rules = rules.clone();
        let agent = std::thread::spawn(move || {
            let mut input = BufReader::new(theirs.try_clone().unwrap());
            let mut output = theirs;
            lock(&holder, force, &rules, &mut input, &mut output)
        });
        let mut line = String::new();
        BufReader::new(operator.try_clone().unwrap()).read_line(&mut line).unwrap();
        let answer = decode("a lock answer", line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        Session { answer, operator, agent }
    }

    fn say(&mut self, word: &str) {
        writeln!(self.operator, "{word}").unwrap();
    }

    /// Closes the agent's stdin, as a finished or dead operator does, and waits for it.
    fn end(self) -> Result<(), LockError> {
        self.operator.shutdown(std::net::Shutdown::Write).unwrap();
        self.agent.join().unwrap()
    }
}

fn record(rules: &LockRules) -> Option<LockRecord> {
    read_record(rules).map(|r| r.unwrap())
}

fn write_record(rules: &LockRules, r: &LockRecord) {
    std::fs::create_dir_all(&rules.dir).unwrap();
    std::fs::write(rules.record_path(), serde_json::to_vec(r).unwrap()).unwrap();
}

/// A process holding the lock file's `flock` until killed; `agent_words` makes its command line
/// read as ferry's lock agent's.
fn outside_holder(rules: &LockRules, agent_words: bool) -> Child {
    std::fs::create_dir_all(&rules.dir).unwrap();
    let script = "use Fcntl qw(:flock); open(my $f, '>>', $ARGV[0]) or die $!; flock($f, LOCK_EX) or die $!; $| = 1; print \"held\\n\"; sleep 600";
    let mut cmd = Command::new("perl");
    cmd.args(["-e", script]).arg(rules.lock_path());
    if agent_words {
        cmd.args(["agent", "--protocol", "1", "lock", "--holder-json", "{}"]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut held = [0u8; 5];
    child.stdout.as_mut().unwrap().read_exact(&mut held).unwrap();
    assert_eq!(&held, b"held\n");
    child
}

/// Whether `child` has exited (reaping it), within two seconds.
fn ended(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn the_first_operation_acquires_and_records_itself() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    let s = Session::start(holder(), false, &rules);
    assert_eq!(s.answer, LockAnswer::Acquired);
    let r = record(&rules).unwrap();
    assert_eq!((r.holder, r.agent_pid), (holder(), std::process::id()));
    s.end().unwrap();
}

#[test]
fn a_second_operation_is_refused_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    let first = Session::start(holder(), false, &rules);
    let t0 = Instant::now();
    let second = Session::start(reset_by("ops"), false, &rules);
    assert!(t0.elapsed() < Duration::from_secs(2), "refused at once");
    assert_eq!(second.answer, LockAnswer::Refused { holder: holder() });
    second.end().unwrap();
    assert_eq!(record(&rules).unwrap().holder, holder(), "the refused one touches nothing");
    first.end().unwrap();
}

#[test]
fn closing_the_holders_stdin_releases_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    Session::start(holder(), false, &rules).end().unwrap();
    assert!(record(&rules).is_none(), "the record goes with the lock");
    let mut next = Session::start(reset_by("ops"), false, &rules);
    assert_eq!(next.answer, LockAnswer::Acquired);
    // RELEASE gives it back too, without closing the session.
    next.say(RELEASE);
    next.agent.join().unwrap().unwrap();
    let again = Session::start(holder(), false, &rules);
    assert_eq!(again.answer, LockAnswer::Acquired, "released on the word");
    again.end().unwrap();
}

#[test]
fn beats_refresh_the_heartbeat() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    let mut s = Session::start(holder(), false, &rules);
    let first = record(&rules).unwrap().beat_ms;
    std::thread::sleep(Duration::from_millis(30));
    s.say(BEAT);
    let deadline = Instant::now() + Duration::from_secs(2);
    while record(&rules).unwrap().beat_ms == first {
        assert!(Instant::now() < deadline, "the beat was not recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.end().unwrap();
}

#[test]
fn a_record_left_without_its_flock_is_taken_over_naming_the_old_holder() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    write_record(&rules, &LockRecord { holder: reset_by("ops"), agent_pid: 1, beat_ms: boot_ms() });
    let s = Session::start(holder(), false, &rules);
    assert_eq!(s.answer, LockAnswer::TookOver { from: Some(reset_by("ops")), why: Takeover::Gone });
    assert_eq!(record(&rules).unwrap().holder, holder());
    s.end().unwrap();
}

#[test]
fn a_damaged_record_is_taken_over_as_stale() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    std::fs::create_dir_all(&rules.dir).unwrap();
    std::fs::write(rules.record_path(), b"{\"holder\":").unwrap();
    let s = Session::start(holder(), false, &rules);
    let LockAnswer::TookOver { from: None, why: Takeover::Unreadable { cause } } = &s.answer else {
        panic!("{:?}", s.answer)
    };
    assert!(cause.contains("the lock's record does not read"), "{cause}");
    s.end().unwrap();
    // Held by a live agent whose record is damaged: found through /proc/locks and ended.
    let mut agent = outside_holder(&rules, true);
    std::fs::write(rules.record_path(), b"garbage").unwrap();
    let s = Session::start(holder(), false, &rules);
    assert!(matches!(s.answer, LockAnswer::TookOver { why: Takeover::Unreadable { .. }, .. }), "{:?}", s.answer);
    assert!(ended(&mut agent), "the holder was ended");
    s.end().unwrap();
}

#[test]
fn a_holder_silent_too_long_is_ended_and_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let rules = LockRules { stale_after: Duration::from_millis(200), ..rules(d.path()) };
    let mut agent = outside_holder(&rules, true);
    let silent = boot_ms().saturating_sub(1_000);
    write_record(&rules, &LockRecord { holder: reset_by("ops"), agent_pid: agent.id(), beat_ms: silent });
    let s = Session::start(holder(), false, &rules);
    let LockAnswer::TookOver { from, why: Takeover::Stale { silent_secs } } = &s.answer else {
        panic!("{:?}", s.answer)
    };
    assert_eq!((from.as_ref(), *silent_secs), (Some(&reset_by("ops")), 1));
    assert!(ended(&mut agent), "the stale holder was ended");
    assert_eq!(record(&rules).unwrap().holder, holder());
    s.end().unwrap();
}

#[test]
fn a_live_holder_is_ended_only_when_forced() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    let mut agent = outside_holder(&rules, true);
    write_record(&rules, &LockRecord { holder: reset_by("ops"), agent_pid: agent.id(), beat_ms: boot_ms() });
    let refused = Session::start(holder(), false, &rules);
    assert_eq!(refused.answer, LockAnswer::Refused { holder: reset_by("ops") });
    refused.end().unwrap();
    let forced = Session::start(holder(), true, &rules);
    assert_eq!(forced.answer, LockAnswer::TookOver { from: Some(reset_by("ops")), why: Takeover::Forced });
    assert!(ended(&mut agent), "the holder was ended");
    forced.end().unwrap();
    // Nothing held: forcing is a plain acquire.
    let s = Session::start(holder(), true, &rules);
    assert_eq!(s.answer, LockAnswer::Acquired);
    s.end().unwrap();
}

#[test]
fn a_process_that_is_not_ferrys_lock_agent_is_never_ended() {
    let d = tempfile::tempdir().unwrap();
    let rules = rules(d.path());
    let mut stranger = outside_holder(&rules, false);
    write_record(&rules, &LockRecord { holder: reset_by("ops"), agent_pid: stranger.id(), beat_ms: 0 });
    let (theirs, _operator) = UnixStream::pair().unwrap();
    let err = lock(&holder(), true, &rules, &mut BufReader::new(theirs.try_clone().unwrap()), &mut &theirs)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("is held by pid {} (perl -e", stranger.id())), "{err}");
    assert!(err.contains("which is not ferry's lock agent; it was left running"), "{err}");
    assert!(stranger.try_wait().unwrap().is_none(), "left running");
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[test]
fn lock_agents_are_known_by_their_command_line() {
    let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let call = crate::protocol::Call::Lock { holder: holder(), force_unlock: false };
    let line = crate::protocol::call::tests::shell_words(&call.command_line("/run/ferry-preflight.x/agent"));
    assert!(is_lock_agent(&line), "{line:?}");
    assert!(!is_lock_agent(&words("/var/lib/ferry/agent agent --protocol 1 state --cluster lab")));
    assert!(!is_lock_agent(&words("vim lock --holder-json")));
    assert!(!is_lock_agent(&[]));
}
