//! One raw ICMPv6 socket per unnumbered peer's interface: advertisements
//! out every [`super::INTERVAL`] and in answer to a solicitation, and the
//! neighbour heard published on a `watch` channel for the session.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{heard, Link, RETRY, ROUTER_ADVERTISEMENT, ROUTER_SOLICITATION};

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// `<netinet/icmp6.h>`'s option: which ICMPv6 types the socket receives.
const ICMP6_FILTER: libc::c_int = 1;

/// The advertisements on one interface, running while held.
pub struct Handle {
    /// The neighbour's link-local address, once heard.
    pub neighbor: watch::Receiver<Option<Ipv6Addr>>,
    _task: crate::task::Owned<()>,
}

/// Starts advertising on `ifname` and listening for its neighbour. An
/// interface that does not exist (yet) is tried again every second.
pub fn start(ifname: &str) -> Handle {
    let (tx, rx) = watch::channel(None);
    let task = crate::task::Owned::spawn(run(ifname.to_string(), tx));
    Handle {
        neighbor: rx,
        _task: task,
    }
}

async fn run(ifname: String, tx: watch::Sender<Option<Ipv6Addr>>) {
    let mut link = Link::default();
    let mut said = None;
    loop {
        match open(&ifname) {
            Ok((sock, idx)) => {
                said = None;
                info!(interface = %ifname, "sending Router Advertisements for the unnumbered peer");
                serve(&sock, idx, &ifname, &mut link, &tx).await;
            }
            Err(e) => {
                // Once per distinct reason: an interface that is not there
                // yet is retried quietly.
                let e = e.to_string();
                if said.as_ref() != Some(&e) {
                    warn!(interface = %ifname, "Router Advertisements: {e}; trying again every second");
                    said = Some(e);
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn open(ifname: &str) -> io::Result<(AsyncFd<Socket>, u32)> {
    let idx = crate::sockopt::if_index(ifname);
    if idx == 0 {
        return Err(io::Error::other(format!("no interface {ifname}")));
    }
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    let mut name = [0u8; libc::IFNAMSIZ];
    name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    crate::sockopt::set(&s, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, &name)?;
    // Linux's filter: a set bit blocks the type.
    let mut filter = [u32::MAX; 8];
    for t in [ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT] {
        filter[usize::from(t >> 5)] &= !(1 << (t & 31));
    }
    crate::sockopt::set(&s, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
    // RFC 4861 6.1: neighbour discovery is sent and checked at hop limit 255.
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_loop_v6(false)?;
    s.set_multicast_if_v6(idx)?;
    crate::sockopt::receive_ttl(&s, true)?;
    // Solicitations go to all routers, which a node that does not forward
    // has not joined.
    s.join_multicast_v6(&ALL_ROUTERS, idx)?;
    s.set_nonblocking(true)?;
    // SAFETY: the socket is owned by what is registered and stays open
    // for as long as the AsyncFd holds it.
    Ok((
        unsafe { AsyncFd::register(s) }.map_err(io::Error::from)?,
        idx,
    ))
}

/// Until the interface goes away (or is replaced: a new index).
async fn serve(
    sock: &AsyncFd<Socket>,
    idx: u32,
    ifname: &str,
    link: &mut Link,
    tx: &watch::Sender<Option<Ipv6Addr>>,
) {
    let mut buf = [0u8; 1500];
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if crate::sockopt::if_index(ifname) != idx {
                    debug!(interface = %ifname, "interface replaced: reopening");
                    return;
                }
                let n = link.on_sent(send(sock, idx, ALL_NODES, &super::advertisement()).is_ok());
                if n.solicit {
                    debug!(interface = %ifname, "link back: soliciting the neighbour's advertisement");
                    let _ = send(sock, idx, ALL_ROUTERS, &super::solicitation());
                }
                next = tokio::time::Instant::now() + n.after;
            }
            r = recv(sock, &mut buf) => {
                let Ok((n, from, hops)) = r else { continue };
                match heard(&buf[..n], from, hops) {
                    super::Heard::Solicited => {
                        let _ = send(sock, idx, ALL_NODES, &super::advertisement());
                    }
                    h => {
                        if link.on_heard(h) {
                            info!(interface = %ifname, neighbor = %from, "unnumbered peer's neighbour heard");
                            tx.send_replace(link.neighbor);
                        }
                    }
                }
            }
        }
    }
}

fn send(sock: &AsyncFd<Socket>, idx: u32, to: Ipv6Addr, msg: &[u8]) -> io::Result<usize> {
    let to = SocketAddr::V6(SocketAddrV6::new(to, 0, 0, idx));
    sock.get_ref().send_to(msg, &to.into())
}

async fn recv(sock: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<(usize, Ipv6Addr, Option<u8>)> {
    loop {
        let mut g = sock.readable().await?;
        match g.try_io(|s| crate::sockopt::recv_with_ttl(s.get_ref(), buf)) {
            Ok(Ok((n, SocketAddr::V6(a), hops))) => return Ok((n, *a.ip(), hops)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(e);
            }
            Err(_would_block) => continue,
        }
    }
}
