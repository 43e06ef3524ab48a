//! Which addresses are vipd's, on kernels that do not keep `IFA_PROTO`
//! (before Linux 5.18): a file listing them, written before an address is
//! added and after it is removed, so a crash between the two leaves the
//! record saying more than the interface holds, never less. Only an
//! address both recorded and on the interface is vipd's; one not recorded
//! is never removed.
//!
//! The file lives under `/run` on purpose: it is lost on a reboot exactly
//! when the addresses it lists are. It is a log of `+ IFNAME PREFIX` and
//! `- IFNAME PREFIX` lines, appended one at a time (an address costs one
//! short write, not a rewrite of every line), and compacted when opened.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// How vipd knows its own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// `IFA_PROTO` on each address (Linux 5.18 and later).
    Mark,
    /// The record file (any kernel).
    Record,
}

/// The `dataplane.address_ownership` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Setting {
    /// The mark where the kernel keeps it, the record otherwise.
    #[default]
    Auto,
    Mark,
    Record,
}

/// `(major, minor)` of a kernel release string such as `5.15.0-91-generic`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The ownership to use, or why the setting cannot be had on this kernel.
/// By the kernel's version rather than by adding an address and reading it
/// back: that probe would itself put an address on a production interface,
/// where routing daemons redistributing connected routes would see it. A
/// release that cannot be read, or a backport the version hides, costs
/// only the use of the record, which is correct on every kernel.
pub fn choose(setting: Setting, release: &str) -> Result<Ownership, String> {
    let marks = kernel_version(release).is_some_and(|v| v >= (5, 18));
    match (setting, marks) {
        (Setting::Record, _) | (Setting::Auto, false) => Ok(Ownership::Record),
        (Setting::Mark, true) | (Setting::Auto, true) => Ok(Ownership::Mark),
        (Setting::Mark, false) => Err(format!(
            "\"mark\" needs Linux 5.18 or later (IFA_PROTO); this kernel is {release}"
        )),
    }
}

/// One entry: an address on an interface.
pub type Entry = (String, IpNet);

/// The record's lines replayed: what it lists, and the lines it could not
/// read (reported, never guessed at).
pub fn replay(text: &str) -> (BTreeSet<Entry>, Vec<String>) {
    let mut live = BTreeSet::new();
    let mut bad = vec![];
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut w = l.split_whitespace();
        let parsed = match (w.next(), w.next(), w.next(), w.next()) {
            (Some(op @ ("+" | "-")), Some(ifname), Some(p), None) => p
                .parse::<IpNet>()
                .ok()
                .map(|p| (op, (ifname.to_string(), p))),
            _ => None,
        };
        match parsed {
            Some(("+", e)) => {
                live.insert(e);
            }
            Some((_, e)) => {
                live.remove(&e);
            }
            None => bad.push(l.to_string()),
        }
    }
    (live, bad)
}

fn line(op: char, (ifname, p): (&str, IpNet)) -> String {
    format!("{op} {ifname} {p}\n")
}

/// The record file, with what it lists.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    live: BTreeSet<Entry>,
}

impl Record {
    /// Reads and compacts the record at `path` (none yet: empty). Lines it
    /// cannot read come back to be logged.
    pub fn open(path: &Path) -> io::Result<(Record, Vec<String>)> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let (live, bad) = replay(&text);
        let r = Record {
            path: path.to_path_buf(),
            live,
        };
        r.compact()?;
        Ok((r, bad))
    }

    /// Rewrites the file with only the live entries (write and rename: a
    /// crash leaves the old file or the new one).
    fn compact(&self) -> io::Result<()> {
        if let Some(d) = self.path.parent() {
            fs::create_dir_all(d)?;
        }
        let tmp = self.path.with_extension("tmp");
        let text: String = self.live.iter().map(|(i, p)| line('+', (i, *p))).collect();
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &self.path)
    }

    fn append(&self, s: &str) -> io::Result<()> {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(s.as_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, ifname: &str, p: IpNet) -> bool {
        self.live.contains(&(ifname.to_string(), p))
    }

    /// Before the address is added.
    pub fn add(&mut self, ifname: &str, p: IpNet) -> io::Result<()> {
        if !self.contains(ifname, p) {
            self.append(&line('+', (ifname, p)))?;
            self.live.insert((ifname.to_string(), p));
        }
        Ok(())
    }

    /// After the address is removed (or found gone, or found not vipd's).
    pub fn remove(&mut self, ifname: &str, p: IpNet) -> io::Result<()> {
        if self.contains(ifname, p) {
            self.append(&line('-', (ifname, p)))?;
            self.live.remove(&(ifname.to_string(), p));
        }
        Ok(())
    }

    /// What is recorded on `ifname`.
    pub fn on(&self, ifname: &str) -> BTreeSet<IpNet> {
        self.live
            .iter()
            .filter(|(i, _)| i == ifname)
            .map(|(_, p)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn versions_of_the_kernels_clusters_run() {
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("4.18.0-513.el8.x86_64"), Some((4, 18)));
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.18"), Some((5, 18)));
        assert_eq!(kernel_version("6"), None);
        assert_eq!(kernel_version("x.y"), None);
    }

    #[test]
    fn the_mark_only_from_5_18_and_the_record_everywhere() {
        use Ownership as O;
        use Setting as S;
        assert_eq!(choose(S::Auto, "5.17.15"), Ok(O::Record));
        assert_eq!(choose(S::Auto, "5.18.0"), Ok(O::Mark));
        assert_eq!(choose(S::Auto, "6.1.0-18-amd64"), Ok(O::Mark));
        assert_eq!(choose(S::Auto, "4.18.0-513.el8.x86_64"), Ok(O::Record));
        assert_eq!(choose(S::Auto, "garbage"), Ok(O::Record));
        assert_eq!(choose(S::Record, "6.1.0"), Ok(O::Record));
        assert_eq!(choose(S::Mark, "6.1.0"), Ok(O::Mark));
        let e = choose(S::Mark, "5.15.0-91-generic").unwrap_err();
        assert!(e.contains("5.18") && e.contains("5.15.0-91-generic"), "{e}");
    }

    #[test]
    fn replay_follows_adds_and_removes_and_reports_what_it_cannot_read() {
        let (live, bad) = replay(
            "+ eth0 203.0.113.1/32\n+ eth0 203.0.113.2/32\n- eth0 203.0.113.1/32\n\
             + vip0 2001:db8::1/128\n+ eth0 nonsense\n= eth0 203.0.113.3/32\n\n",
        );
        let want: BTreeSet<Entry> = [
            ("eth0".to_string(), n("203.0.113.2/32")),
            ("vip0".to_string(), n("2001:db8::1/128")),
        ]
        .into();
        assert_eq!(live, want);
        assert_eq!(bad, ["+ eth0 nonsense", "= eth0 203.0.113.3/32"]);
    }

    #[test]
    fn the_file_survives_reopening_and_is_compacted() {
        let d = std::env::temp_dir().join(format!("vipd-record-{}", std::process::id()));
        let path = d.join("sub/addresses");
        let (mut r, bad) = Record::open(&path).unwrap();
        assert!(bad.is_empty());
        r.add("vip0", n("203.0.113.1/32")).unwrap();
        r.add("vip0", n("203.0.113.2/32")).unwrap();
        r.add("eth0", n("203.0.113.3/32")).unwrap();
        r.remove("vip0", n("203.0.113.1/32")).unwrap();
        drop(r);
        let (r, _) = Record::open(&path).unwrap();
        assert_eq!(r.on("vip0"), [n("203.0.113.2/32")].into());
        assert_eq!(r.on("eth0"), [n("203.0.113.3/32")].into());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "+ eth0 203.0.113.3/32\n+ vip0 203.0.113.2/32\n"
        );
        fs::remove_dir_all(d).unwrap();
    }

    /// A record that cannot be read is an error, never an empty record
    /// (which would make vipd's addresses foreign).
    #[test]
    fn an_unreadable_record_is_an_error() {
        let d = std::env::temp_dir().join(format!("vipd-record-dir-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        assert!(Record::open(&d).is_err(), "a directory read as a record");
        fs::remove_dir_all(&d).unwrap();
    }

    proptest! {
        /// Whatever the order of adds and removes, reopening the file gives
        /// what the record held in memory.
        #[test]
        fn reopening_gives_what_was_held(ops in proptest::collection::vec((any::<bool>(), 0u8..6), 0..40)) {
            let d = std::env::temp_dir().join(format!("vipd-record-p{}-{}", std::process::id(), fastrand::u64(..)));
            let path = d.join("addresses");
            let (mut r, _) = Record::open(&path).unwrap();
            for (add, i) in ops {
                let p = IpNet::new(std::net::Ipv4Addr::new(203, 0, 113, i).into(), 32).unwrap();
                if add { r.add("vip0", p).unwrap() } else { r.remove("vip0", p).unwrap() }
            }
            let held = r.on("vip0");
            let (again, bad) = Record::open(&path).unwrap();
            prop_assert!(bad.is_empty());
            prop_assert_eq!(again.on("vip0"), held);
            fs::remove_dir_all(d).unwrap();
        }
    }
}
