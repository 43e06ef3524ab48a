//! OPEN: decoding and checking the peer's (RFC 4271 4.2, 6.2; RFC 5492;
//! RFC 9072), and encoding ours through zettabgp.

use std::fmt;
use std::net::Ipv4Addr;

use zettabgp::prelude::{BgpCapGR, BgpCapability, BgpMessage, BgpSessionParams, BgpTransportMode};

use super::{code, push_header, Afi, MsgType, Notification, HEADER_LEN};
use crate::bgp::attrs::AS_TRANS;

pub const CAP_MP: u8 = 1;
pub const CAP_ROUTE_REFRESH: u8 = 2;
/// Extended Next Hop Encoding (RFC 8950).
pub const CAP_EXTENDED_NEXT_HOP: u8 = 5;
pub const CAP_GRACEFUL_RESTART: u8 = 64;
pub const CAP_ASN4: u8 = 65;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GracefulRestartCap {
    pub restarted: bool,
    pub notification: bool,
    pub restart_time: u16,
    /// Families with their forwarding-state bit.
    pub families: Vec<(Afi, bool)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Families from Multiprotocol capabilities that vipd knows.
    pub families: Vec<Afi>,
    /// Whether any Multiprotocol capability was present (RFC 4760: without
    /// one, the session carries IPv4 unicast only).
    pub any_mp: bool,
    pub asn4: Option<u32>,
    pub route_refresh: bool,
    pub graceful_restart: Option<GracefulRestartCap>,
    /// The peer takes IPv4 unicast routes with an IPv6 next hop (RFC 8950:
    /// the tuple AFI 1, SAFI 1, next-hop AFI 2).
    pub v4_via_v6: bool,
    /// Capability codes vipd does not use; ignored, as RFC 5492 asks.
    pub other: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub caps: Capabilities,
}

impl Open {
    /// The peer's AS: the 4-octet one where it sent the capability.
    pub fn asn(&self) -> u32 {
        self.caps.asn4.unwrap_or(self.my_as as u32)
    }
}

/// Decodes an OPEN body (after the 19-byte header).
pub fn parse(body: &[u8]) -> Result<Open, Notification> {
    // The header check guarantees at least 10 bytes.
    if body[0] != 4 {
        return Err(Notification::with_data(
            code::OPEN,
            code::UNSUPPORTED_VERSION,
            4u16.to_be_bytes(),
        ));
    }
    let my_as = u16::from_be_bytes([body[1], body[2]]);
    let hold_time = u16::from_be_bytes([body[3], body[4]]);
    let bgp_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
    let opt_len = body[9] as usize;
    let rest = &body[10..];
    let malformed = || Notification::new(code::OPEN, 0);
    // RFC 9072: a non-extended length of 255 whose first parameter type is
    // also 255 introduces 2-octet parameter lengths.
    let (params, extended) = if opt_len == 255 && rest.first() == Some(&255) {
        if rest.len() < 3 {
            return Err(malformed());
        }
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        (&rest[3..], Some(n))
    } else {
        (rest, None)
    };
    let total = extended.unwrap_or(opt_len);
    if params.len() != total {
        return Err(malformed());
    }
    let mut caps = Capabilities::default();
    let mut p = params;
    while !p.is_empty() {
        let hl = if extended.is_some() { 3 } else { 2 };
        if p.len() < hl {
            return Err(malformed());
        }
        let ptype = p[0];
        let plen = if extended.is_some() {
            u16::from_be_bytes([p[1], p[2]]) as usize
        } else {
            p[1] as usize
        };
        if p.len() < hl + plen {
            return Err(malformed());
        }
        let value = &p[hl..hl + plen];
        p = &p[hl + plen..];
        if ptype != 2 {
            return Err(Notification::with_data(
                code::OPEN,
                code::UNSUPPORTED_OPT_PARAM,
                [ptype],
            ));
        }
        parse_caps(value, &mut caps).map_err(|_| malformed())?;
    }
    Ok(Open {
        my_as,
        hold_time,
        bgp_id,
        caps,
    })
}

fn parse_caps(mut v: &[u8], caps: &mut Capabilities) -> Result<(), ()> {
    while !v.is_empty() {
        if v.len() < 2 || v.len() < 2 + v[1] as usize {
            return Err(());
        }
        let (c, len) = (v[0], v[1] as usize);
        let val = &v[2..2 + len];
        v = &v[2 + len..];
        match c {
            CAP_MP if len == 4 => {
                caps.any_mp = true;
                let afi = u16::from_be_bytes([val[0], val[1]]);
                if let Some(a) = Afi::from_code(afi, val[3]) {
                    if !caps.families.contains(&a) {
                        caps.families.push(a);
                    }
                }
            }
            CAP_ROUTE_REFRESH if len == 0 => caps.route_refresh = true,
            CAP_EXTENDED_NEXT_HOP if len % 6 == 0 => {
                // Other tuples (VPN, other next-hop families) mean nothing
                // to vipd.
                caps.v4_via_v6 |= val.chunks_exact(6).any(|t| t == [0, 1, 0, 1, 0, 2]);
            }
            CAP_ASN4 if len == 4 => {
                caps.asn4 = Some(u32::from_be_bytes([val[0], val[1], val[2], val[3]]))
            }
            CAP_GRACEFUL_RESTART if len >= 2 && (len - 2) % 4 == 0 => {
                let flags = val[0] >> 4;
                let mut gr = GracefulRestartCap {
                    restarted: flags & 0x8 != 0,
                    notification: flags & 0x4 != 0,
                    restart_time: u16::from_be_bytes([val[0] & 0x0f, val[1]]),
                    families: Vec::new(),
                };
                for t in val[2..].chunks_exact(4) {
                    if let Some(a) = Afi::from_code(u16::from_be_bytes([t[0], t[1]]), t[2]) {
                        gr.families.push((a, t[3] & 0x80 != 0));
                    }
                }
                caps.graceful_restart = Some(gr);
            }
            // A known capability with a length that does not fit its format
            // is ignored like an unknown one rather than failing the session.
            other => caps.other.push(other),
        }
    }
    Ok(())
}

/// The AS a peer may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAs {
    Number(u32),
    /// Any AS but the one vipd speaks to it (as FRR's `remote-as external`
    /// and BIRD's `external`): fabrics where each router has its own.
    External,
    /// The AS vipd speaks to it.
    Internal,
}

impl PeerAs {
    /// The AS in the peer's OPEN is one this peer may speak, vipd speaking
    /// `ours` to it.
    pub fn accepts(self, theirs: u32, ours: u32) -> bool {
        match self {
            PeerAs::Number(n) => theirs == n,
            PeerAs::External => theirs != ours,
            PeerAs::Internal => theirs == ours,
        }
    }

    /// The session is iBGP, vipd speaking `ours`.
    pub fn is_ibgp(self, ours: u32) -> bool {
        match self {
            PeerAs::Number(n) => n == ours,
            PeerAs::External => false,
            PeerAs::Internal => true,
        }
    }

    /// For text: "AS65001", "AS external".
    pub fn text(self) -> String {
        let gap = if matches!(self, PeerAs::Number(_)) {
            ""
        } else {
            " "
        };
        format!("AS{gap}{self}")
    }
}

/// A number, or the word: the metrics' `asn` label and `status -o json`.
impl fmt::Display for PeerAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAs::Number(n) => n.fmt(f),
            PeerAs::External => f.write_str("external"),
            PeerAs::Internal => f.write_str("internal"),
        }
    }
}

/// What vipd expects of the peer's OPEN.
pub struct Expect {
    pub local_asn: u32,
    pub local_id: Ipv4Addr,
    pub peer_as: PeerAs,
}

/// The semantic checks of RFC 4271 6.2 and RFC 6793, in the order the RFC
/// lists them; returns the peer's OPEN unchanged when it passes.
pub fn check(open: &Open, e: &Expect) -> Result<(), Notification> {
    let asn = open.asn();
    let header_ok = match open.caps.asn4 {
        Some(a4) => open.my_as as u32 == a4 || (open.my_as as u32 == AS_TRANS && a4 > 0xffff),
        None => true,
    };
    if !e.peer_as.accepts(asn, e.local_asn) || !header_ok {
        return Err(Notification::new(code::OPEN, code::BAD_PEER_AS));
    }
    let id = open.bgp_id;
    let ibgp = asn == e.local_asn;
    if id.is_unspecified() || id.is_multicast() || id.is_broadcast() || (ibgp && id == e.local_id) {
        return Err(Notification::with_data(
            code::OPEN,
            code::BAD_BGP_ID,
            id.octets(),
        ));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(Notification::new(code::OPEN, code::UNACCEPTABLE_HOLD));
    }
    Ok(())
}

/// The OPEN vipd sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOpen {
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub families: Vec<Afi>,
    /// After a peer refused optional parameters (2/4), capabilities are left out.
    pub capabilities: bool,
    /// Capability codes the peer said it does not support (2/7).
    pub refused: Vec<u8>,
    pub graceful_restart: Option<u16>,
    /// The Restart State bit: vipd is back from a graceful stop.
    pub restart_state: bool,
    /// Offer IPv4 unicast with an IPv6 next hop (RFC 8950).
    pub extended_next_hop: bool,
}

impl LocalOpen {
    fn zetta_caps(&self) -> Vec<BgpCapability> {
        if !self.capabilities {
            return Vec::new();
        }
        let mut caps = Vec::new();
        if !self.refused.contains(&CAP_MP) {
            for f in &self.families {
                caps.push(match f {
                    Afi::Ipv4 => BgpCapability::SafiIPv4u,
                    Afi::Ipv6 => BgpCapability::SafiIPv6u,
                });
            }
        }
        if !self.refused.contains(&CAP_ROUTE_REFRESH) {
            caps.push(BgpCapability::CapRR);
        }
        if !self.refused.contains(&CAP_ASN4) {
            caps.push(BgpCapability::CapASN32(self.asn));
        }
        if let Some(t) = self.graceful_restart {
            if !self.refused.contains(&CAP_GRACEFUL_RESTART) {
                // Forwarding state is preserved: the VIPs keep working on the
                // node while vipd restarts, so peers may keep the routes.
                let afis = self
                    .families
                    .iter()
                    .map(|f| BgpCapGR {
                        afi: f.code(),
                        safi: super::SAFI_UNICAST,
                        forwarding_state: true,
                    })
                    .collect();
                caps.push(BgpCapability::CapGR {
                    restart_time: t.min(4095),
                    restart_state: self.restart_state,
                    afis,
                });
            }
        }
        caps
    }

    pub fn encode(&self) -> Vec<u8> {
        let params = BgpSessionParams::new(
            self.asn,
            self.hold_time,
            BgpTransportMode::IPv4,
            self.router_id,
            self.zetta_caps(),
        );
        let mut buf = vec![0u8; super::MAX_MESSAGE_LEN];
        // zettabgp writes AS_TRANS in the 2-octet field for a 4-octet ASN.
        let n = params
            .open_message()
            .encode_to(&params, &mut buf[HEADER_LEN..])
            .expect("an OPEN with a handful of capabilities fits 4096 bytes");
        let mut body = buf[HEADER_LEN..HEADER_LEN + n].to_vec();
        if self.offers_extended_next_hop() {
            // zettabgp has no such capability: one more optional parameter
            // (type 2, capabilities) holding it, and the parameters' length
            // (the byte after the BGP Identifier) grown by its size.
            let cap = [2, 8, CAP_EXTENDED_NEXT_HOP, 6, 0, 1, 0, 1, 0, 2];
            body[9] += cap.len() as u8;
            body.extend_from_slice(&cap);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        push_header(&mut out, body.len(), MsgType::Open);
        out.extend_from_slice(&body);
        out
    }

    /// Whether the OPEN carries the Extended Next Hop capability.
    pub fn offers_extended_next_hop(&self) -> bool {
        self.extended_next_hop
            && self.capabilities
            && self.families.contains(&Afi::Ipv4)
            && !self.refused.contains(&CAP_EXTENDED_NEXT_HOP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalOpen {
        LocalOpen {
            asn: 4_200_000_001,
            hold_time: 90,
            router_id: "192.0.2.1".parse().unwrap(),
            families: vec![Afi::Ipv4, Afi::Ipv6],
            capabilities: true,
            refused: vec![],
            graceful_restart: Some(120),
            restart_state: false,
            extended_next_hop: false,
        }
    }

    /// RFC 8950: the capability goes out when asked for, after zettabgp's,
    /// and is read back; a peer that refused it is not offered it again.
    #[test]
    fn extended_next_hop_capability() {
        let mut l = local();
        let plain = parse(&l.encode()[19..]).unwrap();
        assert!(!plain.caps.v4_via_v6);
        l.extended_next_hop = true;
        let bytes = l.encode();
        assert_eq!(
            u16::from_be_bytes([bytes[16], bytes[17]]) as usize,
            bytes.len()
        );
        let o = parse(&bytes[19..]).unwrap();
        assert!(o.caps.v4_via_v6);
        assert_eq!(o.caps.families, [Afi::Ipv4, Afi::Ipv6]);
        assert_eq!(o.caps.asn4, Some(4_200_000_001));
        l.refused = vec![CAP_EXTENDED_NEXT_HOP];
        assert!(!parse(&l.encode()[19..]).unwrap().caps.v4_via_v6);
        // Only the IPv4-unicast-over-IPv6 tuple counts.
        let mut caps = Capabilities::default();
        parse_caps(&[5, 6, 0, 1, 0, 128, 0, 2], &mut caps).unwrap();
        assert!(!caps.v4_via_v6);
        parse_caps(&[5, 12, 0, 1, 0, 128, 0, 2, 0, 1, 0, 1, 0, 2], &mut caps).unwrap();
        assert!(caps.v4_via_v6);
    }

    /// RFC 4724 section 3: the Restart State bit goes out when asked for,
    /// beside the forwarding-state bits.
    #[test]
    fn restart_state_bit() {
        let mut l = local();
        l.restart_state = true;
        let gr = parse(&l.encode()[19..])
            .unwrap()
            .caps
            .graceful_restart
            .unwrap();
        assert!(gr.restarted);
        assert_eq!(gr.restart_time, 120);
        assert_eq!(gr.families, vec![(Afi::Ipv4, true), (Afi::Ipv6, true)]);
    }

    #[test]
    fn our_open_decodes_to_what_we_meant() {
        let bytes = local().encode();
        let (t, len) = super::super::check_header(bytes[..19].try_into().unwrap()).unwrap();
        assert_eq!((t, len), (MsgType::Open, bytes.len()));
        let o = parse(&bytes[19..]).unwrap();
        assert_eq!(o.my_as as u32, AS_TRANS);
        assert_eq!(o.asn(), 4_200_000_001);
        assert_eq!(o.hold_time, 90);
        assert_eq!(o.caps.families, vec![Afi::Ipv4, Afi::Ipv6]);
        assert!(o.caps.route_refresh);
        let gr = o.caps.graceful_restart.unwrap();
        assert_eq!(gr.restart_time, 120);
        assert!(!gr.restarted);
        assert_eq!(gr.families, vec![(Afi::Ipv4, true), (Afi::Ipv6, true)]);
    }

    #[test]
    fn refused_capabilities_are_left_out() {
        let mut l = local();
        l.asn = 65010;
        l.refused = vec![CAP_GRACEFUL_RESTART, CAP_ROUTE_REFRESH];
        let o = parse(&l.encode()[19..]).unwrap();
        assert!(o.caps.graceful_restart.is_none() && !o.caps.route_refresh);
        assert_eq!(o.caps.asn4, Some(65010));
        l.capabilities = false;
        let bytes = l.encode();
        assert_eq!(bytes.len(), 29);
        assert_eq!(parse(&bytes[19..]).unwrap().caps, Capabilities::default());
    }

    fn open_body(version: u8, my_as: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
        let mut b = vec![version];
        b.extend_from_slice(&my_as.to_be_bytes());
        b.extend_from_slice(&hold.to_be_bytes());
        b.extend_from_slice(&id);
        b.push(params.len() as u8);
        b.extend_from_slice(params);
        b
    }

    fn expect() -> Expect {
        Expect {
            local_asn: 65010,
            local_id: "192.0.2.1".parse().unwrap(),
            peer_as: PeerAs::Number(65002),
        }
    }

    #[test]
    fn open_errors_map_to_rfc_subcodes() {
        let e = expect();
        let err = |b: Vec<u8>| parse(&b).and_then(|o| check(&o, &e)).unwrap_err();
        assert_eq!(
            err(open_body(3, 65002, 90, [192, 0, 2, 2], &[])),
            Notification::with_data(2, 1, [0, 4])
        );
        assert_eq!(err(open_body(4, 65003, 90, [192, 0, 2, 2], &[])).subcode, 2);
        assert_eq!(
            err(open_body(4, 65002, 90, [0, 0, 0, 0], &[])),
            Notification::with_data(2, 3, [0, 0, 0, 0])
        );
        assert_eq!(err(open_body(4, 65002, 2, [192, 0, 2, 2], &[])).subcode, 6);
        assert_eq!(
            err(open_body(4, 65002, 90, [192, 0, 2, 2], &[1, 1, 0])),
            Notification::with_data(2, 4, [1])
        );
        // A capability running past its parameter.
        assert_eq!(
            err(open_body(4, 65002, 90, [192, 0, 2, 2], &[2, 2, 65, 4])).subcode,
            0
        );
        // The 4-octet capability disagrees with the configured peer AS.
        assert_eq!(
            err(open_body(
                4,
                65002,
                90,
                [192, 0, 2, 2],
                &[2, 6, 65, 4, 0, 0, 0xfd, 0xeb]
            ))
            .subcode,
            2
        );
        // Parameters shorter than the declared length.
        let mut b = open_body(4, 65002, 90, [192, 0, 2, 2], &[]);
        b[9] = 4;
        assert_eq!(err(b).subcode, 0);
        // iBGP with our own identifier.
        let ib = Expect {
            peer_as: PeerAs::Number(65010),
            ..expect()
        };
        let o = parse(&open_body(4, 65010, 90, [192, 0, 2, 1], &[])).unwrap();
        assert_eq!(check(&o, &ib).unwrap_err().subcode, 3);
        let ok = parse(&open_body(4, 65002, 0, [192, 0, 2, 2], &[])).unwrap();
        assert!(check(&ok, &e).is_ok());
    }

    #[test]
    fn extended_optional_parameters_rfc9072() {
        let caps = [65u8, 4, 0, 0, 0xfd, 0xea, 2, 0];
        let mut params = vec![255, 255];
        params.extend_from_slice(&((3 + caps.len()) as u16).to_be_bytes());
        params.push(2);
        params.extend_from_slice(&(caps.len() as u16).to_be_bytes());
        params.extend_from_slice(&caps);
        let mut body = open_body(4, 65002, 90, [192, 0, 2, 2], &[]);
        body[9] = 255;
        body.truncate(10);
        body.extend_from_slice(&params[1..]);
        let o = parse(&body).unwrap();
        assert_eq!(o.caps.asn4, Some(65002));
        assert!(o.caps.route_refresh);
    }
}
