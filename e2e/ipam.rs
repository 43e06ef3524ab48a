//! vipd as the cluster's LoadBalancer allocator (`[ipam]`): two nodes on
//! one bridge with BIRD and the API stand-in, Services created without
//! addresses. Checked: the status the stand-in stores, its record of every
//! status write (no address ever given to two Services), the Events, the
//! Lease, and the routes at BIRD.

#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lab::*;
use serde_json::{json, Value};
use standin::{obj, Kind, StandIn};

const API: &str = "192.0.2.100:6443";
/// Short, so that failovers fit in a test; renewals every 2 s.
const LEASE_SECS: u64 = 6;
const NODES: [(&str, &str, &str); 2] = [
    ("node-a", "192.0.2.1", "2001:db8::1"),
    ("node-b", "192.0.2.3", "2001:db8::3"),
];

struct Cluster {
    // Field order is drop order: daemons before the namespaces they run in.
    vipds: Vec<Option<Vipd>>,
    bird: Bird,
    api: StandIn,
    nodes: Vec<Netns>,
    /// Kept for its guard: dropping it removes the bridge and BIRD's namespace.
    _router: Netns,
    dir: Dir,
}

/// `n` nodes (node-a 192.0.2.1, node-b 192.0.2.3) bridged to a router
/// namespace holding BIRD (192.0.2.2, 2001:db8::2) and the stand-in
/// (192.0.2.100). No vipd yet.
fn cluster(tag: &str, n: usize) -> Cluster {
    let dir = Dir::new(tag);
    let router = bridge_router(
        &format!("{tag}r"),
        &["192.0.2.2/24", "192.0.2.100/24", "2001:db8::2/64"],
    );
    let mut nodes = vec![];
    let mut protocols = vec![];
    for (i, (name, v4, v6)) in NODES.iter().enumerate().take(n) {
        let ns = Netns::new(&format!("{tag}{i}"));
        let a = join_bridge(&ns, &router);
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", &a]);
        ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", &a, "nodad"]);
        nodes.push(ns);
        protocols.push((format!("{}4", &name[5..]), "192.0.2.2", *v4, "ipv4"));
        protocols.push((format!("{}6", &name[5..]), "2001:db8::2", *v6, "ipv6"));
    }
    let api = StandIn::start(API.parse().unwrap(), Some(&router.name));
    for (name, v4, v6) in NODES.iter().take(n) {
        api.put(obj::node(name, &[v4, v6]));
    }
    let p: Vec<(&str, &str, &str, &str, &str)> = protocols
        .iter()
        .map(|(n, l, r, f)| (n.as_str(), *l, *r, *f, ""))
        .collect();
    let bird = Bird::start(&router, &dir, &bird_conf(&dir, &p));
    Cluster {
        vipds: (0..n).map(|_| None).collect(),
        bird,
        api,
        nodes,
        _router: router,
        dir,
    }
}

const POOLS: &str = "[[ipam.pools]]\nname = \"public\"\naddresses = [\"100.64.0.0/22\", \"2001:db8:100::/120\"]\n\
     [[ipam.pools]]\nname = \"team\"\naddresses = [\"198.51.100.0/24\"]\nnamespaces = [\"team-a\"]\nauto_assign = false\n";

impl Cluster {
    fn conf(&self, i: usize, extra: &str, pools: &str) -> String {
        let kc = self.dir.write("kubeconfig", &self.api.kubeconfig());
        let (name, v4, _) = NODES[i];
        format!(
            "[bgp]\nasn = 65010\nrouter_id = \"{v4}\"\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
             [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nconnect_retry = 1\n\
             [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"{name}\"\n{extra}\n\
             [ipam]\nlease_duration_secs = {LEASE_SECS}\n{pools}",
            kc.display()
        )
    }

    fn start(&mut self, i: usize, extra: &str, pools: &str) {
        let conf = self.conf(i, extra, pools);
        self.vipds[i] = Some(Vipd::start_named(
            &self.nodes[i],
            &self.dir,
            &conf,
            NODES[i].0,
        ));
    }

    fn vipd(&self, i: usize) -> &Vipd {
        self.vipds[i].as_ref().unwrap()
    }

    fn holder(&self) -> Option<String> {
        let l = self.api.get(Kind::Lease, "kube-system", "vipd-ipam")?;
        l["spec"]["holderIdentity"].as_str().map(String::from)
    }

    fn index_of(&self, node: &str) -> usize {
        NODES.iter().position(|n| n.0 == node).unwrap()
    }

    /// What a failing test prints: BIRD's view and each vipd's log tail.
    fn context(&self) -> String {
        let mut s = format!("--- BIRD:\n{}", self.bird.cli("show route count"));
        s += &self.bird.cli("show protocols");
        for (i, v) in self.vipds.iter().enumerate() {
            if let Some(v) = v {
                s += &format!("--- {} log tail:\n{}\n", NODES[i].0, v.proc.log_tail(30));
            }
        }
        s
    }
}

/// A LoadBalancer Service with no address yet (port 80/TCP).
fn lb(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "annotations": {}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                 "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn annotate(mut s: Value, k: &str, v: &str) -> Value {
    s["metadata"]["annotations"][k] = json!(v);
    s
}

fn dual(mut s: Value, policy: &str) -> Value {
    s["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    s["spec"]["ipFamilyPolicy"] = json!(policy);
    s
}

fn ips_of(obj: &Value) -> Vec<String> {
    obj["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn ips(api: &StandIn, ns: &str, name: &str) -> Vec<String> {
    api.get(Kind::Service, ns, name)
        .map(|o| ips_of(&o))
        .unwrap_or_default()
}

/// Every Service's addresses, by `ns/name`.
fn assigned(api: &StandIn, keys: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    keys.iter()
        .map(|(ns, n)| (format!("{ns}/{n}"), ips(api, ns, n)))
        .collect()
}

/// Replays the stand-in's record of status writes: at no write may an
/// address be held by two Services (outside a sharing key they both
/// carry), counting for each Service its latest write. Services in
/// `gone` were deleted during the test and are not counted after it.
fn audit(api: &StandIn, gone: &[&str]) -> usize {
    let mut holds: BTreeMap<String, (Vec<String>, Option<String>)> = BTreeMap::new();
    let mut n = 0;
    for w in api
        .writes()
        .iter()
        .filter(|w| w.kind == Kind::Service && w.status)
    {
        n += 1;
        let key = format!("{}/{}", w.namespace, w.name);
        let share = w.object["metadata"]["annotations"]["vipd.io/sharing-key"]
            .as_str()
            .map(String::from);
        let mine = ips_of(&w.object);
        for (other, (theirs, their_share)) in &holds {
            if *other == key || gone.contains(&other.as_str()) {
                continue;
            }
            let shared = share.is_some() && share == *their_share;
            for a in &mine {
                assert!(
                    shared || !theirs.contains(a),
                    "{a} written to {key} while {other} held it"
                );
            }
        }
        holds.insert(key, (mine, share));
    }
    n
}

fn in_pool(a: &str, prefix: &str) -> bool {
    let net: ipnet::IpNet = prefix.parse().unwrap();
    net.contains(&a.parse::<IpAddr>().unwrap())
}

/// BIRD's networks (prefixes, whatever the number of paths) in a table.
fn networks(b: &Bird, table: &str) -> usize {
    let out = b.cli("show route count");
    out.lines()
        .find(|l| l.ends_with(&format!("in table {table}")))
        .and_then(|l| l.split(" for ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn events_for(api: &StandIn, name: &str, reason: &str) -> Vec<String> {
    api.events()
        .iter()
        .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// 1,000 Services, two vipd nodes: one allocates, each Service gets one
/// unique address from its pool, both nodes announce every one, and no
/// address was ever written to two Services.
#[test]
fn thousand_services_get_unique_addresses_from_their_pools() {
    let mut c = cluster("ia", 2);
    c.start(0, "announce_without_endpoints = true", POOLS);
    c.start(1, "announce_without_endpoints = true", POOLS);
    let mut keys = vec![];
    for i in 0..1000 {
        let (ns, svc) = if i % 10 == 0 {
            (
                "team-a",
                annotate(lb("team-a", &format!("t{i}")), "vipd.io/pool", "team"),
            )
        } else {
            ("shop", lb("shop", &format!("s{i}")))
        };
        keys.push((
            ns.to_string(),
            svc["metadata"]["name"].as_str().unwrap().to_string(),
        ));
        c.api.put(svc);
    }
    let t = Instant::now();
    let all_assigned = wait_until(Duration::from_secs(60), || {
        assigned(&c.api, &keys).values().all(|v| v.len() == 1)
    });
    let got = assigned(&c.api, &keys);
    let missing = got.values().filter(|v| v.is_empty()).count();
    assert!(
        all_assigned,
        "{missing} Services without an address\n{}",
        c.context()
    );
    eprintln!("1,000 statuses written in {:?}", t.elapsed());
    let mut seen = BTreeSet::new();
    for (k, v) in &got {
        let pool = if k.starts_with("team-a/") {
            "198.51.100.0/24"
        } else {
            "100.64.0.0/22"
        };
        assert!(in_pool(&v[0], pool), "{k} got {} outside {pool}", v[0]);
        assert!(seen.insert(v[0].clone()), "{} given twice", v[0]);
    }
    assert!(
        wait_until(Duration::from_secs(60), || networks(&c.bird, "master4")
            == 1000
            && c.bird.next_hops(&format!("{}/32", got["shop/s1"][0])).len()
                == 2),
        "BIRD holds {} of 1,000 from both nodes\n{}",
        networks(&c.bird, "master4"),
        c.context()
    );
    let writes = audit(&c.api, &[]);
    assert_eq!(
        writes, 1000,
        "every Service written once, nothing rewritten"
    );
    let holder = c.holder().expect("a Lease holder");
    let (code, text) = vipd_status(&c.nodes[c.index_of(&holder)]);
    assert_eq!(code, Some(0), "{text}");
    for want in [
        "allocator: this node allocates (holds the lease), 1000 status writes by this node",
        "  pool public ipv4: 900/1024 used",
        "  pool public ipv6: 0/256 used",
        "  pool team ipv4: 100/256 used",
        "  pending: 0 Services",
    ] {
        assert!(text.lines().any(|l| l == want), "{want:?} not in:\n{text}");
    }
    let other = NODES.iter().find(|n| n.0 != holder).unwrap().0;
    let (_, text) = vipd_status(&c.nodes[c.index_of(other)]);
    assert!(
        text.contains(&format!("allocator: standing by (lease held by {holder})")),
        "{text}"
    );
    let assigned_events = c
        .api
        .events()
        .iter()
        .filter(|e| e["reason"] == "AddressAssigned" && e["type"] == "Normal")
        .count();
    // The leader writes Events at its rate limit (k8s::events): about 15 s
    // for these 1,000.
    assert!(
        wait_until(Duration::from_secs(60), || c
            .api
            .events()
            .iter()
            .filter(|e| e["reason"] == "AddressAssigned")
            .count()
            == 1000),
        "{assigned_events} AddressAssigned Events"
    );
}

/// Creates `n` plain Services shop/{prefix}{i} and returns their keys.
fn create(api: &StandIn, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            api.put(lb("shop", &name));
            ("shop".to_string(), name)
        })
        .collect()
}

fn all_assigned(api: &StandIn, keys: &[(String, String)]) -> bool {
    assigned(api, keys).values().all(|v| !v.is_empty())
}

/// The leader killed with SIGKILL: the other node takes the Lease within
/// its duration plus one renewal period, Services created meanwhile get
/// addresses from it, and nothing assigned before changes.
#[test]
fn a_killed_leader_is_replaced_and_nothing_assigned_moves() {
    let mut c = cluster("ib", 2);
    c.start(0, "", POOLS);
    c.start(1, "", POOLS);
    let before = create(&c.api, "a", 20);
    assert!(
        wait_until(Duration::from_secs(20), || all_assigned(&c.api, &before)),
        "{}",
        c.context()
    );
    let snapshot = assigned(&c.api, &before);
    let leader = c.holder().unwrap();
    let li = c.index_of(&leader);
    c.vipds[li].as_ref().unwrap().proc.signal(libc::SIGKILL);
    let killed = Instant::now();
    let during = create(&c.api, "b", 10);
    let other = NODES[1 - li].0;
    assert!(
        wait_until(Duration::from_secs(LEASE_SECS + 6), || c
            .holder()
            .as_deref()
            == Some(other)),
        "{other} never took the Lease\n{}",
        c.context()
    );
    let took = killed.elapsed();
    eprintln!("{other} took the Lease {took:?} after {leader} was killed");
    // The duration, one renewal period (2 s) for the last renewal's age,
    // one for the poll, and a second of slack for this machine.
    assert!(took < Duration::from_secs(LEASE_SECS + 5), "took {took:?}");
    assert!(
        wait_until(Duration::from_secs(10), || all_assigned(&c.api, &during)),
        "Services created during the failover got nothing\n{}",
        c.context()
    );
    assert_eq!(
        assigned(&c.api, &before),
        snapshot,
        "an assigned address moved"
    );
    let new: BTreeSet<String> = assigned(&c.api, &during).into_values().flatten().collect();
    let old: BTreeSet<String> = snapshot.into_values().flatten().collect();
    assert_eq!(new.len(), 10);
    assert!(new.is_disjoint(&old), "{new:?} overlaps {old:?}");
    assert_eq!(
        audit(&c.api, &[]),
        30,
        "one write per Service, none repeated"
    );
    assert!(c.vipd(1 - li).log().contains("holding the allocator lease"));
    // Back, then the leader stopped gracefully: it releases the Lease, and
    // the other takes it within a poll, long before the Lease would expire.
    c.start(li, "", POOLS);
    let standby = format!("allocator: standing by (lease held by {other})");
    assert!(
        wait_until(Duration::from_secs(10), || vipd_status(&c.nodes[li])
            .1
            .contains(&standby)),
        "{}",
        c.context()
    );
    c.vipds[1 - li]
        .as_mut()
        .unwrap()
        .proc
        .stop(Duration::from_secs(10));
    let stopped = Instant::now();
    assert!(
        c.vipd(1 - li).log().contains("allocator lease released"),
        "{}",
        c.context()
    );
    assert!(
        wait_until(Duration::from_secs(LEASE_SECS), || c.holder().as_deref()
            == Some(leader.as_str())),
        "{leader} did not take the released Lease\n{}",
        c.context()
    );
    eprintln!(
        "{leader} took the released Lease {:?} after the stop",
        stopped.elapsed()
    );
    assert!(stopped.elapsed() < Duration::from_secs(LEASE_SECS / 2 + 1));
}

/// The leader cut off from the Lease alone (its Lease requests hang, its
/// Service writes still pass): it stops writing before the Lease can
/// expire, so every write the other node makes comes after its last one,
/// and no address is written twice. Services created all along.
#[test]
fn a_leader_that_cannot_renew_stops_before_the_other_takes_over() {
    let mut c = cluster("ic", 2);
    c.start(0, "", POOLS);
    c.start(1, "", POOLS);
    let first = create(&c.api, "a", 5);
    assert!(
        wait_until(Duration::from_secs(20), || all_assigned(&c.api, &first)),
        "{}",
        c.context()
    );
    let leader = c.holder().unwrap();
    let li = c.index_of(&leader);
    let leader_ip: IpAddr = NODES[li].1.parse().unwrap();
    let other_ip: IpAddr = NODES[1 - li].1.parse().unwrap();
    c.api.set_partitioned_kind(leader_ip, Kind::Lease, true);
    let cut = Instant::now();
    let mut keys = first.clone();
    // One new Service every 300 ms until the other node holds the Lease
    // and has assigned a few.
    let mut i = 0;
    while cut.elapsed() < Duration::from_secs(LEASE_SECS * 3) {
        keys.extend(create(&c.api, &format!("p{i}-"), 1));
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
        if c.holder().as_deref() == Some(NODES[1 - li].0) && i > 40 {
            break;
        }
    }
    assert_eq!(
        c.holder().as_deref(),
        Some(NODES[1 - li].0),
        "the other node never took the Lease\n{}",
        c.context()
    );
    assert!(
        wait_until(Duration::from_secs(10), || all_assigned(&c.api, &keys)),
        "{}",
        c.context()
    );
    let writes: Vec<IpAddr> = c
        .api
        .writes()
        .iter()
        .filter(|w| w.kind == Kind::Service && w.status)
        .map(|w| w.client)
        .collect();
    let last_old = writes.iter().rposition(|w| *w == leader_ip).unwrap();
    let first_new = writes
        .iter()
        .position(|w| *w == other_ip)
        .expect("writes by the new leader");
    let after_cut = writes[..=last_old].len() - first.len();
    eprintln!(
        "old leader: {after_cut} writes after its Lease was cut off; new leader: {} writes",
        writes.len() - first_new
    );
    assert!(
        last_old < first_new,
        "the old leader wrote (write {last_old}) after the new one began (write {first_new})"
    );
    audit(&c.api, &[]);
    assert!(
        c.vipd(li)
            .log()
            .contains("allocating stops if the lease cannot be renewed"),
        "{}",
        c.context()
    );
    // Healed: the old leader sees the new holder and stands by.
    c.api.set_partitioned_kind(leader_ip, Kind::Lease, false);
    assert!(
        c.vipd(li).wait_log(
            "allocator lease taken by another node",
            Duration::from_secs(10)
        ),
        "{}",
        c.context()
    );
    // Now the new leader cut off entirely (every request hangs): the first
    // takes over again, Services created meanwhile get addresses, and
    // still no address is written twice.
    c.api.set_partitioned(other_ip, true);
    let cut = Instant::now();
    let later = create(&c.api, "q", 10);
    assert!(
        wait_until(Duration::from_secs(LEASE_SECS + 6), || c
            .holder()
            .as_deref()
            == Some(leader.as_str())),
        "{leader} never took the Lease back\n{}",
        c.context()
    );
    assert!(
        wait_until(Duration::from_secs(10), || all_assigned(&c.api, &later)),
        "{}",
        c.context()
    );
    eprintln!(
        "{leader} leads again {:?} after the other was cut off",
        cut.elapsed()
    );
    c.api.set_partitioned(other_ip, false);
    audit(&c.api, &[]);
    let all: Vec<String> = assigned(&c.api, &[keys, later].concat())
        .into_values()
        .flatten()
        .collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "an address held by two Services");
}

/// One node, small pools: requested addresses (honoured, taken, outside
/// the pools), a sharing key (shared when ports differ, refused when they
/// clash), dual stack, a namespace-restricted pool, exhaustion and
/// recovery after a delete, and a pool removed by SIGHUP, each with the
/// Event a user would read.
#[test]
fn requests_sharing_dual_stack_namespaces_exhaustion_and_reload() {
    let small = "[[ipam.pools]]\nname = \"public\"\naddresses = [\"203.0.113.0/30\", \"2001:db8:100::/126\"]\n\
         [[ipam.pools]]\nname = \"team\"\naddresses = [\"198.51.100.8/30\"]\nnamespaces = [\"team-a\"]\nauto_assign = false\n";
    let mut c = cluster("id", 1);
    c.start(0, "", small);
    let put = |s: Value| c.api.put(s);
    let settle = |ns: &str, name: &str, n: usize| {
        assert!(
            wait_until(Duration::from_secs(10), || ips(&c.api, ns, name).len() == n),
            "{ns}/{name}: {:?}\n{}",
            ips(&c.api, ns, name),
            c.context()
        );
    };
    let failed = |name: &str, text: &str| {
        assert!(
            wait_until(Duration::from_secs(10), || events_for(
                &c.api,
                name,
                "AllocationFailed"
            )
            .iter()
            .any(|m| m.contains(text))),
            "no AllocationFailed for {name} saying {text:?}: {:?}\n{}",
            events_for(&c.api, name, "AllocationFailed"),
            c.context()
        );
    };
    // Requested: honoured, then taken, then outside every pool.
    put(annotate(
        lb("shop", "req"),
        "vipd.io/load-balancer-ips",
        "203.0.113.3",
    ));
    settle("shop", "req", 1);
    assert_eq!(ips(&c.api, "shop", "req"), ["203.0.113.3"]);
    let mut legacy = lb("shop", "legacy");
    legacy["spec"]["loadBalancerIP"] = json!("203.0.113.3");
    put(legacy);
    failed("legacy", "203.0.113.3 is taken by shop/req");
    put(annotate(
        lb("shop", "outside"),
        "vipd.io/load-balancer-ips",
        "192.0.2.50",
    ));
    failed(
        "outside",
        "192.0.2.50 is not in a pool this Service may use",
    );
    // Sharing: ports 80 and 443 share; a second port 80 asking for the
    // same address is refused.
    put(annotate(lb("shop", "web80"), "vipd.io/sharing-key", "web"));
    settle("shop", "web80", 1);
    let shared = ips(&c.api, "shop", "web80")[0].clone();
    let mut web443 = annotate(lb("shop", "web443"), "vipd.io/sharing-key", "web");
    web443["spec"]["ports"] = json!([{"port": 443, "protocol": "TCP"}]);
    put(annotate(web443, "vipd.io/load-balancer-ips", &shared));
    settle("shop", "web443", 1);
    assert_eq!(ips(&c.api, "shop", "web443"), std::slice::from_ref(&shared));
    let clash = annotate(lb("shop", "clash"), "vipd.io/sharing-key", "web");
    put(annotate(clash, "vipd.io/load-balancer-ips", &shared));
    failed("clash", &format!("{shared} is taken by shop/web"));
    // Dual stack: one address per family.
    put(dual(lb("shop", "dual"), "RequireDualStack"));
    settle("shop", "dual", 2);
    let d = ips(&c.api, "shop", "dual");
    assert!(
        in_pool(&d[0], "203.0.113.0/30") && in_pool(&d[1], "2001:db8:100::/126"),
        "{d:?}"
    );
    // The pool of four IPv4 addresses is now full (req, web, dual, and
    // one more): the next waits, and gets one when a holder goes.
    put(lb("shop", "fourth"));
    settle("shop", "fourth", 1);
    put(lb("shop", "fifth"));
    failed("fifth", "pool public has no free V4 address");
    let (_, text) = vipd_status(&c.nodes[0]);
    for want in [
        "  pool public ipv4: 4/4 used",
        "    shop/fifth: pool public has no free V4 address",
    ] {
        assert!(text.lines().any(|l| l == want), "{want:?} not in:\n{text}");
    }
    let freed = ips(&c.api, "shop", "fourth")[0].clone();
    c.api.delete(Kind::Service, "shop", "fourth");
    settle("shop", "fifth", 1);
    assert_eq!(ips(&c.api, "shop", "fifth"), [freed]);
    // A pool open to one namespace.
    put(annotate(lb("team-a", "mine"), "vipd.io/pool", "team"));
    settle("team-a", "mine", 1);
    assert!(in_pool(
        &ips(&c.api, "team-a", "mine")[0],
        "198.51.100.8/30"
    ));
    put(annotate(lb("team-b", "theirs"), "vipd.io/pool", "team"));
    failed(
        "theirs",
        "pool team does not exist or is closed to namespace team-b",
    );
    // The team pool removed by SIGHUP: team-a/mine keeps its address with
    // a warning; a new Service asking for the pool gets nothing.
    let kept = ips(&c.api, "team-a", "mine");
    let without_team = "[[ipam.pools]]\nname = \"public\"\naddresses = [\"203.0.113.0/30\", \"2001:db8:100::/126\"]\n";
    c.vipd(0).reload(&c.conf(0, "", without_team));
    assert!(
        wait_until(Duration::from_secs(10), || !events_for(
            &c.api,
            "mine",
            "AddressOutsidePools"
        )
        .is_empty()),
        "{}",
        c.context()
    );
    put(annotate(lb("team-a", "late"), "vipd.io/pool", "team"));
    failed("late", "pool team does not exist");
    assert_eq!(ips(&c.api, "team-a", "mine"), kept, "a reload renumbered");
    assert!(c.vipd(0).log().contains("address pools reloaded"));
    let assigned_events = events_for(&c.api, "req", "AddressAssigned");
    assert_eq!(assigned_events, ["assigned 203.0.113.3"]);
    audit(&c.api, &["shop/fourth"]);
}

/// The allocator and the announcer agree: the address assigned reaches
/// BIRD once the Service has a ready endpoint (not before), with both
/// nodes as next hops, and is withdrawn when the Service goes.
#[test]
fn an_assigned_address_is_announced_once_endpoints_are_ready() {
    let mut c = cluster("ie", 2);
    c.start(0, "", POOLS);
    c.start(1, "", POOLS);
    c.api.put(lb("shop", "web"));
    c.api
        .put(obj::slice("shop", "web-1", "web", &[("node-b", false)]));
    assert!(
        wait_until(Duration::from_secs(20), || ips(&c.api, "shop", "web").len()
            == 1),
        "{}",
        c.context()
    );
    let route = format!("{}/32", ips(&c.api, "shop", "web")[0]);
    assert!(
        wait_until(Duration::from_secs(15), || c.bird.established("a4")
            && c.bird.established("b4")),
        "{}",
        c.context()
    );
    holds_for(Duration::from_secs(2), || {
        assert!(
            !c.bird.has(&route),
            "{route} announced without a ready endpoint"
        )
    });
    c.api
        .put(obj::slice("shop", "web-1", "web", &[("node-b", true)]));
    assert!(
        wait_until(Duration::from_secs(10), || c.bird.next_hops(&route)
            == ["192.0.2.1", "192.0.2.3"]),
        "{}\n{}",
        c.bird.route(&route),
        c.context()
    );
    c.api.delete(Kind::Service, "shop", "web");
    assert!(
        wait_until(Duration::from_secs(10), || !c.bird.has(&route)),
        "{}\n{}",
        c.bird.route(&route),
        c.context()
    );
}

/// Taking over from another allocator (or hand edits): addresses already
/// in the status are adopted. Two Services holding one address: the older
/// keeps it, the younger gets a new one and an Event naming the older. An
/// address outside every pool stays, with a warning. A Service whose
/// allocation annotation cannot be read keeps its address, which nobody
/// else gets.
#[test]
fn addresses_already_assigned_are_adopted_and_duplicates_repaired() {
    let mut c = cluster("if", 1);
    let held = |name: &str, created: &str, ip: &str| {
        let mut s = lb("shop", name);
        s["metadata"]["creationTimestamp"] = json!(created);
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        s
    };
    c.api.put(held("old", "2020-01-01T00:00:00Z", "100.64.0.7"));
    c.api
        .put(held("young", "2021-01-01T00:00:00Z", "100.64.0.7"));
    c.api
        .put(held("outside", "2020-01-01T00:00:00Z", "203.0.113.77"));
    c.api.put(annotate(
        held("bad", "2020-01-01T00:00:00Z", "100.64.0.0"),
        "vipd.io/load-balancer-ips",
        "bogus",
    ));
    c.start(0, "", POOLS);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let y = ips(&c.api, "shop", "young");
            y.len() == 1 && y[0] != "100.64.0.7"
        }),
        "young kept the duplicate: {:?}\n{}",
        ips(&c.api, "shop", "young"),
        c.context()
    );
    assert_eq!(ips(&c.api, "shop", "old"), ["100.64.0.7"]);
    // The lowest free: .0 is the unreadable Service's, .7 the old one's.
    assert_eq!(ips(&c.api, "shop", "young"), ["100.64.0.1"]);
    assert_eq!(ips(&c.api, "shop", "outside"), ["203.0.113.77"]);
    assert_eq!(ips(&c.api, "shop", "bad"), ["100.64.0.0"]);
    let conflict = events_for(&c.api, "young", "AddressConflict");
    assert!(
        conflict
            .iter()
            .any(|m| m.contains("100.64.0.7") && m.contains("shop/old")),
        "{conflict:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || events_for(
            &c.api,
            "outside",
            "AddressOutsidePools"
        )
        .iter()
        .any(|m| m.contains("203.0.113.77"))),
        "{:?}",
        c.api.events()
    );
    let bad = events_for(&c.api, "bad", "AllocationFailed");
    assert!(
        bad.iter()
            .any(|m| m.contains("\"bogus\" is not an IP address")),
        "{bad:?}"
    );
    c.api.put(lb("shop", "new"));
    assert!(
        wait_until(Duration::from_secs(10), || ips(&c.api, "shop", "new")
            == ["100.64.0.2"]),
        "{:?}",
        ips(&c.api, "shop", "new")
    );
    // Only young and new were written: adopted addresses are left alone.
    let written: BTreeSet<String> = c
        .api
        .writes()
        .iter()
        .filter(|w| w.status)
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(
        written,
        BTreeSet::from(["young".to_string(), "new".to_string()])
    );
}

/// Issue 19, part 2, through the allocator: a Service in namespace b copies
/// a's sharing key and asks for a's address. It gets nothing, with an Event
/// saying why, and BIRD's route for a's address carries exactly a's
/// communities. Once both Services name each other's namespace, they share
/// it and the communities add up.
#[test]
fn another_namespace_gets_an_address_only_with_consent_on_both_sides() {
    let pools = "[[ipam.pools]]\nname = \"p\"\naddresses = [\"203.0.113.0/29\"]\n";
    let mut c = cluster("ix", 1);
    c.start(0, "", pools);
    let svc = |ns: &str, name: &str, port: u16, community: &str, allow: &str| {
        let mut s = lb(ns, name);
        s["spec"]["ports"] = json!([{"port": port, "protocol": "TCP"}]);
        s["metadata"]["annotations"] = json!({
            "vipd.io/sharing-key": "k", "vipd.io/load-balancer-ips": "203.0.113.5",
            "vipd.io/communities": community, "vipd.io/sharing-namespaces": allow});
        c.api.put(s);
        c.api.put(obj::slice(
            ns,
            &format!("{name}-1"),
            name,
            &[("node-b", true)],
        ));
    };
    let communities = || {
        c.bird
            .route("203.0.113.5/32")
            .lines()
            .find(|l| l.contains("BGP.community"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    svc("a", "web", 80, "65010:1", "");
    assert!(
        wait_until(Duration::from_secs(20), || communities()
            == "BGP.community: (65010,1)"),
        "{}",
        c.context()
    );
    svc("b", "copy", 443, "65010:99", "*");
    assert!(
        wait_until(Duration::from_secs(10), || {
            events_for(&c.api, "copy", "AllocationFailed")
                .iter()
                .any(|m| m.contains("203.0.113.5 is taken by a/web (another namespace"))
        }),
        "{:?}\n{}",
        events_for(&c.api, "copy", "AllocationFailed"),
        c.context()
    );
    holds_for(Duration::from_secs(2), || {
        assert!(ips(&c.api, "b", "copy").is_empty());
        assert_eq!(communities(), "BGP.community: (65010,1)", "{}", c.context());
    });
    assert_eq!(ips(&c.api, "a", "web"), ["203.0.113.5"]);
    svc("a", "web", 80, "65010:1", "b");
    assert!(
        wait_until(Duration::from_secs(10), || ips(&c.api, "b", "copy")
            == ["203.0.113.5"]
            && communities() == "BGP.community: (65010,1) (65010,99)"),
        "{:?} {}\n{}",
        ips(&c.api, "b", "copy"),
        communities(),
        c.context()
    );
}

/// One node allocating from 203.0.113.0/29, its first Service given an
/// address: the leader is in place.
fn leading(tag: &str) -> Cluster {
    let mut c = cluster(tag, 1);
    c.start(
        0,
        "",
        "[[ipam.pools]]\nname = \"p\"\naddresses = [\"203.0.113.0/29\"]\n",
    );
    c.api.put(lb("a", "first"));
    assert!(
        wait_until(Duration::from_secs(20), || ips(&c.api, "a", "first").len()
            == 1),
        "no allocator\n{}",
        c.context()
    );
    c
}

/// The allocator's status write carries the resourceVersion it decided on.
/// While its write is held in the stand-in, someone else writes the
/// Service's status (a hand edit to another pool address): the held write
/// is refused (409), the allocator decides again from the watch and keeps
/// the hand-written address. A write without the resourceVersion would
/// overwrite it.
#[test]
fn a_status_write_decided_on_a_stale_view_is_refused_and_decided_again() {
    let c = leading("iv");
    let writes = || c.api.status_writes(Kind::Service);
    let before = writes();
    // Shorter than the allocator's own limit on a write (a third of the
    // lease, 2 s): held as long as that, the write times out instead of
    // being refused.
    c.api.set_write_delay(Duration::from_millis(1000));
    c.api.put(lb("a", "web"));
    // The allocator has decided and its write is held: edit meanwhile.
    assert!(
        c.vipd(0)
            .wait_log("writing the status service=a/web", Duration::from_secs(10)),
        "the allocator never wrote\n{}",
        c.context()
    );
    let mut edit = c.api.get(Kind::Service, "a", "web").unwrap();
    edit["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}});
    c.api.put(edit);
    std::thread::sleep(Duration::from_secs(1));
    c.api.set_write_delay(Duration::ZERO);
    holds_for(Duration::from_secs(3), || {
        assert_eq!(
            ips(&c.api, "a", "web"),
            ["203.0.113.5"],
            "the hand-written address was overwritten\n{}",
            c.context()
        );
    });
    // The allocator did try: its write was the one refused.
    assert!(
        c.vipd(0).log().contains("status write conflict"),
        "{}",
        c.context()
    );
    assert_eq!(writes(), before, "a status write landed");
}

/// A leader that reads another holder in the Lease (its renewal lost to
/// another node, say) writes nothing more: a Service created after that
/// gets no address from it.
#[test]
fn a_leader_that_reads_another_holder_writes_nothing_more() {
    let c = leading("il");
    let mut lease = c.api.get(Kind::Lease, "kube-system", "vipd-ipam").unwrap();
    lease["spec"]["holderIdentity"] = json!("node-z");
    lease["spec"]["leaseDurationSeconds"] = json!(300);
    lease["spec"]["renewTime"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
    c.api.put(lease);
    assert!(
        c.vipd(0).wait_log(
            "allocator lease taken by another node",
            Duration::from_secs(10)
        ),
        "{}",
        c.context()
    );
    let before = c.api.status_writes(Kind::Service);
    c.api.put(lb("a", "after"));
    holds_for(Duration::from_secs(3), || {
        assert!(ips(&c.api, "a", "after").is_empty(), "{}", c.context());
        assert_eq!(
            c.api.status_writes(Kind::Service),
            before,
            "{}",
            c.context()
        );
    });
}
