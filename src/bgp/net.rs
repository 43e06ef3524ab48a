//! Socket options the speaker needs that tokio does not expose: TCP MD5
//! signatures (RFC 2385), outgoing TTL / hop limit, and the minimum incoming
//! TTL of GTSM (RFC 5082).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::sockopt;
pub use crate::sockopt::set_ttl;

const TCP_MD5SIG: libc::c_int = 14;
const TCP_MD5SIG_MAXKEYLEN: usize = 80;
const IP_MINTTL: libc::c_int = 21;
const IPV6_MINHOPCOUNT: libc::c_int = 73;

/// `struct tcp_md5sig` from linux/tcp.h.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

/// Installs (or with `key = None`, removes) the MD5 key for `peer` on a
/// socket. On an IPv6 socket an IPv4 peer is given in its v4-mapped form,
/// which is how the kernel matches dual-stack connections.
pub fn set_md5(
    fd: &impl AsRawFd,
    socket_v6: bool,
    peer: IpAddr,
    key: Option<&str>,
) -> io::Result<()> {
    let key = key.unwrap_or("").as_bytes();
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "MD5 key longer than 80 bytes",
        ));
    }
    // SAFETY: all-zero is a valid sockaddr_storage and tcp_md5sig.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let peer = match (socket_v6, peer) {
        (true, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (_, p) => p,
    };
    match peer {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut sig.addr as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        }
        IpAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut sig.addr as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    sockopt::set(fd, libc::IPPROTO_TCP, TCP_MD5SIG, &sig)
}

/// GTSM: drop segments that arrive with a TTL below `min`.
pub fn set_min_ttl(fd: &impl AsRawFd, v6: bool, min: u8) -> io::Result<()> {
    let v = min as libc::c_int;
    if v6 {
        sockopt::set(fd, libc::IPPROTO_IPV6, IPV6_MINHOPCOUNT, &v)
    } else {
        sockopt::set(fd, libc::IPPROTO_IP, IP_MINTTL, &v)
    }
}

/// How a session's sockets are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOpts {
    pub password: Option<crate::config::Secret>,
    pub ttl: Option<u8>,
    pub ttl_security: bool,
    pub source: Option<IpAddr>,
}

impl SocketOpts {
    /// TTL to send with: GTSM always sends 255.
    fn out_ttl(&self) -> Option<u8> {
        if self.ttl_security {
            Some(255)
        } else {
            self.ttl
        }
    }
    /// GTSM accepts a peer `ttl` hops away (1 when directly connected).
    fn min_ttl(&self) -> Option<u8> {
        self.ttl_security
            .then(|| 255u8.saturating_sub(self.ttl.unwrap_or(1).saturating_sub(1)))
    }

    pub fn apply_ttl(&self, fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
        if let Some(t) = self.out_ttl() {
            set_ttl(fd, v6, t)?;
        }
        if let Some(m) = self.min_ttl() {
            set_min_ttl(fd, v6, m)?;
        }
        Ok(())
    }
}

/// Opens a connection to the peer with the session's socket options.
pub async fn connect(peer: SocketAddr, o: &SocketOpts) -> io::Result<TcpStream> {
    let v6 = peer.is_ipv6();
    let sock = if v6 {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(src) = o.source {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    if o.password.is_some() {
        set_md5(
            &sock,
            v6,
            peer.ip(),
            o.password.as_ref().map(crate::config::Secret::expose),
        )?;
    }
    o.apply_ttl(&sock, v6)?;
    let s = sock.connect(peer).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Binds the listening socket.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

/// One address of one interface, as `getifaddrs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub ifname: String,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Every address of every interface (this network namespace).
pub fn interface_addresses() -> Vec<IfAddr> {
    let mut out = vec![];
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each entry
    // is read only while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let e = &*cur;
            cur = e.ifa_next;
            let (Some(a), Some(m)) = (sockaddr_ip(e.ifa_addr), sockaddr_ip(e.ifa_netmask)) else {
                continue;
            };
            let prefix_len = match m {
                IpAddr::V4(v) => u32::from(v).count_ones() as u8,
                IpAddr::V6(v) => u128::from(v).count_ones() as u8,
            };
            let ifname = std::ffi::CStr::from_ptr(e.ifa_name)
                .to_string_lossy()
                .into_owned();
            out.push(IfAddr {
                ifname,
                addr: a,
                prefix_len,
            });
        }
        libc::freeifaddrs(head);
    }
    out
}

/// SAFETY: `sa` is null or points to a sockaddr of the family it names.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match (*sa).sa_family as libc::c_int {
        libc::AF_INET => {
            let s = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()))
        }
        libc::AF_INET6 => {
            let s = &*(sa as *const libc::sockaddr_in6);
            Some(IpAddr::from(s.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// The link-local address to send beside the global IPv6 next hop `nh`
/// (RFC 2545 section 3): that of the interface holding both the session's
/// `local` address and `nh`, when `peer` is on one of that interface's
/// subnets (it shares the link). None for a multihop peer, or an interface
/// without a link-local address.
pub fn link_local_for(
    addrs: &[IfAddr],
    local: IpAddr,
    peer: IpAddr,
    nh: std::net::Ipv6Addr,
) -> Option<std::net::Ipv6Addr> {
    let local = local.to_canonical();
    let peer = peer.to_canonical();
    let ifname = &addrs.iter().find(|a| a.addr == local)?.ifname;
    let on_if = |a: &&IfAddr| &a.ifname == ifname;
    let holds_nh = addrs.iter().filter(on_if).any(|a| a.addr == IpAddr::V6(nh));
    let shares = addrs.iter().filter(on_if).any(|a| {
        ipnet::IpNet::new(a.addr, a.prefix_len)
            .map(|n| n.contains(&peer) && a.prefix_len < max_len(peer))
            .unwrap_or(false)
    });
    if !holds_nh || !shares {
        return None;
    }
    addrs.iter().filter(on_if).find_map(|a| match a.addr {
        IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80 => Some(v),
        _ => None,
    })
}

/// An unnumbered session's IPv6 next hop and link-local address: the
/// interface's first global IPv6 address, else its link-local one (the
/// session's own `local` address when it is one, RFC 8950 section 3).
pub fn unnumbered_next_hop(
    addrs: &[IfAddr],
    ifname: &str,
    local: Option<IpAddr>,
) -> (Option<Ipv6Addr>, Option<Ipv6Addr>) {
    let v6 = || {
        addrs
            .iter()
            .filter(|a| a.ifname == ifname)
            .filter_map(|a| match a.addr {
                IpAddr::V6(v) => Some(v),
                IpAddr::V4(_) => None,
            })
    };
    let ll = match local {
        Some(IpAddr::V6(l)) if l.is_unicast_link_local() => Some(l),
        _ => v6().find(Ipv6Addr::is_unicast_link_local),
    };
    let global = v6().find(|a| !a.is_unicast_link_local() && !a.is_loopback());
    (global.or(ll), ll)
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ifname: &str, addr: &str, len: u8) -> IfAddr {
        IfAddr {
            ifname: ifname.into(),
            addr: addr.parse().unwrap(),
            prefix_len: len,
        }
    }

    #[test]
    fn an_unnumbered_session_goes_by_the_global_address_else_the_link_local() {
        let t = [
            a("eth1", "fe80::1", 64),
            a("eth1", "2001:db8:2::1", 64),
            a("eth2", "192.0.2.1", 24),
            a("eth2", "fe80::2", 64),
            a("eth3", "2001:db8:3::1", 64),
        ];
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let local = |s: &str| Some(IpAddr::V6(ip(s)));
        assert_eq!(
            unnumbered_next_hop(&t, "eth1", local("fe80::1")),
            (Some(ip("2001:db8:2::1")), Some(ip("fe80::1")))
        );
        assert_eq!(
            unnumbered_next_hop(&t, "eth2", local("fe80::2")),
            (Some(ip("fe80::2")), Some(ip("fe80::2")))
        );
        // The session's own address wins over the table's (several
        // link-local addresses on one interface).
        assert_eq!(
            unnumbered_next_hop(&t, "eth2", local("fe80::22")).1,
            Some(ip("fe80::22"))
        );
        assert_eq!(unnumbered_next_hop(&t, "eth2", None).1, Some(ip("fe80::2")));
        // A global session address is not the link-local one.
        assert_eq!(
            unnumbered_next_hop(&t, "eth1", local("2001:db8:2::1")).1,
            Some(ip("fe80::1"))
        );
        assert_eq!(
            unnumbered_next_hop(&t, "eth3", None),
            (Some(ip("2001:db8:3::1")), None)
        );
        assert_eq!(unnumbered_next_hop(&t, "eth9", None), (None, None));
    }

    fn table() -> Vec<IfAddr> {
        vec![
            a("lo", "::1", 128),
            a("eth0", "2001:db8::1", 64),
            a("eth0", "192.0.2.1", 24),
            a("eth0", "fe80::1", 64),
            a("eth1", "2001:db8:1::1", 64),
        ]
    }

    #[test]
    fn link_local_only_for_a_peer_on_the_link() {
        let t = table();
        let nh = "2001:db8::1".parse().unwrap();
        let l = |local: &str, peer: &str| {
            link_local_for(&t, local.parse().unwrap(), peer.parse().unwrap(), nh)
        };
        assert_eq!(
            l("2001:db8::1", "2001:db8::2"),
            Some("fe80::1".parse().unwrap())
        );
        // IPv6 routes over an IPv4 session on the same link.
        assert_eq!(
            l("192.0.2.1", "192.0.2.2"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(
            l("::ffff:192.0.2.1", "::ffff:192.0.2.2"),
            Some("fe80::1".parse().unwrap())
        );
        // Multihop: the peer is on no subnet of the interface.
        assert_eq!(l("2001:db8::1", "2001:db8:99::2"), None);
        // The next hop is on another interface than the session.
        let other = "2001:db8:1::1".parse().unwrap();
        assert_eq!(
            link_local_for(
                &t,
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
                other
            ),
            None
        );
        // An interface without a link-local address.
        assert_eq!(
            link_local_for(
                &t,
                "2001:db8:1::1".parse().unwrap(),
                "2001:db8:1::2".parse().unwrap(),
                other
            ),
            None
        );
    }
}
