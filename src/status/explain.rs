//! `vipd explain NAMESPACE/NAME`: the Kubernetes side's view of one Service
//! (`k8s::explain`) joined with what the sessions hold, the drain and the
//! allocator, as plain values; rendered as one screen of text or as JSON.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::bgp::rib::afi_of;
use crate::bgp::wire::Afi;
use crate::config::RouteAttrs;
use crate::k8s::explain::{Found, ServiceView};

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub service: String,
    /// `None` without `[kubernetes]`.
    pub view: Option<ServiceView>,
    pub addresses: Vec<AddressLine>,
    /// Why the allocator has not given the Service its addresses (on the
    /// node that allocates).
    pub allocation: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddressLine {
    pub address: String,
    /// The intent wants it announced from this node.
    pub wanted: bool,
    pub why_not: Option<String>,
    /// Announced, but with GRACEFUL_SHUTDOWN or withdrawn by a drain.
    pub drain: Option<String>,
    pub peers: Vec<PeerLine>,
    /// In L2 mode: who answers ARP/NDP for it and why not this node.
    pub l2: Option<String>,
    /// Where its attributes come from; its aggregate.
    pub bgp: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerLine {
    pub peer: crate::config::PeerAddr,
    /// An unnumbered peer's neighbour, as heard on its interface.
    pub neighbor: Option<std::net::Ipv6Addr>,
    pub asn: crate::config::PeerAs,
    pub state: &'static str,
    /// The peer holds the route from vipd now.
    pub carried: bool,
    /// As sent to this peer (its defaults merged, its next hop).
    pub attributes: Option<String>,
    pub why_not: Option<String>,
}

/// What the daemon adds to the Kubernetes view.
pub struct Context<'a> {
    pub peers: &'a [super::PeerRow],
    /// The drain, while one is active: what it does to Service VIPs now.
    pub drain: Option<String>,
    /// The allocator's reason, when this node allocates and the Service
    /// is pending.
    pub pending: Option<String>,
    /// With `[ipam]` on a node that does not allocate: who does (the Lease
    /// holder, when known).
    pub allocator_elsewhere: Option<String>,
    /// With `[l2]`: the L2 VIPs as this node decided them.
    pub l2: &'a [crate::l2::state::VipLine],
}

/// One address's L2 line: answered here, or the owner and why not here.
fn l2_line(address: &str, vips: &[crate::l2::state::VipLine]) -> Option<String> {
    let ip: IpAddr = address.parse().ok()?;
    let v = vips.iter().find(|v| v.addrs.contains(&ip))?;
    let owner = match (&v.owner, v.epoch) {
        (Some(o), Some(e)) => format!("owner {o} (epoch {e})"),
        _ => "no owner".into(),
    };
    Some(match (&v.why_not, v.rank) {
        (None, _) => format!("answered by this node, {owner}"),
        (Some(w), Some(r)) => format!(
            "{owner}; this node ranks {r} of {}; not here: {w}",
            v.eligible
        ),
        (Some(w), None) => format!("{owner}; not here: {w}"),
    })
}

pub fn combine(service: &str, view: Option<ServiceView>, cx: &Context) -> Explanation {
    let mut addresses = vec![];
    if let Some(f) = view.as_ref().and_then(|v| v.found.as_ref()) {
        for a in &f.addresses {
            let route = a
                .route
                .as_ref()
                .and_then(|r| r.parse::<ipnet::IpNet>().ok());
            let l2 = l2_line(&a.address, cx.l2);
            let why_not = match (&route, &a.refused, &f.skipped) {
                (Some(_), _, _) => None,
                (None, None, _) if a.capped.is_some() => a.capped.clone(),
                (None, None, _) if l2.is_some() => Some("L2 only: not sent to BGP peers".into()),
                (None, Some(r), _) => Some(format!("refused: {r}")),
                (None, None, Some(s)) => Some(s.clone()),
                (None, None, None) => Some("not wanted from this node".into()),
            };
            // Inside an aggregate, the peers are sent the aggregate.
            let sent = (a.aggregate.as_ref())
                .and_then(|r| r.parse::<ipnet::IpNet>().ok())
                .or(route);
            let peers = sent.map_or(vec![], |r| {
                cx.peers.iter().map(|p| peer_line(p, r)).collect()
            });
            addresses.push(AddressLine {
                address: a.address.clone(),
                wanted: route.is_some(),
                why_not,
                drain: route.and(cx.drain.clone()),
                peers,
                l2,
                bgp: a.bgp.clone(),
            });
        }
    }
    let no_address = view
        .as_ref()
        .and_then(|v| v.found.as_ref())
        .is_some_and(|f| f.addresses.is_empty());
    let allocation = match (&cx.pending, &cx.allocator_elsewhere) {
        (Some(why), _) => Some(format!("pending: {why}")),
        (None, Some(holder)) if no_address => Some(format!(
            "assigned by the node holding the allocator Lease ({holder}); vipd explain there says why"
        )),
        _ => None,
    };
    Explanation {
        service: service.to_string(),
        view,
        addresses,
        allocation,
    }
}

fn peer_line((addr, asn, p): &super::PeerRow, route: ipnet::IpNet) -> PeerLine {
    let held = p.holds.as_ref().and_then(|t| t.get(&route));
    let afi = afi_of(&route);
    let too_large = match (held, &p.ctx) {
        (Some(a), Some(ctx)) => crate::bgp::wire::encode::fits(a, afi, ctx).err(),
        _ => None,
    };
    let names = p.ctx.as_ref().map_or(&[][..], |c| &c.names[..]);
    let elsewhere = held.filter(|a| !a.for_peer(names.iter().map(String::as_str)));
    let carried =
        held.is_some() && p.sending.contains(&afi) && too_large.is_none() && elsewhere.is_none();
    let why_not = if carried {
        None
    } else if let Some(a) = elsewhere {
        Some(format!("not sent: for peers {} only", a.peers.join(", ")))
    } else if let Some(e) = too_large.filter(|_| p.sending.contains(&afi)) {
        Some(format!("not sent: {e}"))
    } else if p.established_at.is_none() {
        Some(format!("session {}", p.state))
    } else if !p.families.contains(&afi) {
        Some(format!("{afi} not negotiated with this peer"))
    } else if !p.sending.contains(&afi) {
        Some(no_next_hop(afi))
    } else {
        Some("not sent yet".into())
    };
    let attributes = match (held, &p.ctx) {
        (Some(a), Some(ctx)) if carried => Some(attributes(&ctx.seen(a), ctx, afi)),
        _ => None,
    };
    PeerLine {
        peer: addr.clone(),
        neighbor: p.neighbor,
        asn: *asn,
        state: p.state,
        carried,
        attributes,
        why_not,
    }
}

fn no_next_hop(afi: Afi) -> String {
    match afi {
        Afi::Ipv4 => "no IPv4 next hop for this peer: the session is over IPv6 and the peer did not offer IPv6 next hops for IPv4 (RFC 8950 extended next hop)".into(),
        Afi::Ipv6 => format!("no {afi} next hop for this peer"),
    }
}

fn attributes(
    a: &RouteAttrs,
    ctx: &crate::bgp::wire::encode::SendCtx,
    afi: crate::bgp::wire::Afi,
) -> String {
    let mut parts = vec![];
    let v6 = || {
        ctx.next_hop_v6.map(|n| match ctx.next_hop_v6_link_local {
            Some(ll) => format!("{n} {ll}"),
            None => n.to_string(),
        })
    };
    let nh = match afi {
        // RFC 8950: IPv4 with the IPv6 next hop.
        crate::bgp::wire::Afi::Ipv4 if ctx.v4_via_v6 => v6(),
        crate::bgp::wire::Afi::Ipv4 => ctx.next_hop_v4.map(|n| n.to_string()),
        crate::bgp::wire::Afi::Ipv6 => v6(),
    };
    if let Some(n) = nh {
        parts.push(format!("next hop {n}"));
    }
    if !a.communities.is_empty() {
        let c: Vec<String> = a
            .communities
            .iter()
            .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
            .collect();
        parts.push(format!("communities {}", c.join(" ")));
    }
    if !a.large_communities.is_empty() {
        let c: Vec<String> = a
            .large_communities
            .iter()
            .map(|[x, y, z]| format!("{x}:{y}:{z}"))
            .collect();
        parts.push(format!("large communities {}", c.join(" ")));
    }
    if let Some(l) = a.local_pref {
        parts.push(format!("local-pref {l}"));
    }
    if let Some(m) = a.med {
        parts.push(format!("MED {m}"));
    }
    if parts.is_empty() {
        "no optional attributes".into()
    } else {
        parts.join(", ")
    }
}

impl Explanation {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let Some(view) = &self.view else {
            let _ = writeln!(
                s,
                "{}: vipd runs without [kubernetes] here: it announces only the prefixes of its file",
                self.service
            );
            return s;
        };
        let Some(f) = &view.found else {
            let _ = write!(s, "{}: no such Service in vipd's cache", self.service);
            if view.closest.is_empty() {
                s.push('\n');
            } else {
                let _ = writeln!(s, "; did you mean {}?", view.closest.join(", "));
            }
            return s;
        };
        render_service(&mut s, &self.service, f);
        if let Some(why) = &f.skipped {
            let _ = writeln!(s, "  not announced from this node: {why}");
        }
        for (a, why) in &f.bad_annotations {
            let _ = writeln!(
                s,
                "  annotation {a}: {why}; dropped, the other attributes apply"
            );
        }
        if f.addresses.is_empty() {
            let _ = writeln!(
                s,
                "  no address yet (status.loadBalancer.ingress is empty){}",
                self.allocation
                    .as_ref()
                    .map(|a| format!(": allocation {a}"))
                    .unwrap_or_default()
            );
        } else if let Some(a) = &self.allocation {
            let _ = writeln!(s, "  allocation {a}");
        }
        for a in &self.addresses {
            render_address(&mut s, a);
        }
        s
    }

    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    }
}

fn render_service(s: &mut String, service: &str, f: &Found) {
    let _ = writeln!(
        s,
        "Service {service}: {}{}, externalTrafficPolicy {}",
        if f.load_balancer {
            "LoadBalancer"
        } else {
            "not LoadBalancer"
        },
        f.class
            .as_ref()
            .map(|c| format!(" (class {c})"))
            .unwrap_or_default(),
        if f.local_policy { "Local" } else { "Cluster" },
    );
    let _ = writeln!(
        s,
        "  endpoints: {} ready, {} on this node",
        f.endpoints_ready, f.endpoints_here
    );
}

fn render_address(s: &mut String, a: &AddressLine) {
    match &a.why_not {
        Some(why) => {
            let _ = writeln!(s, "  {}: not announced: {why}", a.address);
            if let Some(l) = &a.l2 {
                let _ = writeln!(s, "    L2: {l}");
            }
            return;
        }
        None => {
            let _ = writeln!(s, "  {}: announced by this node", a.address);
        }
    }
    if let Some(d) = &a.drain {
        let _ = writeln!(s, "    draining: {d}");
    }
    if let Some(l) = &a.l2 {
        let _ = writeln!(s, "    L2: {l}");
    }
    for b in &a.bgp {
        let _ = writeln!(s, "    {b}");
    }
    if a.peers.is_empty() {
        let _ = writeln!(s, "    no peer configured for this node");
    }
    for p in &a.peers {
        let who = peer_text(&p.peer, p.neighbor);
        match (&p.attributes, &p.why_not) {
            (Some(attrs), _) => {
                let _ = writeln!(s, "    to {who} {}: {attrs}", p.asn.text());
            }
            (None, Some(why)) => {
                let _ = writeln!(s, "    not to {who} {}: {why}", p.asn.text());
            }
            (None, None) => {}
        }
    }
}

/// A peer as text: its address, or its interface and the neighbour heard
/// there ("eth1 (neighbour fe80::1)", "eth1 (no neighbour heard yet)").
pub fn peer_text(at: &crate::config::PeerAddr, neighbor: Option<std::net::Ipv6Addr>) -> String {
    match (at.interface(), neighbor) {
        (None, _) => at.to_string(),
        (Some(n), Some(a)) => format!("{n} (neighbour {a})"),
        (Some(n), None) => format!("{n} (no neighbour heard yet)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::explain::AddressView;
    use std::sync::Arc;

    fn view(skipped: Option<&str>) -> ServiceView {
        ServiceView {
            service: "default/web".into(),
            found: Some(Found {
                load_balancer: true,
                class: None,
                local_policy: false,
                endpoints_ready: 2,
                endpoints_here: 1,
                skipped: skipped.map(String::from),
                addresses: vec![
                    AddressView {
                        address: "203.0.113.10".into(),
                        route: skipped.is_none().then(|| "203.0.113.10/32".into()),
                        refused: None,
                        aggregate: None,
                        bgp: vec![],
                        capped: None,
                    },
                    AddressView {
                        address: "192.0.2.1".into(),
                        route: None,
                        refused: Some("192.0.2.1 is this node's own address".into()),
                        aggregate: None,
                        bgp: vec![],
                        capped: None,
                    },
                ],
                bad_annotations: vec![],
            }),
            closest: vec![],
        }
    }

    /// A context of these peers alone: no drain, allocator or L2.
    fn plain(peers: &[super::super::PeerRow]) -> Context<'_> {
        Context {
            peers,
            drain: None,
            pending: None,
            allocator_elsewhere: None,
            l2: &[],
        }
    }

    fn peers() -> Vec<super::super::PeerRow> {
        let attrs = Arc::new(RouteAttrs {
            communities: vec![65010 << 16 | 7],
            ..Default::default()
        });
        let up = crate::bgp::session::PeerStatus {
            state: "Established",
            established_at: Some(std::time::SystemTime::now()),
            families: vec![crate::bgp::wire::Afi::Ipv4],
            sending: vec![crate::bgp::wire::Afi::Ipv4],
            holds: Some(Arc::new(
                [("203.0.113.10/32".parse::<ipnet::IpNet>().unwrap(), attrs)]
                    .into_iter()
                    .collect(),
            )),
            ctx: Some(crate::bgp::wire::encode::SendCtx {
                local_asn: 65010,
                ebgp: true,
                four_octet_as: true,
                next_hop_v4: Some("192.0.2.1".parse().unwrap()),
                next_hop_v6: None,
                next_hop_v6_link_local: None,
                defaults: RouteAttrs {
                    communities: vec![65010 << 16 | 1],
                    ..Default::default()
                },
                names: vec![],
                v4_via_v6: false,
            }),
            ..crate::bgp::session::PeerStatus::default()
        };
        let down = crate::bgp::session::PeerStatus {
            state: "Active",
            ..crate::bgp::session::PeerStatus::default()
        };
        vec![
            (
                crate::config::PeerAddr::Ip("192.0.2.2".parse().unwrap()),
                crate::config::PeerAs::Number(65002),
                up,
            ),
            (
                crate::config::PeerAddr::Ip("198.51.100.2".parse().unwrap()),
                crate::config::PeerAs::Number(65003),
                down,
            ),
        ]
    }

    #[test]
    fn an_l2_address_says_who_answers_and_why_not_here() {
        use crate::l2::state::VipLine;
        let p = peers();
        let vips = [VipLine {
            addrs: vec!["203.0.113.10".parse().unwrap()],
            owner: Some("node-b".into()),
            epoch: Some(3),
            here: false,
            rank: Some(2),
            eligible: 3,
            why_not: Some("node-b holds it (epoch 3) and stays eligible".into()),
        }];
        let cx = Context {
            peers: &p,
            drain: None,
            pending: None,
            allocator_elsewhere: None,
            l2: &vips,
        };
        let text = combine("default/web", Some(view(None)), &cx).render();
        assert!(
            text.contains(
                "    L2: owner node-b (epoch 3); this node ranks 2 of 3; not here: node-b holds it"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_address_says_where_it_goes_and_why_not() {
        let p = peers();
        let cx = plain(&p);
        let e = combine("default/web", Some(view(None)), &cx);
        let text = e.render();
        for line in [
            "Service default/web: LoadBalancer, externalTrafficPolicy Cluster",
            "  endpoints: 2 ready, 1 on this node",
            "  203.0.113.10: announced by this node",
            "    to 192.0.2.2 AS65002: next hop 192.0.2.1, communities 65010:1 65010:7",
            "    not to 198.51.100.2 AS65003: session Active",
            "  192.0.2.1: not announced: refused: 192.0.2.1 is this node's own address",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        let j: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(j["addresses"][0]["peers"][0]["carried"], true);
        // An AS number stays a number, as before words were allowed.
        assert_eq!(j["addresses"][0]["peers"][0]["asn"], 65002);
        assert_eq!(j["addresses"][0]["peers"][1]["carried"], false);
        assert_eq!(j["view"]["found"]["endpoints_ready"], 2);
    }

    /// An unnumbered peer is named by its interface and the neighbour
    /// there; IPv4 goes with the IPv6 next hop, or says why it does not.
    #[test]
    fn an_unnumbered_peer_says_its_interface_neighbour_and_next_hop() {
        let mut p = peers();
        let ll: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        p[0].0 = crate::config::PeerAddr::Interface("eth1".into());
        p[0].1 = crate::config::PeerAs::External;
        p[0].2.neighbor = Some("fe80::2".parse().unwrap());
        let ctx = p[0].2.ctx.as_mut().unwrap();
        (ctx.next_hop_v4, ctx.next_hop_v6, ctx.v4_via_v6) = (None, Some(ll), true);
        let mut without = p[0].clone();
        without.2.ctx.as_mut().unwrap().v4_via_v6 = false;
        without.2.sending = vec![crate::bgp::wire::Afi::Ipv6];
        without.0 = crate::config::PeerAddr::Interface("eth2".into());
        without.2.neighbor = None;
        p.push(without);
        let cx = plain(&p);
        let e = combine("default/web", Some(view(None)), &cx);
        let j: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        let first = &j["addresses"][0]["peers"][0];
        assert_eq!(
            (&first["peer"], &first["asn"], &first["neighbor"]),
            (&"eth1".into(), &"external".into(), &"fe80::2".into())
        );
        let text = e.render();
        for line in [
            "    to eth1 (neighbour fe80::2) AS external: next hop fe80::1, communities 65010:1 65010:7",
            "    not to eth2 (no neighbour heard yet) AS external: no IPv4 next hop for this peer: the session is over IPv6 and the peer did not offer IPv6 next hops for IPv4 (RFC 8950 extended next hop)",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }

    /// A route whose attributes, with this peer's defaults, do not fit in
    /// one UPDATE: explain names the peer and the reason, not "announced".
    #[test]
    fn a_route_too_large_for_a_peer_says_so_for_that_peer() {
        let mut p = peers();
        if let Some(ctx) = &mut p[0].2.ctx {
            ctx.defaults.communities = (0..1020).collect();
        }
        let cx = plain(&p);
        let text = combine("default/web", Some(view(None)), &cx).render();
        assert!(
            text.lines().any(|l| l
                == "    not to 192.0.2.2 AS65002: not sent: its attributes need 4084 bytes; one UPDATE has room for 4068 beside the prefix"),
            "{text}"
        );
    }

    #[test]
    fn service_wide_reasons_drains_and_unknown_names() {
        let p = peers();
        let cx = Context {
            peers: &p,
            drain: Some("announced with GRACEFUL_SHUTDOWN (cordoned), withdrawn in 12s".into()),
            pending: None,
            allocator_elsewhere: None,
            l2: &[],
        };
        let text = combine("default/web", Some(view(Some("no ready endpoint"))), &cx).render();
        assert!(
            text.contains("  not announced from this node: no ready endpoint\n"),
            "{text}"
        );
        assert!(
            text.contains("  203.0.113.10: not announced: no ready endpoint\n"),
            "{text}"
        );
        let text = combine("default/web", Some(view(None)), &cx).render();
        assert!(
            text.contains(
                "    draining: announced with GRACEFUL_SHUTDOWN (cordoned), withdrawn in 12s\n"
            ),
            "{text}"
        );
        let unknown = ServiceView {
            service: "default/wbe".into(),
            found: None,
            closest: vec!["default/web".into()],
        };
        let text = combine("default/wbe", Some(unknown), &cx).render();
        assert_eq!(
            text,
            "default/wbe: no such Service in vipd's cache; did you mean default/web?\n"
        );
        let text = combine("default/web", None, &cx).render();
        assert!(text.contains("without [kubernetes]"), "{text}");
    }

    #[test]
    fn a_service_without_an_address_says_who_allocates() {
        let p = peers();
        let mut v = view(None);
        v.found.as_mut().unwrap().addresses.clear();
        let here = Context {
            peers: &p,
            drain: None,
            pending: Some("pool public has no free V4 address".into()),
            allocator_elsewhere: None,
            l2: &[],
        };
        let text = combine("default/web", Some(v.clone()), &here).render();
        assert!(
            text.contains("  no address yet (status.loadBalancer.ingress is empty): allocation pending: pool public has no free V4 address\n"),
            "{text}"
        );
        let elsewhere = Context {
            pending: None,
            allocator_elsewhere: Some("node-b".into()),
            ..here
        };
        let text = combine("default/web", Some(v), &elsewhere).render();
        assert!(
            text.contains("allocation assigned by the node holding the allocator Lease (node-b)"),
            "{text}"
        );
        // A Service with its addresses says nothing of the allocator.
        let text = combine("default/web", Some(view(None)), &elsewhere).render();
        assert!(!text.contains("allocat"), "{text}");
    }
}
