//! Agent calls, operator side: runs a typed [`Call`] on a [`RemoteHost`], checks the agent's
//! hello (its protocol version) before anything else, and reads its answer as the protocol type.
//!
//! Owns: the operator's half of every one-shot call (facts, state, prepare, registry-service,
//! check-pull, record) and the hello check of streamed sessions ([`read_hello`]). An answer that
//! does not read as the protocol is an error naming the host and what was wrong, never dropped.

use super::{Output, RemoteHost, collect, tail_lines};
use crate::protocol::report::State;
use crate::protocol::{
    Call, Facts, Hello, PreparePlan, PrepareReport, VersionError, check_agent, decode, split_first_line,
};
use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// How a call is named in messages.
fn what(call: &Call) -> String {
    match call {
        Call::Record { .. } => "recording the phase".into(),
        c => format!("agent {}", c.name()),
    }
}

/// Checks a collected answer's hello and exit status; returns what followed the hello.
fn checked(host: &str, call: &Call, out: &Output) -> Result<Vec<u8>> {
    let (first, rest) = split_first_line(&out.stdout);
    match check_agent(host, first) {
        Ok(_) => {}
        // A program that printed nothing and failed may simply not have started (not found,
        // killed): that is its exit status's story, unless it failed on the version flags,
        // which an agent from before protocol versions does not know.
        Err(VersionError::AgentUnversioned { .. }) if first.is_none() && !out.ok() => {
            let said = out.tail(2);
            if said.contains("--protocol") {
                check_agent(host, Some(&said))?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    if !out.ok() {
        bail!("{} exited with status {}: {}", what(call), out.status, out.tail(4));
    }
    Ok(rest.to_vec())
}

/// Runs `call` with the agent at `program` on `h`, with `stdin`; returns its answer (what
/// followed its hello), once the hello and the exit status are checked.
pub async fn call<H: RemoteHost>(h: &H, program: &str, call: &Call, stdin: &[u8]) -> Result<Vec<u8>> {
    let exec = h.call(program, call).await.with_context(|| format!("running {}", what(call)))?;
    let out = collect(exec, stdin).await.with_context(|| format!("running {}", what(call)))?;
    checked(h.addr(), call, &out)
}

/// Runs `call` and reads its answer as `T`, named `answer` in messages.
async fn ask<H: RemoteHost, T: DeserializeOwned>(
    h: &H,
    program: &str,
    c: &Call,
    stdin: &[u8],
    answer: &'static str,
) -> Result<T> {
    let body = call(h, program, c, stdin).await?;
    decode(answer, &body).with_context(|| format!("reading the answer of {} on {}", what(c), h.addr()))
}

/// The host's facts (`agent facts`), looking for `tools` on its PATH.
pub async fn facts<H: RemoteHost>(h: &H, program: &str, tools: &[String]) -> Result<Facts> {
    ask(h, program, &Call::Facts { tools: tools.to_vec() }, b"", "the agent's facts").await
}

/// The host's records of `cluster` (`agent state`).
pub async fn state<H: RemoteHost>(h: &H, program: &str, cluster: &str) -> Result<State> {
    ask(h, program, &Call::State { cluster: cluster.to_string() }, b"", "the agent's state").await
}

/// Waits until the API answers ready through the host's own load balancer on `port`.
pub async fn api_ready<H: RemoteHost>(h: &H, program: &str, port: u16, timeout: u64) -> Result<()> {
    call(h, program, &Call::ApiReady { port, timeout }, b"").await.map(|_| ())
}

/// Prepares the host by `plan` (`agent prepare`); its report.
pub async fn prepare<H: RemoteHost>(h: &H, program: &str, plan: &PreparePlan) -> Result<PrepareReport> {
    let plan = serde_json::to_vec(plan).context("writing the prepare plan")?;
    ask(h, program, &Call::Prepare, &plan, "the prepare report").await
}

/// Records a completed phase on the host (`agent record`): `phase` of `cluster`, done by the
/// installer `installer` (its trailer id), with `detail`.
pub async fn record<H: RemoteHost>(
    h: &H,
    program: &str,
    cluster: &str,
    phase: &str,
    installer: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    let c = Call::Record { cluster: cluster.into(), phase: phase.into(), installer: installer.into() };
    call(h, program, &c, detail.to_string().as_bytes()).await.map(|_| ())
}

/// Runs a call that answers nothing but its exit status (registry-service, check-pull), with
/// `input` as its stdin: the registry's serving material or pull access, secrets that travel
/// only this way, never on the command line.
pub async fn run<H: RemoteHost, T: serde::Serialize>(h: &H, program: &str, call: &Call, input: &T) -> Result<()> {
    let stdin = serde_json::to_vec(input).with_context(|| format!("writing the input of {}", what(call)))?;
    self::call(h, program, call, &stdin).await.map(|_| ())
}

/// Reads the hello that starts a streamed session (`agent receive`) from the agent on `host`.
pub async fn read_hello<R: AsyncBufRead + Unpin>(r: &mut R, host: &str) -> Result<Hello> {
    let mut line = String::new();
    r.read_line(&mut line).await.context("reading from the agent")?;
    if line.is_empty() {
        bail!("the connection closed before the agent answered (host unreachable, or the agent could not start)");
    }
    Ok(check_agent(host, Some(line.trim_end()))?)
}

/// The last lines of a failed session's stderr, for its error.
pub fn stderr_tail(stderr: &[u8]) -> String {
    tail_lines(&String::from_utf8_lossy(stderr), 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{BUILD, PROTOCOL_VERSION};
    use crate::ssh::fake::FakeHost;
    use std::sync::Arc;

    fn host(answer: impl Fn(&str, &[u8]) -> Output + Send + Sync + 'static) -> FakeHost {
        FakeHost::new("10.0.0.7", Arc::new(answer))
    }

    fn out(status: u32, stdout: &str, stderr: &str) -> Output {
        Output { status, stdout: stdout.as_bytes().to_vec(), stderr: stderr.as_bytes().to_vec() }
    }

    /// A new operator meets an agent of another protocol version: it stops with both versions,
    /// even though that agent also exited non-zero (it refused this operator in turn).
    #[tokio::test(flavor = "current_thread")]
    async fn an_agent_of_another_version_stops_the_call() {
        let h = host(|_, _| out(1, "{\"protocol\":99,\"build\":\"9.0.0\"}\n", "this agent speaks ferry protocol 99"));
        let err = facts(&h, "/a", &[]).await.unwrap_err().to_string();
        assert!(err.contains("agent on 10.0.0.7 speaks ferry protocol 99 (ferry 9.0.0)"), "{err}");
        assert!(err.contains(&format!("this installer speaks {PROTOCOL_VERSION} (ferry {BUILD})")), "{err}");
        // The operator said its own version on the command line.
        let cmd = h.commands.lock().unwrap()[0].clone();
        assert!(cmd.contains(&format!("agent --protocol {PROTOCOL_VERSION} --build {BUILD} facts")), "{cmd}");
    }

    /// An agent from before protocol versions: clap refuses the flag, or (had it ignored it)
    /// its answer comes without a hello. Either way the message names the versions, not a parse.
    #[tokio::test(flavor = "current_thread")]
    async fn an_agent_from_before_versions_stops_the_call() {
        let h = host(|_, _| out(2, "", "error: unexpected argument '--protocol' found\n\nUsage: installer agent"));
        let err = facts(&h, "/a", &[]).await.unwrap_err().to_string();
        assert!(err.contains("did not say which ferry protocol it speaks"), "{err}");
        assert!(err.contains("unexpected argument '--protocol'"), "{err}");
        let h = host(|_, _| out(0, "{\"hostname\":\"old\"}\n", ""));
        let err = facts(&h, "/a", &[]).await.unwrap_err().to_string();
        assert!(err.contains("did not say which ferry protocol it speaks"), "{err}");
        // A program that never started is reported as before.
        let h = host(|_, _| out(127, "", "sh: /a: not found"));
        let err = facts(&h, "/a", &[]).await.unwrap_err().to_string();
        assert_eq!(err, "agent facts exited with status 127: sh: /a: not found");
    }

    /// A report that does not parse is an error naming the host and the cause.
    #[tokio::test(flavor = "current_thread")]
    async fn a_report_that_does_not_parse_names_host_and_cause() {
        let hello = Hello::ours().line();
        let h = host(move |_, _| out(0, &format!("{hello}{{\"changed\":5}}\n"), ""));
        let err = prepare(&h, "/i", &PreparePlan::default()).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("reading the answer of agent prepare on 10.0.0.7"), "{msg}");
        assert!(msg.contains("the prepare report does not read as the ferry protocol"), "{msg}");
    }
}
