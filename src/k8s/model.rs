//! What vipd keeps of the cluster's objects: plain values, so that the
//! intent is a pure function tested without a cluster. Strings that come
//! from the API server unparsed (IPs, annotations) stay strings here; the
//! intent parses them and reports what it cannot use.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// A Service's UID: owners of a VIP are tracked by it.
pub type Uid = std::sync::Arc<str>;

/// `namespace/name`.
pub type Key = std::sync::Arc<str>;

pub const ANNOTATION_COMMUNITIES: &str = "vipd.io/communities";
pub const ANNOTATION_LARGE_COMMUNITIES: &str = "vipd.io/large-communities";
pub const ANNOTATION_LOCAL_PREF: &str = "vipd.io/local-preference";
pub const ANNOTATION_MED: &str = "vipd.io/med";
/// Namespaces whose Services may share this Service's addresses
/// (`"b, c"` or `"*"`); both sides must name each other.
pub const ANNOTATION_SHARING_NAMESPACES: &str = "vipd.io/sharing-namespaces";

/// A `vipd.io/sharing-namespaces` value: names separated by commas or
/// spaces, at most 64 of them (one namespace per Service is the usual).
pub fn namespace_list(v: &str) -> Vec<String> {
    v.split([',', ' '])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .take(64)
        .map(String::from)
        .collect()
}

/// The namespace of a `namespace/name` key (empty for a key without one).
pub fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// Whether Services of namespaces `a` and `b`, each naming the namespaces
/// it shares with (`vipd.io/sharing-namespaces`), may share an address:
/// one namespace always; two only when each names the other (or `*`). The
/// announcer's sharing rules and the allocator's both ask this.
pub fn namespaces_share(a: &str, a_allows: &[String], b: &str, b_allows: &[String]) -> bool {
    let names = |list: &[String], ns: &str| list.iter().any(|n| n == "*" || n == ns);
    a == b || (names(a_allows, b) && names(b_allows, a))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub uid: Uid,
    /// `namespace/name`: the same shared text as the snapshot's key.
    pub key: Key,
    /// creationTimestamp, seconds since the epoch: of the owners of one
    /// address, the oldest holds it.
    pub created: i64,
    /// `spec.type == "LoadBalancer"`.
    pub load_balancer: bool,
    pub class: Option<Box<str>>,
    /// `status.loadBalancer.ingress[].ip`.
    pub ingress_ips: Box<[Listed]>,
    pub external_ips: Box<[Listed]>,
    pub cluster_ips: Box<[String]>,
    /// `spec.externalTrafficPolicy == "Local"`.
    pub local_policy: bool,
    /// The `vipd.io/*` annotations only.
    pub annotations: BTreeMap<String, String>,
}

impl ServiceInfo {
    pub fn key(&self) -> Key {
        self.key.clone()
    }

    pub fn name(&self) -> &str {
        self.key.split_once('/').map_or(&self.key, |(_, n)| n)
    }

    /// The namespaces `vipd.io/sharing-namespaces` names (`*`: any).
    pub fn sharing_namespaces(&self) -> Vec<String> {
        self.annotations
            .get(ANNOTATION_SHARING_NAMESPACES)
            .map(|v| namespace_list(v))
            .unwrap_or_default()
    }
}

/// An address as a Service lists it: a value where it is an IP address,
/// its text where not (kept to say what was refused). A value is 24 bytes
/// in place, where text was a string of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    Ip(IpAddr),
    Text(Box<str>),
}

impl From<&str> for Listed {
    fn from(s: &str) -> Listed {
        match s.trim().parse() {
            Ok(ip) => Listed::Ip(ip),
            Err(_) => Listed::Text(s.into()),
        }
    }
}

impl std::fmt::Display for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listed::Ip(ip) => ip.fmt(f),
            Listed::Text(t) => f.write_str(t),
        }
    }
}

impl Listed {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Listed::Ip(ip) => Some(*ip),
            Listed::Text(_) => None,
        }
    }
}

/// One endpoint as the API gives it: what [`SliceInfo`] is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub node: Option<String>,
    pub addresses: Vec<String>,
    /// Conditions as the API defines their absence: ready nil is true,
    /// serving nil follows ready, terminating nil is false.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl EndpointInfo {
    /// Ready, or serving and not terminating: what a Local Service and the
    /// API server list count.
    pub fn usable(&self) -> bool {
        self.ready || (self.serving && !self.terminating)
    }
}

/// What vipd keeps of an EndpointSlice: counts, not endpoints. A Service
/// is announced on whether it has a ready endpoint anywhere (Cluster) or a
/// usable one here (Local); which endpoints they are matters to nobody
/// but the API server's own Service, whose addresses are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// The key (`namespace/name`) of the Service it belongs to: its
    /// `kubernetes.io/service-name` label in its namespace.
    pub service: Option<Key>,
    /// Ready endpoints, on any node.
    pub ready: u32,
    /// This node's usable endpoints ([`EndpointInfo::usable`]).
    pub here: u32,
    /// For `default/kubernetes` only: every endpoint address, and whether
    /// its endpoint is usable (the API servers, never announced).
    pub api: Vec<(IpAddr, bool)>,
}

impl SliceInfo {
    /// The slice of `service` in `namespace` with `endpoints`, as node
    /// `node` keeps it.
    pub fn new(
        namespace: String,
        service: Option<String>,
        endpoints: &[EndpointInfo],
        node: &str,
    ) -> SliceInfo {
        let count = |f: &dyn Fn(&EndpointInfo) -> bool| {
            u32::try_from(endpoints.iter().filter(|e| f(e)).count()).unwrap_or(u32::MAX)
        };
        let service: Option<Key> = service.map(|s| format!("{namespace}/{s}").into());
        let api = if service.as_deref() == Some("default/kubernetes") {
            let mut api = vec![];
            for e in endpoints {
                let addrs = e.addresses.iter().filter_map(|a| a.parse().ok());
                api.extend(addrs.map(|a| (a, e.usable())));
            }
            api
        } else {
            vec![]
        };
        SliceInfo {
            ready: count(&|e| e.ready),
            here: count(&|e| e.node.as_deref() == Some(node) && e.usable()),
            service,
            api,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Which `[[bgp.peers]]` this node gets (their `node_selector`).
    pub labels: BTreeMap<String, String>,
    /// `spec.unschedulable`, and the keys of `spec.taints`: drains.
    pub unschedulable: bool,
    pub taints: Vec<String>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
}

/// What of this node's Node object decides a drain (`drain::drained`):
/// the watch sends it as a plain value, so it needs nothing of the drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// The keys of `spec.taints`.
    pub taints: Vec<String>,
}

/// A consistent view of the cluster: what the intent is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: BTreeMap<Key, ServiceInfo>,
    /// Keyed by `namespace/slice-name`.
    pub slices: BTreeMap<Key, SliceInfo>,
    /// This node, where its Node object exists.
    pub node: Option<NodeInfo>,
    /// With `max_announcing_nodes`: the nodes that may announce a capped
    /// VIP, sorted (`k8s::ecmp::eligible`).
    pub eligible: Vec<String>,
    /// Addresses of the API server as vipd's client reaches it.
    pub api_server: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(node: &str, addr: &str, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
        EndpointInfo {
            node: Some(node.into()),
            addresses: vec![addr.into()],
            ready,
            serving,
            terminating,
        }
    }

    #[test]
    fn a_slice_keeps_counts_as_this_node_sees_them() {
        let eps = [
            ep("a", "10.0.0.1", true, true, false),
            ep("a", "10.0.0.2", false, true, false),
            ep("a", "10.0.0.3", false, true, true),
            ep("b", "10.0.0.4", true, true, false),
            ep("b", "10.0.0.5", false, false, false),
        ];
        let s = SliceInfo::new("shop".into(), Some("web".into()), &eps, "a");
        assert_eq!((s.ready, s.here), (2, 2));
        assert!(s.api.is_empty(), "only the API server's addresses are kept");
        let s = SliceInfo::new("shop".into(), Some("web".into()), &eps, "b");
        assert_eq!((s.ready, s.here), (2, 1));
        let s = SliceInfo::new("default".into(), Some("kubernetes".into()), &eps, "c");
        assert_eq!(s.here, 0);
        let usable: Vec<bool> = s.api.iter().map(|(_, u)| *u).collect();
        assert_eq!(usable, [true, true, false, true, false]);
        assert_eq!(s.api[3].0, "10.0.0.4".parse::<IpAddr>().unwrap());
    }
}
