//! Events at fleet scale, against the API stand-in: `VIPD_BENCH_NODES`
//! vipd processes (default 50, one per node, peerless, side by side in one
//! namespace) and `VIPD_BENCH_REFUSED` Services (default 1,000) whose
//! addresses are outside `allowed_prefixes` (a decision every node makes
//! alike), plus one Service on each of the first five nodes' own addresses
//! (a decision of that node alone, and an outside address to the others).
//! Reports the Event writes the stand-in stored (creates and patches) and
//! the create and patch requests it was asked, once the fleet has started
//! and again after every vipd was restarted (a DaemonSet rollout).
//!
//! Before issue 20 each process posted each refusal under a fresh name:
//! nodes x refusals writes, again at every rollout. The target: about one
//! write per decision, and no more than a few after a rollout.
//!
//! `cargo bench --bench events` (root).

#[path = "../lab/mod.rs"]
mod lab;
#[path = "../standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant};

use lab::*;
use standin::{obj, StandIn};

const OWN: usize = 5;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let nodes: usize = knob("VIPD_BENCH_NODES", 50);
    let refused: usize = knob("VIPD_BENCH_REFUSED", 1000);
    let ns = Netns::new("evb");
    ns.ip(&["addr", "add", "192.0.2.100/24", "dev", "lo"]);
    let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&ns.name));
    for i in 0..nodes {
        api.put(obj::node(&node(i), &[&own_address(i)]));
    }
    for i in 0..refused {
        let ip = std::net::Ipv4Addr::from(0x6440_0000 + i as u32).to_string();
        put_service(&api, &format!("out-{i}"), &ip);
    }
    for i in 0..OWN.min(nodes) {
        put_service(&api, &format!("own-{i}"), &own_address(i));
    }
    let decisions = refused + 2 * OWN.min(nodes);
    let dir = Dir::new("evb");
    let kc = dir.write("kubeconfig", &api.kubeconfig());
    println!(
        "events benchmark: {nodes} nodes, {refused} Services refused everywhere, {} refused as a node's own address",
        OWN.min(nodes)
    );
    println!("  decisions to record: {decisions} (each own address: one Event naming its node, one for the others)");
    let t = Instant::now();
    let fleet = start(&ns, &dir, &kc, nodes);
    let settled = settle(&api);
    println!(
        "first start: {} Events, {} writes, {} creates and patches asked, settled {:.1} s after start (the rate limit: {} a second per node after a burst of {})",
        api.events().len(),
        api.event_writes(),
        api.event_asks(),
        (settled - t).as_secs_f64(),
        vipd::k8s::events::RATE,
        vipd::k8s::events::BURST,
    );
    let (writes, asks) = (api.event_writes(), api.event_asks());
    drop(fleet);
    let _fleet = start(&ns, &dir, &kc, nodes);
    settle(&api);
    println!(
        "after restarting all {nodes}: {} new writes, {} new creates and patches asked",
        api.event_writes() - writes,
        api.event_asks() - asks
    );
    println!(
        "before issue 20 (a fresh name per process): {} writes at the first start, as many again at every rollout",
        nodes * decisions
    );
}

fn node(i: usize) -> String {
    format!("node-{i}")
}

fn own_address(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

fn put_service(api: &StandIn, name: &str, ip: &str) {
    api.put(obj::service("t", name, &[ip], false));
    api.put(obj::slice(
        "t",
        &format!("{name}-1"),
        name,
        &[("node-x", true)],
    ));
}

/// Every vipd started and synced.
fn start(ns: &Netns, dir: &Dir, kc: &std::path::Path, nodes: usize) -> Vec<Vipd> {
    let fleet: Vec<Vipd> = (0..nodes)
        .map(|i| {
            let conf = format!(
                "{BGP}[kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"{}\"\n\
                 allowed_prefixes = [\"203.0.113.0/24\"]\n\
                 [status]\nlisten = \"127.0.0.1:{}\"\nready_needs_peer = false\n",
                kc.display(),
                node(i),
                9300 + i
            );
            Vipd::start_named(ns, dir, &conf, &node(i))
        })
        .collect();
    for v in &fleet {
        assert!(
            v.wait_log("caches synced", Duration::from_secs(120)),
            "{}",
            v.proc.log_tail(20)
        );
    }
    fleet
}

/// Waits until no Event was asked for 3 s; returns when the last was.
fn settle(api: &StandIn) -> Instant {
    let mut last = (api.event_asks(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
        let now = api.event_asks();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    last.1
}
