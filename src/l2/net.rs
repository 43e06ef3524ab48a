//! The L2 interfaces as the responder uses them: packet sockets that read
//! ARP and neighbour discovery and write whole Ethernet frames, the
//! solicited-node groups joined through an IPv6 socket (so the kernel
//! sends the MLD reports snooping switches need), and the facts read from
//! sysfs (MAC, carrier, bond membership, the ARP and NDP settings). No
//! address, neighbour entry or sysctl is ever written: nothing is left
//! behind when vipd stops.

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use super::packet::Mac;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// An interface answered on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

fn sys(name: &str, file: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{file}")).map(|s| s.trim().to_string())
}

/// The interface by name, or why it cannot be answered on.
pub fn link(name: &str) -> Result<Link, String> {
    if name.contains('\0') {
        return Err(format!("{name:?}: not an interface name"));
    }
    let index = crate::sockopt::if_index(name);
    if index == 0 {
        return Err(format!("{name}: no such interface"));
    }
    // A bond's member answers for nothing: the bond's MAC is what the
    // switch learns, and replies from a member's own would split the FDB.
    if std::path::Path::new(&format!("/sys/class/net/{name}/bonding_slave")).exists() {
        return Err(format!(
            "{name} is a member of a bond: name the bond instead"
        ));
    }
    let mac = parse_mac(&sys(name, "address").map_err(|e| format!("{name}: {e}"))?)
        .ok_or_else(|| format!("{name}: not an Ethernet interface"))?;
    Ok(Link {
        name: name.to_string(),
        index,
        mac,
    })
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    let mac: Mac = parts.try_into().ok()?;
    (mac != [0; 6]).then_some(mac)
}

/// Whether the interface is up with carrier.
pub fn carrier(name: &str) -> bool {
    sys(name, "carrier").is_ok_and(|c| c == "1")
        && sys(name, "operstate").is_ok_and(|s| s == "up" || s == "unknown")
}

/// The kernel settings that make it answer for addresses itself, read
/// from /proc: what vipd refuses to compete with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kernel {
    pub arp_ignore: u8,
    pub proxy_arp: bool,
    pub proxy_ndp: bool,
}

pub fn kernel(name: &str) -> Kernel {
    let read = |p: String| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(0)
    };
    let v4 = |k: &str| {
        read(format!("/proc/sys/net/ipv4/conf/{name}/{k}"))
            .max(read(format!("/proc/sys/net/ipv4/conf/all/{k}")))
    };
    Kernel {
        arp_ignore: v4("arp_ignore"),
        proxy_arp: v4("proxy_arp") != 0,
        proxy_ndp: read(format!("/proc/sys/net/ipv6/conf/{name}/proxy_ndp")) != 0
            || read("/proc/sys/net/ipv6/conf/all/proxy_ndp".into()) != 0,
    }
}

/// Why the kernel would answer for `ip` on this interface as well (pure):
/// an address assigned on the node while `arp_ignore` is 0 (Linux answers
/// ARP for any local address on any interface), or proxying on.
pub fn kernel_conflict(ip: IpAddr, k: Kernel, local: bool, ifname: &str) -> Option<String> {
    match ip {
        IpAddr::V4(_) if k.proxy_arp => Some(format!("proxy_arp is on for {ifname}")),
        IpAddr::V4(_) if local && k.arp_ignore == 0 => Some(format!(
            "{ip} is assigned to an interface of this node and arp_ignore is 0 on {ifname}: the kernel answers for it too"
        )),
        IpAddr::V6(_) if k.proxy_ndp => Some(format!("proxy_ndp is on for {ifname}")),
        IpAddr::V6(_) if local => Some(format!(
            "{ip} is assigned to an interface of this node: the kernel answers for it too"
        )),
        _ => None,
    }
}

/// A packet socket on one interface for one protocol.
pub struct Socket {
    fd: AsyncFd<OwnedFd>,
    index: u32,
}

/// Accepts ICMPv6 (no extension headers) of types 135 and 136: the
/// IPv6 socket sees neighbour discovery, not every IPv6 packet.
const ND_FILTER: [libc::sock_filter; 7] = [
    bpf(0x30, 0, 0, 20),     // ldb [20]: next header
    bpf(0x15, 0, 4, 58),     // ICMPv6, else drop
    bpf(0x30, 0, 0, 54),     // ldb [54]: ICMPv6 type
    bpf(0x35, 0, 2, 135),    // >= 135, else drop
    bpf(0x25, 1, 0, 136),    // > 136: drop
    bpf(0x06, 0, 0, 0xffff), // accept
    bpf(0x06, 0, 0, 0),      // drop
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn ll(index: u32, proto: u16, dst: Mac) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = proto.to_be();
    a.sll_ifindex = index as i32;
    a.sll_halen = 6;
    a.sll_addr[..6].copy_from_slice(&dst);
    a
}

impl Socket {
    fn open(link: &Link, proto: u16) -> io::Result<Socket> {
        // SAFETY: plain socket calls; the fd is owned at once.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto.to_be()),
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        if proto == ETH_P_IPV6 {
            let prog = libc::sock_fprog {
                len: ND_FILTER.len() as u16,
                filter: ND_FILTER.as_ptr() as *mut _,
            };
            crate::sockopt::set(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
        }
        let a = ll(link.index, proto, [0; 6]);
        // SAFETY: a sockaddr_ll of its own size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd is owned by what is registered and stays open for
        // as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Socket {
            fd,
            index: link.index,
        })
    }

    pub fn arp(link: &Link) -> io::Result<Socket> {
        Socket::open(link, ETH_P_ARP)
    }

    pub fn nd(link: &Link) -> io::Result<Socket> {
        Socket::open(link, ETH_P_IPV6)
    }

    /// The next frame received (frames this host sent are skipped).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut g = self.fd.readable().await?;
            // SAFETY: recvfrom into our buffer and address.
            let r = g.try_io(|fd| unsafe {
                let mut a: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                    0,
                    &mut a as *mut _ as *mut libc::sockaddr,
                    &mut len,
                );
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok((n as usize, a.sll_pkttype))
            });
            match r {
                Ok(Ok((_, t))) if t == libc::PACKET_OUTGOING => continue,
                Ok(Ok((n, _))) => return Ok(n),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let dst: Mac = frame
            .get(..6)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let proto = u16::from_be_bytes([frame[12], frame[13]]);
        let a = ll(self.index, proto, dst);
        // SAFETY: sendto from our buffer to a sockaddr_ll of its own size.
        let n = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
                frame.as_ptr() as *const _,
                frame.len(),
                0,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The solicited-node groups joined on one interface, counted: VIPs whose
/// last 24 bits agree share one group, left when the last goes.
pub struct Groups {
    sock: socket2::Socket,
    index: u32,
    joined: std::collections::BTreeMap<Ipv6Addr, usize>,
}

impl Groups {
    pub fn new(link: &Link) -> io::Result<Groups> {
        let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
        Ok(Groups {
            sock,
            index: link.index,
            joined: Default::default(),
        })
    }

    pub fn join(&mut self, vip: Ipv6Addr) -> io::Result<()> {
        let g = super::packet::solicited_node(vip);
        let n = self.joined.entry(g).or_default();
        if *n == 0 {
            self.sock.join_multicast_v6(&g, self.index)?;
        }
        *n += 1;
        Ok(())
    }

    pub fn leave(&mut self, vip: Ipv6Addr) {
        let g = super::packet::solicited_node(vip);
        if let Some(n) = self.joined.get_mut(&g) {
            *n -= 1;
            if *n == 0 {
                self.joined.remove(&g);
                let _ = self.sock.leave_multicast_v6(&g, self.index);
            }
        }
    }
}

/// The first of `names` on which `ip` is on-link: inside a subnet of one
/// of its addresses (pure).
pub fn onlink(ip: IpAddr, addrs: &[crate::bgp::net::IfAddr], names: &[&str]) -> Option<usize> {
    names.iter().position(|n| {
        addrs.iter().any(|a| {
            let full = if a.addr.is_ipv4() { 32 } else { 128 };
            a.ifname == *n
                && a.addr.is_ipv4() == ip.is_ipv4()
                && a.prefix_len < full
                && ipnet::IpNet::new(a.addr, a.prefix_len).is_ok_and(|net| net.contains(&ip))
        })
    })
}

/// This node's address on the L2 segment, for its BFD partners: the first
/// IPv4 address (else global IPv6) with a subnet on the first of `names`
/// that has one, never a VIP (pure).
pub fn own_address(
    addrs: &[crate::bgp::net::IfAddr],
    names: &[&str],
    vips: &std::collections::BTreeSet<IpAddr>,
) -> Option<IpAddr> {
    let usable = |a: &&crate::bgp::net::IfAddr, v4: bool| {
        let full = if v4 { 32 } else { 128 };
        a.addr.is_ipv4() == v4
            && a.prefix_len < full
            && !vips.contains(&a.addr)
            && !matches!(a.addr, IpAddr::V6(v) if v.is_unicast_link_local())
    };
    names.iter().find_map(|n| {
        let on = || addrs.iter().filter(|a| a.ifname == *n);
        (on().find(|a| usable(a, true)))
            .or_else(|| on().find(|a| usable(a, false)))
            .map(|a| a.addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: &str, ip: &str, prefix_len: u8) -> crate::bgp::net::IfAddr {
        crate::bgp::net::IfAddr {
            ifname: n.into(),
            addr: ip.parse().unwrap(),
            prefix_len,
        }
    }

    #[test]
    fn macs_parse_as_sysfs_writes_them() {
        assert_eq!(
            parse_mac("02:00:5e:00:53:01"),
            Some([2, 0, 0x5e, 0, 0x53, 1])
        );
        assert_eq!(
            parse_mac("00:00:00:00:00:00"),
            None,
            "no hardware address (a tunnel)"
        );
        assert_eq!(parse_mac("02:00"), None);
    }

    #[test]
    fn a_vip_is_answered_on_the_interface_whose_subnet_holds_it() {
        let addrs = [
            a("eth0", "192.0.2.1", 24),
            a("eth1", "198.51.100.1", 24),
            a("eth1", "2001:db8::1", 64),
            a("lo", "203.0.113.10", 32),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            onlink(ip("198.51.100.10"), &addrs, &["eth0", "eth1"]),
            Some(1)
        );
        assert_eq!(
            onlink(ip("2001:db8::10"), &addrs, &["eth0", "eth1"]),
            Some(1)
        );
        assert_eq!(
            onlink(ip("192.0.2.10"), &addrs, &["eth1"]),
            None,
            "not a configured interface"
        );
        assert_eq!(
            onlink(ip("203.0.113.10"), &addrs, &["lo"]),
            None,
            "a host address is no subnet"
        );
    }

    #[test]
    fn bfd_runs_from_the_first_segment_address_never_a_vip() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let addrs = [
            a("eth0", "fe80::1", 64),
            a("eth0", "2001:db8::1", 64),
            a("eth0", "192.0.2.10", 24),
            a("eth0", "192.0.2.1", 24),
            a("eth1", "198.51.100.1", 24),
        ];
        let vips = [ip("192.0.2.10")].into();
        assert_eq!(own_address(&addrs, &["eth0"], &vips), Some(ip("192.0.2.1")));
        assert_eq!(
            own_address(&addrs, &["eth2", "eth1"], &vips),
            Some(ip("198.51.100.1"))
        );
        let v6only = [a("eth0", "fe80::1", 64), a("eth0", "2001:db8::1", 64)];
        assert_eq!(
            own_address(&v6only, &["eth0"], &vips),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            own_address(&v6only[..1], &["eth0"], &vips),
            None,
            "link-local only"
        );
    }

    #[test]
    fn the_kernel_answering_too_is_named() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        let k = Kernel::default();
        assert_eq!(kernel_conflict(v4, k, false, "eth0"), None);
        assert!(kernel_conflict(v4, k, true, "eth0")
            .unwrap()
            .contains("arp_ignore is 0"));
        let ignoring = Kernel { arp_ignore: 1, ..k };
        assert_eq!(kernel_conflict(v4, ignoring, true, "eth0"), None);
        let proxy = Kernel {
            proxy_arp: true,
            ..ignoring
        };
        assert!(kernel_conflict(v4, proxy, false, "eth0")
            .unwrap()
            .contains("proxy_arp"));
        let ndp = Kernel {
            proxy_ndp: true,
            ..k
        };
        assert!(kernel_conflict(v6, ndp, false, "eth0")
            .unwrap()
            .contains("proxy_ndp"));
        assert_eq!(kernel_conflict(v6, proxy, false, "eth0"), None);
    }
}
