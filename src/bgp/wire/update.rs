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
    pub treat_as_withdraw: Option<Finding>,
    /// Attributes dropped under RFC 7606 "attribute discard", with why.
    pub discarded: Vec<Finding>,
    /// The message rebuilt from the attributes that passed, with duplicates
    /// and discarded attributes removed: the only bytes zettabgp sees.
    pub sanitized: Vec<u8>,
}

/// A problem RFC 7606 answers without a reset (attribute discard or
/// treat-as-withdraw): which attribute, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The attribute's type code; `None` for the attribute list itself.
    pub attr: Option<u8>,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The list ends inside an attribute, this many octets before its end.
    ListEndsInside {
        left: usize,
    },
    Duplicate,
    Flags(u8),
    /// LOCAL_PREF, ORIGINATOR_ID or CLUSTER_LIST from an external peer.
    FromExternalPeer,
    /// A length the attribute cannot have.
    Length(usize),
    /// A value it cannot have, as the attribute's own text says.
    Value(String),
    /// Mandatory attributes absent from a message that announces.
    Missing(Vec<&'static str>),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let t = self.attr.unwrap_or(0);
        match &self.reason {
            Reason::ListEndsInside { left } => write!(
                f,
                "attribute list ends inside an attribute ({left} octets left)"
            ),
            Reason::Duplicate => write!(f, "duplicate attribute {t}"),
            Reason::Flags(flags) => write!(f, "attribute {t} has flags {flags:#04x}"),
            Reason::FromExternalPeer => write!(f, "attribute {t} from an external peer"),
            Reason::Length(len) => write!(f, "{} length {len}", attr_name(t)),
            Reason::Value(v) => write!(f, "{v}"),
            Reason::Missing(m) => write!(f, "missing {}", m.join(", ")),
        }
    }
}

fn attr_name(t: u8) -> String {
    match t {
        ORIGIN => "ORIGIN".into(),
        NEXT_HOP => "NEXT_HOP".into(),
        CLUSTER_LIST => "CLUSTER_LIST".into(),
        COMMUNITIES => "COMMUNITIES".into(),
        EXT_COMMUNITIES => "EXTENDED COMMUNITIES".into(),
        LARGE_COMMUNITIES => "LARGE_COMMUNITIES".into(),
        _ => format!("attribute {t}"),
    }
}

fn finding(t: u8, reason: Reason) -> Finding {
    Finding {
        attr: Some(t),
        reason,
    }
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

/// What to do with one attribute whose flags are right.
enum Verdict {
    /// Valid: handed on to zettabgp.
    Keep,
    /// Valid, but vipd has no use for it: not handed on.
    Skip,
    Discard(Reason),
    TreatAsWithdraw(Reason),
}

/// The parts of an UPDATE body, each length checked.
struct Parts<'a> {
    withdrawn: &'a [u8],
    attrs: &'a [u8],
    nlri: &'a [u8],
}

fn parts(body: &[u8]) -> Result<Parts<'_>, Notification> {
    let malformed_list = || Notification::new(code::UPDATE, code::MALFORMED_ATTR_LIST);
    let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    if 2 + wlen + 2 > body.len() {
        return Err(malformed_list());
    }
    let alen = u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]) as usize;
    let attrs_at = 4 + wlen;
    if attrs_at + alen > body.len() {
        return Err(malformed_list());
    }
    Ok(Parts {
        withdrawn: &body[2..2 + wlen],
        attrs: &body[attrs_at..attrs_at + alen],
        nlri: &body[attrs_at + alen..],
    })
}

/// The walk over one attribute list: what was seen, kept and found.
struct Walk<'a> {
    parts: Parts<'a>,
    ctx: Ctx,
    out: Checked,
    seen: [bool; 256],
    kept: Vec<u8>,
    taw: Option<Finding>,
    mp_reach: bool,
}

/// Checks an UPDATE body (after the 19-byte header).
pub fn check(body: &[u8], ctx: Ctx) -> Result<Checked, Notification> {
    let parts = parts(body)?;
    let invalid_net = |_| Notification::new(code::UPDATE, code::INVALID_NETWORK);
    let out = Checked {
        withdrawn: walk_prefixes(parts.withdrawn, Afi::Ipv4, |_, _| {}).map_err(invalid_net)?,
        announced: walk_prefixes(parts.nlri, Afi::Ipv4, |_, _| {}).map_err(invalid_net)?,
        ..Default::default()
    };
    let mut w = Walk {
        kept: Vec::with_capacity(parts.attrs.len()),
        parts,
        ctx,
        out,
        seen: [false; 256],
        taw: None,
        mp_reach: false,
    };
    w.attributes()?;
    w.missing();
    Ok(w.finish(body))
}

impl Walk<'_> {
    fn attributes(&mut self) -> Result<(), Notification> {
        let mut p = self.parts.attrs;
        while !p.is_empty() {
            let Some((flags, t, hl, len)) = attr_header(p) else {
                // RFC 7606 4: an attribute that runs past the list, or too
                // few octets left for one, is treat-as-withdraw, the NLRI
                // field being located by the total attribute length. Nothing
                // after this point can be another attribute, so every
                // MP_REACH or MP_UNREACH was found, unless this is one: then
                // its NLRI cannot be located and only a reset is left (RFC
                // 7606 5.3).
                if p.len() >= 2 && (p[1] == MP_REACH || p[1] == MP_UNREACH) {
                    return Err(Notification::new(code::UPDATE, code::MALFORMED_ATTR_LIST));
                }
                let reason = Reason::ListEndsInside { left: p.len() };
                self.taw.get_or_insert(Finding { attr: None, reason });
                return Ok(());
            };
            self.attribute(flags, t, &p[..hl + len], hl)?;
            p = &p[hl + len..];
        }
        Ok(())
    }

    /// One attribute (`whole`: header and value).
    fn attribute(&mut self, flags: u8, t: u8, whole: &[u8], hl: usize) -> Result<(), Notification> {
        if std::mem::replace(&mut self.seen[t as usize], true) {
            if t == MP_REACH || t == MP_UNREACH {
                return Err(Notification::new(code::UPDATE, code::MALFORMED_ATTR_LIST));
            }
            self.out.discarded.push(finding(t, Reason::Duplicate));
            return Ok(());
        }
        let Some(want) = expected_flags(t) else {
            if flags & FLAG_OPTIONAL == 0 {
                return Err(attr_err(code::UNRECOGNIZED_WELL_KNOWN, whole));
            }
            // Unknown optional attributes are valid; vipd has no use for them.
            return Ok(());
        };
        let bad_flags = flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != want
            || (want & FLAG_OPTIONAL == 0 && flags & FLAG_PARTIAL != 0);
        if bad_flags {
            // RFC 7606 3(c): treat-as-withdraw. MP_REACH/MP_UNREACH are
            // still walked below: their NLRI are what gets withdrawn, and a
            // syntax error there still resets (RFC 7606 5.3).
            self.taw.get_or_insert(finding(t, Reason::Flags(flags)));
            if t != MP_REACH && t != MP_UNREACH {
                return Ok(());
            }
        }
        let v = &whole[hl..];
        let verdict = match t {
            MP_REACH | MP_UNREACH => self.multiprotocol(t, whole, v)?,
            _ => verdict(t, v, self.ctx),
        };
        match verdict {
            // Walked for its NLRI, but not handed on.
            Verdict::Keep if bad_flags => {}
            Verdict::Keep if t == MP_REACH => {
                // RFC 4760 3: the byte after the next hop is reserved and
                // ignored on receipt; zettabgp would read it as an RFC 2858
                // SNPA count, so it goes to zettabgp as zero.
                let at = self.kept.len() + hl + 4 + v[3] as usize;
                self.kept.extend_from_slice(whole);
                self.kept[at] = 0;
            }
            Verdict::Keep => self.kept.extend_from_slice(whole),
            Verdict::Skip => {}
            Verdict::Discard(r) => self.out.discarded.push(finding(t, r)),
            Verdict::TreatAsWithdraw(r) => {
                self.taw.get_or_insert(finding(t, r));
            }
        }
        Ok(())
    }

    /// MP_REACH_NLRI and MP_UNREACH_NLRI: a syntax error resets (RFC 7606
    /// 5.3); a family never negotiated is ignored (RFC 4760 7) and kept
    /// from zettabgp, which has no business parsing it.
    fn multiprotocol(&mut self, t: u8, whole: &[u8], v: &[u8]) -> Result<Verdict, Notification> {
        let err = |_| attr_err(code::OPTIONAL_ATTR_ERROR, whole);
        if t == MP_REACH {
            let Some(n) = check_mp_reach(v).map_err(err)? else {
                return Ok(Verdict::Skip);
            };
            self.mp_reach = true;
            self.out.announced += n;
            return Ok(Verdict::Keep);
        }
        let (n, afi) = check_mp_unreach(v).map_err(err)?;
        let Some(afi) = afi else {
            return Ok(Verdict::Skip);
        };
        self.out.withdrawn += n;
        let p = &self.parts;
        if n == 0 && p.attrs.len() == whole.len() && p.nlri.is_empty() && p.withdrawn.is_empty() {
            self.out.end_of_rib = Some(afi);
        }
        Ok(Verdict::Keep)
    }

    /// RFC 7606 3(d): a message that announces without ORIGIN, AS_PATH
    /// or (for IPv4 NLRI) NEXT_HOP is treat-as-withdraw.
    fn missing(&mut self) {
        let nlri = !self.parts.nlri.is_empty();
        if !nlri && !self.mp_reach {
            return;
        }
        let m: Vec<&'static str> = [
            (ORIGIN, "ORIGIN", true),
            (AS_PATH, "AS_PATH", true),
            (NEXT_HOP, "NEXT_HOP", nlri),
        ]
        .into_iter()
        .filter(|(t, _, needed)| *needed && !self.seen[*t as usize])
        .map(|(_, name, _)| name)
        .collect();
        if !m.is_empty() {
            let reason = Reason::Missing(m);
            self.taw.get_or_insert(Finding { attr: None, reason });
        }
    }

    fn finish(mut self, body: &[u8]) -> Checked {
        if body.len() == 4 {
            self.out.end_of_rib = Some(Afi::Ipv4);
        }
        if self.out.announced > 0 {
            self.out.treat_as_withdraw = self.taw;
        }
        if self.out.treat_as_withdraw.is_none() {
            let p = &self.parts;
            let mut s = Vec::with_capacity(body.len());
            s.extend_from_slice(&((p.withdrawn.len()) as u16).to_be_bytes());
            s.extend_from_slice(p.withdrawn);
            s.extend_from_slice(&(self.kept.len() as u16).to_be_bytes());
            s.extend_from_slice(&self.kept);
            s.extend_from_slice(p.nlri);
            self.out.sanitized = s;
        }
        self.out
    }
}

/// One attribute's value, other than MP_REACH and MP_UNREACH.
fn verdict(t: u8, v: &[u8], ctx: Ctx) -> Verdict {
    use Verdict::{Discard, Keep, Skip, TreatAsWithdraw as Taw};
    let len = v.len();
    let asn_size = if ctx.four_octet_as { 4 } else { 2 };
    match t {
        ORIGIN => match v {
            [0..=2] => Keep,
            [x] => Taw(Reason::Value(format!("ORIGIN value {x}"))),
            _ => Taw(Reason::Length(len)),
        },
        AS_PATH => {
            check_as_path(v, asn_size, ctx.ebgp).map_or_else(|e| Taw(Reason::Value(e)), |_| Keep)
        }
        NEXT_HOP => match v {
            [a, b, c, d] => {
                let ip = std::net::Ipv4Addr::new(*a, *b, *c, *d);
                if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                    Taw(Reason::Value(format!("NEXT_HOP {ip}")))
                } else {
                    Keep
                }
            }
            _ => Taw(Reason::Length(len)),
        },
        // RFC 7606 7.5: from an external peer, discarded whatever its
        // length; 7.9 and 7.10 likewise for ORIGINATOR_ID, CLUSTER_LIST.
        LOCAL_PREF | ORIGINATOR_ID | CLUSTER_LIST if ctx.ebgp => Discard(Reason::FromExternalPeer),
        MED | LOCAL_PREF | ORIGINATOR_ID if len != 4 => Taw(Reason::Length(len)),
        // Checked, but never handed on: zettabgp has no use for them.
        ORIGINATOR_ID => Skip,
        CLUSTER_LIST if len == 0 || len % 4 != 0 => Taw(Reason::Length(len)),
        CLUSTER_LIST => Skip,
        COMMUNITIES if len == 0 || len % 4 != 0 => Taw(Reason::Length(len)),
        EXT_COMMUNITIES if len == 0 || len % 8 != 0 => Taw(Reason::Length(len)),
        LARGE_COMMUNITIES if len == 0 || len % 12 != 0 => Taw(Reason::Length(len)),
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_AGGREGATOR | AS4_PATH => {
            let ok = match t {
                ATOMIC_AGGREGATE => len == 0,
                AGGREGATOR => len == asn_size + 4,
                // RFC 6793 4.1: only a 2-octet speaker may send it.
                AS4_AGGREGATOR => !ctx.four_octet_as && len == 8,
                // RFC 6793 4.1: only a 2-octet speaker may send AS4_PATH.
                _ => !ctx.four_octet_as && check_as_path(v, 4, false).is_ok(),
            };
            if ok {
                Keep
            } else {
                Discard(Reason::Length(len))
            }
        }
        _ => Keep,
    }
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
                            peer_as: super::open::PeerAs::Number(o.asn()),
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
