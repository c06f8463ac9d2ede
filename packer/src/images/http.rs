//! What every request to a registry shares: reading a bounded body, summarising an error
//! body for a message, and percent-encoding a query value.

use std::io::Read;

/// `s` as a URL query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `code: message` pairs of a distribution error body, or a short excerpt of the body.
pub fn describe_body(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        let parts: Vec<String> = e.errors.iter().map(|i| format!("{}: {}", i.code, i.message)).collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().replace('\n', " ");
    if text.is_empty() { "empty body".into() } else { text }
}

/// At most `limit + 1` bytes of a response's body (one more than allowed tells the caller it
/// was too long).
pub fn read_limited(resp: ureq::http::Response<ureq::Body>, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.into_body().into_reader().take(limit + 1).read_to_end(&mut out)?;
    Ok(out)
}
