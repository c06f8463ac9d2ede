//! The relay wire between agents: a downstream agent asks an upstream one (a relay) for chunks.
//!
//! ```text
//! (inside TLS when the operator gave the relay an identity: see [`Upstream::ca_pem`])
//! downstream -> "FERRY-RELAY1\n" name_len name token[32] count chunk[count]     (u64 little-endian)
//! upstream   <- ACCEPTED, then frames (chunk_no bytes(chunk) | KEEPALIVE)… END (see [`super::receive`])
//!            <- or REFUSED msg_len msg
//! ```
//!
//! Owns: the wire constants, the token a downstream host presents (`sha256(secret ‖ "ferry relay
//! token v1" ‖ len(name) ‖ name)`), the [`Upstream`] the operator names in a PULL frame, and the
//! encoders and decoders of the request and the reply.

use super::codec::{FrameError, read_u64};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;

/// First bytes of a downstream's request.
pub const HELLO: &[u8] = b"FERRY-RELAY1\n";
/// The upstream took the request; frames follow.
pub const ACCEPTED: u64 = 0x4645_5252_594f_4b21;
/// The upstream refused the request; a length-prefixed message follows.
pub const REFUSED: u64 = 0x4645_5252_594e_4f21;
/// Bytes of a listener's secret.
pub const SECRET_LEN: usize = 32;
/// The longest host name a request may carry.
pub const MAX_NAME: u64 = 255;
/// The longest refusal message a downstream reads.
const MAX_REFUSAL: u64 = 4096;
const TOKEN_CONTEXT: &[u8] = b"ferry relay token v1";

/// The secret a listener checks tokens against.
pub type Secret = [u8; SECRET_LEN];

/// The token that lets the host called `name` pull from the listener holding `secret`.
pub fn token(secret: &Secret, name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(TOKEN_CONTEXT);
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.finalize().into()
}

/// Where to pull from, as the operator says it in a PULL frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The relay host's address.
    pub addr: String,
    /// Its listener's port.
    pub port: u16,
    /// This host's name, as the token was made for it.
    pub name: String,
    /// The token, hex.
    pub token: String,
    /// The cluster CA (PEM) the relay's certificate must chain to: the connection is TLS. `None`
    /// speaks plain TCP (a relay the operator gave no identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// A downstream's request: who it is, its token, and the chunks it wants.
pub fn encode_request(name: &str, token: &[u8; 32], chunks: impl ExactSizeIterator<Item = u64>) -> Vec<u8> {
    let mut hello = HELLO.to_vec();
    hello.extend_from_slice(&(name.len() as u64).to_le_bytes());
    hello.extend_from_slice(name.as_bytes());
    hello.extend_from_slice(token);
    hello.extend_from_slice(&(chunks.len() as u64).to_le_bytes());
    for n in chunks {
        hello.extend_from_slice(&n.to_le_bytes());
    }
    hello
}

/// The start of a request: the name and the token presented. The chunk count and the chunks
/// follow ([`read_u64`]); the listener checks the token before it reads them.
pub fn decode_request_head(r: &mut impl Read) -> Result<(String, [u8; 32]), FrameError> {
    let mut magic = [0u8; HELLO.len()];
    r.read_exact(&mut magic).map_err(|source| FrameError::Io { what: "reading the hello".into(), source })?;
    if magic != HELLO {
        return Err(FrameError::Bad("not a ferry relay hello".into()));
    }
    let name_len = read_u64(r)?;
    if name_len > MAX_NAME {
        return Err(FrameError::Bad("bad name length".into()));
    }
    let mut name = vec![0u8; name_len as usize];
    r.read_exact(&mut name).map_err(|source| FrameError::Io { what: "reading the name".into(), source })?;
    let mut token = [0u8; 32];
    r.read_exact(&mut token).map_err(|source| FrameError::Io { what: "reading the token".into(), source })?;
    Ok((String::from_utf8_lossy(&name).into_owned(), token))
}

/// The upstream's refusal, `why`.
pub fn encode_refusal(why: &str) -> Vec<u8> {
    let mut msg = REFUSED.to_le_bytes().to_vec();
    msg.extend_from_slice(&(why.len() as u64).to_le_bytes());
    msg.extend_from_slice(why.as_bytes());
    msg
}

/// The upstream's reply to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Frames follow.
    Accepted,
    /// Refused, and why.
    Refused(String),
}

/// Reads the upstream's reply.
pub fn decode_reply(r: &mut impl Read) -> Result<Reply, FrameError> {
    match read_u64(r)? {
        ACCEPTED => Ok(Reply::Accepted),
        REFUSED => {
            let len = read_u64(r)?.min(MAX_REFUSAL);
            let mut msg = vec![0u8; len as usize];
            r.read_exact(&mut msg).map_err(|source| FrameError::Io { what: "reading the refusal".into(), source })?;
            Ok(Reply::Refused(String::from_utf8_lossy(&msg).into_owned()))
        }
        other => Err(FrameError::Bad(format!("the relay answered {other:#x}, not a ferry relay"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_secret_and_name() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert_eq!(token(&a, "10.0.0.2"), token(&a, "10.0.0.2"));
        assert_ne!(token(&a, "10.0.0.2"), token(&a, "10.0.0.3"));
        assert_ne!(token(&a, "10.0.0.2"), token(&b, "10.0.0.2"));
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let req = encode_request("10.0.0.2", &[3u8; 32], [1u64, 5].into_iter());
        let mut r = &req[..];
        assert_eq!(decode_request_head(&mut r).unwrap(), ("10.0.0.2".to_string(), [3u8; 32]));
        assert_eq!(read_u64(&mut r).unwrap(), 2);
        assert_eq!([read_u64(&mut r).unwrap(), read_u64(&mut r).unwrap()], [1, 5]);
        assert!(r.is_empty());
        assert_eq!(decode_reply(&mut &ACCEPTED.to_le_bytes()[..]).unwrap(), Reply::Accepted);
        assert_eq!(
            decode_reply(&mut &encode_refusal("wrong token")[..]).unwrap(),
            Reply::Refused("wrong token".into())
        );
        let err = decode_reply(&mut &7u64.to_le_bytes()[..]).unwrap_err().to_string();
        assert!(err.contains("not a ferry relay"), "{err}");
        let mut up = Upstream { addr: "a".into(), port: 1, name: "n".into(), token: "t".into(), ca_pem: None };
        assert_eq!(serde_json::from_slice::<Upstream>(&serde_json::to_vec(&up).unwrap()).unwrap(), up);
        up.ca_pem = Some("CA".into());
        assert_eq!(serde_json::from_slice::<Upstream>(&serde_json::to_vec(&up).unwrap()).unwrap(), up);
    }
}
