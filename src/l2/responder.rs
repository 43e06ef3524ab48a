//! One task per L2 interface: reads ARP and neighbour discovery from its
//! packet sockets, answers for the addresses this node holds, sends the
//! announcements it is told to, and reports another node claiming one of
//! ours. What it may answer for arrives as a whole set with a stamp the
//! owning task refreshes every tick: a set not refreshed within the gate
//! (the process was stopped, the host stalled) answers nothing, not even a
//! request that waited in the socket meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::net::{self, Link, Socket};
use super::packet::{self, Seen};

/// What the owning task shares with the responders.
pub struct Gate {
    base: Instant,
    /// Milliseconds after `base` of the owner's last tick.
    stamp: AtomicU64,
    pub limit: Duration,
}

impl Gate {
    pub fn new(limit: Duration) -> Gate {
        Gate {
            base: Instant::now(),
            stamp: AtomicU64::new(0),
            limit,
        }
    }

    pub fn refresh(&self) {
        self.stamp
            .store(self.base.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether the owner's view is fresh enough to answer from.
    pub fn open(&self) -> bool {
        fresh(
            self.base.elapsed().as_millis() as u64,
            self.stamp.load(Ordering::SeqCst),
            self.limit,
        )
    }
}

/// Pure: a view stamped at `stamp` may be answered from at `now` (both in
/// milliseconds) while no more than `limit` has passed.
pub fn fresh(now: u64, stamp: u64, limit: Duration) -> bool {
    now.saturating_sub(stamp) <= limit.as_millis() as u64
}

/// What the owning task tells a responder.
pub enum Command {
    Announce(IpAddr),
    /// Ask whether anyone answers for an address (fast failover).
    Probe(IpAddr),
}

/// Another node answering for one of ours, or for an address probed,
/// seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub ip: IpAddr,
    pub mac: packet::Mac,
    /// An answer to a probe, not a claim on an address of ours.
    pub probed: bool,
}

/// How long after a probe an answer to it is reported.
const PROBE_HEARD: Duration = Duration::from_secs(1);

/// Counters the responders keep for the metrics.
#[derive(Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub announced: AtomicU64,
    pub conflicts: AtomicU64,
    /// Asks for one of ours dropped because the gate was shut.
    pub gated: AtomicU64,
}

pub struct Responder {
    pub link: Link,
    pub set: watch::Receiver<Arc<BTreeSet<IpAddr>>>,
    pub commands: mpsc::Receiver<Command>,
    pub conflicts: mpsc::Sender<Conflict>,
    pub gate: Arc<Gate>,
    pub counters: Arc<Counters>,
}

impl Responder {
    pub async fn run(mut self) {
        let arp = match Socket::arp(&self.link) {
            Ok(s) => s,
            Err(e) => {
                warn!(interface = %self.link.name, error = %e, "L2: cannot open the ARP socket: not answering on it");
                return;
            }
        };
        let nd = Socket::nd(&self.link)
            .inspect_err(|e| warn!(interface = %self.link.name, error = %e, "L2: cannot open the IPv6 socket: no IPv6 VIPs answered on it"))
            .ok();
        let mut groups = net::Groups::new(&self.link).ok();
        let mut joined: BTreeSet<std::net::Ipv6Addr> = BTreeSet::new();
        let (mut b4, mut b6) = (vec![0u8; 1600], vec![0u8; 1600]);
        let mut probed: BTreeMap<IpAddr, Instant> = BTreeMap::new();
        loop {
            self.join(&mut groups, &mut joined);
            tokio::select! {
                r = arp.recv(&mut b4) => match r {
                    Ok(n) => self.seen(&arp, &b4[..n], &probed),
                    Err(e) => { warn!(error = %e, "L2: ARP socket"); tokio::time::sleep(Duration::from_millis(100)).await; }
                },
                r = recv_opt(nd.as_ref(), &mut b6) => match r {
                    Ok(n) => self.seen(nd.as_ref().unwrap_or(&arp), &b6[..n], &probed),
                    Err(e) => { warn!(error = %e, "L2: IPv6 socket"); tokio::time::sleep(Duration::from_millis(100)).await; }
                },
                c = self.commands.recv() => match c {
                    Some(Command::Announce(ip)) => self.announce(&arp, nd.as_ref(), ip),
                    Some(Command::Probe(ip)) => {
                        probed.retain(|_, t| t.elapsed() < PROBE_HEARD);
                        probed.insert(ip, Instant::now());
                        self.probe(&arp, nd.as_ref(), ip);
                    }
                    None => break,
                },
                r = self.set.changed() => if r.is_err() { break },
            }
        }
        if let Some(g) = groups.as_mut() {
            for v in std::mem::take(&mut joined) {
                g.leave(v);
            }
        }
    }

    /// Joins the solicited-node group of each IPv6 address answered for
    /// and leaves those no longer.
    fn join(&self, groups: &mut Option<net::Groups>, joined: &mut BTreeSet<std::net::Ipv6Addr>) {
        let Some(g) = groups.as_mut() else { return };
        let want: BTreeSet<std::net::Ipv6Addr> = (self.set.borrow().iter())
            .filter_map(|ip| match ip {
                IpAddr::V6(v) => Some(*v),
                IpAddr::V4(_) => None,
            })
            .collect();
        for v in joined.difference(&want).copied().collect::<Vec<_>>() {
            g.leave(v);
            joined.remove(&v);
        }
        for v in want.difference(joined).copied().collect::<Vec<_>>() {
            match g.join(v) {
                Ok(()) => {
                    joined.insert(v);
                }
                Err(e) => debug!(vip = %v, error = %e, "L2: joining the solicited-node group"),
            }
        }
    }

    fn seen(&self, sock: &Socket, frame: &[u8], probed: &BTreeMap<IpAddr, Instant>) {
        let Some(seen) = packet::parse(frame, self.link.mac) else {
            return;
        };
        let ours = |ip: &IpAddr| self.set.borrow().contains(ip);
        match seen {
            Seen::Ask(ask) if ours(&ask.target) => {
                if !self.gate.open() {
                    self.counters.gated.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if let Some(f) = packet::answer(&ask, self.link.mac) {
                    match sock.send(&f) {
                        Ok(()) => {
                            self.counters.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => debug!(error = %e, "L2: sending an answer"),
                    }
                }
            }
            Seen::Claim { ip, mac } if mac != self.link.mac && ours(&ip) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                let probed = false;
                let _ = self.conflicts.try_send(Conflict { ip, mac, probed });
            }
            Seen::Claim { ip, mac }
                if mac != self.link.mac
                    && probed.get(&ip).is_some_and(|t| t.elapsed() < PROBE_HEARD) =>
            {
                let probed = true;
                let _ = self.conflicts.try_send(Conflict { ip, mac, probed });
            }
            _ => {}
        }
    }

    fn probe(&self, arp: &Socket, nd: Option<&Socket>, ip: IpAddr) {
        let sock = if ip.is_ipv4() { Some(arp) } else { nd };
        let f = packet::probe(ip, self.link.mac);
        if let Some(Err(e)) = sock.map(|s| s.send(&f)) {
            debug!(vip = %ip, error = %e, "L2: sending a probe");
        }
    }

    fn announce(&self, arp: &Socket, nd: Option<&Socket>, ip: IpAddr) {
        if !self.set.borrow().contains(&ip) || !self.gate.open() {
            return;
        }
        let sock = if ip.is_ipv4() { Some(arp) } else { nd };
        let f = packet::announce(ip, self.link.mac);
        match sock.map(|s| s.send(&f)) {
            Some(Ok(())) => {
                self.counters.announced.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(e)) => debug!(vip = %ip, error = %e, "L2: sending an announcement"),
            None => {}
        }
    }
}

async fn recv_opt(s: Option<&Socket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match s {
        Some(s) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_older_than_the_gate_answers_nothing() {
        let s = Duration::from_secs(1);
        assert!(fresh(10_000, 9_900, s));
        assert!(fresh(10_000, 9_000, s));
        assert!(!fresh(10_001, 9_000, s), "paused past a heartbeat");
        assert!(
            fresh(5, 10, s),
            "a stamp from the future is fresh, not an underflow"
        );
    }
}
