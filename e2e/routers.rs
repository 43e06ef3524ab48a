//! The router configurations of `docs/routers.md`, run as written (taken
//! from the document, not copied): FRR with `bgp listen range` and two
//! vipd nodes it has no line for, and BIRD with `neighbor range`. Each
//! accepts only host routes from the VIP range, spreads a VIP over both
//! nodes, honours GRACEFUL_SHUTDOWN, and runs BFD with the nodes.

#[path = "lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::*;

/// The code block of `docs/routers.md` whose fence names `tag`.
fn block(tag: &str) -> String {
    let doc = include_str!("../docs/routers.md");
    let open = format!("```{tag}\n");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("no ```{tag} block"))
        + open.len();
    let len = doc[start..].find("```\n").expect("the block's end");
    doc[start..start + len].to_string()
}

/// Two nodes on the router's bridge, 192.0.2.11 and 192.0.2.12, each
/// with vipd as `docs/routers.md` pairs it: BFD on, peer 192.0.2.2.
struct Rack {
    dir: Dir,
    router: Netns,
    nodes: Vec<Netns>,
}

const NODES: [&str; 2] = ["192.0.2.11", "192.0.2.12"];

fn rack(tag: &str) -> Rack {
    let dir = Dir::new(tag);
    let router = bridge_router(&format!("{tag}r"), &["192.0.2.2/24"]);
    let nodes = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let n = Netns::new(&format!("{tag}{i}"));
            let a = join_bridge(&n, &router);
            n.ip(&["addr", "add", &format!("{ip}/24"), "dev", &a]);
            n
        })
        .collect();
    Rack { dir, router, nodes }
}

/// vipd on node `i`: the VIP 203.0.113.10 from both; 203.0.113.20 from
/// both, node 1 draining it (GRACEFUL_SHUTDOWN); from node 0 also what the
/// router must refuse: a prefix outside the VIP range, and a /31.
fn vipd(r: &Rack, i: usize) -> Vipd {
    let ip = NODES[i];
    let mut conf = format!(
        "[bgp]\nasn = 65010\nrouter_id = \"{ip}\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nbfd = true\nbfd_wait = false\nconnect_retry = 1\n\
         [[announce]]\nprefix = \"203.0.113.10/32\"\n"
    );
    conf += if i == 1 {
        "[[announce]]\nprefix = \"203.0.113.20/32\"\ncommunities = [\"65535:0\"]\n"
    } else {
        "[[announce]]\nprefix = \"203.0.113.20/32\"\n\
         [[announce]]\nprefixes = [\"198.51.100.50/32\", \"203.0.113.30/31\"]\n"
    };
    Vipd::start_named(&r.nodes[i], &r.dir, &conf, &format!("vipd{i}"))
}

#[test]
fn frr_as_documented_takes_two_nodes_it_was_never_told_about() {
    let r = rack("tf");
    let frr = Frr::start_with_bfd(&r.router, &r.dir, &block("frr-bgpd"), &block("frr-bfdd"));
    let v: Vec<Vipd> = (0..2).map(|i| vipd(&r, i)).collect();
    let paths = |p: &str| {
        frr.json(&format!("show bgp ipv4 unicast {p} json"))["paths"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let views = || {
        format!(
            "{}\n{}\n{}\n{}",
            frr.vtysh("show bgp summary"),
            frr.vtysh("show bgp ipv4 unicast"),
            v[0].proc.log_tail(15),
            v[1].proc.log_tail(15)
        )
    };
    assert!(
        wait_until(Duration::from_secs(40), || paths("203.0.113.10/32").len()
            == 2
            && paths("203.0.113.20/32").len() == 2),
        "{}",
        views()
    );
    // Dynamic neighbours, from the listen range.
    let summary = frr.vtysh("show bgp summary");
    for n in NODES {
        assert!(summary.contains(&format!("*{n}")), "{summary}");
    }
    // ECMP: both nodes' paths in use for the VIP.
    let p10 = paths("203.0.113.10/32");
    assert!(
        p10.iter()
            .all(|p| p["multipath"] == true || p["bestpath"]["overall"] == true)
            && p10.iter().filter(|p| p["multipath"] == true).count() == 2,
        "{p10:?}"
    );
    // RFC 8326: the draining node's path has LOCAL_PREF 0 and is not used.
    let p20 = paths("203.0.113.20/32");
    let from = |p: &serde_json::Value| p["peer"]["peerId"].as_str().unwrap_or("").to_string();
    let drained = p20
        .iter()
        .find(|p| from(p) == NODES[1])
        .expect("node 1's path");
    assert_eq!(drained["locPrf"], 0, "{p20:?}");
    let best = p20
        .iter()
        .find(|p| p["bestpath"]["overall"] == true)
        .unwrap();
    assert_eq!(from(best), NODES[0], "{p20:?}");
    // Only host routes from the VIP range.
    holds_for(Duration::from_secs(2), || {
        assert_eq!(frr.count("ipv4"), 2, "{}", views());
    });
    assert!(paths("198.51.100.50/32").is_empty() && paths("203.0.113.30/31").is_empty());
    // BFD with both nodes, from the documented profile.
    let bfd = frr.json("show bfd peers json");
    for n in NODES {
        assert!(
            wait_until(Duration::from_secs(20), || frr
                .json("show bfd peers json")
                .as_array()
                .is_some_and(|a| a
                    .iter()
                    .any(|p| p["peer"] == n && p["status"] == "up"))),
            "{n}: {bfd}"
        );
    }
}

#[test]
fn bird_as_documented_takes_two_nodes_it_was_never_told_about() {
    let r = rack("tb");
    let bird = Bird::start(&r.router, &r.dir, &block("bird"));
    let v: Vec<Vipd> = (0..2).map(|i| vipd(&r, i)).collect();
    let views = || {
        format!(
            "{}\n{}\n{}",
            bird.cli("show route all"),
            v[0].proc.log_tail(15),
            v[1].proc.log_tail(15)
        )
    };
    let hops = |p: &str| bird.next_hops(p).len();
    assert!(
        wait_until(Duration::from_secs(40), || hops("203.0.113.10/32") == 2
            && hops("203.0.113.20/32") == 2),
        "{}",
        views()
    );
    let route = bird.route("203.0.113.20/32");
    assert!(route.contains("BGP.local_pref: 0"), "{route}");
    assert!(
        !bird.has("198.51.100.50/32") && !bird.has("203.0.113.30/31"),
        "{}",
        views()
    );
    let protos = bird.cli("show protocols");
    assert_eq!(protos.matches("Established").count(), 2, "{protos}");
    let bfd = bird.cli("show bfd sessions");
    for n in NODES {
        assert!(
            wait_until(Duration::from_secs(20), || bird
                .cli("show bfd sessions")
                .lines()
                .any(|l| l.starts_with(n) && l.contains("Up"))),
            "{n}: {bfd}"
        );
    }
    // ECMP into the router's kernel: one route, both nodes.
    let k = r.router.ip(&["route", "show", "203.0.113.10/32"]);
    assert!(NODES.iter().all(|n| k.contains(&format!("via {n}"))), "{k}");
}
