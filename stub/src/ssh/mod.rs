//! Remote command execution for `installer run`.
//!
//! Owns: the [`RemoteHost`] trait (run a command as root on one host, either collecting its
//! output or as a duplex byte stream), the real implementation over russh ([`client`]), an
//! in-memory fake for unit tests ([`fake`]), a host connected only when first used
//! ([`on_demand`]), typed agent calls over it ([`agent`]), what can go wrong reaching a host
//! ([`SshError`]), and the secrets (passwords, passphrases) that authentication needs.
//! Orchestration code only sees the trait, so it is testable without hosts.
//!
//! Every command runs as root: directly for root logins, through `sudo` otherwise. A sudo
//! password travels on the command's stdin (`sudo -S -p ''`), never on a command line.

pub mod agent;
pub mod client;
pub mod error;
pub mod fake;
pub mod on_demand;

pub use crate::protocol::quote;
pub use error::SshError;

use crate::protocol::Call;
use anyhow::Result;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The collected result of one command.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Exit status (255 when the command died without one, e.g. by a signal or a lost link).
    pub status: u32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error (its last 64 KiB).
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether the command exited 0.
    pub fn ok(&self) -> bool {
        self.status == 0
    }
    /// stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// The last `n` lines of stderr (or of stdout when stderr is empty), for error messages.
    pub fn tail(&self, n: usize) -> String {
        let src = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) { &self.stderr } else { &self.stdout };
        tail_lines(&String::from_utf8_lossy(src), n)
    }
}

/// The last `n` non-empty lines of `text`, joined with ` | ` so they fit on one error line.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A running command with its stdin and stdout as byte streams.
pub struct Exec {
    /// The command's stdin; shutting it down sends EOF.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// The command's stdout.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    /// Resolves to (exit status, stderr tail) when the command ends.
    pub finished: tokio::sync::oneshot::Receiver<(u32, Vec<u8>)>,
}

impl Exec {
    /// Waits for the exit status and stderr (255 and nothing if the link died).
    pub async fn wait(self) -> (u32, Vec<u8>) {
        self.finished.await.unwrap_or((255, Vec::new()))
    }
}

/// One host commands can run on, as root.
pub trait RemoteHost: Send + Sync + 'static {
    /// The address, for messages.
    fn addr(&self) -> &str;

    /// Starts `cmd` (a shell command line) as root.
    fn open(&self, cmd: &str) -> impl Future<Output = Result<Exec>> + Send;

    /// Payload bytes sent to this host so far (stdin of every command).
    fn bytes_sent(&self) -> u64;

    /// Starts the agent call `call` with the agent at `program`: the call's command line
    /// ([`Call::command_line`]). In-process test doubles take the typed call instead.
    fn call(&self, program: &str, call: &Call) -> impl Future<Output = Result<Exec>> + Send {
        let line = call.command_line(program);
        async move { self.open(&line).await }
    }

    /// Runs `cmd` as root with `stdin`, collecting its output.
    fn run(&self, cmd: &str, stdin: &[u8]) -> impl Future<Output = Result<Output>> + Send {
        async move { collect(self.open(cmd).await?, stdin).await }
    }
}

/// Feeds `stdin` to a started command and collects its output.
pub async fn collect(exec: Exec, stdin: &[u8]) -> Result<Output> {
    let mut stdout = Vec::new();
    let Exec { stdin: mut writer, stdout: mut reader, finished } = exec;
    let input = stdin.to_vec();
    let write = async move {
        let r = writer.write_all(&input).await;
        let _ = writer.shutdown().await;
        r
    };
    let read = reader.read_to_end(&mut stdout);
    let (_w, r) = tokio::join!(write, read);
    r?;
    let (status, stderr) = finished.await.unwrap_or((255, Vec::new()));
    Ok(Output { status, stdout, stderr })
}

/// A password or passphrase. Never printed (its Debug is `***`), wiped when dropped.
#[derive(Clone, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Secret {
        Secret(s.into_bytes())
    }
    /// The secret as text, only for handing to the SSH library or sudo's stdin.
    pub fn expose(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Secrets for authentication, from the environment, stdin or a prompt. Held in memory only.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// SSH login password (`FERRY_SSH_PASSWORD`, `--ask-password`, `--password-stdin`).
    pub ssh_password: Option<Secret>,
    /// sudo password (`FERRY_SUDO_PASSWORD`, `--ask-sudo-password`); defaults to the SSH password.
    pub sudo_password: Option<Secret>,
    /// Key passphrase (`FERRY_SSH_KEY_PASSPHRASE`, or a prompt on a terminal when needed).
    pub key_passphrase: Option<Secret>,
}

impl Secrets {
    /// The password sudo gets: the sudo password, else the login password.
    pub fn for_sudo(&self) -> Option<&Secret> {
        self.sudo_password.as_ref().or(self.ssh_password.as_ref())
    }
}

/// Reads a secret from the terminal with echo off. Fails when there is no terminal.
pub fn prompt_secret(prompt: &str) -> std::result::Result<Secret, SshError> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|cause| SshError::NoTerminal { prompt: prompt.to_string(), cause })?;
    let fd = tty.as_raw_fd();
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal; termios is a plain struct.
    let have_term = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    let saved = term;
    if have_term {
        term.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    }
    let mut w = &tty;
    let _ = write!(w, "{prompt}: ");
    let _ = w.flush();
    let mut line = String::new();
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    if have_term {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    let _ = writeln!(w);
    r.map_err(|cause| SshError::Prompt { prompt: prompt.to_string(), cause })?;
    Ok(Secret::new(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// An `AsyncWrite` that counts the bytes it passes on.
pub struct Counting<W> {
    inner: W,
    count: Arc<AtomicU64>,
}

impl<W> Counting<W> {
    /// Wraps `inner`, adding every written byte to `count`.
    pub fn new(inner: W, count: Arc<AtomicU64>) -> Self {
        Counting { inner, count }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.count.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secrets { ssh_password: Some(Secret::new("hunter2".into())), ..Default::default() };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.for_sudo().unwrap().expose(), "hunter2");
    }

    #[test]
    fn tails() {
        let o = Output { status: 1, stdout: b"a\nb\n".to_vec(), stderr: b"x\n\ny\nz\n".to_vec() };
        assert_eq!(o.tail(2), "y | z");
    }
}
