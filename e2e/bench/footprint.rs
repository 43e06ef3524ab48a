//! Where the memory per Service goes, with no network and no root: the
//! watch (`k8s::watch::Watch`, the snapshot and the intent's tracker) fed
//! the cluster of `--bench kube` (N LoadBalancer Services, every other one
//! dual stack, N EndpointSlices of 10 endpoints over 50 nodes), then the
//! daemon's tables (`reconcile::Tables`) built from its first intent. Each
//! part is measured as the bytes live on the heap, counted by a wrapping
//! global allocator, and the number of live allocations (each also costs
//! the system allocator a header and rounding, about 16 bytes with glibc).
//! Objects are parsed from JSON one at a time and dropped once applied, as
//! a streamed list delivers them.
//!
//! Resident memory, which adds the allocator's free lists and fragmentation
//! to these figures, is `--bench kube`'s. This benchmark says which part of
//! it is whose.
//!
//! `cargo bench --bench footprint` (`VIPD_BENCH_SERVICES=20000,50000`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Instant;

use kube::runtime::watcher::Event;
use vipd::k8s::slim::Guarded;
use vipd::k8s::watch::{Ev, Update, Watch};

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as isize, Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new as isize - l.size() as isize, Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[derive(Clone, Copy)]
struct Live {
    bytes: isize,
    blocks: isize,
}

fn live() -> Live {
    Live {
        bytes: BYTES.load(Relaxed),
        blocks: BLOCKS.load(Relaxed),
    }
}

fn parse<K: vipd::k8s::slim::Guardable>(text: &str) -> Guarded<K> {
    serde_json::from_str(text).expect("the benchmark's own objects parse")
}

fn service(i: u32) -> String {
    let v4 = std::net::Ipv4Addr::from(0x6440_0000 + i);
    let v6 = std::net::Ipv6Addr::from(0x2001_0db8_0064_u128 << 80 | u128::from(i));
    let ingress = if i % 2 == 0 {
        format!(r#"[{{"ip":"{v4}"}},{{"ip":"{v6}"}}]"#)
    } else {
        format!(r#"[{{"ip":"{v4}"}}]"#)
    };
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"namespace":"{ns}","name":"svc-{i}",
        "uid":"{uid}","resourceVersion":"{i}","creationTimestamp":"2026-12-01T00:00:00Z"}},
        "spec":{{"type":"LoadBalancer","externalTrafficPolicy":"Cluster","ports":[{{"port":80,"protocol":"TCP"}}]}},
        "status":{{"loadBalancer":{{"ingress":{ingress}}}}}}}"#,
        ns = namespace(i),
        uid = uid(i),
    )
}

fn slice(i: u32) -> String {
    let eps: Vec<String> = (0..10)
        .map(|j| {
            format!(
                r#"{{"addresses":["10.244.0.{}"],"nodeName":"node-{}","conditions":{{"ready":true,"serving":true,"terminating":false}}}}"#,
                j + 1,
                (i + j) % 50
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"namespace":"{ns}",
        "name":"svc-{i}-x","uid":"{uid}-s","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},
        "addressType":"IPv4","endpoints":[{}],"ports":[{{"port":8080,"protocol":"TCP"}}]}}"#,
        eps.join(","),
        ns = namespace(i),
        uid = uid(i),
    )
}

/// As `--bench kube`: 5,000 Services in the namespace its burst deletes.
fn namespace(i: u32) -> &'static str {
    if i < 5000 {
        "burst"
    } else {
        ["shop", "pay", "search", "media"][(i % 4) as usize]
    }
}

fn uid(i: u32) -> String {
    format!("6c3b1f0e-8d2a-4b5c-9e7f-{i:012x}")
}

const CONFIG: &str = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
    [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
    [kubernetes]\nnode_name = \"node-a\"\n";

fn per(bytes: isize, n: u32) -> String {
    format!("{:>6.0} B", bytes as f64 / f64::from(n))
}

fn minus(a: Live, b: Live) -> Live {
    Live {
        bytes: a.bytes - b.bytes,
        blocks: a.blocks - b.blocks,
    }
}

fn row(what: &str, d: Live, n: u32) -> isize {
    let (bytes, blocks) = (d.bytes, d.blocks);
    println!(
        "  {what:<50} {}  {:>5.1} allocations per Service  ({:.1} MiB)",
        per(bytes, n),
        blocks as f64 / f64::from(n),
        bytes as f64 / 1048576.0
    );
    bytes + 16 * blocks
}

fn one_size(n: u32) {
    let cfg = vipd::config::Config::from_toml_str(CONFIG).expect("the benchmark's configuration");
    let k = cfg.kubernetes.expect("[kubernetes]");
    println!("\n== {n} Services, {n} EndpointSlices of 10 endpoints");
    let t = Instant::now();
    let start = live();
    let mut w = Watch::new(k, vec![]);
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"},
        "status":{"addresses":[{"type":"InternalIP","address":"192.0.2.1"}]}}"#;
    w.apply(Ev::Node(Ok(Event::Init)));
    w.apply(Ev::Node(Ok(Event::InitApply(parse(node)))));
    w.apply(Ev::Node(Ok(Event::InitDone)));
    w.apply(Ev::Slice(Ok(Event::Init)));
    for i in 0..n {
        w.apply(Ev::Slice(Ok(Event::InitApply(parse(&slice(i))))));
    }
    w.apply(Ev::Slice(Ok(Event::InitDone)));
    w.apply(Ev::Svc(Ok(Event::Init)));
    for i in 0..n {
        w.apply(Ev::Svc(Ok(Event::InitApply(parse(&service(i))))));
    }
    w.apply(Ev::Svc(Ok(Event::InitDone)));
    let listed = live();
    let pass = w
        .pass(Instant::now())
        .expect("the first pass after the lists");
    let Some(Update::Full(routes)) = pass.updates.into_iter().next() else {
        panic!("the first pass publishes the whole intent");
    };
    let decided = live();
    let mut tables = vipd::reconcile::Tables::new(Default::default(), None, true);
    tables.kube_full(&routes);
    let vips = routes.len();
    let with_tables = live();
    drop(routes);
    let after = live();
    let elapsed = t.elapsed();
    assert_eq!(
        tables.table().len(),
        vips,
        "every VIP in the speaker's table"
    );
    println!("  ({vips} VIPs; built in {:.2} s)", elapsed.as_secs_f64());
    let published = minus(with_tables, after);
    let mut total = row(
        "snapshot (Services, EndpointSlices)",
        minus(listed, start),
        n,
    );
    // The first intent published is a copy the daemon drops: outside both.
    let tracker = minus(minus(decided, listed), published);
    total += row("intent tracker", tracker, n);
    let tables_row = minus(with_tables, decided);
    total += row(
        "daemon tables (Kubernetes routes, speaker table)",
        tables_row,
        n,
    );
    println!(
        "  {:<50} {}  (with 16 bytes per allocation)",
        "all",
        per(total, n)
    );
    drop((w, tables));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<u32> = std::env::var("VIPD_BENCH_SERVICES")
        .unwrap_or_else(|_| "20000,50000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("VIPD_BENCH_SERVICES: numbers"))
        .collect();
    use std::mem::size_of;
    use vipd::k8s::{intent, model};
    println!(
        "in place: ServiceInfo {} B, SliceInfo {} B, Part {} B, Want {} B",
        size_of::<model::ServiceInfo>(),
        size_of::<model::SliceInfo>(),
        size_of::<intent::Part>(),
        size_of::<intent::Want>()
    );
    for n in sizes {
        one_size(n);
    }
}
