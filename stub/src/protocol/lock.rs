//! The host lock's messages: who holds a host, what an agent answers when asked for the lock, and
//! the record it keeps on the host while it holds it.
//!
//! Owns: [`Holder`] (the operation holding a host, as every message and error names it),
//! [`Operation`], [`LockAnswer`] and [`Takeover`] (the one line `agent lock` answers), the words
//! the operator sends on the session ([`BEAT`], [`RELEASE`]), [`LockRecord`] (the holder file on
//! the host, read by agents of any build) and the timing both sides agree on ([`BEAT_INTERVAL`],
//! [`STALE_AFTER`]). No I/O: the agent side is `agent::lock`, the operator side `run::lock`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often the operator tells each lock agent it is still there.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(3);

/// A holder whose agent heard nothing from its operator for this long is hung or cut off: the
/// next operation takes the lock over. Ten beats, so a slow link never loses a live lock.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// What the operator sends on the lock session to say it is still there.
pub const BEAT: &str = "beat";

/// What the operator sends on the lock session to give the lock back (closing stdin does too).
pub const RELEASE: &str = "release";

/// The operation that takes a lock, as its command is named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// `installer run`.
    #[default]
    Run,
    /// `installer join`.
    Join,
    /// `installer reset`.
    Reset,
    /// `installer upgrade`.
    Upgrade,
}

impl Operation {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Run => "run",
            Operation::Join => "join",
            Operation::Reset => "reset",
            Operation::Upgrade => "upgrade",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who holds (or asks for) a host's lock: the operator's machine, user and process, what it
/// does to which cluster, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The operator machine's host name.
    pub host: String,
    /// The operator machine's id (`/etc/machine-id`; empty when it has none): a later
    /// operation from the same machine can tell that this one's process has ended.
    #[serde(default)]
    pub machine: String,
    /// The user running the installer there.
    pub user: String,
    /// The installer's process id there.
    pub pid: u32,
    /// The operation.
    pub operation: Operation,
    /// The cluster it works on.
    pub cluster: String,
    /// When it started, seconds since the Unix epoch (the operator's clock).
    pub started: u64,
}

impl std::fmt::Display for Holder {
    /// `` `run` of cluster lab, started 2026-12-06 12:03:01 UTC by root@build1 pid 4242 ``.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stamp = ferry_core::units::rfc3339(self.started);
        let stamp = stamp.trim_end_matches('Z').replacen('T', " ", 1);
        write!(
            f,
            "`{}` of cluster {}, started {stamp} UTC by {}@{} pid {}",
            self.operation, self.cluster, self.user, self.host, self.pid
        )
    }
}

/// Why a lock was taken over from an earlier holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "why")]
pub enum Takeover {
    /// Its record was there but nobody held the lock: the holder died (killed, its host or
    /// session gone) without giving it back.
    Gone,
    /// The holder's agent had not heard from its operator for `silent_secs`: it was ended.
    Stale {
        /// Seconds since its last beat.
        silent_secs: u64,
    },
    /// The record on the host could not be read (damaged or from an unknown build).
    Unreadable {
        /// What was wrong with it.
        cause: String,
    },
    /// The operator asked for it (`--force-unlock`): the holder was ended.
    Forced,
}

/// The one line `agent lock` answers after its hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "lock")]
pub enum LockAnswer {
    /// The lock is this operation's; nobody held it.
    Acquired,
    /// Another operation holds the lock and is alive.
    Refused {
        /// Who.
        holder: Holder,
    },
    /// The lock is this operation's, taken from an earlier holder.
    TookOver {
        /// Who held it, when its record said.
        from: Option<Holder>,
        /// Why it could be taken.
        #[serde(flatten)]
        why: Takeover,
    },
}

/// The holder file on a host, written atomically by the agent that holds the lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The operation holding the lock.
    pub holder: Holder,
    /// The lock agent's process id on the host (the one to end when the lock is taken over).
    pub agent_pid: u32,
    /// When the agent last heard from its operator: milliseconds on the host's boot clock
    /// (`CLOCK_BOOTTIME`), which no clock change moves and which only agents of the same boot
    /// compare (the file lives on tmpfs).
    pub beat_ms: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn holder() -> Holder {
        Holder {
            host: "build1".into(),
            machine: "0123456789abcdef0123456789abcdef".into(),
            user: "root".into(),
            pid: 4242,
            operation: Operation::Run,
            cluster: "lab".into(),
            started: 1_796_558_581,
        }
    }

    #[test]
    fn a_holder_reads_for_the_operator() {
        assert_eq!(
            holder().to_string(),
            "`run` of cluster lab, started 2026-12-06 12:03:01 UTC by root@build1 pid 4242"
        );
    }

    #[test]
    fn answers_round_trip() {
        let answers = [
            LockAnswer::Acquired,
            LockAnswer::Refused { holder: holder() },
            LockAnswer::TookOver { from: Some(holder()), why: Takeover::Stale { silent_secs: 40 } },
            LockAnswer::TookOver { from: None, why: Takeover::Unreadable { cause: "eof".into() } },
            LockAnswer::TookOver { from: Some(holder()), why: Takeover::Gone },
            LockAnswer::TookOver { from: Some(holder()), why: Takeover::Forced },
        ];
        for a in answers {
            let line = crate::protocol::encode_line(&a);
            assert_eq!(crate::protocol::decode::<LockAnswer>("a lock answer", line.as_bytes()).unwrap(), a, "{line}");
        }
        let line = crate::protocol::encode_line(&LockAnswer::Acquired);
        assert_eq!(line, "{\"lock\":\"acquired\"}\n");
    }
}
