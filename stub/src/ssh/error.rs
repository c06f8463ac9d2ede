//! What can go wrong reaching a host: typed, so callers can tell a refused host key from a
//! wrong password from a host that never answered, and worded for the operator.

use std::path::PathBuf;

/// Why a host (or the bastion) could not be reached, logged in to or made root on, or why a
/// command could not be started there.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No TCP connection (or no tunnel through the bastion).
    #[error("{what}: {cause}")]
    Connect {
        /// What was tried ("connecting to port 22", "bastion … could not open a connection …").
        what: String,
        /// The operating system's or the bastion's answer.
        cause: String,
    },
    /// Nothing within the connect timeout.
    #[error("{what}: no SSH answer within {seconds} s")]
    Timeout {
        /// "unreachable", or the bastion's name.
        what: String,
        /// The timeout.
        seconds: u64,
    },
    /// The server's host key was refused (unknown, changed, or unreadable known_hosts).
    #[error("{0}")]
    HostKey(String),
    /// The SSH handshake failed for another reason.
    #[error("SSH handshake failed: {0}")]
    Handshake(russh::Error),
    /// The key file could not be read.
    #[error("loading key {}: {cause}", path.display())]
    LoadKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        cause: russh::keys::Error,
    },
    /// The key file's passphrase did not open it.
    #[error("decrypting key {} (wrong passphrase?): {cause}", path.display())]
    DecryptKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        cause: russh::keys::Error,
    },
    /// A passphrase or password was needed and could not be asked for.
    #[error("cannot prompt for {prompt}: no terminal ({cause}); use the environment variable instead")]
    NoTerminal {
        /// What was to be asked.
        prompt: String,
        /// Why there is no terminal.
        cause: std::io::Error,
    },
    /// Reading an answer from the terminal failed.
    #[error("reading the {prompt}: {cause}")]
    Prompt {
        /// What was asked.
        prompt: String,
        /// Why.
        cause: std::io::Error,
    },
    /// No key, agent or password to try.
    #[error("no way to log in as {user}: give --key, run an ssh-agent, or set FERRY_SSH_PASSWORD / --ask-password")]
    NoCredentials {
        /// The login user.
        user: String,
    },
    /// Every way to log in was refused.
    #[error("authentication as {user} failed; tried {}", tried.join(", "))]
    AuthFailed {
        /// The login user.
        user: String,
        /// What was tried, in order.
        tried: Vec<String>,
    },
    /// sudo needs a password that was not given.
    #[error("sudo for {user} asks for a password: set FERRY_SUDO_PASSWORD or pass --ask-sudo-password ({answer})")]
    SudoPasswordNeeded {
        /// The login user.
        user: String,
        /// sudo's words.
        answer: String,
    },
    /// sudo refused.
    #[error("sudo refused for {user}: {answer}")]
    SudoRefused {
        /// The login user.
        user: String,
        /// sudo's words (and a hint when a password was given).
        answer: String,
    },
    /// The session broke while starting or feeding a command.
    #[error("{what}: {cause}")]
    Session {
        /// What was being done ("opening an SSH channel", "starting a remote command", …).
        what: &'static str,
        /// The session's error.
        cause: String,
    },
    /// The same error, from the bastion named here.
    #[error("{name}: {cause}")]
    Bastion {
        /// The bastion, as `bastion user@host:port`.
        name: String,
        /// What went wrong there.
        cause: Box<SshError>,
    },
}

impl SshError {
    /// A broken session while doing `what`.
    pub fn session(what: &'static str, cause: impl std::fmt::Display) -> SshError {
        SshError::Session { what, cause: cause.to_string() }
    }
}
