//! Measurements that accumulate over vipd's life: the two latency
//! histograms, recorded where the work happens (the daemon, the sessions)
//! and read at each scrape. Everything else `/metrics` shows is derived
//! from the daemon's state when it is asked (`status::metrics`).
//!
//! One process-wide instance: the histograms are plain atomics, recording
//! costs no message and no lock, and a scrape only reads them.

use std::sync::LazyLock;
use std::time::Duration;

use fastmetrics::metrics::histogram::Histogram;

/// Seconds: from a quarter of a millisecond (a small change on an idle
/// node) to ten seconds (a full resync of a large cluster).
const BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub struct Telemetry {
    /// A Kubernetes event received by the watch -> the UPDATE carrying its
    /// effect written to a peer's socket (once per peer).
    pub event_to_wire: Histogram,
    /// One batch of Kubernetes updates applied by the daemon: table, speaker
    /// and node dataplanes.
    pub reconcile: Histogram,
}

static TELEMETRY: LazyLock<Telemetry> = LazyLock::new(|| Telemetry {
    event_to_wire: Histogram::new(BUCKETS),
    reconcile: Histogram::new(BUCKETS),
});

pub fn get() -> &'static Telemetry {
    &TELEMETRY
}

pub fn event_to_wire(d: Duration) {
    TELEMETRY.event_to_wire.observe(d.as_secs_f64());
}

pub fn reconcile(d: Duration) {
    TELEMETRY.reconcile.observe(d.as_secs_f64());
}
