//! Speaker benchmark: how fast N IPv4 /32 and N IPv6 /128 reach BIRD over
//! two sessions at once, per family from Established to BIRD holding all N,
//! for three senders measured in the same run and namespaces:
//!
//! - vipd, starting with the routes in its configuration (two `prefixes`
//!   groups) and announcing to two peers;
//! - gobgpd holding the same routes (injected from an MRT file), re-sending
//!   them after BIRD's sessions are restarted;
//! - the limit: `limit.rs` beside this file writing the same routes
//!   pre-encoded and packed into 4096-byte UPDATEs, as fast as the socket
//!   takes them.
//!
//! Also vipd's resident memory once the table is sent, and its peak, beside
//! gobgpd's and BIRD's holding the same routes.
//!
//! `cargo bench --bench speaker` (root; e2e/install.sh). Knobs:
//! VIPD_BENCH_N (default 100000), VIPD_BENCH_RUNS (default 3).

#[path = "../lab/mod.rs"]
mod lab;
mod limit;

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lab::*;

struct Timing {
    v4: Duration,
    v6: Duration,
}

impl Timing {
    fn slower(&self) -> Duration {
        self.v4.max(self.v6)
    }
}

/// Polls BIRD from now until it holds `n` routes in both tables; per
/// family, the time from its session reaching Established to the full count.
fn measure(ctl: &mut BirdCtl, n: usize) -> Timing {
    let start = Instant::now();
    let (mut e4, mut e6, mut d4, mut d6) = (None, None, None, None);
    while d4.is_none() || d6.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "BIRD never got {n} + {n} routes"
        );
        let (u4, u6) = ctl.established();
        let now = Instant::now();
        if u4 && e4.is_none() {
            e4 = Some(now);
        }
        if u6 && e6.is_none() {
            e6 = Some(now);
        }
        let (c4, c6) = ctl.counts();
        let now = Instant::now();
        if c4 >= n && d4.is_none() {
            d4 = Some(now);
        }
        if c6 >= n && d6.is_none() {
            d6 = Some(now);
        }
    }
    Timing {
        v4: d4.unwrap() - e4.unwrap_or(start),
        v6: d6.unwrap() - e6.unwrap_or(start),
    }
}

fn bird_conf(dir: &Dir) -> String {
    format!(
        "router id 192.0.2.2;\nlog \"{}\" {{ warning, error }};\nprotocol device {{ scan time 10; }}\n\
         protocol bgp v4 {{ local 192.0.2.2 as 65002; neighbor 192.0.2.1 as 65010; ipv4 {{ import all; export none; }}; }}\n\
         protocol bgp v6 {{ local 2001:db8::2 as 65002; neighbor 2001:db8::1 as 65010; ipv6 {{ import all; export none; }}; }}\n",
        dir.path("bird.log").display()
    )
}

fn fresh_bird(lab: &Lab) -> (Bird, BirdCtl) {
    let _ = std::fs::remove_file(lab.dir.path("bird.ctl"));
    let b = Bird::start(&lab.router, &lab.dir, &bird_conf(&lab.dir));
    let c = BirdCtl::open(&b.ctl);
    (b, c)
}

fn v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i)
}

fn v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from("2001:db8::".parse::<Ipv6Addr>().unwrap()) + i as u128)
}

fn vipd_config(dir: &Dir, n: u32) -> PathBuf {
    let mut s = String::with_capacity(n as usize * 40);
    s += &format!(
        "{BGP}\
          [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
          [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\n\
          [[announce]]\nprefixes = ["
    );
    for i in 0..n {
        s += &format!("\"{}/32\",", v4(i));
    }
    s += "]\n[[announce]]\nprefixes = [";
    for i in 0..n {
        s += &format!("\"{}/128\",", v6(i));
    }
    s += "]\n";
    dir.write("bench-vipd.toml", &s)
}

/// An MRT TABLE_DUMP_V2 file (RFC 6396) of `n` host routes of one family,
/// as `gobgp mrt inject global` reads it.
fn mrt(path: &Path, n: u32, ipv6: bool) {
    fn rec(out: &mut Vec<u8>, sub: u16, body: &[u8]) {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes());
        out.extend_from_slice(&sub.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::with_capacity(n as usize * 64);
    // PEER_INDEX_TABLE: collector id, empty view name, one IPv4/AS4 peer
    // with AS 0, which gobgp takes as locally originated.
    let mut pit = vec![192, 0, 2, 1, 0, 0, 0, 1, 0x02];
    pit.extend_from_slice(&[0; 4 + 4 + 4]);
    rec(&mut out, 1, &pit);
    let origin = [0x40u8, 1, 1, 0];
    let as_path = [0x40u8, 2, 6, 2, 1, 0, 0, 0xfe, 0x4c];
    for i in 0..n {
        let mut attrs = origin.to_vec();
        attrs.extend_from_slice(&as_path);
        let (sub, plen, pfx): (u16, u8, Vec<u8>) = if ipv6 {
            let p = v6(i).octets().to_vec();
            let mut mp = vec![0x80, 14, 0, 0, 2, 1, 16];
            mp.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
            mp.push(0);
            mp.push(128);
            mp.extend_from_slice(&p);
            mp[2] = (mp.len() - 3) as u8;
            attrs.extend_from_slice(&mp);
            (4, 128, p)
        } else {
            attrs.extend_from_slice(&[0x40, 3, 4, 192, 0, 2, 1]);
            (2, 32, v4(i).octets().to_vec())
        };
        let mut body = i.to_be_bytes().to_vec();
        body.push(plen);
        body.extend_from_slice(&pfx);
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(&attrs);
        rec(&mut out, sub, &body);
    }
    std::fs::write(path, out).unwrap();
}

/// Feeds an MRT file to gobgpd through a FIFO, holding the write end open
/// until gobgpd holds every route (the CLI can exit before it has sent the
/// last of them when its input closes early).
fn inject(lab: &Lab, g: &Gobgp, file: &Path, afi: &str, n: usize) {
    let fifo = lab.dir.path(&format!("{afi}.fifo"));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut cli = lab
        .node
        .command("gobgp")
        .args(["mrt", "inject", "global", fifo.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&std::fs::read(file).unwrap()).unwrap();
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(300), || g.count(afi) >= n),
        "gobgpd never held {n} {afi} routes"
    );
    eprintln!(
        "  gobgpd holds {n} {afi} routes ({:.1} s after the file was written)",
        t.elapsed().as_secs_f64()
    );
    drop(w);
    let _ = cli.wait();
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn median(v: impl Iterator<Item = Duration>) -> Duration {
    lab::percentile(&mut v.collect::<Vec<_>>(), 0.5)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u32 = knob("VIPD_BENCH_N", 100_000);
    let runs: usize = knob("VIPD_BENCH_RUNS", 3);
    require(&["bird", "gobgpd", "gobgp"]);
    let lab = Lab::new("bn");
    let nn = n as usize;
    println!("speaker benchmark: {n} IPv4 /32 + {n} IPv6 /128 to BIRD over two sessions at once, {runs} runs");

    // vipd.
    let cfg = vipd_config(&lab.dir, n);
    let mut t_vipd = vec![];
    let mut mem_vipd = (0, 0);
    for run in 0..runs {
        let (bird, mut ctl) = fresh_bird(&lab);
        let mut cmd = lab.node.command(&vipd_bin());
        cmd.args(["run", "--config", cfg.to_str().unwrap(), "--log", "warn"]);
        let mut p = Proc::spawn("vipd", cmd, lab.dir.path("vipd.log"));
        let t = measure(&mut ctl, nn);
        std::thread::sleep(Duration::from_millis(300));
        mem_vipd = rss(p.pid());
        println!(
            "  vipd    run {run}: v4 {} s, v6 {} s (RSS {} MiB, peak {} MiB)",
            secs(t.v4),
            secs(t.v6),
            mem_vipd.0 / 1024,
            mem_vipd.1 / 1024
        );
        t_vipd.push(t);
        p.stop(Duration::from_secs(5));
        drop(ctl);
        drop(bird);
    }

    // gobgpd, loaded once, re-sending after BIRD restarts its sessions.
    let (bird, mut ctl) = fresh_bird(&lab);
    let g = Gobgp::start_as(
        &lab.node,
        &lab.dir,
        65010,
        "192.0.2.1",
        &[
            ("192.0.2.2", 65002, &["ipv4-unicast"]),
            ("2001:db8::2", 65002, &["ipv6-unicast"]),
        ],
    );
    let f4 = lab.dir.path("v4.mrt");
    let f6 = lab.dir.path("v6.mrt");
    mrt(&f4, n, false);
    mrt(&f6, n, true);
    inject(&lab, &g, &f4, "ipv4", nn);
    inject(&lab, &g, &f6, "ipv6", nn);
    assert!(
        wait_until(Duration::from_secs(120), || ctl.counts() == (nn, nn)),
        "BIRD never got gobgpd's table"
    );
    let mem_gobgp = rss(g.proc.pid());
    let mem_bird = rss(bird.proc.pid());
    let mut t_gobgp = vec![];
    for run in 0..runs {
        // Down until BIRD has flushed the table, then up: gobgpd re-sends.
        ctl.cmd("disable \"v*\"");
        assert!(
            wait_until(Duration::from_secs(30), || ctl.counts() == (0, 0)),
            "BIRD kept the routes"
        );
        ctl.cmd("enable \"v*\"");
        let t = measure(&mut ctl, nn);
        println!(
            "  gobgpd  run {run}: v4 {} s, v6 {} s",
            secs(t.v4),
            secs(t.v6)
        );
        t_gobgp.push(t);
    }
    drop(g);
    drop(ctl);
    drop(bird);

    // The limit.
    let mut t_blast = vec![];
    for run in 0..runs {
        let (bird, mut ctl) = fresh_bird(&lab);
        let l4 = limit::Limit::start(
            &lab.node.name,
            65010,
            ROUTER4.parse().unwrap(),
            (0..n).map(|i| v4(i).into()).collect(),
        );
        let l6 = limit::Limit::start(
            &lab.node.name,
            65010,
            ROUTER6.parse().unwrap(),
            (0..n).map(|i| v6(i).into()).collect(),
        );
        let t = measure(&mut ctl, nn);
        println!(
            "  limit   run {run}: v4 {} s, v6 {} s",
            secs(t.v4),
            secs(t.v6)
        );
        t_blast.push(t);
        drop((l4, l6));
        drop(ctl);
        drop(bird);
    }

    let m = |v: &[Timing]| {
        (
            median(v.iter().map(|t| t.v4)),
            median(v.iter().map(|t| t.v6)),
            median(v.iter().map(|t| t.slower())),
        )
    };
    let (v4, v6, vs) = m(&t_vipd);
    let (g4, g6, gs) = m(&t_gobgp);
    let (b4, b6, bs) = m(&t_blast);
    println!("\nmedians (seconds from Established to BIRD holding all {n} routes of the family)");
    println!("  sender   ipv4    ipv6    slower");
    println!("  vipd     {}   {}   {}", secs(v4), secs(v6), secs(vs));
    println!("  gobgpd   {}   {}   {}", secs(g4), secs(g6), secs(gs));
    println!("  limit    {}   {}   {}", secs(b4), secs(b6), secs(bs));
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
    println!(
        "  vipd / limit = {:.2}   gobgpd / limit = {:.2}   vipd / gobgpd = {:.3}",
        r(vs, bs),
        r(gs, bs),
        r(vs, gs)
    );
    println!("\nmemory with {n} + {n} routes (MiB)");
    println!(
        "  vipd   RSS {:.1}, peak {:.1} (two peers, loaded from two `prefixes` groups)",
        mem_vipd.0 as f64 / 1024.0,
        mem_vipd.1 as f64 / 1024.0
    );
    println!("  gobgpd RSS {:.1}", mem_gobgp.0 as f64 / 1024.0);
    println!(
        "  BIRD   RSS {:.1} (holding the received routes)",
        mem_bird.0 as f64 / 1024.0
    );
    println!(
        "  vipd RSS / gobgpd RSS = {:.3}",
        mem_vipd.0 as f64 / mem_gobgp.0.max(1) as f64
    );
}
