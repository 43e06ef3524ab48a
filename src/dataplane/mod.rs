//! The node's own state, through rtnetlink: VIPs as addresses on an
//! interface, and VIPs as routes in a routing table.
//!
//! Each entry vipd creates carries vipd's mark: addresses the address
//! protocol `IFA_PROTO` = [`ADDRESS_PROTOCOL`] (Linux 5.18 and later), routes
//! the configured route protocol number. [`Dataplane::owned`] lists only
//! entries with the mark, so vipd finds its own after a restart and never
//! touches anyone else's, even on the same interface or in the same table.

pub mod ipvs;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::config::RouteTable;

/// The `IFA_PROTO` value marking vipd's addresses (the kernel uses 0-3).
pub const ADDRESS_PROTOCOL: u8 = 249;

/// Why a dataplane call failed, where a caller decides on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The kernel holds an entry at this prefix already, one vipd did not
    /// create (EEXIST): it stays theirs.
    #[error("{0} is there already, and is not vipd's")]
    Exists(IpNet),
    #[error("interface {0} not found")]
    NoInterface(String),
    #[error("netlink: {0}")]
    Netlink(String),
}

impl Error {
    fn netlink(e: rtnetlink::Error, p: Option<IpNet>) -> Error {
        if let (rtnetlink::Error::NetlinkError(m), Some(p)) = (&e, p) {
            if m.raw_code() == -libc::EEXIST {
                return Error::Exists(p);
            }
        }
        Error::Netlink(e.to_string())
    }
}

/// One kind of node state vipd manages: addresses on an interface, or
/// routes in a table. `reconcile` drives it; the fake in its tests too.
pub trait Dataplane {
    /// What vipd created and is still there, by vipd's own marks.
    fn owned(&mut self) -> impl Future<Output = Result<BTreeSet<IpNet>, Error>> + Send;
    fn add(&mut self, p: IpNet) -> impl Future<Output = Result<(), Error>> + Send;
    fn remove(&mut self, p: IpNet) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A netlink connection for this process's network namespace.
pub fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::Netlink(e.to_string()))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn ifindex(h: &Handle, name: &str) -> Result<u32, Error> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(Error::NoInterface(name.to_string())),
        // The kernel answers ENODEV for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => {
            Err(Error::NoInterface(name.to_string()))
        }
        Err(e) => Err(Error::netlink(e, None)),
    }
}

/// VIPs as /32 or /128 addresses on one interface.
pub struct Addresses {
    h: Handle,
    ifname: String,
}

impl Addresses {
    pub fn new(h: Handle, ifname: &str) -> Self {
        Addresses {
            h,
            ifname: ifname.to_string(),
        }
    }

    pub fn interface(&self) -> &str {
        &self.ifname
    }

    fn ours(m: &AddressMessage) -> Option<IpNet> {
        let mut ip = None;
        let mut mine = false;
        for a in &m.attributes {
            match a {
                AddressAttribute::Address(x) => ip = Some(*x),
                AddressAttribute::Protocol(p) => mine = u8::from(*p) == ADDRESS_PROTOCOL,
                _ => {}
            }
        }
        let ip = ip.filter(|_| mine)?;
        IpNet::new(ip, m.header.prefix_len).ok()
    }

    async fn find(&self, p: IpNet) -> Result<Option<AddressMessage>, Error> {
        let idx = ifindex(&self.h, &self.ifname).await?;
        let mut s = self.h.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(|e| Error::netlink(e, None))? {
            if m.header.index == idx && Self::ours(&m) == Some(p) {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

impl Dataplane for Addresses {
    async fn owned(&mut self) -> Result<BTreeSet<IpNet>, Error> {
        let idx = ifindex(&self.h, &self.ifname).await?;
        let mut out = BTreeSet::new();
        let mut s = self.h.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(|e| Error::netlink(e, None))? {
            if m.header.index == idx {
                out.extend(Self::ours(&m));
            }
        }
        Ok(out)
    }

    async fn add(&mut self, p: IpNet) -> Result<(), Error> {
        let idx = ifindex(&self.h, &self.ifname).await?;
        let mut req = self.h.address().add(idx, p.addr(), p.prefix_len());
        let m = req.message_mut();
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                ADDRESS_PROTOCOL,
            )));
        if p.addr().is_ipv6() {
            // A VIP is known to be unique: no duplicate address detection,
            // which would keep it unusable for a second or two.
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|e| Error::netlink(e, Some(p)))
    }

    async fn remove(&mut self, p: IpNet) -> Result<(), Error> {
        match self.find(p).await? {
            Some(m) => self
                .h
                .address()
                .del(m)
                .execute()
                .await
                .map_err(|e| Error::netlink(e, Some(p))),
            None => Ok(()),
        }
    }
}

/// VIPs as routes in one table, with vipd's route protocol number.
pub struct Routes {
    h: Handle,
    cfg: RouteTable,
}

impl Routes {
    pub fn new(h: Handle, cfg: RouteTable) -> Self {
        Routes { h, cfg }
    }

    fn table_of(m: &RouteMessage) -> u32 {
        m.attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(m.header.table as u32)
    }

    fn dest(m: &RouteMessage) -> Option<IpNet> {
        m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => {
                let ip: IpAddr = match d {
                    netlink_packet_route::route::RouteAddress::Inet(v4) => (*v4).into(),
                    netlink_packet_route::route::RouteAddress::Inet6(v6) => (*v6).into(),
                    _ => return None,
                };
                IpNet::new(ip, m.header.destination_prefix_length).ok()
            }
            _ => None,
        })
    }

    async fn message(&self, p: IpNet) -> Result<RouteMessage, Error> {
        let idx = ifindex(&self.h, &self.cfg.interface).await?;
        let m = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(p.addr(), p.prefix_len())
            .map_err(|e| Error::Netlink(e.to_string()))?
            .output_interface(idx)
            .table_id(self.cfg.table)
            .protocol(RouteProtocol::from(self.cfg.protocol))
            .scope(RouteScope::Link)
            .build();
        Ok(m)
    }
}

impl Dataplane for Routes {
    async fn owned(&mut self) -> Result<BTreeSet<IpNet>, Error> {
        let mut out = BTreeSet::new();
        for v in [IpVersion::V4, IpVersion::V6] {
            let mut req = self
                .h
                .route()
                .get(RouteMessageBuilder::<IpAddr>::new().build());
            req.message_mut().header.address_family = match v {
                IpVersion::V4 => AddressFamily::Inet,
                IpVersion::V6 => AddressFamily::Inet6,
            };
            let mut s = req.execute();
            while let Some(m) = s.try_next().await.map_err(|e| Error::netlink(e, None))? {
                if Self::table_of(&m) == self.cfg.table
                    && u8::from(m.header.protocol) == self.cfg.protocol
                {
                    out.extend(Self::dest(&m));
                }
            }
        }
        Ok(out)
    }

    async fn add(&mut self, p: IpNet) -> Result<(), Error> {
        let m = self.message(p).await?;
        self.h
            .route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(e, Some(p)))
    }

    async fn remove(&mut self, p: IpNet) -> Result<(), Error> {
        let m = self.message(p).await?;
        self.h
            .route()
            .del(m)
            .execute()
            .await
            .map_err(|e| Error::netlink(e, Some(p)))
    }
}
