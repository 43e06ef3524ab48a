//! One configuration for the whole fleet: peers that exist only on the
//! nodes whose labels match their `node_selector`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::time::Duration;

use config::{Value, ValueKind};

use super::{
    parse_bool, parse_int, parse_list, parse_str, BgpConfig, Errs, FromNode, Problems, Tbl,
};

/// `[drain]`: when this node drains its VIPs (RFC 8326 graceful shutdown,
/// then withdrawal), see `crate::drain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// `spec.unschedulable` (kubectl cordon/drain).
    pub on_cordon: bool,
    /// `node.kubernetes.io/exclude-from-external-load-balancers` (Service
    /// VIPs only).
    pub on_exclude_label: bool,
    /// Taint keys that drain the node.
    pub on_taints: Vec<String>,
    /// Announced with GRACEFUL_SHUTDOWN this long before the withdrawal.
    pub graceful_shutdown: Duration,
}

pub(super) fn read_drain(mut t: Tbl, errs: &mut Errs) -> DrainConfig {
    let on_cordon = t.opt("on_cordon", errs, parse_bool).unwrap_or(true);
    let on_exclude_label = t.opt("on_exclude_label", errs, parse_bool).unwrap_or(true);
    let on_taints = t
        .opt("on_taints", errs, |v| {
            parse_list(v, |s| check_key(s).map(|_| s.to_string()))
        })
        .unwrap_or_default();
    let graceful_shutdown = t
        .opt("graceful_shutdown_secs", errs, |v| parse_int(v, 0, 3600))
        .map(|n| Duration::from_secs(n as u64))
        .unwrap_or(Duration::from_secs(30));
    t.finish(errs);
    DrainConfig {
        on_cordon,
        on_exclude_label,
        on_taints,
        graceful_shutdown,
    }
}

/// A Node's labels, or a peer's selector over them.
pub type Labels = BTreeMap<String, String>;

/// `node_selector = { "topology.kubernetes.io/zone" = "rack-1" }`: label
/// keys and values as Kubernetes accepts them.
pub(super) fn parse_selector(v: Value) -> Result<Labels, String> {
    let ValueKind::Table(t) = v.kind else {
        return Err("expected a table of label = value, e.g. { \"topology.kubernetes.io/zone\" = \"rack-1\" }".into());
    };
    let mut out = Labels::new();
    let mut problems = vec![];
    let mut entries: Vec<_> = t.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in entries {
        // Every problem, not the first: one round trip to fix the file.
        let checked = parse_str(v)
            .map_err(|e| format!("{k:?}: {e}"))
            .and_then(|v| check_key(&k).and(check_value(&k, &v)).map(|_| v));
        match checked {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// A label's name part (and a value): up to 63 characters, alphanumeric
/// at both ends, `-`, `_` and `.` between.
fn name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            })
    });
    if prefix_ok && name_ok(name) {
        Ok(())
    } else {
        Err(format!("{k:?} is not a valid label key"))
    }
}

fn check_value(k: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || name_ok(v) {
        Ok(())
    } else {
        Err(format!("{k:?}: {v:?} is not a valid label value"))
    }
}

/// Where `bgp.asn` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AsnSource {
    Number(u32),
    /// `"label:KEY"`: the Node's label KEY, for ASN-per-node designs.
    Label(String),
}

/// `bgp.asn`: a number, or `"label:KEY"` with KEY a valid label key.
pub(super) fn parse_asn_source(v: Value) -> Result<AsnSource, String> {
    if let ValueKind::String(s) = &v.kind {
        if let Some(k) = s.strip_prefix("label:") {
            check_key(k)?;
            return Ok(AsnSource::Label(k.to_string()));
        }
        if s.trim().parse::<i128>().is_err() {
            return Err(format!(
                "expected an AS number, or \"label:KEY\" for the Node's label KEY, got {s:?}"
            ));
        }
    }
    super::parse_asn(v).map(AsnSource::Number)
}

impl BgpConfig {
    /// The ASN this node speaks with where a peer sets no `local_asn`:
    /// `asn`, or with `asn = "label:KEY"` its Node's label KEY (`Ok(None)`
    /// while the labels are not known). The error names the key and says
    /// what is wrong with the label.
    pub fn asn_for(&self, labels: Option<&Labels>) -> Result<Option<u32>, String> {
        let Some(key) = &self.asn_label else {
            return Ok(Some(self.asn));
        };
        let Some(labels) = labels else {
            return Ok(None);
        };
        let Some(v) = labels.get(key) else {
            return Err(format!(
                "bgp.asn: this Node has no label {key:?} to take its ASN from"
            ));
        };
        let n = super::parse_asn(Value::new(None, ValueKind::String(v.clone())));
        n.map(Some)
            .map_err(|e| format!("bgp.asn: this Node's label {key:?} is {v:?}: {e}"))
    }

    /// The peers of a node with these labels (`None`: not known yet, so
    /// only the peers without a selector), with the selector itself taken
    /// out: a selector edited on reload that still matches must not
    /// restart the session. With the ASN from a label, `asn` is the
    /// label's; without a valid one, only peers with their own `local_asn`
    /// remain (the others have no ASN to speak with).
    pub fn for_node(&self, labels: Option<&Labels>) -> BgpConfig {
        let mut b = self.clone();
        let asn = self.asn_for(labels).ok().flatten();
        b.asn = asn.unwrap_or(0);
        b.peers.retain(|p| {
            (p.local_asn.is_some() || asn.is_some())
                && (p.node_selector.is_empty()
                    || labels
                        .is_some_and(|l| p.node_selector.iter().all(|(k, v)| l.get(k) == Some(v))))
        });
        for p in &mut b.peers {
            p.node_selector.clear();
        }
        b
    }
}

/// The Node's InternalIPs, first of each family: what `"node"` and an
/// omitted `router_id` stand for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl BgpConfig {
    /// Whether anything waits for the Node's addresses.
    pub fn needs_node(&self) -> bool {
        self.router_id_from_node
            || self
                .peers
                .iter()
                .any(|p| p.from_node != FromNode::default())
    }

    /// `"node"` and an omitted `router_id` resolved against the Node's
    /// addresses; each one the Node lacks is a problem naming its key.
    pub fn with_node_addresses(&self, n: &NodeAddresses) -> Result<BgpConfig, Problems> {
        let mut b = self.clone();
        let mut errs = Errs(vec![]);
        let missing = |fam: &str| {
            format!("\"node\" (or omitted): this Node has no {fam} InternalIP; set an address")
        };
        if b.router_id_from_node {
            match n.v4 {
                Some(a) => b.router_id = a,
                None => errs.push("bgp.router_id", missing("IPv4")),
            }
        }
        for (i, p) in b.peers.iter_mut().enumerate() {
            let key = format!("bgp.peers[{i}]");
            if p.from_node.source_address {
                let a = if p.address.is_ipv4() {
                    n.v4.map(IpAddr::from)
                } else {
                    n.v6.map(IpAddr::from)
                };
                match a {
                    Some(a) => p.source_address = Some(a),
                    None => {
                        let fam = if p.address.is_ipv4() { "IPv4" } else { "IPv6" };
                        errs.push(format!("{key}.source_address"), missing(fam))
                    }
                }
            }
            if p.from_node.next_hop_ipv4 {
                match n.v4 {
                    Some(a) => p.next_hop_ipv4 = Some(a),
                    None => errs.push(format!("{key}.next_hop_ipv4"), missing("IPv4")),
                }
            }
            if p.from_node.next_hop_ipv6 {
                match n.v6 {
                    Some(a) => p.next_hop_ipv6 = Some(a),
                    None => errs.push(format!("{key}.next_hop_ipv6"), missing("IPv6")),
                }
            }
        }
        if errs.0.is_empty() {
            Ok(b)
        } else {
            Err(Problems(errs.0))
        }
    }
}

/// Without `[kubernetes]` there is no Node: selectors, `"node"` addresses
/// and an omitted `router_id` cannot be resolved.
pub(super) fn check_needs_node(b: &BgpConfig, errs: &mut Errs) {
    const WHY: &str = "is the Node's address: it needs a [kubernetes] table";
    if let Some(k) = &b.asn_label {
        errs.push(
            "bgp.asn",
            format!("\"label:{k}\" is the Node's label: it needs a [kubernetes] table"),
        );
    }
    if b.router_id_from_node {
        errs.push(
            "bgp.router_id",
            "missing (without [kubernetes] there is no Node to take it from)",
        );
    }
    for (i, p) in b.peers.iter().enumerate() {
        let key = format!("bgp.peers[{i}]");
        if !p.node_selector.is_empty() {
            errs.push(
                format!("{key}.node_selector"),
                "selects by the Node's labels: it needs a [kubernetes] table",
            );
        }
        for (set, name) in [
            (p.from_node.source_address, "source_address"),
            (p.from_node.next_hop_ipv4, "next_hop_ipv4"),
            (p.from_node.next_hop_ipv6, "next_hop_ipv6"),
        ] {
            if set {
                errs.push(format!("{key}.{name}"), format!("\"node\" {WHY}"));
            }
        }
    }
}

/// `k=v,k2=v2` (the `--node-labels` of `vipd check-config`).
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected KEY=VALUE"))?;
        check_key(k)?;
        check_value(k, v)?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str =
        "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[kubernetes]\nnode_name = \"n\"\n";

    fn cfg(peers: &str) -> Result<Config, Vec<String>> {
        Config::from_toml_str(&format!("{BASE}{peers}"))
            .map_err(|p| p.0.iter().map(|p| p.to_string()).collect())
    }

    const BY_LABEL: &str = "[bgp]\nasn = \"label:vipd.io/asn\"\nrouter_id = \"192.0.2.1\"\n[kubernetes]\nnode_name = \"n\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
         [[bgp.peers]]\naddress = \"192.0.2.3\"\nasn = 65003\nlocal_asn = 65100\n";

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_asn_comes_from_the_nodes_label_and_a_peer_may_set_its_own() {
        let c = Config::from_toml_str(BY_LABEL).unwrap();
        assert_eq!(c.bgp.asn_label.as_deref(), Some("vipd.io/asn"));
        assert_eq!(c.bgp.peers[1].local_asn, Some(65100));
        assert_eq!(c.bgp.peers[0].local_asn, None);
        // Labels not known yet: only the peer with its own ASN.
        let b = c.bgp.for_node(None);
        assert_eq!(c.bgp.asn_for(None), Ok(None));
        let addrs = |b: &BgpConfig| -> Vec<String> {
            b.peers.iter().map(|p| p.address.to_string()).collect()
        };
        assert_eq!(addrs(&b), ["192.0.2.3"]);
        let l = labels(&[("vipd.io/asn", "4200000101")]);
        let b = c.bgp.for_node(Some(&l));
        assert_eq!(b.asn, 4_200_000_101);
        assert_eq!(addrs(&b), ["192.0.2.2", "192.0.2.3"]);
        // A number as bgp.asn: the labels do not matter.
        let plain = cfg("").unwrap();
        assert_eq!(plain.bgp.asn_for(Some(&l)), Ok(Some(65010)));
        assert_eq!(plain.bgp.for_node(Some(&l)).asn, 65010);
    }

    #[test]
    fn a_missing_or_bad_asn_label_says_which_and_why_and_keeps_only_own_asn_peers() {
        let c = Config::from_toml_str(BY_LABEL).unwrap();
        for (l, want) in [
            (
                labels(&[("other", "1")]),
                "bgp.asn: this Node has no label \"vipd.io/asn\" to take its ASN from",
            ),
            (
                labels(&[("vipd.io/asn", "rack1")]),
                "bgp.asn: this Node's label \"vipd.io/asn\" is \"rack1\": expected a whole number, got \"rack1\"",
            ),
            (
                labels(&[("vipd.io/asn", "0")]),
                "bgp.asn: this Node's label \"vipd.io/asn\" is \"0\": ASN 0 is reserved (RFC 7607)",
            ),
            (
                labels(&[("vipd.io/asn", "23456")]),
                "bgp.asn: this Node's label \"vipd.io/asn\" is \"23456\": ASN 23456 is AS_TRANS, reserved (RFC 6793)",
            ),
            (
                labels(&[("vipd.io/asn", "4294967296")]),
                "bgp.asn: this Node's label \"vipd.io/asn\" is \"4294967296\": 4294967296 is out of range 0 to 4294967295",
            ),
        ] {
            assert_eq!(c.bgp.asn_for(Some(&l)), Err(want.to_string()));
            let b = c.bgp.for_node(Some(&l));
            assert_eq!(b.asn, 0);
            assert_eq!(b.peers.len(), 1, "{want}");
            assert_eq!(b.peers[0].local_asn, Some(65100));
        }
    }

    #[test]
    fn asn_and_local_asn_errors_name_the_key() {
        let with_asn = |asn: &str, rest: &str| {
            Config::from_toml_str(&format!(
                "[bgp]\nasn = {asn}\nrouter_id = \"192.0.2.1\"\n{rest}"
            ))
            .map_err(|p| p.0.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        let k = "[kubernetes]\nnode_name = \"n\"\n";
        assert_eq!(
            with_asn("\"label:-bad\"", k).unwrap_err(),
            ["bgp.asn: \"-bad\" is not a valid label key"]
        );
        assert_eq!(
            with_asn("\"rack-1\"", k).unwrap_err(),
            ["bgp.asn: expected an AS number, or \"label:KEY\" for the Node's label KEY, got \"rack-1\""]
        );
        assert_eq!(
            with_asn("\"label:vipd.io/asn\"", "").unwrap_err(),
            ["bgp.asn: \"label:vipd.io/asn\" is the Node's label: it needs a [kubernetes] table"]
        );
        // A number in a string, as environment overrides give it.
        assert_eq!(with_asn("\"65010\"", k).unwrap().bgp.asn, 65010);
        for (v, why) in [
            ("0", "ASN 0 is reserved (RFC 7607)"),
            ("23456", "ASN 23456 is AS_TRANS, reserved (RFC 6793)"),
            ("\"x\"", "expected a whole number, got \"x\""),
        ] {
            let e = cfg(&format!(
                "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nlocal_asn = {v}\n"
            ))
            .unwrap_err();
            assert_eq!(e, [format!("bgp.peers[0].local_asn: {why}")]);
        }
    }

    /// GTSM without a hop count is refused for iBGP, judged against the
    /// AS vipd speaks to that peer: `bgp.asn`, or the peer's `local_asn`
    /// (with the ASN from a label, only `local_asn` is known).
    #[test]
    fn ibgp_is_judged_against_the_asn_spoken_to_the_peer() {
        let why = "bgp.peers[0].ttl_security: for an iBGP peer, also set ttl to the number of hops";
        let gtsm = |asn: u32, local: &str| {
            format!(
                "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = {asn}\nttl_security = true\n{local}"
            )
        };
        assert_eq!(cfg(&gtsm(65010, "")).unwrap_err(), [why]);
        assert!(cfg(&gtsm(65002, "")).is_ok(), "eBGP");
        assert_eq!(cfg(&gtsm(65002, "local_asn = 65002\n")).unwrap_err(), [why]);
        assert!(
            cfg(&gtsm(65010, "local_asn = 65002\n")).is_ok(),
            "eBGP by local_asn"
        );
        let labelled = |peer: &str| {
            Config::from_toml_str(&format!(
                "{}{peer}",
                BASE.replace("asn = 65010", "asn = \"label:vipd.io/asn\"")
            ))
            .map_err(|p| p.0.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        assert!(
            labelled(&gtsm(65010, "")).is_ok(),
            "the label's AS is not known yet"
        );
        assert_eq!(
            labelled(&gtsm(65002, "local_asn = 65002\n")).unwrap_err(),
            [why]
        );
    }

    #[test]
    fn peers_follow_the_nodes_labels() {
        let c = cfg(
            "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnode_selector = { \"topology.kubernetes.io/zone\" = \"rack-1\" }\n\
             [[bgp.peers]]\naddress = \"192.0.2.3\"\nasn = 65003\nnode_selector = { \"topology.kubernetes.io/zone\" = \"rack-2\", \"vipd.io/role\" = \"edge\" }\n\
             [[bgp.peers]]\naddress = \"192.0.2.4\"\nasn = 65004\n",
        )
        .unwrap();
        let addrs = |l: Option<&str>| -> Vec<String> {
            let labels = l.map(|s| parse_labels(s).unwrap());
            let b = c.bgp.for_node(labels.as_ref());
            assert!(b.peers.iter().all(|p| p.node_selector.is_empty()));
            b.peers.iter().map(|p| p.address.to_string()).collect()
        };
        assert_eq!(addrs(None), ["192.0.2.4"]);
        assert_eq!(addrs(Some("")), ["192.0.2.4"]);
        assert_eq!(
            addrs(Some("topology.kubernetes.io/zone=rack-1,x=y")),
            ["192.0.2.2", "192.0.2.4"]
        );
        assert_eq!(
            addrs(Some("topology.kubernetes.io/zone=rack-2")),
            ["192.0.2.4"]
        );
        assert_eq!(
            addrs(Some("topology.kubernetes.io/zone=rack-2,vipd.io/role=edge")),
            ["192.0.2.3", "192.0.2.4"]
        );
    }

    #[test]
    fn bad_selectors_are_named() {
        let peer = |sel: &str| {
            cfg(&format!(
                "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnode_selector = {sel}\n"
            ))
            .unwrap_err()
        };
        assert_eq!(
            peer("{ \"-bad\" = \"x\" }"),
            ["bgp.peers[0].node_selector: \"-bad\" is not a valid label key"]
        );
        assert_eq!(
            peer("{ \"ok\" = \"not ok!\" }"),
            ["bgp.peers[0].node_selector: \"ok\": \"not ok!\" is not a valid label value"]
        );
        // Every problem, in one line, not only the first.
        assert_eq!(
            peer("{ \"-bad\" = \"x\", \"fine\" = \"y\", \"ok\" = \"not ok!\" }"),
            ["bgp.peers[0].node_selector: \"-bad\" is not a valid label key; \"ok\": \"not ok!\" is not a valid label value"]
        );
        let e = cfg(
            "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnode_selector = \"rack-1\"\n",
        )
        .unwrap_err();
        assert!(
            e[0].starts_with("bgp.peers[0].node_selector: expected a table"),
            "{e:?}"
        );
        let e = Config::from_toml_str("[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnode_selector = { a = \"b\" }\n").unwrap_err();
        assert_eq!(
            e.0[0].to_string(),
            "bgp.peers[0].node_selector: selects by the Node's labels: it needs a [kubernetes] table"
        );
        assert_eq!(
            parse_labels("a=b,c").unwrap_err(),
            "\"c\": expected KEY=VALUE"
        );
        assert_eq!(
            parse_labels("a=b c").unwrap_err(),
            "\"a\": \"b c\" is not a valid label value"
        );
    }

    #[test]
    fn drain_defaults_and_mistakes() {
        let c = cfg("[drain]\n").unwrap();
        let d = c.drain.unwrap();
        assert!(d.on_cordon && d.on_exclude_label && d.on_taints.is_empty());
        assert_eq!(d.graceful_shutdown.as_secs(), 30);
        let c = cfg("[drain]\non_cordon = false\non_taints = [\"node.kubernetes.io/out-of-service\"]\ngraceful_shutdown_secs = 0\n").unwrap();
        let d = c.drain.unwrap();
        assert!(!d.on_cordon && d.on_taints == ["node.kubernetes.io/out-of-service"]);
        assert!(d.graceful_shutdown.is_zero());
        assert_eq!(
            cfg("[drain]\ngraceful_shutdown_secs = 7200\non_taints = [\"bad key!\"]\nwhen = 1\n")
                .unwrap_err(),
            [
                "drain.on_taints: \"bad key!\" is not a valid label key",
                "drain.graceful_shutdown_secs: 7200 is out of range 0 to 3600",
                "drain.when: unknown key",
            ]
        );
    }

    #[test]
    fn node_addresses_fill_router_id_source_and_next_hops() {
        let c = Config::from_toml_str(
            "[bgp]\nasn = 65010\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nsource_address = \"node\"\nnext_hop_ipv4 = \"node\"\n\
             [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nsource_address = \"node\"\nnext_hop_ipv6 = \"node\"\n\
             [[bgp.peers]]\naddress = \"198.51.100.2\"\nasn = 65003\n\
             [kubernetes]\nnode_name = \"n\"\n",
        )
        .unwrap();
        assert!(c.bgp.needs_node());
        let both = NodeAddresses {
            v4: Some("192.0.2.1".parse().unwrap()),
            v6: Some("2001:db8::1".parse().unwrap()),
        };
        let b = c.bgp.with_node_addresses(&both).unwrap();
        assert_eq!(b.router_id, both.v4.unwrap());
        assert_eq!(
            b.peers[0].source_address,
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(b.peers[0].next_hop_ipv4, both.v4);
        assert_eq!(
            b.peers[1].source_address,
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(b.peers[1].next_hop_ipv6, both.v6);
        assert_eq!(b.peers[2].source_address, None);
        // A Node without IPv4: every key that needed it is named.
        let v6_only = NodeAddresses {
            v4: None,
            v6: both.v6,
        };
        let e: Vec<String> = c
            .bgp
            .with_node_addresses(&v6_only)
            .unwrap_err()
            .0
            .iter()
            .map(|p| p.to_string())
            .collect();
        let why = "\"node\" (or omitted): this Node has no IPv4 InternalIP; set an address";
        assert_eq!(
            e,
            [
                format!("bgp.router_id: {why}"),
                format!("bgp.peers[0].source_address: {why}"),
                format!("bgp.peers[0].next_hop_ipv4: {why}"),
            ]
        );
        // A router ID that is set is kept.
        let set = Config::from_toml_str(&format!(
            "{BASE}[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n"
        ))
        .unwrap();
        assert!(!set.bgp.needs_node());
        assert_eq!(
            set.bgp.with_node_addresses(&v6_only).unwrap().router_id,
            "192.0.2.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn node_addresses_need_kubernetes() {
        let e: Vec<String> = Config::from_toml_str(
            "[bgp]\nasn = 65010\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnext_hop_ipv6 = \"node\"\nsource_address = \"nod\"\n",
        )
        .unwrap_err()
        .0
        .iter()
        .map(|p| p.to_string())
        .collect();
        assert_eq!(
            e,
            [
                "bgp.peers[0].source_address: \"nod\" is not an IP address",
                "bgp.router_id: missing (without [kubernetes] there is no Node to take it from)",
                "bgp.peers[0].next_hop_ipv6: \"node\" is the Node's address: it needs a [kubernetes] table",
            ]
        );
    }

    #[test]
    fn bfd_keys_need_bfd_on_and_stay_in_range() {
        let c = cfg("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nbfd = true\n").unwrap();
        let b = c.bgp.peers[0].bfd.unwrap();
        assert_eq!((b.interval, b.multiplier), (Duration::from_millis(300), 3));
        let c = cfg("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nbfd = true\nbfd_interval_ms = 100\nbfd_multiplier = 5\n").unwrap();
        let b = c.bgp.peers[0].bfd.unwrap();
        assert_eq!((b.interval, b.multiplier), (Duration::from_millis(100), 5));
        assert_eq!(
            cfg("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nbfd_interval_ms = 100\n")
                .unwrap_err(),
            ["bgp.peers[0].bfd_interval_ms: applies to a BFD session: set bfd = true"]
        );
        let e = cfg("[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nbfd = true\nbfd_interval_ms = 5\nbfd_multiplier = 0\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("bgp.peers[0].bfd_interval_ms: "), "{e:?}");
        assert!(e[1].starts_with("bgp.peers[0].bfd_multiplier: "), "{e:?}");
        assert_eq!(b.min_ttl, 255, "single hop");
        let peer = "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nbfd = true\n";
        let min = |extra: &str| {
            cfg(&format!("{peer}{extra}")).map(|c| c.bgp.peers[0].bfd.unwrap().min_ttl)
        };
        assert_eq!(min("ttl = 3\n"), Ok(1), "multihop: any TTL unless set");
        assert_eq!(min("ttl = 3\nbfd_min_ttl = 254\n"), Ok(254));
        assert_eq!(
            min("bfd_min_ttl = 254\n").unwrap_err(),
            ["bgp.peers[0].bfd_min_ttl: applies to a multihop BFD session (ttl above 1); single hop always requires 255 (RFC 5881)"]
        );
        assert!(min("ttl = 3\nbfd_min_ttl = 0\n").unwrap_err()[0]
            .starts_with("bgp.peers[0].bfd_min_ttl: "));
    }
}
