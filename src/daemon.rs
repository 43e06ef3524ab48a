//! The top of the data flow: configuration in, table to the speaker,
//! signals for reload and stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use std::sync::Mutex;

use tokio::sync::watch;

use crate::bgp::rib::Table;
use crate::bgp::{Speaker, SpeakerError};
use crate::config::{Config, Problems};
use crate::k8s;
use crate::k8s::intent::Intent;
use crate::k8s::watch::{KubeStatus, WatchError};
use crate::{dataplane, reconcile};

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

/// The node's dataplanes that are configured.
struct NodeState {
    addresses: Option<dataplane::Addresses>,
    routes: Option<dataplane::Routes>,
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
        Ok(NodeState {
            addresses: dp
                .address_interface
                .as_deref()
                .map(|i| dataplane::Addresses::new(h.clone(), i)),
            routes: dp.routes.clone().map(|r| dataplane::Routes::new(h, r)),
        })
    }

    async fn apply(&mut self, want: &std::collections::BTreeSet<ipnet::IpNet>) {
        let mut errors = vec![];
        if let Some(a) = self.addresses.as_mut() {
            errors.extend(
                reconcile::apply(a, want)
                    .await
                    .into_iter()
                    .map(|e| format!("address {e}")),
            );
        }
        if let Some(r) = self.routes.as_mut() {
            errors.extend(
                reconcile::apply(r, want)
                    .await
                    .into_iter()
                    .map(|e| format!("route {e}")),
            );
        }
        for e in errors {
            warn!("dataplane: {e} (tried again in 30 s)");
        }
    }
}

/// Hands the speaker the static announcements plus the intent; with
/// Kubernetes configured and no intent yet (the barrier), nothing.
fn publish(speaker: &Speaker, statics: &Table, kube: bool, intent: &Option<Arc<Intent>>) {
    match (kube, intent) {
        (false, _) => speaker.set_table(statics.clone()),
        (true, Some(i)) => {
            let t = std::time::Instant::now();
            let table = reconcile::table(statics, i);
            tracing::debug!(
                us = t.elapsed().as_micros() as u64,
                routes = table.len(),
                "table built"
            );
            speaker.set_table(table);
        }
        (true, None) => {}
    }
}

/// The announcements of the configuration as a table. Each `[[announce]]`
/// entry's prefixes share one attribute set, so they pack together.
pub fn static_table(cfg: &Config) -> Table {
    let mut t = Table::new();
    for a in &cfg.announce {
        let attrs = Arc::new(a.attrs.clone());
        for p in &a.prefixes {
            t.insert(*p, attrs.clone());
        }
    }
    t
}

/// Loads the configuration, keeping only what the daemon needs afterwards.
fn load(path: &Path) -> Result<(Config, Table), Problems> {
    let mut cfg = Config::load(path)?;
    let table = static_table(&cfg);
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
    let table = statics.clone();
    info!(
        config = %path.display(),
        asn = cfg.bgp.asn,
        router_id = %cfg.bgp.router_id,
        peers = cfg.bgp.peers.len(),
        prefixes = table.len(),
        "vipd starting"
    );
    // With Kubernetes, nothing is announced before its caches have synced.
    let (intent_tx, mut intent_rx) = watch::channel::<Option<Arc<Intent>>>(None);
    let kube_status = Arc::new(Mutex::new(KubeStatus::default()));
    let mut speaker = match &cfg.kubernetes {
        None => Speaker::start(&cfg.bgp, Some(table))?,
        Some(k) => {
            let (client, api) = k8s::watch::connect(k).await?;
            let speaker = Speaker::start(&cfg.bgp, None)?;
            tokio::spawn(k8s::watch::run(
                k.clone(),
                client,
                api,
                intent_tx,
                kube_status.clone(),
            ));
            speaker
        }
    };
    let mut node = NodeState::new(&cfg)?;
    let mut resync = tokio::time::interval(std::time::Duration::from_secs(30));
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading {}", path.display());
                match load(&path) {
                    Ok((new, table)) => {
                        if new.bgp.withdraw_on_stop != cfg.bgp.withdraw_on_stop
                            || new.bgp.graceful_restart != cfg.bgp.graceful_restart
                        {
                            info!("graceful_restart and withdraw_on_stop changes apply to new sessions and the next stop");
                        }
                        if new.kubernetes != cfg.kubernetes || new.dataplane != cfg.dataplane {
                            warn!("[kubernetes] and [dataplane] changes take effect only when vipd restarts");
                        }
                        let before = statics.len();
                        speaker.reconfigure(&new.bgp).await;
                        info!(before, after = table.len(), "static announcements reloaded");
                        statics = table;
                        publish(&speaker, &statics, cfg.kubernetes.is_some(), &intent_rx.borrow());
                        cfg.bgp = new.bgp;
                        cfg.announce = new.announce;
                    }
                    Err(p) => {
                        for line in &p.0 {
                            error!("{line}");
                        }
                        warn!("configuration not reloaded: the running one stays in force");
                    }
                }
            }
            r = intent_rx.changed() => {
                if r.is_ok() {
                    let intent = intent_rx.borrow_and_update().clone();
                    publish(&speaker, &statics, true, &intent);
                    if let Some(i) = &intent {
                        node.apply(&reconcile::dataplane_want(i)).await;
                    }
                }
            }
            _ = resync.tick() => {
                // Repairs drift (an address someone removed) and retries failures.
                let intent = intent_rx.borrow().clone();
                if let Some(i) = intent {
                    node.apply(&reconcile::dataplane_want(&i)).await;
                }
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
        }
    }
    speaker.shutdown(cfg.bgp.withdraw_on_stop).await;
    if cfg.bgp.withdraw_on_stop {
        // Otherwise the VIPs keep working on the node through a restart.
        node.apply(&Default::default()).await;
    }
    info!("vipd stopped");
    Ok(())
}
