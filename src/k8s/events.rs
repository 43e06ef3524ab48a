//! Kubernetes Events on Services (the announcer's refusals and the
//! allocator's decisions alike) and on this node's Node (a configuration
//! refused): the one place vipd writes them.
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

use std::collections::BTreeSet;

use super::model::{Key, Uid};

/// Report once: of what stands now, what was not standing at the last
/// pass. Something that goes away and comes back is reported again; one
/// that stays is reported once, however many passes see it.
#[derive(Debug, Default)]
pub struct Once<I> {
    standing: BTreeSet<I>,
}

impl<I: Ord> Once<I> {
    /// `now`: everything standing at this pass, with what to report for it.
    pub fn fresh<T>(&mut self, now: impl IntoIterator<Item = (I, T)>) -> Vec<T> {
        let mut standing = BTreeSet::new();
        let mut fresh = vec![];
        for (id, t) in now {
            if !self.standing.contains(&id) {
                fresh.push(t);
            }
            standing.insert(id);
        }
        self.standing = standing;
        fresh
    }
}

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
    let about = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        uid: Some(uid),
        ..Default::default()
    };
    let ev = event(ns, name, about, None, reason, message, warning);
    create(client, ns, &ev, &service).await;
}

/// Records a Warning Event on this node's Node (cluster-scoped: the Event
/// lives in `default`, where `kubectl describe node` finds it); a failure
/// is logged, never retried.
pub async fn post_node(client: Client, node: String, reason: String, message: String) {
    let about = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.clone()),
        // A Node's Events carry its name as the uid (as the kubelet's).
        uid: Some(node.clone()),
        ..Default::default()
    };
    let host = Some(node.clone());
    let ev = event("default", &node, about, host, reason, message, true);
    create(client, "default", &ev, &format!("Node {node}")).await;
}

/// One Event from vipd about `about`, counted once, in namespace `ns`.
fn event(
    ns: &str,
    name: &str,
    about: ObjectReference,
    host: Option<String>,
    reason: String,
    message: String,
    warning: bool,
) -> KubeEvent {
    let now = Time(jiff_now());
    KubeEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.vipd-")),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        involved_object: about,
        reason: Some(reason),
        message: Some(message),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("vipd".into()),
            host,
        }),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

async fn create(client: Client, ns: &str, ev: &KubeEvent, what: &str) {
    if let Err(e) = Api::<KubeEvent>::namespaced(client, ns)
        .create(&PostParams::default(), ev)
        .await
    {
        warn!(about = %what, "could not create the Event: {e}");
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod once_tests {
    use super::Once;

    #[test]
    fn reported_once_until_it_goes_away_and_comes_back() {
        let mut o = Once::default();
        assert_eq!(o.fresh([("a", 1), ("b", 2)]), [1, 2]);
        assert_eq!(o.fresh([("a", 1), ("b", 2)]), Vec::<i32>::new());
        assert_eq!(o.fresh([("a", 1)]), Vec::<i32>::new());
        assert_eq!(o.fresh([("a", 1), ("b", 3)]), [3], "b came back");
        assert_eq!(o.fresh(Vec::<(&str, i32)>::new()), Vec::<i32>::new());
        assert_eq!(o.fresh([("a", 4)]), [4]);
    }
}
