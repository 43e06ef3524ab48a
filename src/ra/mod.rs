//! Router Advertisements on the interfaces of unnumbered peers (`interface
//! = "eth1"`): how vipd finds the neighbour's link-local address, and how
//! the neighbour finds vipd's.
//!
//! Why Router Advertisements and not neighbour discovery: a BGP speaker
//! that peers over an interface (FRR's `neighbor eth1 interface`, SONiC,
//! Cumulus) sends them for exactly this, and FRR learns its neighbour from
//! nothing else ("Waiting for Peer IPv6 LLA"). The neighbour cache only
//! holds an address after some traffic with it, which nothing starts.
//! vipd reads them on a raw socket of its own rather than through the
//! kernel, which stops processing them on a node that forwards IPv6 (most
//! Kubernetes nodes).
//!
//! What vipd sends has a router lifetime of 0 (RFC 4861 4.2: "not a
//! default router"), so no host on the link takes the node as its default
//! router; FRR learns the neighbour all the same. This module is the pure
//! part: the messages and what a link makes of them. [`io`] runs one
//! socket per interface.

pub mod io;

use std::net::Ipv6Addr;
use std::time::Duration;

pub const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;

/// How often vipd advertises itself: FRR's interval for interface peers.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How often it tries again while the link is down or its link-local
/// address not usable yet (duplicate address detection): a flapped link
/// is announced on within a second of coming back.
pub const RETRY: Duration = Duration::from_secs(1);

/// A Router Advertisement from vipd (RFC 4861 4.2): no hop limit, no
/// flags, router lifetime 0, no reachable or retransmission time, no
/// options (the link-layer address is optional: a neighbour resolves it
/// when it connects). The checksum is left 0: the kernel fills it in for
/// ICMPv6 sockets.
pub fn advertisement() -> Vec<u8> {
    let mut m = vec![ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&[0; 8]);
    m
}

/// A Router Solicitation (RFC 4861 4.1): a neighbour that sends
/// advertisements answers at once instead of at its next interval.
pub fn solicitation() -> Vec<u8> {
    vec![ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]
}

/// What one received message means to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A valid Router Advertisement from this neighbour.
    Router(Ipv6Addr),
    /// A valid Router Solicitation: answer with an advertisement.
    Solicited,
    /// Not a valid message for us (RFC 4861 6.1.1, 6.1.2: hop limit 255,
    /// code 0, length; a link-local source for an advertisement).
    Nothing,
}

/// Reads one ICMPv6 message received from `from` with `hop_limit`
/// (`None`: the kernel said nothing, which is not 255). vipd's own do not
/// come back: its socket does not loop multicast.
pub fn heard(msg: &[u8], from: Ipv6Addr, hop_limit: Option<u8>) -> Heard {
    if hop_limit != Some(255) || msg.len() < 8 || msg[1] != 0 {
        return Heard::Nothing;
    }
    match msg[0] {
        ROUTER_ADVERTISEMENT if msg.len() >= 16 && from.is_unicast_link_local() => {
            Heard::Router(from)
        }
        ROUTER_SOLICITATION => Heard::Solicited,
        _ => Heard::Nothing,
    }
}

/// One interface's state: the neighbour heard last, and whether the last
/// advertisement went out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Link {
    pub neighbor: Option<Ipv6Addr>,
    failing: bool,
}

/// What to do after sending an advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub after: Duration,
    /// Solicit the neighbour's advertisement too: the link just came (back)
    /// up, and the neighbour may have forgotten vipd or changed.
    pub solicit: bool,
}

impl Link {
    /// A message heard: whether the neighbour changed. A new router
    /// replaces the old one (the link's other end was replaced or
    /// renumbered); the neighbour is kept across a link flap, so the session
    /// comes back to the same address at once.
    pub fn on_heard(&mut self, h: Heard) -> bool {
        match h {
            Heard::Router(a) if self.neighbor != Some(a) => {
                self.neighbor = Some(a);
                true
            }
            _ => false,
        }
    }

    /// The periodic advertisement was sent (`ok`) or could not be.
    pub fn on_sent(&mut self, ok: bool) -> Next {
        let back = ok && self.failing;
        self.failing = !ok;
        Next {
            after: if ok { INTERVAL } else { RETRY },
            solicit: back,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_link_local_router_at_hop_limit_255_is_a_neighbour() {
        let ra = advertisement();
        let r = ll("fe80::1");
        assert_eq!(heard(&ra, r, Some(255)), Heard::Router(r));
        // RFC 4861 6.1.2: from off the link, or not from a link-local address.
        assert_eq!(heard(&ra, r, Some(254)), Heard::Nothing);
        assert_eq!(heard(&ra, r, None), Heard::Nothing);
        assert_eq!(heard(&ra, ll("2001:db8::1"), Some(255)), Heard::Nothing);
        let mut bad_code = ra.clone();
        bad_code[1] = 1;
        assert_eq!(heard(&bad_code, r, Some(255)), Heard::Nothing);
        assert_eq!(heard(&ra[..15], r, Some(255)), Heard::Nothing);
        assert_eq!(
            heard(&solicitation(), ll("fe80::2"), Some(255)),
            Heard::Solicited
        );
        // Neighbour discovery proper is not ours.
        let ns = [135, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(heard(&ns, r, Some(255)), Heard::Nothing);
    }

    proptest::proptest! {
        /// Any bytes from the link: an answer, never a panic; a neighbour
        /// only from a well-formed advertisement.
        #[test]
        fn any_bytes_are_read_without_panic(
            msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            hops in proptest::option::of(proptest::prelude::any::<u8>()),
        ) {
            let from = ll("fe80::1");
            if let Heard::Router(a) = heard(&msg, from, hops) {
                proptest::prop_assert_eq!(a, from);
                proptest::prop_assert!(msg.len() >= 16 && msg[0] == ROUTER_ADVERTISEMENT && msg[1] == 0);
                proptest::prop_assert_eq!(hops, Some(255));
            }
        }
    }

    #[test]
    fn what_vipd_advertises_makes_no_one_route_through_it() {
        let ra = advertisement();
        assert_eq!((ra[0], ra.len()), (ROUTER_ADVERTISEMENT, 16));
        // Router lifetime (bytes 6-7) 0: not a default router.
        assert_eq!(&ra[6..8], &[0, 0]);
        // No managed/other flags, no hop limit advice.
        assert_eq!(&ra[4..6], &[0, 0]);
    }

    #[test]
    fn the_neighbour_is_the_last_router_heard_and_survives_a_flap() {
        let mut l = Link::default();
        let (a, b) = (ll("fe80::a"), ll("fe80::b"));
        assert!(l.on_heard(Heard::Router(a)));
        assert!(!l.on_heard(Heard::Router(a)), "the same one again");
        assert!(!l.on_heard(Heard::Solicited));
        let down = l.on_sent(false);
        assert_eq!((down.after, down.solicit), (RETRY, false));
        assert!(!l.on_sent(false).solicit);
        let up = l.on_sent(true);
        assert_eq!((up.after, up.solicit), (INTERVAL, true));
        assert!(!l.on_sent(true).solicit, "only when it comes back");
        assert_eq!(l.neighbor, Some(a), "kept across the flap");
        assert!(l.on_heard(Heard::Router(b)));
        assert_eq!(l.neighbor, Some(b));
    }
}
