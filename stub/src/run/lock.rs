//! The operator's side of the host lock: one operation (`run`, `join`, `reset`) per host at a
//! time.
//!
//! Owns: who this operation is ([`LockRequest`]), taking one host's lock over its own agent
//! session ([`take`]) and keeping it alive with a beat every [`BEAT_INTERVAL`] ([`HostLock`]),
//! every host's lock for the length of an operation ([`Locks`]), and how a refusal and a
//! takeover read ([`Refused`], [`takeover_warning`]). The host side is `agent::lock`.
//!
//! A lock lives exactly as long as its session: [`Locks::release`] at the end of the operation
//! (success or failure) ends each session and waits for its agent to let go; a dropped
//! [`HostLock`] releases without waiting; and when this process dies its SSH sessions close,
//! which ends the agents too. A cut-off or hung operator stops beating, so the next operation
//! finds its lock stale and takes it over.

use super::progress::Reporter;
use super::{Ctx, parallel};
use crate::protocol::lock::{BEAT, BEAT_INTERVAL, Holder, LockAnswer, Operation, RELEASE, Takeover};
use crate::protocol::{Call, decode};
use crate::ssh::agent::{read_hello, stderr_tail};
use crate::ssh::{Exec, RemoteHost};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long an agent may take to answer: enough to end a stale holder and wait for it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long releasing waits for an agent to let go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who this operation is, and whether it ends the holders it finds (`--force-unlock`).
#[derive(Clone, Debug)]
pub struct LockRequest {
    /// This operation, as the lock records it.
    pub holder: Holder,
    /// End whoever holds a lock and take it.
    pub force: bool,
}

impl LockRequest {
    /// `operation` of `cluster`, by this process of this machine's user, starting now.
    pub fn here(operation: Operation, cluster: &str, force: bool) -> LockRequest {
        let user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            // SAFETY: getuid cannot fail.
            .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let holder = Holder {
            host: host_name(),
            machine: machine_id(),
            user,
            pid: std::process::id(),
            operation,
            cluster: cluster.into(),
            started,
        };
        LockRequest { holder, force }
    }
}

/// This machine's id (`/etc/machine-id`); empty when it has none.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether `holder` is an operation started on this machine whose process is gone: its lock
/// agent may not know yet (a link cut mid-run leaves the agent waiting for beats), but nothing
/// will ever beat again. A process that still exists, whatever it now is, counts as alive.
fn ended_here(holder: &Holder) -> bool {
    let here = machine_id();
    if here.is_empty() || holder.machine != here || holder.pid == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(holder.pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    !exists
}

/// This machine's host name; empty when it has none.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Another operation holds a host.
#[derive(Debug, thiserror::Error)]
#[error("{host} is locked by {holder}; wait for it, or if it is gone use --force-unlock")]
pub struct Refused {
    /// The host.
    pub host: String,
    /// Who holds it.
    pub holder: Holder,
}

/// The warning for a lock taken over on `host`.
pub fn takeover_warning(host: &str, from: Option<&Holder>, why: &Takeover) -> String {
    let whose = match from {
        Some(h) => format!("the lock of {h}"),
        None => "a lock whose holder is unknown".into(),
    };
    let because = match why {
        Takeover::Gone => "it had ended without giving the lock back".to_string(),
        Takeover::Stale { silent_secs } => {
            format!("its operator had been silent for {silent_secs} s, so its agent was ended")
        }
        Takeover::Unreadable { cause } => format!("its record could not be read ({cause}), so it was taken as stale"),
        Takeover::Forced => "--force-unlock ended it".into(),
    };
    format!("warning: {host}: took over {whose}: {because}")
}

/// One host's lock, held by its agent session while this lives.
pub struct HostLock {
    addr: String,
    release: Option<tokio::sync::oneshot::Sender<()>>,
    session: Option<tokio::task::JoinHandle<Held>>,
}

/// How a lock session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Held to the end and given back.
    ToTheEnd,
    /// The agent went before it was told to release: ended by another operation's takeover
    /// (`--force-unlock`), or its session broke.
    Lost,
}

impl HostLock {
    /// The host.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Gives the lock back and waits (a bounded time) for the agent to let go; false when the
    /// lock had been lost before.
    pub async fn release(mut self) -> bool {
        self.release.take();
        match self.session.take() {
            Some(session) => !matches!(tokio::time::timeout(RELEASE_TIMEOUT, session).await, Ok(Ok(Held::Lost))),
            None => true,
        }
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Dropping the sender tells the session to release; it finishes on its own.
        self.release.take();
    }
}

/// Takes `h`'s lock for `req` with the agent at `program`. A refusal is a [`Refused`] error; a
/// takeover is reported on `rep` as a warning. A lock held for an operation of this machine
/// whose process has ended is taken over at once, with a warning.
pub async fn take<H: RemoteHost>(h: &H, program: &str, req: &LockRequest, rep: &Reporter) -> Result<HostLock> {
    let err = match take_once(h, program, req, rep).await {
        Ok(lock) => return Ok(lock),
        Err(err) => err,
    };
    let holder = match err.downcast_ref::<Refused>() {
        Some(refused) if !req.force && ended_here(&refused.holder) => refused.holder.clone(),
        _ => return Err(err),
    };
    let text = format!(
        "warning: {}: the lock is held for {holder}, whose process has ended on this machine: taking it over",
        h.addr()
    );
    rep.line("warning", &text, serde_json::json!({"host": h.addr(), "lock": "ended-here", "from": holder}));
    take_once(h, program, &LockRequest { force: true, ..req.clone() }, rep).await
}

async fn take_once<H: RemoteHost>(h: &H, program: &str, req: &LockRequest, rep: &Reporter) -> Result<HostLock> {
    let call = Call::Lock { holder: req.holder.clone(), force_unlock: req.force };
    let Exec { stdin, stdout, finished } = h.call(program, &call).await.context("starting agent lock")?;
    let mut reader = BufReader::new(stdout);
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_answer(&mut reader, h.addr())).await;
    let answer = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            let (status, stderr) = tokio::time::timeout(Duration::from_secs(5), finished)
                .await
                .map(|r| r.unwrap_or((255, Vec::new())))
                .unwrap_or((255, Vec::new()));
            if status != 0 && !stderr.is_empty() {
                bail!("agent lock exited with status {status}: {}", stderr_tail(&stderr));
            }
            return Err(e);
        }
        Err(_) => bail!("agent lock did not answer within {} s", ANSWER_TIMEOUT.as_secs()),
    };
    match answer {
        LockAnswer::Acquired => {}
        LockAnswer::Refused { holder } => return Err(Refused { host: h.addr().to_string(), holder }.into()),
        LockAnswer::TookOver { from, why } => {
            let text = takeover_warning(h.addr(), from.as_ref(), &why);
            rep.line("warning", &text, serde_json::json!({"host": h.addr(), "lock": "took-over", "from": from}));
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let session = tokio::spawn(hold(stdin, reader, finished, rx));
    Ok(HostLock { addr: h.addr().to_string(), release: Some(tx), session: Some(session) })
}

/// The agent's hello and its one answer line.
async fn read_answer<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, host: &str) -> Result<LockAnswer> {
    read_hello(r, host).await?;
    let mut line = String::new();
    r.read_line(&mut line).await.context("reading the lock's answer")?;
    if line.is_empty() {
        bail!("the agent ended without answering");
    }
    Ok(decode("the lock's answer", line.as_bytes())?)
}

/// Beats on the session until told to release (or dropped), then says so, closes the agent's
/// stdin and waits for it to exit. An agent that exits first, or a session that breaks, is the
/// lock lost: there is nothing left to release.
async fn hold(
    mut stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    stdout: impl Send + 'static,
    mut finished: tokio::sync::oneshot::Receiver<(u32, Vec<u8>)>,
    mut release: tokio::sync::oneshot::Receiver<()>,
) -> Held {
    let mut beats = tokio::time::interval(BEAT_INTERVAL);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut release => break,
            _ = &mut finished => return Held::Lost,
            _ = beats.tick() => {
                if stdin.write_all(format!("{BEAT}\n").as_bytes()).await.is_err() {
                    return Held::Lost;
                }
            }
        }
    }
    let _ = stdin.write_all(format!("{RELEASE}\n").as_bytes()).await;
    let _ = stdin.shutdown().await;
    drop(stdout);
    let _ = finished.await;
    Held::ToTheEnd
}

/// Every lock one operation holds.
#[derive(Default)]
pub struct Locks(Vec<HostLock>);

impl Locks {
    /// Adds a held lock.
    pub fn push(&mut self, lock: HostLock) {
        self.0.push(lock);
    }

    /// The hosts held, in the order taken.
    pub fn hosts(&self) -> Vec<&str> {
        self.0.iter().map(HostLock::addr).collect()
    }

    /// Gives every lock back, waiting for each agent to let go; warns on `rep` of each lock that
    /// was lost while the operation worked.
    pub async fn release(self, rep: &Reporter) {
        let mut set = tokio::task::JoinSet::new();
        for lock in self.0 {
            let addr = lock.addr.clone();
            set.spawn(async move { (addr, lock.release().await) });
        }
        let mut lost = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((addr, false)) = r {
                lost.push(addr);
            }
        }
        lost.sort();
        for addr in lost {
            rep.line(
                "warning",
                &format!("warning: {addr}: this operation's lock was lost before it ended (another operation took it over with --force-unlock, or the session to the host broke)"),
                serde_json::json!({"host": addr, "lock": "lost"}),
            );
        }
    }
}

impl FromIterator<HostLock> for Locks {
    fn from_iter<I: IntoIterator<Item = HostLock>>(iter: I) -> Self {
        Locks(iter.into_iter().collect())
    }
}

/// Takes the lock of each of `hosts` (at most `limit` at once) with the agent at `program`,
/// warning on `ctx`'s reporter: the locks taken, and each host's failure (a [`Refused`] among
/// them) in host order.
pub async fn take_each<H: RemoteHost>(
    ctx: &Arc<Ctx>,
    hosts: &[Arc<H>],
    program: &str,
    req: &LockRequest,
    limit: usize,
) -> (Locks, Vec<(String, anyhow::Error)>) {
    let results = parallel(hosts.len(), limit, |i| {
        let (h, program, req, ctx) = (hosts[i].clone(), program.to_string(), req.clone(), ctx.clone());
        async move { take(h.as_ref(), &program, &req, &ctx.rep).await.map_err(|e| (h.addr().to_string(), e)) }
    })
    .await;
    let mut locks = Locks::default();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(l) => locks.push(l),
            Err(e) => failed.push(e),
        }
    }
    (locks, failed)
}

#[cfg(test)]
#[path = "lock/tests.rs"]
mod tests;
