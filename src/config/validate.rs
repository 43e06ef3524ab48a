//! The rules that span tables, apart from reading each table: they run
//! once every table has been read, so a file gets every problem at once,
//! each naming its key.

use ipnet::IpNet;

use super::{
    check_duplicate_prefixes, fleet, tenant, Announce, BgpConfig, Config, ControlPlane, Dataplane,
    DrainConfig, Errs, IpamConfig, KubeConfig, L2Config, L2Select, LogConfig, Mode, PeerConfig,
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
    pub l2: Option<L2Config>,
    pub log: LogConfig,
}

impl Parsed {
    /// The configuration, with what the tables derive from each other
    /// filled in; `None` without a usable `[bgp]`. Problems go to `errs`.
    pub fn validate(mut self, errs: &mut Errs) -> Option<Config> {
        check_duplicate_prefixes(&self.announce, errs);
        let peers = self.bgp.as_ref().map_or(&[][..], |b| &b.peers[..]);
        let room = tenant::check_room(&self.announce, peers, errs);
        let pools = self.ipam.as_ref().map_or(&[][..], |i| &i.pools[..]);
        let ads = (self.bgp.as_ref()).map_or(&[][..], |b| &b.advertisements[..]);
        super::advertise::check(pools, ads, peers, room, errs);
        let capped = self
            .bgp
            .as_ref()
            .is_some_and(|b| b.max_announcing_nodes.is_some());
        if capped && self.kubernetes.is_none() {
            errs.push(
                "bgp.max_announcing_nodes",
                "caps Services' VIPs over the cluster's Nodes: it needs a [kubernetes] table",
            );
        }
        if !ads.is_empty() && self.kubernetes.is_none() {
            errs.push(
                "bgp.advertisements",
                "applies to Services' addresses: it needs a [kubernetes] table",
            );
        }
        let adverts = super::Adverts::build(pools, ads);
        if let Some(k) = &mut self.kubernetes {
            k.community_room = room;
            k.adverts = adverts;
            k.max_announcing_nodes = self.bgp.as_ref().and_then(|b| b.max_announcing_nodes);
            k.drain = self.drain.clone();
            k.pools = self.ipam.as_ref().map(|i| {
                i.pools
                    .iter()
                    .flat_map(|p| p.ranges.iter().copied())
                    .collect()
            });
            k.l2 = self.l2.as_ref().map(|l| L2Select {
                default: l.default,
                pools: (self.ipam.iter().flat_map(|i| &i.pools))
                    .filter(|p| p.mode != Mode::Bgp)
                    .flat_map(|p| p.ranges.iter().map(|r| (*r, p.mode)))
                    .collect(),
            });
        }
        self.check_l2(errs);
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
            l2: self.l2,
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
    /// L2 follows Services and writes Leases; a pool in L2 needs `[l2]`.
    fn check_l2(&self, errs: &mut Errs) {
        if self.l2.is_some() && self.kubernetes.is_none() {
            errs.push(
                "l2",
                "answers for Services' VIPs: it needs a [kubernetes] table",
            );
        }
        if self.l2.is_none() {
            for (i, p) in self.ipam.iter().flat_map(|i| i.pools.iter().enumerate()) {
                if p.mode != Mode::Bgp {
                    errs.push(
                        format!("ipam.pools[{i}].mode"),
                        format!(
                            "{:?} needs an [l2] table naming the interfaces to answer on",
                            p.mode.as_str()
                        ),
                    );
                }
            }
        }
    }

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
    let ibgp = local_asn.is_some_and(|l| p.asn.is_ibgp(l));
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
/// What no one means to announce: a default route, or a prefix in a range
/// that never routes to a VIP. The reason, for the key's message.
pub(super) fn announceable(p: IpNet) -> Result<IpNet, String> {
    let within = |r: &str| {
        let r: IpNet = r.parse().expect("a valid range");
        r.contains(&p.network()) || p.contains(&r.network())
    };
    let class = if p.prefix_len() == 0 {
        Some("a default route")
    } else if p.addr().is_unspecified() {
        Some("the unspecified address")
    } else if within("224.0.0.0/4") || within("ff00::/8") {
        Some("multicast")
    } else if within("127.0.0.0/8") || p.addr().is_loopback() {
        Some("loopback")
    } else if within("169.254.0.0/16") || within("fe80::/10") {
        Some("link-local")
    } else if p.addr() == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    };
    match class {
        Some(c) => Err(format!("{p} is {c}: never a VIP to announce")),
        None => Ok(p),
    }
}

/// Why a peer cannot be at `a`, if it cannot.
fn peer_address(a: std::net::IpAddr, router_id: Option<std::net::Ipv4Addr>) -> Option<String> {
    use std::net::IpAddr;
    let why = match a {
        _ if a.is_unspecified() => "the unspecified address",
        _ if a.is_multicast() => "a multicast address",
        IpAddr::V4(v4) if v4.is_broadcast() => "the broadcast address",
        _ if a.is_loopback() => "a loopback address: vipd would peer with this node",
        IpAddr::V4(v4) if Some(v4) == router_id => "this node's own router ID: vipd would peer with itself",
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            "IPv6 link-local: set interface = \"<name>\" instead, and vipd finds the neighbour's link-local address on that link"
        }
        _ => return None,
    };
    Some(format!("{a} is {why}"))
}

pub(super) fn peers(
    peers: &[(String, PeerConfig)],
    listening: bool,
    router_id: Option<std::net::Ipv4Addr>,
    errs: &mut Errs,
) {
    let mut seen: std::collections::HashMap<&super::PeerAddr, &str> = Default::default();
    for (key, p) in peers {
        let field = match p.address.ip() {
            Some(a) => {
                if let Some(why) = peer_address(a, router_id) {
                    errs.push(format!("{key}.address"), why);
                }
                "address"
            }
            None => "interface",
        };
        if let Some(first) = seen.get(&p.address) {
            errs.push(
                format!("{key}.{field}"),
                format!("duplicate peer {} (also {first})", p.address),
            );
        } else {
            seen.insert(&p.address, key);
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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(text: &str) -> Vec<String> {
        let base = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n";
        Config::from_toml_str(&format!("{base}{text}"))
            .map(|_| vec![])
            .unwrap_or_else(|p| p.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn announcements_no_one_means_are_refused_by_key() {
        for (p, class) in [
            ("0.0.0.0/0", "a default route"),
            ("::/0", "a default route"),
            ("224.0.0.1/32", "multicast"),
            ("ff02::1/128", "multicast"),
            ("224.0.0.0/3", "multicast"),
            ("127.0.0.1/32", "loopback"),
            ("::1/128", "loopback"),
            ("169.254.10.1/32", "link-local"),
            ("fe80::1/128", "link-local"),
            ("0.0.0.0/32", "the unspecified address"),
            ("::/128", "the unspecified address"),
            ("255.255.255.255/32", "the broadcast address"),
        ] {
            assert_eq!(
                problems(&format!("[[announce]]\nprefix = \"{p}\"\n")),
                [format!(
                    "announce[0].prefix: {p} is {class}: never a VIP to announce"
                )],
                "{p}"
            );
        }
        assert_eq!(
            problems("[[announce]]\nprefixes = [\"203.0.113.1/32\", \"127.0.0.2/32\"]\n"),
            ["announce[0].prefixes: [1]: 127.0.0.2/32 is loopback: never a VIP to announce"]
        );
        for ok in [
            "203.0.113.1/32",
            "2001:db8::1/128",
            "198.51.100.0/24",
            "100.64.0.1/32",
        ] {
            assert!(
                problems(&format!("[[announce]]\nprefix = \"{ok}\"\n")).is_empty(),
                "{ok}"
            );
        }
    }

    #[test]
    fn inline_keys_and_per_peer_rules() {
        let base = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n";
        let c = Config::from_toml_str(&format!("{base}password = \"s3cret\"\n")).unwrap();
        let key = c.bgp.peers[0]
            .password
            .as_ref()
            .map(crate::config::Secret::expose);
        assert_eq!(key, Some("s3cret"));
        for bad in ["", &"k".repeat(81)] {
            assert_eq!(
                problems(&format!(
                    "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\npassword = \"{bad}\"\n"
                )),
                ["bgp.peers[0].password: must be 1 to 80 bytes (TCP MD5 key)"]
            );
        }
        assert_eq!(
            problems("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nmed = 5\n"),
            ["bgp.peers[0].med: set med per [[announce]] entry, not per peer"]
        );
    }

    #[test]
    fn peers_no_one_means_are_refused_by_key() {
        for (a, why) in [
            ("0.0.0.0", "the unspecified address"),
            ("::", "the unspecified address"),
            ("224.0.0.5", "a multicast address"),
            ("ff02::2", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
            ("127.0.0.1", "a loopback address"),
            ("192.0.2.1", "this node's own router ID"),
            ("fe80::1", "IPv6 link-local"),
        ] {
            let p = problems(&format!("[[bgp.peers]]\naddress = \"{a}\"\nasn = 65002\n"));
            assert_eq!(p.len(), 1, "{a}: {p:?}");
            assert!(
                p[0].starts_with(&format!("bgp.peers[0].address: {a} is {why}")),
                "{a}: {p:?}"
            );
        }
        assert!(problems("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n").is_empty());
    }

    #[test]
    fn an_unknown_key_names_the_nearest_and_a_single_table_the_array() {
        let p =
            Config::from_toml_str("[bgp]\nasn = 65010\nrouterid = \"192.0.2.1\"\n").unwrap_err();
        assert!(
            p.0.iter()
                .any(|p| p.to_string() == "bgp.routerid: unknown key; did you mean router_id?"),
            "{p}"
        );
        assert_eq!(
            problems("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nhold-time = 30\nconnect_rety = 1\n"),
            [
                "bgp.peers[0].connect_rety: unknown key; did you mean connect_retry?",
                "bgp.peers[0].hold-time: unknown key; did you mean hold_time?",
            ]
        );
        assert_eq!(
            problems("[bgp.peers]\naddress = \"192.0.2.2\"\nasn = 65002\n"),
            ["bgp.peers: written as the table [bgp.peers]: each entry is a [[bgp.peers]] (double brackets)"]
        );
        assert_eq!(
            problems("[announce]\nprefix = \"203.0.113.1/32\"\n"),
            ["announce: written as the table [announce]: each entry is a [[announce]] (double brackets)"]
        );
        assert_eq!(
            problems("colour = 1\n"),
            ["bgp.colour: unknown key"],
            "nothing near: no guess"
        );
    }
}
