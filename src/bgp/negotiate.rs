//! What two OPENs agree on, and the context routes are then sent in: the
//! families (RFC 4760), 4-octet AS numbers (RFC 6793), graceful restart
//! (RFC 4724), less whatever the peer refused (RFC 5492), and the next
//! hops from the peer's configuration or the connection's local address.
//! Pure: the session reads the interfaces only when a link-local next hop
//! is configured, and hands them in.

use std::net::IpAddr;

use super::net::{self, IfAddr};
use super::wire::encode::SendCtx;
use super::wire::open::{self, LocalOpen, Open};
use super::wire::Afi;
use crate::config::{PeerAddr, PeerConfig};

/// What the two OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub families: Vec<Afi>,
    /// The negotiated families that also have a next hop: the ones routes
    /// are sent in.
    pub send_families: Vec<Afi>,
    pub ctx: SendCtx,
    pub graceful_restart: bool,
}

/// `ours`: the OPEN as sent (with what the peer refused before); `local`:
/// the connection's local address; `addrs`: the interfaces' addresses
/// (empty unless `link_local_next_hop` is set).
pub fn negotiate(
    ours: &LocalOpen,
    theirs: &Open,
    peer: &PeerConfig,
    local: Option<IpAddr>,
    addrs: &[IfAddr],
) -> Negotiated {
    let sent = |cap| ours.capabilities && !ours.refused.contains(&cap);
    let our_families = if sent(open::CAP_MP) {
        ours.families.clone()
    } else {
        vec![Afi::Ipv4]
    };
    let their_families = if theirs.caps.any_mp {
        theirs.caps.families.clone()
    } else {
        vec![Afi::Ipv4]
    };
    let families: Vec<Afi> = our_families
        .into_iter()
        .filter(|f| their_families.contains(f))
        .collect();
    let local = local.map(|a| a.to_canonical());
    let mut ctx = SendCtx {
        local_asn: ours.asn,
        ebgp: !peer.asn.is_ibgp(ours.asn),
        four_octet_as: sent(open::CAP_ASN4) && theirs.caps.asn4.is_some(),
        next_hop_v4: peer.next_hop_ipv4.or(match local {
            Some(IpAddr::V4(v)) => Some(v),
            _ => None,
        }),
        next_hop_v6: peer.next_hop_ipv6.or(match local {
            Some(IpAddr::V6(v)) => Some(v),
            _ => None,
        }),
        next_hop_v6_link_local: None,
        v4_via_v6: false,
        defaults: peer.defaults.clone(),
        names: peer
            .name
            .iter()
            .cloned()
            .chain([peer.address.to_string()])
            .collect(),
    };
    link_local_next_hops(&mut ctx, peer, local, addrs);
    // RFC 8950: IPv4 with the IPv6 next hop where the session has no IPv4
    // one (an IPv6-only or unnumbered session) and both sides offered it.
    ctx.v4_via_v6 = ours.offers_extended_next_hop()
        && theirs.caps.v4_via_v6
        && ctx.next_hop_v4.is_none()
        && ctx.next_hop_v6.is_some();
    Negotiated {
        send_families: sendable(&families, &ctx),
        families,
        graceful_restart: sent(open::CAP_GRACEFUL_RESTART)
            && ours.graceful_restart.is_some()
            && theirs.caps.graceful_restart.is_some(),
        ctx,
    }
}

/// The IPv6 next hops that depend on the link: an unnumbered session's
/// (the interface's global address if it has one, with its link-local one
/// beside it; else the link-local one alone), or the link-local one beside
/// the global next hop where the peer shares the link.
fn link_local_next_hops(
    ctx: &mut SendCtx,
    peer: &PeerConfig,
    local: Option<IpAddr>,
    addrs: &[IfAddr],
) {
    match &peer.address {
        PeerAddr::Interface(ifname) => {
            let (nh, ll) = net::unnumbered_next_hop(addrs, ifname, local);
            ctx.next_hop_v6 = peer.next_hop_ipv6.or(nh);
            ctx.next_hop_v6_link_local = ll.filter(|l| ctx.next_hop_v6 != Some(*l));
        }
        PeerAddr::Ip(a) if peer.link_local_next_hop => {
            ctx.next_hop_v6_link_local = local
                .zip(ctx.next_hop_v6)
                .and_then(|(l, nh)| net::link_local_for(addrs, l, *a, nh));
        }
        PeerAddr::Ip(_) => {}
    }
}

/// The negotiated families that have a next hop: the ones routes are
/// sent in.
fn sendable(families: &[Afi], ctx: &SendCtx) -> Vec<Afi> {
    let has_next_hop = |f: &Afi| match f {
        Afi::Ipv4 => ctx.next_hop_v4.is_some() || ctx.v4_via_v6,
        Afi::Ipv6 => ctx.next_hop_v6.is_some(),
    };
    families.iter().copied().filter(has_next_hop).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire::open::{Capabilities, GracefulRestartCap};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ours() -> LocalOpen {
        LocalOpen {
            asn: 65010,
            hold_time: 90,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            families: vec![Afi::Ipv4, Afi::Ipv6],
            capabilities: true,
            refused: vec![],
            graceful_restart: Some(120),
            restart_state: false,
            extended_next_hop: false,
        }
    }

    fn theirs(families: &[Afi], asn4: bool, gr: bool) -> Open {
        Open {
            my_as: 65000,
            hold_time: 90,
            bgp_id: Ipv4Addr::new(192, 0, 2, 2),
            caps: Capabilities {
                families: families.to_vec(),
                any_mp: !families.is_empty(),
                asn4: asn4.then_some(65000),
                route_refresh: true,
                graceful_restart: gr.then(|| GracefulRestartCap {
                    restarted: false,
                    notification: false,
                    restart_time: 120,
                    families: vec![],
                }),
                other: vec![],
                v4_via_v6: false,
            },
        }
    }

    fn peer(extra: &str) -> PeerConfig {
        let c = crate::config::Config::from_toml_str(&format!(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
             [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65000\n{extra}"
        ))
        .unwrap();
        c.bgp.peers[0].clone()
    }

    const V4: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));

    #[test]
    fn both_families_4_octet_as_and_graceful_restart_when_both_say_so() {
        let n = negotiate(
            &ours(),
            &theirs(&[Afi::Ipv4, Afi::Ipv6], true, true),
            &peer(""),
            V4,
            &[],
        );
        assert_eq!(n.families, [Afi::Ipv4, Afi::Ipv6]);
        assert!(n.ctx.four_octet_as && n.graceful_restart && n.ctx.ebgp);
        // Over IPv4 there is no IPv6 next hop: IPv6 is negotiated, not sent.
        assert_eq!(n.send_families, [Afi::Ipv4]);
        assert_eq!(n.ctx.next_hop_v4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(n.ctx.next_hop_v6, None);
    }

    /// Unnumbered: IPv4 and IPv6 with the interface's global address and
    /// its link-local one beside it; with the link-local one alone where
    /// the interface has no global address.
    #[test]
    fn an_unnumbered_peer_gets_the_interfaces_addresses_as_next_hops() {
        let c = crate::config::Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
             [[bgp.peers]]\ninterface = \"eth1\"\nasn = \"external\"\n",
        )
        .unwrap();
        let p = &c.bgp.peers[0];
        let mut t = theirs(&[Afi::Ipv4, Afi::Ipv6], true, false);
        t.caps.v4_via_v6 = true;
        let mut o = ours();
        o.extended_next_hop = p.extended_next_hop;
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let g: Ipv6Addr = "2001:db8:2::1".parse().unwrap();
        let addr = |a: Ipv6Addr| net::IfAddr {
            ifname: "eth1".into(),
            addr: IpAddr::V6(a),
            prefix_len: 64,
        };
        let n = negotiate(&o, &t, p, Some(IpAddr::V6(ll)), &[addr(ll)]);
        assert_eq!(
            (n.ctx.next_hop_v6, n.ctx.next_hop_v6_link_local),
            (Some(ll), None)
        );
        assert!(n.ctx.v4_via_v6 && n.ctx.ebgp);
        assert_eq!(n.send_families, [Afi::Ipv4, Afi::Ipv6]);
        let n = negotiate(&o, &t, p, Some(IpAddr::V6(ll)), &[addr(ll), addr(g)]);
        assert_eq!(
            (n.ctx.next_hop_v6, n.ctx.next_hop_v6_link_local),
            (Some(g), Some(ll))
        );
        // Without the peer's offer: IPv6 only.
        t.caps.v4_via_v6 = false;
        let n = negotiate(&o, &t, p, Some(IpAddr::V6(ll)), &[addr(ll)]);
        assert_eq!(n.send_families, [Afi::Ipv6]);
    }

    /// RFC 8950: over IPv6, IPv4 goes with the IPv6 next hop only when
    /// both sides offered it and there is no IPv4 next hop to give.
    #[test]
    fn ipv4_over_ipv6_needs_both_offers_and_no_ipv4_next_hop() {
        let v6: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        let both = &[Afi::Ipv4, Afi::Ipv6];
        let mut o = ours();
        o.extended_next_hop = true;
        let mut t = theirs(both, true, false);
        t.caps.v4_via_v6 = true;
        let n = negotiate(&o, &t, &peer(""), v6, &[]);
        assert!(n.ctx.v4_via_v6);
        assert_eq!(n.send_families, [Afi::Ipv4, Afi::Ipv6]);
        // Without their offer, or ours, or with an IPv4 next hop: classic.
        let mut no = t.clone();
        no.caps.v4_via_v6 = false;
        let n = negotiate(&o, &no, &peer(""), v6, &[]);
        assert!(!n.ctx.v4_via_v6);
        assert_eq!(n.send_families, [Afi::Ipv6]);
        o.refused = vec![open::CAP_EXTENDED_NEXT_HOP];
        assert!(!negotiate(&o, &t, &peer(""), v6, &[]).ctx.v4_via_v6);
        o.refused.clear();
        let p = peer("next_hop_ipv4 = \"192.0.2.1\"\n");
        let n = negotiate(&o, &t, &p, v6, &[]);
        assert!(!n.ctx.v4_via_v6);
        assert_eq!(n.ctx.next_hop_v4, Some(Ipv4Addr::new(192, 0, 2, 1)));
        // An IPv6 peer offers it by default; `extended_next_hop = false`
        // does not.
        assert!(peer("").extended_next_hop);
        assert!(!peer("extended_next_hop = false\n").extended_next_hop);
    }

    #[test]
    fn a_peer_without_multiprotocol_gets_ipv4_only() {
        let n = negotiate(&ours(), &theirs(&[], false, false), &peer(""), V4, &[]);
        assert_eq!(n.families, [Afi::Ipv4]);
        assert!(!n.ctx.four_octet_as && !n.graceful_restart);
        let n = negotiate(
            &ours(),
            &theirs(&[Afi::Ipv6], true, false),
            &peer(""),
            V4,
            &[],
        );
        assert_eq!(n.families, [Afi::Ipv6], "only what both name");
        assert!(n.send_families.is_empty(), "no IPv6 next hop over IPv4");
        let mut v4_only = ours();
        v4_only.families = vec![Afi::Ipv4];
        let n = negotiate(
            &v4_only,
            &theirs(&[Afi::Ipv6], true, false),
            &peer(""),
            V4,
            &[],
        );
        assert!(n.families.is_empty(), "no family in common: {n:?}");
    }

    #[test]
    fn what_the_peer_refused_is_not_negotiated() {
        let mut o = ours();
        o.refused = vec![open::CAP_ASN4, open::CAP_GRACEFUL_RESTART];
        let n = negotiate(
            &o,
            &theirs(&[Afi::Ipv4, Afi::Ipv6], true, true),
            &peer(""),
            V4,
            &[],
        );
        assert!(!n.ctx.four_octet_as && !n.graceful_restart);
        assert_eq!(n.families, [Afi::Ipv4, Afi::Ipv6]);
        o.capabilities = false;
        let n = negotiate(
            &o,
            &theirs(&[Afi::Ipv4, Afi::Ipv6], true, true),
            &peer(""),
            V4,
            &[],
        );
        assert_eq!(n.families, [Afi::Ipv4], "no capabilities sent: IPv4 only");
        let mut o = ours();
        o.graceful_restart = None;
        let n = negotiate(&o, &theirs(&[Afi::Ipv4], true, true), &peer(""), V4, &[]);
        assert!(!n.graceful_restart, "not offered by us");
    }

    #[test]
    fn next_hops_from_the_configuration_then_the_connection() {
        let p = peer("next_hop_ipv6 = \"2001:db8::1\"\n");
        let n = negotiate(
            &ours(),
            &theirs(&[Afi::Ipv4, Afi::Ipv6], true, false),
            &p,
            V4,
            &[],
        );
        assert_eq!(n.send_families, [Afi::Ipv4, Afi::Ipv6]);
        // An IPv4-mapped local address counts as IPv4.
        let mapped = Some(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()));
        let n = negotiate(
            &ours(),
            &theirs(&[Afi::Ipv4], true, false),
            &peer(""),
            mapped,
            &[],
        );
        assert_eq!(n.ctx.next_hop_v4, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(n.ctx.local_asn, 65010);
        let ibgp = peer("").clone();
        let ibgp = PeerConfig {
            asn: crate::config::PeerAs::Number(65010),
            ..ibgp
        };
        assert!(
            !negotiate(&ours(), &theirs(&[], false, false), &ibgp, V4, &[])
                .ctx
                .ebgp
        );
    }

    #[test]
    fn the_link_local_next_hop_only_where_the_peer_shares_the_link_and_the_key_says_so() {
        let local: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let addrs = [
            IfAddr {
                ifname: "eth0".into(),
                addr: IpAddr::V6(local),
                prefix_len: 64,
            },
            IfAddr {
                ifname: "eth0".into(),
                addr: IpAddr::V6(ll),
                prefix_len: 64,
            },
        ];
        let both = theirs(&[Afi::Ipv4, Afi::Ipv6], true, false);
        let on = peer("");
        let n = negotiate(&ours(), &both, &on, Some(IpAddr::V6(local)), &addrs);
        assert_eq!(n.ctx.next_hop_v6, Some(local));
        assert_eq!(n.ctx.next_hop_v6_link_local, Some(ll));
        let off = peer("link_local_next_hop = false\n");
        let n = negotiate(&ours(), &both, &off, Some(IpAddr::V6(local)), &addrs);
        assert_eq!(n.ctx.next_hop_v6_link_local, None, "the key is off");
        let n = negotiate(&ours(), &both, &on, Some(IpAddr::V6(local)), &addrs[..1]);
        assert_eq!(
            n.ctx.next_hop_v6_link_local, None,
            "no link-local address on the link"
        );
    }
}
