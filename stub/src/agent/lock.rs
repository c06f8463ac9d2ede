//! `installer agent lock`: one operation per host at a time.
//!
//! Owns the host side of the lock. The agent takes a non-blocking `flock` on `lock` in the lock
//! directory ([`crate::node::LOCK_DIR`], tmpfs), writes who holds it to `holder.json` beside it
//! ([`LockRecord`], replaced atomically, so a reader never sees half of one), answers one
//! [`LockAnswer`] line, then holds the lock for as long as its operator's session lasts: every
//! [`BEAT`] line refreshes the record's heartbeat, and [`RELEASE`] or the end of stdin (the
//! operator finished, died, or its SSH session dropped, and sshd closed the pipes) removes the
//! record and gives the lock back.
//!
//! Why two files: the kernel's `flock` says whether a holder is alive (it dies with its
//! process), and the record says who it is. The `lock` file is never removed or replaced, so
//! every agent locks the same inode; the record comes and goes.
//!
//! Earlier holders are taken over, with the answer saying so, when they are:
//! - gone: the record is there but nobody holds the `flock` (the holder was killed or its host
//!   restarted its sshd without a reboot);
//! - stale: the `flock` is held but its operator has not beaten for [`LockRules::stale_after`]
//!   (a hung or cut-off operator whose agent never saw its stdin end): its agent is ended;
//! - unreadable: a damaged record is treated as stale;
//! - forced (`--force-unlock`): its agent is ended whatever its heartbeat says.
//!
//! An agent is only ended when `/proc/PID/cmdline` shows it is ferry's lock agent, so a
//! recycled process id never kills a stranger.

use crate::protocol::lock::{BEAT, Holder, LockAnswer, LockRecord, RELEASE, STALE_AFTER, Takeover};
use crate::protocol::{decode, encode_line};
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the lock lives and how long its holders are given.
#[derive(Clone, Debug)]
pub struct LockRules {
    /// The directory of `lock` and `holder.json`.
    pub dir: PathBuf,
    /// A holder silent this long is stale.
    pub stale_after: Duration,
    /// How long an ended holder has to let go of the lock.
    pub settle: Duration,
}

impl LockRules {
    /// The rules on a real node.
    pub fn here() -> LockRules {
        LockRules {
            dir: PathBuf::from(crate::node::LOCK_DIR),
            stale_after: STALE_AFTER,
            settle: Duration::from_secs(5),
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("holder.json")
    }
}

/// Why the lock could not be taken or kept; the operator prefixes the host.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock directory or file cannot be made or opened.
    #[error("opening the lock {}", path.display())]
    Open {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `flock` failed for another reason than someone holding it.
    #[error("locking {}", path.display())]
    Flock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The holder's record cannot be written.
    #[error("writing the lock's record {}", path.display())]
    Record {
        /// The record.
        path: PathBuf,
        /// Why.
        source: ferry_core::fs::WriteError,
    },
    /// The lock is held by a process that is not ferry's lock agent, so it is not ended.
    #[error(
        "the lock {} is held by {what}, which is not ferry's lock agent; it was left running: end it by hand if it is not needed",
        path.display()
    )]
    NotOurs {
        /// The lock file.
        path: PathBuf,
        /// The process, as `pid N (cmdline)`, or what is known of it.
        what: String,
    },
    /// The holder was ended but the lock stayed held.
    #[error("the lock's holder (pid {pid}) was ended but the lock was still held {} s later", settle.as_secs())]
    StillHeld {
        /// Its process id.
        pid: u32,
        /// How long it was given.
        settle: Duration,
    },
    /// The answer could not reach the operator.
    #[error("answering the operator")]
    Answer(#[source] std::io::Error),
}

/// The lock, held: released when dropped (the record removed, then the `flock` with the file).
struct Held {
    file: File,
    rules: LockRules,
    record: LockRecord,
}

impl Held {
    /// Writes the record with a fresh heartbeat.
    fn beat(&mut self) -> Result<(), LockError> {
        self.record.beat_ms = boot_ms();
        let path = self.rules.record_path();
        let bytes = serde_json::to_vec(&self.record).unwrap_or_default();
        ferry_core::fs::write_atomic(&path, &bytes, 0o644).map_err(|source| LockError::Record { path, source })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Only our own record goes: an agent that took the lock over wrote its own.
        let ours = |r: &LockRecord| r.agent_pid == self.record.agent_pid && r.holder == self.record.holder;
        if matches!(read_record(&self.rules), Some(Ok(r)) if ours(&r)) {
            let _ = std::fs::remove_file(self.rules.record_path());
        }
        // SAFETY: unlocking our own open descriptor; closing it (below) would too.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// `agent lock`: takes the lock for `holder` (ending any holder when `force`), answers, and
/// holds it until `input` ends or says [`RELEASE`]. A refusal is an answer, not an error.
pub fn lock(
    holder: &Holder,
    force: bool,
    rules: &LockRules,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> Result<(), LockError> {
    let (held, answer) = acquire(holder, force, rules)?;
    output.write_all(encode_line(&answer).as_bytes()).and_then(|_| output.flush()).map_err(LockError::Answer)?;
    let Some(mut held) = held else { return Ok(()) };
    let mut line = String::new();
    loop {
        line.clear();
        // A broken session is the operator gone: the lock goes with it.
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim() == RELEASE => break,
            Ok(_) if line.trim() == BEAT => held.beat()?,
            Ok(_) => {}
        }
    }
    drop(held);
    Ok(())
}

/// Takes the lock, or says who holds it: the lock (`None` when refused) and the answer.
fn acquire(holder: &Holder, force: bool, rules: &LockRules) -> Result<(Option<Held>, LockAnswer), LockError> {
    let file = open_lock(rules)?;
    let ours = LockRecord { holder: holder.clone(), agent_pid: std::process::id(), beat_ms: boot_ms() };
    if try_flock(&file, rules)? {
        return take_free(file, rules, ours);
    }
    let before = match settled_record(&file, rules)? {
        Settled::Freed => return take_free(file, rules, ours),
        Settled::Held(before) => before,
    };
    let why = match &before {
        _ if force => Takeover::Forced,
        Some(Ok(r)) => {
            let silent = Duration::from_millis(boot_ms().saturating_sub(r.beat_ms));
            if silent < rules.stale_after {
                return Ok((None, LockAnswer::Refused { holder: r.holder.clone() }));
            }
            Takeover::Stale { silent_secs: silent.as_secs() }
        }
        Some(Err(cause)) => Takeover::Unreadable { cause: cause.clone() },
        None => Takeover::Unreadable { cause: "the holder wrote no record".into() },
    };
    let pid = match &before {
        Some(Ok(r)) => Some(r.agent_pid),
        _ => flock_holder(&file),
    };
    end_holder(&file, pid, rules)?;
    let from = before.and_then(Result::ok).map(|r| r.holder);
    Ok((Some(hold(file, rules, ours)?), LockAnswer::TookOver { from, why }))
}

/// The lock, just taken with nobody holding it: a record left there names who died holding it.
fn take_free(file: File, rules: &LockRules, ours: LockRecord) -> Result<(Option<Held>, LockAnswer), LockError> {
    let answer = match read_record(rules) {
        None => LockAnswer::Acquired,
        Some(Ok(before)) => LockAnswer::TookOver { from: Some(before.holder), why: Takeover::Gone },
        Some(Err(cause)) => LockAnswer::TookOver { from: None, why: Takeover::Unreadable { cause } },
    };
    Ok((Some(hold(file, rules, ours)?), answer))
}

/// The lock held with `record` written.
fn hold(file: File, rules: &LockRules, record: LockRecord) -> Result<Held, LockError> {
    let mut held = Held { file, rules: rules.clone(), record };
    held.beat()?;
    Ok(held)
}

/// Opens (creating) the lock file; its directory is root's alone.
fn open_lock(rules: &LockRules) -> Result<File, LockError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let open_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LockError::Open { path, source }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&rules.dir).map_err(open_err(&rules.dir))?;
    let path = rules.lock_path();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(open_err(&path))
}

/// Whether the exclusive `flock` was taken now (false: someone holds it).
fn try_flock(file: &File, rules: &LockRules) -> Result<bool, LockError> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(LockError::Flock { path: rules.lock_path(), source: err })
}

/// The record on the host: none, one, or why it does not read as one.
fn read_record(rules: &LockRules) -> Option<Result<LockRecord, String>> {
    let bytes = match std::fs::read(rules.record_path()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(e.to_string())),
        Ok(b) => b,
    };
    Some(decode::<LockRecord>("the lock's record", &bytes).map_err(|e| e.to_string()))
}

/// A held lock's record, once it reads, or the lock freed meanwhile.
enum Settled {
    /// Still held: its record, none, or why it does not read.
    Held(Option<Result<LockRecord, String>>),
    /// The holder let go while its record was missing (and `file` now holds the lock).
    Freed,
}

/// The record of a held lock, given its holder a moment: one that just took the `flock` has yet
/// to write its record, and one releasing removes its record just before the `flock`.
fn settled_record(file: &File, rules: &LockRules) -> Result<Settled, LockError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = read_record(rules);
        if matches!(r, Some(Ok(_))) || Instant::now() >= deadline {
            return Ok(Settled::Held(r));
        }
        std::thread::sleep(Duration::from_millis(50));
        if try_flock(file, rules)? {
            return Ok(Settled::Freed);
        }
    }
}

/// Ends the lock agent `pid` holding `file` and waits for the lock to come free.
fn end_holder(file: &File, pid: Option<u32>, rules: &LockRules) -> Result<(), LockError> {
    let not_ours = |what: String| LockError::NotOurs { path: rules.lock_path(), what };
    let Some(pid) = pid else { return Err(not_ours("a process this agent cannot identify".into())) };
    let cmdline = cmdline(pid);
    if !is_lock_agent(&cmdline) {
        if try_flock(file, rules)? {
            return Ok(()); // it let go meanwhile
        }
        let shown = if cmdline.is_empty() { "no longer running".to_string() } else { cmdline.join(" ") };
        return Err(not_ours(format!("pid {pid} ({shown})")));
    }
    // SAFETY: a signal to the process the checks above identified.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + rules.settle;
    while !try_flock(file, rules)? {
        if Instant::now() >= deadline {
            return Err(LockError::StillHeld { pid, settle: rules.settle });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The words of `/proc/PID/cmdline` (none when it is gone).
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|w| !w.is_empty()).map(|w| String::from_utf8_lossy(w).into_owned()).collect()
}

/// Whether a command line is ferry's lock agent: `… agent … lock … --holder-json …`, as
/// [`crate::protocol::Call::command_line`] writes it.
pub fn is_lock_agent(words: &[String]) -> bool {
    let Some(agent) = words.iter().position(|w| w == "agent") else { return false };
    let rest = &words[agent + 1..];
    let Some(lock) = rest.iter().position(|w| w == "lock") else { return false };
    rest[lock + 1..].iter().any(|w| w == "--holder-json")
}

/// The process holding `file`'s `flock`, from /proc/locks (for a holder whose record is lost).
fn flock_holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let id = format!("{:02x}:{:02x}:{}", libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // `1: FLOCK  ADVISORY  WRITE 4242 00:19:5678 0 EOF`; waiters have `->` after the number.
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&"FLOCK") && cols.get(5) == Some(&id.as_str())).then(|| cols[4].parse().ok())?
    })
}

/// Milliseconds on the boot clock, which wall-clock changes do not move.
pub fn boot_ms() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
#[path = "lock/tests.rs"]
mod tests;
