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
use std::time::{Duration, Instant};

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

/// The drain's state, as `vipd status` and `/status` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Line {
    pub active: bool,
    pub reason: String,
    /// Seconds until the withdrawal; `None` once withdrawn.
    pub left_secs: Option<u64>,
}

/// What a change of the Node's facts did to the drain (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Began {
        reason: String,
        graceful: Duration,
    },
    Ended,
    /// Nothing began or ended (what is drained may still have changed).
    Same,
}

/// The drain as a state machine: `[drain]` and the Node's facts in; the
/// phase, the next deadline, the status line and the table to announce
/// out. Time is an argument, so every transition is a plain test.
#[derive(Debug, Default)]
pub struct Drain {
    cfg: Option<DrainConfig>,
    /// What is drained, and since when.
    since: Option<(Drained, Instant)>,
}

impl Drain {
    pub fn new(cfg: Option<DrainConfig>) -> Drain {
        Drain { cfg, since: None }
    }

    /// A reloaded `[drain]`: applies from the next change of the Node.
    pub fn set_config(&mut self, cfg: Option<DrainConfig>) {
        self.cfg = cfg;
    }

    pub fn on_facts(&mut self, f: &NodeFacts, now: Instant) -> Change {
        let Some(cfg) = &self.cfg else {
            return Change::Same;
        };
        let d = drained(cfg, f);
        match (self.since.take(), d.services) {
            (None, true) => {
                let c = Change::Began {
                    reason: d.reason.clone(),
                    graceful: cfg.graceful_shutdown,
                };
                self.since = Some((d, now));
                c
            }
            (Some(_), false) => Change::Ended,
            // Still draining; what is drained may change (a cordon on top
            // of the exclusion label adds the control-plane VIP).
            (Some((_, since)), true) => {
                self.since = Some((d, since));
                Change::Same
            }
            (None, false) => Change::Same,
        }
    }

    /// What is drained and where the drain stands, while one is under way.
    pub fn phase(&self, now: Instant) -> Option<(&Drained, Phase)> {
        let (d, since) = self.since.as_ref()?;
        let g = self.cfg.as_ref()?.graceful_shutdown;
        Some((d, phase(now.saturating_duration_since(*since), g)))
    }

    /// When the announcements change next (the withdrawal).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        match self.phase(now)? {
            (_, Phase::Shutdown { left }) => Some(now + left),
            (_, Phase::Withdrawn) => None,
        }
    }

    /// `None` without `[drain]`.
    pub fn line(&self, now: Instant) -> Option<Line> {
        self.cfg.as_ref()?;
        let Some((d, phase)) = self.phase(now) else {
            return Some(Line::default());
        };
        Some(Line {
            active: true,
            reason: d.reason.clone(),
            left_secs: match phase {
                Phase::Shutdown { left } => Some(left.as_secs()),
                Phase::Withdrawn => None,
            },
        })
    }

    /// What `vipd explain` says of a drained VIP.
    pub fn explain(&self, now: Instant) -> Option<String> {
        let l = self.line(now).filter(|l| l.active)?;
        Some(match l.left_secs {
            Some(n) => format!(
                "announced with GRACEFUL_SHUTDOWN ({}), withdrawn in {n}s",
                l.reason
            ),
            None => format!("withdrawn ({})", l.reason),
        })
    }

    /// The table to announce: `table` itself unless draining; then the
    /// Service VIPs (`services`, asked for only then: listing them costs a
    /// walk over every VIP), and the control-plane VIP when a cordon or a
    /// taint drains it, marked or withdrawn.
    pub fn announce(
        &self,
        table: &Arc<Table>,
        services: impl FnOnce() -> BTreeSet<IpNet>,
        control_plane: Option<IpNet>,
        now: Instant,
    ) -> Arc<Table> {
        let Some((d, phase)) = self.phase(now) else {
            return table.clone();
        };
        let mut drained = services();
        if d.control_plane {
            drained.extend(control_plane);
        }
        Arc::new(apply(table, &drained, phase))
    }

    /// Stopping with `withdraw_on_stop`: every route of `table` marked,
    /// and how long to wait before the withdrawal. `None` without `[drain]`
    /// or with no time to give.
    pub fn on_stop(&self, table: &Table) -> Option<(Table, Duration)> {
        let g = self.cfg.as_ref()?.graceful_shutdown;
        if g.is_zero() {
            return None;
        }
        let all = table.keys().copied().collect();
        Some((apply(table, &all, phase(Duration::ZERO, g)), g))
    }
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

    fn table() -> Arc<Table> {
        let mut t = Table::new();
        for s in ["203.0.113.1/32", "192.0.2.10/32", "198.51.100.1/32"] {
            t.insert(s.parse().unwrap(), Arc::new(RouteAttrs::default()));
        }
        Arc::new(t)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_drain_begins_marks_withdraws_and_ends() {
        let mut d = Drain::new(Some(cfg()));
        let t0 = Instant::now();
        let svc: BTreeSet<IpNet> = [net("203.0.113.1/32")].into();
        let cp = Some(net("192.0.2.10/32"));
        assert_eq!(d.on_facts(&NodeFacts::default(), t0), Change::Same);
        assert_eq!(d.line(t0), Some(Line::default()));
        let same = table();
        assert!(
            Arc::ptr_eq(&d.announce(&same, || svc.clone(), cp, t0), &same),
            "not draining: the table itself"
        );
        let cordoned = NodeFacts {
            unschedulable: true,
            ..Default::default()
        };
        assert_eq!(
            d.on_facts(&cordoned, t0),
            Change::Began {
                reason: "cordoned".into(),
                graceful: Duration::from_secs(30)
            }
        );
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(d.deadline(t10), Some(t0 + Duration::from_secs(30)));
        assert_eq!(
            d.line(t10),
            Some(Line {
                active: true,
                reason: "cordoned".into(),
                left_secs: Some(20)
            })
        );
        assert_eq!(
            d.explain(t10).unwrap(),
            "announced with GRACEFUL_SHUTDOWN (cordoned), withdrawn in 20s"
        );
        let a = d.announce(&table(), || svc.clone(), cp, t10);
        assert!(a[&net("203.0.113.1/32")]
            .communities
            .contains(&GRACEFUL_SHUTDOWN));
        assert!(
            a[&net("192.0.2.10/32")]
                .communities
                .contains(&GRACEFUL_SHUTDOWN),
            "a cordon drains the control plane"
        );
        assert!(
            a[&net("198.51.100.1/32")].communities.is_empty(),
            "statics stay"
        );
        // The facts again: the drain keeps its start.
        assert_eq!(d.on_facts(&cordoned, t10), Change::Same);
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(d.deadline(t30), None);
        assert_eq!(d.explain(t30).unwrap(), "withdrawn (cordoned)");
        let w = d.announce(&table(), || svc.clone(), cp, t30);
        assert_eq!(w.keys().collect::<Vec<_>>(), [&net("198.51.100.1/32")]);
        assert_eq!(d.on_facts(&NodeFacts::default(), t30), Change::Ended);
        assert_eq!(d.line(t30), Some(Line::default()));
        assert_eq!(d.announce(&table(), || svc, cp, t30).len(), 3);
    }

    #[test]
    fn the_exclusion_label_spares_the_control_plane_until_a_cordon() {
        let mut d = Drain::new(Some(cfg()));
        let t0 = Instant::now();
        let label = NodeFacts {
            labels: [(EXCLUDE_LABEL.to_string(), String::new())].into(),
            ..Default::default()
        };
        assert!(matches!(d.on_facts(&label, t0), Change::Began { .. }));
        let cp = Some(net("192.0.2.10/32"));
        let a = d.announce(&table(), BTreeSet::new, cp, t0);
        assert!(a[&net("192.0.2.10/32")].communities.is_empty());
        let both = NodeFacts {
            unschedulable: true,
            ..label
        };
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(d.on_facts(&both, t5), Change::Same);
        let a = d.announce(&table(), BTreeSet::new, cp, t5);
        assert!(a[&net("192.0.2.10/32")]
            .communities
            .contains(&GRACEFUL_SHUTDOWN));
        assert_eq!(
            d.line(t5).unwrap().left_secs,
            Some(25),
            "the drain kept its start"
        );
    }

    #[test]
    fn without_drain_config_nothing_drains() {
        let mut d = Drain::new(None);
        let t0 = Instant::now();
        let cordoned = NodeFacts {
            unschedulable: true,
            ..Default::default()
        };
        assert_eq!(d.on_facts(&cordoned, t0), Change::Same);
        assert_eq!(
            (d.line(t0), d.deadline(t0), d.explain(t0)),
            (None, None, None)
        );
        assert!(d.on_stop(&table()).is_none());
    }

    #[test]
    fn a_stop_marks_every_route_for_the_graceful_time() {
        let d = Drain::new(Some(cfg()));
        let (t, wait) = d.on_stop(&table()).unwrap();
        assert_eq!(wait, Duration::from_secs(30));
        assert_eq!(t.len(), 3);
        assert!(t.values().all(|a| a.communities == [GRACEFUL_SHUTDOWN]));
        let none = Drain::new(Some(DrainConfig {
            graceful_shutdown: Duration::ZERO,
            ..cfg()
        }));
        assert!(none.on_stop(&table()).is_none());
    }

    #[test]
    fn a_reloaded_drain_config_applies_from_the_next_facts() {
        let cordoned = NodeFacts {
            unschedulable: true,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut d = Drain::new(None);
        assert_eq!(d.on_facts(&cordoned, t0), Change::Same);
        d.set_config(Some(cfg()));
        assert_eq!(d.line(t0), Some(Line::default()), "[drain] now shows");
        assert!(matches!(d.on_facts(&cordoned, t0), Change::Began { .. }));
        d.set_config(None);
        assert_eq!(d.line(t0), None);
        assert_eq!(d.deadline(t0), None, "no [drain]: nothing withdrawn later");
    }
}
