//! The node's own dataplanes (VIP addresses on an interface, routes in a
//! table) with what vipd knows it applied there: full passes compare with
//! what vipd owns, changes touch only the prefixes that changed.

use std::collections::BTreeSet;

use ipnet::IpNet;
use tracing::warn;

use super::{Dataplane, KubeRoutes};
use crate::config::Config;
use crate::dataplane;

/// One dataplane, with what vipd knows it applied.
pub struct Managed<D> {
    dp: D,
    /// `None` until a full pass has read what vipd owns there.
    applied: Option<BTreeSet<IpNet>>,
    /// vipd's own entries that are not Kubernetes VIPs (left alone).
    keep: BTreeSet<IpNet>,
}

impl<D: Dataplane> Managed<D> {
    fn new(dp: D) -> Self {
        Managed {
            dp,
            applied: None,
            keep: BTreeSet::new(),
        }
    }

    async fn full(&mut self, want: &BTreeSet<IpNet>) -> Vec<String> {
        let errors = if self.keep.is_empty() {
            super::apply(&mut self.dp, want).await
        } else {
            let want: BTreeSet<IpNet> = want.union(&self.keep).copied().collect();
            super::apply(&mut self.dp, &want).await
        };
        self.applied = self.dp.owned().await.ok();
        errors
    }

    /// Only the changed prefixes: no dump of the whole interface or table.
    async fn changes(&mut self, kube: &KubeRoutes, changed: &[IpNet]) -> Vec<String> {
        let Some(applied) = self.applied.as_mut() else {
            return self.full(&kube.keys()).await;
        };
        let mut errors = vec![];
        for p in changed {
            let (want, have) = (kube.contains(p), applied.contains(p));
            let r = match (want, have) {
                (true, false) => self.dp.add(*p).await.map(|_| applied.insert(*p)),
                (false, true) => self.dp.remove(*p).await.map(|_| applied.remove(p)),
                _ => continue,
            };
            if let Err(e) = r {
                errors.push(format!("{p}: {e}"));
            }
        }
        errors
    }
}

/// The node's dataplanes that are configured.
pub struct NodeState {
    addresses: Option<Managed<dataplane::Addresses>>,
    routes: Option<Managed<dataplane::Routes>>,
}

impl NodeState {
    pub fn new(cfg: &Config, marks: &dataplane::Marks) -> Result<NodeState, dataplane::Error> {
        let dp = &cfg.dataplane;
        if dp.address_interface.is_none() && dp.routes.is_none() {
            return Ok(NodeState {
                addresses: None,
                routes: None,
            });
        }
        let h = dataplane::connect()?;
        Ok(NodeState {
            addresses: dp
                .address_interface
                .as_deref()
                .map(|i| dataplane::Addresses::new(h.clone(), i, marks).map(Managed::new))
                .transpose()?,
            routes: dp
                .routes
                .clone()
                .map(|r| Managed::new(dataplane::Routes::new(h, r))),
        })
    }

    /// The control plane's VIP address: on a shared interface it is vipd's
    /// too, and must not be taken for a stale Kubernetes VIP.
    pub fn keep(&mut self, cp: Option<(&str, IpNet)>) {
        if let Some(a) = self.addresses.as_mut() {
            a.keep = cp
                .filter(|(i, _)| *i == a.dp.interface() && a.dp.shares_marks())
                .map(|(_, p)| p)
                .into_iter()
                .collect();
        }
    }

    pub async fn full(&mut self, want: &BTreeSet<IpNet>) {
        let mut errors = vec![];
        if let Some(a) = self.addresses.as_mut() {
            errors.extend(
                a.full(want)
                    .await
                    .into_iter()
                    .map(|e| format!("address {e}")),
            );
        }
        if let Some(r) = self.routes.as_mut() {
            errors.extend(r.full(want).await.into_iter().map(|e| format!("route {e}")));
        }
        log_errors(errors);
    }

    pub async fn changes(&mut self, kube: &KubeRoutes, changed: &[IpNet]) {
        let mut errors = vec![];
        if let Some(a) = self.addresses.as_mut() {
            errors.extend(
                a.changes(kube, changed)
                    .await
                    .into_iter()
                    .map(|e| format!("address {e}")),
            );
        }
        if let Some(r) = self.routes.as_mut() {
            errors.extend(
                r.changes(kube, changed)
                    .await
                    .into_iter()
                    .map(|e| format!("route {e}")),
            );
        }
        log_errors(errors);
    }
}

fn log_errors(errors: Vec<String>) {
    for e in errors {
        warn!("dataplane: {e} (tried again within 30 s)");
    }
}
