//! BFD (RFC 5880, 5881 single hop, 5883 multihop) for vipd's BGP peers:
//! `packet` (the Control packet and the session-free reception checks)
//! and `machine` (one session's state machine and timers), both pure. The
//! I/O task and the BGP integration (RFC 5882) are not built yet.

pub mod machine;
pub mod packet;
