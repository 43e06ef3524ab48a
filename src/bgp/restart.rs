//! Whether vipd is coming back from a graceful stop within its advertised
//! restart time, which is when RFC 4724 section 3 has the Restart State bit
//! set in the OPEN. vipd knows it from a record it writes when it stops
//! gracefully and consumes when it starts.
//!
//! The decision is pure ([`restarted`]); [`take`] and [`leave`] read and
//! write the file.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

/// The record's text for a graceful stop at `at`.
pub fn record(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("stopped_at={secs}\n")
}

/// Whether a start at `now` follows the graceful stop `record` describes
/// within `restart_time` seconds. A missing, unreadable or future record
/// means no.
pub fn restarted(record: Option<&str>, now: SystemTime, restart_time: u16) -> bool {
    let Some(secs) = record
        .and_then(|r| r.trim().strip_prefix("stopped_at="))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return false;
    };
    let stopped = UNIX_EPOCH + Duration::from_secs(secs);
    match now.duration_since(stopped) {
        Ok(gone) => gone <= Duration::from_secs(restart_time.into()),
        Err(_) => false,
    }
}

/// Reads and removes the record at `path`: whether this start is a
/// restart within `restart_time` (always no without graceful restart).
pub fn take(path: &Path, graceful_restart: bool, restart_time: u16) -> bool {
    let text = std::fs::read_to_string(path).ok();
    if text.is_some() {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(path = %path.display(), "cannot remove the restart record: {e}");
        }
    }
    let r = graceful_restart && restarted(text.as_deref(), SystemTime::now(), restart_time);
    if r {
        info!("restarting within the restart time: OPENs carry the Restart State bit");
    }
    r
}

/// Writes the record of a graceful stop now.
pub fn leave(path: &Path) {
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(path, record(SystemTime::now())));
    if let Err(e) = written {
        warn!(path = %path.display(), "cannot write the restart record: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_restart_time_only() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = record(t0);
        let after = |s| t0 + Duration::from_secs(s);
        assert!(restarted(Some(&r), after(0), 120));
        assert!(restarted(Some(&r), after(120), 120));
        assert!(!restarted(Some(&r), after(121), 120));
        // Clock went backwards, no record, garbage: not a restart.
        assert!(!restarted(Some(&r), t0 - Duration::from_secs(5), 120));
        assert!(!restarted(None, after(1), 120));
        assert!(!restarted(Some("stopped_at=soon"), after(1), 120));
        assert!(!restarted(Some(""), after(1), 120));
    }

    #[test]
    fn a_record_left_at_stop_is_taken_once_at_start() {
        let dir = std::env::temp_dir().join(format!("vipd-restart-{}", std::process::id()));
        let path = dir.join("sub/stopped");
        leave(&path);
        assert!(!take(&path, false, 120), "without graceful restart: never");
        assert!(!path.exists(), "taken even so");
        leave(&path);
        assert!(take(&path, true, 120));
        assert!(!take(&path, true, 120), "consumed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
