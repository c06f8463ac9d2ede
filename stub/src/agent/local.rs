//! An in-process agent for unit tests: a [`RemoteHost`] whose agent calls run [`super::serve`]
//! in this process, on a thread, over a socket pair, exactly as `installer agent` would run
//! them on a node (hello first, then the call), with its state and copy under a directory.
//!
//! Owns: [`LocalAgent`]. Test-only: typed calls only, no shell.

use super::{Node, serve};
use crate::protocol::{BUILD, Call, PROTOCOL_VERSION};
use crate::ssh::{Exec, RemoteHost};
use anyhow::{Result, bail};
use std::io::Write;
use std::path::PathBuf;

/// A host whose agent runs in this process.
pub struct LocalAgent {
    /// Its address (loopback addresses let relay tests give each host its own).
    pub addr: String,
    /// Where its copy of the installer goes (`receive`'s destination is replaced by this).
    pub dest: PathBuf,
    /// Its state directory and program.
    pub node: Node,
    /// The protocol version and build the "operator" says it speaks.
    pub operator: (Option<u32>, Option<String>),
}

impl LocalAgent {
    /// An agent at `addr` keeping everything under `dir`, whose own program is `stub`.
    pub fn new(addr: &str, dir: PathBuf, stub: PathBuf) -> LocalAgent {
        LocalAgent {
            addr: addr.into(),
            dest: dir.join("installer"),
            node: Node {
                state_dir: dir.join("state"),
                self_exe: stub,
                lock: super::lock::LockRules { dir: dir.join("run"), ..super::lock::LockRules::here() },
            },
            operator: (Some(PROTOCOL_VERSION), Some(BUILD.into())),
        }
    }

    /// The directory it keeps everything under.
    pub fn dir(&self) -> PathBuf {
        self.dest.parent().map(PathBuf::from).unwrap_or_default()
    }
}

impl RemoteHost for LocalAgent {
    fn addr(&self) -> &str {
        &self.addr
    }

    async fn open(&self, cmd: &str) -> Result<Exec> {
        bail!("the in-process agent runs typed agent calls only, not `{cmd}`")
    }

    async fn call(&self, _program: &str, call: &Call) -> Result<Exec> {
        let mut call = call.clone();
        if let Call::Receive { dest, .. } = &mut call {
            *dest = self.dest.clone();
        }
        let (node, (protocol, build)) = (self.node.clone(), self.operator.clone());
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let theirs = a.try_clone()?;
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(theirs);
            let mut w = a;
            let (status, stderr) = match serve(protocol, build.as_deref(), &call, &mut r, &mut w, &node) {
                Ok(()) => (0, Vec::new()),
                Err(e) => (1, format!("{e:#}\n").into_bytes()),
            };
            let _ = w.flush();
            drop(w);
            drop(r);
            let _ = tx.send((status, stderr));
        });
        b.set_nonblocking(true)?;
        let (out, stdin) = tokio::net::UnixStream::from_std(b)?.into_split();
        Ok(Exec { stdin: Box::pin(stdin), stdout: Box::pin(out), finished: rx })
    }

    fn bytes_sent(&self) -> u64 {
        0
    }
}
