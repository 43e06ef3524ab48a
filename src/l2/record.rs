//! What a node writes into its Lease, `vipd-l2-<node>`, and reads from the
//! others': whether it can take VIPs, the Local VIPs it has an endpoint
//! for, and its claims with their epochs, as three annotations. Anyone who
//! may write Leases in that namespace can write these, so reading is
//! bounded and forgiving: an entry that does not parse is skipped and
//! counted, never trusted and never fatal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub const CLAIMS: &str = "vipd.io/l2-claims";
pub const LOCAL: &str = "vipd.io/l2-local";
pub const READY: &str = "vipd.io/l2-ready";
pub const REFUSED: &str = "vipd.io/l2-refused";
/// Where the node runs BFD on the L2 segment (`fast_failover`).
pub const ADDRESS: &str = "vipd.io/l2-address";
/// The Leases' name prefix, and the label that marks them.
pub const PREFIX: &str = "vipd-l2-";
pub const LABEL: &str = "vipd.io/l2";
/// More entries than any node could hold (a Lease's annotations are at
/// most 256 KiB): the rest of a longer list is ignored.
const MAX_ENTRIES: usize = 16_384;
/// Epochs grow by one per takeover: one past this was written by hand, and
/// honoured it would leave no room above it (a VIP stuck with a dead
/// node's claim).
pub const MAX_EPOCH: u64 = 1 << 53;

/// One node's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// None when ready, else why not (`"draining"`, `"carrier down on eth0"`,
    /// `"stopping"`).
    pub not_ready: Option<String>,
    pub local: BTreeSet<IpAddr>,
    pub claims: BTreeMap<IpAddr, u64>,
    /// Addresses it cannot answer for (see `owner::NodeView::refused`).
    pub refused: BTreeSet<IpAddr>,
    /// Its address on the L2 segment, with `fast_failover`: only a hint
    /// of where to run BFD (a session to a wrong one never comes up, and
    /// nothing is taken without unanswered probes).
    pub address: Option<IpAddr>,
}

/// The annotations for a record.
pub fn write(r: &Record) -> BTreeMap<String, String> {
    let claims: Vec<String> = r.claims.iter().map(|(a, e)| format!("{a}={e}")).collect();
    let list = |s: &BTreeSet<IpAddr>| {
        s.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = BTreeMap::from([
        (CLAIMS.to_string(), claims.join(",")),
        (LOCAL.to_string(), list(&r.local)),
        (REFUSED.to_string(), list(&r.refused)),
        (
            READY.to_string(),
            r.not_ready.clone().unwrap_or_else(|| "true".into()),
        ),
    ]);
    if let Some(a) = r.address {
        out.insert(ADDRESS.to_string(), a.to_string());
    }
    out
}

/// A record from a Lease's annotations, and how many entries were skipped.
pub fn read(annotations: &BTreeMap<String, String>) -> (Record, usize) {
    let mut bad = 0;
    let get = |k: &str| annotations.get(k).map(String::as_str).unwrap_or("");
    let mut claims = BTreeMap::new();
    for e in get(CLAIMS)
        .split(',')
        .filter(|e| !e.is_empty())
        .take(MAX_ENTRIES)
    {
        let parsed = e.split_once('=').and_then(|(a, n)| {
            let n: u64 = n.trim().parse().ok()?;
            Some((a.trim().parse().ok()?, n)).filter(|_| n <= MAX_EPOCH)
        });
        match parsed {
            Some((a, n)) => {
                claims.insert(a, n);
            }
            None => bad += 1,
        }
    }
    let mut set = |k: &str| {
        let mut out = BTreeSet::new();
        for e in get(k)
            .split(',')
            .filter(|e| !e.is_empty())
            .take(MAX_ENTRIES)
        {
            match e.trim().parse() {
                Ok(a) => {
                    out.insert(a);
                }
                Err(_) => bad += 1,
            }
        }
        out
    };
    let local = set(LOCAL);
    let refused = set(REFUSED);
    let address = match annotations.get(ADDRESS).map(|a| a.trim().parse::<IpAddr>()) {
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            bad += 1;
            None
        }
        None => None,
    };
    // Missing or anything but "true": not ready. A node says when it can.
    let not_ready = match annotations.get(READY).map(String::as_str) {
        Some("true") => None,
        Some(why) => Some(why.chars().take(200).collect()),
        None => Some("no record".into()),
    };
    (
        Record {
            not_ready,
            local,
            claims,
            refused,
            address,
        },
        bad,
    )
}

/// The Lease's name for a node; None where the name would not be a valid
/// object name (253 characters at most).
pub fn lease_name(node: &str) -> Option<String> {
    let n = format!("{PREFIX}{node}");
    (n.len() <= 253).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        let r = Record {
            not_ready: None,
            local: ["192.0.2.20".parse().unwrap()].into(),
            claims: [
                ("192.0.2.10".parse().unwrap(), 3),
                ("2001:db8::10".parse().unwrap(), 3),
            ]
            .into(),
            refused: ["192.0.2.30".parse().unwrap()].into(),
            address: Some("192.0.2.1".parse().unwrap()),
        };
        assert_eq!(read(&write(&r)), (r.clone(), 0));
        let draining = Record {
            not_ready: Some("draining".into()),
            ..Record::default()
        };
        assert_eq!(read(&write(&draining)).0, draining);
    }

    /// The name the RBAC, the other nodes and `kubectl` look for, and
    /// none for a node whose name would make it longer than an object
    /// name may be.
    #[test]
    fn a_nodes_lease_is_named_after_it_within_the_object_name_limit() {
        assert_eq!(lease_name("node-a").as_deref(), Some("vipd-l2-node-a"));
        let longest = "n".repeat(253 - PREFIX.len());
        assert_eq!(lease_name(&longest).map(|n| n.len()), Some(253));
        assert_eq!(lease_name(&format!("{longest}n")), None);
    }

    #[test]
    fn a_hostile_record_is_read_as_far_as_it_parses() {
        let a = BTreeMap::from([
            (
                CLAIMS.to_string(),
                "192.0.2.10=2,nonsense,192.0.2.11=x,=,192.0.2.12=18446744073709551615".to_string(),
            ),
            (LOCAL.to_string(), "192.0.2.20,,::zz".to_string()),
            (READY.to_string(), "y".repeat(10_000)),
            (ADDRESS.to_string(), "192.0.2.1:3784".to_string()),
        ]);
        let (r, bad) = read(&a);
        assert_eq!(bad, 6, "an epoch past any takeover count is skipped too");
        assert_eq!(r.address, None);
        assert_eq!(r.claims.len(), 1);
        assert_eq!(r.local.len(), 1);
        assert_eq!(r.not_ready.map(|s| s.len()), Some(200));
        // No record at all: not ready, claims nothing.
        assert_eq!(
            read(&BTreeMap::new()).0.not_ready.as_deref(),
            Some("no record")
        );
    }
}
