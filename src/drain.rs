//! Draining a node without loss (RFC 8326), the pure part: whether this
//! node is draining and what, and what the routers are told meanwhile.
//!
//! A drain first re-announces the drained VIPs with the GRACEFUL_SHUTDOWN
//! community (65535:0): routers that honour it lower their preference and
//! move the traffic to the other nodes while this one still serves. After
//! `graceful_shutdown_secs` the VIPs are withdrawn. Ending the drain (an
//! uncordon) announces them as before.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::bgp::rib::Table;
use crate::config::{DrainConfig, RouteAttrs};

/// RFC 8326 section 2: the well-known GRACEFUL_SHUTDOWN community.
pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;

/// The node-exclusion label kubeadm and others set.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

pub use crate::k8s::model::NodeFacts;

/// What is drained, and why (for the log and the status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    pub services: bool,
    /// The control-plane VIP: only a cordon or a listed taint drains it,
    /// never the exclusion label (kubeadm puts that on control-plane nodes).
    pub control_plane: bool,
    pub reason: String,
}

pub fn drained(cfg: &DrainConfig, n: &NodeFacts) -> Drained {
    let taint = n.taints.iter().find(|t| cfg.on_taints.contains(t));
    let hard = if cfg.on_cordon && n.unschedulable {
        Some("cordoned".to_string())
    } else {
        taint.map(|t| format!("taint {t}"))
    };
    let excluded = cfg.on_exclude_label && n.labels.contains_key(EXCLUDE_LABEL);
    let reason = match (&hard, excluded) {
        (Some(h), _) => h.clone(),
        (None, true) => format!("label {EXCLUDE_LABEL}"),
        (None, false) => String::new(),
    };
    Drained {
        services: hard.is_some() || excluded,
        control_plane: hard.is_some(),
        reason,
    }
}

/// Where a drain that began `elapsed` ago stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Announced with GRACEFUL_SHUTDOWN; withdrawn after `left`.
    Shutdown {
        left: Duration,
    },
    Withdrawn,
}

pub fn phase(elapsed: Duration, graceful: Duration) -> Phase {
    match graceful.checked_sub(elapsed) {
        Some(left) if !left.is_zero() => Phase::Shutdown { left },
        _ => Phase::Withdrawn,
    }
}

/// The table as announced during a drain: the `drained` prefixes carry
/// GRACEFUL_SHUTDOWN, or are gone once withdrawn. Equal attribute sets stay
/// shared, so the drained routes still pack into few UPDATEs.
pub fn apply(table: &Table, drained: &BTreeSet<IpNet>, phase: Phase) -> Table {
    let mut out = table.clone();
    let mut marked: Vec<(*const RouteAttrs, Arc<RouteAttrs>)> = vec![];
    for p in drained {
        if phase == Phase::Withdrawn {
            out.remove(p);
            continue;
        }
        let Some(a) = out.get_mut(p) else {
            continue;
        };
        let key = Arc::as_ptr(a);
        let next = match marked.iter().find(|(k, _)| *k == key) {
            Some((_, n)) => n.clone(),
            None => {
                let mut attrs = (**a).clone();
                if !attrs.communities.contains(&GRACEFUL_SHUTDOWN) {
                    attrs.communities.push(GRACEFUL_SHUTDOWN);
                }
                let n = Arc::new(attrs);
                marked.push((key, n.clone()));
                n
            }
        };
        *a = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DrainConfig {
        DrainConfig {
            on_cordon: true,
            on_exclude_label: true,
            on_taints: vec!["node.kubernetes.io/out-of-service".into()],
            graceful_shutdown: Duration::from_secs(30),
        }
    }

    #[test]
    fn what_drains_what() {
        let c = cfg();
        let mut n = NodeFacts::default();
        assert_eq!(drained(&c, &n), Drained::default());
        n.labels.insert(EXCLUDE_LABEL.into(), "".into());
        let d = drained(&c, &n);
        assert!(d.services && !d.control_plane, "{d:?}");
        assert_eq!(d.reason, format!("label {EXCLUDE_LABEL}"));
        n.unschedulable = true;
        let d = drained(&c, &n);
        assert!(
            d.services && d.control_plane && d.reason == "cordoned",
            "{d:?}"
        );
        let n = NodeFacts {
            taints: vec!["node.kubernetes.io/out-of-service".into()],
            ..Default::default()
        };
        let d = drained(&c, &n);
        assert!(d.services && d.control_plane, "{d:?}");
        assert_eq!(d.reason, "taint node.kubernetes.io/out-of-service");
        // Each trigger can be turned off.
        let off = DrainConfig {
            on_cordon: false,
            on_exclude_label: false,
            on_taints: vec![],
            ..cfg()
        };
        let n = NodeFacts {
            unschedulable: true,
            labels: [(EXCLUDE_LABEL.to_string(), String::new())].into(),
            taints: vec!["node.kubernetes.io/out-of-service".into()],
        };
        assert_eq!(drained(&off, &n), Drained::default());
    }

    #[test]
    fn shutdown_then_withdrawn() {
        let g = Duration::from_secs(30);
        assert_eq!(
            phase(Duration::from_secs(10), g),
            Phase::Shutdown {
                left: Duration::from_secs(20)
            }
        );
        assert_eq!(phase(g, g), Phase::Withdrawn);
        assert_eq!(phase(Duration::from_secs(99), g), Phase::Withdrawn);
        assert_eq!(phase(Duration::ZERO, Duration::ZERO), Phase::Withdrawn);
    }

    #[test]
    fn drained_routes_carry_the_community_then_go() {
        let shared = Arc::new(RouteAttrs {
            communities: vec![65010 << 16 | 1],
            ..Default::default()
        });
        let mut t = Table::new();
        let p = |s: &str| s.parse::<IpNet>().unwrap();
        for s in ["203.0.113.1/32", "203.0.113.2/32", "198.51.100.1/32"] {
            t.insert(p(s), shared.clone());
        }
        let drained: BTreeSet<IpNet> = [p("203.0.113.1/32"), p("203.0.113.2/32")].into();
        let s = apply(&t, &drained, phase(Duration::ZERO, Duration::from_secs(1)));
        assert_eq!(
            s[&p("203.0.113.1/32")].communities,
            [65010 << 16 | 1, GRACEFUL_SHUTDOWN]
        );
        assert!(Arc::ptr_eq(
            &s[&p("203.0.113.1/32")],
            &s[&p("203.0.113.2/32")]
        ));
        assert_eq!(s[&p("198.51.100.1/32")], shared, "not drained: unchanged");
        let w = apply(&t, &drained, Phase::Withdrawn);
        assert_eq!(w.keys().collect::<Vec<_>>(), [&p("198.51.100.1/32")]);
    }
}
