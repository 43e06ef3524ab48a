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
