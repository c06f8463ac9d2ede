//! Response bodies and the access log: one line per request, written when the response body is
//! finished or dropped, so the line carries the bytes actually handed to the connection and the
//! full duration (an interrupted download shows as `aborted`).
//!
//! Line format (stderr, one `write` per line so concurrent lines never interleave):
//! `2026-11-20T10:00:00.123Z 127.0.0.1:50432 "GET /v2/library/busybox/manifests/1?ns=docker.io" 200 349 0.4ms "containerd/1.6.20"`

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// Largest frame handed to hyper at a time. Frames are zero-copy slices; the size only bounds
/// how far the byte count can run ahead of what the socket really took.
const FRAME: usize = 1 << 20;

/// Requests served since startup (for the shutdown summary).
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// What the log line says about a request, filled in by the server.
#[derive(Debug)]
pub struct LogEntry {
    /// Client address.
    pub client: SocketAddr,
    /// HTTP method.
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// Response status.
    pub status: u16,
    /// `User-Agent`, if any.
    pub user_agent: String,
    /// When the request arrived.
    pub started: Instant,
}

/// A response body: a zero-copy [`Bytes`] (a slice of the mapped installer, or a small JSON
/// document) streamed in frames, with an exact size so hyper sends `Content-Length`.
pub struct ServeBody {
    data: Bytes,
    sent: u64,
    log: Option<LogEntry>,
}

impl ServeBody {
    /// A body of `data`.
    pub fn new(data: Bytes) -> ServeBody {
        ServeBody { data, sent: 0, log: None }
    }

    /// No body (HEAD, 304): the headers still carry GET's Content-Length.
    pub fn empty() -> ServeBody {
        ServeBody::new(Bytes::new())
    }

    /// Logs the request when this body is done.
    pub fn with_log(mut self, entry: LogEntry) -> ServeBody {
        self.log = Some(entry);
        self
    }
}

impl Body for ServeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.data.len().min(FRAME);
        let frame = self.data.split_to(n);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

impl Drop for ServeBody {
    fn drop(&mut self) {
        if let Some(entry) = self.log.take() {
            write_line(&entry, self.sent, !self.data.is_empty());
        }
    }
}

fn write_line(e: &LogEntry, bytes: u64, aborted: bool) {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let ms = e.started.elapsed().as_secs_f64() * 1000.0;
    let line = format!(
        "{} {} \"{} {}\" {} {} {:.1}ms \"{}\"{}\n",
        timestamp(),
        e.client,
        e.method,
        e.target,
        e.status,
        bytes,
        ms,
        e.user_agent.replace('"', "'"),
        if aborted { " aborted" } else { "" }
    );
    // One write per line: stderr is unbuffered, so lines from concurrent requests never mix.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A diagnostic line on stderr, timestamped like access-log lines.
pub fn note(message: &str) {
    let line = format!("{} {message}\n", timestamp());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Current UTC time as RFC 3339 with milliseconds.
fn timestamp() -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = crate::units::rfc3339(now.as_secs());
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), now.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_bounded_and_size_is_exact() {
        let data = Bytes::from(vec![7u8; FRAME * 2 + 5]);
        let mut body = ServeBody::new(data);
        assert_eq!(body.size_hint().exact(), Some((FRAME * 2 + 5) as u64));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(f))) = Pin::new(&mut body).poll_frame(&mut cx) {
            sizes.push(f.into_data().unwrap().len());
        }
        assert_eq!(sizes, vec![FRAME, FRAME, 5]);
        assert!(body.is_end_stream());
        assert!(timestamp().ends_with('Z'));
    }
}
