//! The path attributes vipd puts on a route, as plain values: what the
//! configuration and Kubernetes ask for, what the RIB compares and groups
//! on, what the encoder writes. A leaf: it depends on nothing of vipd, so
//! `config`, `k8s` and `bgp::wire` all build on it, and the fuzz crate
//! compiles it alone.

/// The 2-octet AS number reserved by RFC 6793 to stand in for a 4-octet one.
pub const AS_TRANS: u32 = 23456;

/// Bytes of community values (4 a standard community, 12 a large one) that
/// fit in one 4,096-byte UPDATE beside every other attribute vipd sends and
/// one /128, in the worst session context. `bgp::wire::encode` derives the
/// same figure from the wire format and checks it at compile time.
pub const COMMUNITY_ROOM: usize = 3973;

/// Attributes a group of announced prefixes shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteAttrs {
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    /// Sent only to the peers of these names or addresses (a pool's or an
    /// advertisement's `peers`); empty: to every peer. Never encoded.
    pub peers: Vec<String>,
}

impl RouteAttrs {
    /// Sorted, without duplicates: equal sets compare equal.
    pub fn normalize(&mut self) {
        self.communities.sort_unstable();
        self.communities.dedup();
        self.large_communities.sort_unstable();
        self.large_communities.dedup();
        self.peers.sort_unstable();
        self.peers.dedup();
    }

    /// Whether a peer known by these names (its `name`, its address) is
    /// to be sent the route.
    pub fn for_peer<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> bool {
        self.peers.is_empty() || names.any(|n| self.peers.iter().any(|p| p == n))
    }
}

/// Why a peer is not sent a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its attributes would not fit in one UPDATE for this peer: counted
    /// as refused.
    TooLarge,
    /// The route is for other peers (its `peers`): not counted.
    NotForPeer,
}

/// The bytes a route's community values take in an UPDATE.
pub fn community_bytes(a: &RouteAttrs) -> usize {
    4 * a.communities.len() + 12 * a.large_communities.len()
}
