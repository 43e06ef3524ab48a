//! IPVS virtual services and real servers over generic netlink (the kernel's
//! `IPVS` family, the interface `ipvsadm` uses).
//!
//! IPVS entries carry no owner mark, so vipd records the virtual services it
//! created in a state file ([`Owned`]) and treats every other entry as
//! someone else's: it never changes, empties or deletes a service it did
//! not create, and refuses to take over one that already exists. A service
//! vipd created is vipd's whole: its real servers are exactly the ones vipd
//! wants.
//!
//! The message layout (`include/uapi/linux/ip_vs.h`) is built and read here
//! with bounds checks; [`plan`] is the pure diff between what the kernel
//! holds and what vipd wants.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

// Generic netlink and IPVS constants (linux/genetlink.h, linux/ip_vs.h).
const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IPVS_GENL_VERSION: u8 = 1;
const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;

const ATTR_SERVICE: u16 = 1;
const ATTR_DEST: u16 = 2;

const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;

const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ADDR_FAMILY: u16 = 11;

const FWD_MASK: u32 = 0x7;
const FWD_LOCALNODE: u32 = 1;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u16 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u16,
            Protocol::Udp => libc::IPPROTO_UDP as u16,
        }
    }
    fn from_number(n: u16) -> Option<Protocol> {
        match n as i32 {
            libc::IPPROTO_TCP => Some(Protocol::Tcp),
            libc::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// What identifies a virtual service: protocol, address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{p} {}", self.addr)
    }
}

/// How IPVS hands a connection to a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Forward {
    /// NAT: the destination address is rewritten (`ipvsadm -m`).
    Masquerade,
    /// Direct routing: the frame goes to the real server unchanged (`-g`).
    Direct,
    /// IP-in-IP to the real server (`-i`).
    Tunnel,
}

impl Forward {
    fn number(self) -> u32 {
        match self {
            Forward::Masquerade => 0,
            Forward::Tunnel => 2,
            Forward::Direct => 3,
        }
    }
}

/// A virtual service as vipd wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    pub scheduler: String,
    pub forward: Forward,
    /// The real servers; all get weight 1.
    pub reals: BTreeSet<SocketAddr>,
}

/// A virtual service as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelService {
    pub key: ServiceKey,
    pub scheduler: String,
}

/// A real server as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelDest {
    pub addr: SocketAddr,
    /// The forwarding method number (`IP_VS_CONN_F_*`).
    pub forward: u32,
    pub weight: u32,
}

/// One change to the kernel's IPVS table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddService(ServiceKey, String),
    /// Changes the scheduler of an existing service in place.
    SetService(ServiceKey, String),
    DelService(ServiceKey),
    AddDest(ServiceKey, SocketAddr, Forward),
    SetDest(ServiceKey, SocketAddr, Forward),
    DelDest(ServiceKey, SocketAddr),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService(k, s) => write!(f, "add service {k} (scheduler {s})"),
            Op::SetService(k, s) => write!(f, "set service {k} scheduler {s}"),
            Op::DelService(k) => write!(f, "delete service {k}"),
            Op::AddDest(k, d, _) => write!(f, "add real server {d} to {k}"),
            Op::SetDest(k, d, _) => write!(f, "update real server {d} of {k}"),
            Op::DelDest(k, d) => write!(f, "delete real server {d} from {k}"),
        }
    }
}

/// What the kernel holds for one of vipd's services.
pub type Current = (KernelService, Vec<KernelDest>);

/// The changes that turn `have` (vipd's service as the kernel holds it, if
/// it exists) into `want` (if vipd wants it). Pure: the kernel is read
/// before and written after.
pub fn plan(key: ServiceKey, have: Option<&Current>, want: Option<&Service>) -> Vec<Op> {
    let mut ops = vec![];
    match (have, want) {
        (None, None) => {}
        (Some(_), None) => ops.push(Op::DelService(key)),
        (None, Some(w)) => {
            ops.push(Op::AddService(key, w.scheduler.clone()));
            for r in &w.reals {
                ops.push(Op::AddDest(key, *r, w.forward));
            }
        }
        (Some((svc, dests)), Some(w)) => {
            if svc.scheduler != w.scheduler {
                ops.push(Op::SetService(key, w.scheduler.clone()));
            }
            for d in dests {
                if !w.reals.contains(&d.addr) {
                    ops.push(Op::DelDest(key, d.addr));
                } else if d.weight != 1
                    // The kernel may report a local real server as LOCALNODE.
                    || (d.forward != w.forward.number() && d.forward != FWD_LOCALNODE)
                {
                    ops.push(Op::SetDest(key, d.addr, w.forward));
                }
            }
            for r in &w.reals {
                if !dests.iter().any(|d| d.addr == *r) {
                    ops.push(Op::AddDest(key, *r, w.forward));
                }
            }
        }
    }
    ops
}

// ---- netlink attributes ----------------------------------------------------

fn put(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn nest(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    pad(buf);
}

/// The attributes in `b`, stopping at the first one that does not fit.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, data))
    })
}

fn u16_of(d: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(d.get(..2)?.try_into().ok()?))
}

fn u32_of(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?))
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v) => a[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => a = v.octets(),
    }
    a
}

fn addr_of(af: u16, d: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(d.get(..4)?).ok()?,
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(d.get(..16)?).ok()?,
        ))),
        _ => None,
    }
}

fn af(ip: IpAddr) -> u16 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn put_service_key(buf: &mut Vec<u8>, key: ServiceKey) {
    put(buf, SVC_AF, &af(key.addr.ip()).to_ne_bytes());
    put(buf, SVC_PROTOCOL, &key.protocol.number().to_ne_bytes());
    put(buf, SVC_ADDR, &addr_bytes(key.addr.ip()));
    put(buf, SVC_PORT, &key.addr.port().to_be_bytes());
}

/// The attributes of a service command: the key, and for a new or changed
/// service everything the kernel requires of a full entry.
pub fn service_attrs(key: ServiceKey, scheduler: Option<&str>) -> Vec<u8> {
    let mut b = vec![];
    nest(&mut b, ATTR_SERVICE, |b| {
        put_service_key(b, key);
        if let Some(s) = scheduler {
            let mut name = s.as_bytes().to_vec();
            name.push(0);
            put(b, SVC_SCHED_NAME, &name);
            // struct ip_vs_flags { flags, mask }: no persistence, no hash flags.
            let mut flags = 0u32.to_ne_bytes().to_vec();
            flags.extend_from_slice(&u32::MAX.to_ne_bytes());
            put(b, SVC_FLAGS, &flags);
            put(b, SVC_TIMEOUT, &0u32.to_ne_bytes());
            let mask: u32 = if key.addr.is_ipv4() { u32::MAX } else { 128 };
            put(b, SVC_NETMASK, &mask.to_ne_bytes());
        }
    });
    b
}

/// The attributes of a real-server command.
pub fn dest_attrs(key: ServiceKey, dest: SocketAddr, forward: Option<Forward>) -> Vec<u8> {
    let mut b = service_attrs(key, None);
    nest(&mut b, ATTR_DEST, |b| {
        put(b, DEST_ADDR, &addr_bytes(dest.ip()));
        put(b, DEST_PORT, &dest.port().to_be_bytes());
        put(b, DEST_ADDR_FAMILY, &af(dest.ip()).to_ne_bytes());
        if let Some(f) = forward {
            put(b, DEST_FWD_METHOD, &f.number().to_ne_bytes());
            put(b, DEST_WEIGHT, &1u32.to_ne_bytes());
            put(b, DEST_U_THRESH, &0u32.to_ne_bytes());
            put(b, DEST_L_THRESH, &0u32.to_ne_bytes());
        }
    });
    b
}

/// A service from a `GET_SERVICE` answer's attributes; `None` for
/// firewall-mark services and anything incomplete.
pub fn parse_service(payload: &[u8]) -> Option<KernelService> {
    let (_, svc) = attrs(payload).find(|(t, _)| *t == ATTR_SERVICE)?;
    let (mut family, mut proto, mut addr, mut port, mut sched) = (None, None, None, None, None);
    for (t, d) in attrs(svc) {
        match t {
            SVC_AF => family = u16_of(d),
            SVC_PROTOCOL => proto = u16_of(d).and_then(Protocol::from_number),
            SVC_ADDR => addr = Some(d),
            SVC_PORT => port = d.get(..2).map(|p| u16::from_be_bytes([p[0], p[1]])),
            SVC_FWMARK if u32_of(d).unwrap_or(0) != 0 => return None,
            SVC_SCHED_NAME => {
                let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
                sched = Some(String::from_utf8_lossy(&d[..end]).into_owned());
            }
            _ => {}
        }
    }
    let ip = addr_of(family?, addr?)?;
    Some(KernelService {
        key: ServiceKey {
            protocol: proto?,
            addr: SocketAddr::new(ip, port?),
        },
        scheduler: sched.unwrap_or_default(),
    })
}

/// A real server from a `GET_DEST` answer's attributes.
pub fn parse_dest(payload: &[u8], service_af: u16) -> Option<KernelDest> {
    let (_, dest) = attrs(payload).find(|(t, _)| *t == ATTR_DEST)?;
    let (mut family, mut addr, mut port, mut fwd, mut weight) =
        (service_af, None, None, None, None);
    for (t, d) in attrs(dest) {
        match t {
            DEST_ADDR_FAMILY => family = u16_of(d)?,
            DEST_ADDR => addr = Some(d),
            DEST_PORT => port = d.get(..2).map(|p| u16::from_be_bytes([p[0], p[1]])),
            DEST_FWD_METHOD => fwd = u32_of(d).map(|f| f & FWD_MASK),
            DEST_WEIGHT => weight = u32_of(d),
            _ => {}
        }
    }
    Some(KernelDest {
        addr: SocketAddr::new(addr_of(family, addr?)?, port?),
        forward: fwd?,
        weight: weight?,
    })
}

// ---- the socket ------------------------------------------------------------

/// Why an IPVS request failed. Callers decide on the kind: a foreign
/// service is left alone, a broken socket is reopened.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("IPVS is not available in this kernel (the kernel found no ip_vs module to load)")]
    Unavailable,
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Kernel(io::Error),
    #[error("malformed netlink answer")]
    Malformed,
    /// The service exists and vipd did not create it.
    #[error("{0} exists and was not created by vipd: left alone")]
    Foreign(ServiceKey),
    /// The kernel refused one change.
    #[error("{op}: {err}")]
    Refused { op: String, err: io::Error },
    #[error("{op}: the kernel has no scheduler {scheduler:?} (module ip_vs_{scheduler})")]
    NoScheduler { op: String, scheduler: String },
    /// The IPVS thread is gone (vipd is stopping).
    #[error("the IPVS thread has stopped")]
    Stopped,
}

/// A generic netlink socket bound to the IPVS family.
pub struct Ipvs {
    fd: OwnedFd,
    family: u16,
    seq: u32,
}

impl Ipvs {
    /// Opens the socket and looks the IPVS family up.
    pub fn open() -> Result<Ipvs, IpvsError> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel answers at once; a bound on the wait turns a lost
        // answer into an error instead of a hung daemon.
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a correctly sized timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let mut s = Ipvs {
            fd,
            family: GENL_ID_CTRL,
            seq: 0,
        };
        let mut name = vec![];
        put(&mut name, CTRL_ATTR_FAMILY_NAME, b"IPVS\0");
        let answers = match s.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, &name, false) {
            Ok(a) => a,
            Err(IpvsError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(IpvsError::Unavailable)
            }
            Err(e) => return Err(e),
        };
        s.family = answers
            .iter()
            .flat_map(|a| attrs(a))
            .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
            .and_then(|(_, d)| u16_of(d))
            .ok_or(IpvsError::Malformed)?;
        Ok(s)
    }

    /// Sends one request and collects the attribute payloads of the answers
    /// (all parts of a dump, or nothing but the ACK).
    fn request(
        &mut self,
        family: u16,
        cmd: u8,
        version: u8,
        payload: &[u8],
        dump: bool,
    ) -> Result<Vec<Vec<u8>>, IpvsError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let len = 16 + 4 + payload.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[cmd, version, 0, 0]);
        m.extend_from_slice(payload);
        // SAFETY: send(2) from a live buffer of the given length; the
        // unbound netlink socket sends to the kernel (pid 0).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut out = vec![];
        let mut buf = vec![0u8; 64 * 1024];
        // GETFAMILY answers with one message and no ACK.
        let single = !dump && family == GENL_ID_CTRL;
        loop {
            // SAFETY: recv(2) into a buffer we own, within its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error().into());
            }
            if answers(&buf[..n as usize], seq, single, &mut out)? {
                return Ok(out);
            }
        }
    }

    fn cmd(&mut self, cmd: u8, payload: &[u8]) -> Result<(), IpvsError> {
        self.request(self.family, cmd, IPVS_GENL_VERSION, payload, false)
            .map(|_| ())
    }

    /// Every address-based virtual service in the kernel.
    pub fn services(&mut self) -> Result<Vec<KernelService>, IpvsError> {
        let answers = self.request(self.family, CMD_GET_SERVICE, IPVS_GENL_VERSION, &[], true)?;
        Ok(answers.iter().filter_map(|a| parse_service(a)).collect())
    }

    /// The real servers of one service.
    pub fn dests(&mut self, key: ServiceKey) -> Result<Vec<KernelDest>, IpvsError> {
        let answers = self.request(
            self.family,
            CMD_GET_DEST,
            IPVS_GENL_VERSION,
            &service_attrs(key, None),
            true,
        )?;
        let family = af(key.addr.ip());
        answers
            .iter()
            .map(|a| parse_dest(a, family).ok_or(IpvsError::Malformed))
            .collect()
    }

    /// Applies one change.
    pub fn apply(&mut self, op: &Op) -> Result<(), IpvsError> {
        match op {
            Op::AddService(k, s) => self.cmd(CMD_NEW_SERVICE, &service_attrs(*k, Some(s))),
            Op::SetService(k, s) => self.cmd(CMD_SET_SERVICE, &service_attrs(*k, Some(s))),
            Op::DelService(k) => self.cmd(CMD_DEL_SERVICE, &service_attrs(*k, None)),
            Op::AddDest(k, d, f) => self.cmd(CMD_NEW_DEST, &dest_attrs(*k, *d, Some(*f))),
            Op::SetDest(k, d, f) => self.cmd(CMD_SET_DEST, &dest_attrs(*k, *d, Some(*f))),
            Op::DelDest(k, d) => self.cmd(CMD_DEL_DEST, &dest_attrs(*k, *d, None)),
        }
    }
}

/// Reads one datagram of answers to request `seq` into `out`; true once
/// the answer is complete.
fn answers(
    mut b: &[u8],
    seq: u32,
    single: bool,
    out: &mut Vec<Vec<u8>>,
) -> Result<bool, IpvsError> {
    while b.len() >= 16 {
        let mlen = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let mtype = u16::from_ne_bytes([b[4], b[5]]);
        let mseq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
        if mlen < 16 || mlen > b.len() {
            return Err(IpvsError::Malformed);
        }
        let body = &b[16..mlen];
        b = &b[((mlen + 3) & !3).min(b.len())..];
        if mseq != seq {
            // An answer to an earlier request that timed out.
            continue;
        }
        match mtype {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
                    .ok_or(IpvsError::Malformed)?;
                if code == 0 {
                    return Ok(true);
                }
                return Err(IpvsError::Kernel(io::Error::from_raw_os_error(-code)));
            }
            _ => {
                let payload = body.get(4..).ok_or(IpvsError::Malformed)?;
                out.push(payload.to_vec());
                if single {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

// ---- reconciling ------------------------------------------------------------

/// vipd's IPVS services: reads the kernel, applies [`plan`], and keeps the
/// ownership file true.
pub struct Manager {
    ipvs: Option<Ipvs>,
    owned: Owned,
}

impl Manager {
    /// Reads the ownership file; the netlink socket opens on first use, so
    /// a kernel without IPVS fails the sync that needs it, not the start.
    pub fn new(state_file: &Path) -> (Manager, Vec<String>) {
        match Owned::load(state_file) {
            Ok((owned, bad)) => (Manager { ipvs: None, owned }, bad),
            Err(e) => (
                Manager {
                    ipvs: None,
                    owned: Owned {
                        path: state_file.to_path_buf(),
                        keys: BTreeSet::new(),
                    },
                },
                vec![format!("{}: {e}", state_file.display())],
            ),
        }
    }

    /// Whether vipd has services of its own in the kernel to look after.
    pub fn owns_any(&self) -> bool {
        !self.owned.keys.is_empty()
    }

    /// Brings the kernel to `want` (or to none of vipd's services) and
    /// returns what it changed. A service that exists but that vipd did
    /// not create is an error and is left exactly as it is.
    pub fn sync(&mut self, want: Option<&Service>) -> Result<Vec<Op>, IpvsError> {
        let r = self.try_sync(want);
        if let Err(IpvsError::Io(_) | IpvsError::Malformed) = &r {
            // Start over on a fresh socket next time.
            self.ipvs = None;
        }
        r
    }

    fn try_sync(&mut self, want: Option<&Service>) -> Result<Vec<Op>, IpvsError> {
        if self.ipvs.is_none() {
            self.ipvs = Some(Ipvs::open()?);
        }
        let ipvs = self.ipvs.as_mut().expect("opened above");
        let present: Vec<KernelService> = ipvs.services()?;
        let mut done = vec![];
        let stale: Vec<ServiceKey> = self
            .owned
            .keys
            .iter()
            .filter(|k| want.map(|w| w.key) != Some(**k))
            .copied()
            .collect();
        for k in stale {
            if present.iter().any(|p| p.key == k) {
                let op = Op::DelService(k);
                ipvs.apply(&op).map_err(|e| context(&op, e))?;
                done.push(op);
            }
            self.owned.keys.remove(&k);
            self.owned.save()?;
        }
        let Some(w) = want else { return Ok(done) };
        let have = present.into_iter().find(|p| p.key == w.key);
        if have.is_some() && !self.owned.keys.contains(&w.key) {
            return Err(IpvsError::Foreign(w.key));
        }
        let current = match have {
            Some(svc) => {
                let dests = ipvs.dests(svc.key)?;
                Some((svc, dests))
            }
            None => None,
        };
        for op in plan(w.key, current.as_ref(), Some(w)) {
            ipvs.apply(&op).map_err(|e| context(&op, e))?;
            if let Op::AddService(k, _) = &op {
                // Recorded once it exists: a crash before this line leaves
                // a service vipd will refuse as foreign, never the reverse.
                self.owned.keys.insert(*k);
                self.owned.save()?;
            }
            done.push(op);
        }
        Ok(done)
    }
}

fn context(op: &Op, e: IpvsError) -> IpvsError {
    match (e, op) {
        // The kernel's answer when it cannot load ip_vs_<scheduler>.
        (IpvsError::Kernel(k), Op::AddService(_, s) | Op::SetService(_, s))
            if k.raw_os_error() == Some(libc::ENOENT) =>
        {
            IpvsError::NoScheduler {
                op: op.to_string(),
                scheduler: s.clone(),
            }
        }
        (IpvsError::Kernel(err), _) => IpvsError::Refused {
            op: op.to_string(),
            err,
        },
        (other, _) => other,
    }
}

// ---- the thread ------------------------------------------------------------

/// A sync's outcome, for the service it wanted.
#[derive(Debug)]
pub struct Synced {
    pub want: Option<ServiceKey>,
    pub result: Result<Vec<Op>, IpvsError>,
}

enum Reply {
    /// Into the daemon's loop, as a message.
    Message(tokio::sync::mpsc::UnboundedSender<Synced>),
    Once(tokio::sync::oneshot::Sender<Synced>),
}

struct Job {
    want: Option<Service>,
    reply: Reply,
}

/// The [`Manager`] on a thread of its own: netlink waits (bounded at 2 s
/// by `SO_RCVTIMEO`) block that thread, never the runtime, so sessions
/// and the status listener carry on while the kernel answers. Dropping
/// the handle ends the thread after the job under way.
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
    results: tokio::sync::mpsc::UnboundedSender<Synced>,
}

impl Worker {
    /// The thread, the receiver of [`Worker::request`]'s outcomes, and the
    /// ownership file's lines that did not parse.
    pub fn spawn(
        state_file: &Path,
    ) -> (
        Worker,
        tokio::sync::mpsc::UnboundedReceiver<Synced>,
        Vec<String>,
    ) {
        let (mut mgr, bad) = Manager::new(state_file);
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (results, results_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("vipd-ipvs".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let done = run_job(&mut mgr, job.want.as_ref());
                    let _ = match job.reply {
                        Reply::Message(tx) => tx.send(done).ok(),
                        Reply::Once(tx) => tx.send(done).ok(),
                    };
                }
            })
            .expect("spawning the IPVS thread");
        (Worker { jobs, results }, results_rx, bad)
    }

    /// Brings the kernel to `want`; the outcome arrives on the receiver.
    pub fn request(&self, want: Option<Service>) {
        let _ = self.jobs.send(Job {
            want,
            reply: Reply::Message(self.results.clone()),
        });
    }

    /// As [`Worker::request`], waiting for the outcome (at start and stop).
    pub async fn sync(&self, want: Option<Service>) -> Synced {
        let key = want.as_ref().map(|w| w.key);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.jobs.send(Job {
            want,
            reply: Reply::Once(tx),
        });
        match (sent, rx.await) {
            (Ok(()), Ok(s)) => s,
            _ => Synced {
                want: key,
                result: Err(IpvsError::Stopped),
            },
        }
    }
}

/// Removing everything when vipd owns nothing touches no socket, so a
/// kernel without IPVS costs nothing to a node that never used it.
fn run_job(mgr: &mut Manager, want: Option<&Service>) -> Synced {
    let result = if want.is_none() && !mgr.owns_any() {
        Ok(vec![])
    } else {
        mgr.sync(want)
    };
    Synced {
        want: want.map(|w| w.key),
        result,
    }
}

// ---- ownership -------------------------------------------------------------

/// The virtual services vipd created, kept in a file so that a restarted
/// vipd knows its own entries from everyone else's.
pub struct Owned {
    path: PathBuf,
    pub keys: BTreeSet<ServiceKey>,
}

impl Owned {
    /// Reads the file; a missing file means vipd owns nothing yet. Lines
    /// that do not parse are reported and dropped, never guessed at.
    pub fn load(path: &Path) -> Result<(Owned, Vec<String>), io::Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut keys = BTreeSet::new();
        let mut bad = vec![];
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_key(line) {
                Some(k) => {
                    keys.insert(k);
                }
                None => bad.push(format!(
                    "{}:{}: not a service: {line}",
                    path.display(),
                    i + 1
                )),
            }
        }
        Ok((
            Owned {
                path: path.to_path_buf(),
                keys,
            },
            bad,
        ))
    }

    /// Writes the set (through a temporary file and a rename, so a crash
    /// never leaves half a file).
    pub fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text =
            String::from("# IPVS virtual services created by vipd; vipd removes only these\n");
        for k in &self.keys {
            text.push_str(&format!("{k}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

fn parse_key(line: &str) -> Option<ServiceKey> {
    let (proto, addr) = line.split_once(' ')?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    Some(ServiceKey {
        protocol,
        addr: addr.trim().parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServiceKey {
        ServiceKey {
            protocol: Protocol::Tcp,
            addr: "192.0.2.10:6443".parse().unwrap(),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn want(reals: &[&str]) -> Service {
        Service {
            key: key(),
            scheduler: "mh".into(),
            forward: Forward::Masquerade,
            reals: reals.iter().map(|r| sa(r)).collect(),
        }
    }

    fn have(sched: &str, dests: &[(&str, u32, u32)]) -> Current {
        (
            KernelService {
                key: key(),
                scheduler: sched.into(),
            },
            dests
                .iter()
                .map(|(a, f, w)| KernelDest {
                    addr: sa(a),
                    forward: *f,
                    weight: *w,
                })
                .collect(),
        )
    }

    #[test]
    fn plan_creates_a_missing_service_with_its_reals() {
        let w = want(&["192.0.2.11:6443", "192.0.2.12:6443"]);
        assert_eq!(
            plan(key(), None, Some(&w)),
            vec![
                Op::AddService(key(), "mh".into()),
                Op::AddDest(key(), sa("192.0.2.11:6443"), Forward::Masquerade),
                Op::AddDest(key(), sa("192.0.2.12:6443"), Forward::Masquerade),
            ]
        );
    }

    #[test]
    fn plan_removes_failed_and_adds_recovered_reals_only() {
        let h = have(
            "mh",
            &[("192.0.2.11:6443", 0, 1), ("192.0.2.12:6443", 0, 1)],
        );
        let w = want(&["192.0.2.12:6443", "192.0.2.13:6443"]);
        assert_eq!(
            plan(key(), Some(&h), Some(&w)),
            vec![
                Op::DelDest(key(), sa("192.0.2.11:6443")),
                Op::AddDest(key(), sa("192.0.2.13:6443"), Forward::Masquerade),
            ]
        );
        // Nothing to do when the kernel already matches, also when it shows
        // a local real server as LOCALNODE.
        let h = have(
            "mh",
            &[("192.0.2.12:6443", 0, 1), ("192.0.2.13:6443", 1, 1)],
        );
        assert_eq!(plan(key(), Some(&h), Some(&w)), vec![]);
    }

    #[test]
    fn plan_repairs_scheduler_weight_and_method_and_deletes_unwanted() {
        let h = have(
            "rr",
            &[("192.0.2.11:6443", 3, 1), ("192.0.2.12:6443", 0, 0)],
        );
        let w = want(&["192.0.2.11:6443", "192.0.2.12:6443"]);
        assert_eq!(
            plan(key(), Some(&h), Some(&w)),
            vec![
                Op::SetService(key(), "mh".into()),
                Op::SetDest(key(), sa("192.0.2.11:6443"), Forward::Masquerade),
                Op::SetDest(key(), sa("192.0.2.12:6443"), Forward::Masquerade),
            ]
        );
        assert_eq!(plan(key(), Some(&h), None), vec![Op::DelService(key())]);
        assert_eq!(plan(key(), None, None), vec![]);
    }

    /// The bytes ipvsadm 1.31 (libipvs) sends for `-A -t 192.0.2.10:6443
    /// -s sh`, as far as the kernel reads them: the same attributes, in
    /// native byte order, the port in network order.
    #[test]
    fn service_attributes_have_the_kernel_layout() {
        let b = service_attrs(key(), Some("sh"));
        let (t, svc) = attrs(&b).next().unwrap();
        assert_eq!(t, ATTR_SERVICE);
        assert_eq!(
            u16::from_ne_bytes([b[2], b[3]]),
            ATTR_SERVICE | NLA_F_NESTED
        );
        let got: Vec<(u16, Vec<u8>)> = attrs(svc).map(|(t, d)| (t, d.to_vec())).collect();
        let mut addr = vec![192, 0, 2, 10];
        addr.resize(16, 0);
        let mut flags = 0u32.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(
            got,
            vec![
                (SVC_AF, 2u16.to_ne_bytes().to_vec()),
                (SVC_PROTOCOL, 6u16.to_ne_bytes().to_vec()),
                (SVC_ADDR, addr),
                (SVC_PORT, vec![0x19, 0x2b]),
                (SVC_SCHED_NAME, b"sh\0".to_vec()),
                (SVC_FLAGS, flags),
                (SVC_TIMEOUT, 0u32.to_ne_bytes().to_vec()),
                (SVC_NETMASK, u32::MAX.to_ne_bytes().to_vec()),
            ]
        );
        // Every attribute starts on a 4-byte boundary, the whole is padded.
        assert_eq!(b.len() % 4, 0);
        assert_eq!(parse_service(&b).unwrap().key, key());
        assert_eq!(parse_service(&b).unwrap().scheduler, "sh");
    }

    #[test]
    fn dest_attributes_round_trip_for_both_families() {
        let k6 = ServiceKey {
            protocol: Protocol::Udp,
            addr: sa("[2001:db8::10]:53"),
        };
        for (k, d) in [
            (key(), sa("192.0.2.11:6443")),
            (k6, sa("[2001:db8::11]:5353")),
        ] {
            let b = dest_attrs(k, d, Some(Forward::Direct));
            let got = parse_dest(&b, af(k.addr.ip())).unwrap();
            assert_eq!(
                got,
                KernelDest {
                    addr: d,
                    forward: 3,
                    weight: 1
                }
            );
            assert_eq!(parse_service(&b).unwrap().key, k);
        }
    }

    #[test]
    fn truncated_or_garbage_answers_parse_to_nothing() {
        let b = dest_attrs(key(), sa("192.0.2.11:6443"), Some(Forward::Tunnel));
        for cut in 0..b.len() {
            // Never a panic; at most an incomplete entry refused.
            let _ = parse_dest(&b[..cut], AF_INET);
            let _ = parse_service(&b[..cut]);
        }
        assert_eq!(parse_dest(&[0xff; 7], AF_INET), None);
        assert_eq!(parse_service(&[4, 0, 1, 0]), None);
    }

    #[test]
    fn owned_services_survive_a_restart_in_their_file() {
        let dir = std::env::temp_dir().join(format!("vipd-ipvs-owned-{}", std::process::id()));
        let path = dir.join("ipvs");
        let (mut o, bad) = Owned::load(&path).unwrap();
        assert!(o.keys.is_empty() && bad.is_empty());
        o.keys.insert(key());
        o.keys.insert(ServiceKey {
            protocol: Protocol::Udp,
            addr: sa("[2001:db8::10]:53"),
        });
        o.save().unwrap();
        let (again, bad) = Owned::load(&path).unwrap();
        assert_eq!(again.keys, o.keys);
        assert!(bad.is_empty());
        std::fs::write(&path, "tcp 192.0.2.10:6443\nsctp 1.2.3.4:5\ntcp nonsense\n").unwrap();
        let (again, bad) = Owned::load(&path).unwrap();
        assert_eq!(again.keys.len(), 1);
        assert_eq!(bad.len(), 2, "{bad:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn msg(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut m = (len as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn answers_are_read_to_their_end_and_errors_are_the_kernels() {
        let mut out = vec![];
        // A part of a dump, a stale answer to an earlier request, then DONE.
        let mut d = msg(0x20, 7, &[1, 0, 0, 0, 9, 9]);
        d.extend(msg(NLMSG_ERROR, 6, &(-libc::EEXIST).to_ne_bytes()));
        assert!(
            !answers(&d, 7, false, &mut out).unwrap(),
            "not finished yet"
        );
        assert_eq!(out, [vec![9, 9]]);
        assert!(answers(&msg(NLMSG_DONE, 7, &[]), 7, false, &mut out).unwrap());
        // An ACK, and a refusal.
        assert!(answers(
            &msg(NLMSG_ERROR, 8, &0i32.to_ne_bytes()),
            8,
            false,
            &mut out
        )
        .unwrap());
        let e = answers(
            &msg(NLMSG_ERROR, 9, &(-libc::EEXIST).to_ne_bytes()),
            9,
            false,
            &mut out,
        );
        assert!(matches!(e, Err(IpvsError::Kernel(k)) if k.raw_os_error() == Some(libc::EEXIST)));
        // GETFAMILY's single answer; and lengths that lie.
        let mut one = vec![];
        assert!(answers(&msg(0x10, 1, &[3, 1, 0, 0, 5]), 1, true, &mut one).unwrap());
        assert_eq!(one, [vec![5]]);
        let mut bad = msg(0x20, 1, &[0; 8]);
        bad[0] = 200;
        assert!(matches!(
            answers(&bad, 1, false, &mut one),
            Err(IpvsError::Malformed)
        ));
        let short = msg(0x20, 1, &[1, 2]);
        assert!(matches!(
            answers(&short, 1, false, &mut one),
            Err(IpvsError::Malformed)
        ));
    }
}
