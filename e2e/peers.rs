//! Interoperability: vipd against BIRD, FRR, GoBGP and ExaBGP, each in its
//! own network namespaces. Every test checks what the peer itself reports:
//! the routes it holds, their attributes, and that a reload withdraws
//! exactly what was removed.

#[path = "lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::*;

const N: u32 = 1000;

fn vipd_conf(peers: &str, announce: &str) -> String {
    format!("{BGP}listen = \"[::]:179\"\n{peers}\n{announce}")
}

const TWO_PEERS: &str = "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nhold_time = 30\n[[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nhold_time = 30\n";

#[test]
fn bird_receives_both_families_with_attributes_and_reload_withdraws_half() {
    let lab = Lab::new("bi");
    let bird = Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(
            &lab.dir,
            &[
                ("v4", ROUTER4, NODE4, "ipv4", ""),
                ("v6", ROUTER6, NODE6, "ipv6", ""),
            ],
        ),
    );
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(TWO_PEERS, &announcements(N, true)),
    );
    assert!(
        wait_until(Duration::from_secs(30), || bird.count("master4")
            == N as usize
            && bird.count("master6") == N as usize),
        "BIRD did not receive {N} + {N} routes"
    );
    let r4 = bird.route(&v4_at(7));
    for want in [
        "BGP.origin: IGP",
        "BGP.as_path: 65010\n",
        "BGP.next_hop: 192.0.2.1",
        "BGP.med: 50",
        "BGP.community: (65010,100) (65010,200)",
        "BGP.large_community: (65010, 1, 2)",
    ] {
        assert!(r4.contains(want), "{want:?} missing from\n{r4}");
    }
    let r6 = bird.route(&v6_at(700));
    // RFC 2545 section 3: the peer shares the link, so the next hop carries
    // the interface's link-local address after the global one.
    let ll = link_local(&lab.node);
    let nh = format!("BGP.next_hop: 2001:db8::1 {ll}\n");
    for want in [
        "BGP.as_path: 65010\n",
        &nh,
        "BGP.med: 50",
        "BGP.large_community: (65010, 1, 2)",
    ] {
        assert!(r6.contains(want), "{want:?} missing from\n{r6}");
    }

    vipd.reload(&vipd_conf(TWO_PEERS, &announcements(N, false)));
    assert!(
        wait_until(Duration::from_secs(30), || bird.count("master4")
            == (N / 2) as usize
            && bird.count("master6") == (N / 2) as usize),
        "the removed half was not withdrawn"
    );
    for i in [0, 1, N / 2 - 1] {
        assert!(
            bird.has(&v4_at(i)),
            "{} was withdrawn but is still configured",
            v4_at(i)
        );
        assert!(
            bird.has(&v6_at(i)),
            "{} was withdrawn but is still configured",
            v6_at(i)
        );
    }
    for i in [N / 2, N - 1] {
        assert!(!bird.has(&v4_at(i)), "{} is still at BIRD", v4_at(i));
        assert!(!bird.has(&v6_at(i)), "{} is still at BIRD", v6_at(i));
    }
    // The sessions stayed up through the reload.
    assert!(bird.established("v4") && bird.established("v6"));
    assert_eq!(
        vipd.log().matches("session established").count(),
        2,
        "a session restarted on reload"
    );
}

/// The README's promise: a reload that changes one peer restarts that
/// session only. BIRD's own record of the other session (state and the
/// time it entered it) is the same before and after.
#[test]
fn a_reload_that_changes_one_peer_leaves_the_other_session_up() {
    let lab = Lab::new("rl");
    let bird = lab.dual_bird("");
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(TWO_PEERS, &announcements(10, false)),
    );
    assert!(
        wait_until(Duration::from_secs(20), || bird.count("master4") == 5
            && bird.count("master6") == 5),
        "{}
{}",
        bird.cli("show protocols all"),
        vipd.proc.log_tail(20)
    );
    // BIRD shows when a session entered its state to the second.
    std::thread::sleep(Duration::from_millis(1100));
    let v4 = bird.session_line("v4");
    assert!(v4.contains("Established"), "{v4}");
    let changed = TWO_PEERS.replacen(
        "address = \"2001:db8::2\"\nasn = 65002\nhold_time = 30",
        "address = \"2001:db8::2\"\nasn = 65002\nhold_time = 60",
        1,
    );
    assert_ne!(changed, TWO_PEERS);
    vipd.reload(&vipd_conf(&changed, &announcements(10, false)));
    assert!(
        wait_until(Duration::from_secs(20), || vipd
            .log()
            .matches("session established")
            .count()
            >= 3
            && bird.established("v6")),
        "the changed peer's session did not restart\n{}\n{}",
        bird.cli("show protocols all"),
        vipd.proc.log_tail(30)
    );
    holds_for(Duration::from_secs(2), || {
        assert_eq!(
            bird.session_line("v4"),
            v4,
            "the untouched session restarted\n{}",
            vipd.proc.log_tail(30)
        );
    });
    assert_eq!(bird.count("master4"), 5);
}

#[test]
fn bird_gets_ipv6_over_an_ipv4_session_with_configured_next_hop() {
    let lab = Lab::new("mx");
    let bird = Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(&lab.dir, &[("v4", ROUTER4, NODE4, "ipv4,ipv6", "")]),
    );
    // The key that leaves the link-local address out (RFC 2545 makes it
    // optional): a 16-byte next hop though the peer shares the link.
    let peers = "[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnext_hop_ipv6 = \"2001:db8::1\"\nlink_local_next_hop = false\n";
    let _vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(
            peers,
            "[[announce]]\nprefixes = [\"203.0.113.10/32\", \"2001:db8:ff::10/128\"]\n",
        ),
    );
    assert!(
        wait_until(Duration::from_secs(20), || bird.has("2001:db8:ff::10/128")
            && bird.has("203.0.113.10/32")),
        "routes did not arrive"
    );
    let r6 = bird.route("2001:db8:ff::10/128");
    assert!(r6.contains("BGP.next_hop: 2001:db8::1\n"), "{r6}");
    assert!(r6.contains("[v4 "), "learned over the IPv4 session: {r6}");
}

/// The link-local address of the node's interface towards the router.
fn link_local(ns: &Netns) -> String {
    ns.link_local(&ns.dev_of(&format!("{NODE4}/24")))
}

fn v4_in(t: &std::collections::BTreeMap<String, (String, serde_json::Value)>) -> usize {
    t.keys().filter(|k| k.starts_with("100.64.")).count()
}
fn v6_in(t: &std::collections::BTreeMap<String, (String, serde_json::Value)>) -> usize {
    t.keys().filter(|k| k.starts_with("2001:db8:64:")).count()
}

#[test]
fn gobgp_receives_both_families_with_attributes_and_reload_withdraws_half() {
    let lab = Lab::new("go");
    let gobgp = Gobgp::start(
        &lab.router,
        &lab.dir,
        &[(NODE4, &["ipv4-unicast"]), (NODE6, &["ipv6-unicast"])],
    );
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(TWO_PEERS, &announcements(N, true)),
    );
    assert!(
        wait_until(Duration::from_secs(40), || gobgp.count("ipv4")
            == N as usize
            && gobgp.count("ipv6") == N as usize),
        "GoBGP did not receive {N} + {N} routes"
    );
    let rib4 = gobgp.rib("ipv4");
    let path = &rib4[&v4_at(3)][0];
    let attrs = path["attrs"].as_array().unwrap();
    let find = |t: u64| {
        attrs
            .iter()
            .find(|a| a["type"] == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        find(2)["as_paths"][0]["segment_type"],
        2,
        "AS_SEQUENCE: {path}"
    );
    assert_eq!(find(2)["as_paths"][0]["asns"], serde_json::json!([65010]));
    assert_eq!(find(3)["nexthop"], "192.0.2.1");
    assert_eq!(find(4)["metric"], 50);
    assert_eq!(
        find(8)["communities"],
        serde_json::json!([(65010u64 << 16) | 100, (65010u64 << 16) | 200])
    );
    assert_eq!(
        find(32)["value"][0],
        serde_json::json!({"ASN": 65010, "LocalData1": 1, "LocalData2": 2})
    );
    assert!(find(5).is_null(), "no LOCAL_PREF to an eBGP peer: {path}");
    let rib6 = gobgp.rib("ipv6");
    let attrs6 = rib6[&v6_at(901)][0]["attrs"].as_array().unwrap().clone();
    let mp = attrs6.iter().find(|a| a["type"] == 14).unwrap();
    assert_eq!(mp["nexthop"], "2001:db8::1");
    assert!(attrs6.iter().any(|a| a["type"] == 32));

    vipd.reload(&vipd_conf(TWO_PEERS, &announcements(N, false)));
    assert!(
        wait_until(Duration::from_secs(30), || gobgp.count("ipv4")
            == (N / 2) as usize
            && gobgp.count("ipv6") == (N / 2) as usize),
        "the removed half was not withdrawn"
    );
    let rib4 = gobgp.rib("ipv4");
    assert!(rib4.contains_key(&v4_at(0)) && rib4.contains_key(&v4_at(N / 2 - 1)));
    assert!(!rib4.contains_key(&v4_at(N / 2)) && !rib4.contains_key(&v4_at(N - 1)));
}

fn frr_conf(dir: &Dir) -> String {
    format!(
        "hostname frr\nlog file {}\nrouter bgp 65002\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n neighbor 192.0.2.1 remote-as 65010\n neighbor 192.0.2.1 timers connect 2\n neighbor 2001:db8::1 remote-as 65010\n neighbor 2001:db8::1 timers connect 2\n address-family ipv4 unicast\n  neighbor 192.0.2.1 activate\n exit-address-family\n address-family ipv6 unicast\n  neighbor 2001:db8::1 activate\n exit-address-family\n",
        dir.path("frr/bgpd.log").display()
    )
}

#[test]
fn frr_receives_both_families_with_attributes_and_reload_withdraws_half() {
    let lab = Lab::new("fr");
    let frr = Frr::start(&lab.router, &lab.dir, &frr_conf(&lab.dir));
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(TWO_PEERS, &announcements(N, true)),
    );
    assert!(
        wait_until(Duration::from_secs(40), || frr.count("ipv4") == N as usize
            && frr.count("ipv6") == N as usize),
        "FRR did not receive {N} + {N} routes"
    );
    for (p, nh) in [(v4_at(11), "192.0.2.1"), (v6_at(811), "2001:db8::1")] {
        let afi = if p.contains(':') { "ipv6" } else { "ipv4" };
        let r = frr.json(&format!("show bgp {afi} unicast {p} json"));
        let path = &r["paths"][0];
        assert_eq!(path["aspath"]["segments"][0]["type"], "as-sequence", "{r}");
        assert_eq!(
            path["aspath"]["segments"][0]["list"],
            serde_json::json!([65010])
        );
        assert_eq!(path["nexthops"][0]["ip"], nh, "{r}");
        assert_eq!(path["metric"], 50);
        assert_eq!(
            path["community"]["list"],
            serde_json::json!(["65010:100", "65010:200"])
        );
        assert_eq!(
            path["largeCommunity"]["list"],
            serde_json::json!(["65010:1:2"])
        );
        assert_eq!(path["origin"], "IGP");
        if afi == "ipv6" {
            // RFC 2545: the link-local address follows the global one.
            assert_eq!(path["nexthops"][1]["ip"], link_local(&lab.node), "{r}");
            assert_eq!(path["nexthops"][1]["scope"], "link-local", "{r}");
        }
    }
    vipd.reload(&vipd_conf(TWO_PEERS, &announcements(N, false)));
    assert!(
        wait_until(Duration::from_secs(30), || frr.count("ipv4")
            == (N / 2) as usize
            && frr.count("ipv6") == (N / 2) as usize),
        "the removed half was not withdrawn"
    );
    let routes = frr.json("show bgp ipv6 unicast json");
    let routes = routes["routes"].as_object().unwrap();
    assert!(routes.contains_key(&v6_at(0)) && !routes.contains_key(&v6_at(N - 1)));
}

#[test]
fn exabgp_receives_both_families_with_attributes_and_reload_withdraws_half() {
    let lab = Lab::new("ex");
    let exa = Exabgp::start(&lab.router, &lab.dir);
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(TWO_PEERS, &announcements(N, true)),
    );
    assert!(
        wait_until(Duration::from_secs(40), || {
            let t = exa.table();
            v4_in(&t) == N as usize && v6_in(&t) == N as usize
        }),
        "ExaBGP did not receive {N} + {N} routes"
    );
    let t = exa.table();
    let (nh, a) = &t[&v4_at(5)];
    assert_eq!(nh, "192.0.2.1");
    assert_eq!(
        a["as-path"],
        serde_json::json!([65010]),
        "a sequence, not a set: {a}"
    );
    assert_eq!(a["med"], 50);
    assert_eq!(a["origin"], "igp");
    assert_eq!(
        a["community"],
        serde_json::json!([[65010, 100], [65010, 200]])
    );
    assert_eq!(a["large-community"], serde_json::json!([[65010, 1, 2]]));
    assert!(
        a.get("local-preference").is_none(),
        "no LOCAL_PREF to an eBGP peer: {a}"
    );
    // A 32-byte next hop (RFC 2545: global, then link-local; BIRD shows
    // both): ExaBGP's JSON names the link-local one.
    let (nh6, _) = &t[&v6_at(999)];
    assert_eq!(*nh6, link_local(&lab.node));
    // End-of-RIB after the initial table of each family.
    let eors: Vec<String> = exa
        .messages()
        .iter()
        .filter_map(|m| {
            m["neighbor"]["message"]["eor"]["afi"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(
        eors.contains(&"ipv4".to_string()) && eors.contains(&"ipv6".to_string()),
        "{eors:?}"
    );

    vipd.reload(&vipd_conf(TWO_PEERS, &announcements(N, false)));
    assert!(
        wait_until(Duration::from_secs(30), || {
            let t = exa.table();
            v4_in(&t) == (N / 2) as usize && v6_in(&t) == (N / 2) as usize
        }),
        "the removed half was not withdrawn"
    );
    let t = exa.table();
    assert!(t.contains_key(&v4_at(0)) && !t.contains_key(&v4_at(N / 2)));
}

/// UPDATE messages ExaBGP received that announce something, and all it
/// received (announcements, withdrawals, End-of-RIB).
fn exa_counts(exa: &Exabgp) -> (usize, usize) {
    let msgs: Vec<serde_json::Value> = exa
        .messages()
        .into_iter()
        .filter(|m| m["type"] == "update")
        .collect();
    let ann = msgs
        .iter()
        .filter(|m| m["neighbor"]["message"]["update"]["announce"].is_object())
        .count();
    (ann, msgs.len())
}

/// 500 one-prefix `[[announce]]` entries with equal attributes, each
/// family: packed as one group, so two UPDATEs per family at most (500
/// IPv4 /32 take 2,500 bytes, 500 IPv6 /128 8,500). A reload that changes
/// only LOCAL_PREF, which never reaches an eBGP peer, sends the peer
/// nothing but the one withdrawal the reload also makes.
#[test]
fn exabgp_counts_updates_equal_entries_packed_and_invisible_changes_not_sent() {
    let lab = Lab::new("ep");
    let exa = Exabgp::start(&lab.router, &lab.dir);
    let entries = |n: u32, lp: u32| {
        let mut s = String::new();
        for i in 0..n {
            for p in [v4_at(i), v6_at(i)] {
                s += &format!(
                    "[[announce]]\nprefix = \"{p}\"\ncommunities = [\"65010:100\"]\nlocal_pref = {lp}\n"
                );
            }
        }
        s
    };
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(TWO_PEERS, &entries(500, 100)),
    );
    assert!(
        wait_until(Duration::from_secs(40), || {
            let t = exa.table();
            v4_in(&t) == 500 && v6_in(&t) == 500
        }),
        "ExaBGP did not receive 500 + 500 routes"
    );
    let (ann, all) = exa_counts(&exa);
    // IPv4: 2,500 bytes of NLRI, one UPDATE; IPv6: 8,500 bytes, three.
    assert!(
        ann <= 4,
        "{ann} UPDATEs for 1,000 routes with equal attributes"
    );
    // LOCAL_PREF changes everywhere, and the last entry of each family goes.
    vipd.reload(&vipd_conf(TWO_PEERS, &entries(499, 200)));
    assert!(
        wait_until(Duration::from_secs(20), || {
            let t = exa.table();
            v4_in(&t) == 499 && v6_in(&t) == 499
        }),
        "the removed entries were not withdrawn"
    );
    let (ann2, all2) = exa_counts(&exa);
    assert_eq!(ann2, ann, "announcements re-sent for a LOCAL_PREF change");
    assert_eq!(all2, all + 2, "one withdrawal per family, nothing else");
}

/// iBGP, a 4-octet local ASN, IPv4 routes over an IPv6 session and the
/// advertised restart time, as BIRD reports them: over iBGP an empty
/// AS_PATH and the configured LOCAL_PREF; over eBGP the 4-octet AS in the
/// path; the IPv4 route learned on the IPv6 session with its IPv4 next hop.
#[test]
fn bird_sees_ibgp_four_octet_asn_ipv4_over_ipv6_and_restart_time() {
    let lab = Lab::new("ib");
    let conf = format!(
        "router id 192.0.2.2;\nlog \"{}\" all;\nprotocol device {{ scan time 10; }}\n\
         protocol bgp ib {{ local 192.0.2.2 as 4200000001; neighbor 192.0.2.1 as 4200000001; direct; \
         ipv4 {{ import all; export none; }}; }}\n\
         protocol bgp v6s {{ local 2001:db8::2 as 65002; neighbor 2001:db8::1 as 4200000001; \
         ipv4 {{ import all; export none; }}; }}\n",
        lab.dir.path("bird.log").display()
    );
    let bird = Bird::start(&lab.router, &lab.dir, &conf);
    let vipd_conf = "[bgp]\nasn = 4200000001\nrouter_id = \"192.0.2.1\"\nrestart_time = 77\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 4200000001\n\
         [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nfamilies = [\"ipv4\"]\nnext_hop_ipv4 = \"192.0.2.1\"\n\
         [[announce]]\nprefixes = [\"203.0.113.10/32\"]\nlocal_pref = 250\ncommunities = [\"65010:7\"]\n";
    let _v = Vipd::start(&lab.node, &lab.dir, vipd_conf);
    let via = |proto: &str| {
        bird.cli(&format!(
            "show route for 203.0.113.10/32 protocol {proto} all"
        ))
    };
    assert!(
        wait_until(Duration::from_secs(30), || via("ib")
            .contains("203.0.113.10/32")
            && via("v6s").contains("203.0.113.10/32")),
        "BIRD lacks the route on one session:\n{}",
        bird.cli("show route all")
    );
    let ib = via("ib");
    for want in [
        "BGP.as_path: \n",
        "BGP.local_pref: 250",
        "BGP.next_hop: 192.0.2.1",
        "BGP.community: (65010,7)",
    ] {
        assert!(ib.contains(want), "iBGP: {want:?} missing from\n{ib}");
    }
    let e = via("v6s");
    for want in ["BGP.as_path: 4200000001\n", "BGP.next_hop: 192.0.2.1\n"] {
        assert!(
            e.contains(want),
            "IPv4 over IPv6: {want:?} missing from\n{e}"
        );
    }
    let caps = bird.cli("show protocols all ib");
    let theirs = &caps[caps.find("Neighbor capabilities").unwrap_or(0)..];
    assert!(theirs.contains("Restart time: 77"), "{caps}");
    assert!(caps.contains("Neighbor AS:      4200000001"), "{caps}");
}

/// RFC 8950 over one IPv6 session (no IPv4 session, no IPv4 next hop):
/// IPv4 VIPs arrive with the IPv6 next hop, at FRR (`capability
/// extended-nexthop`) and at BIRD (`extended next hop on`); without the
/// router's offer, IPv4 is not sent.
#[test]
fn ipv4_over_an_ipv6_session_carries_the_ipv6_next_hop() {
    const ONE_V6_PEER: &str =
        "[[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nhold_time = 30\n";
    let n = 10;
    let lab = Lab::new("en");
    let frr_conf = format!(
        "hostname frr\nlog file {}\nrouter bgp 65002\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n neighbor 2001:db8::1 remote-as 65010\n neighbor 2001:db8::1 timers connect 2\n neighbor 2001:db8::1 capability extended-nexthop\n address-family ipv4 unicast\n  neighbor 2001:db8::1 activate\n exit-address-family\n address-family ipv6 unicast\n  neighbor 2001:db8::1 activate\n exit-address-family\n",
        lab.dir.path("frr/bgpd.log").display()
    );
    let frr = Frr::start(&lab.router, &lab.dir, &frr_conf);
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(ONE_V6_PEER, &announcements(n, true)),
    );
    assert!(
        wait_until(Duration::from_secs(40), || frr.count("ipv4") == n as usize
            && frr.count("ipv6") == n as usize),
        "FRR did not receive {n} + {n} routes: {}\nvipd:\n{}",
        frr.vtysh("show bgp summary"),
        vipd.proc.log_tail(20)
    );
    let r = frr.json(&format!("show bgp ipv4 unicast {} json", v4_at(3)));
    let nh = &r["paths"][0]["nexthops"];
    assert_eq!(nh[0]["ip"], "2001:db8::1", "{r}");
    assert_eq!(nh[0]["afi"], "ipv6", "{r}");
    drop((vipd, frr));

    let lab = Lab::new("eb");
    let conf = bird_conf(&lab.dir, &[("v6", ROUTER6, NODE6, "ipv4,ipv6", "")]);
    let enh = conf.replace(
        "  ipv4 { import all;",
        "  ipv4 { extended next hop on; import all;",
    );
    assert_ne!(enh, conf);
    let bird = Bird::start(&lab.router, &lab.dir, &enh);
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(ONE_V6_PEER, &announcements(n, true)),
    );
    assert!(
        wait_until(Duration::from_secs(30), || bird.count("master4")
            == n as usize
            && bird.count("master6") == n as usize),
        "BIRD did not receive {n} + {n} routes\nvipd:\n{}",
        vipd.proc.log_tail(20)
    );
    let r = bird.route(&v4_at(3));
    assert!(r.contains("BGP.next_hop: 2001:db8::1"), "{r}");
    drop((vipd, bird));

    // BIRD without the option: the capability is not agreed, and IPv4 has
    // no next hop on this session.
    let lab = Lab::new("eo");
    let bird = Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(&lab.dir, &[("v6", ROUTER6, NODE6, "ipv4,ipv6", "")]),
    );
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &vipd_conf(ONE_V6_PEER, &announcements(n, true)),
    );
    assert!(
        wait_until(Duration::from_secs(30), || bird.count("master6")
            == n as usize),
        "BIRD did not receive {n} IPv6 routes\nvipd:\n{}",
        vipd.proc.log_tail(20)
    );
    holds_for(Duration::from_secs(2), || {
        assert_eq!(bird.count("master4"), 0, "{}", bird.cli("show route"))
    });
}

/// Unnumbered peering (`interface = ...`), two neighbours at once: FRR with
/// `neighbor IF interface remote-as external`, which learns vipd only from
/// vipd's Router Advertisements and installs IPv4 via vipd's link-local
/// address; BIRD on a link-local neighbour with `extended next hop`, on a
/// link where vipd's interface has a global address, which becomes the
/// next hop. Each side finds the other by Router Advertisements (BIRD's
/// `radv`), and one side dials: FRR (vipd passive, the session signed with
/// TCP MD5: the key on vipd's listener for the neighbour it heard), vipd
/// (BIRD passive). BFD runs with FRR over the link-local addresses. vipd
/// starts before the interfaces exist. The FRR link flapped: the session
/// comes back to the same neighbour.
#[test]
fn unnumbered_peers_frr_installs_ipv4_via_the_link_local_and_a_flap_comes_back() {
    require(&["bird", "birdc"]);
    let dir = Dir::new("un");
    let node = Netns::new("unn");
    // vipd first, before its interfaces exist (a bond or VLAN made later):
    // it says why there is no session, and waits for them.
    let (nf, nb) = ("up1".to_string(), "up2".to_string());
    let n = 10;
    let peers = format!(
        "[[bgp.peers]]\ninterface = \"{nf}\"\nasn = \"external\"\npassword = \"unnumbered-md5\"\npassive = true\nbfd = true\nbfd_wait = false\n\
         [[bgp.peers]]\ninterface = \"{nb}\"\nasn = 65003\nhold_time = 9\n"
    );
    let vipd = Vipd::start(&node, &dir, &vipd_conf(&peers, &announcements(n, true)));
    let waiting = format!("{nf} (no neighbour heard yet) AS external: ");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, st) = vipd_status(&node);
            st.lines().any(|l| {
                l.trim_start().starts_with(&waiting) && l.ends_with("last error: no interface up1")
            })
        }),
        "{waiting:?}... no interface up1: {}",
        vipd_status(&node).1
    );
    let (rf, rb) = (Netns::new("unf"), Netns::new("unb"));
    let (x, f) = veth(&node, &rf);
    let (y, b) = veth(&node, &rb);
    node.ip(&["link", "set", "dev", &x, "name", &nf]);
    node.ip(&["link", "set", "dev", &y, "name", &nb]);
    node.ip(&["-6", "addr", "add", "2001:db8:2::1/64", "dev", &nb, "nodad"]);
    rb.ip(&["-6", "addr", "add", "2001:db8:2::2/64", "dev", &b, "nodad"]);
    for (ns, dev) in [(&node, &nf), (&node, &nb), (&rf, &f), (&rb, &b)] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    let (node_f, frr_ll) = (node.link_local(&nf), rf.link_local(&f));
    let (node_b, bird_ll) = (node.link_local(&nb), rb.link_local(&b));
    let frr = Frr::start_installing_with_bfd(
        &rf,
        &dir,
        &format!(
            "hostname frr\nlog file {}\nrouter bgp 65002\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n neighbor {f} interface remote-as external\n neighbor {f} password unnumbered-md5\n neighbor {f} bfd\n address-family ipv6 unicast\n  neighbor {f} activate\n exit-address-family\n",
            dir.path("frr/bgpd.log").display()
        ),
        "bfd\n!\n",
    );
    let bird = Bird::start(
        &rb,
        &dir,
        &format!(
            "router id 192.0.2.3;\nlog \"{}\" all;\nprotocol device {{ scan time 1; }}\n\
             protocol radv {{ interface \"{b}\" {{ min ra interval 3; max ra interval 4; default lifetime 0; prefix ::/0 {{ skip yes; }}; }}; }}\n\
             protocol bgp u {{\n  local as 65003;\n  neighbor {node_b} % '{b}' as 65010;\n  passive on;\n  hold time 9;\n\
             ipv4 {{ extended next hop on; import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}\n",
            dir.path("bird.log").display()
        ),
    );
    let installed = |p: &str| {
        let r = frr.json(&format!("show ip route {p} json"));
        let Some(e) = r[p].get(0) else { return false };
        e["installed"] == true
            && e["nexthops"].as_array().is_some_and(|nh| {
                nh.iter().any(|h| {
                    h["ip"] == node_f.as_str()
                        && h["afi"] == "ipv6"
                        && h["interfaceName"] == f.as_str()
                        && h["fib"] == true
                })
            })
    };
    let all_at_frr = || (0..n).all(|i| installed(&v4_at(i))) && frr.count("ipv6") == n as usize;
    assert!(
        wait_until(Duration::from_secs(60), all_at_frr),
        "FRR did not install {n} IPv4 routes via {node_f} on {f}:\n{}\n{}\nvipd:\n{}",
        frr.vtysh("show bgp summary"),
        frr.vtysh(&format!("show ip route {} json", v4_at(1))),
        vipd.proc.log_tail(30)
    );
    let r = frr.json(&format!("show bgp ipv6 unicast {} json", v6_at(1)));
    assert!(
        r.to_string().contains(&node_f),
        "IPv6 next hop {node_f}: {r}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || bird.count("master4")
            == n as usize
            && bird.count("master6") == n as usize),
        "BIRD did not receive the routes:\n{}\nvipd:\n{}",
        bird.cli("show protocols all u"),
        vipd.proc.log_tail(30)
    );
    let r = bird.route(&v4_at(1));
    assert!(
        r.contains("BGP.next_hop: 2001:db8:2::1"),
        "the interface's global address: {r}"
    );
    // BFD over the link-local addresses, both sides Up.
    let bfd_up = || {
        let peers = frr.json("show bfd peers json");
        let up = peers.as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["peer"] == node_f.as_str() && p["status"] == "up")
        });
        let (_, st) = vipd_status(&node);
        up && st.contains("\n    BFD Up: TX 300 ms")
    };
    assert!(
        wait_until(Duration::from_secs(20), bfd_up),
        "BFD with {node_f} not Up at both ends:\n{}\n{}",
        frr.vtysh("show bfd peers"),
        vipd_status(&node).1
    );
    let (_, st) = vipd_status(&node);
    for want in [
        format!("{nf} (neighbour {frr_ll}) AS external: Established"),
        format!("{nb} (neighbour {bird_ll}) AS65003: Established"),
    ] {
        assert!(
            st.lines().any(|l| l.trim_start().starts_with(&want)),
            "{want:?} not in:\n{st}"
        );
    }

    // The flap: FRR drops the session and the routes with the link, and
    // takes them again from the same neighbour once it is back, well
    // within the 90 s hold time vipd's side of the old session keeps: FRR
    // hears vipd again and connects, which replaces it.
    node.ip(&["link", "set", &nf, "down"]);
    assert!(
        wait_until(Duration::from_secs(20), || frr.count("ipv4") == 0),
        "FRR kept the routes with the link down:\n{}",
        frr.vtysh("show bgp summary")
    );
    node.ip(&["link", "set", &nf, "up"]);
    let back = node.link_local(&nf);
    assert_eq!(back, node_f);
    assert!(
        wait_until(Duration::from_secs(45), all_at_frr),
        "FRR did not take the routes back after the flap:\n{}\nvipd:\n{}",
        frr.vtysh("show bgp summary"),
        vipd.proc.log_tail(30)
    );
    let (_, st) = vipd_status(&node);
    let want = format!("{nf} (neighbour {frr_ll}) AS external: Established");
    assert!(
        st.lines().any(|l| l.trim_start().starts_with(&want)),
        "{want:?} not in:\n{st}"
    );
    assert!(
        bird.established("u"),
        "the other neighbour stayed up: {}",
        bird.state("u")
    );
    drop((vipd, frr, bird));
    drop((rf, rb, node));
}
