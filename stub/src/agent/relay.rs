//! Relay distribution, host side: a receiving agent passes the chunks it holds on to further
//! hosts, so the operator's uplink carries each byte about once however many hosts there are.
//!
//! Owns the listener a receiving agent runs while its distribution session lasts ([`serve`]),
//! the shelf of chunks it can pass on ([`Shelf`]), and the pulling end ([`connect`]); the bytes
//! they exchange are `protocol::relay` and `protocol::receive`'s frames. The chunks a relay
//! sends are landed by `receive::land`, which checks every one against the signed index: a relay
//! cannot alter data, only withhold it, and withholding is routed around by the operator.
//!
//! Authentication: the listener accepts nothing without a token. The operator gives each
//! listener a fresh 32-byte secret over its SSH session, and each downstream host the token for
//! its own name (`protocol::relay::token`), over its own SSH session. A token opens one
//! connection once; without one, the listener closes the connection before sending a byte. The
//! listener lives only as long as the operator's session to its host.
//!
//! Privacy: when the operator gives the listener a TLS identity (a certificate for its address,
//! signed by the cluster CA, made for this distribution only) and the downstream the CA, the
//! whole exchange, token included, is inside TLS, so the site network sees no installer bytes.

use crate::printer::error_chain;
use crate::protocol::access::RelayIdentity;
use crate::protocol::codec::{FrameError, read_u64};
use crate::protocol::receive::{END, KEEPALIVE};
use crate::protocol::relay::{
    ACCEPTED, Reply, Secret, Upstream, decode_reply, decode_request_head, encode_refusal, encode_request, token,
};
use crate::registry::tls::{self, ServerConfigError};
use payload_format::Payload;
use rustls::pki_types::ServerName;
use std::collections::{BTreeSet, HashSet};
use std::io;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often an idle relay says it is still there.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(2);
/// A pulling host gives up on a relay that sent nothing, not even a keepalive, for this long.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);

/// Why a relay listener, a relayed connection or a pull from a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No port could be opened.
    #[error("opening the relay listener")]
    Listen(#[source] io::Error),
    /// A downstream host was turned away.
    #[error("refused a downstream host: {why}")]
    Refused {
        /// What it was told.
        why: String,
    },
    /// A downstream host stopped taking chunks.
    #[error("{name} went away")]
    Gone {
        /// The host's name, as its hello gave it.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A chunk to pass on cannot be read from this host's copy.
    #[error("reading chunk {chunk}")]
    ReadChunk {
        /// The chunk.
        chunk: u64,
        /// Why.
        source: io::Error,
    },
    /// The relay's address does not resolve.
    #[error("relay address `{addr}` does not resolve")]
    Unresolved {
        /// The address.
        addr: String,
    },
    /// The relay cannot be reached.
    #[error("connecting to the relay at {addr}:{port}")]
    Connect {
        /// Its address.
        addr: String,
        /// Its port.
        port: u16,
        /// Why.
        source: io::Error,
    },
    /// The operator's token is not 32 bytes of hex.
    #[error("the relay token is not 32 bytes of hex")]
    BadToken,
    /// The hello cannot be sent.
    #[error("sending the relay hello")]
    Hello(#[source] io::Error),
    /// The relay's answer to the hello does not arrive or read.
    #[error("waiting for the relay to accept")]
    Reply(#[source] FrameError),
    /// The relay turned this host away.
    #[error("the relay refused: {why}")]
    RelayRefused {
        /// What it said.
        why: String,
    },
    /// The stream's framing is wrong.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The TLS identity the operator gave this host does not load.
    #[error("the relay identity the operator sent is unusable: {0}")]
    Identity(&'static str),
    /// TLS could not be set up, or the relay's certificate does not check out against the CA.
    #[error("setting up TLS with the relay")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A socket option, a write or a thread could not be had.
    #[error(transparent)]
    Io(#[from] io::Error),
}
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // Constant time: a token guesser learns nothing from how long the comparison took.
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which chunks this host holds, verified, for its relay to pass on; grows as chunks land.
pub struct Shelf {
    have: Mutex<Vec<bool>>,
    wanted: Vec<bool>,
    landed: Condvar,
}

impl Shelf {
    /// A shelf for a host that wants `want` and already holds `want` minus `missing`.
    pub fn new(chunk_count: u64, want: &[u64], missing: &[u64]) -> Shelf {
        let mut wanted = vec![false; chunk_count as usize];
        for &n in want {
            wanted[n as usize] = true;
        }
        let mut have = wanted.clone();
        for &n in missing {
            have[n as usize] = false;
        }
        Shelf { have: Mutex::new(have), wanted, landed: Condvar::new() }
    }

    /// Records a chunk that has been checked and written.
    pub fn landed(&self, n: u64) {
        if let Some(slot) = self.have.lock().unwrap_or_else(|e| e.into_inner()).get_mut(n as usize) {
            *slot = true;
        }
        self.landed.notify_all();
    }

    /// Removes from `pending` and returns the first chunk of it that is on the shelf, waiting up
    /// to `wait` for one to land. `None` when nothing arrived in time.
    fn take(&self, pending: &mut BTreeSet<u64>, wait: Duration) -> Option<u64> {
        // A poisoned lock still holds a valid list: a flag is set or not.
        let mut have = self.have.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(&n) = pending.iter().find(|&&n| have[n as usize]) {
                pending.remove(&n);
                return Some(n);
            }
            let (guard, timeout) = self.landed.wait_timeout(have, wait).unwrap_or_else(|e| e.into_inner());
            have = guard;
            if timeout.timed_out() {
                return pending.iter().find(|&&n| have[n as usize]).copied().inspect(|n| {
                    pending.remove(n);
                });
            }
        }
    }
}

/// A running relay listener.
pub struct Listener {
    /// The port it listens on.
    pub port: u16,
}

/// The listener's TLS configuration from the identity the operator gave it.
pub fn server_tls(identity: &RelayIdentity) -> Result<Arc<rustls::ServerConfig>, RelayError> {
    let what = || "this host's relay certificate".to_string();
    tls::server_config(identity.cert_pem.as_bytes(), identity.key_pem.expose().as_bytes(), b"ferry-relay", &what)
        .map_err(|e| match e {
            ServerConfigError::Chain => RelayError::Identity("its certificate is not PEM"),
            ServerConfigError::Key => RelayError::Identity("its key is not PEM"),
            ServerConfigError::Tls(e) => RelayError::Tls(Box::new(e)),
        })
}

/// Starts the relay listener on `bind` (port chosen by the kernel) and serves, from `payload`'s
/// file, the chunks on `shelf` to downstream hosts that present a token made from `secret`,
/// inside TLS with `tls` when given. Runs on background threads until the process exits.
pub fn serve(
    bind: IpAddr,
    secret: Secret,
    tls: Option<Arc<rustls::ServerConfig>>,
    payload: Arc<Payload>,
    shelf: Arc<Shelf>,
) -> Result<Listener, RelayError> {
    // Bind to the address the operator reaches this host by; a host reached through NAT lacks
    // it, and then any address will do: the tokens guard the port either way.
    let listener = TcpListener::bind((bind, 0))
        .or_else(|_| TcpListener::bind((IpAddr::from([0u8, 0, 0, 0]), 0)))
        .map_err(RelayError::Listen)?;
    let port = listener.local_addr()?.port();
    let used: Arc<Mutex<HashSet<[u8; 32]>>> = Arc::default();
    std::thread::Builder::new().name("relay-accept".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (payload, shelf, used, tls) = (payload.clone(), shelf.clone(), used.clone(), tls.clone());
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let spawned = std::thread::Builder::new().name("relay-serve".into()).spawn({
                let peer = peer.clone();
                move || {
                    if let Err(e) = serve_one(conn, tls, &secret, &payload, &shelf, &used) {
                        eprintln!("relay: {peer}: {}", error_chain(&e));
                    }
                }
            });
            // The connection closes unserved; its host reports the relay lost and the operator
            // sends the chunks another way. Said here so this host's log shows why.
            if let Err(e) = spawned {
                eprintln!("relay: {peer}: not served, no thread for it: {e}");
            }
        }
    })?;
    Ok(Listener { port })
}

fn refuse(conn: &mut impl Write, why: &str) -> Result<(), RelayError> {
    // The refusal is a courtesy to the other side; this side's error below is what counts.
    let _ = conn.write_all(&encode_refusal(why));
    let _ = conn.flush();
    Err(RelayError::Refused { why: why.to_string() })
}

fn serve_one(
    conn: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    secret: &Secret,
    payload: &Payload,
    shelf: &Shelf,
    used: &Mutex<HashSet<[u8; 32]>>,
) -> Result<(), RelayError> {
    // A hello that does not arrive promptly is not from a host the operator sent here.
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(SILENCE_LIMIT * 4))?;
    conn.set_nodelay(true)?;
    let Some(config) = tls else { return serve_stream(conn, secret, payload, shelf, used) };
    // The handshake happens on the first read; a client that does not speak TLS fails it there.
    let server = rustls::ServerConnection::new(config).map_err(|e| RelayError::Tls(Box::new(e)))?;
    serve_stream(rustls::StreamOwned::new(server, conn), secret, payload, shelf, used)
}

/// What a downstream's request asks for, or why it is refused.
enum Request {
    Chunks { name: String, pending: BTreeSet<u64> },
    Refused(String),
}

fn read_request(
    r: &mut impl Read,
    secret: &Secret,
    payload: &Payload,
    shelf: &Shelf,
    used: &Mutex<HashSet<[u8; 32]>>,
) -> Result<Request, RelayError> {
    let (name, presented) = decode_request_head(r)?;
    if !same(&presented, &token(secret, &name)) {
        return Ok(Request::Refused("wrong token".into()));
    }
    if !used.lock().unwrap_or_else(|e| e.into_inner()).insert(presented) {
        return Ok(Request::Refused("token already used".into()));
    }
    let count = read_u64(r)?;
    if count > payload.chunk_count() {
        return Ok(Request::Refused("more chunks asked for than the installer has".into()));
    }
    let mut pending = BTreeSet::new();
    for _ in 0..count {
        let n = read_u64(r)?;
        if !shelf.wanted.get(n as usize).copied().unwrap_or(false) {
            return Ok(Request::Refused(format!("chunk {n} is not one this host relays")));
        }
        pending.insert(n);
    }
    Ok(Request::Chunks { name, pending })
}

fn serve_stream(
    mut conn: impl Read + Write,
    secret: &Secret,
    payload: &Payload,
    shelf: &Shelf,
    used: &Mutex<HashSet<[u8; 32]>>,
) -> Result<(), RelayError> {
    // The downstream sends its whole request, then waits for the answer: nothing is read ahead.
    let request = read_request(&mut BufReader::new(&mut conn), secret, payload, shelf, used)?;
    let (name, mut pending) = match request {
        Request::Chunks { name, pending } => (name, pending),
        Request::Refused(why) => return refuse(&mut conn, &why),
    };
    let w = &mut conn;
    w.write_all(&ACCEPTED.to_le_bytes())?;
    let mut buf = Vec::with_capacity(payload.index().chunk_size as usize + 8);
    while !pending.is_empty() {
        let Some(n) = shelf.take(&mut pending, KEEPALIVE_EVERY) else {
            w.write_all(&KEEPALIVE.to_le_bytes()).map_err(|source| RelayError::Gone { name: name.clone(), source })?;
            w.flush().map_err(|source| RelayError::Gone { name: name.clone(), source })?;
            continue;
        };
        let (s, e) = payload.chunk_range(n);
        buf.resize(8 + (e - s) as usize, 0);
        buf[..8].copy_from_slice(&n.to_le_bytes());
        payload.file().read_exact_at(&mut buf[8..], s).map_err(|source| RelayError::ReadChunk { chunk: n, source })?;
        w.write_all(&buf).map_err(|source| RelayError::Gone { name: name.clone(), source })?;
    }
    w.write_all(&END.to_le_bytes())?;
    w.flush()?;
    Ok(())
}

/// A connection to a relay: TLS when the operator named the cluster CA, else plain TCP.
pub enum RelayStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, the relay's certificate checked against the cluster CA for its address.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RelayStream::Plain(_) => "RelayStream::Plain",
            RelayStream::Tls(_) => "RelayStream::Tls",
        })
    }
}

impl Read for RelayStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RelayStream::Plain(s) => s.read(buf),
            RelayStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for RelayStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RelayStream::Plain(s) => s.write(buf),
            RelayStream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            RelayStream::Plain(s) => s.flush(),
            RelayStream::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `up` and asks for `chunks`; returns the stream of frames once the relay has
/// accepted, with a read timeout that turns a silent relay into an error.
pub fn connect(up: &Upstream, chunks: &BTreeSet<u64>) -> Result<BufReader<RelayStream>, RelayError> {
    let addr: SocketAddr = (up.addr.as_str(), up.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| RelayError::Unresolved { addr: up.addr.clone() })?;
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|source| RelayError::Connect {
        addr: up.addr.clone(),
        port: up.port,
        source,
    })?;
    conn.set_read_timeout(Some(SILENCE_LIMIT))?;
    conn.set_write_timeout(Some(SILENCE_LIMIT))?;
    conn.set_nodelay(true)?;
    let token: [u8; 32] = hex::decode(&up.token).ok().and_then(|t| t.try_into().ok()).ok_or(RelayError::BadToken)?;
    let mut stream = match &up.ca_pem {
        None => RelayStream::Plain(conn),
        Some(ca) => {
            let config = tls::client_config(ca).map_err(|e| RelayError::Tls(Box::new(e)))?;
            let name = ServerName::try_from(up.addr.clone()).map_err(|e| RelayError::Tls(Box::new(e)))?;
            let client = rustls::ClientConnection::new(config, name).map_err(|e| RelayError::Tls(Box::new(e)))?;
            RelayStream::Tls(Box::new(rustls::StreamOwned::new(client, conn)))
        }
    };
    let hello = encode_request(&up.name, &token, chunks.iter().copied());
    stream.write_all(&hello).and_then(|()| stream.flush()).map_err(RelayError::Hello)?;
    // Large reads: a chunk comes off the socket in few calls.
    let mut r = BufReader::with_capacity(256 << 10, stream);
    match decode_reply(&mut r).map_err(RelayError::Reply)? {
        Reply::Accepted => Ok(r),
        Reply::Refused(why) => Err(RelayError::RelayRefused { why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_full() {
        let a = [1u8; 32];
        assert!(same(&token(&a, "x"), &token(&a, "x")));
        assert!(!same(&token(&a, "x"), &token(&a, "y")));
    }

    #[test]
    fn shelf_hands_out_what_has_landed_in_request_order() {
        let shelf = Shelf::new(8, &[0, 1, 2, 3, 4], &[1, 3]);
        let mut pending: BTreeSet<u64> = [1, 2, 3, 4].into();
        assert_eq!(shelf.take(&mut pending, Duration::from_millis(1)), Some(2));
        assert_eq!(shelf.take(&mut pending, Duration::from_millis(1)), Some(4));
        assert_eq!(shelf.take(&mut pending, Duration::from_millis(1)), None);
        shelf.landed(3);
        assert_eq!(shelf.take(&mut pending, Duration::from_millis(1)), Some(3));
        assert!(!shelf.wanted[7]);
    }
}
