//! The operator ↔ agent protocol: every message `installer run` and `installer agent` exchange.
//!
//! Owns: the protocol version ([`PROTOCOL_VERSION`]) and the hello that checks it, the calls
//! (which agent subcommand with which arguments, and the one function that renders a call as a
//! command line: [`Call::command_line`]), what a call carries on stdin (the prepare plan, a
//! record's detail), the distribution stream (header, frames, the pull request) and its answer
//! lines, the relay wire between agents, the reports (facts, state records, the prepare
//! report), and the host lock's holder, answer and record ([`lock`]). Serde types and small pure
//! encoders and decoders only: no files, sockets or processes; the operator side (`run/`,
//! `ssh::agent`) and the agent side (`agent/`) both build and read messages only through these
//! types.
//!
//! # Versions
//! Every agent session starts the same way: the operator's call carries its protocol version
//! and build (`installer agent --protocol N --build B …`), and the agent's first stdout line is
//! a [`Hello`] with its own. Either side that sees another protocol version stops with a
//! message naming both versions and both builds ([`VersionError`]), before reading anything
//! else. The hello's shape (`{"protocol":N,"build":"…"}`) is frozen: every version reads it.
//!
//! Compatibility within a version: readers ignore fields they do not know, and fields added
//! later carry `#[serde(default)]`, so an agent of the same protocol version but a newer build
//! may say more than the operator reads. A change an older peer would misread (a renamed or
//! retyped field, a new frame word, a new required field) bumps [`PROTOCOL_VERSION`].

pub mod access;
pub mod call;
pub mod codec;
pub mod lock;
pub mod receive;
pub mod relay;
pub mod report;
pub mod version;

pub use call::{Call, quote};
pub use codec::{DecodeError, decode, decode_secret, encode_line, split_first_line};
pub use report::{Facts, KernelSupport, PreparePlan, PrepareReport, Record};
pub use version::{BUILD, Hello, PROTOCOL_VERSION, VersionError, check_agent, check_operator};
