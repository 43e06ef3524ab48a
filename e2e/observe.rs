//! The operator's view against real clients: `vipd explain` and
//! `vipd status -o json` on a cluster in the API stand-in with BIRD;
//! `/metrics` checked by promtool and scraped by a real Prometheus server;
//! the status listener's bounds against slow and oversized clients.

#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use lab::*;
use serde_json::Value;
use standin::{obj, StandIn};

const API: &str = "192.0.2.100:6443";

/// One raw request to the status listener in `ns`; the whole answer.
fn raw(ns: &Netns, req: Vec<u8>) -> String {
    in_netns(&ns.name, move || {
        let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9179") else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(&req);
        let mut out = vec![];
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

fn get(ns: &Netns, path: &str, accept: &str) -> String {
    raw(
        ns,
        format!(
            "GET {path} HTTP/1.1\r\nHost: vipd\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    )
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn explain_says_why_and_to_whom_and_status_speaks_json() {
    let lab = Lab::new("ox");
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start(API.parse().unwrap(), Some(&lab.router.name));
    api.put(obj::node("node-a", &["192.0.2.1"]));
    let mut web = obj::service("a", "web", &["203.0.113.10", "192.0.2.1"], false);
    web["metadata"]["annotations"] = serde_json::json!({"vipd.io/communities": "65010:7"});
    api.put(web);
    api.put(obj::slice("a", "web-1", "web", &[("node-b", true)]));
    api.put(obj::service("a", "local", &["203.0.113.11"], true));
    api.put(obj::slice("a", "local-1", "local", &[("node-b", true)]));
    let bird = lab.dual_bird("");
    let kc = lab.dir.write("kubeconfig", &api.kubeconfig());
    let _vipd = Vipd::start(&lab.node, &lab.dir, &kube_vipd_conf(&kc, ""));
    assert!(
        wait_until(Duration::from_secs(20), || bird.has("203.0.113.10/32")),
        "a/web never reached BIRD:\n{}",
        bird.cli("show route all")
    );
    let r = bird.route("203.0.113.10/32");
    assert!(r.contains("(65010,7)"), "{r}");

    let (code, text) = vipd_cli(&lab.node, &["explain", "a/web"]);
    assert_eq!(code, Some(0), "{text}");
    assert_lines(
        &text,
        &[
            "Service a/web: LoadBalancer, externalTrafficPolicy Cluster",
            "  endpoints: 1 ready, 0 on this node",
            "  203.0.113.10: announced by this node",
            "    to 192.0.2.2 AS65002: next hop 192.0.2.1, communities 65010:7",
            "  192.0.2.1: not announced: refused: 192.0.2.1 is this node's own address",
        ],
    );
    let (_, text) = vipd_cli(&lab.node, &["explain", "a/local"]);
    assert_lines(
        &text,
        &[
            "  not announced from this node: externalTrafficPolicy Local and no ready endpoint on this node",
            "  203.0.113.11: not announced: externalTrafficPolicy Local and no ready endpoint on this node",
        ],
    );
    let (code, text) = vipd_cli(&lab.node, &["explain", "a/wbe"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text,
        "a/wbe: no such Service in vipd's cache; did you mean a/web?\n"
    );
    for bad in ["web", "a/we b", "A/web", "a/web/x"] {
        let (code, text) = vipd_cli(&lab.node, &["explain", bad]);
        assert_eq!(code, Some(2), "{bad}: {text}");
        assert!(text.contains("NAMESPACE/NAME"), "{text}");
    }

    let (code, text) = vipd_cli(&lab.node, &["explain", "a/web", "-o", "json"]);
    assert_eq!(code, Some(0), "{text}");
    let j: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let peer = &j["addresses"][0]["peers"][0];
    assert_eq!(peer["peer"], "192.0.2.2", "{j:#}");
    assert_eq!(peer["carried"], true, "{j:#}");
    assert_eq!(j["addresses"][1]["wanted"], false, "{j:#}");

    let (code, text) = vipd_cli(&lab.node, &["status", "-o", "json"]);
    assert_eq!(code, Some(0), "{text}");
    let j: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(j["ready"], true);
    assert_eq!(j["kubernetes"]["services_announced"], 1, "{j:#}");
    assert_eq!(j["kubernetes"]["refused"]["node_address"], 1, "{j:#}");
    let p4 = j["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == "192.0.2.2")
        .unwrap();
    assert_eq!(p4["state"], "Established", "{j:#}");
    assert_eq!(p4["prefixes_sent"], 1, "{j:#}");

    // Event to wire: a new Service's route reaches BIRD, and the histogram
    // counted its UPDATE.
    api.put(obj::service("a", "new", &["203.0.113.12"], false));
    api.put(obj::slice("a", "new-1", "new", &[("node-b", true)]));
    assert!(wait_until(Duration::from_secs(10), || bird.has("203.0.113.12/32")));
    let m = body(&get(&lab.node, "/metrics", "text/plain")).to_string();
    let count = m
        .lines()
        .find_map(|l| l.strip_prefix("vipd_event_to_wire_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "no event-to-wire sample:\n{m}");
}

/// A Prometheus server on the node's loopback, scraping vipd every second.
struct Prometheus {
    _proc: Proc,
}

impl Prometheus {
    fn start(ns: &Netns, dir: &Dir) -> Prometheus {
        require(&["prometheus", "promtool"]);
        let conf = dir.write(
            "prometheus.yml",
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: vipd\n    static_configs:\n      - targets: ['127.0.0.1:9179']\n",
        );
        let data = dir.path("prometheus-data");
        let mut cmd = ns.command("prometheus");
        cmd.args([
            &format!("--config.file={}", conf.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            "--web.listen-address=127.0.0.1:9090",
        ]);
        ns.ip(&["link", "set", "lo", "up"]);
        Prometheus {
            _proc: Proc::spawn("prometheus", cmd, dir.path("prometheus.log")),
        }
    }
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrape() {
    let lab = Lab::new("om");
    let bird = lab.dual_bird("");
    let conf = &format!(
        "{BGP}\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
         [[announce]]\nprefix = \"203.0.113.1/32\"\n"
    );
    let _vipd = Vipd::start(&lab.node, &lab.dir, conf);
    assert!(wait_until(Duration::from_secs(15), || bird.has("203.0.113.1/32")));

    // BIRD shuts the session down (Cease, Administrative Shutdown) and
    // brings it back: the NOTIFICATION is counted by code and subcode.
    bird.cli("disable v4");
    let cease = "vipd_bgp_notifications_received_total{peer=\"192.0.2.2\",asn=\"65002\",code=\"6\",subcode=\"2\"} 1";
    assert!(
        wait_until(Duration::from_secs(10), || body(&get(
            &lab.node,
            "/metrics",
            "text/plain"
        ))
        .lines()
        .any(|l| l == cease)),
        "{}",
        body(&get(&lab.node, "/metrics", "text/plain"))
    );
    bird.cli("enable v4");
    assert!(wait_until(Duration::from_secs(15), || bird.has("203.0.113.1/32")));
    let plain = get(&lab.node, "/metrics", "text/plain");
    assert!(
        plain.contains("Content-Type: text/plain; version=0.0.4")
            || plain.contains("content-type: text/plain; version=0.0.4"),
        "{plain}"
    );
    let text = body(&plain).to_string();
    assert!(text.contains("vipd_bgp_updates_sent_total{"), "{text}");
    let file = lab.dir.write("metrics.txt", &text);
    let check = run(
        "sh",
        &[
            "-c",
            &format!("promtool check metrics < {}", file.display()),
        ],
    );
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let om = get(
        &lab.node,
        "/metrics",
        "application/openmetrics-text;version=1.0.0",
    );
    assert!(
        om.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{om}"
    );
    assert!(body(&om).ends_with("# EOF\n"), "{om}");
    assert!(
        body(&om).contains("# TYPE vipd_bgp_updates_sent counter"),
        "{om}"
    );

    let _prom = Prometheus::start(&lab.node, &lab.dir);
    let query = "/api/v1/query?query=vipd_bgp_prefixes_announced%7Bfamily%3D%22ipv4%22%7D";
    let mut last = String::new();
    let scraped = wait_until(Duration::from_secs(30), || {
        last = in_netns(&lab.node.name, move || {
            let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9090") else {
                return String::new();
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(
                s,
                "GET {query} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        });
        body(&last).contains("\"result\":[{")
    });
    assert!(scraped, "Prometheus never had the series: {last}");
    let j: Value =
        serde_json::from_str(body(&last).trim()).unwrap_or_else(|e| panic!("{e}: {last}"));
    let r = &j["data"]["result"][0];
    assert_eq!(r["metric"]["peer"], "192.0.2.2", "{j:#}");
    assert_eq!(r["value"][1], "1", "{j:#}");
}

#[test]
fn the_status_listener_bounds_slow_and_oversized_clients() {
    let lab = Lab::new("ob");
    // No peer here, on purpose: ready without one.
    let conf = format!("{BGP}[status]\nready_needs_peer = false\n");
    let _vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    assert!(wait_until(Duration::from_secs(10), || get(
        &lab.node, "/readyz", "*/*"
    )
    .starts_with("HTTP/1.1 200")));
    // A client that never finishes its headers is cut off.
    let t = Instant::now();
    let a = raw(&lab.node, b"GET /status HTTP/1.1\r\nHost: x\r\n".to_vec());
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(12),
        "a stalled client held the connection {waited:?}: {a}"
    );
    // Headers beyond the bound are refused, not buffered.
    let mut big = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    let a = raw(&lab.node, big);
    assert!(!a.starts_with("HTTP/1.1 200"), "{a}");
    let a = raw(
        &lab.node,
        b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
    );
    assert!(a.starts_with("HTTP/1.1 405"), "{a}");
    let a = get(&lab.node, "/nothing", "*/*");
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    let a = get(&lab.node, "/explain/onlyname", "*/*");
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    // Without [kubernetes], explain says what vipd does instead.
    let (code, text) = vipd_cli(&lab.node, &["explain", "a/web"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("without [kubernetes]"), "{text}");
    // And it still answers.
    assert!(get(&lab.node, "/readyz", "*/*").starts_with("HTTP/1.1 200"));
}
