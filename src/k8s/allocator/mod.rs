//! The allocator's I/O: every vipd campaigns for the Lease; the one that
//! holds it watches the Services, runs [`crate::ipam::allocate`] over them
//! and writes the result through the status subresource, with each
//! Service's resourceVersion (a conflict re-reads; nothing is overwritten).
//!
//! The only state is the Services' status: a new leader lists them and
//! continues. The one thing kept between passes is what this leader wrote
//! and has not yet seen come back on the watch, so that a pass running
//! before the echo arrives never hands the same address out again.

pub mod election;

use std::collections::{BTreeMap, BTreeSet};

use crate::k8s::model::Key;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::election::{now_ms, Election, Outcome, Term};
use crate::config::{IpamConfig, KubeConfig};
use crate::ipam::service::{from_service, Class};
use crate::ipam::{self, EventKind, FamilyPolicy, Pool, PoolUsage, Svc};
use crate::k8s::events::Once;
use crate::k8s::store::{Change, Store};

/// What `vipd status` and the metrics show of the allocator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IpamStatus {
    /// This node holds the Lease and may allocate.
    pub leader: bool,
    /// Who holds the Lease, as last read.
    pub holder: Option<String>,
    /// Filled on the leader only.
    pub pools: Vec<PoolUsage>,
    /// Services without every address they ask for, and why.
    pub pending: Vec<(String, String)>,
    /// Status writes this node made.
    pub writes: u64,
    pub last_error: Option<String>,
}

/// The running allocator, as the daemon holds it.
pub struct Handle {
    pools: watch::Sender<Vec<Pool>>,
    stop: watch::Sender<bool>,
    task: crate::task::Owned<()>,
    pub status: Arc<Mutex<IpamStatus>>,
}

impl Handle {
    /// New pools (a reload): the next pass uses them. Nothing already
    /// assigned moves.
    pub fn set_pools(&self, pools: Vec<Pool>) {
        self.pools.send_replace(pools);
    }

    /// Stops allocating and releases the Lease, so that another node takes
    /// over at once; bounded, so a dead API server cannot hold up a stop.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task.join()).await;
    }
}

/// Status writes under way at once: enough to keep the API server busy
/// through a burst of Services, few enough not to flood it.
const WRITES_IN_FLIGHT: usize = 48;

struct Ctx {
    client: Client,
    events: super::events::Recorder,
    election: Election,
    class: (Option<String>, bool),
    status: Arc<Mutex<IpamStatus>>,
}

pub fn spawn(
    cfg: &IpamConfig,
    k: &KubeConfig,
    client: Client,
    events: super::events::Recorder,
) -> Handle {
    let (pools, pools_rx) = watch::channel(cfg.pools.clone());
    let (stop, stop_rx) = watch::channel(false);
    let status = Arc::new(Mutex::new(IpamStatus::default()));
    let ctx = Ctx {
        election: Election {
            api: Api::namespaced(client.clone(), &cfg.lease_namespace),
            name: cfg.lease_name.clone(),
            me: k.node_name.clone(),
            duration: cfg.lease_duration.as_millis() as i64,
        },
        client,
        events,
        class: (k.load_balancer_class.clone(), k.include_unclassed),
        status: status.clone(),
    };
    let task = crate::task::Owned::spawn(run(ctx, pools_rx, stop_rx));
    Handle {
        pools,
        stop,
        task,
        status,
    }
}

async fn run(ctx: Ctx, mut pools: watch::Receiver<Vec<Pool>>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(won_at) = campaign(&ctx, &mut stop).await else {
            return;
        };
        info!(lease = %ctx.election.name, "holding the allocator lease: this node assigns LoadBalancer addresses");
        let term = Arc::new(Term {
            renewed_ok: AtomicI64::new(won_at),
            lost: AtomicBool::new(false),
        });
        let renewal = {
            let (e, t, s) = (ctx.election.clone(), term.clone(), stop.clone());
            crate::task::Owned::spawn(async move { e.renew(t, s).await })
        };
        set(&ctx, |s| s.leader = true);
        let stopped = Leader::new(&ctx, &term).lead(&mut pools, &mut stop).await;
        drop(renewal);
        set(&ctx, |s| {
            s.leader = false;
            s.pools.clear();
            s.pending.clear();
        });
        if stopped {
            ctx.election.release().await;
            return;
        }
    }
}

fn set(ctx: &Ctx, f: impl FnOnce(&mut IpamStatus)) {
    f(&mut ctx.status.lock().unwrap())
}

/// Until this node holds the Lease (the time its winning write was sent),
/// or `None` when told to stop.
async fn campaign(ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> Option<i64> {
    let every = ipam::lease::renew_every(ctx.election.duration);
    loop {
        if *stop.borrow() {
            return None;
        }
        let sent = now_ms();
        let mut holder = None;
        let r = ctx.election.step(&mut holder).await;
        set(ctx, |s| s.holder = holder.clone());
        let wait = match r {
            Ok(Outcome::Held(_)) => {
                set(ctx, |s| {
                    s.holder = Some(ctx.election.me.clone());
                    s.last_error = None;
                });
                return Some(sent);
            }
            // Poll while someone else holds it: a release shows at once.
            Ok(Outcome::Wait(at)) => (at - now_ms()).clamp(0, every),
            Err(e) => {
                warn!("{e}");
                set(ctx, |s| s.last_error = Some(e));
                every
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait.max(50) as u64)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One Service as the leader knows it.
#[derive(Clone, PartialEq)]
struct Entry {
    /// The same text as `svc`'s.
    uid: std::sync::Arc<str>,
    rv: Box<str>,
    /// What the allocator needs; without its bad annotation, frozen.
    svc: Option<Svc>,
    /// Why an annotation cannot be read: the status is left alone.
    bad: Option<Box<str>>,
}

/// A status this leader wrote and has not yet seen on the watch.
struct Written {
    uid: String,
    rv: String,
    addrs: Vec<IpAddr>,
    at: Instant,
}

impl Written {
    /// Whether the watch's view of the Service ends this record: the echo
    /// of the write itself, or a Service by that name that is another one
    /// (or gone).
    fn seen_in(&self, e: Option<&Entry>) -> bool {
        e.is_none_or(|e| *e.uid != *self.uid || *e.rv == *self.rv)
    }
}

struct Leader<'a> {
    ctx: &'a Ctx,
    term: &'a Term,
    api: Api<Service>,
    live: BTreeMap<Key, Entry>,
    store: Store<Entry>,
    written: BTreeMap<Key, Written>,
    /// Failures already told in an Event, until they go away.
    reported: Once<(String, String)>,
    /// No pass yet in this term: the first is always logged, with its
    /// time (a new leader's pass over every Service).
    first: bool,
}

/// What one pass decided to write.
struct Plan {
    writes: Vec<(String, String, Vec<IpAddr>)>,
    outcome: ipam::Outcome,
}

impl<'a> Leader<'a> {
    fn new(ctx: &'a Ctx, term: &'a Term) -> Self {
        Leader {
            ctx,
            term,
            api: Api::all(ctx.client.clone()),
            live: BTreeMap::new(),
            store: Store::default(),
            written: BTreeMap::new(),
            reported: Once::default(),
            first: true,
        }
    }

    /// Leads until the term is lost (false) or vipd stops (true).
    async fn lead(
        mut self,
        pools: &mut watch::Receiver<Vec<Pool>>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        // Through a channel from a task of its own: what waited while a
        // pass was writing is then drained at once into the next pass (the
        // watcher stream itself yields one event per poll).
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let (api, config) = (self.api.clone(), watcher::Config::default());
        // Owned: if this future is dropped midway, the forwarder goes too.
        let _forward = crate::k8s::store::forward(api, config, tx, |e| e);
        self.run(&mut rx, pools, stop).await
    }

    async fn run(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Result<watcher::Event<Service>, watcher::Error>>,
        pools: &mut watch::Receiver<Vec<Pool>>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut dirty = true;
        loop {
            tokio::select! {
                Some(ev) = rx.recv() => {
                    dirty |= self.apply(ev);
                    while let Ok(ev) = rx.try_recv() {
                        dirty |= self.apply(ev);
                    }
                }
                _ = pools.changed() => dirty = true,
                _ = stop.changed() => return true,
                _ = tick.tick() => {}
            }
            if self.term.lost.load(Ordering::SeqCst) {
                return false;
            }
            if !(dirty && self.store.synced() && self.may_allocate()) {
                continue;
            }
            let pools_now = pools.borrow().clone();
            dirty = self.pass(&pools_now).await;
        }
    }

    fn may_allocate(&self) -> bool {
        self.term.may_allocate(self.ctx.election.duration)
    }

    /// One watcher event; true if the Services changed.
    fn apply(&mut self, ev: Result<watcher::Event<Service>, watcher::Error>) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                let msg = format!("allocator's Service watch: {e}");
                warn!("{msg}");
                set(self.ctx, |s| s.last_error = Some(msg));
                return false;
            }
        };
        let ctx = self.ctx;
        match self
            .store
            .apply(&mut self.live, ev, |s, k| Ok(entry(ctx, s, k)))
        {
            Change::Nothing => false,
            Change::All => {
                let live = &self.live;
                self.written.retain(|k, w| !w.seen_in(live.get(k)));
                true
            }
            Change::One(k, _) => {
                // Forgotten once the watch shows it, or the Service is gone.
                let now = self.live.get(&k);
                if now.is_none() || self.written.get(&k).is_some_and(|w| w.seen_in(now)) {
                    self.written.remove(&k);
                }
                true
            }
        }
    }

    /// Allocates over every Service and writes what changed; true if
    /// something must be tried again (a conflict, an error, no longer
    /// allowed to write).
    async fn pass(&mut self, pools: &[Pool]) -> bool {
        let t = Instant::now();
        // An echo lost to a watch reset: after a minute the watch's own
        // view is the truth again.
        self.written
            .retain(|_, w| w.at.elapsed() < Duration::from_secs(60));
        let plan = self.plan(pools);
        let n = plan.writes.len();
        let results = self.write_all(plan.writes).await;
        let mut retry = false;
        let mut done = BTreeSet::new();
        for (k, r) in results {
            match r {
                Ok(w) => {
                    done.insert(k.clone());
                    self.written.insert(k.into(), w);
                }
                Err(()) => retry = true,
            }
        }
        self.tell(&plan.outcome, &done);
        let pending = ipam::pending(&plan.outcome);
        let pools = ipam::usage(pools, &plan.outcome.status);
        let writes = done.len() as u64;
        set(self.ctx, |s| {
            s.pools = pools;
            s.pending = pending;
            s.writes += writes;
        });
        let first = std::mem::replace(&mut self.first, false);
        if n > 0 || first {
            info!(
                services = self.live.len(),
                written = done.len(),
                wanted = n,
                ms = t.elapsed().as_millis() as u64,
                first,
                "allocation pass"
            );
        }
        if n >= 1000 || first {
            // A term's list and first pass, or thousands of statuses
            // written: hand back what they freed.
            crate::heap::trim();
        }
        retry
    }

    /// The pure part of a pass: the Services as known (with what this
    /// leader wrote), allocated, and the statuses that differ.
    fn plan(&self, pools: &[Pool]) -> Plan {
        // Borrowed, not cloned: a copy of every Service for each pass
        // was the new leader's peak (and, freed, its resident memory).
        // Only those with a write not yet seen are copied, with it.
        let unseen: Vec<Svc> = (self.written.iter())
            .filter_map(|(k, w)| {
                let mut s = self.live.get(k)?.svc.clone()?;
                s.current = w.addrs.iter().copied().collect();
                Some(s)
            })
            .collect();
        let svcs: Vec<&Svc> = (self.live.iter())
            .filter(|(k, _)| !self.written.contains_key(*k))
            .filter_map(|(_, e)| e.svc.as_ref())
            .chain(&unseen)
            .collect();
        let outcome = ipam::allocate(pools, &svcs);
        let writes = svcs
            .iter()
            .filter(|s| self.live.get(&s.key).is_some_and(|e| e.bad.is_none()))
            .filter_map(|s| {
                let want = outcome.status.get(&*s.key)?;
                let same = want.iter().collect::<BTreeSet<_>>() == s.current.iter().collect();
                let rv = self.live[&s.key].rv.to_string();
                (!same).then(|| (s.key.to_string(), rv, want.clone()))
            })
            .collect();
        Plan { writes, outcome }
    }

    /// The status writes, [`WRITES_IN_FLIGHT`] at a time, each only while this node may
    /// still allocate. Per Service: what was written, or nothing (a
    /// conflict, an error, no longer allowed: decided again next pass).
    async fn write_all(
        &self,
        writes: Vec<(String, String, Vec<IpAddr>)>,
    ) -> Vec<(String, Result<Written, ()>)> {
        futures_util::stream::iter(writes)
            .map(|(k, rv, addrs)| async move {
                let r = self.write(&k, rv, addrs).await;
                (k, r)
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await
    }

    async fn write(&self, key: &str, rv: String, addrs: Vec<IpAddr>) -> Result<Written, ()> {
        if !self.may_allocate() {
            return Err(());
        }
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), ns);
        let patch = Service {
            metadata: ObjectMeta {
                resource_version: Some(rv),
                ..Default::default()
            },
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        addrs
                            .iter()
                            .map(|a| LoadBalancerIngress {
                                ip: Some(a.to_string()),
                                ip_mode: Some("VIP".into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let limit =
            Duration::from_millis(ipam::lease::renew_every(self.ctx.election.duration) as u64);
        let (pp, patch) = (PatchParams::default(), Patch::Merge(&patch));
        debug!(service = %key, addresses = ?addrs, "writing the status");
        let call = api.patch_status(name, &pp, &patch);
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(s)) => {
                debug!(service = %key, addresses = ?addrs, "status written");
                Ok(Written {
                    uid: s.uid().unwrap_or_default(),
                    rv: s.resource_version().unwrap_or_default(),
                    addrs,
                    at: Instant::now(),
                })
            }
            // The watch brings the newer version; the next pass decides
            // again from it (no GET: vipd needs no read access beyond its
            // list and watch).
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                debug!(service = %key, "status write conflict: deciding again from the watch");
                Err(())
            }
            Ok(Err(e)) => {
                let msg = format!("writing the status of {key}: {e}");
                warn!("{msg}");
                set(self.ctx, |s| s.last_error = Some(msg));
                Err(())
            }
            Err(_) => {
                warn!(service = %key, "writing the status: no answer in {limit:?}");
                Err(())
            }
        }
    }

    /// Events: an assignment or a repair once written; a failure or an
    /// address outside the pools once, until it goes away.
    fn tell(&mut self, out: &ipam::Outcome, done: &BTreeSet<String>) {
        let once = |e: &ipam::Event| {
            matches!(
                e.kind,
                EventKind::AllocationFailed | EventKind::AddressOutsidePools
            )
        };
        let standing = out
            .events
            .iter()
            .filter(|e| once(e))
            .map(|e| ((e.service.clone(), e.message.clone()), e.clone()));
        let unreadable = self.live.iter().filter_map(|(k, entry)| {
            let why = entry.bad.as_ref()?;
            let e = ipam::Event {
                service: k.to_string(),
                kind: EventKind::AllocationFailed,
                message: format!("{why}; the Service is left as it is"),
            };
            Some(((k.to_string(), why.to_string()), e))
        });
        let mut posts: Vec<ipam::Event> = out
            .events
            .iter()
            .filter(|e| !once(e) && done.contains(&e.service))
            .cloned()
            .collect();
        posts.extend(self.reported.fresh(standing.chain(unreadable)));
        let uids: BTreeMap<String, String> = posts
            .iter()
            .filter_map(|e| {
                Some((
                    e.service.clone(),
                    self.live.get(e.service.as_str())?.uid.to_string(),
                ))
            })
            .collect();
        for e in posts {
            let uid = uids.get(&e.service).cloned().unwrap_or_default();
            let reason = format!("{:?}", e.kind);
            let warning = e.kind != EventKind::AddressAssigned;
            let r = super::events::Record::service(&e.service, &uid, &reason, e.message, warning);
            self.ctx.events.post(r);
        }
    }
}

fn entry(ctx: &Ctx, s: &Service, key: &Key) -> Option<Entry> {
    let class = Class {
        name: ctx.class.0.as_deref(),
        include_unclassed: ctx.class.1,
    };
    let (mut svc, bad) = match from_service(s, class)? {
        Ok(svc) => (Some(svc), None),
        Err(why) => (frozen(s, class), Some(why)),
    };
    let uid = match &mut svc {
        Some(svc) => {
            // One copy of the key: the map's.
            svc.key = key.clone();
            svc.uid.clone()
        }
        None => s.uid().unwrap_or_default().into(),
    };
    Some(Entry {
        uid,
        rv: s.resource_version().unwrap_or_default().into(),
        svc,
        bad: bad.map(Into::into),
    })
}

/// A Service whose annotations cannot be read keeps what it holds, and
/// nobody else gets it; it gets nothing new (its status is not written).
fn frozen(s: &Service, class: Class) -> Option<Svc> {
    let mut s = s.clone();
    if let Some(spec) = s.spec.as_mut() {
        spec.load_balancer_ip = None;
    }
    s.annotations_mut().remove(ipam::service::LOAD_BALANCER_IPS);
    let mut svc = from_service(&s, class)?.ok()?;
    svc.families = svc.current.iter().map(ipam::family).collect();
    svc.policy = if svc.families.len() > 1 {
        FamilyPolicy::PreferDualStack
    } else {
        FamilyPolicy::SingleStack
    };
    svc.requested = svc.current.to_vec();
    (!svc.current.is_empty()).then_some(svc)
}
