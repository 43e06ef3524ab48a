//! What this node should announce, as a pure function of a snapshot of the
//! cluster, the node and the configuration. It never looks at the order in
//! which objects arrived, only at what is there: an EndpointSlice seen
//! before its Service changes nothing until both are in the snapshot, and
//! then the answer is the same as for any other order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

pub use super::aggregate::Agg;
use super::aggregate::{self, Blockers};
use super::model::*;
use crate::config::{KubeConfig, Mode, RouteAttrs};

/// One VIP this node should announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Want {
    /// The Services that want it (UIDs, sorted); it stays while any does.
    /// A list, not a set: nearly every VIP has one owner, held inline (a
    /// one-entry B-tree set is a 280-byte node, paid again in every copy
    /// of the intent).
    pub owners: Owners,
    /// Shared: every VIP without attributes of its own holds [`plain`].
    pub attrs: Arc<RouteAttrs>,
    /// Announced alone, inside an aggregate, or an aggregate itself.
    pub agg: Agg,
}

/// The attributes of a route without any of its own, one copy for all.
static PLAIN: std::sync::LazyLock<Arc<RouteAttrs>> = std::sync::LazyLock::new(Default::default);

pub fn plain() -> Arc<RouteAttrs> {
    PLAIN.clone()
}

/// `a` as a shared value: [`plain`]'s where it has no attributes, so the
/// routes of most Services cost a pointer, not a copy.
fn shared(a: RouteAttrs) -> Arc<RouteAttrs> {
    if a == **PLAIN {
        plain()
    } else {
        Arc::new(a)
    }
}

/// A VIP's owners: one needs no allocation.
pub type Owners = smallvec::SmallVec<[Uid; 1]>;

/// A VIP that will not be announced, and why (an Event on the Service).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Refusal {
    pub service: Key,
    pub uid: Uid,
    pub address: String,
    pub kind: RefusalKind,
    pub reason: String,
}

/// Why an address is refused, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    NotAnAddress,
    /// Unspecified, loopback or multicast.
    Unusable,
    NodeAddress,
    ApiServer,
    /// Outside `allowed_prefixes` (and, with `[ipam]`, every pool).
    OutsideAllowedPrefixes,
    /// An attribute annotation does not parse: not announced at all.
    BadAnnotation,
    /// Over the bound of an annotation, or the owners' communities do not
    /// fit in one UPDATE.
    AttributesTooLarge,
    /// Held by a Service it may not share with.
    SharingNotAllowed,
    /// Asks for L2 only (`vipd.io/announce` or its pool) where this node
    /// has no `[l2]`.
    NoL2,
}

impl RefusalKind {
    pub const ALL: [RefusalKind; 9] = [
        RefusalKind::NotAnAddress,
        RefusalKind::Unusable,
        RefusalKind::NodeAddress,
        RefusalKind::ApiServer,
        RefusalKind::OutsideAllowedPrefixes,
        RefusalKind::BadAnnotation,
        RefusalKind::AttributesTooLarge,
        RefusalKind::SharingNotAllowed,
        RefusalKind::NoL2,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::NotAnAddress => "not_an_address",
            RefusalKind::Unusable => "unusable_address",
            RefusalKind::NodeAddress => "node_address",
            RefusalKind::ApiServer => "api_server",
            RefusalKind::OutsideAllowedPrefixes => "outside_allowed_prefixes",
            RefusalKind::BadAnnotation => "bad_annotation",
            RefusalKind::AttributesTooLarge => "attributes_too_large",
            RefusalKind::SharingNotAllowed => "sharing_not_allowed",
            RefusalKind::NoL2 => "no_l2",
        }
    }

    /// The reason of the Kubernetes Event that reports it.
    pub fn event_reason(self) -> &'static str {
        match self {
            RefusalKind::BadAnnotation => "BadAnnotation",
            RefusalKind::AttributesTooLarge => "AttributesTooLarge",
            RefusalKind::SharingNotAllowed => "SharingRefused",
            _ => "VIPRefused",
        }
    }
}

/// An attribute value the platform does not allow Services to set: dropped,
/// the rest of the Service's attributes apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BadAnnotation {
    pub service: Key,
    pub uid: Uid,
    pub annotation: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    pub routes: BTreeMap<IpNet, Want>,
    pub refused: Vec<Refusal>,
    pub bad_annotations: Vec<BadAnnotation>,
    /// The Services with addresses in L2 mode (`crate::l2` decides who
    /// answers for them).
    pub l2: BTreeMap<Key, L2Want>,
}

/// One Service's addresses in L2 mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Want {
    pub addrs: Vec<IpAddr>,
    /// externalTrafficPolicy Local.
    pub local: bool,
    /// This node has a usable endpoint for it (what Local needs).
    pub here: bool,
}

/// The annotation that places a Service's addresses in BGP, L2 or both.
pub const ANNOUNCE: &str = "vipd.io/announce";

/// `vipd.io/announce` as written; a value not understood is an error.
fn announce_mode(svc: &ServiceInfo) -> Result<Option<Mode>, String> {
    svc.annotations
        .get(ANNOUNCE)
        .map(|v| Mode::parse(v.trim()).map_err(|e| format!("{ANNOUNCE}: {e}; not announced")))
        .transpose()
}

/// How one address is announced: the Service's annotation, else its pool's
/// mode, else `[l2] default`; BGP alone without `[l2]`.
fn mode_of(ip: IpAddr, asked: Option<Mode>, k: &KubeConfig) -> Mode {
    asked.unwrap_or_else(|| k.l2.as_ref().map_or(Mode::Bgp, |l| l.mode_of(ip)))
}

pub(crate) fn wanted_class(svc: &ServiceInfo, k: &KubeConfig) -> bool {
    match (&k.load_balancer_class, &svc.class) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(want), Some(c)) => **want == **c,
        (Some(_), None) => k.include_unclassed,
    }
}

/// Does this Service, by its endpoints, want to be announced from this node?
fn has_endpoints(svc: &ServiceInfo, slices: &[&SliceInfo], k: &KubeConfig) -> bool {
    if svc.local_policy {
        slices.iter().any(|s| s.here > 0)
    } else {
        k.announce_without_endpoints || slices.iter().any(|s| s.ready > 0)
    }
}

/// The addresses no Service may take: this node's own, the API server's.
pub(crate) fn forbidden(s: &Snapshot) -> HashSet<IpAddr> {
    let mut f: HashSet<IpAddr> = s.api_server.iter().copied().collect();
    if let Some(n) = &s.node {
        f.extend(n.addresses.iter().copied());
    }
    // The API server as the cluster knows it: default/kubernetes.
    if let Some(k) = s.services.get("default/kubernetes") {
        f.extend(
            k.cluster_ips
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    // Only default/kubernetes's slices keep addresses.
    f.extend(
        s.slices
            .values()
            .flat_map(|sl| sl.api.iter().map(|(a, _)| *a)),
    );
    f
}

/// The API servers as the cluster lists them: the ready (or serving and
/// not terminating) endpoints of `default/kubernetes`. The control plane's
/// backend discovery.
pub fn api_endpoints(s: &Snapshot) -> BTreeSet<IpAddr> {
    (s.slices.values())
        .flat_map(|sl| &sl.api)
        .filter(|(_, usable)| *usable)
        .map(|(a, _)| *a)
        .collect()
}

/// One Service's contribution to the intent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    pub uid: Uid,
    pub routes: Vec<(IpNet, Arc<RouteAttrs>)>,
    /// Addresses of a Local Service without a ready endpoint here: not
    /// announced for it, and they hold back an address it shares.
    pub waiting: Vec<IpNet>,
    /// What the sharing rules need (with the namespace, from the key, and
    /// the consent in `rare`): age, policy.
    pub created: i64,
    pub local: bool,
    /// What few Services have, boxed: 8 bytes in place for the rest.
    rare: Option<Box<Rare>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rare {
    refused: Vec<Refusal>,
    bad_annotations: Vec<BadAnnotation>,
    /// `vipd.io/sharing-namespaces`.
    sharing: Vec<String>,
    /// The addresses in L2 mode.
    l2: Option<L2Want>,
}

impl Part {
    pub fn refused(&self) -> &[Refusal] {
        self.rare.as_ref().map_or(&[], |r| &r.refused)
    }

    pub fn bad_annotations(&self) -> &[BadAnnotation] {
        self.rare.as_ref().map_or(&[], |r| &r.bad_annotations)
    }

    pub fn sharing(&self) -> &[String] {
        self.rare.as_ref().map_or(&[], |r| &r.sharing)
    }

    fn set_rare(&mut self, rare: Rare) {
        self.rare = (rare != Rare::default()).then(|| Box::new(rare));
    }

    pub fn l2(&self) -> Option<&L2Want> {
        self.rare.as_ref().and_then(|r| r.l2.as_ref())
    }

    /// The addresses this Service keeps its pool's aggregate off with:
    /// a Local Service's, refused ones, those in L2 alone.
    fn blocking(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = vec![];
        if self.local {
            v.extend(self.routes.iter().map(|(p, _)| p.addr()));
            v.extend(self.waiting.iter().map(|p| p.addr()));
        }
        v.extend(
            self.refused()
                .iter()
                .filter_map(|r| r.address.parse::<IpAddr>().ok()),
        );
        if let Some(l) = self.l2() {
            let in_bgp = |ip: &IpAddr| self.routes.iter().any(|(p, _)| p.addr() == *ip);
            v.extend(l.addrs.iter().filter(|ip| !in_bgp(ip)));
        }
        v
    }

    fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.waiting.is_empty()
            && self.l2().is_none()
            && self.refused().is_empty()
            && self.bad_annotations().is_empty()
    }

    fn owner<'a>(&'a self, key: &'a str, p: &IpNet) -> super::sharing::Owner<'a> {
        super::sharing::Owner {
            key,
            uid: &self.uid,
            namespace: namespace_of(key),
            created: self.created,
            local: self.local,
            sharing: self.sharing(),
            attrs: self.routes.iter().find(|(q, _)| q == p).map(|(_, a)| &**a),
        }
    }
}

/// Whether an address may be announced at all: inside `allowed_prefixes`
/// or, with `[ipam]`, a pool; anything where neither is set.
fn allowed(ip: IpAddr, k: &KubeConfig) -> Result<(), String> {
    let net = IpNet::from(ip);
    let in_prefixes = k.allowed_prefixes.iter().any(|p| p.contains(&net));
    let in_pools = k.pools.iter().flatten().any(|r| r.contains(ip));
    match (k.allowed_prefixes.is_empty(), &k.pools) {
        (true, None) => Ok(()),
        _ if in_prefixes || in_pools => Ok(()),
        (false, None) => Err(format!("{ip} is outside kubernetes.allowed_prefixes")),
        (_, Some(_)) => Err(format!(
            "{ip} is in no [ipam] pool and outside kubernetes.allowed_prefixes: nobody gave it out"
        )),
    }
}

/// The addresses a Service lists (status, and spec.externalIPs where
/// configured), each once.
pub(crate) fn listed<'a>(svc: &'a ServiceInfo, k: &KubeConfig) -> Vec<&'a Listed> {
    let external = if k.external_ips {
        &svc.external_ips[..]
    } else {
        &[]
    };
    let mut ips: Vec<&Listed> = vec![];
    for ip in svc.ingress_ips.iter().chain(external) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// What one Service asks of this node, given its EndpointSlices and the
/// addresses no Service may take.
pub fn part(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    forbidden: &HashSet<IpAddr>,
    node: Option<&NodeInfo>,
    eligible: &[String],
    k: &KubeConfig,
) -> Part {
    let mut out = Part {
        uid: svc.uid.clone(),
        ..Default::default()
    };
    if !svc.load_balancer || !wanted_class(svc, k) {
        return out;
    }
    out.created = svc.created;
    out.local = svc.local_policy;
    let mut rare = Rare {
        sharing: svc.sharing_namespaces(),
        ..Rare::default()
    };
    let asked = match announce_mode(svc) {
        Ok(m) => m,
        Err(reason) => return refuse_all(out, svc, forbidden, node, k, rare, reason),
    };
    let mut dropped = vec![];
    let cap = match super::ecmp::limit(svc, k, &mut dropped) {
        Ok(c) => c.filter(|_| !svc.local_policy),
        Err(reason) => return refuse_all(out, svc, forbidden, node, k, rare, reason),
    };
    if !has_endpoints(svc, slices, k) {
        return without_endpoints(out, svc, forbidden, node, k, asked, rare);
    }
    let attrs = super::attrs::parse(svc, &k.service_attrs, &mut dropped).map_err(|e| match e {
        super::attrs::AttrError::Unreadable(r) => (RefusalKind::BadAnnotation, r),
        super::attrs::AttrError::TooMany(r) => (RefusalKind::AttributesTooLarge, r),
    });
    let attrs = attrs.map(shared);
    if attrs.is_ok() {
        rare.bad_annotations = dropped
            .into_iter()
            .map(|(annotation, reason)| BadAnnotation {
                service: svc.key(),
                uid: svc.uid.clone(),
                annotation: annotation.to_string(),
                reason,
            })
            .collect();
    }
    for raw in listed(svc, k) {
        let (route, refused) = place(raw, (forbidden, node, k), asked, &attrs);
        out.routes
            .extend(route.filter(|(p, _)| chosen(p, cap, eligible, k)));
        rare.refused.extend(refused.map(|(kind, reason)| Refusal {
            service: svc.key(),
            uid: svc.uid.clone(),
            address: raw.to_string(),
            kind,
            reason,
        }));
    }
    if attrs.is_ok() {
        rare.l2 = l2_addresses(svc, forbidden, node, k, asked, true);
    }
    // Kept while the Service lives: no spare room.
    out.routes.shrink_to_fit();
    out.set_rare(rare);
    out
}

/// Under the cap, only the nodes ranked first for an address announce it.
fn chosen(p: &IpNet, cap: Option<usize>, eligible: &[String], k: &KubeConfig) -> bool {
    cap.is_none_or(|n| super::ecmp::here(p.addr(), &k.node_name, eligible, n))
}

type Attrs = Result<Arc<RouteAttrs>, (RefusalKind, String)>;
type Placed = (
    Option<(IpNet, Arc<RouteAttrs>)>,
    Option<(RefusalKind, String)>,
);

/// One listed address: its route for BGP peers, or why it is refused.
fn place(
    raw: &Listed,
    (forbidden, node, k): (&HashSet<IpAddr>, Option<&NodeInfo>, &KubeConfig),
    asked: Option<Mode>,
    attrs: &Attrs,
) -> Placed {
    let mode = |net: &IpNet| mode_of(net.addr(), asked, k);
    match (address(raw, forbidden, node, k), attrs) {
        (Err(e), _) => (None, Some(e)),
        (Ok(net), _) if mode(&net) == Mode::L2 && k.l2.is_none() => (
            None,
            Some((
                RefusalKind::NoL2,
                format!(
                    "{} asks for L2 only and this node has no [l2] table",
                    net.addr()
                ),
            )),
        ),
        (Ok(net), Ok(a)) if mode(&net).bgp() => match with_advert(a, net.addr(), k) {
            Ok(a) => (Some((net, a)), None),
            Err(e) => (None, Some(e)),
        },
        (Ok(_), Ok(_)) => (None, None),
        (Ok(_), Err((kind, r))) => (None, Some((*kind, format!("{r}; not announced")))),
    }
}

/// A route's attributes: its pool's or advertisement's (the operator's),
/// with the Service's own over them: its communities added, its LOCAL_PREF
/// and MED in place of the pool's. A tenant can add to what the platform
/// sends, never take the platform's communities (NO_EXPORT, say) off.
fn with_advert(
    own: &Arc<RouteAttrs>,
    ip: IpAddr,
    k: &KubeConfig,
) -> Result<Arc<RouteAttrs>, (RefusalKind, String)> {
    let Some(src) = k.adverts.of(ip) else {
        return Ok(own.clone());
    };
    if **own == RouteAttrs::default() {
        return Ok(src.attrs.clone());
    }
    let pool = &src.advert.attrs;
    let mut a = RouteAttrs {
        communities: [&own.communities[..], &pool.communities[..]].concat(),
        large_communities: [&own.large_communities[..], &pool.large_communities[..]].concat(),
        med: own.med.or(pool.med),
        local_pref: own.local_pref.or(pool.local_pref),
        peers: pool.peers.clone(),
    };
    a.normalize();
    let bytes = crate::config::community_bytes(&a);
    if bytes > k.community_room {
        return Err((
            RefusalKind::AttributesTooLarge,
            format!(
                "its communities with {}'s take {bytes} bytes, more than the {} one route may carry; not announced",
                src.origin, k.community_room
            ),
        ));
    }
    Ok(shared(a))
}

/// A Service without the endpoints it needs here: its addresses wait (and
/// hold back an address it shares); a Local Service's L2 addresses are
/// still listed, since every node must know them and the owner is chosen
/// among the nodes that have an endpoint.
fn without_endpoints(
    mut out: Part,
    svc: &ServiceInfo,
    forbidden: &HashSet<IpAddr>,
    node: Option<&NodeInfo>,
    k: &KubeConfig,
    asked: Option<Mode>,
    mut rare: Rare,
) -> Part {
    out.waiting = waiting(svc, k);
    if svc.local_policy {
        rare.l2 = l2_addresses(svc, forbidden, node, k, asked, false);
    }
    if out.waiting.is_empty() {
        return Part {
            uid: out.uid,
            ..Default::default()
        };
    }
    out.set_rare(rare);
    out
}

/// A Service's addresses in L2 mode that may be VIPs at all (the reasons
/// the others are refused are the BGP path's); None without any.
fn l2_addresses(
    svc: &ServiceInfo,
    forbidden: &HashSet<IpAddr>,
    node: Option<&NodeInfo>,
    k: &KubeConfig,
    asked: Option<Mode>,
    here: bool,
) -> Option<L2Want> {
    k.l2.as_ref()?;
    let mut addrs: Vec<IpAddr> = listed(svc, k)
        .into_iter()
        .filter_map(|raw| address(raw, forbidden, node, k).ok())
        .map(|n| n.addr())
        .filter(|ip| mode_of(*ip, asked, k).l2())
        .collect();
    addrs.sort();
    addrs.dedup();
    (!addrs.is_empty()).then_some(L2Want {
        addrs,
        local: svc.local_policy,
        here,
    })
}

/// An unreadable `vipd.io/announce`: every address refused, none announced
/// either way (fail closed, as for the attribute annotations).
fn refuse_all(
    mut out: Part,
    svc: &ServiceInfo,
    forbidden: &HashSet<IpAddr>,
    node: Option<&NodeInfo>,
    k: &KubeConfig,
    mut rare: Rare,
    reason: String,
) -> Part {
    for raw in listed(svc, k) {
        let (kind, reason) = match address(raw, forbidden, node, k) {
            Err(e) => e,
            Ok(_) => (RefusalKind::BadAnnotation, reason.clone()),
        };
        rare.refused.push(Refusal {
            service: svc.key(),
            uid: svc.uid.clone(),
            address: raw.to_string(),
            kind,
            reason,
        });
    }
    out.set_rare(rare);
    out
}

/// A Local Service without a ready endpoint here: the addresses it holds
/// back where it shares them (the sharing rules decide).
fn waiting(svc: &ServiceInfo, k: &KubeConfig) -> Vec<IpNet> {
    if !svc.local_policy {
        return vec![];
    }
    listed(svc, k)
        .iter()
        .filter_map(|ip| ip.ip())
        .map(IpNet::from)
        .collect()
}

/// One listed address as a VIP, or why it cannot be one.
fn address(
    raw: &Listed,
    forbidden: &HashSet<IpAddr>,
    node: Option<&NodeInfo>,
    k: &KubeConfig,
) -> Result<IpNet, (RefusalKind, String)> {
    let Some(ip) = raw.ip() else {
        return Err((RefusalKind::NotAnAddress, "not an IP address".into()));
    };
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err((
            RefusalKind::Unusable,
            format!("{ip} cannot be a VIP (unspecified, loopback or multicast)"),
        ));
    }
    if forbidden.contains(&ip) {
        let (kind, whose) = if node.is_some_and(|n| n.addresses.contains(&ip)) {
            (RefusalKind::NodeAddress, "this node's own address")
        } else {
            (
                RefusalKind::ApiServer,
                "an address of the Kubernetes API server",
            )
        };
        return Err((kind, format!("{ip} is {whose}")));
    }
    allowed(ip, k).map_err(|e| (RefusalKind::OutsideAllowedPrefixes, e))?;
    Ok(IpNet::from(ip))
}

/// The Service key (`namespace/name`) an EndpointSlice belongs to.
pub fn slice_owner(sl: &SliceInfo) -> Option<Key> {
    sl.service.clone()
}

/// Does a change to this Service or slice change what no Service may take?
pub fn touches_forbidden(service_key: &str) -> bool {
    service_key == "default/kubernetes"
}

pub fn compute(s: &Snapshot, k: &KubeConfig) -> Intent {
    let mut t = Tracker::default();
    t.reset(s, k);
    t.intent
}

/// The intent kept up to date one Service at a time: an event recomputes
/// the parts of the Services it touches, not the whole cluster. The result
/// is always what [`compute`] would give (a property test checks it).
#[derive(Debug, Default)]
pub struct Tracker {
    parts: BTreeMap<Key, Part>,
    contributors: BTreeMap<IpNet, Keys>,
    /// Services whose part has refusals or bad annotations.
    problems: BTreeSet<Key>,
    /// A Service's EndpointSlices, by slice key.
    slices: BTreeMap<Key, Keys>,
    forbidden: HashSet<IpAddr>,
    intent: Intent,
    /// Refusals the sharing rules made, by address.
    shared_refused: HashMap<IpNet, Vec<Refusal>>,
    /// Why this node holds back an address an owner without a ready local
    /// endpoint shares (for `vipd explain`).
    held: HashMap<IpNet, String>,
    /// For each Service announced, at how many addresses; and refusals by
    /// reason: kept as the intent changes, so status costs nothing per event.
    announcing: BTreeMap<Uid, usize>,
    refused_by: BTreeMap<RefusalKind, usize>,
    /// The L2 Services changed since [`Tracker::take_l2_changed`].
    l2_changed: bool,
    /// Addresses inside an aggregate that keep it off.
    blockers: Blockers,
    /// Aggregates to settle at the end of this update.
    aggs_touched: BTreeSet<IpNet>,
}

/// A small sorted set of keys. Most VIPs have one Service and most
/// Services one EndpointSlice: one key is held inline, where a B-tree set
/// spent a 280-byte node on it (about 1 KiB per Service at 50,000).
#[derive(Debug, Default, Clone)]
struct Keys(smallvec::SmallVec<[Key; 1]>);

impl Keys {
    fn insert(&mut self, k: Key) {
        if let Err(i) = self.0.binary_search(&k) {
            // Past the inline one: room for one more, not for four.
            self.0.reserve_exact(1);
            self.0.insert(i, k);
        }
    }
    fn remove(&mut self, k: &str) {
        if let Ok(i) = self.0.binary_search_by(|x| (**x).cmp(k)) {
            self.0.remove(i);
        }
    }
    fn iter(&self) -> std::slice::Iter<'_, Key> {
        self.0.iter()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Keys {
    type Item = &'a Key;
    type IntoIter = std::slice::Iter<'a, Key>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

fn packed<K: Ord, V>(m: &mut BTreeMap<K, V>) {
    *m = std::mem::take(m).into_iter().collect();
}

/// How the routes of the intent changed: `None` for a prefix no longer wanted.
pub type Delta = Vec<(IpNet, Option<Want>)>;

impl Tracker {
    pub fn intent(&self) -> &Intent {
        &self.intent
    }

    /// Services with at least one route in the intent.
    pub fn services_announced(&self) -> usize {
        self.announcing.len()
    }

    /// Refusals and the hold-back reason the sharing rules give for one
    /// Service's addresses (for `vipd explain`).
    pub fn sharing_view(&self, uid: &str) -> (Vec<Refusal>, Vec<(IpNet, String)>) {
        let refused = self
            .shared_refused
            .values()
            .flatten()
            .filter(|r| &*r.uid == uid)
            .cloned()
            .collect();
        let held = self
            .held
            .iter()
            .filter(|(p, _)| {
                self.contributors
                    .get(*p)
                    .is_some_and(|c| c.iter().any(|k| &*self.parts[k].uid == uid))
            })
            .map(|(p, w)| (*p, w.clone()))
            .collect();
        (refused, held)
    }

    /// The aggregate an address is announced in, and why or why not
    /// (for `vipd explain`).
    pub fn aggregated(&self, ip: IpAddr, k: &KubeConfig) -> (Option<IpNet>, Option<String>) {
        let agg = match self.intent.routes.get(&IpNet::from(ip)).map(|w| w.agg) {
            Some(Agg::Member(len)) => IpNet::new(ip, len).ok().map(|n| n.trunc()),
            _ => None,
        };
        let note = aggregate::explain(ip, &self.intent.routes, &self.blockers, k);
        (agg, note)
    }

    /// Whether the L2 Services changed since this was last asked.
    pub fn take_l2_changed(&mut self) -> bool {
        std::mem::take(&mut self.l2_changed)
    }

    /// Refused addresses by reason.
    pub fn refused_by_kind(&self) -> &BTreeMap<RefusalKind, usize> {
        &self.refused_by
    }

    fn tally(&mut self, refused: &[Refusal], add: bool) {
        for r in refused {
            let n = self.refused_by.entry(r.kind).or_default();
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
        self.refused_by.retain(|_, n| *n > 0);
    }

    /// Counts the Services announced as one address's owners change.
    fn count_owners(&mut self, before: Option<&Want>, after: Option<&Want>) {
        for u in before.iter().flat_map(|w| &w.owners) {
            if let Some(n) = self.announcing.get_mut(u) {
                *n -= 1;
                if *n == 0 {
                    self.announcing.remove(u);
                }
            }
        }
        for u in after.iter().flat_map(|w| &w.owners) {
            *self.announcing.entry(u.clone()).or_default() += 1;
        }
    }

    /// Recomputes everything; returns every prefix as it now is, after the
    /// removals of those that went.
    pub fn reset(&mut self, s: &Snapshot, k: &KubeConfig) -> Delta {
        let old: Vec<IpNet> = self.intent.routes.keys().copied().collect();
        let keys: Vec<Key> = self
            .parts
            .keys()
            .cloned()
            .chain(s.services.keys().cloned())
            .collect();
        self.forbidden = forbidden(s);
        self.slices.clear();
        for (sk, sl) in &s.slices {
            if let Some(owner) = slice_owner(sl) {
                self.slices.entry(owner).or_default().insert(sk.clone());
            }
        }
        packed(&mut self.slices);
        self.rebuild_blockers(k);
        let first = old.is_empty();
        let mut delta = self.update(s, k, keys.iter());
        if first {
            self.pack();
        }
        let changed: BTreeSet<IpNet> = delta.iter().map(|(p, _)| *p).collect();
        for p in old {
            if !self.intent.routes.contains_key(&p) && !changed.contains(&p) {
                delta.push((p, None));
            }
        }
        delta
    }

    /// Filled in key order, B-tree nodes are left half empty; built again
    /// in one go they are full (the per-Service maps are most of the
    /// tracker: B-trees, not hash maps, whose buckets run up to twice the
    /// entries). After the first fill only: a re-list changes little.
    fn pack(&mut self) {
        packed(&mut self.intent.routes);
        packed(&mut self.parts);
        packed(&mut self.contributors);
        packed(&mut self.announcing);
    }

    /// An EndpointSlice changed from `old` to `new` (either may be absent):
    /// keeps the Service-to-slices index, returns the Services touched.
    pub fn slice_changed(
        &mut self,
        key: &Key,
        old: Option<&SliceInfo>,
        new: Option<&SliceInfo>,
    ) -> Vec<Key> {
        let mut touched = vec![];
        if let Some(o) = old.and_then(slice_owner) {
            if let Some(set) = self.slices.get_mut(&o) {
                set.remove(key);
            }
            touched.push(o);
        }
        if let Some(n) = new.and_then(slice_owner) {
            self.slices
                .entry(n.clone())
                .or_default()
                .insert(key.clone());
            if !touched.contains(&n) {
                touched.push(n);
            }
        }
        touched
    }

    /// Recomputes the parts of the Services `keys`; returns how the routes
    /// changed.
    pub fn update<'a>(
        &mut self,
        s: &Snapshot,
        k: &KubeConfig,
        keys: impl Iterator<Item = &'a Key>,
    ) -> Delta {
        let mut affected: BTreeSet<IpNet> = BTreeSet::new();
        let mut problems_changed = false;
        for key in keys {
            let new = match s.services.get(key) {
                Some(svc) => {
                    let slices: Vec<&SliceInfo> = self
                        .slices
                        .get(key)
                        .into_iter()
                        .flatten()
                        .filter_map(|sk| s.slices.get(sk))
                        .collect();
                    part(
                        svc,
                        &slices,
                        &self.forbidden,
                        s.node.as_ref(),
                        &s.eligible,
                        k,
                    )
                }
                None => Part::default(),
            };
            problems_changed |= self.replace_part(key, new, &mut affected, k);
        }
        let mut delta = Delta::new();
        for p in affected {
            let (mut want, refused) = self.want(&p, k);
            problems_changed |= self.set_shared_refused(p, refused, k);
            let before = self.intent.routes.get(&p).cloned();
            // Whether it stays in its aggregate is settled below.
            if let (Some(b), Some(w)) = (&before, &mut want) {
                w.agg = b.agg;
            }
            self.aggs_touched.extend(aggregate::of(p.addr(), k));
            if before == want {
                continue;
            }
            self.count_owners(before.as_ref(), want.as_ref());
            match &want {
                Some(w) => self.intent.routes.insert(p, w.clone()),
                None => self.intent.routes.remove(&p),
            };
            delta.push((p, want));
        }
        self.settle_aggregates(k, &mut delta);
        if problems_changed {
            self.collect_problems();
        }
        delta
    }

    /// Settles the aggregates touched by this update; a prefix changed
    /// twice is reported once, as it ends.
    fn settle_aggregates(&mut self, k: &KubeConfig, delta: &mut Delta) {
        if self.aggs_touched.is_empty() {
            return;
        }
        for a in std::mem::take(&mut self.aggs_touched) {
            delta.extend(aggregate::settle(
                a,
                &mut self.intent.routes,
                &self.blockers,
                k,
            ));
        }
        let last: BTreeMap<IpNet, Option<Want>> = std::mem::take(delta).into_iter().collect();
        delta.extend(last);
    }

    /// The blockers from every part, as the configuration places them (a
    /// reload may have changed which addresses aggregate); every aggregate
    /// settled again.
    fn rebuild_blockers(&mut self, k: &KubeConfig) {
        self.blockers.clear();
        let aggregating = k.adverts.aggregating();
        if aggregating {
            let parts = self.parts.values().flat_map(Part::blocking);
            let shared = self.shared_refused.keys().map(|p| p.addr());
            for ip in parts.chain(shared).collect::<Vec<_>>() {
                self.blocker(ip, true, k);
            }
        }
        // An aggregate the new configuration no longer has is settled too.
        for (p, w) in &self.intent.routes {
            let a = match w.agg {
                Agg::Covering => Some(*p),
                _ if aggregating => aggregate::of(p.addr(), k),
                _ => None,
            };
            self.aggs_touched.extend(a);
        }
    }

    /// A part's blockers, out (`add` false) or in. Without an aggregating
    /// pool (the usual case) nothing, so an event costs nothing more.
    fn block(&mut self, part: &Part, add: bool, k: &KubeConfig) {
        if !k.adverts.aggregating() {
            return;
        }
        for ip in part.blocking() {
            self.blocker(ip, add, k);
        }
    }

    /// One address that keeps its aggregate off, in (`add`) or out; the
    /// aggregate is settled at the end of the update.
    fn blocker(&mut self, ip: IpAddr, add: bool, k: &KubeConfig) {
        let Some(a) = aggregate::of(ip, k) else {
            return;
        };
        if add {
            self.blockers.add(ip);
        } else {
            self.blockers.remove(ip);
        }
        self.aggs_touched.insert(a);
    }

    /// Puts a Service's new part in place of its old one, adding the
    /// addresses either names to `affected`; returns whether its problems
    /// (refusals, dropped values) may have changed.
    fn replace_part(
        &mut self,
        key: &Key,
        new: Part,
        affected: &mut BTreeSet<IpNet>,
        k: &KubeConfig,
    ) -> bool {
        let old = self.parts.remove(key).unwrap_or_default();
        if old == new {
            if !new.is_empty() {
                self.parts.insert(key.clone(), new);
            }
            return false;
        }
        self.block(&old, false, k);
        self.block(&new, true, k);
        self.tally(old.refused(), false);
        self.tally(new.refused(), true);
        if old.l2() != new.l2() {
            self.l2_changed = true;
            match new.l2() {
                Some(w) => self.intent.l2.insert(key.clone(), w.clone()),
                None => self.intent.l2.remove(key),
            };
        }
        for p in old.routes.iter().map(|(p, _)| p).chain(&old.waiting) {
            if let Some(c) = self.contributors.get_mut(p) {
                c.remove(key);
            }
            affected.insert(*p);
        }
        for p in new.routes.iter().map(|(p, _)| p).chain(&new.waiting) {
            self.contributors.entry(*p).or_default().insert(key.clone());
            affected.insert(*p);
        }
        let had = !old.refused().is_empty() || !old.bad_annotations().is_empty();
        let has = !new.refused().is_empty() || !new.bad_annotations().is_empty();
        if has {
            self.problems.insert(key.clone());
        } else {
            self.problems.remove(key);
        }
        if !new.is_empty() {
            self.parts.insert(key.clone(), new);
        }
        had || has
    }

    fn set_shared_refused(&mut self, p: IpNet, refused: Vec<Refusal>, k: &KubeConfig) -> bool {
        let old = self.shared_refused.remove(&p).unwrap_or_default();
        let changed = old != refused;
        // (The update settles `p`'s aggregate whether or not this moves.)
        if old.is_empty() != refused.is_empty() {
            self.blocker(p.addr(), old.is_empty(), k);
        }
        self.tally(&old, false);
        self.tally(&refused, true);
        if !refused.is_empty() {
            self.shared_refused.insert(p, refused);
        }
        if self.contributors.get(&p).is_some_and(|c| c.is_empty()) {
            self.contributors.remove(&p);
        }
        changed
    }

    fn collect_problems(&mut self) {
        self.intent.refused = self
            .problems
            .iter()
            .flat_map(|k| self.parts[k].refused().to_vec())
            .chain(self.shared_refused.values().flatten().cloned())
            .collect();
        self.intent.refused.sort();
        self.intent.bad_annotations = self
            .problems
            .iter()
            .flat_map(|k| self.parts[k].bad_annotations().to_vec())
            .collect();
        self.intent.bad_annotations.sort();
    }

    /// What the Services contributing a prefix want of it together, by
    /// the sharing rules, and whom those rules refuse.
    fn want(&mut self, p: &IpNet, k: &KubeConfig) -> (Option<Want>, Vec<Refusal>) {
        self.held.remove(p);
        let Some(keys) = self.contributors.get(p).filter(|c| !c.is_empty()) else {
            return (None, vec![]);
        };
        let owners: Vec<super::sharing::Owner> = keys
            .iter()
            .map(|key| self.parts[key].owner(key, p))
            .collect();
        let addr = p.addr().to_string();
        let d = super::sharing::decide(&addr, &owners, k.community_room);
        // The decision names owners by text; the intent keeps the shared keys.
        let key_of = |s: &str| {
            keys.iter()
                .find(|k| &***k == s)
                .cloned()
                .unwrap_or_else(|| s.into())
        };
        let refused = d
            .refused
            .into_iter()
            .map(|(key, why, reason)| Refusal {
                uid: self.parts[key.as_str()].uid.clone(),
                service: key_of(&key),
                address: addr.clone(),
                kind: match why {
                    super::sharing::Why::NotShared => RefusalKind::SharingNotAllowed,
                    super::sharing::Why::TooLarge => RefusalKind::AttributesTooLarge,
                },
                reason,
            })
            .collect();
        if let Some(h) = d.held {
            self.held.insert(*p, h);
        }
        let uid_of = |u: &str| {
            (keys.iter().map(|k| &self.parts[k].uid))
                .find(|x| &***x == u)
                .cloned()
                .unwrap_or_else(|| u.into())
        };
        // One owner's attributes, as they are: its own shared copy.
        let attrs_of = |a: RouteAttrs| match &owners[..] {
            [o] if o.attrs == Some(&a) => self.parts[o.key]
                .routes
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, x)| x.clone())
                .unwrap_or_else(|| shared(a)),
            _ => shared(a),
        };
        let want = (d.announce).map(|(uids, attrs)| Want {
            owners: uids.iter().map(|u| uid_of(u)).collect(),
            attrs: attrs_of(attrs),
            agg: Agg::Own,
        });
        (want, refused)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The namespace of a test slice (its Service's).
    pub fn namespace_of(sl: &SliceInfo) -> &str {
        sl.service
            .as_deref()
            .and_then(|k| k.split_once('/'))
            .map_or("", |(ns, _)| ns)
    }

    /// Advertisements: one pool from `first` to `last` with 65000:1,
    /// aggregated at `len`.
    pub fn aggregating(first: &str, last: &str, len: u8) -> crate::config::Adverts {
        let pool = crate::config::Pool {
            name: "blue".into(),
            ranges: vec![crate::config::Range {
                first: first.parse().unwrap(),
                last: last.parse().unwrap(),
            }],
            auto_assign: true,
            namespaces: vec![],
            avoid_network_and_broadcast: false,
            mode: Mode::Bgp,
            advert: crate::config::Advert {
                attrs: RouteAttrs {
                    communities: vec![65000 << 16 | 1],
                    ..Default::default()
                },
                aggregate_v4: Some(len),
                aggregate_v6: None,
            },
        };
        crate::config::Adverts::build(&[pool], &[])
    }

    pub fn kcfg() -> KubeConfig {
        KubeConfig {
            kubeconfig: None,
            node_name: "node-a".into(),
            load_balancer_class: None,
            include_unclassed: false,
            external_ips: false,
            announce_without_endpoints: false,
            allowed_prefixes: vec![],
            pools: None,
            l2: None,
            service_attrs: Default::default(),
            community_room: crate::config::COMMUNITY_ROOM - crate::config::DRAIN_RESERVE,
            adverts: Default::default(),
            max_announcing_nodes: None,
            drain: None,
            connect_timeout: std::time::Duration::from_secs(10),
            read_timeout: std::time::Duration::from_secs(90),
        }
    }

    pub fn svc(ns: &str, name: &str, ips: &[&str]) -> ServiceInfo {
        ServiceInfo {
            uid: format!("uid-{ns}-{name}").into(),
            key: format!("{ns}/{name}").into(),
            load_balancer: true,
            ingress_ips: ips.iter().map(|s| Listed::from(*s)).collect(),
            ..Default::default()
        }
    }

    pub fn slice(ns: &str, service: &str, eps: &[(&str, bool)]) -> SliceInfo {
        let eps: Vec<EndpointInfo> = (eps.iter())
            .map(|(node, ready)| EndpointInfo {
                node: Some(node.to_string()),
                addresses: vec!["10.0.0.1".into()],
                ready: *ready,
                serving: *ready,
                terminating: false,
            })
            .collect();
        sliced(ns, service, &eps)
    }

    /// A slice as node-a (the tests' node, `kcfg`) keeps it.
    pub fn sliced(ns: &str, service: &str, eps: &[EndpointInfo]) -> SliceInfo {
        SliceInfo::new(ns.into(), Some(service.into()), eps, "node-a")
    }

    fn snap(svcs: Vec<ServiceInfo>, slices: Vec<(&str, SliceInfo)>) -> Snapshot {
        Snapshot {
            services: svcs.into_iter().map(|s| (s.key(), s)).collect(),
            slices: slices
                .into_iter()
                .map(|(n, s)| (format!("{}/{n}", namespace_of(&s)).into(), s))
                .collect(),
            node: Some(NodeInfo {
                name: "node-a".into(),
                addresses: vec!["192.0.2.11".parse().unwrap()],
                ..Default::default()
            }),
            api_server: vec!["192.0.2.100".parse().unwrap()],
            eligible: vec![],
        }
    }

    fn vips(i: &Intent) -> Vec<String> {
        i.routes.keys().map(|p| p.to_string()).collect()
    }

    #[test]
    fn cluster_policy_needs_one_ready_endpoint_anywhere() {
        let s = snap(
            vec![svc("a", "web", &["203.0.113.10", "2001:db8:ff::10"])],
            vec![("web-1", slice("a", "web", &[("node-b", true)]))],
        );
        assert_eq!(
            vips(&compute(&s, &kcfg())),
            ["203.0.113.10/32", "2001:db8:ff::10/128"]
        );
        let s = snap(
            vec![svc("a", "web", &["203.0.113.10"])],
            vec![("web-1", slice("a", "web", &[("node-b", false)]))],
        );
        assert!(compute(&s, &kcfg()).routes.is_empty());
        let mut k = kcfg();
        k.announce_without_endpoints = true;
        assert_eq!(vips(&compute(&s, &k)), ["203.0.113.10/32"]);
    }

    #[test]
    fn local_policy_needs_a_local_ready_or_serving_endpoint() {
        let mut web = svc("a", "web", &["203.0.113.10"]);
        web.local_policy = true;
        let remote = snap(
            vec![web.clone()],
            vec![("w", slice("a", "web", &[("node-b", true)]))],
        );
        assert!(compute(&remote, &kcfg()).routes.is_empty());
        let local = snap(
            vec![web.clone()],
            vec![("w", slice("a", "web", &[("node-a", true)]))],
        );
        assert_eq!(vips(&compute(&local, &kcfg())), ["203.0.113.10/32"]);
        // Serving but not ready and not terminating counts; terminating does not.
        let mut ep = EndpointInfo {
            node: Some("node-a".into()),
            serving: true,
            ..Default::default()
        };
        let sl = sliced("a", "web", std::slice::from_ref(&ep));
        let s = snap(vec![web.clone()], vec![("w", sl)]);
        assert_eq!(vips(&compute(&s, &kcfg())), ["203.0.113.10/32"]);
        ep.terminating = true;
        let s = snap(vec![web], vec![("w", sliced("a", "web", &[ep]))]);
        assert!(compute(&s, &kcfg()).routes.is_empty());
    }

    #[test]
    fn all_slices_of_a_service_count() {
        let s = snap(
            vec![svc("a", "web", &["203.0.113.10"])],
            vec![
                ("web-1", slice("a", "web", &[("node-b", false)])),
                ("web-2", slice("a", "web", &[("node-c", true)])),
                ("other", slice("b", "web", &[("node-c", true)])),
            ],
        );
        assert_eq!(vips(&compute(&s, &kcfg())), ["203.0.113.10/32"]);
        let s = snap(
            vec![svc("a", "web", &["203.0.113.10"])],
            vec![("other-ns", slice("b", "web", &[("node-c", true)]))],
        );
        assert!(
            compute(&s, &kcfg()).routes.is_empty(),
            "a slice in another namespace"
        );
    }

    /// Lesson 1: a VIP shared by two Services, one without endpoints.
    #[test]
    fn shared_vip_stays_while_any_owner_wants_it() {
        let s = snap(
            vec![
                svc("a", "web", &["203.0.113.10"]),
                svc("a", "api", &["203.0.113.10"]),
            ],
            vec![
                ("web", slice("a", "web", &[("node-b", true)])),
                ("api", slice("a", "api", &[("node-b", false)])),
            ],
        );
        let i = compute(&s, &kcfg());
        let w = &i.routes[&"203.0.113.10/32".parse::<IpNet>().unwrap()];
        assert_eq!(w.owners[..], ["uid-a-web".into()]);
    }

    /// Lesson 5: the node's own address and the API server's are refused.
    #[test]
    fn api_endpoints_are_the_ready_endpoints_of_default_kubernetes() {
        let mut s = Snapshot::default();
        let ep = |a: &str, ready: bool, serving: bool, terminating: bool| EndpointInfo {
            addresses: vec![a.into()],
            ready,
            serving,
            terminating,
            ..Default::default()
        };
        s.slices.insert(
            "default/kubernetes".into(),
            sliced(
                "default",
                "kubernetes",
                &[
                    ep("192.0.2.11", true, true, false),
                    ep("192.0.2.12", false, true, false),
                    ep("192.0.2.13", false, true, true),
                    ep("not-an-ip", true, true, false),
                    ep("2001:db8::11", true, true, false),
                ],
            ),
        );
        // Another namespace's "kubernetes" and another Service: not the API.
        s.slices.insert(
            "shop/kubernetes".into(),
            sliced("shop", "kubernetes", &[ep("192.0.2.50", true, true, false)]),
        );
        s.slices.insert(
            "default/web".into(),
            sliced("default", "web", &[ep("192.0.2.51", true, true, false)]),
        );
        let got: Vec<String> = api_endpoints(&s).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["192.0.2.11", "192.0.2.12", "2001:db8::11"]);
    }

    #[test]
    fn own_and_api_server_addresses_are_refused_with_reason() {
        let mut s = snap(
            vec![svc(
                "a",
                "web",
                &[
                    "192.0.2.11",
                    "192.0.2.100",
                    "10.96.0.1",
                    "bogus",
                    "203.0.113.1",
                ],
            )],
            vec![("w", slice("a", "web", &[("node-b", true)]))],
        );
        let mut k = svc("default", "kubernetes", &[]);
        k.load_balancer = false;
        k.cluster_ips = ["10.96.0.1".into()].into();
        s.services.insert(k.key(), k);
        let i = compute(&s, &kcfg());
        assert_eq!(vips(&i), ["203.0.113.1/32"]);
        let reasons: Vec<_> = i
            .refused
            .iter()
            .map(|r| (r.address.as_str(), r.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("192.0.2.11", "192.0.2.11 is this node's own address")),
            "{reasons:?}"
        );
        assert!(reasons.contains(&(
            "192.0.2.100",
            "192.0.2.100 is an address of the Kubernetes API server"
        )));
        assert!(reasons.contains(&(
            "10.96.0.1",
            "10.96.0.1 is an address of the Kubernetes API server"
        )));
        assert!(reasons.contains(&("bogus", "not an IP address")));
    }

    #[test]
    fn allowed_prefixes_and_classes() {
        let mut k = kcfg();
        k.allowed_prefixes = vec!["203.0.113.0/25".parse().unwrap()];
        let mut classed = svc("a", "c", &["203.0.113.20"]);
        classed.class = Some("vipd".into());
        let s = snap(
            vec![svc("a", "web", &["203.0.113.10", "203.0.113.200"]), classed],
            vec![
                ("w", slice("a", "web", &[("node-b", true)])),
                ("c", slice("a", "c", &[("node-b", true)])),
            ],
        );
        let i = compute(&s, &k);
        assert_eq!(vips(&i), ["203.0.113.10/32"]);
        assert_eq!(
            i.refused[0].reason,
            "203.0.113.200 is outside kubernetes.allowed_prefixes"
        );
        k.load_balancer_class = Some("vipd".into());
        assert_eq!(vips(&compute(&s, &k)), ["203.0.113.20/32"]);
        k.include_unclassed = true;
        assert_eq!(
            vips(&compute(&s, &k)),
            ["203.0.113.10/32", "203.0.113.20/32"]
        );
    }

    #[test]
    fn external_ips_only_when_enabled_and_not_load_balancer_types() {
        let mut web = svc("a", "web", &[]);
        web.external_ips = ["198.51.100.5".into()].into();
        let mut cip = svc("a", "cip", &["203.0.113.9"]);
        cip.load_balancer = false;
        let s = snap(
            vec![web, cip],
            vec![
                ("w", slice("a", "web", &[("node-b", true)])),
                ("c", slice("a", "cip", &[("node-b", true)])),
            ],
        );
        assert!(compute(&s, &kcfg()).routes.is_empty());
        let mut k = kcfg();
        k.external_ips = true;
        assert_eq!(vips(&compute(&s, &k)), ["198.51.100.5/32"]);
    }

    /// The Event reasons and metric labels docs/operations.md lists: what
    /// alerts and `kubectl get events --field-selector reason=...` match.
    #[test]
    fn each_refusal_has_its_documented_event_reason_and_label() {
        use RefusalKind::*;
        let got: Vec<(&str, &str)> = RefusalKind::ALL
            .iter()
            .map(|k| (k.event_reason(), k.label()))
            .collect();
        assert_eq!(
            got,
            [
                ("VIPRefused", "not_an_address"),
                ("VIPRefused", "unusable_address"),
                ("VIPRefused", "node_address"),
                ("VIPRefused", "api_server"),
                ("VIPRefused", "outside_allowed_prefixes"),
                ("BadAnnotation", "bad_annotation"),
                ("AttributesTooLarge", "attributes_too_large"),
                ("SharingRefused", "sharing_not_allowed"),
                ("VIPRefused", "no_l2"),
            ]
        );
        assert_eq!(RefusalKind::ALL[5], BadAnnotation);
    }

    fn l2_on(default: bool, pool: Option<(&str, Mode)>) -> KubeConfig {
        let mut k = kcfg();
        k.l2 = Some(crate::config::L2Select {
            default,
            pools: pool
                .map(|(ip, m)| {
                    let a: IpAddr = ip.parse().unwrap();
                    (crate::config::Range { first: a, last: a }, m)
                })
                .into_iter()
                .collect(),
        });
        k
    }

    fn l2_of(i: &Intent, key: &str) -> Option<(Vec<String>, bool)> {
        i.l2.get(key)
            .map(|w| (w.addrs.iter().map(|a| a.to_string()).collect(), w.here))
    }

    #[test]
    fn the_announce_annotation_places_each_address_in_bgp_l2_or_both() {
        let ready = |n: &str| ("s-".to_string() + n, slice("a", n, &[("node-b", true)]));
        let mut l2 = svc("a", "l2", &["203.0.113.10"]);
        l2.annotations.insert(ANNOUNCE.into(), "l2".into());
        let mut both = svc("a", "both", &["203.0.113.11"]);
        both.annotations.insert(ANNOUNCE.into(), " both ".into());
        let mut bgp = svc("a", "bgp", &["203.0.113.12"]);
        bgp.annotations.insert(ANNOUNCE.into(), "bgp".into());
        let plain = svc("a", "plain", &["203.0.113.13"]);
        let slices: Vec<(String, SliceInfo)> = ["l2", "both", "bgp", "plain"].map(ready).into();
        let s = snap(
            vec![l2, both, bgp, plain],
            slices
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect(),
        );
        let i = compute(&s, &l2_on(false, None));
        assert_eq!(
            vips(&i),
            ["203.0.113.11/32", "203.0.113.12/32", "203.0.113.13/32"],
            "an L2-only address is not sent to BGP peers"
        );
        assert_eq!(l2_of(&i, "a/l2"), Some((vec!["203.0.113.10".into()], true)));
        assert_eq!(
            l2_of(&i, "a/both"),
            Some((vec!["203.0.113.11".into()], true))
        );
        assert_eq!(l2_of(&i, "a/bgp"), None);
        assert_eq!(
            l2_of(&i, "a/plain"),
            None,
            "BGP alone unless told otherwise"
        );
        assert!(i.refused.is_empty());
        // `[l2] default`: the unannotated one goes L2 only; the annotation wins.
        let i = compute(&s, &l2_on(true, None));
        assert_eq!(vips(&i), ["203.0.113.11/32", "203.0.113.12/32"]);
        assert!(l2_of(&i, "a/plain").is_some());
        // A pool in L2 mode places its addresses; the annotation still wins.
        let i = compute(&s, &l2_on(false, Some(("203.0.113.13", Mode::L2))));
        assert_eq!(
            l2_of(&i, "a/plain"),
            Some((vec!["203.0.113.13".into()], true))
        );
        assert!(!vips(&i).contains(&"203.0.113.13/32".to_string()));
        let i = compute(&s, &l2_on(false, Some(("203.0.113.12", Mode::L2))));
        assert_eq!(l2_of(&i, "a/bgp"), None, "the annotation over the pool");
        // No [l2] on this node: L2-only is refused and said so; both is BGP.
        let i = compute(&s, &kcfg());
        assert_eq!(
            vips(&i),
            ["203.0.113.11/32", "203.0.113.12/32", "203.0.113.13/32"]
        );
        assert!(i.l2.is_empty());
        assert_eq!(i.refused.len(), 1);
        assert_eq!(i.refused[0].kind, RefusalKind::NoL2);
        assert_eq!(&*i.refused[0].service, "a/l2");
    }

    #[test]
    fn an_unreadable_announce_annotation_keeps_the_service_off_both() {
        let mut web = svc("a", "web", &["203.0.113.10"]);
        web.annotations.insert(ANNOUNCE.into(), "arp".into());
        let s = snap(
            vec![web],
            vec![("w", slice("a", "web", &[("node-b", true)]))],
        );
        for k in [kcfg(), l2_on(true, None)] {
            let i = compute(&s, &k);
            assert!(i.routes.is_empty() && i.l2.is_empty());
            assert_eq!(i.refused.len(), 1);
            assert_eq!(i.refused[0].kind, RefusalKind::BadAnnotation);
            assert!(
                i.refused[0].reason.contains("vipd.io/announce"),
                "{:?}",
                i.refused[0]
            );
        }
    }

    #[test]
    fn a_local_l2_service_is_listed_on_every_node_with_whether_it_has_an_endpoint_here() {
        let mut web = svc("a", "web", &["203.0.113.10", "2001:db8::10"]);
        web.local_policy = true;
        web.annotations.insert(ANNOUNCE.into(), "l2".into());
        let elsewhere = snap(
            vec![web.clone()],
            vec![("w", slice("a", "web", &[("node-b", true)]))],
        );
        let k = l2_on(false, None);
        let i = compute(&elsewhere, &k);
        let w = &i.l2["a/web"];
        assert!(w.local && !w.here);
        assert_eq!(w.addrs.len(), 2, "both families, one VIP");
        let here = snap(
            vec![web],
            vec![("w", slice("a", "web", &[("node-a", true)]))],
        );
        assert!(compute(&here, &k).l2["a/web"].here);
        // A Cluster Service without a ready endpoint anywhere: nothing.
        let mut idle = svc("a", "idle", &["203.0.113.20"]);
        idle.annotations.insert(ANNOUNCE.into(), "l2".into());
        let s = snap(vec![idle], vec![]);
        assert!(compute(&s, &k).l2.is_empty());
    }

    #[test]
    fn annotations_set_attributes_and_unreadable_ones_keep_the_service_off_the_wire() {
        let mut web = svc("a", "web", &["203.0.113.10"]);
        web.annotations
            .insert(ANNOTATION_COMMUNITIES.into(), "65010:2, 65010:1".into());
        web.annotations
            .insert(ANNOTATION_LARGE_COMMUNITIES.into(), "65010:1:2".into());
        web.annotations
            .insert(ANNOTATION_LOCAL_PREF.into(), "300".into());
        let mut bad = svc("a", "bad", &["203.0.113.11"]);
        bad.annotations
            .insert(ANNOTATION_COMMUNITIES.into(), "65010:1".into());
        bad.annotations
            .insert(ANNOTATION_LOCAL_PREF.into(), "high".into());
        let s = snap(
            vec![web, bad],
            vec![
                ("w", slice("a", "web", &[("node-b", true)])),
                ("b", slice("a", "bad", &[("node-b", true)])),
            ],
        );
        let i = compute(&s, &kcfg());
        let a = &i.routes[&"203.0.113.10/32".parse::<IpNet>().unwrap()].attrs;
        assert_eq!(a.communities, vec![(65010 << 16) | 1, (65010 << 16) | 2]);
        assert_eq!(a.large_communities, vec![[65010, 1, 2]]);
        assert_eq!(a.local_pref, Some(300));
        // Fail closed: without the attributes its owner asked for (a
        // NO_EXPORT, say) the route could leak where it must not.
        assert!(!i
            .routes
            .contains_key(&"203.0.113.11/32".parse::<IpNet>().unwrap()));
        assert!(i.bad_annotations.is_empty());
        assert_eq!(i.refused.len(), 1);
        assert_eq!(i.refused[0].kind, RefusalKind::BadAnnotation);
        assert_eq!(
            i.refused[0].reason,
            "vipd.io/local-preference: \"high\" is not a 32-bit number; not announced"
        );
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_pool_s_attributes_go_with_its_addresses_and_a_service_adds_to_them() {
        let mut k = kcfg();
        k.adverts = aggregating("203.0.113.0", "203.0.113.15", 31);
        k.adverts.0[0].advert.aggregate_v4 = None;
        let mut attrs = k.adverts.0[0].advert.attrs.clone();
        (attrs.local_pref, attrs.peers) = (Some(200), vec!["tor-a".into()]);
        k.adverts.0[0].attrs = Arc::new(attrs.clone());
        k.adverts.0[0].advert.attrs = attrs;
        let mut web = svc("a", "web", &["203.0.113.10"]);
        web.annotations
            .insert(ANNOTATION_COMMUNITIES.into(), "65010:7".into());
        web.annotations
            .insert(ANNOTATION_LOCAL_PREF.into(), "300".into());
        let plain = svc("a", "plain", &["203.0.113.11"]);
        let outside = svc("a", "outside", &["198.51.100.1"]);
        let s = snap(
            vec![web, plain, outside],
            vec![
                ("w", slice("a", "web", &[("node-b", true)])),
                ("p", slice("a", "plain", &[("node-b", true)])),
                ("o", slice("a", "outside", &[("node-b", true)])),
            ],
        );
        let i = compute(&s, &k);
        let a = &i.routes[&net("203.0.113.10/32")].attrs;
        // The pool's community stays; the Service's LOCAL_PREF wins.
        assert_eq!(a.communities, vec![65000 << 16 | 1, 65010 << 16 | 7]);
        assert_eq!(
            (a.local_pref, &a.peers[..]),
            (Some(300), &["tor-a".to_string()][..])
        );
        let p = &i.routes[&net("203.0.113.11/32")].attrs;
        assert_eq!(
            (&p.communities[..], p.local_pref),
            (&[65000 << 16 | 1][..], Some(200))
        );
        assert!(Arc::ptr_eq(p, &k.adverts.0[0].attrs), "one shared copy");
        assert_eq!(
            *i.routes[&net("198.51.100.1/32")].attrs,
            RouteAttrs::default()
        );
        // Over the room one route has, with the pool's: refused, said why.
        k.community_room = 4;
        let i = compute(&s, &k);
        assert!(!i.routes.contains_key(&net("203.0.113.10/32")));
        let r = i
            .refused
            .iter()
            .find(|r| r.address == "203.0.113.10")
            .unwrap();
        assert_eq!(r.kind, RefusalKind::AttributesTooLarge);
        assert!(r.reason.contains("pool blue"), "{}", r.reason);
    }

    #[test]
    fn an_aggregate_stands_for_its_cluster_addresses_only_while_nothing_inside_objects() {
        let mut k = kcfg();
        k.adverts = aggregating("203.0.113.0", "203.0.113.3", 30);
        let agg = net("203.0.113.0/30");
        let mut s = snap(vec![], vec![]);
        let mut t = Tracker::default();
        t.reset(&s, &k);
        let put = |s: &mut Snapshot, t: &mut Tracker, v: ServiceInfo| {
            let key = v.key();
            let sl = slice(
                v.key.split('/').next().unwrap(),
                v.key.split('/').nth(1).unwrap(),
                &[("node-a", true)],
            );
            s.slices.insert(format!("{key}-sl").into(), sl.clone());
            t.slice_changed(&format!("{key}-sl").into(), None, Some(&sl));
            s.services.insert(key.clone(), v);
            t.update(s, &k, [key].iter())
        };
        let d = put(&mut s, &mut t, svc("a", "one", &["203.0.113.1"]));
        let routes = &t.intent().routes;
        assert_eq!(routes[&agg].agg, Agg::Covering);
        assert_eq!(routes[&agg].attrs, k.adverts.0[0].attrs);
        assert_eq!(routes[&net("203.0.113.1/32")].agg, Agg::Member(30));
        assert!(d.iter().any(|(p, w)| *p == agg && w.is_some()));
        let why = |t: &Tracker, ip: &str| t.aggregated(ip.parse().unwrap(), &k);
        assert_eq!(
            why(&t, "203.0.113.1"),
            (
                Some(agg),
                Some("announced as part of 203.0.113.0/30 (pool blue's aggregate_length)".into())
            )
        );
        // Two Services of one address: their attributes merged are the
        // pool's (another copy), and it stays inside.
        let d = put(&mut s, &mut t, svc("a", "twin", &["203.0.113.1"]));
        assert!(d.iter().all(|(p, _)| *p == net("203.0.113.1/32")), "{d:?}");
        assert_eq!(
            t.intent().routes[&net("203.0.113.1/32")].agg,
            Agg::Member(30)
        );
        assert_eq!(t.intent().routes[&net("203.0.113.1/32")].owners.len(), 2);
        // A Local Service inside: its address is announced only where its
        // endpoints are, so the aggregate goes and each address is alone.
        let mut local = svc("a", "local", &["203.0.113.2"]);
        local.local_policy = true;
        let d = put(&mut s, &mut t, local);
        let routes = &t.intent().routes;
        assert!(!routes.contains_key(&agg));
        assert_eq!(routes[&net("203.0.113.1/32")].agg, Agg::Own);
        assert!(d.contains(&(agg, None)));
        let (inside, note) = why(&t, "203.0.113.1");
        assert_eq!(inside, None);
        assert_eq!(
            note.unwrap(),
            "announced alone: 203.0.113.0/30 (pool blue) is not, since 203.0.113.2 inside it is refused, Local or L2 only"
        );
        assert_eq!(
            why(&t, "198.51.100.1"),
            (None, None),
            "in no aggregating pool"
        );
        s.services.remove("a/local");
        t.update(&s, &k, [Key::from("a/local")].iter());
        assert!(t.intent().routes.contains_key(&agg));
        // A refused address inside (this node's own) keeps it off too.
        s.node = Some(NodeInfo {
            name: "node-a".into(),
            addresses: vec!["203.0.113.3".parse().unwrap()],
            ..Default::default()
        });
        t.reset(&s, &k);
        put(&mut s, &mut t, svc("a", "mine", &["203.0.113.3"]));
        assert!(!t.intent().routes.contains_key(&agg));
        s.services.remove("a/mine");
        t.update(&s, &k, [Key::from("a/mine")].iter());
        assert!(t.intent().routes.contains_key(&agg));
        // Attributes of its own: announced alone, beside the aggregate.
        let mut own = svc("a", "own", &["203.0.113.2"]);
        own.annotations
            .insert(ANNOTATION_COMMUNITIES.into(), "65010:9".into());
        put(&mut s, &mut t, own);
        assert_eq!(t.intent().routes[&net("203.0.113.2/32")].agg, Agg::Own);
        assert_eq!(
            why(&t, "203.0.113.2").1.unwrap(),
            "announced alone: its own attributes differ from pool blue's"
        );
        assert_eq!(t.intent().routes[&agg].agg, Agg::Covering);
        // The last Service it stands for goes: so does the aggregate.
        s.services.remove("a/one");
        t.update(&s, &k, [Key::from("a/one")].iter());
        assert!(
            t.intent().routes.contains_key(&agg),
            "a/twin still holds it"
        );
        s.services.remove("a/twin");
        let d = t.update(&s, &k, [Key::from("a/twin")].iter());
        assert!(!t.intent().routes.contains_key(&agg));
        assert!(d.contains(&(agg, None)));
        assert_eq!(t.intent(), &compute(&s, &k));
    }

    #[test]
    fn under_the_cap_each_cluster_vip_is_announced_by_exactly_n_nodes() {
        let nodes: Vec<String> = (0..12).map(|i| format!("node-{i}")).collect();
        let mut svcs: Vec<ServiceInfo> = (0..30)
            .map(|i| svc("a", &format!("s{i}"), &[&format!("203.0.113.{}", 10 + i)]))
            .collect();
        svcs[0]
            .annotations
            .insert(super::super::ecmp::ANNOTATION.into(), "2".into());
        svcs[1].local_policy = true;
        let slices: Vec<(String, SliceInfo)> = (0..30)
            .map(|i| {
                (
                    format!("sl{i}"),
                    slice("a", &format!("s{i}"), &[("node-a", true)]),
                )
            })
            .collect();
        let slices: Vec<(&str, SliceInfo)> = slices
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut s = snap(svcs, slices);
        s.eligible = nodes.clone();
        let mut k = kcfg();
        k.max_announcing_nodes = Some(4);
        let mut by_vip: BTreeMap<IpNet, usize> = BTreeMap::new();
        for n in &nodes {
            k.node_name = n.clone();
            s.node = Some(NodeInfo {
                name: n.clone(),
                ..Default::default()
            });
            for p in compute(&s, &k).routes.keys() {
                *by_vip.entry(*p).or_default() += 1;
            }
        }
        assert_eq!(
            by_vip[&net("203.0.113.10/32")],
            2,
            "the annotation lowers the cap"
        );
        // (The slice counts its endpoint here on every node computed.)
        assert_eq!(by_vip[&net("203.0.113.11/32")], 12, "Local is not capped");
        for i in 12..40 {
            assert_eq!(
                by_vip[&net(&format!("203.0.113.{i}/32"))],
                4,
                "203.0.113.{i}"
            );
        }
    }

    #[test]
    fn a_value_the_policy_forbids_is_dropped_and_reported_and_the_rest_applies() {
        let mut web = svc("a", "web", &["203.0.113.10"]);
        web.annotations
            .insert(ANNOTATION_COMMUNITIES.into(), "65010:1, 65535:65281".into());
        let s = snap(
            vec![web],
            vec![("w", slice("a", "web", &[("node-b", true)]))],
        );
        let i = compute(&s, &kcfg());
        let a = &i.routes[&"203.0.113.10/32".parse::<IpNet>().unwrap()].attrs;
        assert_eq!(a.communities, vec![(65010 << 16) | 1]);
        assert_eq!(i.bad_annotations.len(), 1, "{:?}", i.bad_annotations);
        assert_eq!(i.bad_annotations[0].annotation, ANNOTATION_COMMUNITIES);
        assert_eq!(&*i.bad_annotations[0].service, "a/web");
    }

    #[test]
    fn services_of_two_namespaces_share_an_address_when_each_names_the_other() {
        let mut x = svc("a", "x", &["203.0.113.10"]);
        let mut y = svc("b", "y", &["203.0.113.10"]);
        y.created = 1;
        let s = |x: &ServiceInfo, y: &ServiceInfo| {
            snap(
                vec![x.clone(), y.clone()],
                vec![
                    ("x", slice("a", "x", &[("node-b", true)])),
                    ("y", slice("b", "y", &[("node-b", true)])),
                ],
            )
        };
        let owners = |i: &Intent| {
            let w = &i.routes[&"203.0.113.10/32".parse::<IpNet>().unwrap()];
            w.owners.iter().map(|u| u.to_string()).collect::<Vec<_>>()
        };
        let i = compute(&s(&x, &y), &kcfg());
        assert_eq!(owners(&i), ["uid-a-x"], "no consent: the older holds it");
        assert_eq!(i.refused[0].kind, RefusalKind::SharingNotAllowed);
        x.annotations
            .insert(ANNOTATION_SHARING_NAMESPACES.into(), "b".into());
        y.annotations
            .insert(ANNOTATION_SHARING_NAMESPACES.into(), "a".into());
        let i = compute(&s(&x, &y), &kcfg());
        assert_eq!(owners(&i), ["uid-a-x", "uid-b-y"]);
        assert!(i.refused.is_empty(), "{:?}", i.refused);
    }

    /// Lesson 4, on the incremental path the watcher uses: the same objects
    /// arriving one event at a time, EndpointSlices before their Services
    /// or after them, end in the same intent, the full computation's.
    #[test]
    fn event_order_does_not_matter() {
        let k = kcfg();
        let svcs = vec![
            svc("a", "web", &["203.0.113.10"]),
            svc("b", "db", &["203.0.113.11"]),
        ];
        let slices = vec![
            ("w", slice("a", "web", &[("node-b", true)])),
            ("d", slice("b", "db", &[("node-c", true)])),
        ];
        let full = snap(svcs.clone(), slices.clone());
        let run = |slices_first: bool| {
            let mut s = Snapshot {
                node: full.node.clone(),
                api_server: full.api_server.clone(),
                ..Default::default()
            };
            let mut t = Tracker::default();
            t.reset(&s, &k);
            let add_slices = |s: &mut Snapshot, t: &mut Tracker| {
                for (n, sl) in slices.iter().rev() {
                    let key: Key = format!("{}/{n}", namespace_of(sl)).into();
                    s.slices.insert(key.clone(), sl.clone());
                    let touched = t.slice_changed(&key, None, Some(sl));
                    t.update(s, &k, touched.iter());
                }
            };
            if slices_first {
                add_slices(&mut s, &mut t);
            }
            for sv in svcs.iter().rev() {
                s.services.insert(sv.key(), sv.clone());
                t.update(&s, &k, [sv.key()].iter());
            }
            if !slices_first {
                add_slices(&mut s, &mut t);
            }
            t.intent().clone()
        };
        let want = compute(&full, &k);
        assert_eq!(vips(&want), ["203.0.113.10/32", "203.0.113.11/32"]);
        assert_eq!(run(true), want, "EndpointSlices first");
        assert_eq!(run(false), want, "Services first");
    }
}

#[cfg(test)]
mod timing {
    use super::tests::{kcfg, slice, svc};
    use super::*;

    /// Every one of 10,000 Services with a ready endpoint gives its VIP;
    /// also prints how long one computation takes
    /// (`cargo test --release --lib intent::timing -- --nocapture`).
    #[test]
    fn compute_10k_services() {
        let mut s = Snapshot::default();
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x6440_0000 + i).to_string();
            let v = svc("bench", &format!("svc-{i}"), &[&ip]);
            s.services.insert(v.key(), v);
            let sl = slice("bench", &format!("svc-{i}"), &[("node-b", true)]);
            s.slices.insert(format!("bench/svc-{i}-x").into(), sl);
        }
        let t = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..10 {
            n += compute(&s, &kcfg()).routes.len();
        }
        println!("compute over 10,000 Services: {:?} each", t.elapsed() / 10);
        assert_eq!(n, 100_000);
    }
}

#[cfg(test)]
mod incremental {
    use super::tests::kcfg;
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Svc {
            i: usize,
            ip: usize,
            local: bool,
            annotated: bool,
            /// `vipd.io/announce`: none, bgp, l2, both, or unreadable.
            mode: usize,
        },
        DelSvc {
            i: usize,
        },
        /// Slice j, owned by Service `of`, with (on node-a?, ready?) endpoints.
        Slice {
            j: usize,
            of: usize,
            eps: Vec<(bool, bool)>,
        },
        DelSlice {
            j: usize,
        },
        /// Moves this node's own address onto a VIP (or off it).
        NodeAddr {
            ip: usize,
        },
    }

    const IPS: [&str; 4] = ["203.0.113.1", "203.0.113.2", "2001:db8:ff::3", "192.0.2.11"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..4usize,
                0..4usize,
                any::<bool>(),
                any::<bool>(),
                0..5usize
            )
                .prop_map(|(i, ip, local, annotated, mode)| Op::Svc {
                    i,
                    ip,
                    local,
                    annotated,
                    mode
                }),
            (0..4usize).prop_map(|i| Op::DelSvc { i }),
            (
                0..5usize,
                0..4usize,
                proptest::collection::vec((any::<bool>(), any::<bool>()), 0..3)
            )
                .prop_map(|(j, of, eps)| Op::Slice { j, of, eps }),
            (0..5usize).prop_map(|j| Op::DelSlice { j }),
            (0..4usize).prop_map(|ip| Op::NodeAddr { ip }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn incremental_equals_full(ops in proptest::collection::vec(op(), 1..50), l2 in any::<bool>(), agg in any::<bool>()) {
            let mut k = kcfg();
            // With aggregation, the first two addresses in one /30.
            if agg {
                k.adverts = super::tests::aggregating("203.0.113.0", "203.0.113.3", 30);
            }
            // With [l2], one address in an L2 pool.
            let one = IPS[1].parse().unwrap();
            k.l2 = l2.then(|| crate::config::L2Select {
                default: false,
                pools: vec![(crate::config::Range { first: one, last: one }, Mode::L2)],
            });
            let mut s = Snapshot {
                node: Some(NodeInfo { name: "node-a".into(), addresses: vec!["192.0.2.11".parse().unwrap()], ..Default::default() }),
                ..Default::default()
            };
            let mut t = Tracker::default();
            t.reset(&s, &k);
            for op in &ops {
                let delta = match op {
                    Op::Svc { i, ip, local, annotated, mode } => {
                        let mut svc = ServiceInfo {
                            uid: format!("uid{i}").into(), key: format!("ns/s{i}").into(),
                            load_balancer: true, ingress_ips: [IPS[*ip].into()].into(), local_policy: *local,
                            ..Default::default()
                        };
                        if *annotated {
                            svc.annotations.insert(ANNOTATION_COMMUNITIES.into(), format!("65010:{i}"));
                        }
                        if let Some(m) = ["bgp", "l2", "both", "bogus"].get(mode.wrapping_sub(1)) {
                            svc.annotations.insert(ANNOUNCE.into(), m.to_string());
                        }
                        let key = svc.key();
                        s.services.insert(key.clone(), svc);
                        t.update(&s, &k, [key].iter())
                    }
                    Op::DelSvc { i } => {
                        let key: Key = format!("ns/s{i}").into();
                        s.services.remove(&key);
                        t.update(&s, &k, [key].iter())
                    }
                    Op::Slice { j, of, eps } => {
                        let key: Key = format!("ns/sl{j}").into();
                        let eps: Vec<EndpointInfo> = eps.iter().map(|(here, ready)| EndpointInfo {
                            node: Some(if *here { "node-a" } else { "node-b" }.into()),
                            addresses: vec![], ready: *ready, serving: *ready, terminating: false,
                        }).collect();
                        let sl = super::tests::sliced("ns", &format!("s{of}"), &eps);
                        let old = s.slices.insert(key.clone(), sl.clone());
                        let touched = t.slice_changed(&key, old.as_ref(), Some(&sl));
                        t.update(&s, &k, touched.iter())
                    }
                    Op::DelSlice { j } => {
                        let key: Key = format!("ns/sl{j}").into();
                        let old = s.slices.remove(&key);
                        let touched = t.slice_changed(&key, old.as_ref(), None);
                        t.update(&s, &k, touched.iter())
                    }
                    Op::NodeAddr { ip } => {
                        s.node.as_mut().unwrap().addresses = vec![IPS[*ip].parse().unwrap()];
                        t.reset(&s, &k)
                    }
                };
                let full = compute(&s, &k);
                prop_assert_eq!(t.intent(), &full, "after {:?}", op);
                for (p, w) in &delta {
                    prop_assert_eq!(full.routes.get(p), w.as_ref());
                }
                // The status counts kept as parts change equal a count of
                // the whole intent.
                let owners: BTreeSet<&Uid> = full.routes.values().flat_map(|w| &w.owners).collect();
                prop_assert_eq!(t.services_announced(), owners.len());
                let mut by: BTreeMap<RefusalKind, usize> = BTreeMap::new();
                for r in &full.refused {
                    *by.entry(r.kind).or_default() += 1;
                }
                prop_assert_eq!(t.refused_by_kind(), &by);
                // No aggregate while a Local Service lists an address in it.
                let covering: IpNet = "203.0.113.0/30".parse().unwrap();
                if full.routes.contains_key(&covering) {
                    let local_inside = s.services.values().any(|v| v.local_policy
                        && v.ingress_ips.iter().filter_map(|l| l.ip()).any(|ip| covering.contains(&ip)));
                    prop_assert!(!local_inside, "aggregate with a Local Service inside: {:?}", full.routes);
                }
            }
        }
    }

    /// A change to one Service among 10,000 costs one Service's work.
    #[test]
    fn one_change_among_10k_services() {
        let k = kcfg();
        let mut s = Snapshot::default();
        let mut t = Tracker::default();
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x6440_0000 + i).to_string();
            let v = super::tests::svc("bench", &format!("svc-{i}"), &[&ip]);
            s.services.insert(v.key(), v);
            s.slices.insert(
                format!("bench/svc-{i}-x").into(),
                super::tests::slice("bench", &format!("svc-{i}"), &[("node-b", true)]),
            );
        }
        t.reset(&s, &k);
        let key: Key = "bench/svc-7-x".into();
        let new = super::tests::slice("bench", "svc-7", &[("node-b", false)]);
        let old = s.slices.insert(key.clone(), new.clone());
        let start = std::time::Instant::now();
        let touched = t.slice_changed(&key, old.as_ref(), Some(&new));
        let d = t.update(&s, &k, touched.iter());
        println!("one change among 10,000 Services: {:?}", start.elapsed());
        assert_eq!(d, vec![("100.64.0.7/32".parse().unwrap(), None)]);
        assert_eq!(t.intent().routes.len(), 9_999);
    }
}
