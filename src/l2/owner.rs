//! Who answers for each L2 VIP: plain values in (every node's Lease as this
//! node sees it, the VIPs), plain values out (one decision per VIP). Every
//! node runs the same function on the same Leases and reaches the same
//! answer; where views differ for a moment, the epochs written into the
//! Leases settle it (the highest wins, a tie goes to the ranking).
//!
//! - A VIP is a group of addresses that must stay together: the addresses
//!   of one Service (both families of a dual-stack Service) and every
//!   Service sharing one of them.
//! - The owner keeps a VIP while it stays eligible: a node that comes back
//!   takes nothing back (no failback, so long connections break once).
//! - Otherwise the first eligible node of a rendezvous ranking of (VIP,
//!   node) takes it, skipping nodes already holding 1.25 times the mean,
//!   with an epoch one above any written for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One node's Lease, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Renewed within the lease duration, by when this node saw it change.
    pub alive: bool,
    /// Carrier on its L2 interfaces and not draining.
    pub ready: bool,
    /// Not ready only because it has just started: ranked like a ready
    /// node, so that VIPs are spread over every node of a cluster starting
    /// together, but holding nothing until it is ready.
    pub starting: bool,
    /// The ETP Local addresses it has a usable endpoint for.
    pub local: BTreeSet<IpAddr>,
    /// What it claims: address -> epoch.
    pub claims: BTreeMap<IpAddr, u64>,
    /// Addresses it cannot answer for (not on-link there, the kernel
    /// answering too).
    pub refused: BTreeSet<IpAddr>,
}

/// A group of addresses owned together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vip {
    /// Sorted, not empty: the first is the group's name in the ranking.
    pub addrs: Vec<IpAddr>,
    /// externalTrafficPolicy Local: only nodes with a usable local
    /// endpoint are eligible.
    pub local: bool,
}

impl Vip {
    pub fn lead(&self) -> IpAddr {
        self.addrs[0]
    }
}

/// The VIPs from each Service's L2 addresses (and its traffic policy):
/// Services that share an address are one group.
pub fn groups(services: &[(Vec<IpAddr>, bool)]) -> Vec<Vip> {
    // Union-find over addresses.
    let mut parent: BTreeMap<IpAddr, IpAddr> = BTreeMap::new();
    fn find(p: &mut BTreeMap<IpAddr, IpAddr>, a: IpAddr) -> IpAddr {
        let mut r = a;
        while let Some(&n) = p.get(&r).filter(|n| **n != r) {
            r = n;
        }
        p.insert(a, r);
        r
    }
    for (addrs, _) in services {
        for a in addrs {
            parent.entry(*a).or_insert(*a);
        }
        for w in addrs.windows(2) {
            let (x, y) = (find(&mut parent, w[0]), find(&mut parent, w[1]));
            // The smaller address is the root, so the result does not
            // depend on the order Services come in.
            let (lo, hi) = if x < y { (x, y) } else { (y, x) };
            parent.insert(hi, lo);
        }
    }
    let mut out: BTreeMap<IpAddr, Vip> = BTreeMap::new();
    let all: Vec<IpAddr> = parent.keys().copied().collect();
    for a in all {
        let r = find(&mut parent, a);
        let v = out.entry(r).or_insert_with(|| Vip {
            addrs: vec![],
            local: false,
        });
        v.addrs.push(a);
    }
    for (addrs, local) in services {
        if let Some(a) = addrs.first() {
            let r = find(&mut parent, *a);
            if let Some(v) = out.get_mut(&r) {
                v.local |= local;
            }
        }
    }
    out.into_values().collect()
}

pub use crate::rendezvous::score;

/// The most VIPs one node takes: 1.25 times the mean, but never so few
/// that the nodes cannot hold them all (6 VIPs over 5 nodes: 2).
pub fn cap(vips: usize, nodes: usize) -> usize {
    let nodes = nodes.max(1);
    (vips * 5 / (4 * nodes)).max(vips.div_ceil(nodes)).max(1)
}

/// What is decided for one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub vip: Vip,
    pub state: State,
    /// Whoever holds the highest claim, eligible or not: an owner handing
    /// over (draining, stopping) answers until its successor holds it.
    pub holder: Option<(String, u64)>,
    /// This node's place among the eligible nodes (1 is first), if eligible.
    pub rank: Option<usize>,
    pub eligible: usize,
    /// The first eligible node of the ranking after the owner: the one
    /// that takes the VIP if the owner dies (the cap aside), and so the
    /// owner's BFD partner under `fast_failover`.
    pub successor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// `owner` holds the highest claim and is eligible: it answers.
    Held { owner: String, epoch: u64 },
    /// `owner` is to claim it at `epoch`; nobody answers until it has.
    ToClaim { owner: String, epoch: u64 },
    /// No node is eligible.
    Nobody,
}

impl State {
    pub fn owner(&self) -> Option<&str> {
        match self {
            State::Held { owner, .. } | State::ToClaim { owner, .. } => Some(owner),
            State::Nobody => None,
        }
    }
}

/// The first eligible node of `order` that is not `owner`.
fn successor(order: &[&NodeView], owner: Option<&str>) -> Option<String> {
    (order.iter())
        .find(|n| n.ready && Some(n.name.as_str()) != owner)
        .map(|n| n.name.clone())
}

impl Decision {
    pub fn owner(&self) -> Option<&str> {
        self.state.owner()
    }

    /// Whether `me` holds the highest claim, eligible or not.
    pub fn held_by(&self, me: &str) -> bool {
        self.holder.as_ref().is_some_and(|(n, _)| n == me)
    }

    /// Whether `me` answers for it now.
    pub fn answers(&self, me: &str) -> bool {
        matches!(&self.state, State::Held { owner, .. } if owner == me)
    }

    /// The epoch `me` writes into its Lease for these addresses, if any.
    pub fn claim(&self, me: &str) -> Option<u64> {
        match &self.state {
            State::Held { owner, epoch } | State::ToClaim { owner, epoch } if owner == me => {
                Some(*epoch)
            }
            _ => None,
        }
    }
}

fn eligible(n: &NodeView, v: &Vip) -> bool {
    n.ready && ranked(n, v)
}

/// Whether `n` takes part in the ranking for `v`: eligible, or would be
/// but for having just started.
fn ranked(n: &NodeView, v: &Vip) -> bool {
    n.alive
        && (n.ready || n.starting)
        && (!v.local || v.addrs.iter().any(|a| n.local.contains(a)))
        && !v.addrs.iter().any(|a| n.refused.contains(a))
}

/// The highest claim on any of the VIP's addresses, from any Lease (a dead
/// node's too: a new claim must be above it), the tie to the ranking.
fn highest<'a>(nodes: &'a [NodeView], v: &Vip) -> Option<(&'a NodeView, u64)> {
    let lead = v.lead();
    nodes
        .iter()
        .filter_map(|n| {
            let e = v.addrs.iter().filter_map(|a| n.claims.get(a)).max()?;
            Some((n, *e))
        })
        .max_by_key(|(n, e)| (*e, score(lead, &n.name)))
}

/// The decision for every VIP (in the order given), from `me`'s view.
pub fn decide(me: &str, nodes: &[NodeView], vips: &[Vip]) -> Vec<Decision> {
    let ready = nodes
        .iter()
        .filter(|n| n.alive && (n.ready || n.starting))
        .count()
        .max(1);
    let cap = cap(vips.len(), ready);
    let holders: Vec<Option<(&NodeView, u64)>> = vips.iter().map(|v| highest(nodes, v)).collect();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    // The owners that keep theirs count first.
    let mut out: Vec<Option<State>> = vips
        .iter()
        .zip(&holders)
        .map(|(v, h)| {
            let (n, e) = h.filter(|(n, _)| eligible(n, v))?;
            *load.entry(&n.name).or_default() += 1;
            Some(State::Held {
                owner: n.name.clone(),
                epoch: e,
            })
        })
        .collect();
    let mut ranks = Vec::with_capacity(vips.len());
    let mut successors = Vec::with_capacity(vips.len());
    for (i, v) in vips.iter().enumerate() {
        let lead = v.lead();
        let mut order: Vec<&NodeView> = nodes.iter().filter(|n| ranked(n, v)).collect();
        order.sort_by_key(|n| (std::cmp::Reverse(score(lead, &n.name)), n.name.clone()));
        ranks.push((
            order.iter().position(|n| n.name == me).map(|p| p + 1),
            order.len(),
        ));
        if out[i].is_none() {
            let epoch = holders[i].map_or(1, |(_, e)| e.saturating_add(1));
            out[i] = Some(designate(&order, &mut load, cap, epoch));
        }
        let owner = out[i].as_ref().and_then(State::owner);
        successors.push(successor(&order, owner));
    }
    vips.iter()
        .zip(out)
        .zip(ranks)
        .zip(holders)
        .zip(successors)
        .map(
            |((((v, s), (rank, eligible)), holder), successor)| Decision {
                vip: v.clone(),
                state: s.unwrap_or(State::Nobody),
                holder: holder.map(|(n, e)| (n.name.clone(), e)),
                rank,
                eligible,
                successor,
            },
        )
        .collect()
}

/// The first node of the ranking under the cap (the first at all when
/// every one is at it) is to claim the VIP.
fn designate<'a>(
    order: &[&'a NodeView],
    load: &mut BTreeMap<&'a str, usize>,
    cap: usize,
    epoch: u64,
) -> State {
    let pick = order
        .iter()
        .find(|n| load.get(n.name.as_str()).copied().unwrap_or(0) < cap)
        .or(order.first());
    match pick {
        Some(n) => {
            *load.entry(&n.name).or_default() += 1;
            State::ToClaim {
                owner: n.name.clone(),
                epoch,
            }
        }
        None => State::Nobody,
    }
}

/// What `me` writes into its Lease: every address of every VIP it holds or
/// is to claim, with the epoch.
pub fn claims(me: &str, ds: &[Decision]) -> BTreeMap<IpAddr, u64> {
    ds.iter()
        .filter_map(|d| d.claim(me).map(|e| (d, e)))
        .flat_map(|(d, e)| d.vip.addrs.iter().map(move |a| (*a, e)))
        .collect()
}

/// Why `me` does not answer for a VIP, for `vipd explain`.
pub fn why_not(me: &str, d: &Decision, my_state: Option<&str>) -> Option<String> {
    if d.answers(me) {
        return None;
    }
    Some(match (&d.state, d.rank) {
        (State::ToClaim { owner, epoch }, _) if owner == me => {
            format!("claiming it at epoch {epoch}; answering once the claim is written")
        }
        (_, None) if my_state.is_some() => format!("not eligible: {}", my_state.unwrap_or("")),
        (_, None) if d.vip.local => {
            "not eligible: no usable local endpoint (externalTrafficPolicy Local)".into()
        }
        (_, None) => "not eligible".into(),
        (State::Held { owner, epoch }, Some(r)) => format!(
            "{owner} holds it (epoch {epoch}) and stays eligible; this node ranks {r} of {}",
            d.eligible
        ),
        (State::ToClaim { owner, .. }, Some(r)) => format!(
            "{owner} is claiming it; this node ranks {r} of {} (or holds its share)",
            d.eligible
        ),
        (State::Nobody, _) => "no node is eligible".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            alive: true,
            ready: true,
            ..Default::default()
        }
    }

    fn vip(a: &str) -> Vip {
        Vip {
            addrs: vec![ip(a)],
            local: false,
        }
    }

    /// Runs every node's decision and writes each node's claims, as the
    /// nodes would over a few heartbeats, until nothing changes.
    fn settle(nodes: &mut [NodeView], vips: &[Vip]) -> Vec<Decision> {
        for _ in 0..10 {
            let before = nodes.to_vec();
            for n in nodes.iter_mut().filter(|n| n.alive) {
                n.claims = claims(&n.name, &decide(&n.name, &before, vips));
            }
            if before == nodes {
                break;
            }
        }
        decide("", nodes, vips)
    }

    fn held(ds: &[Decision]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for d in ds {
            if let State::Held { owner, .. } = &d.state {
                *m.entry(owner.clone()).or_default() += 1;
            }
        }
        m
    }

    #[test]
    fn a_dual_stack_service_and_those_sharing_with_it_are_one_vip() {
        let g = groups(&[
            (vec![ip("192.0.2.10"), ip("2001:db8::10")], false),
            (vec![ip("192.0.2.11")], false),
            (vec![ip("2001:db8::10"), ip("192.0.2.12")], true),
        ]);
        assert_eq!(
            g,
            vec![
                Vip {
                    addrs: vec![ip("192.0.2.10"), ip("192.0.2.12"), ip("2001:db8::10")],
                    local: true
                },
                vip("192.0.2.11"),
            ]
        );
    }

    #[test]
    fn the_first_ranked_node_claims_then_holds() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        let v = vec![vip("192.0.2.10")];
        let d = decide("a", &nodes, &v);
        let State::ToClaim { owner, epoch: 1 } = &d[0].state else {
            panic!("{d:?}")
        };
        let first = owner.clone();
        assert!(!d[0].answers(&first), "nobody answers before the claim");
        let ds = settle(&mut nodes, &v);
        assert_eq!(
            ds[0].state,
            State::Held {
                owner: first.clone(),
                epoch: 1
            }
        );
        assert_eq!(ds[0].eligible, 3);
        // Exactly one node claims it.
        assert_eq!(nodes.iter().filter(|n| !n.claims.is_empty()).count(), 1);
    }

    #[test]
    fn a_dead_owner_is_replaced_above_its_epoch_and_gets_nothing_back() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        let v = vec![vip("192.0.2.10")];
        let ds = settle(&mut nodes, &v);
        let first = ds[0].owner().unwrap().to_string();
        let i = nodes.iter().position(|n| n.name == first).unwrap();
        nodes[i].alive = false;
        let ds = settle(&mut nodes, &v);
        let State::Held {
            owner: second,
            epoch: 2,
        } = ds[0].state.clone()
        else {
            panic!("{ds:?}")
        };
        assert_ne!(second, first);
        // Back, with its old claim still in its Lease: below the new one.
        nodes[i].alive = true;
        assert!(!decide(&first, &nodes, &v)[0].answers(&first));
        let ds = settle(&mut nodes, &v);
        assert_eq!(
            ds[0].state,
            State::Held {
                owner: second,
                epoch: 2
            }
        );
        assert!(
            nodes[i].claims.is_empty(),
            "the old owner dropped its claim"
        );
    }

    #[test]
    fn an_owner_not_ready_hands_over_to_the_next() {
        // A drain or a stop: the owner says it is not ready and keeps
        // answering until the successor holds it.
        let mut nodes = vec![node("a"), node("b")];
        let v = vec![vip("192.0.2.10")];
        let first = settle(&mut nodes, &v)[0].owner().unwrap().to_string();
        let i = nodes.iter().position(|n| n.name == first).unwrap();
        nodes[i].ready = false;
        let d = decide(&first, &nodes, &v);
        assert!(matches!(&d[0].state, State::ToClaim { owner, epoch: 2 } if *owner != first));
        assert_eq!(d[0].claim(&first), None);
        let ds = settle(&mut nodes, &v);
        assert!(matches!(&ds[0].state, State::Held { owner, epoch: 2 } if *owner != first));
    }

    #[test]
    fn a_tie_in_epochs_goes_to_the_ranking() {
        let v = vec![vip("192.0.2.10")];
        let mut nodes = vec![node("a"), node("b")];
        nodes[0].claims.insert(ip("192.0.2.10"), 3);
        nodes[1].claims.insert(ip("192.0.2.10"), 3);
        let winner = if score(ip("192.0.2.10"), "a") > score(ip("192.0.2.10"), "b") {
            "a"
        } else {
            "b"
        };
        let d = decide("a", &nodes, &v);
        assert_eq!(
            d[0].state,
            State::Held {
                owner: winner.into(),
                epoch: 3
            }
        );
        // And the higher epoch beats the ranking.
        let loser = if winner == "a" { 1 } else { 0 };
        nodes[loser].claims.insert(ip("192.0.2.10"), 4);
        let d = decide("a", &nodes, &v);
        assert_eq!(
            d[0].state,
            State::Held {
                owner: nodes[loser].name.clone(),
                epoch: 4
            }
        );
    }

    #[test]
    fn local_vips_go_only_to_nodes_with_a_local_endpoint() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        nodes[2].local.insert(ip("192.0.2.10"));
        let v = vec![Vip {
            addrs: vec![ip("192.0.2.10")],
            local: true,
        }];
        let ds = settle(&mut nodes, &v);
        assert_eq!(
            ds[0].state,
            State::Held {
                owner: "c".into(),
                epoch: 1
            }
        );
        assert_eq!(decide("a", &nodes, &v)[0].rank, None);
        // The endpoint moves: so does the VIP.
        nodes[2].local.clear();
        nodes[0].local.insert(ip("192.0.2.10"));
        let ds = settle(&mut nodes, &v);
        assert_eq!(
            ds[0].state,
            State::Held {
                owner: "a".into(),
                epoch: 2
            }
        );
        nodes[0].local.clear();
        let ds = settle(&mut nodes, &v);
        assert_eq!(ds[0].state, State::Nobody);
        assert!(nodes.iter().all(|n| n.claims.is_empty()));
    }

    #[test]
    fn a_hundred_vips_spread_within_the_cap_and_a_return_moves_nothing() {
        let mut nodes = vec![node("node-a"), node("node-b"), node("node-c")];
        let v: Vec<Vip> = (0..100).map(|i| vip(&format!("100.64.0.{i}"))).collect();
        let ds = settle(&mut nodes, &v);
        let h = held(&ds);
        assert_eq!(h.values().sum::<usize>(), 100);
        assert!(h.values().all(|n| *n <= 41), "{h:?}");
        nodes[1].alive = false;
        let ds = settle(&mut nodes, &v);
        let h = held(&ds);
        assert_eq!(h.get("node-b"), None);
        assert_eq!(h.values().sum::<usize>(), 100);
        let before: Vec<_> = ds.iter().map(|d| d.state.clone()).collect();
        nodes[1].alive = true;
        let ds = settle(&mut nodes, &v);
        let after: Vec<_> = ds.iter().map(|d| d.state.clone()).collect();
        assert_eq!(before, after, "nothing moves back");
    }

    #[test]
    fn nodes_starting_together_share_the_vips_and_a_starting_one_holds_nothing() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        for n in &mut nodes[1..] {
            n.ready = false;
            n.starting = true;
        }
        let v: Vec<Vip> = (0..30).map(|i| vip(&format!("100.64.2.{i}"))).collect();
        // "a" is ready first: it claims its share only.
        let ds = decide("a", &nodes, &v);
        let mine = claims("a", &ds).len();
        assert!((1..=12).contains(&mine), "a claims {mine} of 30");
        assert!(ds
            .iter()
            .all(|d| !matches!(&d.state, State::Held { owner, .. } if owner != "a")));
    }

    /// The ranking, not the cap, spreads the VIPs: each node comes first
    /// for about a third of them, and a node leaving moves only the VIPs
    /// it ranked first for.
    #[test]
    fn each_node_ranks_first_for_its_share_and_a_leaving_node_moves_only_its_own() {
        let names = ["node-a", "node-b", "node-c"];
        let v: Vec<Vip> = (0..300)
            .map(|i| vip(&format!("100.64.{}.{}", i / 250, i % 250)))
            .collect();
        let first = |nodes: &[NodeView]| -> Vec<String> {
            v.iter()
                .map(|x| {
                    nodes
                        .iter()
                        .max_by_key(|n| (score(x.lead(), &n.name), n.name.clone()))
                        .unwrap()
                        .name
                        .clone()
                })
                .collect()
        };
        let all: Vec<NodeView> = names.iter().map(|n| node(n)).collect();
        let firsts = first(&all);
        for n in names {
            let c = firsts.iter().filter(|f| *f == n).count();
            assert!((70..=130).contains(&c), "{n} first for {c} of 300");
        }
        for (i, d) in decide("node-a", &all, &v).iter().enumerate() {
            assert_eq!(d.rank == Some(1), firsts[i] == "node-a");
        }
        let without_c = first(&all[..2]);
        for (a, b) in firsts.iter().zip(&without_c) {
            assert!(
                a == b || a == "node-c",
                "{a} -> {b}: a VIP moved that node-c did not hold"
            );
        }
    }

    #[test]
    fn the_cap_is_a_quarter_over_the_mean_but_room_for_all() {
        assert_eq!(cap(100, 3), 41);
        assert_eq!(cap(100, 4), 31);
        assert_eq!(cap(6, 5), 2, "room for every VIP");
        assert_eq!(cap(2, 3), 1);
        assert_eq!(cap(0, 3), 1);
        assert_eq!(cap(10, 0), 12, "no node counted: as one");
    }

    /// VIPs that all rank node-a first still spread: node-a stops at the cap.
    #[test]
    fn the_cap_holds_where_the_ranking_alone_would_pile_up() {
        let mut nodes = vec![node("node-a"), node("node-b"), node("node-c")];
        let v: Vec<Vip> = (0..2000)
            .map(|i| vip(&format!("100.64.{}.{}", i / 250, i % 250)))
            .filter(|x| {
                let s = |n: &str| score(x.lead(), n);
                s("node-a") > s("node-b") && s("node-a") > s("node-c")
            })
            .take(30)
            .collect();
        assert_eq!(v.len(), 30);
        let h = held(&settle(&mut nodes, &v));
        assert_eq!(h.get("node-a"), Some(&cap(30, 3)), "{h:?}");
        assert_eq!(h.values().sum::<usize>(), 30);
    }

    #[test]
    fn why_not_here_names_the_owner_and_the_rank() {
        let mut nodes = vec![node("a"), node("b")];
        let v = vec![vip("192.0.2.10")];
        let ds = settle(&mut nodes, &v);
        let owner = ds[0].owner().unwrap().to_string();
        let other = if owner == "a" { "b" } else { "a" };
        let d = &decide(other, &nodes, &v)[0];
        let w = why_not(other, d, None).unwrap();
        assert!(
            w.contains(&format!("{owner} holds it (epoch 1)")) && w.contains("ranks 2 of 2"),
            "{w}"
        );
        assert_eq!(why_not(&owner, &decide(&owner, &nodes, &v)[0], None), None);
        assert!(why_not(
            other,
            &decide(other, &nodes, &v)[0],
            Some("carrier down on eth0")
        )
        .is_some());
    }

    proptest! {
        /// Whatever the nodes' states, once they have written their claims
        /// no VIP is held by two nodes, and one is held whenever any node
        /// is eligible; the cap holds on a fresh spread.
        #[test]
        fn one_owner_each_and_within_the_cap(
            n in 1usize..6, m in 1usize..60,
            down in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let mut nodes: Vec<NodeView> = (0..n).map(|i| node(&format!("n{i}"))).collect();
            let v: Vec<Vip> = (0..m).map(|i| vip(&format!("100.64.1.{i}"))).collect();
            let ds = settle(&mut nodes, &v);
            let h = held(&ds);
            prop_assert_eq!(h.values().sum::<usize>(), m);
            let cap = cap(m, n);
            prop_assert!(h.values().all(|c| *c <= cap), "{:?} cap {}", h, cap);
            for (i, d) in down.iter().enumerate().take(n) {
                nodes[i].ready = !d;
            }
            let ds = settle(&mut nodes, &v);
            let any_ready = nodes.iter().any(|x| x.ready);
            for d in &ds {
                let holders = nodes.iter().filter(|x| d.answers(&x.name) && x.ready).count();
                prop_assert!(holders <= 1);
                prop_assert_eq!(matches!(d.state, State::Held { .. }), any_ready);
            }
        }

        #[test]
        fn groups_do_not_depend_on_the_order(mut s in proptest::collection::vec(
            (proptest::collection::vec(0u8..12, 1..3), any::<bool>()), 0..8)
        ) {
            let as_ips = |s: &[(Vec<u8>, bool)]| -> Vec<(Vec<IpAddr>, bool)> {
                s.iter().map(|(a, l)| (a.iter().map(|x| ip(&format!("192.0.2.{x}"))).collect(), *l)).collect()
            };
            let g1 = groups(&as_ips(&s));
            s.reverse();
            let g2 = groups(&as_ips(&s));
            prop_assert_eq!(g1, g2);
        }
    }
}
