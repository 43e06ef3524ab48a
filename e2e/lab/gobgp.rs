//! GoBGP: gobgpd in a namespace and its CLI.

use super::*;

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
