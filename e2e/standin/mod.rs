//! A stand-in for the parts of the Kubernetes API server vipd uses, so that
//! the real kube-rs client code runs against it through an ordinary
//! kubeconfig (`http://ADDR:PORT`).
//!
//! Implemented (and nothing else; anything else answers 404):
//!
//! - `GET /api/v1/services`, `GET /apis/discovery.k8s.io/v1/endpointslices`,
//!   `GET /api/v1/nodes`: list, with `limit` and `continue` paging, the
//!   list's `resourceVersion`, and `fieldSelector=metadata.name=NAME`.
//!   `labelSelector` is not implemented.
//! - The same paths with `watch=true`: a chunked stream of JSON watch
//!   events (`ADDED`, `MODIFIED`, `DELETED`) after `resourceVersion`,
//!   `BOOKMARK` events every second when `allowWatchBookmarks=true`, the end
//!   of the stream after `timeoutSeconds`, and an `ERROR` event with a
//!   410 Expired `Status` when the requested version is older than the
//!   history kept (see [`StandIn::expire_history`]).
//! - `POST /api/v1/namespaces/NS/events`: stores the Event (201).
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
//! answer, as if the server were unreachable) and [`StandIn::events`].

#![allow(dead_code)]

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
}

impl Kind {
    fn from_path(p: &str) -> Option<Kind> {
        match p {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }
    fn of(obj: &Value) -> Kind {
        match obj["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            other => panic!("the stand-in does not store {other:?}"),
        }
    }
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("ServiceList", "v1"),
            Kind::EndpointSlice => ("EndpointSliceList", "discovery.k8s.io/v1"),
            Kind::Node => ("NodeList", "v1"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

#[derive(Clone)]
struct Change {
    rv: u64,
    kind: Kind,
    typ: &'static str,
    obj: Value,
}

struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    /// Watches from before this version get 410.
    oldest: u64,
    events: Vec<Value>,
    down: bool,
    requests: u64,
    gone: u64,
    /// Complete lists served (the last page), per kind.
    lists: BTreeMap<Kind, u64>,
}

#[derive(Clone)]
pub struct StandIn {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    held: Arc<Mutex<BTreeMap<Kind, watch::Sender<bool>>>>,
    /// Bumped by expire_history and set_down: open watches end.
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
                for k in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
                    held.insert(k, watch::channel(false).0);
                }
                let s = StandIn {
                    state: Arc::new(Mutex::new(State {
                        rv: 1,
                        uid: 0,
                        objects: BTreeMap::new(),
                        history: vec![],
                        oldest: 0,
                        events: vec![],
                        down: false,
                        requests: 0,
                        gone: 0,
                        lists: BTreeMap::new(),
                    })),
                    changes,
                    held: Arc::new(Mutex::new(held)),
                    epoch: watch::channel(0).0,
                    addr: listener.local_addr().unwrap(),
                };
                tx.send(s.clone()).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    if s.state.lock().unwrap().down {
                        drop(sock);
                        continue;
                    }
                    let s2 = s.clone();
                    let state = s.state.clone();
                    let mut epoch = s.epoch.subscribe();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let s3 = s2.clone();
                            async move { Ok::<_, Infallible>(s3.handle(req).await) }
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
    pub fn put(&self, mut obj: Value) -> Value {
        let k = key(&obj);
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let existing = st.objects.get(&k).cloned();
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
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let typ = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert(k.clone(), obj.clone());
        let c = Change {
            rv,
            kind: k.0,
            typ,
            obj: obj.clone(),
        };
        st.history.push(c.clone());
        let _ = self.changes.send(c);
        obj
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(mut obj) = st.objects.remove(&(kind, namespace.into(), name.into())) else {
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
        let mut st = self.state.lock().unwrap();
        st.history.clear();
        st.oldest = st.rv + 1;
        drop(st);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// While down, connections are accepted and dropped without an answer,
    /// and open watches end.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Events vipd created.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
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

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        {
            let mut st = self.state.lock().unwrap();
            st.requests += 1;
            if st.down {
                return status(StatusCode::SERVICE_UNAVAILABLE, "down");
            }
        }
        let path = req.uri().path().to_string();
        let q: BTreeMap<String, String> =
            req.uri().query().map(url_decode_pairs).unwrap_or_default();
        if req.method() == hyper::Method::POST
            && path.starts_with("/api/v1/namespaces/")
            && path.ends_with("/events")
        {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let Ok(mut ev) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "not JSON");
            };
            let mut st = self.state.lock().unwrap();
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
            return json_response(StatusCode::CREATED, &ev);
        }
        let Some(kind) = Kind::from_path(&path) else {
            return status(StatusCode::NOT_FOUND, "not implemented by the stand-in");
        };
        if req.method() != hyper::Method::GET {
            return status(StatusCode::METHOD_NOT_ALLOWED, "read-only");
        }
        self.wait_released(kind).await;
        let name_filter = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(String::from);
        if q.get("watch").map(String::as_str) == Some("true")
            || q.get("watch").map(String::as_str) == Some("1")
        {
            return self.watch(kind, &q, name_filter);
        }
        self.list(kind, &q, name_filter.as_deref())
    }

    fn list(
        &self,
        kind: Kind,
        q: &BTreeMap<String, String>,
        name: Option<&str>,
    ) -> Response<BoxBody> {
        let mut st = self.state.lock().unwrap();
        let items: Vec<&Value> = st
            .objects
            .iter()
            .filter(|((k, _, n), _)| *k == kind && name.is_none_or(|x| x == n))
            .map(|(_, v)| v)
            .collect();
        let start: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let page: Vec<&Value> = items[start.min(items.len())..end].to_vec();
        let (lk, api) = kind.list_kind();
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        let more = end < items.len();
        if more {
            meta["continue"] = json!(end.to_string());
        }
        let body = json!({"kind": lk, "apiVersion": api, "metadata": meta, "items": page});
        if !more {
            *st.lists.entry(kind).or_default() += 1;
        }
        json_response(StatusCode::OK, &body)
    }

    fn watch(
        &self,
        kind: Kind,
        q: &BTreeMap<String, String>,
        name: Option<String>,
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
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        let mut live = self.changes.subscribe();
        let (backlog, expired, now) = {
            let mut st = self.state.lock().unwrap();
            let expired = from != 0 && from < st.oldest;
            st.gone += expired as u64;
            let backlog: Vec<Change> = st
                .history
                .iter()
                .filter(|c| c.rv > from && c.kind == kind)
                .cloned()
                .collect();
            (backlog, expired, st.rv)
        };
        let mut epoch = self.epoch.subscribe();
        let started = *epoch.borrow_and_update();
        let matches = move |c: &Change| {
            c.kind == kind
                && name
                    .as_deref()
                    .is_none_or(|n| c.obj["metadata"]["name"].as_str() == Some(n))
        };
        tokio::spawn(async move {
            let line = |v: Value| {
                let mut b = serde_json::to_vec(&v).unwrap();
                b.push(b'\n');
                Bytes::from(b)
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
            let mut last = now.max(from);
            let end = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    c = live.recv() => match c {
                        // Nothing goes out once the server is "down" or its
                        // history expired, even a change already queued.
                        Ok(_) if *epoch.borrow() != started => return,
                        Ok(c) if c.rv > last && matches(&c) => {
                            last = c.rv;
                            if tx.send(line(json!({"type": c.typ, "object": c.obj}))).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
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

fn json_response(code: StatusCode, v: &Value) -> Response<BoxBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap())).boxed())
        .unwrap()
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
