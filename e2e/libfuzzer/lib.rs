//! vipd's receive paths (BGP and BFD) and its UPDATE encoder, compiled
//! from vipd's own sources for fuzzing: the wire code and the route
//! attributes it encodes, nothing else of vipd.
#![allow(dead_code)]

#[path = "../../src/bgp/attrs.rs"]
pub mod attrs;

#[path = "../../src/bgp/wire/mod.rs"]
pub mod wire;

/// BFD Control packets (std only).
#[path = "../../src/bfd/packet.rs"]
pub mod bfd_packet;

/// The same paths as in vipd, for the modules that name `crate::bgp::...`.
pub mod bgp {
    pub use crate::attrs;
    pub use crate::wire;
}
