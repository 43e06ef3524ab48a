//! Kubernetes: what the cluster asks this node to announce.
//!
//! `model` holds plain values of the objects vipd reads; `intent` turns a
//! consistent snapshot of them into the routes to announce (pure); `watch`
//! keeps the snapshot from the API server behind the readiness barrier.

pub mod aggregate;
pub mod allocator;
pub mod attrs;
pub mod ecmp;
pub mod events;
pub mod explain;
pub mod intent;
pub mod model;
pub mod sharing;
pub mod slim;
pub mod store;
pub mod watch;
