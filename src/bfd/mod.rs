//! BFD (RFC 5880, 5881 single hop, 5883 multihop) for vipd's BGP peers:
//! `packet` (the Control packet and the session-free reception checks)
//! and `machine` (one session's state machine and timers), both pure;
//! `io` (the UDP tasks: TTL 255, the receive checks, one task per session)
//! and `net` (the socket calls for TTLs). The speaker starts a session
//! per peer with `bfd = true`; `bgp::session` follows its state (RFC 5882).

pub mod io;
pub mod machine;
pub mod packet;
