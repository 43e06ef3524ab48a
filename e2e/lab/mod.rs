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

/// `vtysh -c command` against the FRR daemons whose sockets are in `sock`.
pub fn vtysh(ns: &str, sock: &Path, command: &str) -> String {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "vtysh",
            "--vty_socket",
            sock.to_str().unwrap(),
            "-c",
            command,
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// The vipd binary: cargo names it for tests and benches; an example (the
/// demo) finds it beside its own build directory.
pub fn vipd_bin() -> String {
    if let Some(p) = option_env!("CARGO_BIN_EXE_vipd") {
        return p.to_string();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(|d| d.parent()).unwrap().join("vipd");
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build --release --bin vipd)",
        p.display()
    );
    p.display().to_string()
}

/// vipd running in the node namespace.
pub struct Vipd {
    pub proc: Proc,
    pub config: PathBuf,
}

impl Vipd {
    pub fn start(ns: &Netns, dir: &Dir, config: &str) -> Vipd {
        Self::start_named(ns, dir, config, "vipd")
    }
    pub fn start_named(ns: &Netns, dir: &Dir, config: &str, name: &str) -> Vipd {
        let cfg = dir.write(&format!("{name}.toml"), config);
        let mut cmd = ns.command(&vipd_bin());
        cmd.args(["run", "--config", cfg.to_str().unwrap(), "--log", "debug"]);
        // Each test's vipd keeps its graceful-stop record to itself: the
        // default path is shared by every test on the machine.
        if !config.contains("restart_record") {
            cmd.env(
                "VIPD_BGP__RESTART_RECORD",
                dir.path(&format!("{name}.bgp-stopped")),
            );
        }
        let log = dir.path(&format!("{name}.log"));
        // Keep earlier runs' logs: a restart test wants both in the tail.
        if let Ok(old) = fs::read_to_string(&log) {
            let _ = fs::write(dir.path(&format!("{name}.log.prev")), old);
        }
        let proc = Proc::spawn(name, cmd, log);
        Vipd { proc, config: cfg }
    }
    /// Rewrites the configuration and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        fs::write(&self.config, config).unwrap();
        self.proc.signal(libc::SIGHUP);
    }
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log().contains(needle))
    }
}

/// `vipd status` run in `ns` against the vipd there: exit code and output.
pub fn vipd_status(ns: &Netns) -> (Option<i32>, String) {
    vipd_cli(ns, &["status"])
}

/// `vipd ARGS` run in `ns`: exit code and stdout (stderr after).
pub fn vipd_cli(ns: &Netns, args: &[&str]) -> (Option<i32>, String) {
    let out = ns.exec(&vipd_bin(), args);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// `GET path` from vipd's status listener in `ns`: the whole answer.
pub fn status_get(ns: &Netns, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: vipd\r\nConnection: close\r\n\r\n");
    in_netns(&ns.name, move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect("127.0.0.1:9179").expect("vipd's status listener");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
}

/// BIRD 2 in a namespace, run in the foreground so its PID is known.
pub struct Bird {
    pub proc: Proc,
    pub ctl: PathBuf,
}

impl Bird {
    pub fn start(ns: &Netns, dir: &Dir, conf: &str) -> Bird {
        require(&["bird", "birdc"]);
        let ctl = dir.path("bird.ctl");
        let conf_path = dir.write("bird.conf", conf);
        let mut cmd = ns.command("bird");
        cmd.args([
            "-f",
            "-c",
            conf_path.to_str().unwrap(),
            "-s",
            ctl.to_str().unwrap(),
        ]);
        let proc = Proc::spawn("bird", cmd, dir.path("bird.out"));
        let b = Bird { proc, ctl };
        assert!(
            wait_until(Duration::from_secs(10), || b.ctl.exists()),
            "BIRD did not start"
        );
        b
    }
    pub fn cli(&self, args: &str) -> String {
        let mut a = vec!["-s", self.ctl.to_str().unwrap()];
        a.extend(args.split_whitespace());
        String::from_utf8_lossy(&run("birdc", &a).stdout).into_owned()
    }
    /// Routes in a table ("master4" or "master6").
    pub fn count(&self, table: &str) -> usize {
        let out = self.cli("show route count");
        for l in out.lines() {
            if l.ends_with(&format!("in table {table}")) {
                return l.split_whitespace().next().unwrap().parse().unwrap_or(0);
            }
        }
        0
    }
    pub fn route(&self, prefix: &str) -> String {
        self.cli(&format!("show route all for {prefix}"))
    }
    pub fn has(&self, prefix: &str) -> bool {
        self.cli(&format!("show route for {prefix}"))
            .contains(&format!("{prefix} "))
    }
    pub fn state(&self, proto: &str) -> String {
        self.cli(&format!("show protocols {proto}"))
    }
    pub fn established(&self, proto: &str) -> bool {
        self.state(proto).contains("Established")
    }
    /// BIRD's line for a session: its state and when it entered it (to
    /// the second). Unchanged across an event: the session never restarted.
    pub fn session_line(&self, proto: &str) -> String {
        self.state(proto)
            .lines()
            .find(|l| l.starts_with(proto))
            .unwrap_or_default()
            .to_string()
    }
    /// The next hops of the routes BIRD holds for `prefix`, sorted.
    pub fn next_hops(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .route(prefix)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("BGP.next_hop: ").map(String::from))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== birdc show protocols all =====\n{}",
                self.cli("show protocols all")
            );
            let routes = self.cli("show route all");
            let head: Vec<&str> = routes.lines().take(80).collect();
            eprintln!(
                "===== birdc show route all (first 80 lines) =====\n{}",
                head.join("\n")
            );
            eprintln!(
                "===== birdc show route count =====\n{}",
                self.cli("show route count")
            );
            eprintln!(
                "===== birdc show bfd sessions =====\n{}",
                self.cli("show bfd sessions")
            );
        }
    }
}

/// A BIRD configuration with one BGP protocol per (name, local, neighbor,
/// channels) entry; routes are imported and nothing exported.
pub fn bird_conf(dir: &Dir, protocols: &[(&str, &str, &str, &str, &str)]) -> String {
    let mut s = format!(
        "router id 192.0.2.2;\nlog \"{}\" all;\nprotocol device {{ scan time 10; }}\n",
        dir.path("bird.log").display()
    );
    for (name, local, neighbor, channels, extra) in protocols {
        s += &format!(
            "protocol bgp {name} {{\n  local {local} as 65002;\n  neighbor {neighbor} as 65010;\n  {extra}\n"
        );
        for ch in channels.split(',') {
            s += &format!("  {ch} {{ import all; export none; }};\n");
        }
        s += "}\n";
    }
    s
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

/// gobgpd in a namespace; its CLI reaches it over the namespace's loopback.
pub struct Gobgp {
    pub proc: Proc,
    pub ns: String,
}

impl Gobgp {
    /// `neighbors`: (address, families) pairs, peer AS 65010, local AS 65002.
    pub fn start(ns: &Netns, dir: &Dir, neighbors: &[(&str, &[&str])]) -> Gobgp {
        let n: Vec<(&str, u32, &[&str])> = neighbors.iter().map(|(a, f)| (*a, 65010, *f)).collect();
        Self::start_as(ns, dir, 65002, "192.0.2.2", &n)
    }

    /// gobgpd as AS `asn` with (address, peer AS, families) neighbors.
    pub fn start_as(
        ns: &Netns,
        dir: &Dir,
        asn: u32,
        router_id: &str,
        neighbors: &[(&str, u32, &[&str])],
    ) -> Gobgp {
        require(&["gobgpd", "gobgp"]);
        let locals = if router_id == "192.0.2.1" {
            "\"192.0.2.1\", \"2001:db8::1\""
        } else {
            "\"192.0.2.2\", \"2001:db8::2\""
        };
        let mut conf = format!(
            "[global.config]\n  as = {asn}\n  router-id = \"{router_id}\"\n  local-address-list = [{locals}]\n"
        );
        for (addr, peer_as, fams) in neighbors {
            conf += &format!(
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {peer_as}\n"
            );
            for f in *fams {
                conf += &format!(
                    "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{f}\"\n"
                );
            }
        }
        let path = dir.write("gobgpd.toml", &conf);
        let mut cmd = ns.command("gobgpd");
        cmd.args(["-f", path.to_str().unwrap(), "-p", "--log-level=warn"]);
        let proc = Proc::spawn("gobgpd", cmd, dir.path("gobgpd.log"));
        let g = Gobgp {
            proc,
            ns: ns.name.clone(),
        };
        // The CLI needs gobgpd's API up before it is any use.
        assert!(
            wait_until(Duration::from_secs(10), || run(
                "ip",
                &["netns", "exec", &g.ns, "gobgp", "global"]
            )
            .status
            .success()),
            "gobgpd did not start"
        );
        g
    }
    pub fn cli(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", &self.ns, "gobgp"];
        a.extend_from_slice(args);
        String::from_utf8_lossy(&run("ip", &a).stdout).into_owned()
    }
    /// The global RIB of a family ("ipv4" / "ipv6") as GoBGP's JSON.
    pub fn rib(&self, afi: &str) -> serde_json::Map<String, serde_json::Value> {
        let out = self.cli(&["global", "rib", "-a", afi, "-j"]);
        serde_json::from_str(&out).unwrap_or_default()
    }
    pub fn count(&self, afi: &str) -> usize {
        let out = self.cli(&["global", "rib", "-a", afi, "summary"]);
        out.split("Destination: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gobgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n===== gobgp neighbor =====\n{}", self.cli(&["neighbor"]));
            for afi in ["ipv4", "ipv6"] {
                let s = self.cli(&["global", "rib", "-a", afi]);
                let head: Vec<&str> = s.lines().take(20).collect();
                eprintln!(
                    "===== gobgp global rib -a {afi} (first 20) =====\n{}",
                    head.join("\n")
                );
            }
        }
    }
}

/// FRR's zebra and bgpd, in the foreground. zebra is there because bgpd
/// without it knows no interfaces, and then drops every IPv6 route whose
/// next hop carries a link-local address (RFC 2545), as vipd's do on a
/// shared link.
pub struct Frr {
    pub proc: Proc,
    pub zebra: Proc,
    /// bfdd, when started with `start_with_bfd`.
    pub bfdd: Option<Proc>,
    pub ns: String,
    pub sock: PathBuf,
}

/// FRR daemons in `ns`, zebra first (the others connect to it): each with
/// its configuration text and extra arguments, its sockets, pid file and
/// configuration in `dir/frr`. Returns that directory (vtysh's socket
/// directory) and the daemons in start order.
pub fn frr_daemons(
    ns: &Netns,
    dir: &Dir,
    daemons: &[(&str, &str, &[&str])],
) -> (PathBuf, Vec<Proc>) {
    let names: Vec<String> = daemons
        .iter()
        .map(|(d, _, _)| format!("/usr/lib/frr/{d}"))
        .collect();
    let mut need: Vec<&str> = names.iter().map(String::as_str).collect();
    need.push("vtysh");
    require(&need);
    let sock = dir.path("frr");
    fs::create_dir_all(&sock).unwrap();
    for (d, conf, _) in daemons {
        fs::write(sock.join(format!("{d}.conf")), conf).unwrap();
    }
    run_ok("chown", &["-R", "frr:frr", sock.to_str().unwrap()]);
    let zserv = sock.join("zserv.api");
    let mut procs = vec![];
    for (d, _, extra) in daemons {
        let mut cmd = ns.command(&format!("/usr/lib/frr/{d}"));
        cmd.args(["-f", sock.join(format!("{d}.conf")).to_str().unwrap()])
            .args(["-i", sock.join(format!("{d}.pid")).to_str().unwrap()])
            .args(["--vty_socket", sock.to_str().unwrap()])
            .args(["-z", zserv.to_str().unwrap()])
            .args(["-u", "frr", "-g", "frr"])
            .args(*extra);
        let p = Proc::spawn(&format!("frr-{d}"), cmd, dir.path(&format!("{d}.out")));
        if *d == "zebra" {
            assert!(
                wait_until(Duration::from_secs(10), || zserv.exists()),
                "zebra did not start: {}",
                p.log_tail(20)
            );
        }
        procs.push(p);
    }
    (sock, procs)
}

impl Frr {
    pub fn start(ns: &Netns, dir: &Dir, conf: &str) -> Frr {
        // bgpd -n: routes stay in bgpd, not in the namespace's kernel.
        let (sock, mut procs) = frr_daemons(
            ns,
            dir,
            &[("zebra", "", &[]), ("bgpd", conf, &["-n", "-P", "0"])],
        );
        let proc = procs.pop().unwrap();
        let zebra = procs.pop().unwrap();
        Frr {
            proc,
            zebra,
            bfdd: None,
            ns: ns.name.clone(),
            sock,
        }
    }
    /// zebra, bfdd (its own control socket in `dir/frr`) and bgpd.
    pub fn start_with_bfd(ns: &Netns, dir: &Dir, bgpd: &str, bfdd: &str) -> Frr {
        let ctl = dir.path("frr/bfdd.sock");
        let ctl = ctl.to_str().unwrap();
        let (sock, mut procs) = frr_daemons(
            ns,
            dir,
            &[
                ("zebra", "", &[]),
                ("bfdd", bfdd, &["--bfdctl", ctl]),
                ("bgpd", bgpd, &["-n", "-P", "0"]),
            ],
        );
        let proc = procs.pop().unwrap();
        let bfdd = procs.pop();
        let zebra = procs.pop().unwrap();
        Frr {
            proc,
            zebra,
            bfdd,
            ns: ns.name.clone(),
            sock,
        }
    }
    pub fn vtysh(&self, command: &str) -> String {
        vtysh(&self.ns, &self.sock, command)
    }
    pub fn json(&self, command: &str) -> serde_json::Value {
        serde_json::from_str(&self.vtysh(command)).unwrap_or(serde_json::Value::Null)
    }
    /// Routes in "ipv4" or "ipv6" unicast.
    pub fn count(&self, afi: &str) -> usize {
        self.json(&format!("show bgp {afi} unicast json"))["routes"]
            .as_object()
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== vtysh show bgp summary =====\n{}",
                self.vtysh("show bgp summary")
            );
            let s = self.vtysh("show bgp ipv4 unicast");
            let head: Vec<&str> = s.lines().take(30).collect();
            eprintln!(
                "===== vtysh show bgp ipv4 unicast (first 30) =====\n{}",
                head.join("\n")
            );
            if self.bfdd.is_some() {
                eprintln!(
                    "===== vtysh show bfd peers =====\n{}",
                    self.vtysh("show bfd peers")
                );
            }
        }
    }
}

/// ExaBGP, passive, writing every received UPDATE as JSON to a file.
pub struct Exabgp {
    pub proc: Proc,
    pub updates: PathBuf,
}

impl Exabgp {
    pub fn start(ns: &Netns, dir: &Dir) -> Exabgp {
        require(&["exabgp", "python3"]);
        let recv = dir.write(
            "recv.py",
            "import sys, os\nwith open(os.path.join(os.environ['DIR'], 'updates.jsonl'), 'a') as out:\n    for line in sys.stdin:\n        out.write(line); out.flush()\n",
        );
        let conf = format!(
            "process recv {{\n  run /usr/bin/python3 {};\n  encoder json;\n}}\ntemplate {{\n  neighbor vipd {{\n    local-as 65002;\n    peer-as 65010;\n    router-id 192.0.2.2;\n    passive;\n    family {{ ipv4 unicast; ipv6 unicast; }}\n    api {{ processes [ recv ]; receive {{ parsed; update; }} neighbor-changes; }}\n  }}\n}}\nneighbor 192.0.2.1 {{ inherit vipd; local-address 192.0.2.2; }}\nneighbor 2001:db8::1 {{ inherit vipd; local-address 2001:db8::2; }}\n",
            recv.display()
        );
        let path = dir.write("exabgp.conf", &conf);
        let mut cmd = ns.command("env");
        cmd.args([
            &format!("DIR={}", dir.0.display()),
            "exabgp.tcp.bind=192.0.2.2 2001:db8::2",
            "exabgp.daemon.user=root",
            "exabgp.api.cli=false",
            "exabgp.daemon.daemonize=false",
            &format!(
                "exabgp.log.destination={}",
                dir.path("exabgp.log").display()
            ),
            "exabgp",
            path.to_str().unwrap(),
        ]);
        let proc = Proc::spawn("exabgp", cmd, dir.path("exabgp.out"));
        Exabgp {
            proc,
            updates: dir.path("updates.jsonl"),
        }
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.updates)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The table as ExaBGP saw it, replaying announcements and withdrawals:
    /// prefix -> (next hop, attributes).
    pub fn table(&self) -> std::collections::BTreeMap<String, (String, serde_json::Value)> {
        let mut t = std::collections::BTreeMap::new();
        for m in self.messages() {
            let u = &m["neighbor"]["message"]["update"];
            if let Some(w) = u["withdraw"].as_object() {
                for list in w.values() {
                    for n in list.as_array().into_iter().flatten() {
                        t.remove(n["nlri"].as_str().unwrap_or_default());
                    }
                }
            }
            if let Some(a) = u["announce"].as_object() {
                for by_nh in a.values() {
                    for (nh, list) in by_nh.as_object().into_iter().flatten() {
                        for n in list.as_array().into_iter().flatten() {
                            t.insert(
                                n["nlri"].as_str().unwrap_or_default().to_string(),
                                (nh.clone(), u["attribute"].clone()),
                            );
                        }
                    }
                }
            }
        }
        t
    }
}

impl Drop for Exabgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let msgs = fs::read_to_string(&self.updates).unwrap_or_default();
            let head: Vec<&str> = msgs.lines().take(10).collect();
            eprintln!(
                "\n===== ExaBGP received (first 10 messages) =====\n{}",
                head.join("\n")
            );
        }
    }
}

/// A persistent connection to BIRD's control socket: polling through it
/// costs well under a millisecond, where spawning birdc costs several.
pub struct BirdCtl {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl BirdCtl {
    pub fn open(path: &Path) -> BirdCtl {
        let s = UnixStream::connect(path).expect("BIRD control socket");
        let mut c = BirdCtl {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        c.reply();
        c
    }
    fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).unwrap() == 0 {
                return out;
            }
            let done = l.len() >= 5
                && l.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && l.as_bytes()[4] == b' ';
            out += &l;
            if done {
                return out;
            }
        }
    }
    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.w, "{c}").unwrap();
        self.reply()
    }
    pub fn counts(&mut self) -> (usize, usize) {
        let out = self.cmd("show route count");
        let mut c = (0, 0);
        for l in out.lines() {
            // "1007-N of N routes ..." or " N of N routes ...": drop the reply code.
            let b = l.as_bytes();
            let l = if b.len() > 5 && b[..4].iter().all(u8::is_ascii_digit) {
                &l[5..]
            } else {
                l.trim_start()
            };
            let n: usize = l
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if l.ends_with("in table master4") {
                c.0 = n;
            } else if l.ends_with("in table master6") {
                c.1 = n;
            }
        }
        c
    }
    pub fn established(&mut self) -> (bool, bool) {
        let out = self.cmd("show protocols");
        let up = |name: &str| {
            out.lines()
                .any(|l| l.split_whitespace().any(|w| w == name) && l.contains("Established"))
        };
        (up("v4"), up("v6"))
    }
    /// Whether BIRD holds a route for `prefix`.
    pub fn has(&mut self, prefix: &str) -> bool {
        self.cmd(&format!("show route for {prefix}"))
            .contains(&format!("{prefix} "))
    }
}

/// vipd on the node (192.0.2.1, node-a) peering with the router over IPv4
/// and IPv6, driven by the Kubernetes API the kubeconfig names.
pub fn kube_vipd_conf(kubeconfig: &Path, extra: &str) -> String {
    format!(
        "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\nlisten = \"[::]:179\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
         [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nconnect_retry = 1\n\
         [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\n{extra}",
        kubeconfig.display()
    )
}
