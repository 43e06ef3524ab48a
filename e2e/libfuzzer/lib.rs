//! vipd's receive path, compiled from vipd's own sources for fuzzing.
#![allow(dead_code)]

#[path = "../../src/config.rs"]
pub mod config;

#[path = "../../src/bgp/wire/mod.rs"]
pub mod wire;

/// The same paths as in vipd, for the modules that name `crate::bgp::wire`.
pub mod bgp {
    pub use crate::wire;
}
