//! Watching the cluster: Services, EndpointSlices and this node's Node
//! through kube-rs watchers, kept as a [`Snapshot`], turned into an
//! [`Intent`] whenever it changes.
//!
//! The readiness barrier: nothing is published until all three have been
//! listed completely once. A re-list (after a 410 Gone, or a reconnect) is
//! buffered and swapped in whole at its end, so the previous snapshot stays
//! in force meanwhile: a watch reset never withdraws a route. While the API
//! server is unreachable the last intent stays, and the error is logged
//! and shown in the status.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::events::{Once, Record};
use super::intent::{touches_forbidden, Delta, RefusalKind, Tracker};
use super::model::*;
use super::slim::{EndpointSlice, Guarded, Node, Service};
use super::store::{forward, guarded, Change, Store};
use crate::config::KubeConfig;

/// What `vipd` reports about the Kubernetes side.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KubeStatus {
    /// Every watch has been listed completely once.
    pub synced: bool,
    pub services: usize,
    pub endpoint_slices: usize,
    pub vips: usize,
    /// Services with at least one VIP this node announces.
    pub services_announced: usize,
    /// Addresses refused, by reason.
    pub refused: BTreeMap<RefusalKind, usize>,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("kubernetes.kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration (no kubernetes.kubeconfig given): {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// What vipd keeps of Service `s`, listed under `key`.
pub fn service_info(s: &Service, key: &Key) -> Option<ServiceInfo> {
    let spec = s.spec.as_ref();
    s.namespace()?;
    // Only the API server's own Service needs its cluster IPs (they are
    // never announced, only refused to others).
    let api = &**key == "default/kubernetes";
    let cluster_ips = spec
        .filter(|_| api)
        .and_then(|s| (s.cluster_ips.clone()).or_else(|| s.cluster_ip.clone().map(|c| vec![c])))
        .unwrap_or_default();
    let ingress = (s.status.as_ref())
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    Some(ServiceInfo {
        uid: s.uid()?.into(),
        key: key.clone(),
        created: (s.metadata.creation_timestamp.as_ref()).map_or(0, |t| t.0.as_second()),
        load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
        class: spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .map(Box::from),
        ingress_ips: exact(
            ingress
                .into_iter()
                .flatten()
                .filter_map(|x| x.ip.as_deref()),
        ),
        external_ips: exact(
            spec.and_then(|s| s.external_ips.as_ref())
                .into_iter()
                .flatten()
                .map(String::as_str),
        ),
        cluster_ips: cluster_ips.into(),
        local_policy: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        annotations: s.annotations().clone(),
    })
}

/// Addresses as values, without spare room (a boxed slice): kept for as
/// long as their Service lives.
fn exact<'a>(i: impl Iterator<Item = &'a str>) -> Box<[Listed]> {
    i.map(Listed::from).collect()
}

/// What node `node` keeps of an EndpointSlice ([`SliceInfo`]).
pub fn slice_info(s: &EndpointSlice, node: &str) -> SliceInfo {
    let endpoints: Vec<EndpointInfo> = (s.endpoints.iter().flatten())
        .map(|e| {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            EndpointInfo {
                node: e.node_name.clone(),
                addresses: e.addresses.clone().unwrap_or_default(),
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(ready),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            }
        })
        .collect();
    let service = s.labels().get("kubernetes.io/service-name").cloned();
    SliceInfo::new(s.namespace().unwrap_or_default(), service, &endpoints, node)
}

/// The Node's first InternalIP of each family: what `"node"` and an
/// omitted `router_id` stand for.
pub fn internal_ips(n: &Node) -> crate::config::NodeAddresses {
    let mut out = crate::config::NodeAddresses::default();
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addrs
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
    {
        match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if out.v4.is_none() => out.v4 = Some(v4),
            Ok(IpAddr::V6(v6)) if out.v6.is_none() => out.v6 = Some(v6),
            _ => {}
        }
    }
    out
}

/// This node's InternalIPs, read once at start (they select the router ID
/// and `"node"` addresses). Waits for the Node to exist: the kubelet
/// registers it, and nothing can be announced without a router ID.
pub async fn fetch_internal_ips(client: &Client, node: &str) -> crate::config::NodeAddresses {
    let api = Api::<Node>::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("metadata.name={node}"));
    let mut warned = None::<std::time::Instant>;
    loop {
        let why = match api.list(&lp).await {
            Ok(l) => match l.items.first() {
                Some(n) => return internal_ips(n),
                None => format!("no Node named {node} yet"),
            },
            Err(e) => format!("cannot list Node {node}: {e}"),
        };
        if warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(30)) {
            warn!("{why}: waiting for it (the router ID or a \"node\" address comes from its InternalIP)");
            warned = Some(std::time::Instant::now());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

pub fn node_info(n: &Node) -> NodeInfo {
    NodeInfo {
        name: n.name_any(),
        addresses: n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().filter_map(|x| x.address.parse().ok()).collect())
            .unwrap_or_default(),
        labels: n.labels().clone(),
        unschedulable: n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        taints: n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .map(|t| t.iter().map(|t| t.key.clone()).collect())
            .unwrap_or_default(),
        ready: (n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
    }
}

/// What the watcher sends: the first complete set of routes (the readiness
/// barrier has passed), then only what changed.
#[derive(Debug, Clone)]
pub enum Update {
    Full(BTreeMap<ipnet::IpNet, super::intent::Want>),
    /// With when the oldest event behind it was received.
    Delta(Delta, std::time::Instant),
    /// The API servers the cluster lists (`default/kubernetes`), sent when
    /// they change: the control plane's discovered backends.
    ApiServers(BTreeSet<IpAddr>),
    /// What this node's Node object says of peers and drains (all empty
    /// without one), sent once synced and whenever it changes.
    Node(super::model::NodeFacts),
    /// The Services with L2 addresses, whole, after the first `Full` and
    /// whenever they change (with `[l2]` only).
    L2(Arc<BTreeMap<Key, super::intent::L2Want>>),
}

/// One watcher's event, as the forwarders hand it to the watch.
// Events pass through once each; boxing the large ones would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Ev {
    Svc(Result<watcher::Event<Guarded<Service>>, watcher::Error>),
    Slice(Result<watcher::Event<Guarded<EndpointSlice>>, watcher::Error>),
    Node(Result<watcher::Event<Guarded<Node>>, watcher::Error>),
}

async fn client_config(k: &KubeConfig) -> Result<kube::Config, WatchError> {
    match &k.kubeconfig {
        Some(path) => {
            let err = |source| WatchError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)
        }
        None => Ok(kube::Config::incluster()?),
    }
}

/// The API client, and the API server's address where it is an IP.
pub async fn connect(k: &KubeConfig) -> Result<(Client, Vec<IpAddr>), WatchError> {
    let mut config = client_config(k).await?;
    config.connect_timeout = Some(k.connect_timeout);
    // kube leaves reads unbounded: a server that accepts and then says
    // nothing would hang a list for ever. Counted from each request.
    config.read_timeout = Some(k.read_timeout);
    config.reset_reader_on_write = true;
    let api_server: Vec<IpAddr> = config
        .cluster_url
        .host()
        .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
        .into_iter()
        .collect();
    info!(server = %config.cluster_url, node = %k.node_name, "watching Kubernetes");
    Ok((Client::try_from(config)?, api_server))
}

/// The running watch, owned by the daemon: where `vipd explain` and a
/// reload reach it, and the task itself (ended when this is dropped).
pub struct Handle {
    pub requests: mpsc::Sender<Request>,
    pub task: crate::task::Owned<()>,
}

/// What the daemon asks of the running watch.
pub enum Request {
    /// `vipd explain`: a Service's key, and where its view goes.
    Explain(
        Key,
        tokio::sync::oneshot::Sender<super::explain::ServiceView>,
    ),
    /// A reload changed the `[ipam]` pools the intent accepts addresses
    /// from, their modes, or the advertisements.
    /// (The new `[kubernetes]`: the watch takes those parts from it.)
    Pools(Box<KubeConfig>),
}

/// An Event to record on a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub service: Key,
    pub uid: Uid,
    pub reason: &'static str,
    pub message: String,
    /// The line vipd logs for it.
    pub log: String,
    /// A decision about this node (its own address), not one every node
    /// makes alike: the node is named in the Event.
    pub node_specific: bool,
}

/// What a pass hands on: updates for the daemon, Events for the API
/// server, and the figures for `vipd status`.
#[derive(Debug, Default)]
pub struct Pass {
    pub updates: Vec<Update>,
    pub posts: Vec<Post>,
    pub status: KubeStatus,
    /// Every Service decided again (a list, a re-list, new pools).
    pub full: bool,
}

/// The watch's state and decisions, with no I/O: watcher events in
/// ([`Watch::apply`]), updates out ([`Watch::pass`]). The barrier, the
/// re-list and what is reported once all live here, tested with synthetic
/// events; [`run`] is the task around it.
pub struct Watch {
    k: KubeConfig,
    snap: Snapshot,
    services: Store<ServiceInfo>,
    slices: Store<SliceInfo>,
    node_store: Store<NodeInfo>,
    nodes: BTreeMap<Key, NodeInfo>,
    tracker: Tracker,
    reported: Once<String>,
    last_error: Option<String>,
    warned_no_node: bool,
    published: bool,
    api_servers_sent: BTreeSet<IpAddr>,
    facts_sent: Option<NodeFacts>,
    /// Since the last pass: a full pass is due, and the Services touched.
    full: bool,
    touched: BTreeSet<Key>,
}

impl Watch {
    pub fn new(k: KubeConfig, api_server: Vec<IpAddr>) -> Watch {
        Watch {
            k,
            snap: Snapshot {
                api_server,
                ..Default::default()
            },
            services: Store::default(),
            slices: Store::default(),
            node_store: Store::default(),
            nodes: BTreeMap::new(),
            tracker: Tracker::default(),
            reported: Once::default(),
            last_error: None,
            warned_no_node: false,
            published: false,
            api_servers_sent: BTreeSet::new(),
            facts_sent: None,
            full: false,
            touched: BTreeSet::new(),
        }
    }

    /// One watcher event (or error). Returns the API error to show in the
    /// status when it changed: `Some(None)` once the API is back.
    pub fn apply(&mut self, ev: Ev) -> Option<Option<String>> {
        let r = match ev {
            Ev::Svc(r) => r.map(|e| self.on_service(e)),
            Ev::Slice(r) => r.map(|e| self.on_slice(e)),
            Ev::Node(r) => r.map(|e| self.on_node(e)),
        };
        let now = r.err().map(|e| e.to_string());
        if now == self.last_error {
            return None;
        }
        match &now {
            Some(msg) => {
                warn!("Kubernetes API: {msg}; current announcements stay until it is back")
            }
            None => info!("Kubernetes API reachable again"),
        }
        self.last_error = now.clone();
        Some(now)
    }

    /// A Node changed: this node's own (a full pass), or, with the cap,
    /// another one (a full pass only when the eligible nodes change: a
    /// status heartbeat decides nothing).
    fn on_node(&mut self, e: watcher::Event<Guarded<Node>>) {
        let c = (self.node_store).apply(&mut self.nodes, e, guarded(|n, _| Some(node_info(n))));
        let me = self.node_key();
        let mine = self.nodes.get(me.as_str());
        let own = match &c {
            Change::Nothing => false,
            Change::One(key, old) => **key == *me && old.as_ref() != mine,
            Change::All => true,
        };
        let eligible = self.eligible();
        self.full |= own || eligible != self.snap.eligible;
        self.snap.eligible = eligible;
    }

    /// This node's key in `nodes` (cluster-scoped: no namespace).
    fn node_key(&self) -> String {
        format!("/{}", self.k.node_name)
    }

    /// With the cap, the nodes that may announce a capped VIP.
    fn eligible(&self) -> Vec<String> {
        if self.k.max_announcing_nodes.is_none() {
            return vec![];
        }
        super::ecmp::eligible(&self.nodes, &self.k.node_name, self.k.drain.as_ref())
    }

    fn on_service(&mut self, e: watcher::Event<Guarded<Service>>) {
        match (self.services).apply(&mut self.snap.services, e, guarded(service_info)) {
            Change::Nothing => {}
            Change::All => self.full = true,
            Change::One(key, _) => {
                self.full |= touches_forbidden(&key);
                self.touched.insert(key);
            }
        }
    }

    fn on_slice(&mut self, e: watcher::Event<Guarded<EndpointSlice>>) {
        let node = &self.k.node_name;
        let conv = guarded(|s, _| Some(slice_info(s, node)));
        match self.slices.apply(&mut self.snap.slices, e, conv) {
            Change::Nothing => {}
            Change::All => self.full = true,
            Change::One(key, old) => {
                let new = self.snap.slices.get(&key);
                for svc in self.tracker.slice_changed(&key, old.as_ref(), new) {
                    self.full |= touches_forbidden(&svc);
                    self.touched.insert(svc);
                }
            }
        }
    }

    /// New pools, their modes, advertisements or `[drain]` from a reload:
    /// every Service decided again.
    pub fn set_pools(&mut self, k: KubeConfig) {
        self.k.pools = k.pools;
        self.k.l2 = k.l2;
        self.k.adverts = k.adverts;
        self.k.drain = k.drain;
        self.full = true;
    }

    /// Whether Services, EndpointSlices and the Node have all been listed.
    pub fn synced(&self) -> bool {
        self.services.synced() && self.slices.synced() && self.node_store.synced()
    }

    /// The intent brought up to date with what was applied since the last
    /// pass; `since` is when the oldest of those events arrived. Nothing
    /// before the barrier, nothing when nothing changed.
    pub fn pass(&mut self, since: std::time::Instant) -> Option<Pass> {
        let idle = !self.full && self.touched.is_empty() && self.published;
        if !self.synced() || idle {
            return None;
        }
        // default/kubernetes changing makes a full pass (it changes the
        // forbidden addresses), so only a full pass can change the API list.
        let full_pass = self.full || !self.published;
        let t = std::time::Instant::now();
        let delta = if full_pass {
            self.node_changed();
            self.tracker.reset(&self.snap, &self.k)
        } else {
            self.tracker
                .update(&self.snap, &self.k, self.touched.iter())
        };
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            changed = delta.len(),
            full = full_pass,
            "intent updated"
        );
        self.full = false;
        self.touched.clear();
        let first = !std::mem::replace(&mut self.published, true);
        let update = if first {
            Some(Update::Full(self.tracker.intent().routes.clone()))
        } else {
            (!delta.is_empty()).then_some(Update::Delta(delta, since))
        };
        // After the intent: the first thing the daemon hears is the Full
        // that opens the readiness barrier.
        let mut updates: Vec<Update> = update.into_iter().collect();
        if self.tracker.take_l2_changed() || (first && self.k.l2.is_some()) {
            updates.push(Update::L2(Arc::new(self.tracker.intent().l2.clone())));
        }
        if full_pass {
            updates.extend(self.api_servers_changed());
            updates.extend(self.facts_changed());
        }
        Some(Pass {
            updates,
            posts: self.posts(),
            status: self.status(),
            full: full_pass,
        })
    }

    fn node_changed(&mut self) {
        self.snap.node = self.nodes.get(self.node_key().as_str()).cloned();
        self.snap.eligible = self.eligible();
        if self.snap.node.is_none() && !self.warned_no_node {
            self.warned_no_node = true;
            warn!(node = %self.k.node_name, "no Node object by this name: Local-policy Services and this node's own addresses cannot be matched; check kubernetes.node_name");
        }
    }

    fn api_servers_changed(&mut self) -> Option<Update> {
        let a = super::intent::api_endpoints(&self.snap);
        (a != self.api_servers_sent).then(|| {
            self.api_servers_sent = a.clone();
            Update::ApiServers(a)
        })
    }

    fn facts_changed(&mut self) -> Option<Update> {
        let n = self.snap.node.clone().unwrap_or_default();
        let f = NodeFacts {
            labels: n.labels,
            unschedulable: n.unschedulable,
            taints: n.taints,
        };
        (self.facts_sent.as_ref() != Some(&f)).then(|| {
            self.facts_sent = Some(f.clone());
            Update::Node(f)
        })
    }

    /// The refusals and dropped attribute values not reported before (each
    /// once, until it goes away and comes back).
    fn posts(&mut self) -> Vec<Post> {
        let intent = self.tracker.intent();
        let refused = intent.refused.iter().map(|r| {
            let id = format!("{}|{}|{}", r.uid, r.address, r.reason);
            (
                id,
                Post {
                    service: r.service.clone(),
                    uid: r.uid.clone(),
                    reason: r.kind.event_reason(),
                    message: format!("vipd will not announce {}: {}", r.address, r.reason),
                    log: format!("VIP refused: {}", r.reason),
                    node_specific: r.kind == RefusalKind::NodeAddress,
                },
            )
        });
        let dropped = intent.bad_annotations.iter().map(|b| {
            let id = format!("{}|{}|{}", b.uid, b.annotation, b.reason);
            (
                id,
                Post {
                    service: b.service.clone(),
                    uid: b.uid.clone(),
                    reason: "AttributeNotAllowed",
                    message: format!(
                        "{}: {}; dropped, the Service's other attributes apply",
                        b.annotation, b.reason
                    ),
                    log: format!("{}: attribute value dropped: {}", b.annotation, b.reason),
                    node_specific: false,
                },
            )
        });
        self.reported.fresh(refused.chain(dropped))
    }

    /// What a pass leaves for `vipd status` and the metrics.
    fn status(&self) -> KubeStatus {
        let intent = self.tracker.intent();
        KubeStatus {
            synced: true,
            services: self.snap.services.len(),
            endpoint_slices: self.snap.slices.len(),
            vips: intent.routes.len(),
            services_announced: self.tracker.services_announced(),
            refused: self.tracker.refused_by_kind().clone(),
            last_error: self.last_error.clone(),
        }
    }

    pub fn explain(&self, key: &Key) -> super::explain::ServiceView {
        let uid = self
            .snap
            .services
            .get(key)
            .map(|s| &*s.uid)
            .unwrap_or_default();
        let sharing = self.tracker.sharing_view(uid);
        let aggregated = |ip| self.tracker.aggregated(ip, &self.k);
        super::explain::explain(&self.snap, &self.k, key, &sharing, &aggregated)
    }
}

/// Watches until the daemon drops the task, publishing each new intent.
pub async fn run(
    k: KubeConfig,
    client: Client,
    api_server: Vec<IpAddr>,
    out: mpsc::Sender<Update>,
    status: Arc<Mutex<KubeStatus>>,
    mut requests: mpsc::Receiver<Request>,
    events: super::events::Recorder,
) {
    // One task per watcher, forwarding into one channel: the loop below
    // drains whatever is waiting as one batch, so a burst costs one update.
    // Parsed objects wait in it during a list: 1,024 of them (an
    // EndpointSlice of 10 endpoints is about 1 KiB parsed) bound that.
    let (tx, mut rx) = mpsc::channel::<(std::time::Instant, Ev)>(1024);
    // Held for the life of the loop: they end with it.
    // With the cap every Node (parsed down to what eligibility reads),
    // else this node's alone.
    let only = k
        .max_announcing_nodes
        .is_none()
        .then_some(k.node_name.as_str());
    let _forwarders = forwarders(&client, only, tx);
    let mut w = Watch::new(k, api_server);
    let mut trim: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let since = tokio::select! {
            _ = async { trim.as_mut().expect("guarded").await }, if trim.is_some() => {
                trim = None;
                crate::heap::trim();
                continue;
            }
            ev = rx.recv() => match ev {
                Some((at, ev)) => { apply(&mut w, ev, &status); at }
                None => return,
            },
            Some(r) = requests.recv() => match r {
                Request::Explain(key, reply) => { let _ = reply.send(w.explain(&key)); continue }
                Request::Pools(k) => { w.set_pools(*k); std::time::Instant::now() }
            },
        };
        while let Ok((_, ev)) = rx.try_recv() {
            apply(&mut w, ev, &status);
        }
        let Some(pass) = w.pass(since) else { continue };
        let full = pass.full;
        record(&status, pass.status);
        post(&events, pass.posts, &w.k.node_name);
        for u in pass.updates {
            if out.send(u).await.is_err() {
                return;
            }
        }
        if full {
            // Once the daemon has built its tables from it too. Not after
            // bursts of events: trimming holds the allocator's locks for
            // milliseconds, and events keep coming then.
            trim = Some(Box::pin(tokio::time::sleep(TRIM_AFTER)));
        }
    }
}

/// How long after a list the freed memory is handed back (crate::heap).
const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn post(events: &super::events::Recorder, posts: Vec<Post>, node: &str) {
    for p in posts {
        warn!(service = %p.service, "{}", p.log);
        let r = Record::service(&p.service, &p.uid, p.reason, p.message, true);
        events.post(if p.node_specific { r.on(node) } else { r });
    }
}

fn apply(w: &mut Watch, ev: Ev, status: &Mutex<KubeStatus>) {
    if let Some(e) = w.apply(ev) {
        status.lock().unwrap().last_error = e;
    }
}

fn record(status: &Mutex<KubeStatus>, next: KubeStatus) {
    let mut st = status.lock().unwrap();
    if !st.synced {
        info!(
            services = next.services,
            endpoint_slices = next.endpoint_slices,
            vips = next.vips,
            "Kubernetes caches synced"
        );
    }
    *st = next;
}

fn forwarders(
    client: &Client,
    only: Option<&str>,
    tx: mpsc::Sender<(std::time::Instant, Ev)>,
) -> [crate::task::Owned<()>; 3] {
    let wc = watcher::Config::default();
    let node = match only {
        Some(n) => wc.clone().fields(&format!("metadata.name={n}")),
        None => wc.clone(),
    };
    [
        forward(
            Api::<Guarded<Service>>::all(client.clone()),
            wc.clone(),
            tx.clone(),
            |e| (std::time::Instant::now(), Ev::Svc(e)),
        ),
        forward(
            Api::<Guarded<EndpointSlice>>::all(client.clone()),
            wc,
            tx.clone(),
            |e| (std::time::Instant::now(), Ev::Slice(e)),
        ),
        forward(Api::<Guarded<Node>>::all(client.clone()), node, tx, |e| {
            (std::time::Instant::now(), Ev::Node(e))
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ips_are_the_first_internal_address_of_each_family() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"addresses": [
                {"type": "ExternalIP", "address": "198.51.100.7"},
                {"type": "Hostname", "address": "n"},
                {"type": "InternalIP", "address": "2001:db8::1"},
                {"type": "InternalIP", "address": "192.0.2.1"},
                {"type": "InternalIP", "address": "192.0.2.9"},
                {"type": "InternalIP", "address": "not-an-ip"}
            ]}
        }))
        .unwrap();
        let a = internal_ips(&n);
        assert_eq!(a.v4, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(a.v6, Some("2001:db8::1".parse().unwrap()));
        let bare: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}})).unwrap();
        assert_eq!(internal_ips(&bare), Default::default());
    }

    use crate::k8s::intent::tests::kcfg;
    use std::time::Instant;
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};

    fn parse<K: crate::k8s::slim::Guardable>(v: serde_json::Value) -> Guarded<K> {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    fn service(name: &str, ip: &str) -> Guarded<Service> {
        parse(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
        }))
    }

    fn slice(name: &str) -> Guarded<EndpointSlice> {
        parse(serde_json::json!({
            "metadata": {"name": format!("{name}-1"), "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-b",
                           "conditions": {"ready": true}}]
        }))
    }

    fn node(unschedulable: bool) -> Guarded<Node> {
        parse(serde_json::json!({
            "metadata": {"name": "node-a", "labels": {"rack": "r1"}},
            "spec": {"unschedulable": unschedulable}
        }))
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    /// Lists each kind completely with the objects given.
    fn listed(w: &mut Watch, svcs: Vec<Guarded<Service>>, slices: Vec<Guarded<EndpointSlice>>) {
        w.apply(Ev::Svc(Ok(Init)));
        for s in svcs {
            w.apply(Ev::Svc(Ok(InitApply(s))));
        }
        w.apply(Ev::Svc(Ok(InitDone)));
        w.apply(Ev::Slice(Ok(Init)));
        for s in slices {
            w.apply(Ev::Slice(Ok(InitApply(s))));
        }
        w.apply(Ev::Slice(Ok(InitDone)));
    }

    fn list_node(w: &mut Watch, n: Guarded<Node>) {
        w.apply(Ev::Node(Ok(Init)));
        w.apply(Ev::Node(Ok(InitApply(n))));
        w.apply(Ev::Node(Ok(InitDone)));
    }

    /// With the cap, every Node is watched: another node's heartbeat
    /// decides nothing (no pass), its readiness decides again.
    #[test]
    fn only_a_change_of_the_eligible_nodes_decides_again() {
        let mut k = kcfg();
        k.max_announcing_nodes = Some(1);
        let mut w = Watch::new(k, vec![]);
        listed(
            &mut w,
            vec![service("web", "203.0.113.1")],
            vec![slice("web")],
        );
        let other = |ready: &str, beat: &str| {
            parse(serde_json::json!({
                "metadata": {"name": "node-z", "annotations": {"vipd.io/beat": beat}},
                "status": {"conditions": [{"type": "Ready", "status": ready}],
                           "addresses": [{"type": "InternalIP", "address": beat}]}
            }))
        };
        let me = || {
            parse(serde_json::json!({
                "metadata": {"name": "node-a"},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }))
        };
        w.apply(Ev::Node(Ok(Init)));
        w.apply(Ev::Node(Ok(InitApply(me()))));
        w.apply(Ev::Node(Ok(InitApply(other("True", "192.0.2.7")))));
        w.apply(Ev::Node(Ok(InitDone)));
        let p = w.pass(Instant::now()).expect("the barrier passed");
        let Update::Full(routes) = &p.updates[0] else {
            panic!("{:?}", p.updates);
        };
        // One of node-a and node-z announces it.
        let a_has = !routes.is_empty();
        w.apply(Ev::Node(Ok(Apply(other("True", "192.0.2.8")))));
        assert!(
            w.pass(Instant::now()).is_none(),
            "a heartbeat decided again"
        );
        w.apply(Ev::Node(Ok(Apply(other("False", "192.0.2.8")))));
        let p = w.pass(Instant::now()).expect("node-z is no longer ready");
        assert!(p.full);
        if !a_has {
            assert!(
                matches!(&p.updates[0], Update::Delta(d, _) if d.len() == 1 && d[0].1.is_some())
            );
        }
        assert_eq!(w.tracker.intent().routes.len(), 1, "node-a alone is left");
    }

    #[test]
    fn nothing_is_published_before_all_three_kinds_are_listed() {
        let mut w = Watch::new(kcfg(), vec![]);
        listed(
            &mut w,
            vec![service("web", "203.0.113.1")],
            vec![slice("web")],
        );
        assert!(
            w.pass(Instant::now()).is_none(),
            "the Node is not listed yet"
        );
        w.apply(Ev::Svc(Ok(Apply(service("db", "203.0.113.2")))));
        assert!(w.pass(Instant::now()).is_none());
        list_node(&mut w, node(false));
        let p = w.pass(Instant::now()).expect("the barrier passed");
        let Update::Full(routes) = &p.updates[0] else {
            panic!("the first update is the Full: {:?}", p.updates);
        };
        assert!(routes.contains_key(&net("203.0.113.1/32")));
        assert!(
            !routes.contains_key(&net("203.0.113.2/32")),
            "db has no endpoints"
        );
        assert!(matches!(&p.updates[1], Update::Node(f) if f.labels["rack"] == "r1"));
        let st = p.status;
        assert!(st.synced && st.services == 2 && st.vips == 1, "{st:?}");
        assert!(w.pass(Instant::now()).is_none(), "nothing changed since");
    }

    #[test]
    fn a_relist_replaces_and_applies_deletions_made_across_it() {
        let mut w = Watch::new(kcfg(), vec![]);
        let both = vec![service("web", "203.0.113.1"), service("db", "203.0.113.2")];
        listed(&mut w, both, vec![slice("web"), slice("db")]);
        list_node(&mut w, node(false));
        w.pass(Instant::now()).unwrap();
        // 410 Gone: a new list in which db no longer exists.
        w.apply(Ev::Svc(Ok(Init)));
        w.apply(Ev::Svc(Ok(InitApply(service("web", "203.0.113.1")))));
        assert!(
            w.pass(Instant::now()).is_none(),
            "the old list stays in force meanwhile"
        );
        w.apply(Ev::Svc(Ok(InitDone)));
        let p = w.pass(Instant::now()).unwrap();
        let Update::Delta(d, _) = &p.updates[0] else {
            panic!("{:?}", p.updates);
        };
        assert_eq!(d, &vec![(net("203.0.113.2/32"), None)]);
        assert_eq!(p.status.services, 1);
        // A change of one object after the re-list is a delta of its own.
        w.apply(Ev::Svc(Ok(Delete(service("web", "203.0.113.1")))));
        let p = w.pass(Instant::now()).unwrap();
        assert!(
            matches!(&p.updates[..], [Update::Delta(d, _)] if d == &vec![(net("203.0.113.1/32"), None)])
        );
    }

    #[test]
    fn a_refusal_is_reported_once_until_its_reason_changes() {
        let k = KubeConfig {
            allowed_prefixes: vec![net("203.0.113.0/24")],
            ..kcfg()
        };
        let mut w = Watch::new(k, vec![]);
        listed(
            &mut w,
            vec![service("web", "198.51.100.1")],
            vec![slice("web")],
        );
        list_node(&mut w, node(false));
        let p = w.pass(Instant::now()).unwrap();
        assert_eq!(p.posts.len(), 1, "{:?}", p.posts);
        assert_eq!(&*p.posts[0].service, "ns/web");
        assert!(p.posts[0].message.contains("198.51.100.1"), "{:?}", p.posts);
        // The same refusal on the next pass: not again.
        w.apply(Ev::Slice(Ok(Apply(slice("web")))));
        w.apply(Ev::Svc(Ok(Apply(service("web", "198.51.100.1")))));
        let p = w.pass(Instant::now()).unwrap();
        assert!(p.posts.is_empty(), "{:?}", p.posts);
        // A new reason (another address): reported.
        w.apply(Ev::Svc(Ok(Apply(service("web", "198.51.100.2")))));
        let p = w.pass(Instant::now()).unwrap();
        assert_eq!(p.posts.len(), 1);
        assert!(p.posts[0].message.contains("198.51.100.2"));
    }

    #[test]
    fn reloaded_pools_decide_every_service_again() {
        let k = KubeConfig {
            pools: Some(vec![]),
            ..kcfg()
        };
        let mut w = Watch::new(k, vec![]);
        listed(
            &mut w,
            vec![service("web", "203.0.113.1")],
            vec![slice("web")],
        );
        list_node(&mut w, node(false));
        let p = w.pass(Instant::now()).unwrap();
        assert!(
            matches!(&p.updates[0], Update::Full(r) if r.is_empty()),
            "nobody gave it out"
        );
        let range = crate::config::Range {
            first: "203.0.113.0".parse().unwrap(),
            last: "203.0.113.15".parse().unwrap(),
        };
        w.set_pools(KubeConfig {
            pools: Some(vec![range]),
            ..kcfg()
        });
        let p = w.pass(Instant::now()).unwrap();
        assert!(matches!(&p.updates[0], Update::Delta(d, _) if d.len() == 1 && d[0].1.is_some()));
    }

    #[test]
    fn api_errors_show_until_the_api_answers_again() {
        let mut w = Watch::new(kcfg(), vec![]);
        let err = || Ev::Svc(Err(watcher::Error::NoResourceVersion));
        let shown = w.apply(err()).expect("a new error");
        assert!(shown.is_some());
        assert_eq!(w.apply(err()), None, "the same error: no change");
        assert_eq!(w.apply(Ev::Svc(Ok(Init))), Some(None), "back");
        assert_eq!(w.apply(Ev::Svc(Ok(InitDone))), None);
    }
}
