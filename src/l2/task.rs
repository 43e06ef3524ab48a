//! The L2 task: owns [`State`], watches the L2 Leases, writes this node's
//! own (one write in flight, every heartbeat or when the record changes),
//! runs a responder per interface and hands it the addresses to answer
//! for. A thin loop: every decision is `state`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::net::{self, Link};
use super::partners::{Change, Partners};
use super::record::{self, Record};
use super::responder::{Command, Conflict, Counters, Gate, Responder};
use super::state::{State, VipLine};
use crate::config::L2Config;
use crate::k8s::intent::L2Want;
use crate::k8s::model::Key;

/// What `vipd status`, `explain` and the metrics read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct L2Status {
    pub vips: Vec<VipLine>,
    /// Interfaces that cannot be answered on, and why.
    pub problems: Vec<String>,
    pub paused: bool,
    /// Whether this node's Lease was written within two heartbeats.
    pub renewing: bool,
    pub claims_written: u64,
    pub answered: u64,
    pub announced: u64,
    pub conflicts: u64,
    /// Fast failover: each BFD partner's session state, and the owners
    /// taken for dead by it.
    pub partners: BTreeMap<String, String>,
    pub fast_failovers: u64,
}

impl L2Status {
    pub fn owned(&self) -> usize {
        self.vips.iter().filter(|v| v.here).count()
    }
}

/// The running L2 task, owned by the daemon.
pub struct Handle {
    pub wants: watch::Sender<Arc<BTreeMap<Key, L2Want>>>,
    pub draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    pub status: Arc<Mutex<L2Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Hands every VIP over to its successor (within the lease duration
    /// and a heartbeat), then removes this node's claims.
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
        }
    }
}

pub fn spawn(
    cfg: &L2Config,
    node: &str,
    client: Client,
    events: Option<crate::k8s::events::Recorder>,
    bfd: Option<crate::bfd::io::Bfd>,
) -> Handle {
    let (wants, wants_rx) = watch::channel(Arc::default());
    let (draining, drain_rx) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let status = Arc::new(Mutex::new(L2Status::default()));
    let io = Io {
        api: Api::namespaced(client, &cfg.lease_namespace),
        cfg: cfg.clone(),
        me: node.to_string(),
        status: status.clone(),
        events,
        bfd,
    };
    let task = tokio::spawn(io.run(wants_rx, drain_rx, stop_rx));
    Handle {
        wants,
        draining,
        stop,
        status,
        task,
    }
}

/// One interface's responder, as the loop holds it.
struct Port {
    link: Link,
    set: watch::Sender<Arc<BTreeSet<IpAddr>>>,
    commands: mpsc::Sender<Command>,
    _task: crate::task::Owned<()>,
}

struct Io {
    api: Api<Lease>,
    cfg: L2Config,
    me: String,
    status: Arc<Mutex<L2Status>>,
    events: Option<crate::k8s::events::Recorder>,
    bfd: Option<crate::bfd::io::Bfd>,
}

type Written = (Record, Instant, Result<String, String>);
type LeaseEvent = Result<watcher::Event<Lease>, watcher::Error>;

const TICK: Duration = Duration::from_millis(100);
/// How often the interfaces' addresses and the kernel's settings are read
/// again (they decide which VIPs are on-link, and which are refused).
const FACTS_EVERY: Duration = Duration::from_secs(2);
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The loop's state besides [`State`]: the I/O handles it drives.
struct Run {
    io: Io,
    name: String,
    st: State,
    gate: Arc<Gate>,
    counters: Arc<Counters>,
    ports: Vec<Port>,
    problems: Vec<String>,
    events_tx: mpsc::Sender<LeaseEvent>,
    lease_watch: Option<crate::task::Owned<()>>,
    /// The nodes seen during a list, until it ends.
    listing: Option<BTreeSet<String>>,
    writer: Option<tokio::task::JoinHandle<Written>>,
    /// This node's Lease's resourceVersion, as last written.
    version: Option<String>,
    onlink: BTreeMap<IpAddr, usize>,
    facts_at: Instant,
    reported: BTreeSet<(IpAddr, String)>,
    stop_at: Option<Instant>,
    /// When the Lease watch last said anything (this node's own renewals
    /// included: a live watch speaks every heartbeat).
    last_event: Instant,
    reported_at: Instant,
    /// Fast failover's BFD sessions, and this node's addresses on the
    /// segment (partners must be on-link).
    partners: Option<Partners>,
    ifaddrs: Vec<crate::bgp::net::IfAddr>,
}

impl Io {
    async fn run(
        self,
        mut wants: watch::Receiver<Arc<BTreeMap<Key, L2Want>>>,
        mut drain: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(name) = record::lease_name(&self.me) else {
            warn!(node = %self.me, "L2: the node name is too long for a Lease name: not answering");
            return;
        };
        let (conflict_tx, mut conflicts) = mpsc::channel::<Conflict>(64);
        let (events_tx, mut events) = mpsc::channel::<LeaseEvent>(64);
        let (mut r, mut bfd) = Run::new(self, name, conflict_tx, events_tx);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => if r.on_tick() { break },
                Some(ev) = events.recv() => {
                    r.last_event = Instant::now();
                    apply(&mut r.st, ev, &mut r.listing);
                }
                Ok(()) = wants.changed() => {
                    r.st.set_services(wants.borrow_and_update().clone());
                    r.refresh_facts();
                }
                Ok(()) = drain.changed() => r.st.draining = *drain.borrow_and_update(),
                Some(c) = conflicts.recv() => r.on_conflict(c),
                Some(c) = recv_opt(bfd.as_mut()) => r.on_partner(c),
                () = sleep_until(r.st.next_probe()) => {}
                Ok(()) = stop.changed() => r.on_stop(),
                w = async { r.writer.as_mut().expect("guarded").await }, if r.writer.is_some() => r.on_written(w),
            }
            r.after();
        }
        r.finish().await;
    }
}

impl Run {
    fn new(
        io: Io,
        name: String,
        conflicts: mpsc::Sender<Conflict>,
        events_tx: mpsc::Sender<LeaseEvent>,
    ) -> (Run, Option<mpsc::Receiver<Change>>) {
        let gate = Arc::new(Gate::new(io.cfg.pause_limit()));
        let counters = Arc::new(Counters::default());
        let (ports, problems) = io.ports(&gate, &counters, &conflicts);
        let lease_watch = Some(io.watch(events_tx.clone()));
        info!(interfaces = ?io.cfg.interfaces, lease = %name, "L2: answering ARP and NDP for the VIPs this node holds");
        let mut st = State::new(&io.me, &io.cfg);
        st.warm_up(std::time::Instant::now() + io.cfg.lease_duration);
        let (partners, changes) = match (io.bfd.clone(), io.cfg.fast_failover) {
            (Some(b), Some(f)) => {
                let (p, rx) = Partners::new(b, f);
                (Some(p), Some(rx))
            }
            _ => (None, None),
        };
        let r = Run {
            st,
            io,
            name,
            gate,
            counters,
            ports,
            problems,
            events_tx,
            lease_watch,
            listing: None,
            writer: None,
            version: None,
            onlink: BTreeMap::new(),
            facts_at: Instant::now(),
            reported: BTreeSet::new(),
            stop_at: None,
            last_event: Instant::now(),
            reported_at: Instant::now(),
            partners,
            ifaddrs: vec![],
        };
        (r, changes)
    }

    fn on_conflict(&mut self, c: Conflict) {
        if c.probed {
            self.st.probe_answered(c.ip);
        } else if self.st.conflict(c.ip, std::time::Instant::now()) {
            warn!(vip = %c.ip, mac = ?c.mac, "L2: another node answers for a VIP this node holds and this node cannot renew its Lease: yielding it");
        }
    }

    fn on_partner(&mut self, c: Change) {
        if c.up {
            self.st.bfd_up(&c.node);
        } else {
            info!(node = %c.node, "L2: BFD with a VIP owner expired: probing its VIPs");
            self.st.bfd_down(&c.node, std::time::Instant::now());
        }
    }

    /// Fast failover, every tick: the BFD sessions follow the partners.
    fn bfd_partners(&mut self) {
        let Some(p) = self.partners.as_mut() else {
            return;
        };
        let names: Vec<&str> = self.ports.iter().map(|p| p.link.name.as_str()).collect();
        let mut want = self.st.partners();
        want.retain(|_, a| net::onlink(*a, &self.ifaddrs, &names).is_some());
        p.set(&want, self.st.address);
    }

    /// After every event, not at the next tick: the probes due (before
    /// deciding: an owner found dead is replaced in the same pass).
    fn probe(&mut self, now: std::time::Instant) {
        let (send, dead) = self.st.probes(now);
        for ip in send {
            if let Some(p) = self.onlink.get(&ip).and_then(|i| self.ports.get(*i)) {
                let _ = p.commands.try_send(Command::Probe(ip));
            }
        }
        for n in dead {
            warn!(node = %n, "L2: BFD expired and no node answered the probes: taking that node's VIPs now");
        }
    }

    /// After every event: a VIP taken is announced as soon as its claim
    /// is written, not at the next tick.
    fn announce(&mut self, now: std::time::Instant) {
        for ip in self.st.due(now) {
            if let Some(p) = self.onlink.get(&ip).and_then(|i| self.ports.get(*i)) {
                let _ = p.commands.try_send(Command::Announce(ip));
            }
        }
    }

    /// Every 100 ms: a pause noticed, carrier, the interfaces' facts, the
    /// gate kept open, announcements due. True once a stop is complete.
    fn on_tick(&mut self) -> bool {
        let now = Instant::now();
        if self.st.tick(now.into_std()) {
            warn!("L2: this process did not run for longer than a heartbeat: answering nothing until the Leases are read again");
            self.relist();
        }
        let quiet = now.saturating_duration_since(self.last_event);
        if !self.st.cut_off(now.into_std())
            && quiet > self.io.cfg.lease_duration + self.io.cfg.heartbeat
        {
            warn!(secs = quiet.as_secs(), "L2: the Lease watch has said nothing while this node renews: reading the Leases again");
            self.relist();
        }
        if self.st.set_carrier(carrier(&self.ports, &self.problems)) {
            info!("L2: carrier back: reading the Leases again before answering");
            self.relist();
        }
        if now >= self.facts_at {
            self.refresh_facts();
        }
        if !self.st.paused() {
            self.gate.refresh();
        }
        self.bfd_partners();
        self.stop_at
            .is_some_and(|t| now >= t || self.st.handed_over())
    }

    /// The Lease watch started again: a new list, then changes.
    fn relist(&mut self) {
        // The old watch dropped first: its task ends.
        drop(self.lease_watch.take());
        self.lease_watch = Some(self.io.watch(self.events_tx.clone()));
        self.last_event = Instant::now();
    }

    fn refresh_facts(&mut self) {
        self.ifaddrs = crate::bgp::net::interface_addresses();
        (self.onlink, self.st.refused) = facts(&self.st.addresses(), &self.ports, &self.ifaddrs);
        if self.partners.is_some() {
            let names: Vec<&str> = self.ports.iter().map(|p| p.link.name.as_str()).collect();
            self.st.address = net::own_address(&self.ifaddrs, &names, &self.st.addresses());
        }
        self.io
            .report_refusals(&self.st.refused, &mut self.reported);
        self.facts_at = Instant::now() + FACTS_EVERY;
    }

    fn on_stop(&mut self) {
        self.st.stopping = true;
        self.stop_at = Some(Instant::now() + self.io.cfg.lease_duration + self.io.cfg.heartbeat);
    }

    fn on_written(&mut self, w: Result<Written, tokio::task::JoinError>) {
        self.writer = None;
        match w {
            Ok((rec, sent, Ok(v))) => {
                self.version = Some(v);
                self.st.wrote(rec, sent.into_std());
                if self.st.relist_due() {
                    info!("L2: renewing again after failing: reading the Leases again");
                    self.relist();
                }
            }
            Ok((_, _, Err(e))) => {
                warn!(error = %e, "L2: writing this node's Lease");
                self.version = None;
            }
            Err(e) => warn!(error = %e, "L2: the Lease write task failed"),
        }
    }

    /// After every event: decide, hand the responders their addresses,
    /// write the Lease when due, report.
    fn after(&mut self) {
        let now = Instant::now();
        self.probe(now.into_std());
        if let Some(set) = self.st.decide(now.into_std()) {
            publish(&self.ports, &self.onlink, &set);
        }
        self.announce(now.into_std());
        if self.writer.is_none() && self.st.write_due(now.into_std()) {
            let w = self
                .io
                .write(&self.name, self.st.record(), self.version.clone());
            self.writer = Some(tokio::spawn(w));
        }
        // Every tick decides again; the status's lines (a string per VIP)
        // are built when something changed, the counters once a second.
        if self.st.take_changed() || now >= self.reported_at + REPORT_EVERY {
            let p = self.partners.as_ref();
            self.io.report(&self.st, &self.problems, &self.counters, p);
            self.reported_at = now;
        }
    }

    /// Stopped: silent, then the claims removed from the Lease.
    async fn finish(mut self) {
        publish(&self.ports, &self.onlink, &BTreeSet::new());
        if let Some(w) = self.writer.take() {
            if let Ok((_, _, Ok(v))) = w.await {
                self.version = Some(v);
            }
        }
        let last = Record {
            not_ready: Some("stopped".into()),
            ..Record::default()
        };
        if let (_, _, Err(e)) = self.io.write(&self.name, last, self.version).await {
            warn!(error = %e, "L2: removing this node's claims on stop");
        }
    }
}

impl Io {
    fn ports(
        &self,
        gate: &Arc<Gate>,
        counters: &Arc<Counters>,
        conflicts: &mpsc::Sender<Conflict>,
    ) -> (Vec<Port>, Vec<String>) {
        let mut ports = vec![];
        let mut problems = vec![];
        for n in &self.cfg.interfaces {
            match net::link(n) {
                Ok(link) => {
                    let (set, set_rx) = watch::channel(Arc::default());
                    let (commands, commands_rx) = mpsc::channel(256);
                    let r = Responder {
                        link: link.clone(),
                        set: set_rx,
                        commands: commands_rx,
                        conflicts: conflicts.clone(),
                        gate: gate.clone(),
                        counters: counters.clone(),
                    };
                    ports.push(Port {
                        link,
                        set,
                        commands,
                        _task: crate::task::Owned::spawn(r.run()),
                    });
                }
                Err(e) => {
                    warn!(problem = %e, "L2: not answering on this interface");
                    problems.push(e);
                }
            }
        }
        (ports, problems)
    }

    fn watch(&self, tx: mpsc::Sender<LeaseEvent>) -> crate::task::Owned<()> {
        let c = watcher::Config::default().labels(record::LABEL);
        crate::k8s::store::forward(self.api.clone(), c, tx, |e| e)
    }

    /// This node's Lease written with `rec` (created where missing; on a
    /// conflict read again and written once more: this node is its only
    /// writer, so a conflict is an earlier run's version).
    fn write(
        &self,
        name: &str,
        rec: Record,
        version: Option<String>,
    ) -> impl std::future::Future<Output = Written> + Send + 'static {
        let api = self.api.clone();
        let name = name.to_string();
        let me = self.me.clone();
        let secs = self.cfg.lease_duration.as_secs() as i32;
        let limit = self.cfg.lease_duration;
        async move {
            let sent = Instant::now();
            let lease = |rv: Option<String>| Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(record::LABEL.into(), "true".into())])),
                    annotations: Some(record::write(&rec)),
                    resource_version: rv,
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(secs),
                    renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                    ..Default::default()
                }),
            };
            let pp = PostParams::default();
            let go = async {
                let first = match &version {
                    Some(v) => api.replace(&name, &pp, &lease(Some(v.clone()))).await,
                    None => api.create(&pp, &lease(None)).await,
                };
                match first {
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                        match api.get_opt(&name).await? {
                            Some(cur) => {
                                let rv = cur.metadata.resource_version;
                                api.replace(&name, &pp, &lease(rv)).await
                            }
                            None => api.create(&pp, &lease(None)).await,
                        }
                    }
                    r => r,
                }
            };
            let r = match tokio::time::timeout(limit, go).await {
                Ok(Ok(l)) => Ok(l.metadata.resource_version.unwrap_or_default()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
            };
            (rec, sent, r)
        }
    }

    /// A refusal this node makes (the kernel would answer too), as a
    /// Warning on the Node, once each.
    fn report_refusals(
        &self,
        refused: &BTreeMap<IpAddr, String>,
        reported: &mut BTreeSet<(IpAddr, String)>,
    ) {
        reported.retain(|(a, r)| refused.get(a) == Some(r));
        for (a, r) in refused {
            if reported.insert((*a, r.clone())) {
                warn!(vip = %a, reason = %r, "L2: not answering for this VIP on this node");
                if let Some(e) = &self.events {
                    let msg = format!("vipd will not answer ARP/NDP for {a} on this node: {r}");
                    e.post(crate::k8s::events::Record::node(&self.me, "L2Refused", msg));
                }
            }
        }
    }

    fn report(&self, st: &State, problems: &[String], c: &Counters, partners: Option<&Partners>) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now().into_std();
        let s = L2Status {
            vips: st.lines(),
            problems: problems.to_vec(),
            paused: st.paused(),
            renewing: !st.cut_off(now),
            claims_written: st.claims_written,
            answered: c.answered.load(Relaxed),
            announced: c.announced.load(Relaxed),
            conflicts: c.conflicts.load(Relaxed),
            partners: partners.map(Partners::states).unwrap_or_default(),
            fast_failovers: st.fast_failovers,
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

fn apply(st: &mut State, ev: LeaseEvent, listing: &mut Option<BTreeSet<String>>) {
    let now = Instant::now().into_std();
    let node_of = |l: &Lease| {
        l.metadata
            .name
            .as_deref()
            .and_then(|n| n.strip_prefix(record::PREFIX))
            .map(String::from)
    };
    let seen = |st: &mut State, l: &Lease| {
        let node = node_of(l)?;
        let empty = BTreeMap::new();
        let (rec, bad) = record::read(l.metadata.annotations.as_ref().unwrap_or(&empty));
        if bad > 0 {
            warn!(node = %node, skipped = bad, "L2: entries of a Lease that do not parse were skipped");
        }
        let version = l.metadata.resource_version.as_deref().unwrap_or("");
        st.lease(&node, rec, version, now);
        Some(node)
    };
    match ev {
        Ok(watcher::Event::Init) => *listing = Some(BTreeSet::new()),
        Ok(watcher::Event::InitApply(l)) => {
            if let (Some(n), Some(set)) = (seen(st, &l), listing.as_mut()) {
                set.insert(n);
            }
        }
        Ok(watcher::Event::InitDone) => {
            st.relisted(&listing.take().unwrap_or_default(), now);
        }
        Ok(watcher::Event::Apply(l)) => {
            seen(st, &l);
        }
        Ok(watcher::Event::Delete(l)) => {
            if let Some(n) = node_of(&l) {
                st.lease_gone(&n);
            }
        }
        Err(e) => warn!(error = %e, "L2: watching the Leases"),
    }
}

/// Ok while every configured interface is up with carrier.
fn carrier(ports: &[Port], problems: &[String]) -> Result<(), String> {
    if let Some(p) = problems.first() {
        return Err(p.clone());
    }
    match ports.iter().find(|p| !net::carrier(&p.link.name)) {
        Some(p) => Err(format!("carrier down on {}", p.link.name)),
        None => Ok(()),
    }
}

/// Which interface carries each address, and those refused on this node.
fn facts(
    addrs: &BTreeSet<IpAddr>,
    ports: &[Port],
    ifaddrs: &[crate::bgp::net::IfAddr],
) -> (BTreeMap<IpAddr, usize>, BTreeMap<IpAddr, String>) {
    let names: Vec<&str> = ports.iter().map(|p| p.link.name.as_str()).collect();
    let mut onlink = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for a in addrs {
        match net::onlink(*a, ifaddrs, &names) {
            Some(i) => {
                let local = ifaddrs.iter().any(|x| x.addr == *a);
                match net::kernel_conflict(*a, net::kernel(names[i]), local, names[i]) {
                    Some(r) => {
                        refused.insert(*a, r);
                    }
                    None => {
                        onlink.insert(*a, i);
                    }
                }
            }
            None => {
                refused.insert(
                    *a,
                    format!("not on-link on any [l2] interface ({})", names.join(", ")),
                );
            }
        }
    }
    (onlink, refused)
}

/// Each responder gets the addresses it carries.
fn publish(ports: &[Port], onlink: &BTreeMap<IpAddr, usize>, set: &BTreeSet<IpAddr>) {
    for (i, p) in ports.iter().enumerate() {
        let mine: BTreeSet<IpAddr> = set
            .iter()
            .filter(|a| onlink.get(a) == Some(&i))
            .copied()
            .collect();
        p.set.send_if_modified(|cur| {
            let changed = **cur != mine;
            if changed {
                *cur = Arc::new(mine.clone());
            }
            changed
        });
    }
}

async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
