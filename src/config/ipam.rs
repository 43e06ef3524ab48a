//! `[ipam]`: the pools vipd assigns LoadBalancer addresses from, and the
//! Lease that elects the one vipd that does.

use std::net::IpAddr;
use std::time::Duration;

use config::ValueKind;
use ipnet::IpNet;

use super::{as_table, parse_bool, parse_int, parse_list, parse_str, Errs, Tbl};

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl Range {
    /// Whether `ip` is in the range (of its family, between its ends).
    pub fn contains(&self, ip: IpAddr) -> bool {
        family(&self.first) == family(&ip) && self.first <= ip && ip <= self.last
    }
}

/// The pools are the allocator's input as well (`crate::ipam`); they
/// live here, below it, as the route attributes do for the speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub ranges: Vec<Range>,
    /// Used for Services that name no pool.
    pub auto_assign: bool,
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    /// Skip .0 and .255 of IPv4 addresses in /24 and larger ranges.
    pub avoid_network_and_broadcast: bool,
    /// How its addresses are announced (needs `[l2]` for l2 and both).
    pub mode: super::Mode,
    /// What goes to the routers with its addresses.
    pub advert: super::Advert,
}

/// Whether two addresses are of one family is all validation asks.
fn family(a: &IpAddr) -> bool {
    a.is_ipv4()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub pools: Vec<Pool>,
}

pub(super) fn read_ipam(mut t: Tbl, errs: &mut Errs) -> Option<IpamConfig> {
    let key = t.path.clone();
    let name_of = |v| {
        let s = parse_str(v)?;
        check_dns_name(&s)?;
        Ok(s)
    };
    let lease_namespace = t
        .opt("lease_namespace", errs, name_of)
        .unwrap_or_else(|| "kube-system".into());
    let lease_name = t
        .opt("lease_name", errs, name_of)
        .unwrap_or_else(|| "vipd-ipam".into());
    // Under 3 s the renewals (three per duration) would outpace an API
    // server under load; past 300 s a dead allocator holds up every Service.
    let lease_duration = t
        .opt("lease_duration_secs", errs, |v| parse_int(v, 3, 300))
        .map(|n| Duration::from_secs(n as u64))
        .unwrap_or(Duration::from_secs(15));
    let mut pools = Vec::new();
    let given = t.map.contains_key("pools");
    for (i, v) in t.array("pools", errs).into_iter().enumerate() {
        let pk = format!("{key}.pools[{i}]");
        if let Some(m) = as_table(&pk, v, errs) {
            if let Some(p) = read_pool(Tbl::new(&pk, m), errs) {
                pools.push((pk, p));
            }
        }
    }
    t.finish(errs);
    if !given {
        errs.push(
            format!("{key}.pools"),
            "missing: name at least one [[ipam.pools]] to assign addresses from",
        );
    }
    check_pools(&pools, errs);
    Some(IpamConfig {
        lease_namespace,
        lease_name,
        lease_duration,
        pools: pools.into_iter().map(|(_, p)| p).collect(),
    })
}

fn read_pool(mut t: Tbl, errs: &mut Errs) -> Option<Pool> {
    let name = t.req("name", errs, |v| {
        let s = parse_str(v)?;
        check_dns_name(&s)?;
        Ok(s)
    });
    let ranges = t.req("addresses", errs, |v| {
        let ValueKind::Array(a) = v.kind else {
            return Err("expected an array of prefixes or FIRST-LAST ranges".into());
        };
        if a.is_empty() {
            return Err("is empty: a pool needs at least one address".into());
        }
        a.into_iter()
            .enumerate()
            .map(|(i, x)| {
                parse_str(x)
                    .and_then(|s| parse_range(&s))
                    .map_err(|e| format!("[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let auto_assign = t.opt("auto_assign", errs, parse_bool).unwrap_or(true);
    let namespaces = t
        .opt("namespaces", errs, |v| {
            parse_list(v, |s| check_dns_name(s).map(|_| s.to_string()))
        })
        .unwrap_or_default();
    let avoid_network_and_broadcast = t
        .opt("avoid_network_and_broadcast", errs, parse_bool)
        .unwrap_or(false);
    let mode = t
        .opt("mode", errs, super::l2::parse_mode)
        .unwrap_or_default();
    let advert = super::advertise::read(&mut t, errs);
    t.finish(errs);
    Some(Pool {
        name: name?,
        ranges: ranges?,
        auto_assign,
        namespaces,
        avoid_network_and_broadcast,
        mode,
        advert,
    })
}

/// `198.51.100.0/28`, `198.51.100.7` or `198.51.100.100-198.51.100.110`.
pub fn parse_range(s: &str) -> Result<Range, String> {
    if let Some((a, b)) = s.split_once('-') {
        let ip = |x: &str| {
            x.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{:?} is not an IP address", x.trim()))
        };
        let (first, last) = (ip(a)?, ip(b)?);
        if family(&first) != family(&last) {
            return Err(format!("{s}: both ends must be of one family"));
        }
        if first > last {
            return Err(format!("{s}: the first address is after the last"));
        }
        return Ok(Range { first, last });
    }
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not a prefix, an address or FIRST-LAST"))?,
    };
    if net.trunc() != net {
        return Err(format!(
            "{s} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(Range {
        first: net.network(),
        last: net.broadcast(),
    })
}

/// Kubernetes names (namespaces, Leases, and pools, which Services name in
/// an annotation): RFC 1123 labels.
pub(super) fn check_dns_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

/// Pool names are unique, and no address is in two ranges: an address in
/// two pools would be handed out twice.
fn check_pools(pools: &[(String, Pool)], errs: &mut Errs) {
    let mut ranges: Vec<(&str, usize, &Range)> = vec![];
    for (i, (key, p)) in pools.iter().enumerate() {
        if let Some((first, _)) = pools[..i].iter().find(|(_, q)| q.name == p.name) {
            errs.push(
                format!("{key}.name"),
                format!("{:?} is also the name of {first}", p.name),
            );
        }
        for (ri, r) in p.ranges.iter().enumerate() {
            ranges.push((key, ri, r));
        }
    }
    for (i, (key, ri, r)) in ranges.iter().enumerate() {
        let overlap = ranges[..i].iter().find(|(_, _, o)| {
            family(&o.first) == family(&r.first) && o.first <= r.last && r.first <= o.last
        });
        if let Some((okey, ori, _)) = overlap {
            errs.push(
                format!("{key}.addresses[{ri}]"),
                format!("overlaps {okey}.addresses[{ori}]: an address belongs to one pool"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Range;
    use crate::config::Config;

    const BASE: &str =
        "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[kubernetes]\nnode_name = \"n\"\n";

    fn problems(extra: &str) -> Vec<String> {
        match Config::from_toml_str(&format!("{BASE}{extra}")) {
            Ok(_) => vec![],
            Err(p) => {
                p.0.iter()
                    .map(|p| format!("{}: {}", p.key, p.reason))
                    .collect()
            }
        }
    }

    #[test]
    fn pools_with_defaults() {
        let c = Config::from_toml_str(&format!(
            "{BASE}[ipam]\n[[ipam.pools]]\nname = \"public\"\naddresses = [\"198.51.100.0/28\", \"198.51.100.100-198.51.100.110\", \"2001:db8:100::/120\", \"203.0.113.9\"]\n\
             [[ipam.pools]]\nname = \"team\"\naddresses = [\"203.0.113.16/28\"]\nauto_assign = false\nnamespaces = [\"team-a\"]\navoid_network_and_broadcast = true\n"
        ))
        .unwrap();
        let i = c.ipam.unwrap();
        assert_eq!(
            (
                i.lease_namespace.as_str(),
                i.lease_name.as_str(),
                i.lease_duration.as_secs()
            ),
            ("kube-system", "vipd-ipam", 15)
        );
        let r = |a: &str, b: &str| Range {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        };
        let p = &i.pools[0];
        assert_eq!(
            p.ranges,
            [
                r("198.51.100.0", "198.51.100.15"),
                r("198.51.100.100", "198.51.100.110"),
                r("2001:db8:100::", "2001:db8:100::ff"),
                r("203.0.113.9", "203.0.113.9"),
            ]
        );
        assert!(p.auto_assign && p.namespaces.is_empty() && !p.avoid_network_and_broadcast);
        let t = &i.pools[1];
        assert!(!t.auto_assign && t.namespaces == ["team-a"] && t.avoid_network_and_broadcast);
    }

    #[test]
    fn every_mistake_named() {
        let got = problems(
            "[ipam]\nlease_duration_secs = 1\nlease_name = \"Vipd\"\nextra = 1\n\
             [[ipam.pools]]\nname = \"a\"\naddresses = [\"198.51.100.1/28\", \"198.51.100.9-198.51.100.2\", \"x\", \"198.51.100.1-2001:db8::1\"]\n\
             [[ipam.pools]]\nname = \"a\"\naddresses = [\"198.51.100.0/24\"]\ncolour = \"red\"\n\
             [[ipam.pools]]\nname = \"b\"\naddresses = []\n\
             [[ipam.pools]]\naddresses = [\"203.0.113.0/30\", \"203.0.113.2-203.0.113.5\"]\nnamespaces = [\"A\"]\n",
        );
        assert_eq!(
            got,
            [
                "ipam.lease_name: \"Vipd\" is not a valid name (lower-case letters, digits and '-', at most 63)",
                "ipam.lease_duration_secs: 1 is out of range 3 to 300",
                "ipam.pools[0].addresses: [0]: 198.51.100.1/28 has host bits set; did you mean 198.51.100.0/28?",
                "ipam.pools[1].colour: unknown key",
                "ipam.pools[2].addresses: is empty: a pool needs at least one address",
                "ipam.pools[3].name: missing: this key is required",
                "ipam.pools[3].namespaces: \"A\" is not a valid name (lower-case letters, digits and '-', at most 63)",
                "ipam.extra: unknown key",
            ]
        );
        // Checks across pools, among those that could be read.
        assert_eq!(
            problems("[ipam]\n[[ipam.pools]]\nname = \"a\"\naddresses = [\"203.0.113.0/30\", \"203.0.113.2-203.0.113.5\"]\n[[ipam.pools]]\nname = \"a\"\naddresses = [\"2001:db8::/64\"]\n"),
            [
                "ipam.pools[1].name: \"a\" is also the name of ipam.pools[0]",
                "ipam.pools[0].addresses[1]: overlaps ipam.pools[0].addresses[0]: an address belongs to one pool",
            ]
        );
        let bad = |s: &str| crate::config::parse_range(s).unwrap_err();
        assert_eq!(
            bad("198.51.100.9-198.51.100.2"),
            "198.51.100.9-198.51.100.2: the first address is after the last"
        );
        assert_eq!(bad("x"), "\"x\" is not a prefix, an address or FIRST-LAST");
        assert_eq!(
            bad("198.51.100.1-2001:db8::1"),
            "198.51.100.1-2001:db8::1: both ends must be of one family"
        );
        // Overlap across pools, and [ipam] without [kubernetes].
        assert_eq!(
            problems("[ipam]\n[[ipam.pools]]\nname = \"a\"\naddresses = [\"198.51.100.0/28\"]\n[[ipam.pools]]\nname = \"b\"\naddresses = [\"198.51.100.15\"]\n"),
            ["ipam.pools[1].addresses[0]: overlaps ipam.pools[0].addresses[0]: an address belongs to one pool"]
        );
        assert_eq!(
            problems("[ipam]\n"),
            ["ipam.pools: missing: name at least one [[ipam.pools]] to assign addresses from"]
        );
        let e = Config::from_toml_str("[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[ipam]\n[[ipam.pools]]\nname = \"a\"\naddresses = [\"198.51.100.0/28\"]\n").unwrap_err();
        assert_eq!(e.0[0].key, "ipam");
        assert!(e.0[0].reason.contains("needs a [kubernetes] table"), "{e}");
    }
}
