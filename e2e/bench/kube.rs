//! Kubernetes benchmark, against the API stand-in and BIRD, at one or more
//! cluster sizes (`VIPD_BENCH_SERVICES=10000,25000,50000`; default 10000).
//! At each size N the stand-in holds N LoadBalancer Services, every other
//! one dual stack (1.5 N VIPs), and N EndpointSlices of 10 endpoints spread
//! over 50 nodes, every EndpointSlice delivered before any Service. Per
//! size it reports:
//!
//! - cold start: from starting vipd to BIRD holding every route, and the
//!   CPU vipd used meanwhile (its own, from /proc: the stand-in runs in
//!   this process and its list time is reported apart);
//! - resident memory, steady, and the peak during a forced re-list (the
//!   stand-in's history expired and its watches cut: every watch gets 410
//!   Gone and lists again);
//! - event latency: an EndpointSlice turning ready until BIRD holds the
//!   route, and not-ready until it is gone (`VIPD_BENCH_CHANGES`, default
//!   1000), p50, p99 and p99.9; and vipd's own part of the same changes
//!   (event received -> UPDATE written), from its histogram;
//! - a burst: 5,000 Services deleted at once (a namespace deleted) until
//!   BIRD has lost every one of their routes.
//!
//! With more than one size, the marginal memory per Service (the slope of
//! the steady figure). Targets are issue 20's; nothing here asserts them.
//!
//! `cargo bench --bench kube` (root; e2e/install.sh).

#[path = "../lab/mod.rs"]
mod lab;
#[path = "../standin/mod.rs"]
mod standin;

use std::time::{Duration, Instant};

use lab::*;
use standin::{obj, Kind, StandIn};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Seconds of CPU (user + system) process `pid` has used.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / ticks
}

/// Resets the peak resident figure (VmHWM) of `pid` to its current one.
fn reset_peak(pid: i32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

struct Figures {
    n: u32,
    rss: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u32> = std::env::var("VIPD_BENCH_SERVICES")
        .unwrap_or_else(|_| "10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("VIPD_BENCH_SERVICES: numbers"))
        .collect();
    require(&["bird", "birdc"]);
    let figures: Vec<Figures> = sizes.iter().map(|n| one_size(*n)).collect();
    if let [first, .., last] = &figures[..] {
        let per = (last.rss as f64 - first.rss as f64) * 1024.0 / (last.n - first.n) as f64;
        println!(
            "\nmarginal resident memory per Service ({} to {}): {per:.0} bytes   (target under 1,024)",
            first.n, last.n
        );
    }
}

fn one_size(n: u32) -> Figures {
    let changes: u32 = knob("VIPD_BENCH_CHANGES", 1000);
    let lab = Lab::new("kb");
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&lab.router.name));
    api.put(obj::node("node-a", &["192.0.2.1"]));
    let (v4, v6) = api.put_scale(n, namespace);
    let bird = lab.dual_bird("");
    let mut ctl = BirdCtl::open(&bird.ctl);
    let kc = lab.dir.write("kubeconfig", &api.kubeconfig());
    let conf = kube_vipd_conf(&kc, "");
    println!("\n== {n} Services ({v4} IPv4 + {v6} IPv6 VIPs), {n} EndpointSlices of 10 endpoints over 50 nodes");

    // Cold start, EndpointSlices first.
    api.hold(Kind::Service);
    let t0 = Instant::now();
    let vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    let pid = vipd.proc.pid();
    assert!(
        wait_until(Duration::from_secs(120), || api
            .lists_served(Kind::EndpointSlice)
            >= 1),
        "vipd never listed the EndpointSlices"
    );
    let t_slices = t0.elapsed();
    api.release(Kind::Service);
    wait_routes(&mut ctl, (v4, v6), Duration::from_secs(180));
    let cold = t0.elapsed();
    let cpu = cpu_secs(pid);
    println!(
        "cold start: vipd started -> BIRD holds all {} routes: {:.3} s (target under 3 s); \
         EndpointSlices listed after {:.3} s, Services held until then",
        v4 + v6,
        cold.as_secs_f64(),
        t_slices.as_secs_f64()
    );
    println!(
        "  vipd CPU {:.2} s (target under 1.5); the stand-in spent {:.2} s serving lists",
        cpu,
        api.list_time().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (steady, peak) = rss(pid);
    println!(
        "memory: resident {:.1} MiB steady (target under 64 at 50,000), peak {:.1} MiB during the cold start",
        mib(steady),
        mib(peak)
    );
    relist(&api, &vipd, steady);
    latency(&api, &mut ctl, changes, &lab.node);
    burst(&api, &mut ctl, n);
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
    Figures { n, rss: steady }
}

/// The first 5,000 Services live in a namespace of their own: the burst
/// deletes it.
fn namespace(i: u32) -> &'static str {
    if i < 5000 {
        "burst"
    } else {
        "bench"
    }
}

fn wait_routes(ctl: &mut BirdCtl, want: (usize, usize), limit: Duration) {
    let end = Instant::now() + limit;
    while ctl.counts() != want {
        assert!(
            Instant::now() < end,
            "BIRD never got to {want:?} routes: {:?}",
            ctl.counts()
        );
    }
}

/// A forced re-list: history expired, watches cut, every watch lists again.
fn relist(api: &StandIn, vipd: &Vipd, steady: u64) {
    let pid = vipd.proc.pid();
    let lists = api.lists_served(Kind::Service);
    reset_peak(pid);
    // Changes after every watch's version, then compacted away: each
    // watch resumes from before the oldest version kept.
    api.put(obj::node("bump", &["198.51.100.9"]));
    api.put(obj::node("bump", &["198.51.100.10"]));
    api.expire_history();
    api.set_down(true);
    std::thread::sleep(Duration::from_millis(200));
    api.set_down(false);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(120), || api.lists_served(Kind::Service)
            > lists
            && api.lists_served(Kind::EndpointSlice) > 1),
        "no re-list after 410: {}",
        vipd.proc.log_tail(20)
    );
    std::thread::sleep(Duration::from_secs(2));
    let (now, peak) = rss(pid);
    println!(
        "forced re-list (410 Gone): done within {:.2} s; peak {:.1} MiB = {:.2}x steady (target under 1.25x), resident after {:.1} MiB",
        t.elapsed().as_secs_f64(),
        mib(peak),
        peak as f64 / steady as f64,
        mib(now)
    );
}

/// vipd's own histogram of event received -> UPDATE written
/// (`vipd_event_to_wire_seconds`): each bucket's bound and cumulative count.
fn wire_buckets(ns: &Netns) -> Vec<(f64, u64)> {
    let text = status_get(ns, "/metrics");
    (text.lines())
        .filter_map(|l| {
            let rest = l.strip_prefix("vipd_event_to_wire_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bound of the bucket holding quantile `q` of the counts that went
/// from `before` to `after`.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> (f64, u64) {
    let delta: Vec<(f64, u64)> = (after.iter())
        .map(|(le, c)| {
            let b = before.iter().find(|(l, _)| l == le).map_or(0, |(_, c)| *c);
            (*le, c - b)
        })
        .collect();
    let total = delta.last().map_or(0, |(_, c)| *c);
    let want = (q * total as f64).ceil() as u64;
    let le = delta
        .iter()
        .find(|(_, c)| *c >= want)
        .map_or(f64::INFINITY, |(l, _)| *l);
    (le, total)
}

/// One Service among the n, its EndpointSlice flipped `changes` times.
fn latency(api: &StandIn, ctl: &mut BirdCtl, changes: u32, ns: &Netns) {
    api.put(obj::service("bench", "lat", &["203.0.113.200"], false));
    api.put(obj::slice("bench", "lat-x", "lat", &[("node-b", false)]));
    std::thread::sleep(Duration::from_millis(500));
    let wire_before = wire_buckets(ns);
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
    let p = |v: &mut Vec<Duration>, q| ms(lab::percentile(v, q));
    println!("event latency over {changes} changes (EndpointSlice put -> BIRD's table):");
    println!(
        "  ready -> announced:     p50 {}  p99 {}",
        p(&mut up, 0.5),
        p(&mut up, 0.99)
    );
    println!(
        "  not ready -> withdrawn: p50 {}  p99 {}",
        p(&mut down, 0.5),
        p(&mut down, 0.99)
    );
    println!(
        "  all:                    p50 {}  p99 {}  p99.9 {}   (targets p99 under 5 ms, p99.9 under 20 ms)",
        p(&mut all, 0.5),
        p(&mut all, 0.99),
        p(&mut all, 0.999)
    );
    // The same changes as vipd saw them, without the stand-in's delivery
    // and BIRD's processing and answering birdc (which share the machine).
    let wire_after = wire_buckets(ns);
    let (p99, n) = bucket_quantile(&wire_before, &wire_after, 0.99);
    let (p999, _) = bucket_quantile(&wire_before, &wire_after, 0.999);
    println!(
        "  vipd alone (event received -> UPDATE written, its histogram over {n} UPDATEs): p99 at most {} ms, p99.9 at most {} ms",
        p99 * 1000.0,
        p999 * 1000.0
    );
}

/// The `burst` namespace's 5,000 Services deleted at once.
fn burst(api: &StandIn, ctl: &mut BirdCtl, n: u32) {
    let k = n.min(5000);
    let (v4, v6) = ctl.counts();
    let gone6 = (0..k).filter(|i| i % 2 == 0).count();
    let t = Instant::now();
    for i in 0..k {
        api.delete(Kind::Service, "burst", &format!("svc-{i}"));
    }
    let deleted = t.elapsed();
    wait_routes(ctl, (v4 - k as usize, v6 - gone6), Duration::from_secs(60));
    println!(
        "burst: {k} Services deleted ({:.0} ms to delete them in the stand-in) -> every withdrawal at BIRD: {:.3} s (target under 1 s)",
        deleted.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64()
    );
}
