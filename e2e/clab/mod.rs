//! A containerlab topology built from network namespaces and veth pairs, so
//! the files users deploy with containerlab run in the suite as they are.
//!
//! - Every node but the kind cluster itself becomes a namespace; each link
//!   a veth pair whose ends carry the interface names the link gives.
//! - The image decides a `linux` node's role: an FRR image runs Debian's
//!   zebra and bgpd (unless its bound `daemons` turns bgpd off) on its
//!   bound `frr.conf`; a BIRD image runs `bird` on its
//!   bound `bird.conf`; a node that binds vipd runs its `cmd` with every
//!   bound path replaced by the file's place in the repository.
//! - A `k8s-kind` node is the cluster: its `ext-container` members (kind's
//!   node names) each become a namespace with an `eth0` on a management
//!   bridge where the project's API stand-in serves the cluster, and run
//!   vipd as the DaemonSet of `configs/kubernetes/` would: its
//!   ConfigMap's TOML, `NODE_NAME` and the host IP as `VIPD_BGP__ROUTER_ID`.
//! - `exec:` lines run in the node's namespace before its daemons start
//!   (containerlab runs them after; the daemons here do not need them first
//!   either, they only start sooner).
//!
//! Everything is owned by guards: dropping a [`Running`] stops every daemon
//! by PID, then deletes the namespaces (and with them the veths).

#![allow(dead_code)]

pub mod topo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::*;
use crate::standin::{obj, StandIn};
use topo::{Role, Topology};

/// The management network of a kind cluster (the stand-in at .1:6443).
pub const MGMT_API: &str = "198.51.100.1:6443";

/// FRR as the FRR image runs it: zebra and bgpd on the integrated config.
pub struct FrrNode {
    pub ns: String,
    pub sock: PathBuf,
    pub procs: Vec<Proc>,
}

impl FrrNode {
    /// zebra, and bgpd unless the bound `daemons` turns it off, both on the
    /// bound integrated `frr.conf` (each daemon takes its own part of it).
    fn start(ns: &Netns, dir: &Dir, conf: &Path, daemons: Option<&Path>) -> FrrNode {
        let conf = std::fs::read_to_string(conf).unwrap();
        let bgpd = daemons
            .map(|d| std::fs::read_to_string(d).unwrap())
            .is_none_or(|t| t.lines().any(|l| l.trim() == "bgpd=yes"));
        let mut list: Vec<(&str, &str, &[&str])> = vec![("zebra", &conf, &[])];
        if bgpd {
            list.push(("bgpd", &conf, &["-p", "179"]));
        }
        let (sock, procs) = frr_daemons(ns, dir, &list);
        FrrNode {
            ns: ns.name.clone(),
            sock,
            procs,
        }
    }

    pub fn vtysh(&self, command: &str) -> String {
        vtysh(&self.ns, &self.sock, command)
    }

    pub fn json(&self, command: &str) -> serde_json::Value {
        serde_json::from_str(&self.vtysh(command)).unwrap_or(serde_json::Value::Null)
    }

    /// The next hops of the BGP paths FRR holds for `prefix` ("ipv4"/"ipv6").
    pub fn next_hops(&self, afi: &str, prefix: &str) -> Vec<String> {
        let j = self.json(&format!("show bgp {afi} unicast {prefix} json"));
        let mut v: Vec<String> = j["paths"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["nexthops"][0]["ip"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stops every daemon of the node, as a ToR failing would.
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            p.stop(Duration::from_secs(3));
        }
    }
}

impl Drop for FrrNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in [
                "show bgp summary",
                "show bgp ipv4 unicast",
                "show bgp ipv6 unicast",
            ] {
                eprintln!(
                    "\n===== {} vtysh -c '{c}' =====\n{}",
                    self.ns,
                    self.vtysh(c)
                );
            }
        }
        self.stop();
    }
}

/// A topology running. Fields drop in order: daemons first, then the
/// namespaces they live in.
pub struct Running {
    pub frr: BTreeMap<String, FrrNode>,
    pub bird: BTreeMap<String, Bird>,
    pub vipd: BTreeMap<String, Proc>,
    pub api: Option<StandIn>,
    pub ns: BTreeMap<String, Netns>,
    pub mgmt: Option<Netns>,
    pub dirs: BTreeMap<String, Dir>,
    pub topo: Topology,
}

/// Loads `containerlab/NAME.clab.yml` strictly and builds it.
pub fn deploy(name: &str) -> Running {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("containerlab")
        .join(format!("{name}.clab.yml"));
    let topo =
        topo::load(&path).unwrap_or_else(|e| panic!("{}:\n{}", path.display(), e.join("\n")));
    require(&["ip"]);
    let mut ns = BTreeMap::new();
    let mut dirs = BTreeMap::new();
    for (i, (node, role)) in topo.roles.iter().enumerate() {
        if matches!(role, Role::Cluster { .. }) {
            continue;
        }
        ns.insert(node.clone(), Netns::new(&format!("c{i}")));
        dirs.insert(node.clone(), Dir::new(&format!("clab-{node}")));
    }
    for ((an, ai), (bn, bi)) in &topo.links {
        let (x, y) = veth(&ns[an], &ns[bn]);
        for (n, tmp, want) in [(&ns[an], &x, ai), (&ns[bn], &y, bi)] {
            n.ip(&["link", "set", "dev", tmp, "name", want]);
            n.ip(&["link", "set", "dev", want, "up"]);
        }
    }
    let (mgmt, api) = kind_cluster(&topo, &ns);
    for (node, n) in &topo.file.topology.nodes {
        for line in &n.exec {
            let out = ns[node].exec("sh", &["-c", line]);
            assert!(
                out.status.success(),
                "{node}: exec {line:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let mut r = Running {
        frr: BTreeMap::new(),
        bird: BTreeMap::new(),
        vipd: BTreeMap::new(),
        api,
        ns,
        mgmt,
        dirs,
        topo,
    };
    r.start_daemons();
    r
}

/// The management bridge and the stand-in for a topology's kind cluster,
/// with each member node's `eth0` and its Node object.
fn kind_cluster(topo: &Topology, ns: &BTreeMap<String, Netns>) -> (Option<Netns>, Option<StandIn>) {
    let members: Vec<(&String, &String)> = topo
        .roles
        .iter()
        .filter_map(|(n, r)| match r {
            Role::KindNode { role, .. } => Some((n, role)),
            _ => None,
        })
        .collect();
    if members.is_empty() {
        return (None, None);
    }
    let mgmt = Netns::new("cm");
    mgmt.ip(&["link", "add", "br0", "type", "bridge"]);
    mgmt.ip(&["link", "set", "br0", "up"]);
    mgmt.ip(&["addr", "add", "198.51.100.1/24", "dev", "br0"]);
    let api = StandIn::start(MGMT_API.parse().unwrap(), Some(&mgmt.name));
    for (i, (name, role)) in members.iter().enumerate() {
        let host = host_ip(i);
        let (a, b) = veth(&ns[*name], &mgmt);
        ns[*name].ip(&["link", "set", "dev", &a, "name", "eth0"]);
        ns[*name].ip(&["addr", "add", &format!("{host}/24"), "dev", "eth0"]);
        ns[*name].ip(&["link", "set", "eth0", "up"]);
        mgmt.ip(&["link", "set", &b, "master", "br0"]);
        mgmt.ip(&["link", "set", &b, "up"]);
        let mut node = obj::node(name, &[&host]);
        if role.as_str() == "control-plane" {
            node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = "".into();
        }
        api.put(node);
    }
    (Some(mgmt), Some(api))
}

/// The management address of the `i`th kind node (kind's docker network).
pub fn host_ip(i: usize) -> String {
    format!("198.51.100.{}", 11 + i)
}

impl Running {
    fn start_daemons(&mut self) {
        let dir = self.topo.dir().to_path_buf();
        let mut kind_i = 0;
        for (name, role) in self.topo.roles.clone() {
            let node = &self.topo.file.topology.nodes[&name];
            match role {
                Role::Cluster { .. } => {}
                Role::Frr { conf } => {
                    let daemons = node.binds.iter().find_map(|b| {
                        let mut p = b.split(':');
                        let (s, t) = (p.next()?, p.next()?);
                        (t == "/etc/frr/daemons").then(|| dir.join(s))
                    });
                    let f = FrrNode::start(
                        &self.ns[&name],
                        &self.dirs[&name],
                        &conf,
                        daemons.as_deref(),
                    );
                    self.frr.insert(name, f);
                }
                Role::Bird { conf } => {
                    let text = std::fs::read_to_string(&conf).unwrap();
                    let b = Bird::start(&self.ns[&name], &self.dirs[&name], &text);
                    self.bird.insert(name, b);
                }
                Role::Vipd { .. } => {
                    let p = self.start_cmd(&name);
                    self.vipd.insert(name, p);
                }
                Role::KindNode { .. } => {
                    let p = self.start_daemonset_pod(&name, &host_ip(kind_i));
                    kind_i += 1;
                    self.vipd.insert(name, p);
                }
            }
        }
    }

    /// A node's `cmd`, with every bound target replaced by its source.
    fn start_cmd(&self, name: &str) -> Proc {
        let node = &self.topo.file.topology.nodes[name];
        let mut line = node.cmd.clone().expect("a vipd node has a cmd");
        for b in &node.binds {
            let mut p = b.split(':');
            let (s, t) = (p.next().unwrap(), p.next().unwrap());
            let src = self.topo.dir().join(s);
            line = line.replace(t, src.to_str().unwrap());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = self.ns[name].command(words[0]);
        cmd.args(&words[1..]).args(["--log", "debug"]).env(
            "VIPD_BGP__RESTART_RECORD",
            self.dirs[name].path("bgp-stopped"),
        );
        Proc::spawn(
            &format!("vipd-{name}"),
            cmd,
            self.dirs[name].path("vipd.log"),
        )
    }

    /// vipd as the shipped DaemonSet runs it on a node, with a kubeconfig
    /// for the stand-in in place of in-cluster credentials.
    fn start_daemonset_pod(&self, name: &str, host: &str) -> Proc {
        let dir = &self.dirs[name];
        let kc = dir.write("kubeconfig", &self.api.as_ref().unwrap().kubeconfig());
        let toml = daemonset_toml().replace(
            "[kubernetes]",
            &format!("[kubernetes]\nkubeconfig = \"{}\"", kc.display()),
        );
        let cfg = dir.write("vipd.toml", &toml);
        let mut cmd = self.ns[name].command(&vipd_bin());
        cmd.args(["run", "--config", cfg.to_str().unwrap(), "--log", "debug"])
            .env("NODE_NAME", name)
            .env("VIPD_BGP__ROUTER_ID", host)
            .env("VIPD_BGP__RESTART_RECORD", dir.path("bgp-stopped"));
        Proc::spawn(&format!("vipd-{name}"), cmd, dir.path("vipd.log"))
    }
}

/// The TOML in the shipped DaemonSet's ConfigMap (the kustomize base).
pub fn daemonset_toml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/kubernetes/base/vipd.toml");
    std::fs::read_to_string(path).unwrap()
}
