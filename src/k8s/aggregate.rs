//! A pool's `aggregate_length`: its covering prefix announced instead of
//! each address, pure. Only while it draws no traffic anything but an
//! ETP Cluster Service of this pool would want: never while an address
//! inside is refused, held by a Local Service (announced only where its
//! endpoints are), or answered for in L2 alone. An address with
//! attributes of its own (a Service's annotations) stays announced beside
//! the aggregate, as the more specific route. The decision depends on the
//! cluster, not on event order: the tracker settles every aggregate a
//! change touches, and a property test holds it to a full recompute.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::intent::Want;
use crate::config::KubeConfig;

/// How a route of the intent goes to the routers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Agg {
    /// As itself.
    #[default]
    Own,
    /// Inside the aggregate of this length, not announced alone (still on
    /// the node's dataplane). The length alone: the intent holds one per
    /// VIP, and the address gives the rest.
    Member(u8),
    /// An aggregate: announced, never on the dataplane.
    Covering,
}

/// The aggregate an address belongs to under the configuration.
pub fn of(ip: IpAddr, k: &KubeConfig) -> Option<IpNet> {
    k.adverts.of(ip)?.advert.aggregate(ip)
}

/// Addresses that keep their aggregate off, counted (one address can be
/// refused for two Services).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Blockers(BTreeMap<IpAddr, u32>);

impl Blockers {
    pub fn add(&mut self, ip: IpAddr) {
        *self.0.entry(ip).or_default() += 1;
    }
    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.0.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&ip);
            }
        }
    }
    /// The first blocked address inside `net`.
    pub fn first_in(&self, net: &IpNet) -> Option<IpAddr> {
        self.0
            .range(net.network()..=net.broadcast())
            .next()
            .map(|(ip, _)| *ip)
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Decides aggregate `a` and marks the routes inside it; returns the
/// entries of `routes` that changed (`None`: removed).
pub fn settle(
    a: IpNet,
    routes: &mut BTreeMap<IpNet, Want>,
    blockers: &Blockers,
    k: &KubeConfig,
) -> Vec<(IpNet, Option<Want>)> {
    let src = k
        .adverts
        .of(a.network())
        .filter(|s| s.advert.aggregate(a.addr()) == Some(a));
    let member = |w: &Want| {
        src.is_some_and(|s| {
            w.agg != Agg::Covering
                && (std::sync::Arc::ptr_eq(&w.attrs, &s.attrs) || *w.attrs == *s.attrs)
        })
    };
    let inside = host(a.network())..=host(a.broadcast());
    let on = src.is_some()
        && blockers.first_in(&a).is_none()
        && routes.range(inside.clone()).any(|(_, w)| member(w));
    let mut changed = vec![];
    for (p, w) in routes.range_mut(inside) {
        let agg = if on && member(w) {
            Agg::Member(a.prefix_len())
        } else {
            Agg::Own
        };
        if w.agg != agg {
            w.agg = agg;
            changed.push((*p, Some(w.clone())));
        }
    }
    match src.filter(|_| on) {
        Some(s) => {
            let w = Want {
                owners: Default::default(),
                attrs: s.attrs.clone(),
                agg: Agg::Covering,
            };
            if routes.get(&a) != Some(&w) {
                routes.insert(a, w.clone());
                changed.push((a, Some(w)));
            }
        }
        None => {
            if routes.remove(&a).is_some() {
                changed.push((a, None));
            }
        }
    }
    changed
}

/// Why an address is not in its aggregate, or the aggregate it is
/// announced in (for `vipd explain`).
pub fn explain(
    ip: IpAddr,
    routes: &BTreeMap<IpNet, Want>,
    blockers: &Blockers,
    k: &KubeConfig,
) -> Option<String> {
    let a = of(ip, k)?;
    let origin = &k.adverts.of(ip)?.origin;
    Some(match routes.get(&host(ip)).map(|w| w.agg) {
        Some(Agg::Member(_)) => format!("announced as part of {a} ({origin}'s aggregate_length)"),
        Some(_) => match blockers.first_in(&a) {
            Some(b) => format!("announced alone: {a} ({origin}) is not, since {b} inside it is refused, Local or L2 only"),
            None => format!("announced alone: its own attributes differ from {origin}'s"),
        },
        None => format!("in {a} ({origin}'s aggregate_length)"),
    })
}
