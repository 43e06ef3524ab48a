//! Allocation benchmark, against the API stand-in and BIRD: 10,000
//! LoadBalancer Services (half of them dual stack) created at once while
//! vipd runs.
//!
//! - allocating: created without addresses, vipd holding the allocator
//!   Lease: the time from the first create until every status is written,
//!   and until BIRD holds every route (target: both under 3 s);
//! - reference, the same run: the same Services created with their
//!   addresses already in the status (vipd without `[ipam]`, as with
//!   another allocator): the time until BIRD holds every route. The ratio
//!   is what allocating costs on the way to the router;
//! - the resident memory of both vipds, and of the reference restarted
//!   (after a list, as the new leader below is);
//! - a takeover: the allocating vipd stopped and started again, so that it
//!   takes the Lease back and makes a new leader's first pass over every
//!   Service, all already assigned (its time as vipd logs it; target under
//!   250 ms at 50,000), and its resident memory after.
//!
//! `cargo bench --bench ipam` (root; e2e/install.sh). Knob:
//! VIPD_BENCH_SERVICES (default 10000).

#[path = "../lab/mod.rs"]
mod lab;
#[path = "../standin/mod.rs"]
mod standin;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use lab::*;
use serde_json::json;
use standin::{obj, Kind, StandIn};

const POOLS: &str = "[ipam]\n[[ipam.pools]]\nname = \"bench\"\naddresses = [\"100.64.0.0/16\", \"2001:db8:64::/112\"]\n";

struct Run {
    statuses: Option<Duration>,
    bird: Duration,
    rss: (f64, f64),
    takeover: Option<Takeover>,
    /// The reference vipd restarted: resident after its list (the
    /// figure to hold the new leader's against, both past a list).
    restarted: Option<f64>,
}

/// A new leader over Services that all have their addresses.
struct Takeover {
    /// Its first pass, as it logs it: milliseconds, Services, writes.
    pass: (u64, u64, u64),
    rss: f64,
}

/// A field of vipd's log line (`name=value`).
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// vipd stopped (the Lease released) and started again: it takes the Lease
/// back and makes its first pass over every Service with nothing to write.
fn takeover(mut vipd: Vipd, lab: &Lab, conf: &str) -> Takeover {
    vipd.proc.stop(Duration::from_secs(10));
    let again = Vipd::start(&lab.node, &lab.dir, conf);
    let line = |v: &Vipd| {
        (v.log().lines())
            .find(|l| l.contains("allocation pass") && l.contains("first=true"))
            .map(String::from)
    };
    assert!(
        wait_until(Duration::from_secs(120), || line(&again).is_some()),
        "no first pass after the takeover\n{}",
        again.proc.log_tail(20)
    );
    let l = line(&again).unwrap();
    let pass = (
        field(&l, "ms").expect("ms"),
        field(&l, "services").expect("services"),
        field(&l, "written").expect("written"),
    );
    std::thread::sleep(Duration::from_secs(2));
    Takeover {
        pass,
        rss: rss(again.proc.pid()).0 as f64 / 1024.0,
    }
}

/// vipd stopped and started again over the same Services: its resident
/// memory once it has listed them all.
fn restart(mut vipd: Vipd, lab: &Lab, conf: &str, vips: usize) -> f64 {
    vipd.proc.stop(Duration::from_secs(10));
    let again = Vipd::start(&lab.node, &lab.dir, conf);
    let want = format!("{vips} VIPs for this node");
    assert!(
        wait_until(Duration::from_secs(120), || vipd_status(&lab.node)
            .1
            .contains(&want)),
        "the restarted vipd never reported its VIPs\n{}",
        again.proc.log_tail(20)
    );
    std::thread::sleep(Duration::from_secs(2));
    rss(again.proc.pid()).0 as f64 / 1024.0
}

fn service(i: u32, given: bool) -> serde_json::Value {
    let ip4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i).to_string();
    let ip6 = Ipv6Addr::from(u128::from("2001:db8:64::".parse::<Ipv6Addr>().unwrap()) + i as u128)
        .to_string();
    let dual = i % 2 == 0;
    let ips: Vec<&str> = match (given, dual) {
        (false, _) => vec![],
        (true, true) => vec![&ip4, &ip6],
        (true, false) => vec![&ip4],
    };
    let mut s = obj::service("bench", &format!("svc-{i}"), &ips, false);
    if !given {
        s.as_object_mut().unwrap().remove("status");
    }
    if dual {
        s["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
        s["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    }
    s
}

fn run(n: u32, allocate: bool) -> Run {
    let lab = Lab::new(if allocate { "ba" } else { "bg" });
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&lab.router.name));
    api.put(obj::node("node-a", &["192.0.2.1"]));
    let bird = lab.dual_bird("");
    let mut ctl = BirdCtl::open(&bird.ctl);
    let kc = lab.dir.write("kubeconfig", &api.kubeconfig());
    let extra = format!(
        "announce_without_endpoints = true\n{}",
        if allocate { POOLS } else { "" }
    );
    let conf = kube_vipd_conf(&kc, &extra);
    let vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    assert!(
        wait_until(Duration::from_secs(30), || ctl.established()
            == (true, true)),
        "no sessions"
    );
    if allocate {
        assert!(
            wait_until(Duration::from_secs(30), || api
                .get(Kind::Lease, "kube-system", "vipd-ipam")
                .is_some()),
            "vipd never took the Lease"
        );
    }
    let want = ((n) as usize, n.div_ceil(2) as usize);
    let t0 = Instant::now();
    for i in 0..n {
        api.put(service(i, !allocate));
    }
    let created = t0.elapsed();
    let mut statuses = None;
    let end = t0 + Duration::from_secs(120);
    loop {
        if allocate && statuses.is_none() && api.status_writes(Kind::Service) >= n as usize {
            statuses = Some(t0.elapsed());
        }
        if ctl.counts() == want && (statuses.is_some() || !allocate) {
            break;
        }
        assert!(
            Instant::now() < end,
            "BIRD holds {:?} of {want:?}, {} statuses written\n{}",
            ctl.counts(),
            api.status_writes(Kind::Service),
            vipd.proc.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let bird_t = t0.elapsed();
    if std::env::var_os("VIPD_BENCH_TRACE").is_some() {
        for l in vipd.log().lines().filter(|l| l.contains("allocation pass")) {
            println!("{l}");
        }
    }
    eprintln!("  ({n} Services created in {:.3} s)", created.as_secs_f64());
    std::thread::sleep(Duration::from_millis(500));
    let (rss, peak) = rss(vipd.proc.pid());
    let (takeover, restarted) = if allocate {
        (Some(takeover(vipd, &lab, &conf)), None)
    } else {
        (None, Some(restart(vipd, &lab, &conf, want.0 + want.1)))
    };
    Run {
        statuses,
        bird: bird_t,
        rss: (rss as f64 / 1024.0, peak as f64 / 1024.0),
        takeover,
        restarted,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u32 = knob("VIPD_BENCH_SERVICES", 10_000);
    require(&["bird", "birdc"]);
    println!(
        "ipam benchmark: {n} LoadBalancer Services ({} dual stack) created at once",
        n.div_ceil(2)
    );
    let a = run(n, true);
    let g = run(n, false);
    let s = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    println!("\nallocating (no addresses given; vipd holds the allocator Lease)");
    println!(
        "  first create -> every status written: {}   (target under 3 s at 10,000)",
        s(a.statuses.unwrap())
    );
    println!(
        "  first create -> BIRD holds every route: {}   (target under 3 s at 10,000)",
        s(a.bird)
    );
    println!("  vipd RSS {:.1} MiB, peak {:.1} MiB", a.rss.0, a.rss.1);
    let t = a.takeover.as_ref().expect("the allocating run takes over");
    println!(
        "  a new leader's first pass over {} Services, all assigned: {} ms, {} writes   (target under 250 ms at 50,000)",
        t.pass.1, t.pass.0, t.pass.2
    );
    println!(
        "  the new leader's RSS {:.1} MiB: {:.0} bytes per Service   (target under 1,536 at 50,000)",
        t.rss,
        t.rss * 1048576.0 / f64::from(n)
    );
    println!("\nreference (addresses already in the status, vipd without [ipam])");
    println!("  first create -> BIRD holds every route: {}", s(g.bird));
    println!("  vipd RSS {:.1} MiB, peak {:.1} MiB", g.rss.0, g.rss.1);
    let restarted = g.restarted.expect("the reference run restarts");
    println!(
        "  restarted, after listing every Service: RSS {restarted:.1} MiB ({:.0} bytes per Service)",
        restarted * 1048576.0 / f64::from(n)
    );
    println!(
        "\nratio allocating/reference: BIRD {:.2}x, RSS {:.2}x",
        a.bird.as_secs_f64() / g.bird.as_secs_f64(),
        a.rss.0 / g.rss.0
    );
    println!(
        "the allocator's own memory (new leader - restarted reference): {:.0} bytes per Service",
        (t.rss - restarted) * 1048576.0 / f64::from(n)
    );
}
