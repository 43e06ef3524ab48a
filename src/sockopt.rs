//! The socket calls tokio and std do not expose, shared by the BGP
//! speaker's sockets (`bgp::net`), BFD's and the Router Advertisements'
//! (`ra::io`): options, the TTL (hop limit) of each datagram received,
//! read from the control message the kernel attaches (RFC 5881 section 5,
//! RFC 4861 section 6.1), and interface indexes (scope ids) and names.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// The index of interface `name`, 0 when there is none by that name.
pub fn if_index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a NUL-terminated string, read only.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// The name of the interface with index `idx`, the other way round.
pub fn if_name(idx: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs;
    // on success it holds a NUL-terminated name.
    unsafe {
        if libc::if_indextoname(idx, buf.as_mut_ptr()).is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Sets option `name` at `level` to `v`, passed with its size.
pub fn set<T>(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the TTL (IPv4) or hop limit (IPv6) of outgoing packets.
pub fn set_ttl(fd: &impl AsRawFd, v6: bool, ttl: u8) -> io::Result<()> {
    let v = ttl as libc::c_int;
    if v6 {
        set(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &v)
    } else {
        set(fd, libc::IPPROTO_IP, libc::IP_TTL, &v)
    }
}

/// Each received datagram carries its TTL (hop limit).
pub fn receive_ttl(fd: &impl AsRawFd, v6: bool) -> io::Result<()> {
    if v6 {
        set(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVHOPLIMIT,
            &(1 as libc::c_int),
        )
    } else {
        set(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, &(1 as libc::c_int))
    }
}

/// One datagram into `buf`: its length, its source and its TTL (`None`
/// when the kernel attached none). Non-blocking: `WouldBlock` when there
/// is nothing to read.
pub fn recv_with_ttl(
    fd: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    // SAFETY: every pointer handed to recvmsg points into a live local of
    // the size given; the kernel writes at most those sizes.
    unsafe {
        let mut from: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ttl = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT)
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let addr = match from.ss_family as libc::c_int {
            libc::AF_INET => {
                let s = &*(&from as *const _ as *const libc::sockaddr_in);
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr))),
                    u16::from_be(s.sin_port),
                )
            }
            _ => {
                let s = &*(&from as *const _ as *const libc::sockaddr_in6);
                let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
                // A v4-mapped source on a dual-stack socket is IPv4.
                let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                SocketAddr::new(ip, u16::from_be(s.sin6_port))
            }
        };
        Ok((n as usize, addr, ttl))
    }
}
