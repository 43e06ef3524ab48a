//! Where its users run it: a ConfigMap edit that takes effect without a
//! restart (the kubelet's `..data` swap), a broken edit that changes
//! nothing and says so, readiness that tells the truth about the peers,
//! one vipd per node, and TCP MD5 keys from a mounted Secret that never
//! show.

#[path = "kubelab.rs"]
mod kubelab;
#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubelab::*;
use lab::*;

/// A directory mounted the kubelet's way: `vipd.toml -> ..data/vipd.toml`,
/// `..data -> ..N`, each new version written to `..N+1` and swapped in by
/// renaming a new symlink over `..data`, the old version then removed.
struct Mounted {
    dir: PathBuf,
    version: u32,
}

impl Mounted {
    fn new(dir: PathBuf, file: &str, text: &str) -> Mounted {
        fs::create_dir_all(&dir).unwrap();
        let mut m = Mounted { dir, version: 0 };
        m.swap(file, text);
        symlink(format!("..data/{file}"), m.dir.join(file)).unwrap();
        m
    }

    fn swap(&mut self, file: &str, text: &str) {
        self.version += 1;
        let new = format!("..2026_12_05_{:02}", self.version);
        fs::create_dir_all(self.dir.join(&new)).unwrap();
        fs::write(self.dir.join(&new).join(file), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        symlink(&new, &tmp).unwrap();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.version > 1 {
            let old = format!("..2026_12_05_{:02}", self.version - 1);
            fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

fn metric(ns: &Netns, name: &str) -> Option<String> {
    let m = status_get(ns, "/metrics");
    m.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l[name.len() + 1..].to_string())
}

/// One HTTP request from `ns` to `addr`: the whole answer.
fn http(ns: &Netns, addr: &'static str, method: &str, path: &str) -> String {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: vipd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    in_netns(&ns.name, move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

fn announce(prefixes: &[&str]) -> String {
    prefixes
        .iter()
        .map(|p| format!("[[announce]]\nprefix = \"{p}\"\n"))
        .collect()
}

/// Section 2: a ConfigMap edit takes effect without SIGHUP; a broken one
/// leaves routes and sessions as they were, and the metric, the status,
/// an Event on the Node and `vipd reload` say so.
#[test]
fn a_configmap_edit_takes_effect_and_a_broken_one_changes_nothing() {
    let k = kube_lab("rc");
    let kc = k.lab.dir.write("kubeconfig", &k.api.kubeconfig());
    let base = kube_vipd_conf(&kc, "");
    let mut cm = Mounted::new(
        k.lab.dir.path("cm"),
        "vipd.toml",
        &(base.clone() + &announce(&["198.51.100.10/32"])),
    );
    let v = Vipd::run_file(&k.lab.node, &k.lab.dir, &cm.path("vipd.toml"), "vipd");
    assert!(
        wait_until(Duration::from_secs(20), || k.bird.has("198.51.100.10/32")),
        "{}",
        k.bird.cli("show route all")
    );
    assert!(wait_until(Duration::from_secs(5), || metric(
        &k.lab.node,
        "vipd_config_last_reload_successful"
    )
    .as_deref()
        == Some("1")));
    let stamp = || {
        metric(
            &k.lab.node,
            "vipd_config_last_reload_success_timestamp_seconds",
        )
        .and_then(|s| s.parse::<u64>().ok())
        .expect("the success timestamp")
    };
    let started = stamp();

    // A new [[announce]], swapped in as the kubelet does: no signal.
    cm.swap(
        "vipd.toml",
        &(base.clone() + &announce(&["198.51.100.10/32", "198.51.100.11/32"])),
    );
    assert!(
        wait_until(Duration::from_secs(10), || k.bird.has("198.51.100.11/32")),
        "the edit never reached BIRD\n{}\n{}",
        k.bird.cli("show route all"),
        v.proc.log_tail(30)
    );
    assert!(v.log().contains("configuration files changed: reloading"));
    let session = k.bird.session_line("v4");
    let applied = stamp();
    assert!(applied >= started);

    // A broken edit: nothing changes, and everything says so.
    std::thread::sleep(Duration::from_millis(1100));
    let broken =
        base.clone() + &announce(&["198.51.100.10/32", "198.51.100.11/32", "not-a-prefix"]);
    cm.swap("vipd.toml", &broken);
    assert!(
        v.wait_log("configuration not reloaded", Duration::from_secs(10)),
        "{}",
        v.proc.log_tail(30)
    );
    assert!(
        v.log().contains("announce[2].prefix: "),
        "{}",
        v.proc.log_tail(20)
    );
    assert_eq!(
        metric(&k.lab.node, "vipd_config_last_reload_successful").as_deref(),
        Some("0")
    );
    assert_eq!(stamp(), applied, "a refused file is no success");
    let (_, text) = vipd_status(&k.lab.node);
    assert!(
        text.contains("configuration: the last reload was refused"),
        "{text}"
    );
    let rejected = || {
        k.api.events().into_iter().find(|e| {
            e["reason"] == "ConfigRejected"
                && e["involvedObject"]["kind"] == "Node"
                && e["involvedObject"]["name"] == "node-a"
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || rejected().is_some()),
        "no ConfigRejected Event on the Node: {:?}",
        k.api.events()
    );
    let ev = rejected().unwrap();
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("announce[2].prefix"),
        "{ev}"
    );
    assert_eq!(ev["type"], "Warning");
    holds_for(Duration::from_secs(2), || {
        assert!(k.bird.has("198.51.100.10/32") && k.bird.has("198.51.100.11/32"));
        assert_eq!(k.bird.session_line("v4"), session, "the session restarted");
    });

    // `vipd reload` reads the file again: still broken, exit 1 and why.
    let (code, out) = vipd_cli(&k.lab.node, &["reload"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("configuration refused") && out.contains("announce[2].prefix"),
        "{out}"
    );
    // Fixed, without the second prefix: applied, exit 0.
    fs::write(
        cm.path("..data").join("vipd.toml"),
        base + &announce(&["198.51.100.10/32"]),
    )
    .unwrap();
    let (code, out) = vipd_cli(&k.lab.node, &["reload"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("configuration reloaded"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || !k.bird.has("198.51.100.11/32")),
        "{}",
        k.bird.cli("show route all")
    );
    assert_eq!(
        metric(&k.lab.node, "vipd_config_last_reload_successful").as_deref(),
        Some("1")
    );
    assert_eq!(k.bird.session_line("v4"), session, "the session restarted");
}

/// Section 3: a peer that refuses connections is said once at warn, and
/// vipd is not ready (status, /readyz, vipd_ready) until a session is
/// Established; /livez answers throughout. A second vipd on the node
/// stops at once with a clear error, leaving the first one's session.
#[test]
fn ready_only_with_an_established_session_and_one_vipd_per_node() {
    let lab = Lab::new("rr");
    let conf = format!(
        "{BGP}[[bgp.peers]]\naddress = \"{ROUTER4}\"\nasn = 65002\nconnect_retry = 1\n\
         [status]\nmetrics_listen = \"{NODE4}:9180\"\n{}",
        announce(&["198.51.100.10/32"])
    );
    let v = Vipd::start(&lab.node, &lab.dir, &conf);
    let refused = |v: &Vipd| {
        v.log()
            .lines()
            .filter(|l| {
                l.contains("WARN") && l.contains("session not up: connect: Connection refused")
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || refused(&v) == 1),
        "{}",
        v.proc.log_tail(20)
    );
    // Several retries later, still one warning.
    assert!(wait_until(Duration::from_secs(10), || v
        .log()
        .matches("connect failed")
        .count()
        >= 3));
    assert_eq!(refused(&v), 1, "{}", v.proc.log_tail(20));
    let (code, text) = vipd_status(&lab.node);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("ready: no (no BGP session Established yet"),
        "{text}"
    );
    let probe = status_get(&lab.node, "/readyz");
    assert!(
        probe.starts_with("HTTP/1.1 503") && probe.contains("not ready: no BGP session"),
        "{probe}"
    );
    assert_eq!(metric(&lab.node, "vipd_ready").as_deref(), Some("0"));
    assert!(status_get(&lab.node, "/livez").starts_with("HTTP/1.1 200"));
    // Prometheus, from the router's side: the metrics listener on the
    // node's address serves /metrics and nothing else.
    let m = http(&lab.router, "192.0.2.1:9180", "GET", "/metrics");
    assert!(
        m.starts_with("HTTP/1.1 200") && m.contains("\nvipd_ready 0\n"),
        "{m}"
    );
    assert!(m.contains("vipd_build_info{version=\""), "{m}");
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/explain/a/web"),
        ("POST", "/reload"),
    ] {
        let a = http(&lab.router, "192.0.2.1:9180", method, path);
        assert!(a.starts_with("HTTP/1.1 404"), "{method} {path}: {a}");
    }
    assert!(
        http(&lab.router, "192.0.2.1:9179", "GET", "/status").is_empty(),
        "the status listener reached from the network"
    );

    let bird = Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(&lab.dir, &[("v4", ROUTER4, NODE4, "ipv4", "")]),
    );
    assert!(
        wait_until(Duration::from_secs(20), || status_get(&lab.node, "/readyz")
            .starts_with("HTTP/1.1 200")),
        "{}",
        v.proc.log_tail(20)
    );
    assert_eq!(metric(&lab.node, "vipd_ready").as_deref(), Some("1"));
    assert!(wait_until(Duration::from_secs(10), || bird.has("198.51.100.10/32")));
    let session = bird.session_line("v4");

    // The same node, a second vipd: refused before it touches anything.
    let mut second = Vipd::start_named(&lab.node, &lab.dir, &conf, "second");
    assert!(
        wait_until(Duration::from_secs(10), || !second.proc.alive()),
        "a second vipd kept running"
    );
    let log = second.log();
    assert!(
        log.contains("status.listen: cannot listen on 127.0.0.1:9179")
            && log.contains("is another vipd running on this node?"),
        "{log}"
    );
    assert_eq!(second.proc.child.wait().unwrap().code(), Some(1));
    assert!(!log.contains("connected"), "it reached the peer: {log}");
    holds_for(Duration::from_secs(2), || {
        assert_eq!(bird.session_line("v4"), session);
    });
}

/// Section 4: the TCP MD5 key from a mounted Secret; never in the log
/// (at debug), `vipd status` (text and JSON), `/metrics`, `explain` or a
/// configuration error; a rotated key is read again without a restart.
#[test]
fn the_md5_key_comes_from_a_file_and_never_shows() {
    const KEY: &str = "Kx7-recognisable-md5-key-4711";
    const NEW: &str = "Kx7-rotated-md5-key-0815";
    let lab = Lab::new("rp");
    let conf_for = |key: &str| {
        bird_conf(
            &lab.dir,
            &[(
                "v4",
                ROUTER4,
                NODE4,
                "ipv4",
                &format!("password \"{key}\";"),
            )],
        )
    };
    let bird = Bird::start(&lab.router, &lab.dir, &conf_for(KEY));
    let mut secret = Mounted::new(lab.dir.path("secret"), "peer-key", &format!("{KEY}\n"));
    let conf = format!(
        "{BGP}[[bgp.peers]]\naddress = \"{ROUTER4}\"\nasn = 65002\nconnect_retry = 1\npassword_file = \"{}\"\n{}",
        secret.path("peer-key").display(),
        announce(&["198.51.100.10/32"])
    );
    let v = Vipd::start(&lab.node, &lab.dir, &conf);
    assert!(
        wait_until(Duration::from_secs(20), || bird.has("198.51.100.10/32")),
        "no route over the MD5 session\n{}\n{}",
        bird.cli("show protocols all v4"),
        v.proc.log_tail(20)
    );
    let shown = |what: &str, text: &str| {
        assert!(
            !text.contains(KEY) && !text.contains(NEW),
            "the key in {what}: {text}"
        );
        assert!(!text.is_empty(), "{what} said nothing");
    };
    shown("vipd status", &vipd_status(&lab.node).1);
    shown(
        "vipd status -o json",
        &vipd_cli(&lab.node, &["status", "-o", "json"]).1,
    );
    shown("/metrics", &status_get(&lab.node, "/metrics"));
    shown(
        "vipd explain",
        &vipd_cli(&lab.node, &["explain", "a/web"]).1,
    );
    // Errors about the key name the key, never say it.
    let both = lab.dir.write(
        "both.toml",
        &conf.replace(
            "password_file",
            &format!("password = \"{KEY}\"\npassword_file"),
        ),
    );
    let (code, out) = vipd_cli(&lab.node, &["check-config", both.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("bgp.peers[0].password_file: set either password or password_file"),
        "{out}"
    );
    shown("check-config (both set)", &out);
    let long = lab.dir.write("long-key", &KEY.repeat(3));
    let (code, out) = vipd_cli(
        &lab.node,
        &[
            "check-config",
            lab.dir
                .write(
                    "long.toml",
                    &conf.replace(
                        &secret.path("peer-key").display().to_string(),
                        long.to_str().unwrap(),
                    ),
                )
                .to_str()
                .unwrap(),
        ],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("password_file: must be 1 to 80 bytes"),
        "{out}"
    );
    shown("check-config (too long)", &out);

    // The router and the Secret rotate the key: vipd reads the new one
    // when the Secret's files change, and the session comes back.
    fs::write(lab.dir.path("bird.conf"), conf_for(NEW)).unwrap();
    bird.cli("configure");
    assert!(
        wait_until(Duration::from_secs(20), || !bird.established("v4")),
        "BIRD kept the session with the old key"
    );
    secret.swap("peer-key", &format!("{NEW}\n"));
    assert!(
        wait_until(Duration::from_secs(30), || bird.established("v4")),
        "no session with the rotated key\n{}\n{}",
        bird.cli("show protocols all v4"),
        v.proc.log_tail(30)
    );
    shown("the log", &v.log());
    assert!(Path::new(&v.config).exists());
}
