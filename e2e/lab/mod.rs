//! The e2e lab: network namespaces, veth links, and real BGP daemons, each
//! owned by a guard that removes it on drop, so a failing test leaves
//! nothing behind. When a test fails, the guards print the peer's own view
//! and vipd's log tail on their way out, so the CI log explains the failure.
//!
//! Needs root, iproute2 and the peers (`e2e/install.sh`). A missing tool is a
//! test failure with a clear message, never a silent pass.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod bird;
mod exabgp;
mod frr;
mod gobgp;
mod vipd;
// Each test crate compiles the whole lab and uses a part of it.
#[allow(unused_imports)]
pub use {bird::*, exabgp::*, frr::*, gobgp::*, vipd::*};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: netns and interface names
/// of concurrently running tests never collide.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    format!("{tag}{}x{n}", std::process::id() % 100000)
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (run e2e/install.sh as root)"));
    out
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require(tools: &[&str]) {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the e2e tests need root (network namespaces)"
    );
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).exists()))
            .unwrap_or(false)
            || Path::new(t).exists();
        assert!(
            found,
            "{t} is not installed: run `bash e2e/install.sh` first"
        );
    }
}

/// Polls `f` every 50 ms until it is true or `limit` passes.
/// Runs `check` every 50 ms for `d`: asserting that something stays so
/// (`check` panics when it does not).
pub fn holds_for(d: Duration, mut check: impl FnMut()) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check();
        sleep(Duration::from_millis(50));
    }
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

/// A scratch directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vipd-e2e-{}", unique(tag)));
        fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A network namespace, deleted on drop (which also removes its veths).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(&format!("vt{tag}"));
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run_ok("ip", &a)
    }
    /// Runs a command inside the namespace and waits for it.
    /// The link-local address of `dev`, once duplicate address detection
    /// is over (a tentative one cannot be used yet).
    pub fn link_local(&self, dev: &str) -> String {
        let mut found = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let out = self.ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"]);
            let usable = out.lines().find(|l| !l.contains("tentative"));
            let addr =
                usable.and_then(|l| l.split_whitespace().skip_while(|w| *w != "inet6").nth(1));
            found = addr
                .and_then(|a| a.split('/').next())
                .unwrap_or("")
                .to_string();
            !found.is_empty()
        });
        assert!(ok, "no usable link-local address on {dev} in {}", self.name);
        found
    }

    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", &self.name, cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }
    /// The interface that holds `addr` (e.g. "192.0.2.2/24").
    pub fn dev_of(&self, addr: &str) -> String {
        let out = self.ip(&["-o", "addr", "show"]);
        out.lines()
            .find(|l| l.contains(&format!(" {addr} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no interface with {addr} in {}", self.name))
            .split('@')
            .next()
            .unwrap()
            .to_string()
    }

    /// Drops every packet on `hook` ("output" or "input") in this namespace
    /// with an nftables rule, until `pass_all`; the rule goes with the
    /// namespace.
    pub fn drop_all(&self, hook: &str) {
        let chain = format!("{{ type filter hook {hook} priority 0; policy drop; }}");
        for args in [
            vec!["add", "table", "inet", "lab"],
            vec!["add", "chain", "inet", "lab", hook, &chain],
        ] {
            let out = self.exec("nft", &args);
            assert!(out.status.success(), "nft {args:?}: {out:?}");
        }
    }
    /// Removes what `drop_all` added.
    pub fn pass_all(&self) {
        let out = self.exec("nft", &["delete", "table", "inet", "lab"]);
        assert!(out.status.success(), "nft delete table: {out:?}");
    }

    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it
/// opens (and keeps) belong to that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap();
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A process started by a test, stopped by PID on drop. `ip netns exec`
/// execs the command, so the PID is the daemon's own.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let f = fs::File::create(&log).unwrap();
        cmd.stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.into(),
            log,
        }
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
    pub fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        if !wait_until(grace, || !matches!(self.child.try_wait(), Ok(None))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn log_tail(&self, lines: usize) -> String {
        let t = self.log_text();
        let v: Vec<&str> = t.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} log (last 60 lines) =====\n{}\n",
                self.name,
                self.log_tail(60)
            );
        }
        self.stop(Duration::from_secs(3));
    }
}

/// A veth pair with one end in `a` and the other in `b`, both down and
/// without addresses; returns the two interface names.
pub fn veth(a: &Netns, b: &Netns) -> (String, String) {
    let (x, y) = (unique("va"), unique("vb"));
    run_ok(
        "ip",
        &[
            "link", "add", &x, "netns", &a.name, "type", "veth", "peer", "name", &y, "netns",
            &b.name,
        ],
    );
    (x, y)
}

/// A router namespace with a bridge, `br0`, holding `addrs` (IPv6 ones
/// without duplicate address detection); nodes join it with [`join_bridge`].
pub fn bridge_router(tag: &str, addrs: &[&str]) -> Netns {
    let router = Netns::new(tag);
    router.ip(&["link", "add", "br0", "type", "bridge"]);
    router.ip(&["link", "set", "br0", "up"]);
    for a in addrs {
        if a.contains(':') {
            router.ip(&["-6", "addr", "add", a, "dev", "br0", "nodad"]);
        } else {
            router.ip(&["addr", "add", a, "dev", "br0"]);
        }
    }
    router
}

/// Joins `node` to the router's `br0` by a veth pair: both ends up, the
/// node's end (named as returned) without an address yet.
pub fn join_bridge(node: &Netns, router: &Netns) -> String {
    let (a, b) = veth(node, router);
    node.ip(&["link", "set", &a, "up"]);
    router.ip(&["link", "set", &b, "master", "br0"]);
    router.ip(&["link", "set", &b, "up"]);
    a
}

/// KiB of resident memory now and at its peak, from /proc.
pub fn rss(pid: i32) -> (u64, u64) {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A counter of the kernel in `ns` from a /proc/net table of header and
/// value lines (`/proc/net/netstat` "TcpExt:", `/proc/net/snmp` "Icmp:").
pub fn kernel_counter(ns: &Netns, file: &str, table: &str, name: &str) -> u64 {
    let out = ns.exec("cat", &[file]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(table)).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The value at quantile `q` (0.5: the median) of `v`, nearest rank;
/// sorts `v`. The one percentile every benchmark reports with.
pub fn percentile<T: PartialOrd + Copy>(v: &mut [T], q: f64) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable figures"));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// A benchmark knob: the environment variable `name` parsed, or `default`.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Whether each of `want` is a whole line of `text` (the failure names the
/// missing line and shows the text).
pub fn assert_lines(text: &str, want: &[&str]) {
    for w in want {
        assert!(text.lines().any(|l| l == *w), "{w:?} not in:\n{text}");
    }
}

/// Two namespaces joined by a veth pair: "node" (vipd) and "router" (peer).
/// node: 192.0.2.1/24, 2001:db8::1/64; router: 192.0.2.2/24, 2001:db8::2/64.
pub struct Lab {
    pub dir: Dir,
    pub node: Netns,
    pub router: Netns,
}

pub const NODE4: &str = "192.0.2.1";
pub const ROUTER4: &str = "192.0.2.2";
pub const NODE6: &str = "2001:db8::1";
pub const ROUTER6: &str = "2001:db8::2";

impl Lab {
    pub fn new(tag: &str) -> Lab {
        require(&["ip"]);
        let dir = Dir::new(tag);
        let node = Netns::new(&format!("{tag}n"));
        let router = Netns::new(&format!("{tag}r"));
        let (a, b) = veth(&node, &router);
        node.ip(&["addr", "add", "192.0.2.1/24", "dev", &a]);
        router.ip(&["addr", "add", "192.0.2.2/24", "dev", &b]);
        node.ip(&["-6", "addr", "add", "2001:db8::1/64", "dev", &a, "nodad"]);
        router.ip(&["-6", "addr", "add", "2001:db8::2/64", "dev", &b, "nodad"]);
        node.ip(&["link", "set", &a, "up"]);
        router.ip(&["link", "set", &b, "up"]);
        Lab { dir, node, router }
    }

    /// Adds another address to the router's side of the link.
    pub fn add_router_address(&self, cidr: &str) {
        let dev = self.router.dev_of("192.0.2.2/24");
        self.router.ip(&["addr", "add", cidr, "dev", &dev]);
    }

    /// BIRD in the router namespace with an IPv4 session ("v4", `extra_v4`
    /// added to it) and an IPv6 session ("v6") to the node.
    pub fn dual_bird(&self, extra_v4: &str) -> Bird {
        Bird::start(
            &self.router,
            &self.dir,
            &bird_conf(
                &self.dir,
                &[
                    ("v4", ROUTER4, NODE4, "ipv4", extra_v4),
                    ("v6", ROUTER6, NODE6, "ipv6", ""),
                ],
            ),
        )
    }

    /// Adds a second router-side namespace on its own link:
    /// node 198.51.100.1/24 <-> 198.51.100.2/24.
    pub fn add_router(&self, tag: &str) -> Netns {
        let r = Netns::new(tag);
        let (a, b) = veth(&self.node, &r);
        self.node.ip(&["addr", "add", "198.51.100.1/24", "dev", &a]);
        r.ip(&["addr", "add", "198.51.100.2/24", "dev", &b]);
        self.node.ip(&["link", "set", &a, "up"]);
        r.ip(&["link", "set", &b, "up"]);
        r
    }
}

pub fn write_all(path: &Path, text: &str) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `n` IPv4 /32 from 100.64.0.0 and `n` IPv6 /128 from 2001:db8:64::,
/// starting at `start`, as TOML string arrays.
pub fn v4_list(start: u32, n: u32) -> String {
    let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0));
    (start..start + n)
        .map(|i| format!("\"{}/32\"", std::net::Ipv4Addr::from(base + i)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn v6_list(start: u32, n: u32) -> String {
    let base = u128::from("2001:db8:64::".parse::<std::net::Ipv6Addr>().unwrap());
    (start..start + n)
        .map(|i| format!("\"{}/128\"", std::net::Ipv6Addr::from(base + i as u128)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn v4_at(i: u32) -> String {
    let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0));
    format!("{}/32", std::net::Ipv4Addr::from(base + i))
}

pub fn v6_at(i: u32) -> String {
    let base = u128::from("2001:db8:64::".parse::<std::net::Ipv6Addr>().unwrap());
    format!("{}/128", std::net::Ipv6Addr::from(base + i as u128))
}

/// The standard test announcements: `n` IPv4 and `n` IPv6 host routes in two
/// halves ("a" kept, "b" removed by the reload tests), with every attribute.
pub fn announcements(n: u32, with_b: bool) -> String {
    let half = n / 2;
    let attrs = "communities = [\"65010:100\", \"65010:200\"]\nlarge_communities = [\"65010:1:2\"]\nmed = 50\n";
    let mut s = format!(
        "[[announce]]\nprefixes = [{}]\n{attrs}\n[[announce]]\nprefixes = [{}]\n{attrs}\n",
        v4_list(0, half),
        v6_list(0, half)
    );
    if with_b {
        s += &format!(
            "[[announce]]\nprefixes = [{}]\n{attrs}\n[[announce]]\nprefixes = [{}]\n{attrs}\n",
            v4_list(half, n - half),
            v6_list(half, n - half)
        );
    }
    s
}
