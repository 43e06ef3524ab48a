//! Whether vipd is coming back from a graceful stop within its advertised
//! restart time, which is when RFC 4724 section 3 has the Restart State bit
//! set in the OPEN. vipd knows it from a record it writes when it stops
//! gracefully and consumes when it starts.
//!
//! The decision is pure; reading and writing the record is the daemon's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}
