//! What goes to the routers with the Service addresses of a pool
//! (`[[ipam.pools]]`) or of a prefix (`[[bgp.advertisements]]`, for
//! addresses vipd did not give out): communities, LOCAL_PREF, MED, the
//! peers that are sent them, and the covering prefix announced instead of
//! each address. The operator's, so no tenant policy applies to them; a
//! Service's own annotations add to the communities and win for LOCAL_PREF
//! and MED (`k8s::intent`).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::{as_table, parse_int, parse_prefix, read_attrs, Errs, PeerConfig, Pool, Range, Tbl};
use crate::bgp::attrs::RouteAttrs;

/// A pool's or a prefix's advertisement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advert {
    /// Communities, large communities, LOCAL_PREF, MED and `peers`.
    pub attrs: RouteAttrs,
    /// `aggregate_length` (IPv4) and `aggregate_length_v6`: the covering
    /// prefix of this length is announced instead of each address.
    pub aggregate_v4: Option<u8>,
    pub aggregate_v6: Option<u8>,
}

impl Advert {
    /// The covering prefix `ip` is announced in, when aggregated.
    pub fn aggregate(&self, ip: IpAddr) -> Option<IpNet> {
        let len = match ip {
            IpAddr::V4(_) => self.aggregate_v4?,
            IpAddr::V6(_) => self.aggregate_v6?,
        };
        IpNet::new(ip, len).ok().map(|n| n.trunc())
    }
}

/// One `[[bgp.advertisements]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub prefix: IpNet,
    pub advert: Advert,
}

/// Where the advertisement of some addresses is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// For `vipd explain`: `pool blue`, `bgp.advertisements[0]`.
    pub origin: String,
    pub ranges: Vec<Range>,
    pub advert: Advert,
    /// `advert.attrs`, one copy for every route without attributes of its
    /// own.
    pub attrs: Arc<RouteAttrs>,
}

impl Source {
    fn holds(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }
}

/// Every advertisement, in the order an address finds its own: the pools
/// (which never overlap), then the prefixes, the most specific first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adverts(pub Vec<Source>);

impl Adverts {
    pub fn build(pools: &[Pool], ads: &[Advertisement]) -> Adverts {
        let source = |origin: String, ranges: Vec<Range>, advert: &Advert| Source {
            origin,
            ranges,
            attrs: Arc::new(advert.attrs.clone()),
            advert: advert.clone(),
        };
        let mut by_prefix: Vec<(usize, &Advertisement)> = ads.iter().enumerate().collect();
        by_prefix.sort_by_key(|(_, a)| std::cmp::Reverse(a.prefix.prefix_len()));
        let pools = (pools.iter())
            .filter(|p| p.advert != Advert::default())
            .map(|p| source(format!("pool {}", p.name), p.ranges.clone(), &p.advert));
        let prefixes = by_prefix.into_iter().map(|(i, a)| {
            let r = Range {
                first: a.prefix.network(),
                last: a.prefix.broadcast(),
            };
            source(format!("bgp.advertisements[{i}]"), vec![r], &a.advert)
        });
        Adverts(pools.chain(prefixes).collect())
    }

    /// The advertisement `ip` is announced with, if any.
    pub fn of(&self, ip: IpAddr) -> Option<&Source> {
        self.0.iter().find(|s| s.holds(ip))
    }

    /// Whether any of them announces a covering prefix.
    pub fn aggregating(&self) -> bool {
        (self.0.iter()).any(|s| s.advert.aggregate_v4.is_some() || s.advert.aggregate_v6.is_some())
    }
}

/// The advertisement keys of a pool or an `[[bgp.advertisements]]` entry.
pub(super) fn read(t: &mut Tbl, errs: &mut Errs) -> Advert {
    let mut attrs = read_attrs(t, errs);
    attrs.peers = t
        .opt("peers", errs, |v| {
            super::parse_list(v, |s| {
                let ok = s.parse::<IpAddr>().is_ok() || super::ipam::check_dns_name(s).is_ok();
                ok.then(|| s.to_string())
                    .ok_or_else(|| format!("{s:?} is neither a peer's name nor an address"))
            })
        })
        .unwrap_or_default();
    attrs.normalize();
    let len = |max| move |v| parse_int(v, 1, max).map(|n| n as u8);
    Advert {
        attrs,
        aggregate_v4: t.opt("aggregate_length", errs, len(31)),
        aggregate_v6: t.opt("aggregate_length_v6", errs, len(127)),
    }
}

/// `[[bgp.advertisements]]`.
pub(super) fn read_all(t: &mut Tbl, errs: &mut Errs) -> Vec<Advertisement> {
    let mut out = vec![];
    for (i, v) in t.array("advertisements", errs).into_iter().enumerate() {
        let key = format!("bgp.advertisements[{i}]");
        let Some(m) = as_table(&key, v, errs) else {
            continue;
        };
        let mut at = Tbl::new(&key, m);
        let prefix = at.req("prefix", errs, parse_prefix);
        let advert = read(&mut at, errs);
        at.finish(errs);
        if let Some(prefix) = prefix {
            out.push(Advertisement { prefix, advert });
        }
    }
    out
}

/// What only the whole configuration tells: peers named that exist, an
/// aggregate inside the addresses it stands for, prefixes once each.
pub(super) fn check(
    pools: &[Pool],
    ads: &[Advertisement],
    peers: &[PeerConfig],
    room: usize,
    errs: &mut Errs,
) {
    let names = |n: &str| {
        peers
            .iter()
            .any(|p| p.name.as_deref() == Some(n) || p.address.to_string() == n)
    };
    let entries = (pools.iter().enumerate())
        .map(|(i, p)| (format!("ipam.pools[{i}]"), &p.ranges[..], &p.advert, None))
        .chain(ads.iter().enumerate().map(|(i, a)| {
            let key = format!("bgp.advertisements[{i}]");
            (key, &[][..], &a.advert, Some(a.prefix))
        }));
    for (key, ranges, advert, prefix) in entries {
        let bytes = crate::bgp::attrs::community_bytes(&advert.attrs);
        if bytes > room {
            errs.push(
                format!("{key}.communities"),
                format!(
                    "these communities take {bytes} bytes; beside the peers' default communities and \
                     the drain's GRACEFUL_SHUTDOWN, one 4,096-byte UPDATE has room for {room}"
                ),
            );
        }
        if let Some(n) = advert.attrs.peers.iter().find(|n| !names(n)) {
            errs.push(
                format!("{key}.peers"),
                format!("{n:?} names no peer in [[bgp.peers]] (by its name or address)"),
            );
        }
        for (k, len, v4) in [
            ("aggregate_length", advert.aggregate_v4, true),
            ("aggregate_length_v6", advert.aggregate_v6, false),
        ] {
            let Some(len) = len else { continue };
            if let Some(why) = outside(ranges, prefix, len, v4) {
                errs.push(format!("{key}.{k}"), why);
            }
        }
    }
    for (i, a) in ads.iter().enumerate() {
        if let Some(j) = ads[..i].iter().position(|b| b.prefix == a.prefix) {
            errs.push(
                format!("bgp.advertisements[{i}].prefix"),
                format!("{} is also bgp.advertisements[{j}]", a.prefix),
            );
        }
    }
}

/// Why an aggregate of `len` would cover addresses outside those it
/// stands for (a pool's ranges, or an advertisement's prefix): announced,
/// it would draw their traffic to this node.
fn outside(ranges: &[Range], prefix: Option<IpNet>, len: u8, v4: bool) -> Option<String> {
    if let Some(p) = prefix {
        let fam = p.addr().is_ipv4() == v4;
        return (fam && len < p.prefix_len()).then(|| {
            format!("/{len} is shorter than the prefix {p}: it would cover addresses outside it")
        });
    }
    let inside = |ip: IpAddr| ranges.iter().any(|r| r.contains(ip));
    for r in ranges.iter().filter(|r| r.first.is_ipv4() == v4) {
        for ip in [r.first, r.last] {
            let Ok(agg) = IpNet::new(ip, len).map(|n| n.trunc()) else {
                continue;
            };
            if !inside(agg.network()) || !inside(agg.broadcast()) {
                return Some(format!(
                    "{agg} would cover addresses outside the pool's (it holds {} to {}): \
                     announced, it would draw their traffic here",
                    r.first, r.last
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(a: &str, b: &str) -> Range {
        Range {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    #[test]
    fn an_aggregate_must_stay_inside_its_pool_or_prefix() {
        let r = [range("203.0.113.0", "203.0.113.255")];
        assert_eq!(outside(&r, None, 24, true), None);
        assert_eq!(outside(&r, None, 26, true), None);
        let why = outside(&r, None, 23, true).unwrap();
        assert!(why.starts_with("203.0.112.0/23 would cover"), "{why}");
        // A range that does not end on the aggregate's boundary.
        let r = [range("203.0.113.0", "203.0.113.99")];
        assert!(outside(&r, None, 25, true).is_some());
        assert_eq!(outside(&r, None, 30, true), None);
        let p = Some("198.51.100.0/24".parse().unwrap());
        assert_eq!(outside(&[], p, 24, true), None);
        assert!(outside(&[], p, 23, true).is_some());
    }

    #[test]
    fn an_address_takes_its_pool_then_the_most_specific_prefix() {
        let advert = |c: u32| Advert {
            attrs: RouteAttrs {
                communities: vec![c],
                ..Default::default()
            },
            aggregate_v4: Some(28),
            aggregate_v6: None,
        };
        let pool = Pool {
            name: "blue".into(),
            ranges: vec![range("203.0.113.0", "203.0.113.15")],
            auto_assign: true,
            namespaces: vec![],
            avoid_network_and_broadcast: false,
            mode: Default::default(),
            advert: advert(1),
        };
        let ads = [
            Advertisement {
                prefix: "203.0.113.0/24".parse().unwrap(),
                advert: advert(2),
            },
            Advertisement {
                prefix: "203.0.113.0/25".parse().unwrap(),
                advert: advert(3),
            },
        ];
        let a = Adverts::build(&[pool], &ads);
        let of = |ip: &str| a.of(ip.parse().unwrap()).map(|s| s.origin.clone());
        assert_eq!(of("203.0.113.5").as_deref(), Some("pool blue"));
        assert_eq!(
            of("203.0.113.100").as_deref(),
            Some("bgp.advertisements[1]")
        );
        assert_eq!(
            of("203.0.113.200").as_deref(),
            Some("bgp.advertisements[0]")
        );
        assert_eq!(of("198.51.100.1"), None);
        let s = a.of("203.0.113.5".parse().unwrap()).unwrap();
        assert_eq!(
            s.advert.aggregate("203.0.113.21".parse().unwrap()),
            Some("203.0.113.16/28".parse().unwrap())
        );
        assert_eq!(s.advert.aggregate("2001:db8::1".parse().unwrap()), None);
    }
}
