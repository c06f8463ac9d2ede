//! A [`RemoteHost`] that runs nothing: each command is answered by a closure, so orchestration
//! (preflight tables, phase ordering, resume decisions) is unit-tested without hosts.

use super::{Exec, Output, RemoteHost};
use anyhow::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers a command and its whole stdin.
pub type Responder = Arc<dyn Fn(&str, &[u8]) -> Output + Send + Sync>;

/// A scripted host.
pub struct FakeHost {
    addr: String,
    responder: Responder,
    sent: Arc<AtomicU64>,
    /// Every command run, in order.
    pub commands: Arc<Mutex<Vec<String>>>,
}

impl FakeHost {
    /// A host at `addr` answering with `responder`.
    pub fn new(addr: &str, responder: Responder) -> FakeHost {
        FakeHost { addr: addr.into(), responder, sent: Arc::default(), commands: Arc::default() }
    }
}

impl RemoteHost for FakeHost {
    fn addr(&self) -> &str {
        &self.addr
    }

    async fn open(&self, cmd: &str) -> Result<Exec> {
        self.commands.lock().unwrap().push(cmd.to_string());
        let (stdin_w, mut stdin_r) = tokio::io::duplex(1 << 16);
        let (mut out_w, out_r) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let responder = self.responder.clone();
        let sent = self.sent.clone();
        let cmd = cmd.to_string();
        tokio::spawn(async move {
            let mut input = Vec::new();
            let _ = stdin_r.read_to_end(&mut input).await;
            sent.fetch_add(input.len() as u64, Ordering::Relaxed);
            let out = responder(&cmd, &input);
            let _ = out_w.write_all(&out.stdout).await;
            let _ = out_w.shutdown().await;
            let _ = tx.send((out.status, out.stderr));
        });
        Ok(Exec { stdin: Box::pin(stdin_w), stdout: Box::pin(out_r), finished: rx })
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}
