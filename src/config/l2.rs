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
    /// BFD between each owner and its successor (`fast_failover`), at
    /// these timers.
    pub fast_failover: Option<FastFailover>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastFailover {
    pub interval: Duration,
    pub multiplier: u8,
}

impl L2Config {
    /// How long this process may stop running (SIGSTOP, a stalled host)
    /// and still answer from what it knew: a heartbeat, or with fast
    /// failover the BFD detection time, after which a successor may
    /// already have taken its VIPs without this node having seen it.
    pub fn pause_limit(&self) -> Duration {
        match self.fast_failover {
            Some(f) => self.heartbeat.min(f.interval * u32::from(f.multiplier)),
            None => self.heartbeat,
        }
    }
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
    let fast_failover = read_fast_failover(&mut t, lease_duration, errs);
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
        fast_failover,
    })
}

/// `fast_failover`, `bfd_interval_ms`, `bfd_multiplier`.
fn read_fast_failover(t: &mut Tbl, lease_duration: u64, errs: &mut Errs) -> Option<FastFailover> {
    let key = t.path.clone();
    let fast_failover = t.opt("fast_failover", errs, parse_bool).unwrap_or(false);
    // As a BGP peer's BFD keys; the detection time must stay under the
    // lease, or the lease would expire first and BFD would add nothing.
    let bfd_interval = t.opt("bfd_interval_ms", errs, |v| parse_int(v, 10, 60_000));
    let bfd_multiplier = t.opt("bfd_multiplier", errs, |v| parse_int(v, 1, 255));
    for (set, k) in [
        (bfd_interval.is_some(), "bfd_interval_ms"),
        (bfd_multiplier.is_some(), "bfd_multiplier"),
    ] {
        if set && !fast_failover {
            errs.push(
                format!("{key}.{k}"),
                "applies to fast failover: set fast_failover = true",
            );
        }
    }
    let bfd_interval = bfd_interval.unwrap_or(100) as u64;
    let bfd_multiplier = bfd_multiplier.unwrap_or(3) as u64;
    if fast_failover && bfd_interval * bfd_multiplier >= lease_duration * 1000 {
        errs.push(
            format!("{key}.bfd_interval_ms"),
            format!("{bfd_interval} ms x bfd_multiplier {bfd_multiplier} is not shorter than lease_duration_secs ({lease_duration} s): BFD would notice a dead owner no sooner than its Lease"),
        );
    }
    fast_failover.then(|| FastFailover {
        interval: Duration::from_millis(bfd_interval),
        multiplier: bfd_multiplier as u8,
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

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::time::Duration;

    const BASE: &str =
        "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[kubernetes]\nnode_name = \"n\"\n[l2]\ninterfaces = [\"eth0\"]\n";

    fn cfg(extra: &str) -> Result<Config, Vec<String>> {
        Config::from_toml_str(&format!("{BASE}{extra}"))
            .map_err(|p| p.0.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn fast_failover_takes_bfd_timers_shorter_than_the_lease() {
        let l2 = |e: &str| cfg(e).unwrap().l2.unwrap();
        assert_eq!(l2("").fast_failover, None);
        let f = l2("fast_failover = true\n").fast_failover.unwrap();
        assert_eq!((f.interval, f.multiplier), (Duration::from_millis(100), 3));
        let f = l2("fast_failover = true\nbfd_interval_ms = 50\nbfd_multiplier = 4\n")
            .fast_failover
            .unwrap();
        assert_eq!((f.interval, f.multiplier), (Duration::from_millis(50), 4));
        assert_eq!(
            cfg("bfd_interval_ms = 50\n").unwrap_err(),
            ["l2.bfd_interval_ms: applies to fast failover: set fast_failover = true"]
        );
        // 1 s x 3 is the 3 s lease itself: BFD would add nothing.
        let e = cfg("fast_failover = true\nbfd_interval_ms = 1000\n").unwrap_err();
        assert!(e[0].starts_with("l2.bfd_interval_ms: 1000 ms x bfd_multiplier 3 is not shorter than lease_duration_secs (3 s)"), "{e:?}");
        assert!(cfg("fast_failover = true\nbfd_interval_ms = 999\n").is_ok());
        let e = cfg("fast_failover = true\nbfd_multiplier = 0\n").unwrap_err();
        assert!(e[0].starts_with("l2.bfd_multiplier: "), "{e:?}");
    }

    #[test]
    fn each_bad_key_is_named_with_its_reason() {
        let e = cfg(
            "heartbeat_secs = 3\nlease_duration_secs = 3\nannounce_ms = [0, 0]\nrefresh_secs = 1\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e.iter().any(|m| m
                .starts_with("l2.lease_duration_secs: 3 is not longer than heartbeat_secs (3)")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("l2.announce_ms: [1]: 0 is not after")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("l2.refresh_secs: ")),
            "{e:?}"
        );
    }
}
