//! The top of the data flow: configuration in, table to the speaker,
//! signals for reload and stop. The daemon owns the state and routes each
//! message to one method; what each piece decides lives in its own layer
//! (`reconcile` for the table and the node, `reconcile::control` for the
//! control plane, `k8s` for the cluster).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::bgp::rib::Table;
use crate::bgp::{Speaker, SpeakerError};
use crate::config::{BgpConfig, Config, Labels, LogConfig, NodeAddresses, Problems, RouteAttrs};
use crate::dataplane::ipvs;
use crate::k8s;
use crate::k8s::watch::{KubeStatus, Update, WatchError};
use crate::reconcile::control::{self, Control};
use crate::reconcile::node::NodeState;
use crate::reconcile::{self, KubeRoutes};
use crate::{drain, status};
use std::time::{Duration, Instant};

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

/// Everything vipd decides with, owned in one place: the table and what it
/// is made of, the node's dataplanes, the control plane, the speaker, the
/// allocator. Nothing else holds this state; tasks reach it by message.
struct Daemon {
    path: PathBuf,
    cfg: Config,
    /// The `[[announce]]` prefixes.
    statics: Arc<Table>,
    /// `statics` plus the control-plane VIP while it is announced.
    base: Arc<Table>,
    /// `base` plus the Kubernetes VIPs: what the speaker announces.
    table: Arc<Table>,
    kube: KubeRoutes,
    /// The first complete intent has arrived (the readiness barrier).
    kube_ready: bool,
    kube_status: Arc<Mutex<KubeStatus>>,
    /// The API servers `default/kubernetes` lists, once synced.
    discovered: BTreeSet<IpAddr>,
    control: Option<Control>,
    mgr: ipvs::Manager,
    node: NodeState,
    speaker: Speaker,
    allocator: Option<k8s::allocator::Handle>,
    /// This node's labels, once the watch has them: they select the peers.
    labels: Option<Labels>,
    /// What is drained, and since when (with `[drain]`).
    draining: Option<(drain::Drained, Instant)>,
    /// The watch task (with `[kubernetes]`), which `vipd explain` asks.
    watch: Option<k8s::watch::Handle>,
    /// The Node's InternalIPs as read at start, for `"node"` addresses
    /// in a reloaded file.
    node_addresses: Option<NodeAddresses>,
}

impl Daemon {
    /// Loads the configuration, puts the control plane in place, starts the
    /// speaker and the Kubernetes tasks; the receiver carries the watch's
    /// updates.
    async fn start(
        path: PathBuf,
        logging: &dyn Fn(&LogConfig),
    ) -> Result<(Daemon, mpsc::Receiver<Update>), DaemonError> {
        let (mut cfg, statics) = load(&path)?;
        logging(&cfg.log);
        log_start(&path, &cfg, &statics);
        let (kube_tx, kube_rx) = mpsc::channel::<Update>(256);
        let kube_status = Arc::new(Mutex::new(KubeStatus::default()));
        let (mgr, control) = start_control(&cfg).await?;
        let base = control::with_control(&statics, &control);
        let started = start_speaker(&mut cfg, base.clone(), kube_tx, &kube_status).await?;
        let mut node = NodeState::new(&cfg).map_err(DaemonError::Dataplane)?;
        node.keep(control.as_ref().map(Control::address));
        let d = Daemon {
            path,
            cfg,
            statics,
            table: base.clone(),
            base,
            kube: KubeRoutes::default(),
            kube_ready: false,
            kube_status,
            discovered: BTreeSet::new(),
            control,
            mgr,
            node,
            speaker: started.speaker,
            allocator: started.allocator,
            labels: None,
            draining: None,
            watch: started.watch,
            node_addresses: started.node,
        };
        Ok((d, kube_rx))
    }

    /// With Kubernetes, nothing is announced before its caches have synced.
    fn publishing(&self) -> bool {
        self.cfg.kubernetes.is_none() || self.kube_ready
    }

    /// Updates from the watch: this one and whatever else is waiting, into
    /// one table.
    async fn on_kube(&mut self, first: Update, rx: &mut mpsc::Receiver<Update>) {
        let t = std::time::Instant::now();
        let mut since: Option<Instant> = None;
        let mut changed = vec![];
        let mut next = Some(first);
        let mut apis = None;
        let mut facts = None;
        while let Some(u) = next {
            changed.extend(match u {
                Update::Full(all) => {
                    self.kube_ready = true;
                    self.kube.set_all(&all)
                }
                Update::Delta(d, at) => {
                    since = Some(since.map_or(at, |s| s.min(at)));
                    self.kube.apply(&d)
                }
                Update::ApiServers(a) => {
                    apis = Some(a);
                    vec![]
                }
                Update::Node(f) => {
                    facts = Some(f);
                    vec![]
                }
            });
            next = rx.try_recv().ok();
        }
        if let Some(a) = apis {
            self.on_api_servers(a).await;
        }
        if let Some(f) = facts {
            self.on_drain_facts(&f);
            self.on_labels(f.labels).await;
        }
        reconcile::patch(&mut self.table, &self.base, &self.kube, &changed);
        self.publish_since(since);
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            changed = changed.len(),
            "table updated"
        );
        self.node.changes(&self.kube, &changed).await;
        crate::telemetry::reconcile(t.elapsed());
    }

    /// The API servers `default/kubernetes` lists: the control plane's
    /// backends when it discovers them.
    async fn on_api_servers(&mut self, found: BTreeSet<IpAddr>) {
        self.discovered = found;
        let Some(cp) = self.cfg.control_plane.as_ref().filter(|c| c.discover) else {
            return;
        };
        let list: Vec<String> = self.discovered.iter().map(|a| a.to_string()).collect();
        info!(api_servers = %list.join(","), "control plane: API servers listed by default/kubernetes");
        let next = control::with_discovered(cp, &self.discovered);
        control::replace_control(&mut self.control, Some(&next), &mut self.mgr).await;
        self.base = control::with_control(&self.statics, &self.control);
        self.table = reconcile::merged(&self.base, &self.kube);
    }

    /// This node's labels changed: the peers whose `node_selector` they
    /// match start, the others stop; sessions of peers kept are untouched.
    async fn on_labels(&mut self, labels: Labels) {
        let before = self.cfg.bgp.for_node(self.labels.as_ref());
        let after = self.cfg.bgp.for_node(Some(&labels));
        let first = self.labels.replace(labels).is_none();
        if before.peers != after.peers {
            let names: Vec<String> = after.peers.iter().map(|p| p.address.to_string()).collect();
            info!(peers = %names.join(","), "peers for this node's labels");
            self.speaker.reconfigure(&after).await;
        }
        if first {
            self.speaker.started();
        }
    }

    /// The Node's cordon, labels and taints against `[drain]`: a drain
    /// begins (GRACEFUL_SHUTDOWN now, withdrawal later) or ends.
    fn on_drain_facts(&mut self, f: &drain::NodeFacts) {
        let Some(cfg) = &self.cfg.drain else {
            return;
        };
        let d = drain::drained(cfg, f);
        match (&self.draining, d.services) {
            (None, true) => {
                warn!(reason = %d.reason, secs = cfg.graceful_shutdown.as_secs(), "draining: VIPs announced with GRACEFUL_SHUTDOWN (65535:0), withdrawn after graceful_shutdown_secs");
                self.draining = Some((d, Instant::now()));
            }
            (Some(_), false) => {
                info!("drain ended: VIPs announced as before");
                self.draining = None;
            }
            // Still draining; what is drained may change (a cordon on top
            // of the exclusion label adds the control-plane VIP).
            (Some((_, since)), true) => self.draining = Some((d, *since)),
            (None, false) => {}
        }
    }

    /// What is drained and where the drain stands, while one is under way.
    fn drain_phase(&self) -> Option<(&drain::Drained, drain::Phase)> {
        let (d, since) = self.draining.as_ref()?;
        let g = self.cfg.drain.as_ref()?.graceful_shutdown;
        Some((d, drain::phase(since.elapsed(), g)))
    }

    /// When the drain's announcements change next (the withdrawal).
    fn drain_deadline(&self) -> Option<Instant> {
        match self.drain_phase()? {
            (_, drain::Phase::Shutdown { left }) => Some(Instant::now() + left),
            (_, drain::Phase::Withdrawn) => None,
        }
    }

    /// Hands the speaker the table, as a drain has it announced. Nothing
    /// before the readiness barrier.
    fn publish(&self) {
        self.publish_since(None)
    }

    /// As [`Daemon::publish`], for a table made from Kubernetes events the
    /// oldest of which arrived at `since`.
    fn publish_since(&self, since: Option<Instant>) {
        if !self.publishing() {
            return;
        }
        let Some((d, phase)) = self.drain_phase() else {
            self.speaker.offer(self.table.clone(), since);
            return;
        };
        let mut drained = self.kube.keys();
        if d.control_plane {
            drained.extend(
                self.control
                    .as_ref()
                    .and_then(Control::route)
                    .map(|(p, _)| p),
            );
        }
        self.speaker
            .offer(Arc::new(drain::apply(&self.table, &drained, phase)), since);
    }

    /// A backend's health changed.
    async fn on_control(&mut self) {
        if let Some(c) = self.control.as_mut() {
            c.apply(&mut self.mgr).await;
        }
        self.refresh();
    }

    /// Every 30 s: repairs drift (an address someone removed) and retries
    /// failures.
    async fn on_resync(&mut self) {
        if self.kube_ready {
            self.node.full(&self.kube.keys()).await;
        }
        if let Some(c) = self.control.as_mut() {
            c.apply(&mut self.mgr).await;
            self.refresh();
        }
    }

    /// After the control plane changed: a new base and table where the
    /// VIP's announcement changed, handed to the speaker when publishing.
    fn refresh(&mut self) {
        let next = control::with_control(&self.statics, &self.control);
        if next != self.base {
            self.base = next;
            self.table = reconcile::merged(&self.base, &self.kube);
            self.publish();
        }
    }

    /// SIGHUP: the new configuration, or the running one stays with every
    /// problem logged.
    async fn on_reload(&mut self, logging: &dyn Fn(&LogConfig)) {
        info!("SIGHUP: reloading {}", self.path.display());
        let (new, new_statics) = match load_for_node(&self.path, self.node_addresses) {
            Ok(x) => x,
            Err(p) => {
                for line in &p.0 {
                    error!("{line}");
                }
                warn!("configuration not reloaded: the running one stays in force");
                return;
            }
        };
        if new.log != self.cfg.log {
            logging(&new.log);
            self.cfg.log = new.log.clone();
        }
        if new.bgp.withdraw_on_stop != self.cfg.bgp.withdraw_on_stop
            || new.bgp.graceful_restart != self.cfg.bgp.graceful_restart
        {
            info!("graceful_restart and withdraw_on_stop changes apply to new sessions and the next stop");
        }
        if new.kubernetes != self.cfg.kubernetes || new.dataplane != self.cfg.dataplane {
            warn!("[kubernetes] and [dataplane] changes take effect only when vipd restarts");
        }
        reload_ipam(&mut self.cfg, &new, self.allocator.as_ref());
        if new.control_plane != self.cfg.control_plane {
            info!("control plane reconfigured");
            let next = new
                .control_plane
                .as_ref()
                .map(|c| control::with_discovered(c, &self.discovered));
            control::replace_control(&mut self.control, next.as_ref(), &mut self.mgr).await;
            self.node.keep(self.control.as_ref().map(Control::address));
            self.cfg.control_plane = new.control_plane.clone();
        }
        self.speaker.started();
        self.speaker
            .reconfigure(&new.bgp.for_node(self.labels.as_ref()))
            .await;
        info!(
            before = self.statics.len(),
            after = new_statics.len(),
            "static announcements reloaded"
        );
        self.statics = new_statics;
        self.base = control::with_control(&self.statics, &self.control);
        self.table = reconcile::merged(&self.base, &self.kube);
        if new.drain != self.cfg.drain {
            info!("[drain] reloaded: applies from the next change of the Node");
            self.cfg.drain = new.drain.clone();
        }
        self.cfg.bgp = new.bgp;
        self.publish();
    }

    /// What `vipd status` and `/metrics` show, as plain values.
    fn report(&self) -> status::Report {
        status::Report {
            peers: self.peers(),
            kube: self
                .cfg
                .kubernetes
                .as_ref()
                .map(|_| self.kube_status.lock().unwrap().clone()),
            control: self.control.as_ref().map(control_line),
            static_prefixes: self.statics.len(),
            table_prefixes: self.table.len(),
            now: std::time::SystemTime::now(),
            ipam: self
                .allocator
                .as_ref()
                .map(|a| a.status.lock().unwrap().clone()),
            drain: self.drain_line(),
            bfd_drops: self.speaker.bfd_drops(),
        }
    }

    /// Each session's status with its peer's AS number.
    fn peers(&self) -> Vec<(IpAddr, u32, crate::bgp::session::PeerStatus)> {
        let asn = |a: IpAddr| {
            self.cfg
                .bgp
                .peers
                .iter()
                .find(|p| p.address == a)
                .map_or(0, |p| p.asn)
        };
        self.speaker
            .status()
            .into_iter()
            .map(|(a, s)| (a, asn(a), s))
            .collect()
    }

    /// A client's question: the report at once; an explanation once the
    /// watch has looked the Service up (without holding up the loop).
    fn on_ask(&self, ask: status::Ask) {
        let key = match ask.query {
            status::Query::Report => {
                let _ = ask
                    .reply
                    .send(status::Answer::Report(Box::new(self.report())));
                return;
            }
            status::Query::Explain(key) => key,
        };
        let peers = self.peers();
        let drain = self
            .drain_line()
            .filter(|d| d.active)
            .map(|d| match d.left_secs {
                Some(n) => format!(
                    "announced with GRACEFUL_SHUTDOWN ({}), withdrawn in {n}s",
                    d.reason
                ),
                None => format!("withdrawn ({})", d.reason),
            });
        let (pending, allocator_elsewhere) = self.allocator.as_ref().map_or((None, None), |a| {
            let st = a.status.lock().unwrap();
            let pending = st
                .pending
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, why)| why.clone());
            let elsewhere =
                (!st.leader).then(|| st.holder.clone().unwrap_or_else(|| "none yet".into()));
            (pending, elsewhere)
        });
        let explain = self.watch.as_ref().map(|w| w.queries.clone());
        tokio::spawn(async move {
            let view = match explain {
                Some(q) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if q.send((key.clone(), tx)).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(v) => Some(v),
                        Err(_) => return,
                    }
                }
                None => None,
            };
            let cx = status::explain::Context {
                peers: &peers,
                drain,
                pending,
                allocator_elsewhere,
            };
            let e = status::explain::combine(&key, view, &cx);
            let _ = ask.reply.send(status::Answer::Explain(Box::new(e)));
        });
    }

    fn drain_line(&self) -> Option<status::DrainLine> {
        self.cfg.drain.as_ref()?;
        let Some((d, phase)) = self.drain_phase() else {
            return Some(status::DrainLine::default());
        };
        Some(status::DrainLine {
            active: true,
            reason: d.reason.clone(),
            left_secs: match phase {
                drain::Phase::Shutdown { left } => Some(left.as_secs()),
                drain::Phase::Withdrawn => None,
            },
        })
    }

    /// SIGTERM or SIGINT: the Lease released, the sessions closed (kept at
    /// graceful-restart peers, or withdrawn), and with `withdraw_on_stop`
    /// what vipd put on the node removed.
    async fn stop(mut self) {
        if let Some(a) = self.allocator.take() {
            a.stop().await;
        }
        self.graceful_shutdown().await;
        let bgp = &self.cfg.bgp;
        self.speaker.shutdown(bgp.withdraw_on_stop).await;
        if bgp.graceful_restart && !bgp.withdraw_on_stop {
            write_restart_record(bgp);
        }
        if bgp.withdraw_on_stop {
            // Otherwise the VIPs keep working on the node through a restart.
            self.node.keep(None);
            self.node.full(&Default::default()).await;
            if let Some(c) = self.control.take() {
                c.retire(None, &mut self.mgr).await;
            }
        }
        info!("vipd stopped");
    }
}

impl Daemon {
    /// Stopping with `withdraw_on_stop` and `[drain]`: every route is
    /// announced with GRACEFUL_SHUTDOWN for `graceful_shutdown_secs` first,
    /// so traffic moves away before the withdrawal.
    async fn graceful_shutdown(&self) {
        let Some(cfg) = self
            .cfg
            .drain
            .as_ref()
            .filter(|_| self.cfg.bgp.withdraw_on_stop)
        else {
            return;
        };
        if cfg.graceful_shutdown.is_zero() || !self.publishing() {
            return;
        }
        info!(
            secs = cfg.graceful_shutdown.as_secs(),
            "stopping: routes announced with GRACEFUL_SHUTDOWN before the withdrawal"
        );
        let all = self.table.keys().copied().collect();
        let phase = drain::phase(Duration::ZERO, cfg.graceful_shutdown);
        self.speaker
            .set_table(Arc::new(drain::apply(&self.table, &all, phase)));
        tokio::time::sleep(cfg.graceful_shutdown).await;
    }
}

fn log_start(path: &Path, cfg: &Config, statics: &Table) {
    let router_id = if cfg.bgp.router_id_from_node {
        "from the Node".to_string()
    } else {
        cfg.bgp.router_id.to_string()
    };
    info!(
        config = %path.display(),
        asn = cfg.bgp.asn,
        %router_id,
        peers = cfg.bgp.peers.len(),
        prefixes = statics.len(),
        "vipd starting"
    );
}

/// The IPVS manager and, with `[control_plane]`, the control plane put in
/// place; without one, IPVS services an earlier run created are removed.
async fn start_control(cfg: &Config) -> Result<(ipvs::Manager, Option<Control>), DaemonError> {
    let (mut mgr, bad) = ipvs::Manager::new(&cfg.dataplane.ipvs_state);
    for b in bad {
        warn!("IPVS state: {b}");
    }
    let mut control = cfg
        .control_plane
        .as_ref()
        .map(|c| Control::start(c, None))
        .transpose()
        .map_err(DaemonError::Dataplane)?;
    match control.as_mut() {
        Some(c) => c.apply(&mut mgr).await,
        None => control::drop_ipvs(&mut mgr),
    }
    Ok((mgr, control))
}

/// The speaker, and with `[kubernetes]` the watch and the allocator. With
/// Kubernetes the speaker starts without a table: it gets one with the
/// first complete intent.
struct Started {
    speaker: Speaker,
    allocator: Option<k8s::allocator::Handle>,
    watch: Option<k8s::watch::Handle>,
    /// The Node's InternalIPs, when `"node"` or an omitted `router_id`
    /// needed them.
    node: Option<NodeAddresses>,
}

/// With `[kubernetes]`, `cfg.bgp` comes back with its `"node"` addresses
/// (and an omitted router ID) resolved from the Node.
async fn start_speaker(
    cfg: &mut Config,
    table: Arc<Table>,
    kube_tx: mpsc::Sender<Update>,
    kube_status: &Arc<Mutex<KubeStatus>>,
) -> Result<Started, DaemonError> {
    let restarted = take_restart_record(&cfg.bgp);
    // Peers with a node_selector wait for the Node's labels.
    let bgp = cfg.bgp.for_node(None);
    let Some(k) = cfg.kubernetes.clone() else {
        let mut speaker = Speaker::start(&bgp, Some(table), restarted)?;
        speaker.started();
        return Ok(Started {
            speaker,
            allocator: None,
            watch: None,
            node: None,
        });
    };
    let (client, mut api) = k8s::watch::connect(&k).await?;
    let node = if cfg.bgp.needs_node() {
        let n = k8s::watch::fetch_internal_ips(&client, &k.node_name).await;
        cfg.bgp = cfg.bgp.with_node_addresses(&n)?;
        info!(router_id = %cfg.bgp.router_id, node_ipv4 = ?n.v4, node_ipv6 = ?n.v6, "addresses from the Node resolved");
        Some(n)
    } else {
        None
    };
    let bgp = cfg.bgp.for_node(None);
    if let Some(cp) = &cfg.control_plane {
        // The control-plane VIP and the API servers behind it are never a
        // Service's VIP.
        api.push(cp.vip);
        api.extend(cp.backends.iter().map(|b| b.ip()));
    }
    let speaker = Speaker::start(&bgp, None, restarted)?;
    let allocator = cfg
        .ipam
        .as_ref()
        .map(|i| k8s::allocator::spawn(i, &k, client.clone()));
    let (explain_tx, explain_rx) = mpsc::channel(8);
    let watch = crate::task::Owned::spawn(k8s::watch::run(
        k.clone(),
        client,
        api,
        kube_tx,
        kube_status.clone(),
        explain_rx,
    ));
    Ok(Started {
        speaker,
        allocator,
        watch: Some(k8s::watch::Handle {
            queries: explain_tx,
            task: watch,
        }),
        node,
    })
}

fn control_line(c: &Control) -> status::ControlLine {
    status::ControlLine {
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

/// A reloaded file, with its `"node"` addresses resolved from those read
/// at start (a Node's addresses are not followed while vipd runs).
fn load_for_node(
    path: &Path,
    node: Option<NodeAddresses>,
) -> Result<(Config, Arc<Table>), Problems> {
    let (mut c, t) = load(path)?;
    if c.bgp.needs_node() {
        let Some(n) = node else {
            return Err(Problems(vec![crate::config::Problem {
                key: "bgp".into(),
                reason: "\"node\" addresses or an omitted router_id need the Node's addresses, read at start: restart vipd".into(),
            }]));
        };
        c.bgp = c.bgp.with_node_addresses(&n)?;
    }
    Ok((c, t))
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs until SIGTERM or SIGINT. `logging` applies `[log]`, at start and
/// on each reload that changes it (logging is set up by the caller).
pub async fn run(path: PathBuf, logging: &dyn Fn(&LogConfig)) -> Result<(), DaemonError> {
    let (mut d, mut kube_rx) = Daemon::start(path, logging).await?;
    let (ask_tx, mut ask_rx) = mpsc::channel::<status::Ask>(16);
    // Ends with this function: nothing answers for a stopped daemon.
    let _listener = match d.cfg.status {
        // A busy port costs the report, not the announcements.
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(crate::task::Owned::spawn(status::http::serve(l, ask_tx))),
            Err(e) => {
                warn!(%addr, "status: cannot listen: {e}; vipd runs without /readyz and /status");
                None
            }
        },
        None => None,
    };
    let mut resync = tokio::time::interval(std::time::Duration::from_secs(30));
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    loop {
        let drain_at = d.drain_deadline();
        tokio::select! {
            Some(u) = kube_rx.recv() => d.on_kube(u, &mut kube_rx).await,
            _ = control::control_changed(&mut d.control) => d.on_control().await,
            _ = resync.tick() => d.on_resync().await,
            _ = hup.recv() => d.on_reload(logging).await,
            _ = sleep_until(drain_at) => {
                warn!("drained: VIPs withdrawn");
                d.publish();
            }
            Some(ask) = ask_rx.recv() => d.on_ask(ask),
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
        }
    }
    d.stop().await;
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
    use crate::k8s::intent::Want;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A daemon from a file with no peers, listener or dataplane: its
    /// message methods run without a socket or netlink.
    async fn daemon(extra: &str) -> Daemon {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vipd-daemon-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vipd.toml");
        let d = dir.display();
        std::fs::write(
            &path,
            format!(
                "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\nrestart_record = \"{d}/stopped\"\n\
                 [dataplane]\nipvs_state = \"{d}/ipvs\"\n\
                 [[announce]]\nprefix = \"198.51.100.1/32\"\n{extra}"
            ),
        )
        .unwrap();
        let d = Daemon::start(path, &|_| {}).await.unwrap().0;
        // Read at start only (the restart record, the IPVS state).
        let _ = std::fs::remove_dir_all(&dir);
        d
    }

    fn want(n: u8) -> (ipnet::IpNet, Want) {
        let p = format!("203.0.113.{n}/32").parse().unwrap();
        let w = Want {
            owners: [format!("uid-{n}")].into(),
            attrs: RouteAttrs::default(),
        };
        (p, w)
    }

    fn offered(d: &Daemon) -> Table {
        (*d.speaker.table().unwrap()).clone()
    }

    /// As if the watch ran: Kubernetes configured, no watch task.
    fn with_kubernetes(d: &mut Daemon) {
        d.cfg.kubernetes = Some(crate::k8s::intent::tests::kcfg());
    }

    #[tokio::test]
    async fn kubernetes_routes_reach_the_speaker_only_after_the_barrier() {
        let mut d = daemon("").await;
        with_kubernetes(&mut d);
        let (_tx, mut rx) = mpsc::channel(1);
        let (p1, w1) = want(1);
        let (p2, w2) = want(2);
        d.on_kube(
            Update::Delta(vec![(p1, Some(w1.clone()))], Instant::now()),
            &mut rx,
        )
        .await;
        assert!(
            !offered(&d).contains_key(&p1),
            "published before the barrier"
        );
        d.on_kube(Update::Full([(p1, w1), (p2, w2)].into()), &mut rx)
            .await;
        let t = offered(&d);
        assert!(t.contains_key(&p1) && t.contains_key(&p2));
        assert!(
            t.contains_key(&"198.51.100.1/32".parse().unwrap()),
            "statics kept"
        );
        d.on_kube(Update::Delta(vec![(p1, None)], Instant::now()), &mut rx)
            .await;
        assert!(!offered(&d).contains_key(&p1));
        assert_eq!(d.report().table_prefixes, 2);
    }

    #[tokio::test]
    async fn a_cordon_marks_the_vips_then_uncordon_restores_them() {
        let mut d = daemon("[drain]\ngraceful_shutdown_secs = 30\n").await;
        with_kubernetes(&mut d);
        let (_tx, mut rx) = mpsc::channel(1);
        let (p1, w1) = want(1);
        d.on_kube(Update::Full([(p1, w1)].into()), &mut rx).await;
        let cordoned = drain::NodeFacts {
            unschedulable: true,
            ..Default::default()
        };
        d.on_kube(Update::Node(cordoned), &mut rx).await;
        let t = offered(&d);
        assert!(
            t[&p1].communities.contains(&drain::GRACEFUL_SHUTDOWN),
            "{t:?}"
        );
        let statics: ipnet::IpNet = "198.51.100.1/32".parse().unwrap();
        assert!(
            t[&statics].communities.is_empty(),
            "only Service VIPs drain"
        );
        let left = d.drain_deadline().unwrap() - Instant::now();
        assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30));
        assert!(d.report().drain.unwrap().active);
        d.on_kube(Update::Node(Default::default()), &mut rx).await;
        assert!(offered(&d)[&p1].communities.is_empty());
        assert!(d.drain_deadline().is_none());
    }

    #[tokio::test]
    async fn questions_are_answered_from_the_state() {
        let d = daemon("").await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        d.on_ask(status::Ask {
            query: status::Query::Report,
            reply: tx,
        });
        let Ok(status::Answer::Report(r)) = rx.await else {
            panic!("no report");
        };
        assert_eq!((r.table_prefixes, r.static_prefixes), (1, 1));
        let (tx, rx) = tokio::sync::oneshot::channel();
        d.on_ask(status::Ask {
            query: status::Query::Explain("a/web".into()),
            reply: tx,
        });
        let Ok(status::Answer::Explain(e)) = rx.await else {
            panic!("no explanation");
        };
        assert!(
            e.render().contains("without [kubernetes]"),
            "{}",
            e.render()
        );
    }

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
        let at = |p: &str| t[&p.parse::<ipnet::IpNet>().unwrap()].clone();
        assert!(Arc::ptr_eq(&at("203.0.113.1/32"), &at("203.0.113.2/32")));
        assert!(!Arc::ptr_eq(&at("203.0.113.1/32"), &at("203.0.113.3/32")));
    }
}
