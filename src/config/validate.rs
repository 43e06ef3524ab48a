//! The rules that span tables, apart from reading each table: they run
//! once every table has been read, so a file gets every problem at once,
//! each naming its key.

use ipnet::IpNet;

use super::{
    check_duplicate_prefixes, fleet, tenant, Announce, BgpConfig, Config, ControlPlane, Dataplane,
    DrainConfig, Errs, IpamConfig, KubeConfig, LogConfig, PeerConfig,
};

/// Every table as read, before the rules across them.
pub(super) struct Parsed {
    pub bgp: Option<BgpConfig>,
    pub announce: Vec<Announce>,
    pub kubernetes: Option<KubeConfig>,
    pub dataplane: Dataplane,
    pub control_plane: Option<ControlPlane>,
    pub status: super::StatusConfig,
    pub ipam: Option<IpamConfig>,
    pub drain: Option<DrainConfig>,
    pub log: LogConfig,
}

impl Parsed {
    /// The configuration, with what the tables derive from each other
    /// filled in; `None` without a usable `[bgp]`. Problems go to `errs`.
    pub fn validate(mut self, errs: &mut Errs) -> Option<Config> {
        check_duplicate_prefixes(&self.announce, errs);
        let peers = self.bgp.as_ref().map_or(&[][..], |b| &b.peers[..]);
        let room = tenant::check_room(&self.announce, peers, errs);
        if let Some(k) = &mut self.kubernetes {
            k.community_room = room;
            k.pools = self.ipam.as_ref().map(|i| {
                i.pools
                    .iter()
                    .flat_map(|p| p.ranges.iter().copied())
                    .collect()
            });
        }
        if let Some(cp) = &self.control_plane {
            self.check_control_plane(cp, errs);
        }
        self.check_needs_kubernetes(errs);
        Some(Config {
            bgp: self.bgp?,
            announce: self.announce,
            kubernetes: self.kubernetes,
            dataplane: self.dataplane,
            control_plane: self.control_plane,
            status: self.status,
            ipam: self.ipam,
            drain: self.drain,
            log: self.log,
        })
    }

    fn check_control_plane(&self, cp: &ControlPlane, errs: &mut Errs) {
        if cp.discover && self.kubernetes.is_none() {
            errs.push(
                "control_plane.discover",
                "reads default/kubernetes: it needs a [kubernetes] table",
            );
        }
        let vip = IpNet::from(cp.vip);
        if self.announce.iter().any(|a| a.prefixes.contains(&vip)) {
            errs.push(
                "control_plane.vip",
                format!("{vip} is also in [[announce]]: the control plane announces it only while a backend is healthy"),
            );
        }
    }

    /// What only means something with a `[kubernetes]` table.
    fn check_needs_kubernetes(&self, errs: &mut Errs) {
        if self.kubernetes.is_some() {
            return;
        }
        if let Some(b) = &self.bgp {
            fleet::check_needs_node(b, errs);
        }
        if self.ipam.is_some() {
            errs.push(
                "ipam",
                "assigns addresses to Services: it needs a [kubernetes] table",
            );
        }
        let dp = &self.dataplane;
        if dp.address_interface.is_some() || dp.routes.is_some() {
            errs.push(
                "dataplane",
                "applies to Kubernetes VIPs: it needs a [kubernetes] table",
            );
        }
    }
}

/// The keepalive interval: as given, checked against the hold time, or a
/// third of it (at most 30 s; none when the hold time is 0).
pub(super) fn keepalive(key: &str, hold: u16, given: Option<u16>, errs: &mut Errs) -> u16 {
    let Some(k) = given else {
        return if hold == 0 {
            0
        } else {
            (hold / 3).clamp(1, 30)
        };
    };
    if hold == 0 && k != 0 {
        errs.push(
            format!("{key}.keepalive"),
            "hold_time 0 disables keepalives: set keepalive to 0 or remove it",
        );
    } else if hold != 0 && (k == 0 || k >= hold) {
        errs.push(
            format!("{key}.keepalive"),
            format!("must be at least 1 and less than hold_time ({hold}); got {k}"),
        );
    }
    k
}

/// The rules across one peer's keys.
pub(super) fn peer(key: &str, p: &PeerConfig, local_asn: Option<u32>, errs: &mut Errs) {
    if p.defaults.med.is_some() {
        errs.push(
            format!("{key}.med"),
            "set med per [[announce]] entry, not per peer",
        );
    }
    if let Some(src) = p.source_address {
        if src.is_ipv4() != p.address.is_ipv4() {
            errs.push(
                format!("{key}.source_address"),
                format!(
                    "{src} is not of the same family as the peer address {}",
                    p.address
                ),
            );
        }
    }
    let ibgp = local_asn == Some(p.asn);
    if p.ttl_security && ibgp && p.ttl.is_none() {
        // GTSM is usually meant for directly connected eBGP; for iBGP a
        // hop count is needed.
        errs.push(
            format!("{key}.ttl_security"),
            "for an iBGP peer, also set ttl to the number of hops",
        );
    }
}

/// The rules across peers: one session per address, and a passive peer
/// only where vipd listens.
pub(super) fn peers(peers: &[(String, PeerConfig)], listening: bool, errs: &mut Errs) {
    let mut seen: std::collections::HashMap<std::net::IpAddr, &str> = Default::default();
    for (key, p) in peers {
        if let Some(first) = seen.get(&p.address) {
            errs.push(
                format!("{key}.address"),
                format!("duplicate peer {} (also {first})", p.address),
            );
        } else {
            seen.insert(p.address, key);
        }
        if p.passive && !listening {
            errs.push(
                format!("{key}.passive"),
                "a passive peer needs bgp.listen, or vipd never accepts its connection",
            );
        }
    }
}

/// The control plane's backends: never the VIP itself, none twice.
/// Returns whether they pass.
pub(super) fn backends(
    key: &str,
    vip: std::net::IpAddr,
    backends: &[std::net::SocketAddr],
    errs: &mut Errs,
) -> bool {
    let mut ok = true;
    for (i, b) in backends.iter().enumerate() {
        if b.ip() == vip {
            errs.push(
                format!("{key}.backends[{i}]"),
                format!(
                    "{} is the VIP itself: a backend must be an API server's own address",
                    b.ip()
                ),
            );
            ok = false;
        }
        if backends[..i].contains(b) {
            errs.push(
                format!("{key}.backends[{i}]"),
                format!("{b} is listed twice"),
            );
            ok = false;
        }
    }
    ok
}
