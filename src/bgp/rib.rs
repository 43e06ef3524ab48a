//! The routes vipd wants announced, and per peer what the peer was sent
//! (the Adj-RIB-Out), with the pure diff between the two.
//!
//! The speaker publishes a whole [`Table`] at a time; each session diffs it
//! against its Adj-RIB-Out, so any number of changes between two sends
//! collapse into one set of UPDATEs and nothing the peer already has is sent
//! again.
//!
//! A [`Table`] is a persistent map (`imbl::OrdMap`): a copy shares every
//! node with its original and a change copies only the path to it, so the
//! daemon's next table costs what changed, and a diff between two tables
//! skips the subtrees they share. With 50,000 Services, one event costs a
//! few microseconds per peer instead of a walk over every prefix (the
//! `std` B-tree this replaced was copied and walked whole on each event).

use std::collections::HashMap;
use std::sync::Arc;

use std::cmp::Ordering;

use imbl::ordmap::DiffItem;
use ipnet::IpNet;

use super::wire::Afi;
use crate::bgp::attrs::RouteAttrs;
pub use crate::bgp::attrs::Skip;

/// Prefix -> attributes. Prefixes that share attributes usually share one
/// `Arc`; the diff groups by value all the same (see [`Seen`]).
pub type Table = imbl::OrdMap<IpNet, Arc<RouteAttrs>>;

/// The attributes as one peer receives them (for an eBGP peer, no
/// LOCAL_PREF; the peer's default communities merged in), or why the peer
/// is not sent the route at all: such a route is left out for that peer
/// alone, as if the table did not hold it. The diff compares and groups on
/// this, so entries that differ only where the peer cannot see are neither
/// re-sent nor split into separate UPDATEs.
pub type Seen<'a> = &'a dyn Fn(&RouteAttrs, Afi) -> Result<RouteAttrs, Skip>;

pub fn afi_of(p: &IpNet) -> Afi {
    match p {
        IpNet::V4(_) => Afi::Ipv4,
        IpNet::V6(_) => Afi::Ipv6,
    }
}

/// What one peer has been sent: the snapshot it was last brought up to,
/// seen through the families the session carries. Snapshots are immutable
/// and shared with the speaker, so an Adj-RIB-Out costs no memory of its
/// own; a diff visits only what differs between two snapshots.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    sent: Arc<Table>,
    families: Vec<Afi>,
    /// Prefixes of `sent` in `families` the peer holds, and those it was
    /// not sent (see [`Seen`]): kept as counts, so neither costs a walk.
    held: usize,
    refused: usize,
}

/// Prefixes that share one set of attributes and family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub attrs: Arc<RouteAttrs>,
    pub afi: Afi,
    pub prefixes: Vec<IpNet>,
}

/// The UPDATEs a peer needs, before encoding.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub announce: Vec<Group>,
    pub withdraw_v4: Vec<IpNet>,
    pub withdraw_v6: Vec<IpNet>,
    /// Prefixes of the wanted table the peer cannot be sent (see [`Seen`]).
    pub refused: usize,
    /// Prefixes the peer holds once these changes are sent.
    pub held: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw_v4.is_empty() && self.withdraw_v6.is_empty()
    }
    pub fn announced(&self) -> usize {
        self.announce.iter().map(|g| g.prefixes.len()).sum()
    }
    pub fn withdrawn(&self) -> usize {
        self.withdraw_v4.len() + self.withdraw_v6.len()
    }

    fn add(&mut self, g: &mut Grouper, p: IpNet, a: &Arc<RouteAttrs>) {
        let afi = afi_of(&p);
        let id = match g.id(a, afi) {
            Ok(id) => id,
            Err(skip) => return self.skipped(skip),
        };
        self.held += 1;
        let i = *g.groups.entry((id, afi)).or_insert_with(|| {
            self.announce.push(Group {
                attrs: a.clone(),
                afi,
                prefixes: Vec::new(),
            });
            self.announce.len() - 1
        });
        self.announce[i].prefixes.push(p);
    }

    /// The peer holds `p` as `had`: withdrawn, unless it was never sent.
    fn withdraw(&mut self, g: &mut Grouper, p: IpNet, had: &Arc<RouteAttrs>) {
        if self.forget(g, p, had) {
            self.remove(p);
        }
    }

    /// `p`, held as `had`, leaves the counts; whether the peer was sent it.
    fn forget(&mut self, g: &mut Grouper, p: IpNet, had: &Arc<RouteAttrs>) -> bool {
        match g.id(had, afi_of(&p)) {
            Ok(_) => self.held = self.held.saturating_sub(1),
            Err(Skip::TooLarge) => self.refused = self.refused.saturating_sub(1),
            Err(Skip::NotForPeer) => {}
        }
        g.sent(had, afi_of(&p))
    }

    fn skipped(&mut self, why: Skip) {
        if why == Skip::TooLarge {
            self.refused += 1;
        }
    }

    /// `p` was `had` and is now `want`.
    fn replace(
        &mut self,
        g: &mut Grouper,
        p: IpNet,
        had: &Arc<RouteAttrs>,
        want: &Arc<RouteAttrs>,
    ) {
        let afi = afi_of(&p);
        if let Err(skip) = g.id(want, afi) {
            // Sent before, not to be sent now: not left as it was.
            self.withdraw(g, p, had);
            self.skipped(skip);
        } else if !g.same(had, want, afi) {
            self.forget(g, p, had);
            self.add(g, p, want);
        }
    }

    fn remove(&mut self, p: IpNet) {
        match afi_of(&p) {
            Afi::Ipv4 => self.withdraw_v4.push(p),
            Afi::Ipv6 => self.withdraw_v6.push(p),
        }
    }
}

/// Numbers each distinct attribute set as a peer sees it (`Err`: the
/// peer is not sent it). Looked up by pointer first: a table holds few
/// distinct `Arc`s, so `seen` runs once per `Arc` and family, not once per
/// prefix. The pointers stay valid because both tables outlive the diff.
struct Grouper<'a> {
    seen: Seen<'a>,
    by_ptr: HashMap<(*const RouteAttrs, Afi), Result<usize, Skip>>,
    by_value: HashMap<RouteAttrs, usize>,
    groups: HashMap<(usize, Afi), usize>,
}

impl<'a> Grouper<'a> {
    fn new(seen: Seen<'a>) -> Self {
        Grouper {
            seen,
            by_ptr: HashMap::new(),
            by_value: HashMap::new(),
            groups: HashMap::new(),
        }
    }
    fn id(&mut self, a: &Arc<RouteAttrs>, afi: Afi) -> Result<usize, Skip> {
        if let Some(i) = self.by_ptr.get(&(Arc::as_ptr(a), afi)) {
            return *i;
        }
        let n = self.by_value.len();
        let i = (self.seen)(a, afi).map(|v| *self.by_value.entry(v).or_insert(n));
        self.by_ptr.insert((Arc::as_ptr(a), afi), i);
        i
    }
    /// Whether the peer was sent `had` (as it holds the prefix now).
    fn sent(&mut self, had: &Arc<RouteAttrs>, afi: Afi) -> bool {
        self.id(had, afi).is_ok()
    }
    /// Whether the peer, holding `had`, needs no UPDATE to hold `want`.
    fn same(&mut self, had: &Arc<RouteAttrs>, want: &Arc<RouteAttrs>, afi: Afi) -> bool {
        Arc::ptr_eq(had, want) || self.id(had, afi) == self.id(want, afi)
    }
}

impl AdjRibOut {
    /// Prefixes the peer holds.
    pub fn len(&self) -> usize {
        self.held
    }
    /// Whether the peer was last brought up to this very table.
    pub fn is_at(&self, t: &Arc<Table>) -> bool {
        Arc::ptr_eq(&self.sent, t)
    }
    /// Prefixes of the table the peer could not be sent.
    pub fn refused(&self) -> usize {
        self.refused
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn clear(&mut self) {
        *self = AdjRibOut::default();
    }

    /// What must change for the peer to hold exactly the routes of `want`
    /// in `families`, as the peer sees them through `seen`, which must be
    /// the same for every diff of one session. With the families unchanged,
    /// only the entries where the two tables differ are visited.
    pub fn diff(&self, want: &Table, families: &[Afi], seen: Seen) -> Changes {
        let mut c = Changes {
            held: self.held,
            refused: self.refused,
            ..Changes::default()
        };
        let mut g = Grouper::new(seen);
        if families != self.families {
            return self.diff_families(want, families, c, g);
        }
        let ours = |p: &IpNet| families.contains(&afi_of(p));
        for d in self.sent.diff(want) {
            match d {
                DiffItem::Add(p, wa) if ours(p) => c.add(&mut g, *p, wa),
                DiffItem::Remove(p, ha) if ours(p) => c.withdraw(&mut g, *p, ha),
                DiffItem::Update {
                    old: (p, ha),
                    new: (_, wa),
                } if ours(p) => c.replace(&mut g, *p, ha, wa),
                _ => {}
            }
        }
        c
    }

    /// The diff when the session's families changed: every entry of both
    /// tables, each seen through its own families, in one merge walk.
    fn diff_families(
        &self,
        want: &Table,
        families: &[Afi],
        mut c: Changes,
        mut g: Grouper,
    ) -> Changes {
        let mut h = (self.sent.iter())
            .filter(|(p, _)| self.families.contains(&afi_of(p)))
            .peekable();
        let mut w = (want.iter())
            .filter(|(p, _)| families.contains(&afi_of(p)))
            .peekable();
        loop {
            let order = match (h.peek(), w.peek()) {
                (None, None) => return c,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((hp, _)), Some((wp, _))) => hp.cmp(wp),
            };
            match order {
                Ordering::Less => {
                    let (p, ha) = h.next().unwrap();
                    c.withdraw(&mut g, *p, ha);
                }
                Ordering::Greater => {
                    let (p, wa) = w.next().unwrap();
                    c.add(&mut g, *p, wa);
                }
                Ordering::Equal => {
                    let ((p, ha), (_, wa)) = (h.next().unwrap(), w.next().unwrap());
                    c.replace(&mut g, *p, ha, wa);
                }
            }
        }
    }

    /// Records that the peer now holds `want` in `families`, as the diff
    /// `c` to it left the counts.
    pub fn apply(&mut self, want: Arc<Table>, families: &[Afi], c: &Changes) {
        self.sent = want;
        self.families = families.to_vec();
        self.held = c.held;
        self.refused = c.refused;
    }

    /// Everything the peer holds in one family, grouped as for a first send
    /// (ROUTE-REFRESH re-sends this).
    pub fn resend(&self, afi: Afi, seen: Seen) -> Changes {
        if !self.families.contains(&afi) {
            return Changes::default();
        }
        AdjRibOut::default().diff(&self.sent, &[afi], seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &Arc<RouteAttrs>)]) -> Table {
        entries
            .iter()
            .map(|(p, a)| (p.parse::<IpNet>().unwrap(), (*a).clone()))
            .collect()
    }

    fn attrs(med: u32) -> Arc<RouteAttrs> {
        Arc::new(RouteAttrs {
            med: Some(med),
            ..Default::default()
        })
    }

    const BOTH: [Afi; 2] = [Afi::Ipv4, Afi::Ipv6];

    /// The peer brought up to `t` (a peer that sees every attribute).
    fn bring(rib: &mut AdjRibOut, t: Table, families: &[Afi]) {
        let c = rib.diff(&t, families, &same);
        rib.apply(Arc::new(t), families, &c);
    }

    /// A peer that sees every attribute.
    fn same(a: &RouteAttrs, _: Afi) -> Result<RouteAttrs, Skip> {
        Ok(a.clone())
    }

    /// An eBGP peer: LOCAL_PREF is not on its wire.
    fn ebgp(a: &RouteAttrs, _: Afi) -> Result<RouteAttrs, Skip> {
        Ok(RouteAttrs {
            local_pref: None,
            ..a.clone()
        })
    }

    fn lp(v: u32) -> Arc<RouteAttrs> {
        Arc::new(RouteAttrs {
            local_pref: Some(v),
            ..Default::default()
        })
    }

    /// 1,000 entries, each in its own Arc with equal attributes, are one
    /// group: what `[[announce]]` entries with the same attributes give.
    #[test]
    fn equal_attributes_in_distinct_arcs_are_one_group() {
        let t: Table = (0..1000u32)
            .map(|i| {
                let p = IpNet::from(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(
                    0x6440_0000 + i,
                )));
                (p, attrs(7))
            })
            .collect();
        let c = AdjRibOut::default().diff(&t, &BOTH, &same);
        assert_eq!(c.announce.len(), 1);
        assert_eq!(c.announced(), 1000);
    }

    /// A LOCAL_PREF change is nothing to an eBGP peer (not re-sent) and a
    /// change to an iBGP one; entries differing only in LOCAL_PREF are one
    /// group for eBGP.
    #[test]
    fn what_a_peer_cannot_see_is_no_change() {
        let t1 = table(&[("203.0.113.1/32", &lp(100)), ("203.0.113.2/32", &lp(200))]);
        let t2 = table(&[("203.0.113.1/32", &lp(300)), ("203.0.113.2/32", &lp(300))]);
        let mut rib = AdjRibOut::default();
        let c = rib.diff(&t1, &BOTH, &ebgp);
        assert_eq!((c.announce.len(), c.announced()), (1, 2));
        bring(&mut rib, t1, &BOTH);
        assert!(rib.diff(&t2, &BOTH, &ebgp).is_empty());
        let c = rib.diff(&t2, &BOTH, &same);
        assert_eq!((c.announce.len(), c.announced()), (1, 2));
    }

    #[test]
    fn first_send_groups_by_attributes_and_family() {
        let (a, b) = (attrs(1), attrs(2));
        let t = table(&[
            ("203.0.113.1/32", &a),
            ("203.0.113.2/32", &a),
            ("203.0.113.3/32", &b),
            ("2001:db8::1/128", &a),
        ]);
        let c = AdjRibOut::default().diff(&t, &BOTH, &same);
        assert_eq!(c.announce.len(), 3);
        assert_eq!(c.announce[0].prefixes.len(), 2);
        assert_eq!(c.announce[0].attrs, a);
        assert_eq!(c.announce[2].afi, Afi::Ipv6);
        assert_eq!(c.announced(), 4);
        assert_eq!(c.withdrawn(), 0);
    }

    #[test]
    fn nothing_is_sent_twice_and_removals_withdraw() {
        let a = attrs(1);
        let mut rib = AdjRibOut::default();
        let t1 = table(&[("203.0.113.1/32", &a), ("2001:db8::1/128", &a)]);
        let c = rib.diff(&t1, &BOTH, &same);
        assert_eq!(c.announced(), 2);
        bring(&mut rib, t1.clone(), &BOTH);
        assert!(rib.diff(&t1, &BOTH, &same).is_empty());
        // An equal value in a different Arc is still "already sent".
        let t1b = table(&[("203.0.113.1/32", &attrs(1)), ("2001:db8::1/128", &a)]);
        assert!(rib.diff(&t1b, &BOTH, &same).is_empty());
        let t2 = table(&[("203.0.113.1/32", &attrs(5))]);
        let c = rib.diff(&t2, &BOTH, &same);
        assert_eq!(c.announced(), 1);
        assert_eq!(
            c.withdraw_v6,
            vec!["2001:db8::1/128".parse::<IpNet>().unwrap()]
        );
        bring(&mut rib, t2, &BOTH);
        assert_eq!(rib.len(), 1);
        let c = rib.diff(&Table::new(), &BOTH, &same);
        assert_eq!(c.withdraw_v4.len(), 1);
        bring(&mut rib, Table::new(), &BOTH);
        assert!(rib.is_empty());
    }

    #[test]
    fn families_not_negotiated_are_neither_sent_nor_kept() {
        let a = attrs(1);
        let t = table(&[("203.0.113.1/32", &a), ("2001:db8::1/128", &a)]);
        let c = AdjRibOut::default().diff(&t, &[Afi::Ipv4], &same);
        assert_eq!(c.announced(), 1);
        assert_eq!(c.announce[0].afi, Afi::Ipv4);
    }

    #[test]
    fn a_family_dropped_from_the_session_is_withdrawn() {
        let a = attrs(1);
        let t = table(&[("203.0.113.1/32", &a), ("2001:db8::1/128", &a)]);
        let mut rib = AdjRibOut::default();
        bring(&mut rib, t.clone(), &BOTH);
        let c = rib.diff(&t, &[Afi::Ipv4], &same);
        assert_eq!((c.announced(), c.withdraw_v6.len()), (0, 1));
        // And only the families the peer holds count.
        bring(&mut rib, t, &[Afi::Ipv6]);
        assert_eq!(rib.len(), 1);
    }

    /// The merge walk against a brute-force model, over random tables.
    #[test]
    fn diff_matches_a_model() {
        use proptest::prelude::*;
        let attrs_pool: Vec<Arc<RouteAttrs>> = (0..3).map(attrs).collect();
        let entry = (0u8..40, 0usize..3, any::<bool>());
        proptest!(|(old in proptest::collection::vec(entry.clone(), 0..30),
                    new in proptest::collection::vec(entry, 0..30))| {
            let mk = |v: &Vec<(u8, usize, bool)>| -> Table {
                v.iter().map(|(i, a, six)| {
                    let p: IpNet = if *six { format!("2001:db8::{i:x}/128") } else { format!("203.0.113.{i}/32") }.parse().unwrap();
                    (p, attrs_pool[*a].clone())
                }).collect()
            };
            let (t0, t1) = (mk(&old), mk(&new));
            let mut rib = AdjRibOut::default();
            bring(&mut rib, t0.clone(), &BOTH);
            let c = rib.diff(&t1, &BOTH, &same);
            // Applying the changes to the old table gives the new one.
            let mut model = t0.clone();
            for p in c.withdraw_v4.iter().chain(&c.withdraw_v6) {
                prop_assert!(model.remove(p).is_some());
                prop_assert!(!t1.contains_key(p));
            }
            for g in &c.announce {
                for p in &g.prefixes {
                    prop_assert_eq!(afi_of(p), g.afi);
                    prop_assert!(t0.get(p).map(|a| **a != *g.attrs).unwrap_or(true), "re-sent unchanged {}", p);
                    model.insert(*p, g.attrs.clone());
                }
            }
            prop_assert_eq!(model, t1);
        });
    }

    /// Over a session's life (tables one after another, a family dropped
    /// now and then), the counts kept without walking equal a recount, and
    /// the UPDATEs applied to what the peer held give what it may hold.
    #[test]
    fn counts_kept_by_changes_equal_a_recount() {
        use proptest::prelude::*;
        let pool: Vec<Arc<RouteAttrs>> = [1, 9, 2].into_iter().map(attrs).collect();
        let entry = (0u8..24, 0usize..3, any::<bool>());
        let table = proptest::collection::vec(entry, 0..20);
        let step = (table, any::<bool>());
        proptest!(|(steps in proptest::collection::vec(step, 1..8))| {
            let mut rib = AdjRibOut::default();
            let mut peer: std::collections::BTreeMap<IpNet, Arc<RouteAttrs>> = Default::default();
            for (v, v4_only) in &steps {
                let t: Table = v.iter().map(|(i, a, six)| {
                    let p: IpNet = if *six { format!("2001:db8::{i:x}/128") } else { format!("203.0.113.{i}/32") }.parse().unwrap();
                    (p, pool[*a].clone())
                }).collect();
                let fams: &[Afi] = if *v4_only { &[Afi::Ipv4] } else { &BOTH };
                let c = rib.diff(&t, fams, &no_nine);
                for p in c.withdraw_v4.iter().chain(&c.withdraw_v6) {
                    prop_assert!(peer.remove(p).is_some(), "withdrew {} never sent", p);
                }
                for g in &c.announce {
                    for p in &g.prefixes {
                        peer.insert(*p, g.attrs.clone());
                    }
                }
                let ours = t.iter().filter(|(p, _)| fams.contains(&afi_of(p)));
                let (ok, big): (Vec<_>, Vec<_>) = ours.partition(|(_, a)| a.med != Some(9));
                let model: std::collections::BTreeMap<IpNet, Arc<RouteAttrs>> = ok
                    .into_iter()
                    .filter(|(_, a)| a.med != Some(2))
                    .map(|(p, a)| (*p, a.clone()))
                    .collect();
                prop_assert_eq!(&peer, &model);
                rib.apply(Arc::new(t.clone()), fams, &c);
                prop_assert_eq!((rib.len(), rib.refused()), (model.len(), big.len()));
            }
        });
    }

    /// A peer that cannot take a MED of 9 (as a route too large for one
    /// UPDATE): that route is left out, withdrawn when its attributes grow
    /// past the limit, sent again when they shrink; the others go on. A
    /// MED of 2 is for other peers (as a pool's `peers`): left out, not
    /// counted as refused.
    fn no_nine(a: &RouteAttrs, _: Afi) -> Result<RouteAttrs, Skip> {
        match a.med {
            Some(9) => Err(Skip::TooLarge),
            Some(2) => Err(Skip::NotForPeer),
            _ => Ok(a.clone()),
        }
    }

    #[test]
    fn a_route_the_peer_cannot_take_is_left_out_and_withdrawn() {
        let (ok, big) = (attrs(1), attrs(9));
        let mut rib = AdjRibOut::default();
        let t1 = table(&[("203.0.113.1/32", &ok), ("203.0.113.2/32", &big)]);
        let c = rib.diff(&t1, &BOTH, &no_nine);
        assert_eq!((c.announced(), c.refused), (1, 1));
        assert_eq!(c.announce[0].prefixes[0], "203.0.113.1/32".parse().unwrap());
        rib.apply(Arc::new(t1.clone()), &BOTH, &c);
        assert_eq!((rib.len(), rib.refused()), (1, 1));
        // Never sent, so never withdrawn when it goes.
        let t0 = table(&[("203.0.113.1/32", &ok)]);
        assert!(rib.diff(&t0, &BOTH, &no_nine).is_empty());
        // Sent, then grown past the limit: withdrawn, not left stale.
        let t2 = table(&[("203.0.113.1/32", &big), ("203.0.113.2/32", &big)]);
        let c = rib.diff(&t2, &BOTH, &no_nine);
        assert_eq!(c.withdraw_v4, ["203.0.113.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!((c.announced(), c.refused), (0, 2));
        rib.apply(Arc::new(t2), &BOTH, &c);
        assert!(rib.is_empty());
        assert_eq!(rib.refused(), 2);
        // Shrunk again: announced.
        let c = rib.diff(&t1, &BOTH, &no_nine);
        assert_eq!((c.announced(), c.refused, c.withdrawn()), (1, 1, 0));
    }

    #[test]
    fn a_route_for_other_peers_is_withdrawn_and_not_counted_as_refused() {
        let (ok, elsewhere) = (attrs(1), attrs(2));
        let mut rib = AdjRibOut::default();
        let t1 = table(&[("203.0.113.1/32", &ok), ("203.0.113.2/32", &elsewhere)]);
        let c = rib.diff(&t1, &BOTH, &no_nine);
        assert_eq!((c.announced(), c.refused, c.held), (1, 0, 1));
        rib.apply(Arc::new(t1), &BOTH, &c);
        // Moved to other peers: withdrawn here.
        let t2 = table(&[("203.0.113.1/32", &elsewhere)]);
        let c = rib.diff(&t2, &BOTH, &no_nine);
        assert_eq!(c.withdraw_v4, ["203.0.113.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!((c.refused, c.held), (0, 0));
    }

    #[test]
    fn resend_covers_one_family() {
        let a = attrs(1);
        let mut rib = AdjRibOut::default();
        let t = table(&[
            ("203.0.113.1/32", &a),
            ("2001:db8::1/128", &a),
            ("2001:db8::2/128", &a),
        ]);
        bring(&mut rib, t, &BOTH);
        let c = rib.resend(Afi::Ipv6, &same);
        assert_eq!(c.announced(), 2);
        assert!(c.announce.iter().all(|g| g.afi == Afi::Ipv6));
        assert_eq!(rib.len(), 3);
    }
}
