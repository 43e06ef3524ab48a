//! One node against BIRD and the API stand-in: the lab the Kubernetes
//! suites (`kube.rs`, `tenant.rs`) share. Needs `lab` and `standin` as
//! sibling modules of the including crate.
#![allow(dead_code)]

use super::lab::*;
use super::standin::{obj, StandIn};

pub const API: &str = "192.0.2.100:6443";

pub struct KubeLab {
    pub lab: Lab,
    pub api: StandIn,
    pub bird: Bird,
}

/// A lab with BIRD and the stand-in (192.0.2.100) in the router namespace,
/// and this node's Node object (node-a, 192.0.2.1).
pub fn kube_lab(tag: &str) -> KubeLab {
    let lab = Lab::new(tag);
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start(API.parse().unwrap(), Some(&lab.router.name));
    api.put(obj::node("node-a", &["192.0.2.1"]));
    let bird = lab.dual_bird("graceful restart on;");
    KubeLab { lab, api, bird }
}

/// vipd's configuration for this lab: the two sessions to BIRD, the
/// stand-in's kubeconfig, node-a, and `extra` in `[kubernetes]`.
pub fn vipd_conf(k: &KubeLab, extra: &str) -> String {
    let kc = k.lab.dir.write("kubeconfig", &k.api.kubeconfig());
    kube_vipd_conf(&kc, extra)
}
