//! L2 failover benchmark: three vipd nodes and a client on one bridge (the
//! L2 suite's lab), one VIP, the client opening a TCP connection to it
//! every 10 ms, each on its own thread. Each connection reaches the server
//! behind one node's DNAT, which answers with its node's name, so the
//! client sees when its traffic reaches the new owner.
//!
//! A run takes the VIP's owner away, one of four ways, and measures the
//! time until the first connection the new owner answered completed:
//! - crash, with and without `fast_failover`: the owner's namespace drops
//!   everything it sends (nftables) and its vipd is SIGKILLed, a power loss
//!   as the segment sees it;
//! - drain: the owner's Node cordoned (`[drain]`), and stop: its vipd sent
//!   SIGTERM. Both hand over while the old owner still forwards, so no
//!   connection may fail to open or go unanswered.
//!
//! Also measured: the new owner's first gratuitous ARP as the client's
//! capture dates it (the connections' own resolution is their 10 ms
//! spacing). Failures are counted apart: a connection that could not be
//! opened or got no answer (a black hole), and one reset after it opened,
//! in flight at the instant the client's neighbour entry moved (its next
//! packet reached a node that never saw it open: moving an address moves
//! every flow, which only state shared between the nodes would avoid).
//!
//! Between runs the old owner is brought back (rule removed, vipd
//! restarted, Node uncordoned) and, L2 having no failback, the next run
//! takes away whichever node owns the VIP then. Printed: p50, p99 and max
//! per way, the target beside each, and the connections' fates.
//!
//! `cargo bench --bench l2` (root; e2e/install.sh). Knob: VIPD_BENCH_RUNS
//! (default 20).

#[path = "../l2lab.rs"]
mod l2lab;
#[path = "../lab/mod.rs"]
mod lab;
#[path = "../standin/mod.rs"]
mod standin;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use l2lab::*;
use lab::*;
use standin::obj;

/// How often the client opens a connection: 100 a second.
const EVERY: Duration = Duration::from_millis(10);

/// One connection: when it was opened, when it ended, and the name of
/// the node that answered or why none did.
struct Conn {
    opened: Instant,
    done: Instant,
    answer: Result<String, String>,
}

/// The client opening connections to `V4` every `EVERY` until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Conn>>>,
    driver: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(l: &L2Lab) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(vec![]));
        let (s, c, ns) = (stop.clone(), conns.clone(), l.client.name.clone());
        // Threads spawned in the namespace's thread inherit its namespace.
        let driver = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let mut next = Instant::now();
                let mut open = vec![];
                while !s.load(Ordering::Relaxed) {
                    let c = c.clone();
                    open.push(std::thread::spawn(move || {
                        let opened = Instant::now();
                        let answer = connect();
                        let done = Instant::now();
                        c.lock().unwrap().push(Conn {
                            opened,
                            done,
                            answer,
                        });
                    }));
                    next += EVERY;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                for t in open {
                    let _ = t.join();
                }
            })
        });
        Traffic {
            stop,
            conns,
            driver: Some(driver),
        }
    }

    /// When the first connection answered by `node` completed, after `t`.
    fn first_from(&self, node: &str, t: Instant) -> Option<Instant> {
        let c = self.conns.lock().unwrap();
        c.iter()
            .filter(|c| c.done >= t && c.answer.as_deref() == Ok(node))
            .map(|c| c.done)
            .min()
    }

    /// Stops, waits for the connections in flight; returns them all.
    fn finish(mut self) -> Vec<Conn> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
        std::mem::take(&mut *self.conns.lock().unwrap())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection to the VIP's port 80: the name the server wrote.
fn connect() -> Result<String, String> {
    let a: std::net::SocketAddr = format!("{V4}:80").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    if out.is_empty() {
        return Err("no answer".into());
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Crash { fast: bool },
    Drain,
    Stop,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Crash { fast: true } => "crash, fast_failover",
            Way::Crash { fast: false } => "crash, lease only",
            Way::Drain => "drain (Node cordoned)",
            Way::Stop => "stop (SIGTERM)",
        }
    }
    fn conf(self) -> &'static str {
        match self {
            Way::Crash { fast: true } => "fast_failover = true\n",
            Way::Crash { fast: false } | Way::Stop => "",
            Way::Drain => "[drain]\n",
        }
    }
    /// The target, in milliseconds.
    fn target_ms(self) -> f64 {
        match self {
            Way::Crash { fast: true } => 1000.0,
            Way::Crash { fast: false } => ((LEASE + 1) * 1000) as f64,
            Way::Drain | Way::Stop => 300.0,
        }
    }
    /// Whether every connection must succeed: the old owner forwards
    /// until the new one has announced.
    fn handover(self) -> bool {
        matches!(self, Way::Drain | Way::Stop)
    }
}

/// Waits until the VIP's owner is settled for the next run: the only
/// node answering, every node ready (a restarted one past its warm-up,
/// so the owner's successor will not change under the run), and with fast
/// failover every BFD session of the owner's Up (with the successor of
/// then: a node that became eligible since may have become it).
fn ready(l: &L2Lab, way: Way) -> usize {
    let owner = settled(l, V4, Duration::from_secs(30));
    let all = wait_until(Duration::from_secs(30), || l.all_ready());
    assert!(all, "not every node is ready\n{}", l.context());
    if way == (Way::Crash { fast: true }) {
        let up = wait_until(Duration::from_secs(30), || {
            let (_, st) = vipd_status(&l.nodes[owner]);
            st.lines()
                .find_map(|x| x.strip_prefix("  fast failover BFD: "))
                .is_some_and(|p| p.split(", ").all(|s| s.ends_with(" Up")))
        });
        assert!(up, "no BFD session Up with the successor\n{}", l.context());
    }
    // Past the start: every node's heartbeat seen, the announcements done.
    std::thread::sleep(Duration::from_secs(2));
    owner
}

/// Takes the owner away; returns when it did, and the wall clock then
/// (for the capture's timestamps).
fn take_away(l: &mut L2Lab, way: Way, owner: usize) -> (Instant, f64) {
    match way {
        Way::Crash { .. } => {
            l.nodes[owner].drop_all("output");
            let t = (Instant::now(), unix_now());
            l.kill(owner);
            t
        }
        Way::Drain => {
            let (name, v4, v6) = NODES[owner];
            let t = (Instant::now(), unix_now());
            l.api.put(cordoned(name, v4, v6));
            t
        }
        Way::Stop => {
            let t = (Instant::now(), unix_now());
            if let Some(mut v) = l.vipds[owner].take() {
                v.proc.stop(Duration::from_secs(10));
            }
            t
        }
    }
}

/// Brings the old owner back as an ordinary node: returns once its Lease
/// says so (a killed vipd's says "true" until the new one writes
/// "starting"; a drained one's "draining" until it is ready again).
fn bring_back(l: &mut L2Lab, way: Way, old: usize) {
    match way {
        Way::Crash { .. } => {
            l.nodes[old].pass_all();
            l.start(old, way.conf());
        }
        Way::Drain => {
            let (name, v4, v6) = NODES[old];
            l.api.put(obj::node(name, &[v4, v6]));
        }
        Way::Stop => l.start(old, way.conf()),
    }
    let back = wait_until(Duration::from_secs(10), || {
        let r = l.lease_ready(old);
        let want = if way == Way::Drain {
            "true"
        } else {
            "starting"
        };
        r.as_deref() == Some(want)
    });
    assert!(back, "{} did not come back\n{}", NODES[old].0, l.context());
}

/// What `n` runs of one way measured.
struct Figures {
    /// Per run, milliseconds until the first connection the new owner
    /// answered completed.
    took: Vec<f64>,
    /// Per run, milliseconds until the new owner's first gratuitous ARP
    /// (the capture's clock: microseconds, where the connections' are
    /// 10 ms apart).
    announced: Vec<f64>,
    /// Connections that could not be opened or got no answer.
    failed: usize,
    /// Connections reset in flight by the move.
    broken: usize,
    opened: usize,
}

fn runs(way: Way, n: u32) -> Figures {
    let mut l = lab("l2b", &[V4]);
    l.api.put(l2_service("web", &[V4], false));
    l.api
        .put(obj::slice("default", "web-1", "web", &[("node-a", true)]));
    l.start_all(way.conf());
    let (mut took, mut announced) = (vec![], vec![]);
    let (mut failed, mut broken, mut opened) = (0, 0, 0);
    for i in 0..n {
        let owner = ready(&l, way);
        let capture = Capture::start(&l.client, &l.client_if, "arp");
        let traffic = Traffic::start(&l);
        // At a random point between two connections: the times are not
        // all one phase of the 10 ms schedule.
        std::thread::sleep(Duration::from_micros(500_000 + fastrand::u64(0..10_000)));
        let (t, wall) = take_away(&mut l, way, owner);
        let mut first = None;
        wait_until(Duration::from_secs(LEASE + 10), || {
            first = NODES
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != owner)
                .filter_map(|(_, (name, _, _))| traffic.first_from(name, t))
                .min();
            first.is_some()
        });
        // Long enough after for connections in flight to end.
        std::thread::sleep(Duration::from_millis(500));
        let conns = traffic.finish();
        let arp = capture.stop();
        let Some(first) = first else {
            panic!(
                "{} run {i}: no connection reached a new owner\n{}",
                way.name(),
                l.context()
            );
        };
        took.push(first.duration_since(t).as_secs_f64() * 1000.0);
        let garp = (0..NODES.len())
            .filter(|j| *j != owner)
            .flat_map(|j| arp_times(&arp, V4, &l.macs[j], true))
            .filter(|x| *x >= wall)
            .min_by(|a, b| a.total_cmp(b));
        let Some(garp) = garp else {
            panic!(
                "{} run {i}: no gratuitous ARP from a new owner:\n{arp}",
                way.name()
            );
        };
        announced.push((garp - wall) * 1000.0);
        let (unopened, reset) = count_failures(&conns);
        if way.handover() && unopened + reset > 0 {
            for c in conns.iter().filter(|c| c.answer.is_err()) {
                eprintln!(
                    "{} run {i}: a connection opened {:?} after the handover began, ended {:?} after it: {:?}",
                    way.name(),
                    c.opened.saturating_duration_since(t),
                    c.done.saturating_duration_since(t),
                    c.answer
                );
            }
        }
        failed += unopened;
        broken += reset;
        opened += conns.len();
        bring_back(&mut l, way, owner);
    }
    Figures {
        took,
        announced,
        failed,
        broken,
        opened,
    }
}

/// Of `conns`: those that never got an answer because they could not be
/// opened or nobody answered (a black hole), and those reset after
/// connecting (in flight at the moment the client's entry moved: their
/// next packet reached the new owner, which never saw them open).
fn count_failures(conns: &[Conn]) -> (usize, usize) {
    let reset = |c: &&Conn| {
        c.answer
            .as_ref()
            .is_err_and(|e| e.contains("reset by peer"))
    };
    let failed = conns.iter().filter(|c| c.answer.is_err());
    let broken = failed.clone().filter(reset).count();
    (failed.count() - broken, broken)
}

/// The `p` quantile of `v` (nearest rank), sorting it.
fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let n: u32 = std::env::var("VIPD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "L2 failover, {n} runs each; heartbeat {HEARTBEAT} s, lease {LEASE} s, BFD 100 ms x 3. \
         Connection: from the owner taken away to the first connection the new owner answered \
         (one opened every 10 ms); announced: to the new owner's first gratuitous ARP as captured"
    );
    println!(
        "| way | connection p50 | p99 | max | target (p99) | p99 / target | announced p50 | p99 | connections opened | failed | reset in flight |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let ways = [
        Way::Crash { fast: true },
        Way::Crash { fast: false },
        Way::Drain,
        Way::Stop,
    ];
    for way in ways {
        let mut f = runs(way, n);
        let p99 = pct(&mut f.took, 0.99);
        println!(
            "| {} | {:.0} ms | {p99:.0} ms | {:.0} ms | {:.0} ms | {:.2} | {:.1} ms | {:.1} ms | {} | {} | {} |",
            way.name(),
            pct(&mut f.took, 0.5),
            pct(&mut f.took, 1.0),
            way.target_ms(),
            p99 / way.target_ms(),
            pct(&mut f.announced, 0.5),
            pct(&mut f.announced, 0.99),
            f.opened,
            f.failed,
            f.broken,
        );
    }
    println!(
        "Reference figures from their docs and issues (not runs): kube-vip about 3 s, \
         MetalLB 1-4 s, Cilium 10-20 s by default."
    );
}
