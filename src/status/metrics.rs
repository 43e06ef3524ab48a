//! `/metrics`: the report as Prometheus metrics, through `fastmetrics`,
//! the one well-kept crate that writes both the Prometheus text format
//! 0.0.4 (what Debian's promtool and older Prometheus servers read) and
//! OpenMetrics from one registry. A registry is built per scrape from the
//! report's plain values, so a peer or pool that goes away leaves no stale
//! series; the two histograms live in `telemetry` and are shared into it.

use fastmetrics::encoder::{EncodeLabelSet, LabelSetEncoder};
use fastmetrics::format::text::{self, TextProfile};
use fastmetrics::metrics::counter::Counter;
use fastmetrics::metrics::family::Family;
use fastmetrics::metrics::gauge::Gauge;
use fastmetrics::raw::LabelSetSchema;
use fastmetrics::registry::{Registry, Unit};

use super::Report;
use crate::bgp::session::PeerStatus;
use crate::bgp::wire::Afi;

/// The exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: the default.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`, when the scraper's
    /// `Accept` header names it.
    OpenMetrics,
}

impl Format {
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    fn profile(self) -> TextProfile {
        match self {
            Format::Prometheus => TextProfile::PrometheusV0_0_4,
            Format::OpenMetrics => TextProfile::OpenMetricsV1_0_0 {
                escaping_scheme: Default::default(),
            },
        }
    }

    pub fn content_type(self) -> &'static str {
        self.profile().content_type()
    }
}

/// Label sets, each a struct of string fields named as its labels.
macro_rules! label_set {
    ($t:ident { $($f:ident),+ }) => {
        #[derive(Clone, PartialEq, Eq, Hash)]
        struct $t { $($f: String),+ }
        impl LabelSetSchema for $t {
            fn names() -> Option<&'static [&'static str]> {
                Some(&[$(stringify!($f)),+])
            }
        }
        impl EncodeLabelSet for $t {
            fn encode(&self, e: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
                $(e.encode(&(stringify!($f), self.$f.as_str()))?;)+
                Ok(())
            }
        }
    };
}

label_set!(PeerL { peer, asn });
label_set!(PeerFamilyL { peer, asn, family });
label_set!(PeerStateL { peer, asn, state });
label_set!(NotificationL {
    peer,
    asn,
    code,
    subcode
});
label_set!(ReasonL { reason });
label_set!(CheckL { check });
label_set!(VipL { vip });
label_set!(BackendL { backend });
label_set!(PoolL { pool, family });
label_set!(BuildL { version, commit });

/// Registers metrics on one registry, turning the crate's (programming)
/// errors into one message.
struct Reg(Registry, Format);

impl Reg {
    /// A counter's family name: OpenMetrics names the family without
    /// `_total` (the encoder adds it to the sample); the Prometheus text
    /// format names it as its sample, with `_total`.
    fn counter_name(&self, name: &'static str) -> std::borrow::Cow<'static, str> {
        match self.1 {
            Format::OpenMetrics => name.into(),
            Format::Prometheus => format!("{name}_total").into(),
        }
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, v: i64) -> Result<(), String> {
        self.0
            .register(name, help, Gauge::new(v))
            .map(|_| ())
            .map_err(|e| format!("{name}: {e}"))
    }

    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) -> Result<(), String> {
        let c = <Counter>::default();
        c.set(v);
        let full = self.counter_name(name);
        self.0
            .register(full, help, c)
            .map(|_| ())
            .map_err(|e| format!("{name}: {e}"))
    }

    /// A labelled gauge of seconds; nothing when empty.
    fn seconds<L>(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: Vec<(L, f64)>,
    ) -> Result<(), String>
    where
        L: LabelSetSchema + EncodeLabelSet + Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    {
        if samples.is_empty() {
            return Ok(());
        }
        let f = Family::<L, Gauge<f64>>::default();
        for (l, v) in &samples {
            f.with_or_new(l, |g| g.set(*v));
        }
        self.0
            .register_with_unit(name, help, Unit::Seconds, f)
            .map(|_| ())
            .map_err(|e| format!("{name}: {e}"))
    }

    /// A labelled gauge (or counter: `counter`) family; nothing when empty.
    fn family<L>(
        &mut self,
        name: &'static str,
        help: &'static str,
        counter: bool,
        samples: Vec<(L, u64)>,
    ) -> Result<(), String>
    where
        L: LabelSetSchema + EncodeLabelSet + Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    {
        if samples.is_empty() {
            return Ok(());
        }
        let r = if counter {
            let f = Family::<L, Counter>::default();
            for (l, v) in &samples {
                f.with_or_new(l, |c| c.set(*v));
            }
            let full = self.counter_name(name);
            self.0.register(full, help, f)
        } else {
            let f = Family::<L, Gauge>::default();
            for (l, v) in &samples {
                f.with_or_new(l, |g| g.set(i64::try_from(*v).unwrap_or(i64::MAX)));
            }
            self.0.register(name, help, f)
        };
        r.map(|_| ()).map_err(|e| format!("{name}: {e}"))
    }
}

fn b(x: bool) -> i64 {
    i64::from(x)
}

fn n(x: usize) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// The report in the format asked for.
pub fn encode(r: &Report, f: Format) -> Result<String, String> {
    let mut reg = Reg(Registry::default(), f);
    general(&mut reg, r)?;
    peers(&mut reg, r)?;
    kube(&mut reg, r)?;
    ipam(&mut reg, r)?;
    control(&mut reg, r)?;
    let t = crate::telemetry::get();
    reg.0
        .register_with_unit(
            "vipd_event_to_wire",
            "Kubernetes event received to the UPDATE with its effect written, per peer",
            Unit::Seconds,
            t.event_to_wire.clone(),
        )
        .map_err(|e| e.to_string())?;
    reg.0
        .register_with_unit(
            "vipd_reconcile_duration",
            "One batch of Kubernetes updates applied to the table and the node",
            Unit::Seconds,
            t.reconcile.clone(),
        )
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    text::encode(&mut out, &reg.0, f.profile()).map_err(|e| e.to_string())?;
    Ok(out)
}

fn general(reg: &mut Reg, r: &Report) -> Result<(), String> {
    reg.gauge(
        "vipd_ready",
        "1 once vipd announces what it should",
        b(r.ready()),
    )?;
    let build = BuildL {
        version: env!("CARGO_PKG_VERSION").into(),
        commit: crate::COMMIT.into(),
    };
    reg.family(
        "vipd_build_info",
        "Always 1: the version and commit of this vipd",
        false,
        vec![(build, 1)],
    )?;
    // Prometheus' own names for this, so its alerts fit vipd unchanged.
    reg.gauge(
        "vipd_config_last_reload_successful",
        "1 when the last reload of the configuration applied, 0 when it was refused",
        b(r.config.last_reload_ok),
    )?;
    let at = r
        .config
        .last_success
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    reg.gauge(
        "vipd_config_last_reload_success_timestamp_seconds",
        "When a configuration was last loaded whole (start or reload), in Unix seconds",
        i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
    )?;
    reg.gauge(
        "vipd_table_prefixes",
        "Prefixes in the table offered to peers",
        n(r.table_prefixes),
    )?;
    reg.gauge(
        "vipd_static_prefixes",
        "Prefixes from [[announce]]",
        n(r.static_prefixes),
    )?;
    if let Some(d) = &r.drain {
        reg.gauge(
            "vipd_drain_active",
            "1 while this node drains its VIPs (RFC 8326, then withdrawn)",
            b(d.active),
        )?;
    }
    if let Some(l) = &r.l2 {
        l2(reg, l)?;
    }
    Ok(())
}

fn l2(reg: &mut Reg, l: &crate::l2::L2Status) -> Result<(), String> {
    reg.gauge(
        "vipd_l2_vips_owned",
        "L2 VIPs (address groups) this node answers ARP/NDP for",
        l.owned() as i64,
    )?;
    reg.counter(
        "vipd_l2_claims",
        "Changes of the claims this node wrote into its Lease",
        l.claims_written,
    )?;
    reg.counter(
        "vipd_l2_conflicts",
        "Another node seen on the wire answering for a VIP this node answers for",
        l.conflicts,
    )?;
    reg.counter(
        "vipd_l2_announcements",
        "Gratuitous ARPs and unsolicited Neighbor Advertisements sent",
        l.announced,
    )?;
    reg.counter(
        "vipd_l2_answers",
        "ARP requests and Neighbor Solicitations answered",
        l.answered,
    )?;
    reg.counter(
        "vipd_l2_fast_failovers",
        "Owners taken for dead by fast failover (BFD expired, probes unanswered)",
        l.fast_failovers,
    )?;
    reg.gauge(
        "vipd_l2_lease_renewing",
        "1 while this node's L2 Lease is being renewed",
        i64::from(l.renewing),
    )?;
    Ok(())
}

fn peer_label(a: &crate::config::PeerAddr, asn: &crate::config::PeerAs) -> PeerL {
    PeerL {
        peer: a.to_string(),
        asn: asn.to_string(),
    }
}

/// One sample per peer.
fn per_peer(r: &Report, f: &dyn Fn(&PeerStatus) -> u64) -> Vec<(PeerL, u64)> {
    r.peers
        .iter()
        .map(|(a, asn, p)| (peer_label(a, asn), f(p)))
        .collect()
}

fn peers(reg: &mut Reg, r: &Report) -> Result<(), String> {
    let per = |f: &dyn Fn(&PeerStatus) -> u64| per_peer(r, f);
    reg.family(
        "vipd_bgp_session_established",
        "1 while the session is Established",
        false,
        per(&|p| u64::from(p.established_at.is_some())),
    )?;
    let mut states = vec![];
    for (a, asn, p) in &r.peers {
        for s in crate::bgp::fsm::State::ALL.map(|s| s.name()) {
            let l = PeerStateL {
                peer: a.to_string(),
                asn: asn.to_string(),
                state: s.to_string(),
            };
            states.push((l, u64::from(p.state == s)));
        }
    }
    reg.family(
        "vipd_bgp_session_state",
        "1 for the session's current RFC 4271 state",
        false,
        states,
    )?;
    reg.family(
        "vipd_bgp_session_uptime_seconds",
        "Seconds since the session became Established (0 while it is not)",
        false,
        per(&|p| {
            p.established_at
                .and_then(|t| r.now.duration_since(t).ok())
                .map_or(0, |d| d.as_secs())
        }),
    )?;
    let mut fam = vec![];
    for (a, asn, p) in &r.peers {
        for (afi, name) in [(Afi::Ipv4, "ipv4"), (Afi::Ipv6, "ipv6")] {
            let l = PeerFamilyL {
                peer: a.to_string(),
                asn: asn.to_string(),
                family: name.to_string(),
            };
            fam.push((l, p.prefixes_in(afi) as u64));
        }
    }
    reg.family(
        "vipd_bgp_prefixes_announced",
        "Prefixes the peer holds from vipd, by address family",
        false,
        fam,
    )?;
    reg.family(
        "vipd_bgp_prefixes_refused",
        "Prefixes of the table not sent to the peer: their attributes, as it would receive them, do not fit in one 4,096-byte UPDATE",
        false,
        per(&|p| p.refused_too_large as u64),
    )?;
    messages(reg, r)?;
    bfd(reg, r)
}

/// Each peer's BFD session (with `bfd = true`) and the drops by check.
fn bfd(reg: &mut Reg, r: &Report) -> Result<(), String> {
    let with: Vec<(PeerL, &crate::bfd::io::Status)> = r
        .peers
        .iter()
        .filter_map(|(a, asn, p)| p.bfd.as_ref().map(|b| (peer_label(a, asn), b)))
        .collect();
    let up = with
        .iter()
        .map(|(l, b)| {
            (
                l.clone(),
                u64::from(b.state == crate::bfd::packet::State::Up),
            )
        })
        .collect();
    reg.family(
        "vipd_bfd_up",
        "1 while the peer's BFD session is Up",
        false,
        up,
    )?;
    let secs = |f: &dyn Fn(&crate::bfd::io::Status) -> Option<std::time::Duration>| {
        with.iter()
            .filter_map(|(l, b)| f(b).map(|d| (l.clone(), d.as_secs_f64())))
            .collect::<Vec<_>>()
    };
    reg.seconds(
        "vipd_bfd_tx_interval",
        "The BFD transmit interval in effect (before jitter)",
        secs(&|b| Some(b.tx)),
    )?;
    reg.seconds(
        "vipd_bfd_rx_interval",
        "The BFD receive interval in effect",
        secs(&|b| Some(b.rx)),
    )?;
    reg.seconds(
        "vipd_bfd_detection_time",
        "How long without a packet before the BFD session is declared down",
        secs(&|b| b.detection),
    )?;
    if with.is_empty() && r.bfd_drops.is_empty() {
        return Ok(());
    }
    let drops = crate::bfd::packet::Drop::ALL
        .iter()
        .map(|d| {
            let l = CheckL {
                check: d.label().to_string(),
            };
            (l, r.bfd_drops.get(d).copied().unwrap_or(0))
        })
        .collect();
    reg.family(
        "vipd_bfd_packets_dropped",
        "BFD packets dropped, by the check they failed (RFC 5880 6.8.6, RFC 5881 and 5883 TTL)",
        true,
        drops,
    )
}

/// What went over each session: UPDATEs and NOTIFICATIONs.
fn messages(reg: &mut Reg, r: &Report) -> Result<(), String> {
    let per = |f: &dyn Fn(&PeerStatus) -> u64| per_peer(r, f);
    reg.family(
        "vipd_bgp_updates_sent",
        "UPDATE messages sent to the peer",
        true,
        per(&|p| p.updates_sent),
    )?;
    reg.family(
        "vipd_bgp_updates_received",
        "UPDATE messages received from the peer (checked, then dropped)",
        true,
        per(&|p| p.updates_received),
    )?;
    for (name, help, sent) in [
        (
            "vipd_bgp_notifications_sent",
            "NOTIFICATION messages sent, by code and subcode",
            true,
        ),
        (
            "vipd_bgp_notifications_received",
            "NOTIFICATION messages received, by code and subcode",
            false,
        ),
    ] {
        let mut v = vec![];
        for (a, asn, p) in &r.peers {
            let m = if sent {
                &p.notifications_sent
            } else {
                &p.notifications_received
            };
            for ((code, sub), count) in m {
                let l = NotificationL {
                    peer: a.to_string(),
                    asn: asn.to_string(),
                    code: code.to_string(),
                    subcode: sub.to_string(),
                };
                v.push((l, *count));
            }
        }
        reg.family(name, help, true, v)?;
    }
    Ok(())
}

fn kube(reg: &mut Reg, r: &Report) -> Result<(), String> {
    let Some(k) = &r.kube else {
        return Ok(());
    };
    reg.gauge(
        "vipd_kubernetes_synced",
        "1 once every cache has been listed",
        b(k.synced),
    )?;
    reg.gauge(
        "vipd_kubernetes_services",
        "Services in the cache",
        n(k.services),
    )?;
    reg.gauge(
        "vipd_kubernetes_endpointslices",
        "EndpointSlices in the cache",
        n(k.endpoint_slices),
    )?;
    reg.gauge(
        "vipd_kubernetes_vips",
        "Service VIPs this node announces",
        n(k.vips),
    )?;
    reg.gauge(
        "vipd_kubernetes_api_error",
        "1 while the last request to the API server failed",
        b(k.last_error.is_some()),
    )?;
    reg.gauge(
        "vipd_services_announced",
        "Services with at least one VIP this node announces",
        n(k.services_announced),
    )?;
    let refused = crate::k8s::intent::RefusalKind::ALL
        .iter()
        .map(|kind| {
            let count = k.refused.get(kind).copied().unwrap_or(0);
            let l = ReasonL {
                reason: kind.label().to_string(),
            };
            (l, count as u64)
        })
        .collect();
    reg.family(
        "vipd_services_refused",
        "Service addresses vipd refuses to announce, by reason",
        false,
        refused,
    )
}

fn ipam(reg: &mut Reg, r: &Report) -> Result<(), String> {
    let Some(i) = &r.ipam else {
        return Ok(());
    };
    reg.gauge(
        "vipd_ipam_leader",
        "1 while this node holds the allocator lease",
        b(i.leader),
    )?;
    reg.counter(
        "vipd_ipam_status_writes",
        "Service status writes this node made as the allocator",
        i.writes,
    )?;
    let pool = |p: &crate::ipam::PoolUsage| PoolL {
        pool: p.pool.clone(),
        family: super::family_name(p.family).to_string(),
    };
    let sizes = i
        .pools
        .iter()
        .map(|p| (pool(p), u64::try_from(p.size).unwrap_or(u64::MAX)))
        .collect();
    reg.family(
        "vipd_ipam_pool_addresses",
        "Addresses a pool can hand out",
        false,
        sizes,
    )?;
    let used = i.pools.iter().map(|p| (pool(p), p.used as u64)).collect();
    reg.family(
        "vipd_ipam_pool_addresses_used",
        "Addresses of a pool some Service holds",
        false,
        used,
    )?;
    if i.leader {
        reg.gauge(
            "vipd_ipam_pending_services",
            "Services without every address they ask for",
            n(i.pending.len()),
        )?;
    }
    Ok(())
}

fn control(reg: &mut Reg, r: &Report) -> Result<(), String> {
    let Some(c) = &r.control else {
        return Ok(());
    };
    let vip = || VipL {
        vip: c.vip.to_string(),
    };
    reg.family(
        "vipd_controlplane_vip_announced",
        "1 while the control-plane VIP is announced",
        false,
        vec![(vip(), u64::from(c.announced))],
    )?;
    if let Some(ok) = c.ipvs_ok {
        reg.family(
            "vipd_controlplane_ipvs_ok",
            "1 while IPVS holds the service as wanted",
            false,
            vec![(vip(), u64::from(ok))],
        )?;
    }
    let be = c
        .backends
        .iter()
        .map(|b| {
            let l = BackendL {
                backend: b.addr.to_string(),
            };
            (l, u64::from(b.healthy))
        })
        .collect();
    reg.family(
        "vipd_controlplane_backend_healthy",
        "1 while the API server passes its check",
        false,
        be,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::report;
    use super::*;

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }

    #[test]
    fn a_refused_reload_and_the_build_are_in_the_metrics() {
        let mut r = report();
        r.config.last_reload_ok = false;
        r.config.last_success =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let text = encode(&r, Format::Prometheus).unwrap();
        has(&text, "vipd_config_last_reload_successful 0");
        has(
            &text,
            "vipd_config_last_reload_success_timestamp_seconds 1800000000",
        );
        let build = format!(
            "vipd_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::COMMIT
        );
        has(&text, &build);
        assert_ne!(crate::COMMIT, "", "built in a checkout: a commit");
    }

    #[test]
    fn the_prometheus_text_carries_the_report() {
        let text = encode(&report(), Format::Prometheus).unwrap();
        for line in [
            "# TYPE vipd_ready gauge",
            "vipd_ready 1",
            "vipd_config_last_reload_successful 1",
            "vipd_config_last_reload_success_timestamp_seconds 0",
            "vipd_table_prefixes 6",
            "vipd_bgp_session_established{peer=\"192.0.2.2\",asn=\"65002\"} 1",
            "vipd_bgp_session_established{peer=\"2001:db8::2\",asn=\"65002\"} 0",
            "vipd_bgp_session_state{peer=\"192.0.2.2\",asn=\"65002\",state=\"Established\"} 1",
            "vipd_bgp_session_state{peer=\"2001:db8::2\",asn=\"65002\",state=\"Idle\"} 1",
            "vipd_bgp_session_uptime_seconds{peer=\"192.0.2.2\",asn=\"65002\"} 125",
            // The peer holds two IPv4 prefixes; IPv6 is not sent to it.
            "vipd_bgp_prefixes_announced{peer=\"192.0.2.2\",asn=\"65002\",family=\"ipv4\"} 2",
            "vipd_bgp_prefixes_announced{peer=\"192.0.2.2\",asn=\"65002\",family=\"ipv6\"} 0",
            "# TYPE vipd_bgp_updates_sent_total counter",
            "vipd_bgp_updates_sent_total{peer=\"192.0.2.2\",asn=\"65002\"} 2",
            "vipd_bgp_updates_received_total{peer=\"192.0.2.2\",asn=\"65002\"} 1",
            "vipd_bgp_notifications_received_total{peer=\"192.0.2.2\",asn=\"65002\",code=\"6\",subcode=\"2\"} 1",
            "vipd_kubernetes_vips 4",
            "vipd_kubernetes_api_error 1",
            "vipd_services_announced 3",
            "vipd_services_refused{reason=\"node_address\"} 2",
            "vipd_services_refused{reason=\"api_server\"} 0",
            "vipd_controlplane_vip_announced{vip=\"192.0.2.100\"} 1",
            "vipd_controlplane_ipvs_ok{vip=\"192.0.2.100\"} 1",
            "vipd_controlplane_backend_healthy{backend=\"192.0.2.12:6443\"} 0",
            "vipd_ipam_leader 1",
            "vipd_ipam_status_writes_total 7",
            "vipd_ipam_pool_addresses{pool=\"public\",family=\"ipv4\"} 16",
            "vipd_ipam_pool_addresses_used{pool=\"public\",family=\"ipv4\"} 3",
            "vipd_ipam_pending_services 22",
            "vipd_drain_active 1",
            "# TYPE vipd_event_to_wire_seconds histogram",
            "# TYPE vipd_reconcile_duration_seconds histogram",
            "vipd_bfd_up{peer=\"192.0.2.2\",asn=\"65002\"} 1",
            "vipd_bfd_detection_time_seconds{peer=\"192.0.2.2\",asn=\"65002\"} 0.9",
            "vipd_bfd_tx_interval_seconds{peer=\"192.0.2.2\",asn=\"65002\"} 0.3",
            "vipd_bfd_packets_dropped_total{check=\"ttl\"} 2",
            "vipd_bfd_packets_dropped_total{check=\"version\"} 0",
        ] {
            has(&text, line);
        }
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker");
        assert_eq!(
            text.matches("# TYPE vipd_bgp_session_established ").count(),
            1
        );
    }

    #[test]
    fn openmetrics_when_asked_for_it() {
        let f = Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ));
        assert_eq!(f, Format::OpenMetrics);
        assert!(f.content_type().starts_with("application/openmetrics-text"));
        let text = encode(&report(), f).unwrap();
        has(&text, "# TYPE vipd_bgp_updates_sent counter");
        has(
            &text,
            "vipd_bgp_updates_sent_total{peer=\"192.0.2.2\",asn=\"65002\"} 2",
        );
        has(&text, "# UNIT vipd_event_to_wire_seconds seconds");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain")).content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = report();
        r.ipam.as_mut().unwrap().pools[0].pool = "a\"b\\c".into();
        let text = encode(&r, Format::Prometheus).unwrap();
        assert!(
            text.contains("pool=\"a\\\"b\\\\c\""),
            "{}",
            text.lines()
                .filter(|l| l.contains("pool="))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    #[test]
    fn bfd_up_follows_the_session_down() {
        let mut r = report();
        let bfd = r.peers[0].2.bfd.as_mut().expect("the sample has BFD");
        bfd.state = crate::bfd::packet::State::Down;
        let text = encode(&r, Format::Prometheus).unwrap();
        has(&text, "vipd_bfd_up{peer=\"192.0.2.2\",asn=\"65002\"} 0");
        bfd_status_init(&mut r);
        let text = encode(&r, Format::Prometheus).unwrap();
        has(&text, "vipd_bfd_up{peer=\"192.0.2.2\",asn=\"65002\"} 0");
    }

    fn bfd_status_init(r: &mut Report) {
        r.peers[0].2.bfd.as_mut().unwrap().state = crate::bfd::packet::State::Init;
    }
}
