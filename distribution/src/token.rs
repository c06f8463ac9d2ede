//! Bearer tokens from a registry's token service (the Docker token protocol), for pulls and
//! pushes alike: the URL with its scope and service, the login sent as Basic when there is one,
//! and the token read from `token` or `access_token`.

use crate::credentials::Login;
use crate::http::{describe_body, percent_encode, read_limited};

/// Why no token came.
#[derive(Debug)]
pub enum TokenError {
    /// The service could not be reached or read.
    Unreachable(String),
    /// It answered something else than 200.
    Refused {
        /// The status.
        status: u16,
        /// The error body, summarised.
        body: String,
    },
    /// It answered 200 without a token.
    NoToken(&'static str),
}

/// Asks `realm` for a token for `scope` (and `service`), with `login`; the `Authorization` value.
pub fn bearer(
    agent: &ureq::Agent,
    realm: &str,
    scope: &str,
    service: Option<&str>,
    login: Option<&Login>,
) -> Result<String, TokenError> {
    let mut url = format!("{realm}{}scope={}", if realm.contains('?') { '&' } else { '?' }, percent_encode(scope));
    if let Some(service) = service {
        url.push_str(&format!("&service={}", percent_encode(service)));
    }
    let mut req = agent.get(&url);
    if let Some(l) = login {
        req = req.header("Authorization", l.basic_header());
    }
    let resp = req.call().map_err(|e| TokenError::Unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = read_limited(resp, 1 << 20).map_err(|e| TokenError::Unreachable(e.to_string()))?;
    if status != 200 {
        return Err(TokenError::Refused { status, body: describe_body(&body) });
    }
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let t: Token =
        serde_json::from_slice(&body).map_err(|_| TokenError::NoToken("answered something that is not a token"))?;
    let token =
        t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or(TokenError::NoToken("answered without a token"))?;
    Ok(format!("Bearer {token}"))
}
