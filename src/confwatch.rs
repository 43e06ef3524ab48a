//! Reloading when the configuration changes on disk, as a mounted
//! ConfigMap or Secret changes: the kubelet writes the new files into a
//! new timestamped directory and swaps the `..data` symlink beside them,
//! so the file's own inode never changes. vipd therefore watches the
//! directories holding its files (inotify, through the `inotify` crate),
//! waits for a burst of events to settle, and asks for a reload only when
//! what the files hold has changed. A slow timer checks too, for events
//! inotify cannot see (a remounted directory, a full event queue) or an
//! inotify that cannot be had (the per-user instance limit).

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long a burst must be quiet before the files are read.
pub const QUIET: Duration = Duration::from_millis(300);
/// A burst that never quiets is read after this long anyway.
pub const LONGEST: Duration = Duration::from_secs(2);
/// The check without an event.
pub const POLL: Duration = Duration::from_secs(30);

/// When a burst of events that began at `first`, and saw its latest at
/// `last`, is over.
pub fn settled_at(first: Instant, last: Instant) -> Instant {
    (last + QUIET).min(first + LONGEST)
}

/// What the files hold, as one number; a file that cannot be read counts
/// as its error kind, so its coming back is a change too. Read in small
/// pieces: a file of 200,000 prefixes read whole would leave its size in
/// the process's resident memory.
pub fn fingerprint(files: &[PathBuf]) -> u64 {
    use std::io::Read;
    let mut h = DefaultHasher::new();
    let mut buf = [0u8; 16 * 1024];
    for f in files {
        f.hash(&mut h);
        let mut file = match std::fs::File::open(f) {
            Ok(file) => file,
            Err(e) => {
                format!("{:?}", e.kind()).hash(&mut h);
                continue;
            }
        };
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.write(&buf[..n]),
                Err(e) => {
                    format!("{:?}", e.kind()).hash(&mut h);
                    break;
                }
            }
        }
    }
    h.finish()
}

/// The directories to watch for `files`.
pub fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY);

fn add_watches(mut w: inotify::Watches, dirs: &BTreeSet<PathBuf>) {
    for d in dirs {
        if let Err(e) = w.add(d, MASK) {
            warn!(dir = %d.display(), "cannot watch for configuration changes: {e}; checked every {}s instead", POLL.as_secs());
        }
    }
}

/// Sends `()` on `changed` each time what `files` holds changes, until the
/// receiver is gone. `files` is what the daemon read last (the
/// configuration and the files it names); the fingerprint starts from
/// them as they are when this starts, and follows each new list.
pub async fn run(mut files: watch::Receiver<Vec<PathBuf>>, changed: mpsc::Sender<()>) {
    let mut list = files.borrow_and_update().clone();
    let mut seen = fingerprint(&list);
    let inotify = Inotify::init()
        .inspect_err(|e| {
            warn!(
                "inotify: {e}; configuration changes are checked every {}s",
                POLL.as_secs()
            )
        })
        .ok();
    if let Some(i) = &inotify {
        add_watches(i.watches(), &directories(&list));
    }
    let mut events = inotify.and_then(|i| i.into_event_stream([0u8; 4096]).ok());
    let mut poll = tokio::time::interval_at(Instant::now() + POLL, POLL);
    loop {
        tokio::select! {
            r = files.changed() => {
                if r.is_err() {
                    return;
                }
                list = files.borrow_and_update().clone();
                if let Some(s) = &events {
                    add_watches(s.watches(), &directories(&list));
                }
                seen = fingerprint(&list);
                continue;
            }
            Some(_) = next(&mut events, &list) => settle(&mut events, &list).await,
            _ = poll.tick() => {}
        }
        let now = fingerprint(&list);
        if now != seen {
            seen = now;
            debug!("configuration files changed");
            if changed.send(()).await.is_err() {
                return;
            }
        }
    }
}

type Events = inotify::EventStream<[u8; 4096]>;

/// Whether an event on the entry `name` of a watched directory can
/// change `files`: one of their names, or the kubelet's `..data` and
/// `..TIMESTAMP` entries. A log file written beside the configuration,
/// say, wakes nothing. An event without a name (the directory itself, or
/// the kernel's queue overflowing) counts.
pub fn relevant(name: Option<&std::ffi::OsStr>, files: &[PathBuf]) -> bool {
    let Some(name) = name else { return true };
    name.as_encoded_bytes().starts_with(b"..") || files.iter().any(|f| f.file_name() == Some(name))
}

/// The next event that can change `files`.
async fn next(events: &mut Option<Events>, files: &[PathBuf]) -> Option<()> {
    let Some(s) = events else {
        return std::future::pending().await;
    };
    loop {
        match s.next().await? {
            Ok(e) if !relevant(e.name.as_deref(), files) => continue,
            _ => return Some(()),
        }
    }
}

/// Waits out the rest of a burst.
async fn settle(events: &mut Option<Events>, files: &[PathBuf]) {
    let first = Instant::now();
    let mut last = first;
    loop {
        tokio::select! {
            Some(_) = next(events, files) => last = Instant::now(),
            _ = tokio::time::sleep_until(settled_at(first, last)) => return,
        }
    }
}

/// The files a configuration at `path` depends on: itself and the
/// password files it names.
pub fn files_of(path: &Path, cfg: &crate::config::Config) -> Vec<PathBuf> {
    let mut v = vec![path.to_path_buf()];
    v.extend(cfg.bgp.peers.iter().filter_map(|p| p.password_file.clone()));
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_fingerprint_follows_the_content_and_a_file_gone() {
        let d = std::env::temp_dir().join(format!("vipd-fp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("a");
        let big = "x".repeat(100_000);
        std::fs::write(&f, &big).unwrap();
        let files = [f.clone()];
        let one = fingerprint(&files);
        assert_eq!(
            fingerprint(&files),
            one,
            "the same content, the same number"
        );
        std::fs::write(&f, format!("{big}y")).unwrap();
        let two = fingerprint(&files);
        assert_ne!(two, one, "one byte more past the first pieces");
        std::fs::remove_file(&f).unwrap();
        let gone = fingerprint(&files);
        assert_ne!(gone, two);
        std::fs::write(&f, format!("{big}y")).unwrap();
        assert_eq!(fingerprint(&files), two, "back as it was");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_files_are_the_configuration_and_its_password_files() {
        let c = crate::config::Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n",
        )
        .unwrap();
        let mut c2 = c.clone();
        c2.bgp.peers[0].password_file = Some(PathBuf::from("/etc/s/key"));
        assert_eq!(
            files_of(Path::new("/etc/vipd/vipd.toml"), &c),
            [PathBuf::from("/etc/vipd/vipd.toml")]
        );
        assert_eq!(
            files_of(Path::new("/etc/vipd/vipd.toml"), &c2),
            [
                PathBuf::from("/etc/s/key"),
                PathBuf::from("/etc/vipd/vipd.toml")
            ]
        );
    }

    #[test]
    fn a_burst_settles_when_quiet_or_at_the_longest() {
        let t = Instant::now();
        assert_eq!(settled_at(t, t), t + QUIET);
        let late = t + Duration::from_millis(1900);
        assert_eq!(settled_at(t, late), t + LONGEST);
    }

    #[test]
    fn only_events_that_can_change_the_files_count() {
        use std::ffi::OsStr;
        let files = [
            PathBuf::from("/etc/vipd/vipd.toml"),
            PathBuf::from("/etc/s/key"),
        ];
        for yes in [
            "vipd.toml",
            "key",
            "..data",
            "..data_tmp",
            "..2026_12_05_01",
        ] {
            assert!(relevant(Some(OsStr::new(yes)), &files), "{yes}");
        }
        for no in [
            "vipd.log",
            "vipd.toml.swp",
            ".vipd.toml.swp",
            "other",
            "vipd.tom",
        ] {
            assert!(!relevant(Some(OsStr::new(no)), &files), "{no}");
        }
        assert!(
            relevant(None, &files),
            "an overflow or the directory itself"
        );
    }

    #[test]
    fn the_directory_of_each_file_once() {
        let files = [
            PathBuf::from("/etc/vipd/vipd.toml"),
            PathBuf::from("/etc/vipd/other"),
            PathBuf::from("/etc/vipd-secret/peer"),
            PathBuf::from("vipd.toml"),
        ];
        let d: Vec<PathBuf> = directories(&files).into_iter().collect();
        assert_eq!(
            d,
            [
                PathBuf::from("/etc/vipd"),
                PathBuf::from("/etc/vipd-secret"),
                PathBuf::from("."),
            ]
        );
    }

    /// The kubelet's way: `vipd.toml -> ..data/vipd.toml`, `..data ->
    /// ..TIMESTAMP`, and a new `..TIMESTAMP2` swapped in by renaming a
    /// new symlink over `..data`. One change is reported, after the burst.
    #[tokio::test]
    async fn a_kubelet_style_symlink_swap_is_one_change() {
        let d = std::env::temp_dir().join(format!("vipd-confwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("..2026_01"))
            .and_then(|_| std::fs::write(d.join("..2026_01/vipd.toml"), "a = 1\n"))
            .unwrap();
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/vipd.toml", d.join("vipd.toml")).unwrap();
        let (files_tx, files_rx) = watch::channel(vec![d.join("vipd.toml")]);
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(run(files_rx, tx));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Something else in the directory that does not change the file.
        std::fs::write(d.join("unrelated"), "x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await;
        assert!(quiet.is_err(), "a change reported for an unrelated file");
        // Two swaps in a row, as two edits of the ConfigMap: each is seen
        // (a watch on the file itself would go with the first old file).
        for (i, prev) in [(2, 1), (3, 2)] {
            let new = format!("..2026_0{i}");
            std::fs::create_dir_all(d.join(&new)).unwrap();
            std::fs::write(d.join(&new).join("vipd.toml"), format!("a = {i}\n")).unwrap();
            symlink(&new, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
            std::fs::remove_dir_all(d.join(format!("..2026_0{prev}"))).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
            assert_eq!(got, Ok(Some(())), "swap {i} was not seen");
            let again = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await;
            assert!(again.is_err(), "one swap, reported twice");
        }
        drop(files_tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        std::fs::remove_dir_all(&d).unwrap();
    }
}
