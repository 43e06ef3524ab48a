//! Control-plane mode: the API-server VIP, served by IPVS over the API
//! servers that pass their health checks, announced over BGP while at least
//! one does.
//!
//! One task per backend runs its check on the configured interval and sends
//! the result here; [`Health`] turns results into up/down changes; the
//! daemon asks for the IPVS service and the announcement that follow from
//! the healthy set ([`ControlPlane::ipvs_service`], [`ControlPlane::serving`]).
//! Nothing here touches the kernel or the speaker.

pub mod health;
pub mod probe;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::task::Owned;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::config::{self, Forwarding};
use crate::dataplane::ipvs::{Forward, Protocol, Service, ServiceKey};
pub use health::Health;

type Result_ = (usize, Result<(), String>);

pub struct ControlPlane {
    pub cfg: config::ControlPlane,
    health: Vec<Health>,
    last_error: Vec<Option<String>>,
    rx: mpsc::Receiver<Result_>,
    _tasks: Vec<Owned<()>>,
}

impl ControlPlane {
    /// Starts checking every backend at once, then on the interval. What
    /// `previous` knew of a backend it shares (with the same thresholds)
    /// carries over, so a reload does not forget which servers are healthy.
    pub fn start(cfg: config::ControlPlane, previous: Option<&ControlPlane>) -> ControlPlane {
        let (tx, rx) = mpsc::channel(cfg.backends.len() * 2 + 2);
        let checker = probe::Checker::new(&cfg.health);
        let tasks = cfg
            .backends
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let (tx, checker, every) = (tx.clone(), checker.clone(), cfg.health.interval);
                Owned::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let r = checker.check(addr).await;
                        if tx.send((i, r)).await.is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        info!(
            vip = %cfg.vip,
            port = cfg.port,
            backends = cfg.backends.len(),
            "control plane: checking the API servers"
        );
        let mut health = vec![Health::new(cfg.health.rise, cfg.health.fall); cfg.backends.len()];
        let mut last_error = vec![None; cfg.backends.len()];
        if let Some(p) = previous.filter(|p| {
            (p.cfg.health.rise, p.cfg.health.fall) == (cfg.health.rise, cfg.health.fall)
        }) {
            for (i, b) in cfg.backends.iter().enumerate() {
                if let Some(j) = p.cfg.backends.iter().position(|x| x == b) {
                    health[i] = p.health[j].clone();
                    last_error[i] = p.last_error[j].clone();
                }
            }
        }
        ControlPlane {
            health,
            last_error,
            cfg,
            rx,
            _tasks: tasks,
        }
    }

    /// Every backend has had its first check: until then the healthy set
    /// is not known, and an IPVS service left by a previous run (vipd
    /// restarting) must not be emptied on a guess.
    pub fn settled(&self) -> bool {
        self.health.iter().all(Health::known)
    }

    /// Waits for check results until a backend goes up or down.
    pub async fn changed(&mut self) {
        loop {
            let Some((i, r)) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            if let Some(c) = self.observe(i, r) {
                let b = self.cfg.backends[i];
                match c {
                    true => info!(backend = %b, "control plane: backend healthy"),
                    false => warn!(
                        backend = %b,
                        reason = self.last_error[i].as_deref().unwrap_or(""),
                        "control plane: backend failed its health check"
                    ),
                }
                return;
            }
        }
    }

    fn observe(&mut self, i: usize, r: Result<(), String>) -> Option<bool> {
        let ok = r.is_ok();
        self.last_error[i] = r.err();
        self.health.get_mut(i)?.observe(ok)
    }

    pub fn healthy(&self) -> BTreeSet<SocketAddr> {
        self.cfg
            .backends
            .iter()
            .zip(&self.health)
            .filter(|(_, h)| h.healthy())
            .map(|(b, _)| *b)
            .collect()
    }

    /// Each backend with whether it is healthy and its last check's error.
    pub fn backends(&self) -> Vec<(SocketAddr, bool, Option<String>)> {
        self.cfg
            .backends
            .iter()
            .zip(&self.health)
            .zip(&self.last_error)
            .map(|((b, h), e)| (*b, h.healthy(), e.clone()))
            .collect()
    }

    /// The VIP as a host prefix.
    pub fn prefix(&self) -> IpNet {
        IpNet::from(self.cfg.vip)
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            protocol: Protocol::Tcp,
            addr: SocketAddr::new(self.cfg.vip, self.cfg.port),
        }
    }

    /// The IPVS virtual service for the healthy backends.
    pub fn ipvs_service(&self) -> Service {
        Service {
            key: self.key(),
            scheduler: self.cfg.scheduler.clone(),
            forward: match self.cfg.forwarding {
                Forwarding::Masquerade => Forward::Masquerade,
                Forwarding::Direct => Forward::Direct,
                Forwarding::Tunnel => Forward::Tunnel,
            },
            reals: self.healthy(),
        }
    }

    /// Whether the VIP should be announced: a backend is healthy.
    pub fn serving(&self) -> bool {
        self.health.iter().any(Health::healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> config::ControlPlane {
        let c = config::Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
             [control_plane]\nvip = \"192.0.2.100\"\nbackends = [\"192.0.2.11\", \"192.0.2.12:7443\"]\n\
             [control_plane.health_check]\nrise = 2\nfall = 2\n",
        )
        .unwrap();
        c.control_plane.unwrap()
    }

    fn plane() -> ControlPlane {
        // Built by hand: no probe tasks, results fed through observe().
        let cfg = cfg();
        let (_, rx) = mpsc::channel(1);
        ControlPlane {
            health: vec![Health::new(2, 2); 2],
            last_error: vec![None; 2],
            cfg,
            rx,
            _tasks: vec![],
        }
    }

    #[tokio::test]
    async fn a_reload_keeps_what_is_known_of_the_backends_it_keeps() {
        let mut old = plane();
        old.observe(0, Ok(()));
        old.observe(1, Err("answered 500".into()));
        let mut cfg = cfg();
        cfg.backends = vec![
            "192.0.2.12:7443".parse().unwrap(),
            "192.0.2.13:6443".parse().unwrap(),
        ];
        let new = ControlPlane::start(cfg.clone(), Some(&old));
        assert_eq!(
            new.backends(),
            vec![
                (
                    "192.0.2.12:7443".parse().unwrap(),
                    false,
                    Some("answered 500".into())
                ),
                ("192.0.2.13:6443".parse().unwrap(), false, None),
            ]
        );
        assert!(!new.settled(), "192.0.2.13 is new");
        // Other thresholds: the old counts mean nothing for the new ones.
        cfg.health.fall = 5;
        let new = ControlPlane::start(cfg, Some(&old));
        assert!(new.backends().iter().all(|(_, _, e)| e.is_none()));
    }

    #[test]
    fn the_service_holds_exactly_the_healthy_backends() {
        let mut cp = plane();
        let (a, b): (SocketAddr, SocketAddr) = (
            "192.0.2.11:6443".parse().unwrap(),
            "192.0.2.12:7443".parse().unwrap(),
        );
        assert!(!cp.serving());
        assert!(cp.ipvs_service().reals.is_empty());
        assert!(!cp.settled());
        cp.observe(0, Ok(()));
        assert!(!cp.settled(), "backend 1 has not answered yet");
        cp.observe(1, Err("connect: refused".into()));
        assert!(cp.serving());
        assert_eq!(cp.ipvs_service().reals, [a].into());
        assert_eq!(cp.ipvs_service().scheduler, "mh");
        assert_eq!(cp.key().addr, "192.0.2.100:6443".parse().unwrap());
        // b recovers after `rise` successes; a fails after `fall` failures.
        assert_eq!(cp.observe(1, Ok(())), None);
        assert_eq!(cp.observe(1, Ok(())), Some(true));
        assert_eq!(cp.ipvs_service().reals, [a, b].into());
        cp.observe(0, Err("answered 500".into()));
        assert_eq!(cp.observe(0, Err("answered 500".into())), Some(false));
        assert_eq!(cp.ipvs_service().reals, [b].into());
        assert_eq!(cp.last_error[0].as_deref(), Some("answered 500"));
        cp.observe(1, Err("x".into()));
        cp.observe(1, Err("x".into()));
        assert!(!cp.serving(), "no healthy backend: the VIP is withdrawn");
        assert!(cp.settled());
        assert_eq!(cp.prefix(), "192.0.2.100/32".parse::<IpNet>().unwrap());
    }
}
