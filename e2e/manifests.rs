//! The shipped Kubernetes manifests, as `kubectl kustomize` renders each
//! overlay of `configs/kubernetes/`: every document is read into its
//! `k8s-openapi` type and written back unchanged (a misspelled or
//! misplaced field would be lost on the way, and fails), the DaemonSet has
//! what a platform team needs (probes, priority, limits, the rollout that
//! stops at an unready node, one vipd per node), its TOML is valid, and
//! the RBAC grants exactly what vipd uses, nothing more.

use std::collections::BTreeSet;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const OVERLAYS: [&str; 4] = ["plain", "control-plane", "allocator", "l2"];

/// `kubectl kustomize` of one overlay, as documents.
fn documents(overlay: &str) -> Vec<Value> {
    let dir = format!(
        "{}/configs/kubernetes/overlays/{overlay}",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new("kubectl")
        .args(["kustomize", &dir])
        .output()
        .expect("kubectl (it ships kustomize): run `bash e2e/install.sh`");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect()
}

/// Reads `doc` as `T` and writes it back: equal, or a field was not one of
/// `T`'s.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let typed: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, doc, "{} does not survive its type", doc["kind"]);
    typed
}

/// (group, resource, verb, resourceName or "*") for every rule.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        let names = r.resource_names.clone().unwrap_or_else(|| vec!["*".into()]);
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    for n in &names {
                        out.insert((g.clone(), res.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

type Grants = BTreeSet<(String, String, String, String)>;

fn set(items: &[(&str, &str, &str, &str)]) -> Grants {
    items
        .iter()
        .map(|(g, r, v, n)| (g.to_string(), r.to_string(), v.to_string(), n.to_string()))
        .collect()
}

/// Every document of an overlay through its type; the grants of its
/// ClusterRoles and Roles, and the DaemonSet and its TOML.
fn read(overlay: &str) -> (Vec<String>, Grants, Grants, DaemonSet, String) {
    let (mut kinds, mut cluster, mut role) = (vec![], Grants::new(), Grants::new());
    let (mut ds, mut toml) = (None, None);
    for doc in documents(overlay) {
        let kind = doc["kind"].as_str().unwrap().to_string();
        assert_eq!(
            doc["metadata"]["namespace"].as_str().is_some(),
            !kind.starts_with("Cluster"),
            "{overlay}: {kind} namespace"
        );
        match kind.as_str() {
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(&doc)),
            "ClusterRole" => {
                cluster.extend(grants(&round_trip::<ClusterRole>(&doc).rules.unwrap()))
            }
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(&doc)),
            "Role" => role.extend(grants(&round_trip::<Role>(&doc).rules.unwrap())),
            "RoleBinding" => drop(round_trip::<RoleBinding>(&doc)),
            "ConfigMap" => {
                let cm = round_trip::<ConfigMap>(&doc);
                toml = cm.data.unwrap().get("vipd.toml").cloned();
            }
            "DaemonSet" => ds = Some(round_trip::<DaemonSet>(&doc)),
            other => panic!("{overlay}: unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    (
        kinds,
        cluster,
        role,
        ds.expect("a DaemonSet"),
        toml.expect("vipd.toml in the ConfigMap"),
    )
}

const BASE_GRANTS: [(&str, &str, &str, &str); 10] = [
    ("", "services", "list", "*"),
    ("", "services", "watch", "*"),
    ("", "nodes", "list", "*"),
    ("", "nodes", "watch", "*"),
    ("discovery.k8s.io", "endpointslices", "list", "*"),
    ("discovery.k8s.io", "endpointslices", "watch", "*"),
    ("", "events", "create", "*"),
    // Events already recorded (listed at start), and a recurrence counted
    // on its Event (read, then patched).
    ("", "events", "list", "*"),
    ("", "events", "get", "*"),
    ("", "events", "patch", "*"),
];

const IPAM_GRANTS: [(&str, &str, &str, &str); 3] = [
    ("coordination.k8s.io", "leases", "create", "*"),
    ("coordination.k8s.io", "leases", "get", "vipd-ipam"),
    ("coordination.k8s.io", "leases", "update", "vipd-ipam"),
];

/// `[l2]`: each node's Lease, whose name RBAC cannot tie to the node.
const L2_GRANTS: [(&str, &str, &str, &str); 5] = [
    ("coordination.k8s.io", "leases", "create", "*"),
    ("coordination.k8s.io", "leases", "get", "*"),
    ("coordination.k8s.io", "leases", "update", "*"),
    ("coordination.k8s.io", "leases", "list", "*"),
    ("coordination.k8s.io", "leases", "watch", "*"),
];

#[test]
fn every_overlay_is_its_types_and_rbac_is_least_privilege() {
    for o in OVERLAYS {
        let (kinds, cluster, role, ds, toml) = read(o);
        let cfg = vipd::config::Config::from_toml_str_on(&toml, Some("node-a"))
            .unwrap_or_else(|p| panic!("{o}: the ConfigMap's TOML: {p}"));
        let ipam = o == "allocator";
        let l2 = o == "l2";
        assert_eq!(cfg.ipam.is_some(), ipam, "{o}");
        assert_eq!(cfg.l2.is_some(), l2, "{o}");
        daemonset(o, &ds);
        // What vipd calls: list and watch Services, EndpointSlices and its
        // Node; create, list, get and patch Events; with [ipam], patch Service status and get,
        // create and update its Lease. Nothing else.
        let mut want = set(&BASE_GRANTS);
        let mut kinds_want = vec![
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
        ];
        if ipam {
            want.extend(set(&[("", "services/status", "patch", "*")]));
            kinds_want.extend(["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]);
        }
        if l2 {
            kinds_want.extend(["Role", "RoleBinding"]);
        }
        kinds_want.sort();
        assert_eq!(kinds, kinds_want, "{o}");
        assert_eq!(cluster, want, "{o}");
        let role_want = match (ipam, l2) {
            (true, _) => set(&IPAM_GRANTS),
            (_, true) => set(&L2_GRANTS),
            _ => Grants::new(),
        };
        assert_eq!(role, role_want, "{o}");
    }
}

/// What the DaemonSet must hold in every overlay.
fn daemonset(o: &str, ds: &DaemonSet) {
    let spec = ds.spec.as_ref().unwrap();
    let u = spec.update_strategy.as_ref().unwrap();
    assert_eq!(u.type_.as_deref(), Some("RollingUpdate"), "{o}");
    let r = u.rolling_update.as_ref().unwrap();
    let one = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1);
    assert_eq!(
        r.max_unavailable.as_ref(),
        Some(&one),
        "{o}: one node at a time"
    );
    assert!(spec.min_ready_seconds.unwrap_or(0) > 0, "{o}");
    let pod: &PodSpec = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("vipd"));
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = &pod.containers[0];
    let caps = (c.security_context.as_ref())
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert_eq!(
        caps.contains(&"NET_RAW".to_string()),
        o == "l2",
        "{o}: packet sockets for ARP and NDP with [l2] only: {caps:?}"
    );
    assert_eq!(
        c.image.as_deref(),
        Some("vipd:0.1.0"),
        "{o}: the name and tag packaging/image.sh builds"
    );
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an HTTP probe");
        (g.host.unwrap_or_default(), g.path.unwrap_or_default())
    };
    assert_eq!(
        probe(&c.readiness_probe),
        ("127.0.0.1".into(), "/readyz".into()),
        "{o}"
    );
    assert_eq!(
        probe(&c.liveness_probe),
        ("127.0.0.1".into(), "/livez".into()),
        "{o}"
    );
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.as_ref().unwrap().contains_key("memory"));
    assert!(res.limits.as_ref().unwrap().contains_key("memory"));
    let claims: Vec<i32> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.host_port)
        .collect();
    assert!(
        claims.contains(&9179),
        "{o}: the status port claimed on the node"
    );
    let on_control_plane = pod
        .tolerations
        .iter()
        .flatten()
        .any(|t| t.key.as_deref() == Some("node-role.kubernetes.io/control-plane"));
    assert_eq!(
        on_control_plane,
        o == "control-plane",
        "{o}: an explicit choice for control-plane nodes"
    );
    assert_eq!(pod.affinity.is_some(), o != "control-plane", "{o}");
}

/// Every rule of the shipped ClusterRole and Role.
fn shipped_grants() -> Grants {
    let (_, mut cluster, role, _, _) = read("allocator");
    cluster.extend(role);
    let (_, l2_cluster, l2_role, _, _) = read("l2");
    cluster.extend(l2_cluster);
    cluster.extend(l2_role);
    cluster
}

/// What every test's API stand-in saw vipd ask for, across the whole suite
/// (the stand-in appends each new (group, resource, verb, name) to this
/// file). `e2e/test.sh` empties it before the suite and runs this test
/// after every other: each request vipd made is granted by the shipped
/// RBAC, and each grant was used.
#[test]
#[ignore = "run by e2e/test.sh after the whole suite: it audits what the other tests recorded"]
fn rbac_grants_exactly_what_the_suite_used() {
    let path = concat!(env!("CARGO_TARGET_TMPDIR"), "/rbac-used.log");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{path}: {e}: run the suite (e2e/test.sh) first; it records what vipd asked of the API"
        )
    });
    let used: BTreeSet<(String, String, String, String)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "bad line {l:?}");
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect();
    let granted = shipped_grants();
    let covers = |g: &(String, String, String, String), u: &(String, String, String, String)| {
        g.0 == u.0 && g.1 == u.1 && g.2 == u.2 && (g.3 == "*" || g.3 == u.3)
    };
    let denied: Vec<_> = used
        .iter()
        .filter(|u| !granted.iter().any(|g| covers(g, u)))
        .collect();
    assert!(
        denied.is_empty(),
        "vipd asked for what the shipped RBAC does not grant: {denied:?}"
    );
    let unused: Vec<_> = granted
        .iter()
        .filter(|g| !used.iter().any(|u| covers(g, u)))
        .collect();
    assert!(
        unused.is_empty(),
        "the shipped RBAC grants what vipd never used in the suite: {unused:?}\nused: {used:?}"
    );
    eprintln!(
        "{} distinct requests, all granted; every grant used",
        used.len()
    );
}

/// The control-plane variant is a static pod: it starts before the API
/// server, so it reads its file from the node and uses no ServiceAccount;
/// it claims the status port as the DaemonSet does.
#[test]
fn the_control_plane_static_pod_is_a_pod_that_needs_no_api() {
    use k8s_openapi::api::core::v1::Pod;
    let text = include_str!("../configs/kubernetes/vipd-control-plane.yaml");
    let doc: Value = serde_norway::from_str(text).expect("YAML");
    let pod = round_trip::<Pod>(&doc);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name, None);
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = &spec.containers[0];
    assert!(c.ports.iter().flatten().any(|p| p.host_port == Some(9179)));
    let args = c.args.clone().unwrap();
    let config = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| &m.mount_path == config)
        .unwrap_or_else(|| panic!("{config} is not mounted"));
    let vol = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let host = vol
        .host_path
        .as_ref()
        .expect("the file comes from the node");
    assert_eq!(host.type_.as_deref(), Some("File"));
    assert!(vol.config_map.is_none());
    // The example file in its comment is a valid control-plane config.
    let example: String = text
        .lines()
        .skip_while(|l| *l != "# /etc/vipd/control-plane.toml, for example:")
        .skip(1)
        .take_while(|l| l.starts_with("#   "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let cfg =
        vipd::config::Config::from_toml_str(&example).unwrap_or_else(|p| panic!("{example}\n{p}"));
    assert!(cfg.control_plane.is_some() && cfg.kubernetes.is_none());
}
