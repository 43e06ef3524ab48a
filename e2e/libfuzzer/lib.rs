//! vipd's receive paths (BGP and BFD), compiled from vipd's own sources
//! for fuzzing.
#![allow(dead_code)]

#[path = "../../src/config.rs"]
pub mod config;

#[path = "../../src/bgp/wire/mod.rs"]
pub mod wire;

/// BFD Control packets (std only).
#[path = "../../src/bfd/packet.rs"]
pub mod bfd_packet;

/// The same paths as in vipd, for the modules that name `crate::bgp::wire`.
pub mod bgp {
    pub use crate::wire;
}
