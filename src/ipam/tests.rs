use super::*;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn range(a: &str, b: &str) -> Range {
    Range {
        first: ip(a),
        last: ip(b),
    }
}

fn pool(name: &str, ranges: &[Range]) -> Pool {
    Pool {
        name: name.into(),
        ranges: ranges.to_vec(),
        auto_assign: true,
        namespaces: vec![],
        avoid_network_and_broadcast: false,
        mode: Default::default(),
        advert: Default::default(),
    }
}

fn svc(name: &str, created: i64) -> Svc {
    Svc {
        key: format!("a/{name}").into(),
        uid: format!("uid-{name}").into(),
        created,
        families: [Family::V4].into_iter().collect(),
        policy: FamilyPolicy::SingleStack,
        pool: None,
        requested: vec![],
        sharing: None,
        local: false,
        current: Default::default(),
    }
}

fn got(o: &Outcome, name: &str) -> Vec<String> {
    o.status[&format!("a/{name}")]
        .iter()
        .map(|a| a.to_string())
        .collect()
}

fn kinds(o: &Outcome, name: &str) -> Vec<EventKind> {
    o.events
        .iter()
        .filter(|e| e.service == format!("a/{name}"))
        .map(|e| e.kind)
        .collect()
}

#[test]
fn lowest_free_address_and_network_broadcast_avoided() {
    let mut p = pool("p", &[range("198.51.100.0", "198.51.101.255")]);
    p.avoid_network_and_broadcast = true;
    let mut held = svc("held", 0);
    held.current = [ip("198.51.100.1")].into_iter().collect();
    let o = allocate(&[p], &[held, svc("x", 1), svc("y", 2)]);
    assert_eq!(got(&o, "held"), ["198.51.100.1"]);
    assert_eq!(got(&o, "x"), ["198.51.100.2"]);
    assert_eq!(got(&o, "y"), ["198.51.100.3"]);
    assert_eq!(kinds(&o, "x"), [EventKind::AddressAssigned]);
    assert!(kinds(&o, "held").is_empty(), "a kept address is no news");
}

#[test]
fn duplicates_are_repaired_in_favour_of_the_older() {
    let p = pool("p", &[range("198.51.100.10", "198.51.100.20")]);
    let mut old = svc("old", 5);
    old.current = [ip("198.51.100.10")].into_iter().collect();
    let mut young = svc("young", 9);
    young.current = [ip("198.51.100.10")].into_iter().collect();
    // Given in the other order: age decides, not position.
    let o = allocate(&[p], &[young, old]);
    assert_eq!(got(&o, "old"), ["198.51.100.10"]);
    assert_eq!(got(&o, "young"), ["198.51.100.11"]);
    let e = o
        .events
        .iter()
        .find(|e| e.kind == EventKind::AddressConflict)
        .unwrap();
    assert_eq!(e.service, "a/young");
    assert!(e.message.contains("a/old"), "{}", e.message);
}

#[test]
fn sharing_needs_the_same_key_and_distinct_ports() {
    let p = pool("p", &[range("198.51.100.10", "198.51.100.20")]);
    let shared = |name: &str, t: i64, port: u16, key: &str| {
        let mut s = svc(name, t);
        s.requested = vec![ip("198.51.100.15")];
        s.sharing_mut().key = key.into();
        s.sharing_mut().ports = vec![("TCP".into(), port)];
        s
    };
    let o = allocate(
        &[p],
        &[
            shared("web", 1, 80, "k"),
            shared("dns", 2, 53, "k"),
            shared("clash", 3, 80, "k"),
            shared("other", 4, 22, "other-key"),
        ],
    );
    assert_eq!(got(&o, "web"), ["198.51.100.15"]);
    assert_eq!(got(&o, "dns"), ["198.51.100.15"]);
    assert!(got(&o, "clash").is_empty());
    assert!(got(&o, "other").is_empty());
    assert_eq!(kinds(&o, "clash"), [EventKind::AllocationFailed]);
}

#[test]
fn requested_addresses_must_be_in_a_pool_and_free() {
    let p = pool("p", &[range("198.51.100.10", "198.51.100.20")]);
    let mut a = svc("a1", 1);
    a.requested = vec![ip("198.51.100.12")];
    let mut b = svc("b1", 2);
    b.requested = vec![ip("198.51.100.12")];
    let mut c = svc("c1", 3);
    c.requested = vec![ip("203.0.113.1")];
    let o = allocate(&[p], &[a, b, c]);
    assert_eq!(got(&o, "a1"), ["198.51.100.12"]);
    assert!(got(&o, "b1").is_empty());
    assert!(o
        .events
        .iter()
        .any(|e| e.service == "a/b1" && e.message.contains("taken by a/a1")));
    assert!(got(&o, "c1").is_empty());
    assert!(o
        .events
        .iter()
        .any(|e| e.service == "a/c1" && e.message.contains("not in a pool")));
}

#[test]
fn dual_stack_takes_one_address_per_family() {
    let both = pool(
        "p",
        &[
            range("198.51.100.1", "198.51.100.9"),
            range("2001:db8:100::1", "2001:db8:100::9"),
        ],
    );
    let v4only = pool("q", &[range("198.51.100.1", "198.51.100.9")]);
    let mut req = svc("req", 1);
    req.families = [Family::V6, Family::V4].into_iter().collect();
    req.policy = FamilyPolicy::RequireDualStack;
    let mut pref = svc("pref", 2);
    pref.policy = FamilyPolicy::PreferDualStack;
    let o = allocate(std::slice::from_ref(&both), &[req.clone(), pref.clone()]);
    assert_eq!(got(&o, "req"), ["2001:db8:100::1", "198.51.100.1"]);
    assert_eq!(got(&o, "pref"), ["198.51.100.2", "2001:db8:100::2"]);
    // A pool without IPv6: Prefer takes what there is; Require takes
    // nothing rather than half, and says why.
    let o = allocate(&[v4only], &[req, pref]);
    assert!(got(&o, "req").is_empty());
    assert_eq!(kinds(&o, "req"), [EventKind::AllocationFailed]);
    assert_eq!(got(&o, "pref"), ["198.51.100.1"]);
    assert!(!kinds(&o, "pref").contains(&EventKind::AllocationFailed));
}

/// A pool with `auto_assign = false` serves only the Services that name
/// it, even listed first and open to everyone; and a requested address
/// must lie in the pool the Service names.
#[test]
fn a_manual_pool_serves_only_who_names_it_and_a_request_stays_in_the_named_pool() {
    let mut manual = pool("manual", &[range("203.0.113.1", "203.0.113.9")]);
    manual.auto_assign = false;
    let auto = pool("auto", &[range("198.51.100.1", "198.51.100.9")]);
    let pools = [manual, auto];
    let plain = svc("plain", 1);
    let mut wrong = svc("wrong", 2);
    wrong.pool = Some("auto".into());
    wrong.requested = vec![ip("203.0.113.5")];
    let mut right = svc("right", 3);
    right.pool = Some("manual".into());
    right.requested = vec![ip("203.0.113.6")];
    let o = allocate(&pools, &[plain, wrong, right]);
    assert_eq!(got(&o, "plain"), ["198.51.100.1"]);
    assert!(
        got(&o, "wrong").is_empty(),
        "203.0.113.5 is not in pool auto"
    );
    assert!(o.events.iter().any(
        |e| e.service == "a/wrong" && e.message.contains("not in a pool this Service may use")
    ));
    assert_eq!(got(&o, "right"), ["203.0.113.6"]);
}

#[test]
fn pools_by_name_and_namespace() {
    let mut team = pool("team", &[range("198.51.100.1", "198.51.100.9")]);
    team.namespaces = vec!["team-a".into()];
    let mut special = pool("special", &[range("203.0.113.1", "203.0.113.9")]);
    special.auto_assign = false;
    let pools = [team, special];
    let mut named = svc("named", 1);
    named.pool = Some("special".into());
    let outsider = svc("outsider", 2);
    let o = allocate(&pools, &[named, outsider]);
    assert_eq!(got(&o, "named"), ["203.0.113.1"]);
    assert!(got(&o, "outsider").is_empty());
    assert!(o
        .events
        .iter()
        .any(|e| e.service == "a/outsider" && e.message.contains("no auto-assign pool")));
}

#[test]
fn exhaustion_then_recovery_and_a_shrunk_pool_renumbers_nothing() {
    let small = pool("p", &[range("198.51.100.1", "198.51.100.2")]);
    let o = allocate(
        std::slice::from_ref(&small),
        &[svc("a1", 1), svc("a2", 2), svc("a3", 3)],
    );
    assert_eq!(kinds(&o, "a3"), [EventKind::AllocationFailed]);
    // a1 is deleted: a3 gets its address; a2 keeps its own.
    let mut a2 = svc("a2", 2);
    a2.current = o.status["a/a2"].iter().copied().collect();
    let o = allocate(std::slice::from_ref(&small), &[a2.clone(), svc("a3", 3)]);
    assert_eq!(got(&o, "a2"), ["198.51.100.2"]);
    assert_eq!(got(&o, "a3"), ["198.51.100.1"]);
    // The pool is removed: nothing moves, a warning says why.
    let o = allocate(&[], &[a2]);
    assert_eq!(got(&o, "a2"), ["198.51.100.2"]);
    assert_eq!(kinds(&o, "a2"), [EventKind::AddressOutsidePools]);
}

#[test]
fn usage_counts_held_addresses_per_pool_and_family() {
    let mut big = pool(
        "big",
        &[
            range("198.51.100.0", "198.51.101.255"),
            range("2001:db8::", "2001:db8::ff"),
        ],
    );
    big.avoid_network_and_broadcast = true;
    let small = pool("small", &[range("203.0.113.1", "203.0.113.2")]);
    let mut a = svc("a", 0);
    a.families = [Family::V4, Family::V6].into_iter().collect();
    a.policy = FamilyPolicy::RequireDualStack;
    let mut b = svc("b", 1);
    b.pool = Some("small".into());
    let mut c = svc("c", 2);
    c.pool = Some("small".into());
    let mut d = svc("d", 3);
    d.pool = Some("small".into());
    let o = allocate(&[big.clone(), small.clone()], &[a, b, c, d]);
    let u = usage(&[big, small], &o.status);
    let line = |x: &PoolUsage| format!("{} {:?} {}/{}", x.pool, x.family, x.used, x.size);
    // 512 addresses less .0 and .255 of each /24.
    assert_eq!(
        u.iter().map(line).collect::<Vec<_>>(),
        ["big V4 1/508", "big V6 1/256", "small V4 2/2"]
    );
    assert_eq!(
        pending(&o),
        [(
            "a/d".to_string(),
            "pool small has no free V4 address".to_string()
        )]
    );
}

fn arb_svc(i: usize) -> impl Strategy<Value = Svc> {
    (
        0i64..5,
        prop::option::of(0usize..2),
        prop::collection::vec(0u8..12, 0..2),
        prop::collection::vec(0u8..12, 0..2),
        prop::option::of(0u8..2),
        0u16..3,
        any::<bool>(),
    )
        .prop_map(move |(t, ns, req, cur, key, port, dual)| {
            let a = |x: u8| IpAddr::from([198, 51, 100, x]);
            let mut s = svc(&format!("s{i}"), t);
            s.key = format!("{}/s{i}", ["a", "b"][ns.unwrap_or(0)]).into();
            s.requested = req.into_iter().take(1).map(a).collect();
            s.current = cur.into_iter().map(a).collect();
            if let Some(k) = key {
                let sh = s.sharing_mut();
                sh.key = format!("k{k}");
                sh.ports = vec![("TCP".into(), port)];
            }
            if dual {
                s.policy = FamilyPolicy::PreferDualStack;
                s.current.push(IpAddr::from([
                    0x2001,
                    0xdb8,
                    0x100,
                    0,
                    0,
                    0,
                    0,
                    u16::from(t as u8),
                ]));
            }
            s
        })
}

fn arb_pools() -> impl Strategy<Value = Vec<Pool>> {
    (1u8..8, any::<bool>()).prop_map(|(n, restrict)| {
        let mut p = pool("p", &[range("198.51.100.1", &format!("198.51.100.{n}"))]);
        if restrict {
            p.namespaces = vec!["a".into()];
        }
        let v6 = pool("v6", &[range("2001:db8:100::1", "2001:db8:100::3")]);
        vec![p, v6]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// No address in two Services outside the sharing rules; every address
    /// newly given out lies in a pool open to the Service; a second pass
    /// over its own result changes nothing (nothing moves); the input's
    /// order does not matter.
    #[test]
    fn allocation_invariants(
        pools in arb_pools(),
        svcs in (0..8usize).prop_flat_map(|n| (0..n).map(arb_svc).collect::<Vec<_>>()),
        rot in 0usize..8,
    ) {
        let o = allocate(&pools, &svcs);
        let by_key: BTreeMap<&str, &Svc> = svcs.iter().map(|s| (&*s.key, s)).collect();
        let mut holders: BTreeMap<IpAddr, Vec<&Svc>> = BTreeMap::new();
        for (k, addrs) in &o.status {
            let s = by_key[k.as_str()];
            let fams: BTreeSet<Family> = addrs.iter().map(family).collect();
            prop_assert_eq!(fams.len(), addrs.len(), "two addresses of one family: {:?}", addrs);
            for a in addrs {
                if !s.current.contains(a) {
                    prop_assert!(
                        pools.iter().any(|p| open_to(p, s.namespace()) && in_pool(p, a)),
                        "{} got {} outside its pools", k, a
                    );
                }
                holders.entry(*a).or_default().push(s);
            }
        }
        for (a, hs) in &holders {
            for (i, x) in hs.iter().enumerate() {
                for y in &hs[i + 1..] {
                    let ok = match (&x.sharing, &y.sharing) {
                        (Some(xs), Some(ys)) => {
                            xs.key == ys.key && !xs.ports.iter().any(|p| ys.ports.contains(p))
                        }
                        _ => false,
                    };
                    prop_assert!(ok, "{} held by {} and {}", a, x.key, y.key);
                }
            }
        }
        // Nothing moves: the result, fed back as the current status, stays.
        let again: Vec<Svc> = svcs
            .iter()
            .map(|s| Svc {
                current: o.status[&*s.key].iter().copied().collect(),
                ..s.clone()
            })
            .collect();
        let o2 = allocate(&pools, &again);
        prop_assert_eq!(&o2.status, &o.status);
        // Same input in another order, same answer.
        let mut rotated = svcs.clone();
        if !rotated.is_empty() {
            let k = rot % rotated.len();
            rotated.rotate_left(k);
        }
        prop_assert_eq!(allocate(&pools, &rotated).status, o.status);
    }
}

/// Issue 19, part 2: a Service in another namespace that copies a sharing
/// key and asks for the holder's address is refused, never given it; with
/// both sides naming each other it shares.
#[test]
fn sharing_across_namespaces_needs_consent_on_both_sides() {
    let p = pool("p", &[range("198.51.100.10", "198.51.100.20")]);
    let mk = |ns: &str, name: &str, created, port, allow: &[&str]| {
        let mut s = svc(name, created);
        s.key = format!("{ns}/{name}").into();
        s.requested = vec![ip("198.51.100.12")];
        let sh = s.sharing_mut();
        sh.key = "k".into();
        sh.ports = vec![("TCP".into(), port)];
        sh.namespaces = allow.iter().map(|x| x.to_string()).collect();
        s
    };
    let o = allocate(
        std::slice::from_ref(&p),
        &[mk("a", "web", 1, 80, &[]), mk("b", "copy", 2, 443, &["*"])],
    );
    assert_eq!(o.status["a/web"], [ip("198.51.100.12")]);
    assert!(o.status["b/copy"].is_empty());
    assert!(o
        .events
        .iter()
        .any(|e| e.service == "b/copy" && e.message.contains("taken by a/web (another namespace")));
    // One side only is not enough, either way round.
    let o = allocate(
        std::slice::from_ref(&p),
        &[mk("a", "web", 1, 80, &["b"]), mk("b", "copy", 2, 443, &[])],
    );
    assert!(o.status["b/copy"].is_empty());
    // Naming a third namespace is no consent to the second.
    let o = allocate(
        std::slice::from_ref(&p),
        &[
            mk("a", "web", 1, 80, &["c"]),
            mk("b", "copy", 2, 443, &["a"]),
        ],
    );
    assert!(o.status["b/copy"].is_empty());
    let o = allocate(
        &[p],
        &[
            mk("a", "web", 1, 80, &["b"]),
            mk("b", "copy", 2, 443, &["a"]),
        ],
    );
    assert_eq!(o.status["b/copy"], [ip("198.51.100.12")]);
}

/// Owners of one address have one traffic policy; under Local, the same
/// pod selector. And the DNS case: TCP 53 and UDP 53 share.
#[test]
fn sharing_needs_one_policy_one_selector_and_distinct_protocol_ports() {
    let p = pool("p", &[range("198.51.100.10", "198.51.100.20")]);
    let mk = |name: &str, created, proto: &str, local, app: &str| {
        let mut s = svc(name, created);
        s.requested = vec![ip("198.51.100.12")];
        s.local = local;
        let sh = s.sharing_mut();
        sh.key = "k".into();
        sh.ports = vec![(proto.into(), 53)];
        sh.selector = [("app".to_string(), app.to_string())].into();
        s
    };
    let o = allocate(
        std::slice::from_ref(&p),
        &[
            mk("tcp", 1, "TCP", false, "dns"),
            mk("udp", 2, "UDP", false, "dns"),
        ],
    );
    assert_eq!(o.status["a/udp"], [ip("198.51.100.12")], "{:?}", o.events);
    let o = allocate(
        std::slice::from_ref(&p),
        &[
            mk("tcp", 1, "TCP", false, "dns"),
            mk("udp", 2, "UDP", true, "dns"),
        ],
    );
    assert!(o.status["a/udp"].is_empty());
    assert!(o
        .events
        .iter()
        .any(|e| e.message.contains("another externalTrafficPolicy")));
    let o = allocate(
        std::slice::from_ref(&p),
        &[
            mk("tcp", 1, "TCP", true, "dns"),
            mk("udp", 2, "UDP", true, "other"),
        ],
    );
    assert!(o.status["a/udp"].is_empty());
    assert!(o
        .events
        .iter()
        .any(|e| e.message.contains("another pod selector")));
    let o = allocate(
        &[p],
        &[
            mk("tcp", 1, "TCP", true, "dns"),
            mk("udp", 2, "UDP", true, "dns"),
        ],
    );
    assert_eq!(o.status["a/udp"], [ip("198.51.100.12")]);
}

/// Exactly one /24 (256 addresses, the smallest size the rule covers):
/// never .0 nor .255, and the pool's size says 254.
#[test]
fn a_single_slash_24_never_hands_out_network_or_broadcast() {
    let mut p = pool("p", &[range("198.51.100.0", "198.51.100.255")]);
    p.avoid_network_and_broadcast = true;
    let svcs: Vec<Svc> = (0..255).map(|i| svc(&format!("s{i}"), i)).collect();
    let o = allocate(std::slice::from_ref(&p), &svcs);
    let all: Vec<IpAddr> = o.status.values().flatten().copied().collect();
    assert_eq!(all.len(), 254);
    assert!(!all.contains(&ip("198.51.100.0")) && !all.contains(&ip("198.51.100.255")));
    assert_eq!(kinds(&o, "s254"), [EventKind::AllocationFailed]);
    assert_eq!(usage(&[p], &o.status)[0].size, 254);
    // 255 addresses: below the rule, every address is given out.
    let mut q = pool("q", &[range("198.51.100.0", "198.51.100.254")]);
    q.avoid_network_and_broadcast = true;
    let o = allocate(&[q], &svcs[..1]);
    assert_eq!(got(&o, "s0"), ["198.51.100.0"]);
}
