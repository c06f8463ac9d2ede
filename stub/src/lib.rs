//! The runtime half of ferry. `ferry build` appends a signed payload to this program and the
//! result is `./installer`. This crate holds the commands the installer runs on site. What the
//! packer needs too (output, `verify`, `inspect`, the metadata and image reference types) lives
//! in `ferry_core`; the paths `crate::printer`, `crate::units` and `crate::trust` re-export it.
//!
//! Dependencies point one way (see docs/architecture.md): the binary's `main` → [`commands`]
//! (the only place the whole command line is dispatched) → the work ([`run`], [`check`],
//! [`reset`], [`upgrade`], [`agent`], [`registry`], [`lb`]) → what they share ([`cluster`], [`kube`], [`ssh`])
//! → [`node`] and [`protocol`] → `ferry_core`. This file declares the modules and re-exports, so
//! any module may name what it re-exports.
#![deny(missing_docs)]

pub mod agent;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod delta;
pub mod extract;
pub mod inspect;
pub mod kube;
pub mod launch;
pub mod lb;
pub mod node;
pub mod protocol;
pub mod registry;
pub mod reset;
pub mod run;
pub mod ssh;
pub mod upgrade;
pub mod verify;

use std::process::ExitCode;

pub use ferry_core::{printer, trust, units};
pub use node::SELF_EXE;

/// Turns a command's result into an exit code, printing the error chain for the user.
pub fn finish(result: anyhow::Result<()>, printer: &printer::Printer) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            printer.error(err.as_ref());
            match err.downcast_ref::<run::interrupt::Stopped>() {
                Some(stopped) => ExitCode::from(stopped.signal.exit_status()),
                None => ExitCode::FAILURE,
            }
        }
    }
}
