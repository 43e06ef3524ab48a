//! The containerlab topologies users are pointed to, read strictly and run
//! for real by the namespace runner in `clab/`: routes asserted through the
//! router's own CLI. Also the vipd configurations in them and in
//! `configs/kubernetes/base/vipd.toml`.

#[path = "clab/mod.rs"]
mod clab;
#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lab::*;
use standin::obj;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn topologies() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("containerlab"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".clab.yml"))
        .collect();
    v.sort();
    v
}

/// containerlab's JSON schema, checked in addition where a copy happens to
/// sit beside the repository (it is not part of it).
const SCHEMA: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
for p in sys.argv[2:]:
    jsonschema.validate(yaml.safe_load(open(p)), schema)
"#;

#[test]
fn topologies_parse_strictly() {
    let mut names = vec![];
    for p in topologies() {
        let t =
            clab::topo::load(&p).unwrap_or_else(|e| panic!("{}:\n{}", p.display(), e.join("\n")));
        names.push(t.file.name.clone());
    }
    assert_eq!(
        names,
        [
            "vipd-ipv6",
            "vipd-kind",
            "vipd-two-tor",
            "vipd-unnumbered",
            "vipd-frr"
        ],
        "the five topologies"
    );
    let schema = root().join("../shared/schemas/clab.schema.json");
    let python = Path::new("/usr/bin/python3");
    if !schema.exists() || !python.exists() {
        println!(
            "containerlab schema check: skipped (no {})",
            schema.display()
        );
        return;
    }
    let mut args = vec![schema.display().to_string()];
    args.extend(topologies().iter().map(|p| p.display().to_string()));
    let out = Command::new(python)
        .arg("-c")
        .arg(SCHEMA)
        .args(&args)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("No module named") {
        println!("containerlab schema check: skipped (python3 yaml/jsonschema missing)");
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "containerlab schema check: {} topologies valid",
        topologies().len()
    );
}

/// Each broken file is refused with its key named.
#[test]
fn broken_topologies_are_refused_naming_the_key() {
    let dir = Dir::new("clabbad");
    std::fs::create_dir_all(dir.path("frr")).unwrap();
    std::fs::write(dir.path("frr/frr.conf"), "").unwrap();
    let node = "kind: linux\n      image: quay.io/frrouting/frr:8.4.1\n      binds: [\"frr/frr.conf:/etc/frr/frr.conf\"]";
    let cases = [
        (
            format!("name: x\ntopology:\n  nodes:\n    r1:\n      {node}\n      colour: blue\n"),
            "topology.nodes.r1: unknown field `colour`",
        ),
        (
            "name: x\ntopology:\n  nodes:\n    r1:\n      kind: linux\n      image: quay.io/frrouting/frr:8.4.1\n      binds: [\"frr/missing.conf:/etc/frr/frr.conf\"]\n".to_string(),
            "topology.nodes.r1.binds[0]: source frr/missing.conf does not exist",
        ),
        (
            format!("name: x\ntopology:\n  nodes:\n    r1:\n      {node}\n  links:\n    - endpoints: [\"r1:eth1\", \"r2:eth1\"]\n"),
            "topology.links[0].endpoints[1]: no node named r2",
        ),
        (
            format!("name: x\ntopology:\n  nodes:\n    r1:\n      {node}\n    r2:\n      {node}\n  links:\n    - endpoints: [\"r1:eth1\", \"r2:this-name-is-too-long\"]\n"),
            "topology.links[0].endpoints[1]: \"this-name-is-too-long\" is not an interface name",
        ),
        (
            format!("name: x\ntopology:\n  nodes:\n    r1:\n      {node}\n      exec: [\"ip addr add 192.0.2.1/24 dev eth3\"]\n"),
            "topology.nodes.r1.exec[0]: interface eth3 is not made by any link of r1",
        ),
        (
            "name: x\ntopology:\n  nodes:\n    r1:\n      kind: linux\n      image: alpine\n".to_string(),
            "topology.nodes.r1: image \"alpine\": not FRR, not BIRD",
        ),
        (
            format!("name: x\ntopology:\n  nodes:\n    r1:\n      {node}\n  extra: 1\n"),
            "topology: unknown field `extra`",
        ),
    ];
    for (yaml, want) in cases {
        let p = dir.write("bad.clab.yml", &yaml);
        let errs = clab::topo::load(&p).expect_err(&yaml).join("\n");
        assert!(errs.contains(want), "want {want:?}, got:\n{errs}");
    }
}

fn check_config(path: &Path, env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .arg("check-config")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn configurations_in_topologies_and_manifests_are_valid() {
    let mut n = 0;
    for p in topologies() {
        let t = clab::topo::load(&p).unwrap();
        for role in t.roles.values() {
            if let clab::topo::Role::Vipd { config } = role {
                check_config(config, &[]);
                n += 1;
            }
        }
    }
    assert_eq!(n, 5, "vipd configurations bound in the topologies");
    // The TOML inside the DaemonSet's ConfigMap, with what the pod sets.
    let dir = Dir::new("clabcm");
    let tmp = dir.write("cm.toml", &clab::daemonset_toml());
    check_config(
        &tmp,
        &[
            ("NODE_NAME", "node-a"),
            ("VIPD_BGP__ROUTER_ID", "192.0.2.12"),
        ],
    );
}

/// FRR's best path for `prefix`, as its JSON reports it.
fn frr_path(f: &clab::FrrNode, afi: &str, prefix: &str) -> serde_json::Value {
    f.json(&format!("show bgp {afi} unicast {prefix} json"))["paths"][0].clone()
}

/// Waits up to `secs` for FRR's next hops of `prefix` to be exactly `want`.
fn hops_become(f: &clab::FrrNode, afi: &str, prefix: &str, want: &[&str], secs: u64) {
    assert!(
        wait_until(Duration::from_secs(secs), || f.next_hops(afi, prefix)
            == want),
        "{prefix}: {:?}, want {want:?}",
        f.next_hops(afi, prefix)
    );
}

#[test]
fn vipd_frr_static_announcements_reach_frr() {
    let lab = clab::deploy("vipd-frr");
    let tor = &lab.frr["tor"];
    for p in ["203.0.113.10/32", "203.0.113.11/32"] {
        hops_become(tor, "ipv4", p, &["192.0.2.11"], 30);
        let path = frr_path(tor, "ipv4", p);
        assert_eq!(path["aspath"]["string"], "65010", "{path}");
        assert_eq!(path["community"]["string"], "65010:100", "{path}");
    }
}

#[test]
fn kind_frr_cluster_service_has_two_next_hops() {
    let lab = clab::deploy("kind-frr");
    let api = lab.api.as_ref().unwrap();
    api.put(obj::service("default", "web", &["203.0.113.20"], false));
    api.put(obj::slice(
        "default",
        "web-1",
        "web",
        &[("vipd-worker", true)],
    ));
    let tor = &lab.frr["tor"];
    let both = ["192.0.2.11", "192.0.2.12"];
    hops_become(tor, "ipv4", "203.0.113.20/32", &both, 30);
    // Both are installed: FRR's multipath takes each node as a next hop.
    let installed = || {
        let rib = tor.json("show ip route 203.0.113.20/32 json");
        let hops = &rib["203.0.113.20/32"][0]["nexthops"];
        hops.as_array()
            .map(|v| v.iter().filter(|h| h["fib"] == true).count())
    };
    assert!(
        wait_until(Duration::from_secs(10), || installed() == Some(2)),
        "{}",
        tor.vtysh("show ip route 203.0.113.20/32")
    );
    // The Service goes: both withdraw.
    api.delete(standin::Kind::Service, "default", "web");
    hops_become(tor, "ipv4", "203.0.113.20/32", &[], 10);
}

#[test]
fn two_tor_both_hold_both_paths_and_one_keeps_serving() {
    let mut lab = clab::deploy("two-tor");
    let vip = "203.0.113.30/32";
    let frr_both = ["192.0.2.11", "192.0.2.12"];
    let bird_both = ["198.51.100.11", "198.51.100.12"];
    {
        let (tor1, tor2) = (&lab.frr["tor1"], &lab.bird["tor2"]);
        assert!(
            wait_until(Duration::from_secs(30), || tor1.next_hops("ipv4", vip)
                == frr_both
                && tor2.next_hops(vip) == bird_both),
            "tor1 {:?}, tor2 {:?}",
            tor1.next_hops("ipv4", vip),
            tor2.next_hops(vip)
        );
        assert!(
            tor2.route(vip).contains("BGP.community: (65010,300)"),
            "{}",
            tor2.route(vip)
        );
    }
    // tor1 fails; both nodes see their session to it go down.
    lab.frr.get_mut("tor1").unwrap().stop();
    for node in ["node1", "node2"] {
        let ns = &lab.ns[node];
        assert!(
            wait_until(Duration::from_secs(30), || {
                let (_, s) = vipd_status(ns);
                s.lines()
                    .any(|l| l.contains("192.0.2.2 ") && !l.contains("Established"))
            }),
            "{node} never saw tor1 go: {}",
            vipd_status(ns).1
        );
    }
    let tor2 = &lab.bird["tor2"];
    assert_eq!(tor2.next_hops(vip), bird_both, "tor2 after tor1 failed");
    for p in ["node1", "node2"] {
        assert!(tor2.established(p), "{}", tor2.state(p));
    }
}

#[test]
fn ipv6_only_sessions_carry_128_vips() {
    let lab = clab::deploy("ipv6-frr");
    let tor = &lab.frr["tor"];
    for p in ["2001:db8:ffff::10/128", "2001:db8:ffff::11/128"] {
        hops_become(tor, "ipv6", p, &["2001:db8::11"], 30);
        assert_eq!(frr_path(tor, "ipv6", p)["community"]["string"], "65010:600");
    }
    // No IPv4 anywhere: no address but loopback's, no IPv4 route at FRR.
    for (name, ns) in &lab.ns {
        let v4 = ns.ip(&["-4", "-o", "addr", "show"]);
        assert!(
            v4.lines()
                .all(|l| l.split_whitespace().nth(1) == Some("lo")),
            "{name} has IPv4: {v4}"
        );
    }
    assert_eq!(
        tor.json("show bgp ipv4 unicast json")["routes"],
        serde_json::json!({})
    );
}

#[test]
fn unnumbered_tors_install_ipv4_via_the_nodes_link_local_address() {
    let lab = clab::deploy("unnumbered-frr");
    let node = &lab.ns["node1"];
    for (tor, dev) in [("tor1", "eth1"), ("tor2", "eth2")] {
        let f = &lab.frr[tor];
        let ll = node.link_local(dev);
        let p = "203.0.113.10/32";
        let installed = || {
            let r = f.json(&format!("show ip route {p} json"));
            let e = &r[p][0];
            e["installed"] == true
                && e["nexthops"].as_array().is_some_and(|hops| {
                    hops.iter().any(|h| {
                        h["ip"] == ll.as_str()
                            && h["afi"] == "ipv6"
                            && h["interfaceName"] == "eth1"
                            && h["fib"] == true
                    })
                })
        };
        assert!(
            wait_until(Duration::from_secs(60), installed),
            "{tor} did not install {p} via {ll} on eth1: {}",
            f.vtysh(&format!("show ip route {p}"))
        );
        assert_eq!(frr_path(f, "ipv4", p)["community"]["string"], "65010:700");
        hops_become(f, "ipv6", "2001:db8:ffff::10/128", &[&ll], 30);
    }
}
