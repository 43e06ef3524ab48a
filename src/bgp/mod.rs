//! The BGP speaker: one listener, one task per peer, one table.
//!
//! The daemon hands the speaker a whole [`rib::Table`]; the speaker publishes
//! it on a `watch` channel and every established session brings its peer up
//! to date by diffing against its own Adj-RIB-Out. Peers are keyed by
//! address or, unnumbered, by interface; the listener passes a connection
//! to the task of the peer it comes from and closes any other.

pub mod attrs;
pub mod fsm;
pub mod negotiate;
pub mod net;
pub mod restart;
pub mod rib;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{BgpConfig, PeerAddr};
use rib::Table;
use session::{Command, PeerStatus, Settings};

type Registry = Arc<Mutex<Routes>>;

/// Whose task an accepted connection goes to.
#[derive(Default)]
struct Routes {
    by_addr: HashMap<IpAddr, mpsc::Sender<Command>>,
    /// Unnumbered peers, by interface, with the neighbour heard there.
    by_interface: HashMap<String, (mpsc::Sender<Command>, watch::Receiver<Option<Ipv6Addr>>)>,
}

impl Routes {
    fn insert(
        &mut self,
        at: &PeerAddr,
        tx: mpsc::Sender<Command>,
        ra: Option<&crate::ra::io::Handle>,
    ) {
        match (at, ra) {
            (PeerAddr::Ip(a), _) => {
                self.by_addr.insert(*a, tx);
            }
            (PeerAddr::Interface(n), Some(h)) => {
                self.by_interface
                    .insert(n.clone(), (tx, h.neighbor.clone()));
            }
            (PeerAddr::Interface(_), None) => {}
        }
    }

    fn remove(&mut self, at: &PeerAddr) {
        match at {
            PeerAddr::Ip(a) => drop(self.by_addr.remove(a)),
            PeerAddr::Interface(n) => drop(self.by_interface.remove(n)),
        }
    }

    /// The task for a connection from `from`: a link-local address goes to
    /// the unnumbered peer of the interface it came in on.
    fn find(&self, from: SocketAddr) -> Option<mpsc::Sender<Command>> {
        match from {
            SocketAddr::V6(a) if a.ip().is_unicast_link_local() => {
                let (tx, heard) = self
                    .by_interface
                    .get(&crate::sockopt::if_name(a.scope_id())?)?;
                unnumbered_accepts(*heard.borrow(), *a.ip()).then(|| tx.clone())
            }
            _ => self.by_addr.get(&from.ip().to_canonical()).cloned(),
        }
    }
}

/// An unnumbered peer's connection is accepted from the neighbour heard on
/// the interface, or from any link-local address there while none has been
/// (a neighbour that sends no Router Advertisements, BIRD without `radv`,
/// can still connect).
fn unnumbered_accepts(heard: Option<Ipv6Addr>, from: Ipv6Addr) -> bool {
    heard.is_none_or(|h| h == from)
}

struct Peer {
    settings: Settings,
    tx: mpsc::Sender<Command>,
    task: crate::task::Owned<()>,
    status: Arc<Mutex<PeerStatus>>,
    /// The peer's BFD session, with `bfd = true`.
    bfd: Option<crate::bfd::io::Handle>,
    /// The Router Advertisements on an unnumbered peer's interface.
    ra: Option<crate::ra::io::Handle>,
    /// An unnumbered peer's TCP MD5 key on the listener, following the
    /// neighbour heard.
    md5: Option<crate::task::Owned<()>>,
}

struct Listener {
    addr: SocketAddr,
    sock: Arc<TcpListener>,
    /// Held only: the accept loop ends with the listener.
    _accept: crate::task::Owned<()>,
}

/// The table sessions converge to; `None` until the daemon's sources are
/// ready (the Kubernetes readiness barrier): sessions may come up, but send
/// nothing, not even End-of-RIB, so graceful-restart peers keep what they
/// had meanwhile.
pub type Published = Option<Offer>;

/// A table offered to the sessions.
#[derive(Debug, Clone)]
pub struct Offer {
    pub table: Arc<Table>,
    /// When the oldest Kubernetes event behind this table reached vipd:
    /// sessions measure event-to-wire latency from it.
    pub since: Option<std::time::Instant>,
}

pub struct Speaker {
    table: watch::Sender<Published>,
    peers: HashMap<PeerAddr, Peer>,
    registry: Registry,
    listener: Option<Listener>,
    router_id: std::net::Ipv4Addr,
    /// Back from a graceful stop, and still starting (see [`Speaker::started`]).
    restarted: bool,
    /// The BFD sessions, once a peer has one.
    bfd: Option<crate::bfd::io::Bfd>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("bgp.listen: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

fn settings(bgp: &BgpConfig) -> Vec<Settings> {
    bgp.peers
        .iter()
        .map(|p| Settings {
            peer: p.clone(),
            local_asn: p.local_asn.unwrap_or(bgp.asn),
            router_id: bgp.router_id,
            graceful_restart: bgp.graceful_restart.then_some(bgp.restart_time),
        })
        .collect()
}

impl Speaker {
    /// `restarted`: vipd is back from a graceful stop within its restart
    /// time, so the first OPEN of each configured peer sets the Restart
    /// State bit (RFC 4724 section 3).
    pub fn start(
        bgp: &BgpConfig,
        table: Option<Arc<Table>>,
        restarted: bool,
    ) -> Result<Speaker, SpeakerError> {
        let (tx, _) = watch::channel(table.map(|table| Offer { table, since: None }));
        let registry: Registry = Arc::default();
        let listener = match bgp.listen {
            Some(addr) => {
                let sock =
                    net::listen(addr).map_err(|source| SpeakerError::Listen { addr, source })?;
                let sock = Arc::new(sock);
                info!(%addr, "listening for BGP connections");
                let task = crate::task::Owned::spawn(accept_loop(sock.clone(), registry.clone()));
                Some(Listener {
                    addr,
                    sock,
                    _accept: task,
                })
            }
            None => None,
        };
        let mut s = Speaker {
            table: tx,
            peers: HashMap::new(),
            registry,
            listener,
            router_id: bgp.router_id,
            restarted,
            bfd: None,
        };
        for st in settings(bgp) {
            s.add_peer(st, restarted);
        }
        Ok(s)
    }

    /// The start is over: peers added from now on (a reload) are new, not
    /// part of a restart. Until then (peers that wait for the Node's labels)
    /// they get the Restart State bit as the others did.
    pub fn started(&mut self) {
        self.restarted = false;
    }

    fn add_peer(&mut self, settings: Settings, restarted: bool) {
        let addr = settings.peer.address.clone();
        let (tx, rx) = mpsc::channel(8);
        let status = Arc::new(Mutex::new(PeerStatus::default()));
        // Registered before the task can dial: otherwise the peer's own
        // connection, answering ours, could find no session and be closed.
        let ra = addr.interface().map(crate::ra::io::start);
        let md5 = self.on_listener(&settings.peer, ra.as_ref());
        self.registry
            .lock()
            .unwrap()
            .insert(&addr, tx.clone(), ra.as_ref());
        let bfd = self.start_bfd(&settings.peer, ra.as_ref());
        let follows = session::Follows {
            bfd: bfd.as_ref().map(|b| b.status.clone()),
            neighbor: ra.as_ref().map(|h| h.neighbor.clone()),
        };
        let task = crate::task::Owned::spawn(session::run(
            settings.clone(),
            self.table.subscribe(),
            rx,
            status.clone(),
            restarted,
            follows,
        ));
        info!(peer = %addr, asn = %settings.peer.asn, passive = settings.peer.passive, "peer configured");
        self.peers.insert(
            addr,
            Peer {
                settings,
                tx,
                task,
                status,
                bfd,
                ra,
                md5,
            },
        );
    }

    /// The peer's options on the listener: GTSM, and its TCP MD5 key: on
    /// its address, or, unnumbered, on the neighbour heard on its
    /// interface, which a task follows.
    fn on_listener(
        &self,
        p: &crate::config::PeerConfig,
        ra: Option<&crate::ra::io::Handle>,
    ) -> Option<crate::task::Owned<()>> {
        let l = self.listener.as_ref()?;
        let (fd, v6) = (l.sock.as_raw_fd_ref(), l.addr.is_ipv6());
        if p.ttl_security {
            let _ = net::set_ttl(&fd, v6, 255);
        }
        let key = p.password.clone()?;
        match (p.address.ip(), ra) {
            (Some(ip), _) => {
                if let Err(e) = net::set_md5(&fd, v6, ip, Some(key.expose())) {
                    warn!(peer = %p.address, "cannot set the TCP MD5 key on the listener: {e}");
                }
                None
            }
            (None, Some(h)) => Some(crate::task::Owned::spawn(follow_md5_key(
                l.sock.clone(),
                v6,
                key,
                h.neighbor.clone(),
            ))),
            (None, None) => None,
        }
    }

    /// A BFD session with the peer, when it asks for one: from its source
    /// address (or the kernel's choice), single hop unless it is
    /// configured more than one hop away.
    /// An unnumbered peer's follows the neighbour heard on its interface.
    fn start_bfd(
        &mut self,
        p: &crate::config::PeerConfig,
        ra: Option<&crate::ra::io::Handle>,
    ) -> Option<crate::bfd::io::Handle> {
        let b = p.bfd?;
        let remote = p.address.ip().unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let local = p.source_address.unwrap_or(match remote {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        let peer = crate::bfd::io::Peer {
            remote,
            local,
            multihop: p.ttl.is_some_and(|t| t > 1),
            min_ttl: b.min_ttl,
            cfg: crate::bfd::machine::Config {
                interval: b.interval,
                detect_mult: b.multiplier,
            },
            scope: 0,
        };
        let bfd = self.bfd.get_or_insert_with(crate::bfd::io::Bfd::new);
        let started = match (p.address.interface(), ra) {
            (Some(n), Some(h)) => Ok(bfd.add_following(peer, n, h.neighbor.clone())),
            _ => bfd.add(peer),
        };
        match started {
            Ok(h) => {
                info!(peer = %p.address, interval_ms = b.interval.as_millis() as u64, multiplier = b.multiplier, "BFD session configured");
                Some(h)
            }
            Err(e) => {
                warn!(peer = %p.address, "BFD: cannot start the session: {e}");
                None
            }
        }
    }

    /// The process's BFD sessions, for L2's fast failover to add its own.
    pub fn bfd(&mut self) -> crate::bfd::io::Bfd {
        self.bfd
            .get_or_insert_with(crate::bfd::io::Bfd::new)
            .clone()
    }

    async fn remove_peer(&mut self, addr: &PeerAddr) {
        let Some(mut p) = self.peers.remove(addr) else {
            return;
        };
        self.registry.lock().unwrap().remove(addr);
        let _ = p.tx.send(Command::Deconfigure).await;
        // A session that has not ended by then is aborted with `p`.
        let _ = tokio::time::timeout(Duration::from_secs(3), p.task.join()).await;
        if let Some(b) = p.bfd {
            b.admin_down().await;
        }
        if let Some(l) = &self.listener {
            if p.settings.peer.password.is_some() {
                // Stopped first, so that it sets no key after this.
                drop(p.md5.take());
                let heard = p.ra.as_ref().and_then(|r| *r.neighbor.borrow());
                if let Some(ip) = addr.ip().or(heard.map(IpAddr::V6)) {
                    let _ = net::set_md5(&l.sock.as_raw_fd_ref(), l.addr.is_ipv6(), ip, None);
                }
            }
        }
        info!(peer = %addr, "peer removed");
    }

    /// Replaces the table every session converges to (and marks it ready).
    /// The table is shared, not copied: sessions diff against it and keep
    /// it as what their peer holds.
    pub fn set_table(&self, table: Arc<Table>) {
        self.offer(table, None);
    }

    /// As [`Speaker::set_table`], for a table made from Kubernetes events,
    /// the oldest received at `since`.
    pub fn offer(&self, table: Arc<Table>, since: Option<std::time::Instant>) {
        self.table.send_replace(Some(Offer { table, since }));
    }

    /// The current table, `None` before the first [`Speaker::set_table`]
    /// when started without one.
    pub fn table(&self) -> Option<Arc<Table>> {
        self.table.borrow().as_ref().map(|o| o.table.clone())
    }

    /// Applies a reloaded configuration: peers added, removed or changed are
    /// started, stopped or restarted; the others keep their sessions.
    pub async fn reconfigure(&mut self, bgp: &BgpConfig) {
        // The ASN is each session's own (`local_asn`, or one from the
        // Node's label that may change): a changed one restarts the
        // sessions it is in, below.
        if bgp.router_id != self.router_id {
            warn!("bgp.router_id takes effect only when vipd restarts");
        }
        if bgp.listen != self.listener.as_ref().map(|l| l.addr) {
            warn!("bgp.listen takes effect only when vipd restarts");
        }
        let mut wanted: HashMap<PeerAddr, Settings> = settings(bgp)
            .into_iter()
            .map(|mut s| {
                s.router_id = self.router_id;
                (s.peer.address.clone(), s)
            })
            .collect();
        let current: Vec<PeerAddr> = self.peers.keys().cloned().collect();
        for addr in current {
            match wanted.remove(&addr) {
                Some(s) if s == self.peers[&addr].settings => {}
                Some(s) => {
                    info!(peer = %addr, "peer settings changed: restarting its session");
                    self.remove_peer(&addr).await;
                    self.add_peer(s, false);
                }
                None => self.remove_peer(&addr).await,
            }
        }
        for (_, s) in wanted {
            self.add_peer(s, self.restarted);
        }
    }

    /// Each session's status, with where its peer is and the AS it may
    /// speak.
    pub fn status(&self) -> Vec<(PeerAddr, crate::config::PeerAs, PeerStatus)> {
        let mut v: Vec<_> = self
            .peers
            .iter()
            .map(|(a, p)| {
                let mut st = p.status.lock().unwrap().clone();
                st.bfd = p.bfd.as_ref().map(|b| b.status.borrow().clone());
                // The Established session's neighbour, else the one heard.
                let heard = p.ra.as_ref().and_then(|r| *r.neighbor.borrow());
                st.neighbor = st.neighbor.or(heard);
                // Said even for a passive peer, which never tries.
                if let Some(n) = a.interface().filter(|n| crate::sockopt::if_index(n) == 0) {
                    st.last_error = Some(format!("no interface {n}"));
                }
                (a.clone(), p.settings.peer.asn, st)
            })
            .collect();
        v.sort_by(|(a, ..), (b, ..)| a.cmp(b));
        v
    }

    /// BFD packets dropped, by the check they failed.
    pub fn bfd_drops(&self) -> std::collections::BTreeMap<crate::bfd::packet::Drop, u64> {
        self.bfd
            .as_ref()
            .map(|b| b.drops.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Stops every session: withdrawing first, or (graceful restart) leaving
    /// the routes to the peers until vipd is back.
    pub async fn shutdown(mut self, withdraw: bool) {
        drop(self.listener.take());
        for p in self.peers.values() {
            let _ = p.tx.send(Command::Shutdown { withdraw }).await;
        }
        let mut bfd = vec![];
        for (addr, mut p) in self.peers.drain() {
            if tokio::time::timeout(Duration::from_secs(5), p.task.join())
                .await
                .is_err()
            {
                warn!(peer = %addr, "session did not stop within 5 s");
            }
            bfd.extend(p.bfd);
        }
        // BFD last, AdminDown (RFC 5880 6.8.16): by then each peer has seen
        // the BGP session close without a NOTIFICATION and is keeping the
        // routes for the restart. RFC 5882 4.3 asks a restarting system to
        // send nothing that takes BFD down before its neighbours know a
        // restart is under way: BIRD 2.0 and FRR 8 both take a
        // neighbour's AdminDown for a failure, and FRR then keeps the
        // routes only if it is already helping a restart. The close and the
        // AdminDown race to the peer's event loop: without a pause, BIRD
        // was seen to take the AdminDown first. BFD keeps running through
        // the pause, so nothing expires.
        if !bfd.is_empty() {
            tokio::time::sleep(AFTER_CLOSE).await;
        }
        futures_util::future::join_all(bfd.into_iter().map(|b| b.admin_down())).await;
    }
}

/// From the BGP sessions' close to BFD's AdminDown on a stop: time for the
/// peers to read the close (a LAN delivers it in well under a millisecond).
const AFTER_CLOSE: Duration = Duration::from_millis(200);

/// `AsRawFd` for an `Arc<TcpListener>` without taking it apart.
trait RawFdRef {
    fn as_raw_fd_ref(&self) -> RawFd;
}
struct RawFd(std::os::fd::RawFd);
impl AsRawFd for RawFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}
impl RawFdRef for Arc<TcpListener> {
    fn as_raw_fd_ref(&self) -> RawFd {
        RawFd(self.as_raw_fd())
    }
}

/// An unnumbered peer's TCP MD5 key on the listener, for the neighbour
/// heard on its interface: moved when another is heard. Until one is, a
/// signed connection from the link is not accepted (the kernel has no key
/// for it).
async fn follow_md5_key(
    sock: Arc<TcpListener>,
    v6: bool,
    key: crate::config::Secret,
    mut heard: watch::Receiver<Option<Ipv6Addr>>,
) {
    let mut last = None;
    loop {
        let now = *heard.borrow_and_update();
        if now != last {
            let fd = sock.as_raw_fd_ref();
            if let Some(old) = last {
                let _ = net::set_md5(&fd, v6, IpAddr::V6(old), None);
            }
            if let Some(new) = now {
                if let Err(e) = net::set_md5(&fd, v6, IpAddr::V6(new), Some(key.expose())) {
                    warn!(neighbor = %new, "cannot set the TCP MD5 key on the listener: {e}");
                }
            }
            last = now;
        }
        if heard.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(sock: Arc<TcpListener>, registry: Registry) {
    loop {
        let (stream, from) = match sock.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = registry.lock().unwrap().find(from);
        match tx {
            Some(tx) => {
                if tx.try_send(Command::Incoming(stream)).is_err() {
                    debug!(peer = %from, "session busy; connection dropped");
                }
            }
            None => {
                debug!(%from, "connection from an address that is not a configured peer; closed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnumbered_peer_connects_from_the_neighbour_heard() {
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fe80::a".parse().unwrap(), "fe80::b".parse().unwrap());
        assert!(unnumbered_accepts(Some(a), a));
        assert!(
            !unnumbered_accepts(Some(a), b),
            "another router on the link"
        );
        assert!(unnumbered_accepts(None, b), "none heard yet");
    }

    #[test]
    fn each_session_speaks_its_peers_local_asn_or_the_nodes() {
        let c = crate::config::Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
             [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
             [[bgp.peers]]\naddress = \"192.0.2.3\"\nasn = 65003\nlocal_asn = 4200000100\n",
        )
        .unwrap();
        let s = settings(&c.bgp);
        let asns: Vec<u32> = s.iter().map(|s| s.local_asn).collect();
        assert_eq!(asns, [65010, 4_200_000_100]);
    }
}
