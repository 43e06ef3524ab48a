//! BFD benchmark, against BIRD in network namespaces.
//!
//! Failover: the node goes dark (an nftables rule drops everything its
//! namespace sends, then vipd is killed: a power loss as the router sees
//! it) and the time until BIRD no longer has the route is measured, over
//! repeated runs, with BFD at 100 ms x 3 and 300 ms x 3 and, beside them,
//! without BFD at hold times of 3 s and 9 s. Each figure is printed with
//! its bound: the detection time, or the hold time.
//!
//! CPU: ten peers at 100 ms x 3, idle; vipd's and BIRD's CPU time over the
//! same window, with BFD and again with the same ten BGP sessions alone.
//!
//! `cargo bench --bench bfd` (root; e2e/install.sh). Knobs: VIPD_BENCH_RUNS
//! (default 20), VIPD_BENCH_CPU_SECS (default 20).

#[path = "../lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::*;

const ROUTE: &str = "203.0.113.1/32";

/// One way to lose a dead node's route: BFD at an interval, or the hold
/// time alone.
#[derive(Clone, Copy)]
enum Detect {
    Bfd { interval_ms: u64 },
    Hold { secs: u64 },
}

impl Detect {
    fn bound_ms(self) -> f64 {
        match self {
            Detect::Bfd { interval_ms } => (3 * interval_ms) as f64,
            Detect::Hold { secs } => (secs * 1000) as f64,
        }
    }
    fn name(self) -> String {
        match self {
            Detect::Bfd { interval_ms } => format!("BFD {interval_ms} ms x 3"),
            Detect::Hold { secs } => format!("no BFD, hold time {secs} s"),
        }
    }
    fn bird(self, dir: &Dir) -> String {
        let (bfd, proto) = match self {
            Detect::Bfd { interval_ms } => (
                format!(
                    "protocol bfd {{ interface \"*\" {{ min rx interval {interval_ms} ms; \
                     min tx interval {interval_ms} ms; multiplier 3; }}; }}\n"
                ),
                "bfd on;".to_string(),
            ),
            Detect::Hold { secs } => (String::new(), format!("hold time {secs};")),
        };
        format!(
            "router id 192.0.2.2;\nlog \"{}\" all;\nprotocol device {{ scan time 10; }}\n{bfd}\
             protocol bgp v4 {{\n  local 192.0.2.2 as 65002;\n  neighbor 192.0.2.1 as 65010;\n  {proto}\n\
               error wait time 1, 1;\n  connect delay time 1;\n  ipv4 {{ import all; export none; }};\n}}\n",
            dir.path("bird.log").display()
        )
    }
    fn vipd(self) -> String {
        let extra = match self {
            Detect::Bfd { interval_ms } => {
                format!("bfd = true\nbfd_interval_ms = {interval_ms}\nbfd_multiplier = 3\n")
            }
            Detect::Hold { secs } => format!("hold_time = {secs}\n"),
        };
        format!(
            "{BGP}\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n{extra}\
             [[announce]]\nprefix = \"{ROUTE}\"\n"
        )
    }
}

/// `runs` times: vipd up with the route at BIRD, then dark; milliseconds
/// until BIRD has no route.
fn failover(d: Detect, runs: u32) -> Vec<f64> {
    let lab = Lab::new("bb");
    let bird = Bird::start(&lab.router, &lab.dir, &d.bird(&lab.dir));
    let mut out = vec![];
    for i in 0..runs {
        let vipd = Vipd::start_named(&lab.node, &lab.dir, &d.vipd(), &format!("vipd{i}"));
        assert!(
            wait_until(Duration::from_secs(60), || bird.has(ROUTE)),
            "run {i}: no route at BIRD: {}",
            vipd.proc.log_tail(20)
        );
        // Past the start: BFD at its fast rate, keepalives on their schedule.
        std::thread::sleep(Duration::from_millis(1500));
        lab.node.drop_all("output");
        let t = Instant::now();
        vipd.proc.signal(libc::SIGKILL);
        let gone = wait_until(Duration::from_secs(60), || !bird.has(ROUTE));
        let took = t.elapsed();
        lab.node.pass_all();
        assert!(gone, "run {i}: the route stayed at BIRD");
        out.push(took.as_secs_f64() * 1000.0);
        drop(vipd);
    }
    out
}

/// User + system CPU time of a process, in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<u64>() as f64 / ticks
}

/// Ten peers, each its own pair of addresses (BIRD keys its BFD sessions
/// by the remote address): vipd's and BIRD's CPU seconds over `secs`.
fn ten_sessions(bfd: bool, secs: u64) -> (f64, f64) {
    let lab = Lab::new("bc");
    let node_dev = lab.node.dev_of("192.0.2.1/24");
    let mut bird = format!(
        "router id 192.0.2.2;\nlog \"{}\" all;\nprotocol device {{ scan time 10; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n",
        lab.dir.path("bird.log").display()
    );
    let mut vipd = BGP.to_string();
    for i in 0..10 {
        let (node, router) = (
            format!("192.0.2.{}", 100 + i),
            format!("192.0.2.{}", 10 + i),
        );
        lab.node
            .ip(&["addr", "add", &format!("{node}/24"), "dev", &node_dev]);
        lab.add_router_address(&format!("{router}/24"));
        bird += &format!(
            "protocol bgp p{i} {{ local {router} as 65002; neighbor {node} as 65010; {} \
             ipv4 {{ import all; export none; }}; }}\n",
            if bfd { "bfd on;" } else { "" }
        );
        vipd += &format!(
            "[[bgp.peers]]\naddress = \"{router}\"\nasn = 65002\nsource_address = \"{node}\"\n\
             connect_retry = 1\n{}",
            if bfd {
                "bfd = true\nbfd_interval_ms = 100\nbfd_multiplier = 3\n"
            } else {
                ""
            }
        );
    }
    vipd += &format!("[[announce]]\nprefix = \"{ROUTE}\"\n");
    let b = Bird::start(&lab.router, &lab.dir, &bird);
    let v = Vipd::start(&lab.node, &lab.dir, &vipd);
    let all_up = || (0..10).all(|i| b.established(&format!("p{i}")));
    assert!(
        wait_until(Duration::from_secs(60), all_up),
        "not all ten sessions up: {}",
        b.cli("show protocols")
    );
    if bfd {
        let ups = || {
            b.cli("show bfd sessions")
                .lines()
                .filter(|l| l.contains(" Up "))
                .count()
        };
        assert!(
            wait_until(Duration::from_secs(30), || ups() == 10),
            "{}",
            b.cli("show bfd sessions")
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let (v0, b0) = (cpu_secs(v.proc.pid()), cpu_secs(b.proc.pid()));
    std::thread::sleep(Duration::from_secs(secs));
    let (v1, b1) = (cpu_secs(v.proc.pid()), cpu_secs(b.proc.pid()));
    assert!(all_up(), "a session dropped during the window");
    (v1 - v0, b1 - b0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require(&["bird", "birdc", "nft"]);
    let runs: u32 = knob("VIPD_BENCH_RUNS", 20);
    let secs: u64 = knob("VIPD_BENCH_CPU_SECS", 20);
    println!("failover: node dark (nftables drop + SIGKILL) -> route gone at BIRD, {runs} runs");
    println!("| detection | bound | p50 | p99 | p99 / bound |");
    println!("| --- | --- | --- | --- | --- |");
    for d in [
        Detect::Bfd { interval_ms: 100 },
        Detect::Bfd { interval_ms: 300 },
        Detect::Hold { secs: 3 },
        Detect::Hold { secs: 9 },
    ] {
        let mut v = failover(d, runs);
        let (p50, p99) = (lab::percentile(&mut v, 0.5), lab::percentile(&mut v, 0.99));
        println!(
            "| {} | {:.0} ms | {p50:.0} ms | {p99:.0} ms | {:.2} |",
            d.name(),
            d.bound_ms(),
            p99 / d.bound_ms()
        );
    }
    println!("\nCPU: ten idle peers over {secs} s (CPU seconds, and percent of one core)");
    println!("| sessions | vipd | BIRD | vipd / BIRD |");
    println!("| --- | --- | --- | --- |");
    for bfd in [false, true] {
        let (v, b) = ten_sessions(bfd, secs);
        println!(
            "| 10 BGP{} | {v:.2} s ({:.2} %) | {b:.2} s ({:.2} %) | {:.2} |",
            if bfd { " + BFD 100 ms x 3" } else { "" },
            100.0 * v / secs as f64,
            100.0 * b / secs as f64,
            v / b.max(0.01)
        );
    }
}
