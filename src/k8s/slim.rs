//! The three kinds vipd watches (Service, EndpointSlice, Node), as only the
//! fields it reads. serde skips every other field while parsing, so what
//! vipd does not read is never allocated: no `managedFields`, no
//! `last-applied-configuration` annotation, no ports, no Pod references.
//! With 50,000 Services the full `k8s-openapi` objects of one list page
//! cost more than vipd keeps of the whole cluster.
//!
//! [`Guarded`] keeps one bad object from breaking a list or a watch: kube's
//! `DeserializeGuard` buffers each object as a tree of values (every string
//! of every field allocated) to parse it twice; this guard keeps the
//! object's text instead and parses only the fields above from it. The
//! text is serde_json's own (`RawValue`), which needs a watch event's
//! `type` before its `object`, as the API server writes it (Go's field
//! order); a stream in the other order fails as a watch error, loudly.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Which labels and annotations of a kind vipd reads (the rest are skipped
/// while parsing).
pub trait Keep {
    fn label(_key: &str) -> bool {
        false
    }
    fn annotation(_key: &str) -> bool {
        false
    }
}

/// The metadata of one kind, as its [`Keep`] says.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound = "")]
struct MetaIn<P: Keep> {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    #[serde(default)]
    labels: Kept<P, Labels>,
    #[serde(default)]
    annotations: Kept<P, Annotations>,
}

impl<P: Keep> From<MetaIn<P>> for ObjectMeta {
    fn from(m: MetaIn<P>) -> ObjectMeta {
        let map = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            creation_timestamp: m.creation_timestamp,
            labels: map(m.labels.0),
            annotations: map(m.annotations.0),
            ..ObjectMeta::default()
        }
    }
}

fn meta<'de, P: Keep, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    MetaIn::<P>::deserialize(d).map(ObjectMeta::from)
}

pub struct Labels;
pub struct Annotations;

/// Labels or annotations.
pub trait Which {
    fn keep<P: Keep>(key: &str) -> bool;
}
impl Which for Labels {
    fn keep<P: Keep>(key: &str) -> bool {
        P::label(key)
    }
}
impl Which for Annotations {
    fn keep<P: Keep>(key: &str) -> bool {
        P::annotation(key)
    }
}

/// A string map of which only the keys `P` keeps are stored; `null` is
/// empty, and a value that is not a string is skipped.
struct Kept<P, W>(BTreeMap<String, String>, PhantomData<(P, W)>);

impl<P, W> Default for Kept<P, W> {
    fn default() -> Self {
        Kept(BTreeMap::new(), PhantomData)
    }
}

impl<'de, P: Keep, W: Which> Deserialize<'de> for Kept<P, W> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<P, W>(PhantomData<(P, W)>);
        impl<'de, P: Keep, W: Which> Visitor<'de> for V<P, W> {
            type Value = Kept<P, W>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Kept::default())
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Kept::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Kept::default();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if W::keep::<P>(&k) {
                        out.0.insert(k.into_owned(), m.next_value()?);
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_option(V(PhantomData))
    }
}

/// A kind vipd watches: implements kube's [`Resource`] for its slim type.
macro_rules! resource {
    ($t:ident, $keep:ident, $kind:literal, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        impl Resource for $t {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($group)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
        impl Guardable for $t {
            type Keep = $keep;
        }
    };
}

/// A Service: its `vipd.io/*` annotations and no labels.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Service {
    #[serde(deserialize_with = "meta::<ServiceKeep, _>", default)]
    pub metadata: ObjectMeta,
    pub spec: Option<ServiceSpec>,
    pub status: Option<ServiceStatus>,
}

pub struct ServiceKeep;
impl Keep for ServiceKeep {
    fn annotation(key: &str) -> bool {
        key.starts_with("vipd.io/")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub load_balancer_class: Option<String>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub external_traffic_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub load_balancer: Option<LoadBalancerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerStatus {
    pub ingress: Option<Vec<Ingress>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ingress {
    pub ip: Option<String>,
}

resource!(
    Service,
    ServiceKeep,
    "Service",
    "",
    "v1",
    "services",
    k8s_openapi::NamespaceResourceScope
);

/// An EndpointSlice: the label naming its Service, and its endpoints'
/// addresses, node and conditions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointSlice {
    #[serde(deserialize_with = "meta::<SliceKeep, _>", default)]
    pub metadata: ObjectMeta,
    pub endpoints: Option<Vec<Endpoint>>,
}

pub struct SliceKeep;
impl Keep for SliceKeep {
    fn label(key: &str) -> bool {
        key == "kubernetes.io/service-name"
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Option<Vec<String>>,
    pub node_name: Option<String>,
    pub conditions: Option<Conditions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

resource!(
    EndpointSlice,
    SliceKeep,
    "EndpointSlice",
    "discovery.k8s.io",
    "v1",
    "endpointslices",
    k8s_openapi::NamespaceResourceScope
);

/// A Node: its labels (peers' `node_selector`, drains), whether it is
/// cordoned, its taints' keys and its addresses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    #[serde(deserialize_with = "meta::<NodeKeep, _>", default)]
    pub metadata: ObjectMeta,
    pub spec: Option<NodeSpec>,
    pub status: Option<NodeStatus>,
}

pub struct NodeKeep;
impl Keep for NodeKeep {
    fn label(_: &str) -> bool {
        true
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    pub unschedulable: Option<bool>,
    pub taints: Option<Vec<Taint>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Taint {
    pub key: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    pub addresses: Option<Vec<NodeAddress>>,
    /// Only `Ready` is read (`max_announcing_nodes` counts ready nodes).
    pub conditions: Option<Vec<NodeCondition>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

resource!(
    Node,
    NodeKeep,
    "Node",
    "",
    "v1",
    "nodes",
    k8s_openapi::ClusterResourceScope
);

/// A slim kind [`Guarded`] can wrap: which metadata to keep of an object
/// that does not parse.
pub trait Guardable: Resource<DynamicType = ()> + DeserializeOwned {
    type Keep: Keep;
}

/// An object as the API server sent it: parsed, or why not (with what of
/// its metadata could be read, so a watch still knows which object it is).
#[derive(Debug, Clone)]
pub struct Guarded<K>(pub Result<K, Invalid<K>>);

#[derive(Debug, Clone)]
pub struct Invalid<K> {
    pub error: String,
    pub metadata: ObjectMeta,
    kind: PhantomData<K>,
}

impl<'de, K: Guardable> Deserialize<'de> for Guarded<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(bound = "")]
        struct MetaOnly<P: Keep> {
            #[serde(default)]
            metadata: Option<MetaIn<P>>,
        }
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(Guarded(serde_json::from_str::<K>(raw.get()).map_err(|e| {
            let m = serde_json::from_str::<MetaOnly<K::Keep>>(raw.get());
            Invalid {
                error: e.to_string(),
                metadata: m
                    .ok()
                    .and_then(|m| m.metadata)
                    .map(Into::into)
                    .unwrap_or_default(),
                kind: PhantomData,
            }
        })))
    }
}

impl<K: Guardable> Resource for Guarded<K> {
    type DynamicType = ();
    type Scope = K::Scope;
    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|e| &e.metadata, K::meta)
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|e| &mut e.metadata, K::meta_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_what_vipd_reads_is_kept() {
        let s: Service = serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"app": "web"},
                "annotations": {
                    "vipd.io/med": "5",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}"
                },
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "clusterIP": "10.0.0.1",
                     "clusterIPs": ["10.0.0.1"], "externalTrafficPolicy": "Local",
                     "externalIPs": null, "loadBalancerClass": "c"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}, {"hostname": "x"}]}}
        }))
        .unwrap();
        let m = &s.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref()),
            (Some("web"), Some("shop"))
        );
        assert_eq!(m.resource_version.as_deref(), Some("7"));
        assert_eq!(
            m.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["vipd.io/med"]
        );
        assert!(m.labels.is_none() && m.managed_fields.is_none());
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_ips, None);
        let ing = s.status.unwrap().load_balancer.unwrap().ingress.unwrap();
        assert_eq!(ing[0].ip.as_deref(), Some("203.0.113.1"));
        assert_eq!(ing[1].ip, None);

        let sl: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web", "other": "x"}},
            "addressType": "IPv4", "ports": [],
            "endpoints": [{"addresses": ["10.1.0.1"], "nodeName": "n1",
                           "targetRef": {"kind": "Pod", "name": "p"},
                           "conditions": {"ready": false, "serving": true}}]
        }))
        .unwrap();
        let labels = sl.metadata.labels.unwrap();
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["kubernetes.io/service-name"]
        );
        let c = sl.endpoints.unwrap()[0].conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), None)
        );

        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"rack": "r1"}, "annotations": {"a": "b"}},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                       "images": [{"names": ["x"]}]}
        }))
        .unwrap();
        assert_eq!(n.metadata.labels.unwrap()["rack"], "r1");
        assert!(n.metadata.annotations.is_none());
        assert_eq!(n.spec.unwrap().taints.unwrap()[0].key, "k");
    }

    #[test]
    fn a_bad_object_is_reported_with_its_name_and_the_rest_still_parse() {
        let list: Vec<Guarded<Service>> = serde_json::from_str(
            &json!([
                {"metadata": {"name": "good", "namespace": "a"}, "spec": {"type": "ClusterIP"}},
                {"metadata": {"name": "bad", "namespace": "a", "annotations": {"vipd.io/med": "1"}},
                 "spec": {"externalIPs": "not-a-list"}},
                {"metadata": 5},
                {"metadata": {"name": "also-good", "namespace": "a"}}
            ])
            .to_string(),
        )
        .unwrap();
        assert!(list[0].0.is_ok() && list[3].0.is_ok());
        let bad = list[1].0.as_ref().unwrap_err();
        assert_eq!(list[1].meta().name.as_deref(), Some("bad"));
        assert!(bad.error.contains("invalid type"), "{}", bad.error);
        assert!(list[2].0.is_err());
        assert_eq!(list[2].meta().name, None);
        // In a watch event as the API server writes it.
        let line = r#"{"type":"MODIFIED","object":{"metadata":{"name":"bad","namespace":"a"},"spec":{"type":7}}}"#;
        let ev: kube::core::WatchEvent<Guarded<Service>> = serde_json::from_str(line).unwrap();
        let kube::core::WatchEvent::Modified(g) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(g.meta().name.as_deref(), Some("bad"));
        assert!(g.0.is_err());
    }
}
