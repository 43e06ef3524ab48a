//! ExaBGP: a peer that records every message it receives.

use super::*;

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
