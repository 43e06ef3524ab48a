//! `setsockopt` for the options tokio and std do not expose, shared by the
//! BGP speaker's sockets (`bgp::net`) and BFD's (`bfd::net`).

use std::io;
use std::os::fd::AsRawFd;

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
