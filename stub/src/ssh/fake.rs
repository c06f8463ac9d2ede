//! A [`RemoteHost`] that runs nothing: each command is answered by a closure, so orchestration
//! (preflight tables, phase ordering, resume decisions) is unit-tested without hosts.
//!
//! Agent calls reach the fake typed: [`FakeHost::calls`] records them, and a host made
//! [`FakeHost::with_agent`] answers them with a closure that matches on the [`Call`] (use
//! [`agent_answer`] to prefix the hello a real agent prints). Without one, the call's command
//! line goes to the command closure like any other command. A lock call is a session: its
//! answer is sent at once (the closure sees no stdin) and it lasts until its stdin ends.

use super::{Exec, Output, RemoteHost};
use crate::protocol::{Call, Hello, encode_line};
use anyhow::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers a command and its whole stdin.
pub type Responder = Arc<dyn Fn(&str, &[u8]) -> Output + Send + Sync>;

/// Answers an agent call and its whole stdin.
pub type AgentResponder = Arc<dyn Fn(&Call, &[u8]) -> Output + Send + Sync>;

/// A scripted host.
pub struct FakeHost {
    addr: String,
    responder: Responder,
    agent: Option<AgentResponder>,
    sent: Arc<AtomicU64>,
    /// Every command run, in order (agent calls as their command lines).
    pub commands: Arc<Mutex<Vec<String>>>,
    /// Every agent call, in order.
    pub calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeHost {
    /// A host at `addr` answering with `responder`.
    pub fn new(addr: &str, responder: Responder) -> FakeHost {
        FakeHost {
            addr: addr.into(),
            responder,
            agent: None,
            sent: Arc::default(),
            commands: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// This host, answering agent calls with `agent` instead of the command closure.
    pub fn with_agent(mut self, agent: AgentResponder) -> FakeHost {
        self.agent = Some(agent);
        self
    }

    /// Runs `answer` on the command's whole stdin, then sends its output.
    fn start(&self, answer: impl FnOnce(&[u8]) -> Output + Send + 'static) -> Exec {
        self.start_as(false, answer)
    }

    /// As [`FakeHost::start`]; `answers_first`: the answer (given no stdin) is sent at once
    /// and the command then runs until its stdin ends, as a session like `agent lock` does.
    fn start_as(&self, answers_first: bool, answer: impl FnOnce(&[u8]) -> Output + Send + 'static) -> Exec {
        let (stdin_w, mut stdin_r) = tokio::io::duplex(1 << 16);
        let (mut out_w, out_r) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.sent.clone();
        tokio::spawn(async move {
            let mut input = Vec::new();
            let mut answer = Some(answer);
            let early = answers_first.then(|| answer.take().map(|a| a(&[]))).flatten();
            if let Some(out) = &early {
                let _ = out_w.write_all(&out.stdout).await;
            }
            // A session that failed ends at once; one that answered lasts until its stdin ends.
            if early.as_ref().is_none_or(Output::ok) {
                let _ = stdin_r.read_to_end(&mut input).await;
            }
            sent.fetch_add(input.len() as u64, Ordering::Relaxed);
            let out = match (early, answer) {
                (Some(out), _) => Output { stdout: Vec::new(), ..out },
                (None, Some(answer)) => answer(&input),
                (None, None) => Output::default(),
            };
            let _ = out_w.write_all(&out.stdout).await;
            let _ = out_w.shutdown().await;
            let _ = tx.send((out.status, out.stderr));
        });
        Exec { stdin: Box::pin(stdin_w), stdout: Box::pin(out_r), finished: rx }
    }
}

/// What an agent of this build prints for a call answered with `answer` (`None`: no answer
/// line, as registry-service, check-pull and record): its hello, then the answer.
pub fn agent_answer<T: serde::Serialize>(answer: Option<&T>) -> Output {
    let mut stdout = Hello::ours().line().into_bytes();
    if let Some(a) = answer {
        stdout.extend_from_slice(encode_line(a).as_bytes());
    }
    Output { status: 0, stdout, stderr: Vec::new() }
}

impl RemoteHost for FakeHost {
    fn addr(&self) -> &str {
        &self.addr
    }

    async fn open(&self, cmd: &str) -> Result<Exec> {
        self.commands.lock().unwrap_or_else(|e| e.into_inner()).push(cmd.to_string());
        let (responder, cmd) = (self.responder.clone(), cmd.to_string());
        Ok(self.start(move |input| responder(&cmd, input)))
    }

    async fn call(&self, program: &str, call: &Call) -> Result<Exec> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(call.clone());
        let (line, session) = (call.command_line(program), matches!(call, Call::Lock { .. }));
        self.commands.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
        let Some(agent) = self.agent.clone() else {
            let responder = self.responder.clone();
            return Ok(self.start_as(session, move |input| responder(&line, input)));
        };
        let call = call.clone();
        Ok(self.start_as(session, move |input| agent(&call, input)))
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Facts, PrepareReport};

    /// A fake agent answers typed calls; the operator's calls read its answers.
    #[tokio::test(flavor = "current_thread")]
    async fn agent_calls_arrive_typed() {
        let agent: AgentResponder = Arc::new(|call, stdin| match call {
            Call::Facts { tools } => agent_answer(Some(&Facts { tools_missing: tools.clone(), ..Default::default() })),
            Call::Prepare => {
                let plan: crate::protocol::PreparePlan = serde_json::from_slice(stdin).unwrap();
                agent_answer(Some(&PrepareReport { changed: plan.registry_endpoints, warnings: vec![] }))
            }
            _ => agent_answer::<()>(None),
        });
        let h = FakeHost::new("h", Arc::new(|_, _| Output::default())).with_agent(agent);
        let f = crate::ssh::agent::facts(&h, "/a", &["x".into()]).await.unwrap();
        assert_eq!(f.tools_missing, ["x"]);
        let plan = crate::protocol::PreparePlan { registry_endpoints: vec!["e".into()], ..Default::default() };
        let r = crate::ssh::agent::prepare(&h, "/i", &plan).await.unwrap();
        assert_eq!(r.changed, ["e"]);
        let call = Call::RegistryService { port: 5000, allow_unsigned: false };
        crate::ssh::agent::run(&h, "/i", &call, &()).await.unwrap();
        let calls = h.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[2], call);
    }
}
