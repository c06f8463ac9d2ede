//! The phases of a delivery, one file each, in the order `run` takes them (see
//! [`super::deliver`]). Each implements [`super::engine::Phase`].

pub mod control;
pub mod distribute;
pub mod launch;
pub mod preflight;
pub mod prepare;
pub mod registry;
