//! vipd driven by Kubernetes objects, against the API stand-in and BIRD:
//! the readiness barrier, shared VIPs, deletions, refusals with Events,
//! watch resets and an unreachable API server.

#[path = "kubelab.rs"]
mod kubelab;
#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant};

use kubelab::*;
use lab::*;
use standin::{obj, Kind, StandIn};

/// Service a/web (203.0.113.10 and 2001:db8:ff::10, Cluster policy) with a
/// ready endpoint on node-b.
fn put_web(api: &StandIn) {
    api.put(obj::service(
        "a",
        "web",
        &["203.0.113.10", "2001:db8:ff::10"],
        false,
    ));
    api.put(obj::slice("a", "web-1", "web", &[("node-b", true)]));
}

/// Services a/s0, a/s1, ... with VIPs 203.0.113.10, .11, ..., each with a
/// ready endpoint on node-b (Cluster policy: announced from every node).
fn put_services(api: &StandIn, n: u32) {
    for i in 0..n {
        let ip = format!("203.0.113.{}", 10 + i);
        api.put(obj::service("a", &format!("s{i}"), &[&ip], false));
        api.put(obj::slice(
            "a",
            &format!("s{i}-1"),
            &format!("s{i}"),
            &[("node-b", true)],
        ));
    }
}

fn routes(b: &Bird) -> usize {
    b.count("master4") + b.count("master6")
}

/// Lesson 4: EndpointSlices seen long before their Services change nothing;
/// every route goes out as soon as both caches are synced. The initial
/// lists streamed (WatchList), as an API server that allows it serves them.
#[test]
fn endpoints_before_services_at_startup_delay_nothing() {
    let k = kube_lab("k4");
    barrier_holds_until_every_kind_is_listed(&k);
    assert!(k.api.streamed() >= 3, "the lists were not streamed");
    assert_eq!(k.api.lists_paged(), 0, "a list was paged");
}

/// Lesson 4 against an API server that refuses streaming lists (without
/// the WatchList feature gate: 422): vipd lists page by page instead, and
/// the barrier holds the same.
#[test]
fn endpoints_before_services_at_startup_delay_nothing_where_lists_are_paged() {
    let k = kube_lab("k4p");
    k.api.set_watch_list(false);
    let vipd = barrier_holds_until_every_kind_is_listed(&k);
    assert_eq!(k.api.streamed(), 0);
    assert!(k.api.lists_paged() >= 3, "vipd did not fall back to lists");
    assert!(
        vipd.log().contains("refuses streaming lists"),
        "{}",
        vipd.proc.log_tail(20)
    );
}

fn barrier_holds_until_every_kind_is_listed(k: &KubeLab) -> Vipd {
    for i in 0..20 {
        let ip = format!("203.0.113.{}", 10 + i);
        k.api
            .put(obj::service("shop", &format!("s{i}"), &[&ip], false));
        k.api.put(obj::slice(
            "shop",
            &format!("s{i}-abc"),
            &format!("s{i}"),
            &[("node-b", true)],
        ));
    }
    k.api.put(obj::service(
        "shop",
        "dual",
        &["203.0.113.99", "2001:db8:ff::99"],
        false,
    ));
    k.api
        .put(obj::slice("shop", "dual-abc", "dual", &[("node-b", true)]));
    // Services are held back: vipd gets the EndpointSlices (and the Node) only.
    k.api.hold(Kind::Service);
    let vipd = Vipd::start(&k.lab.node, &k.lab.dir, &vipd_conf(k, ""));
    // Session up and every list but the Services' served: the moment a
    // barrier that ignored the Services would announce.
    assert!(
        wait_until(Duration::from_secs(15), || k.bird.established("v4")
            && k.api.lists_served(Kind::EndpointSlice) > 0
            && k.api.lists_served(Kind::Node) > 0),
        "no session, or vipd never listed the EndpointSlices and the Node"
    );
    never_above(k, 0, Duration::from_secs(1));
    assert!(!vipd.log().contains("caches synced"));
    let (code, text) = vipd_status(&k.lab.node);
    assert_eq!(
        code,
        Some(1),
        "vipd status says ready before the sync: {text}"
    );
    assert!(text.starts_with("ready: no"), "{text}");
    assert!(text.contains("kubernetes: not synced yet"), "{text}");
    // What a kubelet's readiness probe reads: not ready either.
    let probe = status_get(&k.lab.node, "/readyz");
    assert!(probe.starts_with("HTTP/1.1 503"), "{probe}");
    let released = Instant::now();
    k.api.release(Kind::Service);
    assert!(
        wait_until(Duration::from_secs(10), || routes(&k.bird) == 22),
        "not every route arrived after the caches synced: {}",
        routes(&k.bird)
    );
    eprintln!(
        "all routes at BIRD {:?} after the Services were released",
        released.elapsed()
    );
    let r = k.bird.route("203.0.113.10/32");
    assert!(
        r.contains("BGP.as_path: 65010\n") && r.contains("BGP.next_hop: 192.0.2.1"),
        "{r}"
    );
    assert!(k.bird.has("2001:db8:ff::99/128"));
    let (code, text) = vipd_status(&k.lab.node);
    assert_eq!(code, Some(0), "{text}");
    let probe = status_get(&k.lab.node, "/readyz");
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    for want in [
        "ready: yes",
        "kubernetes: synced, 21 Services, 21 EndpointSlices, 22 VIPs for this node",
        "  192.0.2.2 AS65002: Established for ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "{want:?} not in:\n{text}"
        );
    }
    vipd
}

/// Starts vipd and waits for its first table to reach BIRD.
fn start_synced(k: &KubeLab, extra: &str, expect: usize) -> Vipd {
    let v = Vipd::start(&k.lab.node, &k.lab.dir, &vipd_conf(k, extra));
    assert!(
        wait_until(Duration::from_secs(20), || v
            .log()
            .contains("caches synced")
            && routes(&k.bird) == expect),
        "vipd did not announce {expect} routes: {}",
        routes(&k.bird)
    );
    v
}

/// `load_balancer_class`, `external_ips` and `allowed_prefixes` at a real
/// peer: only Services of vipd's class are announced (not another class,
/// not unclassed ones), external IPs with them, and a VIP outside the
/// allowed prefixes is refused with an Event. BIRD holds exactly the rest.
#[test]
fn class_external_ips_and_allowed_prefixes_decide_what_is_announced() {
    let k = kube_lab("kc");
    let svc = |name: &str, ip: &str, class: Option<&str>, ext: &[&str]| {
        let mut s = obj::service("a", name, &[ip], false);
        if let Some(c) = class {
            s["spec"]["loadBalancerClass"] = c.into();
        }
        s["spec"]["externalIPs"] = serde_json::json!(ext);
        k.api.put(s);
        k.api.put(obj::slice(
            "a",
            &format!("{name}-1"),
            name,
            &[("node-b", true)],
        ));
    };
    let ours = Some("vipd.io/bgp");
    svc("ours", "203.0.113.10", ours, &[]);
    svc("theirs", "203.0.113.11", Some("other.io/lb"), &[]);
    svc("unclassed", "203.0.113.12", None, &[]);
    svc("ext", "203.0.113.13", ours, &["203.0.113.14"]);
    svc("outside", "203.0.113.200", ours, &[]);
    let extra = "load_balancer_class = \"vipd.io/bgp\"\nexternal_ips = true\n\
                 allowed_prefixes = [\"203.0.113.0/25\"]\n";
    let v = Vipd::start(&k.lab.node, &k.lab.dir, &vipd_conf(&k, extra));
    // The refusal shows the intent was computed from every Service.
    assert!(
        wait_until(Duration::from_secs(20), || k
            .api
            .events()
            .iter()
            .any(|e| e["involvedObject"]["name"] == "outside")),
        "no Event for the VIP outside allowed_prefixes: {}",
        v.proc.log_tail(20)
    );
    let want = ["203.0.113.10/32", "203.0.113.13/32", "203.0.113.14/32"];
    assert!(
        wait_until(Duration::from_secs(10), || want
            .iter()
            .all(|p| k.bird.has(p))),
        "{}",
        k.bird.cli("show route")
    );
    assert_eq!(routes(&k.bird), 3, "{}", k.bird.cli("show route"));
    let ev = k
        .api
        .events()
        .into_iter()
        .find(|e| e["involvedObject"]["name"] == "outside")
        .unwrap();
    assert_eq!(ev["reason"], "VIPRefused");
    assert!(
        ev["message"].as_str().unwrap().contains("203.0.113.200"),
        "{ev}"
    );
}

/// Lesson 1: two Services share a VIP, one has no ready endpoint: the VIP
/// stays announced while any owner wants it.
#[test]
fn shared_vip_stays_while_any_owner_has_endpoints() {
    let k = kube_lab("k1");
    k.api
        .put(obj::service("a", "web", &["203.0.113.10"], false));
    k.api
        .put(obj::service("b", "api", &["203.0.113.10"], false));
    k.api
        .put(obj::slice("a", "web-1", "web", &[("node-b", true)]));
    k.api
        .put(obj::slice("b", "api-1", "api", &[("node-b", false)]));
    let _v = start_synced(&k, "", 1);
    // web loses its endpoint, api gains one: the VIP never goes.
    k.api
        .put(obj::slice("b", "api-1", "api", &[("node-c", true)]));
    std::thread::sleep(Duration::from_millis(300));
    k.api
        .put(obj::slice("a", "web-1", "web", &[("node-b", false)]));
    holds_for(Duration::from_secs(2), || {
        assert!(
            k.bird.has("203.0.113.10/32"),
            "withdrawn while api still wants it"
        )
    });
    // The last owner without endpoints: withdrawn.
    k.api
        .put(obj::slice("b", "api-1", "api", &[("node-c", false)]));
    assert!(
        wait_until(Duration::from_secs(10), || !k.bird.has("203.0.113.10/32")),
        "not withdrawn"
    );
}

/// Lesson 3 (BGP): a deleted Service leaves no announcement behind.
#[test]
fn deleted_service_is_withdrawn() {
    let k = kube_lab("k3");
    put_web(&k.api);
    k.api
        .put(obj::service("a", "keep", &["203.0.113.11"], false));
    k.api
        .put(obj::slice("a", "keep-1", "keep", &[("node-b", true)]));
    let _v = start_synced(&k, "", 3);
    assert!(k.api.delete(Kind::Service, "a", "web"));
    assert!(
        wait_until(Duration::from_secs(10), || routes(&k.bird) == 1),
        "the deleted Service's VIPs stayed"
    );
    assert!(k.bird.has("203.0.113.11/32") && !k.bird.has("203.0.113.10/32"));
    assert!(!k.bird.has("2001:db8:ff::10/128"));
}

/// An object the API server should never have let through (a field of the
/// wrong type) breaks neither the list nor the watch: the other Services
/// are announced, and a Service that turns unreadable keeps its route
/// until it is readable again or deleted.
#[test]
fn an_unreadable_object_breaks_neither_the_list_nor_the_watch() {
    let k = kube_lab("k3b");
    put_web(&k.api);
    let mut bad = obj::service("a", "bad", &["203.0.113.12"], false);
    bad["spec"]["externalIPs"] = serde_json::json!("not-a-list");
    k.api.put(bad);
    k.api
        .put(obj::slice("a", "bad-1", "bad", &[("node-b", true)]));
    k.api
        .put(obj::service("a", "keep", &["203.0.113.11"], false));
    k.api
        .put(obj::slice("a", "keep-1", "keep", &[("node-b", true)]));
    let v = start_synced(&k, "", 3);
    assert!(
        !k.bird.has("203.0.113.12/32"),
        "never readable: not announced"
    );
    // keep turns unreadable, then a new Service comes: the watch goes on.
    let mut broken = obj::service("a", "keep", &["203.0.113.11"], false);
    broken["status"]["loadBalancer"]["ingress"] = serde_json::json!({"ip": 5});
    k.api.put(broken);
    k.api
        .put(obj::service("a", "late", &["203.0.113.13"], false));
    k.api
        .put(obj::slice("a", "late-1", "late", &[("node-b", true)]));
    assert!(
        wait_until(Duration::from_secs(10), || k.bird.has("203.0.113.13/32")),
        "the watch stopped at the unreadable object: {}",
        v.proc.log_tail(30)
    );
    assert!(
        k.bird.has("203.0.113.11/32"),
        "an unreadable update withdrew"
    );
    assert!(
        v.log().contains("cannot read this object"),
        "{}",
        v.proc.log_tail(30)
    );
    assert!(k.api.delete(Kind::Service, "a", "keep"));
    assert!(
        wait_until(Duration::from_secs(10), || !k.bird.has("203.0.113.11/32")),
        "deleting the unreadable Service did not withdraw it"
    );
}

/// Lesson 5: the node's own address and the API server's are refused with
/// a clear reason, as a log line and a Kubernetes Event on the Service.
#[test]
fn own_and_api_server_addresses_are_refused_with_events() {
    let k = kube_lab("k5");
    k.api.put(obj::service("a", "own", &["192.0.2.1"], false));
    k.api.put(obj::service("a", "api", &["192.0.2.100"], false));
    k.api
        .put(obj::service("a", "fine", &["203.0.113.10"], false));
    let mut bad = obj::service("a", "annot", &["203.0.113.11"], false);
    bad["metadata"]["annotations"] =
        serde_json::json!({"vipd.io/communities": "65010:x", "vipd.io/large-communities": "1:2:3"});
    k.api.put(bad);
    let mut good = obj::service("a", "tagged", &["203.0.113.12"], false);
    good["metadata"]["annotations"] = serde_json::json!({"vipd.io/communities": "65010:7", "vipd.io/large-communities": "65010:8:9"});
    k.api.put(good);
    for s in ["own", "api", "fine", "annot", "tagged"] {
        k.api
            .put(obj::slice("a", &format!("{s}-1"), s, &[("node-b", true)]));
    }
    let v = start_synced(&k, "", 2);
    assert!(!k.bird.has("192.0.2.1/32") && !k.bird.has("192.0.2.100/32"));
    let tagged = k.bird.route("203.0.113.12/32");
    assert!(
        tagged.contains("BGP.community: (65010,7)")
            && tagged.contains("BGP.large_community: (65010, 8, 9)"),
        "{tagged}"
    );
    // An annotation that does not parse keeps the Service off the wire:
    // the same route without what its owner asked for could leak.
    assert!(
        !k.bird.has("203.0.113.11/32"),
        "{}",
        k.bird.route("203.0.113.11/32")
    );
    assert!(
        wait_until(Duration::from_secs(5), || k.api.events().len() >= 3),
        "{:?}",
        k.api.events()
    );
    let evs = k.api.events();
    let find = |name: &str| {
        evs.iter()
            .find(|e| e["involvedObject"]["name"] == name)
            .unwrap_or_else(|| panic!("no Event for {name}: {evs:?}"))
            .clone()
    };
    let own = find("own");
    assert_eq!(own["reason"], "VIPRefused");
    assert_eq!(own["type"], "Warning");
    assert_eq!(
        own["message"],
        "vipd will not announce 192.0.2.1: 192.0.2.1 is this node's own address"
    );
    assert_eq!(find("api")["message"], "vipd will not announce 192.0.2.100: 192.0.2.100 is an address of the Kubernetes API server");
    let a = find("annot");
    assert_eq!(a["reason"], "BadAnnotation");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .starts_with("vipd will not announce 203.0.113.11: vipd.io/communities: \"65010:x\""),
        "{a}"
    );
    assert!(v
        .log()
        .contains("VIP refused: 192.0.2.1 is this node's own address"));
    // Reported once, not on every recomputation: once vipd has recomputed
    // after this change, no new Event follows.
    let updates = |v: &Vipd| v.log().matches("intent updated").count();
    let before = updates(&v);
    k.api.put(obj::slice(
        "a",
        "fine-1",
        "fine",
        &[("node-b", true), ("node-c", true)],
    ));
    assert!(
        wait_until(Duration::from_secs(10), || updates(&v) > before),
        "vipd never recomputed after the change"
    );
    holds_for(Duration::from_millis(300), || {
        assert_eq!(
            k.api.events().len(),
            evs.len(),
            "the refusal was reported again"
        )
    });
}

/// Endpoint readiness flapping: the announcement follows, ending where the
/// last state says.
#[test]
fn readiness_flapping_settles_on_the_last_state() {
    let k = kube_lab("kf");
    k.api.put(obj::service("a", "web", &["203.0.113.10"], true));
    k.api
        .put(obj::slice("a", "web-1", "web", &[("node-a", true)]));
    let v = start_synced(&k, "", 1);
    for i in 0..30 {
        k.api
            .put(obj::slice("a", "web-1", "web", &[("node-a", i % 2 == 1)]));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Last put: i = 29, ready.
    assert!(wait_until(Duration::from_secs(5), || k
        .bird
        .has("203.0.113.10/32")));
    k.api
        .put(obj::slice("a", "web-1", "web", &[("node-a", false)]));
    assert!(wait_until(Duration::from_secs(5), || !k
        .bird
        .has("203.0.113.10/32")));
    assert!(
        v.proc.log_text().matches("session established").count() == 2,
        "sessions flapped too"
    );
}

/// The API server goes down (open watches end) and vipd says so.
fn api_goes_away(k: &KubeLab, v: &Vipd) {
    k.api.set_down(true);
    assert!(
        wait_until(Duration::from_secs(30), || v
            .log()
            .contains("Kubernetes API:")),
        "vipd never noticed the API going away"
    );
}

/// Polls BIRD for `d`, failing on any rise above `n` routes.
fn never_above(k: &KubeLab, n: usize, d: Duration) {
    holds_for(d, || {
        let r = routes(&k.bird);
        assert!(r <= n, "BIRD got {r} routes (at most {n} allowed)");
    });
}

/// Polls BIRD while `f` runs, failing on any drop below `n` routes.
fn never_below(k: &KubeLab, n: usize, d: Duration) {
    holds_for(d, || {
        let r = routes(&k.bird);
        assert!(r >= n, "routes dropped to {r} (from {n})");
    });
}

/// The readiness barrier holds for each cache, not just the Services: vipd
/// restarts (graceful restart at BIRD) with the EndpointSlices, then the
/// Node, held back. Everything else is listed, so a barrier that ignored the
/// held kind would publish a table without endpoints (every VIP lost) or
/// without the Node (the node's own address announced as a VIP: lesson 5).
/// BIRD keeps exactly the routes it had.
#[test]
fn barrier_holds_for_endpoint_slices_and_the_node_across_restarts() {
    let k = kube_lab("kb");
    // A VIP that is node-a's own address: refused once the Node is known.
    k.api.put(obj::service("a", "own", &["192.0.2.1"], false));
    k.api
        .put(obj::slice("a", "own-1", "own", &[("node-b", true)]));
    for i in 0..5 {
        let (c, l) = (
            format!("203.0.113.{}", 10 + i),
            format!("203.0.113.{}", 30 + i),
        );
        k.api.put(obj::service("a", &format!("c{i}"), &[&c], false));
        k.api.put(obj::slice(
            "a",
            &format!("c{i}-1"),
            &format!("c{i}"),
            &[("node-b", true)],
        ));
        k.api.put(obj::service("a", &format!("l{i}"), &[&l], true));
        k.api.put(obj::slice(
            "a",
            &format!("l{i}-1"),
            &format!("l{i}"),
            &[("node-a", true)],
        ));
    }
    let mut v = start_synced(&k, "", 10);
    for (held, other) in [
        (Kind::EndpointSlice, Kind::Node),
        (Kind::Node, Kind::EndpointSlice),
    ] {
        v.proc.stop(Duration::from_secs(5));
        assert!(
            wait_until(Duration::from_secs(5), || !k.bird.established("v4")),
            "BIRD did not notice vipd stopping"
        );
        let (svc0, other0) = (k.api.lists_served(Kind::Service), k.api.lists_served(other));
        k.api.hold(held);
        v = Vipd::start(&k.lab.node, &k.lab.dir, &vipd_conf(&k, ""));
        // The new vipd has its session and every list but the held one:
        // the moment a broken barrier would publish.
        assert!(
            wait_until(Duration::from_secs(20), || k.bird.established("v4")
                && k.api.lists_served(Kind::Service) > svc0
                && k.api.lists_served(other) > other0),
            "vipd did not list Services and {other:?}"
        );
        holds_for(Duration::from_secs(2), || {
            let r = routes(&k.bird);
            assert_eq!(r, 10, "BIRD's routes changed to {r} with {held:?} held");
        });
        assert!(
            !v.log().contains("caches synced"),
            "synced with {held:?} held"
        );
        k.api.release(held);
        assert!(
            wait_until(Duration::from_secs(20), || v
                .log()
                .contains("caches synced")),
            "vipd never synced after {held:?} was released"
        );
        assert!(
            wait_until(Duration::from_secs(10), || !k
                .bird
                .cli("show protocols all v4")
                .contains("graceful restart active")),
            "BIRD stayed in graceful restart"
        );
        assert_eq!(routes(&k.bird), 10, "after {held:?} was released");
        assert!(
            !k.bird.has("192.0.2.1/32"),
            "the node's own address announced"
        );
    }
}

/// A Service deleted while the watch was broken and the history compacted
/// is learned only from the re-list after 410 Gone: the re-list replaces
/// the cache, so its VIP is withdrawn; the others stay throughout.
#[test]
fn relist_after_410_drops_what_was_deleted_meanwhile() {
    let k = kube_lab("kr");
    relist_after_410(&k);
    assert!(k.api.streamed() > 3, "the re-list was not streamed");
}

/// The same where the API server refuses streaming lists: paged re-lists.
#[test]
fn relist_after_410_drops_what_was_deleted_meanwhile_where_lists_are_paged() {
    let k = kube_lab("krp");
    k.api.set_watch_list(false);
    relist_after_410(&k);
    assert_eq!(k.api.streamed(), 0);
    assert!(k.api.lists_paged() > 3, "{}", k.api.lists_paged());
}

fn relist_after_410(k: &KubeLab) {
    put_services(&k.api, 5);
    let v = start_synced(k, "", 5);
    api_goes_away(k, &v);
    k.api.delete(Kind::Service, "a", "s0");
    k.api.delete(Kind::EndpointSlice, "a", "s0-1");
    k.api.expire_history();
    let gone = k.api.gone_sent();
    k.api.set_down(false);
    // Until s0 goes, the others stay.
    assert!(
        wait_until(Duration::from_secs(60), || {
            for i in 1..5 {
                assert!(k.bird.has(&format!("203.0.113.{}/32", 10 + i)), "s{i} went");
            }
            !k.bird.has("203.0.113.10/32")
        }),
        "s0's VIP is still announced after the re-list"
    );
    assert!(
        k.api.gone_sent() > gone,
        "no watch was answered with 410 Gone"
    );
    // One 410 per watch at most: a watch from the fresh list's version is
    // served, so vipd does not re-list in a loop.
    assert!(
        k.api.gone_sent() - gone <= 3,
        "{} answers of 410 Gone: vipd re-lists in a loop",
        k.api.gone_sent() - gone
    );
    assert_eq!(routes(&k.bird), 4);
}

/// A watch reset (410 Gone) in the middle of a run withdraws nothing, and
/// changes made around it are applied.
#[test]
fn watch_reset_410_withdraws_nothing() {
    let k = kube_lab("kg");
    put_services(&k.api, 5);
    let v = start_synced(&k, "", 5);
    // The watches break, changes happen, the history is compacted: the
    // watches vipd starts again from its last version get 410 Gone.
    api_goes_away(&k, &v);
    k.api
        .put(obj::service("a", "new", &["203.0.113.50"], false));
    k.api
        .put(obj::slice("a", "new-1", "new", &[("node-b", true)]));
    k.api.expire_history();
    let before = k.api.requests();
    k.api.set_down(false);
    never_below(&k, 5, Duration::from_secs(3));
    assert!(
        wait_until(Duration::from_secs(60), || routes(&k.bird) == 6),
        "the change after the reset was not applied"
    );
    assert!(
        k.api.requests() > before,
        "vipd did not come back to the API"
    );
    assert!(k.api.gone_sent() > 0, "no watch was answered with 410 Gone");
    assert!(!v.log().contains("withdrawn=1"), "something was withdrawn");
}

/// The API server unreachable for 30 s: announcements stay, the reason is
/// logged, and changes made meanwhile are applied once it is back.
#[test]
fn api_server_down_for_30s_keeps_routes_and_catches_up() {
    let k = kube_lab("kd");
    put_services(&k.api, 3);
    let v = start_synced(&k, "", 3);
    k.api.set_down(true);
    // Changes while it is down: one Service deleted, one added.
    k.api.delete(Kind::Service, "a", "s0");
    k.api
        .put(obj::service("a", "late", &["203.0.113.40"], false));
    k.api
        .put(obj::slice("a", "late-1", "late", &[("node-b", true)]));
    never_below(&k, 3, Duration::from_secs(30));
    assert!(
        k.bird.has("203.0.113.10/32"),
        "s0's VIP went while the API was unreachable"
    );
    assert!(
        v.log().contains("Kubernetes API:"),
        "the outage is not in the log: {}",
        v.proc.log_tail(20)
    );
    k.api.set_down(false);
    assert!(
        wait_until(Duration::from_secs(60), || k.bird.has("203.0.113.40/32")
            && !k.bird.has("203.0.113.10/32")),
        "changes made during the outage were not applied"
    );
    assert_eq!(routes(&k.bird), 3);
    assert!(v.log().contains("Kubernetes API reachable again"));
}

/// An API server that accepts connections and never answers (hung, or a
/// dead load balancer in front of it): vipd's own timeouts notice, the
/// routes stay, status says why, and changes made meanwhile are applied
/// once it answers again. Bookmarks every second keep a quiet watch under
/// the 3 s read timeout before the outage.
#[test]
fn api_server_black_holed_keeps_routes_reports_and_catches_up() {
    let k = kube_lab("kh");
    k.api.set_bookmark_interval(Duration::from_secs(1));
    put_services(&k.api, 3);
    let v = start_synced(&k, "read_timeout_secs = 3\nconnect_timeout_secs = 3\n", 3);
    never_below(&k, 3, Duration::from_secs(4));
    assert!(
        !v.log().contains("Kubernetes API:"),
        "an error before the outage (bookmarks should keep the watches alive): {}",
        v.proc.log_tail(20)
    );
    k.api.set_blackhole(true);
    k.api.delete(Kind::Service, "a", "s0");
    k.api
        .put(obj::service("a", "late", &["203.0.113.40"], false));
    k.api
        .put(obj::slice("a", "late-1", "late", &[("node-b", true)]));
    // Until vipd notices, the routes stay.
    assert!(
        wait_until(Duration::from_secs(30), || {
            assert!(routes(&k.bird) >= 3, "routes went during the outage");
            v.log().contains("Kubernetes API:")
        }),
        "vipd never noticed the silent API server: {}",
        v.proc.log_tail(20)
    );
    let (_, text) = vipd_status(&k.lab.node);
    assert!(text.contains("API server:"), "{text}");
    assert!(
        k.bird.has("203.0.113.10/32"),
        "s0 went while the API was silent"
    );
    k.api.set_blackhole(false);
    assert!(
        wait_until(Duration::from_secs(60), || k.bird.has("203.0.113.40/32")
            && !k.bird.has("203.0.113.10/32")),
        "changes made during the outage were not applied"
    );
    assert_eq!(routes(&k.bird), 3);
}

fn node_addrs(k: &KubeLab) -> String {
    k.lab.node.ip(&["-o", "addr", "show", "dev", "vip0"])
}

fn node_routes(k: &KubeLab) -> String {
    let mut s = k.lab.node.ip(&["route", "show", "table", "100"]);
    s += &k.lab.node.ip(&["-6", "route", "show", "table", "100"]);
    s
}

/// Lesson 3 on the node: a deleted Service leaves no address and no route;
/// entries vipd did not create are never touched; after a crash vipd
/// recognises its own stale entries by their mark and removes them.
#[test]
fn deleted_service_leaves_no_address_or_route_and_others_stay() {
    leaves_nothing_behind("kn", "mark");
}

/// The same with the ownership record of kernels before 5.18 (forced here:
/// this kernel keeps the mark).
#[test]
fn on_kernels_without_the_mark_the_record_finds_vipds_addresses_after_a_crash() {
    leaves_nothing_behind("kr", "record");
}

fn leaves_nothing_behind(tag: &str, ownership: &str) {
    let k = kube_lab(tag);
    // No dummy driver on every kernel: a veth pair serves as well.
    k.lab.node.ip(&[
        "link", "add", "vip0", "type", "veth", "peer", "name", "vip0p",
    ]);
    k.lab.node.ip(&["link", "set", "vip0", "up"]);
    // Someone else's addresses and route, where vipd works: one of them at
    // the very VIP of a Service (vipd cannot add it, and must not take it).
    for a in ["198.51.100.200/32", "203.0.113.12/32"] {
        k.lab.node.ip(&["addr", "add", a, "dev", "vip0"]);
    }
    k.lab.node.ip(&[
        "route",
        "add",
        "198.51.100.201/32",
        "dev",
        "vip0",
        "table",
        "100",
        "proto",
        "static",
    ]);
    put_web(&k.api);
    for (name, vip) in [("db", "203.0.113.11"), ("cache", "203.0.113.12")] {
        k.api.put(obj::service("a", name, &[vip], false));
        let slice = format!("{name}-1");
        k.api
            .put(obj::slice("a", &slice, name, &[("node-b", true)]));
    }
    let extra = format!(
        "[dataplane]\naddress_interface = \"vip0\"\naddress_ownership = \"{ownership}\"\n\
         address_record = \"{}\"\n[dataplane.routes]\ntable = 100\ninterface = \"vip0\"\n",
        k.lab.dir.path("addresses").display()
    );
    let mut v = start_synced(&k, &extra, 4);
    let want = if ownership == "mark" {
        "IFA_PROTO mark"
    } else {
        "the record file"
    };
    assert!(v.log().contains(want), "{}", v.proc.log_tail(20));
    let has_all = |k: &KubeLab| {
        let (a, r) = (node_addrs(k), node_routes(k));
        ["203.0.113.10/32", "203.0.113.11/32", "2001:db8:ff::10/128"]
            .iter()
            .all(|x| a.contains(x))
            && ["203.0.113.10 ", "203.0.113.11 ", "2001:db8:ff::10 "]
                .iter()
                .all(|x| r.contains(x))
    };
    assert!(
        wait_until(Duration::from_secs(10), || has_all(&k)),
        "{}\n{}",
        node_addrs(&k),
        node_routes(&k)
    );
    // iproute2 6.1 cannot show an address's protocol; that vipd finds its
    // own entries by it is what the removals below prove.

    k.api.delete(Kind::Service, "a", "web");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (a, r) = (node_addrs(&k), node_routes(&k));
            !a.contains("203.0.113.10/32")
                && !a.contains("2001:db8:ff::10")
                && !r.contains("203.0.113.10 ")
                && !r.contains("2001:db8:ff::10 ")
        }),
        "left behind:\n{}\n{}",
        node_addrs(&k),
        node_routes(&k)
    );
    assert!(wait_until(Duration::from_secs(10), || routes(&k.bird) == 2));

    // vipd is killed (no cleanup at all); db and cache are deleted while it
    // is down; the restarted vipd removes db's entries and only those.
    v.proc.signal(libc::SIGKILL);
    let _ = v.proc.child.wait();
    assert!(
        node_addrs(&k).contains("203.0.113.11/32"),
        "the address went with the process"
    );
    k.api.delete(Kind::Service, "a", "db");
    k.api.delete(Kind::Service, "a", "cache");
    let v2 = Vipd::start(&k.lab.node, &k.lab.dir, &vipd_conf(&k, &extra));
    assert!(
        wait_until(Duration::from_secs(15), || !node_addrs(&k)
            .contains("203.0.113.11/32")
            && !node_routes(&k).contains("203.0.113.11 ")),
        "the stale entry of a Service deleted while vipd was down stayed:\n{}\n{}\n{}",
        node_addrs(&k),
        node_routes(&k),
        v2.proc.log_tail(20)
    );
    // Never touched: the other addresses and route.
    let a = node_addrs(&k);
    assert!(a.contains("198.51.100.200/32"), "{a}");
    assert!(
        a.contains("203.0.113.12/32"),
        "a foreign address at a VIP was removed: {a}"
    );
    assert!(
        node_routes(&k).contains("198.51.100.201 "),
        "{}",
        node_routes(&k)
    );
}

/// Two vipd nodes (node-a 192.0.2.11, node-b 192.0.2.12) on a bridge in the
/// router namespace, with BIRD (192.0.2.2) and the stand-in (192.0.2.100).
struct TwoNodes {
    dir: Dir,
    _router: Netns,
    nodes: Vec<Netns>,
    api: StandIn,
    bird: Bird,
}

fn two_nodes(tag: &str) -> TwoNodes {
    two_nodes_importing(tag, "import all", "as 65010")
}

/// Two nodes, with BIRD's channels importing through `import` (e.g. a
/// filter that honours GRACEFUL_SHUTDOWN), and its neighbours' AS given
/// as `remote` ("as 65010", or "external" for any but its own).
fn two_nodes_importing(tag: &str, import: &str, remote: &str) -> TwoNodes {
    require(&["ip"]);
    let dir = Dir::new(tag);
    let router = bridge_router(&format!("{tag}r"), &["192.0.2.2/24", "192.0.2.100/24"]);
    let mut nodes = vec![];
    for (i, ip) in ["192.0.2.11/24", "192.0.2.12/24"].iter().enumerate() {
        let n = Netns::new(&format!("{tag}{i}"));
        let a = join_bridge(&n, &router);
        n.ip(&["addr", "add", ip, "dev", &a]);
        nodes.push(n);
    }
    let api = StandIn::start(API.parse().unwrap(), Some(&router.name));
    api.put(obj::node("node-a", &["192.0.2.11"]));
    api.put(obj::node("node-b", &["192.0.2.12"]));
    let conf = bird_conf(
        &dir,
        &[
            ("na", "192.0.2.2", "192.0.2.11", "ipv4", ""),
            ("nb", "192.0.2.2", "192.0.2.12", "ipv4", ""),
        ],
    )
    .replace("import all", import)
    .replace("as 65010;", &format!("{remote};"));
    let bird = Bird::start(&router, &dir, &conf);
    TwoNodes {
        dir,
        _router: router,
        nodes,
        api,
        bird,
    }
}

fn node_conf(t: &TwoNodes, i: usize) -> String {
    let kc = t.dir.write("kubeconfig", &t.api.kubeconfig());
    let (ip, name) = [("192.0.2.11", "node-a"), ("192.0.2.12", "node-b")][i];
    format!(
        "[bgp]\nasn = 65010\nrouter_id = \"{ip}\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
         [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"{name}\"\n",
        kc.display()
    )
}

/// Local policy: reachable only via nodes with a ready local endpoint, and
/// following the endpoints as they move. Cluster policy: via both nodes.
#[test]
fn two_nodes_local_follows_endpoints_cluster_uses_both() {
    let t = two_nodes("k2");
    t.api
        .put(obj::service("a", "local", &["203.0.113.10"], true));
    t.api
        .put(obj::slice("a", "local-1", "local", &[("node-a", true)]));
    t.api
        .put(obj::service("a", "cluster", &["203.0.113.20"], false));
    t.api
        .put(obj::slice("a", "cluster-1", "cluster", &[("node-b", true)]));
    let _a = Vipd::start_named(&t.nodes[0], &t.dir, &node_conf(&t, 0), "vipd-a");
    let _b = Vipd::start_named(&t.nodes[1], &t.dir, &node_conf(&t, 1), "vipd-b");
    // Waits for BIRD's next hops for `prefix` to become exactly `want`.
    let hops_become = |prefix: &str, want: &[&str], secs: u64, what: &str| {
        assert!(
            wait_until(Duration::from_secs(secs), || t.bird.next_hops(prefix)
                == want),
            "{what}: {:?}",
            t.bird.next_hops(prefix)
        );
    };
    let both = ["192.0.2.11", "192.0.2.12"];
    hops_become("203.0.113.20/32", &both, 20, "Cluster policy");
    hops_become(
        "203.0.113.10/32",
        &["192.0.2.11"],
        10,
        "Local policy, endpoint on node-a",
    );
    // The endpoint moves to node-b.
    t.api
        .put(obj::slice("a", "local-1", "local", &[("node-b", true)]));
    hops_become(
        "203.0.113.10/32",
        &["192.0.2.12"],
        10,
        "Local policy after the move",
    );
    // Endpoints on both.
    t.api.put(obj::slice(
        "a",
        "local-1",
        "local",
        &[("node-b", true), ("node-a", true)],
    ));
    hops_become(
        "203.0.113.10/32",
        &both,
        10,
        "Local policy, endpoints on both",
    );
    // None ready: gone from both.
    t.api.put(obj::slice(
        "a",
        "local-1",
        "local",
        &[("node-b", false), ("node-a", false)],
    ));
    hops_become("203.0.113.10/32", &[], 10, "Local policy, none ready");
}

/// One configuration for every node: a peer with a `node_selector` exists
/// only while this node's labels match it. The IPv4 peer is for rack-1
/// only, the IPv6 peer for every node; relabelling the Node starts and
/// stops the IPv4 session and leaves the IPv6 one alone.
#[test]
fn peers_follow_the_nodes_labels() {
    let k = kube_lab("kl");
    let node = |zone: Option<&str>| {
        let mut n = obj::node("node-a", &["192.0.2.1"]);
        if let Some(z) = zone {
            n["metadata"]["labels"] = serde_json::json!({"topology.kubernetes.io/zone": z});
        }
        n
    };
    k.api.put(node(Some("rack-2")));
    put_web(&k.api);
    let kc = k.lab.dir.write("kubeconfig", &k.api.kubeconfig());
    let conf = format!(
        "{BGP}listen = \"[::]:179\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
         node_selector = {{ \"topology.kubernetes.io/zone\" = \"rack-1\" }}\n\
         [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nconnect_retry = 1\n\
         [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\n",
        kc.display()
    );
    let vipd = Vipd::start(&k.lab.node, &k.lab.dir, &conf);
    let context = |what: &str| {
        format!(
            "{what}\n{}\n{}\nvipd log:\n{}",
            k.bird.cli("show protocols"),
            k.bird.route("203.0.113.10/32"),
            vipd.proc.log_tail(30)
        )
    };
    assert!(
        wait_until(Duration::from_secs(15), || k.bird.established("v6")
            && k.bird.has("2001:db8:ff::10/128")),
        "{}",
        context("the IPv6 peer (every node) never came up")
    );
    holds_for(Duration::from_secs(3), || {
        assert!(
            !k.bird.established("v4"),
            "{}",
            context("a rack-1 peer on a rack-2 node")
        )
    });
    let since = |proto: &str| {
        k.bird
            .state(proto)
            .lines()
            .find(|l| l.starts_with(proto))
            .and_then(|l| l.split_whitespace().nth(4).map(String::from))
            .unwrap_or_default()
    };
    let v6_since = since("v6");
    assert!(
        v6_since.contains(':'),
        "no session start time in: {}",
        k.bird.state("v6")
    );
    k.api.put(node(Some("rack-1")));
    assert!(
        wait_until(Duration::from_secs(15), || k.bird.established("v4")
            && k.bird.has("203.0.113.10/32")),
        "{}",
        context("relabelled rack-1: no IPv4 session")
    );
    assert!(vipd.log().contains("peers for this node's labels"));
    k.api.put(node(None));
    assert!(
        wait_until(Duration::from_secs(10), || !k.bird.established("v4")
            && !k.bird.has("203.0.113.10/32")),
        "{}",
        context("label removed: the IPv4 session stayed")
    );
    assert!(k.bird.established("v6"));
    assert_eq!(since("v6"), v6_since, "the IPv6 session was restarted");
}

/// ASN per node: each node's ASN from its Node's label (`bgp.asn =
/// "label:KEY"`), one ToR accepting any external AS. BIRD holds each
/// node's path with its own AS; a node relabelled restarts its session
/// alone, with the new AS; a node without the label has no session and
/// says why; a peer's `local_asn` wins over the label.
#[test]
fn each_node_speaks_the_asn_of_its_label_and_follows_it() {
    let t = two_nodes_importing("ka", "import all", "external");
    let names = ["node-a", "node-b"];
    let ips = ["192.0.2.11", "192.0.2.12"];
    let node = |i: usize, asn: Option<&str>| {
        let mut n = obj::node(names[i], &[ips[i]]);
        if let Some(a) = asn {
            n["metadata"]["labels"] = serde_json::json!({"vipd.io/asn": a});
        }
        n
    };
    t.api.put(node(0, Some("65101")));
    t.api.put(node(1, Some("4200000102")));
    t.api
        .put(obj::service("a", "cluster", &["203.0.113.20"], false));
    t.api
        .put(obj::slice("a", "cluster-1", "cluster", &[("node-b", true)]));
    let conf = |i: usize, local: &str| {
        node_conf(&t, i)
            .replace("asn = 65010", "asn = \"label:vipd.io/asn\"")
            .replace("asn = 65002\n", &format!("asn = 65002\n{local}"))
    };
    let a = Vipd::start_named(&t.nodes[0], &t.dir, &conf(0, ""), "vipd-a");
    let b = Vipd::start_named(&t.nodes[1], &t.dir, &conf(1, ""), "vipd-b");
    let paths = || {
        let mut v: Vec<String> = t
            .bird
            .route("203.0.113.20/32")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("BGP.as_path: ").map(String::from))
            .collect();
        v.sort();
        v
    };
    let context = |what: &str| {
        format!(
            "{what}\nBIRD's paths: {:?}\n{}\nBIRD's log:\n{}\nvipd-a log:\n{}\nvipd-b log:\n{}",
            paths(),
            t.bird.cli("show protocols"),
            std::fs::read_to_string(t.dir.path("bird.log")).unwrap_or_default(),
            a.proc.log_tail(20),
            b.proc.log_tail(20)
        )
    };
    // BIRD's `external` neighbour may keep the AS it learnt first until
    // its protocol restarts ("Bad peer AS: 65103"): then restarted, as
    // whoever runs the ToR would.
    let accept_new_as = |proto: &str, want: &[&str]| {
        wait_until(Duration::from_secs(10), || {
            paths() == want || t.bird.state(proto).contains("Bad peer AS")
        });
        if t.bird.state(proto).contains("Bad peer AS") {
            t.bird.cli(&format!("restart {proto}"));
        }
    };
    let paths_become = |want: &[&str], what: &str| {
        assert!(
            wait_until(Duration::from_secs(20), || paths() == want),
            "{}",
            context(what)
        );
    };
    paths_become(&["4200000102", "65101"], "each node's own AS");
    let na = t.bird.session_line("na");
    t.api.put(node(1, Some("65103")));
    accept_new_as("nb", &["65101", "65103"]);
    paths_become(&["65101", "65103"], "node-b relabelled");
    assert_eq!(t.bird.session_line("na"), na, "node-a's session restarted");
    t.api.put(node(1, None));
    paths_become(&["65101"], "node-b's label removed");
    let (_, st) = vipd_status(&t.nodes[1]);
    assert!(
        st.contains(
            "ready: no (bgp.asn: this Node has no label \"vipd.io/asn\" to take its ASN from)"
        ),
        "{st}"
    );
    assert_eq!(t.bird.session_line("na"), na, "node-a's session restarted");
    // A peer's own local_asn, on reload: that session speaks it.
    a.reload(&conf(0, "local_asn = 65200\n"));
    accept_new_as("na", &["65200"]);
    paths_become(&["65200"], "node-a's peer with local_asn");
}

/// A cordoned node drains without loss (RFC 8326): its path first carries
/// GRACEFUL_SHUTDOWN, which BIRD (configured to honour it) prefers less, so
/// the other node's path carries the traffic while both exist; after
/// graceful_shutdown_secs the path is withdrawn; uncordoned, it is back
/// with its normal attributes.
#[test]
fn a_cordoned_node_drains_with_graceful_shutdown_then_withdraws() {
    let t = two_nodes_importing(
        "kd",
        "import filter { if (65535, 0) ~ bgp_community then { bgp_local_pref = 0; preference = 10; } accept; }",
        "as 65010",
    );
    t.api
        .put(obj::service("a", "cluster", &["203.0.113.20"], false));
    t.api
        .put(obj::slice("a", "cluster-1", "cluster", &[("node-b", true)]));
    let drain = "[drain]\ngraceful_shutdown_secs = 4\n";
    // node-a withdraws on stop: gracefully too, with [drain].
    let conf_a = node_conf(&t, 0).replace("[bgp]\n", "[bgp]\nwithdraw_on_stop = true\n") + drain;
    let mut a = Vipd::start_named(&t.nodes[0], &t.dir, &conf_a, "vipd-a");
    let _b = Vipd::start_named(&t.nodes[1], &t.dir, &(node_conf(&t, 1) + drain), "vipd-b");
    let p = "203.0.113.20/32";
    let both = ["192.0.2.11", "192.0.2.12"];
    let context = |what: &str| {
        format!(
            "{what}\n{}\nvipd-a log:\n{}",
            t.bird.route(p),
            a.proc.log_tail(20)
        )
    };
    assert!(
        wait_until(Duration::from_secs(20), || t.bird.next_hops(p) == both),
        "{}",
        context("not announced by both nodes")
    );
    assert!(!t.bird.route(p).contains("(65535,0)"));
    // The route BIRD chose: the line marked with '*' and its next hop.
    let best = || {
        let r = t.bird.cli(&format!("show route for {p}"));
        let lines: Vec<&str> = r.lines().collect();
        lines
            .iter()
            .position(|l| l.contains(" * "))
            .and_then(|i| lines.get(i + 1))
            .and_then(|l| l.split_whitespace().nth(1).map(String::from))
            .unwrap_or_default()
    };
    let mut cordoned = obj::node("node-a", &["192.0.2.11"]);
    cordoned["spec"] = serde_json::json!({"unschedulable": true});
    t.api.put(cordoned);
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || t
            .bird
            .route(p)
            .contains("(65535,0)")
            && t.bird.next_hops(p) == both
            && best() == "192.0.2.12"),
        "{}",
        context("no GRACEFUL_SHUTDOWN window with node-b preferred")
    );
    let (_, text) = vipd_status(&t.nodes[0]);
    assert!(
        text.contains(
            "drain: draining (cordoned): VIPs announced with GRACEFUL_SHUTDOWN, withdrawn in"
        ),
        "{text}"
    );
    // What an operator asks about one Service says the same.
    let explain = || vipd_cli(&t.nodes[0], &["explain", "a/cluster"]).1;
    let why = explain();
    assert!(
        why.contains("    draining: announced with GRACEFUL_SHUTDOWN (cordoned), withdrawn in"),
        "{why}"
    );
    assert!(
        wait_until(Duration::from_secs(8), || t.bird.next_hops(p)
            == ["192.0.2.12"]),
        "{}",
        context("never withdrawn after graceful_shutdown_secs")
    );
    let window = t0.elapsed();
    eprintln!("node-a withdrawn {window:?} after the cordon (graceful_shutdown_secs = 4)");
    assert!(
        window >= Duration::from_secs(3),
        "withdrawn after only {window:?}"
    );
    assert!(vipd_status(&t.nodes[0])
        .1
        .contains("drain: draining (cordoned): VIPs withdrawn"));
    let why = explain();
    assert!(why.contains("    draining: withdrawn (cordoned)"), "{why}");
    t.api.put(obj::node("node-a", &["192.0.2.11"]));
    assert!(
        wait_until(Duration::from_secs(5), || t.bird.next_hops(p) == both),
        "{}",
        context("not back after the uncordon")
    );
    let r = t.bird.route(p);
    assert!(!r.contains("(65535,0)"), "{r}");
    assert!(vipd_status(&t.nodes[0]).1.contains("drain: not draining"));
    // Stopped with withdraw_on_stop: the same window before the withdrawal.
    a.proc.signal(libc::SIGTERM);
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || t
            .bird
            .route(p)
            .contains("(65535,0)")
            && best() == "192.0.2.12"),
        "{}",
        context("stopping: no GRACEFUL_SHUTDOWN window")
    );
    assert!(
        wait_until(Duration::from_secs(8), || t.bird.next_hops(p)
            == ["192.0.2.12"]),
        "{}",
        context("stopping: never withdrawn")
    );
    assert!(wait_until(Duration::from_secs(5), || !a.proc.alive()));
    let window = t0.elapsed();
    eprintln!("node-a stopped {window:?} after SIGTERM");
    assert!(
        window >= Duration::from_secs(3),
        "stopped after only {window:?}"
    );
}

/// With `[kubernetes]`, the router ID may be left out and addresses given
/// as "node": they come from the Node's InternalIPs (never its other
/// addresses). A Node without the family needed is a clear error at start.
#[test]
fn router_id_and_node_addresses_come_from_the_node() {
    let k = kube_lab("kn");
    k.lab.node.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::7/64",
        "dev",
        &k.lab.node.dev_of("192.0.2.1/24"),
        "nodad",
    ]);
    let mut n = obj::node("node-a", &[]);
    n["status"]["addresses"] = serde_json::json!([
        {"type": "ExternalIP", "address": "198.51.100.77"},
        {"type": "InternalIP", "address": "2001:db8::7"},
        {"type": "InternalIP", "address": "192.0.2.1"}
    ]);
    k.api.put(n);
    k.api.put(obj::node("node-v6", &["2001:db8::9"]));
    put_web(&k.api);
    let kc = k.lab.dir.write("kubeconfig", &k.api.kubeconfig());
    let conf = |node: &str| {
        format!(
            "[bgp]\nasn = 65010\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\nsource_address = \"node\"\n\
             [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nconnect_retry = 1\n\
             source_address = \"2001:db8::1\"\nnext_hop_ipv6 = \"node\"\n\
             [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"{node}\"\n",
            kc.display()
        )
    };
    let vipd = Vipd::start(&k.lab.node, &k.lab.dir, &conf("node-a"));
    let view = || {
        format!(
            "{}\n{}\nvipd log:\n{}",
            k.bird.cli("show protocols all v4"),
            k.bird.cli("show route all"),
            vipd.proc.log_tail(30)
        )
    };
    assert!(
        wait_until(Duration::from_secs(15), || k.bird.has("203.0.113.10/32")
            && k.bird.has("2001:db8:ff::10/128")),
        "{}",
        view()
    );
    let proto = k.bird.cli("show protocols all v4");
    assert!(proto.contains("Neighbor ID:      192.0.2.1"), "{}", view());
    let r6 = k.bird.route("2001:db8:ff::10/128");
    assert!(r6.contains("BGP.next_hop: 2001:db8::7"), "{}", view());
    assert!(vipd.log().contains("addresses from the Node resolved"));

    // Beside the first vipd in this namespace: without a status listener,
    // whose port the first one holds (one vipd per node).
    let v6_conf = conf("node-v6") + "[status]\nenabled = false\n";
    let mut v6 = Vipd::start_named(&k.lab.node, &k.lab.dir, &v6_conf, "vipd-v6");
    assert!(
        wait_until(Duration::from_secs(10), || !v6.proc.alive()),
        "vipd started without an IPv4 router ID:\n{}",
        v6.log()
    );
    assert_eq!(v6.proc.child.wait().unwrap().code(), Some(2));
    assert!(
        v6.log().contains("bgp.router_id: \"node\" (or omitted): this Node has no IPv4 InternalIP; set an address"),
        "{}",
        v6.log()
    );
}

/// Issue 20, Events at fleet scale: a decision every node makes alike (an
/// address outside `allowed_prefixes`) is one Event in the cluster however
/// many nodes post it; a node's own decision (its own address) names that
/// node; restarting every node writes nothing new; a refusal that goes
/// away and comes back is counted once more on its Event, by one node.
#[test]
fn a_fleet_records_each_decision_once_and_a_restart_writes_nothing() {
    const NODES: usize = 6;
    const REFUSED: usize = 30;
    let k = kube_lab("kev");
    let kc = k.lab.dir.write("kubeconfig", &k.api.kubeconfig());
    for i in 0..NODES {
        k.api.put(obj::node(
            &format!("node-{i}"),
            &[&format!("192.0.2.{}", 10 + i)],
        ));
    }
    let refused = |i: usize, ip: &str| {
        let name = format!("out-{i}");
        k.api.put(obj::service("t", &name, &[ip], false));
    };
    for i in 0..REFUSED {
        refused(i, &format!("198.51.100.{i}"));
        k.api.put(obj::slice(
            "t",
            &format!("out-{i}-1"),
            &format!("out-{i}"),
            &[("node-b", true)],
        ));
    }
    // node-0's own address: refused as such there, as outside elsewhere.
    k.api.put(obj::service("t", "own", &["192.0.2.10"], false));
    k.api
        .put(obj::slice("t", "own-1", "own", &[("node-b", true)]));
    // Peerless nodes side by side in one namespace, each its own status port.
    let conf = |i: usize| {
        format!(
            "{BGP}[kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"node-{i}\"\n\
             allowed_prefixes = [\"203.0.113.0/24\"]\n\
             [status]\nlisten = \"127.0.0.1:{}\"\nready_needs_peer = false\n",
            kc.display(),
            9300 + i
        )
    };
    let start = || -> Vec<Vipd> {
        let v: Vec<Vipd> = (0..NODES)
            .map(|i| Vipd::start_named(&k.lab.node, &k.lab.dir, &conf(i), &format!("node-{i}")))
            .collect();
        for x in &v {
            assert!(
                x.wait_log("caches synced", Duration::from_secs(20)),
                "{}",
                x.proc.log_tail(20)
            );
        }
        v
    };
    let expected = REFUSED + 2;
    let context = |v: &[Vipd]| {
        format!(
            "events {:#?}\n{}",
            k.api.events().len(),
            v[0].proc.log_tail(20)
        )
    };
    let fleet = start();
    assert!(
        wait_until(Duration::from_secs(20), || k.api.events().len() == expected),
        "{}",
        context(&fleet)
    );
    std::thread::sleep(Duration::from_secs(2));
    let events = k.api.events();
    assert_eq!(events.len(), expected, "{}", context(&fleet));
    assert_eq!(k.api.event_writes(), expected as u64, "one write per Event");
    let own: Vec<&serde_json::Value> = (events.iter())
        .filter(|e| e["source"]["host"].is_string())
        .collect();
    assert_eq!(
        own.len(),
        1,
        "only node-0's own address names a node: {own:#?}"
    );
    assert_eq!(own[0]["source"]["host"], "node-0");
    assert!(own[0]["message"].as_str().unwrap().contains("192.0.2.10"));

    // A rollout: every node restarted. Not even a create refused (409):
    // each node lists what is recorded and asks nothing.
    drop(fleet);
    let asked = k.api.event_asks();
    let fleet = start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        k.api.event_writes(),
        expected as u64,
        "written again: {}",
        context(&fleet)
    );
    assert_eq!(
        k.api.event_asks(),
        asked,
        "asked again: {}",
        context(&fleet)
    );

    // out-0 allowed, then refused again: one more count, one write.
    refused(0, "203.0.113.50");
    std::thread::sleep(Duration::from_secs(2));
    refused(0, "198.51.100.0");
    let count = || {
        (k.api.events().iter())
            .filter(|e| e["involvedObject"]["name"] == "out-0")
            .map(|e| e["count"].as_i64().unwrap_or(0))
            .max()
    };
    assert!(
        wait_until(Duration::from_secs(10), || count() == Some(2)),
        "the recurrence was not counted: {:?} {}",
        count(),
        context(&fleet)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(), Some(2));
    assert_eq!(k.api.event_writes(), expected as u64 + 1);
}

/// Issue 18 part 4: two pools, each to its own ToR with its communities
/// (`peers`, `communities`); the first pool aggregated at /28. The
/// aggregate is at its ToR while a Cluster Service of the pool is
/// announced, makes way for each address while a Local Service is inside,
/// and goes with the last Service; `vipd explain` says where each
/// attribute came from.
#[test]
fn each_pool_goes_to_its_own_router_and_an_aggregate_follows_its_services() {
    let k = kube_lab("kp");
    let r2 = k.lab.add_router("kp2r");
    let dir2 = Dir::new("kp2");
    let tor_b = Bird::start(
        &r2,
        &dir2,
        &bird_conf(&dir2, &[("v4", "198.51.100.2", "198.51.100.1", "ipv4", "")]),
    );
    let kc = k.lab.dir.write("kubeconfig", &k.api.kubeconfig());
    let conf = format!(
        "{BGP}listen = \"[::]:179\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\nname = \"tor-a\"\n\
         [[bgp.peers]]\naddress = \"198.51.100.2\"\nasn = 65002\nconnect_retry = 1\nname = \"tor-b\"\n\
         [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\n\
         [ipam]\n\
         [[ipam.pools]]\nname = \"blue\"\naddresses = [\"203.0.113.0/28\"]\n\
         communities = [\"65000:1\"]\npeers = [\"tor-a\"]\naggregate_length = 28\n\
         [[ipam.pools]]\nname = \"green\"\naddresses = [\"203.0.113.16/28\"]\n\
         communities = [\"65000:2\"]\nlocal_pref = 250\npeers = [\"tor-b\"]\n",
        kc.display()
    );
    let svc = |name: &str, ip: &str, local: bool, node: &str| {
        k.api.put(obj::service("a", name, &[ip], local));
        k.api
            .put(obj::slice("a", &format!("{name}-1"), name, &[(node, true)]));
    };
    svc("one", "203.0.113.1", false, "node-b");
    svc("green", "203.0.113.17", false, "node-b");
    let v = Vipd::start(&k.lab.node, &k.lab.dir, &conf);
    let views = |v: &Vipd| {
        format!(
            "tor-a:\n{}\ntor-b:\n{}\nvipd:\n{}",
            k.bird.cli("show route all"),
            tor_b.cli("show route all"),
            v.proc.log_tail(30)
        )
    };
    let settled = |a: &[&str], b: &[&str]| {
        wait_until(Duration::from_secs(20), || {
            a.iter().all(|p| k.bird.has(p))
                && b.iter().all(|p| tor_b.has(p))
                && k.bird.count("master4") == a.len()
                && tor_b.count("master4") == b.len()
        })
    };
    assert!(
        settled(&["203.0.113.0/28"], &["203.0.113.17/32"]),
        "each ToR should hold only its pool, blue as its aggregate\n{}",
        views(&v)
    );
    let community = |b: &Bird, p: &str| {
        b.route(p)
            .lines()
            .find(|l| l.contains("BGP.community"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        community(&k.bird, "203.0.113.0/28").contains("(65000,1)"),
        "{}",
        views(&v)
    );
    assert!(
        community(&tor_b, "203.0.113.17/32").contains("(65000,2)"),
        "{}",
        views(&v)
    );
    let (_, explain) = vipd_cli(&k.lab.node, &["explain", "a/one"]);
    for line in [
        "communities 65000:1 (pool blue)",
        "only to peers tor-a (pool blue)",
        "announced as part of 203.0.113.0/28 (pool blue's aggregate_length)",
        "not to 198.51.100.2 AS65002: not sent: for peers tor-a only",
    ] {
        assert!(explain.contains(line), "no {line:?} in:\n{explain}");
    }
    let (_, explain) = vipd_cli(&k.lab.node, &["explain", "a/green"]);
    assert!(explain.contains("local-pref 250 (pool green)"), "{explain}");
    // A Local Service inside: announced only where its endpoint is, so
    // the aggregate makes way for each address.
    svc("local", "203.0.113.2", true, "node-a");
    assert!(
        settled(&["203.0.113.1/32", "203.0.113.2/32"], &["203.0.113.17/32"]),
        "a Local Service inside should take the aggregate away\n{}",
        views(&v)
    );
    k.api.delete(Kind::Service, "a", "local");
    assert!(
        settled(&["203.0.113.0/28"], &["203.0.113.17/32"]),
        "the aggregate should come back\n{}",
        views(&v)
    );
    // The last Service it stands for goes: so does the aggregate.
    k.api.delete(Kind::Service, "a", "one");
    assert!(
        settled(&[], &["203.0.113.17/32"]),
        "the aggregate should go with the last Service\n{}",
        views(&v)
    );
    // A reload sends the green pool to tor-a instead: withdrawn from
    // tor-b, announced to tor-a, without a restart.
    v.reload(&conf.replace("peers = [\"tor-b\"]", "peers = [\"tor-a\"]"));
    assert!(
        settled(&["203.0.113.17/32"], &[]),
        "the reload should move the green pool to tor-a\n{}",
        views(&v)
    );
    assert!(
        !v.log().contains("take effect only when vipd restarts"),
        "{}",
        v.proc.log_tail(20)
    );
}

/// The next hops BIRD holds for each prefix, from one `show route all`.
fn paths_by_prefix(b: &Bird) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut current = String::new();
    for l in b.cli("show route all").lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if !l.starts_with(char::is_whitespace) && first.contains('/') {
            current = first.to_string();
        }
        if let Some(nh) = l.trim().strip_prefix("BGP.next_hop: ") {
            out.entry(current.clone()).or_default().push(nh.to_string());
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Issue 18 part 3: twelve nodes, `max_announcing_nodes = 4`: BIRD holds
/// exactly four paths for each of 60 Cluster VIPs, the VIPs spread over
/// the nodes within 1.5 times the mean, and a cordoned node's VIPs (only
/// those) move, each to one other node.
#[test]
fn a_cap_of_four_gives_four_paths_spread_and_a_cordon_moves_only_its_vips() {
    const N: usize = 12;
    const VIPS: usize = 60;
    require(&["ip"]);
    let tag = "kx";
    let dir = Dir::new(tag);
    let router = bridge_router(&format!("{tag}r"), &["192.0.2.2/24", "192.0.2.100/24"]);
    let ip_of = |i: usize| format!("192.0.2.{}", 11 + i);
    let name_of = |i: usize| format!("node-{i:02}");
    let mut nodes = vec![];
    for i in 0..N {
        let n = Netns::new(&format!("{tag}{i}"));
        let a = join_bridge(&n, &router);
        n.ip(&["addr", "add", &format!("{}/24", ip_of(i)), "dev", &a]);
        nodes.push(n);
    }
    let api = StandIn::start(API.parse().unwrap(), Some(&router.name));
    let node_obj = |i: usize, cordoned: bool| {
        let mut n = obj::node(&name_of(i), &[&ip_of(i)]);
        n["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "True"}]);
        n["spec"] = serde_json::json!({"unschedulable": cordoned});
        n
    };
    for i in 0..N {
        api.put(node_obj(i, false));
    }
    for i in 0..VIPS {
        let name = format!("s{i}");
        api.put(obj::service(
            "a",
            &name,
            &[&format!("203.0.113.{}", 10 + i)],
            false,
        ));
        api.put(obj::slice(
            "a",
            &format!("{name}-1"),
            &name,
            &[("node-00", true)],
        ));
    }
    let protocols: Vec<(String, String)> = (0..N).map(|i| (format!("n{i}"), ip_of(i))).collect();
    let list: Vec<(&str, &str, &str, &str, &str)> = protocols
        .iter()
        .map(|(p, ip)| (p.as_str(), "192.0.2.2", ip.as_str(), "ipv4", ""))
        .collect();
    let bird = Bird::start(&router, &dir, &bird_conf(&dir, &list));
    let kc = dir.write("kubeconfig", &api.kubeconfig());
    let vipds: Vec<Vipd> = (0..N)
        .map(|i| {
            let conf = format!(
                "[bgp]\nasn = 65010\nrouter_id = \"{}\"\nmax_announcing_nodes = 4\n\
                 [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
                 [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"{}\"\n\
                 [drain]\ngraceful_shutdown_secs = 1\n",
                ip_of(i),
                kc.display(),
                name_of(i)
            );
            Vipd::start_named(&nodes[i], &dir, &conf, &format!("vipd-{i:02}"))
        })
        .collect();
    let tails = || {
        (vipds.iter().take(3))
            .map(|v| v.proc.log_tail(10))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let settled = |bad: Option<&str>| {
        let mut last = Default::default();
        let ok = wait_until(Duration::from_secs(40), || {
            last = paths_by_prefix(&bird);
            last.len() == VIPS
                && last.values().all(|v| v.len() == 4)
                && bad.is_none_or(|b| last.values().all(|v| !v.iter().any(|x| x == b)))
        });
        assert!(
            ok,
            "not 4 paths for each of {VIPS} VIPs: {last:?}\n{}",
            tails()
        );
        last
    };
    let before = settled(None);
    let mut load = vec![0usize; N];
    for hops in before.values() {
        for h in hops {
            load[h.rsplit('.').next().unwrap().parse::<usize>().unwrap() - 11] += 1;
        }
    }
    let mean = (VIPS * 4) as f64 / N as f64;
    let max = *load.iter().max().unwrap() as f64;
    println!("VIPs per node: {load:?} (mean {mean}, max {max})");
    assert!(max <= 1.5 * mean, "VIPs per node {load:?}, mean {mean}");
    // node-05 cordoned: the others rank without it at once; it drains
    // (GRACEFUL_SHUTDOWN for 1 s), then withdraws.
    let gone = ip_of(5);
    api.put(node_obj(5, true));
    let after = settled(Some(&gone));
    let mut moved = 0;
    for (p, was) in &before {
        let now = &after[p];
        if was.contains(&gone) {
            let kept = was.iter().filter(|h| **h != gone).all(|h| now.contains(h));
            assert!(kept, "{p}: {was:?} -> {now:?}: more than node-05 moved");
            moved += 1;
        } else {
            assert_eq!(was, now, "{p} moved though node-05 did not carry it");
        }
    }
    assert_eq!(moved, load[5], "every VIP node-05 carried moved");
    // node-00 says why it leaves a VIP to others, naming them.
    let (p, hops) = (after.iter())
        .find(|(_, h)| !h.contains(&ip_of(0)))
        .unwrap();
    let i: usize = p
        .trim_end_matches("/32")
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (_, text) = vipd_cli(&nodes[0], &["explain", &format!("a/s{}", i - 10)]);
    assert!(
        text.contains(
            "not one of the 4 nodes chosen to announce it (max_announcing_nodes) among 11 eligible"
        ),
        "{text}"
    );
    for h in hops {
        let n: usize = h.rsplit('.').next().unwrap().parse().unwrap();
        assert!(text.contains(&name_of(n - 11)), "{h} not named: {text}");
    }
}
