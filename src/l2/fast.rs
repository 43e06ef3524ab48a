//! Fast failover (`[l2] fast_failover`), as plain values: which nodes this
//! one runs BFD with, and when a BFD session that went down lets it take a
//! VIP before the owner's Lease expires.
//!
//! Each owner runs BFD with the successor of each VIP it holds (the first
//! eligible node after it in the ranking), and each successor with the
//! owner: both compute the same pairs from the same Leases. A session that
//! was Up and expired (not one the owner stopped on purpose) is not
//! enough: the successor then asks for the VIP on the wire (an ARP probe
//! or a duplicate address detection solicitation, [`PROBES`] of them,
//! [`PROBE_WAIT`] apart). Only when no other node answers is the owner
//! taken for dead, so a broken BFD path alone, or a hostile address in a
//! Lease, moves nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::owner::{Decision, State};

pub const PROBES: u8 = 2;
pub const PROBE_WAIT: Duration = Duration::from_millis(100);

/// The nodes `me` runs BFD with: the successor of each VIP it holds and the
/// owner of each VIP it is the successor of.
pub fn partners(me: &str, ds: &[Decision]) -> BTreeSet<String> {
    ds.iter()
        .filter_map(|d| {
            let State::Held { owner, .. } = &d.state else {
                return None;
            };
            let next = d.successor.as_ref()?;
            if owner == me {
                Some(next.clone())
            } else if next == me {
                Some(owner.clone())
            } else {
                None
            }
        })
        .collect()
}

/// What to ask for on the wire when BFD with `node` goes down: the first
/// address of each VIP `node` holds that `me` is the successor of.
pub fn to_probe(me: &str, node: &str, ds: &[Decision]) -> Vec<IpAddr> {
    ds.iter()
        .filter(|d| matches!(&d.state, State::Held { owner, .. } if owner == node))
        .filter(|d| d.successor.as_deref() == Some(me))
        .map(|d| d.vip.lead())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    addrs: Vec<IpAddr>,
    sent: u8,
    next: Instant,
}

/// The nodes being probed, and what each poll sends or concludes.
#[derive(Debug, Default)]
pub struct Probing {
    pending: BTreeMap<String, Probe>,
}

impl Probing {
    /// BFD with `node` expired: probe `addrs` from `now` (nothing to probe,
    /// nothing to conclude: this node succeeds it for no VIP).
    pub fn down(&mut self, node: &str, addrs: Vec<IpAddr>, now: Instant) {
        if addrs.is_empty() {
            return;
        }
        let p = Probe {
            addrs,
            sent: 0,
            next: now,
        };
        self.pending.insert(node.to_string(), p);
    }

    /// BFD with `node` is back, or it renewed its Lease: alive after all.
    pub fn cancel(&mut self, node: &str) {
        self.pending.remove(node);
    }

    /// Another node answered for `ip`: whoever it was probed for is alive.
    pub fn answered(&mut self, ip: IpAddr) {
        self.pending.retain(|_, p| !p.addrs.contains(&ip));
    }

    /// When [`Probing::poll`] has something to do next.
    pub fn next(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    pub fn is_probing(&self, node: &str) -> bool {
        self.pending.contains_key(node)
    }

    /// At `now`: the addresses to probe, and the nodes whose probes all
    /// went unanswered.
    pub fn poll(&mut self, now: Instant) -> (Vec<IpAddr>, Vec<String>) {
        let (mut send, mut dead) = (vec![], vec![]);
        for (node, p) in self.pending.iter_mut() {
            if now < p.next {
                continue;
            }
            if p.sent < PROBES {
                send.extend(p.addrs.iter().copied());
                p.sent += 1;
                p.next = now + PROBE_WAIT;
            } else {
                dead.push(node.clone());
            }
        }
        for n in &dead {
            self.pending.remove(n);
        }
        (send, dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::owner::{decide, groups, NodeView};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, claims: &[(&str, u64)]) -> NodeView {
        NodeView {
            name: name.into(),
            alive: true,
            ready: true,
            claims: claims.iter().map(|(a, e)| (ip(a), *e)).collect(),
            ..NodeView::default()
        }
    }

    /// Ten VIPs held by whoever the ranking picked, as three nodes see them.
    fn held() -> (Vec<NodeView>, Vec<crate::l2::owner::Vip>) {
        let vips = groups(
            &(1..=10)
                .map(|i| (vec![ip(&format!("192.0.2.{}", 100 + i))], false))
                .collect::<Vec<_>>(),
        );
        let mut nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        for d in decide("a", &nodes, &vips) {
            let owner = d.owner().unwrap().to_string();
            let n = nodes.iter_mut().find(|n| n.name == owner).unwrap();
            n.claims.insert(d.vip.lead(), 1);
        }
        (nodes, vips)
    }

    #[test]
    fn owners_and_successors_pair_up_alike_from_both_ends() {
        let (nodes, vips) = held();
        let pairs: BTreeSet<(String, String)> = ["a", "b", "c"]
            .iter()
            .flat_map(|me| {
                let ds = decide(me, &nodes, &vips);
                partners(me, &ds)
                    .into_iter()
                    .map(move |p| (me.to_string(), p))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(!pairs.is_empty());
        for (x, y) in &pairs {
            assert_ne!(x, y, "no session with itself");
            assert!(
                pairs.contains(&(y.clone(), x.clone())),
                "{x} runs BFD with {y}, not the other way: {pairs:?}"
            );
        }
        // Every VIP's owner is paired with its successor.
        let ds = decide("a", &nodes, &vips);
        for d in &ds {
            let (o, s) = (d.owner().unwrap(), d.successor.as_deref().unwrap());
            assert_ne!(o, s);
            assert!(pairs.contains(&(o.to_string(), s.to_string())));
        }
    }

    #[test]
    fn a_successor_probes_only_what_it_would_take() {
        let (nodes, vips) = held();
        let ds = decide("b", &nodes, &vips);
        let mine: Vec<IpAddr> = ds
            .iter()
            .filter(|d| d.owner() == Some("a") && d.successor.as_deref() == Some("b"))
            .map(|d| d.vip.lead())
            .collect();
        assert_eq!(to_probe("b", "a", &ds), mine);
        let all_of_a = ds.iter().filter(|d| d.owner() == Some("a")).count();
        assert_eq!(
            to_probe("b", "a", &ds).len() + to_probe("c", "a", &decide("c", &nodes, &vips)).len(),
            all_of_a,
            "each of a's VIPs has one successor"
        );
        // A VIP still being claimed has no owner to probe.
        let fresh = decide("b", &[node("a", &[]), node("b", &[])], &vips);
        assert!(to_probe("b", "a", &fresh).is_empty());
    }

    #[test]
    fn two_unanswered_probes_and_only_then_the_owner_is_dead() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut p = Probing::default();
        p.down("a", vec![ip("192.0.2.101")], t);
        assert_eq!(p.next(), Some(t));
        assert_eq!(p.poll(t), (vec![ip("192.0.2.101")], vec![]));
        assert_eq!(p.next(), Some(ms(100)));
        assert_eq!(p.poll(ms(50)), (vec![], vec![]), "not before the wait");
        assert_eq!(p.poll(ms(100)), (vec![ip("192.0.2.101")], vec![]));
        assert_eq!(p.poll(ms(150)), (vec![], vec![]));
        assert_eq!(p.poll(ms(200)), (vec![], vec!["a".to_string()]));
        assert!(!p.is_probing("a"));
        assert_eq!(p.next(), None);
        assert_eq!(p.poll(ms(300)), (vec![], vec![]), "concluded once");
    }

    #[test]
    fn an_answer_or_bfd_back_keeps_the_owner() {
        let t = Instant::now();
        let later = t + Duration::from_secs(1);
        let mut p = Probing::default();
        p.down("a", vec![ip("192.0.2.101"), ip("192.0.2.102")], t);
        p.down("c", vec![ip("192.0.2.103")], t);
        p.poll(t);
        p.answered(ip("192.0.2.102"));
        assert!(!p.is_probing("a"));
        assert!(p.is_probing("c"));
        p.cancel("c");
        assert_eq!(p.poll(later), (vec![], vec![]));
        p.down("a", vec![], t);
        assert!(!p.is_probing("a"), "nothing to probe: nothing concluded");
    }
}
