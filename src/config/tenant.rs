//! What the people who write Services may put into the routes: which
//! communities, large communities, LOCAL_PREF and MED values their
//! annotations may set (`[kubernetes] service_*`), and how many bytes of
//! community values one route may carry so that every UPDATE fits in 4,096
//! bytes whatever the session (checked for `[[announce]]` by
//! `check-config`, for Services by the intent).

use config::Value;

use super::{parse_list, parse_str, Errs};
pub use crate::bgp::attrs::{community_bytes, COMMUNITY_ROOM};

/// Kept free in every route for the drain's GRACEFUL_SHUTDOWN (65535:0).
pub const DRAIN_RESERVE: usize = 4;

/// The most values one `vipd.io/communities` annotation may carry.
pub const MAX_ANNOTATION_COMMUNITIES: usize = 64;
/// The most values one `vipd.io/large-communities` annotation may carry.
pub const MAX_ANNOTATION_LARGE_COMMUNITIES: usize = 32;

/// One field of a pattern: a value, an inclusive range, or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub low: u32,
    pub high: u32,
}

impl Span {
    fn contains(&self, v: u32) -> bool {
        self.low <= v && v <= self.high
    }

    /// `*`, `N` or `LOW-HIGH`, within `0..=max`.
    fn parse(s: &str, max: u32) -> Result<Span, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Span { low: 0, high: max });
        }
        let num = |x: &str| -> Result<u32, String> {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{x:?} is not *, a number from 0 to {max}, or LOW-HIGH"))
        };
        let (low, high) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if low > high {
            return Err(format!("{s:?}: the range is empty"));
        }
        Ok(Span { low, high })
    }
}

/// `"ASN:VALUE"` with each half a [`Span`], e.g. `"65010:100-199"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommunityPattern(pub [Span; 2]);

impl CommunityPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not ASN:VALUE"))?;
        let f = |x| Span::parse(x, 65535).map_err(|e| format!("{s:?}: {e}"));
        Ok(CommunityPattern([f(a)?, f(b)?]))
    }
    pub fn matches(&self, c: u32) -> bool {
        self.0[0].contains(c >> 16) && self.0[1].contains(c & 0xffff)
    }
}

/// `"GLOBAL:LOCAL1:LOCAL2"` with each part a [`Span`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargePattern(pub [Span; 3]);

impl LargePattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [a, b, c] = parts[..] else {
            return Err(format!("{s:?} is not GLOBAL:LOCAL1:LOCAL2"));
        };
        let f = |x| Span::parse(x, u32::MAX).map_err(|e| format!("{s:?}: {e}"));
        Ok(LargePattern([f(a)?, f(b)?, f(c)?]))
    }
    pub fn matches(&self, c: &[u32; 3]) -> bool {
        self.0.iter().zip(c).all(|(s, v)| s.contains(*v))
    }
}

/// What Services' annotations may set. A value outside is dropped (with
/// an Event); the rest of the Service's attributes still apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAttrPolicy {
    pub communities: Vec<CommunityPattern>,
    pub large_communities: Vec<LargePattern>,
    pub local_pref: Span,
    pub med: Span,
}

impl Default for ServiceAttrPolicy {
    /// Every community but the two ranges RFC 1997 reserves: 0:* and
    /// 65535:*, which hold every well-known community (NO_EXPORT,
    /// NO_ADVERTISE, BLACKHOLE, GRACEFUL_SHUTDOWN, ...) and, at many
    /// route servers, 0:ASN "do not announce to". Every large community
    /// (RFC 8092 defines no well-known ones), LOCAL_PREF and MED.
    fn default() -> Self {
        ServiceAttrPolicy {
            communities: vec![CommunityPattern([
                Span {
                    low: 1,
                    high: 65534,
                },
                Span {
                    low: 0,
                    high: 65535,
                },
            ])],
            large_communities: vec![LargePattern(
                [Span {
                    low: 0,
                    high: u32::MAX,
                }; 3],
            )],
            local_pref: Span {
                low: 0,
                high: u32::MAX,
            },
            med: Span {
                low: 0,
                high: u32::MAX,
            },
        }
    }
}

impl ServiceAttrPolicy {
    pub fn community_allowed(&self, c: u32) -> bool {
        self.communities.iter().any(|p| p.matches(c))
    }
    pub fn large_allowed(&self, c: &[u32; 3]) -> bool {
        self.large_communities.iter().any(|p| p.matches(c))
    }
    pub fn local_pref_allowed(&self, v: u32) -> bool {
        self.local_pref.contains(v)
    }
    pub fn med_allowed(&self, v: u32) -> bool {
        self.med.contains(v)
    }
}

/// Reads the `service_*` keys of `[kubernetes]`.
pub(super) fn read_policy(t: &mut super::Tbl, errs: &mut Errs) -> ServiceAttrPolicy {
    let d = ServiceAttrPolicy::default();
    // A number is a range of one; parse_str takes numbers as text.
    let range = |v: Value| Span::parse(&parse_str(v)?, u32::MAX);
    ServiceAttrPolicy {
        communities: t
            .opt("service_communities", errs, |v| {
                parse_list(v, CommunityPattern::parse)
            })
            .unwrap_or(d.communities),
        large_communities: t
            .opt("service_large_communities", errs, |v| {
                parse_list(v, LargePattern::parse)
            })
            .unwrap_or(d.large_communities),
        local_pref: t
            .opt("service_local_pref", errs, range)
            .unwrap_or(d.local_pref),
        med: t.opt("service_med", errs, range).unwrap_or(d.med),
    }
}

/// `external_ips` needs `allowed_prefixes`: any user who can create a
/// Service could otherwise announce any address, a public resolver's say,
/// into the fabric (the BGP form of CVE-2020-8554).
pub(super) fn check_external_ips(
    key: &str,
    external_ips: bool,
    allowed: &[ipnet::IpNet],
    errs: &mut Errs,
) {
    if external_ips && allowed.is_empty() && !errs.has(&format!("{key}.allowed_prefixes")) {
        errs.push(
            format!("{key}.external_ips"),
            "needs allowed_prefixes: without it any Service's spec.externalIPs, any address at all, would be announced",
        );
    }
}

/// `check-config`: each `[[announce]]` entry's communities, with the
/// largest peer defaults and the drain's reserve, must fit in one UPDATE.
/// Returns the room left for a Service's communities.
pub(super) fn check_room(
    announce: &[super::Announce],
    peers: &[super::PeerConfig],
    errs: &mut Errs,
) -> usize {
    let mut defaults = 0;
    for (i, p) in peers.iter().enumerate() {
        let b = community_bytes(&p.defaults);
        if b + DRAIN_RESERVE > COMMUNITY_ROOM {
            errs.push(
                format!("bgp.peers[{i}].communities"),
                too_many(
                    b,
                    COMMUNITY_ROOM - DRAIN_RESERVE,
                    "the drain's GRACEFUL_SHUTDOWN",
                ),
            );
        }
        defaults = defaults.max(b);
    }
    let room = COMMUNITY_ROOM.saturating_sub(defaults + DRAIN_RESERVE);
    for (i, a) in announce.iter().enumerate() {
        let b = community_bytes(&a.attrs);
        if b > room {
            errs.push(
                format!("announce[{i}].communities"),
                too_many(
                    b,
                    room,
                    "the peers' default communities and the drain's GRACEFUL_SHUTDOWN",
                ),
            );
        }
    }
    room
}

fn too_many(bytes: usize, room: usize, beside: &str) -> String {
    format!(
        "these communities take {bytes} bytes; beside {beside}, one 4,096-byte UPDATE has room for {room} \
         (at most {} communities, or {} large communities)",
        room / 4,
        room / 12
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_values_ranges_and_stars() {
        let p = CommunityPattern::parse("65010:100-199").unwrap();
        assert!(p.matches((65010 << 16) | 100) && p.matches((65010 << 16) | 199));
        assert!(!p.matches((65010 << 16) | 200) && !p.matches((65010 << 16) | 99));
        assert!(!p.matches((65011 << 16) | 150));
        let star = CommunityPattern::parse("65010:*").unwrap();
        assert!(star.matches(65010 << 16) && star.matches((65010 << 16) | 65535));
        assert!(CommunityPattern::parse("65010").is_err());
        assert!(CommunityPattern::parse("65536:1").is_err());
        assert!(CommunityPattern::parse("1:9-3").is_err());
        let l = LargePattern::parse("65010:1-2:*").unwrap();
        assert!(l.matches(&[65010, 2, 7]) && !l.matches(&[65010, 3, 7]));
        assert!(LargePattern::parse("1:2").is_err());
    }

    #[test]
    fn the_default_allows_no_well_known_or_reserved_community() {
        let d = ServiceAttrPolicy::default();
        for wk in [
            0xFFFF_029A_u32,
            0xFFFF_FF01,
            0xFFFF_FF02,
            0xFFFF_0000,
            0,
            65010,
        ] {
            assert!(!d.community_allowed(wk), "{wk:#x}");
        }
        assert!(d.community_allowed((1 << 16) | 0xffff));
        assert!(d.community_allowed((65534 << 16) | 666));
        assert!(d.large_allowed(&[0, 0, 0]) && d.local_pref_allowed(u32::MAX));
    }
}
