//! `installer lb`: the node-local Kubernetes API load balancer (HA without an external load
//! balancer).
//!
//! Every node runs one, as `ferry-lb.service`. It listens on loopback (default
//! `127.0.0.1:6444`), and the API endpoint name (`apiserver.cluster.local`) resolves to 127.0.0.1
//! on every node, so kubelet, kube-proxy and kubectl reach whichever apiserver is alive — the
//! pattern of the k3s agent load balancer and k0s NLLB. With one master it still works, so masters
//! can be added later: `join` rewrites `/etc/ferry/lb.yaml` and sends SIGHUP.
//!
//! Owns: the config file (`lb.yaml`), backend health, the choice of backend per connection, the
//! byte pumping, and the systemd unit text. It never reads the installer's payload, so it starts
//! instantly and keeps no file open that an update would replace.
//!
//! Why port 6444 and not 6443: on masters the apiserver binds `0.0.0.0:6443` (kubeadm's default
//! `bindPort`), so a loopback listener on 6443 would collide with it there.
//!
//! Health ([`health`]): every `interval` (default 2 s) each backend gets a TCP connect with a
//! timeout of at most the interval and, with `--readyz-ca` (as ferry's unit runs it), an
//! anonymous `GET /readyz` over TLS checked against the cluster CA. One failure takes it out, one
//! success puts it back, so a dead master is out within one interval (plus the connect timeout
//! when packets are dropped rather than refused), and an apiserver that is starting or shutting
//! down gets no new connections. A connection a client opens while a backend has just died but is
//! not yet marked is not lost either: a failed connect marks the backend down at once and the
//! next healthy backend is tried. New connections are spread round-robin over healthy backends;
//! when none is healthy every backend is tried in turn (the checks may simply be behind).

pub mod health;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Where `join`/`run` write the LB's config on every node.
pub const DEFAULT_CONFIG: &str = crate::node::LB_CONFIG;
/// Default health-check interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// What `installer lb` was asked for (the command line's `lb` flags, as plain values).
#[derive(Debug, Default)]
pub struct Options {
    /// Config file; used when it exists, or always when given explicitly.
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides the file).
    pub listen: Option<SocketAddr>,
    /// Apiservers, `HOST:PORT`, added to the file's backends.
    pub backends: Vec<String>,
    /// Health-check interval, e.g. `2s` (overrides the file).
    pub interval: Option<String>,
    /// The cluster CA: when given, health is `/readyz` over TLS, not a TCP connect alone.
    pub readyz_ca: Option<PathBuf>,
}

/// `lb.yaml` as written by ferry (unknown fields are errors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LbConfig {
    /// Listen address, `ADDR:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Apiservers, `HOST:PORT`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Health-check interval, `2s` / `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

impl LbConfig {
    /// Reads and checks a config file; errors name the file.
    pub fn load(path: &Path) -> Result<LbConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the LB config {}", path.display()))?;
        let cfg: LbConfig =
            serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("LB config {}: {e}", path.display()))?;
        for b in &cfg.backends {
            check_backend(b).with_context(|| format!("LB config {}", path.display()))?;
        }
        if let Some(l) = &cfg.listen {
            l.parse::<SocketAddr>().map_err(|e| anyhow::anyhow!("LB config {}: listen `{l}`: {e}", path.display()))?;
        }
        if let Some(i) = &cfg.interval {
            parse_duration(i).with_context(|| format!("LB config {}", path.display()))?;
        }
        Ok(cfg)
    }

    /// The file's text, for `run`/`join` to write to [`DEFAULT_CONFIG`].
    pub fn render(&self) -> String {
        let mut s = String::from("# Written by ferry: the node-local API load balancer (ferry-lb.service).\n");
        s.push_str("# Edit and `systemctl reload ferry-lb` to change the apiservers.\n");
        if let Some(l) = &self.listen {
            s.push_str(&format!("listen: \"{l}\"\n"));
        }
        if let Some(i) = &self.interval {
            s.push_str(&format!("interval: \"{i}\"\n"));
        }
        s.push_str("backends:\n");
        for b in &self.backends {
            s.push_str(&format!("  - \"{b}\"\n"));
        }
        s
    }
}

/// The text of `/etc/systemd/system/ferry-lb.service` running `installer` with `config`, its
/// health check `/readyz` trusting the cluster CA kubeadm leaves on every node.
/// `Before=kubelet.service`: the kubelet's kubeconfig names the endpoint the LB serves.
pub fn systemd_unit(installer: &str, config: &str) -> String {
    let ca = crate::node::CLUSTER_CA;
    format!(
        "# Written by ferry: the node-local Kubernetes API load balancer.\n\
         [Unit]\n\
         Description=ferry node-local Kubernetes API load balancer\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         Before=kubelet.service\n\
         \n\
         [Service]\n\
         ExecStart={installer} --no-progress lb --config {config} --readyz-ca {ca}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=always\n\
         RestartSec=1\n\
         NoNewPrivileges=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Parses `2s`, `500ms`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 =
        num.trim().parse().map_err(|_| anyhow::anyhow!("interval `{s}` is not a duration like 2s or 500ms"))?;
    let d = Duration::from_secs_f64(v * scale);
    if d < Duration::from_millis(50) || d > Duration::from_secs(3600) {
        bail!("interval `{s}` is out of range (50ms to 1h)");
    }
    Ok(d)
}

fn check_backend(b: &str) -> Result<()> {
    match b.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        _ => bail!("backend `{b}` is not HOST:PORT"),
    }
}

/// One apiserver and what the LB knows about it.
#[derive(Debug)]
struct Backend {
    addr: String,
    healthy: AtomicBool,
    /// Set when a reload dropped it: its checker stops.
    removed: AtomicBool,
    active: AtomicUsize,
}

/// The settings in force after merging file and flags.
#[derive(Clone, Debug)]
struct Settings {
    listen: SocketAddr,
    backends: Vec<String>,
    interval: Duration,
}

fn settings(args: &Options) -> Result<Settings> {
    let file = match &args.config {
        Some(p) => Some(LbConfig::load(p)?),
        None if Path::new(DEFAULT_CONFIG).exists() && args.backends.is_empty() => {
            Some(LbConfig::load(Path::new(DEFAULT_CONFIG))?)
        }
        None => None,
    }
    .unwrap_or_default();
    for b in &args.backends {
        check_backend(b)?;
    }
    let listen = match (args.listen, &file.listen) {
        (Some(l), _) => l,
        (None, Some(l)) => l.parse()?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], crate::node::LB_PORT)),
    };
    let interval = match (&args.interval, &file.interval) {
        (Some(i), _) | (None, Some(i)) => parse_duration(i)?,
        (None, None) => DEFAULT_INTERVAL,
    };
    let mut backends = file.backends;
    for b in &args.backends {
        if !backends.contains(b) {
            backends.push(b.clone());
        }
    }
    Ok(Settings { listen, backends, interval })
}

/// The shared state: the backend list (replaced on reload) and the round-robin cursor.
struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    interval: Duration,
    readyz: Option<health::Readyz>,
}

impl Pool {
    fn snapshot(&self) -> Vec<Arc<Backend>> {
        self.backends.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Backends to try for a new connection: healthy ones first, starting at the round-robin
    /// cursor, then the unhealthy ones (a last resort when the checks are behind).
    fn order(&self) -> Vec<Arc<Backend>> {
        let all = self.snapshot();
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotated: Vec<Arc<Backend>> = (0..all.len()).map(|i| all[(start + i) % all.len()].clone()).collect();
        let (mut up, down): (Vec<_>, Vec<_>) = rotated.into_iter().partition(|b| b.healthy.load(Ordering::Relaxed));
        up.extend(down);
        up
    }
}

fn connect_timeout(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(3))
}

fn mark(b: &Backend, healthy: bool, why: &str) {
    let was = b.healthy.swap(healthy, Ordering::Relaxed);
    if was != healthy {
        if healthy {
            eprintln!("ferry-lb: backend {} is up", b.addr);
        } else {
            eprintln!("ferry-lb: backend {} is down: {why}", b.addr);
        }
    }
}

/// Checks one backend every interval until it is removed.
async fn checker(pool: Arc<Pool>, b: Arc<Backend>) {
    let interval = pool.interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if b.removed.load(Ordering::Relaxed) {
            return;
        }
        match health::probe(&b.addr, connect_timeout(interval), pool.readyz.as_ref()).await {
            Ok(()) => mark(&b, true, ""),
            Err(e) => mark(&b, false, &e),
        }
    }
}

fn new_backend(addr: &str) -> Arc<Backend> {
    Arc::new(Backend {
        addr: addr.to_string(),
        healthy: AtomicBool::new(false),
        removed: AtomicBool::new(false),
        active: AtomicUsize::new(0),
    })
}

/// Replaces the backend list, keeping the state of backends that stay, starting checkers for
/// new ones (checked once before they take traffic) and stopping those of removed ones.
async fn apply(pool: &Arc<Pool>, addrs: &[String]) {
    let old = pool.snapshot();
    let mut next = Vec::new();
    let mut fresh = Vec::new();
    for a in addrs {
        match old.iter().find(|b| &b.addr == a) {
            Some(b) => next.push(b.clone()),
            None => {
                let b = new_backend(a);
                fresh.push(b.clone());
                next.push(b);
            }
        }
    }
    // First verdict before the new ones are published, so no client waits on a dead one.
    let checks = fresh.iter().map(|b| {
        let (b, pool) = (b.clone(), pool.clone());
        async move {
            match health::probe(&b.addr, connect_timeout(pool.interval), pool.readyz.as_ref()).await {
                Ok(()) => mark(&b, true, ""),
                Err(e) => eprintln!("ferry-lb: backend {} is down: {e}", b.addr),
            }
        }
    });
    futures_join_all(checks).await;
    for b in &old {
        if !addrs.contains(&b.addr) {
            b.removed.store(true, Ordering::Relaxed);
            eprintln!(
                "ferry-lb: backend {} removed ({} connections left to finish)",
                b.addr,
                b.active.load(Ordering::Relaxed)
            );
        }
    }
    *pool.backends.write().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
    for b in fresh {
        tokio::spawn(checker(pool.clone(), b));
    }
}

/// Awaits a set of futures concurrently (a few lines instead of a `futures` dependency).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(fs: impl Iterator<Item = F>) {
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

/// Carries one client connection to the first backend that accepts it.
async fn serve(pool: Arc<Pool>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    for b in pool.order() {
        match tokio::time::timeout(connect_timeout(pool.interval), TcpStream::connect(&b.addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                b.active.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                b.active.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => mark(&b, false, &e.to_string()),
            Err(_) => mark(&b, false, "connect timed out"),
        }
    }
    eprintln!("ferry-lb: no backend accepted the connection from {peer}; closed it");
}

/// `installer lb`: runs until SIGTERM/SIGINT.
pub fn run(args: &Options) -> Result<()> {
    let s = settings(args)?;
    if s.backends.is_empty() {
        bail!(
            "no apiserver backends: give --backend HOST:PORT or a config file with `backends:` ({} does not exist or lists none)",
            args.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)).display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the LB's runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(s.listen).await.with_context(|| format!("listening on {}", s.listen))?;
        let readyz = args.readyz_ca.clone().map(health::Readyz::new);
        let check = match &args.readyz_ca {
            Some(ca) => format!("TCP connect and GET /readyz trusting {}", ca.display()),
            None => "TCP connect".to_string(),
        };
        let pool = Arc::new(Pool { backends: RwLock::new(Vec::new()), next: AtomicUsize::new(0), interval: s.interval, readyz });
        apply(&pool, &s.backends).await;
        // Printed after the first checks, so a caller that waits for this line sees real state.
        eprintln!(
            "ferry-lb: listening on {} for {} (health check: {check} every {} ms)",
            listener.local_addr()?,
            s.backends.join(", "),
            s.interval.as_millis()
        );
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((c, peer)) => { tokio::spawn(serve(pool.clone(), c, peer)); }
                    // EMFILE and friends: wait a little rather than spin.
                    Err(e) => { eprintln!("ferry-lb: accept: {e}"); tokio::time::sleep(Duration::from_millis(100)).await; }
                },
                _ = hup.recv() => match settings(args) {
                    Ok(n) => {
                        if n.listen != s.listen {
                            eprintln!("ferry-lb: reload: the listen address changed to {}; restart the service to apply it", n.listen);
                        }
                        if n.interval != s.interval {
                            eprintln!("ferry-lb: reload: the interval changed; restart the service to apply it");
                        }
                        if n.backends.is_empty() {
                            eprintln!("ferry-lb: reload refused: the new config lists no backends; keeping {}", s.backends.join(", "));
                        } else {
                            eprintln!("ferry-lb: reload: backends {}", n.backends.join(", "));
                            apply(&pool, &n.backends).await;
                        }
                    }
                    Err(e) => eprintln!("ferry-lb: reload refused, keeping the current backends: {e:#}"),
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("ferry-lb: stopping");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").unwrap_err().to_string().contains("fast"));
        assert!(parse_duration("1ms").is_err());
    }

    #[test]
    fn config_round_trips_and_rejects_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lb.yaml");
        let cfg = LbConfig {
            listen: Some("127.0.0.1:6444".into()),
            backends: vec!["10.0.0.11:6443".into(), "cp2.example:6443".into()],
            interval: Some("2s".into()),
        };
        std::fs::write(&p, cfg.render()).unwrap();
        assert_eq!(LbConfig::load(&p).unwrap(), cfg);
        std::fs::write(&p, "backends: [10.0.0.1:6443]\nbackend: []\n").unwrap();
        let e = format!("{:#}", LbConfig::load(&p).unwrap_err());
        assert!(e.contains("backend") && e.contains("lb.yaml"), "{e}");
        std::fs::write(&p, "backends: [10.0.0.1]\n").unwrap();
        let e = format!("{:#}", LbConfig::load(&p).unwrap_err());
        assert!(e.contains("`10.0.0.1` is not HOST:PORT"), "{e}");
    }

    #[test]
    fn unit_runs_the_installer_and_reloads_with_hup() {
        let u = systemd_unit("/var/lib/ferry/installer", DEFAULT_CONFIG);
        assert!(u.contains("ExecStart=/var/lib/ferry/installer --no-progress lb --config /etc/ferry/lb.yaml --readyz-ca /etc/kubernetes/pki/ca.crt\n"));
        assert!(u.contains("ExecReload=/bin/kill -HUP $MAINPID"));
        assert!(u.contains("Before=kubelet.service"));
    }

    #[test]
    fn healthy_backends_come_first_and_rotate() {
        let pool = Pool {
            backends: RwLock::new(vec![new_backend("a:1"), new_backend("b:1"), new_backend("c:1")]),
            next: AtomicUsize::new(0),
            interval: DEFAULT_INTERVAL,
            readyz: None,
        };
        for b in pool.snapshot() {
            b.healthy.store(b.addr != "b:1", Ordering::Relaxed);
        }
        let firsts: Vec<String> = (0..6).map(|_| pool.order()[0].addr.clone()).collect();
        assert!(!firsts.contains(&"b:1".to_string()), "{firsts:?}");
        assert!(firsts.contains(&"a:1".to_string()) && firsts.contains(&"c:1".to_string()), "{firsts:?}");
        assert_eq!(pool.order().last().unwrap().addr, "b:1", "the unhealthy one is the last resort");
    }
}
