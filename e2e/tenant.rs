//! What one Service can do to everyone else's routes (issue 19), against
//! BIRD and the API stand-in: an oversized annotation takes no session
//! down, another namespace cannot join an address or add its communities
//! to it, Local owners of one address are announced only where each has an
//! endpoint, disallowed attributes never reach the router, and with
//! `[ipam]` an address nobody gave out is not announced.

#[path = "kubelab.rs"]
mod kubelab;
#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::time::Duration;

use kubelab::*;
use lab::*;
use serde_json::{json, Value};
use standin::obj;

impl KubeLab {
    fn start(&self, extra: &str) -> Vipd {
        Vipd::start(&self.lab.node, &self.lab.dir, &vipd_conf(self, extra))
    }

    /// A Cluster or Local Service with one address in its status, created
    /// at `created` (seconds past 2026-01-01: the older holds an address),
    /// with these annotations and a ready endpoint on each of `nodes`.
    fn service(&self, key: &str, ip: &str, local: bool, created: u32, ann: Value, nodes: &[&str]) {
        let (ns, name) = key.split_once('/').unwrap();
        let mut s = obj::service(ns, name, &[ip], local);
        s["metadata"]["annotations"] = ann;
        s["metadata"]["creationTimestamp"] = json!(format!(
            "2026-01-01T00:{:02}:{:02}Z",
            created / 60,
            created % 60
        ));
        self.api.put(s);
        let eps: Vec<(&str, bool)> = nodes.iter().map(|n| (*n, true)).collect();
        self.api
            .put(obj::slice(ns, &format!("{name}-1"), name, &eps));
    }

    fn event(&self, name: &str, reason: &str) -> Option<Value> {
        self.api
            .events()
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
    }

    /// Waits for an Event; on failure, what vipd and the stand-in have.
    fn wait_event(&self, v: &Vipd, name: &str, reason: &str) -> Value {
        assert!(
            wait_until(Duration::from_secs(15), || self
                .event(name, reason)
                .is_some()),
            "no {reason} Event for {name}: {:?}\nvipd:\n{}",
            self.api.events(),
            v.proc.log_tail(30)
        );
        self.event(name, reason).unwrap()
    }

    /// BIRD's view and vipd's log tail, for a failing assertion.
    fn views(&self, v: &Vipd) -> String {
        format!(
            "BIRD:\n{}\n{}\nvipd:\n{}",
            self.bird.cli("show route all"),
            self.bird.cli("show protocols all v4"),
            v.proc.log_tail(30)
        )
    }

    fn wait_route(&self, v: &Vipd, prefix: &str) {
        assert!(
            wait_until(Duration::from_secs(20), || self.bird.has(prefix)),
            "{prefix} never reached BIRD\n{}",
            self.views(v)
        );
    }
}

/// The report behind the issue: one Service with 1,100 communities (a
/// 13 KB annotation) made every node send an UPDATE BIRD answered with
/// Bad Message Length, taking down the session and every other route on
/// it, again and again. Now the Service is refused at the source, with
/// an Event, `explain` and a metric saying why, and nothing else moves.
#[test]
fn an_oversized_service_takes_no_session_down() {
    let k = kube_lab("tn1");
    let huge: Vec<String> = (0..1100).map(|i| format!("65010:{i}")).collect();
    k.service("a/plain", "203.0.113.10", false, 1, json!({}), &["node-b"]);
    k.service(
        "a/huge",
        "203.0.113.11",
        false,
        2,
        json!({"vipd.io/communities": huge.join(",")}),
        &["node-b"],
    );
    let v = k.start("");
    k.wait_route(&v, "203.0.113.10/32");
    let ev = k.wait_event(&v, "huge", "AttributesTooLarge");
    assert_eq!(
        ev["message"],
        "vipd will not announce 203.0.113.11: vipd.io/communities carries more than 64 values, \
         the most one annotation may; not announced"
    );
    let before = k.bird.session_line("v4");
    assert!(before.contains("Established"), "{}", k.views(&v));
    holds_for(Duration::from_secs(4), || {
        assert!(!k.bird.has("203.0.113.11/32"), "{}", k.views(&v));
        assert!(k.bird.has("203.0.113.10/32"), "{}", k.views(&v));
    });
    assert_eq!(
        k.bird.session_line("v4"),
        before,
        "the session restarted\n{}",
        k.views(&v)
    );
    assert!(
        !v.log().contains("peer sent NOTIFICATION"),
        "{}",
        k.views(&v)
    );
    let why = vipd_cli(&k.lab.node, &["explain", "a/huge"]).1;
    assert!(why.contains("more than 64 values"), "{why}");
    let m = status_get(&k.lab.node, "/metrics");
    assert!(
        m.contains("vipd_services_refused{reason=\"attributes_too_large\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vipd_bgp_prefixes_refused{peer=\"192.0.2.2\",asn=\"65002\"} 0"),
        "{m}"
    );
}

fn communities_of(b: &Bird, prefix: &str) -> String {
    b.route(prefix)
        .lines()
        .find(|l| l.contains("BGP.community"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Part 2: namespace b copies a's sharing key and address. Refused with an
/// Event; a's route keeps exactly a's communities. With both sides naming
/// each other, they share, and the communities add up.
#[test]
fn another_namespace_joins_an_address_only_with_consent_on_both_sides() {
    let k = kube_lab("tn2");
    let a = |allow: &str| json!({"vipd.io/communities": "65010:1", "vipd.io/sharing-key": "k", "vipd.io/sharing-namespaces": allow});
    let b = |allow: &str| json!({"vipd.io/communities": "65010:99", "vipd.io/sharing-key": "k", "vipd.io/sharing-namespaces": allow});
    k.service("a/web", "203.0.113.20", false, 1, a(""), &["node-b"]);
    k.service("b/copy", "203.0.113.20", false, 2, b("*"), &["node-b"]);
    let v = k.start("");
    k.wait_route(&v, "203.0.113.20/32");
    let ev = k.wait_event(&v, "copy", "SharingRefused");
    assert_eq!(ev["involvedObject"]["namespace"], "b");
    assert!(
        ev["message"].as_str().unwrap().contains(
            "203.0.113.20 is held by a/web in another namespace; sharing across namespaces needs vipd.io/sharing-namespaces on both Services"
        ),
        "{ev}"
    );
    assert_eq!(
        communities_of(&k.bird, "203.0.113.20/32"),
        "BGP.community: (65010,1)",
        "{}",
        k.views(&v)
    );
    let why = vipd_cli(&k.lab.node, &["explain", "b/copy"]).1;
    assert!(why.contains("held by a/web in another namespace"), "{why}");
    // Both sides consent: they share.
    k.service("a/web", "203.0.113.20", false, 1, a("b"), &["node-b"]);
    assert!(
        wait_until(Duration::from_secs(10), || communities_of(
            &k.bird,
            "203.0.113.20/32"
        )
            == "BGP.community: (65010,1) (65010,99)"),
        "{}",
        k.views(&v)
    );
}

/// Part 2, Local: two Local Services share an address with endpoints on
/// different nodes. This node has only one of them: it does not announce
/// (the router would send it the other's traffic, which kube-proxy drops
/// here). Once it has endpoints of both, it announces. A Cluster Service
/// asking for the same address is refused.
#[test]
fn local_owners_are_announced_only_where_each_has_an_endpoint() {
    let k = kube_lab("tn3");
    k.service("a/x", "203.0.113.30", true, 1, json!({}), &["node-a"]);
    k.service("a/y", "203.0.113.30", true, 2, json!({}), &["node-b"]);
    k.service("a/other", "203.0.113.31", false, 3, json!({}), &["node-b"]);
    k.service(
        "a/cluster",
        "203.0.113.30",
        false,
        4,
        json!({}),
        &["node-b"],
    );
    let v = k.start("");
    k.wait_route(&v, "203.0.113.31/32");
    let ev = k.wait_event(&v, "cluster", "SharingRefused");
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("owners of one address must have the same policy"),
        "{ev}"
    );
    holds_for(Duration::from_secs(2), || {
        assert!(
            !k.bird.has("203.0.113.30/32"),
            "announced for one owner only\n{}",
            k.views(&v)
        );
    });
    let why = vipd_cli(&k.lab.node, &["explain", "a/x"]).1;
    assert!(why.contains("held back: shared with a/y"), "{why}");
    k.api.put(obj::slice(
        "a",
        "y-1",
        "y",
        &[("node-b", true), ("node-a", true)],
    ));
    k.wait_route(&v, "203.0.113.30/32");
    // And withdrawn again when one of them loses its endpoint here.
    k.api.put(obj::slice("a", "x-1", "x", &[("node-b", true)]));
    assert!(
        wait_until(Duration::from_secs(10), || !k.bird.has("203.0.113.30/32")),
        "{}",
        k.views(&v)
    );
}

fn not_allowed(k: &KubeLab) -> Vec<String> {
    k.api
        .events()
        .iter()
        .filter(|e| e["reason"] == "AttributeNotAllowed")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// Waits for `prefix` at BIRD and `drops` AttributeNotAllowed Events;
/// BIRD's route and the Events' messages.
fn route_and_drops(k: &KubeLab, v: &Vipd, prefix: &str, drops: usize) -> (String, Vec<String>) {
    k.wait_route(v, prefix);
    assert!(
        wait_until(Duration::from_secs(10), || not_allowed(k).len() == drops),
        "{:?}",
        k.api.events()
    );
    (k.bird.route(prefix), not_allowed(k))
}

/// Part 3, the default: BLACKHOLE (65535:666) on a Service's VIP would make routers drop its traffic; NO_EXPORT and the
/// other well-known communities change how the fabric treats it. With no
/// `service_communities` set, none reaches BIRD; the Service's other
/// communities do, and an Event names the dropped one.
#[test]
fn well_known_communities_never_reach_the_router() {
    let k = kube_lab("tn4");
    k.service(
        "a/web",
        "203.0.113.40",
        false,
        1,
        json!({"vipd.io/communities": "65535:666, 65010:5, 65535:65281"}),
        &["node-b"],
    );
    let v = k.start("");
    let (r, msgs) = route_and_drops(&k, &v, "203.0.113.40/32", 2);
    assert!(
        r.contains("BGP.community: (65010,5)") && !r.contains("65535"),
        "{}",
        k.views(&v)
    );
    assert!(msgs.contains(&"vipd.io/communities: 65535:666 is not allowed (kubernetes.service_communities); dropped, the Service's other attributes apply".to_string()), "{msgs:?}");
}

/// Part 3, the platform's ranges: a MED and a LOCAL_PREF outside them are
/// dropped (BIRD's route has no MED), each with an Event.
#[test]
fn values_outside_the_platforms_ranges_are_dropped() {
    let k = kube_lab("tn6");
    k.service(
        "a/web",
        "203.0.113.41",
        false,
        1,
        json!({"vipd.io/communities": "65010:5", "vipd.io/med": "500",
               "vipd.io/local-preference": "900"}),
        &["node-b"],
    );
    let v = k.start("service_med = \"0-100\"\nservice_local_pref = \"0-200\"\n");
    let (r, msgs) = route_and_drops(&k, &v, "203.0.113.41/32", 2);
    assert!(
        r.contains("BGP.community: (65010,5)") && !r.contains("BGP.med"),
        "{}",
        k.views(&v)
    );
    for want in [
        "vipd.io/med: 500 is not allowed (kubernetes.service_med); dropped, the Service's other attributes apply",
        "vipd.io/local-preference: 900 is not allowed (kubernetes.service_local_pref); dropped, the Service's other attributes apply",
    ] {
        assert!(msgs.iter().any(|m| m == want), "{want:?} not in {msgs:?}");
    }
}

/// Part 4: with `[ipam]`, an address written into a Service's status by
/// hand (or by another controller) that is in no pool and outside
/// `allowed_prefixes` is not announced; one in a pool is.
#[test]
fn with_ipam_an_address_nobody_gave_out_is_not_announced() {
    let k = kube_lab("tn5");
    k.service("a/pooled", "198.51.100.3", false, 1, json!({}), &["node-b"]);
    k.service(
        "a/handmade",
        "203.0.113.99",
        false,
        2,
        json!({}),
        &["node-b"],
    );
    let v = k.start(
        "[ipam]\nlease_namespace = \"kube-system\"\n[[ipam.pools]]\nname = \"p\"\naddresses = [\"198.51.100.0/28\"]\n",
    );
    k.wait_route(&v, "198.51.100.3/32");
    let ev = k.wait_event(&v, "handmade", "VIPRefused");
    assert_eq!(
        ev["message"],
        "vipd will not announce 203.0.113.99: 203.0.113.99 is in no [ipam] pool and outside kubernetes.allowed_prefixes: nobody gave it out"
    );
    holds_for(Duration::from_secs(2), || {
        assert!(!k.bird.has("203.0.113.99/32"), "{}", k.views(&v));
    });
    let why = vipd_cli(&k.lab.node, &["explain", "a/handmade"]).1;
    assert!(why.contains("nobody gave it out"), "{why}");
}
