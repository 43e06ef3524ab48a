//! FRR: bgpd (and bfdd) in a namespace, and vtysh.

use super::*;

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
        Frr::start_bgpd(ns, dir, conf, &["-n", "-P", "0"])
    }

    /// As [`Frr::start`], with bgpd's routes installed by zebra (`show ip
    /// route` says how: for unnumbered peers, IPv4 via an IPv6 next hop).
    pub fn start_installing(ns: &Netns, dir: &Dir, conf: &str) -> Frr {
        Frr::start_bgpd(ns, dir, conf, &["-P", "0"])
    }

    fn start_bgpd(ns: &Netns, dir: &Dir, conf: &str, args: &[&str]) -> Frr {
        let (sock, mut procs) = frr_daemons(ns, dir, &[("zebra", "", &[]), ("bgpd", conf, args)]);
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
        Frr::start_bfd_bgpd(ns, dir, bgpd, bfdd, &["-n", "-P", "0"])
    }

    /// As [`Frr::start_with_bfd`], with the routes installed by zebra.
    pub fn start_installing_with_bfd(ns: &Netns, dir: &Dir, bgpd: &str, bfdd: &str) -> Frr {
        Frr::start_bfd_bgpd(ns, dir, bgpd, bfdd, &["-P", "0"])
    }

    fn start_bfd_bgpd(ns: &Netns, dir: &Dir, bgpd: &str, bfdd: &str, args: &[&str]) -> Frr {
        let ctl = dir.path("frr/bfdd.sock");
        let ctl = ctl.to_str().unwrap();
        let (sock, mut procs) = frr_daemons(
            ns,
            dir,
            &[
                ("zebra", "", &[]),
                ("bfdd", bfdd, &["--bfdctl", ctl]),
                ("bgpd", bgpd, args),
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
