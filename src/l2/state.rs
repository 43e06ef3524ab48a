//! The L2 task's state and decisions, with no I/O: Lease events, the
//! Services, this node's facts and the time go in (`Instant`s passed as
//! arguments); the addresses to answer for, the record to write and the
//! announcements due come out. [`super::task`] is the loop around it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fast::{self, Probing};
use super::owner::{self, Decision, NodeView, Vip};
use super::record::Record;
use crate::config::L2Config;
use crate::k8s::intent::L2Want;
use crate::k8s::model::Key;

/// What a node says while it waits to hear from the others after a start.
pub const STARTING: &str = "starting";

/// Another node's Lease, with when this node last saw it change.
#[derive(Debug, Clone)]
struct Peer {
    record: Record,
    version: String,
    seen: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Schedule {
    since: Instant,
    /// Index into the offsets; past them, refreshes.
    next: usize,
    last: Instant,
}

pub struct State {
    me: String,
    heartbeat: Duration,
    /// Not running for longer than this is a pause (see
    /// `L2Config::pause_limit`).
    pause_limit: Duration,
    lease_duration: Duration,
    offsets: Vec<Duration>,
    refresh: Duration,
    peers: BTreeMap<String, Peer>,
    services: Arc<BTreeMap<Key, L2Want>>,
    vips: Vec<Vip>,
    /// This node's facts.
    carrier: Result<(), String>,
    pub draining: bool,
    pub stopping: bool,
    /// Addresses this node cannot answer for, and why.
    pub refused: BTreeMap<IpAddr, String>,
    /// The record last written successfully, and when.
    written: Option<Record>,
    renewed: Option<Instant>,
    last_tick: Option<Instant>,
    /// Paused past a heartbeat: answer nothing until the Leases are read
    /// again.
    paused: bool,
    /// Given up while unable to renew, on seeing another node answer.
    yielded: BTreeSet<IpAddr>,
    schedules: BTreeMap<IpAddr, Schedule>,
    decisions: Vec<Decision>,
    answering: BTreeSet<IpAddr>,
    /// Counted for the metrics.
    pub claims_written: u64,
    pub fast_failovers: u64,
    /// Starting: not ready until the Leases are listed and one lease
    /// duration has passed, so every live node has been heard from before
    /// this one takes a share (taken early, no failback would ever even
    /// it out).
    warming: Option<Instant>,
    listed: bool,
    /// Renewals came back after failing: the Leases are to be read again
    /// (a watch may have hung through it), and for a lease duration after
    /// that, silence from the other nodes is no sign they are gone.
    need_relist: bool,
    relist_asked: bool,
    recovered: Option<Instant>,
    /// The decisions or the answers changed since [`State::take_changed`].
    changed: bool,
    /// This node's address on the L2 segment, written for BFD partners.
    pub address: Option<IpAddr>,
    /// Owners whose BFD session expired, being probed on the wire.
    probing: Probing,
    /// Owners found dead by BFD and unanswered probes: not alive until
    /// their Lease changes again.
    gone: BTreeSet<String>,
}

/// What `me` answers for, and why, for `vipd status` and `explain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VipLine {
    pub addrs: Vec<IpAddr>,
    pub owner: Option<String>,
    pub epoch: Option<u64>,
    pub here: bool,
    pub rank: Option<usize>,
    pub eligible: usize,
    pub why_not: Option<String>,
}

impl State {
    pub fn new(me: &str, cfg: &L2Config) -> State {
        State {
            me: me.to_string(),
            heartbeat: cfg.heartbeat,
            pause_limit: cfg.pause_limit(),
            lease_duration: cfg.lease_duration,
            offsets: cfg.announce.clone(),
            refresh: cfg.refresh,
            peers: BTreeMap::new(),
            services: Arc::default(),
            vips: vec![],
            carrier: Ok(()),
            draining: false,
            stopping: false,
            refused: BTreeMap::new(),
            written: None,
            renewed: None,
            last_tick: None,
            paused: false,
            yielded: BTreeSet::new(),
            schedules: BTreeMap::new(),
            decisions: vec![],
            answering: BTreeSet::new(),
            claims_written: 0,
            fast_failovers: 0,
            warming: None,
            listed: true,
            need_relist: false,
            relist_asked: false,
            recovered: None,
            changed: false,
            address: None,
            probing: Probing::default(),
            gone: BTreeSet::new(),
        }
    }

    /// Starts warming up, until `until` and a complete list of the Leases.
    pub fn warm_up(&mut self, until: Instant) {
        self.warming = Some(until);
        self.listed = false;
    }

    pub fn set_services(&mut self, s: Arc<BTreeMap<Key, L2Want>>) {
        let list: Vec<(Vec<IpAddr>, bool)> =
            s.values().map(|w| (w.addrs.clone(), w.local)).collect();
        self.vips = owner::groups(&list);
        self.services = s;
    }

    /// Every address of every L2 Service.
    pub fn addresses(&self) -> BTreeSet<IpAddr> {
        self.vips
            .iter()
            .flat_map(|v| v.addrs.iter().copied())
            .collect()
    }

    /// A Lease seen (added, or changed: a new resourceVersion).
    pub fn lease(&mut self, node: &str, record: Record, version: &str, now: Instant) {
        if node == self.me {
            return;
        }
        // The same version again (a re-list) is no renewal.
        if self.peers.get(node).is_some_and(|p| p.version == version) {
            return;
        }
        let peer = Peer {
            record,
            version: version.to_string(),
            seen: now,
        };
        self.peers.insert(node.to_string(), peer);
        // Renewed: alive, whatever BFD said.
        self.gone.remove(node);
        self.probing.cancel(node);
    }

    pub fn lease_gone(&mut self, node: &str) {
        self.peers.remove(node);
    }

    /// A list of the Leases ended: what was not in it is gone, and a pause
    /// is over.
    pub fn relisted(&mut self, listed: &BTreeSet<String>, now: Instant) {
        self.peers.retain(|n, _| listed.contains(n));
        self.paused = false;
        self.listed = true;
        if std::mem::take(&mut self.need_relist) {
            self.recovered = Some(now);
        }
        self.relist_asked = false;
        // A fresh view: the epochs decide again.
        self.yielded.clear();
    }

    /// Once after renewals came back: the caller reads the Leases again.
    pub fn relist_due(&mut self) -> bool {
        let due = self.need_relist && !self.relist_asked;
        self.relist_asked |= due;
        due
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The tick: returns true when the process was not running for longer
    /// than a heartbeat since the last one (the caller reads the Leases
    /// again).
    pub fn tick(&mut self, now: Instant) -> bool {
        let gap = self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) > self.pause_limit);
        self.last_tick = Some(now);
        if gap {
            self.paused = true;
        }
        if self.listed && self.warming.is_some_and(|t| now >= t) {
            self.warming = None;
        }
        gap
    }

    fn ready(&self) -> Option<String> {
        match (&self.carrier, self.stopping, self.draining) {
            (Err(e), _, _) => Some(e.clone()),
            (_, true, _) => Some("stopping".into()),
            (_, _, true) => Some("draining".into()),
            _ if self.warming.is_some() => Some(STARTING.into()),
            _ => None,
        }
    }

    /// Carrier on the L2 interfaces, or why not. Back after a loss, this
    /// node saw nothing of the segment or (often) the API meanwhile: it
    /// answers nothing until it has read the Leases again, as after a
    /// pause. Returns true when they are to be read again.
    pub fn set_carrier(&mut self, c: Result<(), String>) -> bool {
        let back = self.carrier.is_err() && c.is_ok();
        self.carrier = c;
        if back {
            self.paused = true;
        }
        back
    }

    /// Handing over: answering until a successor holds it.
    fn handing_over(&self) -> bool {
        self.carrier.is_ok() && (self.stopping || self.draining)
    }

    fn local(&self) -> BTreeSet<IpAddr> {
        self.services
            .values()
            .filter(|w| w.local && w.here)
            .flat_map(|w| w.addrs.iter().copied())
            .collect()
    }

    /// Whether this node's own view of the API is in doubt: it cannot
    /// renew, or has just come back. Then the other nodes' silence says
    /// nothing about them, and none is judged gone: an API outage moves
    /// no VIP, and a node cut off alone keeps what it has.
    fn in_doubt(&self, now: Instant) -> bool {
        self.cut_off(now)
            || self.need_relist
            || self
                .recovered
                .is_some_and(|t| now < t + self.lease_duration)
    }

    fn views(&self, now: Instant) -> Vec<NodeView> {
        let doubt = self.in_doubt(now);
        let mut v: Vec<NodeView> = self
            .peers
            .iter()
            .map(|(name, p)| NodeView {
                name: name.clone(),
                alive: !self.gone.contains(name)
                    && (doubt || now.saturating_duration_since(p.seen) <= self.lease_duration),
                ready: p.record.not_ready.is_none(),
                starting: p.record.not_ready.as_deref() == Some(STARTING),
                local: p.record.local.clone(),
                claims: p.record.claims.clone(),
                refused: p.record.refused.clone(),
            })
            .collect();
        v.push(NodeView {
            name: self.me.clone(),
            alive: true,
            ready: self.ready().is_none(),
            starting: self.warming.is_some(),
            local: self.local(),
            claims: self
                .written
                .as_ref()
                .map(|r| r.claims.clone())
                .unwrap_or_default(),
            refused: self.refused.keys().copied().collect(),
        });
        v
    }

    /// Decides again; returns the addresses to answer for when they changed.
    pub fn decide(&mut self, now: Instant) -> Option<BTreeSet<IpAddr>> {
        let decisions = owner::decide(&self.me, &self.views(now), &self.vips);
        self.changed |= decisions != self.decisions;
        self.decisions = decisions;
        let mut set = BTreeSet::new();
        if !self.paused {
            for d in &self.decisions {
                let handover = self.handing_over() && d.held_by(&self.me);
                let mine = d.answers(&self.me) || handover;
                if mine && !d.vip.addrs.iter().any(|a| self.yielded.contains(a)) {
                    set.extend(d.vip.addrs.iter().copied());
                }
            }
        }
        // Newly taken: announce at the offsets from now.
        for a in set.difference(&self.answering) {
            self.schedules.insert(
                *a,
                Schedule {
                    since: now,
                    next: 0,
                    last: now,
                },
            );
        }
        self.schedules.retain(|a, _| set.contains(a));
        if set == self.answering {
            return None;
        }
        self.changed = true;
        self.answering = set.clone();
        Some(set)
    }

    /// Whether the decisions or the answers changed since last asked: what
    /// `vipd status` shows is built again only then (and once a second).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The announcements due at `now`: each address at its offsets after it
    /// was taken, then every refresh.
    pub fn due(&mut self, now: Instant) -> Vec<IpAddr> {
        let mut out = vec![];
        for (a, s) in self.schedules.iter_mut() {
            let at = match self.offsets.get(s.next) {
                Some(o) => s.since + *o,
                None => s.last + self.refresh,
            };
            if now >= at {
                out.push(*a);
                s.next += 1;
                s.last = now;
            }
        }
        out
    }

    /// The record this node should have in its Lease.
    pub fn record(&self) -> Record {
        let mut claims = owner::claims(&self.me, &self.decisions);
        // Ranked while starting, claiming nothing until ready.
        if self.warming.is_some() {
            claims.clear();
        }
        if self.handing_over() {
            for d in &self.decisions {
                if let Some((_, e)) = d.holder.as_ref().filter(|_| d.held_by(&self.me)) {
                    claims.extend(d.vip.addrs.iter().map(|a| (*a, *e)));
                }
            }
        }
        Record {
            not_ready: self.ready(),
            local: self.local(),
            claims,
            refused: self.refused.keys().copied().collect(),
            address: self.address,
        }
    }

    /// Whether the record should be written now: it changed, or a
    /// heartbeat passed since the last renewal.
    pub fn write_due(&self, now: Instant) -> bool {
        self.written.as_ref() != Some(&self.record())
            || self
                .renewed
                .is_none_or(|t| now.saturating_duration_since(t) >= self.heartbeat)
    }

    /// A write sent at `sent` succeeded.
    pub fn wrote(&mut self, r: Record, sent: Instant) {
        if self.renewed.is_some() && self.cut_off(sent) {
            self.need_relist = true;
        }
        if self.written.as_ref().map(|w| &w.claims) != Some(&r.claims) {
            self.claims_written += 1;
        }
        self.written = Some(r);
        self.renewed = Some(sent);
    }

    /// Whether renewals are failing: nothing written for two heartbeats.
    pub fn cut_off(&self, now: Instant) -> bool {
        self.renewed
            .is_none_or(|t| now.saturating_duration_since(t) > 2 * self.heartbeat)
    }

    /// Another node answers for `ip`. Unable to renew, this node yields it
    /// (and the rest of its VIP) at once; able to, the epochs decide.
    pub fn conflict(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.cut_off(now) {
            return false;
        }
        let group = self.vips.iter().find(|v| v.addrs.contains(&ip));
        self.yielded
            .extend(group.map_or(vec![ip], |v| v.addrs.clone()));
        true
    }

    /// The BFD partners under `fast_failover`, with the address each
    /// wrote into its Lease (a node that wrote none is left out).
    pub fn partners(&self) -> BTreeMap<String, IpAddr> {
        fast::partners(&self.me, &self.decisions)
            .into_iter()
            .filter_map(|n| Some((n.clone(), self.peers.get(&n)?.record.address?)))
            .collect()
    }

    /// BFD with `node` expired: probe the VIPs it holds that this node
    /// would take.
    pub fn bfd_down(&mut self, node: &str, now: Instant) {
        let addrs = fast::to_probe(&self.me, node, &self.decisions);
        self.probing.down(node, addrs, now);
    }

    /// When the next probe is due, or the last one's wait is over.
    pub fn next_probe(&self) -> Option<Instant> {
        self.probing.next()
    }

    pub fn bfd_up(&mut self, node: &str) {
        self.probing.cancel(node);
    }

    /// Another node answered a probe for `ip`.
    pub fn probe_answered(&mut self, ip: IpAddr) {
        self.probing.answered(ip);
    }

    /// The probes to send now; nodes whose probes went unanswered are
    /// taken for dead (returned, for the log).
    pub fn probes(&mut self, now: Instant) -> (Vec<IpAddr>, Vec<String>) {
        let (send, dead) = self.probing.poll(now);
        self.gone.extend(dead.iter().cloned());
        self.fast_failovers += dead.len() as u64;
        (send, dead)
    }

    /// Stopping: done once nothing this node holds waits for a successor.
    pub fn handed_over(&self) -> bool {
        !self.decisions.iter().any(|d| {
            d.held_by(&self.me)
                && matches!(&d.state, owner::State::ToClaim { owner, .. } if *owner != self.me)
        })
    }

    /// What `vipd status` and `explain` show.
    pub fn lines(&self) -> Vec<VipLine> {
        let why_me = self.ready();
        self.decisions
            .iter()
            .map(|d| {
                let (owner, epoch) = match &d.state {
                    owner::State::Held { owner, epoch }
                    | owner::State::ToClaim { owner, epoch } => (Some(owner.clone()), Some(*epoch)),
                    owner::State::Nobody => (None, None),
                };
                let refused = d.vip.addrs.iter().find_map(|a| self.refused.get(a));
                let here = d.vip.addrs.iter().all(|a| self.answering.contains(a));
                let why_not = if here {
                    None
                } else if self.paused {
                    Some("paused past a heartbeat (or the fast failover detection time): reading the Leases again".into())
                } else if let Some(r) = refused {
                    Some(r.clone())
                } else if d.vip.addrs.iter().any(|a| self.yielded.contains(a)) {
                    Some(
                        "yielded: another node answers for it and this node cannot renew its Lease"
                            .into(),
                    )
                } else {
                    owner::why_not(&self.me, d, why_me.as_deref())
                };
                VipLine {
                    addrs: d.vip.addrs.clone(),
                    owner,
                    epoch,
                    here,
                    rank: d.rank,
                    eligible: d.eligible,
                    why_not,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> L2Config {
        L2Config {
            interfaces: vec!["eth0".into()],
            lease_namespace: "kube-system".into(),
            heartbeat: Duration::from_secs(1),
            lease_duration: Duration::from_secs(3),
            announce: [0, 1100, 2200].map(Duration::from_millis).to_vec(),
            refresh: Duration::from_secs(120),
            default: false,
            fast_failover: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn services(addrs: &[&str]) -> Arc<BTreeMap<Key, L2Want>> {
        Arc::new(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    (
                        Key::from(format!("default/s{i}").as_str()),
                        L2Want {
                            addrs: vec![ip(a)],
                            local: false,
                            here: true,
                        },
                    )
                })
                .collect(),
        )
    }

    /// A node alone: it claims, answers once the claim is written, and
    /// announces at the offsets.
    #[test]
    fn alone_a_node_claims_then_answers_and_announces_at_the_offsets() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        assert_eq!(s.decide(t0), None, "nothing before the claim is written");
        let r = s.record();
        assert_eq!(r.claims, [(ip("192.0.2.10"), 1)].into());
        assert!(s.write_due(t0));
        s.wrote(r, t0);
        assert_eq!(s.decide(t0), Some([ip("192.0.2.10")].into()));
        assert!(!s.write_due(t0));
        assert_eq!(s.due(t0), vec![ip("192.0.2.10")]);
        assert!(s.due(t0 + Duration::from_millis(1000)).is_empty());
        assert_eq!(
            s.due(t0 + Duration::from_millis(1100)),
            vec![ip("192.0.2.10")]
        );
        assert_eq!(
            s.due(t0 + Duration::from_millis(2200)),
            vec![ip("192.0.2.10")]
        );
        assert!(s.due(t0 + Duration::from_secs(60)).is_empty());
        assert_eq!(
            s.due(t0 + Duration::from_millis(122_300)),
            vec![ip("192.0.2.10")],
            "the refresh"
        );
        assert!(s.write_due(t0 + Duration::from_secs(1)), "the heartbeat");
    }

    /// `b` holds the VIP; `a` is its successor (two nodes: the only one).
    fn successor_of_b(t0: Instant) -> State {
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.relisted(&BTreeSet::new(), t0);
        s.tick(t0);
        s.wrote(s.record(), t0);
        let b = Record {
            claims: [(ip("192.0.2.10"), 4)].into(),
            address: Some(ip("192.0.2.3")),
            ..Record::default()
        };
        s.lease("b", b, "1", t0);
        assert_eq!(s.decide(t0), None);
        s
    }

    #[test]
    fn bfd_down_and_two_unanswered_probes_take_the_vip_before_the_lease_expires() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = successor_of_b(t0);
        assert_eq!(s.partners(), [("b".to_string(), ip("192.0.2.3"))].into());
        s.bfd_down("b", ms(300));
        assert_eq!(s.probes(ms(300)), (vec![ip("192.0.2.10")], vec![]));
        assert_eq!(s.probes(ms(400)), (vec![ip("192.0.2.10")], vec![]));
        assert_eq!(s.decide(ms(400)), None, "b still holds it while probed");
        assert_eq!(s.probes(ms(500)), (vec![], vec!["b".to_string()]));
        s.decide(ms(500));
        assert_eq!(
            s.record().claims,
            [(ip("192.0.2.10"), 5)].into(),
            "claimed above b's epoch, 2.5 s before b's Lease expires"
        );
        s.wrote(s.record(), ms(510));
        assert_eq!(s.decide(ms(510)), Some([ip("192.0.2.10")].into()));
        // b renews after all: alive again, but no failback.
        let b = Record {
            claims: [(ip("192.0.2.10"), 4)].into(),
            ..Record::default()
        };
        s.lease("b", b, "2", ms(900));
        assert_eq!(s.decide(ms(900)), None, "a keeps it");
    }

    #[test]
    fn an_answered_probe_or_a_renewal_keeps_the_owner() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = successor_of_b(t0);
        s.bfd_down("b", ms(300));
        s.probes(ms(300));
        s.probe_answered(ip("192.0.2.10"));
        assert_eq!(s.probes(ms(600)), (vec![], vec![]));
        s.bfd_down("b", ms(700));
        s.probes(ms(700));
        s.lease("b", Record::default(), "2", ms(750));
        assert_eq!(s.probes(ms(1000)), (vec![], vec![]), "renewed: alive");
        s.bfd_down("b", ms(1100));
        s.bfd_up("b");
        assert_eq!(s.probes(ms(1500)), (vec![], vec![]), "BFD back");
    }

    #[test]
    fn a_higher_claim_seen_silences_this_node_at_once() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.decide(t0);
        s.wrote(s.record(), t0);
        assert!(s.decide(t0).is_some());
        let other = Record {
            claims: [(ip("192.0.2.10"), 2)].into(),
            ..Record::default()
        };
        s.lease("b", other, "7", t0);
        assert_eq!(s.decide(t0), Some(BTreeSet::new()));
        assert!(s.record().claims.is_empty(), "and drops its claim");
    }

    /// With fast failover a successor may take over 0.5 s into a stop:
    /// a stop longer than the BFD detection time is a pause, though
    /// shorter than a heartbeat (the randomized e2e run found an owner
    /// answering beside its successor after a 0.7 s SIGSTOP).
    #[test]
    fn with_fast_failover_a_stop_past_the_bfd_detection_time_is_a_pause() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut slow = State::new("a", &cfg());
        slow.tick(t0);
        assert!(!slow.tick(ms(700)));
        let fast_cfg = L2Config {
            fast_failover: Some(crate::config::FastFailover {
                interval: Duration::from_millis(100),
                multiplier: 3,
            }),
            ..cfg()
        };
        let mut fast = State::new("a", &fast_cfg);
        fast.tick(t0);
        assert!(!fast.tick(ms(300)), "within the detection time");
        assert!(fast.tick(ms(700)), "past it: a successor may hold the VIPs");
        assert!(fast.paused());
    }

    #[test]
    fn after_a_pause_nothing_is_answered_until_the_leases_are_read_again() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.tick(t0);
        s.decide(t0);
        s.wrote(s.record(), t0);
        assert!(s.decide(t0).is_some());
        assert!(!s.tick(t0 + Duration::from_millis(900)));
        assert!(
            s.tick(t0 + Duration::from_secs(5)),
            "stopped for four seconds"
        );
        assert_eq!(s.decide(t0 + Duration::from_secs(5)), Some(BTreeSet::new()));
        s.relisted(&BTreeSet::new(), t0);
        assert_eq!(
            s.decide(t0 + Duration::from_secs(5)),
            Some([ip("192.0.2.10")].into())
        );
    }

    #[test]
    fn a_stopping_owner_answers_until_its_successor_holds_the_vip() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.lease("b", Record::default(), "1", t0);
        // Make "a" the holder whatever the ranking says.
        s.wrote(
            Record {
                claims: [(ip("192.0.2.10"), 5)].into(),
                ..Record::default()
            },
            t0,
        );
        assert!(s.decide(t0).is_some());
        s.stopping = true;
        assert_eq!(s.decide(t0), None, "still answering");
        assert!(!s.handed_over());
        assert_eq!(
            s.record().claims,
            [(ip("192.0.2.10"), 5)].into(),
            "claim kept"
        );
        assert_eq!(s.record().not_ready.as_deref(), Some("stopping"));
        let b = Record {
            claims: [(ip("192.0.2.10"), 6)].into(),
            ..Record::default()
        };
        s.lease("b", b, "2", t0);
        assert_eq!(s.decide(t0), Some(BTreeSet::new()));
        assert!(s.handed_over());
        // Carrier lost instead: nothing to hand over, silent at once.
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.decide(t0);
        s.wrote(s.record(), t0);
        s.decide(t0);
        s.set_carrier(Err("carrier down on eth0".into()));
        assert_eq!(s.decide(t0), Some(BTreeSet::new()));
        // Back: nothing until the Leases are read again.
        assert!(s.set_carrier(Ok(())));
        assert_eq!(s.decide(t0), None);
        s.relisted(&BTreeSet::new(), t0);
        assert_eq!(s.decide(t0), Some([ip("192.0.2.10")].into()));
    }

    #[test]
    fn cut_off_from_the_api_a_node_yields_to_one_it_sees_answering() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.decide(t0);
        s.wrote(s.record(), t0);
        s.decide(t0);
        assert!(!s.conflict(ip("192.0.2.10"), t0 + Duration::from_millis(500)));
        assert!(
            s.decide(t0).is_none(),
            "renewing: the epochs decide, not the wire"
        );
        let later = t0 + Duration::from_secs(10);
        assert!(s.conflict(ip("192.0.2.10"), later));
        assert_eq!(s.decide(later), Some(BTreeSet::new()));
        let l = &s.lines()[0];
        assert!(
            l.why_not.as_deref().unwrap().starts_with("yielded"),
            "{l:?}"
        );
    }

    #[test]
    fn a_starting_node_takes_nothing_until_it_has_heard_from_the_others() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        s.warm_up(t0 + Duration::from_secs(3));
        s.tick(t0);
        s.decide(t0);
        let r = s.record();
        assert!(r.claims.is_empty() && r.not_ready.is_some(), "{r:?}");
        // Past the lease duration but not yet listed: still waiting.
        s.tick(t0 + Duration::from_millis(3000));
        s.decide(t0 + Duration::from_millis(3000));
        assert!(s.record().claims.is_empty());
        s.relisted(&BTreeSet::new(), t0);
        s.tick(t0 + Duration::from_millis(3100));
        s.decide(t0 + Duration::from_millis(3100));
        assert_eq!(s.record().claims.len(), 1);
    }

    #[test]
    fn cut_off_from_the_api_a_node_judges_no_other_gone() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        let b = Record {
            claims: [(ip("192.0.2.10"), 4)].into(),
            ..Record::default()
        };
        s.lease("b", b, "1", t0);
        s.wrote(s.record(), t0);
        // Ten seconds without a renewal of its own, nor a word from b: b
        // keeps its VIP in a's view; a claims nothing.
        let later = t0 + Duration::from_secs(10);
        s.decide(later);
        assert!(s.record().claims.is_empty());
        // Back: the Leases are to be read again, and until then and a
        // lease duration after, b is not judged gone.
        s.wrote(s.record(), later);
        assert!(s.relist_due());
        assert!(!s.relist_due(), "asked once");
        s.wrote(s.record(), later + Duration::from_millis(1500));
        s.decide(later + Duration::from_secs(2));
        assert!(s.record().claims.is_empty());
        s.relisted(&["b".to_string()].into(), later + Duration::from_secs(2));
        s.wrote(s.record(), later + Duration::from_secs(3));
        s.decide(later + Duration::from_secs(4));
        assert!(
            s.record().claims.is_empty(),
            "a lease duration after the list"
        );
        s.wrote(s.record(), later + Duration::from_secs(5));
        s.decide(later + Duration::from_millis(5500));
        assert_eq!(s.record().claims, [(ip("192.0.2.10"), 5)].into());
    }

    #[test]
    fn a_peer_silent_for_the_lease_duration_is_gone() {
        let t0 = Instant::now();
        let mut s = State::new("a", &cfg());
        s.set_services(services(&["192.0.2.10"]));
        let b = Record {
            claims: [(ip("192.0.2.10"), 4)].into(),
            ..Record::default()
        };
        s.lease("b", b.clone(), "1", t0);
        s.decide(t0);
        assert!(s.record().claims.is_empty(), "b holds it");
        // The same version again is not a renewal. This node renews all
        // along (a node that cannot judges nobody gone).
        s.wrote(s.record(), t0);
        s.lease("b", b, "1", t0 + Duration::from_secs(2));
        for t in [1, 2, 3, 4] {
            s.wrote(s.record(), t0 + Duration::from_secs(t));
        }
        s.decide(t0 + Duration::from_secs(4));
        assert_eq!(s.record().claims, [(ip("192.0.2.10"), 5)].into());
    }
}
