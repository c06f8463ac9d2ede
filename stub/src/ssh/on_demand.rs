//! A [`RemoteHost`] that connects the first time a command needs it.
//!
//! Owns deferred connection. A teardown names every host of a cluster to its phases, but
//! touches only some of them (the hosts going, and one master that stays); connecting to the
//! rest would make a host that is down, and not involved, fail the whole command. A connection
//! that fails is not remembered, so the error belongs to the phase that needed the host.

use super::{Exec, RemoteHost};
use crate::protocol::Call;
use anyhow::Result;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Makes the connection: called at most once per successful connection.
pub type Connector<H> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<H>>> + Send>> + Send + Sync>;

/// A host reached only when a command first runs on it.
pub struct OnDemand<H> {
    addr: String,
    connect: Connector<H>,
    session: tokio::sync::OnceCell<Arc<H>>,
}

impl<H: RemoteHost> OnDemand<H> {
    /// The host at `addr`, reached through `connect` when first needed.
    pub fn new(addr: &str, connect: Connector<H>) -> OnDemand<H> {
        OnDemand { addr: addr.to_string(), connect, session: tokio::sync::OnceCell::new() }
    }

    /// Whether a command has reached the host yet.
    #[cfg(test)]
    fn connected(&self) -> bool {
        self.session.initialized()
    }

    async fn session(&self) -> Result<&Arc<H>> {
        self.session.get_or_try_init(|| (self.connect)()).await
    }
}

impl<H: RemoteHost> RemoteHost for OnDemand<H> {
    fn addr(&self) -> &str {
        &self.addr
    }

    async fn open(&self, cmd: &str) -> Result<Exec> {
        self.session().await?.open(cmd).await
    }

    async fn call(&self, program: &str, call: &Call) -> Result<Exec> {
        self.session().await?.call(program, call).await
    }

    fn bytes_sent(&self) -> u64 {
        self.session.get().map_or(0, |h| h.bytes_sent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::Output;
    use crate::ssh::fake::FakeHost;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(fails: usize) -> (OnDemand<FakeHost>, Arc<AtomicUsize>) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let seen = attempts.clone();
        let connect: Connector<FakeHost> = Box::new(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n < fails {
                    anyhow::bail!("10.0.0.9: connecting: no route to host");
                }
                Ok(Arc::new(FakeHost::new(
                    "10.0.0.9",
                    Arc::new(|cmd: &str, _: &[u8]| Output { stdout: cmd.as_bytes().to_vec(), ..Output::default() }),
                )))
            })
        });
        (OnDemand::new("10.0.0.9", connect), attempts)
    }

    #[tokio::test]
    async fn connects_once_on_first_use_and_never_before() {
        let (h, attempts) = counting(0);
        assert!(!h.connected());
        assert_eq!(attempts.load(Ordering::SeqCst), 0, "nothing connects before a command");
        assert_eq!(h.run("echo one", b"").await.unwrap().text(), "echo one");
        assert_eq!(h.run("echo two", b"").await.unwrap().text(), "echo two");
        assert!(h.connected());
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "one connection serves every command");
    }

    #[tokio::test]
    async fn a_failed_connection_is_the_commands_error_and_is_tried_again() {
        let (h, attempts) = counting(1);
        let err = h.run("true", b"").await.unwrap_err();
        assert_eq!(format!("{err:#}"), "10.0.0.9: connecting: no route to host");
        assert_eq!(h.bytes_sent(), 0);
        assert!(h.run("true", b"").await.is_ok(), "the next command connects again");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}
