//! `bgp.max_announcing_nodes`: an ETP Cluster VIP announced by at most N
//! nodes, pure. A ToR installs 16 to 128 ECMP paths per prefix and drops
//! the rest in an order nobody chose; with the cap, every node ranks the
//! eligible nodes for each VIP by rendezvous hashing (`crate::rendezvous`)
//! and announces the VIP only when it is among the first N. The same Node
//! list gives the same answer on every node; a node joining or leaving
//! moves only the VIPs it is among the first for.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::model::*;
use crate::config::{DrainConfig, KubeConfig};

/// The label Kubernetes gives nodes that must not carry load-balancer
/// traffic (kubeadm and Talos put it on control-plane nodes).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The annotation that lowers the cap for one Service.
pub const ANNOTATION: &str = "vipd.io/max-announcing-nodes";

/// Whether another node may announce capped VIPs: Ready, without the
/// exclusion label, and (with `[drain]`) not draining by its rules.
fn may_announce(n: &NodeInfo, drain: Option<&DrainConfig>) -> bool {
    let draining = drain.is_some_and(|d| {
        (d.on_cordon && n.unschedulable) || n.taints.iter().any(|t| d.on_taints.contains(t))
    });
    n.ready && !n.labels.contains_key(EXCLUDE_LABEL) && !draining
}

/// The nodes that may announce capped VIPs, sorted. This node counts
/// itself while it is ready and not excluded, even while it drains: its
/// own drain moves its VIPs away gracefully (GRACEFUL_SHUTDOWN, then the
/// withdrawal), while the other nodes already rank without it.
pub fn eligible(
    nodes: &BTreeMap<Key, NodeInfo>,
    me: &str,
    drain: Option<&DrainConfig>,
) -> Vec<String> {
    let mut v: Vec<String> = nodes
        .values()
        .filter(|n| match n.name == me {
            true => n.ready && !n.labels.contains_key(EXCLUDE_LABEL),
            false => may_announce(n, drain),
        })
        .map(|n| n.name.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The cap for one Service: `max_announcing_nodes`, lowered by its
/// annotation. `Err` for an annotation that does not read (the Service is
/// then not announced: fail closed, as for the attribute annotations);
/// a value above the platform's cap is dropped, and said so in `dropped`.
pub fn limit(
    svc: &ServiceInfo,
    k: &KubeConfig,
    dropped: &mut Vec<(&'static str, String)>,
) -> Result<Option<usize>, String> {
    let Some(cap) = k.max_announcing_nodes else {
        return Ok(None);
    };
    let Some(v) = svc.annotations.get(ANNOTATION) else {
        return Ok(Some(cap as usize));
    };
    let n: u32 = match v.trim().parse() {
        Ok(n) if n >= 1 => n,
        _ => {
            return Err(format!(
                "{ANNOTATION}: {v:?} is not a number of nodes from 1; not announced"
            ))
        }
    };
    if n > cap {
        let why = format!("{n} is above bgp.max_announcing_nodes ({cap}), which applies");
        dropped.push((ANNOTATION, why));
        return Ok(Some(cap as usize));
    }
    Ok(Some(n as usize))
}

/// Whether this node announces `ip` under a cap of `n`. With no eligible
/// node at all (no Node read yet, or none Ready: an API server that lost
/// every kubelet), the cap is not applied: withdrawing every VIP of the
/// cluster would be worse than too many paths.
pub fn here(ip: IpAddr, me: &str, eligible: &[String], n: usize) -> bool {
    eligible.is_empty() || crate::rendezvous::among_first(ip, me, eligible, n)
}

/// Why this node does not announce `ip` (for `vipd explain`).
pub fn why_not(ip: IpAddr, eligible: &[String], n: usize) -> String {
    let chosen = crate::rendezvous::first(ip, eligible, n);
    format!(
        "not one of the {n} nodes chosen to announce it (max_announcing_nodes) among {} eligible: {}",
        eligible.len(),
        chosen.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, cordoned: bool, excluded: bool) -> (Key, NodeInfo) {
        let mut labels = BTreeMap::new();
        if excluded {
            labels.insert(EXCLUDE_LABEL.to_string(), String::new());
        }
        let n = NodeInfo {
            name: name.into(),
            ready,
            unschedulable: cordoned,
            labels,
            ..Default::default()
        };
        (name.into(), n)
    }

    #[test]
    fn eligible_nodes_are_ready_not_excluded_and_not_draining_but_this_one_drains_itself() {
        let nodes: BTreeMap<Key, NodeInfo> = [
            node("a", true, false, false),
            node("b", false, false, false),
            node("c", true, true, false),
            node("d", true, false, true),
            node("me", true, true, false),
        ]
        .into_iter()
        .collect();
        let drain = DrainConfig {
            on_cordon: true,
            on_exclude_label: true,
            on_taints: vec![],
            graceful_shutdown: std::time::Duration::from_secs(1),
        };
        assert_eq!(eligible(&nodes, "me", Some(&drain)), ["a", "me"]);
        // Without [drain] a cordon drains nothing, so the node stays.
        assert_eq!(eligible(&nodes, "me", None), ["a", "c", "me"]);
        // This node, not ready or excluded, does not count itself.
        let mut n = nodes.clone();
        n.insert("me".into(), node("me", false, false, false).1);
        assert_eq!(eligible(&n, "me", None), ["a", "c"]);
        n.insert("me".into(), node("me", true, false, true).1);
        assert_eq!(eligible(&n, "me", None), ["a", "c"]);
    }

    #[test]
    fn a_service_lowers_the_cap_never_raises_it_and_an_unreadable_one_is_an_error() {
        let mut k = crate::k8s::intent::tests::kcfg();
        let mut svc = ServiceInfo::default();
        let mut d = vec![];
        assert_eq!(limit(&svc, &k, &mut d), Ok(None));
        k.max_announcing_nodes = Some(4);
        assert_eq!(limit(&svc, &k, &mut d), Ok(Some(4)));
        svc.annotations.insert(ANNOTATION.into(), "2".into());
        assert_eq!(limit(&svc, &k, &mut d), Ok(Some(2)));
        svc.annotations.insert(ANNOTATION.into(), "4".into());
        assert_eq!(limit(&svc, &k, &mut d), Ok(Some(4)));
        assert!(d.is_empty(), "the cap itself is allowed: {d:?}");
        svc.annotations.insert(ANNOTATION.into(), "9".into());
        assert_eq!(limit(&svc, &k, &mut d), Ok(Some(4)));
        assert_eq!(d.len(), 1);
        for bad in ["0", "many", "-1"] {
            svc.annotations.insert(ANNOTATION.into(), bad.into());
            assert!(limit(&svc, &k, &mut d).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_eligible_node_means_no_cap() {
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(here(ip, "me", &[], 1));
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let chosen: Vec<bool> = all.iter().map(|m| here(ip, m, &all, 1)).collect();
        assert_eq!(chosen.iter().filter(|c| **c).count(), 1);
        let first = &all[chosen.iter().position(|c| *c).unwrap()];
        assert_eq!(
            why_not(ip, &all, 1),
            format!("not one of the 1 nodes chosen to announce it (max_announcing_nodes) among 3 eligible: {first}")
        );
    }
}
