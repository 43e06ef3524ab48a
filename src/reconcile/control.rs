//! The control plane with what it drives on the node: the VIP as an
//! address, and its IPVS service through the [`ipvs::Manager`]; replaced
//! on a reload without interrupting what both versions serve.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tracing::{error, info, warn};

use super::Dataplane;
use crate::bgp::rib::Table;
use crate::config::RouteAttrs;
use crate::controlplane::ControlPlane;
use crate::dataplane::{self, ipvs};

/// The control plane with what it drives on the node: the VIP as an
/// address, and (through the daemon's [`ipvs::Manager`]) its IPVS service.
pub struct Control {
    pub cp: ControlPlane,
    addr: dataplane::Addresses,
    /// IPVS holds the service as wanted (always true without IPVS): the VIP
    /// is announced only then, so traffic is not drawn to a node that
    /// cannot serve it.
    pub ipvs_ok: bool,
}

impl Control {
    pub fn start(
        cfg: &crate::config::ControlPlane,
        previous: Option<&Control>,
    ) -> Result<Control, String> {
        let h = dataplane::connect()?;
        Ok(Control {
            addr: dataplane::Addresses::new(h, &cfg.interface),
            ipvs_ok: !cfg.ipvs,
            cp: ControlPlane::start(cfg.clone(), previous.map(|p| &p.cp)),
        })
    }

    pub fn address(&self) -> (&str, IpNet) {
        (self.cp.cfg.interface.as_str(), self.cp.prefix())
    }

    /// The VIP and its attributes while it should be announced.
    pub fn route(&self) -> Option<(IpNet, Arc<RouteAttrs>)> {
        (self.cp.serving() && self.ipvs_ok)
            .then(|| (self.cp.prefix(), Arc::new(self.cp.cfg.attrs.clone())))
    }

    /// Puts the address and the IPVS service in place (idempotent: also
    /// the repair pass).
    pub async fn apply(&mut self, mgr: &mut ipvs::Manager) {
        let p = self.cp.prefix();
        match self.addr.owned().await {
            Ok(have) if have.contains(&p) => {}
            Ok(_) => match self.addr.add(p).await {
                Ok(()) => {
                    info!(vip = %p, interface = %self.cp.cfg.interface, "control plane: VIP address added")
                }
                // Someone else's address: it serves as well, and stays theirs.
                Err(crate::dataplane::Error::Exists(_)) => {}
                Err(e) => warn!(vip = %p, "control plane: adding the VIP address: {e}"),
            },
            Err(e) => warn!(vip = %p, "control plane: {e}"),
        }
        if !self.cp.cfg.ipvs || !self.cp.settled() {
            return;
        }
        match mgr.sync(Some(&self.cp.ipvs_service())) {
            Ok(ops) => {
                for op in ops {
                    info!("IPVS: {op}");
                }
                self.ipvs_ok = true;
            }
            Err(e) => {
                error!("IPVS: {e}; the control-plane VIP is not announced");
                self.ipvs_ok = false;
            }
        }
    }

    /// Removes what the control plane put on the node and `next` (the
    /// control plane replacing it, if any) does not take over: a reload
    /// that changes a community must not interrupt the API server's VIP.
    pub async fn retire(mut self, next: Option<&Control>, mgr: &mut ipvs::Manager) {
        if next.is_none_or(|n| !n.cp.cfg.ipvs) {
            drop_ipvs(mgr);
        }
        let p = self.cp.prefix();
        if next.is_some_and(|n| n.address() == self.address()) {
            return;
        }
        if let Err(e) = self.addr.remove(p).await {
            warn!(vip = %p, "control plane: removing the VIP address: {e}");
        }
    }
}

/// Replaces the control plane with one for `next` (or none), carrying over
/// what is known of the backends both have, and removing only what the new
/// one does not take over.
pub async fn replace_control(
    control: &mut Option<Control>,
    next: Option<&crate::config::ControlPlane>,
    mgr: &mut ipvs::Manager,
) {
    let old = control.take();
    match next.map(|c| Control::start(c, old.as_ref())).transpose() {
        Ok(c) => *control = c,
        Err(e) => error!("control plane: {e}"),
    }
    if let Some(old) = old {
        old.retire(control.as_ref(), mgr).await;
    }
    if let Some(c) = control.as_mut() {
        c.apply(mgr).await;
    }
}

/// The control plane's configuration with the discovered API servers (on
/// the VIP's port) added to the configured ones. An API server that
/// advertises the VIP itself is left out: it cannot be its own backend.
pub fn with_discovered(
    c: &crate::config::ControlPlane,
    found: &BTreeSet<IpAddr>,
) -> crate::config::ControlPlane {
    let mut c = c.clone();
    if c.discover {
        for ip in found.iter().filter(|ip| **ip != c.vip) {
            let a = std::net::SocketAddr::new(*ip, c.port);
            if !c.backends.contains(&a) {
                c.backends.push(a);
            }
        }
    }
    c
}

/// Removes every IPVS service vipd created.
pub fn drop_ipvs(mgr: &mut ipvs::Manager) {
    if !mgr.owns_any() {
        return;
    }
    match mgr.sync(None) {
        Ok(ops) => ops.iter().for_each(|op| info!("IPVS: {op}")),
        Err(e) => error!("IPVS: {e}"),
    }
}

pub async fn control_changed(c: &mut Option<Control>) {
    match c {
        Some(c) => c.cp.changed().await,
        None => std::future::pending().await,
    }
}

/// The configured announcements plus the control-plane VIP while it serves
/// (without it, the static table itself, shared).
pub fn with_control(statics: &Arc<Table>, control: &Option<Control>) -> Arc<Table> {
    match control.as_ref().and_then(Control::route) {
        Some((p, a)) => {
            let mut t = (**statics).clone();
            t.insert(p, a);
            Arc::new(t)
        }
        None => statics.clone(),
    }
}
