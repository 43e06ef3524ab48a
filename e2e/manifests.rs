//! The shipped Kubernetes manifests: every document is read into its
//! `k8s-openapi` type and written back unchanged (a misspelled or
//! misplaced field would be lost on the way, and fails), and the RBAC
//! grants exactly what vipd uses, nothing more.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const MANIFEST: &str = include_str!("../configs/kubernetes/vipd.yaml");

fn documents() -> Vec<Value> {
    MANIFEST
        .split("\n---\n")
        .map(|d| serde_norway::from_str::<Value>(d).expect("YAML"))
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

fn set(items: &[(&str, &str, &str, &str)]) -> BTreeSet<(String, String, String, String)> {
    items
        .iter()
        .map(|(g, r, v, n)| (g.to_string(), r.to_string(), v.to_string(), n.to_string()))
        .collect()
}

#[test]
fn every_manifest_is_its_type_and_rbac_is_least_privilege() {
    let mut kinds = vec![];
    let mut cluster_rules = None;
    let mut role_rules = None;
    for doc in documents() {
        let kind = doc["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(&doc)),
            "ClusterRole" => cluster_rules = round_trip::<ClusterRole>(&doc).rules,
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(&doc)),
            "Role" => role_rules = round_trip::<Role>(&doc).rules,
            "RoleBinding" => drop(round_trip::<RoleBinding>(&doc)),
            "ConfigMap" => {
                let cm = round_trip::<ConfigMap>(&doc);
                assert!(cm.data.unwrap().contains_key("vipd.toml"));
            }
            "DaemonSet" => {
                let ds = round_trip::<DaemonSet>(&doc);
                let pod = ds.spec.unwrap().template.spec.unwrap();
                assert_eq!(pod.service_account_name.as_deref(), Some("vipd"));
                assert_eq!(pod.host_network, Some(true));
            }
            other => panic!("unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "Role",
            "RoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    // What vipd calls: list and watch Services, EndpointSlices and its Node;
    // create Events; with [ipam], patch Service status and get, create and
    // update its Lease. Nothing else.
    assert_eq!(
        grants(&cluster_rules.unwrap()),
        set(&[
            ("", "services", "list", "*"),
            ("", "services", "watch", "*"),
            ("", "nodes", "list", "*"),
            ("", "nodes", "watch", "*"),
            ("discovery.k8s.io", "endpointslices", "list", "*"),
            ("discovery.k8s.io", "endpointslices", "watch", "*"),
            ("", "events", "create", "*"),
            ("", "services/status", "patch", "*"),
        ])
    );
    assert_eq!(
        grants(&role_rules.unwrap()),
        set(&[
            ("coordination.k8s.io", "leases", "create", "*"),
            ("coordination.k8s.io", "leases", "get", "vipd-ipam"),
            ("coordination.k8s.io", "leases", "update", "vipd-ipam"),
        ])
    );
}

/// Every rule of the shipped ClusterRole and Role.
fn shipped_grants() -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for doc in documents() {
        match doc["kind"].as_str() {
            Some("ClusterRole") => {
                out.extend(grants(&round_trip::<ClusterRole>(&doc).rules.unwrap()))
            }
            Some("Role") => out.extend(grants(&round_trip::<Role>(&doc).rules.unwrap())),
            _ => {}
        }
    }
    out
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
/// server, so it reads its file from the node and uses no ServiceAccount.
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
