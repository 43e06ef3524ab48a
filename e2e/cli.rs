//! The command line as a user meets it: `check-config` and `run` on good
//! and bad files, exit codes, and one line per problem naming the key.

use std::process::Command;

#[path = "lab/mod.rs"]
mod lab;
use lab::BGP;

fn vipd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vipd"))
}

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vipd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn example_configs_are_valid() {
    for f in ["configs/vipd.toml", "configs/demo.toml"] {
        let out = vipd().args(["check-config", f]).output().unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

const BAD: &str = r#"
[bgp]
asn = 0
router_id = "192.0.2.1"
listen = "nowhere"

[[bgp.peers]]
address = "192.0.2.2"
asn = 65002
hold_time = 30
keepalive = 30
colour = "red"

[[bgp.peers]]
address = "192.0.2.2"
asn = 65002

[[announce]]
prefix = "198.51.100.0/16"
large_communities = ["1:2"]
"#;

fn expected_lines() -> Vec<&'static str> {
    vec![
        "bgp.asn: ASN 0 is reserved (RFC 7607)",
        "bgp.listen: expected ADDRESS:PORT, e.g. \"[::]:179\" or \"192.0.2.1:179\"",
        "bgp.peers[0].colour: unknown key",
        "bgp.peers[0].keepalive: must be at least 1 and less than hold_time (30); got 30",
        "bgp.peers[1].address: duplicate peer 192.0.2.2 (also bgp.peers[0])",
        "announce[0].prefix: 198.51.100.0/16 has host bits set; did you mean 198.51.0.0/16?",
        "announce[0].large_communities: \"1:2\" is not GLOBAL:LOCAL1:LOCAL2",
    ]
}

#[test]
fn check_config_reports_every_problem_and_exits_2() {
    let f = tmp("bad.toml", BAD);
    let out = vipd().arg("check-config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let mut got: Vec<&str> = err.lines().collect();
    let mut want = expected_lines();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn run_refuses_the_same_file_the_same_way() {
    let f = tmp("bad-run.toml", BAD);
    let out = vipd().arg("run").arg("--config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for l in expected_lines() {
        assert!(err.contains(l), "missing {l:?} in\n{err}");
    }
}

#[test]
fn unreadable_or_broken_toml_is_a_clear_error() {
    let out = vipd()
        .args(["check-config", "/nonexistent/vipd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vipd.toml"), "{err}");
    let f = tmp("broken.toml", "[bgp\nasn = 1\n");
    let out = vipd().arg("check-config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn environment_overrides_a_key() {
    let f = tmp("env.toml", BGP);
    let out = vipd()
        .arg("check-config")
        .arg(&f)
        .env("VIPD_BGP__ASN", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "bgp.asn: ASN 0 is reserved (RFC 7607)"
    );
}

#[test]
fn ipam_pools_are_counted_and_their_mistakes_named() {
    let base = &format!("{BGP}[kubernetes]\nnode_name = \"n\"\n[ipam]\n");
    let good = format!(
        "{base}[[ipam.pools]]\nname = \"a\"\naddresses = [\"198.51.100.0/28\"]\n[[ipam.pools]]\nname = \"b\"\naddresses = [\"2001:db8:100::/120\"]\n"
    );
    let out = vipd()
        .arg("check-config")
        .arg(tmp("ipam.toml", &good))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("valid (0 peers, 0 prefixes, 2 address pools)"),
        "{text}"
    );
    let bad = format!(
        "{base}[[ipam.pools]]\nname = \"a\"\naddresses = [\"198.51.100.9-198.51.100.1\"]\n"
    );
    let out = vipd()
        .arg("check-config")
        .arg(tmp("ipam-bad.toml", &bad))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "ipam.pools[0].addresses: [0]: 198.51.100.9-198.51.100.1: the first address is after the last"
    );
}

#[test]
fn check_config_shows_the_peers_a_node_gets_by_its_labels() {
    let conf = &format!("{BGP}\
        [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nnode_selector = {{ \"topology.kubernetes.io/zone\" = \"rack-1\" }}\n\
        [[bgp.peers]]\naddress = \"192.0.2.3\"\nasn = 65003\nnode_selector = {{ \"topology.kubernetes.io/zone\" = \"rack-2\" }}\n\
        [[bgp.peers]]\naddress = \"192.0.2.4\"\nasn = 65004\n\
        [kubernetes]\nnode_name = \"n\"\n");
    let f = tmp("fleet.toml", conf);
    let out = vipd()
        .arg("check-config")
        .arg(&f)
        .args([
            "--node-labels",
            "topology.kubernetes.io/zone=rack-1,kubernetes.io/os=linux",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "  192.0.2.2 AS65002: peer (node_selector topology.kubernetes.io/zone=rack-1)",
            "  192.0.2.3 AS65003: not a peer (node_selector topology.kubernetes.io/zone=rack-2)",
            "  192.0.2.4 AS65004: peer (every node)",
        ],
        "{text}"
    );
    let out = vipd()
        .arg("check-config")
        .arg(&f)
        .args(["--node-labels", "zone"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "--node-labels: \"zone\": expected KEY=VALUE"
    );
}

/// `bgp.asn = "label:KEY"`: check-config says which AS a node with these
/// labels speaks, or why it has none, and which peers have their own.
#[test]
fn check_config_shows_the_asn_a_node_takes_from_its_label() {
    let conf = "[bgp]\nasn = \"label:vipd.io/asn\"\nrouter_id = \"192.0.2.1\"\n\
        [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
        [[bgp.peers]]\naddress = \"192.0.2.3\"\nasn = 65003\nlocal_asn = 65200\n\
        [kubernetes]\nnode_name = \"n\"\n";
    let f = tmp("asn-label.toml", conf);
    let lines = |labels: &str| {
        let out = vipd()
            .arg("check-config")
            .arg(&f)
            .args(["--node-labels", labels])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().skip(1).map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(
        lines("vipd.io/asn=4200000101"),
        [
            "  AS4200000101 (label vipd.io/asn)",
            "  192.0.2.2 AS65002: peer (every node)",
            "  192.0.2.3 AS65003: peer (every node, local AS65200)",
        ]
    );
    assert_eq!(
        lines("vipd.io/asn=rack-1"),
        [
            "  bgp.asn: this Node's label \"vipd.io/asn\" is \"rack-1\": expected a whole number, got \"rack-1\": only peers with their own local_asn",
            "  192.0.2.2 AS65002: not a peer (no ASN for this node)",
            "  192.0.2.3 AS65003: peer (every node, local AS65200)",
        ]
    );
}

/// `vipd run` for about a second with `conf`, without a log flag or
/// environment filter: what it printed.
fn run_briefly(name: &str, conf: &str) -> String {
    let f = tmp(name, conf);
    let child = vipd()
        .args(["run", "--config"])
        .arg(&f)
        .env_remove("RUST_LOG")
        .env_remove("VIPD_LOG")
        // Its graceful-stop record to itself, not the machine's default.
        .env("VIPD_BGP__RESTART_RECORD", f.with_extension("stopped"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn log_format_and_level_from_the_file() {
    let base = &format!("{BGP}[status]\nenabled = false\n");
    let out = run_briefly(
        "log-json.toml",
        &format!("{base}[log]\nformat = \"json\"\n"),
    );
    let line = out
        .lines()
        .find(|l| l.contains("vipd starting"))
        .unwrap_or_else(|| panic!("no start line in:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["message"], "vipd starting", "{line}");
    // What runs, in the start line: the version and the commit.
    assert_eq!(v["fields"]["version"], env!("CARGO_PKG_VERSION"), "{line}");
    let commit = v["fields"]["commit"].as_str().unwrap_or_default();
    assert!(
        commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "built in a checkout: {line}"
    );
    assert!(
        out.lines()
            .filter(|l| !l.is_empty())
            .all(|l| l.starts_with('{')),
        "{out}"
    );
    let out = run_briefly("log-warn.toml", &format!("{base}[log]\nlevel = \"warn\"\n"));
    assert!(!out.contains("vipd starting"), "{out}");
    let out = run_briefly("log-text.toml", base);
    assert!(out.contains(" INFO vipd::daemon: vipd starting"), "{out}");
    let e = vipd()
        .arg("check-config")
        .arg(tmp(
            "log-bad.toml",
            &format!("{base}[log]\nformat = \"xml\"\nlevel = \"loud\"\n"),
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&e.stderr).lines().collect::<Vec<_>>(),
        [
            "log.format: \"xml\": expected \"text\" or \"json\"",
            "log.level: \"loud\": expected LEVEL or TARGET=LEVEL, LEVEL one of trace, debug, info, warn, error, off",
        ]
    );
}

/// Issue 19: what a tenant or a hurried operator could send past a router
/// is refused before vipd starts. An `[[announce]]` entry with 1,500
/// communities (one UPDATE would be 6 KB: BIRD resets the session, and
/// every route on it goes, for as long as the entry exists); external IPs
/// without `allowed_prefixes` (any Service could announce any address);
/// a `service_communities` pattern that does not parse.
#[test]
fn check_config_refuses_what_would_reach_past_a_tenants_routes() {
    let communities: Vec<String> = (0..1500).map(|i| format!("\"65010:{i}\"")).collect();
    let text = format!(
        "{BGP}\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\ncommunities = [\"65010:1\", \"65010:2\"]\n\
         [[announce]]\nprefix = \"203.0.113.1/32\"\n\
         [[announce]]\nprefix = \"203.0.113.2/32\"\ncommunities = [{}]\n\
         [kubernetes]\nnode_name = \"n\"\nexternal_ips = true\nservice_communities = [\"65010:1-\"]\n",
        communities.join(", ")
    );
    let out = vipd()
        .arg("check-config")
        .arg(tmp("tenant.toml", &text))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let mut got: Vec<&str> = err.lines().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "announce[1].communities: these communities take 6000 bytes; beside the peers' default communities and the drain's GRACEFUL_SHUTDOWN, one 4,096-byte UPDATE has room for 3961 (at most 990 communities, or 330 large communities)",
            "kubernetes.external_ips: needs allowed_prefixes: without it any Service's spec.externalIPs, any address at all, would be announced",
            "kubernetes.service_communities: \"65010:1-\": \"\" is not *, a number from 0 to 65535, or LOW-HIGH",
        ]
    );
}

/// The shipped ConfigMap's TOML, checked as the docs say: it names no
/// node (the pod gets NODE_NAME), so without one check-config says how to
/// give it, and with `--node` the file is valid.
#[test]
fn check_config_on_the_shipped_configmap_with_and_without_a_node() {
    for f in [
        "configs/kubernetes/base/vipd.toml",
        "configs/kubernetes/overlays/allocator/vipd.toml",
    ] {
        let out = vipd()
            .args(["check-config", f])
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{f}: {err}");
        assert!(
            err.contains("kubernetes.node_name: missing")
                && err.contains("vipd check-config --node NAME"),
            "{f}: {err}"
        );
        let out = vipd()
            .args(["check-config", "--node", "node-a", f])
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("valid"), "{text}");
    }
}

/// The LICENSE file is the license Cargo.toml names.
#[test]
fn the_license_file_matches_the_manifest() {
    let license = std::fs::read_to_string("LICENSE").expect("a LICENSE file");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
}
