//! Fast failover's BFD sessions (I/O): one with each partner
//! [`super::state::State::partners`] names, on the process's shared BFD
//! sockets, each reporting to the L2 loop when it comes up and when it
//! expires. A session that ends because its partner stopped it
//! (AdminDown, a drain or a stop: that node hands over by itself) reports
//! nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::bfd::io::{Bfd, Handle, Peer};
use crate::bfd::packet::{diag, State};
use crate::config::FastFailover;
use crate::task::Owned;

/// A partner's session came up, or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub node: String,
    pub up: bool,
}

struct Session {
    remote: IpAddr,
    handle: Option<Handle>,
    _forward: Owned<()>,
}

pub struct Partners {
    bfd: Bfd,
    cfg: FastFailover,
    sessions: BTreeMap<String, Session>,
    tx: mpsc::Sender<Change>,
}

/// Pure: what a session's move from `from` to `to` (with `diag`) tells
/// the loop. Only an Up session that expired counts as a failure.
pub fn change(from: State, to: State, d: u8) -> Option<bool> {
    match (from, to) {
        (State::Up, State::Down) if d == diag::DETECTION_EXPIRED => Some(false),
        (f, State::Up) if f != State::Up => Some(true),
        _ => None,
    }
}

impl Partners {
    pub fn new(bfd: Bfd, cfg: FastFailover) -> (Partners, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(64);
        let p = Partners {
            bfd,
            cfg,
            sessions: BTreeMap::new(),
            tx,
        };
        (p, rx)
    }

    /// Sessions with exactly `want` (node -> its address), from `local`.
    pub fn set(&mut self, want: &BTreeMap<String, IpAddr>, local: Option<IpAddr>) {
        let stale: Vec<String> = (self.sessions.iter())
            .filter(|(n, s)| want.get(*n) != Some(&s.remote))
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            if let Some(h) = self.sessions.remove(&n).and_then(|mut s| s.handle.take()) {
                tokio::spawn(h.admin_down());
            }
        }
        let Some(local) = local else { return };
        for (node, remote) in want {
            if self.sessions.contains_key(node) || remote.is_ipv4() != local.is_ipv4() {
                continue;
            }
            self.add(node, *remote, local);
        }
    }

    fn add(&mut self, node: &str, remote: IpAddr, local: IpAddr) {
        let peer = Peer {
            remote,
            local,
            multihop: false,
            min_ttl: 255,
            cfg: crate::bfd::machine::Config {
                interval: self.cfg.interval,
                detect_mult: self.cfg.multiplier,
            },
            scope: 0,
        };
        let h = match self.bfd.add(peer) {
            Ok(h) => h,
            Err(e) => {
                warn!(node, %remote, error = %e, "L2: cannot start the fast failover BFD session");
                return;
            }
        };
        info!(node, %remote, "L2: fast failover BFD session with this VIP partner");
        let mut status = h.status.clone();
        let tx = self.tx.clone();
        let name = node.to_string();
        let forward = Owned::spawn(async move {
            let mut last = status.borrow().state;
            while status.changed().await.is_ok() {
                let s = status.borrow_and_update().clone();
                if let Some(up) = change(last, s.state, s.diag) {
                    let node = name.clone();
                    if tx.send(Change { node, up }).await.is_err() {
                        break;
                    }
                }
                last = s.state;
            }
        });
        let s = Session {
            remote,
            handle: Some(h),
            _forward: forward,
        };
        self.sessions.insert(node.to_string(), s);
    }

    /// Each partner's session state, for `vipd status`.
    pub fn states(&self) -> BTreeMap<String, String> {
        (self.sessions.iter())
            .map(|(n, s)| {
                let st = s.handle.as_ref().map(|h| h.status.borrow().state);
                (n.clone(), st.map_or("stopped", State::name).to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_up_session_that_expired_is_a_failure() {
        use State::*;
        assert_eq!(change(Up, Down, diag::DETECTION_EXPIRED), Some(false));
        assert_eq!(
            change(Up, Down, diag::NEIGHBOR_DOWN),
            None,
            "the partner saw us down"
        );
        assert_eq!(change(Up, AdminDown, diag::ADMIN_DOWN), None);
        assert_eq!(
            change(Up, Down, diag::ADMIN_DOWN),
            None,
            "the partner stopped it"
        );
        assert_eq!(
            change(Init, Down, diag::DETECTION_EXPIRED),
            None,
            "never up"
        );
        assert_eq!(change(Init, Up, diag::NONE), Some(true));
        assert_eq!(change(Up, Up, diag::NONE), None);
    }
}
