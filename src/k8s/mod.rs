//! Kubernetes: what the cluster asks this node to announce.
//!
//! `model` holds plain values of the objects vipd reads; `intent` turns a
//! consistent snapshot of them into the routes to announce (pure).

pub mod intent;
pub mod model;
