//! Faults against real BIRD: MD5 keys, a peer that restarts or freezes,
//! and vipd itself restarting with and without graceful restart.

#[path = "lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::*;

fn conf(peer_extra: &str, bgp_extra: &str, n: u32) -> String {
    format!(
        "{BGP}listen = \"[::]:179\"\n{bgp_extra}\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n{peer_extra}\n[[announce]]\nprefixes = [{}]\n",
        v4_list(0, n)
    )
}

/// BIRD's view of vipd's capabilities on the session "v4".
fn neighbor_caps(b: &Bird) -> String {
    let all = b.cli("show protocols all v4");
    let from = all.find("Neighbor capabilities").unwrap_or(0);
    let to = all[from..].find("Session:").map_or(all.len(), |i| from + i);
    all[from..to].to_string()
}

fn bird(lab: &Lab, extra: &str) -> Bird {
    Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(&lab.dir, &[("v4", ROUTER4, NODE4, "ipv4", extra)]),
    )
}

#[test]
fn md5_matching_password_establishes() {
    let lab = Lab::new("m5");
    let b = bird(&lab, "password \"s3cret-key\";");
    let _v = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf("password = \"s3cret-key\"", "", 10),
    );
    assert!(
        wait_until(Duration::from_secs(20), || b.count("master4") == 10),
        "no routes over the MD5 session"
    );
    assert!(b.established("v4"));
}

/// A TCP extended counter of the namespace's kernel (`TcpExtTCPMD5...`).
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    kernel_counter(ns, "/proc/net/netstat", "TcpExt:", name)
}

/// BIRD with `bird_extra` on its session, vipd with `peer_extra` on its
/// peer, 10 prefixes.
fn md5_lab(tag: &str, bird_extra: &str, peer_extra: &str) -> (Lab, Bird, Vipd) {
    let lab = Lab::new(tag);
    let b = bird(&lab, bird_extra);
    let v = Vipd::start(&lab.node, &lab.dir, &conf(peer_extra, "", 10));
    (lab, b, v)
}

/// Waits for the kernel in `ns` to drop a segment for `counter`, then
/// checks the session never came up: the negative is anchored to the
/// kernel refusing vipd's (or BIRD's) segments, not to a sleep.
fn refused_by_md5(ns: &Netns, counter: &str, b: &Bird, v: &Vipd) {
    assert!(
        wait_until(Duration::from_secs(20), || tcp_ext(ns, counter) > 0),
        "the kernel in {} never counted {counter}: {}",
        ns.name,
        v.proc.log_tail(20)
    );
    assert!(!b.established("v4"), "established despite {counter}");
    assert_eq!(b.count("master4"), 0);
    assert!(!v.log().contains("session established"));
}

#[test]
fn md5_mismatched_password_never_establishes() {
    let (lab, b, v) = md5_lab("m6", "password \"bird-key\";", "password = \"vipd-key\"");
    // BIRD's kernel finds vipd's signature wrong.
    refused_by_md5(&lab.router, "TCPMD5Failure", &b, &v);
}

/// vipd signs although BIRD expects no signature: proof the key is really
/// installed on vipd's socket (without it, this session would come up).
#[test]
fn md5_key_is_installed_on_vipds_connections() {
    let (lab, b, v) = md5_lab("m7", "", "password = \"vipd-key\"");
    refused_by_md5(&lab.router, "TCPMD5Unexpected", &b, &v);
}

/// vipd passive, BIRD dialling in: the key is installed on the listener,
/// so a matching BIRD gets its session and a mismatched one is refused by
/// vipd's kernel.
#[test]
fn md5_on_the_listener_when_vipd_is_passive() {
    let (_lab, b, v) = md5_lab(
        "m8",
        "password \"s3cret-key\";",
        "password = \"s3cret-key\"\npassive = true",
    );
    assert!(
        wait_until(Duration::from_secs(30), || b.count("master4") == 10),
        "no routes over BIRD's MD5 connection to passive vipd"
    );
    drop((v, b));
    let (lab, b, v) = md5_lab(
        "m9",
        "password \"bird-key\";",
        "password = \"vipd-key\"\npassive = true",
    );
    refused_by_md5(&lab.node, "TCPMD5Failure", &b, &v);
}

#[test]
fn peer_restart_gets_the_table_again() {
    let lab = Lab::new("pr");
    let mut b = bird(&lab, "");
    let v = Vipd::start(&lab.node, &lab.dir, &conf("", "", 200));
    assert!(wait_until(Duration::from_secs(20), || b.count("master4") == 200));
    b.proc.stop(Duration::from_secs(5));
    let _ = std::fs::remove_file(&b.ctl);
    drop(b);
    assert!(
        v.wait_log("session down", Duration::from_secs(10)),
        "vipd did not notice"
    );
    let b = bird(&lab, "");
    assert!(
        wait_until(Duration::from_secs(30), || b.count("master4") == 200),
        "the table was not re-sent after the peer restarted"
    );
    assert_eq!(v.log().matches("session established").count(), 2);
}

#[test]
fn frozen_peer_hits_the_hold_timer_and_recovers() {
    let lab = Lab::new("hd");
    // BIRD waits 60 s or more after an error unless told otherwise.
    let b = bird(&lab, "hold time 240;\n  error wait time 1, 5;");
    let v = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf("hold_time = 6\nkeepalive = 2", "", 50),
    );
    assert!(wait_until(Duration::from_secs(20), || b.count("master4") == 50));
    b.proc.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    assert!(
        v.wait_log(
            "sending NOTIFICATION Hold Timer Expired (4/0)",
            Duration::from_secs(15)
        ),
        "no hold timer expiry"
    );
    let took = frozen.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "expired after {took:?}, before the 6 s hold time"
    );
    b.proc.signal(libc::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(30), || v
            .log()
            .matches("session established")
            .count()
            == 2
            && b.count("master4") == 50),
        "the session did not come back after SIGCONT"
    );
    // BIRD saw the NOTIFICATION vipd sent when the hold timer expired.
    let log = std::fs::read_to_string(lab.dir.path("bird.log")).unwrap_or_default();
    assert!(
        log.contains("Hold timer expired"),
        "BIRD did not get code 4: {log}"
    );
}

/// Polls BIRD's count throughout `f`, returning the smallest it saw.
fn min_count_during(
    b: &Bird,
    table: &str,
    mut until: impl FnMut() -> bool,
    limit: Duration,
) -> (usize, bool) {
    let end = Instant::now() + limit;
    let mut min = usize::MAX;
    loop {
        min = min.min(b.count(table));
        if until() {
            return (min, true);
        }
        if Instant::now() > end {
            return (min, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vipd_restart_with_graceful_restart_keeps_routes_at_bird() {
    let lab = Lab::new("gr");
    let b = bird(
        &lab,
        "graceful restart on;\n  debug { states, events, packets };",
    );
    let n = 300;
    let record = lab.dir.path("bgp-stopped");
    let bgp = format!("restart_record = \"{}\"", record.display());
    let mut v = Vipd::start(&lab.node, &lab.dir, &conf("", &bgp, n));
    assert!(wait_until(Duration::from_secs(20), || b.count("master4") == n as usize));
    // What BIRD received in vipd's capability: forwarding state preserved
    // for both families (RFC 4724), and no restart on a first start.
    let caps = neighbor_caps(&b);
    assert!(caps.contains("AF preserved: ipv4 ipv6"), "{caps}");
    assert!(!caps.contains("Restart recovery"), "{caps}");
    v.proc.stop(Duration::from_secs(5));
    assert!(
        v.log().contains("closing without NOTIFICATION"),
        "{}",
        v.proc.log_tail(20)
    );
    assert!(record.exists(), "no restart record after a graceful stop");
    assert!(
        wait_until(Duration::from_secs(5), || b.state("v4").contains("Active")
            || b.state("v4").contains("Connect")),
        "BIRD did not notice the session closing"
    );
    let during = b.cli("show protocols all v4");
    assert!(
        during.contains("Neighbor graceful restart active"),
        "{during}"
    );
    // Down for a while: BIRD keeps every route as stale.
    let (min, _) = min_count_during(&b, "master4", || false, Duration::from_secs(2));
    assert_eq!(min, n as usize, "routes were withdrawn while vipd was down");
    let v2 = Vipd::start(&lab.node, &lab.dir, &conf("", &bgp, n));
    let (min, up) = min_count_during(
        &b,
        "master4",
        || {
            v2.log().contains("session established")
                && !b
                    .cli("show protocols all v4")
                    .contains("graceful restart active")
        },
        Duration::from_secs(30),
    );
    assert!(
        up,
        "session did not come back, or BIRD stayed in graceful restart"
    );
    assert_eq!(min, n as usize, "routes were withdrawn during the restart");
    // Back within the restart time: the Restart State bit (RFC 4724 3).
    let caps = neighbor_caps(&b);
    assert!(caps.contains("Restart recovery"), "{caps}");
    assert!(caps.contains("AF preserved: ipv4 ipv6"), "{caps}");
    // BIRD ended the restart on vipd's End-of-RIB, not at session-up (what
    // a missing forwarding-state bit makes it do) nor on its timer: in its
    // log, the restart is done right after it got (not sent) End-of-RIB.
    let log = std::fs::read_to_string(lab.dir.path("bird.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let detected = lines
        .iter()
        .position(|l| l.contains("Neighbor graceful restart detected"))
        .unwrap_or_else(|| panic!("BIRD never saw the restart: {log}"));
    let done = detected
        + lines[detected..]
            .iter()
            .position(|l| l.contains("Neighbor graceful restart done"))
            .unwrap_or_else(|| panic!("BIRD never ended the restart: {log}"));
    assert!(
        lines[done - 1].contains("Got END-OF-RIB"),
        "the restart ended on something other than vipd's End-of-RIB: {}",
        lines[detected..=done].join("\n")
    );
    assert!(
        b.cli("show route all")
            .matches("BGP.as_path: 65010")
            .count()
            == n as usize
    );
    drop(v);
}

#[test]
fn withdraw_on_stop_withdraws_and_sends_a_shutdown_message() {
    let lab = Lab::new("ws");
    let b = bird(&lab, "graceful restart on;");
    let mut v = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf("", "withdraw_on_stop = true", 100),
    );
    assert!(wait_until(Duration::from_secs(20), || b.count("master4") == 100));
    v.proc.stop(Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || b.count("master4") == 0),
        "routes stayed after a stop with withdraw_on_stop"
    );
    let st = b.cli("show protocols all v4");
    assert!(st.contains("Administrative shutdown"), "{st}");
    assert!(
        st.contains("vipd is shutting down"),
        "no RFC 9003 message: {st}"
    );
    assert!(!st.contains("graceful restart active"), "{st}");
}

#[test]
fn gtsm_matching_establishes_and_lower_ttl_is_refused() {
    // Both sides with TTL security: sessions come up.
    let lab = Lab::new("gt");
    let b = bird(&lab, "ttl security on;");
    let _v = Vipd::start(&lab.node, &lab.dir, &conf("ttl_security = true", "", 5));
    assert!(
        wait_until(Duration::from_secs(20), || b.count("master4") == 5),
        "no routes over a GTSM session"
    );
    // vipd enforces GTSM: BIRD without it sends a lower TTL, and vipd never
    // takes its messages, so the session never comes up on either side.
    let lab2 = Lab::new("gu");
    let b2 = bird(&lab2, "");
    let v2 = Vipd::start(&lab2.node, &lab2.dir, &conf("ttl_security = true", "", 5));
    // The kernel on vipd's side drops BIRD's segments for their TTL.
    assert!(
        wait_until(Duration::from_secs(20), || tcp_ext(
            &lab2.node,
            "TCPMinTTLDrop"
        ) > 0),
        "no segment was dropped for its TTL: {}",
        v2.proc.log_tail(20)
    );
    assert!(
        !v2.log().contains("session established"),
        "vipd accepted packets below TTL 255"
    );
    assert!(!b2.established("v4"));
    assert_eq!(b2.count("master4"), 0);
}

#[test]
fn source_address_is_used_for_the_session() {
    let lab = Lab::new("sa");
    let dev = lab.node.dev_of("192.0.2.1/24");
    lab.node.ip(&["addr", "add", "192.0.2.5/24", "dev", &dev]);
    // BIRD only knows the peer 192.0.2.5: a session from 192.0.2.1 would be refused.
    let b = Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(
            &lab.dir,
            &[("v4", ROUTER4, "192.0.2.5", "ipv4", "passive on;")],
        ),
    );
    let _v = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf("source_address = \"192.0.2.5\"", "", 3),
    );
    assert!(
        wait_until(Duration::from_secs(20), || b.count("master4") == 3),
        "no session from the configured source address"
    );
    assert!(
        b.route(&v4_at(0)).contains("BGP.next_hop: 192.0.2.5"),
        "{}",
        b.route(&v4_at(0))
    );
}

/// An ICMP counter of the namespace's kernel.
fn icmp(ns: &Netns, name: &str) -> u64 {
    kernel_counter(ns, "/proc/net/snmp", "Icmp:", name)
}

/// Multihop eBGP with a real peer two hops away (node - router - BIRD):
/// with `ttl = 1` vipd's packets die at the router (which says so with
/// ICMP time exceeded) and there is no session; reloaded with `ttl = 2`,
/// the session comes up and BIRD holds the routes.
#[test]
fn multihop_ttl_reaches_a_peer_two_hops_away() {
    let lab = Lab::new("mh");
    let far = Netns::new("mhf");
    let (a, b) = veth(&lab.router, &far);
    lab.router
        .ip(&["addr", "add", "198.51.100.1/24", "dev", &a]);
    far.ip(&["addr", "add", "198.51.100.2/24", "dev", &b]);
    lab.router.ip(&["link", "set", &a, "up"]);
    far.ip(&["link", "set", &b, "up"]);
    lab.node
        .ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
    far.ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.1"]);
    let fwd = lab.router.exec("sysctl", &["-w", "net.ipv4.ip_forward=1"]);
    assert!(fwd.status.success(), "{fwd:?}");
    let conf = format!(
        "router id 198.51.100.2;\nlog \"{}\" all;\nprotocol device {{ scan time 10; }}\n\
         protocol bgp mh {{ local 198.51.100.2 as 65002; neighbor 192.0.2.1 as 65010; multihop 2; \
         connect retry time 2; ipv4 {{ import all; export none; }}; }}\n",
        lab.dir.path("bird.log").display()
    );
    let b = Bird::start(&far, &lab.dir, &conf);
    let vipd = |ttl: u8| {
        format!(
            "{BGP}[[bgp.peers]]\naddress = \"198.51.100.2\"\n\
             asn = 65002\nconnect_retry = 1\nttl = {ttl}\n[[announce]]\nprefixes = [{}]\n",
            v4_list(0, 5)
        )
    };
    let v = Vipd::start(&lab.node, &lab.dir, &vipd(1));
    assert!(
        wait_until(Duration::from_secs(20), || icmp(
            &lab.router,
            "OutTimeExcds"
        ) > 0),
        "the router never dropped a packet for its TTL: {}",
        v.proc.log_tail(20)
    );
    assert!(
        !b.established("mh"),
        "a session with ttl = 1 across a router"
    );
    v.reload(&vipd(2));
    assert!(
        wait_until(Duration::from_secs(30), || b.count("master4") == 5),
        "no routes over the two-hop session with ttl = 2"
    );
}
