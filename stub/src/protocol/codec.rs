//! Small pure encoders and decoders shared by the protocol's messages: JSON lines, the
//! little-endian words of the binary streams, and their errors.
//!
//! Owns: [`DecodeError`], [`FrameError`], [`encode_line`], [`decode`], [`decode_secret`], [`read_u64`],
//! [`split_first_line`].

use serde::Serialize;
use std::io::Read;

/// Splits a collected answer into its first line (the hello, without the newline) and the rest.
pub fn split_first_line(out: &[u8]) -> (Option<&str>, &[u8]) {
    if out.is_empty() {
        return (None, out);
    }
    let end = out.iter().position(|&b| b == b'\n').unwrap_or(out.len());
    let rest = out.get(end + 1..).unwrap_or(&[]);
    (Some(std::str::from_utf8(&out[..end]).unwrap_or("")), rest)
}

/// A message that does not read as this protocol.
#[derive(Debug, thiserror::Error)]
#[error("{what} does not read as the ferry protocol this build speaks: {cause} (it was `{text}`)")]
pub struct DecodeError {
    /// Which message.
    pub what: &'static str,
    /// What serde (or the frame reader) said.
    pub cause: String,
    /// The message, shortened.
    pub text: String,
}

/// One message as a JSON line (with its newline).
pub fn encode_line<T: Serialize>(msg: &T) -> String {
    // Serializing these plain structs cannot fail: no maps with non-string keys, no I/O.
    let mut s = serde_json::to_string(msg).unwrap_or_default();
    s.push('\n');
    s
}

/// One JSON message (a line, or a whole answer), as `what`.
pub fn decode<T: serde::de::DeserializeOwned>(what: &'static str, text: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(text).map_err(|e| DecodeError {
        what,
        cause: e.to_string(),
        text: clip(String::from_utf8_lossy(text).trim()),
    })
}

/// Like [`decode`], for a message that holds secrets (a key, the credential): the error says
/// where the message stopped reading, never what it held, not even in serde's own words (which
/// quote values).
pub fn decode_secret<T: serde::de::DeserializeOwned>(what: &'static str, text: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(text).map_err(|e| DecodeError {
        what,
        cause: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
        text: "withheld: it holds secrets".into(),
    })
}

/// At most 200 characters of `s`, for messages.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A stream that does not read as this protocol's frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream broke or ended while reading `what`.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The bytes arrived but are not what the protocol allows.
    #[error("{0}")]
    Bad(String),
}

impl FrameError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FrameError {
        let what = what.into();
        move |source| FrameError::Io { what, source }
    }
}

/// One little-endian u64.
pub fn read_u64(r: &mut impl Read) -> Result<u64, FrameError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(FrameError::io("the stream ended early"))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Hello;

    #[test]
    fn first_lines_split() {
        assert_eq!(split_first_line(b""), (None, &b""[..]));
        assert_eq!(split_first_line(b"a\nb\n"), (Some("a"), &b"b\n"[..]));
        assert_eq!(split_first_line(b"a"), (Some("a"), &b""[..]));
    }

    #[test]
    fn decode_errors_name_the_message() {
        let err = decode::<Hello>("the agent's hello", b"{\"protocol\":\"one\"}").unwrap_err().to_string();
        assert!(err.starts_with("the agent's hello does not read as the ferry protocol"), "{err}");
        assert!(err.contains("{\"protocol\":\"one\"}"), "{err}");
    }
}
