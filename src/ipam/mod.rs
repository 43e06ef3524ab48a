//! Address allocation for LoadBalancer Services (issue 7), the pure part:
//! pools and the Services as they are (with the addresses their status
//! already holds) in, the addresses each Service should hold and the
//! Events to tell out. No state of its own: a new allocator reads the
//! Services' status and continues where the last one stopped.
//!
//! Not wired yet: the Lease election's API calls (its decisions are in
//! [`lease`]), the status writes and the configuration come with the rest
//! of issue 7.
//!
//! Rules, in the order they are applied:
//! - Older Services first (creationTimestamp, then UID): on a conflict the
//!   older keeps the address.
//! - An address a Service already holds stays while the Service still asks
//!   for it (requested addresses, if any, include it; its family is still
//!   wanted), whoever wrote it; outside every pool it is kept with a
//!   warning.
//! - Two Services hold one address only with the same sharing key, no
//!   (protocol, port) in common, the same namespace (or each naming the
//!   other's in `vipd.io/sharing-namespaces`, or `*`), the same traffic
//!   policy, and under Local the same pod selector (otherwise a node would
//!   announce the address for one owner's endpoints and receive the
//!   other's traffic too).
//! - Missing families are filled from the requested addresses, or else the
//!   lowest free address of the Service's pool (its annotation, or the
//!   first auto-assign pool open to its namespace).

pub mod lease;
pub mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use crate::config::{Pool, Range};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

pub fn family(a: &IpAddr) -> Family {
    if a.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// What the allocator needs of one Service vipd is responsible for. Held
/// for every Service while this node leads: what few Services have is
/// boxed (at 50,000 Services, each 8-byte field is 400 KB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    /// `namespace/name`: shared with the map that holds the Service.
    pub key: std::sync::Arc<str>,
    pub uid: std::sync::Arc<str>,
    /// creationTimestamp, seconds since the epoch.
    pub created: i64,
    /// `spec.ipFamilies`, in order.
    pub families: Families,
    pub policy: FamilyPolicy,
    /// `vipd.io/pool`.
    pub pool: Option<Box<str>>,
    /// `vipd.io/load-balancer-ips` and `spec.loadBalancerIP`.
    pub requested: Vec<IpAddr>,
    /// `vipd.io/sharing-key` and what decides sharing under it; none
    /// without the annotation.
    pub sharing: Option<Box<Sharing>>,
    /// `spec.externalTrafficPolicy == "Local"`.
    pub local: bool,
    /// The addresses `status.loadBalancer.ingress` holds now.
    pub current: Addrs,
}

/// A Service's families: one or two, held in place.
pub type Families = smallvec::SmallVec<[Family; 2]>;

/// A Service's addresses: one or two, held in place.
pub type Addrs = smallvec::SmallVec<[IpAddr; 2]>;

/// What decides whether Services with one sharing key may share an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    /// `vipd.io/sharing-key`.
    pub key: String,
    /// (protocol, port) of `spec.ports`.
    pub ports: Vec<(String, u16)>,
    /// `vipd.io/sharing-namespaces` (`*`: any).
    pub namespaces: Vec<String>,
    /// `spec.selector`, for externalTrafficPolicy Local only.
    pub selector: BTreeMap<String, String>,
}

impl Svc {
    /// From the key: not held twice.
    pub fn namespace(&self) -> &str {
        crate::k8s::model::namespace_of(&self.key)
    }

    /// The sharing part, created empty if absent (for building one).
    pub fn sharing_mut(&mut self) -> &mut Sharing {
        self.sharing.get_or_insert_with(Default::default)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    AddressAssigned,
    AllocationFailed,
    AddressConflict,
    /// A held address outside every pool, kept.
    AddressOutsidePools,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    pub service: String,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Every Service's addresses after this pass (empty: none).
    pub status: BTreeMap<String, Vec<IpAddr>>,
    pub events: Vec<Event>,
}

fn wanted_families(s: &Svc) -> Families {
    let mut f = s.families.clone();
    if f.is_empty() {
        f.push(Family::V4);
    }
    match s.policy {
        FamilyPolicy::SingleStack => f.truncate(1),
        FamilyPolicy::PreferDualStack | FamilyPolicy::RequireDualStack => {
            for x in [Family::V4, Family::V6] {
                if !f.contains(&x) {
                    f.push(x);
                }
            }
        }
    }
    f
}

fn in_pool(p: &Pool, a: &IpAddr) -> bool {
    p.ranges.iter().any(|r| r.contains(*a))
}

fn open_to(p: &Pool, ns: &str) -> bool {
    p.namespaces.is_empty() || p.namespaces.iter().any(|n| n == ns)
}

fn next(a: IpAddr) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => u32::from(v).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v) => u128::from(v).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

/// .0 and .255 of a range of /24 or larger (256 addresses or more).
fn avoided(p: &Pool, r: &Range, a: &IpAddr) -> bool {
    let (IpAddr::V4(f), IpAddr::V4(l), IpAddr::V4(x)) = (r.first, r.last, a) else {
        return false;
    };
    let size = u64::from(u32::from(l)) - u64::from(u32::from(f)) + 1;
    p.avoid_network_and_broadcast && size >= 256 && matches!(x.octets()[3], 0 | 255)
}

/// Who holds each address so far, and whether another may join them.
#[derive(Default)]
struct Holders<'a> {
    by_addr: BTreeMap<IpAddr, Vec<&'a Svc>>,
}

/// Why `s` may not share an address with `h`, or `None` where it may.
pub fn why_not_shared(h: &Svc, s: &Svc) -> Option<&'static str> {
    let (Some(hs), Some(ss)) = (&h.sharing, &s.sharing) else {
        return Some("no common vipd.io/sharing-key");
    };
    Some(if hs.key != ss.key {
        "no common vipd.io/sharing-key"
    } else if hs.ports.iter().any(|p| ss.ports.contains(p)) {
        "a (protocol, port) in common"
    } else if !crate::k8s::model::namespaces_share(
        h.namespace(),
        &hs.namespaces,
        s.namespace(),
        &ss.namespaces,
    ) {
        "another namespace, and not both name each other in vipd.io/sharing-namespaces"
    } else if h.local != s.local {
        "another externalTrafficPolicy"
    } else if s.local && hs.selector != ss.selector {
        "externalTrafficPolicy Local with another pod selector"
    } else {
        return None;
    })
}

impl<'a> Holders<'a> {
    /// Why `s` may not hold `a`: the holder that stands in the way, and why.
    fn refuses(&self, s: &Svc, a: &IpAddr) -> Option<(&'a Svc, &'static str)> {
        let hs = self.by_addr.get(a)?;
        hs.iter()
            .copied()
            .filter(|h| h.key != s.key)
            .find_map(|h| why_not_shared(h, s).map(|why| (h, why)))
    }
    fn add(&mut self, s: &'a Svc, a: IpAddr) {
        self.by_addr.entry(a).or_default().push(s);
    }
    fn remove(&mut self, s: &Svc, a: &IpAddr) {
        if let Some(hs) = self.by_addr.get_mut(a) {
            hs.retain(|h| h.key != s.key);
            if hs.is_empty() {
                self.by_addr.remove(a);
            }
        }
    }
}

/// The allocation pass: see the module documentation for the rules.
pub fn allocate<S: std::borrow::Borrow<Svc>>(pools: &[Pool], svcs: &[S]) -> Outcome {
    let mut order: Vec<&Svc> = svcs.iter().map(|s| s.borrow()).collect();
    order.sort_by(|a, b| (a.created, &a.uid, &a.key).cmp(&(b.created, &b.uid, &b.key)));
    let mut out = Outcome::default();
    let mut holders = Holders::default();
    let mut kept: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    // Held addresses first, for every Service, so that an older Service's
    // holding is known before any younger one is filled.
    for s in &order {
        let fams = wanted_families(s);
        let mut mine: Vec<IpAddr> = vec![];
        for a in &s.current {
            let f = family(a);
            let still_asked = fams.contains(&f)
                && (s.requested.is_empty() || s.requested.contains(a))
                && !mine.iter().any(|m| family(m) == f);
            if !still_asked {
                continue;
            }
            if let Some((h, why)) = holders.refuses(s, a) {
                out.events.push(Event {
                    service: s.key.to_string(),
                    kind: EventKind::AddressConflict,
                    message: format!(
                        "{a} is also held by {}, which is older and keeps it ({why})",
                        h.key
                    ),
                });
                continue;
            }
            if !pools.iter().any(|p| in_pool(p, a)) {
                out.events.push(Event {
                    service: s.key.to_string(),
                    kind: EventKind::AddressOutsidePools,
                    message: format!(
                        "{a} is in no pool; kept, but not announced unless kubernetes.allowed_prefixes covers it"
                    ),
                });
            }
            holders.add(s, *a);
            mine.push(*a);
        }
        kept.insert(&s.key[..], mine);
    }
    let mut cursors: BTreeMap<(usize, usize), IpAddr> = BTreeMap::new();
    for s in &order {
        let mut mine = kept.remove(&s.key[..]).unwrap_or_default();
        let had = mine.len();
        let mut events = vec![];
        fill(pools, s, &mut mine, &mut holders, &mut cursors, &mut events);
        // RequireDualStack: every family or no new address at all.
        let families: BTreeSet<Family> = mine.iter().map(family).collect();
        if s.policy == FamilyPolicy::RequireDualStack && families.len() < 2 {
            for a in mine.drain(had..) {
                holders.remove(s, &a);
            }
            events.retain(|e| e.kind != EventKind::AddressAssigned);
        }
        out.events.extend(events);
        out.status.insert(s.key.to_string(), mine);
    }
    out
}

/// Gives `s` an address of each family it still lacks.
fn fill<'a>(
    pools: &[Pool],
    s: &'a Svc,
    mine: &mut Vec<IpAddr>,
    holders: &mut Holders<'a>,
    cursors: &mut BTreeMap<(usize, usize), IpAddr>,
    events: &mut Vec<Event>,
) {
    let pool = match &s.pool {
        Some(name) => pools.iter().position(|p| *p.name == **name),
        None => pools
            .iter()
            .position(|p| p.auto_assign && open_to(p, s.namespace())),
    };
    let pool_ok = pool.is_some_and(|i| open_to(&pools[i], s.namespace()));
    for f in wanted_families(s) {
        if mine.iter().any(|a| family(a) == f) {
            continue;
        }
        let optional = s.policy == FamilyPolicy::PreferDualStack && !s.families.contains(&f);
        let got = if let Some(a) = s.requested.iter().find(|a| family(a) == f) {
            requested(pools, s, a, holders)
        } else if let Some(pi) = pool.filter(|_| pool_ok) {
            match free(&pools[pi], pi, f, s, holders, cursors) {
                Some(a) => Ok(a),
                None if optional => continue,
                None => Err(format!("pool {} has no free {f:?} address", pools[pi].name)),
            }
        } else if optional {
            continue;
        } else {
            Err(match &s.pool {
                Some(n) => format!(
                    "pool {n} does not exist or is closed to namespace {}",
                    s.namespace()
                ),
                None => format!("no auto-assign pool is open to namespace {}", s.namespace()),
            })
        };
        match got {
            Ok(a) => {
                holders.add(s, a);
                mine.push(a);
                assigned(events, s, &a);
            }
            Err(why) => events.push(Event {
                service: s.key.to_string(),
                kind: EventKind::AllocationFailed,
                message: why,
            }),
        }
    }
}

/// An address the Service asked for by name: its, if a pool it may use
/// holds it and nobody who may not share it has it.
fn requested(pools: &[Pool], s: &Svc, a: &IpAddr, holders: &Holders) -> Result<IpAddr, String> {
    let allowed = pools
        .iter()
        .filter(|p| open_to(p, s.namespace()))
        .any(|p| in_pool(p, a) && s.pool.as_ref().is_none_or(|n| **n == *p.name));
    match (allowed, holders.refuses(s, a)) {
        (false, _) => Err(format!("{a} is not in a pool this Service may use")),
        (true, Some((h, why))) => Err(format!("{a} is taken by {} ({why})", h.key)),
        (true, None) => Ok(*a),
    }
}

fn assigned(events: &mut Vec<Event>, s: &Svc, a: &IpAddr) {
    events.push(Event {
        service: s.key.to_string(),
        kind: EventKind::AddressAssigned,
        message: format!("assigned {a}"),
    });
}

/// The lowest address of family `f` in the pool that `s` may hold. Within
/// one pass addresses are only taken, never freed, so each range keeps a
/// cursor past the addresses no Service can have any more (avoided, or
/// held without a sharing key): 10,000 Services cost one walk, not 10,000.
fn free(
    p: &Pool,
    pi: usize,
    f: Family,
    s: &Svc,
    holders: &Holders,
    cursors: &mut BTreeMap<(usize, usize), IpAddr>,
) -> Option<IpAddr> {
    for (ri, r) in p.ranges.iter().enumerate() {
        if family(&r.first) != f || r.first > r.last {
            continue;
        }
        let mut a = *cursors.get(&(pi, ri)).unwrap_or(&r.first);
        let mut advancing = true;
        while a <= r.last {
            let avoid = avoided(p, r, &a);
            let closed = avoid
                || holders
                    .by_addr
                    .get(&a)
                    .is_some_and(|hs| hs.iter().any(|h| h.sharing.is_none()));
            advancing &= closed;
            if !avoid && holders.refuses(s, &a).is_none() {
                return Some(a);
            }
            match next(a) {
                Some(n) => {
                    if advancing {
                        cursors.insert((pi, ri), n);
                    }
                    a = n;
                }
                None => break,
            }
        }
    }
    None
}

/// How much of one pool's family is in use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub pool: String,
    pub family: Family,
    /// Distinct addresses of the pool some Service holds.
    pub used: u128,
    /// Addresses the pool can hand out (avoided ones not counted).
    pub size: u128,
}

/// Used and total addresses per pool and family, for `vipd status` and
/// the metrics.
pub fn usage(pools: &[Pool], status: &BTreeMap<String, Vec<IpAddr>>) -> Vec<PoolUsage> {
    let held: BTreeSet<IpAddr> = status.values().flatten().copied().collect();
    let mut out = vec![];
    for p in pools {
        for f in [Family::V4, Family::V6] {
            let ranges: Vec<&Range> = p.ranges.iter().filter(|r| family(&r.first) == f).collect();
            if ranges.is_empty() {
                continue;
            }
            let size = ranges
                .iter()
                .map(|r| range_size(p, r))
                .fold(0u128, u128::saturating_add);
            let used = held
                .iter()
                .filter(|a| ranges.iter().any(|r| r.contains(**a) && !avoided(p, r, a)))
                .count() as u128;
            out.push(PoolUsage {
                pool: p.name.clone(),
                family: f,
                used,
                size,
            });
        }
    }
    out
}

fn as_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v).into(),
        IpAddr::V6(v) => v.into(),
    }
}

fn range_size(p: &Pool, r: &Range) -> u128 {
    let (f, l) = (as_u128(r.first), as_u128(r.last));
    if f > l {
        return 0;
    }
    let all = (l - f).saturating_add(1);
    let skip = if p.avoid_network_and_broadcast && r.first.is_ipv4() && all >= 256 {
        // Addresses ending in .0 or .255 between f and l.
        let ending = |k: u128| (l + 256 - k) / 256 - (f + 255 - k) / 256;
        ending(0) + ending(255)
    } else {
        0
    };
    all - skip
}

/// The Services the pass left without every address they asked for, each
/// with the last reason it gave.
pub fn pending(out: &Outcome) -> Vec<(String, String)> {
    let mut why: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &out.events {
        if e.kind == EventKind::AllocationFailed {
            why.insert(&e.service, &e.message);
        }
    }
    out.status
        .iter()
        .filter_map(|(k, v)| {
            let reason = why.get(k.as_str());
            (v.is_empty() || reason.is_some())
                .then(|| (k.clone(), reason.unwrap_or(&"waiting").to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
