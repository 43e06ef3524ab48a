//! UPDATE encoding: path attributes and NLRI packed to the 4096-byte limit.
//!
//! Written by hand rather than through zettabgp: its AS_PATH encoder writes
//! AS_SEQUENCE as AS_SET and its encoders panic when a buffer is too small,
//! so sizing has to happen here anyway. zettabgp decodes these messages in
//! the tests as an independent check.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::update::{
    AS4_PATH, AS_PATH, COMMUNITIES, FLAG_EXTENDED, FLAG_OPTIONAL, FLAG_TRANSITIVE,
    LARGE_COMMUNITIES, LOCAL_PREF, MED, MP_REACH, MP_UNREACH, NEXT_HOP, ORIGIN,
};
use super::{push_header, Afi, MsgType, HEADER_LEN, MAX_MESSAGE_LEN, SAFI_UNICAST};
use crate::bgp::attrs::{RouteAttrs, Skip, AS_TRANS};

/// What the encoding depends on, per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCtx {
    pub local_asn: u32,
    pub ebgp: bool,
    pub four_octet_as: bool,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Sent after the global IPv6 next hop (32-byte next hop, RFC 2545
    /// section 3) when the peer shares the link.
    pub next_hop_v6_link_local: Option<Ipv6Addr>,
    /// IPv4 routes go in MP_REACH_NLRI with the IPv6 next hop (RFC 8950,
    /// negotiated, and no IPv4 next hop).
    pub v4_via_v6: bool,
    /// The peer's default attributes: communities merged into every
    /// route's, LOCAL_PREF where the route has none.
    pub defaults: RouteAttrs,
    /// What a route's `peers` may call this peer: its name, its address.
    pub names: Vec<String>,
}

impl SendCtx {
    /// The attributes as this peer receives them: what [`path_attrs`]
    /// encodes, and what the Adj-RIB-Out diff compares and groups on.
    pub fn seen(&self, a: &RouteAttrs) -> RouteAttrs {
        RouteAttrs {
            communities: merged(&a.communities, &self.defaults.communities),
            large_communities: merged(&a.large_communities, &self.defaults.large_communities),
            med: a.med,
            local_pref: (!self.ebgp)
                .then(|| a.local_pref.or(self.defaults.local_pref).unwrap_or(100)),
            peers: Vec::new(),
        }
    }
}

/// Why a route cannot be encoded for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the session has no next hop for the family")]
    NoNextHop,
    /// The attributes with one prefix would make a message longer than
    /// 4,096 bytes.
    #[error("its attributes need {need} bytes; one UPDATE has room for {room} beside the prefix")]
    TooLarge { need: usize, room: usize },
}

/// Bytes of one UPDATE left for path attributes and NLRI (header, and the
/// two length fields, taken off).
pub const ATTR_ROOM: usize = MAX_MESSAGE_LEN - HEADER_LEN - 4;

/// What every attribute but the communities may take in the worst session
/// context, with one /128 beside them: ORIGIN 4, AS_PATH 7 plus AS4_PATH 9
/// (eBGP to a 2-octet peer from a 4-octet AS), MP_REACH_NLRI 41 with a
/// link-local next hop and a 17-byte /128, MED 7, LOCAL_PREF 7, and the
/// 4-byte headers of COMMUNITIES and LARGE_COMMUNITIES.
pub const FIXED_WORST: usize = 4 + 7 + 9 + 41 + 17 + 7 + 7 + 4 + 4;

/// The bytes of community values (4 a standard one, 12 a large one) that
/// fit in one UPDATE beside everything else in any session context:
/// 3,973, e.g. 993 communities or 331 large ones.
pub const COMMUNITY_ROOM: usize = ATTR_ROOM - FIXED_WORST;

// The figure the configuration and the intent check routes against.
const _: () = assert!(crate::bgp::attrs::COMMUNITY_ROOM == COMMUNITY_ROOM);

pub use crate::bgp::attrs::community_bytes;

impl SendCtx {
    /// The attributes as this peer receives a route of family `afi`, or
    /// why it is not sent it (the route is for other peers, or does not
    /// fit: see [`fits`]): the Adj-RIB-Out's view of this peer.
    pub fn receives(&self, a: &RouteAttrs, afi: Afi) -> Result<RouteAttrs, Skip> {
        if !a.for_peer(self.names.iter().map(String::as_str)) {
            return Err(Skip::NotForPeer);
        }
        fits(a, afi, self)
            .map(|()| self.seen(a))
            .map_err(|_| Skip::TooLarge)
    }
}

fn push_attr(out: &mut Vec<u8>, flags: u8, t: u8, v: &[u8]) {
    if v.len() > 255 {
        out.extend_from_slice(&[flags | FLAG_EXTENDED, t]);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, t, v.len() as u8]);
    }
    out.extend_from_slice(v);
}

/// Path attributes shared by a group, except MP_REACH_NLRI; NEXT_HOP is
/// included for IPv4. Refused when they would not fit in one UPDATE with
/// the longest prefix of the family (see [`fits`]).
pub fn path_attrs(a: &RouteAttrs, afi: Afi, ctx: &SendCtx) -> Result<Vec<u8>, EncodeError> {
    let a = &ctx.seen(a);
    // Checked before anything is built: a value past 65,535 bytes could
    // not even be written, and no allocation follows a tenant's count.
    let room = ATTR_ROOM - reach_overhead(afi, ctx) - max_nlri_len(afi);
    if community_bytes(a) > room {
        return Err(EncodeError::TooLarge {
            need: community_bytes(a),
            room,
        });
    }
    let mut out = Vec::with_capacity(64);
    push_attr(&mut out, FLAG_TRANSITIVE, ORIGIN, &[0]);
    push_attr(&mut out, FLAG_TRANSITIVE, AS_PATH, &as_path(ctx));
    if afi == Afi::Ipv4 && !ctx.v4_via_v6 {
        push_attr(
            &mut out,
            FLAG_TRANSITIVE,
            NEXT_HOP,
            &ctx.next_hop_v4.ok_or(EncodeError::NoNextHop)?.octets(),
        );
    }
    if let Some(m) = a.med {
        push_attr(&mut out, FLAG_OPTIONAL, MED, &m.to_be_bytes());
    }
    if let Some(lp) = a.local_pref {
        push_attr(&mut out, FLAG_TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        push_attr(&mut out, FLAG_OPTIONAL | FLAG_TRANSITIVE, COMMUNITIES, &v);
    }
    if ctx.ebgp && !ctx.four_octet_as && ctx.local_asn > 0xffff {
        push_attr(
            &mut out,
            FLAG_OPTIONAL | FLAG_TRANSITIVE,
            AS4_PATH,
            &sequence(&ctx.local_asn.to_be_bytes()),
        );
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|c| c.iter().flat_map(|x| x.to_be_bytes()))
            .collect();
        push_attr(
            &mut out,
            FLAG_OPTIONAL | FLAG_TRANSITIVE,
            LARGE_COMMUNITIES,
            &v,
        );
    }
    if out.len() > room {
        return Err(EncodeError::TooLarge {
            need: out.len(),
            room,
        });
    }
    Ok(out)
}

/// AS_PATH as the peer receives it: empty over iBGP; over eBGP an
/// AS_SEQUENCE of our AS, as AS_TRANS to a 2-octet peer from a 4-octet AS
/// (the real one then goes in AS4_PATH).
fn as_path(ctx: &SendCtx) -> Vec<u8> {
    match (ctx.ebgp, ctx.four_octet_as) {
        (false, _) => vec![],
        (true, true) => sequence(&ctx.local_asn.to_be_bytes()),
        (true, false) => {
            let two = u16::try_from(ctx.local_asn).unwrap_or(AS_TRANS as u16);
            sequence(&two.to_be_bytes())
        }
    }
}

/// An AS_SEQUENCE segment (type 2) of one AS.
fn sequence(asn: &[u8]) -> Vec<u8> {
    [&[2, 1][..], asn].concat()
}

/// Whether a route with these attributes reaches this peer in one UPDATE:
/// the Adj-RIB-Out diff leaves out what does not, for this peer alone.
pub fn fits(a: &RouteAttrs, afi: Afi, ctx: &SendCtx) -> Result<(), EncodeError> {
    path_attrs(a, afi, ctx).map(drop)
}

/// The MP_REACH_NLRI attribute without its NLRI: header, AFI, SAFI, next
/// hop length, next hop (16 or 32 bytes), reserved byte. None for IPv4
/// with an IPv4 next hop.
fn reach_overhead(afi: Afi, ctx: &SendCtx) -> usize {
    match afi {
        Afi::Ipv4 if !ctx.v4_via_v6 => 0,
        _ => 4 + 3 + 1 + v6_next_hop_len(ctx) + 1,
    }
}

/// The global IPv6 next hop, and the link-local after it when the peer
/// shares the link (RFC 2545 section 3).
fn v6_next_hop_len(ctx: &SendCtx) -> usize {
    if ctx.next_hop_v6_link_local.is_some() {
        32
    } else {
        16
    }
}

fn max_nlri_len(afi: Afi) -> usize {
    1 + usize::from(afi.max_len()).div_ceil(8)
}

fn merged<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut v: Vec<T> = a.iter().chain(b).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn nlri_len(p: &IpNet) -> usize {
    1 + (p.prefix_len() as usize).div_ceil(8)
}

fn push_nlri(out: &mut Vec<u8>, p: &IpNet) {
    let n = (p.prefix_len() as usize).div_ceil(8);
    out.push(p.prefix_len());
    match p {
        IpNet::V4(v) => out.extend_from_slice(&v.network().octets()[..n]),
        IpNet::V6(v) => out.extend_from_slice(&v.network().octets()[..n]),
    }
}

/// Space left for NLRI in one message after fixed parts of `fixed` bytes
/// ([`path_attrs`] keeps `fixed` below [`ATTR_ROOM`]).
const fn room(fixed: usize) -> usize {
    ATTR_ROOM - fixed
}

/// Appends UPDATEs announcing `prefixes` (all of family `afi`) with one set
/// of attributes, as few messages as fit. Returns the number of messages;
/// nothing is appended when the attributes cannot be sent (no next hop for
/// the family, or too large for one message).
pub fn announce(
    out: &mut Vec<u8>,
    prefixes: &[IpNet],
    a: &RouteAttrs,
    afi: Afi,
    ctx: &SendCtx,
) -> Result<usize, EncodeError> {
    let attrs = path_attrs(a, afi, ctx)?;
    let mut msgs = 0;
    match afi {
        Afi::Ipv4 if !ctx.v4_via_v6 => {
            let cap = room(attrs.len());
            for chunk in chunks(prefixes, cap) {
                let nl: usize = chunk.iter().map(nlri_len).sum();
                push_header(out, 4 + attrs.len() + nl, MsgType::Update);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
                out.extend_from_slice(&attrs);
                chunk.iter().for_each(|p| push_nlri(out, p));
                msgs += 1;
            }
        }
        // IPv6, or IPv4 with the IPv6 next hop (RFC 8950).
        _ => {
            let nh = ctx.next_hop_v6.ok_or(EncodeError::NoNextHop)?;
            // MP_REACH goes first (RFC 7606 5.1): 4-byte attribute header,
            // AFI, SAFI, next-hop length, next hop, reserved byte.
            let ll = ctx.next_hop_v6_link_local;
            let nh_len = v6_next_hop_len(ctx);
            let mp_fixed = reach_overhead(afi, ctx);
            let cap = room(attrs.len() + mp_fixed);
            for chunk in chunks(prefixes, cap) {
                let nl: usize = chunk.iter().map(nlri_len).sum();
                let mp_len = mp_fixed - 4 + nl;
                push_header(out, 4 + 4 + mp_len + attrs.len(), MsgType::Update);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&((4 + mp_len + attrs.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[FLAG_OPTIONAL | FLAG_EXTENDED, MP_REACH]);
                out.extend_from_slice(&(mp_len as u16).to_be_bytes());
                out.extend_from_slice(&afi.code().to_be_bytes());
                out.extend_from_slice(&[SAFI_UNICAST, nh_len as u8]);
                out.extend_from_slice(&nh.octets());
                if let Some(ll) = ll {
                    out.extend_from_slice(&ll.octets());
                }
                out.push(0);
                chunk.iter().for_each(|p| push_nlri(out, p));
                out.extend_from_slice(&attrs);
                msgs += 1;
            }
        }
    }
    Ok(msgs)
}

/// Appends UPDATEs withdrawing `prefixes` (all of family `afi`).
pub fn withdraw(out: &mut Vec<u8>, prefixes: &[IpNet], afi: Afi) -> usize {
    let mut msgs = 0;
    match afi {
        Afi::Ipv4 => {
            for chunk in chunks(prefixes, room(0)) {
                let nl: usize = chunk.iter().map(nlri_len).sum();
                push_header(out, 4 + nl, MsgType::Update);
                out.extend_from_slice(&(nl as u16).to_be_bytes());
                chunk.iter().for_each(|p| push_nlri(out, p));
                out.extend_from_slice(&[0, 0]);
                msgs += 1;
            }
        }
        Afi::Ipv6 => {
            for chunk in chunks(prefixes, room(4 + 3)) {
                let nl: usize = chunk.iter().map(nlri_len).sum();
                push_unreach(out, afi, nl);
                chunk.iter().for_each(|p| push_nlri(out, p));
                msgs += 1;
            }
        }
    }
    msgs
}

fn push_unreach(out: &mut Vec<u8>, afi: Afi, nl: usize) {
    push_header(out, 4 + 4 + 3 + nl, MsgType::Update);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&((4 + 3 + nl) as u16).to_be_bytes());
    out.extend_from_slice(&[FLAG_OPTIONAL | FLAG_EXTENDED, MP_UNREACH]);
    out.extend_from_slice(&((3 + nl) as u16).to_be_bytes());
    out.extend_from_slice(&afi.code().to_be_bytes());
    out.push(SAFI_UNICAST);
}

/// The End-of-RIB marker (RFC 4724 2): an empty UPDATE for IPv4 unicast, an
/// empty MP_UNREACH_NLRI for other families.
pub fn end_of_rib(out: &mut Vec<u8>, afi: Afi) {
    match afi {
        Afi::Ipv4 => {
            push_header(out, 4, MsgType::Update);
            out.extend_from_slice(&[0, 0, 0, 0]);
        }
        Afi::Ipv6 => push_unreach(out, afi, 0),
    }
}

/// Splits prefixes into runs whose NLRI encoding fits `cap` bytes.
fn chunks(prefixes: &[IpNet], cap: usize) -> impl Iterator<Item = &[IpNet]> {
    let mut rest = prefixes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut used = 0;
        let mut n = 0;
        for p in rest {
            let l = nlri_len(p);
            if used + l > cap {
                break;
            }
            used += l;
            n += 1;
        }
        let (a, b) = rest.split_at(n.max(1));
        rest = b;
        Some(a)
    })
}
