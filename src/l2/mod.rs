//! L2 mode (`[l2]`): exactly one node answers ARP and neighbour
//! solicitations for each L2 VIP, chosen through one Lease per node.
//!
//! - `owner` (pure): who answers for each VIP, from every node's Lease.
//! - `fast` (pure): `fast_failover`: the BFD partners, and the probes
//!   that confirm an owner is gone.
//! - `record` (pure): what a node's Lease carries, read with bounds.
//! - `packet` (pure): ARP and NDP frames, parsed and built.
//! - `state` (pure): the task's state; Lease events, Services, facts and
//!   time in; the addresses to answer for, the record, announcements out.
//! - `net`: packet sockets, multicast groups, sysfs and /proc facts.
//! - `responder`: one task per interface answering from the shared set.
//! - `partners`: fast failover's BFD sessions.
//! - `task`: the loop that owns `state` and does the I/O.
//!
//! Nothing is written into the kernel: no address, no neighbour entry, no
//! sysctl. The node must accept traffic for the VIP the way kube-proxy
//! arranges it (docs/l2.md).

pub mod fast;
pub mod net;
pub mod owner;
pub mod packet;
pub mod partners;
pub mod record;
pub mod responder;
pub mod state;
pub mod task;

pub use task::{spawn, Handle, L2Status};
