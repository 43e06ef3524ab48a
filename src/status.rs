//! What vipd is doing, for people, probes and Prometheus: `GET /readyz`,
//! `GET /status` and `GET /metrics` on a local HTTP listener, and
//! `vipd status`, which prints the status.
//!
//! The report is rendered by the daemon (which owns the state) from plain
//! values ([`Report`]); this module only serves it. Requests are read with
//! a bound on size and time, so a stuck or hostile client costs nothing.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::bgp::session::PeerStatus;
use crate::k8s::allocator::IpamStatus;
use crate::k8s::watch::KubeStatus;

/// A backend of the control plane, as the report shows it.
pub struct BackendLine {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub last_error: Option<String>,
}

pub struct ControlLine {
    pub vip: IpAddr,
    pub announced: bool,
    /// `None` without IPVS; otherwise whether IPVS holds the service.
    pub ipvs_ok: Option<bool>,
    pub backends: Vec<BackendLine>,
}

/// Everything the report shows, as plain values.
pub struct Report {
    pub peers: Vec<(IpAddr, u32, PeerStatus)>,
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
}

/// The drain's state, with `[drain]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainLine {
    pub active: bool,
    pub reason: String,
    /// Seconds until the withdrawal; `None` once withdrawn.
    pub left_secs: Option<u64>,
}

impl Report {
    /// Ready once vipd announces what it should: with Kubernetes, after
    /// the caches have synced (before that nothing is announced).
    pub fn ready(&self) -> bool {
        self.kube.as_ref().is_none_or(|k| k.synced)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "ready: {}",
            if self.ready() {
                "yes"
            } else {
                "no (waiting for the Kubernetes caches to sync; nothing is announced until then)"
            }
        );
        let _ = writeln!(
            s,
            "table: {} prefixes ({} static)",
            self.table_prefixes, self.static_prefixes
        );
        if let Some(k) = &self.kube {
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
        if let Some(i) = &self.ipam {
            render_ipam(&mut s, i);
        }
        match &self.drain {
            Some(d) if d.active => {
                let what = match d.left_secs {
                    Some(n) => format!("VIPs announced with GRACEFUL_SHUTDOWN, withdrawn in {n}s"),
                    None => "VIPs withdrawn".to_string(),
                };
                let _ = writeln!(s, "drain: draining ({}): {what}", d.reason);
            }
            Some(_) => {
                let _ = writeln!(s, "drain: not draining");
            }
            None => {}
        }
        let _ = writeln!(s, "peers:");
        if self.peers.is_empty() {
            let _ = writeln!(s, "  (none configured)");
        }
        for (addr, asn, p) in &self.peers {
            let _ = write!(s, "  {addr} AS{asn}: {}", p.state);
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
            if let Some(e) = &p.last_error {
                let _ = write!(s, "; last error: {e}");
            }
            s.push('\n');
        }
        if let Some(c) = &self.control {
            let _ = write!(
                s,
                "control plane: VIP {} {}",
                c.vip,
                if c.announced {
                    "announced"
                } else {
                    "not announced"
                }
            );
            match c.ipvs_ok {
                None => s.push_str(", IPVS not used\n"),
                Some(true) => s.push_str(", IPVS service in place\n"),
                Some(false) => s.push_str(", IPVS failing (see the log)\n"),
            }
            for b in &c.backends {
                let _ = write!(
                    s,
                    "  {} {}",
                    b.addr,
                    if b.healthy { "healthy" } else { "failing" }
                );
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
        s
    }
}

impl Report {
    /// The same state in the Prometheus text format (version 0.0.4).
    pub fn metrics(&self) -> String {
        let mut m = Metrics::default();
        let b = |x: bool| u64::from(x);
        m.gauge(
            "vipd_ready",
            "1 once vipd announces what it should",
            &[],
            b(self.ready()),
        );
        m.gauge(
            "vipd_table_prefixes",
            "Prefixes in the table offered to peers",
            &[],
            self.table_prefixes as u64,
        );
        m.gauge(
            "vipd_static_prefixes",
            "Prefixes from [[announce]]",
            &[],
            self.static_prefixes as u64,
        );
        for (addr, asn, p) in &self.peers {
            let (a, n) = (addr.to_string(), asn.to_string());
            let l = [("peer", a.as_str()), ("asn", n.as_str())];
            m.gauge(
                "vipd_bgp_session_established",
                "1 while the session is Established",
                &l,
                b(p.established_at.is_some()),
            );
            m.gauge(
                "vipd_bgp_prefixes_sent",
                "Prefixes the peer holds from vipd",
                &l,
                p.prefixes_sent as u64,
            );
            m.counter(
                "vipd_bgp_updates_sent_total",
                "UPDATE messages sent in the current session",
                &l,
                p.updates_sent,
            );
        }
        if let Some(k) = &self.kube {
            m.gauge(
                "vipd_kubernetes_synced",
                "1 once every cache has been listed",
                &[],
                b(k.synced),
            );
            m.gauge(
                "vipd_kubernetes_services",
                "Services in the cache",
                &[],
                k.services as u64,
            );
            m.gauge(
                "vipd_kubernetes_endpointslices",
                "EndpointSlices in the cache",
                &[],
                k.endpoint_slices as u64,
            );
            m.gauge(
                "vipd_kubernetes_vips",
                "Service VIPs this node announces",
                &[],
                k.vips as u64,
            );
            m.gauge(
                "vipd_kubernetes_api_error",
                "1 while the last request to the API server failed",
                &[],
                b(k.last_error.is_some()),
            );
        }
        if let Some(i) = &self.ipam {
            ipam_metrics(&mut m, i);
        }
        if let Some(d) = &self.drain {
            m.gauge(
                "vipd_drain_active",
                "1 while this node drains its VIPs (RFC 8326, then withdrawn)",
                &[],
                u64::from(d.active),
            );
        }
        if let Some(c) = &self.control {
            let vip = c.vip.to_string();
            let l = [("vip", vip.as_str())];
            m.gauge(
                "vipd_controlplane_vip_announced",
                "1 while the control-plane VIP is announced",
                &l,
                b(c.announced),
            );
            if let Some(ok) = c.ipvs_ok {
                m.gauge(
                    "vipd_controlplane_ipvs_ok",
                    "1 while IPVS holds the service as wanted",
                    &l,
                    b(ok),
                );
            }
            for be in &c.backends {
                let a = be.addr.to_string();
                m.gauge(
                    "vipd_controlplane_backend_healthy",
                    "1 while the API server passes its check",
                    &[("backend", a.as_str())],
                    b(be.healthy),
                );
            }
        }
        m.text
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

fn family_name(f: crate::ipam::Family) -> &'static str {
    match f {
        crate::ipam::Family::V4 => "ipv4",
        crate::ipam::Family::V6 => "ipv6",
    }
}

fn ipam_metrics(m: &mut Metrics, i: &IpamStatus) {
    m.gauge(
        "vipd_ipam_leader",
        "1 while this node holds the allocator lease",
        &[],
        u64::from(i.leader),
    );
    m.counter(
        "vipd_ipam_status_writes_total",
        "Service status writes this node made as the allocator",
        &[],
        i.writes,
    );
    for p in &i.pools {
        let l = [("pool", p.pool.as_str()), ("family", family_name(p.family))];
        let size = u64::try_from(p.size).unwrap_or(u64::MAX);
        m.gauge(
            "vipd_ipam_pool_addresses",
            "Addresses a pool can hand out",
            &l,
            size,
        );
        m.gauge(
            "vipd_ipam_pool_addresses_used",
            "Addresses of a pool some Service holds",
            &l,
            p.used as u64,
        );
    }
    if i.leader {
        m.gauge(
            "vipd_ipam_pending_services",
            "Services without every address they ask for",
            &[],
            i.pending.len() as u64,
        );
    }
}

/// Prometheus text, each metric's HELP and TYPE once before its samples.
#[derive(Default)]
struct Metrics {
    text: String,
    seen: Vec<&'static str>,
}

impl Metrics {
    fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: u64) {
        self.sample(name, "gauge", help, labels, v)
    }

    fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: u64) {
        self.sample(name, "counter", help, labels, v)
    }

    fn sample(
        &mut self,
        name: &'static str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        v: u64,
    ) {
        if !self.seen.contains(&name) {
            self.seen.push(name);
            let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        self.text.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = write!(self.text, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.text, " {v}");
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// What the daemon answers a request with.
pub struct Answer {
    pub ready: bool,
    pub status: String,
    pub metrics: String,
}

impl From<&Report> for Answer {
    fn from(r: &Report) -> Answer {
        Answer {
            ready: r.ready(),
            status: r.render(),
            metrics: r.metrics(),
        }
    }
}

/// A request for the current report, answered by the daemon loop.
pub type Ask = oneshot::Sender<Answer>;

/// Serves `/readyz` and `/status` until the process ends.
pub async fn serve(listener: TcpListener, ask: mpsc::Sender<Ask>) {
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "status listener");
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("status: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ask = ask.clone();
        tokio::spawn(async move {
            if let Err(e) = timeout(Duration::from_secs(5), answer(stream, ask)).await {
                debug!(%from, "status: client too slow: {e}");
            }
        });
    }
}

async fn answer(mut s: TcpStream, ask: mpsc::Sender<Ask>) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    // The request line is all that matters; headers are read and ignored.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, body) = if method != "GET" {
        (405, "only GET\n".to_string())
    } else {
        match path {
            "/readyz" | "/status" | "/metrics" => {
                let (tx, rx) = oneshot::channel();
                let got = match ask.send(tx).await {
                    Ok(()) => rx.await.ok(),
                    Err(_) => None,
                };
                match got {
                    None => (503, "vipd is stopping\n".to_string()),
                    Some(a) if path == "/metrics" => (200, a.metrics),
                    Some(a) if path == "/readyz" && a.ready => (200, "ready\n".to_string()),
                    Some(a) => (if a.ready { 200 } else { 503 }, a.status),
                }
            }
            _ => (
                404,
                "not found: try /readyz, /status or /metrics\n".to_string(),
            ),
        }
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// `vipd status`: fetches `/status` from a running vipd. Returns whether it
/// is ready, and the report.
pub fn fetch(addr: SocketAddr) -> Result<(bool, String), String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| {
            format!("cannot reach vipd at {addr}: {e} (is it running, with [status] enabled?)")
        })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let ok = head.starts_with("HTTP/1.1 200");
    if !ok && !head.starts_with("HTTP/1.1 503") {
        return Err(format!(
            "{addr}: unexpected answer: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok((ok, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let up = PeerStatus {
            state: "Established",
            established_at: Some(now - Duration::from_secs(125)),
            prefixes_sent: 3,
            updates_sent: 2,
            ..PeerStatus::default()
        };
        let down = PeerStatus {
            last_error: Some("connect: Connection refused (os error 111)".into()),
            ..PeerStatus::default()
        };
        Report {
            peers: vec![
                ("192.0.2.2".parse().unwrap(), 65002, up),
                ("2001:db8::2".parse().unwrap(), 65002, down),
            ],
            kube: Some(KubeStatus {
                synced: true,
                services: 10,
                endpoint_slices: 12,
                vips: 4,
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
            drain: Some(DrainLine {
                active: true,
                reason: "cordoned".into(),
                left_secs: Some(12),
            }),
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
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn metrics_carry_the_same_state() {
        let text = report().metrics();
        for line in [
            "# TYPE vipd_ready gauge",
            "vipd_ready 1",
            "vipd_table_prefixes 6",
            "vipd_bgp_session_established{peer=\"192.0.2.2\",asn=\"65002\"} 1",
            "vipd_bgp_session_established{peer=\"2001:db8::2\",asn=\"65002\"} 0",
            "vipd_bgp_prefixes_sent{peer=\"192.0.2.2\",asn=\"65002\"} 3",
            "# TYPE vipd_bgp_updates_sent_total counter",
            "vipd_kubernetes_vips 4",
            "vipd_kubernetes_api_error 1",
            "vipd_controlplane_vip_announced{vip=\"192.0.2.100\"} 1",
            "vipd_controlplane_ipvs_ok{vip=\"192.0.2.100\"} 1",
            "vipd_controlplane_backend_healthy{backend=\"192.0.2.12:6443\"} 0",
            "vipd_ipam_leader 1",
            "vipd_ipam_status_writes_total 7",
            "vipd_ipam_pool_addresses{pool=\"public\",family=\"ipv4\"} 16",
            "vipd_ipam_pool_addresses_used{pool=\"public\",family=\"ipv4\"} 3",
            "vipd_ipam_pending_services 22",
            "vipd_drain_active 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        // HELP and TYPE once per metric, before its first sample.
        assert_eq!(
            text.matches("# TYPE vipd_bgp_session_established ").count(),
            1
        );
        let mut m = Metrics::default();
        m.gauge("x", "h", &[("l", "a\"b\\c")], 1);
        assert!(m.text.ends_with("x{l=\"a\\\"b\\\\c\"} 1\n"), "{}", m.text);
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
}
