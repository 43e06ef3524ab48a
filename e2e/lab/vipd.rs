//! vipd itself: the binary, a running daemon with its log, its CLI, and its TOML.

use super::*;

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
        Self::run_file(ns, dir, &cfg, name)
    }
    /// vipd reading the configuration at `cfg` (written by the caller).
    pub fn run_file(ns: &Netns, dir: &Dir, cfg: &Path, name: &str) -> Vipd {
        let config = fs::read_to_string(cfg).unwrap_or_default();
        let cfg = cfg.to_path_buf();
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

/// vipd on the node (192.0.2.1, node-a) peering with the router over IPv4
/// and IPv6, driven by the Kubernetes API the kubeconfig names.
pub fn kube_vipd_conf(kubeconfig: &Path, extra: &str) -> String {
    format!(
        "{BGP}listen = \"[::]:179\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nconnect_retry = 1\n\
         [[bgp.peers]]\naddress = \"2001:db8::2\"\nasn = 65002\nconnect_retry = 1\n\
         [kubernetes]\nkubeconfig = \"{}\"\nnode_name = \"node-a\"\n{extra}",
        kubeconfig.display()
    )
}

/// The `[bgp]` header of vipd's TOML in most tests (AS 65010, router ID
/// 192.0.2.1), written once: `format!("{BGP}[[bgp.peers]]...")`.
pub const BGP: &str = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n";
