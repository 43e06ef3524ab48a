//! A stand-in for the parts of the Kubernetes API server vipd uses, so that
//! the real kube-rs client code runs against it through an ordinary
//! kubeconfig (`http://ADDR:PORT`).
//!
//! Implemented (and nothing else; anything else answers 404):
//!
//! - `GET /api/v1/services`, `GET /apis/discovery.k8s.io/v1/endpointslices`,
//!   `GET /api/v1/nodes`: list, with `limit` and `continue` paging (every
//!   page from the first page's snapshot, at its resourceVersion), the
//!   list's `resourceVersion`, and `fieldSelector=metadata.name=NAME`.
//!   `labelSelector` is not implemented.
//! - Streaming lists: a watch with `sendInitialEvents=true` gets every
//!   object as `ADDED`, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end`, then the watch; or, after
//!   [`StandIn::set_watch_list`] `(false)`, 422 Invalid as a server
//!   without the WatchList feature gate answers.
//! - The same paths with `watch=true`: a chunked stream of JSON watch
//!   events (`ADDED`, `MODIFIED`, `DELETED`) after `resourceVersion`,
//!   `BOOKMARK` events every 60 s (or as set) when `allowWatchBookmarks=true`, the end
//!   of the stream after `timeoutSeconds`, and an `ERROR` event with a
//!   410 Expired `Status` when the requested version is older than the
//!   history kept (see [`StandIn::expire_history`]).
//! - Leases: create (POST, 409 AlreadyExists), get, update (PUT, 409 on a
//!   stale resourceVersion); see `api.rs` for the paths and discovery.
//! - Objects and their status subresource: PUT, and PATCH as a JSON merge
//!   patch; a stale `metadata.resourceVersion` in either is 409 Conflict.
//!   Creates and updates are compare-and-swap, as the real server's
//!   storage: of two racing, one wins; an update without a
//!   resourceVersion is made again from a fresh read, so both land.
//!   Every write is recorded with the client's address
//!   ([`StandIn::writes`]), so a test can audit every status ever written
//!   and by whom.
//! - Events (core/v1): create (POST; 409 AlreadyExists for a name taken),
//!   list (all namespaces or one, `fieldSelector=source=COMPONENT`), get,
//!   and merge PATCH ([`StandIn::event_writes`] counts creates and patches).
//!
//! One resourceVersion counter serves every kind, as in etcd. Objects are
//! JSON as given, with `metadata.uid` and `metadata.resourceVersion` filled
//! in by the stand-in.
//!
//! The tests' control interface is this module's Rust API: [`StandIn::put`],
//! [`StandIn::delete`], [`StandIn::hold`] / [`StandIn::release`] (hold back
//! every list and watch of a kind, e.g. deliver EndpointSlices long before
//! Services), [`StandIn::expire_history`] (the next watch from an old version
//! gets 410 Gone), [`StandIn::set_down`] (connections are dropped without an
//! answer, as if the server were unreachable), [`StandIn::set_blackhole`],
//! [`StandIn::set_partitioned`] (one client's requests hang while others
//! carry on), [`StandIn::set_partitioned_kind`] (the same for one kind only,
//! say Leases) and [`StandIn::events`].

#![allow(dead_code)]

mod api;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    /// `coordination.k8s.io/v1` Lease.
    Lease,
}

impl Kind {
    fn of(obj: &Value) -> Kind {
        match obj["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            Some("Lease") => Kind::Lease,
            other => panic!("the stand-in does not store {other:?}"),
        }
    }
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("ServiceList", "v1"),
            Kind::EndpointSlice => ("EndpointSliceList", "discovery.k8s.io/v1"),
            Kind::Node => ("NodeList", "v1"),
            Kind::Lease => ("LeaseList", "coordination.k8s.io/v1"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Lease => "Lease",
        }
    }
}

/// One write a client made through the API (PUT or PATCH), as stored.
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// Through the status subresource.
    pub status: bool,
    pub object: Value,
    /// The client's address.
    pub client: std::net::IpAddr,
}

#[derive(Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    typ: &'static str,
    obj: Value,
}

impl State {
    fn silent_to(&self, client: std::net::IpAddr) -> bool {
        self.blackhole || self.partitioned.contains(&client)
    }
}

struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Each object as JSON text, encoded once when stored: a list of
    /// 50,000 objects is served from shared text, not deep copies, so the
    /// stand-in's share of a client's cold start stays small.
    encoded: BTreeMap<(Kind, String, String), Arc<str>>,
    history: Vec<Change>,
    /// The oldest change kept: a watch needs every change after its
    /// version, so one from before `oldest - 1` gets 410.
    oldest: u64,
    /// Paged lists in progress: each page comes from the first page's
    /// snapshot, at its resourceVersion, as a real server serves them.
    pages: BTreeMap<u64, (u64, Vec<Arc<str>>)>,
    next_snapshot: u64,
    /// How often an open watch gets a BOOKMARK (a real server: about once
    /// a minute).
    bookmark_every: Duration,
    /// A pause between a write's read and its store (default none), so a
    /// test can make two clients' writes overlap.
    write_delay: Duration,
    events: Vec<Value>,
    event_writes: u64,
    /// Event creates and patches asked, stored or not (409).
    event_asks: u64,
    down: bool,
    /// Accepts connections and never answers; open watches go silent.
    blackhole: bool,
    /// The same for connections from these client addresses only.
    partitioned: std::collections::BTreeSet<std::net::IpAddr>,
    /// Requests of one kind from one client are never answered.
    partitioned_kinds: std::collections::BTreeSet<(std::net::IpAddr, Kind)>,
    requests: u64,
    gone: u64,
    /// Complete lists served (the last page), per kind.
    lists: BTreeMap<Kind, u64>,
    /// Time spent serving list pages (building and encoding them).
    list_time: Duration,
    /// Whether a watch may ask for its initial list as events
    /// (`sendInitialEvents`, WatchList); without, such a watch is refused
    /// as a server without the feature gate refuses it.
    watch_list: bool,
    /// Initial lists served as watch events.
    streamed: u64,
    /// Every PUT and PATCH a client made, in order.
    writes: Vec<Write>,
}

#[derive(Clone)]
pub struct StandIn {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    held: Arc<Mutex<BTreeMap<Kind, watch::Sender<bool>>>>,
    /// Bumped by set_down: open watches end.
    epoch: watch::Sender<u64>,
    pub addr: SocketAddr,
}

fn key(obj: &Value) -> (Kind, String, String) {
    let m = &obj["metadata"];
    (
        Kind::of(obj),
        m["namespace"].as_str().unwrap_or("").to_string(),
        m["name"].as_str().expect("metadata.name").to_string(),
    )
}

impl StandIn {
    /// Serves on `addr` from a thread of its own (inside network namespace
    /// `netns` where given), for as long as the process lives.
    pub fn start(addr: SocketAddr, netns: Option<&str>) -> StandIn {
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = netns.map(String::from);
        std::thread::spawn(move || {
            if let Some(ns) = netns {
                let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
                use std::os::fd::AsRawFd;
                assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("stand-in bind");
                let (changes, _) = broadcast::channel(1 << 16);
                let mut held = BTreeMap::new();
                for k in [Kind::Service, Kind::EndpointSlice, Kind::Node, Kind::Lease] {
                    held.insert(k, watch::channel(false).0);
                }
                let s = StandIn {
                    state: Arc::new(Mutex::new(State {
                        rv: 1,
                        uid: 0,
                        objects: BTreeMap::new(),
                        encoded: BTreeMap::new(),
                        history: vec![],
                        oldest: 0,
                        events: vec![],
                        event_writes: 0,
                        event_asks: 0,
                        down: false,
                        blackhole: false,
                        partitioned: Default::default(),
                        partitioned_kinds: Default::default(),
                        requests: 0,
                        gone: 0,
                        lists: BTreeMap::new(),
                        list_time: Duration::ZERO,
                        watch_list: true,
                        streamed: 0,
                        writes: vec![],
                        pages: BTreeMap::new(),
                        next_snapshot: 0,
                        bookmark_every: Duration::from_secs(60),
                        write_delay: Duration::ZERO,
                    })),
                    changes,
                    held: Arc::new(Mutex::new(held)),
                    epoch: watch::channel(0).0,
                    addr: listener.local_addr().unwrap(),
                };
                tx.send(s.clone()).unwrap();
                loop {
                    let Ok((sock, peer)) = listener.accept().await else {
                        continue;
                    };
                    let client = peer.ip().to_canonical();
                    if s.state.lock().unwrap().down {
                        drop(sock);
                        continue;
                    }
                    if s.state.lock().unwrap().silent_to(client) {
                        // Accepted, then silence until the black hole ends.
                        let state = s.state.clone();
                        tokio::spawn(async move {
                            let _held = sock;
                            while state.lock().unwrap().silent_to(client) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        });
                        continue;
                    }
                    let s2 = s.clone();
                    let state = s.state.clone();
                    let mut epoch = s.epoch.subscribe();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let s3 = s2.clone();
                            async move { Ok::<_, Infallible>(s3.handle(req, client).await) }
                        });
                        let io = hyper_util::rt::TokioIo::new(sock);
                        let conn =
                            hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
                        // Going down drops every open connection without an
                        // answer: unreachable, not a 503 (which clients retry
                        // internally without ever reporting it).
                        let down = async {
                            loop {
                                if epoch.changed().await.is_err() {
                                    return;
                                }
                                if state.lock().unwrap().down {
                                    return;
                                }
                            }
                        };
                        tokio::select! {
                            _ = conn => {}
                            _ = down => {}
                        }
                    });
                }
            });
        });
        rx.recv().unwrap()
    }

    /// A kubeconfig pointing at the stand-in.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{}\nusers:\n- name: vipd\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: vipd\ncurrent-context: standin\n",
            self.addr
        )
    }

    /// Creates or replaces an object; returns it as stored.
    pub fn put(&self, obj: Value) -> Value {
        self.put_if(obj, |_| true)
            .unwrap_or_else(|_| unreachable!("no precondition"))
    }

    /// `put` only if `ok` accepts what is stored under that key now
    /// (`None`: nothing), checked under the same lock as the write, as the
    /// real server's storage does; otherwise `Err` with what is there. A
    /// check and a write under two locks let two clients both win: two
    /// creates of one Lease, or two updates from one resourceVersion.
    fn put_if(
        &self,
        mut obj: Value,
        ok: impl FnOnce(Option<&Value>) -> bool,
    ) -> Result<Value, Option<Value>> {
        let k = key(&obj);
        let mut st = self.state.lock().unwrap();
        let existing = st.objects.get(&k).cloned();
        if !ok(existing.as_ref()) {
            return Err(existing);
        }
        st.rv += 1;
        let rv = st.rv;
        let uid = match existing
            .as_ref()
            .and_then(|e| e["metadata"]["uid"].as_str())
        {
            Some(u) => u.to_string(),
            None => match obj["metadata"]["uid"].as_str() {
                Some(u) => u.to_string(),
                None => {
                    st.uid += 1;
                    format!("00000000-0000-4000-8000-{:012}", st.uid)
                }
            },
        };
        obj["metadata"]["uid"] = json!(uid);
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] =
                json!(api::timestamp(std::time::SystemTime::now()));
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let typ = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(k.clone(), obj.clone());
        st.encoded.insert(k.clone(), obj.to_string().into());
        let c = Change {
            rv,
            kind: k.0,
            typ,
            obj: obj.clone(),
        };
        st.history.push(c.clone());
        let _ = self.changes.send(c);
        Ok(obj)
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let k = (kind, namespace.to_string(), name.to_string());
        st.encoded.remove(&k);
        let Some(mut obj) = st.objects.remove(&k) else {
            return false;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = Change {
            rv,
            kind,
            typ: "DELETED",
            obj,
        };
        st.history.push(c.clone());
        let _ = self.changes.send(c);
        true
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(kind, namespace.into(), name.into()))
            .cloned()
    }

    /// Holds back every list and watch response of `kind` until released.
    pub fn hold(&self, kind: Kind) {
        self.held.lock().unwrap()[&kind].send_replace(true);
    }
    pub fn release(&self, kind: Kind) {
        self.held.lock().unwrap()[&kind].send_replace(false);
    }

    /// Forgets the change history and ends open watches: clients resuming
    /// from any version they had get 410 Gone and must list again.
    pub fn expire_history(&self) {
        // As etcd compaction: open watches go on; only a watch (re)started
        // from a version before now gets 410.
        let mut st = self.state.lock().unwrap();
        st.history.clear();
        st.oldest = st.rv + 1;
    }

    /// How often open watches get a BOOKMARK (default: every 60 s).
    /// Holds every create and update this long between its read and its
    /// store: two clients racing then overlap for certain.
    pub fn set_write_delay(&self, d: Duration) {
        self.state.lock().unwrap().write_delay = d;
    }
    fn write_pause(&self) {
        let d = self.state.lock().unwrap().write_delay;
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }

    pub fn set_bookmark_interval(&self, every: Duration) {
        self.state.lock().unwrap().bookmark_every = every;
    }

    /// While down, connections are accepted and dropped without an answer,
    /// and open watches end.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
        self.epoch.send_modify(|e| *e += 1);
    }

    /// How many status writes of `kind` clients made (cheaper than
    /// [`StandIn::writes`] to poll).
    pub fn status_writes(&self, kind: Kind) -> usize {
        let st = self.state.lock().unwrap();
        st.writes
            .iter()
            .filter(|w| w.kind == kind && w.status)
            .count()
    }

    /// Every write clients made, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// A black hole: connections are accepted and never answered, open
    /// watches go silent (no events, no bookmarks), until turned off. What
    /// a hung API server or a dead load balancer in front of it looks like:
    /// only the client's own timeouts notice.
    pub fn set_blackhole(&self, on: bool) {
        self.state.lock().unwrap().blackhole = on;
    }

    /// Partitions one client (by its source address) from the server: its
    /// connections, open and new, go silent as in [`StandIn::set_blackhole`]
    /// while every other client carries on.
    pub fn set_partitioned(&self, client: std::net::IpAddr, on: bool) {
        let mut st = self.state.lock().unwrap();
        if on {
            st.partitioned.insert(client);
        } else {
            st.partitioned.remove(&client);
        }
    }

    /// Partitions one client from one kind only (say, Leases): its
    /// requests for that kind are never answered, the rest are.
    pub fn set_partitioned_kind(&self, client: std::net::IpAddr, kind: Kind, on: bool) {
        let mut st = self.state.lock().unwrap();
        if on {
            st.partitioned_kinds.insert((client, kind));
        } else {
            st.partitioned_kinds.remove(&(client, kind));
        }
    }

    /// Events vipd created.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// Event creates and patches that were stored (a 409 writes nothing).
    pub fn event_writes(&self) -> u64 {
        self.state.lock().unwrap().event_writes
    }

    /// Event creates and patches asked, stored or refused.
    pub fn event_asks(&self) -> u64 {
        self.state.lock().unwrap().event_asks
    }

    /// Complete lists of `kind` served so far (counted at their last page).
    pub fn lists_served(&self, kind: Kind) -> u64 {
        self.state
            .lock()
            .unwrap()
            .lists
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    /// 410 Gone answers sent so far.
    /// The time spent serving list pages so far: the stand-in's share of a
    /// client's cold start.
    pub fn list_time(&self) -> Duration {
        self.state.lock().unwrap().list_time
    }

    /// A large cluster for the benchmarks and the memory test: `n`
    /// LoadBalancer Services `svc-I` (100.64.0.0 + I; every other one dual
    /// stack, 2001:db8:64:: + I) in the namespace `ns(I)` names, each with an
    /// EndpointSlice of 10 ready endpoints spread over 50 nodes. Returns
    /// the VIPs (IPv4, IPv6).
    pub fn put_scale(&self, n: u32, ns: fn(u32) -> &'static str) -> (usize, usize) {
        let nodes: Vec<String> = (0..50).map(|i| format!("node-{i}")).collect();
        let v6_base = u128::from("2001:db8:64::".parse::<std::net::Ipv6Addr>().unwrap());
        for i in 0..n {
            let ip4 = std::net::Ipv4Addr::from(0x6440_0000 + i).to_string();
            let ip6 = std::net::Ipv6Addr::from(v6_base + u128::from(i)).to_string();
            let ips: Vec<&str> = if i % 2 == 0 {
                vec![&ip4, &ip6]
            } else {
                vec![&ip4]
            };
            let eps: Vec<(&str, bool)> = (0..10)
                .map(|j| (nodes[(i as usize + j) % 50].as_str(), true))
                .collect();
            let (svc, slice) = (format!("svc-{i}"), format!("svc-{i}-x"));
            self.put(obj::service(ns(i), &svc, &ips, false));
            self.put(obj::slice(ns(i), &slice, &svc, &eps));
        }
        (n as usize, n.div_ceil(2) as usize)
    }

    /// Serve streaming lists (`sendInitialEvents`, the default) or refuse
    /// them with 422, as a server without the WatchList feature gate does.
    pub fn set_watch_list(&self, on: bool) {
        self.state.lock().unwrap().watch_list = on;
    }

    /// Initial lists served as watch events (streaming lists).
    pub fn streamed(&self) -> u64 {
        self.state.lock().unwrap().streamed
    }

    /// Lists served page by page (complete ones).
    pub fn lists_paged(&self) -> u64 {
        let st = self.state.lock().unwrap();
        st.lists.values().sum::<u64>() - st.streamed
    }

    pub fn gone_sent(&self) -> u64 {
        self.state.lock().unwrap().gone
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    async fn wait_released(&self, kind: Kind) {
        let mut rx = self.held.lock().unwrap()[&kind].subscribe();
        let _ = rx.wait_for(|h| !*h).await;
    }

    async fn handle(&self, req: Request<Incoming>, client: std::net::IpAddr) -> Response<BoxBody> {
        let blackhole = {
            let mut st = self.state.lock().unwrap();
            st.requests += 1;
            if st.down {
                return status(StatusCode::SERVICE_UNAVAILABLE, "down");
            }
            st.silent_to(client)
        };
        if blackhole {
            // A request on a connection opened before: never answered.
            std::future::pending::<()>().await;
        }
        let path = req.uri().path().to_string();
        let q: BTreeMap<String, String> =
            req.uri().query().map(url_decode_pairs).unwrap_or_default();
        let method = req.method().clone();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(route) = api::route(&path) else {
            return status(StatusCode::NOT_FOUND, "not implemented by the stand-in");
        };
        let agent = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // kubectl and the tests' raw requests are the tests' clients, not
        // vipd: what they ask is not for the RBAC audit.
        if !agent.starts_with("kubectl") && !agent.starts_with(TEST_AGENT) {
            let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
            if let Some(used) = api::access(&route, &method, watch) {
                record_access(used);
            }
        }
        if let api::Route::Collection { kind, .. } | api::Route::Object { kind, .. } = &route {
            let silent = self
                .state
                .lock()
                .unwrap()
                .partitioned_kinds
                .contains(&(client, *kind));
            if silent {
                std::future::pending::<()>().await;
            }
        }
        let body = if method == hyper::Method::GET {
            Bytes::new()
        } else {
            req.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default()
        };
        use hyper::Method as M;
        match (route, method) {
            (api::Route::Discovery(d), M::GET) => json_response(StatusCode::OK, &d),
            (api::Route::Namespace(name), M::GET) => {
                // A namespace exists while something lives in it (and the
                // two every cluster has).
                let st = self.state.lock().unwrap();
                let exists = ["default", "kube-system"].contains(&name.as_str())
                    || st.objects.keys().any(|(_, n, _)| *n == name)
                    || st
                        .events
                        .iter()
                        .any(|e| e["metadata"]["namespace"] == name.as_str());
                if !exists {
                    let msg = format!("namespaces \"{name}\" not found");
                    let mut e = api::status_error(404, "NotFound", &msg, Kind::Node, &name);
                    e["details"]["kind"] = json!("namespaces");
                    return json_response(StatusCode::NOT_FOUND, &e);
                }
                let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                                "status": {"phase": "Active"}});
                json_response(StatusCode::OK, &ns)
            }
            (
                api::Route::Events {
                    ns: Some(ns),
                    name: None,
                },
                M::POST,
            ) => self.create_event(&ns, &body),
            (api::Route::Events { ns, name: None }, M::GET) => {
                let source = q
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("source="));
                self.list_events(ns.as_deref(), source)
            }
            (
                api::Route::Events {
                    ns: Some(ns),
                    name: Some(name),
                },
                M::GET,
            ) => match self.event(&ns, &name) {
                Some(e) => json_response(StatusCode::OK, &e),
                None => event_not_found(&name),
            },
            (
                api::Route::Events {
                    ns: Some(ns),
                    name: Some(name),
                },
                M::PATCH,
            ) => self.patch_event(&ns, &name, &body),
            (
                api::Route::Collection {
                    kind: Kind::Lease,
                    ns: Some(ns),
                },
                M::POST,
            ) => self.create(Kind::Lease, &ns, &body),
            (api::Route::Collection { kind, ns }, M::GET) => {
                self.wait_released(kind).await;
                let name_filter = q
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .map(String::from);
                if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                    return self.watch(kind, &q, ns, name_filter, client);
                }
                let t = std::time::Instant::now();
                let r = self.list(kind, &q, ns.as_deref(), name_filter.as_deref());
                self.state.lock().unwrap().list_time += t.elapsed();
                r
            }
            (api::Route::Object { kind, ns, name, .. }, M::GET) => {
                self.wait_released(kind).await;
                match self.get(kind, &ns, &name) {
                    Some(o) => json_response(StatusCode::OK, &o),
                    None => not_found(kind, &name),
                }
            }
            (
                api::Route::Object {
                    kind,
                    ns,
                    name,
                    status: sub,
                },
                M::PUT,
            ) => self.write(kind, (&ns, &name, client), sub, &body, None),
            (
                api::Route::Object {
                    kind,
                    ns,
                    name,
                    status: sub,
                },
                M::PATCH,
            ) => {
                if !content_type.contains("merge-patch") {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "the stand-in applies merge and strategic merge patches only",
                    );
                }
                self.write(kind, (&ns, &name, client), sub, &body, Some(()))
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "not implemented by the stand-in",
            ),
        }
    }

    /// POST of a new object: 201 with it as stored, 409 AlreadyExists if
    /// one by that name is there.
    fn create(&self, kind: Kind, ns: &str, body: &[u8]) -> Response<BoxBody> {
        let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "not JSON");
        };
        let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
            return status(StatusCode::BAD_REQUEST, "metadata.name is required");
        };
        obj["metadata"]["namespace"] = json!(ns);
        obj["kind"] = json!(kind.name());
        obj["apiVersion"] = json!(kind.list_kind().1);
        self.write_pause();
        match self.put_if(obj, |there| there.is_none()) {
            Ok(stored) => json_response(StatusCode::CREATED, &stored),
            Err(_) => {
                let msg = format!("{} \"{name}\" already exists", api::plural(kind));
                json_response(
                    StatusCode::CONFLICT,
                    &api::status_error(409, "AlreadyExists", &msg, kind, &name),
                )
            }
        }
    }

    fn create_event(&self, ns: &str, body: &[u8]) -> Response<BoxBody> {
        let Ok(mut ev) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "not JSON");
        };
        let mut st = self.state.lock().unwrap();
        st.event_asks += 1;
        ev["metadata"]["namespace"] = json!(ns);
        if let Some(name) = ev["metadata"]["name"].as_str() {
            if find_event(&st.events, ns, name).is_some() {
                let msg = format!("events \"{name}\" already exists");
                let mut e = api::status_error(409, "AlreadyExists", &msg, Kind::Node, name);
                e["details"]["kind"] = json!("events");
                return json_response(StatusCode::CONFLICT, &e);
            }
        }
        st.event_writes += 1;
        st.rv += 1;
        if ev["metadata"]["name"].as_str().is_none() {
            let base = ev["metadata"]["generateName"]
                .as_str()
                .unwrap_or("event-")
                .to_string();
            ev["metadata"]["name"] = json!(format!("{base}{}", st.rv));
        }
        ev["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.events.push(ev.clone());
        json_response(StatusCode::CREATED, &ev)
    }

    fn event(&self, ns: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        find_event(&st.events, ns, name).map(|i| st.events[i].clone())
    }

    fn list_events(&self, ns: Option<&str>, source: Option<&str>) -> Response<BoxBody> {
        let st = self.state.lock().unwrap();
        let items: Vec<&Value> = (st.events.iter())
            .filter(|e| ns.is_none_or(|n| e["metadata"]["namespace"].as_str() == Some(n)))
            .filter(|e| source.is_none_or(|s| e["source"]["component"].as_str() == Some(s)))
            .collect();
        let body = json!({"kind": "EventList", "apiVersion": "v1",
                          "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        json_response(StatusCode::OK, &body)
    }

    /// A merge patch of one Event; a stale resourceVersion in it is 409.
    fn patch_event(&self, ns: &str, name: &str, body: &[u8]) -> Response<BoxBody> {
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "not JSON");
        };
        let mut st = self.state.lock().unwrap();
        st.event_asks += 1;
        let Some(i) = find_event(&st.events, ns, name) else {
            return event_not_found(name);
        };
        let wanted = patch["metadata"]["resourceVersion"].as_str();
        if wanted.is_some_and(|rv| st.events[i]["metadata"]["resourceVersion"].as_str() != Some(rv))
        {
            let msg = format!("Operation cannot be fulfilled on events \"{name}\": the object has been modified; please apply your changes to the latest version and try again");
            return json_response(
                StatusCode::CONFLICT,
                &api::status_error(409, "Conflict", &msg, Kind::Node, name),
            );
        }
        st.rv += 1;
        st.event_writes += 1;
        let rv = st.rv.to_string();
        let ev = &mut st.events[i];
        api::merge_patch(ev, &patch);
        ev["metadata"]["resourceVersion"] = json!(rv);
        json_response(StatusCode::OK, &ev.clone())
    }

    /// PUT (`patch` None) or PATCH of one object, or of its status alone:
    /// a stale `metadata.resourceVersion` is a 409 Conflict, as with a real
    /// server; the status subresource changes only `status`, the object
    /// itself everything but `status`. As the real server does, the write
    /// is stored only if nothing changed since the read it was made from;
    /// one without a resourceVersion is then made again from a new read.
    fn write(
        &self,
        kind: Kind,
        (ns, name, client): (&str, &str, std::net::IpAddr),
        status_only: bool,
        body: &[u8],
        patch: Option<()>,
    ) -> Response<BoxBody> {
        let Ok(given) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "not JSON");
        };
        let conflict = || {
            let msg = format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                api::plural(kind)
            );
            json_response(
                StatusCode::CONFLICT,
                &api::status_error(409, "Conflict", &msg, kind, name),
            )
        };
        let rv_of = |o: &Value| o["metadata"]["resourceVersion"].as_str().map(String::from);
        let wanted = given["metadata"]["resourceVersion"].as_str();
        let stored = loop {
            let Some(current) = self.get(kind, ns, name) else {
                return not_found(kind, name);
            };
            let read_at = rv_of(&current);
            if wanted.is_some_and(|rv| Some(rv) != read_at.as_deref()) {
                return conflict();
            }
            let Some(next) = merged(kind, name, status_only, &given, patch, &current) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "metadata.name does not match the path",
                );
            };
            self.write_pause();
            match self.put_if(next, |now| now.and_then(rv_of) == read_at) {
                Ok(s) => break s,
                Err(Some(_)) if wanted.is_none() => continue,
                Err(Some(_)) => return conflict(),
                Err(None) => return not_found(kind, name),
            }
        };
        self.state.lock().unwrap().writes.push(Write {
            kind,
            namespace: ns.to_string(),
            name: name.to_string(),
            status: status_only,
            object: stored.clone(),
            client,
        });
        json_response(StatusCode::OK, &stored)
    }

    fn list(
        &self,
        kind: Kind,
        q: &BTreeMap<String, String>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Response<BoxBody> {
        let mut st = self.state.lock().unwrap();
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        // A continue token is SNAPSHOT-OFFSET; the first page takes the
        // snapshot every later page is served from.
        let token = q.get("continue").filter(|c| !c.is_empty());
        let (id, start): (u64, usize) = match token.map(|c| c.split_once('-')) {
            None => {
                let first = (kind, String::new(), String::new());
                let items: Vec<Arc<str>> = (st.encoded.range(first..))
                    .take_while(|((k, _, _), _)| *k == kind)
                    .filter(|((_, o, n), _)| {
                        ns.is_none_or(|x| x == o) && name.is_none_or(|x| x == n)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                st.next_snapshot += 1;
                let id = st.next_snapshot;
                let rv = st.rv;
                st.pages.insert(id, (rv, items));
                // Abandoned paged lists are not kept for ever.
                while st.pages.len() > 64 {
                    st.pages.pop_first();
                }
                (id, 0)
            }
            Some(Some((a, b))) if a.parse::<u64>().is_ok() && b.parse::<usize>().is_ok() => {
                (a.parse().unwrap(), b.parse().unwrap())
            }
            Some(_) => return status(StatusCode::BAD_REQUEST, "invalid continue token"),
        };
        let Some((rv, items)) = st.pages.get(&id) else {
            return status(
                StatusCode::GONE,
                "the provided continue parameter is too old",
            );
        };
        let end = start.saturating_add(limit).min(items.len());
        let (lk, api) = kind.list_kind();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        let mut body = String::new();
        for (i, item) in items[start.min(items.len())..end].iter().enumerate() {
            body.push_str(if i == 0 { "" } else { "," });
            body.push_str(item);
        }
        let more = end < items.len();
        if more {
            meta["continue"] = json!(format!("{id}-{end}"));
        } else {
            st.pages.remove(&id);
            *st.lists.entry(kind).or_default() += 1;
        }
        let head = json!({"kind": lk, "apiVersion": api, "metadata": meta}).to_string();
        // The head without its closing brace, then the items.
        let body = format!("{},\"items\":[{body}]}}", &head[..head.len() - 1]);
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap()
    }

    fn watch(
        &self,
        kind: Kind,
        q: &BTreeMap<String, String>,
        ns: Option<String>,
        name: Option<String>,
        client: std::net::IpAddr,
    ) -> Response<BoxBody> {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout: u64 = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        // A streaming list (WatchList): every object as it is now, then a
        // bookmark marking the end, then the watch goes on.
        let initial = q.get("sendInitialEvents").map(String::as_str) == Some("true");
        if initial && !self.state.lock().unwrap().watch_list {
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &api::initial_events_forbidden(),
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        let mut live = self.changes.subscribe();
        let (backlog, expired, now, bookmark_every) = {
            let mut st = self.state.lock().unwrap();
            let expired = !initial && from != 0 && from + 1 < st.oldest;
            st.gone += expired as u64;
            let backlog: Vec<Change> = if initial {
                // Sent from the encoded text below, not from these.
                vec![]
            } else {
                (st.history.iter())
                    .filter(|c| c.rv > from && c.kind == kind)
                    .cloned()
                    .collect()
            };
            (backlog, expired, st.rv, st.bookmark_every)
        };
        // A streamed list: the objects' encoded text in frames of about
        // 256 KiB, matched by namespace and name as the watch matches them.
        let frames: Vec<Bytes> = if initial {
            let t = std::time::Instant::now();
            let mut st = self.state.lock().unwrap();
            let first = (kind, String::new(), String::new());
            let mut frames = vec![];
            let mut frame = String::new();
            let objects = (st.encoded.range(first..)).take_while(|((k, _, _), _)| *k == kind);
            for ((_, o, n), text) in objects {
                if ns.as_deref().is_some_and(|x| x != o) || name.as_deref().is_some_and(|x| x != n)
                {
                    continue;
                }
                frame.push_str("{\"type\":\"ADDED\",\"object\":");
                frame.push_str(text);
                frame.push_str("}\n");
                if frame.len() > 256 << 10 {
                    frames.push(Bytes::from(std::mem::take(&mut frame)));
                }
            }
            frames.push(Bytes::from(frame));
            st.list_time += t.elapsed();
            frames
        } else {
            vec![]
        };
        let mut epoch = self.epoch.subscribe();
        let started = *epoch.borrow_and_update();
        let matches = move |c: &Change| {
            c.kind == kind
                && ns
                    .as_deref()
                    .is_none_or(|n| c.obj["metadata"]["namespace"].as_str() == Some(n))
                && name
                    .as_deref()
                    .is_none_or(|n| c.obj["metadata"]["name"].as_str() == Some(n))
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            // "type" before "object", as the real server writes a watch
            // event (a Go struct's field order); a client may rely on it.
            let line = |v: Value| {
                let typ = serde_json::to_string(&v["type"]).unwrap();
                let obj = serde_json::to_string(&v["object"]).unwrap();
                Bytes::from(format!("{{\"type\":{typ},\"object\":{obj}}}\n"))
            };
            if expired {
                let _ = tx
                    .send(line(json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}})))
                    .await;
                return;
            }
            // Everything up to `now` is in the backlog or older than `from`;
            // live changes after it follow.
            for c in backlog.iter().filter(|c| matches(c)) {
                if tx
                    .send(line(json!({"type": c.typ, "object": c.obj})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            for f in frames {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
            if initial {
                let end = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": kind.list_kind().1,
                    "metadata": {"resourceVersion": now.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
                if tx.send(line(end)).await.is_err() {
                    return;
                }
                *state.lock().unwrap().lists.entry(kind).or_default() += 1;
                state.lock().unwrap().streamed += 1;
            }
            let mut last = now.max(from);
            let end = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + bookmark_every,
                bookmark_every,
            );
            loop {
                tokio::select! {
                    c = live.recv() => match c {
                        // Nothing goes out once the server is "down", even a
                        // change already queued.
                        Ok(_) if *epoch.borrow() != started => return,
                        Ok(_) if state.lock().unwrap().silent_to(client) => {
                            tx.closed().await;
                            return;
                        }
                        Ok(c) if c.rv > last && matches(&c) => {
                            last = c.rv;
                            if tx.send(line(json!({"type": c.typ, "object": c.obj}))).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        if state.lock().unwrap().silent_to(client) {
                            tx.closed().await;
                            return;
                        }
                        let rv = last.max(from);
                        let b = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": kind.list_kind().1, "metadata": {"resourceVersion": rv.to_string()}}});
                        if tx.send(line(b)).await.is_err() { return; }
                    }
                    _ = tokio::time::sleep_until(end) => return,
                    _ = epoch.changed() => return,
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn find_event(events: &[Value], ns: &str, name: &str) -> Option<usize> {
    events.iter().position(|e| {
        e["metadata"]["namespace"].as_str() == Some(ns)
            && e["metadata"]["name"].as_str() == Some(name)
    })
}

fn event_not_found(name: &str) -> Response<BoxBody> {
    let mut e = api::status_error(
        404,
        "NotFound",
        &format!("events \"{name}\" not found"),
        Kind::Node,
        name,
    );
    e["details"]["kind"] = json!("events");
    json_response(StatusCode::NOT_FOUND, &e)
}

fn json_response(code: StatusCode, v: &Value) -> Response<BoxBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())).boxed())
        .unwrap()
}

/// The object a PUT (`patch` None) or PATCH of `given` makes of `current`:
/// the status subresource changes only `status`, the object itself
/// everything but `status`. `None` when the name is not the path's.
fn merged(
    kind: Kind,
    name: &str,
    status_only: bool,
    given: &Value,
    patch: Option<()>,
    current: &Value,
) -> Option<Value> {
    let mut next = if patch.is_some() {
        let mut n = current.clone();
        api::merge_patch(&mut n, given);
        n
    } else {
        given.clone()
    };
    if next["metadata"]["name"].as_str() != Some(name) {
        return None;
    }
    let keep = next["status"].take();
    if status_only {
        next = current.clone();
        next["status"] = keep;
    } else if current["status"].is_null() {
        // A kind without status (a Lease): none is added.
        if let Some(m) = next.as_object_mut() {
            m.remove("status");
        }
    } else {
        next["status"] = current["status"].clone();
    }
    next["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    next["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
    next["kind"] = json!(kind.name());
    next["apiVersion"] = json!(kind.list_kind().1);
    Some(next)
}

fn not_found(kind: Kind, name: &str) -> Response<BoxBody> {
    let msg = format!("{} \"{name}\" not found", api::plural(kind));
    json_response(
        StatusCode::NOT_FOUND,
        &api::status_error(404, "NotFound", &msg, kind, name),
    )
}

fn status(code: StatusCode, msg: &str) -> Response<BoxBody> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": msg, "code": code.as_u16()}),
    )
}

fn url_decode_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The User-Agent of requests a test makes by hand (not vipd's).
pub const TEST_AGENT: &str = "vipd-e2e-test";

/// Every (API group, resource, verb, object name or `*`) vipd asked for,
/// appended once per process to [`rbac_log`] (in cargo's target/tmp): the
/// suite's RBAC audit (`e2e/manifests.rs`) reads what all tests saw.
pub fn rbac_log() -> Option<String> {
    option_env!("CARGO_TARGET_TMPDIR").map(|d| format!("{d}/rbac-used.log"))
}

fn record_access(a: api::Access) {
    static SEEN: Mutex<std::collections::BTreeSet<api::Access>> =
        Mutex::new(std::collections::BTreeSet::new());
    let Some(path) = rbac_log() else {
        return;
    };
    let mut seen = SEEN.lock().unwrap();
    if !seen.insert(a.clone()) {
        return;
    }
    use std::io::Write as _;
    let line = format!("{}\t{}\t{}\t{}\n", a.0, a.1, a.2, a.3);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Object builders for the tests.
pub mod obj {
    use serde_json::{json, Value};

    pub fn service(ns: &str, name: &str, ips: &[&str], local: bool) -> Value {
        let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                     "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": ingress}}
        })
    }

    /// An EndpointSlice for Service `svc` with (node, ready) endpoints.
    pub fn slice(ns: &str, name: &str, svc: &str, eps: &[(&str, bool)]) -> Value {
        let endpoints: Vec<Value> = eps
            .iter()
            .enumerate()
            .map(|(i, (node, ready))| {
                json!({"addresses": [format!("10.244.0.{}", i + 1)], "nodeName": node,
                       "conditions": {"ready": ready, "serving": ready, "terminating": false}})
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": 8080, "protocol": "TCP"}]
        })
    }

    pub fn node(name: &str, ips: &[&str]) -> Value {
        let addrs: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {"addresses": addrs}})
    }
}
