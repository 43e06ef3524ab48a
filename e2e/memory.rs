//! Memory regression, not a timing: vipd loaded with 100,000 IPv4 /32 and
//! 100,000 IPv6 /128 static announcements in a namespace of its own, two
//! peers configured and unreachable, must stay under a fixed resident
//! memory bound once the table is built, and under a bound for its peak
//! while loading. The figures it measured are printed either way.
//!
//! Bounds: measured at 24.9 MiB resident and 44.4 MiB peak (the static
//! table held once, shared by the daemon, the speaker and every session;
//! docs/benchmarks.md names the commit), plus about 25% margin. One more
//! copy of the table (about 10 MiB) or the parse's old overhead breaks them.
//! The table became a persistent map for issue 20 (a change costs what
//! changed, not a copy of the table): about 22 bytes more per prefix than
//! the B-tree before it (20.5 MiB then), a price paid once per prefix.

#[path = "lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::*;

const RSS_BOUND_MIB: f64 = 31.0;
const PEAK_BOUND_MIB: f64 = 54.0;

#[test]
fn vipd_with_200k_static_prefixes_stays_under_its_memory_bound() {
    let ns = Netns::new("mem");
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "lo"]);
    let dir = Dir::new("mem");
    let n = 100_000;
    let conf = format!(
        "{BGP}\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
         [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\n\
         [[announce]]\nprefixes = [{}]\n[[announce]]\nprefixes = [{}]\n",
        v4_list(0, n),
        v6_list(0, n)
    );
    let v = Vipd::start(&ns, &dir, &conf);
    // The status listener answers once the daemon loop runs, the table built.
    assert!(
        wait_until(Duration::from_secs(60), || vipd_status(&ns)
            .1
            .contains("table: 200000 prefixes")),
        "vipd never reported its table: {}",
        v.proc.log_tail(20)
    );
    std::thread::sleep(Duration::from_millis(500));
    let (now, peak) = rss(v.proc.pid());
    let (now, peak) = (now as f64 / 1024.0, peak as f64 / 1024.0);
    println!("vipd with {n} + {n} prefixes: RSS {now:.1} MiB, peak {peak:.1} MiB");
    assert!(
        now < RSS_BOUND_MIB,
        "RSS {now:.1} MiB, bound {RSS_BOUND_MIB}"
    );
    assert!(
        peak < PEAK_BOUND_MIB,
        "peak {peak:.1} MiB, bound {PEAK_BOUND_MIB}"
    );
}
