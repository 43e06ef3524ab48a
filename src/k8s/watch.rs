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

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::intent::{touches_forbidden, Delta, Intent, RefusalKind, Tracker};
use super::model::*;
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

pub fn service_info(s: &Service) -> Option<ServiceInfo> {
    let spec = s.spec.as_ref();
    let annotations = s
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with("vipd.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(ServiceInfo {
        uid: s.uid()?,
        namespace: s.namespace()?,
        name: s.name_any(),
        created: s
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
        class: spec.and_then(|s| s.load_balancer_class.clone()),
        ingress_ips: s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
            .unwrap_or_default(),
        external_ips: spec
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default(),
        cluster_ips: spec
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|c| vec![c]))
            })
            .unwrap_or_default(),
        local_policy: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        annotations,
    })
}

pub fn slice_info(s: &EndpointSlice) -> SliceInfo {
    SliceInfo {
        namespace: s.namespace().unwrap_or_default(),
        service: s.labels().get("kubernetes.io/service-name").cloned(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                EndpointInfo {
                    node: e.node_name.clone(),
                    addresses: e.addresses.clone(),
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                }
            })
            .collect(),
    }
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
    }
}

fn key_of(m: &ObjectMeta) -> Key {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
}

/// One watched kind: the live map, and a re-list in progress.
struct Store<T> {
    pending: Option<BTreeMap<Key, T>>,
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            pending: None,
            synced: false,
        }
    }
}

/// What one watcher event did to a store.
enum Change<T> {
    Nothing,
    /// A complete re-list replaced the store.
    All,
    /// One object changed; its value before.
    One(Key, Option<T>),
}

impl<T> Store<T> {
    /// Applies one watcher event to `live`.
    fn apply<K: kube::Resource>(
        &mut self,
        live: &mut BTreeMap<Key, T>,
        ev: watcher::Event<K>,
        conv: impl Fn(&K) -> Option<T>,
    ) -> Change<T> {
        match ev {
            watcher::Event::Init => {
                self.pending = Some(BTreeMap::new());
                Change::Nothing
            }
            watcher::Event::InitApply(o) => {
                if let (Some(p), Some(v)) = (self.pending.as_mut(), conv(&o)) {
                    p.insert(key_of(o.meta()), v);
                }
                Change::Nothing
            }
            watcher::Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    *live = p;
                }
                self.synced = true;
                Change::All
            }
            watcher::Event::Apply(o) => {
                let k = key_of(o.meta());
                let old = match conv(&o) {
                    Some(v) => live.insert(k.clone(), v),
                    None => live.remove(&k),
                };
                Change::One(k, old)
            }
            watcher::Event::Delete(o) => {
                let k = key_of(o.meta());
                let old = live.remove(&k);
                Change::One(k, old)
            }
        }
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
}

// Events pass through once each; boxing the large ones would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Ev {
    Svc(Result<watcher::Event<Service>, watcher::Error>),
    Slice(Result<watcher::Event<EndpointSlice>, watcher::Error>),
    Node(Result<watcher::Event<Node>, watcher::Error>),
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

/// Watches until the process ends, publishing each new intent.
/// `vipd explain`: a Service's key, and where its view goes.
/// The running watch, owned by the daemon: where `vipd explain` asks, and
/// the task itself (ended when this is dropped).
pub struct Handle {
    pub queries: mpsc::Sender<ExplainQuery>,
    pub task: crate::task::Owned<()>,
}

pub type ExplainQuery = (
    Key,
    tokio::sync::oneshot::Sender<super::explain::ServiceView>,
);

pub async fn run(
    k: KubeConfig,
    client: Client,
    api_server: Vec<IpAddr>,
    out: mpsc::Sender<Update>,
    status: Arc<Mutex<KubeStatus>>,
    mut queries: mpsc::Receiver<ExplainQuery>,
) {
    let wc = watcher::Config::default();
    // One task per watcher, forwarding into one channel: the loop below
    // drains whatever is waiting as one batch, so a burst costs one update.
    let (tx, mut rx) = mpsc::channel::<(std::time::Instant, Ev)>(4096);
    // Held for the life of the loop: they end with it.
    let _forwarders = [
        forward(
            watcher(Api::<Service>::all(client.clone()), wc.clone()),
            Ev::Svc,
            tx.clone(),
        ),
        forward(
            watcher(Api::<EndpointSlice>::all(client.clone()), wc.clone()),
            Ev::Slice,
            tx.clone(),
        ),
        forward(
            watcher(
                Api::<Node>::all(client.clone()),
                wc.fields(&format!("metadata.name={}", k.node_name)),
            ),
            Ev::Node,
            tx,
        ),
    ];
    let mut snap = Snapshot {
        api_server,
        ..Default::default()
    };
    let (mut ss, mut es, mut ns) = (Store::default(), Store::default(), Store::default());
    let mut nodes: BTreeMap<Key, NodeInfo> = BTreeMap::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut last_error: Option<String> = None;
    let mut warned_no_node = false;
    let mut tracker = Tracker::default();
    let mut published = false;
    let mut api_servers_sent = BTreeSet::new();
    let mut facts_sent: Option<super::model::NodeFacts> = None;
    loop {
        let first = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
            Some((key, reply)) = queries.recv() => {
                let uid = snap.services.get(&key).map(|s| s.uid.as_str()).unwrap_or_default();
                let sharing = tracker.sharing_view(uid);
                let _ = reply.send(super::explain::explain(&snap, &k, &key, &sharing));
                continue;
            }
        };
        let since = first.0;
        let mut batch = vec![first.1];
        while let Ok((_, ev)) = rx.try_recv() {
            batch.push(ev);
        }
        tracing::trace!(events = batch.len(), "watch batch");
        let mut full = false;
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        for ev in batch {
            let r = match ev {
                Ev::Svc(r) => r.map(|e| match ss.apply(&mut snap.services, e, service_info) {
                    Change::Nothing => {}
                    Change::All => full = true,
                    Change::One(key, _) => {
                        full |= touches_forbidden(&key);
                        touched.insert(key);
                    }
                }),
                Ev::Slice(r) => {
                    r.map(
                        |e| match es.apply(&mut snap.slices, e, |s| Some(slice_info(s))) {
                            Change::Nothing => {}
                            Change::All => full = true,
                            Change::One(key, old) => {
                                let new = snap.slices.get(&key);
                                for svc in tracker.slice_changed(&key, old.as_ref(), new) {
                                    full |= touches_forbidden(&svc);
                                    touched.insert(svc);
                                }
                            }
                        },
                    )
                }
                Ev::Node(r) => r.map(|e| {
                    if !matches!(
                        ns.apply(&mut nodes, e, |n| Some(node_info(n))),
                        Change::Nothing
                    ) {
                        full = true;
                    }
                }),
            };
            match r {
                Ok(()) => {
                    if last_error.take().is_some() {
                        info!("Kubernetes API reachable again");
                        status.lock().unwrap().last_error = None;
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        warn!("Kubernetes API: {msg}; current announcements stay until it is back");
                    }
                    status.lock().unwrap().last_error = Some(msg.clone());
                    last_error = Some(msg);
                }
            }
        }
        if !(ss.synced && es.synced && ns.synced) || (!full && touched.is_empty() && published) {
            continue;
        }
        let t = std::time::Instant::now();
        // default/kubernetes changing makes a full pass (it changes the
        // forbidden addresses), so only a full pass can change the API list.
        let full_pass = full || !published;
        let delta = if full_pass {
            snap.node = nodes.values().next().cloned();
            if snap.node.is_none() && !warned_no_node {
                warned_no_node = true;
                warn!(node = %k.node_name, "no Node object by this name: Local-policy Services and this node's own addresses cannot be matched; check kubernetes.node_name");
            }
            tracker.reset(&snap, &k)
        } else {
            tracker.update(&snap, &k, touched.iter())
        };
        let intent = tracker.intent();
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            changed = delta.len(),
            full,
            "intent updated"
        );
        record_pass(&status, &snap, &tracker);
        report(&client, intent, &mut reported);
        let update = if !published {
            published = true;
            Some(Update::Full(intent.routes.clone()))
        } else if delta.is_empty() {
            None
        } else {
            Some(Update::Delta(delta, since))
        };
        // After the intent: the first thing the daemon hears is the Full
        // that opens the readiness barrier.
        let apis = full_pass
            .then(|| super::intent::api_endpoints(&snap))
            .filter(|a| *a != api_servers_sent)
            .map(|a| {
                api_servers_sent = a.clone();
                Update::ApiServers(a)
            });
        let facts = full_pass
            .then(|| {
                let n = snap.node.clone().unwrap_or_default();
                super::model::NodeFacts {
                    labels: n.labels,
                    unschedulable: n.unschedulable,
                    taints: n.taints,
                }
            })
            .filter(|f| facts_sent.as_ref() != Some(f))
            .map(|f| {
                facts_sent = Some(f.clone());
                Update::Node(f)
            });
        for u in update.into_iter().chain(apis).chain(facts) {
            if out.send(u).await.is_err() {
                return;
            }
        }
    }
}

/// What a pass leaves for `vipd status` and the metrics.
fn record_pass(status: &Mutex<KubeStatus>, snap: &Snapshot, tracker: &Tracker) {
    let intent = tracker.intent();
    let mut st = status.lock().unwrap();
    if !st.synced {
        info!(
            services = snap.services.len(),
            endpoint_slices = snap.slices.len(),
            vips = intent.routes.len(),
            "Kubernetes caches synced"
        );
    }
    st.synced = true;
    st.services = snap.services.len();
    st.endpoint_slices = snap.slices.len();
    st.vips = intent.routes.len();
    st.services_announced = tracker.services_announced();
    if st.refused != *tracker.refused_by_kind() {
        st.refused = tracker.refused_by_kind().clone();
    }
}

fn forward<K, S>(
    stream: S,
    wrap: fn(Result<watcher::Event<K>, watcher::Error>) -> Ev,
    tx: mpsc::Sender<(std::time::Instant, Ev)>,
) -> crate::task::Owned<()>
where
    S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    crate::task::Owned::spawn(async move {
        let mut s = Box::pin(stream.default_backoff());
        while let Some(item) = s.next().await {
            if tx
                .send((std::time::Instant::now(), wrap(item)))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Logs and records as Kubernetes Events the refusals and bad annotations
/// not reported before (each once, until it goes away and comes back).
fn report(client: &Client, intent: &Intent, reported: &mut BTreeSet<String>) {
    let mut now = BTreeSet::new();
    for r in &intent.refused {
        let id = format!("{}|{}|{}", r.uid, r.address, r.reason);
        if !reported.contains(&id) {
            warn!(service = %r.service, address = %r.address, "VIP refused: {}", r.reason);
            post(
                client,
                r.service.clone(),
                r.uid.clone(),
                r.kind.event_reason(),
                format!("vipd will not announce {}: {}", r.address, r.reason),
            );
        }
        now.insert(id);
    }
    for b in &intent.bad_annotations {
        let id = format!("{}|{}|{}", b.uid, b.annotation, b.reason);
        if !reported.contains(&id) {
            warn!(service = %b.service, annotation = %b.annotation, "attribute value dropped: {}", b.reason);
            post(
                client,
                b.service.clone(),
                b.uid.clone(),
                "AttributeNotAllowed",
                format!(
                    "{}: {}; dropped, the Service's other attributes apply",
                    b.annotation, b.reason
                ),
            );
        }
        now.insert(id);
    }
    *reported = now;
}

fn post(client: &Client, service: Key, uid: Uid, reason: &'static str, message: String) {
    let client = client.clone();
    tokio::spawn(super::events::post(
        client,
        service,
        uid,
        reason.into(),
        message,
        true,
    ));
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
}
