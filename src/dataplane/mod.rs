//! The node's own state, through rtnetlink: VIPs as addresses on an
//! interface, and VIPs as routes in a routing table.
//!
//! Each entry vipd creates carries vipd's mark: addresses the address
//! protocol `IFA_PROTO` = [`ADDRESS_PROTOCOL`] (Linux 5.18 and later; on an
//! older kernel, or when configured, a record file instead: see
//! [`record`]), routes the configured route protocol number (kept by every
//! kernel). [`Dataplane::owned`] lists only vipd's own entries, so vipd
//! finds them after a restart and never touches anyone else's, even on the
//! same interface or in the same table.

pub mod ipvs;
pub mod record;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::config::RouteTable;
pub use record::Ownership;
use record::Record;

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
    #[error("address record {path}: {1}", path = .0.display())]
    Record(PathBuf, String),
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

/// How vipd tells its addresses from others', as chosen at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    pub ownership: Ownership,
    /// The record file ([`Ownership::Record`]).
    pub record: PathBuf,
}

impl Marks {
    /// The control plane's address keeps its own record beside the
    /// Services': two writers never share a file.
    pub fn for_control_plane(&self) -> Marks {
        let mut record = self.record.clone().into_os_string();
        record.push("-control-plane");
        Marks {
            ownership: self.ownership,
            record: record.into(),
        }
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; the release is a
    // NUL-terminated string inside it.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The marks for this kernel and configuration, or why the configured
/// ownership (`dataplane.address_ownership`) cannot be had here.
pub fn marks(dp: &crate::config::Dataplane) -> Result<Marks, String> {
    let release = kernel_release();
    let ownership = record::choose(dp.address_ownership, &release)?;
    Ok(Marks {
        ownership,
        record: dp.address_record.clone(),
    })
}

/// VIPs as /32 or /128 addresses on one interface.
pub struct Addresses {
    h: Handle,
    ifname: String,
    /// `None`: by the `IFA_PROTO` mark.
    record: Option<Record>,
}

/// An address on the interface, and whether it carries vipd's mark.
struct Found {
    net: IpNet,
    marked: bool,
    msg: AddressMessage,
}

impl Addresses {
    /// Lines of the record it could not read are logged and ignored (their
    /// addresses are then not vipd's, so stay).
    pub fn new(h: Handle, ifname: &str, marks: &Marks) -> Result<Self, Error> {
        let record = match marks.ownership {
            Ownership::Mark => None,
            Ownership::Record => {
                let (r, bad) = Record::open(&marks.record)
                    .map_err(|e| Error::Record(marks.record.clone(), e.to_string()))?;
                for b in bad {
                    tracing::warn!(record = %marks.record.display(), line = %b, "address record: a line that is not \"+|- IFNAME PREFIX\", ignored");
                }
                Some(r)
            }
        };
        Ok(Addresses {
            h,
            ifname: ifname.to_string(),
            record,
        })
    }

    pub fn interface(&self) -> &str {
        &self.ifname
    }

    /// Whether another `Addresses` on the interface sees this one's
    /// entries as its own (the mark is one for all; records are apart).
    pub fn shares_marks(&self) -> bool {
        self.record.is_none()
    }

    fn found(m: AddressMessage) -> Option<Found> {
        let mut ip = None;
        let mut marked = false;
        for a in &m.attributes {
            match a {
                AddressAttribute::Address(x) => ip = Some(*x),
                AddressAttribute::Protocol(p) => marked = u8::from(*p) == ADDRESS_PROTOCOL,
                _ => {}
            }
        }
        let net = IpNet::new(ip?, m.header.prefix_len).ok()?;
        Some(Found {
            net,
            marked,
            msg: m,
        })
    }

    /// Every address on the interface.
    async fn dump(&self) -> Result<Vec<Found>, Error> {
        let idx = ifindex(&self.h, &self.ifname).await?;
        let mut out = vec![];
        let mut s = self.h.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(|e| Error::netlink(e, None))? {
            if m.header.index == idx {
                out.extend(Self::found(m));
            }
        }
        Ok(out)
    }

    /// Records `p` as vipd's (`add`) or no longer; nothing by the mark.
    fn note(&mut self, p: IpNet, add: bool) -> Result<(), Error> {
        let Some(r) = self.record.as_mut() else {
            return Ok(());
        };
        let done = if add {
            r.add(&self.ifname, p)
        } else {
            r.remove(&self.ifname, p)
        };
        done.map_err(|e| Error::Record(r.path().to_path_buf(), e.to_string()))
    }

    /// Marked, or recorded: by the record only while the address is there.
    fn mine(&self, f: &Found) -> bool {
        match &self.record {
            None => f.marked,
            Some(r) => r.contains(&self.ifname, f.net),
        }
    }

    async fn kernel_add(&mut self, p: IpNet, idx: u32) -> Result<(), Error> {
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
}

impl Dataplane for Addresses {
    async fn owned(&mut self) -> Result<BTreeSet<IpNet>, Error> {
        let here = self.dump().await?;
        let out: BTreeSet<IpNet> = here
            .iter()
            .filter(|f| self.mine(f))
            .map(|f| f.net)
            .collect();
        // Recorded but gone (removed by hand, or a crash before the add):
        // forgotten, so a foreign address put there later stays.
        let gone: Vec<IpNet> = match &self.record {
            Some(r) => r.on(&self.ifname).difference(&out).copied().collect(),
            None => vec![],
        };
        for p in gone {
            self.note(p, false)?;
        }
        Ok(out)
    }

    async fn add(&mut self, p: IpNet) -> Result<(), Error> {
        let idx = ifindex(&self.h, &self.ifname).await?;
        let ifname = &self.ifname;
        if self.record.as_ref().is_none_or(|r| r.contains(ifname, p)) {
            return self.kernel_add(p, idx).await;
        }
        // Someone else's already: never recorded, so never removed.
        if self.dump().await?.iter().any(|f| f.net.addr() == p.addr()) {
            return Err(Error::Exists(p));
        }
        self.note(p, true)?;
        let added = self.kernel_add(p, idx).await;
        if added.is_err() {
            self.note(p, false)?;
        }
        added
    }

    async fn remove(&mut self, p: IpNet) -> Result<(), Error> {
        let found = self
            .dump()
            .await?
            .into_iter()
            .find(|f| f.net == p && self.mine(f));
        if let Some(f) = found {
            self.h
                .address()
                .del(f.msg)
                .execute()
                .await
                .map_err(|e| Error::netlink(e, Some(p)))?;
        }
        self.note(p, false)
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
