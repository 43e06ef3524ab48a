//! From what is wanted to what is applied: the speaker's table (static
//! announcements plus the Kubernetes intent) and the node's own dataplane
//! (VIP addresses on an interface, routes in a table).
//!
//! The decisions are pure ([`table`], [`dataplane_diff`]); the [`Dataplane`]
//! trait is the edge, implemented with rtnetlink in `dataplane` and in
//! memory in the tests. A dataplane only ever removes what it created:
//! [`Dataplane::owned`] reports vipd's own entries (recognised after a
//! restart by vipd's marks), never anyone else's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;

use crate::bgp::rib::Table;
use crate::config::RouteAttrs;
use crate::k8s::intent::{Agg, Delta, Intent, Want};

pub mod control;
pub mod node;

/// The Kubernetes VIPs with their attributes, as the speaker's table holds
/// them: equal attribute sets share one `Arc`, so Services with the same
/// attributes pack into the same UPDATEs. Kept in the table's own
/// persistent map, so the table is this map with the static routes laid
/// over it and shares every node with it: one copy of 75,000 routes, not
/// two.
#[derive(Debug)]
pub struct KubeRoutes {
    /// What goes to the routers: aggregates in, their members out.
    routes: Table,
    /// Of `routes`, the aggregates (never on the dataplane).
    covering: BTreeSet<IpNet>,
    /// VIPs announced only inside an aggregate (on the dataplane all the
    /// same).
    members: BTreeSet<IpNet>,
    plain: Arc<RouteAttrs>,
    interned: HashMap<RouteAttrs, Arc<RouteAttrs>>,
}

impl Default for KubeRoutes {
    fn default() -> Self {
        KubeRoutes {
            routes: Table::new(),
            covering: BTreeSet::new(),
            members: BTreeSet::new(),
            plain: crate::k8s::intent::plain(),
            interned: HashMap::new(),
        }
    }
}

impl KubeRoutes {
    fn intern(&mut self, a: &Arc<RouteAttrs>) -> Arc<RouteAttrs> {
        // Most VIPs carry no attributes of their own: no hashing for them.
        if Arc::ptr_eq(a, &self.plain) || **a == *self.plain {
            return self.plain.clone();
        }
        self.interned
            .entry((**a).clone())
            .or_insert_with(|| a.clone())
            .clone()
    }

    /// Whether the node's dataplane holds `p` (every VIP, no aggregate).
    pub fn contains(&self, p: &IpNet) -> bool {
        (self.routes.contains_key(p) && !self.covering.contains(p)) || self.members.contains(p)
    }

    /// The VIPs the node's dataplane holds.
    pub fn vips(&self) -> BTreeSet<IpNet> {
        let announced = self.routes.keys().filter(|p| !self.covering.contains(p));
        announced.chain(&self.members).copied().collect()
    }

    /// The prefixes announced to the routers.
    pub fn keys(&self) -> BTreeSet<IpNet> {
        self.routes.keys().copied().collect()
    }

    /// Replaces everything; returns the prefixes that may have changed.
    pub fn set_all(&mut self, all: &BTreeMap<IpNet, Want>) -> Vec<IpNet> {
        let mut changed: Vec<IpNet> = self.routes.keys().chain(&self.members).copied().collect();
        self.routes = Table::new();
        self.interned.clear();
        self.covering.clear();
        self.members.clear();
        let mut routes: Vec<(IpNet, Arc<RouteAttrs>)> = Vec::with_capacity(all.len());
        for (p, w) in all {
            changed.push(*p);
            match w.agg {
                Agg::Member(_) => {
                    self.members.insert(*p);
                }
                Agg::Covering => {
                    self.covering.insert(*p);
                    routes.push((*p, self.intern(&w.attrs)));
                }
                Agg::Own => routes.push((*p, self.intern(&w.attrs))),
            }
        }
        self.routes = packed_table(routes);
        changed
    }

    /// Applies a delta; returns the prefixes it changed.
    pub fn apply(&mut self, delta: &Delta) -> Vec<IpNet> {
        for (p, w) in delta {
            let agg = w.as_ref().map(|w| w.agg);
            set(&mut self.covering, *p, agg == Some(Agg::Covering));
            set(&mut self.members, *p, matches!(agg, Some(Agg::Member(_))));
            match w.as_ref().filter(|w| !matches!(w.agg, Agg::Member(_))) {
                Some(w) => {
                    let a = self.intern(&w.attrs);
                    // Even an insert of the same value copies the path
                    // away from the tables that share it.
                    if !holds(&self.routes, p, Some(&a)) {
                        self.routes.insert(*p, a);
                    }
                }
                None => {
                    self.routes.remove(p);
                }
            }
        }
        delta.iter().map(|(p, _)| *p).collect()
    }
}

fn set(s: &mut BTreeSet<IpNet>, p: IpNet, on: bool) {
    if on {
        s.insert(p);
    } else {
        s.remove(&p);
    }
}

/// A table of `sorted` routes with full nodes. The persistent B-tree
/// splits a full node in half, so routes inserted in order leave every
/// node half empty (twice the memory); inserted every other one first,
/// the second half fills the room the splits left. Only memory depends
/// on this: the map's content is the same whatever the order.
fn packed_table(sorted: Vec<(IpNet, Arc<RouteAttrs>)>) -> Table {
    let mut t = Table::new();
    for start in [0, 1] {
        for (p, a) in sorted.iter().skip(start).step_by(2) {
            t.insert(*p, a.clone());
        }
    }
    t
}

/// The table to announce: the static announcements, and the Kubernetes VIPs
/// the static ones do not already cover. It shares the Kubernetes routes'
/// nodes (only the paths to the static routes are copied); without
/// Kubernetes routes it is the static table itself.
pub fn merged(statics: &Arc<Table>, kube: &KubeRoutes) -> Arc<Table> {
    if kube.routes.is_empty() {
        return statics.clone();
    }
    let mut t = kube.routes.clone();
    for (p, a) in statics.iter() {
        if !holds(&t, p, Some(a)) {
            t.insert(*p, a.clone());
        }
    }
    Arc::new(t)
}

/// Brings `table` (a [`merged`] table) up to date after the Kubernetes
/// routes changed at the `changed` prefixes: the same table where it
/// already holds what they want (a re-list confirming every route), else
/// a new one. A table the speaker still holds is never changed under it.
pub fn patch(table: &mut Arc<Table>, statics: &Arc<Table>, kube: &KubeRoutes, changed: &[IpNet]) {
    let wanted = |p: &IpNet| statics.get(p).or_else(|| kube.routes.get(p));
    if changed.iter().all(|p| holds(table, p, wanted(p))) {
        return;
    }
    *table = merged(statics, kube);
}

/// Whether `table` already holds exactly `want` at `p`: the same shared
/// attributes, or nothing where nothing is wanted.
fn holds(table: &Table, p: &IpNet, want: Option<&Arc<RouteAttrs>>) -> bool {
    match want {
        Some(a) => table.get(p).is_some_and(|b| Arc::ptr_eq(a, b)),
        None => !table.contains_key(p),
    }
}

/// A route outside the table's own: the control-plane VIP while it serves.
pub type Route = (IpNet, Arc<RouteAttrs>);

/// The speaker's table and what it is made of, recomputed in one place:
/// the static announcements, the control-plane VIP while it serves, and the
/// Kubernetes VIPs. With Kubernetes it is not ready before the first
/// complete intent (the readiness barrier): nothing is announced before.
#[derive(Debug)]
pub struct Tables {
    statics: Arc<Table>,
    control: Option<Route>,
    kube: KubeRoutes,
    ready: bool,
    /// `statics` with `control`: what takes precedence over a Service.
    base: Arc<Table>,
    table: Arc<Table>,
}

impl Tables {
    pub fn new(statics: Arc<Table>, control: Option<Route>, waits_for_kube: bool) -> Tables {
        let mut t = Tables {
            table: statics.clone(),
            base: statics.clone(),
            statics,
            control,
            kube: KubeRoutes::default(),
            ready: !waits_for_kube,
        };
        t.rebuild();
        t
    }

    fn rebuild(&mut self) {
        self.base = match &self.control {
            Some((p, a)) => {
                let mut t = (*self.statics).clone();
                t.insert(*p, a.clone());
                Arc::new(t)
            }
            None => self.statics.clone(),
        };
        self.table = merged(&self.base, &self.kube);
    }

    pub fn set_statics(&mut self, statics: Arc<Table>) {
        self.statics = statics;
        self.rebuild();
    }

    /// Whether the table changed.
    pub fn set_control(&mut self, route: Option<Route>) -> bool {
        if route == self.control {
            return false;
        }
        self.control = route;
        self.rebuild();
        true
    }

    /// The first or a re-listed complete intent: the barrier is passed.
    /// Returns the prefixes that may have changed.
    pub fn kube_full(&mut self, all: &BTreeMap<IpNet, Want>) -> Vec<IpNet> {
        self.ready = true;
        let changed = self.kube.set_all(all);
        patch(&mut self.table, &self.base, &self.kube, &changed);
        changed
    }

    pub fn kube_delta(&mut self, delta: &Delta) -> Vec<IpNet> {
        let changed = self.kube.apply(delta);
        patch(&mut self.table, &self.base, &self.kube, &changed);
        changed
    }

    /// Whether the table may be announced (the barrier).
    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    pub fn kube(&self) -> &KubeRoutes {
        &self.kube
    }

    pub fn statics(&self) -> &Arc<Table> {
        &self.statics
    }

    pub fn control_prefix(&self) -> Option<IpNet> {
        self.control.as_ref().map(|(p, _)| *p)
    }
}

/// [`merged`] straight from an intent (tests and tools).
pub fn table(statics: &Arc<Table>, intent: &Intent) -> Arc<Table> {
    let mut k = KubeRoutes::default();
    k.set_all(&intent.routes);
    merged(statics, &k)
}

/// What to add and remove so that exactly `want` is applied.
pub fn dataplane_diff(
    applied: &BTreeSet<IpNet>,
    want: &BTreeSet<IpNet>,
) -> (Vec<IpNet>, Vec<IpNet>) {
    (
        want.difference(applied).copied().collect(),
        applied.difference(want).copied().collect(),
    )
}

pub use crate::dataplane::Dataplane;

/// Brings one dataplane to `want`, reading what vipd owns first so that a
/// restart picks up where the last run left off. Returns the errors, one
/// line each; what failed is tried again on the next call.
pub async fn apply<D: Dataplane>(dp: &mut D, want: &BTreeSet<IpNet>) -> Vec<String> {
    let mut errors = vec![];
    let applied = match dp.owned().await {
        Ok(a) => a,
        Err(e) => return vec![format!("reading vipd's entries: {e}")],
    };
    let (add, remove) = dataplane_diff(&applied, want);
    for p in remove {
        if let Err(e) = dp.remove(p).await {
            errors.push(format!("removing {p}: {e}"));
        }
    }
    for p in add {
        if let Err(e) = dp.add(p).await {
            errors.push(format!("adding {p}: {e}"));
        }
    }
    errors
}

/// The VIPs the node's dataplane should hold: the intent's (static
/// announcements are a routing matter only).
pub fn dataplane_want(intent: &Intent) -> BTreeSet<IpNet> {
    let vips = intent.routes.iter().filter(|(_, w)| w.agg != Agg::Covering);
    vips.map(|(p, _)| *p).collect()
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use crate::dataplane::Error;

    /// An in-memory dataplane as the kernel holds it: one entry per prefix,
    /// vipd's (marked) or someone else's. As with the kernel, adding where
    /// another's entry stands fails; removing another's entry is the bug
    /// the tests are after, so it panics.
    #[derive(Debug, Default)]
    pub struct Fake {
        pub entries: BTreeMap<IpNet, bool>,
    }

    impl Fake {
        /// A dataplane already holding others' entries at `prefixes`.
        pub fn with_others(prefixes: &[IpNet]) -> Fake {
            Fake {
                entries: prefixes.iter().map(|p| (*p, false)).collect(),
            }
        }
        pub fn ours(&self) -> BTreeSet<IpNet> {
            self.entries
                .iter()
                .filter(|(_, v)| **v)
                .map(|(p, _)| *p)
                .collect()
        }
        pub fn others(&self) -> BTreeSet<IpNet> {
            self.entries
                .iter()
                .filter(|(_, v)| !**v)
                .map(|(p, _)| *p)
                .collect()
        }
    }

    impl Dataplane for Fake {
        async fn owned(&mut self) -> Result<BTreeSet<IpNet>, Error> {
            Ok(self.ours())
        }
        async fn add(&mut self, p: IpNet) -> Result<(), Error> {
            match self.entries.get(&p) {
                Some(false) => Err(Error::Exists(p)),
                _ => {
                    self.entries.insert(p, true);
                    Ok(())
                }
            }
        }
        async fn remove(&mut self, p: IpNet) -> Result<(), Error> {
            match self.entries.get(&p) {
                Some(true) => {
                    self.entries.remove(&p);
                    Ok(())
                }
                Some(false) => panic!("removed {p}, which vipd did not create"),
                None => Err(Error::Netlink("no such entry".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;
    use crate::k8s::intent::compute;
    use crate::k8s::intent::tests::kcfg;
    use crate::k8s::model::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const IPS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "2001:db8:ff::3"];

    #[derive(Debug, Clone)]
    enum Op {
        /// Create or update Service i: its IP, policy.
        Svc {
            i: usize,
            ip: usize,
            local: bool,
        },
        DelSvc {
            i: usize,
        },
        /// Create or update the slice of Service i: (on node-a?, ready?) endpoints.
        Slice {
            i: usize,
            eps: Vec<(bool, bool)>,
        },
        DelSlice {
            i: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..3usize, any::<bool>()).prop_map(|(i, ip, local)| Op::Svc {
                i,
                ip,
                local
            }),
            (0..4usize).prop_map(|i| Op::DelSvc { i }),
            (
                0..4usize,
                proptest::collection::vec((any::<bool>(), any::<bool>()), 0..3)
            )
                .prop_map(|(i, eps)| Op::Slice { i, eps }),
            (0..4usize).prop_map(|i| Op::DelSlice { i }),
        ]
    }

    fn apply_op(s: &mut Snapshot, op: &Op) {
        match op {
            Op::Svc { i, ip, local } => {
                let svc = ServiceInfo {
                    uid: format!("uid{i}").into(),
                    key: format!("ns/s{i}").into(),
                    load_balancer: true,
                    ingress_ips: [IPS[*ip].into()].into(),
                    local_policy: *local,
                    ..Default::default()
                };
                s.services.insert(svc.key(), svc);
            }
            Op::DelSvc { i } => {
                s.services.remove(format!("ns/s{i}").as_str());
            }
            Op::Slice { i, eps } => {
                let eps: Vec<EndpointInfo> = (eps.iter())
                    .map(|(here, ready)| EndpointInfo {
                        node: Some(if *here { "node-a" } else { "node-b" }.into()),
                        addresses: vec!["10.0.0.1".into()],
                        ready: *ready,
                        serving: *ready,
                        terminating: false,
                    })
                    .collect();
                let sl = SliceInfo::new("ns".into(), Some(format!("s{i}")), &eps, "node-a");
                s.slices.insert(format!("ns/s{i}-slice").into(), sl);
            }
            Op::DelSlice { i } => {
                s.slices.remove(format!("ns/s{i}-slice").as_str());
            }
        }
    }

    /// The model: the Services that want a VIP here are those of Cluster
    /// policy with a ready endpoint and those of Local policy (ready here
    /// or not); the oldest (here: lowest UID) decides the policy, and the
    /// others of that policy share it. Cluster: wanted. Local: wanted
    /// while every one of them has a ready endpoint on this node.
    fn model(s: &Snapshot) -> BTreeSet<IpNet> {
        let mut by_ip: BTreeMap<IpNet, Vec<(&str, bool, bool)>> = BTreeMap::new();
        for svc in s.services.values() {
            let slice = s.slices.get(format!("ns/{}-slice", svc.name()).as_str());
            let ready = |here: bool| {
                // Every endpoint of these is serving exactly when ready.
                slice.is_some_and(|sl| if here { sl.here > 0 } else { sl.ready > 0 })
            };
            let (wants, ok) = if svc.local_policy {
                (true, ready(true))
            } else {
                (ready(false), true)
            };
            if wants {
                let ip = IpNet::from(svc.ingress_ips[0].ip().unwrap());
                by_ip
                    .entry(ip)
                    .or_default()
                    .push((&svc.uid, svc.local_policy, ok));
            }
        }
        let mut out = BTreeSet::new();
        for (ip, mut owners) in by_ip {
            owners.sort();
            let local = owners[0].1;
            if owners.iter().filter(|o| o.1 == local).all(|o| o.2) {
                out.insert(ip);
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn applied_always_equals_the_model_and_nothing_remains(ops in proptest::collection::vec(op(), 1..40)) {
            let statics: Arc<Table> = Arc::new([("198.51.100.1/32".parse::<IpNet>().unwrap(), Arc::new(RouteAttrs::default()))].into_iter().collect());
            // Someone else's entry at a VIP the Services use, and one apart.
            let others: BTreeSet<IpNet> =
                ["203.0.113.1/32".parse().unwrap(), "198.51.100.9/32".parse().unwrap()].into();
            let mut dp = Fake::with_others(&others.iter().copied().collect::<Vec<_>>());
            let mut s = Snapshot::default();
            for op in &ops {
                apply_op(&mut s, op);
                let intent = compute(&s, &kcfg());
                let t = table(&statics, &intent);
                let errs = block_on(apply(&mut dp, &dataplane_want(&intent)));
                let want = model(&s);
                // The one failure allowed: adding where another's entry is.
                for e in &errs {
                    prop_assert!(e.starts_with("adding 203.0.113.1/32"), "{}", e);
                }
                prop_assert_eq!(dp.others(), others.clone(), "others' entries changed after {:?}", op);
                let ours_want: BTreeSet<IpNet> = want.difference(&others).copied().collect();
                prop_assert_eq!(dp.ours(), ours_want, "after {:?}", op);
                let mut announced: BTreeSet<IpNet> = t.keys().copied().collect();
                prop_assert!(announced.remove(&"198.51.100.1/32".parse().unwrap()));
                prop_assert_eq!(&announced, &want);
                for (p, w) in &intent.routes {
                    prop_assert!(!w.owners.is_empty(), "{} has no owner", p);
                }
            }
            // Delete everything: nothing of vipd's remains; others' entries do.
            s.services.clear();
            s.slices.clear();
            let intent = compute(&s, &kcfg());
            block_on(apply(&mut dp, &dataplane_want(&intent)));
            prop_assert!(dp.ours().is_empty());
            prop_assert_eq!(dp.others(), others);
            prop_assert_eq!(table(&statics, &intent).len(), 1);
        }
    }

    /// One static announcement, 203.0.113.1/32 with MED 5.
    fn static_med5() -> Table {
        [(
            "203.0.113.1/32".parse::<IpNet>().unwrap(),
            Arc::new(RouteAttrs {
                med: Some(5),
                ..Default::default()
            }),
        )]
        .into_iter()
        .collect()
    }

    /// The first fill inserts every other route first (for full nodes):
    /// every route is there once, with its own attributes, odd counts and
    /// empty included.
    #[test]
    fn a_first_fill_holds_every_route_with_its_attributes() {
        for n in [0u32, 1, 2, 3, 17, 1001] {
            let all: BTreeMap<IpNet, Want> = (0..n)
                .map(|i| {
                    let p = IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                        0x6440_0000 + i,
                    )));
                    (p, want_med(i % 7))
                })
                .collect();
            let mut k = KubeRoutes::default();
            k.set_all(&all);
            let got: Vec<(IpNet, Option<u32>)> =
                k.routes.iter().map(|(p, a)| (*p, a.med)).collect();
            let want: Vec<(IpNet, Option<u32>)> =
                all.iter().map(|(p, w)| (*p, w.attrs.med)).collect();
            assert_eq!(got, want, "{n} routes");
            let t = table(
                &Arc::new(Table::new()),
                &Intent {
                    routes: all,
                    ..Default::default()
                },
            );
            assert_eq!(t.len(), n as usize);
        }
    }

    #[test]
    fn patching_by_delta_equals_rebuilding() {
        let statics = Arc::new(static_med5());
        let mut k = KubeRoutes::default();
        let w = |c: u32| {
            Some(Want {
                owners: Default::default(),
                attrs: Arc::new(RouteAttrs {
                    communities: vec![c],
                    ..Default::default()
                }),
                agg: Default::default(),
            })
        };
        let all: BTreeMap<IpNet, Want> = [("203.0.113.1/32", 1), ("203.0.113.2/32", 2)]
            .iter()
            .map(|(p, c)| (p.parse().unwrap(), w(*c).unwrap()))
            .collect();
        let changed = k.set_all(&all);
        let mut t = statics.clone();
        patch(&mut t, &statics, &k, &changed);
        assert_eq!(t, merged(&statics, &k));
        assert_eq!(statics.len(), 1, "the shared static table was changed");
        let delta: Delta = vec![
            ("203.0.113.2/32".parse().unwrap(), None),
            ("203.0.113.3/32".parse().unwrap(), w(3)),
            ("203.0.113.1/32".parse().unwrap(), None),
        ];
        let changed = k.apply(&delta);
        patch(&mut t, &statics, &k, &changed);
        assert_eq!(t, merged(&statics, &k));
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[&"203.0.113.1/32".parse::<IpNet>().unwrap()].med,
            Some(5),
            "a static route outlives the VIP"
        );
    }

    #[test]
    fn static_announcements_win_and_attributes_are_shared() {
        let statics = Arc::new(static_med5());
        let mut intent = Intent::default();
        for ip in ["203.0.113.1/32", "203.0.113.2/32", "203.0.113.3/32"] {
            intent
                .routes
                .insert(ip.parse().unwrap(), Default::default());
        }
        let t = table(&statics, &intent);
        assert_eq!(t.len(), 3);
        assert_eq!(t[&"203.0.113.1/32".parse::<IpNet>().unwrap()].med, Some(5));
        let a = &t[&"203.0.113.2/32".parse::<IpNet>().unwrap()];
        let b = &t[&"203.0.113.3/32".parse::<IpNet>().unwrap()];
        assert!(Arc::ptr_eq(a, b));
    }

    fn attrs(med: u32) -> Arc<RouteAttrs> {
        Arc::new(RouteAttrs {
            med: Some(med),
            ..Default::default()
        })
    }

    fn want_med(med: u32) -> Want {
        Want {
            owners: smallvec::smallvec!["uid".into()],
            attrs: attrs(med),
            agg: Default::default(),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// An aggregate goes to the routers, never to the dataplane; its
    /// members go to the dataplane, never alone to the routers.
    #[test]
    fn an_aggregate_is_announced_and_its_members_stay_on_the_dataplane() {
        let agg = net("203.0.113.0/30");
        let with = |a: Agg| Want {
            agg: a,
            ..want_med(1)
        };
        let d: Delta = vec![
            (net("203.0.113.1/32"), Some(with(Agg::Member(30)))),
            (net("203.0.113.2/32"), Some(with(Agg::Own))),
            (agg, Some(with(Agg::Covering))),
        ];
        let mut k = KubeRoutes::default();
        let mut full = KubeRoutes::default();
        k.apply(&d);
        full.set_all(&d.iter().map(|(p, w)| (*p, w.clone().unwrap())).collect());
        for k in [&k, &full] {
            assert_eq!(k.keys(), [net("203.0.113.2/32"), agg].into());
            let vips = [net("203.0.113.1/32"), net("203.0.113.2/32")];
            assert_eq!(k.vips(), vips.into());
            assert!(vips.iter().all(|p| k.contains(p)));
            assert!(!k.contains(&agg));
        }
        // The aggregate goes: its member is announced alone again.
        k.apply(&vec![
            (net("203.0.113.1/32"), Some(with(Agg::Own))),
            (agg, None),
        ]);
        assert_eq!(
            k.keys(),
            [net("203.0.113.1/32"), net("203.0.113.2/32")].into()
        );
        assert_eq!(k.vips(), k.keys());
        k.apply(&vec![(net("203.0.113.1/32"), None)]);
        assert!(!k.contains(&net("203.0.113.1/32")));
    }

    #[test]
    fn a_relist_that_confirms_every_route_leaves_the_table_as_it_was() {
        let mut t = Tables::new(Arc::new(Table::new()), None, true);
        let plain = Want {
            owners: smallvec::smallvec!["uid".into()],
            attrs: crate::k8s::intent::plain(),
            agg: Default::default(),
        };
        let all: BTreeMap<IpNet, Want> = [
            (net("203.0.113.1/32"), want_med(3)),
            (net("203.0.113.2/32"), plain.clone()),
        ]
        .into();
        t.kube_full(&all);
        let before = t.table().clone();
        let again: Delta = all.iter().map(|(p, w)| (*p, Some(w.clone()))).collect();
        t.kube_delta(&again);
        assert!(
            Arc::ptr_eq(t.table(), &before),
            "nothing copied, no new table"
        );
        t.kube_delta(&vec![(net("203.0.113.1/32"), Some(want_med(4)))]);
        assert!(!Arc::ptr_eq(t.table(), &before));
        assert_eq!(t.table().get(&net("203.0.113.1/32")).unwrap().med, Some(4));
        assert_eq!(
            before.get(&net("203.0.113.1/32")).unwrap().med,
            Some(3),
            "the speaker's copy unchanged"
        );
    }

    #[test]
    fn tables_keep_statics_and_the_control_plane_over_services() {
        let statics: Table = [(net("198.51.100.1/32"), attrs(1))].into_iter().collect();
        let cp = (net("192.0.2.10/32"), attrs(2));
        let mut t = Tables::new(Arc::new(statics), Some(cp.clone()), true);
        assert!(!t.ready(), "waits for the first complete intent");
        t.kube_delta(&vec![(net("203.0.113.1/32"), Some(want_med(3)))]);
        assert!(!t.ready());
        let all = [
            (net("198.51.100.1/32"), want_med(9)),
            (net("192.0.2.10/32"), want_med(9)),
            (net("203.0.113.1/32"), want_med(3)),
        ]
        .into();
        t.kube_full(&all);
        assert!(t.ready());
        let med = |t: &Tables, p: &str| t.table().get(&net(p)).map(|a| a.med.unwrap());
        assert_eq!(med(&t, "198.51.100.1/32"), Some(1), "a static wins");
        assert_eq!(med(&t, "192.0.2.10/32"), Some(2), "the control plane wins");
        assert_eq!(t.control_prefix(), Some(net("192.0.2.10/32")));
        assert_eq!(med(&t, "203.0.113.1/32"), Some(3));
        // The control plane stops serving: the Service's own route shows.
        assert!(t.set_control(None));
        assert!(!t.set_control(None), "no change, no new table");
        assert_eq!(med(&t, "192.0.2.10/32"), Some(9));
        // A delta removing a VIP a static also has leaves the static.
        t.kube_delta(&vec![(net("198.51.100.1/32"), None)]);
        assert_eq!(med(&t, "198.51.100.1/32"), Some(1));
        // New statics keep the Kubernetes VIPs.
        t.set_statics(Arc::new(Table::new()));
        assert_eq!(med(&t, "198.51.100.1/32"), None);
        assert_eq!(med(&t, "203.0.113.1/32"), Some(3));
        assert_eq!(t.table().len(), 2);
        assert_eq!(t.control_prefix(), None);
    }

    #[test]
    fn without_kubernetes_tables_are_ready_at_once() {
        let t = Tables::new(Arc::new(Table::new()), None, false);
        assert!(t.ready());
    }

    proptest! {
        #[test]
        fn patched_tables_equal_tables_built_from_scratch(
            ops in proptest::collection::vec((0..6u8, 0..4u8, proptest::option::of(0..3u32)), 1..30)
        ) {
            let statics: Table = [(net("203.0.113.0/32"), attrs(100))].into_iter().collect();
            let mut t = Tables::new(Arc::new(statics.clone()), None, true);
            let mut cp = None;
            for (kind, i, med) in ops {
                let p = net(&format!("203.0.113.{i}/32"));
                match kind {
                    0 | 1 => { t.kube_delta(&vec![(p, med.map(want_med))]); }
                    2 => {
                        let all = med.map(|m| [(p, want_med(m))].into()).unwrap_or_default();
                        t.kube_full(&all);
                    }
                    3 => { cp = med.map(|m| (p, attrs(m))); t.set_control(cp.clone()); }
                    _ => { t.set_statics(Arc::new(statics.clone())); }
                }
                let fresh = Tables::new(Arc::new(statics.clone()), cp.clone(), false);
                let mut expect = (**fresh.table()).clone();
                for (p, a) in &t.kube().routes {
                    expect.entry(*p).or_insert_with(|| a.clone());
                }
                prop_assert_eq!(&**t.table(), &expect);
            }
        }
    }
}
