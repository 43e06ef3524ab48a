//! The routes vipd wants announced, and per peer what the peer was sent
//! (the Adj-RIB-Out), with the pure diff between the two.
//!
//! The speaker publishes a whole [`Table`] at a time; each session diffs it
//! against its Adj-RIB-Out, so any number of changes between two sends
//! collapse into one set of UPDATEs and nothing the peer already has is sent
//! again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ipnet::IpNet;

use super::wire::Afi;
use crate::config::RouteAttrs;

/// Prefix -> attributes. Prefixes that share attributes share one `Arc`,
/// which is also how the diff groups them into one UPDATE.
pub type Table = BTreeMap<IpNet, Arc<RouteAttrs>>;

pub fn afi_of(p: &IpNet) -> Afi {
    match p {
        IpNet::V4(_) => Afi::Ipv4,
        IpNet::V6(_) => Afi::Ipv6,
    }
}

/// What one peer has been sent.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    sent: HashMap<IpNet, Arc<RouteAttrs>>,
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
}

impl AdjRibOut {
    pub fn len(&self) -> usize {
        self.sent.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
    pub fn clear(&mut self) {
        self.sent = HashMap::new();
    }

    /// What must change for the peer to hold exactly the routes of `want`
    /// in `families`.
    pub fn diff(&self, want: &Table, families: &[Afi]) -> Changes {
        let mut groups: HashMap<(*const RouteAttrs, Afi), Group> = HashMap::new();
        for (p, a) in want {
            let afi = afi_of(p);
            if !families.contains(&afi) {
                continue;
            }
            match self.sent.get(p) {
                Some(old) if Arc::ptr_eq(old, a) || **old == **a => continue,
                _ => {}
            }
            groups
                .entry((Arc::as_ptr(a), afi))
                .or_insert_with(|| Group {
                    attrs: a.clone(),
                    afi,
                    prefixes: Vec::new(),
                })
                .prefixes
                .push(*p);
        }
        let mut c = Changes {
            announce: groups.into_values().collect(),
            ..Default::default()
        };
        // Deterministic order keeps the wire output reproducible.
        c.announce
            .sort_by(|a, b| (a.afi, &a.prefixes[0]).cmp(&(b.afi, &b.prefixes[0])));
        for p in self.sent.keys() {
            if !want.contains_key(p) || !families.contains(&afi_of(p)) {
                match afi_of(p) {
                    Afi::Ipv4 => c.withdraw_v4.push(*p),
                    Afi::Ipv6 => c.withdraw_v6.push(*p),
                }
            }
        }
        c.withdraw_v4.sort_unstable();
        c.withdraw_v6.sort_unstable();
        c
    }

    /// Records that `changes` reached the peer.
    pub fn apply(&mut self, changes: &Changes) {
        for p in changes.withdraw_v4.iter().chain(&changes.withdraw_v6) {
            self.sent.remove(p);
        }
        for g in &changes.announce {
            for p in &g.prefixes {
                self.sent.insert(*p, g.attrs.clone());
            }
        }
    }

    /// Everything the peer holds in one family, grouped as for a first send
    /// (ROUTE-REFRESH re-sends this).
    pub fn resend(&self, afi: Afi) -> Changes {
        let want: Table = self
            .sent
            .iter()
            .filter(|(p, _)| afi_of(p) == afi)
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        AdjRibOut::default().diff(&want, &[afi])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &Arc<RouteAttrs>)]) -> Table {
        entries
            .iter()
            .map(|(p, a)| (p.parse().unwrap(), (*a).clone()))
            .collect()
    }

    fn attrs(med: u32) -> Arc<RouteAttrs> {
        Arc::new(RouteAttrs {
            med: Some(med),
            ..Default::default()
        })
    }

    const BOTH: [Afi; 2] = [Afi::Ipv4, Afi::Ipv6];

    #[test]
    fn first_send_groups_by_attributes_and_family() {
        let (a, b) = (attrs(1), attrs(2));
        let t = table(&[
            ("203.0.113.1/32", &a),
            ("203.0.113.2/32", &a),
            ("203.0.113.3/32", &b),
            ("2001:db8::1/128", &a),
        ]);
        let c = AdjRibOut::default().diff(&t, &BOTH);
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
        let c = rib.diff(&t1, &BOTH);
        rib.apply(&c);
        assert!(rib.diff(&t1, &BOTH).is_empty());
        // An equal value in a different Arc is still "already sent".
        let t1b = table(&[("203.0.113.1/32", &attrs(1)), ("2001:db8::1/128", &a)]);
        assert!(rib.diff(&t1b, &BOTH).is_empty());
        let t2 = table(&[("203.0.113.1/32", &attrs(5))]);
        let c = rib.diff(&t2, &BOTH);
        assert_eq!(c.announced(), 1);
        assert_eq!(
            c.withdraw_v6,
            vec!["2001:db8::1/128".parse::<IpNet>().unwrap()]
        );
        rib.apply(&c);
        assert_eq!(rib.len(), 1);
        let c = rib.diff(&Table::new(), &BOTH);
        assert_eq!(c.withdraw_v4.len(), 1);
        rib.apply(&c);
        assert!(rib.is_empty());
    }

    #[test]
    fn families_not_negotiated_are_neither_sent_nor_kept() {
        let a = attrs(1);
        let t = table(&[("203.0.113.1/32", &a), ("2001:db8::1/128", &a)]);
        let c = AdjRibOut::default().diff(&t, &[Afi::Ipv4]);
        assert_eq!(c.announced(), 1);
        assert_eq!(c.announce[0].afi, Afi::Ipv4);
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
        rib.apply(&rib.diff(&t, &BOTH));
        let c = rib.resend(Afi::Ipv6);
        assert_eq!(c.announced(), 2);
        assert!(c.announce.iter().all(|g| g.afi == Afi::Ipv6));
        assert_eq!(rib.len(), 3);
    }
}
