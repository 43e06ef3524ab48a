//! Where a peer is and which AS it may speak: `address` or `interface`,
//! and `asn` as a number, `"external"` or `"internal"`.

use std::fmt;
use std::net::IpAddr;

use config::Value;

use super::{parse_asn, parse_ip, parse_str, Errs, Tbl};
pub use crate::bgp::wire::open::PeerAs;

/// Where a peer is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerAddr {
    /// `address`: a session to and from this address.
    Ip(IpAddr),
    /// `interface` (unnumbered): the neighbour on this link, over IPv6
    /// link-local addresses, found from its Router Advertisements.
    Interface(String),
}

impl PeerAddr {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            PeerAddr::Ip(a) => Some(*a),
            PeerAddr::Interface(_) => None,
        }
    }

    pub fn interface(&self) -> Option<&str> {
        match self {
            PeerAddr::Ip(_) => None,
            PeerAddr::Interface(n) => Some(n),
        }
    }

    /// The session runs over IPv4 (an interface's runs over IPv6).
    pub fn is_ipv4(&self) -> bool {
        matches!(self, PeerAddr::Ip(IpAddr::V4(_)))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Ip(a) => a.fmt(f),
            PeerAddr::Interface(n) => f.write_str(n),
        }
    }
}

impl serde::Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for PeerAs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PeerAs::Number(n) => s.serialize_u32(*n),
            _ => s.collect_str(self),
        }
    }
}

pub(super) fn parse_peer_as(v: Value) -> Result<PeerAs, String> {
    if let Ok(s) = v.clone().into_string() {
        match s.as_str() {
            "external" => return Ok(PeerAs::External),
            "internal" => return Ok(PeerAs::Internal),
            _ if s.parse::<u64>().is_err() => {
                return Err(format!(
                    "{s:?} is not an AS number, \"external\" or \"internal\""
                ))
            }
            _ => {}
        }
    }
    parse_asn(v).map(PeerAs::Number)
}

/// `address` or `interface`, exactly one. What an interface peer cannot
/// have is refused by key (read first, before those keys are taken).
pub(super) fn read_addr(t: &mut Tbl, errs: &mut Errs) -> Option<PeerAddr> {
    let given = t.has("address") || t.has("interface");
    let address = t.opt("address", errs, parse_ip);
    let interface = t.opt("interface", errs, |v| {
        let s = parse_str(v)?;
        super::check_ifname(&s)?;
        Ok(s)
    });
    let key = &t.path;
    match (address, interface) {
        (Some(_), Some(_)) => {
            errs.push(
                format!("{key}.interface"),
                "set either address or interface (the neighbour on that link), not both",
            );
            None
        }
        (Some(a), None) => Some(PeerAddr::Ip(a)),
        (None, Some(n)) => {
            check_interface_peer(key, t, errs);
            Some(PeerAddr::Interface(n))
        }
        (None, None) => {
            if !given {
                errs.push(
                    format!("{key}.address"),
                    "missing: a peer needs address, or interface for the neighbour on a link",
                );
            }
            None
        }
    }
}

/// What a session to the neighbour on an interface cannot have: its source
/// is the interface's link-local address, and it is one hop away.
fn check_interface_peer(key: &str, t: &Tbl, errs: &mut Errs) {
    for (k, why) in [
        (
            "source_address",
            "the session's source is the interface's link-local address",
        ),
        ("ttl", "the neighbour on an interface is one hop away"),
        ("multihop", "the neighbour on an interface is one hop away"),
    ] {
        if t.has(k) {
            errs.push(format!("{key}.{k}"), why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BGP: &str = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n";

    fn problems(peers: &str) -> Vec<String> {
        match Config::from_toml_str(&format!("{BGP}{peers}")) {
            Ok(_) => vec![],
            Err(p) => p.0.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn an_unnumbered_peer_is_an_interface_and_speaks_ipv4_over_ipv6() {
        let c = Config::from_toml_str(&format!(
            "{BGP}[[bgp.peers]]\ninterface = \"eth1\"\nasn = \"external\"\n\
             [[bgp.peers]]\ninterface = \"eth2\"\nasn = \"internal\"\nextended_next_hop = false\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n"
        ))
        .unwrap();
        let p = &c.bgp.peers;
        assert_eq!(p[0].address, PeerAddr::Interface("eth1".into()));
        assert_eq!((p[0].asn, p[0].extended_next_hop), (PeerAs::External, true));
        assert_eq!(
            (p[1].asn, p[1].extended_next_hop),
            (PeerAs::Internal, false)
        );
        assert_eq!(p[2].address.to_string(), "192.0.2.2");
        assert_eq!(p[2].asn, PeerAs::Number(65002));
        assert!(!p[2].extended_next_hop);
    }

    #[test]
    fn a_peer_is_an_address_or_an_interface_and_says_which_keys_do_not_apply() {
        let p = problems(
            "[[bgp.peers]]\naddress = \"192.0.2.2\"\ninterface = \"eth1\"\nasn = 65002\n\
             [[bgp.peers]]\nasn = 65002\n\
             [[bgp.peers]]\ninterface = \"eth1\"\nasn = \"externa\"\npassword = \"x\"\nttl = 2\n\
             source_address = \"192.0.2.1\"\nbfd = true\n\
             [[bgp.peers]]\ninterface = \"a/b\"\nasn = 65002\n\
             [[bgp.peers]]\ninterface = \"eth3\"\nasn = 65003\n\
             [[bgp.peers]]\ninterface = \"eth3\"\nasn = 65004\n",
        );
        for want in [
            "bgp.peers[0].interface: set either address or interface",
            "bgp.peers[1].address: missing: a peer needs address, or interface",
            "bgp.peers[2].asn: \"externa\" is not an AS number, \"external\" or \"internal\"",
            "bgp.peers[2].ttl: the neighbour on an interface is one hop away",
            "bgp.peers[2].source_address: the session's source is the interface's link-local address",
            "bgp.peers[3].interface: \"a/b\" is not an interface name",
            "bgp.peers[5].interface: duplicate peer eth3 (also bgp.peers[4])",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "missing {want:?} in {p:#?}");
        }
        assert_eq!(p.len(), 7, "{p:#?}");
    }

    #[test]
    fn an_external_peer_is_any_as_but_ours() {
        assert!(PeerAs::External.accepts(65001, 65010));
        assert!(!PeerAs::External.accepts(65010, 65010));
        assert!(PeerAs::Internal.accepts(65010, 65010));
        assert!(!PeerAs::Internal.accepts(65001, 65010));
        assert!(PeerAs::Number(65001).accepts(65001, 65010));
        assert!(!PeerAs::Number(65001).accepts(65002, 65010));
        assert!(!PeerAs::External.is_ibgp(65010));
        assert!(PeerAs::Internal.is_ibgp(65010));
        assert!(PeerAs::Number(65010).is_ibgp(65010));
        assert!(!PeerAs::Number(65001).is_ibgp(65010));
        assert_eq!(PeerAs::External.text(), "AS external");
        assert_eq!(PeerAs::Number(65001).text(), "AS65001");
    }
}
