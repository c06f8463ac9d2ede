//! The phases of a delivery, one file each, in the order `run` takes them, and those of a
//! teardown ([`reset`]); [`super::deliver`] lists each sequence. Each implements
//! [`super::engine::Phase`].

pub mod control;
pub mod distribute;
pub mod launch;
pub mod preflight;
pub mod prepare;
pub mod registry;
pub mod reset;
