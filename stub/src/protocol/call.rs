//! The calls: which `installer agent` subcommand the operator starts, with which arguments.
//!
//! Owns: [`Call`], the one rendering of a call as a shell command line
//! ([`Call::command_line`], which also carries the protocol version and build), and the shell
//! quoting it uses. The agent reads the command line back with clap (`cli::AgentArgs`) and turns
//! it into the same [`Call`]; in-process test doubles take the [`Call`] itself.

use super::lock::Holder;
use super::version::{BUILD, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// How long `check-pull` waits for containerd when the call does not say, in seconds.
pub const CHECK_PULL_TIMEOUT: u64 = 120;

/// One agent call. What it reads on stdin and prints after its hello is named on each variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "call")]
pub enum Call {
    /// Gathers this host's facts. Stdin: nothing. Answer: one [`super::Facts`] line.
    Facts {
        /// Tools to look for on PATH.
        tools: Vec<String>,
    },
    /// Receives the installer copy. Stdin: the distribution stream ([`super::receive`]).
    /// Answer: the receive lines ([`super::receive::Opening`], [`super::receive::Event`]).
    Receive {
        /// Final path of the copy.
        dest: PathBuf,
        /// Expected signer fingerprint (`SHA256:…`).
        signer: Option<String>,
        /// Accept an unsigned installer.
        allow_unsigned: bool,
        /// Where to listen for downstream hosts; `None` never listens.
        relay_listen: Option<IpAddr>,
    },
    /// Prepares the node. Stdin: a [`super::PreparePlan`]. Answer: a [`super::PrepareReport`].
    Prepare,
    /// Installs and starts ferry-registry.service. Stdin: its [`super::access::ServingMaterial`]
    /// (certificate, key, credential digest). Answer: nothing.
    RegistryService {
        /// Port.
        port: u16,
        /// Accept an unsigned installer.
        allow_unsigned: bool,
    },
    /// Pulls an image through containerd and the mirror. Stdin: the [`super::access::PullAccess`]
    /// for asking each replica directly. Answer: nothing.
    CheckPull {
        /// Image reference.
        image: String,
        /// Registry replicas (`https://IP:PORT`) that must each serve the image's manifest.
        endpoints: Vec<String>,
        /// Seconds.
        timeout: u64,
    },
    /// Records a completed phase. Stdin: the detail, JSON. Answer: nothing.
    Record {
        /// Cluster.
        cluster: String,
        /// Phase.
        phase: String,
        /// Installer id (trailer id).
        installer: String,
    },
    /// This cluster's phase records. Stdin: nothing. Answer: a map phase → [`super::Record`].
    State {
        /// Cluster.
        cluster: String,
    },
    /// Takes the host's lock for `holder` and keeps it for the session. Answer: one
    /// [`super::lock::LockAnswer`] line. Stdin, once acquired: [`super::lock::BEAT`] lines while
    /// the operator lives; [`super::lock::RELEASE`] or the end of stdin gives the lock back.
    Lock {
        /// Who asks.
        holder: Holder,
        /// End whoever holds the lock and take it (`--force-unlock`).
        force_unlock: bool,
    },
    /// Waits until the Kubernetes API answers `GET /readyz` through this node's load balancer
    /// (`127.0.0.1:port`, the apiserver's certificate checked against the cluster CA in
    /// `/etc/kubernetes/pki/ca.crt`), for at most `timeout` seconds. No answer line.
    ApiReady {
        /// The load balancer's port.
        port: u16,
        /// Seconds.
        timeout: u64,
    },
}

impl Call {
    /// The subcommand's name, as `installer agent NAME`.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Facts { .. } => "facts",
            Call::Receive { .. } => "receive",
            Call::Prepare => "prepare",
            Call::RegistryService { .. } => "registry-service",
            Call::CheckPull { .. } => "check-pull",
            Call::Record { .. } => "record",
            Call::State { .. } => "state",
            Call::Lock { .. } => "lock",
            Call::ApiReady { .. } => "api-ready",
        }
    }

    /// The shell command line that runs this call with the agent at `program`, carrying this
    /// build's protocol version. The only place an agent command line is written.
    pub fn command_line(&self, program: &str) -> String {
        let mut words = vec![
            quote(program),
            "agent".into(),
            "--protocol".into(),
            PROTOCOL_VERSION.to_string(),
            "--build".into(),
            quote(BUILD),
            self.name().into(),
        ];
        let mut flag = |name: &str, value: &str| {
            words.push(format!("--{name}"));
            words.push(quote(value));
        };
        match self {
            Call::Facts { tools } => flag("tools", &tools.join(",")),
            Call::Receive { dest, signer, allow_unsigned, relay_listen } => {
                flag("dest", &dest.to_string_lossy());
                if let Some(s) = signer {
                    flag("signer", s);
                }
                if let Some(ip) = relay_listen {
                    flag("relay-listen", &ip.to_string());
                }
                if *allow_unsigned {
                    words.push("--allow-unsigned".into());
                }
            }
            Call::Prepare => {}
            Call::RegistryService { port, allow_unsigned } => {
                flag("port", &port.to_string());
                if *allow_unsigned {
                    words.push("--allow-unsigned".into());
                }
            }
            Call::CheckPull { image, endpoints, timeout } => {
                flag("image", image);
                flag("endpoints", &endpoints.join(","));
                flag("timeout", &timeout.to_string());
            }
            Call::Record { cluster, phase, installer } => {
                flag("cluster", cluster);
                flag("phase", phase);
                flag("installer", installer);
            }
            Call::State { cluster } => flag("cluster", cluster),
            Call::ApiReady { port, timeout } => {
                flag("port", &port.to_string());
                flag("timeout", &timeout.to_string());
            }
            Call::Lock { holder, force_unlock } => {
                flag("holder-json", &serde_json::to_string(holder).unwrap_or_default());
                if *force_unlock {
                    words.push("--force-unlock".into());
                }
            }
        }
        words.join(" ")
    }
}

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One call of every kind, with awkward values where there are any.
    pub(crate) fn every_call() -> Vec<Call> {
        vec![
            Call::Facts { tools: vec!["sh".into(), "conntrack".into()] },
            Call::Facts { tools: vec![] },
            Call::Receive {
                dest: "/var/lib/ferry/installer".into(),
                signer: Some("SHA256:ab+c/d=".into()),
                allow_unsigned: false,
                relay_listen: Some("10.0.0.2".parse().unwrap()),
            },
            Call::Receive {
                dest: "/tmp/a dir/it's".into(),
                signer: None,
                allow_unsigned: true,
                relay_listen: Some("::1".parse().unwrap()),
            },
            Call::Prepare,
            Call::RegistryService { port: 5000, allow_unsigned: true },
            Call::RegistryService { port: 5001, allow_unsigned: false },
            Call::CheckPull {
                image: "registry.k8s.io/pause:3.10".into(),
                endpoints: vec!["https://10.0.0.1:5000".into(), "https://10.0.0.2:5000".into()],
                timeout: CHECK_PULL_TIMEOUT,
            },
            Call::Record { cluster: "lab".into(), phase: "prepare".into(), installer: "ab12".into() },
            Call::State { cluster: "my lab".into() },
            Call::Lock { holder: crate::protocol::lock::tests::holder(), force_unlock: false },
            Call::ApiReady { port: 6444, timeout: 120 },
            Call::Lock {
                holder: crate::protocol::lock::Holder {
                    user: "it's me".into(),
                    ..crate::protocol::lock::tests::holder()
                },
                force_unlock: true,
            },
        ]
    }

    /// Splits a command line the way a POSIX shell would for what [`quote`] writes.
    pub(crate) fn shell_words(line: &str) -> Vec<String> {
        let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' if !quoted => word.extend(chars.next()),
                '\'' => {
                    quoted = !quoted;
                    any = true;
                }
                ' ' if !quoted => {
                    if any || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                c => word.push(c),
            }
        }
        if any || !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[test]
    fn calls_round_trip_as_json() {
        for call in every_call() {
            let json = serde_json::to_string(&call).unwrap();
            assert_eq!(serde_json::from_str::<Call>(&json).unwrap(), call, "{json}");
        }
    }

    #[test]
    fn command_lines_carry_the_version_and_quote_values() {
        let line = Call::State { cluster: "my lab".into() }.command_line("/var/lib/ferry/agent");
        assert_eq!(
            line,
            format!(
                "/var/lib/ferry/agent agent --protocol {PROTOCOL_VERSION} --build {BUILD} state --cluster 'my lab'"
            )
        );
        let words = shell_words(
            &Call::Receive { dest: "/tmp/it's".into(), signer: None, allow_unsigned: false, relay_listen: None }
                .command_line("/x"),
        );
        assert_eq!(words[words.len() - 2..], ["--dest", "/tmp/it's"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("/var/lib/ferry"), "/var/lib/ferry");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(shell_words(&[quote("it's"), quote(""), quote("a b")].join(" ")), ["it's", "", "a b"]);
    }
}
