//! Starting the daemon: the configuration read, the control plane put in
//! place, the speaker and the Kubernetes tasks started, the status
//! listener bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::info;

use super::{Applied, Daemon, DaemonError, Inbox, Kube};
use crate::bgp::rib::Table;
use crate::bgp::Speaker;
use crate::config::{Config, LogConfig, NodeAddresses, Problems, RouteAttrs};
use crate::k8s;
use crate::k8s::watch::{KubeStatus, Update};
use crate::reconcile::control::Plane;
use crate::reconcile::node::NodeState;
use crate::reconcile::Tables;
use crate::{drain, status, task};

/// Loads the configuration, puts the control plane in place, starts the
/// speaker and the Kubernetes tasks.
pub(super) async fn start(
    path: PathBuf,
    logging: &dyn Fn(&LogConfig),
) -> Result<(Daemon, Inbox, Listeners), DaemonError> {
    let (mut cfg, statics) = load(&path)?;
    logging(&cfg.log);
    log_start(&path, &cfg, &statics);
    // Before anything is announced or put on the node: a second vipd on
    // this node stops here, with the first one's port in use.
    let listeners = Listeners::bind(&cfg.status).await?;
    let (kube_tx, kube_rx) = mpsc::channel::<Update>(256);
    let marks = address_marks(&cfg)?;
    let (control, ipvs_rx) = Plane::start(
        cfg.control_plane.as_ref(),
        &cfg.dataplane.ipvs_state,
        marks.clone(),
    )
    .await?;
    let tables = Tables::new(statics, control.route(), cfg.kubernetes.is_some());
    let (speaker, kube, node_addresses) = start_speaker(&mut cfg, &tables, kube_tx).await?;
    let mut node = NodeState::new(&cfg, &marks)?;
    node.keep(control.address());
    let (files, files_rx) = tokio::sync::watch::channel(crate::confwatch::files_of(&path, &cfg));
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let d = Daemon {
        drain: drain::Drain::new(cfg.drain.clone()),
        applied: Applied {
            path,
            cfg,
            node: node_addresses,
            last: status::ConfigLine {
                last_reload_ok: true,
                last_success: std::time::SystemTime::now(),
                problems: vec![],
            },
            files,
            _watcher: task::Owned::spawn(crate::confwatch::run(files_rx, reload_tx)),
        },
        tables,
        control,
        node,
        speaker,
        kube,
    };
    let inbox = Inbox {
        kube: kube_rx,
        ipvs: ipvs_rx,
        reload: reload_rx,
    };
    Ok((d, inbox, listeners))
}

/// How vipd will know its addresses on this kernel, said once at start.
fn address_marks(cfg: &Config) -> Result<crate::dataplane::Marks, DaemonError> {
    let marks = crate::dataplane::marks(&cfg.dataplane).map_err(|reason| {
        let key = "dataplane.address_ownership".to_string();
        DaemonError::Config(Problems(vec![crate::config::Problem { key, reason }]))
    })?;
    if cfg.dataplane.address_interface.is_some() || cfg.control_plane.is_some() {
        match marks.ownership {
            crate::dataplane::Ownership::Mark => {
                info!(kernel = %crate::dataplane::kernel_release(), "vipd's addresses known by their IFA_PROTO mark")
            }
            crate::dataplane::Ownership::Record => {
                info!(kernel = %crate::dataplane::kernel_release(), record = %marks.record.display(), "vipd's addresses known by the record file")
            }
        }
    }
    Ok(marks)
}

fn log_start(path: &Path, cfg: &Config, statics: &Table) {
    let router_id = if cfg.bgp.router_id_from_node {
        "from the Node".to_string()
    } else {
        cfg.bgp.router_id.to_string()
    };
    // Under the daemon's name, as before the split: log filters and
    // searches for this line keep working.
    info!(
        target: "vipd::daemon",
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::COMMIT,
        config = %path.display(),
        asn = cfg.bgp.asn,
        %router_id,
        peers = cfg.bgp.peers.len(),
        prefixes = statics.len(),
        "vipd starting"
    );
}

/// The speaker, and with `[kubernetes]` the watch and the allocator; then
/// `cfg.bgp` comes back with its `"node"` addresses (and an omitted router
/// ID) resolved from the Node. With Kubernetes the speaker starts without
/// a table: it gets one with the first complete intent.
async fn start_speaker(
    cfg: &mut Config,
    tables: &Tables,
    kube_tx: mpsc::Sender<Update>,
) -> Result<(Speaker, Kube, Option<NodeAddresses>), DaemonError> {
    let b = &cfg.bgp;
    let restarted =
        crate::bgp::restart::take(&b.restart_record, b.graceful_restart, b.restart_time);
    let Some(k) = cfg.kubernetes.clone() else {
        // Peers with a node_selector wait for the Node's labels.
        let mut speaker =
            Speaker::start(&b.for_node(None), Some(tables.table().clone()), restarted)?;
        speaker.started();
        return Ok((speaker, Kube::default(), None));
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
    if let Some(cp) = &cfg.control_plane {
        // The control-plane VIP and the API servers behind it are never a
        // Service's VIP.
        api.push(cp.vip);
        api.extend(cp.backends.iter().map(|b| b.ip()));
    }
    let mut speaker = Speaker::start(&cfg.bgp.for_node(None), None, restarted)?;
    let events = k8s::events::Recorder::spawn(client.clone());
    let allocator =
        (cfg.ipam.as_ref()).map(|i| k8s::allocator::spawn(i, &k, client.clone(), events.clone()));
    let l2 = (cfg.l2.as_ref()).map(|l| {
        let bfd = l.fast_failover.map(|_| speaker.bfd());
        crate::l2::spawn(l, &k.node_name, client.clone(), Some(events.clone()), bfd)
    });
    let status = Arc::new(Mutex::new(KubeStatus::default()));
    let (explain_tx, explain_rx) = mpsc::channel(8);
    let task = task::Owned::spawn(k8s::watch::run(
        k,
        client,
        api,
        kube_tx,
        status.clone(),
        explain_rx,
        events.clone(),
    ));
    let watch = k8s::watch::Handle {
        requests: explain_tx,
        task,
    };
    let kube = Kube {
        status,
        watch: Some(watch),
        allocator,
        labels: None,
        events: Some(events),
        l2,
    };
    Ok((speaker, kube, node))
}

/// The listeners, bound at start.
pub(super) struct Listeners {
    status: Option<tokio::net::TcpListener>,
    metrics: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// A port in use is an error that stops vipd: on the status port it
    /// is almost always another vipd on this node (the DaemonSet and the
    /// control-plane static pod together), and two speakers with one
    /// router ID take each other's sessions down.
    async fn bind(cfg: &crate::config::StatusConfig) -> Result<Listeners, DaemonError> {
        async fn one(
            key: &'static str,
            a: Option<SocketAddr>,
        ) -> Result<Option<tokio::net::TcpListener>, DaemonError> {
            let Some(addr) = a else { return Ok(None) };
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Ok(Some(l)),
                Err(e) => Err(DaemonError::Listen { key, addr, e }),
            }
        }
        Ok(Listeners {
            status: one("status.listen", cfg.listen).await?,
            metrics: one("status.metrics_listen", cfg.metrics_listen).await?,
        })
    }

    /// Serves both until the returned tasks are dropped.
    pub(super) fn serve(self, asks: &mpsc::Sender<status::Ask>) -> Vec<task::Owned<()>> {
        use status::http::{serve, Scope};
        let mut out = vec![];
        if let Some(l) = self.status {
            out.push(task::Owned::spawn(serve(l, asks.clone(), Scope::All)));
        }
        if let Some(l) = self.metrics {
            out.push(task::Owned::spawn(serve(l, asks.clone(), Scope::Metrics)));
        }
        out
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
pub(super) fn load_for_node(
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
    crate::heap::trim();
    Ok((cfg, table))
}
