//! The protocol version and the hello that checks it at the start of every agent session (see
//! the module above for how versions and compatible changes work).
//!
//! Owns: [`PROTOCOL_VERSION`], [`BUILD`], [`Hello`], [`VersionError`] and both sides' checks.

use super::codec::{clip, encode_line};
use serde::{Deserialize, Serialize};

/// The version of this protocol. Operator and agent must speak the same one.
pub const PROTOCOL_VERSION: u32 = 2;

/// This build of ferry, as the hello names it.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// The agent's first line on every session: which protocol and build it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its protocol version.
    pub protocol: u32,
    /// Its ferry build.
    pub build: String,
}

impl Hello {
    /// This build's hello.
    pub fn ours() -> Hello {
        Hello { protocol: PROTOCOL_VERSION, build: BUILD.to_string() }
    }

    /// The hello as one line (with its newline).
    pub fn line(&self) -> String {
        encode_line(self)
    }
}

/// A protocol version check that failed, or a peer that did not take part in it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    /// The operator found an agent of another protocol version.
    #[error(
        "the agent on {host} speaks ferry protocol {theirs} (ferry {their_build}), this installer speaks {ours} (ferry {our_build}): use the same installer on every host"
    )]
    Agent {
        /// The host.
        host: String,
        /// The agent's protocol version.
        theirs: u32,
        /// The agent's build.
        their_build: String,
        /// Ours.
        ours: u32,
        /// Our build.
        our_build: String,
    },
    /// The agent was started by an operator of another protocol version.
    #[error(
        "this agent speaks ferry protocol {ours} (ferry {our_build}), the installer that started it speaks {theirs} (ferry {their_build}): use the same installer on every host"
    )]
    Operator {
        /// The operator's protocol version.
        theirs: u32,
        /// The operator's build.
        their_build: String,
        /// Ours.
        ours: u32,
        /// Our build.
        our_build: String,
    },
    /// The agent's first line was no hello: a build older than protocol versions.
    #[error(
        "the agent on {host} did not say which ferry protocol it speaks (a ferry build from before protocol versions); this installer speaks {ours} (ferry {our_build}): use the same installer on every host{said}"
    )]
    AgentUnversioned {
        /// The host.
        host: String,
        /// Ours.
        ours: u32,
        /// Our build.
        our_build: String,
        /// What the agent said instead (`; it said: …`), or nothing.
        said: String,
    },
    /// The operator sent no version: a build older than protocol versions.
    #[error(
        "the installer that started this agent did not say which ferry protocol it speaks (a ferry build from before protocol versions); this agent speaks {ours} (ferry {our_build}): use the same installer on every host"
    )]
    OperatorUnversioned {
        /// Ours.
        ours: u32,
        /// Our build.
        our_build: String,
    },
}

/// The agent's check of the version its operator sent (`None`: sent none).
pub fn check_operator(protocol: Option<u32>, build: Option<&str>) -> Result<(), VersionError> {
    let ours = Hello::ours();
    match protocol {
        None => Err(VersionError::OperatorUnversioned { ours: ours.protocol, our_build: ours.build }),
        Some(p) if p == ours.protocol => Ok(()),
        Some(theirs) => Err(VersionError::Operator {
            theirs,
            their_build: build.unwrap_or("unknown").to_string(),
            ours: ours.protocol,
            our_build: ours.build,
        }),
    }
}

/// The operator's check of the first line the agent on `host` printed (without its newline;
/// `None` when it printed nothing). Anything but a hello of our version is an error.
pub fn check_agent(host: &str, first_line: Option<&str>) -> Result<Hello, VersionError> {
    let ours = Hello::ours();
    let hello = first_line.and_then(|l| serde_json::from_str::<Hello>(l.trim()).ok());
    match hello {
        Some(h) if h.protocol == ours.protocol => Ok(h),
        Some(h) => Err(VersionError::Agent {
            host: host.to_string(),
            theirs: h.protocol,
            their_build: h.build,
            ours: ours.protocol,
            our_build: ours.build,
        }),
        None => {
            let said = first_line.map(str::trim).filter(|l| !l.is_empty());
            Err(VersionError::AgentUnversioned {
                host: host.to_string(),
                ours: ours.protocol,
                our_build: ours.build,
                said: said.map(|l| format!("; it said: {}", clip(l))).unwrap_or_default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_round_trips_and_is_frozen() {
        let h = Hello::ours();
        assert_eq!(h.line(), format!("{{\"protocol\":{PROTOCOL_VERSION},\"build\":\"{BUILD}\"}}\n"));
        assert_eq!(check_agent("h", Some(h.line().trim_end())).unwrap(), h);
        // A newer build of the same protocol may say more: unknown fields are ignored.
        let more = format!("{{\"protocol\":{PROTOCOL_VERSION},\"build\":\"9.9.9\",\"features\":[\"x\"]}}");
        assert_eq!(check_agent("h", Some(&more)).unwrap().build, "9.9.9");
    }

    /// A new operator meets an old agent (or any of another version): it stops, naming both.
    #[test]
    fn an_agent_of_another_version_is_refused_by_name() {
        let theirs = format!("{{\"protocol\":{},\"build\":\"0.0.1\"}}", PROTOCOL_VERSION + 1);
        let err = check_agent("10.0.0.5", Some(&theirs)).unwrap_err().to_string();
        assert!(err.contains("agent on 10.0.0.5"), "{err}");
        assert!(err.contains(&format!("protocol {} (ferry 0.0.1)", PROTOCOL_VERSION + 1)), "{err}");
        assert!(err.contains(&format!("speaks {PROTOCOL_VERSION} (ferry {BUILD})")), "{err}");
        // An agent from before versions prints its answer (or a usage error) instead.
        let err = check_agent("h", Some("{\"hostname\":\"x\"}")).unwrap_err().to_string();
        assert!(err.contains("did not say which ferry protocol") && err.contains("it said: {\"hostname\""), "{err}");
        let err = check_agent("h", None).unwrap_err().to_string();
        assert!(err.contains(&format!("this installer speaks {PROTOCOL_VERSION} (ferry {BUILD})")), "{err}");
        assert!(!err.contains("it said"), "{err}");
    }

    /// A new agent started by an old operator (or any of another version) stops, naming both.
    #[test]
    fn an_operator_of_another_version_is_refused_by_name() {
        assert_eq!(check_operator(Some(PROTOCOL_VERSION), Some("whatever")), Ok(()));
        let err = check_operator(Some(PROTOCOL_VERSION + 1), Some("0.9.0")).unwrap_err().to_string();
        assert!(err.contains(&format!("this agent speaks ferry protocol {PROTOCOL_VERSION} (ferry {BUILD})")), "{err}");
        assert!(err.contains(&format!("started it speaks {} (ferry 0.9.0)", PROTOCOL_VERSION + 1)), "{err}");
        let err = check_operator(None, None).unwrap_err().to_string();
        assert!(err.contains("did not say which ferry protocol") && err.contains(BUILD), "{err}");
    }
}
