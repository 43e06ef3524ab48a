//! `[l2]`: answering ARP and neighbour solicitations for VIPs on racks
//! without BGP, and which VIPs use it (with a pool's `mode` and the
//! `vipd.io/announce` annotation).

use std::time::Duration;

use config::ValueKind;

use super::ipam::check_dns_name;
use super::{check_ifname, parse_bool, parse_int, parse_list, parse_str, Errs, Tbl, Value};

/// How a VIP reaches the network: BGP (the default), L2, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Bgp,
    L2,
    Both,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "bgp" => Ok(Mode::Bgp),
            "l2" => Ok(Mode::L2),
            "both" => Ok(Mode::Both),
            _ => Err(format!("{s:?} is not one of \"bgp\", \"l2\", \"both\"")),
        }
    }

    pub fn bgp(self) -> bool {
        self != Mode::L2
    }

    pub fn l2(self) -> bool {
        self != Mode::Bgp
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bgp => "bgp",
            Mode::L2 => "l2",
            Mode::Both => "both",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Config {
    pub interfaces: Vec<String>,
    pub lease_namespace: String,
    pub heartbeat: Duration,
    pub lease_duration: Duration,
    pub announce: Vec<Duration>,
    pub refresh: Duration,
    /// VIPs that neither a pool nor an annotation places use L2.
    pub default: bool,
}

pub(super) fn read_l2(mut t: Tbl, errs: &mut Errs) -> Option<L2Config> {
    let key = t.path.clone();
    let interfaces = t.req("interfaces", errs, |v| {
        let l = parse_list(v, |s| check_ifname(s).map(|_| s.to_string()))?;
        if l.is_empty() {
            return Err("is empty: name the interfaces to answer on".into());
        }
        Ok(l)
    });
    let lease_namespace = t
        .opt("lease_namespace", errs, |v| {
            let s = parse_str(v)?;
            check_dns_name(&s)?;
            Ok(s)
        })
        .unwrap_or_else(|| "kube-system".into());
    let heartbeat = t
        .opt("heartbeat_secs", errs, |v| parse_int(v, 1, 60))
        .unwrap_or(1) as u64;
    let lease_duration = t
        .opt("lease_duration_secs", errs, |v| parse_int(v, 2, 300))
        .unwrap_or(3) as u64;
    if lease_duration <= heartbeat {
        errs.push(
            format!("{key}.lease_duration_secs"),
            format!("{lease_duration} is not longer than heartbeat_secs ({heartbeat}): one late renewal would hand every VIP over"),
        );
    }
    // Accepted only as off: the BFD handover between an owner and its
    // successor is not built yet, and a key that does nothing must not
    // look as if it did.
    if let Some(true) = t.opt("fast_failover", errs, parse_bool) {
        errs.push(
            format!("{key}.fast_failover"),
            "not supported yet: failover takes the lease duration plus one heartbeat",
        );
    }
    let announce = t
        .opt("announce_ms", errs, parse_offsets)
        .unwrap_or_else(|| [0, 1100, 2200, 4400].map(Duration::from_millis).to_vec());
    let refresh = t
        .opt("refresh_secs", errs, |v| parse_int(v, 10, 3600))
        .unwrap_or(120) as u64;
    let default = t.opt("default", errs, parse_bool).unwrap_or(false);
    t.finish(errs);
    Some(L2Config {
        interfaces: interfaces?,
        lease_namespace,
        heartbeat: Duration::from_secs(heartbeat),
        lease_duration: Duration::from_secs(lease_duration),
        announce,
        refresh: Duration::from_secs(refresh),
        default,
    })
}

/// `announce_ms`: rising offsets within a minute, at most 16.
fn parse_offsets(v: Value) -> Result<Vec<Duration>, String> {
    let ValueKind::Array(a) = v.kind else {
        return Err("expected an array of milliseconds, e.g. [0, 1100, 2200, 4400]".into());
    };
    if a.is_empty() || a.len() > 16 {
        return Err(format!("has {} offsets: give 1 to 16", a.len()));
    }
    let mut out: Vec<Duration> = vec![];
    for (i, x) in a.into_iter().enumerate() {
        let ms = parse_int(x, 0, 60_000).map_err(|e| format!("[{i}]: {e}"))?;
        let d = Duration::from_millis(ms as u64);
        if out.last().is_some_and(|l| *l >= d) {
            return Err(format!("[{i}]: {ms} is not after the offset before it"));
        }
        out.push(d);
    }
    Ok(out)
}

/// A pool's `mode`.
pub(super) fn parse_mode(v: Value) -> Result<Mode, String> {
    Mode::parse(&parse_str(v)?)
}
