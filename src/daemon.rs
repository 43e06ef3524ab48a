//! The top of the data flow: configuration in, table to the speaker,
//! signals for reload and stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use std::sync::Mutex;

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::bgp::rib::Table;
use crate::bgp::{Speaker, SpeakerError};
use crate::config::{BgpConfig, Config, Problems, RouteAttrs};
use crate::controlplane::ControlPlane;
use crate::dataplane::ipvs;
use crate::k8s;
use crate::k8s::watch::{KubeStatus, Update, WatchError};
use crate::reconcile::{Dataplane, KubeRoutes};
use crate::{dataplane, reconcile, status};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] Problems),
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Kubernetes(#[from] WatchError),
    #[error("dataplane: {0}")]
    Dataplane(String),
}

/// One dataplane, with what vipd knows it applied.
struct Managed<D> {
    dp: D,
    /// `None` until a full pass has read what vipd owns there.
    applied: Option<BTreeSet<IpNet>>,
    /// vipd's own entries that are not Kubernetes VIPs (left alone).
    keep: BTreeSet<IpNet>,
}

impl<D: Dataplane> Managed<D> {
    async fn full(&mut self, want: &BTreeSet<IpNet>) -> Vec<String> {
        let errors = if self.keep.is_empty() {
            reconcile::apply(&mut self.dp, want).await
        } else {
            let want: BTreeSet<IpNet> = want.union(&self.keep).copied().collect();
            reconcile::apply(&mut self.dp, &want).await
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
struct NodeState {
    addresses: Option<Managed<dataplane::Addresses>>,
    routes: Option<Managed<dataplane::Routes>>,
}

impl NodeState {
    fn new(cfg: &Config) -> Result<NodeState, DaemonError> {
        let dp = &cfg.dataplane;
        if dp.address_interface.is_none() && dp.routes.is_none() {
            return Ok(NodeState {
                addresses: None,
                routes: None,
            });
        }
        let h = dataplane::connect().map_err(DaemonError::Dataplane)?;
        let managed = |dp| Managed {
            dp,
            applied: None,
            keep: BTreeSet::new(),
        };
        Ok(NodeState {
            addresses: dp
                .address_interface
                .as_deref()
                .map(|i| managed(dataplane::Addresses::new(h.clone(), i))),
            routes: dp.routes.clone().map(|r| Managed {
                dp: dataplane::Routes::new(h, r),
                applied: None,
                keep: BTreeSet::new(),
            }),
        })
    }

    /// The control plane's VIP address: on a shared interface it is vipd's
    /// too, and must not be taken for a stale Kubernetes VIP.
    fn keep(&mut self, cp: Option<(&str, IpNet)>) {
        if let Some(a) = self.addresses.as_mut() {
            a.keep = cp
                .filter(|(i, _)| *i == a.dp.interface())
                .map(|(_, p)| p)
                .into_iter()
                .collect();
        }
    }

    async fn full(&mut self, want: &BTreeSet<IpNet>) {
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

    async fn changes(&mut self, kube: &KubeRoutes, changed: &[IpNet]) {
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

/// The control plane with what it drives on the node: the VIP as an
/// address, and (through the daemon's [`ipvs::Manager`]) its IPVS service.
struct Control {
    cp: ControlPlane,
    addr: dataplane::Addresses,
    /// IPVS holds the service as wanted (always true without IPVS): the VIP
    /// is announced only then, so traffic is not drawn to a node that
    /// cannot serve it.
    ipvs_ok: bool,
}

impl Control {
    fn start(
        cfg: &crate::config::ControlPlane,
        previous: Option<&Control>,
    ) -> Result<Control, DaemonError> {
        let h = dataplane::connect().map_err(DaemonError::Dataplane)?;
        Ok(Control {
            addr: dataplane::Addresses::new(h, &cfg.interface),
            ipvs_ok: !cfg.ipvs,
            cp: ControlPlane::start(cfg.clone(), previous.map(|p| &p.cp)),
        })
    }

    fn address(&self) -> (&str, IpNet) {
        (self.cp.cfg.interface.as_str(), self.cp.prefix())
    }

    /// The VIP and its attributes while it should be announced.
    fn route(&self) -> Option<(IpNet, Arc<RouteAttrs>)> {
        (self.cp.serving() && self.ipvs_ok)
            .then(|| (self.cp.prefix(), Arc::new(self.cp.cfg.attrs.clone())))
    }

    /// Puts the address and the IPVS service in place (idempotent: also
    /// the repair pass).
    async fn apply(&mut self, mgr: &mut ipvs::Manager) {
        let p = self.cp.prefix();
        match self.addr.owned().await {
            Ok(have) if have.contains(&p) => {}
            Ok(_) => match self.addr.add(p).await {
                Ok(()) => {
                    info!(vip = %p, interface = %self.cp.cfg.interface, "control plane: VIP address added")
                }
                // Someone else's address: it serves as well, and stays theirs.
                Err(e) if e.contains("os error 17") => {}
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
    async fn retire(mut self, next: Option<&Control>, mgr: &mut ipvs::Manager) {
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
async fn replace_control(
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
fn with_discovered(
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
fn drop_ipvs(mgr: &mut ipvs::Manager) {
    if !mgr.owns_any() {
        return;
    }
    match mgr.sync(None) {
        Ok(ops) => ops.iter().for_each(|op| info!("IPVS: {op}")),
        Err(e) => error!("IPVS: {e}"),
    }
}

async fn control_changed(c: &mut Option<Control>) {
    match c {
        Some(c) => c.cp.changed().await,
        None => std::future::pending().await,
    }
}

fn report(
    cfg: &Config,
    speaker: &Speaker,
    kube: &Mutex<KubeStatus>,
    control: &Option<Control>,
    static_prefixes: usize,
    table_prefixes: usize,
) -> status::Report {
    let asn = |a: IpAddr| {
        cfg.bgp
            .peers
            .iter()
            .find(|p| p.address == a)
            .map_or(0, |p| p.asn)
    };
    status::Report {
        peers: speaker
            .status()
            .into_iter()
            .map(|(a, s)| (a, asn(a), s))
            .collect(),
        kube: cfg
            .kubernetes
            .as_ref()
            .map(|_| kube.lock().unwrap().clone()),
        control: control.as_ref().map(|c| status::ControlLine {
            vip: c.cp.cfg.vip,
            announced: c.route().is_some(),
            ipvs_ok: c.cp.cfg.ipvs.then_some(c.ipvs_ok),
            backends: c
                .cp
                .backends()
                .into_iter()
                .map(|(addr, healthy, last_error)| status::BackendLine {
                    addr,
                    healthy,
                    last_error,
                })
                .collect(),
        }),
        static_prefixes,
        table_prefixes,
        now: std::time::SystemTime::now(),
        ipam: None,
    }
}

/// After the control plane changed: a new base and table where the VIP's
/// announcement changed, handed to the speaker when `publish`.
fn refresh(
    base: &mut Arc<Table>,
    table: &mut Arc<Table>,
    statics: &Arc<Table>,
    control: &Option<Control>,
    kube: &KubeRoutes,
    speaker: &Speaker,
    publish: bool,
) {
    let next = with_control(statics, control);
    if next != *base {
        *base = next;
        *table = reconcile::merged(base, kube);
        if publish {
            speaker.set_table(table.clone());
        }
    }
}

/// The configured announcements plus the control-plane VIP while it serves
/// (without it, the static table itself, shared).
fn with_control(statics: &Arc<Table>, control: &Option<Control>) -> Arc<Table> {
    match control.as_ref().and_then(Control::route) {
        Some((p, a)) => {
            let mut t = (**statics).clone();
            t.insert(p, a);
            Arc::new(t)
        }
        None => statics.clone(),
    }
}

fn log_errors(errors: Vec<String>) {
    for e in errors {
        warn!("dataplane: {e} (tried again within 30 s)");
    }
}

/// The announcements of the configuration as a table. Equal attribute sets
/// share one `Arc`, whichever `[[announce]]` entries they come from: one
/// copy in memory, and the diff finds them equal by pointer.
pub fn static_table(cfg: &Config) -> Table {
    let mut t = Table::new();
    let mut interned: HashMap<&RouteAttrs, Arc<RouteAttrs>> = HashMap::new();
    for a in &cfg.announce {
        let attrs = interned
            .entry(&a.attrs)
            .or_insert_with(|| Arc::new(a.attrs.clone()))
            .clone();
        for p in &a.prefixes {
            t.insert(*p, attrs.clone());
        }
    }
    t
}

/// Loads the configuration, keeping only what the daemon needs afterwards.
fn load(path: &Path) -> Result<(Config, Arc<Table>), Problems> {
    let mut cfg = Config::load(path)?;
    let table = Arc::new(static_table(&cfg));
    // The prefix lists now live in the table; the parsed copy (and the
    // `config` crate's value tree before it) can go back to the system.
    cfg.announce = Vec::new();
    trim_heap();
    Ok((cfg, table))
}

fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub async fn run(path: PathBuf) -> Result<(), DaemonError> {
    let (mut cfg, mut statics) = load(&path)?;
    info!(
        config = %path.display(),
        asn = cfg.bgp.asn,
        router_id = %cfg.bgp.router_id,
        peers = cfg.bgp.peers.len(),
        prefixes = statics.len(),
        "vipd starting"
    );
    // With Kubernetes, nothing is announced before its caches have synced:
    // the speaker starts without a table, and gets one with the first Full.
    let (kube_tx, mut kube_rx) = mpsc::channel::<Update>(256);
    let kube_status = Arc::new(Mutex::new(KubeStatus::default()));
    let mut kube = KubeRoutes::default();
    let mut kube_ready = false;
    let (mut mgr, bad) = ipvs::Manager::new(&cfg.dataplane.ipvs_state);
    for b in bad {
        warn!("IPVS state: {b}");
    }
    // The API servers default/kubernetes lists, once Kubernetes is synced.
    let mut discovered: BTreeSet<IpAddr> = BTreeSet::new();
    let mut control = cfg
        .control_plane
        .as_ref()
        .map(|c| Control::start(c, None))
        .transpose()?;
    match control.as_mut() {
        Some(c) => c.apply(&mut mgr).await,
        // Services a previous run created for a control plane no longer
        // configured.
        None => drop_ipvs(&mut mgr),
    }
    let mut base = with_control(&statics, &control);
    let mut table = base.clone();
    let restarted = take_restart_record(&cfg.bgp);
    let mut allocator = None;
    let mut speaker = match &cfg.kubernetes {
        None => Speaker::start(&cfg.bgp, Some(table.clone()), restarted)?,
        Some(k) => {
            let (client, mut api) = k8s::watch::connect(k).await?;
            if let Some(cp) = &cfg.control_plane {
                // The control-plane VIP and the API servers behind it are
                // never a Service's VIP.
                api.push(cp.vip);
                api.extend(cp.backends.iter().map(|b| b.ip()));
            }
            let speaker = Speaker::start(&cfg.bgp, None, restarted)?;
            allocator = cfg
                .ipam
                .as_ref()
                .map(|i| k8s::allocator::spawn(i, k, client.clone()));
            tokio::spawn(k8s::watch::run(
                k.clone(),
                client,
                api,
                kube_tx,
                kube_status.clone(),
            ));
            speaker
        }
    };
    let (ask_tx, mut ask_rx) = mpsc::channel::<status::Ask>(16);
    if let Some(addr) = cfg.status {
        // A busy port costs the report, not the announcements.
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(status::serve(l, ask_tx));
            }
            Err(e) => {
                warn!(%addr, "status: cannot listen: {e}; vipd runs without /readyz and /status")
            }
        }
    }
    let mut node = NodeState::new(&cfg)?;
    node.keep(control.as_ref().map(Control::address));
    let mut resync = tokio::time::interval(std::time::Duration::from_secs(30));
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    loop {
        tokio::select! {
            Some(u) = kube_rx.recv() => {
                let t = std::time::Instant::now();
                let mut changed = vec![];
                let mut next = Some(u);
                let mut apis = None;
                // Whatever else is waiting goes into the same table.
                while let Some(u) = next {
                    changed.extend(match u {
                        Update::Full(all) => {
                            kube_ready = true;
                            kube.set_all(&all)
                        }
                        Update::Delta(d) => kube.apply(&d),
                        Update::ApiServers(a) => {
                            apis = Some(a);
                            vec![]
                        }
                    });
                    next = kube_rx.try_recv().ok();
                }
                if let Some(a) = apis {
                    discovered = a;
                    if let Some(cp) = cfg.control_plane.as_ref().filter(|c| c.discover) {
                        let list: Vec<String> = discovered.iter().map(|a| a.to_string()).collect();
                        info!(api_servers = %list.join(","), "control plane: API servers listed by default/kubernetes");
                        replace_control(&mut control, Some(&with_discovered(cp, &discovered)), &mut mgr).await;
                        base = with_control(&statics, &control);
                        table = reconcile::merged(&base, &kube);
                    }
                }
                reconcile::patch(&mut table, &base, &kube, &changed);
                // Nothing before the readiness barrier, whatever came first.
                if kube_ready {
                    speaker.set_table(table.clone());
                }
                tracing::debug!(us = t.elapsed().as_micros() as u64, changed = changed.len(), "table updated");
                node.changes(&kube, &changed).await;
            }
            _ = control_changed(&mut control) => {
                if let Some(c) = control.as_mut() {
                    c.apply(&mut mgr).await;
                }
                let publish = cfg.kubernetes.is_none() || kube_ready;
                refresh(&mut base, &mut table, &statics, &control, &kube, &speaker, publish);
            }
            _ = resync.tick() => {
                // Repairs drift (an address someone removed) and retries failures.
                if kube_ready {
                    node.full(&kube.keys()).await;
                }
                if let Some(c) = control.as_mut() {
                    c.apply(&mut mgr).await;
                    let publish = cfg.kubernetes.is_none() || kube_ready;
                    refresh(&mut base, &mut table, &statics, &control, &kube, &speaker, publish);
                }
            }
            _ = hup.recv() => {
                info!("SIGHUP: reloading {}", path.display());
                match load(&path) {
                    Ok((new, new_statics)) => {
                        if new.bgp.withdraw_on_stop != cfg.bgp.withdraw_on_stop
                            || new.bgp.graceful_restart != cfg.bgp.graceful_restart
                        {
                            info!("graceful_restart and withdraw_on_stop changes apply to new sessions and the next stop");
                        }
                        if new.kubernetes != cfg.kubernetes || new.dataplane != cfg.dataplane {
                            warn!("[kubernetes] and [dataplane] changes take effect only when vipd restarts");
                        }
                        reload_ipam(&mut cfg, &new, allocator.as_ref());
                        if new.control_plane != cfg.control_plane {
                            info!("control plane reconfigured");
                            let next = new.control_plane.as_ref().map(|c| with_discovered(c, &discovered));
                            replace_control(&mut control, next.as_ref(), &mut mgr).await;
                            node.keep(control.as_ref().map(Control::address));
                            cfg.control_plane = new.control_plane.clone();
                        }
                        speaker.reconfigure(&new.bgp).await;
                        info!(before = statics.len(), after = new_statics.len(), "static announcements reloaded");
                        statics = new_statics;
                        base = with_control(&statics, &control);
                        table = reconcile::merged(&base, &kube);
                        if cfg.kubernetes.is_none() || kube_ready {
                            speaker.set_table(table.clone());
                        }
                        cfg.bgp = new.bgp;
                    }
                    Err(p) => {
                        for line in &p.0 {
                            error!("{line}");
                        }
                        warn!("configuration not reloaded: the running one stays in force");
                    }
                }
            }
            Some(reply) = ask_rx.recv() => {
                let mut r = report(&cfg, &speaker, &kube_status, &control, statics.len(), table.len());
                r.ipam = allocator.as_ref().map(|a| a.status.lock().unwrap().clone());
                let _ = reply.send(status::Answer::from(&r));
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
        }
    }
    if let Some(a) = allocator.take() {
        a.stop().await;
    }
    speaker.shutdown(cfg.bgp.withdraw_on_stop).await;
    if cfg.bgp.graceful_restart && !cfg.bgp.withdraw_on_stop {
        write_restart_record(&cfg.bgp);
    }
    if cfg.bgp.withdraw_on_stop {
        // Otherwise the VIPs keep working on the node through a restart.
        node.keep(None);
        node.full(&Default::default()).await;
        if let Some(c) = control.take() {
            c.retire(None, &mut mgr).await;
        }
    }
    info!("vipd stopped");
    Ok(())
}

/// New pools reach the allocator; the Lease's settings, or `[ipam]`
/// itself appearing or going, need a restart.
fn reload_ipam(cfg: &mut Config, new: &Config, allocator: Option<&k8s::allocator::Handle>) {
    match (&mut cfg.ipam, &new.ipam, allocator) {
        (Some(old), Some(next), Some(a)) => {
            if next.pools != old.pools {
                info!(
                    pools = next.pools.len(),
                    "address pools reloaded: nothing assigned moves"
                );
                a.set_pools(next.pools.clone());
                old.pools = next.pools.clone();
            }
            if (&next.lease_namespace, &next.lease_name, next.lease_duration)
                != (&old.lease_namespace, &old.lease_name, old.lease_duration)
            {
                warn!("[ipam] lease changes take effect only when vipd restarts");
            }
        }
        (None, None, _) => {}
        _ => warn!("[ipam] added or removed: takes effect only when vipd restarts"),
    }
}

/// Reads and removes the record of the last graceful stop: whether this
/// start is a restart within the restart time (RFC 4724 section 3).
fn take_restart_record(bgp: &BgpConfig) -> bool {
    let path = &bgp.restart_record;
    let text = std::fs::read_to_string(path).ok();
    if text.is_some() {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(path = %path.display(), "cannot remove the restart record: {e}");
        }
    }
    let restarted = bgp.graceful_restart
        && crate::bgp::restart::restarted(
            text.as_deref(),
            std::time::SystemTime::now(),
            bgp.restart_time,
        );
    if restarted {
        info!("restarting within the restart time: OPENs carry the Restart State bit");
    }
    restarted
}

fn write_restart_record(bgp: &BgpConfig) {
    let path = &bgp.restart_record;
    let text = crate::bgp::restart::record(std::time::SystemTime::now());
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(path, text));
    if let Err(e) = written {
        warn!(path = %path.display(), "cannot write the restart record: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_announcements_share_one_attribute_set() {
        let cfg = Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
             [[announce]]\nprefix = \"203.0.113.1/32\"\ncommunities = [\"65010:1\"]\n\
             [[announce]]\nprefix = \"203.0.113.2/32\"\ncommunities = [\"65010:1\"]\n\
             [[announce]]\nprefix = \"203.0.113.3/32\"\nmed = 5\n",
        )
        .unwrap();
        let t = static_table(&cfg);
        let at = |p: &str| t[&p.parse::<IpNet>().unwrap()].clone();
        assert!(Arc::ptr_eq(&at("203.0.113.1/32"), &at("203.0.113.2/32")));
        assert!(!Arc::ptr_eq(&at("203.0.113.1/32"), &at("203.0.113.3/32")));
    }
}
