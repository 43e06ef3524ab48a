//! The Kubernetes API stand-in checked by a real client: kubectl, pointed
//! at it, gets the answers a real API server gives for what the stand-in
//! implements (get, get --watch, patch of the status subresource, replace
//! with a stale resourceVersion, Events by name).

#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::Duration;

use lab::*;
use standin::{obj, Kind, StandIn};

struct Kubectl {
    ns: Netns,
    dir: Dir,
    api: StandIn,
}

impl Kubectl {
    fn new() -> Kubectl {
        require(&["kubectl"]);
        let ns = Netns::new("kc");
        ns.ip(&["addr", "add", "192.0.2.100/24", "dev", "lo"]);
        let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&ns.name));
        let dir = Dir::new("kc");
        dir.write("kubeconfig", &api.kubeconfig());
        Kubectl { ns, dir, api }
    }
    fn command(&self) -> std::process::Command {
        let mut c = self.ns.command("kubectl");
        c.arg("--kubeconfig")
            .arg(self.dir.path("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path("cache"))
            .arg("--request-timeout=10s");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("kubectl")
    }
    /// stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// stderr of a command that must fail.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

#[test]
fn kubectl_get_reads_objects_lists_and_errors() {
    let k = Kubectl::new();
    k.api
        .put(obj::service("a", "web", &["203.0.113.10"], false));
    k.api.put(obj::service("b", "db", &["203.0.113.20"], true));
    k.api.put(obj::node("node-a", &["192.0.2.1"]));
    let web: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "service", "-n", "a", "web", "-o", "json"])).unwrap();
    assert_eq!(web["metadata"]["name"], "web");
    assert_eq!(
        web["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.10"
    );
    assert!(web["metadata"]["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // Namespaced and cluster-wide lists, short names, cluster-scoped nodes.
    assert_eq!(
        k.ok(&["get", "svc", "-n", "a", "-o", "name"]).trim(),
        "service/web"
    );
    let all = k.ok(&["get", "svc", "-A", "-o", "name"]);
    assert_eq!(
        all.lines().collect::<Vec<_>>(),
        ["service/web", "service/db"]
    );
    assert_eq!(k.ok(&["get", "nodes", "-o", "name"]).trim(), "node/node-a");
    let e = k.fails(&["get", "svc", "-n", "a", "nope"]);
    assert!(
        e.contains("(NotFound)") && e.contains("services \"nope\" not found"),
        "{e}"
    );
    let e = k.fails(&["get", "svc", "-n", "nowhere", "web"]);
    assert!(e.contains("(NotFound)"), "{e}");
}

/// Events as vipd records them: created by name (a second create of the
/// name is AlreadyExists), listed across namespaces by `source`, read and
/// merge-patched one by one.
#[test]
fn kubectl_creates_lists_and_patches_events_by_name() {
    let k = Kubectl::new();
    let ev = |name: &str, component: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "a"},
            "involvedObject": {"kind": "Service", "namespace": "a", "name": "web"},
            "reason": "VIPRefused", "message": "m", "type": "Warning", "count": 1,
            "source": {"component": component}})
        .to_string()
    };
    let f = k.dir.write("ev.json", &ev("web.0123456789abcdef", "vipd"));
    let other = k.dir.write("other.json", &ev("web.other", "kubelet"));
    k.ok(&["create", "--validate=false", "-f", f.to_str().unwrap()]);
    k.ok(&["create", "--validate=false", "-f", other.to_str().unwrap()]);
    let err = k.fails(&["create", "--validate=false", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains("AlreadyExists")
            && err.contains(r#"events "web.0123456789abcdef" already exists"#),
        "{err}"
    );
    let listed = k.ok(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        "source=vipd",
        "-o",
        "name",
    ]);
    assert_eq!(listed.trim(), "event/web.0123456789abcdef");
    k.ok(&[
        "patch",
        "event",
        "web.0123456789abcdef",
        "-n",
        "a",
        "--type=merge",
        "-p",
        r#"{"count":2}"#,
    ]);
    let count = k.ok(&[
        "get",
        "event",
        "web.0123456789abcdef",
        "-n",
        "a",
        "-o",
        "jsonpath={.count}",
    ]);
    assert_eq!(count, "2");
    let err = k.fails(&["get", "event", "web.nope", "-n", "a"]);
    assert!(err.contains(r#"events "web.nope" not found"#), "{err}");
    assert_eq!(k.api.event_writes(), 3, "two creates and a patch");
}

#[test]
fn kubectl_patches_the_status_subresource_only() {
    let k = Kubectl::new();
    k.api.put(obj::service("a", "web", &[], false));
    k.ok(&[
        "patch", "svc", "web", "-n", "a", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.5"}]}},"spec":{"type":"ClusterIP"}}"#,
    ]);
    let s = k.api.get(Kind::Service, "a", "web").unwrap();
    assert_eq!(
        s["status"]["loadBalancer"]["ingress"][0]["ip"],
        "198.51.100.5"
    );
    assert_eq!(
        s["spec"]["type"], "LoadBalancer",
        "a status patch changed the spec"
    );
    let w = k.api.writes();
    assert_eq!(w.len(), 1);
    assert!(w[0].status && w[0].name == "web");
    // A plain patch changes the spec and leaves the status alone.
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "a",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"team":"x"}},"status":{"loadBalancer":{}}}"#,
    ]);
    let s = k.api.get(Kind::Service, "a", "web").unwrap();
    assert_eq!(s["metadata"]["labels"]["team"], "x");
    assert_eq!(
        s["status"]["loadBalancer"]["ingress"][0]["ip"],
        "198.51.100.5"
    );
}

#[test]
fn kubectl_replace_with_a_stale_resource_version_conflicts() {
    let k = Kubectl::new();
    k.api
        .put(obj::service("a", "web", &["203.0.113.10"], false));
    let mut web: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "svc", "-n", "a", "web", "-o", "json"])).unwrap();
    // Someone else writes first: the copy in hand is stale.
    k.api.put(obj::service("a", "web", &["203.0.113.10"], true));
    web["metadata"]["labels"] = serde_json::json!({"team": "x"});
    let f = k.dir.write("web.json", &web.to_string());
    // The stand-in serves no OpenAPI document for client-side validation.
    let e = k.fails(&["replace", "--validate=false", "-f", f.to_str().unwrap()]);
    assert!(
        e.contains("(Conflict)") && e.contains("the object has been modified"),
        "{e}"
    );
    assert!(k.api.get(Kind::Service, "a", "web").unwrap()["metadata"]["labels"].is_null());
    // With the current version it goes through.
    let cur = k.api.get(Kind::Service, "a", "web").unwrap();
    web["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
    let f = k.dir.write("web.json", &web.to_string());
    k.ok(&["replace", "--validate=false", "-f", f.to_str().unwrap()]);
    assert_eq!(
        k.api.get(Kind::Service, "a", "web").unwrap()["metadata"]["labels"]["team"],
        "x"
    );
}

#[test]
fn kubectl_get_watch_streams_changes() {
    let k = Kubectl::new();
    k.api
        .put(obj::service("a", "web", &["203.0.113.10"], false));
    let mut child = k
        .command()
        .args(["get", "svc", "-n", "a", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("kubectl printed nothing")
    };
    assert_eq!(next(), "service/web");
    k.api
        .put(obj::service("a", "late", &["203.0.113.11"], false));
    k.api
        .put(obj::service("other", "elsewhere", &["203.0.113.12"], false));
    assert_eq!(
        next(),
        "service/late",
        "the watch missed a change, or saw another namespace"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `GET path` from the stand-in, inside its namespace: the JSON body.
fn get_json(k: &Kubectl, path: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: standin\r\nConnection: close\r\n\r\n");
    let text = in_netns(&k.ns.name, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("192.0.2.100:6443").unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A paged list is served from the first page's snapshot, at one
/// resourceVersion, as a real server serves it: an object deleted between
/// two pages makes no other object vanish.
#[test]
fn paged_lists_come_from_one_snapshot() {
    let k = Kubectl::new();
    for i in 0..5 {
        k.api.put(obj::service(
            "a",
            &format!("s{i}"),
            &["203.0.113.10"],
            false,
        ));
    }
    let first = get_json(&k, "/api/v1/services?limit=2");
    let rv = first["metadata"]["resourceVersion"].clone();
    let mut names: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["s0", "s1"]);
    // s0, already served, goes before the next page is asked for.
    k.api.delete(Kind::Service, "a", "s0");
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let page = get_json(&k, &format!("/api/v1/services?limit=2&continue={token}"));
        assert_eq!(
            page["metadata"]["resourceVersion"], rv,
            "a page from another version"
        );
        for i in page["items"].as_array().unwrap() {
            names.push(i["metadata"]["name"].as_str().unwrap().to_string());
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(
        names,
        ["s0", "s1", "s2", "s3", "s4"],
        "an object vanished between pages"
    );
    // The next list is a new snapshot, without s0.
    let again = get_json(&k, "/api/v1/services");
    assert_eq!(again["items"].as_array().unwrap().len(), 4);
}

/// One request from `from` (an address of the stand-in's namespace), with
/// a JSON body: the status code and the JSON answer, or None when no
/// answer came within two seconds.
fn request(
    k: &Kubectl,
    from: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let ct = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: standin\r\nConnection: close\r\n\
         User-Agent: {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
        standin::TEST_AGENT,
        body.len()
    );
    let from: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    let text = in_netns(&k.ns.name, move || {
        use std::io::{Read, Write};
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&from.into()).unwrap();
        let to: std::net::SocketAddr = "192.0.2.100:6443".parse().unwrap();
        s.connect(&to.into()).unwrap();
        let mut s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((
        code,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    ))
}

/// Leases as the allocator will use them: create (409 if it exists), get,
/// update with the resourceVersion read (409 when someone wrote first);
/// kubectl reads them back. A partitioned client's requests go unanswered
/// while another client's go through.
#[test]
fn leases_with_optimistic_concurrency_and_a_partitioned_client() {
    let k = Kubectl::new();
    k.ns.ip(&["addr", "add", "192.0.2.101/24", "dev", "lo"]);
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let lease = |holder: &str| {
        serde_json::json!({"metadata": {"name": "vipd-ipam"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    };
    let (code, created) = request(&k, "192.0.2.100", "POST", path, Some(&lease("node-a"))).unwrap();
    assert_eq!(code, 201, "{created}");
    let (code, again) = request(&k, "192.0.2.100", "POST", path, Some(&lease("node-b"))).unwrap();
    assert_eq!(
        (code, again["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let one = format!("{path}/vipd-ipam");
    let (_, read) = request(&k, "192.0.2.100", "GET", &one, None).unwrap();
    assert_eq!(read["spec"]["holderIdentity"], "node-a");
    // node-a renews with the version it read; node-b's take, with the same
    // (now stale) version, conflicts.
    let mut renew = read.clone();
    renew["spec"]["renewTime"] = "2026-11-22T10:00:00.000000Z".into();
    let (code, renewed) = request(&k, "192.0.2.100", "PUT", &one, Some(&renew)).unwrap();
    assert_eq!(code, 200, "{renewed}");
    let mut take = read.clone();
    take["spec"]["holderIdentity"] = "node-b".into();
    let (code, lost) = request(&k, "192.0.2.100", "PUT", &one, Some(&take)).unwrap();
    assert_eq!(
        (code, lost["reason"].as_str()),
        (409, Some("Conflict")),
        "{lost}"
    );
    let got = k.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "vipd-ipam",
        "-o",
        "json",
    ]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["spec"]["holderIdentity"], "node-a");
    assert!(got.get("status").is_none(), "{got}");
    // Partition 192.0.2.101: its requests hang, 192.0.2.100's go through.
    k.api.set_partitioned("192.0.2.101".parse().unwrap(), true);
    assert!(request(&k, "192.0.2.101", "GET", &one, None).is_none());
    assert_eq!(
        request(&k, "192.0.2.100", "GET", &one, None).unwrap().0,
        200
    );
    k.api.set_partitioned("192.0.2.101".parse().unwrap(), false);
    assert_eq!(
        request(&k, "192.0.2.101", "GET", &one, None).unwrap().0,
        200
    );
}

/// Two clients racing on one Lease, their writes held to overlap: exactly
/// one create wins (the other gets AlreadyExists), exactly one update from
/// the same resourceVersion wins (the other gets Conflict), and two merge
/// patches without a resourceVersion both land, as a real API server
/// does. A stand-in that let both win would show two allocators where a
/// cluster has one.
#[test]
fn racing_writes_to_one_lease_have_one_winner() {
    let k = Kubectl::new();
    k.ns.ip(&["addr", "add", "192.0.2.101/24", "dev", "lo"]);
    k.api.set_write_delay(Duration::from_millis(300));
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let one = format!("{path}/vipd-ipam");
    let race = |method: &str, path: &str, bodies: [serde_json::Value; 2]| {
        let k = &k;
        let mut codes: Vec<(u16, String)> = std::thread::scope(|s| {
            let hs: Vec<_> = ["192.0.2.100", "192.0.2.101"]
                .into_iter()
                .zip(bodies)
                .map(|(from, b)| s.spawn(move || request(k, from, method, path, Some(&b)).unwrap()))
                .collect();
            hs.into_iter()
                .map(|h| {
                    let (c, v) = h.join().unwrap();
                    (c, v["reason"].as_str().unwrap_or("").to_string())
                })
                .collect()
        });
        codes.sort();
        codes
    };
    let lease = |holder: &str| {
        serde_json::json!({"metadata": {"name": "vipd-ipam"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    };
    let created = race("POST", path, [lease("node-a"), lease("node-b")]);
    assert_eq!(
        created,
        [(201, String::new()), (409, "AlreadyExists".into())]
    );
    let (_, read) = request(&k, "192.0.2.100", "GET", &one, None).unwrap();
    let take = |holder: &str| {
        let mut t = read.clone();
        t["spec"]["holderIdentity"] = holder.into();
        t
    };
    let updated = race("PUT", &one, [take("node-a"), take("node-b")]);
    assert_eq!(updated, [(200, String::new()), (409, "Conflict".into())]);
    let label = |l: &str| serde_json::json!({"metadata": {"labels": {l: "x"}}});
    let patched = race("PATCH", &one, [label("a"), label("b")]);
    assert_eq!(patched, [(200, String::new()), (200, String::new())]);
    let (_, read) = request(&k, "192.0.2.100", "GET", &one, None).unwrap();
    let labels = &read["metadata"]["labels"];
    assert!(labels["a"] == "x" && labels["b"] == "x", "{read}");
}
