//! Registry credentials: `--registry-auth HOST=USER:PASS` first, then the `auths` section of
//! Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
//!
//! Credentials are only ever sent to the host they are configured for (a mirror never receives
//! the upstream registry's password), are never printed (`Debug` redacts them) and never stored
//! in the installer.

use base64::Engine as _;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// A user name and password (or token) for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// User name.
    pub user: String,
    /// Password or access token.
    pub password: String,
    /// Where it came from, for messages (`--registry-auth`, `~/.docker/config.json`).
    pub origin: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Login {{ user: {:?}, password: <redacted>, origin: {:?} }}", self.user, self.origin)
    }
}

impl Login {
    /// The `Authorization: Basic …` value.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

/// Logins by registry host.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_host: HashMap<String, Login>,
    /// Hosts for which Docker's config names a credential helper ferry does not run.
    helpers: Vec<String>,
    config_path: Option<PathBuf>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://host:5000/x` → `host:5000`.
pub fn host_key(s: &str) -> String {
    let s = s.trim();
    let s = s.split_once("://").map(|(_, rest)| rest).unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

/// Registry logins that cannot be read. No variant quotes a password or the config's content.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Docker's config cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Docker's config is not JSON.
    #[error("{origin} is not valid JSON (line {line})")]
    Json {
        /// The config file.
        origin: String,
        /// Where.
        line: usize,
    },
    /// An `auth` that is not `base64(USER:PASSWORD)`.
    #[error("{origin}: auths.{key}.auth is not base64 of USER:PASSWORD")]
    Auth {
        /// The config file.
        origin: String,
        /// The registry key.
        key: String,
    },
    /// A `--registry-auth` that is not `HOST=USER:PASSWORD`.
    #[error("--registry-auth `{host}=…` must be HOST=USER:PASSWORD")]
    Cli {
        /// The host part as given.
        host: String,
    },
}

impl Credentials {
    /// Reads Docker's config (when present) and applies `--registry-auth` values over it.
    pub fn load(cli: &[String]) -> Result<Credentials, CredentialsError> {
        let mut creds = Credentials::default();
        if let Some(path) = docker_config_path()
            && path.exists()
        {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| CredentialsError::Read { path: path.clone(), source })?;
            creds.add_docker_config(&text, &path.display().to_string())?;
            creds.config_path = Some(path);
        }
        for arg in cli {
            let (host, login) = parse_cli(arg)?;
            creds.by_host.insert(host, login);
        }
        Ok(creds)
    }

    /// Adds the `auths` of a Docker `config.json`.
    pub fn add_docker_config(&mut self, text: &str, origin: &str) -> Result<(), CredentialsError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Config {
            #[serde(default)]
            auths: HashMap<String, Entry>,
            #[serde(default)]
            creds_store: Option<String>,
            #[serde(default)]
            cred_helpers: HashMap<String, String>,
        }
        #[derive(serde::Deserialize, Default)]
        struct Entry {
            #[serde(default)]
            auth: Option<String>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<String>,
        }
        // Never quote the file's content in errors: it holds secrets.
        let cfg: Config =
            serde_json::from_str(text).map_err(|e| CredentialsError::Json { origin: origin.into(), line: e.line() })?;
        for (key, entry) in cfg.auths {
            let host = host_key(&key);
            let login = if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .and_then(|d| d.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
                match decoded {
                    Some((user, password)) => Login { user, password, origin: origin.into() },
                    None => return Err(CredentialsError::Auth { origin: origin.into(), key }),
                }
            } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
                Login { user, password, origin: origin.into() }
            } else {
                continue;
            };
            self.by_host.entry(host).or_insert(login);
        }
        if cfg.creds_store.is_some() {
            self.helpers.push("*".into());
        }
        self.helpers.extend(cfg.cred_helpers.keys().map(|k| host_key(k)));
        Ok(())
    }

    /// The login for `host` (`host[:port]`).
    pub fn get(&self, host: &str) -> Option<&Login> {
        self.by_host.get(&host_key(host))
    }

    /// Adds a login (tests, or callers with their own source).
    pub fn insert(&mut self, host: &str, login: Login) {
        self.by_host.insert(host_key(host), login);
    }

    /// A hint for authentication failures on `host` when no login was found for it.
    pub fn hint(&self, host: &str) -> String {
        let key = host_key(host);
        if self.helpers.iter().any(|h| h == "*" || *h == key) {
            format!(
                "{} names a credential helper for {key}, which ferry does not run; pass --registry-auth {key}=USER:PASSWORD",
                self.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "Docker's config".into())
            )
        } else {
            format!("no credentials for {key}: pass --registry-auth {key}=USER:PASSWORD or run `docker login {key}`")
        }
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// `HOST=USER:PASS`. The error never repeats the password.
fn parse_cli(arg: &str) -> Result<(String, Login), CredentialsError> {
    let bad = || CredentialsError::Cli { host: arg.split('=').next().unwrap_or("").to_string() };
    let (host, cred) = arg.split_once('=').ok_or_else(bad)?;
    let (user, password) = cred.split_once(':').ok_or_else(bad)?;
    if host.is_empty() || user.is_empty() {
        return Err(bad());
    }
    Ok((host_key(host), Login { user: user.into(), password: password.into(), origin: "--registry-auth".into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let mut c = Credentials::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        c.add_docker_config(
            &format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"quay.io":{{"username":"bob","password":"pw"}},"empty.io":{{}}}},"credHelpers":{{"gcr.io":"gcloud"}}}}"#
            ),
            "cfg",
        )
        .unwrap();
        let l = c.get("docker.io").unwrap();
        assert_eq!((l.user.as_str(), l.password.as_str()), ("alice", "s3cr:et"));
        assert_eq!(c.get("registry-1.docker.io").unwrap().user, "alice");
        assert_eq!(c.get("quay.io").unwrap().user, "bob");
        assert!(c.get("empty.io").is_none());
        assert!(c.hint("gcr.io").contains("credential helper"));
        assert!(c.hint("other.io").contains("--registry-auth other.io="));
        assert!(!format!("{c:?}").contains("s3cr"), "Debug must redact");
    }

    #[test]
    fn cli_values() {
        let (h, l) = parse_cli("127.0.0.1:5000=u:p:w").unwrap();
        assert_eq!((h.as_str(), l.user.as_str(), l.password.as_str()), ("127.0.0.1:5000", "u", "p:w"));
        let e = parse_cli("host=nopassword").unwrap_err().to_string();
        assert!(e.contains("HOST=USER:PASSWORD") && !e.contains("nopassword"), "{e}");
        assert!(parse_cli("justhost").is_err());
        assert!(parse_cli("bad json").is_err());
        let mut c = Credentials::default();
        let e = c.add_docker_config(r#"{"auths": {"x": {"auth": "secret!!"}}}"#, "cfg").unwrap_err().to_string();
        assert!(!e.contains("secret!!"), "{e}");
    }
}
