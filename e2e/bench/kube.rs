//! Kubernetes benchmark, against the API stand-in and BIRD:
//!
//! - cold start: 10,000 Services already in the API, half of them dual
//!   stack, each with an EndpointSlice, every EndpointSlice delivered before
//!   any Service; the time from starting vipd to BIRD holding every route
//!   (target: under 3 s);
//! - event latency: an EndpointSlice turning ready until BIRD holds the
//!   route, and not-ready until it is gone, over 1,000 changes, p50 and p99
//!   (target: p99 under 20 ms);
//! - vipd's resident memory with 10,000 Services.
//!
//! `cargo bench --bench kube` (root; e2e/install.sh). Knobs:
//! VIPD_BENCH_SERVICES (default 10000), VIPD_BENCH_CHANGES (default 1000).

#[path = "../lab/mod.rs"]
mod lab;
#[path = "../standin/mod.rs"]
mod standin;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use lab::*;
use standin::{obj, Kind, StandIn};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u32 = knob("VIPD_BENCH_SERVICES", 10_000);
    let changes: u32 = knob("VIPD_BENCH_CHANGES", 1000);
    require(&["bird", "birdc"]);
    let lab = Lab::new("kb");
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&lab.router.name));
    api.put(obj::node("node-a", &["192.0.2.1"]));
    let (mut v4, mut v6) = (0usize, 0usize);
    for i in 0..n {
        let ip4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i).to_string();
        let ip6 =
            Ipv6Addr::from(u128::from("2001:db8:64::".parse::<Ipv6Addr>().unwrap()) + i as u128)
                .to_string();
        let ips: Vec<&str> = if i % 2 == 0 {
            vec![&ip4, &ip6]
        } else {
            vec![&ip4]
        };
        v4 += 1;
        v6 += (i % 2 == 0) as usize;
        api.put(obj::service("bench", &format!("svc-{i}"), &ips, false));
        api.put(obj::slice(
            "bench",
            &format!("svc-{i}-x"),
            &format!("svc-{i}"),
            &[("node-b", true)],
        ));
    }
    let bird = lab.dual_bird("");
    let mut ctl = BirdCtl::open(&bird.ctl);
    let kc = lab.dir.write("kubeconfig", &api.kubeconfig());
    let conf = kube_vipd_conf(&kc, "");
    println!("kube benchmark: {n} Services ({v4} IPv4 + {v6} IPv6 VIPs), one EndpointSlice each");

    // Cold start, EndpointSlices first.
    api.hold(Kind::Service);
    let t0 = Instant::now();
    let vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    assert!(
        wait_until(Duration::from_secs(60), || api
            .lists_served(Kind::EndpointSlice)
            >= 1),
        "vipd never listed the EndpointSlices"
    );
    let t_slices = t0.elapsed();
    api.release(Kind::Service);
    let t_rel = Instant::now();
    let end = Instant::now() + Duration::from_secs(120);
    while ctl.counts() != (v4, v6) {
        assert!(
            Instant::now() < end,
            "BIRD never got every route: {:?}",
            ctl.counts()
        );
    }
    let cold = t0.elapsed();
    let after_release = t_rel.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", vipd.proc.pid())).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    println!(
        "\ncold start (EndpointSlices listed {:.3} s after start, Services held until then)",
        t_slices.as_secs_f64()
    );
    println!(
        "  start of vipd -> BIRD holds all {} routes: {:.3} s   (target under 3 s)",
        v4 + v6,
        cold.as_secs_f64()
    );
    println!(
        "  Services released -> BIRD holds all routes: {:.3} s",
        after_release.as_secs_f64()
    );
    println!(
        "  vipd RSS {:.1} MiB, peak {:.1} MiB with {n} Services",
        field("VmRSS:"),
        field("VmHWM:")
    );

    // Event latency on one Service among the n.
    api.put(obj::service("bench", "lat", &["203.0.113.200"], false));
    api.put(obj::slice("bench", "lat-x", "lat", &[("node-b", false)]));
    std::thread::sleep(Duration::from_millis(500));
    let (mut up, mut down) = (vec![], vec![]);
    for i in 0..changes {
        let ready = i % 2 == 0;
        let t = Instant::now();
        api.put(obj::slice("bench", "lat-x", "lat", &[("node-b", ready)]));
        let end = t + Duration::from_secs(10);
        while ctl.has("203.0.113.200/32") != ready {
            assert!(Instant::now() < end, "change {i} never reached BIRD");
        }
        if ready {
            up.push(t.elapsed())
        } else {
            down.push(t.elapsed())
        }
    }
    let mut all: Vec<Duration> = up.iter().chain(&down).copied().collect();
    println!("\nevent latency over {changes} changes (EndpointSlice put -> BIRD's table), with {n} Services");
    println!(
        "  ready -> announced:    p50 {}  p99 {}",
        ms(lab::percentile(&mut up, 0.5)),
        ms(lab::percentile(&mut up, 0.99))
    );
    println!(
        "  not ready -> withdrawn: p50 {}  p99 {}",
        ms(lab::percentile(&mut down, 0.5)),
        ms(lab::percentile(&mut down, 0.99))
    );
    println!(
        "  all:                   p50 {}  p99 {}   (target p99 under 20 ms)",
        ms(lab::percentile(&mut all, 0.5)),
        ms(lab::percentile(&mut all, 0.99))
    );
    if std::env::var_os("VIPD_BENCH_TRACE").is_some() {
        for l in vipd
            .log()
            .lines()
            .filter(|l| l.contains(" us="))
            .rev()
            .take(12)
        {
            println!("{l}");
        }
    }
}
