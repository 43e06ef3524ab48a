//! ARP (RFC 826, RFC 5227) and IPv6 neighbour discovery (RFC 4861) frames
//! as plain values: what a received Ethernet frame asks, the frame that
//! answers it, and the unsolicited announcements. No I/O; every length is
//! checked before it is read, so any bytes from the wire give a value or
//! `None`, never a panic (the property test feeds it arbitrary bytes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];
const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const NS: u8 = 135;
const NA: u8 = 136;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// What a received frame means to the responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Someone asks who has `target`: answer if it is ours.
    Ask(Ask),
    /// Someone says `ip` is at `mac` (an ARP reply or announcement, a
    /// Neighbor Advertisement): if `ip` is ours, another node claims it.
    Claim { ip: IpAddr, mac: Mac },
}

/// A request, with what the answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub target: IpAddr,
    /// Where the answer goes at the Ethernet layer.
    pub reply_mac: Mac,
    /// ARP: the sender's protocol address (0.0.0.0 for a probe).
    /// NDP: the solicitation's source (unspecified for duplicate address
    /// detection, answered to all nodes).
    pub reply_ip: IpAddr,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn mac_at(b: &[u8], i: usize) -> Option<Mac> {
    b.get(i..i + 6)?.try_into().ok()
}

/// A received Ethernet frame (VLAN tags already removed by the kernel).
/// Frames sent from `own` are ignored: the socket sees what it sends.
pub fn parse(frame: &[u8], own: Mac) -> Option<Seen> {
    let src = mac_at(frame, 6)?;
    if src == own {
        return None;
    }
    match u16_at(frame, 12)? {
        ETH_ARP => parse_arp(frame.get(14..)?),
        ETH_IPV6 => parse_nd(frame.get(14..)?, src),
        _ => None,
    }
}

fn parse_arp(a: &[u8]) -> Option<Seen> {
    // Ethernet and IPv4 only, as RFC 826 lays them out for these sizes.
    if a.len() < 28 || u16_at(a, 0)? != 1 || u16_at(a, 2)? != 0x0800 || a[4] != 6 || a[5] != 4 {
        return None;
    }
    let op = u16_at(a, 6)?;
    let sha = mac_at(a, 8)?;
    let spa = Ipv4Addr::from(<[u8; 4]>::try_from(&a[14..18]).ok()?);
    let tpa = Ipv4Addr::from(<[u8; 4]>::try_from(&a[24..28]).ok()?);
    // A sender naming an address as its own (a reply, or an announcement:
    // a request whose sender and target are one address).
    if op == 2 || (op == 1 && spa == tpa) {
        return (!spa.is_unspecified()).then_some(Seen::Claim {
            ip: IpAddr::V4(spa),
            mac: sha,
        });
    }
    if op != 1 {
        return None;
    }
    Some(Seen::Ask(Ask {
        target: IpAddr::V4(tpa),
        reply_mac: sha,
        reply_ip: IpAddr::V4(spa),
    }))
}

fn v6_at(b: &[u8], i: usize) -> Option<Ipv6Addr> {
    Some(Ipv6Addr::from(
        <[u8; 16]>::try_from(b.get(i..i + 16)?).ok()?,
    ))
}

/// The ICMPv6 checksum (RFC 4443 2.3) over the pseudo-header and `msg`.
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A link-layer address option (RFC 4861 4.6.1) of `kind` among `opts`;
/// `Err` where the options are malformed (a zero length), which
/// invalidates the whole message (7.1.1).
fn ll_option(mut opts: &[u8], kind: u8) -> Result<Option<Mac>, ()> {
    let mut found = None;
    while !opts.is_empty() {
        let len = usize::from(*opts.get(1).ok_or(())?) * 8;
        if len == 0 || len > opts.len() {
            return Err(());
        }
        if opts[0] == kind && len >= 8 {
            found = mac_at(opts, 2);
        }
        opts = &opts[len..];
    }
    Ok(found)
}

fn parse_nd(p: &[u8], eth_src: Mac) -> Option<Seen> {
    // The validity checks of RFC 4861 7.1.1 and 7.1.2: hop limit 255 (the
    // sender is on the link), code 0, the lengths, the checksum.
    if p.len() < 40 || p[0] >> 4 != 6 || p[6] != ICMPV6 || p[7] != 255 {
        return None;
    }
    let len = usize::from(u16_at(p, 4)?);
    let msg = p.get(40..40 + len)?;
    let (src, dst) = (v6_at(p, 8)?, v6_at(p, 24)?);
    if msg.len() < 24 || msg[1] != 0 || checksum(src, dst, msg) != 0 {
        return None;
    }
    let target = v6_at(msg, 8)?;
    if target.is_multicast() {
        return None;
    }
    match msg[0] {
        NS => {
            let slla = ll_option(&msg[24..], 1).ok()?;
            if src.is_unspecified() {
                // Duplicate address detection: to the solicited-node
                // group, without a source link-layer option.
                if slla.is_some() || dst.octets()[..13] != SOLICITED[..13] {
                    return None;
                }
                return Some(Seen::Ask(Ask {
                    target: IpAddr::V6(target),
                    reply_mac: multicast_mac(ALL_NODES),
                    reply_ip: IpAddr::V6(ALL_NODES),
                }));
            }
            Some(Seen::Ask(Ask {
                target: IpAddr::V6(target),
                reply_mac: slla.unwrap_or(eth_src),
                reply_ip: IpAddr::V6(src),
            }))
        }
        NA => {
            let tlla = ll_option(&msg[24..], 2).ok()?;
            Some(Seen::Claim {
                ip: IpAddr::V6(target),
                mac: tlla.unwrap_or(eth_src),
            })
        }
        _ => None,
    }
}

const SOLICITED: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];

/// The solicited-node multicast group of `ip` (RFC 4291 2.7.1): where
/// solicitations for it are sent, so a responder must join it.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let mut g = SOLICITED;
    g[13..].copy_from_slice(&ip.octets()[13..]);
    Ipv6Addr::from(g)
}

/// The Ethernet address IPv6 multicast `group` is sent to (RFC 2464 7).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn ethernet(dst: Mac, src: Mac, kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&kind.to_be_bytes());
    f.extend_from_slice(payload);
    // The minimum Ethernet frame, without its checksum.
    f.resize(f.len().max(60), 0);
    f
}

fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// An advertisement for `target` at `mac`, from `src` to `dst`.
fn na(mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, solicited: bool) -> Vec<u8> {
    // Router clear, Solicited as asked, Override set: a client replaces
    // the old owner's entry at once (RFC 4861 7.2.5).
    let flags = if solicited { 0x60 } else { 0x20 };
    let mut msg = vec![NA, 0, 0, 0, flags, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[2, 1]);
    msg.extend_from_slice(&mac);
    icmpv6(src, dst, msg)
}

/// An IPv6 packet carrying the neighbour discovery message `msg`, its
/// checksum filled in, hop limit 255 (RFC 4861 7.1: on-link only).
fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, mut msg: Vec<u8>) -> Vec<u8> {
    let c = checksum(src, dst, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(&[ICMPV6, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&msg);
    p
}

/// The answer to `ask` for an address of ours, from `mac`. The Ethernet
/// source and the sender hardware address are both the interface's
/// (`mac`). An advertisement comes from the target itself, as Linux sends
/// one for its own address: clients (ndisc6 among them) take an answer
/// from another source for someone else's.
pub fn answer(ask: &Ask, mac: Mac) -> Option<Vec<u8>> {
    match (ask.target, ask.reply_ip) {
        (IpAddr::V4(t), IpAddr::V4(s)) => Some(ethernet(
            ask.reply_mac,
            mac,
            ETH_ARP,
            &arp(2, mac, t, ask.reply_mac, s),
        )),
        (IpAddr::V6(t), IpAddr::V6(d)) => {
            // To all nodes (duplicate address detection) the advertisement
            // is not solicited (7.2.4).
            let solicited = d != ALL_NODES;
            Some(ethernet(
                ask.reply_mac,
                mac,
                ETH_IPV6,
                &na(mac, t, d, t, solicited),
            ))
        }
        _ => None,
    }
}

/// A Neighbor Solicitation for `target` from `src` to `dst`, with a source
/// link-layer option where given (never from the unspecified address).
fn solicitation(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, slla: Option<Mac>) -> Vec<u8> {
    let mut msg = vec![NS, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    if let Some(m) = slla {
        msg.extend_from_slice(&[1, 1]);
        msg.extend_from_slice(&m);
    }
    icmpv6(src, dst, msg)
}

/// Asks the segment whether anyone answers for `ip`, without naming an
/// address of this node's (so no neighbour cache learns anything): an ARP
/// probe (RFC 5227 2.1.1, sender 0.0.0.0) or a duplicate address detection
/// solicitation (RFC 4862 5.4.2, from the unspecified address). Whoever
/// answers for it replies to this MAC or to all nodes.
pub fn probe(ip: IpAddr, mac: Mac) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => ethernet(
            BROADCAST,
            mac,
            ETH_ARP,
            &arp(1, mac, Ipv4Addr::UNSPECIFIED, [0; 6], v),
        ),
        IpAddr::V6(v) => {
            let group = solicited_node(v);
            let ns = solicitation(Ipv6Addr::UNSPECIFIED, group, v, None);
            ethernet(multicast_mac(group), mac, ETH_IPV6, &ns)
        }
    }
}

/// A gratuitous ARP (an ARP announcement, RFC 5227 2.3) or an unsolicited
/// Neighbor Advertisement to all nodes (RFC 4861 7.2.6) for `ip` at `mac`.
pub fn announce(ip: IpAddr, mac: Mac) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => ethernet(BROADCAST, mac, ETH_ARP, &arp(1, mac, v, [0; 6], v)),
        IpAddr::V6(v) => ethernet(
            multicast_mac(ALL_NODES),
            mac,
            ETH_IPV6,
            &na(mac, v, ALL_NODES, v, false),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: Mac = [2, 0, 0, 0, 0, 1];
    const CLIENT: Mac = [2, 0, 0, 0, 0, 9];

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn arp_request(spa: &str, tpa: &str) -> Vec<u8> {
        ethernet(
            BROADCAST,
            CLIENT,
            ETH_ARP,
            &arp(1, CLIENT, v4(spa), [0; 6], v4(tpa)),
        )
    }

    /// A solicitation as a client sends it, with its source link-layer
    /// option where it has a source address.
    fn ns(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let slla = (!src.is_unspecified()).then_some(CLIENT);
        ethernet(
            multicast_mac(dst),
            CLIENT,
            ETH_IPV6,
            &solicitation(src, dst, target, slla),
        )
    }

    #[test]
    fn an_arp_request_is_answered_from_the_interfaces_mac_to_the_asker() {
        let Some(Seen::Ask(ask)) = parse(&arp_request("192.0.2.9", "192.0.2.10"), ME) else {
            panic!("not an ask")
        };
        assert_eq!(ask.target, v4("192.0.2.10"));
        let r = answer(&ask, ME).unwrap();
        assert_eq!(&r[0..6], &CLIENT, "to the asker");
        assert_eq!(&r[6..12], &ME, "Ethernet source");
        assert_eq!(u16_at(&r, 20), Some(2), "a reply");
        assert_eq!(
            &r[22..28],
            &ME,
            "sender hardware address: the Ethernet source"
        );
        assert_eq!(&r[28..32], &[192, 0, 2, 10]);
        assert_eq!(&r[38..42], &[192, 0, 2, 9]);
        // What we send, read back, is our claim.
        assert_eq!(
            parse(&r, CLIENT),
            Some(Seen::Claim {
                ip: IpAddr::V4(v4("192.0.2.10")),
                mac: ME
            })
        );
    }

    #[test]
    fn our_own_frames_and_foreign_protocols_are_not_read() {
        let mut f = arp_request("192.0.2.9", "192.0.2.10");
        f[6..12].copy_from_slice(&ME);
        assert_eq!(parse(&f, ME), None);
        let mut f = arp_request("192.0.2.9", "192.0.2.10");
        f[17] = 6; // hardware length 6, protocol type not IPv4
        f[16] = 0x86;
        assert_eq!(parse(&f, ME), None);
    }

    #[test]
    fn an_announcement_from_another_node_is_a_claim() {
        let g = announce(IpAddr::V4(v4("192.0.2.10")), CLIENT);
        assert_eq!(&g[0..6], &BROADCAST);
        assert_eq!(
            parse(&g, ME),
            Some(Seen::Claim {
                ip: IpAddr::V4(v4("192.0.2.10")),
                mac: CLIENT
            })
        );
        let g = announce(IpAddr::V6(v6("2001:db8::10")), CLIENT);
        assert_eq!(
            parse(&g, ME),
            Some(Seen::Claim {
                ip: IpAddr::V6(v6("2001:db8::10")),
                mac: CLIENT
            })
        );
    }

    #[test]
    fn a_solicitation_gets_a_solicited_override_advertisement() {
        let target = v6("2001:db8::10");
        let f = ns(v6("2001:db8::9"), solicited_node(target), target);
        let Some(Seen::Ask(ask)) = parse(&f, ME) else {
            panic!("not an ask")
        };
        assert_eq!(ask.reply_mac, CLIENT);
        let r = answer(&ask, ME).unwrap();
        assert_eq!(&r[0..6], &CLIENT);
        assert_eq!(&r[6..12], &ME);
        let p = &r[14..];
        assert_eq!(p[7], 255, "hop limit");
        assert_eq!(v6_at(p, 8), Some(target), "from the target");
        assert_eq!(
            v6_at(p, 24),
            Some(v6("2001:db8::9")),
            "unicast to the asker"
        );
        let msg = &p[40..40 + usize::from(u16_at(p, 4).unwrap())];
        assert_eq!(msg[0], NA);
        assert_eq!(msg[4], 0x60, "Solicited and Override set, Router clear");
        assert_eq!(checksum(target, v6("2001:db8::9"), msg), 0);
        assert_eq!(&msg[24..26], &[2, 1]);
        assert_eq!(&msg[26..32], &ME, "target link-layer address");
    }

    #[test]
    fn a_unicast_solicitation_is_answered_like_a_multicast_one() {
        // Switches and hosts re-check an entry with a unicast NS: unanswered,
        // the entry is dropped (MetalLB's 30-minute outages).
        let target = v6("2001:db8::10");
        let mut f = ns(v6("2001:db8::9"), target, target);
        f[0..6].copy_from_slice(&ME);
        assert!(matches!(parse(&f, ME), Some(Seen::Ask(a)) if a.target == IpAddr::V6(target)));
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes_unsolicited() {
        let target = v6("2001:db8::10");
        let f = ns(Ipv6Addr::UNSPECIFIED, solicited_node(target), target);
        let Some(Seen::Ask(ask)) = parse(&f, ME) else {
            panic!("not an ask")
        };
        let r = answer(&ask, ME).unwrap();
        assert_eq!(&r[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(r[14 + 40 + 4], 0x20, "Override only");
        // DAD to a unicast address is invalid.
        let f = ns(Ipv6Addr::UNSPECIFIED, target, target);
        assert_eq!(parse(&f, ME), None);
    }

    #[test]
    fn invalid_solicitations_are_dropped() {
        let target = v6("2001:db8::10");
        let good = ns(v6("2001:db8::9"), solicited_node(target), target);
        let mut hop = good.clone();
        hop[14 + 7] = 64; // routed from elsewhere
        let mut sum = good.clone();
        sum[14 + 40 + 2] ^= 1;
        let mut code = good.clone();
        code[14 + 40 + 1] = 1;
        let mut opt = good.clone();
        opt[14 + 40 + 25] = 0; // an option of length zero
        for f in [hop, sum, code, opt] {
            assert_eq!(parse(&f, ME), None);
        }
        assert!(parse(&good, ME).is_some());
    }

    #[test]
    fn the_solicited_node_group_and_its_mac() {
        let g = solicited_node(v6("2001:db8::12:3456"));
        assert_eq!(g, v6("ff02::1:ff12:3456"));
        assert_eq!(multicast_mac(g), [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
    }

    #[test]
    fn a_probe_is_answered_by_the_owner_and_seen_as_its_claim() {
        const OWNER: Mac = [2, 0, 0, 0, 0, 2];
        for vip in ["192.0.2.10", "2001:db8::10"] {
            let vip: IpAddr = vip.parse().unwrap();
            let p = probe(vip, ME);
            assert_eq!(parse(&p, ME), None, "our own probe is ignored");
            let Some(Seen::Ask(ask)) = parse(&p, OWNER) else {
                panic!("{vip}: the owner does not see an ask")
            };
            assert_eq!(ask.target, vip);
            let a = answer(&ask, OWNER).unwrap();
            assert_eq!(
                parse(&a, ME),
                Some(Seen::Claim {
                    ip: vip,
                    mac: OWNER
                }),
                "{vip}: the answer names the owner"
            );
        }
        let p = probe("192.0.2.10".parse().unwrap(), ME);
        assert_eq!(&p[28..32], &[0, 0, 0, 0], "sender 0.0.0.0: an ARP probe");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&b, ME);
        }

        #[test]
        fn any_truncation_of_a_valid_frame_parses_without_panicking(cut in 0usize..90) {
            let target = v6("2001:db8::10");
            let f = ns(v6("2001:db8::9"), solicited_node(target), target);
            let _ = parse(&f[..cut.min(f.len())], ME);
            let a = arp_request("192.0.2.9", "192.0.2.10");
            let _ = parse(&a[..cut.min(a.len())], ME);
        }
    }
}
