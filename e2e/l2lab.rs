//! The L2 lab: three vipd nodes and a client on one Linux bridge (the L2
//! segment), the API stand-in beside them, each node with a DNAT of the
//! VIPs to a server that answers with its name. Shared by the L2 suite
//! (`l2.rs`) and its benchmark (`bench/l2.rs`); needs `lab` and `standin`
//! as sibling modules of the including crate.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::Duration;

use super::lab::*;
use super::standin::{obj, Kind, StandIn};
use serde_json::{json, Value};

pub const API: &str = "192.0.2.100:6443";

pub const NODES: [(&str, &str, &str); 3] = [
    ("node-a", "192.0.2.1", "2001:db8::1"),
    ("node-b", "192.0.2.3", "2001:db8::3"),
    ("node-c", "192.0.2.4", "2001:db8::4"),
];

pub const HEARTBEAT: u64 = 1;

pub const LEASE: u64 = 3;

pub struct L2Lab {
    // Field order is drop order: daemons before the namespaces they run in.
    pub vipds: Vec<Option<Vipd>>,
    pub _servers: Vec<std::thread::JoinHandle<()>>,
    pub api: StandIn,
    pub nodes: Vec<Netns>,
    pub ifs: Vec<String>,
    pub macs: Vec<String>,
    pub client: Netns,
    pub client_if: String,
    /// Kept for its guard: dropping it removes the bridge.
    pub _router: Netns,
    pub dir: Dir,
}

pub fn mac_of(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(&["-o", "link", "show", dev]);
    let i = out.find("link/ether ").expect("an Ethernet interface") + 11;
    out[i..i + 17].to_string()
}

/// The nodes and the client joined to one bridge; the nodes' Node objects
/// in the stand-in; on each node a DNAT of the VIPs' port 80 to a server
/// answering with the node's name, as kube-proxy would send it to a pod.
pub fn lab(tag: &str, vips: &[&str]) -> L2Lab {
    require(&["arping", "ndisc6", "tcpdump", "nft"]);
    let dir = Dir::new(tag);
    let router = bridge_router(&format!("{tag}r"), &["192.0.2.100/24"]);
    let (mut nodes, mut ifs, mut macs) = (vec![], vec![], vec![]);
    for (i, (_, v4, v6)) in NODES.iter().enumerate() {
        let ns = Netns::new(&format!("{tag}{i}"));
        let a = join_bridge(&ns, &router);
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", &a]);
        ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", &a, "nodad"]);
        macs.push(mac_of(&ns, &a));
        ifs.push(a);
        nodes.push(ns);
    }
    let client = Netns::new(&format!("{tag}c"));
    let client_if = join_bridge(&client, &router);
    client.ip(&["addr", "add", "192.0.2.50/24", "dev", &client_if]);
    client.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::50/64",
        "dev",
        &client_if,
        "nodad",
    ]);
    let api = StandIn::start(API.parse().unwrap(), Some(&router.name));
    for (name, v4, v6) in NODES {
        api.put(obj::node(name, &[v4, v6]));
    }
    let mut servers = vec![];
    for (i, ns) in nodes.iter().enumerate() {
        let (name, v4, _) = NODES[i];
        dnat(ns, vips, v4);
        servers.push(serve(ns, v4, name));
    }
    L2Lab {
        vipds: (0..NODES.len()).map(|_| None).collect(),
        _servers: servers,
        api,
        nodes,
        ifs,
        macs,
        client,
        client_if,
        _router: router,
        dir,
    }
}

/// The node accepts the VIPs as kube-proxy arranges it: a DNAT rule, no
/// address on any interface.
pub fn dnat(ns: &Netns, vips: &[&str], to: &str) {
    let mut rules = String::from(
        "table ip vipdtest {\n chain pre {\n  type nat hook prerouting priority -100;\n",
    );
    for v in vips.iter().filter(|v| !v.contains(':')) {
        rules += &format!("  ip daddr {v} tcp dport 80 dnat to {to}:8080\n");
    }
    rules += " }\n}\n";
    let f = std::env::temp_dir().join(unique("l2nft"));
    std::fs::write(&f, rules).unwrap();
    let out = ns.exec("nft", &["-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(&f);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP server on `addr:8080` in `ns` that writes `name` to each client.
pub fn serve(ns: &Netns, addr: &str, name: &str) -> std::thread::JoinHandle<()> {
    let (addr, name, ns) = (addr.to_string(), name.to_string(), ns.name.clone());
    let l = in_netns(&ns, move || {
        std::net::TcpListener::bind((addr.as_str(), 8080)).unwrap()
    });
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(name.as_bytes());
        }
    })
}

impl L2Lab {
    pub fn conf(&self, i: usize, extra: &str) -> String {
        let kc = self.dir.write("kubeconfig", &self.api.kubeconfig());
        let (name, v4, _) = NODES[i];
        format!(
            "[bgp]\nasn = 65010\nrouter_id = \"{v4}\"\n\
             [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"{name}\"\n\
             [l2]\ninterfaces = [\"{}\"]\nheartbeat_secs = {HEARTBEAT}\nlease_duration_secs = {LEASE}\n{extra}",
            kc.display(),
            self.ifs[i]
        )
    }

    pub fn start(&mut self, i: usize, extra: &str) {
        let conf = self.conf(i, extra);
        self.vipds[i] = Some(Vipd::start_named(
            &self.nodes[i],
            &self.dir,
            &conf,
            NODES[i].0,
        ));
    }

    pub fn start_all(&mut self, extra: &str) {
        for i in 0..NODES.len() {
            self.start(i, extra);
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut v) = self.vipds[i].take() {
            v.proc.signal(libc::SIGKILL);
            v.proc.stop(Duration::from_secs(2));
        }
    }

    /// The MACs that answer an ARP request for `ip` from the client.
    pub fn arp_macs(&self, ip: &str) -> BTreeSet<String> {
        let out = self
            .client
            .exec("arping", &["-I", &self.client_if, "-c", "2", "-w", "3", ip]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("reply from"))
            .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_lowercase()))
            .collect()
    }

    /// The MACs that answer a Neighbor Solicitation for `ip` (every answer).
    pub fn nd_macs(&self, ip: &str) -> BTreeSet<String> {
        let out = self.client.exec(
            "ndisc6",
            &["-m", "-n", "-r", "2", "-w", "1000", ip, &self.client_if],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("link-layer address"))
            .filter_map(|l| Some(l.split(": ").nth(1)?.trim().to_lowercase()))
            .collect()
    }

    pub fn node_of_mac(&self, mac: &str) -> Option<usize> {
        self.macs.iter().position(|m| m == mac)
    }

    /// Each node's claims as its Lease holds them.
    pub fn claims(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        NODES
            .iter()
            .filter_map(|(n, _, _)| {
                let l = self
                    .api
                    .get(Kind::Lease, "kube-system", &format!("vipd-l2-{n}"))?;
                let c = l["metadata"]["annotations"]["vipd.io/l2-claims"]
                    .as_str()?
                    .to_string();
                let m = c
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .filter_map(|e| {
                        let (a, n) = e.split_once('=')?;
                        Some((a.to_string(), n.parse().ok()?))
                    })
                    .collect();
                Some((n.to_string(), m))
            })
            .collect()
    }

    /// What node `i`'s Lease says of its readiness: "true", or why not.
    pub fn lease_ready(&self, i: usize) -> Option<String> {
        let l = self.api.get(
            Kind::Lease,
            "kube-system",
            &format!("vipd-l2-{}", NODES[i].0),
        )?;
        Some(
            l["metadata"]["annotations"]["vipd.io/l2-ready"]
                .as_str()?
                .to_string(),
        )
    }

    /// Whether every node's Lease says it is ready: started (past its
    /// warm-up), not draining, not stopped.
    pub fn all_ready(&self) -> bool {
        (0..NODES.len()).all(|i| self.lease_ready(i).as_deref() == Some("true"))
    }

    /// The node holding the highest claim on `ip`.
    pub fn owner(&self, ip: &str) -> Option<usize> {
        let c = self.claims();
        let (node, _) = c
            .iter()
            .filter_map(|(n, m)| Some((n, *m.get(ip)?)))
            .max_by_key(|(_, e)| *e)?;
        NODES.iter().position(|(n, _, _)| n == node)
    }

    pub fn client_neigh(&self, ip: &str) -> Option<String> {
        let out = self.client.ip(&["neigh", "show", ip]);
        let i = out.find("lladdr ")? + 7;
        Some(out[i..i + 17].to_string())
    }

    pub fn connect(&self, ip: &str) -> String {
        let ip = ip.to_string();
        in_netns(&self.client.name, move || {
            let a: std::net::SocketAddr = format!("{ip}:80").parse().unwrap();
            let mut s = match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
                Ok(s) => s,
                Err(e) => return format!("connect: {e}"),
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
    }

    /// What a failing test prints: each node's Lease, status and log tail.
    pub fn context(&self) -> String {
        let mut s = format!("--- claims: {:?}\n", self.claims());
        for (i, v) in self.vipds.iter().enumerate() {
            if let Some(v) = v {
                let (_, st) = vipd_status(&self.nodes[i]);
                s += &format!(
                    "--- {} ({}) status:\n{st}\n--- log tail:\n{}\n",
                    NODES[i].0,
                    self.macs[i],
                    v.proc.log_tail(25)
                );
            }
        }
        s
    }
}

pub fn l2_service(name: &str, ips: &[&str], local: bool) -> Value {
    let mut s = obj::service("default", name, ips, local);
    s["metadata"]["annotations"] = json!({"vipd.io/announce": "l2"});
    s
}

pub const V4: &str = "192.0.2.200";

pub const V6: &str = "2001:db8::200";

/// Waits for one node to answer ARP for `ip`; returns its index.
pub fn settled(l: &L2Lab, ip: &str, limit: Duration) -> usize {
    let mut last = BTreeSet::new();
    let ok = wait_until(limit, || {
        last = l.arp_macs(ip);
        last.len() == 1
    });
    assert!(ok, "no single answer for {ip}: {last:?}\n{}", l.context());
    l.node_of_mac(last.iter().next().unwrap())
        .unwrap_or_else(|| panic!("{last:?} is no node's MAC\n{}", l.context()))
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A child process killed when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump on the client's interface, with the link-level header.
pub struct Capture {
    pub child: ChildGuard,
    pub out: std::path::PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, dev: &str, filter: &str) -> Capture {
        let out = std::env::temp_dir().join(unique("l2cap"));
        let f = std::fs::File::create(&out).unwrap();
        let child = ns
            .command("tcpdump")
            .args(["-l", "-n", "-tt", "-e", "-vv", "-i", dev, filter])
            .stdout(f)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // tcpdump needs a moment before it sees packets.
        std::thread::sleep(Duration::from_millis(700));
        Capture {
            child: ChildGuard(child),
            out,
        }
    }

    pub fn stop(self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(200));
        drop(self.child);
        let s = std::fs::read_to_string(&self.out).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        s
    }
}

/// The frames of a capture that are ARP replies for `ip` from `mac`, and
/// gratuitous ARPs for it from `mac`, by their capture time (Unix seconds).
pub fn arp_times(capture: &str, ip: &str, mac: &str, gratuitous: bool) -> Vec<f64> {
    capture
        .lines()
        .filter(|l| l.contains(&format!(" {mac} > ")))
        .filter(|l| {
            if gratuitous {
                l.contains(&format!("Request who-has {ip} tell {ip}"))
            } else {
                l.contains(&format!("Reply {ip} is-at"))
            }
        })
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

pub fn cordoned(name: &str, v4: &str, v6: &str) -> Value {
    let mut n = obj::node(name, &[v4, v6]);
    n["spec"] = json!({"unschedulable": true});
    n
}
