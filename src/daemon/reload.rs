//! A reload as a plan: the running configuration and a newly read one in,
//! what is applied live and what waits for a process restart out. The
//! daemon carries the plan out and then replaces its configuration whole
//! with [`Plan::next`], which is the new file except where a section
//! needs a restart: there it keeps what is actually running, so the
//! applied configuration always says what vipd does.

use crate::config::{Config, KubeConfig};

#[derive(Debug)]
pub struct Plan {
    /// The configuration in force once the plan is carried out.
    pub next: Config,
    /// `[log]` changed: set up logging again.
    pub log: bool,
    /// `[control_plane]` changed: replace it.
    pub control_plane: bool,
    /// `[ipam]` pools changed: hand them to the allocator, and to the
    /// watch, which announces only addresses from a pool.
    pub pools: bool,
    /// The pools' or `[[bgp.advertisements]]`' advertisements changed:
    /// hand them to the watch.
    pub adverts: bool,
    /// `[drain]` changed: applies from the next change of the Node.
    pub drain: bool,
    /// Changed keys that take effect only when vipd restarts; the running
    /// values stay in `next`.
    pub restart: Vec<&'static str>,
    /// Changed keys applied to new sessions and the next stop.
    pub later: Vec<&'static str>,
}

/// What reloading `new` over `applied` does. Peers are always handed to
/// the speaker, which restarts only the sessions whose settings changed.
pub fn plan(applied: &Config, new: Config) -> Plan {
    let mut next = new;
    let mut restart = vec![];
    keep_running(&mut next, applied, &mut restart);
    let pools = ipam(&mut next, applied, &mut restart);
    let adverts = |c: &Config| c.kubernetes.as_ref().map(|k| k.adverts.clone());
    let adverts = adverts(&next) != adverts(applied);
    let (b, a) = (&next.bgp, &applied.bgp);
    let later = [
        (
            b.graceful_restart != a.graceful_restart,
            "bgp.graceful_restart",
        ),
        (b.restart_time != a.restart_time, "bgp.restart_time"),
        (
            b.withdraw_on_stop != a.withdraw_on_stop,
            "bgp.withdraw_on_stop",
        ),
    ]
    .into_iter()
    .filter_map(|(c, k)| c.then_some(k))
    .collect();
    Plan {
        log: next.log != applied.log,
        control_plane: next.control_plane != applied.control_plane,
        drain: next.drain != applied.drain,
        pools,
        adverts,
        restart,
        later,
        next,
    }
}

/// Records `key` when `changed`, and says whether it did.
fn changed(restart: &mut Vec<&'static str>, changed: bool, key: &'static str) -> bool {
    if changed {
        restart.push(key);
    }
    changed
}

/// The sections only a restart applies keep their running values.
fn keep_running(next: &mut Config, applied: &Config, restart: &mut Vec<&'static str>) {
    // The pools the intent accepts addresses from follow `[ipam]`; the
    // rest of `[kubernetes]` is the watch's, set at start.
    // So do the pools' L2 modes.
    let unpooled = |k: &Option<KubeConfig>| {
        k.clone().map(|k| KubeConfig {
            pools: None,
            l2: None,
            adverts: Default::default(),
            max_announcing_nodes: None,
            drain: None,
            ..k
        })
    };
    let kube = unpooled(&next.kubernetes) != unpooled(&applied.kubernetes);
    if changed(restart, kube, "kubernetes") {
        let k = next.kubernetes.as_mut();
        let (pools, l2, adverts, cap, drain) = k.map_or(Default::default(), |k| {
            let ads = std::mem::take(&mut k.adverts);
            (
                k.pools.take(),
                k.l2.take(),
                ads,
                k.max_announcing_nodes,
                k.drain.take(),
            )
        });
        next.kubernetes = applied.kubernetes.clone();
        if let Some(k) = next.kubernetes.as_mut() {
            (k.pools, k.l2, k.adverts) = (pools, l2, adverts);
            (k.max_announcing_nodes, k.drain) = (cap, drain);
        }
    }
    // `[l2]` itself (interfaces, timers, its default) needs a restart.
    if changed(restart, next.l2 != applied.l2, "l2") {
        next.l2 = applied.l2.clone();
        let running = applied.kubernetes.as_ref().and_then(|k| k.l2.clone());
        if let Some(k) = next.kubernetes.as_mut() {
            k.l2 = running;
        }
    }
    if changed(restart, next.dataplane != applied.dataplane, "dataplane") {
        next.dataplane = applied.dataplane.clone();
    }
    if changed(restart, next.status != applied.status, "status") {
        next.status = applied.status;
    }
    keep_bgp(next, applied, restart);
}

/// `[bgp]` keys only a restart applies keep their running values.
fn keep_bgp(next: &mut Config, applied: &Config, restart: &mut Vec<&'static str>) {
    let (b, a) = (&mut next.bgp, &applied.bgp);
    let asn = |c: &crate::config::BgpConfig| (c.asn, c.asn_label.clone());
    if changed(restart, asn(b) != asn(a), "bgp.asn") {
        (b.asn, b.asn_label) = asn(a);
    }
    let id = |c: &crate::config::BgpConfig| (c.router_id, c.router_id_from_node);
    if changed(restart, id(b) != id(a), "bgp.router_id") {
        (b.router_id, b.router_id_from_node) = id(a);
    }
    if changed(restart, b.listen != a.listen, "bgp.listen") {
        b.listen = a.listen;
    }
    // Without it, only this node's Node is watched: a restart watches all.
    let cap = b.max_announcing_nodes;
    if changed(
        restart,
        cap != a.max_announcing_nodes,
        "bgp.max_announcing_nodes",
    ) {
        b.max_announcing_nodes = a.max_announcing_nodes;
        let running = applied
            .kubernetes
            .as_ref()
            .and_then(|k| k.max_announcing_nodes);
        if let Some(k) = next.kubernetes.as_mut() {
            k.max_announcing_nodes = running;
        }
    }
}

/// New pools apply live; the Lease, or `[ipam]` itself appearing or
/// going, need a restart. Returns whether the pools changed.
fn ipam(next: &mut Config, applied: &Config, restart: &mut Vec<&'static str>) -> bool {
    match (&mut next.ipam, &applied.ipam) {
        (Some(n), Some(o)) => {
            let lease = |i: &crate::config::IpamConfig| {
                (
                    i.lease_namespace.clone(),
                    i.lease_name.clone(),
                    i.lease_duration,
                )
            };
            if changed(restart, lease(n) != lease(o), "ipam lease") {
                let p = std::mem::take(&mut n.pools);
                *n = o.clone();
                n.pools = p;
            }
            n.pools != o.pools
        }
        (None, None) => false,
        _ => {
            changed(restart, true, "ipam");
            next.ipam = applied.ipam.clone();
            if let (Some(n), Some(a)) = (next.kubernetes.as_mut(), &applied.kubernetes) {
                n.pools = a.pools.clone();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
        [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65000\n";

    fn cfg(extra: &str) -> Config {
        Config::from_toml_str(&format!("{BASE}{extra}")).unwrap()
    }

    const KUBE: &str = "[kubernetes]\nnode_name = \"n1\"\n";
    const IPAM: &str = "[ipam]\n[[ipam.pools]]\nname = \"a\"\naddresses = [\"203.0.113.0/28\"]\n";

    #[test]
    fn nothing_changed_nothing_to_do() {
        let p = plan(&cfg(""), cfg(""));
        assert!(!p.log && !p.control_plane && !p.pools && !p.drain);
        assert!(p.restart.is_empty() && p.later.is_empty());
        assert_eq!(p.next, cfg(""));
    }

    #[test]
    fn peers_statics_log_drain_and_control_plane_apply_live() {
        let new = cfg(
            "[[bgp.peers]]\naddress = \"192.0.2.3\"\nasn = 65000\n\
             [log]\nformat = \"json\"\n[drain]\n\
             [control_plane]\nvip = \"192.0.2.100\"\ninterface = \"lo\"\nbackends = [\"192.0.2.5:6443\"]\n",
        );
        let p = plan(&cfg(""), new.clone());
        assert!(p.log && p.drain && p.control_plane && !p.pools);
        assert!(p.restart.is_empty(), "{:?}", p.restart);
        assert_eq!(p.next, new, "replaced whole");
        assert_eq!(p.next.bgp.peers.len(), 2);
    }

    #[test]
    fn an_asn_from_a_label_needs_a_restart_and_a_peers_local_asn_does_not() {
        let applied = cfg(KUBE);
        let labelled = BASE.replace("asn = 65010", "asn = \"label:vipd.io/asn\"");
        let new = Config::from_toml_str(&format!("{labelled}{KUBE}")).unwrap();
        let p = plan(&applied, new);
        assert_eq!(p.restart, ["bgp.asn"]);
        assert_eq!((p.next.bgp.asn, p.next.bgp.asn_label), (65010, None));
        let own = BASE.replace("asn = 65000\n", "asn = 65000\nlocal_asn = 65101\n");
        let new = Config::from_toml_str(&format!("{own}{KUBE}")).unwrap();
        let p = plan(&applied, new);
        assert!(p.restart.is_empty(), "{:?}", p.restart);
        assert_eq!(p.next.bgp.peers[0].local_asn, Some(65101));
    }

    #[test]
    fn sections_that_need_a_restart_keep_the_running_values() {
        let applied = cfg(&format!("{KUBE}[status]\nlisten = \"127.0.0.1:9000\"\n"));
        let new = Config::from_toml_str(
            "[status]\nlisten = \"127.0.0.1:9001\"\n[bgp]\nasn = 65011\nrouter_id = \"192.0.2.9\"\n\
             listen = \"0.0.0.0:1179\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65000\n\
             [kubernetes]\nnode_name = \"n2\"\n[dataplane]\naddress_interface = \"eth9\"\n",
        );
        let Ok(new) = new else { panic!("{new:?}") };
        let p = plan(&applied, new);
        assert_eq!(
            p.restart,
            [
                "kubernetes",
                "dataplane",
                "status",
                "bgp.asn",
                "bgp.router_id",
                "bgp.listen"
            ]
        );
        assert_eq!(p.next.kubernetes, applied.kubernetes);
        assert_eq!(p.next.dataplane, applied.dataplane);
        assert_eq!(p.next.status, applied.status);
        assert_eq!(
            (p.next.bgp.asn, p.next.bgp.router_id, p.next.bgp.listen),
            (65010, applied.bgp.router_id, None)
        );
    }

    #[test]
    fn the_cap_needs_a_restart_and_keeps_its_running_value() {
        let applied = cfg(KUBE);
        let capped = BASE.replace("[[bgp.peers]]", "max_announcing_nodes = 4\n[[bgp.peers]]");
        let next = Config::from_toml_str(&format!("{capped}{KUBE}")).unwrap();
        assert_eq!(
            next.kubernetes.as_ref().unwrap().max_announcing_nodes,
            Some(4)
        );
        let p = plan(&applied, next);
        assert_eq!(p.restart, ["bgp.max_announcing_nodes"]);
        assert_eq!(p.next.bgp.max_announcing_nodes, None);
        assert_eq!(p.next.kubernetes.unwrap().max_announcing_nodes, None);
    }

    #[test]
    fn advertisements_apply_live() {
        let applied = cfg(&format!("{KUBE}{IPAM}"));
        let p = plan(
            &applied,
            cfg(&format!(
                "[[bgp.advertisements]]\nprefix = \"198.51.100.0/24\"\ncommunities = [\"65000:1\"]\n{KUBE}{IPAM}"
            )),
        );
        assert!(
            p.adverts && !p.pools && p.restart.is_empty(),
            "{:?}",
            p.restart
        );
        let k = p.next.kubernetes.unwrap();
        assert!(k.adverts.of("198.51.100.1".parse().unwrap()).is_some());
    }

    #[test]
    fn pools_apply_live_the_lease_and_ipam_itself_need_a_restart() {
        let applied = cfg(&format!("{KUBE}{IPAM}"));
        let more = cfg(&format!(
            "{KUBE}{IPAM}[[ipam.pools]]\nname = \"b\"\naddresses = [\"203.0.113.16/28\"]\n"
        ));
        let p = plan(&applied, more.clone());
        assert!(p.pools && p.restart.is_empty(), "{:?}", p.restart);
        assert_eq!(p.next, more);
        let pools = |c: &Config| c.kubernetes.as_ref().unwrap().pools.clone().unwrap();
        assert_eq!(pools(&p.next).len(), 2, "the watch's pools too");

        let lease = cfg(&format!(
            "{KUBE}[ipam]\nlease_name = \"other\"\n[[ipam.pools]]\nname = \"a\"\naddresses = [\"203.0.113.0/27\"]\n"
        ));
        let p = plan(&applied, lease);
        assert_eq!(p.restart, ["ipam lease"]);
        assert!(p.pools);
        let (n, o) = (p.next.ipam.unwrap(), applied.ipam.clone().unwrap());
        assert_eq!(n.lease_name, o.lease_name, "the running Lease stays");
        assert_ne!(n.pools, o.pools, "the new pools apply");

        let p = plan(&applied, cfg(KUBE));
        assert_eq!(p.restart, ["ipam"]);
        assert!(!p.pools);
        assert_eq!(p.next.ipam, applied.ipam, "the allocator keeps running");
        assert_eq!(
            p.next.kubernetes, applied.kubernetes,
            "and its pools stay announced"
        );
        let p = plan(&cfg(KUBE), applied.clone());
        assert_eq!((p.restart, p.next.ipam), (vec!["ipam"], None));
    }

    #[test]
    fn session_settings_apply_to_new_sessions_and_the_next_stop() {
        let p = plan(
            &cfg(""),
            Config::from_toml_str(&format!(
                "{}graceful_restart = false\nrestart_time = 60\nwithdraw_on_stop = true\n\
                 [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65000\n",
                "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n"
            ))
            .unwrap(),
        );
        assert_eq!(
            p.later,
            [
                "bgp.graceful_restart",
                "bgp.restart_time",
                "bgp.withdraw_on_stop"
            ]
        );
        assert!(p.next.bgp.withdraw_on_stop && p.restart.is_empty());
    }
}
