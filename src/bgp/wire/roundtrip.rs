//! Our encoder against our checker and against zettabgp's decoder, and the
//! checker against hand-made malformed UPDATEs.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use zettabgp::prelude::{BgpAddrs, BgpAttrItem};

use super::encode::{self, SendCtx};
use super::update::{self, Ctx};
use super::{check_header, Afi, MsgType, Notification, HEADER_LEN, MAX_MESSAGE_LEN};
use crate::bgp::attrs::RouteAttrs;

fn ctx(ebgp: bool, four: bool, asn: u32) -> SendCtx {
    SendCtx {
        local_asn: asn,
        ebgp,
        four_octet_as: four,
        next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        next_hop_v6: Some("2001:db8::1".parse().unwrap()),
        next_hop_v6_link_local: None,
        defaults: RouteAttrs::default(),
        names: vec![],
        v4_via_v6: false,
    }
}

fn attrs() -> RouteAttrs {
    RouteAttrs {
        communities: vec![(65010 << 16) | 100],
        large_communities: vec![[65010, 1, 2]],
        med: Some(10),
        local_pref: Some(200),
        peers: vec![],
    }
}

fn v4(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| IpNet::from(std::net::IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i))))
        .collect()
}

fn v6(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            IpNet::from(std::net::IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8u128 << 96) + i as u128,
            )))
        })
        .collect()
}

/// Splits a byte stream into messages, checking every header.
fn split(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![];
    while !b.is_empty() {
        let (t, len) = check_header(b[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(t, MsgType::Update);
        assert!(len <= MAX_MESSAGE_LEN);
        out.push(&b[HEADER_LEN..len]);
        b = &b[len..];
    }
    out
}

/// Finds one attribute's value in an UPDATE body.
fn attr(body: &[u8], t: u8) -> Option<Vec<u8>> {
    let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let alen = u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]) as usize;
    let mut p = &body[4 + wlen..4 + wlen + alen];
    while !p.is_empty() {
        let ext = p[0] & 0x10 != 0;
        let (hl, len) = if ext {
            (4, u16::from_be_bytes([p[2], p[3]]) as usize)
        } else {
            (3, p[2] as usize)
        };
        if p[1] == t {
            return Some(p[hl..hl + len].to_vec());
        }
        p = &p[hl + len..];
    }
    None
}

#[test]
fn thousand_ipv4_host_routes_pack_and_decode() {
    let c = ctx(true, true, 65010);
    let mut out = vec![];
    let msgs = encode::announce(&mut out, &v4(1000), &attrs(), Afi::Ipv4, &c).unwrap();
    let bodies = split(&out);
    assert_eq!(bodies.len(), msgs);
    // 5 bytes per /32 and about 60 bytes of attributes: 2 messages.
    assert_eq!(msgs, 2);
    let mut total = 0;
    for b in &bodies {
        let chk = update::check(
            b,
            Ctx {
                four_octet_as: true,
                ebgp: true,
            },
        )
        .unwrap();
        assert_eq!(chk.treat_as_withdraw, None);
        assert!(chk.discarded.is_empty());
        total += chk.announced;
        // AS_PATH is one AS_SEQUENCE (type 2) holding 65010.
        assert_eq!(attr(b, 2).unwrap(), vec![2, 1, 0, 0, 0xfd, 0xf2]);
        assert_eq!(attr(b, 5), None, "no LOCAL_PREF to an eBGP peer");
        let u = update::decode(
            &chk.sanitized,
            Ctx {
                four_octet_as: true,
                ebgp: true,
            },
        )
        .unwrap()
        .unwrap();
        match &u.updates {
            BgpAddrs::IPV4U(v) => assert_eq!(v.len(), chk.announced),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            u.get_attr_nexthop().unwrap().value,
            std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        );
        let comm = u.get_attr_communitylist().unwrap();
        assert_eq!(
            comm.value.iter().map(|c| c.value).collect::<Vec<_>>(),
            vec![(65010 << 16) | 100]
        );
        let large = u.get_attr_largecommunitylist().unwrap();
        let l = large.value.iter().next().unwrap();
        assert_eq!((l.ga, l.ldp1, l.ldp2), (65010, 1, 2));
        assert!(u
            .attrs
            .iter()
            .any(|a| matches!(a, BgpAttrItem::MED(m) if m.value == 10)));
    }
    assert_eq!(total, 1000);
}

#[test]
fn thousand_ipv6_host_routes_pack_and_decode() {
    let c = ctx(true, true, 65010);
    let mut out = vec![];
    let msgs = encode::announce(&mut out, &v6(1000), &attrs(), Afi::Ipv6, &c).unwrap();
    let bodies = split(&out);
    assert_eq!(bodies.len(), msgs);
    assert_eq!(msgs, 5, "17 bytes per /128: about 237 per message");
    let mut total = 0;
    for b in &bodies {
        let chk = update::check(
            b,
            Ctx {
                four_octet_as: true,
                ebgp: true,
            },
        )
        .unwrap();
        assert_eq!(chk.treat_as_withdraw, None);
        total += chk.announced;
        let u = update::decode(
            &chk.sanitized,
            Ctx {
                four_octet_as: true,
                ebgp: true,
            },
        )
        .unwrap()
        .unwrap();
        let mp = u.get_mpupdates().unwrap();
        match &mp.addrs {
            BgpAddrs::IPV6U(v) => assert_eq!(v.len(), chk.announced),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            format!("{:?}", mp.nexthop),
            format!(
                "{:?}",
                zettabgp::prelude::BgpAddr::V6("2001:db8::1".parse().unwrap())
            )
        );
    }
    assert_eq!(total, 1000);
}

/// RFC 2545 section 3: with the link-local address, a 32-byte next hop
/// (global, then link-local); the message still packs to the limit and
/// passes vipd's own checks and zettabgp.
#[test]
fn ipv6_next_hop_with_link_local_is_32_bytes() {
    let c = SendCtx {
        next_hop_v6_link_local: Some("fe80::1".parse().unwrap()),
        ..ctx(true, true, 65010)
    };
    let mut out = vec![];
    let msgs = encode::announce(&mut out, &v6(1000), &attrs(), Afi::Ipv6, &c).unwrap();
    let bodies = split(&out);
    assert_eq!(bodies.len(), msgs);
    let ctx = Ctx {
        four_octet_as: true,
        ebgp: true,
    };
    let mut total = 0;
    for b in &bodies {
        assert!(b.len() + HEADER_LEN <= MAX_MESSAGE_LEN);
        // Withdrawn length, attribute length, then MP_REACH (extended
        // length): flags, type, length, AFI, SAFI, next-hop length.
        assert_eq!(&b[4..6], &[0x90, 14]);
        assert_eq!(&b[8..12], &[0, 2, 1, 32]);
        let g: std::net::Ipv6Addr = <[u8; 16]>::try_from(&b[12..28]).unwrap().into();
        let l: std::net::Ipv6Addr = <[u8; 16]>::try_from(&b[28..44]).unwrap().into();
        assert_eq!(
            (g.to_string(), l.to_string()),
            ("2001:db8::1".into(), "fe80::1".into())
        );
        let chk = update::check(b, ctx).unwrap();
        assert_eq!(chk.treat_as_withdraw, None);
        total += chk.announced;
        assert!(update::decode(&chk.sanitized, ctx).is_ok());
    }
    assert_eq!(total, 1000);
}

/// RFC 8950: IPv4 host routes in MP_REACH_NLRI (AFI 1, SAFI 1) with the
/// IPv6 next hop (and the link-local after it), no NEXT_HOP attribute and
/// nothing in the UPDATE's own NLRI field; they pass our own checks.
#[test]
fn ipv4_with_an_ipv6_next_hop_goes_in_mp_reach() {
    let c = SendCtx {
        next_hop_v4: None,
        next_hop_v6_link_local: Some("fe80::1".parse().unwrap()),
        v4_via_v6: true,
        ..ctx(true, true, 65010)
    };
    let mut out = vec![];
    let msgs = encode::announce(&mut out, &v4(1000), &attrs(), Afi::Ipv4, &c).unwrap();
    let bodies = split(&out);
    assert_eq!(bodies.len(), msgs);
    let cx = Ctx {
        four_octet_as: true,
        ebgp: true,
    };
    let mut total = 0;
    for b in &bodies {
        assert_eq!(&b[4..6], &[0x90, 14]);
        assert_eq!(&b[8..12], &[0, 1, 1, 32], "AFI 1, SAFI 1, 32-byte next hop");
        let g: Ipv6Addr = <[u8; 16]>::try_from(&b[12..28]).unwrap().into();
        let l: Ipv6Addr = <[u8; 16]>::try_from(&b[28..44]).unwrap().into();
        assert_eq!(
            (g.to_string(), l.to_string()),
            ("2001:db8::1".into(), "fe80::1".into())
        );
        assert_eq!(attr(b, 3), None, "no NEXT_HOP");
        let alen = u16::from_be_bytes([b[2], b[3]]) as usize;
        assert_eq!(b.len(), 4 + alen, "no NLRI outside MP_REACH");
        let chk = update::check(b, cx).unwrap();
        assert_eq!(chk.treat_as_withdraw, None);
        total += chk.announced;
    }
    assert_eq!(total, 1000);
    // The room for communities is the IPv6 one at most: a route that fits
    // there fits here.
    assert!(encode::fits(&many(800), Afi::Ipv4, &c).is_ok());
}

#[test]
fn withdrawals_and_end_of_rib() {
    let mut out = vec![];
    encode::withdraw(&mut out, &v4(2000), Afi::Ipv4);
    encode::withdraw(&mut out, &v6(300), Afi::Ipv6);
    encode::end_of_rib(&mut out, Afi::Ipv4);
    encode::end_of_rib(&mut out, Afi::Ipv6);
    let ctx = Ctx {
        four_octet_as: true,
        ebgp: true,
    };
    let checked: Vec<_> = split(&out)
        .iter()
        .map(|b| update::check(b, ctx).unwrap())
        .collect();
    let v4w: usize = checked.iter().take(3).map(|c| c.withdrawn).sum();
    assert_eq!(v4w, 2000);
    let all: usize = checked.iter().map(|c| c.withdrawn).sum();
    assert_eq!(all, 2300);
    let n = checked.len();
    assert_eq!(checked[n - 2].end_of_rib, Some(Afi::Ipv4));
    assert_eq!(checked[n - 1].end_of_rib, Some(Afi::Ipv6));
    assert!(checked[..n - 2].iter().all(|c| c.end_of_rib.is_none()));
}

#[test]
fn ibgp_has_empty_as_path_and_local_pref() {
    let mut out = vec![];
    encode::announce(
        &mut out,
        &v4(1),
        &attrs(),
        Afi::Ipv4,
        &ctx(false, true, 65010),
    )
    .unwrap();
    let b = split(&out)[0];
    assert_eq!(attr(b, 2).unwrap(), Vec::<u8>::new());
    assert_eq!(attr(b, 5).unwrap(), 200u32.to_be_bytes().to_vec());
}

#[test]
fn two_octet_peer_gets_as_trans_and_as4_path() {
    let mut out = vec![];
    encode::announce(
        &mut out,
        &v4(1),
        &attrs(),
        Afi::Ipv4,
        &ctx(true, false, 4_200_000_001),
    )
    .unwrap();
    let b = split(&out)[0];
    assert_eq!(attr(b, 2).unwrap(), vec![2, 1, 0x5b, 0xa0]);
    let mut as4 = vec![2, 1];
    as4.extend_from_slice(&4_200_000_001u32.to_be_bytes());
    assert_eq!(attr(b, 17).unwrap(), as4);
    let chk = update::check(
        b,
        Ctx {
            four_octet_as: false,
            ebgp: true,
        },
    )
    .unwrap();
    assert_eq!(chk.treat_as_withdraw, None);
}

#[test]
fn no_next_hop_means_nothing_encoded() {
    let mut c = ctx(true, true, 65010);
    c.next_hop_v6 = None;
    let mut out = vec![];
    assert_eq!(
        encode::announce(&mut out, &v6(3), &attrs(), Afi::Ipv6, &c),
        Err(encode::EncodeError::NoNextHop)
    );
    assert!(out.is_empty());
}

fn many(n: u32) -> RouteAttrs {
    RouteAttrs {
        communities: (0..n).map(|i| (65010 << 16) | i).collect(),
        ..Default::default()
    }
}

/// The report behind issue 19: 1,500 communities made one UPDATE of
/// 6,000-odd bytes (or a panic in a debug build), and BIRD reset the
/// session for as long as the entry existed. Now nothing is encoded.
#[test]
fn attributes_past_one_message_are_refused_and_nothing_is_written() {
    for afi in [Afi::Ipv4, Afi::Ipv6] {
        let prefixes = if afi == Afi::Ipv4 { v4(3) } else { v6(3) };
        let mut out = vec![];
        let e = encode::announce(
            &mut out,
            &prefixes,
            &many(1500),
            afi,
            &ctx(true, true, 65010),
        );
        assert!(
            matches!(e, Err(encode::EncodeError::TooLarge { .. })),
            "{e:?}"
        );
        assert!(out.is_empty());
        // 70,000 communities: past what a 2-byte attribute length can say.
        let e = encode::fits(&many(70_000), afi, &ctx(false, true, 65010));
        assert!(matches!(e, Err(encode::EncodeError::TooLarge { .. })));
    }
}

/// The worst session context (eBGP to a 2-octet peer from a 4-octet AS,
/// IPv6 with a link-local next hop, MED): exactly as many communities as
/// the budget allows fit in one message of at most 4,096 bytes; one more
/// does not fit in this context.
#[test]
fn the_community_budget_is_exact_in_the_worst_context() {
    let mut c = ctx(true, false, 4_200_000_000);
    c.next_hop_v6_link_local = Some("fe80::1".parse().unwrap());
    let fit = (encode::COMMUNITY_ROOM / 4) as u32;
    let mut a = many(fit);
    a.med = Some(1);
    a.local_pref = Some(1);
    let mut out = vec![];
    assert_eq!(encode::announce(&mut out, &v6(1), &a, Afi::Ipv6, &c), Ok(1));
    // What this context leaves out of the worst case (eBGP: no LOCAL_PREF,
    // 7 bytes; no LARGE_COMMUNITIES header, 4; the budget's odd byte, 1)
    // is room for exactly 3 more: a message of exactly 4,096 bytes.
    assert_eq!(out.len(), MAX_MESSAGE_LEN - 12);
    a.communities.extend((0..3).map(|i| (65011 << 16) | i));
    out.clear();
    assert_eq!(encode::announce(&mut out, &v6(1), &a, Afi::Ipv6, &c), Ok(1));
    assert_eq!(out.len(), MAX_MESSAGE_LEN);
    a.communities.push(65012 << 16);
    // The room is exact to the byte: 4,096 less the header and two length
    // fields (4,073), the /128 (17) and MP_REACH with both next hops (41).
    assert!(matches!(
        encode::fits(&a, Afi::Ipv6, &c),
        Err(encode::EncodeError::TooLarge { room: 4015, .. })
    ));
    // IPv4: 4,073 less the /32 (5).
    assert!(matches!(
        encode::fits(&many(1100), Afi::Ipv4, &c),
        Err(encode::EncodeError::TooLarge { room: 4068, .. })
    ));
}

/// What the Adj-RIB-Out sees of a peer: the attributes as it receives them
/// (its defaults merged, no LOCAL_PREF over eBGP), or nothing where they do
/// not fit.
#[test]
fn a_peer_receives_its_view_or_nothing() {
    let mut c = ctx(true, true, 65010);
    c.defaults.communities = vec![9];
    let got = c.receives(&attrs(), Afi::Ipv4).unwrap();
    assert_eq!(got.communities, [9, (65010 << 16) | 100]);
    assert_eq!(got.local_pref, None);
    assert_eq!(got.med, Some(10));
    let big = Err(crate::bgp::attrs::Skip::TooLarge);
    assert_eq!(c.receives(&many(1100), Afi::Ipv4), big);
    assert_eq!(c.receives(&many(1100), Afi::Ipv6), big);
}

#[test]
fn a_route_for_named_peers_reaches_only_them_and_the_name_is_never_sent() {
    let mut c = ctx(true, true, 65010);
    c.names = vec!["tor-b".into(), "192.0.2.2".into()];
    let mut a = attrs();
    a.peers = vec!["tor-a".into()];
    let other = Err(crate::bgp::attrs::Skip::NotForPeer);
    assert_eq!(c.receives(&a, Afi::Ipv4), other);
    a.peers = vec!["tor-a".into(), "tor-b".into()];
    assert!(c.receives(&a, Afi::Ipv4).unwrap().peers.is_empty());
    a.peers = vec!["192.0.2.2".into()];
    assert!(c.receives(&a, Afi::Ipv4).is_ok());
}

/// Arbitrary attributes, prefixes and session contexts: every message the
/// encoder writes is at most 4,096 bytes and passes vipd's own receive
/// checks with every prefix announced; what it refuses writes nothing; and
/// whatever is within the community budget is never refused.
#[test]
fn every_encoded_message_fits_and_passes_our_own_checks() {
    use proptest::prelude::*;
    let attrs = (
        0usize..1200,
        0usize..400,
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
    );
    let session = (
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        any::<bool>(),
        0u8..3,
    );
    let prefixes = proptest::collection::vec((any::<u128>(), 0u8..=128), 1..400);
    proptest!(ProptestConfig::with_cases(200), |(a in attrs, s in session, ps in prefixes, v6 in any::<bool>())| {
        let (nc, nl, med, local_pref) = a;
        let (ebgp, four, asn, ll, ndef) = s;
        let a = RouteAttrs {
            communities: (0..nc as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect(),
            large_communities: (0..nl as u32).map(|i| [i, i ^ asn, 7]).collect(),
            med,
            local_pref,
            peers: vec![],
        };
        let mut c = ctx(ebgp, four, asn.max(1));
        if ll {
            c.next_hop_v6_link_local = Some("fe80::1".parse().unwrap());
        }
        c.defaults.communities = (0..ndef as u32).collect();
        let afi = if v6 { Afi::Ipv6 } else { Afi::Ipv4 };
        let prefixes: Vec<IpNet> = ps.iter().map(|(bits, len)| {
            if v6 {
                ipnet::Ipv6Net::new(Ipv6Addr::from(*bits), *len).unwrap().trunc().into()
            } else {
                ipnet::Ipv4Net::new(Ipv4Addr::from(*bits as u32), len % 33).unwrap().trunc().into()
            }
        }).collect();
        let rx = Ctx { four_octet_as: four, ebgp };
        let mut out = vec![];
        let within = encode::community_bytes(&c.seen(&a)) <= encode::COMMUNITY_ROOM;
        match encode::announce(&mut out, &prefixes, &a, afi, &c) {
            Ok(n) => {
                let msgs = split(&out);
                prop_assert_eq!(msgs.len(), n);
                let mut announced = 0;
                for m in msgs {
                    let chk = update::check(m, rx).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(chk.treat_as_withdraw, None);
                    announced += chk.announced;
                }
                prop_assert_eq!(announced, prefixes.len());
            }
            Err(e) => {
                prop_assert!(out.is_empty());
                prop_assert!(!within, "refused within the budget: {}", e);
            }
        }
        let mut out = vec![];
        encode::withdraw(&mut out, &prefixes, afi);
        encode::end_of_rib(&mut out, afi);
        for m in split(&out) {
            update::check(m, rx).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    });
}

/// Builds an UPDATE body from withdrawn bytes, attribute bytes and NLRI.
pub fn body(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    b
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const ASPATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea];
const NH: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 2];
const NLRI: [u8; 5] = [32, 203, 0, 113, 7];

/// MP_REACH_NLRI for one IPv6 /128, next hop 2001:db8::1.
fn mp_reach_v6() -> Vec<u8> {
    let mut mp = vec![0x80, 14, 0, 0, 2, 1, 16];
    mp.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    mp.push(0);
    mp.push(128);
    mp.extend_from_slice(
        &"2001:db8::99"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    mp[2] = (mp.len() - 3) as u8;
    mp
}

fn good_attrs() -> Vec<u8> {
    [&ORIGIN[..], &ASPATH, &NH].concat()
}

enum Want {
    Ok,
    Withdraw,
    Notify(u8, u8),
}

/// RFC 7606 7.5, 7.9, 7.10 from an internal peer: a wrong length is
/// treat-as-withdraw (from an external one the attribute is discarded).
#[test]
fn ibgp_only_attributes_from_an_internal_peer() {
    let ibgp = Ctx {
        four_octet_as: true,
        ebgp: false,
    };
    let ga = [&ORIGIN[..], &[0x40, 2, 0], &NH].concat();
    for (name, extra, withdraw) in [
        ("LOCAL_PREF length 3", vec![0x40, 5, 3, 0, 0, 1], true),
        ("ORIGINATOR_ID length 2", vec![0x80, 9, 2, 0, 1], true),
        (
            "CLUSTER_LIST length 6",
            vec![0x80, 10, 6, 0, 0, 0, 1, 0, 2],
            true,
        ),
        (
            "CLUSTER_LIST of one",
            vec![0x80, 10, 4, 192, 0, 2, 1],
            false,
        ),
        ("ORIGINATOR_ID", vec![0x80, 9, 4, 192, 0, 2, 1], false),
    ] {
        let c = update::check(&body(&[], &[&ga[..], &extra].concat(), &NLRI), ibgp).unwrap();
        assert_eq!(c.treat_as_withdraw.is_some(), withdraw, "{name}: {c:?}");
    }
}

#[test]
fn malformed_updates_get_the_rfc_answer() {
    let ga = good_attrs();
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("good", body(&[], &ga, &NLRI), Want::Ok),
        (
            "withdrawn length overruns",
            {
                let mut b = body(&[], &ga, &NLRI);
                b[1] = 200;
                b
            },
            Want::Notify(3, 1),
        ),
        (
            "attribute length overruns",
            {
                let mut b = body(&[], &ga, &NLRI);
                b[3] = 200;
                b
            },
            Want::Notify(3, 1),
        ),
        // RFC 7606 4: the NLRI are located by the total attribute length.
        (
            "attribute value runs past the list",
            body(&[], &[&ga[..], &[0x40, 1, 9, 0]].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "stray attribute byte",
            body(&[], &[&ga[..], &[0x40]].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "two octets left, extended length",
            body(&[], &[&ga[..], &[0x50, 8]].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "runs past the list after MP_REACH was found",
            body(
                &[],
                &[&mp_reach_v6()[..], &ORIGIN, &ASPATH, &[0xc0, 8, 200, 1]].concat(),
                &[],
            ),
            Want::Withdraw,
        ),
        (
            "overrun with nothing announced keeps the session",
            body(&[], &[0x40, 1, 9, 0], &[]),
            Want::Ok,
        ),
        (
            "MP_REACH itself runs past the list",
            body(&[], &[&ga[..], &[0x80, 14, 40, 0, 2, 1]].concat(), &[]),
            Want::Notify(3, 1),
        ),
        (
            "MP_UNREACH header cut short",
            body(&[], &[&ga[..], &[0x90, 15]].concat(), &NLRI),
            Want::Notify(3, 1),
        ),
        (
            "MP_REACH flagged transitive (RFC 7606 3c)",
            body(
                &[],
                &{
                    let mut m = mp_reach_v6();
                    m[0] |= 0x40;
                    [&m[..], &ORIGIN, &ASPATH].concat()
                },
                &[],
            ),
            Want::Withdraw,
        ),
        (
            "LOCAL_PREF of length 3 from an external peer is discarded",
            body(&[], &[&ga[..], &[0x40, 5, 3, 0, 0, 1]].concat(), &NLRI),
            Want::Ok,
        ),
        (
            "ORIGINATOR_ID from an external peer is discarded",
            body(&[], &[&ga[..], &[0x80, 9, 2, 0, 1]].concat(), &NLRI),
            Want::Ok,
        ),
        (
            "AS4_AGGREGATOR from a 4-octet speaker is discarded",
            body(
                &[],
                &[&ga[..], &[0xc0, 18, 8, 0, 0, 0xfd, 0xea, 192, 0, 2, 1]].concat(),
                &NLRI,
            ),
            Want::Ok,
        ),
        (
            "bad ORIGIN value",
            body(&[], &[&[0x40u8, 1, 1, 7][..], &ASPATH, &NH].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "bad ORIGIN length",
            body(
                &[],
                &[&[0x40u8, 1, 2, 0, 0][..], &ASPATH, &NH].concat(),
                &NLRI,
            ),
            Want::Withdraw,
        ),
        (
            "NEXT_HOP length 5",
            body(
                &[],
                &[&ORIGIN[..], &ASPATH, &[0x40, 3, 5, 1, 2, 3, 4, 5]].concat(),
                &NLRI,
            ),
            Want::Withdraw,
        ),
        (
            "NEXT_HOP 0.0.0.0",
            body(
                &[],
                &[&ORIGIN[..], &ASPATH, &[0x40, 3, 4, 0, 0, 0, 0]].concat(),
                &NLRI,
            ),
            Want::Withdraw,
        ),
        (
            "ORIGIN flagged optional",
            body(&[], &[&[0xc0u8, 1, 1, 0][..], &ASPATH, &NH].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "MED flagged transitive",
            body(&[], &[&ga[..], &[0x40, 4, 4, 0, 0, 0, 1]].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "AS_PATH one byte too long",
            body(
                &[],
                &[&ORIGIN[..], &[0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xea, 0], &NH].concat(),
                &NLRI,
            ),
            Want::Withdraw,
        ),
        (
            "AS_PATH shorter than a segment header",
            body(&[], &[&ORIGIN[..], &[0x40, 2, 1, 2], &NH].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "AS_PATH bad segment type",
            body(
                &[],
                &[&ORIGIN[..], &[0x40, 2, 6, 9, 1, 0, 0, 0xfd, 0xea], &NH].concat(),
                &NLRI,
            ),
            Want::Withdraw,
        ),
        (
            "COMMUNITIES length 3",
            body(&[], &[&ga[..], &[0xc0, 8, 3, 1, 2, 3]].concat(), &NLRI),
            Want::Withdraw,
        ),
        (
            "LARGE_COMMUNITIES length 8",
            body(
                &[],
                &[&ga[..], &[0xc0, 32, 8, 0, 0, 0, 1, 0, 0, 0, 2]].concat(),
                &NLRI,
            ),
            Want::Withdraw,
        ),
        (
            "missing NEXT_HOP",
            body(&[], &[&ORIGIN[..], &ASPATH].concat(), &NLRI),
            Want::Withdraw,
        ),
        ("missing everything", body(&[], &[], &NLRI), Want::Withdraw),
        (
            "unrecognized well-known",
            body(&[], &[&ga[..], &[0x40, 99, 1, 0]].concat(), &NLRI),
            Want::Notify(3, 2),
        ),
        (
            "unknown optional is fine",
            body(&[], &[&ga[..], &[0xc0, 99, 1, 0]].concat(), &NLRI),
            Want::Ok,
        ),
        (
            "NLRI prefix length 33",
            body(&[], &ga, &[33, 1, 2, 3, 4, 5]),
            Want::Notify(3, 10),
        ),
        (
            "NLRI prefix length 255",
            body(&[], &ga, &[255]),
            Want::Notify(3, 10),
        ),
        (
            "NLRI truncated",
            body(&[], &ga, &[32, 1, 2]),
            Want::Notify(3, 10),
        ),
        (
            "withdrawn truncated",
            body(&[24, 1], &[], &[]),
            Want::Notify(3, 10),
        ),
        (
            "MP_REACH truncated",
            body(
                &[],
                &[&ORIGIN[..], &ASPATH, &[0x80, 14, 3, 0, 2, 1]].concat(),
                &[],
            ),
            Want::Notify(3, 9),
        ),
        (
            "MP_REACH next hop length 7",
            body(
                &[],
                &[
                    &ORIGIN[..],
                    &ASPATH,
                    &[0x80, 14, 12, 0, 2, 1, 7, 1, 2, 3, 4, 5, 6, 7, 0],
                ]
                .concat(),
                &[],
            ),
            Want::Notify(3, 9),
        ),
        (
            "MP_REACH next hop past end",
            body(
                &[],
                &[&ORIGIN[..], &ASPATH, &[0x80, 14, 6, 0, 2, 1, 16, 1, 2]].concat(),
                &[],
            ),
            Want::Notify(3, 9),
        ),
        (
            "MP_REACH prefix length 129",
            {
                let mut mp = vec![0x80, 14, 0, 0, 2, 1, 16];
                mp.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                mp.extend_from_slice(&[0, 129]);
                mp[2] = (mp.len() - 3) as u8;
                body(&[], &[&ORIGIN[..], &ASPATH, &mp].concat(), &[])
            },
            Want::Notify(3, 9),
        ),
        (
            "MP_UNREACH truncated",
            body(&[], &[0x80, 15, 2, 0, 2], &[]),
            Want::Notify(3, 9),
        ),
        (
            "duplicate MP_REACH",
            {
                let mp = [0x80u8, 15, 3, 0, 2, 1];
                body(&[], &[&mp[..], &mp].concat(), &[])
            },
            Want::Notify(3, 1),
        ),
        (
            "duplicate ORIGIN is discarded",
            body(&[], &[&ga[..], &ORIGIN].concat(), &NLRI),
            Want::Ok,
        ),
        (
            "MP_REACH for an unknown family is ignored",
            body(
                &[],
                &[
                    &ORIGIN[..],
                    &ASPATH,
                    &[0x80, 14, 9, 0, 25, 70, 4, 1, 2, 3, 4, 0],
                ]
                .concat(),
                &[],
            ),
            Want::Ok,
        ),
    ];
    let ctx = Ctx {
        four_octet_as: true,
        ebgp: true,
    };
    for (name, b, want) in cases {
        let got = update::check(&b, ctx);
        match (want, got) {
            (Want::Ok, Ok(c)) => {
                assert!(c.treat_as_withdraw.is_none(), "{name}: {c:?}");
                assert!(!c.sanitized.is_empty(), "{name}");
                // What passed the checks is safe for zettabgp.
                assert!(
                    update::decode(&c.sanitized, ctx).is_ok(),
                    "{name}: zettabgp panicked"
                );
            }
            (Want::Withdraw, Ok(c)) => assert!(c.treat_as_withdraw.is_some(), "{name}: {c:?}"),
            (Want::Notify(code, sub), Err(n)) => {
                assert_eq!((n.code, n.subcode), (code, sub), "{name}: {n}")
            }
            (_, got) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

#[test]
fn unrecognized_well_known_notification_carries_the_attribute() {
    let b = body(&[], &[&good_attrs()[..], &[0x40, 99, 1, 7]].concat(), &NLRI);
    let n = update::check(
        &b,
        Ctx {
            four_octet_as: true,
            ebgp: true,
        },
    )
    .unwrap_err();
    assert_eq!(n, Notification::with_data(3, 2, [0x40, 99, 1, 7]));
}

/// Found by the libFuzzer target: zettabgp's ADD-PATH guess misread these
/// withdrawn routes and overflowed.
#[test]
fn libfuzzer_finding_withdrawn_prefixes() {
    let body = [0u8, 11, 0, 0, 0, 5, 0, 8, 64, 15, 2, 255, 0, 0, 0];
    let ctx = Ctx {
        four_octet_as: true,
        ebgp: true,
    };
    let c = update::check(&body, ctx).unwrap();
    assert!(update::decode(&c.sanitized, ctx).is_ok());
}

#[test]
fn peer_defaults_merge_into_each_route() {
    let mut c = ctx(false, true, 65010);
    c.defaults = RouteAttrs {
        communities: vec![1, (65010 << 16) | 100],
        large_communities: vec![[9, 9, 9]],
        med: None,
        local_pref: Some(300),
        peers: vec![],
    };
    let mut out = vec![];
    encode::announce(&mut out, &v4(1), &attrs(), Afi::Ipv4, &c).unwrap();
    let b = split(&out)[0];
    // Union, sorted, without duplicates; the route's LOCAL_PREF wins.
    let comm: Vec<u8> = [1u32, (65010 << 16) | 100]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    assert_eq!(attr(b, 8).unwrap(), comm);
    assert_eq!(attr(b, 32).unwrap().len(), 24);
    assert_eq!(attr(b, 5).unwrap(), 200u32.to_be_bytes().to_vec());
    let mut out = vec![];
    let plain = RouteAttrs::default();
    encode::announce(&mut out, &v4(1), &plain, Afi::Ipv4, &c).unwrap();
    assert_eq!(
        attr(split(&out)[0], 5).unwrap(),
        300u32.to_be_bytes().to_vec()
    );
}
