//! The stand-in's REST surface as a real API server lays it out: which
//! path is what (discovery, a collection, one object, its status), the
//! discovery documents clients such as kubectl read first, JSON merge
//! patches, Status errors, and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::Kind;

/// What a request path names.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Discovery(Value),
    Collection {
        kind: Kind,
        ns: Option<String>,
    },
    Object {
        kind: Kind,
        ns: String,
        name: String,
        status: bool,
    },
    /// `events` (all namespaces: `ns` None), or one Event by `name`.
    Events {
        ns: Option<String>,
        name: Option<String>,
    },
    /// `GET /api/v1/namespaces/NAME` (kubectl asks after a NotFound).
    Namespace(String),
}

fn kind_of(group_version: &str, resource: &str) -> Option<Kind> {
    match (group_version, resource) {
        ("v1", "services") => Some(Kind::Service),
        ("v1", "nodes") => Some(Kind::Node),
        ("discovery.k8s.io/v1", "endpointslices") => Some(Kind::EndpointSlice),
        ("coordination.k8s.io/v1", "leases") => Some(Kind::Lease),
        _ => None,
    }
}

pub fn route(path: &str) -> Option<Route> {
    if let Some(d) = discovery(path) {
        return Some(Route::Discovery(d));
    }
    let (gv, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("v1", r)
    } else if let Some(r) = path.strip_prefix("/apis/discovery.k8s.io/v1/") {
        ("discovery.k8s.io/v1", r)
    } else if let Some(r) = path.strip_prefix("/apis/coordination.k8s.io/v1/") {
        ("coordination.k8s.io/v1", r)
    } else {
        return None;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, parts) = match parts.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail.to_vec()),
        other => (None, other.to_vec()),
    };
    match (parts.as_slice(), &ns) {
        (["namespaces", name], None) if gv == "v1" => Some(Route::Namespace(name.to_string())),
        (["events"], ns) if gv == "v1" => Some(Route::Events {
            ns: ns.clone(),
            name: None,
        }),
        (["events", name], Some(ns)) if gv == "v1" => Some(Route::Events {
            ns: Some(ns.clone()),
            name: Some(name.to_string()),
        }),
        ([res], _) => {
            let kind = kind_of(gv, res)?;
            // Nodes are cluster-scoped: no namespaced path for them.
            (kind != Kind::Node || ns.is_none()).then_some(Route::Collection { kind, ns })
        }
        ([res, name], _) | ([res, name, "status"], _) => {
            let kind = kind_of(gv, res)?;
            let ns = match (kind, ns) {
                (Kind::Node, None) => String::new(),
                (Kind::Node, Some(_)) | (_, None) => return None,
                (_, Some(ns)) => ns,
            };
            Some(Route::Object {
                kind,
                ns,
                name: name.to_string(),
                status: parts.len() == 3,
            })
        }
        _ => None,
    }
}

fn group(name: &str) -> Value {
    let gv = format!("{name}/v1");
    json!({"name": name, "versions": [{"groupVersion": gv, "version": "v1"}],
           "preferredVersion": {"groupVersion": gv, "version": "v1"}})
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]) -> Value {
    json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
           "verbs": verbs, "shortNames": short})
}

/// The legacy discovery documents for what the stand-in serves.
pub fn discovery(path: &str) -> Option<Value> {
    let read_write = ["get", "list", "watch", "update", "patch"];
    Some(match path {
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            group("discovery.k8s.io"), group("coordination.k8s.io")]}),
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("services", "Service", true, &read_write, &["svc"]),
            resource("services/status", "Service", true, &["get", "patch", "update"], &[]),
            resource("nodes", "Node", false, &["get", "list", "watch"], &["no"]),
            resource("namespaces", "Namespace", false, &["get"], &["ns"]),
            resource("events", "Event", true, &["create", "get", "list", "patch"], &["ev"]),
        ]}),
        "/apis/discovery.k8s.io/v1" => json!({"kind": "APIResourceList",
            "groupVersion": "discovery.k8s.io/v1", "resources": [
            resource("endpointslices", "EndpointSlice", true, &read_write, &[]),
        ]}),
        "/apis/coordination.k8s.io/v1" => json!({"kind": "APIResourceList",
            "groupVersion": "coordination.k8s.io/v1", "resources": [
            resource("leases", "Lease", true, &["create", "get", "list", "update"], &[]),
        ]}),
        _ => return None,
    })
}

/// RFC 7386 JSON merge patch (also how the stand-in applies a strategic
/// merge patch: the fields vipd and kubectl patch have no merge keys).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A Status error as the API server writes it.
pub fn status_error(code: u16, reason: &str, message: &str, kind: Kind, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason,
           "details": {"name": name, "kind": plural(kind)}, "code": code})
}

/// (API group, resource, verb, object name or `*`): what RBAC must grant.
pub type Access = (String, String, String, String);

/// The RBAC check a real API server makes for this request; `None` for
/// discovery, which every authenticated client may read.
pub fn access(route: &Route, method: &hyper::Method, watch: bool) -> Option<Access> {
    use hyper::Method as M;
    let group = |k: Kind| match k {
        Kind::Service | Kind::Node => "",
        Kind::EndpointSlice => "discovery.k8s.io",
        Kind::Lease => "coordination.k8s.io",
    };
    let verb = |m: &M, object: bool| match *m {
        M::GET if object => "get",
        M::GET if watch => "watch",
        M::GET => "list",
        M::POST => "create",
        M::PUT => "update",
        M::PATCH => "patch",
        M::DELETE => "delete",
        _ => "unknown",
    };
    let a = |g: &str, r: String, v: &str, n: &str| Some((g.into(), r, v.into(), n.into()));
    match route {
        Route::Discovery(_) => None,
        Route::Namespace(name) => a("", "namespaces".into(), verb(method, true), name),
        Route::Events { name, .. } => {
            let one = name.as_deref();
            a(
                "",
                "events".into(),
                verb(method, one.is_some()),
                one.unwrap_or("*"),
            )
        }
        Route::Collection { kind, .. } => {
            a(group(*kind), plural(*kind).into(), verb(method, false), "*")
        }
        Route::Object {
            kind, name, status, ..
        } => {
            let r = if *status {
                format!("{}/status", plural(*kind))
            } else {
                plural(*kind).to_string()
            };
            a(group(*kind), r, verb(method, true), name)
        }
    }
}

/// What an API server without the WatchList feature gate answers a watch
/// that asks for its initial list as events.
pub fn initial_events_forbidden() -> Value {
    let why =
        "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: {why}"),
           "reason": "Invalid", "code": 422,
           "details": {"group": "meta.k8s.io", "kind": "ListOptions",
                       "causes": [{"reason": "FieldValueForbidden", "message": format!("Forbidden: {why}"),
                                   "field": "sendInitialEvents"}]}})
}

pub fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services",
        Kind::EndpointSlice => "endpointslices",
        Kind::Node => "nodes",
        Kind::Lease => "leases",
    }
}

/// RFC 3339 UTC with seconds, as `metadata.creationTimestamp`.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
