//! Checking a received UPDATE (RFC 4271 6.3, RFC 7606, RFC 4760, RFC 6793).
//!
//! vipd does not use what peers announce, but it must still tell a message
//! that has to reset the session from one whose routes are merely to be
//! treated as withdrawn, and it must never hand zettabgp bytes that could
//! crash or hang it. [`check`] walks every length in the message; only a
//! message it accepts reaches [`decode`].

use std::panic::{catch_unwind, AssertUnwindSafe};

use zettabgp::prelude::{BgpMessage, BgpSessionParams, BgpTransportMode, BgpUpdateMessage};

use super::{code, walk_prefixes, Afi, Notification, AFI_IPV4, AFI_IPV6, SAFI_UNICAST};

pub const ORIGIN: u8 = 1;
pub const AS_PATH: u8 = 2;
pub const NEXT_HOP: u8 = 3;
pub const MED: u8 = 4;
pub const LOCAL_PREF: u8 = 5;
pub const ATOMIC_AGGREGATE: u8 = 6;
pub const AGGREGATOR: u8 = 7;
pub const COMMUNITIES: u8 = 8;
pub const ORIGINATOR_ID: u8 = 9;
pub const CLUSTER_LIST: u8 = 10;
pub const MP_REACH: u8 = 14;
pub const MP_UNREACH: u8 = 15;
pub const EXT_COMMUNITIES: u8 = 16;
pub const AS4_PATH: u8 = 17;
pub const AS4_AGGREGATOR: u8 = 18;
pub const LARGE_COMMUNITIES: u8 = 32;

pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED: u8 = 0x10;

/// What the session learns from a received UPDATE that passed [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub announced: usize,
    pub withdrawn: usize,
    /// End-of-RIB marker (RFC 4724) for this family.
    pub end_of_rib: Option<Afi>,
    /// RFC 7606 treat-as-withdraw: the announced routes are void, with why.
    pub treat_as_withdraw: Option<String>,
    /// Attributes dropped under RFC 7606 "attribute discard", with why.
    pub discarded: Vec<String>,
    /// The message rebuilt from the attributes that passed, with duplicates
    /// and discarded attributes removed: the only bytes zettabgp sees.
    pub sanitized: Vec<u8>,
}

/// The session's view needed to read an UPDATE.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub four_octet_as: bool,
    pub ebgp: bool,
}

/// Expected Optional and Transitive bits of the attributes vipd knows.
fn expected_flags(t: u8) -> Option<u8> {
    Some(match t {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => FLAG_TRANSITIVE,
        MED | MP_REACH | MP_UNREACH | ORIGINATOR_ID | CLUSTER_LIST => FLAG_OPTIONAL,
        AGGREGATOR | COMMUNITIES | EXT_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR
        | LARGE_COMMUNITIES => FLAG_OPTIONAL | FLAG_TRANSITIVE,
        _ => return None,
    })
}

/// Flags, type, header length and value length of the attribute at the
/// start of `p`, when all of it lies within `p`.
fn attr_header(p: &[u8]) -> Option<(u8, u8, usize, usize)> {
    let (flags, t) = (*p.first()?, *p.get(1)?);
    let (hl, len) = if flags & FLAG_EXTENDED != 0 {
        (4, u16::from_be_bytes([*p.get(2)?, *p.get(3)?]) as usize)
    } else {
        (3, *p.get(2)? as usize)
    };
    (p.len() >= hl + len).then_some((flags, t, hl, len))
}

fn attr_err(sub: u8, data: &[u8]) -> Notification {
    Notification::with_data(code::UPDATE, sub, data)
}

/// Checks an UPDATE body (after the 19-byte header).
pub fn check(body: &[u8], ctx: Ctx) -> Result<Checked, Notification> {
    let malformed_list = || Notification::new(code::UPDATE, code::MALFORMED_ATTR_LIST);
    let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    if 2 + wlen + 2 > body.len() {
        return Err(malformed_list());
    }
    let withdrawn = &body[2..2 + wlen];
    let alen = u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]) as usize;
    let attrs_at = 4 + wlen;
    if attrs_at + alen > body.len() {
        return Err(malformed_list());
    }
    let attrs = &body[attrs_at..attrs_at + alen];
    let nlri = &body[attrs_at + alen..];
    let invalid_net = || Notification::new(code::UPDATE, code::INVALID_NETWORK);

    let mut out = Checked {
        withdrawn: walk_prefixes(withdrawn, Afi::Ipv4, |_, _| {}).map_err(|_| invalid_net())?,
        announced: walk_prefixes(nlri, Afi::Ipv4, |_, _| {}).map_err(|_| invalid_net())?,
        ..Default::default()
    };

    let mut seen = [false; 256];
    let mut kept: Vec<u8> = Vec::with_capacity(attrs.len());
    let mut taw: Option<String> = None;
    let mut mp_reach = false;
    let mut p = attrs;
    while !p.is_empty() {
        let Some((flags, t, hl, len)) = attr_header(p) else {
            // RFC 7606 4: an attribute that runs past the list, or too few
            // octets left for one, is treat-as-withdraw, the NLRI field
            // being located by the total attribute length. Nothing after
            // this point can be another attribute, so every MP_REACH or
            // MP_UNREACH was found, unless this is one: then its NLRI cannot
            // be located and only a reset is left (RFC 7606 5.3).
            if p.len() >= 2 && (p[1] == MP_REACH || p[1] == MP_UNREACH) {
                return Err(malformed_list());
            }
            taw.get_or_insert(format!(
                "attribute list ends inside an attribute ({} octets left)",
                p.len()
            ));
            break;
        };
        let whole = &p[..hl + len];
        let v = &p[hl..hl + len];
        p = &p[hl + len..];

        if seen[t as usize] {
            if t == MP_REACH || t == MP_UNREACH {
                return Err(malformed_list());
            }
            out.discarded.push(format!("duplicate attribute {t}"));
            continue;
        }
        seen[t as usize] = true;

        let Some(want) = expected_flags(t) else {
            if flags & FLAG_OPTIONAL == 0 {
                return Err(attr_err(code::UNRECOGNIZED_WELL_KNOWN, whole));
            }
            // Unknown optional attributes are valid; vipd has no use for them.
            continue;
        };
        let bad_flags = flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != want
            || (want & FLAG_OPTIONAL == 0 && flags & FLAG_PARTIAL != 0);
        if bad_flags {
            // RFC 7606 3(c): treat-as-withdraw. MP_REACH/MP_UNREACH are
            // still walked below: their NLRI are what gets withdrawn, and a
            // syntax error there still resets (RFC 7606 5.3).
            taw.get_or_insert(format!("attribute {t} has flags {flags:#04x}"));
            if t != MP_REACH && t != MP_UNREACH {
                continue;
            }
        }
        let asn_size = if ctx.four_octet_as { 4 } else { 2 };
        let verdict: Result<(), String> = match t {
            ORIGIN => match v {
                [0..=2] => Ok(()),
                [x] => Err(format!("ORIGIN value {x}")),
                _ => Err(format!("ORIGIN length {len}")),
            },
            AS_PATH => check_as_path(v, asn_size, ctx.ebgp),
            NEXT_HOP => match v {
                [a, b, c, d] => {
                    let ip = std::net::Ipv4Addr::new(*a, *b, *c, *d);
                    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                        Err(format!("NEXT_HOP {ip}"))
                    } else {
                        Ok(())
                    }
                }
                _ => Err(format!("NEXT_HOP length {len}")),
            },
            // RFC 7606 7.5: from an external peer, discarded whatever its
            // length; 7.9 and 7.10 likewise for ORIGINATOR_ID, CLUSTER_LIST.
            LOCAL_PREF | ORIGINATOR_ID | CLUSTER_LIST if ctx.ebgp => {
                out.discarded
                    .push(format!("attribute {t} from an external peer"));
                continue;
            }
            MED | LOCAL_PREF | ORIGINATOR_ID if len != 4 => {
                Err(format!("attribute {t} length {len}"))
            }
            // Checked, but never handed on: zettabgp has no use for them.
            ORIGINATOR_ID => continue,
            CLUSTER_LIST if len == 0 || len % 4 != 0 => Err(format!("CLUSTER_LIST length {len}")),
            CLUSTER_LIST => continue,
            COMMUNITIES if len == 0 || len % 4 != 0 => Err(format!("COMMUNITIES length {len}")),
            EXT_COMMUNITIES if len == 0 || len % 8 != 0 => {
                Err(format!("EXTENDED COMMUNITIES length {len}"))
            }
            LARGE_COMMUNITIES if len == 0 || len % 12 != 0 => {
                Err(format!("LARGE_COMMUNITIES length {len}"))
            }
            ATOMIC_AGGREGATE | AGGREGATOR | AS4_AGGREGATOR | AS4_PATH => {
                let ok = match t {
                    ATOMIC_AGGREGATE => len == 0,
                    AGGREGATOR => len == asn_size + 4,
                    // RFC 6793 4.1: only a 2-octet speaker may send it.
                    AS4_AGGREGATOR => !ctx.four_octet_as && len == 8,
                    // RFC 6793 4.1: only a 2-octet speaker may send AS4_PATH.
                    _ => !ctx.four_octet_as && check_as_path(v, 4, false).is_ok(),
                };
                if !ok {
                    out.discarded
                        .push(format!("malformed attribute {t} (length {len})"));
                    continue;
                }
                Ok(())
            }
            MP_REACH => {
                let n =
                    check_mp_reach(v).map_err(|_| attr_err(code::OPTIONAL_ATTR_ERROR, whole))?;
                // A family that was never negotiated is ignored (RFC 4760 7),
                // and kept from zettabgp, which has no business parsing it.
                let Some(n) = n else { continue };
                mp_reach = true;
                out.announced += n;
                Ok(())
            }
            MP_UNREACH => {
                let (n, afi) =
                    check_mp_unreach(v).map_err(|_| attr_err(code::OPTIONAL_ATTR_ERROR, whole))?;
                let Some(afi) = afi else { continue };
                out.withdrawn += n;
                if n == 0 && alen == whole.len() && nlri.is_empty() && withdrawn.is_empty() {
                    out.end_of_rib = Some(afi);
                }
                Ok(())
            }
            _ => Ok(()),
        };
        match verdict {
            // Walked for its NLRI, but not handed on.
            Ok(()) if bad_flags => {}
            Ok(()) if t == MP_REACH => {
                // RFC 4760 3: the byte after the next hop is reserved and
                // ignored on receipt; zettabgp would read it as an RFC 2858
                // SNPA count, so it goes to zettabgp as zero.
                let at = kept.len() + hl + 4 + v[3] as usize;
                kept.extend_from_slice(whole);
                kept[at] = 0;
            }
            Ok(()) => kept.extend_from_slice(whole),
            Err(why) => {
                taw.get_or_insert(why);
            }
        }
    }
    if !nlri.is_empty() || mp_reach {
        let mut missing = vec![];
        if !seen[ORIGIN as usize] {
            missing.push("ORIGIN");
        }
        if !seen[AS_PATH as usize] {
            missing.push("AS_PATH");
        }
        if !nlri.is_empty() && !seen[NEXT_HOP as usize] {
            missing.push("NEXT_HOP");
        }
        if !missing.is_empty() {
            taw.get_or_insert(format!("missing {}", missing.join(", ")));
        }
    }
    if body.len() == 4 {
        out.end_of_rib = Some(Afi::Ipv4);
    }
    if taw.is_some() && out.announced > 0 {
        out.treat_as_withdraw = taw;
    }
    if out.treat_as_withdraw.is_none() {
        let mut s = Vec::with_capacity(body.len());
        s.extend_from_slice(&body[..2 + wlen]);
        s.extend_from_slice(&(kept.len() as u16).to_be_bytes());
        s.extend_from_slice(&kept);
        s.extend_from_slice(nlri);
        out.sanitized = s;
    }
    Ok(out)
}

fn check_as_path(mut v: &[u8], asn_size: usize, ebgp: bool) -> Result<(), String> {
    while !v.is_empty() {
        if v.len() < 2 {
            return Err("AS_PATH segment header truncated".into());
        }
        let (st, n) = (v[0], v[1] as usize);
        if !(1..=4).contains(&st) {
            return Err(format!("AS_PATH segment type {st}"));
        }
        if ebgp && (st == 3 || st == 4) {
            return Err("AS_CONFED segment from an external peer".into());
        }
        if n == 0 {
            return Err("empty AS_PATH segment".into());
        }
        if v.len() < 2 + n * asn_size {
            return Err("AS_PATH segment overruns the attribute".into());
        }
        v = &v[2 + n * asn_size..];
    }
    Ok(())
}

fn mp_afi(v: &[u8]) -> Option<Afi> {
    Afi::from_code(u16::from_be_bytes([v[0], v[1]]), v[2])
}

/// Returns the number of prefixes announced, or `None` for a family vipd
/// does not know.
fn check_mp_reach(v: &[u8]) -> Result<Option<usize>, ()> {
    if v.len() < 5 {
        return Err(());
    }
    let nhlen = v[3] as usize;
    if v.len() < 4 + nhlen + 1 {
        return Err(());
    }
    let Some(afi) = mp_afi(v) else {
        return Ok(None);
    };
    let nh_ok = match afi {
        Afi::Ipv4 => nhlen == 4 || nhlen == 16 || nhlen == 32,
        Afi::Ipv6 => nhlen == 16 || nhlen == 32,
    };
    if !nh_ok {
        return Err(());
    }
    walk_prefixes(&v[4 + nhlen + 1..], afi, |_, _| {})
        .map(Some)
        .map_err(|_| ())
}

fn check_mp_unreach(v: &[u8]) -> Result<(usize, Option<Afi>), ()> {
    if v.len() < 3 {
        return Err(());
    }
    let Some(afi) = mp_afi(v) else {
        return Ok((0, None));
    };
    let n = walk_prefixes(&v[3..], afi, |_, _| {}).map_err(|_| ())?;
    Ok((n, Some(afi)))
}

/// zettabgp panicked on bytes [`check`] had accepted: a gap in the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePanic;

/// Decodes a message [`check`] accepted, for the debug log: `Ok(None)` where
/// zettabgp returned an error. It still runs under `catch_unwind`, so a gap
/// in the checks is a logged bug rather than a crash.
pub fn decode(sanitized: &[u8], ctx: Ctx) -> Result<Option<BgpUpdateMessage>, DecodePanic> {
    let mut params = BgpSessionParams::new(
        0,
        0,
        BgpTransportMode::IPv4,
        std::net::Ipv4Addr::UNSPECIFIED,
        vec![],
    );
    params.has_as32bit = ctx.four_octet_as;
    // zettabgp otherwise guesses whether NLRI carry ADD-PATH path IDs, and
    // a wrong guess overflows; vipd never negotiates ADD-PATH.
    params.fuzzy_pathid = false;
    catch_unwind(AssertUnwindSafe(|| {
        let mut u = BgpUpdateMessage::new();
        u.decode_from(&params, sanitized).ok().map(|_| u)
    }))
    .map_err(|_| DecodePanic)
}

/// The whole receive path for a byte stream, as a session would walk it:
/// framing and header checks, then each message's own checks, then zettabgp
/// for UPDATEs that passed. Returns how many messages were read, or the
/// first gap found (the fuzz target's oracle).
pub fn receive_all(mut data: &[u8], ctx: Ctx) -> Result<usize, DecodePanic> {
    use super::{check_header, open, MsgType, HEADER_LEN};
    let mut n = 0;
    while data.len() >= HEADER_LEN {
        let h: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().expect("19 bytes");
        let Ok((t, len)) = check_header(h) else { break };
        if data.len() < len {
            break;
        }
        let body = &data[HEADER_LEN..len];
        data = &data[len..];
        n += 1;
        match t {
            MsgType::Open => {
                if let Ok(o) = open::parse(body) {
                    let _ = open::check(
                        &o,
                        &open::Expect {
                            local_asn: 65010,
                            local_id: std::net::Ipv4Addr::new(192, 0, 2, 1),
                            peer_asn: o.asn(),
                        },
                    );
                }
            }
            MsgType::Update => {
                if let Ok(c) = check(body, ctx) {
                    if !c.sanitized.is_empty() {
                        decode(&c.sanitized, ctx)?;
                    }
                }
            }
            MsgType::Notification => {
                let _ = super::Notification::parse(body).to_string();
            }
            MsgType::RouteRefresh => {
                let _ = route_refresh_afi(body);
            }
            MsgType::Keepalive => {}
        }
    }
    Ok(n)
}

/// The AFI/SAFI pair of a well-formed ROUTE-REFRESH body.
pub fn route_refresh_afi(body: &[u8]) -> Option<Afi> {
    match (u16::from_be_bytes([body[0], body[1]]), body[3]) {
        (AFI_IPV4, SAFI_UNICAST) => Some(Afi::Ipv4),
        (AFI_IPV6, SAFI_UNICAST) => Some(Afi::Ipv6),
        _ => None,
    }
}
