//! The sender-side limit for the speaker benchmark: a BGP session that
//! writes the same host routes vipd announces, pre-encoded and packed into
//! 4096-byte UPDATEs before the session opens, as fast as the socket takes
//! them. What the receiver needs to ingest this stream is the floor no
//! speaker can beat on this machine.
//!
//! Written here rather than with a BGP crate because it must do nothing but
//! write bytes: any speaker logic would be measured along with the socket.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAX: usize = 4096;

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

fn attr(flags: u8, kind: u8, val: &[u8]) -> Vec<u8> {
    let mut a = vec![];
    if val.len() > 255 {
        a.extend_from_slice(&[flags | 0x10, kind]);
        a.extend_from_slice(&(val.len() as u16).to_be_bytes());
    } else {
        a.extend_from_slice(&[flags, kind, val.len() as u8]);
    }
    a.extend_from_slice(val);
    a
}

/// OPEN with one multiprotocol family and the 4-octet AS capability.
fn open(asn: u32, afi: u16, router_id: [u8; 4]) -> Vec<u8> {
    let mut caps = vec![1, 4];
    caps.extend_from_slice(&afi.to_be_bytes());
    caps.extend_from_slice(&[0, 1, 65, 4]);
    caps.extend_from_slice(&asn.to_be_bytes());
    let mut body = vec![4];
    let my_as = if asn < 65536 { asn as u16 } else { 23456 };
    body.extend_from_slice(&my_as.to_be_bytes());
    body.extend_from_slice(&90u16.to_be_bytes());
    body.extend_from_slice(&router_id);
    body.push(caps.len() as u8 + 2);
    body.extend_from_slice(&[2, caps.len() as u8]);
    body.extend_from_slice(&caps);
    msg(1, &body)
}

/// Every route of `prefixes` (all of one family) as packed UPDATEs, each at
/// most 4096 bytes: IPv4 in the NLRI field, IPv6 in MP_REACH_NLRI.
pub fn updates(asn: u32, next_hop: IpAddr, prefixes: &[IpAddr]) -> Vec<u8> {
    let mut base = attr(0x40, 1, &[0]);
    let mut path = vec![2, 1];
    path.extend_from_slice(&asn.to_be_bytes());
    base.extend(attr(0x40, 2, &path));
    let mut out = vec![];
    match next_hop {
        IpAddr::V4(nh) => {
            base.extend(attr(0x40, 3, &nh.octets()));
            let per = (MAX - 19 - 4 - base.len()) / 5;
            for chunk in prefixes.chunks(per) {
                let mut body = 0u16.to_be_bytes().to_vec();
                body.extend_from_slice(&(base.len() as u16).to_be_bytes());
                body.extend_from_slice(&base);
                for p in chunk {
                    body.push(32);
                    if let IpAddr::V4(a) = p {
                        body.extend_from_slice(&a.octets());
                    }
                }
                out.extend(msg(2, &body));
            }
        }
        IpAddr::V6(nh) => {
            // Header, the two length fields, base, MP_REACH's 4-octet
            // extended header, AFI/SAFI/NH length, next hop, reserved.
            let per = (MAX - 19 - 4 - base.len() - 4 - 4 - 16 - 1) / 17;
            for chunk in prefixes.chunks(per) {
                let mut mp = vec![0, 2, 1, 16];
                mp.extend_from_slice(&nh.octets());
                mp.push(0);
                for p in chunk {
                    mp.push(128);
                    if let IpAddr::V6(a) = p {
                        mp.extend_from_slice(&a.octets());
                    }
                }
                let mut attrs = base.clone();
                attrs.extend(attr(0x80, 14, &mp));
                let mut body = 0u16.to_be_bytes().to_vec();
                body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
                body.extend_from_slice(&attrs);
                out.extend(msg(2, &body));
            }
        }
    }
    out
}

/// The type of the next whole message, or None when the peer closed.
fn read_msg(s: &mut TcpStream) -> Option<u8> {
    let mut hdr = [0u8; 19];
    s.read_exact(&mut hdr).ok()?;
    let len = u16::from_be_bytes([hdr[16], hdr[17]]) as usize;
    let mut body = vec![0; len.saturating_sub(19)];
    s.read_exact(&mut body).ok()?;
    Some(hdr[18])
}

/// One session of the limit, running on its own thread inside a network
/// namespace; stopped (socket closed, thread joined) on drop.
pub struct Limit {
    stop: Arc<AtomicBool>,
    sock: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Limit {
    /// Dials `peer` port 179 from network namespace `netns` as AS `asn`,
    /// with `prefixes` encoded before the session opens.
    pub fn start(netns: &str, asn: u32, peer: IpAddr, prefixes: Vec<IpAddr>) -> Limit {
        let stop = Arc::new(AtomicBool::new(false));
        let sock = Arc::new(Mutex::new(None));
        let path = format!("/var/run/netns/{netns}");
        let (st, sk) = (stop.clone(), sock.clone());
        let thread = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}");
            session(&st, &sk, asn, peer, &prefixes);
        });
        Limit {
            stop,
            sock,
            thread: Some(thread),
        }
    }
}

fn session(
    stop: &AtomicBool,
    slot: &Mutex<Option<TcpStream>>,
    asn: u32,
    peer: IpAddr,
    prefixes: &[IpAddr],
) {
    let addr = SocketAddr::new(peer, 179);
    let mut s = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    *slot.lock().unwrap() = Some(s.try_clone().unwrap());
    let me = s.local_addr().unwrap().ip();
    let stream = updates(asn, me, prefixes);
    let afi = if peer.is_ipv4() { 1 } else { 2 };
    let ok = s.write_all(&open(asn, afi, [192, 0, 2, 1])).is_ok()
        && read_msg(&mut s) == Some(1)
        && s.write_all(&msg(4, &[])).is_ok();
    if !ok {
        return;
    }
    while let Some(kind) = read_msg(&mut s) {
        if kind == 4 {
            break;
        }
    }
    if s.write_all(&stream).is_err() {
        return;
    }
    // Keep the session up: read whatever comes, keepalive every 30 s.
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if last.elapsed() > Duration::from_secs(30) {
            let _ = s.write_all(&msg(4, &[]));
            last = Instant::now();
        }
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sock.lock().unwrap().take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
