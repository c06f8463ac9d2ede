//! A TCP relay on 127.0.0.1 that can stop passing the client's bytes part-way: a link that dies
//! in the middle of a transfer, at a byte count the test chooses rather than a moment.
//!
//! [`CutLink::hold_after`] lets that many more client bytes through, then holds every later one
//! (the connection stays open, nothing moves: what a pulled cable looks like to both ends);
//! [`CutLink::open`] lets everything through again, to new and held connections alike.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The relay.
pub struct CutLink {
    /// `127.0.0.1:PORT`, to give the client instead of the server's address.
    pub addr: String,
    state: Arc<(Mutex<u64>, Condvar)>,
    passed: Arc<AtomicU64>,
}

impl CutLink {
    /// A relay to `server`, open.
    pub fn start(server: &str) -> CutLink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new((Mutex::new(u64::MAX), Condvar::new()));
        let passed = Arc::new(AtomicU64::new(0));
        let (server, st, p) = (server.to_string(), state.clone(), passed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(upstream) = TcpStream::connect(&server) else { continue };
                let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let (st, p) = (st.clone(), p.clone());
                std::thread::spawn(move || client_to_server(client, upstream, &st, &p));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut { u2 }, &mut { c2 });
                });
            }
        });
        CutLink { addr, state, passed }
    }

    /// From now on, lets `bytes` more client bytes through, then holds the rest.
    pub fn hold_after(&self, bytes: u64) {
        *self.state.0.lock().unwrap() = bytes;
    }

    /// Lets everything through.
    pub fn open(&self) {
        *self.state.0.lock().unwrap() = u64::MAX;
        self.state.1.notify_all();
    }

    /// Whether the allowance is used up (something is being held).
    pub fn holding(&self) -> bool {
        *self.state.0.lock().unwrap() == 0
    }

    /// Waits until the link holds `client` (a transfer through it, called `what` in messages),
    /// failing if that takes two minutes or the client ends first.
    pub fn wait_until_holding(&self, client: &mut std::process::Child, what: &str) {
        let started = std::time::Instant::now();
        while !self.holding() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "the {what} never used up the link's allowance"
            );
            assert!(client.try_wait().unwrap().is_none(), "the {what} ended before the link died");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Client bytes passed so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

fn client_to_server(mut client: TcpStream, mut server: TcpStream, state: &(Mutex<u64>, Condvar), passed: &AtomicU64) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n {
            let mut left = state.0.lock().unwrap();
            while *left == 0 {
                left = state.1.wait(left).unwrap();
            }
            let k = ((n - sent) as u64).min(*left) as usize;
            if *left != u64::MAX {
                *left -= k as u64;
            }
            drop(left);
            if server.write_all(&buf[sent..sent + k]).is_err() {
                return;
            }
            passed.fetch_add(k as u64, Ordering::Relaxed);
            sent += k;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
}
