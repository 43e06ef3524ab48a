//! The control plane with what it drives on the node: the VIP as an
//! address, and its IPVS service through the IPVS thread
//! ([`ipvs::Worker`]); replaced on a reload without interrupting what both
//! versions serve.
//!
//! IPVS outcomes come back as messages ([`Plane::on_synced`]): the
//! daemon's loop never waits on a netlink answer while it runs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{error, info, warn};

use super::{Dataplane, Route};
use crate::config::{self, RouteAttrs};
use crate::controlplane::ControlPlane;
use crate::dataplane::{self, ipvs};

/// The control plane with what it drives on the node: the VIP as an
/// address, and (through the IPVS thread) its IPVS service.
pub struct Control {
    pub cp: ControlPlane,
    addr: dataplane::Addresses,
    /// IPVS holds the service as wanted (always true without IPVS): the VIP
    /// is announced only then, so traffic is not drawn to a node that
    /// cannot serve it.
    pub ipvs_ok: bool,
}

impl Control {
    fn start(
        cfg: &config::ControlPlane,
        previous: Option<&Control>,
        marks: &dataplane::Marks,
    ) -> Result<Control, dataplane::Error> {
        let h = dataplane::connect()?;
        Ok(Control {
            addr: dataplane::Addresses::new(h, &cfg.interface, &marks.for_control_plane())?,
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

    /// Puts the address in place and asks for the IPVS service
    /// (idempotent: also the repair pass).
    async fn apply(&mut self, ipvs: &ipvs::Worker) {
        let p = self.cp.prefix();
        match self.addr.owned().await {
            Ok(have) if have.contains(&p) => {}
            Ok(_) => match self.addr.add(p).await {
                Ok(()) => {
                    info!(vip = %p, interface = %self.cp.cfg.interface, "control plane: VIP address added")
                }
                // Someone else's address: it serves as well, and stays theirs.
                Err(dataplane::Error::Exists(_)) => {}
                Err(e) => warn!(vip = %p, "control plane: adding the VIP address: {e}"),
            },
            Err(e) => warn!(vip = %p, "control plane: {e}"),
        }
        if self.cp.cfg.ipvs && self.cp.settled() {
            ipvs.request(Some(self.cp.ipvs_service()));
        }
    }

    /// The IPVS service this control plane wants, if any.
    fn ipvs_key(&self) -> Option<ipvs::ServiceKey> {
        self.cp.cfg.ipvs.then(|| self.cp.ipvs_service().key)
    }

    /// Removes what the control plane put on the node and `next` (the
    /// control plane replacing it, if any) does not take over: a reload
    /// that changes a community must not interrupt the API server's VIP.
    async fn retire(mut self, next: Option<&Control>, ipvs: &ipvs::Worker) {
        if next.is_none_or(|n| !n.cp.cfg.ipvs) {
            // Queued before the next one's request: the thread keeps order.
            ipvs.request(None);
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

/// What an IPVS outcome means for a control plane that wants `current`:
/// `Some(ok)` when it is about that service, `None` when it is stale (a
/// removal, or a service a reload has since replaced).
pub fn ipvs_ok_after(current: Option<ipvs::ServiceKey>, s: &ipvs::Synced) -> Option<bool> {
    (current.is_some() && s.want == current).then_some(s.result.is_ok())
}

/// The control plane as the daemon holds it: the running one (if any),
/// the IPVS thread, and the API servers `default/kubernetes` lists.
pub struct Plane {
    current: Option<Control>,
    /// As configured, before discovered backends are added.
    cfg: Option<config::ControlPlane>,
    ipvs: ipvs::Worker,
    discovered: BTreeSet<IpAddr>,
    marks: dataplane::Marks,
}

impl Plane {
    /// Puts the control plane in place; without one, IPVS services an
    /// earlier run created are removed. The receiver carries IPVS outcomes
    /// for [`Plane::on_synced`].
    pub async fn start(
        cfg: Option<&config::ControlPlane>,
        ipvs_state: &Path,
        marks: dataplane::Marks,
    ) -> Result<(Plane, UnboundedReceiver<ipvs::Synced>), dataplane::Error> {
        let (ipvs, results, bad) = ipvs::Worker::spawn(ipvs_state);
        for b in bad {
            warn!("IPVS state: {b}");
        }
        let current = cfg.map(|c| Control::start(c, None, &marks)).transpose()?;
        let mut plane = Plane {
            marks,
            current,
            cfg: cfg.cloned(),
            ipvs,
            discovered: BTreeSet::new(),
        };
        match plane.current.as_mut() {
            Some(c) => c.apply(&plane.ipvs).await,
            None => plane.ipvs.request(None),
        }
        Ok((plane, results))
    }

    pub fn current(&self) -> Option<&Control> {
        self.current.as_ref()
    }

    pub fn route(&self) -> Option<Route> {
        self.current.as_ref().and_then(Control::route)
    }

    /// The address the node's dataplane must leave alone.
    pub fn address(&self) -> Option<(&str, IpNet)> {
        self.current.as_ref().map(Control::address)
    }

    /// A backend's health changed, or the repair pass.
    pub async fn apply(&mut self) {
        if let Some(c) = self.current.as_mut() {
            c.apply(&self.ipvs).await;
        }
    }

    /// An IPVS outcome: logged, and the VIP announced only while IPVS holds
    /// the service. Returns whether the route may have changed.
    pub fn on_synced(&mut self, s: ipvs::Synced) -> bool {
        match &s.result {
            Ok(ops) => ops.iter().for_each(|op| info!("IPVS: {op}")),
            Err(e) if s.want.is_some() => {
                error!("IPVS: {e}; the control-plane VIP is not announced")
            }
            Err(e) => error!("IPVS: {e}"),
        }
        let Some(c) = self.current.as_mut() else {
            return false;
        };
        match ipvs_ok_after(c.ipvs_key(), &s) {
            Some(ok) => {
                c.ipvs_ok = ok;
                true
            }
            None => false,
        }
    }

    /// The API servers `default/kubernetes` lists: the backends when the
    /// control plane discovers them.
    pub async fn discovered(&mut self, found: BTreeSet<IpAddr>) {
        self.discovered = found;
        if !self.cfg.as_ref().is_some_and(|c| c.discover) {
            return;
        }
        let list: Vec<String> = self.discovered.iter().map(|a| a.to_string()).collect();
        info!(api_servers = %list.join(","), "control plane: API servers listed by default/kubernetes");
        self.replace().await;
    }

    /// A reloaded `[control_plane]`.
    pub async fn reconfigure(&mut self, cfg: Option<&config::ControlPlane>) {
        info!("control plane reconfigured");
        self.cfg = cfg.cloned();
        self.replace().await;
    }

    /// A control plane for the configuration as it stands, carrying over
    /// what is known of the backends both have, and removing only what the
    /// new one does not take over.
    async fn replace(&mut self) {
        let next = self
            .cfg
            .as_ref()
            .map(|c| with_discovered(c, &self.discovered));
        let old = self.current.take();
        match next
            .map(|c| Control::start(&c, old.as_ref(), &self.marks))
            .transpose()
        {
            Ok(c) => self.current = c,
            Err(e) => error!("control plane: {e}"),
        }
        if let Some(old) = old {
            old.retire(self.current.as_ref(), &self.ipvs).await;
        }
        self.apply().await;
    }

    /// Stopping with `withdraw_on_stop`: the address and the IPVS service
    /// removed, waiting for the kernel's answer.
    pub async fn remove(mut self) {
        if let Some(c) = self.current.take() {
            c.retire(None, &self.ipvs).await;
        }
        let s = self.ipvs.sync(None).await;
        self.on_synced(s);
    }

    pub async fn changed(&mut self) {
        match self.current.as_mut() {
            Some(c) => c.cp.changed().await,
            None => std::future::pending().await,
        }
    }
}

/// The control plane's configuration with the discovered API servers (on
/// the VIP's port) added to the configured ones. An API server that
/// advertises the VIP itself is left out: it cannot be its own backend.
pub fn with_discovered(c: &config::ControlPlane, found: &BTreeSet<IpAddr>) -> config::ControlPlane {
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

#[cfg(test)]
mod tests {
    use super::*;
    use ipvs::{IpvsError, Protocol, ServiceKey, Synced};

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            protocol: Protocol::Tcp,
            addr: std::net::SocketAddr::new("192.0.2.10".parse().unwrap(), port),
        }
    }

    #[test]
    fn only_an_outcome_for_the_wanted_service_decides_the_announcement() {
        let ok = |want| Synced {
            want,
            result: Ok(vec![]),
        };
        let failed = |want| Synced {
            want,
            result: Err(IpvsError::Foreign(key(6443))),
        };
        assert_eq!(
            ipvs_ok_after(Some(key(6443)), &ok(Some(key(6443)))),
            Some(true)
        );
        assert_eq!(
            ipvs_ok_after(Some(key(6443)), &failed(Some(key(6443)))),
            Some(false)
        );
        // A removal, or the service before a reload changed the port.
        assert_eq!(ipvs_ok_after(Some(key(6443)), &failed(None)), None);
        assert_eq!(ipvs_ok_after(Some(key(6443)), &ok(Some(key(443)))), None);
        // Without IPVS nothing it says matters.
        assert_eq!(ipvs_ok_after(None, &failed(None)), None);
    }
}
