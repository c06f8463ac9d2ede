//! Relay distribution, operator side: who feeds whom, and one host's distribution session.
//!
//! The operator streams the installer into the head of each chain itself; every other host
//! pulls from the host before it in its chain, which passes chunks on as they land (see
//! `agent::relay`), so the operator's uplink carries each byte about once per chain instead of
//! once per host. Chains are ordered by how much each host wants (registry hosts take the whole
//! installer, the others a subset), so a host's upstream always holds a superset of what it
//! needs. When a relay fails, the hosts that pulled from it are sent to its own upstream, and so
//! on up to the operator; they keep every chunk they already landed, so nothing restarts.

use super::distribute::{self, read_answer, read_line};
use super::{AGENT_PATH, Ctx, INSTALLER_PATH};
use crate::protocol::Call;
use crate::protocol::access::RelayIdentity;
use crate::protocol::receive::{END, Event, encode_pull};
use crate::protocol::relay::{Secret, Upstream, token};
use crate::registry::pki::ClusterCa;
use crate::ssh::RemoteHost;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Plans the chains: for each host (by index), the host it pulls from, or `None` for the
/// operator. `wants[i]` is host i's chunk list. `holders[i]` marks a host that already holds
/// its chunks (delivered by an earlier run): it needs nothing, but may head a chain, so a `join`
/// or a resumed run is fed from inside the site instead of through the operator's uplink. At
/// most `chains` chains are started, unless a host wants something no chain's tail holds.
/// `chains == 0` turns relaying off.
pub fn plan(wants: &[Vec<u64>], holders: &[bool], chains: usize) -> Vec<Option<usize>> {
    let mut parent = vec![None; wants.len()];
    if chains == 0 {
        return parent;
    }
    let sets: Vec<BTreeSet<u64>> = wants.iter().map(|w| w.iter().copied().collect()).collect();
    let mut order: Vec<usize> = (0..wants.len()).filter(|&i| !holders[i] && !sets[i].is_empty()).collect();
    // Biggest first (stable, so the cluster file's order decides among equals).
    order.sort_by_key(|&i| std::cmp::Reverse(sets[i].len()));
    let mut free_holders: Vec<usize> = (0..wants.len()).filter(|&i| holders[i]).collect();
    // (tail, length) of each chain.
    let mut tails: Vec<(usize, usize)> = Vec::new();
    for i in order {
        let covers = |t: usize| sets[i].is_subset(&sets[t]);
        if tails.len() < chains || !tails.iter().any(|&(t, _)| covers(t)) {
            // A new chain, headed by a holder when one has what this host wants: the one holding
            // least, whose copy is quickest to re-check before it serves.
            let best =
                free_holders.iter().enumerate().filter(|&(_, &h)| covers(h)).min_by_key(|&(_, &h)| sets[h].len());
            if let Some((k, _)) = best {
                parent[i] = Some(free_holders.remove(k));
            }
            tails.push((i, 1));
            continue;
        }
        // The shortest chain whose tail holds everything this host wants.
        let (slot, _) =
            tails.iter().enumerate().filter(|(_, (t, _))| covers(*t)).min_by_key(|(_, (_, len))| *len).unwrap();
        parent[i] = Some(tails[slot].0);
        tails[slot] = (i, tails[slot].1 + 1);
    }
    parent
}

/// A session stopped because another found the installer damaged.
#[derive(Debug, thiserror::Error)]
#[error("stopped: {0}")]
struct Stopped(String);

/// A relay listener's state, as its host's session learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Pending,
    Ready(u16),
    Gone,
}

/// What the sessions of one distribution phase share.
pub struct Board {
    parent: Vec<Option<usize>>,
    addrs: Vec<String>,
    secrets: Vec<Secret>,
    /// Each relaying host's TLS identity, and the CA downstream hosts check it against; `None`
    /// relays in plain TCP (no CA given).
    identities: Vec<Option<RelayIdentity>>,
    ca_pem: Option<String>,
    /// Each host's listener; `Gone` also for one no longer used as a source (its session
    /// failed, or a host pulling from it lost it).
    ports: Vec<watch::Sender<Port>>,
    /// Sessions that ended, done or failed; a relay keeps serving until all have.
    ended: watch::Sender<usize>,
    /// Why every session stops now (the operator's own copy is damaged): no host can finish,
    /// so none waits for a peer that never will.
    stop: watch::Sender<Option<String>>,
}

impl Board {
    /// A board for hosts at `addrs` (the addresses hosts reach each other by) and the plan; with
    /// the cluster CA, every host some other pulls from gets a certificate for its address for
    /// this distribution, and relays speak TLS.
    pub fn new(addrs: Vec<String>, parent: Vec<Option<usize>>, ca: Option<&ClusterCa>) -> Result<Board> {
        let n = addrs.len();
        let mut secrets = vec![[0u8; 32]; n];
        for s in &mut secrets {
            getrandom::fill(s).map_err(|e| anyhow!("reading the OS's randomness: {e}"))?;
        }
        let mut identities = vec![None; n];
        if let Some(ca) = ca {
            for j in parent.iter().flatten() {
                if identities[*j].is_none() {
                    let id = ca
                        .relay_identity(&addrs[*j])
                        .with_context(|| format!("issuing {}'s relay certificate", addrs[*j]))?;
                    identities[*j] = Some(id);
                }
            }
        }
        Ok(Board {
            parent,
            addrs,
            secrets,
            identities,
            ca_pem: ca.map(|ca| ca.cert_pem().to_string()),
            ports: (0..n).map(|_| watch::channel(Port::Pending).0).collect(),
            ended: watch::channel(0).0,
            stop: watch::channel(None).0,
        })
    }

    /// The host `i` pulls from, by plan.
    pub fn parent(&self, i: usize) -> Option<usize> {
        self.parent[i]
    }

    /// Host `i` has no session this time (already delivered): never a source, and ended.
    pub fn skip(&self, i: usize) {
        drop(Ending { board: self, i, done: false });
    }

    /// Stops every session of the board, saying `why`.
    fn stop_all(&self, why: String) {
        self.stop.send_if_modified(|s| s.is_none() && s.replace(why).is_none());
    }

    /// Resolves when the board is stopped, with the reason.
    async fn stopped(&self) -> String {
        let mut rx = self.stop.subscribe();
        let why = rx.wait_for(Option::is_some).await.ok().and_then(|w| w.clone());
        match why {
            Some(why) => why,
            // The board outlives its sessions; a dropped sender never happens while one waits.
            None => std::future::pending().await,
        }
    }

    fn avoid(&self, i: usize) {
        self.ports[i].send_replace(Port::Gone);
    }

    /// The nearest working source for host `i`, starting at `from` and going up its chain, with
    /// its index; `None` is the operator.
    async fn source(&self, i: usize, mut from: Option<usize>) -> Option<(usize, Upstream)> {
        while let Some(j) = from {
            let mut rx = self.ports[j].subscribe();
            let port = match rx.wait_for(|p| *p != Port::Pending).await {
                Ok(p) => *p,
                Err(_) => Port::Gone,
            };
            if let Port::Ready(port) = port {
                let up = Upstream {
                    addr: self.addrs[j].clone(),
                    port,
                    name: self.addrs[i].clone(),
                    token: hex::encode(token(&self.secrets[j], &self.addrs[i])),
                    ca_pem: self.identities[j].as_ref().and(self.ca_pem.clone()),
                };
                return Some((j, up));
            }
            from = self.parent[j];
        }
        None
    }
}

/// Counts the session as ended however it leaves (done, error, timeout, cancel); one that did
/// not finish is no longer offered as a source.
struct Ending<'a> {
    board: &'a Board,
    i: usize,
    done: bool,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.board.avoid(self.i);
        }
        self.board.ended.send_modify(|n| *n += 1);
    }
}

/// What one host's session did.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Bytes the operator sent it.
    pub from_operator: u64,
    /// Bytes it pulled from relays.
    pub from_relays: u64,
}

/// Distribution to host `i` of the board: its own agent session, fed by the operator or by its
/// upstream relay; when it is done it stays open (serving downstream hosts) until every session
/// of the board has ended. `want` is what the host needs.
pub async fn session<H: RemoteHost>(ctx: &Ctx, h: &H, i: usize, want: &[u64], board: &Board) -> Result<Delivered> {
    let mut ending = Ending { board, i, done: false };
    let total = distribute::chunk_bytes(&ctx.payload, want);
    let relaying = board.parent.iter().any(|p| p.is_some());
    // A host named rather than numbered listens on every address; its token still guards it.
    let bind = || board.addrs[i].parse::<std::net::IpAddr>().unwrap_or(std::net::IpAddr::from([0u8, 0, 0, 0]));
    let call = Call::Receive {
        dest: INSTALLER_PATH.into(),
        signer: ctx.signer.clone(),
        allow_unsigned: ctx.allow_unsigned,
        relay_listen: relaying.then(bind),
    };
    let exec = h.call(AGENT_PATH, &call).await.context("starting agent receive")?;
    let crate::ssh::Exec { mut stdin, stdout, finished } = exec;
    let mut reader = tokio::io::BufReader::new(stdout);
    let active = async {
        // The agent greets first; one of another protocol version is not sent a byte.
        crate::ssh::agent::read_hello(&mut reader, h.addr()).await?;
        let secret = relaying.then_some(&board.secrets[i]);
        let identity = board.identities[i].as_ref().filter(|_| relaying);
        stdin.write_all(&distribute::header(&ctx.payload, want, secret, identity)?).await?;
        stdin.flush().await?;
        let answer = read_answer(&mut reader, want).await?;
        board.ports[i].send_replace(answer.relay_port.map(Port::Ready).unwrap_or(Port::Gone));
        feed(ctx, h.addr(), i, board, answer.missing, total, &mut reader, &mut stdin).await
    };
    let timed =
        async { tokio::time::timeout(ctx.phase_timeout, active).await.unwrap_or_else(|_| Err(anyhow!("timed out"))) };
    let result = tokio::select! {
        r = timed => r.inspect_err(|err| {
            if err.downcast_ref::<distribute::DamagedSource>().is_some() {
                board.stop_all(format!("this installer is damaged (found while sending to {}); run `./installer verify`", h.addr()));
            }
        }),
        why = board.stopped() => Err(Stopped(why).into()),
    };
    let delivered = match result {
        Ok(d) => d,
        Err(err) => {
            drop(ending);
            // EOF ends the agent, and with it any relay listener it runs, so the hosts pulling
            // from it learn at once that it is gone instead of waiting for chunks that never land.
            let _ = tokio::time::timeout(Duration::from_secs(2), stdin.shutdown()).await;
            drop(stdin);
            let (_, stderr) = tokio::time::timeout(Duration::from_secs(2), finished)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            // The agent's last words matter when it failed; after this side stopped it, they only
            // say that its stream was cut.
            let ours =
                err.downcast_ref::<distribute::DamagedSource>().is_some() || err.downcast_ref::<Stopped>().is_some();
            let tail = crate::ssh::agent::stderr_tail(&stderr);
            return if tail.is_empty() || ours { Err(err) } else { Err(err.context(format!("last output: {tail}"))) };
        }
    };
    // Done: serve downstream hosts until every session has ended.
    ending.done = true;
    drop(ending);
    if board.parent.contains(&Some(i)) {
        ctx.rep.event(
            h.addr(),
            "distribute",
            "progress",
            "complete; relaying to the hosts behind it",
            detail(Detail::Complete { complete: true }),
        );
    }
    let mut ended = board.ended.subscribe();
    let n = board.addrs.len();
    let _ = ended.wait_for(|e| *e >= n).await;
    let _ = stdin.shutdown().await;
    drop(stdin);
    let (status, stderr) = finished.await.unwrap_or((255, Vec::new()));
    if status != 0 {
        bail!(
            "agent receive exited with status {status}: {}",
            crate::ssh::tail_lines(&String::from_utf8_lossy(&stderr), 4)
        );
    }
    Ok(delivered)
}

/// Feeds the agent until it holds everything: a pull from its upstream relay, or the chunks
/// themselves; after a lost relay, the next source up the chain with what is still missing.
#[allow(clippy::too_many_arguments)]
async fn feed<R, W>(
    ctx: &Ctx,
    addr: &str,
    i: usize,
    board: &Board,
    mut missing: Vec<u64>,
    total: u64,
    reader: &mut R,
    stdin: &mut W,
) -> Result<Delivered>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut delivered = Delivered::default();
    let have = total - distribute::chunk_bytes(&ctx.payload, &missing);
    let report = Reporting::new(ctx, addr, total, have);
    let mut from = board.parent(i);
    let finish = |line: Event, mut delivered: Delivered| -> Result<Delivered> {
        let got = distribute::check_final(line)?;
        // The agent counts every byte it received; what the operator did not send came by relay.
        delivered.from_relays = got.bytes.saturating_sub(delivered.from_operator);
        Ok(delivered)
    };
    loop {
        let source = if missing.is_empty() { None } else { board.source(i, from).await };
        let Some((j, up)) = source else {
            delivered.from_operator += inline(ctx, &missing, stdin, &report).await?;
            stdin.write_all(&END.to_le_bytes()).await?;
            stdin.flush().await?;
            return finish(read_line(reader).await.context("waiting for the agent to finish")?, delivered);
        };
        ctx.rep.event(
            addr,
            "distribute",
            "progress",
            &format!("pulling from {}", up.addr),
            detail(Detail::Relay { relay: &up.addr }),
        );
        stdin.write_all(&encode_pull(&up)).await?;
        stdin.flush().await?;
        loop {
            // The agent reports at least every keepalive while it pulls; silence is a lost host.
            let line = tokio::time::timeout(ctx.stall, read_line(reader)).await.map_err(|_| {
                anyhow!("no word from the host for {} s: the connection is lost", ctx.stall.as_secs())
            })??;
            match line {
                Event::Progress { progress } => report.set(have + progress),
                Event::Lost { lost: why, missing: still } => {
                    ctx.rep.event(
                        addr,
                        "distribute",
                        "progress",
                        &format!("relay {} lost ({why}); going around it", up.addr),
                        detail(Detail::Lost { lost: &up.addr }),
                    );
                    board.avoid(j);
                    from = board.parent(j);
                    missing = still;
                    break;
                }
                done @ Event::Finished(_) => return finish(done, delivered),
            }
        }
    }
}

/// The machine-readable part of this module's progress events.
#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    /// The host holds everything and relays on.
    Complete { complete: bool },
    /// The host pulls from this relay.
    Relay { relay: &'a str },
    /// The relay it pulled from was lost.
    Lost { lost: &'a str },
    /// Bytes in place of the total.
    Bytes { bytes: u64, total: u64 },
}

fn detail(d: Detail) -> serde_json::Value {
    serde_json::to_value(d).unwrap_or_default()
}

/// Progress events for one host, at most twice a second.
struct Reporting<'a> {
    ctx: &'a Ctx,
    addr: &'a str,
    total: u64,
    done: AtomicU64,
    last: Mutex<Instant>,
}

impl<'a> Reporting<'a> {
    fn new(ctx: &'a Ctx, addr: &'a str, total: u64, have: u64) -> Self {
        Reporting { ctx, addr, total, done: AtomicU64::new(have), last: Mutex::new(Instant::now()) }
    }

    fn add(&self, n: u64) {
        let s = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.show(s);
    }

    fn set(&self, s: u64) {
        self.done.store(s, Ordering::Relaxed);
        self.show(s);
    }

    fn show(&self, s: u64) {
        let mut l = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if l.elapsed() > Duration::from_millis(500) {
            *l = Instant::now();
            self.ctx.rep.event(
                self.addr,
                "distribute",
                "progress",
                &format!("{} / {}", crate::units::bytes(s), crate::units::bytes(self.total)),
                detail(Detail::Bytes { bytes: s, total: self.total }),
            );
        }
    }
}

/// Streams `missing` from the operator's own copy, watching for a link that stops moving.
async fn inline<W: tokio::io::AsyncWrite + Unpin>(
    ctx: &Ctx,
    missing: &[u64],
    stdin: &mut W,
    report: &Reporting<'_>,
) -> Result<u64> {
    // A cut link can leave a write waiting forever for SSH window space that never comes, so
    // the stream is watched: no chunk accepted for `stall` means the host is gone.
    let moved = AtomicU64::new(0);
    let counted = |n: u64| {
        moved.fetch_add(1, Ordering::Relaxed);
        report.add(n)
    };
    let send = distribute::stream_chunks(&ctx.payload, missing, stdin, &counted);
    let watchdog = async {
        let mut seen = u64::MAX;
        loop {
            tokio::time::sleep(ctx.stall).await;
            let now = moved.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    };
    tokio::select! {
        r = send => r,
        () = watchdog => Err(anyhow!("no data moved for {} s: the connection to the host is lost", ctx.stall.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::local::LocalAgent;
    use crate::agent::receive::receive;
    use crate::protocol::receive::{Opening, PULL};
    use crate::protocol::relay::ACCEPTED;
    use payload_format::Payload;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    fn build(dir: &Path) -> PathBuf {
        super::super::distribute::tests::build_sized(dir, 200_000, 100_000)
    }

    fn ctx(dir: &Path, ips: &[&str]) -> Ctx {
        let path = build(dir);
        let cluster = crate::cluster::resolve(
            None,
            &crate::cluster::Overrides { hosts: ips.iter().map(|s| s.to_string()).collect(), ..Default::default() },
        )
        .unwrap();
        Ctx {
            payload: Payload::open(&path).unwrap(),
            id: "test".into(),
            cluster,
            rep: super::super::progress::Reporter::new(false, true, true),
            stub: b"\x7fELF pretend stub".to_vec(),
            stub_sha: String::new(),
            allow_unsigned: true,
            signer: None,
            local_state: dir.join("state"),
            phase_timeout: Duration::from_secs(60),
            force: false,
            stall: Duration::from_secs(20),
            // Relays speak TLS with certificates from this CA, as on a real run.
            registry_ca: Some(crate::run::registry_ca(&dir.join("pki")).unwrap()),
        }
    }

    /// One distribution phase over `agents`, as `run` drives it: `holders` already hold their
    /// copies and open a session only to head a chain.
    async fn deliver(ctx: &Ctx, agents: &[LocalAgent], holders: &[bool], chains: usize) -> Vec<Result<Delivered>> {
        let wants: Vec<Vec<u64>> =
            ctx.cluster.hosts.iter().map(|h| distribute::wanted_chunks(&ctx.payload, h)).collect();
        let parents = plan(&wants, holders, chains);
        let serves: Vec<bool> = (0..agents.len()).map(|i| !holders[i] || parents.contains(&Some(i))).collect();
        let board =
            Board::new(agents.iter().map(|a| a.addr.clone()).collect(), parents, ctx.registry_ca.as_deref()).unwrap();
        // Every relay gets a certificate: the chains below run in TLS.
        assert!(board.parent.iter().flatten().all(|&j| board.identities[j].is_some()));
        let runs = agents.iter().enumerate().map(|(i, a)| {
            let (board, wants, serves) = (&board, &wants, serves[i]);
            async move {
                if !serves {
                    board.skip(i);
                    return Ok(Delivered::default());
                }
                session(ctx, a, i, &wants[i], board).await
            }
        });
        futures_join_all(runs).await
    }

    async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        // Poll them together on this task: every session must run at once.
        let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = fs.map(|f| Some(Box::pin(f))).collect();
        let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut all = true;
            for (i, f) in pending.iter_mut().enumerate() {
                if let Some(fut) = f {
                    match fut.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            results[i] = Some(v);
                            *f = None;
                        }
                        std::task::Poll::Pending => all = false,
                    }
                }
            }
            if all { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        })
        .await;
        results.into_iter().map(|r| r.unwrap()).collect()
    }

    fn agents(dir: &Path, n: usize) -> Vec<LocalAgent> {
        (0..n)
            .map(|i| {
                let d = dir.join(format!("host{i}"));
                std::fs::create_dir_all(&d).unwrap();
                LocalAgent::new(&format!("127.0.0.{}", 11 + i), d, dir.join("stub"))
            })
            .collect()
    }

    fn verified(ctx: &Ctx, agent: &LocalAgent, host: usize) {
        let copy = Payload::open(&agent.dest).unwrap();
        for n in distribute::wanted_chunks(&ctx.payload, &ctx.cluster.hosts[host]) {
            let (s, e) = copy.chunk_range(n);
            let mut b = vec![0u8; (e - s) as usize];
            std::os::unix::fs::FileExt::read_exact_at(copy.file(), &mut b, s).unwrap();
            assert!(copy.chunk_matches(n, &b), "host {host} chunk {n}");
        }
    }

    /// Registry host first, then three workers in a chain: the operator sends one copy of what
    /// the registry host needs and nothing else; every worker's copy verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chain_carries_every_byte_from_the_operator_once() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path(), &["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]);
        let agents = agents(dir.path(), 4);
        let results = deliver(&ctx, &agents, &[false; 4], 1).await;
        let done: Vec<Delivered> = results.into_iter().map(|r| r.unwrap()).collect();
        let all: Vec<u64> = (0..ctx.payload.chunk_count()).collect();
        assert_eq!(done[0].from_operator, distribute::chunk_bytes(&ctx.payload, &all));
        for (i, d) in done.iter().enumerate().skip(1) {
            assert_eq!(d.from_operator, 0, "host {i} was fed by the operator");
            let want = distribute::wanted_chunks(&ctx.payload, &ctx.cluster.hosts[i]);
            assert_eq!(d.from_relays, distribute::chunk_bytes(&ctx.payload, &want));
        }
        for (i, a) in agents.iter().enumerate() {
            verified(&ctx, a, i);
        }
        // Again: nothing moves at all.
        let again: Vec<Delivered> =
            deliver(&ctx, &agents, &[false; 4], 1).await.into_iter().map(|r| r.unwrap()).collect();
        assert!(again.iter().all(|d| d.from_operator == 0 && d.from_relays == 0), "{again:?}");
        // A new host (host 3 loses its copy) is fed by the registry host, which already holds
        // everything: the operator sends nothing.
        std::fs::remove_file(&agents[3].dest).unwrap();
        let join: Vec<Delivered> =
            deliver(&ctx, &agents, &[true, true, true, false], 1).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(join[3].from_operator, 0, "{join:?}");
        let want = distribute::wanted_chunks(&ctx.payload, &ctx.cluster.hosts[3]);
        assert_eq!(join[3].from_relays, distribute::chunk_bytes(&ctx.payload, &want));
        verified(&ctx, &agents[3], 3);
    }

    /// The operator's own copy damaged in the middle: the head of the chain stops at the bad
    /// chunk, before sending it, naming it; the hosts behind it stop at once instead of waiting
    /// on a relay that will never get the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_source_stops_every_host_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path(), &["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
        let agents = agents(dir.path(), 3);
        let bad = ctx.payload.chunk_count() / 2;
        let (s, _) = ctx.payload.chunk_range(bad);
        let f = std::fs::OpenOptions::new().write(true).open(ctx.payload.path()).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"\xff", s + 100).unwrap();
        let started = Instant::now();
        let results = deliver(&ctx, &agents, &[false; 3], 1).await;
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        let errs: Vec<String> = results.into_iter().map(|r| format!("{:#}", r.unwrap_err())).collect();
        assert!(
            errs[0].contains("this installer is damaged") && errs[0].contains(&format!("chunk {bad} ")),
            "{errs:?}"
        );
        for e in &errs[1..] {
            assert!(e.contains("stopped: this installer is damaged"), "{errs:?}");
        }
        // The damaged chunk reached no host.
        for a in &agents {
            let part = a.dest.with_extension("part");
            let Ok(copy) = Payload::open(&part) else { continue };
            let (s, e) = copy.chunk_range(bad);
            let mut b = vec![0u8; (e - s) as usize];
            std::os::unix::fs::FileExt::read_exact_at(copy.file(), &mut b, s).unwrap();
            assert!(!copy.chunk_matches(bad, &b) && b.iter().all(|&x| x == 0), "{} holds chunk {bad}", a.addr);
        }
    }

    /// A relay that dies mid-stream (here: one that sends part of what it promised, then a
    /// damaged chunk, then hangs up) is routed around: the host keeps what landed, the rest
    /// comes from further up, and nothing damaged is kept.
    #[test]
    fn a_failing_relay_is_routed_around_without_restarting() {
        let dir = tempfile::tempdir().unwrap();
        let path = build(dir.path());
        let payload = Payload::open(&path).unwrap();
        let want: Vec<u64> = (0..payload.chunk_count()).collect();
        // The bad relay: accepts any hello, sends 5 good chunks, a damaged one, and closes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicBool::new(false));
        let (p2, served2) = (path.clone(), served.clone());
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let payload = Payload::open(&p2).unwrap();
            let mut hello = vec![0u8; 13 + 8];
            std::io::Read::read_exact(&mut c, &mut hello).unwrap();
            let name_len = u64::from_le_bytes(hello[13..].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; name_len + 32 + 8];
            std::io::Read::read_exact(&mut c, &mut rest).unwrap();
            let count = u64::from_le_bytes(rest[name_len + 32..].try_into().unwrap()) as usize;
            let mut asked = vec![0u8; count * 8];
            std::io::Read::read_exact(&mut c, &mut asked).unwrap();
            use std::io::Write;
            c.write_all(&ACCEPTED.to_le_bytes()).unwrap();
            for (k, n) in asked.chunks(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).take(6).enumerate() {
                let (s, e) = payload.chunk_range(n);
                let mut b = vec![0u8; (e - s) as usize];
                std::os::unix::fs::FileExt::read_exact_at(payload.file(), &mut b, s).unwrap();
                if k == 5 {
                    b[0] ^= 0xff;
                }
                c.write_all(&n.to_le_bytes()).unwrap();
                c.write_all(&b).unwrap();
            }
            served2.store(true, Ordering::SeqCst);
        });
        let opts = super::distribute::tests::node_receiving(dir.path());
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(a.try_clone().unwrap());
            let mut w = a;
            receive(&mut r, &mut w, &opts)
        });
        use std::io::{BufRead, Write};
        let mut op = b.try_clone().unwrap();
        let mut lines = std::io::BufReader::new(b);
        op.write_all(&distribute::header(&payload, &want, Some(&[7u8; 32]), None).unwrap()).unwrap();
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert!(matches!(Opening::decode(line.as_bytes()).unwrap(), Opening::Offer(_)), "{line}");
        let up =
            Upstream { addr: "127.0.0.1".into(), port, name: "n".into(), token: hex::encode([0u8; 32]), ca_pem: None };
        let json = serde_json::to_vec(&up).unwrap();
        op.write_all(&PULL.to_le_bytes()).unwrap();
        op.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
        op.write_all(&json).unwrap();
        let (why, missing) = loop {
            line.clear();
            lines.read_line(&mut line).unwrap();
            match Event::decode(line.as_bytes()).unwrap() {
                Event::Progress { .. } => continue,
                Event::Lost { lost, missing } => break (lost, missing),
                other => panic!("{other:?}"),
            }
        };
        assert!(served.load(Ordering::SeqCst));
        // Damaged chunk or closed stream, whichever the agent noticed first: either way the relay
        // is reported, by address.
        assert!(why.contains("pulling from 127.0.0.1"), "{why}");
        // The 5 good chunks stayed; the damaged one is asked for again.
        assert_eq!(missing.len(), want.len() - 5, "{missing:?}");
        // The operator sends the rest itself.
        for &n in &missing {
            let (s, e) = payload.chunk_range(n);
            let mut c = vec![0u8; (e - s) as usize];
            std::os::unix::fs::FileExt::read_exact_at(payload.file(), &mut c, s).unwrap();
            op.write_all(&n.to_le_bytes()).unwrap();
            op.write_all(&c).unwrap();
        }
        op.write_all(&END.to_le_bytes()).unwrap();
        line.clear();
        lines.read_line(&mut line).unwrap();
        let done = Event::decode(line.as_bytes()).unwrap();
        assert!(matches!(done, Event::Finished(crate::protocol::receive::Outcome::Done(_))), "{line}");
        let got = agent.join().unwrap().unwrap();
        assert_eq!(got.chunks as usize, want.len() + 1, "5 + 1 damaged from the relay, the rest from the operator");
        let copy = Payload::open(&dir.path().join("node/installer")).unwrap();
        copy.verify_chunks(&|_| {}).unwrap();
    }

    /// A relay listener on 127.0.0.1 over every chunk of a test installer, in TLS with a
    /// certificate from `ca` when given; its port.
    fn listener(dir: &Path, secret: [u8; 32], ca: Option<&ClusterCa>) -> u16 {
        let path = build(dir);
        let payload = Arc::new(Payload::open(&path).unwrap());
        let want: Vec<u64> = (0..payload.chunk_count()).collect();
        let shelf = Arc::new(crate::agent::relay::Shelf::new(payload.chunk_count(), &want, &[]));
        let tls = ca.map(|ca| crate::agent::relay::server_tls(&ca.relay_identity("127.0.0.1").unwrap()).unwrap());
        crate::agent::relay::serve("127.0.0.1".parse().unwrap(), secret, tls, payload, shelf).unwrap().port
    }

    /// A listener refuses a wrong token and a reused one before sending any chunk, in plain TCP
    /// and in TLS alike.
    #[test]
    fn the_relay_listener_wants_a_fresh_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::registry::pki::load_or_create(&dir.path().join("pki")).unwrap();
        for tls in [None, Some(&ca)] {
            let secret = [9u8; 32];
            let port = listener(dir.path(), secret, tls);
            let up = |token: [u8; 32]| Upstream {
                addr: "127.0.0.1".into(),
                port,
                name: "n".into(),
                token: hex::encode(token),
                ca_pem: tls.map(|ca| ca.cert_pem().to_string()),
            };
            fresh_tokens_only(&up, &secret);
        }
    }

    /// A TLS relay speaks to nobody without TLS, nor to a host that trusts another CA.
    #[test]
    fn a_tls_relay_refuses_plain_tcp_and_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::registry::pki::load_or_create(&dir.path().join("pki")).unwrap();
        let stranger = crate::registry::pki::load_or_create(&dir.path().join("other")).unwrap();
        let secret = [5u8; 32];
        let port = listener(dir.path(), secret, Some(&ca));
        let asked: std::collections::BTreeSet<u64> = [0].into();
        let up = |ca_pem: Option<String>| Upstream {
            addr: "127.0.0.1".into(),
            port,
            name: "n".into(),
            token: hex::encode(token(&secret, "n")),
            ca_pem,
        };
        let plain = crate::agent::relay::connect(&up(None), &asked).unwrap_err();
        use crate::agent::relay::RelayError;
        assert!(matches!(plain, RelayError::Reply(_) | RelayError::Hello(_)), "{plain:?}");
        let err = crate::agent::relay::connect(&up(Some(stranger.cert_pem().into())), &asked).unwrap_err();
        let err = crate::printer::error_chain(&err);
        assert!(err.contains("certificate"), "{err}");
        // Neither used the token up: a host with the CA still gets its chunks.
        let mut s = crate::agent::relay::connect(&up(Some(ca.cert_pem().into())), &asked).unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut s, &mut first).unwrap();
        assert_eq!(u64::from_le_bytes(first), 0);
    }

    fn fresh_tokens_only(up: &dyn Fn([u8; 32]) -> Upstream, secret: &[u8; 32]) {
        let asked: std::collections::BTreeSet<u64> = [0, 1].into();
        let err = crate::agent::relay::connect(&up([1u8; 32]), &asked).unwrap_err();
        assert!(format!("{err:#}").contains("wrong token"), "{err:#}");
        let good = token(secret, "n");
        let mut s = crate::agent::relay::connect(&up(good), &asked).unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut s, &mut first).unwrap();
        assert_eq!(u64::from_le_bytes(first), 0);
        let err = crate::agent::relay::connect(&up(good), &asked).unwrap_err();
        assert!(format!("{err:#}").contains("already used"), "{err:#}");
    }

    #[test]
    fn chains_put_the_biggest_wants_first_and_respect_subsets() {
        let all: Vec<u64> = (0..10).collect();
        let node: Vec<u64> = (0..4).collect();
        // Host 0 a worker, host 1 the registry, hosts 2 and 3 workers.
        let wants = vec![node.clone(), all.clone(), node.clone(), node.clone()];
        let none = [false; 4];
        assert_eq!(plan(&wants, &none, 1), vec![Some(1), None, Some(0), Some(2)]);
        assert_eq!(plan(&wants, &none, 0), vec![None; 4]);
        // Two chains: the registry and the first worker are fed by the operator.
        assert_eq!(plan(&wants, &none, 2), vec![None, None, Some(1), Some(0)]);
        // A host whose wants no tail covers starts its own chain.
        let odd: Vec<u64> = vec![20];
        assert_eq!(plan(&[all.clone(), odd], &[false; 2], 1), vec![None, None]);
        // Nothing wanted: not part of any chain.
        assert_eq!(plan(&[all.clone(), vec![]], &[false; 2], 1), vec![None, None]);
        // A join: the registry (host 1) and the worker (host 0) hold their copies already; the new
        // workers 2 and 3 are fed from the worker (whose smaller copy is quicker to re-check), not
        // by the operator, and the registry is left alone.
        assert_eq!(plan(&wants, &[true, true, false, false], 1), vec![None, None, Some(0), Some(2)]);
        // A worker holder cannot head the chain of a new registry host.
        assert_eq!(plan(&[node.clone(), all.clone()], &[true, false], 1), vec![None, None]);
        assert_eq!(plan(&[node.clone(), node], &[true, false], 1), vec![None, Some(0)]);
    }
}
