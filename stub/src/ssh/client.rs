//! The real [`RemoteHost`]: russh sessions, optionally through a bastion (a `direct-tcpip`
//! channel on the bastion's session carries the node's SSH connection, end to end encrypted).
//!
//! Authentication tries, in order: the key file (passphrase from the environment or a prompt),
//! the ssh-agent (`SSH_AUTH_SOCK`), then the password. Host keys are checked against a
//! known_hosts file: an unknown key is refused unless `accept_new` (then it is recorded), a
//! changed key is always refused.

use super::{Counting, Exec, RemoteHost, Secret, Secrets, SshError, quote};
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{self, PrivateKeyWithHashAlg, PublicKeyOrCertificate, known_hosts};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Connection settings shared by every host of a run.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// known_hosts file.
    pub known_hosts: PathBuf,
    /// Record unknown host keys instead of refusing them.
    pub accept_new: bool,
    /// Limit on TCP connect + key exchange + authentication.
    pub connect_timeout: Duration,
    /// Keepalive interval; after 3 unanswered keepalives the session is dropped.
    pub keepalive: Duration,
    /// Passwords and passphrases.
    pub secrets: Secrets,
}

/// Serialises known_hosts appends across parallel connections.
static KNOWN_HOSTS_LOCK: Mutex<()> = Mutex::new(());

/// Checks the server key and remembers why it refused one, for the error message.
pub struct Checker {
    host: String,
    port: u16,
    path: PathBuf,
    accept_new: bool,
    verdict: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("the server offered a certificate; ferry checks plain host keys only".into());
            return Ok(false);
        };
        let fp = key.fingerprint(keys::HashAlg::Sha256);
        let _guard = KNOWN_HOSTS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let result = if self.path.exists() {
            known_hosts::check_known_hosts_path(&self.host, self.port, key, &self.path)
        } else {
            Ok(false)
        };
        match result {
            Ok(true) => Ok(true),
            Ok(false) if self.accept_new => {
                if let Some(dir) = self.path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                match known_hosts::learn_known_hosts_path(&self.host, self.port, key, &self.path) {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("cannot record its host key in {}: {e}", self.path.display()));
                        Ok(false)
                    }
                }
            }
            Ok(false) => {
                *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "unknown host key {fp}: not in {}; check it and pass --accept-new-host-keys to record it",
                    self.path.display()
                ));
                Ok(false)
            }
            Err(keys::Error::KeyChanged { line }) => {
                *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "HOST KEY CHANGED: the host now presents {fp}, which differs from line {line} of {}; \
                     refusing (possible man-in-the-middle). If the host was reinstalled, remove that line",
                    self.path.display()
                ));
                Ok(false)
            }
            Err(e) => {
                *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("cannot read {}: {e}", self.path.display()));
                Ok(false)
            }
        }
    }
}

/// How commands become root on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SudoMode {
    /// Logged in as root.
    Root,
    /// `sudo -n`.
    NoPassword,
    /// `sudo -S` with the password as the first line of stdin.
    Password,
}

/// Where to log in.
#[derive(Clone, Debug)]
pub struct Login {
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Key file.
    pub key: Option<PathBuf>,
    /// Whether to use sudo.
    pub sudo: bool,
}

/// Loaded private keys by path (each key file is decrypted once per run).
static KEYS: Mutex<Option<HashMap<PathBuf, Arc<keys::PrivateKey>>>> = Mutex::new(None);

/// This module's results.
type Result<T, E = SshError> = std::result::Result<T, E>;

fn load_key(path: &Path, secrets: &Secrets) -> Result<Arc<keys::PrivateKey>> {
    if let Some(k) = KEYS.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(path) {
        return Ok(k.clone());
    }
    let key = match keys::load_secret_key(path, None) {
        Ok(k) => k,
        Err(keys::Error::KeyIsEncrypted) => {
            let pass = match &secrets.key_passphrase {
                Some(p) => p.clone(),
                None => super::prompt_secret(&format!("passphrase for {}", path.display()))?,
            };
            keys::load_secret_key(path, Some(pass.expose()))
                .map_err(|cause| SshError::DecryptKey { path: path.to_path_buf(), cause })?
        }
        Err(cause) => return Err(SshError::LoadKey { path: path.to_path_buf(), cause }),
    };
    let key = Arc::new(key);
    KEYS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), key.clone());
    Ok(key)
}

fn config(opts: &SshOptions) -> Arc<client::Config> {
    Arc::new(client::Config {
        keepalive_interval: Some(opts.keepalive),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        // A larger receive window keeps output flowing; sends are bounded by the server's window.
        window_size: 8 << 20,
        maximum_packet_size: 32768,
        preferred: russh::Preferred { cipher: std::borrow::Cow::Borrowed(ciphers()), ..Default::default() },
        ..Default::default()
    })
}

/// Cipher preference, fastest first for this CPU. Distribution pushes hundreds of MB per host
/// through the cipher on both ends (russh on ring here, OpenSSH/OpenSSL on the host): with AES-NI
/// and carry-less multiply, AES-GCM costs both ends far less CPU than chacha20-poly1305 (russh's
/// default first choice), which stays first on CPUs without them. All are AEAD; nothing weaker
/// is offered than russh's defaults.
fn ciphers() -> &'static [russh::cipher::Name] {
    use russh::cipher::{AES_128_CTR, AES_128_GCM, AES_192_CTR, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305};
    static GCM_FIRST: &[russh::cipher::Name] =
        &[AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, AES_256_CTR, AES_192_CTR, AES_128_CTR];
    static CHACHA_FIRST: &[russh::cipher::Name] =
        &[CHACHA20_POLY1305, AES_128_GCM, AES_256_GCM, AES_256_CTR, AES_192_CTR, AES_128_CTR];
    #[cfg(target_arch = "x86_64")]
    let fast_aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let fast_aes = std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let fast_aes = false;
    if fast_aes { GCM_FIRST } else { CHACHA_FIRST }
}

async fn authenticate(h: &mut Handle<Checker>, login: &Login, opts: &SshOptions) -> Result<()> {
    let mut tried = Vec::new();
    if let Some(path) = &login.key {
        let key = load_key(path, &opts.secrets)?;
        let hash = h.best_supported_rsa_hash().await.ok().flatten().flatten();
        let answer = h.authenticate_publickey(&login.user, PrivateKeyWithHashAlg::new(key, hash)).await;
        if answer.map_err(|e| SshError::session("offering the key", e))?.success() {
            return Ok(());
        }
        tried.push(format!("key {}", path.display()));
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match keys::agent::client::AgentClient::connect_env().await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                let hash = h.best_supported_rsa_hash().await.ok().flatten().flatten();
                for id in &ids {
                    let pk = id.public_key().into_owned();
                    if let Ok(r) = h.authenticate_publickey_with(&login.user, pk, hash, &mut agent).await
                        && r.success()
                    {
                        return Ok(());
                    }
                }
                tried.push(format!("ssh-agent ({} keys)", ids.len()));
            }
            Err(e) => tried.push(format!("ssh-agent (unreachable: {e})")),
        }
    }
    if let Some(pw) = &opts.secrets.ssh_password {
        let answer = h.authenticate_password(&login.user, pw.expose()).await;
        if answer.map_err(|e| SshError::session("offering the password", e))?.success() {
            return Ok(());
        }
        tried.push("password (wrong password?)".into());
    }
    let user = login.user.clone();
    Err(if tried.is_empty() { SshError::NoCredentials { user } } else { SshError::AuthFailed { user, tried } })
}

async fn handshake<S>(stream: S, login: &Login, opts: &SshOptions) -> Result<Handle<Checker>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let verdict = Arc::new(Mutex::new(None));
    let checker = Checker {
        host: login.host.clone(),
        port: login.port,
        path: opts.known_hosts.clone(),
        accept_new: opts.accept_new,
        verdict: verdict.clone(),
    };
    let mut h = match client::connect_stream(config(opts), stream, checker).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(v) = verdict.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(SshError::HostKey(v));
            }
            return Err(SshError::Handshake(e));
        }
    };
    authenticate(&mut h, login, opts).await?;
    Ok(h)
}

/// A logged-in session to a bastion, shared by every host behind it.
pub struct Jump {
    handle: Handle<Checker>,
    name: String,
}

impl Jump {
    /// Connects and logs in to the bastion.
    pub async fn connect(login: &Login, opts: &SshOptions) -> Result<Arc<Jump>> {
        let name = format!("bastion {}@{}:{}", login.user, login.host, login.port);
        let fut = async {
            let tcp = tokio::net::TcpStream::connect((login.host.as_str(), login.port))
                .await
                .map_err(|e| SshError::Connect { what: "connecting".into(), cause: e.to_string() })?;
            tcp.set_nodelay(true).ok();
            handshake(tcp, login, opts).await
        };
        let seconds = opts.connect_timeout.as_secs();
        let handle = tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| SshError::Timeout { what: name.clone(), seconds })?
            .map_err(|cause| SshError::Bastion { name: name.clone(), cause: Box::new(cause) })?;
        Ok(Arc::new(Jump { handle, name }))
    }
}

/// A logged-in session to one host.
pub struct SshHost {
    addr: String,
    handle: Handle<Checker>,
    sudo: SudoMode,
    sudo_password: Option<Secret>,
    sent: Arc<AtomicU64>,
    _jump: Option<Arc<Jump>>,
}

impl SshHost {
    /// Connects (directly or through `jump`), logs in and works out how to become root.
    pub async fn connect(login: &Login, opts: &SshOptions, jump: Option<Arc<Jump>>) -> Result<SshHost> {
        let fut = async {
            let handle = match &jump {
                None => {
                    let tcp = tokio::net::TcpStream::connect((login.host.as_str(), login.port)).await.map_err(|e| {
                        SshError::Connect { what: format!("connecting to port {}", login.port), cause: e.to_string() }
                    })?;
                    tcp.set_nodelay(true).ok();
                    handshake(tcp, login, opts).await?
                }
                Some(j) => {
                    let ch = j
                        .handle
                        .channel_open_direct_tcpip(login.host.clone(), login.port as u32, "127.0.0.1", 0)
                        .await
                        .map_err(|e| SshError::Connect {
                            what: format!("{} could not open a connection to port {}", j.name, login.port),
                            cause: e.to_string(),
                        })?;
                    handshake(ch.into_stream(), login, opts).await?
                }
            };
            Ok(handle)
        };
        let seconds = opts.connect_timeout.as_secs();
        let handle = tokio::time::timeout(opts.connect_timeout, fut)
            .await
            .map_err(|_| SshError::Timeout { what: "unreachable".into(), seconds })??;
        let mut host = SshHost {
            addr: login.host.clone(),
            handle,
            sudo: SudoMode::Root,
            sudo_password: None,
            sent: Arc::new(AtomicU64::new(0)),
            _jump: jump,
        };
        if login.sudo || login.user != "root" {
            host.sudo = SudoMode::NoPassword;
            let probe = host.raw(&host.wrap("true"), b"").await?;
            if !probe.ok() {
                let msg = probe.tail(2);
                match opts.secrets.for_sudo() {
                    Some(pw) if msg.contains("password") => {
                        host.sudo = SudoMode::Password;
                        host.sudo_password = Some(pw.clone());
                        let probe = host.raw(&host.wrap("true"), b"").await?;
                        if !probe.ok() {
                            let answer =
                                format!("{} (wrong sudo password, or the user may not use sudo)", probe.tail(2));
                            return Err(SshError::SudoRefused { user: login.user.clone(), answer });
                        }
                    }
                    _ if msg.contains("password") => {
                        return Err(SshError::SudoPasswordNeeded { user: login.user.clone(), answer: msg });
                    }
                    _ => return Err(SshError::SudoRefused { user: login.user.clone(), answer: msg }),
                }
            }
        }
        Ok(host)
    }

    /// How this host becomes root.
    pub fn sudo_mode(&self) -> SudoMode {
        self.sudo
    }

    fn wrap(&self, cmd: &str) -> String {
        match self.sudo {
            SudoMode::Root => cmd.to_string(),
            SudoMode::NoPassword => format!("sudo -n -- sh -c {}", quote(cmd)),
            // -k: never use a cached credential, so sudo always reads (and consumes) the
            // password line and the rest of stdin reaches the command untouched.
            SudoMode::Password => format!("sudo -k -S -p '' -- sh -c {}", quote(cmd)),
        }
    }

    async fn raw(&self, wrapped: &str, stdin: &[u8]) -> Result<super::Output> {
        let exec = self.open_wrapped(wrapped).await?;
        collect(exec, stdin).await.map_err(|e| SshError::session("reading a remote command's output", e))
    }

    async fn open_wrapped(&self, wrapped: &str) -> Result<Exec> {
        let ch =
            self.handle.channel_open_session().await.map_err(|e| SshError::session("opening an SSH channel", e))?;
        ch.exec(true, wrapped.as_bytes()).await.map_err(|e| SshError::session("starting a remote command", e))?;
        let (mut read, write) = ch.split();
        let mut writer = write.make_writer();
        if self.sudo == SudoMode::Password
            && let Some(pw) = &self.sudo_password
        {
            let mut line = pw.expose().as_bytes().to_vec();
            line.push(b'\n');
            let sent = writer.write_all(&line).await;
            sent.map_err(|e| SshError::session("sending the sudo password", e))?;
            line.iter_mut().for_each(|b| *b = 0);
        }
        let (mut out_w, out_r) = tokio::io::duplex(1 << 20);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut status = None;
            let mut stderr: Vec<u8> = Vec::new();
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        // A reader that went away is no reason to stop: draining on lets the
                        // exit status arrive.
                        let _ = out_w.write_all(&data).await;
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        stderr.extend_from_slice(&data);
                        if stderr.len() > 64 << 10 {
                            stderr.drain(..stderr.len() - (64 << 10));
                        }
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        stderr.extend_from_slice(format!("killed by signal {signal_name:?}\n").as_bytes());
                        status = Some(128 + 9);
                    }
                    _ => {}
                }
            }
            let _ = out_w.shutdown().await;
            let _ = tx.send((status.unwrap_or(255), stderr));
        });
        Ok(Exec { stdin: Box::pin(Counting::new(writer, self.sent.clone())), stdout: Box::pin(out_r), finished: rx })
    }
}

async fn collect(exec: Exec, stdin: &[u8]) -> std::io::Result<super::Output> {
    use tokio::io::AsyncReadExt;
    let Exec { stdin: mut w, mut stdout, finished } = exec;
    let input = stdin.to_vec();
    let write = async move {
        let _ = w.write_all(&input).await;
        let _ = w.shutdown().await;
    };
    let mut out = Vec::new();
    let (_, r) = tokio::join!(write, stdout.read_to_end(&mut out));
    r?;
    let (status, stderr) = finished.await.unwrap_or((255, Vec::new()));
    Ok(super::Output { status, stdout: out, stderr })
}

impl RemoteHost for SshHost {
    fn addr(&self) -> &str {
        &self.addr
    }

    async fn open(&self, cmd: &str) -> anyhow::Result<Exec> {
        Ok(self.open_wrapped(&self.wrap(cmd)).await?)
    }

    fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}
