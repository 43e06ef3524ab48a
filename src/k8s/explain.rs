//! Why one Service is (or is not) announced from this node, from the same
//! snapshot and rules as the intent: a pure function, so `vipd explain`
//! can never disagree with what the intent decided.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::Serialize;

use super::intent::{forbidden, part};
use super::model::*;
use crate::config::KubeConfig;

/// One Service as this node sees it; `found` is `None` for a name the
/// cache does not hold, with the closest names it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    pub service: Key,
    pub found: Option<Found>,
    pub closest: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub load_balancer: bool,
    pub class: Option<String>,
    pub local_policy: bool,
    pub endpoints_ready: usize,
    /// Ready (or serving, not terminating) endpoints on this node.
    pub endpoints_here: usize,
    /// Why no address of the Service is announced from this node, when
    /// the reason is the Service's, not an address's.
    pub skipped: Option<String>,
    pub addresses: Vec<AddressView>,
    /// `(annotation, reason)`: a value the platform does not allow Services
    /// to set, dropped (the rest of the attributes apply).
    pub bad_annotations: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressView {
    /// As the Service lists it (status or externalIPs).
    pub address: String,
    /// The route the intent wants for it; `None` when refused or skipped.
    pub route: Option<String>,
    pub refused: Option<String>,
    /// The aggregate the route is announced in, instead of alone.
    pub aggregate: Option<String>,
    /// Why `max_announcing_nodes` leaves it to other nodes.
    pub capped: Option<String>,
    /// Where each attribute the route carries comes from, and whether it
    /// is aggregated (see `describe`).
    pub bgp: Vec<String>,
}

/// At most this many close names are offered for an unknown Service.
const CLOSEST: usize = 3;

/// What the sharing rules decided for one Service's addresses (from
/// `Tracker::sharing_view`): refusals, and addresses held back.
pub type Sharing = (Vec<super::intent::Refusal>, Vec<(ipnet::IpNet, String)>);

/// What the tracker knows of an address's aggregate: the aggregate it is
/// announced in, and a line saying so or why not.
pub type Aggregated<'a> = &'a dyn Fn(IpAddr) -> (Option<ipnet::IpNet>, Option<String>);

pub fn explain(
    s: &Snapshot,
    k: &KubeConfig,
    key: &str,
    sharing: &Sharing,
    aggregated: Aggregated,
) -> ServiceView {
    let Some(svc) = s.services.get(key) else {
        return ServiceView {
            service: key.into(),
            found: None,
            closest: closest(s.services.keys(), key),
        };
    };
    let slices: Vec<&SliceInfo> = s
        .slices
        .values()
        .filter(|sl| super::intent::slice_owner(sl).as_deref() == Some(key))
        .collect();
    let endpoints_ready = slices.iter().map(|sl| sl.ready as usize).sum();
    let endpoints_here = slices.iter().map(|sl| sl.here as usize).sum();
    let f: HashSet<IpAddr> = forbidden(s);
    let p = part(svc, &slices, &f, s.node.as_ref(), &s.eligible, k);
    let skipped = skipped(svc, k, endpoints_ready, endpoints_here);
    let mut addresses = addresses(svc, k, &p, sharing);
    let cap = super::ecmp::limit(svc, k, &mut vec![]).ok().flatten();
    let cap = cap.filter(|_| !svc.local_policy && skipped.is_none());
    for a in addresses
        .iter_mut()
        .filter(|a| a.route.is_none() && a.refused.is_none())
    {
        let (Ok(ip), Some(n)) = (a.address.parse::<IpAddr>(), cap) else {
            continue;
        };
        if !super::ecmp::here(ip, &k.node_name, &s.eligible, n) {
            a.capped = Some(super::ecmp::why_not(ip, &s.eligible, n));
        }
    }
    for a in addresses.iter_mut().filter(|a| a.route.is_some()) {
        let Ok(ip) = a.address.parse::<IpAddr>() else {
            continue;
        };
        let (agg, note) = aggregated(ip);
        a.aggregate = agg.map(|n| n.to_string());
        a.bgp = describe(svc, k, ip);
        a.bgp.extend(note);
    }
    ServiceView {
        service: key.into(),
        found: Some(Found {
            load_balancer: svc.load_balancer,
            class: svc.class.as_deref().map(String::from),
            local_policy: svc.local_policy,
            endpoints_ready,
            endpoints_here,
            skipped,
            addresses,
            bad_annotations: (p.bad_annotations().iter())
                .map(|b| (b.annotation.clone(), b.reason.clone()))
                .collect(),
        }),
        closest: vec![],
    }
}

/// Each address the Service lists (once), with the intent's verdict.
fn addresses(
    svc: &ServiceInfo,
    k: &KubeConfig,
    p: &super::intent::Part,
    (shared_refused, held): &Sharing,
) -> Vec<AddressView> {
    let mut out: Vec<AddressView> = vec![];
    for raw in super::intent::listed(svc, k) {
        let net = raw.ip().map(ipnet::IpNet::from);
        let text = raw.to_string();
        let refused = p
            .refused()
            .iter()
            .find(|r| r.address == text)
            .map(|r| r.reason.clone())
            .or_else(|| {
                let n = net?;
                let by_sharing = shared_refused
                    .iter()
                    .find(|r| r.address == n.addr().to_string());
                by_sharing.map(|r| r.reason.clone()).or_else(|| {
                    let h = held.iter().find(|(q, _)| *q == n)?;
                    Some(format!("held back: {}", h.1))
                })
            });
        let route = net
            .filter(|n| p.routes.iter().any(|(r, _)| r == n))
            .filter(|_| refused.is_none());
        out.push(AddressView {
            address: text,
            route: route.map(|r| r.to_string()),
            refused,
            aggregate: None,
            capped: None,
            bgp: vec![],
        });
    }
    out
}

/// Where each attribute of an address's route comes from: its Service's
/// annotations or its pool's (or advertisement's) keys.
fn describe(svc: &ServiceInfo, k: &KubeConfig, ip: IpAddr) -> Vec<String> {
    let own = super::attrs::parse(svc, &k.service_attrs, &mut vec![]).unwrap_or_default();
    let src = k.adverts.of(ip);
    let pool = src.map(|s| &s.advert.attrs);
    let origin = src.map_or("", |s| &s.origin);
    let mut out = vec![];
    let community = |c: &u32| format!("{}:{}", c >> 16, c & 0xffff);
    let large = |c: &[u32; 3]| format!("{}:{}:{}", c[0], c[1], c[2]);
    let mut list = |what: &str, own: Vec<String>, ann: &str, pooled: Vec<String>| {
        let mut parts = vec![];
        if !pooled.is_empty() {
            parts.push(format!("{} ({origin})", pooled.join(" ")));
        }
        if !own.is_empty() {
            parts.push(format!("{} ({ann})", own.join(" ")));
        }
        if !parts.is_empty() {
            out.push(format!("{what} {}", parts.join(", ")));
        }
    };
    list(
        "communities",
        own.communities.iter().map(community).collect(),
        ANNOTATION_COMMUNITIES,
        pool.map_or(vec![], |p| p.communities.iter().map(community).collect()),
    );
    list(
        "large communities",
        own.large_communities.iter().map(large).collect(),
        ANNOTATION_LARGE_COMMUNITIES,
        pool.map_or(vec![], |p| p.large_communities.iter().map(large).collect()),
    );
    for (what, mine, theirs, ann) in [
        (
            "local-pref",
            own.local_pref,
            pool.and_then(|p| p.local_pref),
            ANNOTATION_LOCAL_PREF,
        ),
        ("MED", own.med, pool.and_then(|p| p.med), ANNOTATION_MED),
    ] {
        match (mine, theirs) {
            (Some(v), Some(t)) => out.push(format!("{what} {v} ({ann}, over {origin}'s {t})")),
            (Some(v), None) => out.push(format!("{what} {v} ({ann})")),
            (None, Some(t)) => out.push(format!("{what} {t} ({origin})")),
            (None, None) => {}
        }
    }
    if let Some(p) = pool.filter(|p| !p.peers.is_empty()) {
        out.push(format!("only to peers {} ({origin})", p.peers.join(", ")));
    }
    out
}

/// The Service-wide reasons, in the order the intent checks them.
fn skipped(svc: &ServiceInfo, k: &KubeConfig, ready: usize, here: usize) -> Option<String> {
    if !svc.load_balancer {
        return Some("not a LoadBalancer Service".into());
    }
    if !super::intent::wanted_class(svc, k) {
        return Some(match (&svc.class, &k.load_balancer_class) {
            (Some(c), Some(ours)) => {
                format!("loadBalancerClass {c:?} is not vipd's ({ours:?})")
            }
            (Some(c), None) => {
                format!("loadBalancerClass {c:?}: vipd takes only Services without a class")
            }
            (None, _) => "no loadBalancerClass, and kubernetes.include_unclassed is off".into(),
        });
    }
    if svc.local_policy && here == 0 {
        return Some("externalTrafficPolicy Local and no ready endpoint on this node".to_string());
    }
    if !svc.local_policy && ready == 0 && !k.announce_without_endpoints {
        return Some("no ready endpoint".into());
    }
    None
}

/// Names within a small edit distance of `key`, closest first.
fn closest<'a>(names: impl Iterator<Item = &'a Key>, key: &str) -> Vec<Key> {
    let limit = (key.len() / 3).max(2);
    let mut scored: Vec<(usize, &Key)> = names
        .map(|n| (strsim::levenshtein(n, key), n))
        .filter(|(d, n)| *d <= limit || n.ends_with(&format!("/{}", tail(key))))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(CLOSEST)
        .map(|(_, n)| n.clone())
        .collect()
}

/// The name part of `namespace/name`.
fn tail(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::super::intent::tests::{kcfg, slice, svc};
    use super::*;

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        for (ns, name, ips) in [
            ("default", "web", vec!["203.0.113.10"]),
            ("default", "api", vec!["203.0.113.11", "192.0.2.1", "bogus"]),
            ("shop", "web", vec!["203.0.113.12"]),
        ] {
            s.services
                .insert(format!("{ns}/{name}").into(), svc(ns, name, &ips));
        }
        s.slices.insert(
            "default/web-1".into(),
            slice("default", "web", &[("node-a", true)]),
        );
        s.slices.insert(
            "default/api-1".into(),
            slice("default", "api", &[("node-b", true)]),
        );
        s.node = Some(NodeInfo {
            name: "node-a".into(),
            addresses: vec!["192.0.2.1".parse().unwrap()],
            ..Default::default()
        });
        s
    }

    #[test]
    fn an_announced_service_names_its_route() {
        let v = explain(
            &snap(),
            &kcfg(),
            "default/web",
            &Default::default(),
            &|_| (None, None),
        );
        let f = v.found.unwrap();
        assert_eq!(f.skipped, None);
        assert_eq!(f.endpoints_ready, 1);
        assert_eq!(f.endpoints_here, 1);
        assert_eq!(f.addresses[0].route.as_deref(), Some("203.0.113.10/32"));
    }

    #[test]
    fn refusals_are_per_address() {
        let f = explain(
            &snap(),
            &kcfg(),
            "default/api",
            &Default::default(),
            &|_| (None, None),
        )
        .found
        .unwrap();
        let by = |a: &str| f.addresses.iter().find(|x| x.address == a).unwrap();
        assert!(by("203.0.113.11").route.is_some());
        assert_eq!(
            by("192.0.2.1").refused.as_deref(),
            Some("192.0.2.1 is this node's own address")
        );
        assert_eq!(by("bogus").refused.as_deref(), Some("not an IP address"));
    }

    #[test]
    fn service_wide_reasons_match_the_intent() {
        let mut s = snap();
        let k = kcfg();
        s.slices.clear();
        let f = explain(&s, &k, "default/web", &Default::default(), &|_| {
            (None, None)
        })
        .found
        .unwrap();
        assert_eq!(f.skipped.as_deref(), Some("no ready endpoint"));
        assert!(f.addresses.iter().all(|a| a.route.is_none()));

        let mut s = snap();
        s.services.get_mut("default/web").unwrap().local_policy = true;
        let f = explain(&s, &k, "default/api", &Default::default(), &|_| {
            (None, None)
        })
        .found
        .unwrap();
        assert_eq!(f.skipped, None);
        s.services.get_mut("default/api").unwrap().local_policy = true;
        let f = explain(&s, &k, "default/api", &Default::default(), &|_| {
            (None, None)
        })
        .found
        .unwrap();
        assert_eq!(
            f.skipped.as_deref(),
            Some("externalTrafficPolicy Local and no ready endpoint on this node")
        );

        let mut s = snap();
        s.services.get_mut("default/web").unwrap().load_balancer = false;
        let f = explain(&s, &k, "default/web", &Default::default(), &|_| {
            (None, None)
        })
        .found
        .unwrap();
        assert_eq!(f.skipped.as_deref(), Some("not a LoadBalancer Service"));

        let mut s = snap();
        s.services.get_mut("default/web").unwrap().class = Some("other".into());
        let f = explain(&s, &k, "default/web", &Default::default(), &|_| {
            (None, None)
        })
        .found
        .unwrap();
        assert!(f.skipped.unwrap().contains("loadBalancerClass \"other\""));
    }

    #[test]
    fn an_unknown_name_lists_the_closest() {
        let v = explain(
            &snap(),
            &kcfg(),
            "default/wbe",
            &Default::default(),
            &|_| (None, None),
        );
        assert!(v.found.is_none());
        assert_eq!(&*v.closest[0], "default/web");
        let v = explain(&snap(), &kcfg(), "prod/web", &Default::default(), &|_| {
            (None, None)
        });
        assert!(v.closest.contains(&"shop/web".into()), "{v:?}");
        assert!(explain(
            &snap(),
            &kcfg(),
            "zzz/qqqqqqqq",
            &Default::default(),
            &|_| (None, None)
        )
        .closest
        .is_empty());
    }
}
