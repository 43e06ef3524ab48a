//! vipd: announces Service VIPs to top-of-rack routers with a built-in BGP
//! speaker. See `docs/architecture.md` for how the pieces fit.
//!
//! Modules depend one way, down the data flow: `config`, `bgp::wire` and
//! `bfd` (packets and the session state machine, pure; its UDP tasks) at
//! the bottom; `bgp` (FSM, RIB, sessions, speaker), `ipam` (address
//! allocation, pure), `drain` (RFC 8326 drains, pure), `k8s` (model, intent,
//! watchers, the elected allocator), `l2` (ARP/NDP answered for L2 VIPs,
//! one Lease per node), `reconcile` (the table, the node's
//! dataplanes, the control plane's), `dataplane` and `controlplane` (health
//! checks, the API-server VIP's IPVS service) above them; `status` (serves
//! the report the daemon renders), `confwatch` (the configuration files
//! watched for changes); `daemon` on top.

// With clippy.toml's threshold: no function longer than a screen.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod bfd;
pub mod bgp;
pub mod config;
pub mod confwatch;
pub mod controlplane;
pub mod daemon;
pub mod dataplane;
pub mod drain;
pub mod heap;
pub mod ipam;
pub mod k8s;
pub mod l2;
pub mod ra;
pub mod reconcile;
pub mod rendezvous;
pub mod sockopt;
pub mod status;
pub mod task;
pub mod telemetry;

/// The commit this binary was built from (`git rev-parse`), or "unknown"
/// when built outside a git checkout.
pub const COMMIT: &str = env!("VIPD_COMMIT");
