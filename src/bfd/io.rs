//! BFD on the wire: one receive task per (family, port) that checks each
//! datagram (TTL for single hop, `packet::parse`) and hands it to its
//! session by Your Discriminator (or by source while the remote does not
//! know ours yet), and one task per session that runs `machine::Session`:
//! periodic jittered packets, the detection time, Finals, and AdminDown
//! when told to stop. Each session publishes its `Status` on a watch.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::task::Owned;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::machine::{Action, Config, Session};
use super::packet::{self, diag, Drop, Packet, State};

/// RFC 5881 (single hop) and RFC 5883 (multihop) destination ports.
pub const PORT_SINGLE_HOP: u16 = 3784;
pub const PORT_MULTIHOP: u16 = 4784;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub remote: IpAddr,
    /// The address packets leave from (the BGP session's own).
    pub local: IpAddr,
    pub multihop: bool,
    /// The lowest TTL or hop limit accepted from the peer: 255 for single
    /// hop (RFC 5881 section 5); for multihop, configured (RFC 5883
    /// leaves it to the deployment).
    pub min_ttl: u8,
    pub cfg: Config,
    /// The interface a link-local `remote` is on (its index), 0 for any
    /// other address.
    pub scope: u32,
}

impl Peer {
    fn at(&self, ip: IpAddr, port: u16) -> SocketAddr {
        match ip {
            IpAddr::V6(v) if v.is_unicast_link_local() || v.is_unspecified() => {
                SocketAddr::V6(std::net::SocketAddrV6::new(v, port, 0, self.scope))
            }
            _ => SocketAddr::new(ip, port),
        }
    }
}

/// What a session shows: its state, why it last changed, and the
/// negotiated timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub diag: u8,
    pub tx: Duration,
    pub rx: Duration,
    pub detection: Option<Duration>,
    /// The diagnostic of the last time the session went down.
    pub last_down: Option<u8>,
}

/// Packets dropped by each check, over every session.
pub type Drops = Arc<Mutex<BTreeMap<Drop, u64>>>;

#[derive(Default)]
struct Routes {
    /// Each session's queue and the lowest TTL it accepts.
    by_disc: HashMap<u32, (mpsc::Sender<Packet>, u8)>,
    by_peer: HashMap<IpAddr, u32>,
}

/// One receive task per (IPv6, port).
type Receivers = HashMap<(bool, u16), Owned<()>>;

/// The BFD sessions of one process. Clones share them: one receiver per
/// port however many owners add sessions (the BGP speaker's peers and
/// L2's fast failover both do).
#[derive(Default, Clone)]
pub struct Bfd {
    routes: Arc<Mutex<Routes>>,
    receivers: Arc<Mutex<Receivers>>,
    pub drops: Drops,
}

pub struct Handle {
    pub status: watch::Receiver<Status>,
    stop: Option<oneshot::Sender<()>>,
    task: Owned<()>,
}

impl Handle {
    /// A planned stop: AdminDown is sent, so the remote takes it for what
    /// it is, not a failure (RFC 5880 section 6.8.16).
    pub async fn admin_down(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task.join()).await;
    }
}

fn count(drops: &Drops, d: Drop) {
    *drops.lock().unwrap().entry(d).or_default() += 1;
}

impl Bfd {
    pub fn new() -> Bfd {
        Bfd::default()
    }

    /// Starts a session with `peer`.
    pub fn add(&self, peer: Peer) -> io::Result<Handle> {
        let v6 = peer.remote.is_ipv6();
        let port = if peer.multihop {
            PORT_MULTIHOP
        } else {
            PORT_SINGLE_HOP
        };
        self.ensure_receiver(v6, port, !peer.multihop)?;
        let sock = sender(&peer, port)?;
        let (tx, rx) = mpsc::channel(16);
        let disc = {
            let mut r = self.routes.lock().unwrap();
            let mut d = 0;
            while d == 0 || r.by_disc.contains_key(&d) {
                d = fastrand::u32(1..);
            }
            r.by_disc.insert(d, (tx, peer.min_ttl));
            r.by_peer.insert(peer.remote, d);
            d
        };
        let s = Session::new(peer.cfg, disc);
        let (status_tx, status) = watch::channel(status_of(&s, None));
        let (stop_tx, stop) = oneshot::channel();
        let routes = self.routes.clone();
        let task = Owned::spawn(async move {
            run(peer.clone(), s, sock, rx, status_tx, stop).await;
            let mut r = routes.lock().unwrap();
            r.by_disc.remove(&disc);
            if r.by_peer.get(&peer.remote) == Some(&disc) {
                r.by_peer.remove(&peer.remote);
            }
        });
        Ok(Handle {
            status,
            stop: Some(stop_tx),
            task,
        })
    }

    /// A session with whichever neighbour `heard` names (an unnumbered
    /// peer's, `template.remote` aside): started once one is heard,
    /// restarted on another when it changes, Down while there is none.
    /// One handle throughout, as [`Bfd::add`]'s.
    pub fn add_following(
        &self,
        template: Peer,
        ifname: &str,
        heard: watch::Receiver<Option<Ipv6Addr>>,
    ) -> Handle {
        let idle = status_of(&Session::new(template.cfg, 0), None);
        let (status_tx, status) = watch::channel(idle.clone());
        let (stop_tx, stop) = oneshot::channel();
        let on = (template, ifname.to_string());
        let task = Owned::spawn(follow(self.clone(), on, heard, status_tx, idle, stop));
        Handle {
            status,
            stop: Some(stop_tx),
            task,
        }
    }

    fn ensure_receiver(&self, v6: bool, port: u16, single_hop: bool) -> io::Result<()> {
        let mut rx = self.receivers.lock().unwrap();
        if rx.contains_key(&(v6, port)) {
            return Ok(());
        }
        let any: IpAddr = if v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        // The IPv6 receiver takes IPv6 only: the IPv4 one has the port there.
        let domain = if v6 {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };
        let raw = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if v6 {
            raw.set_only_v6(true)?;
        }
        raw.bind(&SocketAddr::new(any, port).into())?;
        raw.set_nonblocking(true)?;
        let std_sock: std::net::UdpSocket = raw.into();
        crate::sockopt::receive_ttl(&std_sock, v6)?;
        let sock = UdpSocket::from_std(std_sock)?;
        let task = Owned::spawn(receive(
            sock,
            single_hop,
            self.routes.clone(),
            self.drops.clone(),
        ));
        rx.insert((v6, port), task);
        Ok(())
    }
}

/// The session of [`Bfd::add_following`]: its inner session's status
/// forwarded, the inner session replaced as the neighbour changes.
async fn follow(
    bfd: Bfd,
    (template, ifname): (Peer, String),
    mut heard: watch::Receiver<Option<Ipv6Addr>>,
    out: watch::Sender<Status>,
    idle: Status,
    mut stop: oneshot::Receiver<()>,
) {
    let mut cur: Option<(Ipv6Addr, Handle)> = None;
    loop {
        let now = *heard.borrow_and_update();
        if now != cur.as_ref().map(|c| c.0) {
            if let Some((_, h)) = cur.take() {
                h.admin_down().await;
            }
            out.send_replace(idle.clone());
            if let Some(n) = now {
                // The index now: the interface may have come (back) since.
                let peer = Peer {
                    remote: IpAddr::V6(n),
                    scope: crate::sockopt::if_index(&ifname),
                    ..template.clone()
                };
                match bfd.add(peer) {
                    Ok(h) => cur = Some((n, h)),
                    Err(e) => warn!(neighbor = %n, "BFD: cannot start the session: {e}"),
                }
            }
        }
        let inner = cur.as_mut().map(|c| &mut c.1.status);
        tokio::select! {
            r = heard.changed() => if r.is_err() { break },
            s = crate::task::next_value(inner) => { out.send_replace(s); }
            _ = &mut stop => break,
        }
    }
    if let Some((_, h)) = cur {
        h.admin_down().await;
    }
}

/// The session's sending socket: from the local address and a source
/// port in 49152-65535 (RFC 5881 section 4), TTL 255, to the peer.
fn sender(peer: &Peer, port: u16) -> io::Result<UdpSocket> {
    let mut last = None;
    for _ in 0..64 {
        let src = peer.at(peer.local, fastrand::u16(49152..=65535));
        match std::net::UdpSocket::bind(src) {
            Ok(s) => {
                crate::sockopt::set_ttl(&s, peer.remote.is_ipv6(), 255)?;
                s.connect(peer.at(peer.remote, port))?;
                s.set_nonblocking(true)?;
                return UdpSocket::from_std(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free source port")))
}

async fn receive(sock: UdpSocket, single_hop: bool, routes: Arc<Mutex<Routes>>, drops: Drops) {
    let mut buf = [0u8; 256];
    loop {
        if let Err(e) = sock.readable().await {
            warn!("BFD: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let got = sock.try_io(Interest::READABLE, || {
            crate::sockopt::recv_with_ttl(&sock, &mut buf)
        });
        let (n, from, ttl) = match got {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!("BFD: receive: {e}");
                continue;
            }
        };
        if single_hop && ttl != Some(255) {
            count(&drops, Drop::Ttl);
            continue;
        }
        let p = match packet::parse(&buf[..n]) {
            Ok(p) => p,
            Err(d) => {
                count(&drops, d);
                continue;
            }
        };
        let to = {
            let r = routes.lock().unwrap();
            let disc = if p.your_disc != 0 {
                Some(p.your_disc)
            } else {
                r.by_peer.get(&from.ip()).copied()
            };
            disc.and_then(|d| r.by_disc.get(&d).cloned())
        };
        match to {
            Some((_, min)) if ttl.unwrap_or(0) < min => count(&drops, Drop::Ttl),
            Some((tx, _)) => {
                let _ = tx.try_send(p);
            }
            None => count(&drops, Drop::NoSession),
        }
    }
}

fn status_of(s: &Session, last_down: Option<u8>) -> Status {
    let (tx, rx) = s.intervals();
    Status {
        state: s.state,
        diag: s.diag,
        tx,
        rx,
        detection: s.detection_time(),
        last_down,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn send(sock: &UdpSocket, p: &Packet) {
    // A send that fails (no route yet, the link down) is a lost packet:
    // the detection time on the other side is what BFD is for.
    let _ = sock.send(&p.encode()).await;
}

/// One session until stopped.
async fn run(
    peer: Peer,
    mut s: Session,
    sock: UdpSocket,
    mut rx: mpsc::Receiver<Packet>,
    status: watch::Sender<Status>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut next_tx = Instant::now();
    let mut last_tx = next_tx;
    let mut detect: Option<Instant> = None;
    let mut last_down = None;
    loop {
        let actions = tokio::select! {
            _ = tokio::time::sleep_until(next_tx) => {
                send(&sock, &s.packet()).await;
                last_tx = Instant::now();
                next_tx = last_tx + s.jittered(fastrand::f64());
                continue;
            }
            _ = sleep_until(detect) => {
                detect = None;
                s.expired()
            }
            Some(p) = rx.recv() => {
                let a = s.receive(&p);
                detect = s.detection_time().map(|d| Instant::now() + d);
                a
            }
            _ = &mut stop => break,
        };
        for a in actions {
            match a {
                Action::SendFinal(f) => send(&sock, &f).await,
                Action::SendNow => next_tx = Instant::now(),
                Action::Reschedule => {
                    next_tx = next_tx.min(last_tx + s.jittered(fastrand::f64()));
                }
                Action::StateChanged { from, to, diag } => {
                    info!(peer = %peer.remote, from = from.name(), to = to.name(),
                        diag = diag::name(diag), "BFD session state");
                    if to == State::Down {
                        last_down = Some(diag);
                    }
                }
            }
        }
        status.send_if_modified(|st| {
            let now = status_of(&s, last_down);
            let changed = *st != now;
            *st = now;
            changed
        });
    }
    s.admin_down();
    info!(peer = %peer.remote, "BFD session state AdminDown: vipd stops it");
    let _ = status.send(status_of(&s, last_down));
    // AdminDown for a detection time's worth of packets, so the remote
    // hears it even if one is lost.
    for _ in 0..s.packet().detect_mult.max(3) {
        send(&sock, &s.packet()).await;
        tokio::time::sleep(peer.cfg.interval.min(Duration::from_secs(1))).await;
    }
}
