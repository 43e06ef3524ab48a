//! From a Kubernetes Service to what the allocator needs of it
//! ([`super::Svc`]), or nothing for a Service vipd is not responsible for.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use kube::ResourceExt;

use super::{Families, Family, FamilyPolicy, Sharing, Svc};

pub const POOL: &str = "vipd.io/pool";
pub const LOAD_BALANCER_IPS: &str = "vipd.io/load-balancer-ips";
pub const SHARING_KEY: &str = "vipd.io/sharing-key";
pub use crate::k8s::model::ANNOTATION_SHARING_NAMESPACES as SHARING_NAMESPACES;

/// Which Services are vipd's: type LoadBalancer, and of its class.
#[derive(Debug, Clone, Copy, Default)]
pub struct Class<'a> {
    /// `kubernetes.load_balancer_class`; none: Services without a class.
    pub name: Option<&'a str>,
    pub include_unclassed: bool,
}

impl Class<'_> {
    fn takes(&self, class: Option<&str>) -> bool {
        match (self.name, class) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(want), Some(c)) => want == c,
            (Some(_), None) => self.include_unclassed,
        }
    }
}

/// `None`: not vipd's to allocate for. `Some(Err(why))`: vipd's, but an
/// annotation cannot be read (the caller says so in an Event and leaves
/// the Service as it is).
pub fn from_service(s: &Service, class: Class) -> Option<Result<Svc, String>> {
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || !class.takes(spec.load_balancer_class.as_deref())
    {
        return None;
    }
    Some(build(s))
}

fn build(s: &Service) -> Result<Svc, String> {
    let spec = s.spec.as_ref().expect("checked by the caller");
    let a = s.annotations();
    let requested = requested(a.get(LOAD_BALANCER_IPS), spec.load_balancer_ip.as_deref())?;
    let (families, policy) = families(spec);
    // Ports, selector and the namespaces consented to matter only between
    // Services with one sharing key (`why_not_shared`): the others keep
    // none, which at 50,000 Services is most of the allocator's memory.
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let sharing = a.get(SHARING_KEY).map(|key| {
        Box::new(Sharing {
            key: key.clone(),
            ports: (spec.ports.iter().flatten())
                .map(|p| {
                    (
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.port as u16,
                    )
                })
                .collect(),
            namespaces: a
                .get(SHARING_NAMESPACES)
                .map(|v| crate::k8s::model::namespace_list(v))
                .unwrap_or_default(),
            selector: (spec.selector.clone())
                .filter(|_| local)
                .unwrap_or_default(),
        })
    });
    let current = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| {
            i.iter()
                .filter_map(|x| x.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(Svc {
        key: format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()).into(),
        uid: s.uid().unwrap_or_default().into(),
        created: s
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        families,
        policy,
        pool: a.get(POOL).map(|p| p.as_str().into()),
        requested,
        sharing,
        local,
        current,
    })
}

/// `spec.ipFamilies` and `spec.ipFamilyPolicy` (unknown spellings: one
/// family, as the API server defaults them).
fn families(spec: &ServiceSpec) -> (Families, FamilyPolicy) {
    let families = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    let policy = match spec.ip_family_policy.as_deref() {
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        _ => FamilyPolicy::SingleStack,
    };
    (families, policy)
}

/// `vipd.io/load-balancer-ips`, or else the deprecated
/// `spec.loadBalancerIP`: each an address, or a clear error.
fn requested(annotation: Option<&String>, field: Option<&str>) -> Result<Vec<IpAddr>, String> {
    match annotation {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse()
                    .map_err(|_| format!("{LOAD_BALANCER_IPS}: {x:?} is not an IP address"))
            })
            .collect(),
        None => match field.filter(|x| !x.is_empty()) {
            Some(x) => Ok(vec![x.parse().map_err(|_| {
                format!("spec.loadBalancerIP: {x:?} is not an IP address")
            })?]),
            None => Ok(vec![]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_what_the_allocator_needs() {
        let s = service(serde_json::json!({
            "metadata": {"namespace": "a", "name": "web", "uid": "u1",
                "creationTimestamp": "2026-11-22T10:00:00Z",
                "annotations": {"vipd.io/pool": "public", "vipd.io/sharing-key": "k",
                    "vipd.io/load-balancer-ips": "198.51.100.5, 2001:db8:100::5"}},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6", "IPv4"],
                "ipFamilyPolicy": "RequireDualStack",
                "ports": [{"port": 443, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.5"}, {"hostname": "x"}]}}
        }));
        let v = from_service(&s, Class::default()).unwrap().unwrap();
        assert_eq!(&*v.key, "a/web");
        assert_eq!(v.created, 1_795_341_600);
        assert_eq!(v.families[..], [Family::V6, Family::V4]);
        assert_eq!(v.policy, FamilyPolicy::RequireDualStack);
        assert_eq!(v.pool.as_deref(), Some("public"));
        assert_eq!(v.requested.len(), 2);
        let sharing = v.sharing.unwrap();
        assert_eq!(sharing.key, "k");
        assert_eq!(sharing.ports, [("TCP".into(), 443), ("UDP".into(), 53)]);
        assert_eq!(
            v.current[..],
            ["198.51.100.5".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn ports_and_selector_are_kept_only_where_they_decide_sharing() {
        let with = |ann: serde_json::Value, policy: &str| {
            let s = service(serde_json::json!({
                "metadata": {"namespace": "a", "name": "web", "uid": "u1", "annotations": ann},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                    "selector": {"app": "web"}, "ports": [{"port": 443, "protocol": "TCP"}]}
            }));
            from_service(&s, Class::default()).unwrap().unwrap()
        };
        let alone = with(
            serde_json::json!({"vipd.io/sharing-namespaces": "b"}),
            "Local",
        );
        assert_eq!(alone.sharing, None, "nothing kept without a sharing key");
        let key =
            serde_json::json!({"vipd.io/sharing-key": "k", "vipd.io/sharing-namespaces": "b"});
        let cluster = with(key.clone(), "Cluster").sharing.unwrap();
        assert_eq!((cluster.ports.len(), cluster.selector.len()), (1, 0));
        assert_eq!(cluster.namespaces, ["b"]);
        let local = with(key, "Local").sharing.unwrap();
        assert_eq!((local.ports.len(), local.selector.len()), (1, 1));
    }

    /// Each spelling Kubernetes uses maps to its policy; anything else is
    /// single stack (the API server rejects other values).
    #[test]
    fn family_policies_as_kubernetes_spells_them() {
        for (given, want) in [
            ("PreferDualStack", FamilyPolicy::PreferDualStack),
            ("RequireDualStack", FamilyPolicy::RequireDualStack),
            ("SingleStack", FamilyPolicy::SingleStack),
        ] {
            let s = service(serde_json::json!({
                "metadata": {"namespace": "a", "name": "s"},
                "spec": {"type": "LoadBalancer", "ipFamilyPolicy": given}
            }));
            let v = from_service(&s, Class::default()).unwrap().unwrap();
            assert_eq!(v.policy, want, "{given}");
        }
    }

    #[test]
    fn only_vipds_services_and_a_clear_error_for_a_bad_annotation() {
        let mk = |ty: &str, class: Option<&str>, ann: serde_json::Value| {
            service(serde_json::json!({
                "metadata": {"namespace": "a", "name": "s", "annotations": ann},
                "spec": {"type": ty, "loadBalancerClass": class}
            }))
        };
        let none = serde_json::json!({});
        assert!(from_service(&mk("ClusterIP", None, none.clone()), Class::default()).is_none());
        assert!(from_service(
            &mk("LoadBalancer", Some("x"), none.clone()),
            Class::default()
        )
        .is_none());
        let ours = Class {
            name: Some("x"),
            include_unclassed: false,
        };
        assert!(from_service(&mk("LoadBalancer", Some("x"), none.clone()), ours).is_some());
        assert!(from_service(&mk("LoadBalancer", None, none), ours).is_none());
        let bad = mk(
            "LoadBalancer",
            None,
            serde_json::json!({"vipd.io/load-balancer-ips": "198.51.100.5, nope"}),
        );
        assert_eq!(
            from_service(&bad, Class::default()).unwrap().unwrap_err(),
            "vipd.io/load-balancer-ips: \"nope\" is not an IP address"
        );
        // The deprecated field, when the annotation is absent.
        let old = service(serde_json::json!({
            "metadata": {"namespace": "a", "name": "s"},
            "spec": {"type": "LoadBalancer", "loadBalancerIP": "198.51.100.7"}
        }));
        let v = from_service(&old, Class::default()).unwrap().unwrap();
        assert_eq!(
            v.requested,
            ["198.51.100.7".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(v.families.is_empty());
    }
}
