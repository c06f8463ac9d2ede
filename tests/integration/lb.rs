//! `installer lb`, the node-local API load balancer, as a real process on real 127.0.0.1
//! sockets: three TCP responders stand in for three masters' apiservers (each answers every
//! connection with its own name and closes). A client keeps getting answers while one is
//! killed; the dead one is taken out by the health check (no client traffic could have marked it
//! down) and comes back after it restarts on the same port; SIGHUP re-reads the backend list.
//! How soon the check acts is printed, not asserted: on a loaded machine that is the scheduler's
//! doing, not the LB's. Waits are bounded only to stop a hang.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The demo installer, built once per test binary (lb reads no payload, any bundle will do).
fn installer() -> &'static PathBuf {
    static I: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &I.get_or_init(|| {
        let dir = ferry_tests::lasting(ferry_tests::scratch());
        let p = ferry_tests::build(&ferry_tests::standin_bundle(), dir.path(), None);
        (dir, p)
    })
    .1
}

/// A stand-in apiserver: accepts on 127.0.0.1:`port`, writes its name, closes. Stopping it
/// shuts the listening socket down, so connects are refused like a dead apiserver's.
struct Responder {
    name: &'static str,
    port: u16,
    /// The listening socket (a second descriptor of it), to shut it down.
    listener: Option<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn start(name: &'static str, port: u16) -> Responder {
        let listener =
            TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("responder {name} on port {port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let own = listener.try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(format!("{name}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Responder { name, port, listener: Some(own), stop, thread: Some(thread) }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        // shutdown, not just close: a child that another test thread forks while the socket is
        // open holds a copy of its descriptor until that child execs, and until then a closed
        // listener would still complete connects (which then die unanswered). A shutdown stops
        // the socket listening whoever holds it, so connects are refused from here on.
        if let Some(l) = self.listener.take() {
            // SAFETY: shutdown on a descriptor this Responder owns (closed when `l` drops).
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One client connection through the LB: the answering backend's name, or an error.
fn ask(port: u16) -> Result<String, String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).map_err(|e| format!("read: {e}"))?;
    if s.is_empty() { Err("closed without an answer".into()) } else { Ok(s.trim().to_string()) }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Lb {
    child: Child,
    log: PathBuf,
}

impl Lb {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` (beyond the first `skip` bytes); returns how long it took.
    fn wait_for(&self, needle: &str, skip: usize, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let l = self.log();
            if l.get(skip..).is_some_and(|t| t.contains(needle)) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "no `{needle}` in the LB's log within {limit:?}:\n{l}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn hup(&self) {
        assert!(Command::new("kill").arg("-HUP").arg(self.child.id().to_string()).status().unwrap().success());
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_lb(dir: &Path, args: &[String]) -> Lb {
    let log = dir.join("lb.log");
    let child = Command::new(installer())
        .arg("lb")
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting installer lb");
    let lb = Lb { child, log };
    lb.wait_for("listening on", 0, HANG);
    lb
}

/// The health-check interval the test configures.
const INTERVAL: Duration = Duration::from_millis(1000);
/// How long a wait for the LB may take before the test calls it a hang (it is not a speed).
const HANG: Duration = Duration::from_secs(60);

#[test]
fn lb_survives_a_dead_master_and_takes_it_back() {
    let dir = ferry_tests::scratch();
    let mut a = Responder::start("master-a", 0);
    let mut b = Responder::start("master-b", 0);
    let c = Responder::start("master-c", 0);
    let port = free_port();
    let config = dir.path().join("lb.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\ninterval: 1s\nbackends: [\"{}\", \"{}\", \"{}\"]\n",
            a.addr(),
            b.addr(),
            c.addr()
        ),
    )
    .unwrap();
    let lb = start_lb(dir.path(), &["--config".into(), config.display().to_string()]);

    // Spread: new connections go round the healthy backends.
    let answers: Vec<String> = (0..30).map(|_| ask(port).unwrap()).collect();
    for r in [&a, &b, &c] {
        let n = answers.iter().filter(|x| *x == r.name).count();
        assert!(n >= 5, "{} answered {n} of 30: {answers:?}", r.name);
    }

    // Kill b with no client traffic: only the health check can notice.
    let mark = lb.log().len();
    b.kill();
    let took = lb.wait_for(&format!("backend {} is down", b.addr()), mark, HANG);
    eprintln!("dead backend taken out after {took:?} (interval {INTERVAL:?})");

    // A client keeps getting answers, from the live ones only.
    for n in 0..30 {
        let got = ask(port).unwrap_or_else(|e| panic!("request {n} with master-b dead failed: {e}\n{}", lb.log()));
        assert!(got == "master-a" || got == "master-c", "{got}");
    }

    // b comes back on the same port: the health check takes it back, then it gets traffic again.
    let mark = lb.log().len();
    let b = Responder::start("master-b", b.port);
    let took = lb.wait_for(&format!("backend {} is up", b.addr()), mark, HANG);
    eprintln!("recovered backend back after {took:?} (interval {INTERVAL:?})");
    let answers: Vec<String> = (0..30).map(|_| ask(port).unwrap()).collect();
    assert!(answers.iter().any(|x| x == "master-b"), "{answers:?}");

    // A dead backend that the checker has not noticed yet costs a client nothing either: the
    // failed connect marks it down and the next backend answers.
    a.kill();
    for i in 0..10 {
        let got = ask(port).unwrap_or_else(|e| panic!("request {i} right after master-a died: {e}\n{}", lb.log()));
        assert_ne!(got, "master-a");
    }

    // SIGHUP re-reads the file: c alone now.
    let mark = lb.log().len();
    std::fs::write(&config, format!("listen: \"127.0.0.1:{port}\"\ninterval: 1s\nbackends: [\"{}\"]\n", c.addr()))
        .unwrap();
    lb.hup();
    lb.wait_for(&format!("reload: backends {}", c.addr()), mark, HANG);
    let answers: Vec<String> = (0..10).map(|_| ask(port).unwrap()).collect();
    assert!(answers.iter().all(|x| x == "master-c"), "{answers:?}");

    // A broken file on reload keeps the running list.
    std::fs::write(&config, "backends: [nonsense]\n").unwrap();
    let mark = lb.log().len();
    lb.hup();
    lb.wait_for("reload refused", mark, HANG);
    assert_eq!(ask(port).unwrap(), "master-c");
}

#[test]
fn lb_needs_backends_and_says_so() {
    let dir = ferry_tests::scratch();
    let missing = dir.path().join("none.yaml");
    let out = ferry_tests::fails(Command::new(installer()).arg("lb").arg("--config").arg(&missing));
    assert!(out.contains("none.yaml"), "{out}");
    let out =
        ferry_tests::fails(Command::new(installer()).args(["lb", "--backend", "10.0.0.1", "--listen", "127.0.0.1:0"]));
    assert!(out.contains("`10.0.0.1` is not HOST:PORT"), "{out}");
}
