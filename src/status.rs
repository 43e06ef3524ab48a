//! What vipd is doing, for people, probes and Prometheus: `GET /readyz`,
//! `/status`, `/metrics` and `/explain/NAMESPACE/NAME` on a local HTTP
//! listener (`http`), and `vipd status` and `vipd explain`, which print
//! them, as text or JSON.
//!
//! The daemon (which owns the state) answers with plain values
//! ([`Report`], [`explain::Explanation`]); this module renders them
//! (`metrics` for Prometheus) and serves them.

pub mod explain;
pub mod http;
pub mod metrics;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::bgp::session::PeerStatus;
use crate::k8s::allocator::IpamStatus;
use crate::k8s::watch::KubeStatus;

/// A backend of the control plane, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendLine {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlLine {
    pub vip: IpAddr,
    pub announced: bool,
    /// `None` without IPVS; otherwise whether IPVS holds the service.
    pub ipvs_ok: Option<bool>,
    pub backends: Vec<BackendLine>,
}

/// One session in the report: where the peer is, the AS it may speak,
/// the session's state.
pub type PeerRow = (crate::config::PeerAddr, crate::config::PeerAs, PeerStatus);

/// Everything the report shows, as plain values.
pub struct Report {
    pub peers: Vec<PeerRow>,
    /// `None` without `[kubernetes]`.
    pub kube: Option<KubeStatus>,
    pub control: Option<ControlLine>,
    pub static_prefixes: usize,
    pub table_prefixes: usize,
    pub now: SystemTime,
    /// `None` without `[ipam]`.
    pub ipam: Option<IpamStatus>,
    /// `None` without `[drain]`.
    pub drain: Option<DrainLine>,
    /// `None` without `[l2]`.
    pub l2: Option<crate::l2::L2Status>,
    /// BFD packets dropped by check, over every session.
    pub bfd_drops: std::collections::BTreeMap<crate::bfd::packet::Drop, u64>,
    pub config: ConfigLine,
    /// `[status] ready_needs_peer`: ready only with a session Established.
    pub ready_needs_peer: bool,
    /// `bgp.asn = "label:KEY"` and the Node's label missing or not an ASN.
    pub asn_problem: Option<String>,
}

/// The configuration file as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    /// The last reload applied (true too when none was tried yet).
    pub last_reload_ok: bool,
    /// When a configuration was last loaded whole (start or reload).
    pub last_success: SystemTime,
    /// The problems of the last reload refused.
    pub problems: Vec<String>,
}

/// The drain's state, with `[drain]`.
pub use crate::drain::Line as DrainLine;

impl Report {
    /// Ready once vipd announces what it should to someone: the
    /// configuration loaded (it is, or nothing would answer), with
    /// Kubernetes the caches synced (before that nothing is announced), and
    /// unless `ready_needs_peer` is off, a session Established. Otherwise
    /// why not, for people and the probe's body.
    pub fn readiness(&self) -> Result<(), String> {
        if self.kube.as_ref().is_some_and(|k| !k.synced) {
            return Err(
                "waiting for the Kubernetes caches to sync; nothing is announced until then".into(),
            );
        }
        if !self.ready_needs_peer
            || self
                .peers
                .iter()
                .any(|(_, _, p)| p.established_at.is_some())
        {
            return Ok(());
        }
        if let (true, Some(p)) = (self.peers.is_empty(), &self.asn_problem) {
            return Err(p.clone());
        }
        if self.peers.is_empty() {
            return Err(
                "no BGP peer for this node ([status] ready_needs_peer = false if none is intended)"
                    .into(),
            );
        }
        Err(format!(
            "no BGP session Established yet (of {} peers)",
            self.peers.len()
        ))
    }

    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = match self.readiness() {
            Ok(()) => writeln!(s, "ready: yes"),
            Err(why) => writeln!(s, "ready: no ({why})"),
        };
        if let Some(p) = &self.asn_problem {
            let _ = writeln!(s, "{p}");
        }
        if !self.config.last_reload_ok {
            let _ = writeln!(
                s,
                "configuration: the last reload was refused; the one loaded before stays in force"
            );
            for p in self.config.problems.iter().take(PENDING_SHOWN) {
                let _ = writeln!(s, "  {p}");
            }
        }
        let _ = writeln!(
            s,
            "table: {} prefixes ({} static)",
            self.table_prefixes, self.static_prefixes
        );
        if let Some(k) = &self.kube {
            render_kube(&mut s, k);
        }
        if let Some(i) = &self.ipam {
            render_ipam(&mut s, i);
        }
        if let Some(d) = &self.drain {
            render_drain(&mut s, d);
        }
        if let Some(l) = &self.l2 {
            render_l2(&mut s, l);
        }
        self.render_peers(&mut s);
        if let Some(c) = &self.control {
            render_control(&mut s, c);
        }
        s
    }

    fn render_peers(&self, s: &mut String) {
        let _ = writeln!(s, "peers:");
        if self.peers.is_empty() {
            let _ = writeln!(s, "  (none configured)");
        }
        for (addr, asn, p) in &self.peers {
            let who = explain::peer_text(addr, p.neighbor);
            let _ = write!(s, "  {who} {}: {}", asn.text(), p.state);
            if let Some(t) = p.established_at {
                let up = self.now.duration_since(t).unwrap_or_default();
                let _ = write!(
                    s,
                    " for {}, {} prefixes sent in {} UPDATEs",
                    human(up),
                    p.prefixes_sent,
                    p.updates_sent
                );
            }
            if p.refused_too_large > 0 {
                let _ = write!(
                    s,
                    "; {} prefixes not sent (attributes too large for one UPDATE)",
                    p.refused_too_large
                );
            }
            if let Some(e) = &p.last_error {
                let _ = write!(s, "; last error: {e}");
            }
            s.push('\n');
            if let Some(b) = &p.bfd {
                render_bfd(s, b);
            }
        }
        if self.bfd_drops.values().any(|n| *n > 0) {
            let d: Vec<String> = self
                .bfd_drops
                .iter()
                .map(|(k, n)| format!("{} {n}", k.label()))
                .collect();
            let _ = writeln!(s, "  BFD packets dropped: {}", d.join(", "));
        }
    }
}

fn render_kube(s: &mut String, k: &KubeStatus) {
    let _ = writeln!(
        s,
        "kubernetes: {}, {} Services, {} EndpointSlices, {} VIPs for this node",
        if k.synced { "synced" } else { "not synced yet" },
        k.services,
        k.endpoint_slices,
        k.vips
    );
    if let Some(e) = &k.last_error {
        let _ = writeln!(
            s,
            "  API server: {e} (current announcements stay until it is back)"
        );
    }
}

fn render_l2(s: &mut String, l: &crate::l2::L2Status) {
    let _ = writeln!(
        s,
        "l2: {} of {} VIPs answered here{}{}",
        l.owned(),
        l.vips.len(),
        if l.renewing {
            ""
        } else {
            "; this node's Lease is not being renewed"
        },
        if l.paused {
            "; paused: reading the Leases again"
        } else {
            ""
        },
    );
    for p in &l.problems {
        let _ = writeln!(s, "  problem: {p}");
    }
    if !l.partners.is_empty() {
        let p: Vec<String> = (l.partners.iter())
            .map(|(n, st)| format!("{n} {st}"))
            .collect();
        let _ = writeln!(s, "  fast failover BFD: {}", p.join(", "));
    }
    for v in l.vips.iter().filter(|v| v.here).take(PENDING_SHOWN) {
        let addrs: Vec<String> = v.addrs.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(s, "  {} (epoch {})", addrs.join(", "), v.epoch.unwrap_or(0));
    }
}

fn render_drain(s: &mut String, d: &DrainLine) {
    if !d.active {
        let _ = writeln!(s, "drain: not draining");
        return;
    }
    let what = match d.left_secs {
        Some(n) => format!("VIPs announced with GRACEFUL_SHUTDOWN, withdrawn in {n}s"),
        None => "VIPs withdrawn".to_string(),
    };
    let _ = writeln!(s, "drain: draining ({}): {what}", d.reason);
}

fn render_control(s: &mut String, c: &ControlLine) {
    let announced = if c.announced {
        "announced"
    } else {
        "not announced"
    };
    let _ = write!(s, "control plane: VIP {} {announced}", c.vip);
    match c.ipvs_ok {
        None => s.push_str(", IPVS not used\n"),
        Some(true) => s.push_str(", IPVS service in place\n"),
        Some(false) => s.push_str(", IPVS failing (see the log)\n"),
    }
    for b in &c.backends {
        let health = if b.healthy { "healthy" } else { "failing" };
        let _ = write!(s, "  {} {health}", b.addr);
        match (&b.last_error, b.healthy) {
            (Some(e), false) => {
                let _ = write!(s, ": {e}");
            }
            (Some(e), true) => {
                let _ = write!(s, " (last check: {e})");
            }
            _ => {}
        }
        s.push('\n');
    }
}

/// At most this many pending Services are listed one per line.
const PENDING_SHOWN: usize = 20;

fn render_ipam(s: &mut String, i: &IpamStatus) {
    let role = match (i.leader, &i.holder) {
        (true, _) => "this node allocates (holds the lease)".to_string(),
        (false, Some(h)) => format!("standing by (lease held by {h})"),
        (false, None) => "standing by (lease not held yet)".to_string(),
    };
    let _ = writeln!(
        s,
        "allocator: {role}, {} status writes by this node",
        i.writes
    );
    if let Some(e) = &i.last_error {
        let _ = writeln!(s, "  last error: {e}");
    }
    for p in &i.pools {
        let f = family_name(p.family);
        let _ = writeln!(s, "  pool {} {f}: {}/{} used", p.pool, p.used, p.size);
    }
    if i.leader {
        let _ = writeln!(s, "  pending: {} Services", i.pending.len());
    }
    for (k, why) in i.pending.iter().take(PENDING_SHOWN) {
        let _ = writeln!(s, "    {k}: {why}");
    }
    if i.pending.len() > PENDING_SHOWN {
        let _ = writeln!(s, "    ... and {} more", i.pending.len() - PENDING_SHOWN);
    }
}

fn render_bfd(s: &mut String, b: &crate::bfd::io::Status) {
    let ms = |d: Duration| d.as_millis();
    let _ = write!(
        s,
        "    BFD {}: TX {} ms, RX {} ms",
        b.state.name(),
        ms(b.tx),
        ms(b.rx)
    );
    if let Some(d) = b.detection {
        let _ = write!(s, ", detection {} ms", ms(d));
    }
    if let Some(d) = b.last_down {
        let _ = write!(s, "; last down: {}", crate::bfd::packet::diag::name(d));
    }
    s.push('\n');
}

fn family_name(f: crate::ipam::Family) -> &'static str {
    match f {
        crate::ipam::Family::V4 => "ipv4",
        crate::ipam::Family::V6 => "ipv6",
    }
}

/// One peer in `vipd status -o json`.
#[derive(Serialize)]
struct PeerJson<'a> {
    address: &'a crate::config::PeerAddr,
    /// An unnumbered peer's neighbour, as heard on its interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    neighbor: Option<std::net::Ipv6Addr>,
    asn: crate::config::PeerAs,
    state: &'static str,
    uptime_secs: Option<u64>,
    families: Vec<String>,
    prefixes_sent: usize,
    prefixes_refused: usize,
    updates_sent: u64,
    updates_received: u64,
    last_error: Option<&'a str>,
    bfd: Option<BfdJson>,
}

#[derive(Serialize)]
struct BfdJson {
    state: &'static str,
    tx_ms: u128,
    rx_ms: u128,
    detection_ms: Option<u128>,
    last_down: Option<&'static str>,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    ready: bool,
    table_prefixes: usize,
    static_prefixes: usize,
    kubernetes: Option<&'a KubeStatus>,
    allocator: Option<&'a IpamStatus>,
    drain: Option<&'a DrainLine>,
    l2: Option<&'a crate::l2::L2Status>,
    peers: Vec<PeerJson<'a>>,
    control_plane: Option<&'a ControlLine>,
}

impl Report {
    /// `vipd status -o json`: the same state as [`Report::render`].
    pub fn json(&self) -> String {
        let peers = self
            .peers
            .iter()
            .map(|(a, asn, p)| PeerJson {
                address: a,
                neighbor: p.neighbor,
                asn: *asn,
                state: p.state,
                uptime_secs: p
                    .established_at
                    .map(|t| self.now.duration_since(t).unwrap_or_default().as_secs()),
                families: p.families.iter().map(|f| f.to_string()).collect(),
                prefixes_sent: p.prefixes_sent,
                prefixes_refused: p.refused_too_large,
                updates_sent: p.updates_sent,
                updates_received: p.updates_received,
                last_error: p.last_error.as_deref(),
                bfd: p.bfd.as_ref().map(|b| BfdJson {
                    state: b.state.name(),
                    tx_ms: b.tx.as_millis(),
                    rx_ms: b.rx.as_millis(),
                    detection_ms: b.detection.map(|d| d.as_millis()),
                    last_down: b.last_down.map(crate::bfd::packet::diag::name),
                }),
            })
            .collect();
        let j = ReportJson {
            ready: self.ready(),
            table_prefixes: self.table_prefixes,
            static_prefixes: self.static_prefixes,
            kubernetes: self.kube.as_ref(),
            allocator: self.ipam.as_ref(),
            drain: self.drain.as_ref(),
            l2: self.l2.as_ref(),
            peers,
            control_plane: self.control.as_ref(),
        };
        let mut s =
            serde_json::to_string_pretty(&j).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    }
}

/// What a client asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Report,
    /// `namespace/name`.
    Explain(String),
    /// `vipd reload`: read the configuration again.
    Reload,
}

/// The daemon's answer, as plain values; the listener renders it.
pub enum Answer {
    Report(Box<Report>),
    Explain(Box<explain::Explanation>),
    Reloaded(Reloaded),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    pub applied: bool,
    /// `key: reason`, when refused.
    pub problems: Vec<String>,
    /// Changed keys that wait for a restart.
    pub restart: Vec<String>,
    /// Changed keys that apply to new sessions and the next stop.
    pub later: Vec<String>,
}

impl Reloaded {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.applied {
            let _ = writeln!(s, "configuration refused; the running one stays in force:");
            for p in &self.problems {
                let _ = writeln!(s, "  {p}");
            }
            return s;
        }
        let _ = writeln!(s, "configuration reloaded");
        if !self.restart.is_empty() {
            let _ = writeln!(
                s,
                "  take effect only when vipd restarts: {}",
                self.restart.join(", ")
            );
        }
        if !self.later.is_empty() {
            let _ = writeln!(
                s,
                "  apply to new sessions and the next stop: {}",
                self.later.join(", ")
            );
        }
        s
    }
}

/// A request to the daemon loop, with where its answer goes.
pub struct Ask {
    pub query: Query,
    pub reply: oneshot::Sender<Answer>,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn report() -> Report {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let up = PeerStatus {
            state: "Established",
            established_at: Some(now - Duration::from_secs(125)),
            prefixes_sent: 3,
            updates_sent: 2,
            updates_received: 1,
            notifications_received: [((6, 2), 1)].into(),
            bfd: Some(crate::bfd::io::Status {
                state: crate::bfd::packet::State::Up,
                diag: 0,
                tx: Duration::from_millis(300),
                rx: Duration::from_millis(300),
                detection: Some(Duration::from_millis(900)),
                last_down: Some(crate::bfd::packet::diag::DETECTION_EXPIRED),
            }),
            families: vec![crate::bgp::wire::Afi::Ipv4],
            sending: vec![crate::bgp::wire::Afi::Ipv4],
            holds: Some(std::sync::Arc::new(
                ["203.0.113.1/32", "203.0.113.2/32", "2001:db8::1/128"]
                    .iter()
                    .map(|p| {
                        (
                            p.parse::<ipnet::IpNet>().unwrap(),
                            std::sync::Arc::new(crate::config::RouteAttrs::default()),
                        )
                    })
                    .collect(),
            )),
            ..PeerStatus::default()
        };
        let down = PeerStatus {
            last_error: Some("connect: Connection refused (os error 111)".into()),
            ..PeerStatus::default()
        };
        Report {
            peers: vec![
                (
                    crate::config::PeerAddr::Ip("192.0.2.2".parse().unwrap()),
                    crate::config::PeerAs::Number(65002),
                    up,
                ),
                (
                    crate::config::PeerAddr::Ip("2001:db8::2".parse().unwrap()),
                    crate::config::PeerAs::Number(65002),
                    down,
                ),
            ],
            kube: Some(KubeStatus {
                synced: true,
                services: 10,
                endpoint_slices: 12,
                vips: 4,
                services_announced: 3,
                refused: [(crate::k8s::intent::RefusalKind::NodeAddress, 2)].into(),
                last_error: Some("connection refused".into()),
            }),
            control: Some(ControlLine {
                vip: "192.0.2.100".parse().unwrap(),
                announced: true,
                ipvs_ok: Some(true),
                backends: vec![
                    BackendLine {
                        addr: "192.0.2.11:6443".parse().unwrap(),
                        healthy: true,
                        last_error: None,
                    },
                    BackendLine {
                        addr: "192.0.2.12:6443".parse().unwrap(),
                        healthy: false,
                        last_error: Some("answered 500".into()),
                    },
                ],
            }),
            static_prefixes: 1,
            table_prefixes: 6,
            now,
            ipam: Some(IpamStatus {
                leader: true,
                holder: Some("node-a".into()),
                pools: vec![crate::ipam::PoolUsage {
                    pool: "public".into(),
                    family: crate::ipam::Family::V4,
                    used: 3,
                    size: 16,
                }],
                pending: (0..22)
                    .map(|i| {
                        (
                            format!("a/s{i}"),
                            "pool public has no free V4 address".into(),
                        )
                    })
                    .collect(),
                writes: 7,
                last_error: None,
            }),
            l2: None,
            drain: Some(DrainLine {
                active: true,
                reason: "cordoned".into(),
                left_secs: Some(12),
            }),
            bfd_drops: [(crate::bfd::packet::Drop::Ttl, 2)].into(),
            config: ConfigLine {
                last_reload_ok: true,
                last_success: SystemTime::UNIX_EPOCH,
                problems: vec![],
            },
            ready_needs_peer: true,
            asn_problem: None,
        }
    }

    #[test]
    fn the_report_names_every_piece_of_state() {
        let r = report();
        assert!(r.ready());
        let text = r.render();
        for line in [
            "ready: yes",
            "table: 6 prefixes (1 static)",
            "kubernetes: synced, 10 Services, 12 EndpointSlices, 4 VIPs for this node",
            "  API server: connection refused (current announcements stay until it is back)",
            "  192.0.2.2 AS65002: Established for 2m5s, 3 prefixes sent in 2 UPDATEs",
            "  2001:db8::2 AS65002: Idle; last error: connect: Connection refused (os error 111)",
            "control plane: VIP 192.0.2.100 announced, IPVS service in place",
            "  192.0.2.11:6443 healthy",
            "  192.0.2.12:6443 failing: answered 500",
            "allocator: this node allocates (holds the lease), 7 status writes by this node",
            "  pool public ipv4: 3/16 used",
            "  pending: 22 Services",
            "    a/s0: pool public has no free V4 address",
            "    ... and 2 more",
            "drain: draining (cordoned): VIPs announced with GRACEFUL_SHUTDOWN, withdrawn in 12s",
            "    BFD Up: TX 300 ms, RX 300 ms, detection 900 ms; last down: control detection time expired",
            "  BFD packets dropped: ttl 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn not_ready_until_the_caches_have_synced() {
        let mut r = report();
        r.kube.as_mut().unwrap().synced = false;
        assert!(!r.ready());
        assert!(r
            .render()
            .starts_with("ready: no (waiting for the Kubernetes caches"));
        r.kube = None;
        assert!(r.ready(), "static announcements alone are ready at once");
    }

    /// A node whose routers hear nothing is not ready: a rollout of a
    /// broken configuration stops at the first node.
    #[test]
    fn not_ready_without_an_established_session_unless_told_so() {
        let mut r = report();
        r.peers.retain(|(_, _, p)| p.established_at.is_none());
        assert_eq!(r.peers.len(), 1);
        assert!(!r.ready());
        assert!(
            r.render()
                .starts_with("ready: no (no BGP session Established yet (of 1 peers))"),
            "{}",
            r.render()
        );
        r.peers.clear();
        assert!(r
            .render()
            .starts_with("ready: no (no BGP peer for this node"));
        r.ready_needs_peer = false;
        assert!(r.ready(), "a node meant to have no peers");
        let mut r = report();
        r.kube.as_mut().unwrap().synced = false;
        r.ready_needs_peer = false;
        assert!(!r.ready(), "the caches come first, whatever the key");
    }

    #[test]
    fn a_reload_says_what_it_did() {
        let ok = Reloaded {
            applied: true,
            problems: vec![],
            restart: vec!["bgp.asn".into()],
            later: vec![],
        };
        assert_eq!(
            ok.render(),
            "configuration reloaded\n  take effect only when vipd restarts: bgp.asn\n"
        );
        let later = Reloaded {
            restart: vec![],
            later: vec!["bgp.restart_time".into()],
            ..ok.clone()
        };
        assert_eq!(
            later.render(),
            "configuration reloaded\n  apply to new sessions and the next stop: bgp.restart_time\n"
        );
        let refused = Reloaded {
            applied: false,
            problems: vec!["bgp.asn: 0 is reserved".into()],
            restart: vec![],
            later: vec![],
        };
        assert_eq!(
            refused.render(),
            "configuration refused; the running one stays in force:\n  bgp.asn: 0 is reserved\n"
        );
    }

    #[test]
    fn a_refused_reload_is_shown_with_its_problems() {
        let mut r = report();
        assert!(!r.render().contains("configuration:"));
        r.config.last_reload_ok = false;
        r.config.problems = vec!["bgp.asn: 0 is not an AS number".into()];
        let text = r.render();
        assert!(r.ready(), "the running configuration still works");
        assert!(text.contains("configuration: the last reload was refused; the one loaded before stays in force\n  bgp.asn: 0 is not an AS number\n"), "{text}");
    }
}
