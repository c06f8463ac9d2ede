//! The distribution stream between the operator and `agent receive`, and the frames a relay
//! sends (all integers little-endian u64):
//!
//! ```text
//! <- hello line (see the module above)
//! -> Header: "FERRY-RECV2\n" file_len tail_len tail(index_offset..file_len) want_count want[…]
//!    secret_len(0 or 32) secret identity_len(0, or ≤ MAX_IDENTITY) identity(JSON RelayIdentity)
//! <- Opening: {"missing":[chunk,…],"have":N,"relay":{"port":P}}\n   ("relay" only when listening)
//!    or a failed Outcome
//! -> frames: (chunk_no bytes(chunk))… then END, or PULL json_len json(Upstream)
//! <- after PULL: {"progress":B}\n… then the Outcome, or {"lost":"why","missing":[…]}\n and the
//!    operator sends further frames (another PULL, or the chunks themselves)
//! <- Outcome: {"ok":true,"chunks":K,"bytes":B,"had":H}\n   or {"ok":false,"error":"…"}\n
//! ```
//!
//! A relay's stream to a downstream agent is frames too: chunks, [`KEEPALIVE`] while it waits
//! for chunks of its own, then [`END`].
//!
//! Owns: the frame words, [`Header`], the pull frame, and the answer lines ([`Opening`],
//! [`Event`], [`Outcome`]).

use super::access::RelayIdentity;
use super::codec::{DecodeError, FrameError, decode, decode_secret, encode_line, read_u64};
use super::relay::{SECRET_LEN, Secret, Upstream};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// First bytes of the stream.
pub const MAGIC: &[u8] = b"FERRY-RECV3\n";
/// Ends a chunk stream.
pub const END: u64 = u64::MAX;
/// Tells the agent to pull from a relay: a length-prefixed JSON [`Upstream`] follows.
pub const PULL: u64 = u64::MAX - 1;
/// "Still here, nothing to send yet": sent by a relay while it waits for chunks from its own source.
pub const KEEPALIVE: u64 = u64::MAX - 2;
/// The largest tail (index, signature, trailer) a header may carry.
pub const MAX_TAIL: u64 = 300 << 20;
/// The most chunks a header may ask for.
pub const MAX_WANT: u64 = 1 << 32;
/// The largest pull request.
pub const MAX_PULL: u64 = 64 << 10;
/// The largest relay identity (a certificate chain and a key).
pub const MAX_IDENTITY: u64 = 64 << 10;

/// What a frame word says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// A chunk of this number follows (its length is the index's).
    Chunk(u64),
    /// The stream is complete.
    End,
    /// A pull request follows ([`decode_pull`]).
    Pull,
    /// Nothing yet; still there.
    Keepalive,
}

impl Word {
    /// The word as read off the stream.
    pub fn of(n: u64) -> Word {
        match n {
            END => Word::End,
            PULL => Word::Pull,
            KEEPALIVE => Word::Keepalive,
            n => Word::Chunk(n),
        }
    }
}

/// The session header the operator sends first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the whole installer.
    pub file_len: u64,
    /// Its tail: index, signature and trailer (`index_offset..file_len`).
    pub tail: Vec<u8>,
    /// The chunks this host must hold.
    pub want: Vec<u64>,
    /// The relay secret, when the host is to listen for downstream hosts.
    pub secret: Option<Secret>,
    /// The listener's TLS identity; `None` listens in plain TCP.
    pub identity: Option<RelayIdentity>,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = Vec::with_capacity(MAGIC.len() + self.tail.len() + 64 + self.want.len() * 8);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&self.file_len.to_le_bytes());
        head.extend_from_slice(&(self.tail.len() as u64).to_le_bytes());
        head.extend_from_slice(&self.tail);
        head.extend_from_slice(&(self.want.len() as u64).to_le_bytes());
        for n in &self.want {
            head.extend_from_slice(&n.to_le_bytes());
        }
        match &self.secret {
            Some(s) => {
                head.extend_from_slice(&(s.len() as u64).to_le_bytes());
                head.extend_from_slice(s);
            }
            None => head.extend_from_slice(&0u64.to_le_bytes()),
        }
        let identity = self.identity.as_ref().map(|i| serde_json::to_vec(i).unwrap_or_default()).unwrap_or_default();
        head.extend_from_slice(&(identity.len() as u64).to_le_bytes());
        head.extend_from_slice(&identity);
        head
    }

    /// Reads a header; `min_tail` is the shortest tail that can hold a trailer.
    pub fn decode(r: &mut impl Read, min_tail: u64) -> Result<Header, FrameError> {
        let mut magic = [0u8; MAGIC.len()];
        r.read_exact(&mut magic).map_err(FrameError::io("reading the stream header"))?;
        if magic != MAGIC {
            return Err(FrameError::Bad(
                "this is not a ferry distribution stream (different installer version?)".into(),
            ));
        }
        let file_len = read_u64(r)?;
        let tail_len = read_u64(r)?;
        if tail_len < min_tail || tail_len > MAX_TAIL || tail_len > file_len {
            return Err(FrameError::Bad(format!("bad tail length {tail_len}")));
        }
        let mut tail = vec![0u8; tail_len as usize];
        r.read_exact(&mut tail).map_err(FrameError::io("reading the index"))?;
        let want_count = read_u64(r)?;
        if want_count > MAX_WANT {
            return Err(FrameError::Bad(format!("bad chunk count {want_count}")));
        }
        let want = (0..want_count).map(|_| read_u64(r)).collect::<Result<Vec<u64>, _>>()?;
        let secret = match read_u64(r)? {
            0 => None,
            n if n == SECRET_LEN as u64 => {
                let mut s = [0u8; SECRET_LEN];
                r.read_exact(&mut s).map_err(FrameError::io("reading the relay secret"))?;
                Some(s)
            }
            n => return Err(FrameError::Bad(format!("bad relay secret length {n}"))),
        };
        let identity = match read_u64(r)? {
            0 => None,
            n if n <= MAX_IDENTITY => {
                let mut json = vec![0u8; n as usize];
                r.read_exact(&mut json).map_err(FrameError::io("reading the relay identity"))?;
                let id = decode_secret("the relay identity", &json).map_err(|e| FrameError::Bad(e.to_string()))?;
                Some(id)
            }
            n => return Err(FrameError::Bad(format!("bad relay identity length {n}"))),
        };
        Ok(Header { file_len, tail, want, secret, identity })
    }
}

/// The PULL frame telling the agent to pull from `up`.
pub fn encode_pull(up: &Upstream) -> Vec<u8> {
    let json = serde_json::to_vec(up).unwrap_or_default();
    let mut frame = PULL.to_le_bytes().to_vec();
    frame.extend_from_slice(&(json.len() as u64).to_le_bytes());
    frame.extend_from_slice(&json);
    frame
}

/// Reads the rest of a PULL frame (after its word).
pub fn decode_pull(r: &mut impl Read) -> Result<Upstream, FrameError> {
    let len = read_u64(r)?;
    if len > MAX_PULL {
        return Err(FrameError::Bad(format!("bad pull request length {len}")));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json).map_err(FrameError::io("reading the pull request"))?;
    decode("the pull request", &json).map_err(|e| FrameError::Bad(e.to_string()))
}

/// What a receive did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// Chunks written.
    pub chunks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Chunks that were already present.
    pub had: u64,
}

/// A relay listener's port, in the [`Offer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPort {
    /// The port.
    pub port: u16,
}

/// The agent's first answer after the header: what it lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Chunks it lacks, of those wanted.
    pub missing: Vec<u64>,
    /// Chunks wanted that it holds already.
    pub have: u64,
    /// Its relay listener, when it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayPort>,
}

/// How a receive ended: the last line of the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "OutcomeWire", try_from = "OutcomeWire")]
pub enum Outcome {
    /// Everything wanted is in place.
    Done(Received),
    /// The agent stopped, and why.
    Failed(String),
}

/// [`Outcome`] as it travels: `ok` says which.
#[derive(Serialize, Deserialize)]
struct OutcomeWire {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    had: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Outcome> for OutcomeWire {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Done(r) => {
                OutcomeWire { ok: true, chunks: Some(r.chunks), bytes: Some(r.bytes), had: Some(r.had), error: None }
            }
            Outcome::Failed(e) => OutcomeWire { ok: false, chunks: None, bytes: None, had: None, error: Some(e) },
        }
    }
}

impl TryFrom<OutcomeWire> for Outcome {
    type Error = String;
    fn try_from(w: OutcomeWire) -> Result<Self, String> {
        match (w.ok, w.chunks, w.bytes, w.had) {
            (true, Some(chunks), Some(bytes), Some(had)) => Ok(Outcome::Done(Received { chunks, bytes, had })),
            (true, ..) => Err("a finished receive without its counts".into()),
            (false, ..) => Ok(Outcome::Failed(w.error.unwrap_or_else(|| "no reason given".into()))),
        }
    }
}

/// The first line after the header: an offer, or the reason the agent stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Opening {
    /// What it lacks.
    Offer(Offer),
    /// It stopped (a bad header, another receiver, a signature it refuses).
    Refused(Outcome),
}

/// A line while the agent pulls, and the last line of the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    /// Bytes received so far; also a heartbeat (at least every keepalive while pulling).
    Progress {
        /// The bytes.
        progress: u64,
    },
    /// The relay failed; the operator is to send another source or the chunks still missing.
    Lost {
        /// Why, naming the relay.
        lost: String,
        /// Chunks still missing.
        missing: Vec<u64>,
    },
    /// The session is over.
    Finished(Outcome),
}

impl Opening {
    /// The line.
    pub fn line(&self) -> String {
        encode_line(self)
    }
    /// Reads the line.
    pub fn decode(line: &[u8]) -> Result<Opening, DecodeError> {
        decode("the agent's first answer", line)
    }
}

impl Event {
    /// The line.
    pub fn line(&self) -> String {
        encode_line(self)
    }
    /// Reads the line.
    pub fn decode(line: &[u8]) -> Result<Event, DecodeError> {
        decode("the agent's answer", line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let identity = RelayIdentity { cert_pem: "C".into(), key_pem: super::super::access::Secret::new("K") };
        for (secret, identity) in [(None, None), (Some([7u8; 32]), None), (Some([7u8; 32]), Some(identity))] {
            let h = Header { file_len: 1000, tail: vec![1; 200], want: vec![0, 3, 9], secret, identity };
            assert_eq!(Header::decode(&mut &h.encode()[..], 128).unwrap(), h);
        }
        let bad = Header { file_len: 10, tail: vec![1; 200], want: vec![], secret: None, identity: None }.encode();
        assert!(Header::decode(&mut &bad[..], 128).unwrap_err().to_string().contains("bad tail length 200"));
        let err = Header::decode(&mut &b"FERRY-RECV1\n"[..], 128).unwrap_err().to_string();
        assert!(err.contains("not a ferry distribution stream"), "{err}");
        let mut cut =
            Header { file_len: 1000, tail: vec![1; 200], want: vec![1], secret: None, identity: None }.encode();
        cut.truncate(cut.len() - 3);
        assert!(Header::decode(&mut &cut[..], 128).unwrap_err().to_string().contains("ended early"));
    }

    #[test]
    fn pulls_and_words_round_trip() {
        let up = Upstream {
            addr: "10.0.0.1".into(),
            port: 4000,
            name: "10.0.0.2".into(),
            token: "ab".into(),
            ca_pem: Some("CA".into()),
        };
        let frame = encode_pull(&up);
        let mut r = &frame[..];
        assert_eq!(Word::of(read_u64(&mut r).unwrap()), Word::Pull);
        assert_eq!(decode_pull(&mut r).unwrap(), up);
        assert_eq!([Word::of(END), Word::of(KEEPALIVE), Word::of(5)], [Word::End, Word::Keepalive, Word::Chunk(5)]);
        let huge = (MAX_PULL + 1).to_le_bytes();
        assert!(decode_pull(&mut &huge[..]).unwrap_err().to_string().contains("bad pull request length"));
    }

    #[test]
    fn answer_lines_round_trip_and_keep_their_shape() {
        let offer = Opening::Offer(Offer { missing: vec![1, 2], have: 3, relay: Some(RelayPort { port: 9 }) });
        assert_eq!(Opening::decode(offer.line().as_bytes()).unwrap(), offer);
        let plain = Opening::Offer(Offer { missing: vec![], have: 0, relay: None });
        assert_eq!(plain.line(), "{\"missing\":[],\"have\":0}\n");
        let refused = Opening::Refused(Outcome::Failed("no".into()));
        assert_eq!(refused.line(), "{\"ok\":false,\"error\":\"no\"}\n");
        assert_eq!(Opening::decode(refused.line().as_bytes()).unwrap(), refused);
        let events = [
            Event::Progress { progress: 5 },
            Event::Lost { lost: "pulling from 10.0.0.1: gone".into(), missing: vec![4] },
            Event::Finished(Outcome::Done(Received { chunks: 1, bytes: 2, had: 3 })),
            Event::Finished(Outcome::Failed("disk full".into())),
        ];
        for e in events {
            assert_eq!(Event::decode(e.line().as_bytes()).unwrap(), e, "{}", e.line());
        }
        assert_eq!(
            Event::Finished(Outcome::Done(Received { chunks: 1, bytes: 2, had: 3 })).line(),
            "{\"ok\":true,\"chunks\":1,\"bytes\":2,\"had\":3}\n"
        );
        // A finished line must carry its counts; anything else names the message.
        let err = Event::decode(b"{\"ok\":true}").unwrap_err().to_string();
        assert!(err.starts_with("the agent's answer does not read as the ferry protocol"), "{err}");
        // Fields this build does not know are ignored.
        let e = Event::decode(b"{\"progress\":7,\"rate\":1}").unwrap();
        assert_eq!(e, Event::Progress { progress: 7 });
    }
}
