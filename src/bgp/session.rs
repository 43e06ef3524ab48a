//! One task per configured peer: the socket I/O and timers around the pure
//! [`Fsm`], the OPEN negotiation, connection collisions (RFC 4271 6.8) and
//! sending the Adj-RIB-Out.
//!
//! ```text
//!   speaker ──Command──► session task ◄──watch<Arc<Table>>── speaker
//!                          │   ▲
//!              write_all   │   │ mpsc (bounded): framed, header-checked
//!                          ▼   │ messages, or why the connection ended
//!                        socket ──► reader task
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn};

use super::fsm::{Action, Event, Fsm, State};
use super::negotiate::{negotiate, Negotiated};
use super::net::{self, SocketOpts};
use super::rib::{AdjRibOut, Changes, Group, Table};
use super::wire::encode::{self, SendCtx};
use super::wire::open::{self, LocalOpen, Open};
use super::wire::update;
use super::wire::{
    check_header, code, keepalive, Afi, MsgType, Notification, HEADER_LEN, MAX_MESSAGE_LEN,
};
use super::{Offer, Published};
use crate::config::{PeerAddr, PeerConfig};

/// What a session needs to know, fixed for its lifetime.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub peer: PeerConfig,
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    /// Restart time to advertise, where graceful restart is on.
    pub graceful_restart: Option<u16>,
}

#[derive(Debug)]
pub enum Command {
    /// A connection from the peer's address, accepted by the listener.
    Incoming(TcpStream),
    /// vipd is stopping: withdraw everything first, or leave the routes to
    /// the peer's graceful-restart helper.
    Shutdown { withdraw: bool },
    /// The peer was removed from the configuration.
    Deconfigure,
}

/// What `vipd` reports about a session. The counters run over the peer's
/// life in this process, across sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub state: &'static str,
    pub established_at: Option<SystemTime>,
    pub families: Vec<Afi>,
    pub prefixes_sent: usize,
    pub updates_sent: u64,
    pub updates_received: u64,
    /// By (code, subcode).
    pub notifications_sent: BTreeMap<(u8, u8), u64>,
    pub notifications_received: BTreeMap<(u8, u8), u64>,
    pub last_error: Option<String>,
    /// Prefixes of the table this peer cannot be sent: their attributes,
    /// as it would receive them, do not fit in one UPDATE.
    pub refused_too_large: usize,
    /// What the peer holds from vipd (the Adj-RIB-Out, shared, not copied)
    /// in the families it is sent (`sending`), and how this session encodes
    /// attributes: `vipd explain` shows what was sent from them.
    pub holds: Option<Arc<Table>>,
    pub sending: Vec<Afi>,
    pub ctx: Option<SendCtx>,
    /// The peer's BFD session, with `bfd = true` (filled by the speaker).
    pub bfd: Option<crate::bfd::io::Status>,
    /// An unnumbered peer's neighbour: the Established session's, else
    /// the one heard on its interface (filled by the speaker).
    pub neighbor: Option<Ipv6Addr>,
}

impl PeerStatus {
    /// Prefixes the peer holds in one family.
    pub fn prefixes_in(&self, afi: Afi) -> usize {
        if !self.sending.contains(&afi) {
            return 0;
        }
        let Some(t) = &self.holds else {
            return 0;
        };
        // One fit check per distinct attribute set, not per prefix.
        let mut fits: std::collections::HashMap<*const super::attrs::RouteAttrs, bool> =
            Default::default();
        t.iter()
            .filter(|(p, _)| super::rib::afi_of(p) == afi)
            .filter(|(_, a)| {
                *fits
                    .entry(Arc::as_ptr(a))
                    .or_insert_with(|| self.ctx.as_ref().is_none_or(|c| c.receives(a, afi).is_ok()))
            })
            .count()
    }
}

impl Default for PeerStatus {
    fn default() -> Self {
        PeerStatus {
            state: State::Idle.name(),
            established_at: None,
            families: vec![],
            prefixes_sent: 0,
            updates_sent: 0,
            updates_received: 0,
            notifications_sent: BTreeMap::new(),
            notifications_received: BTreeMap::new(),
            last_error: None,
            refused_too_large: 0,
            holds: None,
            sending: vec![],
            ctx: None,
            bfd: None,
            neighbor: None,
        }
    }
}

/// At most this many received messages wait for the session task; the
/// reader stops reading the socket until there is room.
const READ_QUEUE: usize = 16;
/// The longest backoff between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a second connection from the peer may take to send its OPEN.
const CANDIDATE_OPEN_WAIT: Duration = Duration::from_secs(30);

enum ReadEnd {
    Header(Notification),
    Closed(String),
}

type Received = Result<(MsgType, Vec<u8>), ReadEnd>;

struct Conn {
    writer: OwnedWriteHalf,
    rx: mpsc::Receiver<Received>,
    /// Ends with the connection.
    _reader: crate::task::Owned<()>,
    local: SocketAddr,
    remote: SocketAddr,
    outbound: bool,
    /// Our OPEN already went out on this connection.
    open_sent: bool,
}

impl Conn {
    fn new(stream: TcpStream, outbound: bool) -> io::Result<Conn> {
        let local = stream.local_addr()?;
        let remote = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let reader = crate::task::Owned::spawn(read_loop(r, tx));
        Ok(Conn {
            writer: w,
            rx,
            _reader: reader,
            local,
            remote,
            outbound,
            open_sent: false,
        })
    }
}

/// Frames messages and checks each header before anything else looks at
/// the bytes; stops at the first bad header.
async fn read_loop(mut r: OwnedReadHalf, tx: mpsc::Sender<Received>) {
    let end = loop {
        let mut h = [0u8; HEADER_LEN];
        if let Err(e) = r.read_exact(&mut h).await {
            break ReadEnd::Closed(closed_reason(&e));
        }
        let (t, len) = match check_header(&h) {
            Ok(x) => x,
            Err(n) => break ReadEnd::Header(n),
        };
        let mut body = vec![0u8; len - HEADER_LEN];
        if let Err(e) = r.read_exact(&mut body).await {
            break ReadEnd::Closed(closed_reason(&e));
        }
        if tx.send(Ok((t, body))).await.is_err() {
            return;
        }
    };
    let _ = tx.send(Err(end)).await;
}

fn closed_reason(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "connection closed by the peer".into()
    } else {
        e.to_string()
    }
}

struct Candidate {
    conn: Conn,
    deadline: Instant,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// The session's timers (RFC 4271 10) and the next automatic start.
#[derive(Default)]
struct Timers {
    connect_retry: Option<Instant>,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
    auto_start: Option<Instant>,
}

/// The session's transport. What cannot happen cannot be written: a
/// connect in flight beside an open connection, or two second connections.
enum Link {
    None,
    Connecting(Connecting),
    Up(Conn),
    /// The peer opened a second connection while this one is open; its
    /// OPEN decides which stays (RFC 4271 6.8), or its deadline passes.
    Racing(Conn, Candidate),
    /// The main connection went while a second one waited: it takes over
    /// once the session is Idle.
    Orphan(Candidate),
}

impl Link {
    fn conn(&self) -> Option<&Conn> {
        match self {
            Link::Up(c) | Link::Racing(c, _) => Some(c),
            _ => None,
        }
    }

    fn conn_mut(&mut self) -> Option<&mut Conn> {
        match self {
            Link::Up(c) | Link::Racing(c, _) => Some(c),
            _ => None,
        }
    }

    fn has_cand(&self) -> bool {
        matches!(self, Link::Racing(..) | Link::Orphan(_))
    }

    fn cand_deadline(&self) -> Option<Instant> {
        match self {
            Link::Racing(_, k) | Link::Orphan(k) => Some(k.deadline),
            _ => None,
        }
    }

    /// What the session's loop waits on: the connection, the second one,
    /// the connect in flight.
    fn parts(
        &mut self,
    ) -> (
        Option<&mut Conn>,
        Option<&mut Candidate>,
        Option<&mut Connecting>,
    ) {
        match self {
            Link::None => (None, None, None),
            Link::Connecting(f) => (None, None, Some(f)),
            Link::Up(c) => (Some(c), None, None),
            Link::Racing(c, k) => (Some(c), Some(k), None),
            Link::Orphan(k) => (None, Some(k), None),
        }
    }

    /// A connect starts where there is no connection (the FSM asks for one
    /// only then); a second connection left over from a lost race goes.
    fn connect(&mut self, f: Connecting) {
        if matches!(self, Link::None | Link::Connecting(_) | Link::Orphan(_)) {
            *self = Link::Connecting(f);
        }
    }

    fn connect_failed(&mut self) {
        if matches!(self, Link::Connecting(_)) {
            *self = Link::None;
        }
    }

    /// `conn` becomes the connection (a connect that succeeded, or one
    /// adopted): any connect in flight is dropped, a waiting second
    /// connection stays.
    fn set_conn(&mut self, conn: Conn) {
        *self = match std::mem::replace(self, Link::None) {
            Link::Racing(_, k) | Link::Orphan(k) => Link::Racing(conn, k),
            _ => Link::Up(conn),
        };
    }

    /// The connection closed (and any connect in flight dropped); a second
    /// connection stays.
    fn drop_conn(&mut self) -> Option<Conn> {
        let (next, conn) = match std::mem::replace(self, Link::None) {
            Link::Up(c) => (Link::None, Some(c)),
            Link::Racing(c, k) => (Link::Orphan(k), Some(c)),
            Link::Orphan(k) => (Link::Orphan(k), None),
            Link::None | Link::Connecting(_) => (Link::None, None),
        };
        *self = next;
        conn
    }

    fn set_cand(&mut self, k: Candidate) {
        *self = match std::mem::replace(self, Link::None) {
            Link::Up(c) | Link::Racing(c, _) => Link::Racing(c, k),
            _ => Link::Orphan(k),
        };
    }

    fn take_cand(&mut self) -> Option<Candidate> {
        let (next, k) = match std::mem::replace(self, Link::None) {
            Link::Racing(c, k) => (Link::Up(c), Some(k)),
            Link::Orphan(k) => (Link::None, Some(k)),
            other => (other, None),
        };
        *self = next;
        k
    }
}

struct Session {
    s: Settings,
    fsm: Fsm,
    opts: SocketOpts,
    local_open: LocalOpen,
    link: Link,
    timers: Timers,
    queue: VecDeque<Event>,
    peer_open: Option<Open>,
    negotiated: Option<Negotiated>,
    adj: AdjRibOut,
    table: watch::Receiver<Published>,
    status: Arc<Mutex<PeerStatus>>,
    stopping: bool,
    /// The peer's BFD session, with `bfd = true`: the BGP session starts
    /// only while it is Up and closes when it goes down (RFC 5882).
    bfd: BfdGate,
    /// End-of-RIB still owed for this session's initial table.
    eor_pending: bool,
    /// Spreads reconnects; seeded per peer so that nodes started together
    /// do not retry in step.
    rng: fastrand::Rng,
    /// An unnumbered peer's neighbour, as its interface's Router
    /// Advertisements tell it.
    neighbor: Option<watch::Receiver<Option<Ipv6Addr>>>,
}

/// What a session follows besides its commands and the table: its BFD
/// session (`bfd = true`), the neighbour heard on its interface
/// (`interface`).
#[derive(Default)]
pub struct Follows {
    pub bfd: Option<watch::Receiver<crate::bfd::io::Status>>,
    pub neighbor: Option<watch::Receiver<Option<Ipv6Addr>>>,
}

/// Runs one peer until it is shut down or deconfigured.
pub async fn run(
    s: Settings,
    table: watch::Receiver<Published>,
    mut cmds: mpsc::Receiver<Command>,
    status: Arc<Mutex<PeerStatus>>,
    restarted: bool,
    follows: Follows,
) {
    let mut me = Session::new(s, table, status, restarted, follows);
    let peer = me.s.peer.address.clone();
    loop {
        while let Some(ev) = me.queue.pop_front() {
            me.step(ev).await;
        }
        if me.stopping {
            break;
        }
        if me.fsm.state == State::Idle && me.link.conn().is_none() {
            // The connection that lost a race may outlive the winner.
            if let Some(c) = me.link.take_cand() {
                debug!(%peer, "main connection gone: continuing on the second one");
                me.adopt(c.conn).await;
                continue;
            }
        }
        if me.fsm.state == State::Idle && me.timers.auto_start.is_none() && me.bfd_allows() {
            let d = me.backoff();
            debug!(%peer, "next attempt in {:.1}s", d.as_secs_f64());
            me.timers.auto_start = Some(Instant::now() + d);
        }
        let established = me.fsm.state == State::Established;
        let cand_deadline = me.link.cand_deadline();
        let (conn, cand, connecting) = me.link.parts();
        tokio::select! {
            cmd = cmds.recv() => me.on_command(cmd).await,
            r = recv(conn) => me.on_message(r).await,
            r = recv(cand.map(|c| &mut c.conn)) => me.on_candidate(r).await,
            r = poll_connect(connecting) => me.on_connect(r),
            _ = at(me.timers.hold) => { me.timers.hold = None; me.queue.push_back(Event::HoldTimerExpires) }
            _ = at(me.timers.keepalive) => { me.timers.keepalive = None; me.queue.push_back(Event::KeepaliveTimerExpires) }
            _ = at(me.timers.connect_retry) => { me.timers.connect_retry = None; me.queue.push_back(Event::ConnectRetryTimerExpires) }
            _ = at(me.timers.auto_start) => { me.timers.auto_start = None; me.queue.push_back(Event::Start) }
            st = me.bfd.changed() => me.on_bfd(st),
            _ = crate::task::next_value(me.neighbor.as_mut()) => me.on_neighbor(),
            _ = at(cand_deadline) => {
                debug!(%peer, "second connection sent no OPEN in time");
                me.link.take_cand();
            }
            r = me.table.changed(), if established => {
                if r.is_ok() { me.sync().await }
            }
        }
    }
    me.status.lock().unwrap().state = "Stopped";
    info!(%peer, "session stopped");
}

async fn recv(c: Option<&mut Conn>) -> Received {
    match c {
        Some(c) => {
            c.rx.recv()
                .await
                .unwrap_or(Err(ReadEnd::Closed("reader ended".into())))
        }
        None => std::future::pending().await,
    }
}

async fn poll_connect(c: Option<&mut Connecting>) -> io::Result<TcpStream> {
    match c {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn at(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn hash_peer(p: &PeerAddr) -> u64 {
    match p {
        PeerAddr::Ip(IpAddr::V4(v)) => u32::from(*v) as u64,
        PeerAddr::Ip(IpAddr::V6(v)) => {
            let x = u128::from(*v);
            (x as u64) ^ ((x >> 64) as u64)
        }
        PeerAddr::Interface(n) => n.bytes().fold(0, |h, b| h.rotate_left(8) ^ u64::from(b)),
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Connect-retry backoff: the configured interval doubled per consecutive
/// failure, capped, with RFC 4271 10's jitter (a factor from 0.75 to 1).
pub fn backoff(base_secs: u16, failures: u32, rand: u64) -> Duration {
    let base = Duration::from_secs(base_secs.max(1) as u64);
    let d = base
        .saturating_mul(1u32 << failures.min(6))
        .min(MAX_BACKOFF.max(base));
    let jitter = 0.75 + 0.25 * ((rand % 1000) as f64 / 1000.0);
    d.mul_f64(jitter)
}

impl Session {
    fn new(
        s: Settings,
        table: watch::Receiver<Published>,
        status: Arc<Mutex<PeerStatus>>,
        restarted: bool,
        follows: Follows,
    ) -> Session {
        let Follows { bfd, neighbor } = follows;
        let p = &s.peer;
        let mut families = vec![];
        if p.families.ipv4 {
            families.push(Afi::Ipv4);
        }
        if p.families.ipv6 {
            families.push(Afi::Ipv6);
        }
        let local_open = LocalOpen {
            asn: s.local_asn,
            hold_time: p.hold_time,
            router_id: s.router_id,
            families,
            capabilities: true,
            refused: vec![],
            graceful_restart: s.graceful_restart,
            restart_state: restarted && s.graceful_restart.is_some(),
            extended_next_hop: p.extended_next_hop,
        };
        let opts = SocketOpts {
            password: p.password.clone(),
            ttl: p.ttl,
            ttl_security: p.ttl_security,
            source: p.source_address,
        };
        let seed = u32::from(s.router_id) as u64 ^ hash_peer(&p.address) ^ now_nanos();
        let wait = p.bfd.as_ref().is_none_or(|b| b.wait);
        Session {
            fsm: Fsm::new(p.passive, p.hold_time, p.keepalive),
            s,
            opts,
            local_open,
            link: Link::None,
            timers: Timers::default(),
            // With BFD, the first start waits for it to come Up.
            queue: if bfd.is_some() {
                VecDeque::new()
            } else {
                VecDeque::from([Event::Start])
            },
            peer_open: None,
            negotiated: None,
            adj: AdjRibOut::default(),
            table,
            status,
            stopping: false,
            eor_pending: false,
            rng: fastrand::Rng::with_seed(seed),
            bfd: bfd.map_or(BfdGate::Off, |rx| BfdGate::Down(rx, wait)),
            neighbor,
        }
    }

    async fn on_command(&mut self, cmd: Option<Command>) {
        match cmd {
            Some(Command::Incoming(stream)) => self.incoming(stream).await,
            Some(Command::Shutdown { withdraw }) => self.shutdown(withdraw).await,
            Some(Command::Deconfigure) | None => {
                self.stopping = true;
                self.queue.push_back(Event::Stop {
                    notification: Some(Notification::shutdown(
                        code::PEER_DECONFIGURED,
                        "peer removed from vipd's configuration",
                    )),
                });
            }
        }
    }

    fn on_connect(&mut self, r: io::Result<TcpStream>) {
        let peer = self.peer().clone();
        match r.and_then(|st| Conn::new(st, true)) {
            Ok(c) => {
                debug!(%peer, local = %c.local, "connected");
                self.link.set_conn(c);
                self.queue.push_back(Event::TcpConnected);
            }
            Err(e) => {
                self.link.connect_failed();
                debug!(%peer, "connect failed: {e}");
                self.set_error(format!("connect: {e}"));
                self.queue.push_back(Event::TcpFails);
            }
        }
    }

    fn backoff(&mut self) -> Duration {
        let r = self.rng.u64(..);
        // The first attempt after a session ends goes out at once-ish.
        if self.fsm.connect_retry_counter == 0 {
            return Duration::from_millis(100 + r % 400);
        }
        backoff(
            self.s.peer.connect_retry,
            self.fsm.connect_retry_counter - 1,
            r,
        )
    }

    /// Records why the session is not up; a reason that differs from the
    /// last one is a warning, the same one again (every retry of a peer
    /// that refuses) is not.
    fn set_error(&self, e: String) {
        let mut st = self.status.lock().unwrap();
        if st.last_error.as_deref() != Some(e.as_str()) {
            warn!(peer = %self.peer(), "session not up: {e}");
        }
        st.last_error = Some(e);
    }

    fn peer(&self) -> &PeerAddr {
        &self.s.peer.address
    }

    /// Where to connect: the peer's address, or the neighbour heard on
    /// its interface, scoped to it; why not, while there is none.
    fn target(&self) -> Result<SocketAddr, String> {
        let port = self.s.peer.port;
        match &self.s.peer.address {
            PeerAddr::Ip(a) => Ok(SocketAddr::new(*a, port)),
            PeerAddr::Interface(n) => {
                let idx = crate::sockopt::if_index(n);
                match (self.neighbor.as_ref().and_then(|r| *r.borrow()), idx) {
                    (_, 0) => Err(format!("no interface {n}")),
                    (None, _) => Err(format!(
                        "no Router Advertisement heard on {n} yet: the neighbour's link-local address is not known"
                    )),
                    (Some(a), i) => Ok(SocketAddr::V6(SocketAddrV6::new(a, port, 0, i))),
                }
            }
        }
    }

    async fn step(&mut self, ev: Event) {
        let before = self.fsm.state;
        let acts = self.fsm.handle(ev.clone());
        if before != self.fsm.state {
            debug!(peer = %self.peer(), "{} -> {} on {:?}", before.name(), self.fsm.state.name(), ev);
            self.status.lock().unwrap().state = self.fsm.state.name();
        }
        for a in acts {
            self.act(a).await;
        }
    }

    async fn act(&mut self, a: Action) {
        match a {
            Action::Connect => {
                if self.s.peer.passive {
                    return;
                }
                let addr = match self.target() {
                    Ok(a) => a,
                    Err(e) => {
                        self.set_error(e);
                        self.queue.push_back(Event::TcpFails);
                        return;
                    }
                };
                let opts = self.opts.clone();
                self.link
                    .connect(Box::pin(async move { net::connect(addr, &opts).await }));
            }
            Action::Drop => {
                if let Some(mut c) = self.link.drop_conn() {
                    let _ = c.writer.shutdown().await;
                }
                self.peer_open = None;
            }
            Action::SendOpen => self.send_open().await,
            Action::SendKeepalive => {
                self.send(&keepalive()).await;
            }
            Action::SendNotification(n) => {
                warn!(peer = %self.peer(), "sending NOTIFICATION {n}");
                self.set_error(format!("sent {n}"));
                self.count_notification(&n, true);
                if let Some(c) = self.link.conn_mut() {
                    let dl = Instant::now() + Duration::from_secs(1);
                    let _ = timeout_at(dl, c.writer.write_all(&n.encode())).await;
                }
            }
            Action::StartConnectRetryTimer => {
                let d = if self.fsm.connect_retry_counter == 0 {
                    Duration::from_secs(self.s.peer.connect_retry as u64)
                } else {
                    self.backoff()
                };
                self.timers.connect_retry = Some(Instant::now() + d);
            }
            Action::StopConnectRetryTimer => self.timers.connect_retry = None,
            Action::StartHoldTimer(s) => {
                self.timers.hold = Some(Instant::now() + Duration::from_secs(s as u64))
            }
            Action::StopHoldTimer => self.timers.hold = None,
            Action::StartKeepaliveTimer(s) => {
                self.timers.keepalive =
                    (s > 0).then(|| Instant::now() + Duration::from_secs(s as u64))
            }
            Action::StopKeepaliveTimer => self.timers.keepalive = None,
            Action::SessionUp => self.session_up().await,
            Action::SessionDown => self.session_down(),
        }
    }

    fn session_down(&mut self) {
        warn!(peer = %self.peer(), "session down");
        self.adj.clear();
        self.negotiated = None;
        let mut st = self.status.lock().unwrap();
        st.established_at = None;
        st.families.clear();
        st.prefixes_sent = 0;
        st.refused_too_large = 0;
        st.holds = None;
        st.sending.clear();
        st.ctx = None;
        st.neighbor = None;
    }

    async fn send_open(&mut self) {
        // A connection adopted after collision detection has had our OPEN
        // since it was accepted.
        if self.link.conn().is_some_and(|c| c.open_sent) {
            return;
        }
        let m = self.local_open.encode();
        if self.send(&m).await {
            if let Some(c) = self.link.conn_mut() {
                c.open_sent = true;
            }
        }
    }

    /// Writes to the current connection. A write that cannot finish before
    /// the hold timer would expire counts as that expiry: a peer that stops
    /// reading is as dead as one that stops talking.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        let Some(c) = self.link.conn_mut() else {
            return false;
        };
        let dl = self
            .timers
            .hold
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(240));
        match timeout_at(dl, c.writer.write_all(bytes)).await {
            Ok(Ok(())) => {
                if let Some(k) = self.fsm_keepalive_secs() {
                    self.timers.keepalive = Some(Instant::now() + Duration::from_secs(k as u64));
                }
                true
            }
            Ok(Err(e)) => {
                debug!(peer = %self.peer(), "write failed: {e}");
                self.set_error(format!("write: {e}"));
                self.queue.push_back(Event::TcpFails);
                false
            }
            Err(_) => {
                self.timers.hold = None;
                self.queue.push_back(Event::HoldTimerExpires);
                false
            }
        }
    }

    fn fsm_keepalive_secs(&self) -> Option<u16> {
        match self.fsm.state {
            State::OpenConfirm | State::Established if self.fsm.negotiated_hold > 0 => {
                Some(self.fsm.keepalive_interval())
            }
            _ => None,
        }
    }

    async fn incoming(&mut self, stream: TcpStream) {
        let peer = self.peer().clone();
        if let Err(e) = self.opts.apply_ttl(&stream, !peer.is_ipv4()) {
            warn!(%peer, "setting TTL on accepted connection: {e}");
        }
        let conn = match Conn::new(stream, false) {
            Ok(c) => c,
            Err(e) => {
                debug!(%peer, "accepted connection unusable: {e}");
                return;
            }
        };
        if !self.bfd_allows() {
            // RFC 5882: no session while its BFD session is not Up, from
            // whichever side the connection comes.
            debug!(%peer, "connection refused: BFD is not Up");
            return reject(conn, code::CONNECTION_REJECTED).await;
        }
        match self.fsm.state {
            State::Idle | State::Connect | State::Active => {
                debug!(%peer, "accepted connection");
                self.adopt(conn).await;
            }
            _ => {
                if self.link.has_cand() {
                    debug!(%peer, "third connection refused");
                    reject(conn, code::CONNECTION_REJECTED).await;
                } else {
                    // Each connection runs its own OPEN exchange until one
                    // OPEN tells which to keep (RFC 4271 6.8).
                    debug!(%peer, "second connection: collision detection (RFC 4271 6.8)");
                    let mut conn = conn;
                    let open = self.local_open.encode();
                    let dl = Instant::now() + Duration::from_secs(1);
                    if matches!(
                        timeout_at(dl, conn.writer.write_all(&open)).await,
                        Ok(Ok(()))
                    ) {
                        conn.open_sent = true;
                    }
                    self.link.set_cand(Candidate {
                        conn,
                        deadline: Instant::now() + CANDIDATE_OPEN_WAIT,
                    });
                }
            }
        }
    }

    /// Makes `conn` the session's connection, as if it had just connected.
    async fn adopt(&mut self, conn: Conn) {
        match self.fsm.state {
            State::Idle => {
                self.timers.auto_start = None;
                self.fsm.state = State::Active;
            }
            State::Connect | State::Active => {}
            _ => {
                self.step(Event::Stop { notification: None }).await;
                self.fsm.state = State::Active;
            }
        }
        self.link.set_conn(conn);
        self.step(Event::TcpConnected).await;
    }

    async fn on_candidate(&mut self, r: Received) {
        let peer = self.peer().clone();
        let Some(cand) = self.link.take_cand() else {
            return;
        };
        let body = match r {
            Ok((MsgType::Open, body)) => body,
            Ok((t, _)) => {
                debug!(%peer, "second connection sent {t:?} before OPEN; closed");
                return reject(cand.conn, 0).await;
            }
            Err(_) => return,
        };
        let open = match self.check_open(&body) {
            Ok(o) => o,
            Err(n) => {
                let mut c = cand.conn;
                let _ = c.writer.write_all(&n.encode()).await;
                return;
            }
        };
        let current_outbound = self.link.conn().is_some_and(|c| c.outbound);
        let keep_new = self.fsm.state == State::Established
            || !current_outbound
            || u32::from(self.s.router_id) < u32::from(open.bgp_id);
        if !keep_new {
            info!(%peer, "connection collision: keeping our connection");
            return reject(cand.conn, code::COLLISION_RESOLUTION).await;
        }
        if self.fsm.state == State::Established {
            info!(%peer, "peer opened a new session while established: it restarted; replacing the old one");
        } else {
            info!(%peer, "connection collision: keeping the peer's connection");
            self.step(Event::CollisionDump).await;
        }
        self.adopt(cand.conn).await;
        self.open_received(open).await;
    }

    fn check_open(&self, body: &[u8]) -> Result<Open, Notification> {
        let o = open::parse(body)?;
        open::check(
            &o,
            &open::Expect {
                local_asn: self.s.local_asn,
                local_id: self.s.router_id,
                peer_as: self.s.peer.asn,
            },
        )?;
        Ok(o)
    }

    async fn on_message(&mut self, r: Received) {
        let peer = self.peer().clone();
        let (t, body) = match r {
            Ok(x) => x,
            Err(ReadEnd::Header(n)) => {
                warn!(%peer, "bad message header: {n}");
                self.queue.push_back(Event::HeaderError(n));
                return;
            }
            Err(ReadEnd::Closed(why)) => {
                info!(%peer, "connection lost: {why}");
                self.set_error(why);
                self.queue.push_back(Event::TcpFails);
                return;
            }
        };
        match t {
            MsgType::Open => match self.check_open(&body) {
                Ok(o) => {
                    if let Some(c) = self.link.take_cand() {
                        // Their OPEN arrived here first; the second
                        // connection is the redundant one.
                        reject(c.conn, code::COLLISION_RESOLUTION).await;
                    }
                    self.open_received(o).await
                }
                Err(n) => {
                    warn!(%peer, "bad OPEN: {n}");
                    self.queue.push_back(Event::OpenError(n));
                }
            },
            MsgType::Keepalive => self.queue.push_back(Event::KeepaliveReceived),
            MsgType::Update => {
                self.status.lock().unwrap().updates_received += 1;
                self.on_update(&body)
            }
            MsgType::Notification => self.on_notification(&body),
            MsgType::RouteRefresh => self.on_route_refresh(&body).await,
        }
    }

    fn on_notification(&mut self, body: &[u8]) {
        let n = Notification::parse(body);
        warn!(peer = %self.peer(), "peer sent NOTIFICATION {n}");
        self.set_error(format!("received {n}"));
        self.count_notification(&n, false);
        if self.fsm.state == State::OpenSent && n.code == code::OPEN {
            self.learn_refusal(&n);
        }
        self.queue.push_back(
            if n.code == code::OPEN && n.subcode == code::UNSUPPORTED_VERSION {
                Event::NotificationVersionError
            } else {
                Event::NotificationReceived
            },
        );
    }

    async fn on_route_refresh(&mut self, body: &[u8]) {
        let afi = update::route_refresh_afi(body);
        let n = self.negotiated.clone();
        if let (State::Established, Some(afi)) = (self.fsm.state, afi) {
            if let Some(n) = n.filter(|n| n.families.contains(&afi)) {
                info!(peer = %self.peer(), "route refresh for {afi}: re-sending {} routes", self.adj.len());
                let c = self.adj.resend(afi, &|a, f| n.ctx.receives(a, f));
                self.send_changes(&c, &[]).await;
            }
        }
        self.queue.push_back(Event::UpdateReceived);
    }

    fn bfd_allows(&self) -> bool {
        self.bfd.allows()
    }

    /// A neighbour heard (or a new one) on the unnumbered peer's
    /// interface: an attempt now rather than after the backoff that
    /// waiting for it built up.
    fn on_neighbor(&mut self) {
        if self.link.conn().is_some() {
            return;
        }
        match self.fsm.state {
            State::Idle if self.timers.auto_start.is_some() => {
                self.timers.auto_start = Some(Instant::now());
            }
            State::Connect | State::Active => self.timers.connect_retry = Some(Instant::now()),
            _ => {}
        }
    }

    /// RFC 5882: BFD Down closes the session at once (Cease, BFD Down,
    /// RFC 9384); it comes back through the usual start once BFD is Up.
    fn on_bfd(&mut self, st: Option<crate::bfd::packet::State>) {
        let was_up = matches!(self.bfd, BfdGate::Up(..));
        self.bfd.next(st);
        match (was_up, &self.bfd) {
            (false, BfdGate::Up(..)) => {
                info!(peer = %self.peer(), "BFD Up: the session may start");
            }
            // Gone (the peer removed), or AdminDown: vipd's own planned
            // stop, which the session's own shutdown handles (silently, for
            // graceful restart). Nothing starts again until then.
            (_, BfdGate::Gone) => self.timers.auto_start = None,
            (true, BfdGate::Down(..)) => {
                self.timers.auto_start = None;
                if self.fsm.state != State::Idle {
                    warn!(peer = %self.peer(), "BFD Down: closing the session (Cease, BFD Down)");
                    self.set_error("BFD Down".into());
                    self.queue.push_back(Event::Stop {
                        notification: Some(Notification::new(code::CEASE, code::BFD_DOWN)),
                    });
                }
            }
            _ => {}
        }
    }

    fn count_notification(&self, n: &Notification, sent: bool) {
        let mut st = self.status.lock().unwrap();
        let by = if sent {
            &mut st.notifications_sent
        } else {
            &mut st.notifications_received
        };
        *by.entry((n.code, n.subcode)).or_default() += 1;
    }

    /// RFC 5492: a peer that refuses our capabilities gets an OPEN without
    /// them on the next attempt.
    fn learn_refusal(&mut self, n: &Notification) {
        match n.subcode {
            code::UNSUPPORTED_OPT_PARAM => {
                info!(peer = %self.peer(), "peer refuses optional parameters: next OPEN carries no capabilities");
                self.local_open.capabilities = false;
            }
            code::UNSUPPORTED_CAPABILITY => {
                let mut d = &n.data[..];
                while d.len() >= 2 {
                    let (c, l) = (d[0], d[1] as usize);
                    if !self.local_open.refused.contains(&c) {
                        info!(peer = %self.peer(), "peer refuses capability {c}: leaving it out");
                        self.local_open.refused.push(c);
                    }
                    d = d.get(2 + l..).unwrap_or(&[]);
                }
            }
            _ => {}
        }
    }

    async fn open_received(&mut self, o: Open) {
        let local = self.link.conn().map(|c| c.local.ip());
        let p = &self.s.peer;
        // getifaddrs only where a link-local next hop may be added.
        let addrs = if p.link_local_next_hop || p.address.interface().is_some() {
            net::interface_addresses()
        } else {
            vec![]
        };
        let n = negotiate(&self.local_open, &o, p, local, &addrs);
        if let Some(ll) = n.ctx.next_hop_v6_link_local {
            debug!(peer = %self.peer(), %ll, "IPv6 next hop with its link-local address");
        }
        self.negotiated = Some(n);
        let hold = o.hold_time;
        self.peer_open = Some(o);
        self.queue
            .push_back(Event::OpenReceived { hold_time: hold });
    }

    fn on_update(&mut self, body: &[u8]) {
        let peer = self.peer().clone();
        let ctx = update::Ctx {
            four_octet_as: self
                .negotiated
                .as_ref()
                .is_some_and(|n| n.ctx.four_octet_as),
            ebgp: !self.s.peer.asn.is_ibgp(self.s.local_asn),
        };
        match update::check(body, ctx) {
            Err(n) => {
                warn!(%peer, "malformed UPDATE: {n}");
                self.queue.push_back(Event::UpdateError(n));
            }
            Ok(c) => {
                if let Some(why) = &c.treat_as_withdraw {
                    info!(%peer, "UPDATE treated as withdraw (RFC 7606): {why}");
                }
                for d in &c.discarded {
                    debug!(%peer, "attribute discarded (RFC 7606): {d}");
                }
                if let Some(afi) = c.end_of_rib {
                    debug!(%peer, "End-of-RIB for {afi}");
                } else if tracing::enabled!(tracing::Level::DEBUG) && !c.sanitized.is_empty() {
                    match update::decode(&c.sanitized, ctx) {
                        Ok(u) => debug!(%peer, announced = c.announced, withdrawn = c.withdrawn,
                            decoded = u.is_some(), "UPDATE received and dropped: vipd does not learn routes"),
                        Err(_) => {
                            warn!(%peer, "zettabgp panicked on an UPDATE that passed vipd's checks (a bug: please report it)")
                        }
                    }
                }
                self.queue.push_back(Event::UpdateReceived);
            }
        }
    }

    async fn session_up(&mut self) {
        let n = self
            .negotiated
            .clone()
            .expect("OPEN negotiated before Established");
        let o = self.peer_open.as_ref();
        info!(
            peer = %self.peer(),
            families = ?n.families,
            hold = self.fsm.negotiated_hold,
            four_octet_as = n.ctx.four_octet_as,
            graceful_restart = n.graceful_restart,
            peer_id = %o.map(|o| o.bgp_id).unwrap_or(Ipv4Addr::UNSPECIFIED),
            "session established"
        );
        // Only the OPENs up to the first session after a restart say so.
        self.local_open.restart_state = false;
        for f in n.families.iter().filter(|f| !n.send_families.contains(f)) {
            warn!(peer = %self.peer(), "no {f} next hop on this session: set next_hop_ipv4 / next_hop_ipv6 for the peer; {f} routes are not sent to it");
        }
        {
            let mut st = self.status.lock().unwrap();
            st.established_at = Some(SystemTime::now());
            st.families = n.families.clone();
            st.sending = n.send_families.clone();
            st.ctx = Some(n.ctx.clone());
            st.last_error = None;
            // The unnumbered peer's neighbour is the session's, whether
            // heard or not (a neighbour that sends no advertisements).
            if self.s.peer.address.interface().is_some() {
                st.neighbor = self.link.conn().and_then(|c| match c.remote.ip() {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                });
            }
        }
        self.eor_pending = true;
        self.sync().await;
    }

    /// Brings the peer to the current table; the first time, each family's
    /// table is followed by End-of-RIB. Before the table is ready, nothing.
    async fn sync(&mut self) {
        let Some(n) = self.negotiated.clone() else {
            return;
        };
        let Some(Offer { table, since }) = self.table.borrow_and_update().clone() else {
            return;
        };
        let t = std::time::Instant::now();
        let changes = self
            .adj
            .diff(&table, &n.send_families, &|a, f| n.ctx.receives(a, f));
        debug!(peer = %self.peer(), us = t.elapsed().as_micros() as u64, "diffed");
        let eor: Vec<Afi> = if self.eor_pending {
            n.families.clone()
        } else {
            vec![]
        };
        // Nothing to write can still be news: a route added or grown past
        // one UPDATE is refused without an UPDATE, and status and explain
        // must say so.
        let quiet = changes.is_empty() && eor.is_empty();
        if quiet && self.adj.is_at(&table) {
            return;
        }
        if !quiet {
            if !self.send_changes(&changes, &eor).await {
                return;
            }
            if let Some(t) = since.filter(|_| !changes.is_empty()) {
                crate::telemetry::event_to_wire(t.elapsed());
            }
            self.eor_pending = false;
        }
        if changes.refused != self.adj.refused() {
            warn!(peer = %self.peer(), refused = changes.refused,
                "prefixes not sent: their attributes do not fit in one 4,096-byte UPDATE");
        }
        self.adj.apply(table.clone(), &n.send_families, &changes);
        let mut st = self.status.lock().unwrap();
        st.prefixes_sent = self.adj.len();
        st.refused_too_large = changes.refused;
        st.holds = Some(table);
    }

    /// Encodes and writes `changes`, a bounded buffer at a time, so that a
    /// large table costs a few hundred KiB of buffer and the peer starts
    /// reading while the rest is encoded.
    async fn send_changes(&mut self, changes: &Changes, eor: &[Afi]) -> bool {
        const FLUSH_AT: usize = 256 * 1024;
        const CHUNK: usize = 16 * 1024;
        let Some(n) = self.negotiated.clone() else {
            return false;
        };
        let mut buf = Vec::with_capacity(FLUSH_AT + 2 * MAX_MESSAGE_LEN);
        let (mut msgs, mut bytes) = (0u64, 0usize);
        // A plain list of work items: iterator adapters held across an await
        // would make this future lose `Send`.
        let mut work: Vec<(Option<&Group>, &[IpNet], Afi)> = vec![];
        for g in &changes.announce {
            for c in g.prefixes.chunks(CHUNK) {
                work.push((Some(g), c, g.afi));
            }
        }
        for (list, afi) in [
            (&changes.withdraw_v4, Afi::Ipv4),
            (&changes.withdraw_v6, Afi::Ipv6),
        ] {
            for c in list.chunks(CHUNK) {
                work.push((None, c, afi));
            }
        }
        for (g, prefixes, afi) in work {
            msgs += match g {
                // The diff left out what the peer cannot take; an error
                // here appends nothing, so no message can be oversized.
                Some(g) => encode::announce(&mut buf, prefixes, &g.attrs, afi, &n.ctx).unwrap_or(0),
                None => encode::withdraw(&mut buf, prefixes, afi),
            } as u64;
            if buf.len() >= FLUSH_AT {
                if !self.send(&buf).await {
                    return false;
                }
                bytes += buf.len();
                buf.clear();
            }
        }
        for afi in eor {
            encode::end_of_rib(&mut buf, *afi);
            msgs += 1;
        }
        if !buf.is_empty() && !self.send(&buf).await {
            return false;
        }
        bytes += buf.len();
        info!(peer = %self.peer(), announced = changes.announced(), withdrawn = changes.withdrawn(),
            updates = msgs, bytes, "sent");
        self.status.lock().unwrap().updates_sent += msgs;
        true
    }

    async fn shutdown(&mut self, withdraw: bool) {
        self.stopping = true;
        let gr = self.negotiated.as_ref().is_some_and(|n| n.graceful_restart);
        if self.fsm.state == State::Established && withdraw {
            let ctx = self.negotiated.as_ref().map(|n| n.ctx.clone());
            let c = self
                .adj
                .diff(&Table::new(), &[Afi::Ipv4, Afi::Ipv6], &|a, f| match &ctx {
                    Some(ctx) => ctx.receives(a, f),
                    None => Ok(a.clone()),
                });
            info!(peer = %self.peer(), "withdrawing {} routes before stopping", c.withdrawn());
            self.send_changes(&c, &[]).await;
        }
        // With graceful restart negotiated, a silent close lets the peer keep
        // the routes as stale until we are back and send End-of-RIB; a Cease
        // would make a peer without RFC 8538 flush them at once.
        let notification = if gr && !withdraw {
            info!(peer = %self.peer(), "closing without NOTIFICATION: the peer keeps the routes through the restart");
            None
        } else {
            Some(Notification::shutdown(
                code::ADMIN_SHUTDOWN,
                "vipd is shutting down",
            ))
        };
        self.queue.push_back(Event::Stop { notification });
    }
}

/// The BFD state once it changes; `None` when the session is gone.
/// The BGP session's gate on its BFD session: the invalid combinations
/// (required but unknown, Up without a session) cannot be written.
enum BfdGate {
    /// No BFD for this peer: always open.
    Off,
    /// With `wait` (`bfd_wait`, the default), closed until BFD is Up;
    /// without it open, for routers that start BFD only for an
    /// established session (dynamic neighbours).
    Down(watch::Receiver<crate::bfd::io::Status>, bool),
    Up(watch::Receiver<crate::bfd::io::Status>, bool),
    /// The BFD session ended (removed, or AdminDown at vipd's own stop):
    /// closed until the peer is configured again.
    Gone,
}

impl BfdGate {
    fn allows(&self) -> bool {
        matches!(
            self,
            BfdGate::Off | BfdGate::Up(..) | BfdGate::Down(_, false)
        )
    }

    /// The BFD session's next state (`None`: it ended).
    fn next(&mut self, st: Option<crate::bfd::packet::State>) {
        use crate::bfd::packet::State as B;
        let (rx, wait) = match std::mem::replace(self, BfdGate::Gone) {
            BfdGate::Down(rx, w) | BfdGate::Up(rx, w) => (rx, w),
            other => {
                *self = other;
                return;
            }
        };
        *self = match st {
            None | Some(B::AdminDown) => BfdGate::Gone,
            Some(B::Up) => BfdGate::Up(rx, wait),
            Some(_) => BfdGate::Down(rx, wait),
        };
    }

    async fn changed(&mut self) -> Option<crate::bfd::packet::State> {
        match self {
            BfdGate::Down(rx, _) | BfdGate::Up(rx, _) => match rx.changed().await {
                Ok(()) => Some(rx.borrow_and_update().state),
                Err(_) => None,
            },
            BfdGate::Off | BfdGate::Gone => std::future::pending().await,
        }
    }
}

/// Closes a connection that lost to another, with a Cease.
async fn reject(mut c: Conn, subcode: u8) {
    if subcode != 0 {
        let n = Notification::new(code::CEASE, subcode).encode();
        let dl = Instant::now() + Duration::from_secs(1);
        let _ = timeout_at(dl, c.writer.write_all(&n)).await;
    }
    let _ = c.writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff(5, 0, 999), Duration::from_secs(5).mul_f64(0.99975));
        let d = backoff(5, 0, 0);
        assert_eq!(d, Duration::from_millis(3750));
        assert_eq!(backoff(5, 1, 0), Duration::from_millis(7500));
        assert_eq!(backoff(5, 10, 0), Duration::from_secs(45));
        assert!(backoff(5, 10, 999) <= MAX_BACKOFF);
        // A configured interval above the cap is honoured.
        assert_eq!(backoff(120, 3, 0), Duration::from_secs(90));
    }

    fn bfd_status() -> crate::bfd::io::Status {
        crate::bfd::io::Status {
            state: crate::bfd::packet::State::Down,
            diag: 0,
            tx: Duration::from_secs(1),
            rx: Duration::from_secs(1),
            detection: None,
            last_down: None,
        }
    }

    #[test]
    fn the_bfd_gate_opens_only_while_bfd_is_up_and_closes_for_good_when_it_ends() {
        use crate::bfd::packet::State as B;
        assert!(BfdGate::Off.allows());
        let (_tx, rx) = watch::channel(bfd_status());
        let mut g = BfdGate::Down(rx, true);
        assert!(!g.allows(), "required and not yet Up");
        g.next(Some(B::Init));
        assert!(!g.allows());
        g.next(Some(B::Up));
        assert!(g.allows());
        g.next(Some(B::Down));
        assert!(!g.allows());
        g.next(Some(B::Up));
        g.next(Some(B::AdminDown));
        assert!(matches!(g, BfdGate::Gone) && !g.allows(), "vipd's own stop");
        g.next(Some(B::Up));
        assert!(!g.allows(), "nothing reopens a gate whose session ended");
        let (_tx, rx) = watch::channel(bfd_status());
        let mut g = BfdGate::Up(rx, true);
        g.next(None);
        assert!(matches!(g, BfdGate::Gone));
    }

    /// `bfd_wait = false`: open while BFD is not Up (a router that starts
    /// BFD only for an established session), still closed for good when
    /// the BFD session ends.
    #[test]
    fn without_bfd_wait_the_gate_is_open_until_bfd_ends() {
        use crate::bfd::packet::State as B;
        let (_tx, rx) = watch::channel(bfd_status());
        let mut g = BfdGate::Down(rx, false);
        assert!(g.allows(), "a first start without BFD Up");
        g.next(Some(B::Up));
        assert!(g.allows());
        g.next(Some(B::Down));
        assert!(
            g.allows() && matches!(g, BfdGate::Down(_, false)),
            "starts again at once"
        );
        g.next(Some(B::AdminDown));
        assert!(!g.allows());
    }

    #[tokio::test]
    async fn the_link_keeps_a_second_connection_until_decided() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conn = |outbound| async move {
            let s = TcpStream::connect(addr).await.unwrap();
            Conn::new(s, outbound).unwrap()
        };
        let cand = |c| Candidate {
            conn: c,
            deadline: Instant::now(),
        };
        let mut link = Link::None;
        link.connect(Box::pin(std::future::pending()));
        assert!(matches!(link, Link::Connecting(_)));
        link.set_conn(conn(true).await);
        assert!(link.conn().is_some_and(|c| c.outbound) && !link.has_cand());
        link.connect(Box::pin(std::future::pending()));
        assert!(
            matches!(link, Link::Up(_)),
            "no connect beside a connection"
        );
        link.set_cand(cand(conn(false).await));
        assert!(link.has_cand() && link.conn().is_some());
        // The main connection closes: the second one waits alone.
        assert!(link.drop_conn().is_some());
        assert!(matches!(link, Link::Orphan(_)) && link.conn().is_none());
        // Adopting a connection keeps it waiting beside.
        link.set_conn(conn(true).await);
        assert!(matches!(link, Link::Racing(..)));
        let k = link.take_cand().expect("the second connection");
        assert!(!k.conn.outbound && matches!(link, Link::Up(_)));
        assert!(link.take_cand().is_none());
        link.set_cand(cand(conn(false).await));
        link.drop_conn();
        link.connect(Box::pin(std::future::pending()));
        assert!(
            matches!(link, Link::Connecting(_)),
            "a leftover second connection goes"
        );
        link.connect_failed();
        assert!(matches!(link, Link::None));
    }
}
