//! The top of the data flow: configuration in, table to the speaker,
//! signals for reload and stop. The daemon owns the state and routes each
//! message to one method; what each piece decides lives below it: the
//! tables in `reconcile::Tables`, the drain in `drain::Drain`, a reload in
//! [`reload::plan`], the control plane in `reconcile::control::Plane`, the
//! node's dataplanes in `reconcile::node`, the cluster in `k8s`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::bgp::{Speaker, SpeakerError};
use crate::config::{Config, Labels, LogConfig, NodeAddresses, Problems};
use crate::dataplane::ipvs;
use crate::k8s;
use crate::k8s::watch::{KubeStatus, Update, WatchError};
use crate::reconcile::control::{self, Plane};
use crate::reconcile::node::NodeState;
use crate::reconcile::Tables;
use crate::{drain, status};

pub mod reload;
mod start;

pub use start::static_table;

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
    Dataplane(#[from] crate::dataplane::Error),
    #[error("{key}: cannot listen on {addr}: {e}{}", if e.kind() == std::io::ErrorKind::AddrInUse { " (is another vipd running on this node? One node, one vipd: two speakers with one router ID take each other's sessions down)" } else { "" })]
    Listen {
        key: &'static str,
        addr: std::net::SocketAddr,
        e: std::io::Error,
    },
}

/// The configuration in force, replaced whole on a reload.
struct Applied {
    path: PathBuf,
    cfg: Config,
    /// The Node's InternalIPs as read at start, for `"node"` addresses in a
    /// reloaded file.
    node: Option<NodeAddresses>,
    /// The last reload's outcome, for the report.
    last: status::ConfigLine,
    /// The files the configuration depends on, for the watcher.
    files: tokio::sync::watch::Sender<Vec<PathBuf>>,
    _watcher: crate::task::Owned<()>,
}

/// The Kubernetes side as the daemon holds it (all `None` without
/// `[kubernetes]`).
#[derive(Default)]
struct Kube {
    status: Arc<Mutex<KubeStatus>>,
    /// The watch task, which `vipd explain` asks.
    watch: Option<k8s::watch::Handle>,
    allocator: Option<k8s::allocator::Handle>,
    /// This node's labels, once the watch has them: they select the peers.
    labels: Option<Labels>,
    /// Where Events go (this node's Node's among them).
    events: Option<k8s::events::Recorder>,
    /// The L2 responder's task, with `[l2]`.
    l2: Option<crate::l2::Handle>,
}

/// Everything vipd decides with, owned in one place. Nothing else holds
/// this state; tasks reach it by message.
struct Daemon {
    applied: Applied,
    tables: Tables,
    drain: drain::Drain,
    control: Plane,
    node: NodeState,
    speaker: Speaker,
    kube: Kube,
}

/// What the daemon's loop receives besides signals and questions.
struct Inbox {
    kube: mpsc::Receiver<Update>,
    ipvs: mpsc::UnboundedReceiver<ipvs::Synced>,
    /// The configuration files changed.
    reload: mpsc::Receiver<()>,
}

impl Daemon {
    /// Hands the speaker the table, as a drain has it announced. Nothing
    /// before the readiness barrier.
    fn publish(&self) {
        self.publish_since(None)
    }

    /// As [`Daemon::publish`], for a table made from Kubernetes events the
    /// oldest of which arrived at `since`.
    fn publish_since(&self, since: Option<Instant>) {
        if !self.tables.ready() {
            return;
        }
        let t = self.drain.announce(
            self.tables.table(),
            || self.tables.kube().keys(),
            self.tables.control_prefix(),
            Instant::now(),
        );
        self.speaker.offer(t, since);
    }

    /// Updates from the watch: this one and whatever else is waiting, into
    /// one table.
    async fn on_kube(&mut self, first: Update, rx: &mut mpsc::Receiver<Update>) {
        let t = Instant::now();
        let mut since: Option<Instant> = None;
        let mut changed = vec![];
        let (mut apis, mut facts) = (None, None);
        let mut next = Some(first);
        while let Some(u) = next {
            match u {
                Update::Full(all) => changed.extend(self.tables.kube_full(&all)),
                Update::Delta(d, at) => {
                    since = Some(since.map_or(at, |s| s.min(at)));
                    changed.extend(self.tables.kube_delta(&d));
                }
                Update::ApiServers(a) => apis = Some(a),
                Update::Node(f) => facts = Some(f),
                Update::L2(w) => {
                    if let Some(l) = &self.kube.l2 {
                        l.wants.send_replace(w);
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Some(a) = apis {
            self.on_api_servers(a).await;
        }
        if let Some(f) = facts {
            self.on_drain_facts(&f);
            self.on_labels(f.labels).await;
        }
        self.publish_since(since);
        tracing::debug!(
            us = t.elapsed().as_micros() as u64,
            changed = changed.len(),
            "table updated"
        );
        self.node.changes(self.tables.kube(), &changed).await;
        crate::telemetry::reconcile(t.elapsed());
    }

    /// The API servers `default/kubernetes` lists: the control plane's
    /// backends when it discovers them.
    async fn on_api_servers(&mut self, found: BTreeSet<IpAddr>) {
        self.control.discovered(found).await;
        self.tables.set_control(self.control.route());
    }

    /// This node's labels changed: the peers whose `node_selector` they
    /// match start, the others stop; with the ASN from a label, the
    /// sessions speaking it restart with the new one. Sessions of peers
    /// kept are untouched.
    async fn on_labels(&mut self, labels: Labels) {
        let bgp = &self.applied.cfg.bgp;
        let before = bgp.for_node(self.kube.labels.as_ref());
        let after = bgp.for_node(Some(&labels));
        if let Err(problem) = bgp.asn_for(Some(&labels)) {
            error!(%problem, "no ASN for this node: only peers with their own local_asn have sessions");
        }
        let first = self.kube.labels.replace(labels).is_none();
        if before.peers != after.peers || before.asn != after.asn {
            let names: Vec<String> = after.peers.iter().map(|p| p.address.to_string()).collect();
            info!(peers = %names.join(","), asn = after.asn, "peers for this node's labels");
            self.speaker.reconfigure(&after).await;
        }
        if first {
            self.speaker.started();
        }
    }

    /// The Node's cordon, labels and taints against `[drain]`: a drain
    /// begins (GRACEFUL_SHUTDOWN now, withdrawal later) or ends.
    fn on_drain_facts(&mut self, f: &drain::NodeFacts) {
        match self.drain.on_facts(f, Instant::now()) {
            drain::Change::Began { reason, graceful } => {
                warn!(%reason, secs = graceful.as_secs(), "draining: VIPs announced with GRACEFUL_SHUTDOWN (65535:0), withdrawn after graceful_shutdown_secs");
            }
            drain::Change::Ended => info!("drain ended: VIPs announced as before"),
            drain::Change::Same => {}
        }
        if let Some(l) = &self.kube.l2 {
            l.draining
                .send_replace(self.drain.phase(Instant::now()).is_some());
        }
    }

    /// A backend's health changed, or the 30 s repair pass: the control
    /// plane applied again (its IPVS outcome arrives as a message).
    async fn on_control(&mut self) {
        self.control.apply().await;
        self.refresh();
    }

    /// An IPVS outcome from its thread.
    fn on_ipvs(&mut self, s: ipvs::Synced) {
        if self.control.on_synced(s) {
            self.refresh();
        }
    }

    /// Every 30 s: repairs drift (an address someone removed) and retries
    /// failures.
    async fn on_resync(&mut self) {
        if self.tables.ready() {
            self.node.full(&self.tables.kube().vips()).await;
        }
        self.on_control().await;
    }

    /// After the control plane changed: announced anew where its route did.
    fn refresh(&mut self) {
        if self.tables.set_control(self.control.route()) {
            self.publish();
        }
    }

    /// SIGHUP, a changed file or `vipd reload`: the new configuration,
    /// or the running one stays with every problem logged and reported.
    async fn on_reload(&mut self, why: &str, logging: &dyn Fn(&LogConfig)) -> status::Reloaded {
        let a = &self.applied;
        info!("{why}: reloading {}", a.path.display());
        let (new, statics) = match start::load_for_node(&a.path, a.node) {
            Ok(x) => x,
            Err(p) => return self.refused(p),
        };
        let plan = reload::plan(&a.cfg, new);
        self.carry_out(&plan, logging).await;
        info!(
            before = self.tables.statics().len(),
            after = statics.len(),
            "static announcements reloaded"
        );
        self.tables.set_statics(statics);
        let files = crate::confwatch::files_of(&self.applied.path, &plan.next);
        self.applied.files.send_replace(files);
        self.applied.cfg = plan.next;
        self.applied.last = status::ConfigLine {
            last_reload_ok: true,
            last_success: std::time::SystemTime::now(),
            problems: vec![],
        };
        self.publish();
        status::Reloaded {
            applied: true,
            problems: vec![],
            restart: plan.restart.iter().map(|k| k.to_string()).collect(),
            later: plan.later.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// A file that does not validate: nothing changes; the problems go to
    /// the log, the report, and an Event on this node's Node.
    fn refused(&mut self, p: Problems) -> status::Reloaded {
        let problems: Vec<String> = p.0.iter().map(|l| l.to_string()).collect();
        problems.iter().for_each(|line| error!("{line}"));
        warn!("configuration not reloaded: the running one stays in force");
        self.applied.last.last_reload_ok = false;
        self.applied.last.problems = problems.clone();
        if let (Some(ev), Some(k)) = (&self.kube.events, &self.applied.cfg.kubernetes) {
            let first: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
            let more = problems.len().saturating_sub(first.len());
            let mut msg = format!(
                "configuration refused, the running one stays: {}",
                first.join("; ")
            );
            if more > 0 {
                msg += &format!(" (and {more} more)");
            }
            ev.post(k8s::events::Record::node(
                &k.node_name,
                "ConfigRejected",
                msg,
            ));
        }
        status::Reloaded {
            applied: false,
            problems,
            restart: vec![],
            later: vec![],
        }
    }

    async fn carry_out(&mut self, plan: &reload::Plan, logging: &dyn Fn(&LogConfig)) {
        let next = &plan.next;
        if plan.log {
            logging(&next.log);
        }
        if !plan.restart.is_empty() {
            warn!(keys = %plan.restart.join(", "), "these changes take effect only when vipd restarts");
        }
        if !plan.later.is_empty() {
            info!(keys = %plan.later.join(", "), "these changes apply to new sessions and the next stop");
        }
        if let (true, Some(a), Some(i)) = (plan.pools, &self.kube.allocator, &next.ipam) {
            info!(
                pools = i.pools.len(),
                "address pools reloaded: nothing assigned moves"
            );
            a.set_pools(i.pools.clone());
        }
        let placement = plan.pools || plan.adverts || plan.drain;
        if let (true, Some(w), Some(k)) = (placement, &self.kube.watch, &next.kubernetes) {
            let req = k8s::watch::Request::Pools(Box::new(k.clone()));
            let _ = w.requests.send(req).await;
        }
        if plan.control_plane {
            self.control.reconfigure(next.control_plane.as_ref()).await;
            self.node.keep(self.control.address());
            self.tables.set_control(self.control.route());
        }
        if plan.drain {
            info!("[drain] reloaded: applies from the next change of the Node");
            self.drain.set_config(next.drain.clone());
        }
        self.speaker.started();
        self.speaker
            .reconfigure(&next.bgp.for_node(self.kube.labels.as_ref()))
            .await;
    }

    /// What `vipd status` and `/metrics` show, as plain values.
    fn report(&self) -> status::Report {
        status::Report {
            peers: self.peers(),
            kube: self
                .applied
                .cfg
                .kubernetes
                .as_ref()
                .map(|_| self.kube.status.lock().unwrap().clone()),
            control: self.control.current().map(control_line),
            static_prefixes: self.tables.statics().len(),
            table_prefixes: self.tables.table().len(),
            now: std::time::SystemTime::now(),
            ipam: self
                .kube
                .allocator
                .as_ref()
                .map(|a| a.status.lock().unwrap().clone()),
            drain: self.drain.line(Instant::now()),
            l2: (self.kube.l2.as_ref()).map(|l| l.status.lock().unwrap().clone()),
            bfd_drops: self.speaker.bfd_drops(),
            config: self.applied.last.clone(),
            ready_needs_peer: self.applied.cfg.status.ready_needs_peer,
            asn_problem: (self.applied.cfg.bgp)
                .asn_for(self.kube.labels.as_ref())
                .err(),
        }
    }

    /// Each session's status, with its peer and the AS it may speak.
    fn peers(&self) -> Vec<status::PeerRow> {
        self.speaker.status()
    }

    /// A client's question: the report at once; an explanation once the
    /// watch has looked the Service up (without holding up the loop).
    fn on_ask(&self, ask: status::Ask) {
        let key = match ask.query {
            status::Query::Report => {
                let r = status::Answer::Report(Box::new(self.report()));
                let _ = ask.reply.send(r);
                return;
            }
            status::Query::Explain(key) => key,
            // The loop carries reloads out itself (they change state).
            status::Query::Reload => return,
        };
        let (pending, allocator_elsewhere) = self.allocator_view(&key);
        let peers = self.peers();
        let drain = self.drain.explain(Instant::now());
        let explain = self.kube.watch.as_ref().map(|w| w.requests.clone());
        let l2 = (self.kube.l2.as_ref()).map_or(vec![], |l| l.status.lock().unwrap().vips.clone());
        tokio::spawn(async move {
            let view = match explain {
                Some(q) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let ask = k8s::watch::Request::Explain(key.as_str().into(), tx);
                    if q.send(ask).await.is_err() {
                        return;
                    }
                    let Ok(v) = rx.await else { return };
                    Some(v)
                }
                None => None,
            };
            let cx = status::explain::Context {
                peers: &peers,
                drain,
                pending,
                allocator_elsewhere,
                l2: &l2,
            };
            let e = status::explain::combine(&key, view, &cx);
            let _ = ask.reply.send(status::Answer::Explain(Box::new(e)));
        });
    }

    /// Why the allocator has not assigned `key` yet, and who allocates
    /// when this node does not.
    fn allocator_view(&self, key: &str) -> (Option<String>, Option<String>) {
        let Some(a) = self.kube.allocator.as_ref() else {
            return (None, None);
        };
        let st = a.status.lock().unwrap();
        let pending = st.pending.iter().find(|(k, _)| k == key);
        let elsewhere =
            (!st.leader).then(|| st.holder.clone().unwrap_or_else(|| "none yet".into()));
        (pending.map(|(_, why)| why.clone()), elsewhere)
    }

    /// SIGTERM or SIGINT: the Lease released, the sessions closed (kept at
    /// graceful-restart peers, or withdrawn), and with `withdraw_on_stop`
    /// what vipd put on the node removed.
    async fn stop(mut self) {
        if let Some(a) = self.kube.allocator.take() {
            a.stop().await;
        }
        if let (Some(l), Some(c)) = (self.kube.l2.take(), &self.applied.cfg.l2) {
            // The successors claim first: this node answers until they do.
            l.stop(c.lease_duration + 2 * c.heartbeat).await;
        }
        let bgp = self.applied.cfg.bgp.clone();
        if bgp.withdraw_on_stop {
            self.graceful_shutdown().await;
        }
        self.speaker.shutdown(bgp.withdraw_on_stop).await;
        if bgp.graceful_restart && !bgp.withdraw_on_stop {
            crate::bgp::restart::leave(&bgp.restart_record);
        }
        if bgp.withdraw_on_stop {
            // Otherwise the VIPs keep working on the node through a restart.
            self.node.keep(None);
            self.node.full(&Default::default()).await;
            self.control.remove().await;
        }
        info!("vipd stopped");
    }

    /// Stopping with `withdraw_on_stop` and `[drain]`: every route is
    /// announced with GRACEFUL_SHUTDOWN for `graceful_shutdown_secs` first,
    /// so traffic moves away before the withdrawal.
    async fn graceful_shutdown(&self) {
        if !self.tables.ready() {
            return;
        }
        let Some((t, wait)) = self.drain.on_stop(self.tables.table()) else {
            return;
        };
        info!(
            secs = wait.as_secs(),
            "stopping: routes announced with GRACEFUL_SHUTDOWN before the withdrawal"
        );
        self.speaker.set_table(Arc::new(t));
        tokio::time::sleep(wait).await;
    }
}

fn control_line(c: &control::Control) -> status::ControlLine {
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs until SIGTERM or SIGINT. `logging` applies `[log]`, at start and
/// on each reload that changes it (logging is set up by the caller).
pub async fn run(path: PathBuf, logging: &dyn Fn(&LogConfig)) -> Result<(), DaemonError> {
    let (mut d, mut inbox, listeners) = start::start(path, logging).await?;
    let (ask_tx, mut ask_rx) = mpsc::channel::<status::Ask>(16);
    // End with this function: nothing answers for a stopped daemon.
    let _listeners = listeners.serve(&ask_tx);
    let mut resync = tokio::time::interval(std::time::Duration::from_secs(30));
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    loop {
        let drain_at = d.drain.deadline(Instant::now());
        tokio::select! {
            Some(u) = inbox.kube.recv() => d.on_kube(u, &mut inbox.kube).await,
            _ = d.control.changed() => d.on_control().await,
            Some(s) = inbox.ipvs.recv() => d.on_ipvs(s),
            _ = resync.tick() => d.on_resync().await,
            _ = hup.recv() => { d.on_reload("SIGHUP", logging).await; }
            Some(()) = inbox.reload.recv() => { d.on_reload("configuration files changed", logging).await; }
            _ = sleep_until(drain_at) => {
                warn!("drained: VIPs withdrawn");
                d.publish();
            }
            Some(ask) = ask_rx.recv() => match ask.query {
                status::Query::Reload => {
                    let r = d.on_reload("vipd reload", logging).await;
                    let _ = ask.reply.send(status::Answer::Reloaded(r));
                }
                _ => d.on_ask(ask),
            },
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
        }
    }
    d.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::rib::Table;
    use crate::k8s::intent::Want;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

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
                 [status]\nenabled = false\n[dataplane]\nipvs_state = \"{d}/ipvs\"\n\
                 [[announce]]\nprefix = \"198.51.100.1/32\"\n{extra}"
            ),
        )
        .unwrap();
        let d = start::start(path, &|_| {}).await.unwrap().0;
        // Read at start only (the restart record, the IPVS state).
        let _ = std::fs::remove_dir_all(&dir);
        d
    }

    fn want(n: u8) -> (ipnet::IpNet, Want) {
        let p = format!("203.0.113.{n}/32").parse().unwrap();
        let w = Want {
            owners: smallvec::smallvec![format!("uid-{n}").into()],
            attrs: Default::default(),
            agg: Default::default(),
        };
        (p, w)
    }

    fn offered(d: &Daemon) -> Table {
        (*d.speaker.table().unwrap()).clone()
    }

    /// As if the watch ran: Kubernetes configured, no watch task.
    fn with_kubernetes(d: &mut Daemon) {
        d.applied.cfg.kubernetes = Some(crate::k8s::intent::tests::kcfg());
        d.tables = Tables::new(d.tables.statics().clone(), None, true);
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
            t.contains_key(&"198.51.100.1/32".parse::<ipnet::IpNet>().unwrap()),
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
        let left = d.drain.deadline(Instant::now()).unwrap() - Instant::now();
        assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30));
        assert!(d.report().drain.unwrap().active);
        d.on_kube(Update::Node(Default::default()), &mut rx).await;
        assert!(offered(&d)[&p1].communities.is_empty());
        assert!(d.drain.deadline(Instant::now()).is_none());
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
