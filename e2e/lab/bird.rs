//! BIRD: the daemon in a namespace, its CLI, and a client of its control socket.

use super::*;

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
    /// BIRD's line for a session: its state and when it entered it.
    /// Equal across an event: the session never restarted.
    pub fn session_line(&self, proto: &str) -> SessionLine {
        let line = self
            .state(proto)
            .lines()
            .find(|l| l.starts_with(proto))
            .unwrap_or_default()
            .to_string();
        SessionLine { line }
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

/// A session as `show protocols` shows it. BIRD derives the time it shows
/// from its monotonic clock each time it is asked, so one moment can show a
/// millisecond apart: times within 50 ms are the same moment.
#[derive(Debug, Clone)]
pub struct SessionLine {
    pub line: String,
}

impl SessionLine {
    pub fn contains(&self, s: &str) -> bool {
        self.line.contains(s)
    }
}

/// Milliseconds since midnight of an `HH:MM:SS[.mmm]` token.
fn clock_ms(t: &str) -> Option<i64> {
    let (hms, ms) = t.split_once('.').unwrap_or((t, "0"));
    let p: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = p[..] else { return None };
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

impl PartialEq for SessionLine {
    fn eq(&self, o: &Self) -> bool {
        let (a, b): (Vec<&str>, Vec<&str>) = (
            self.line.split_whitespace().collect(),
            o.line.split_whitespace().collect(),
        );
        a.len() == b.len()
            && a.iter()
                .zip(&b)
                .all(|(x, y)| match (clock_ms(x), clock_ms(y)) {
                    (Some(x), Some(y)) => (x - y).abs() <= 50,
                    _ => x == y,
                })
    }
}

impl std::fmt::Display for SessionLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
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
