//! Kubernetes Events on Services (the announcer's refusals and the
//! allocator's decisions alike) and on this node's Node (a configuration
//! refused): the one place vipd writes them.
//!
//! One Event in the cluster per decision, whichever of the nodes that make
//! it posts it. Every vipd reaches the same decisions about a Service (a
//! bad annotation, an address outside `allowed_prefixes`), so an Event
//! named after what it says ([`Record::name`]: the object's name and a
//! digest of the reason and message) is created by the first node to post
//! it; the others get 409 AlreadyExists and write nothing. A decision that
//! names this node (its own address, its configuration) puts the node in
//! the name and in `source.host`, so each node has its own.
//!
//! A restart or a DaemonSet rollout posts nothing again: at start vipd
//! lists the Events it (any vipd) recorded, and a decision already there
//! is not written ([`Ledger`]). A decision that goes away and comes back
//! within one process counts again: the Event's `count` and
//! `lastTimestamp` are updated by one node. Each node remembers the count
//! it last saw; one that finds a higher count knows another node counted
//! this recurrence and writes nothing (no clocks compared: nodes' clocks
//! differ), and of two that patch at once the resourceVersion lets one
//! win. Each node writes at most [`RATE`] Events a second after a burst
//! of [`BURST`].
//!
//! Written by hand rather than through `kube::runtime::events::Recorder`:
//! that posts `events.k8s.io/v1` Events with a fresh name each time and
//! deduplicates within one process only.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use std::collections::BTreeSet;

/// Events a node may write in a burst, and then each second: a new
/// allocator leader assigning 1,000 addresses records them in about 15 s,
/// and no node, whatever goes wrong, writes more than 50 a second.
pub const BURST: f64 = 300.0;
pub const RATE: f64 = 50.0;

/// Report once: of what stands now, what was not standing at the last
/// pass. Something that goes away and comes back is reported again; one
/// that stays is reported once, however many passes see it.
#[derive(Debug, Default)]
pub struct Once<I> {
    standing: BTreeSet<I>,
}

impl<I: Ord> Once<I> {
    /// `now`: everything standing at this pass, with what to report for it.
    pub fn fresh<T>(&mut self, now: impl IntoIterator<Item = (I, T)>) -> Vec<T> {
        let mut standing = BTreeSet::new();
        let mut fresh = vec![];
        for (id, t) in now {
            if !self.standing.contains(&id) {
                fresh.push(t);
            }
            standing.insert(id);
        }
        self.standing = standing;
        fresh
    }
}

/// One Event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where the Event lives: the object's namespace (`default` for a Node).
    pub namespace: String,
    pub about: ObjectReference,
    pub reason: String,
    pub message: String,
    pub warning: bool,
    /// The node a node-specific decision is about (named in the Event's
    /// name and `source.host`); `None` for one every node makes.
    pub node: Option<String>,
}

impl Record {
    /// About the Service `namespace/name`.
    pub fn service(
        service: &str,
        uid: &str,
        reason: &str,
        message: String,
        warning: bool,
    ) -> Record {
        let (ns, name) = service.split_once('/').unwrap_or(("default", service));
        Record {
            namespace: ns.to_string(),
            about: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Service".into()),
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                uid: Some(uid.to_string()),
                ..Default::default()
            },
            reason: reason.to_string(),
            message,
            warning,
            node: None,
        }
    }

    /// This decision is `node`'s own.
    pub fn on(mut self, node: &str) -> Record {
        self.node = Some(node.to_string());
        self
    }

    /// A Warning about the Node `node` (cluster-scoped: the Event lives in
    /// `default`, where `kubectl describe node` finds it).
    pub fn node(node: &str, reason: &str, message: String) -> Record {
        Record {
            namespace: "default".into(),
            about: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                // A Node's Events carry its name as the uid (as the kubelet's).
                uid: Some(node.to_string()),
                ..Default::default()
            },
            reason: reason.to_string(),
            message,
            warning: true,
            node: Some(node.to_string()),
        }
    }

    /// The Event's name: what it is about and a digest of what it says, so
    /// every vipd that makes this decision names the same Event. FNV-1a by
    /// hand rather than std's hasher, whose output may change between
    /// Rust releases: a rolling upgrade must name the Event as before.
    pub fn name(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let about = self.about.name.as_deref().unwrap_or("");
        let uid = self.about.uid.as_deref().unwrap_or("");
        let node = self.node.as_deref().unwrap_or("");
        for part in [about, uid, &self.reason, &self.message, node] {
            for b in part.bytes().chain([0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        // Object names are at most 253 characters; the digest must stay.
        let mut prefix = about.to_string();
        prefix.truncate(253 - 17);
        format!("{prefix}.{h:016x}")
    }

    fn event(&self, now: Time) -> KubeEvent {
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(self.name()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: self.about.clone(),
            reason: Some(self.reason.clone()),
            message: Some(self.message.clone()),
            type_: Some(if self.warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some("vipd".into()),
                host: self.node.clone(),
            }),
            reporting_component: Some("vipd".into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        }
    }
}

/// What to do with a record ([`Ledger::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not in the cluster as far as this node knows: create it.
    Create,
    /// Recorded already (by any vipd, before or now): nothing to write.
    Skip,
    /// This process posted it before and it came back: count it again,
    /// unless another node just did.
    Recount,
}

/// Which Events exist in the cluster (with the count this node last saw of
/// each) and which this process posted.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: HashMap<(String, String), i32>,
    mine: HashSet<(String, String)>,
}

impl Ledger {
    /// Events found in the cluster: (namespace, name) and count.
    pub fn seed(&mut self, found: impl IntoIterator<Item = ((String, String), i32)>) {
        self.seen.extend(found);
    }

    pub fn next(&mut self, at: &(String, String)) -> Step {
        if !self.mine.insert(at.clone()) {
            return Step::Recount;
        }
        if self.seen.contains_key(at) {
            Step::Skip
        } else {
            Step::Create
        }
    }

    /// The Event exists with `count` (created, found, or another node's).
    pub fn exists(&mut self, at: (String, String), count: i32) {
        self.seen.insert(at, count);
    }

    /// A recurrence of `at`, whose Event now has `count`: the count to
    /// write, or `None` when another node counted it since this one looked.
    pub fn recount(&mut self, at: &(String, String), count: i32) -> Option<i32> {
        let last = self.seen.get(at).copied().unwrap_or(0);
        self.seen.insert(at.clone(), count);
        (count <= last).then_some(count.saturating_add(1))
    }
}

/// A token bucket: how long to wait before the next write.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            at: now,
        }
    }

    /// Takes a token at `now`; returns the wait first needed (zero if none).
    pub fn take(&mut self, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + since * RATE).min(BURST);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / RATE)
        }
    }
}

/// Where records go: a task of its own writes them, so no caller waits on
/// the API server. Cloned by every part of vipd that posts Events; the task
/// ends with the last clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    _task: std::sync::Arc<crate::task::Owned<()>>,
}

/// Records waiting for the rate limit; beyond this, dropped and logged.
const QUEUE: usize = 4096;

impl Recorder {
    pub fn spawn(client: Client) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = crate::task::Owned::spawn(run(client, rx));
        Recorder {
            tx,
            _task: std::sync::Arc::new(task),
        }
    }

    pub fn post(&self, r: Record) {
        if let Err(e) = self.tx.try_send(r) {
            warn!(
                "Event not recorded: {} records already wait for the rate limit ({e})",
                QUEUE
            );
        }
    }
}

async fn run(client: Client, mut rx: mpsc::Receiver<Record>) {
    let mut ledger = Ledger::default();
    ledger.seed(recorded(&client).await);
    let mut bucket = Bucket::new(Instant::now());
    while let Some(r) = rx.recv().await {
        let at = (r.namespace.clone(), r.name());
        let step = ledger.next(&at);
        if step == Step::Skip {
            continue;
        }
        tokio::time::sleep(bucket.take(Instant::now())).await;
        let api = Api::<KubeEvent>::namespaced(client.clone(), &r.namespace);
        let done = match step {
            Step::Recount => recount(&api, &r, &at, &mut ledger).await,
            _ => create(&api, &r)
                .await
                .map(|()| ledger.exists(at.clone(), 1)),
        };
        if let Err(e) = done {
            warn!(event = %at.1, "could not record the Event: {e}");
        }
    }
}

/// The Events vipd recorded, as (namespace, name) and count: at most 50
/// pages, so a flooded cluster cannot hold vipd's start.
async fn recorded(client: &Client) -> Vec<((String, String), i32)> {
    let api = Api::<KubeEvent>::all(client.clone());
    let mut lp = ListParams::default().fields("source=vipd").limit(500);
    let mut out = vec![];
    for _ in 0..50 {
        match api.list(&lp).await {
            Ok(l) => {
                let names = l.items.into_iter().filter_map(|e| {
                    let m = e.metadata;
                    Some(((m.namespace?, m.name?), e.count.unwrap_or(1)))
                });
                out.extend(names);
                match l.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => lp = lp.continue_token(&c),
                    None => break,
                }
            }
            Err(e) => {
                warn!(
                    "cannot list vipd's Events ({e}): those already recorded may be posted again"
                );
                break;
            }
        }
    }
    debug!(events = out.len(), "Events already recorded");
    out
}

/// Creates the Event; one that exists already (another node's) is done.
async fn create(api: &Api<KubeEvent>, r: &Record) -> Result<(), kube::Error> {
    match api.create(&PostParams::default(), &r.event(now())).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Counts a recurrence: `count` and `lastTimestamp` updated, unless another
/// node counted it already ([`Ledger::recount`]); a conflict means one just
/// did.
async fn recount(
    api: &Api<KubeEvent>,
    r: &Record,
    at: &(String, String),
    ledger: &mut Ledger,
) -> Result<(), kube::Error> {
    let Some(ev) = api.get_opt(&at.1).await? else {
        // Expired (the API server's event TTL): a new one.
        create(api, r).await?;
        ledger.exists(at.clone(), 1);
        return Ok(());
    };
    let Some(count) = ledger.recount(at, ev.count.unwrap_or(1)) else {
        return Ok(());
    };
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": ev.metadata.resource_version},
        "count": count,
        "lastTimestamp": now(),
    });
    match (api.patch(&at.1, &PatchParams::default(), &Patch::Merge(&patch))).await {
        Ok(_) => {
            ledger.exists(at.clone(), count);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_once_until_it_goes_away_and_comes_back() {
        let mut o = Once::default();
        assert_eq!(o.fresh([("a", 1), ("b", 2)]), [1, 2]);
        assert_eq!(o.fresh([("a", 1), ("b", 2)]), Vec::<i32>::new());
        assert_eq!(o.fresh([("a", 1)]), Vec::<i32>::new());
        assert_eq!(o.fresh([("a", 1), ("b", 3)]), [3], "b came back");
        assert_eq!(o.fresh(Vec::<(&str, i32)>::new()), Vec::<i32>::new());
        assert_eq!(o.fresh([("a", 4)]), [4]);
    }

    fn refused(msg: &str) -> Record {
        Record::service("shop/web", "u1", "VIPRefused", msg.into(), true)
    }

    #[test]
    fn every_node_names_one_decision_alike_and_its_own_apart() {
        let a = refused("vipd will not announce 198.51.100.1: outside");
        assert_eq!(
            a.name(),
            refused("vipd will not announce 198.51.100.1: outside").name()
        );
        assert!(a.name().starts_with("web."), "{}", a.name());
        assert_eq!(a.name().len(), "web.".len() + 16);
        assert_ne!(
            a.name(),
            refused("vipd will not announce 198.51.100.2: outside").name()
        );
        let mut other = a.clone();
        other.about.uid = Some("u2".into());
        assert_ne!(a.name(), other.name(), "a new Service by that name");
        let (n1, n2) = (a.clone().on("node-1"), a.clone().on("node-2"));
        assert_ne!(n1.name(), n2.name());
        assert_ne!(n1.name(), a.name());
        let ev = n1.event(now());
        assert_eq!(ev.source.unwrap().host.as_deref(), Some("node-1"));
        assert_eq!(ev.metadata.name, Some(n1.name()));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        // Stable across processes and releases: this digest, always.
        assert_eq!(
            Record::node("n1", "ConfigRejected", "x".into()).name(),
            "n1.59b132ac28df30c3"
        );
        let long = Record::node(&"n".repeat(253), "R", "m".into()).name();
        assert_eq!(long.len(), 253);
    }

    #[test]
    fn recorded_decisions_are_not_written_again_and_recurrences_are_counted_once() {
        let at = |n: &str| ("shop".to_string(), n.to_string());
        let mut l = Ledger::default();
        l.seed([(at("old"), 3)]);
        assert_eq!(l.next(&at("old")), Step::Skip, "recorded before this start");
        assert_eq!(l.next(&at("new")), Step::Create);
        l.exists(at("new"), 1);
        assert_eq!(l.next(&at("new")), Step::Recount, "it came back");
        assert_eq!(l.recount(&at("new"), 1), Some(2), "nobody counted it yet");
        l.exists(at("new"), 2);
        // Another node counted the next recurrence before this one looked.
        assert_eq!(l.next(&at("new")), Step::Recount);
        assert_eq!(l.recount(&at("new"), 3), None);
        assert_eq!(l.recount(&at("new"), 3), Some(4), "and the one after");
        assert_eq!(l.next(&at("old")), Step::Recount);
        assert_eq!(l.recount(&at("old"), 3), Some(4));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST as usize {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        let wait = b.take(t0);
        assert!((wait.as_secs_f64() - 1.0 / RATE).abs() < 1e-6, "{wait:?}");
        let later = t0 + Duration::from_secs(2);
        let mut b = Bucket::new(later - Duration::from_secs(100));
        b.tokens = 0.0;
        assert_eq!(b.take(later), Duration::ZERO, "refilled");
    }
}
