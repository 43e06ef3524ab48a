//! Kubernetes Events on Services: the one place vipd writes them, for the
//! announcer's refusals and the allocator's decisions alike.
//!
//! Written by hand rather than through `kube::runtime::events::Recorder`
//! for now: the Recorder posts `events.k8s.io/v1` Events (a grant in
//! another API group, and another kind for the stand-in to serve) and
//! deduplicates within one process only, while what vipd needs is one
//! Event in the cluster for a decision every node makes (issue 20: a
//! deterministic name, counts updated on repeats). That lands here.

use k8s_openapi::api::core::v1::{Event as KubeEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::warn;

use super::model::{Key, Uid};

/// Records an Event on a Service (`warning`: of type Warning, else Normal);
/// a failure is logged, never retried.
pub async fn post(
    client: Client,
    service: Key,
    uid: Uid,
    reason: String,
    message: String,
    warning: bool,
) {
    let (ns, name) = service.split_once('/').unwrap_or(("default", &service));
    let now = Time(jiff_now());
    let ev = KubeEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.vipd-")),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            uid: Some(uid),
            ..Default::default()
        },
        reason: Some(reason),
        message: Some(message),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("vipd".into()),
            host: None,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    if let Err(e) = Api::<KubeEvent>::namespaced(client, ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        warn!(service = %service, "could not create the Event: {e}");
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}
