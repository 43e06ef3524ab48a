//! The re-listing store both watches use (the announcer's and the
//! allocator's): one kube watcher's events applied to a map of plain
//! values. A re-list is buffered and swapped in whole at its end, so the
//! previous map stays in force meanwhile and deletions that happened
//! across it are applied by the swap.
//!
//! A re-list holds no second copy of what it confirms: the buffer is the
//! keys listed, and the values that differ from the map's. At its end the
//! map loses what was not listed and takes what changed. The first list
//! (an empty map) is built in one go: a B-tree filled in key order (the
//! order the API server lists in) by inserts leaves every node half empty,
//! where a bulk build fills them; at 50,000 Services that was a third of
//! the snapshot's memory.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use super::model::Key;
use super::slim::{Guardable, Guarded};

/// `namespace/name`, the key of every map vipd keeps of the cluster.
pub fn key_of<K: Resource>(o: &K) -> Key {
    let m = o.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
    .into()
}

/// What one watcher event did to a store.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<T> {
    Nothing,
    /// A complete re-list replaced the map.
    All,
    /// One object changed; its value before.
    One(Key, Option<T>),
}

/// One watched kind's re-list in progress, and whether it was ever listed
/// completely (the readiness barrier's part for this kind).
#[derive(Debug)]
pub struct Store<T> {
    pending: Option<Relist<T>>,
    synced: bool,
}

/// A list in progress: every key listed, and the values that are new or
/// differ from the map's. (An API server lists each key once; listed twice,
/// a re-list's changed value wins over a later unchanged one.)
#[derive(Debug)]
struct Relist<T> {
    listed: Vec<Key>,
    changed: Vec<(Key, T)>,
}

impl<T> Relist<T> {
    /// Brings `live` to what was listed.
    fn apply(mut self, live: &mut BTreeMap<Key, T>) {
        if live.is_empty() {
            *live = packed(self.changed);
            return;
        }
        self.listed.sort_unstable();
        live.retain(|k, _| self.listed.binary_search(k).is_ok());
        for (k, v) in self.changed {
            live.insert(k, v);
        }
    }
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            pending: None,
            synced: false,
        }
    }
}

/// What vipd makes of one object: what it keeps of it (`None`: not wanted,
/// treated as gone), or why the object could not be read at all.
pub type Read<T> = Result<Option<T>, String>;

/// `conv` over a [`Guarded`] object: an object that did not parse is
/// unreadable, with the parser's reason.
pub fn guarded<K: Guardable, T>(
    conv: impl Fn(&K, &Key) -> Option<T>,
) -> impl Fn(&Guarded<K>, &Key) -> Read<T> {
    move |g, key| match &g.0 {
        Ok(k) => Ok(conv(k, key)),
        Err(e) => Err(e.error.clone()),
    }
}

impl<T: Clone + PartialEq> Store<T> {
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Applies one watcher event to `live`; `conv` reads what vipd keeps of
    /// an object. An object that cannot be read keeps what vipd knew of it
    /// (across a re-list too): one bad object neither breaks the watch nor
    /// withdraws a route, and is logged each time it comes.
    pub fn apply<K: Resource>(
        &mut self,
        live: &mut BTreeMap<Key, T>,
        ev: watcher::Event<K>,
        conv: impl Fn(&K, &Key) -> Read<T>,
    ) -> Change<T> {
        match ev {
            watcher::Event::Init => {
                // A re-list is about as long as the last: room for its
                // keys at once, where doubling would hold a copy as it grows.
                self.pending = Some(Relist {
                    listed: Vec::with_capacity(live.len()),
                    changed: vec![],
                });
                Change::Nothing
            }
            watcher::Event::InitApply(o) => {
                let k = key_of(&o);
                let v = match conv(&o, &k) {
                    Ok(v) => v,
                    Err(why) => unreadable(&k, &why, live.get(&k).cloned()),
                };
                if let (Some(p), Some(v)) = (self.pending.as_mut(), v) {
                    match live.get_key_value(&k) {
                        Some((held, old)) if *old == v => p.listed.push(held.clone()),
                        _ => {
                            p.listed.push(k.clone());
                            p.changed.push((k, v));
                        }
                    }
                }
                Change::Nothing
            }
            watcher::Event::InitDone => {
                if let Some(p) = self.pending.take() {
                    p.apply(live);
                }
                self.synced = true;
                Change::All
            }
            watcher::Event::Apply(o) => {
                let k = key_of(&o);
                let old = match conv(&o, &k) {
                    Ok(Some(v)) => live.insert(k.clone(), v),
                    Ok(None) => live.remove(&k),
                    Err(why) => {
                        unreadable(&k, &why, ());
                        return Change::Nothing;
                    }
                };
                Change::One(k, old)
            }
            watcher::Event::Delete(o) => {
                let k = key_of(&o);
                let old = live.remove(&k);
                Change::One(k, old)
            }
        }
    }
}

/// A map of `list`, its nodes full. A key listed twice keeps its last
/// value, as inserts would (a map built from an iterator does not say
/// which it keeps).
fn packed<T>(mut list: Vec<(Key, T)>) -> BTreeMap<Key, T> {
    list.reverse();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list.dedup_by(|later, earlier| later.0 == earlier.0);
    list.into_iter().collect()
}

fn unreadable<V>(key: &str, why: &str, kept: V) -> V {
    warn!(object = %key, "cannot read this object ({why}): what vipd knew of it stays");
    kept
}

/// A watcher's events into a channel, from a task of its own (with kube's
/// default backoff on errors): the receiver drains whatever waited into one
/// batch, where the stream itself yields one event per poll. The task ends
/// with the returned handle, or when the receiver is gone.
///
/// The initial list is streamed (`sendInitialEvents`, WatchList: objects
/// one at a time instead of pages of 500) where the API server allows it.
/// kube-rs does not fall back by itself, so this does: a server that
/// refuses it (without the feature gate: 422 naming `sendInitialEvents`),
/// or one that never marks the end of the initial events (older than
/// 1.27, which ignores the parameter), is listed page by page instead,
/// for as long as this task lives.
pub fn forward<K, T>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<T>,
    wrap: impl Fn(Result<watcher::Event<K>, watcher::Error>) -> T + Send + 'static,
) -> crate::task::Owned<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send,
    T: Send + 'static,
{
    crate::task::Owned::spawn(async move {
        let mut streaming = true;
        loop {
            let c = if streaming {
                config.clone().streaming_lists()
            } else {
                config.clone()
            };
            let mut s = Box::pin(watcher(api.clone(), c).default_backoff());
            let mut listing: Option<tokio::time::Instant> = None;
            loop {
                let next = match listing.filter(|_| streaming) {
                    Some(t) => match tokio::time::timeout_at(t + STREAM_END, s.next()).await {
                        Ok(n) => n,
                        Err(_) => {
                            warn!(kind = %K::kind(&Default::default()), "no end of the streamed initial list within {} s (an API server older than 1.27 ignores sendInitialEvents): listing instead", STREAM_END.as_secs());
                            break;
                        }
                    },
                    None => s.next().await,
                };
                let Some(item) = next else { return };
                if streaming && refuses_streaming(&item) {
                    warn!(kind = %K::kind(&Default::default()), "the API server refuses streaming lists (WatchList): listing instead");
                    break;
                }
                match &item {
                    Ok(watcher::Event::Init) => listing = Some(tokio::time::Instant::now()),
                    Ok(watcher::Event::InitDone) => listing = None,
                    _ => {}
                }
                if tx.send(wrap(item)).await.is_err() {
                    return;
                }
            }
            streaming = false;
        }
    })
}

/// How long a streamed initial list may take before vipd lists instead:
/// 50,000 objects stream in a few seconds.
const STREAM_END: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a watcher error is the API server refusing `sendInitialEvents`.
pub fn refuses_streaming<E>(item: &Result<E, watcher::Error>) -> bool {
    let Err(watcher::Error::WatchStartFailed(kube::Error::Api(s))) = item else {
        return false;
    };
    let named = |m: &str| m.contains("sendInitialEvents");
    let causes = s
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or(&[]);
    matches!(s.code, 400 | 403 | 422)
        && (named(&s.message) || causes.iter().any(|c| named(&c.field) || named(&c.message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::Arc;

    fn obj(name: &str, v: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.namespace = Some("ns".into());
        c.metadata.name = Some(name.into());
        c.data = Some([("v".to_string(), v.to_string())].into());
        c
    }

    fn value(c: &ConfigMap, _: &Key) -> Read<String> {
        if c.data.as_ref().is_some_and(|d| d.contains_key("bad")) {
            return Err("unreadable".into());
        }
        Ok(c.data
            .as_ref()
            .and_then(|d| d.get("v"))
            .filter(|v| !v.is_empty())
            .cloned())
    }

    #[test]
    fn a_relist_replaces_the_map_only_at_its_end() {
        let mut s = Store::default();
        let mut live = BTreeMap::new();
        use watcher::Event::*;
        assert_eq!(s.apply(&mut live, Init, value), Change::Nothing);
        s.apply(&mut live, InitApply(obj("a", "1")), value);
        s.apply(&mut live, InitApply(obj("b", "2")), value);
        assert!(
            live.is_empty() && !s.synced(),
            "nothing before the list ends"
        );
        assert_eq!(s.apply(&mut live, InitDone, value), Change::All);
        assert!(s.synced());
        assert_eq!(live.len(), 2);
        assert_eq!(
            s.apply(&mut live, Apply(obj("a", "3")), value),
            Change::One("ns/a".into(), Some("1".into()))
        );
        // Not wanted any more: gone from the map.
        assert_eq!(
            s.apply(&mut live, Apply(obj("b", "")), value),
            Change::One("ns/b".into(), Some("2".into()))
        );
        assert!(!live.contains_key("ns/b"));
        // A re-list: the old map stays in force until it ends, and what was
        // deleted across it is gone after.
        s.apply(&mut live, Init, value);
        s.apply(&mut live, InitApply(obj("c", "4")), value);
        assert_eq!(live.get("ns/a").map(String::as_str), Some("3"));
        s.apply(&mut live, InitDone, value);
        assert_eq!(live.keys().map(|k| &**k).collect::<Vec<_>>(), ["ns/c"]);
        assert_eq!(
            s.apply(&mut live, Delete(obj("c", "4")), value),
            Change::One("ns/c".into(), Some("4".into()))
        );
        assert!(live.is_empty());
    }

    #[test]
    fn a_list_in_any_order_gives_every_key_its_last_value() {
        let mut s = Store::default();
        let mut live = BTreeMap::new();
        use watcher::Event::*;
        s.apply(&mut live, Init, value);
        for (n, v) in [("c", "1"), ("a", "2"), ("b", "3"), ("a", "4"), ("c", "5")] {
            s.apply(&mut live, InitApply(obj(n, v)), value);
        }
        s.apply(&mut live, InitDone, value);
        let got: Vec<(&str, &str)> = live.iter().map(|(k, v)| (&**k, v.as_str())).collect();
        assert_eq!(got, [("ns/a", "4"), ("ns/b", "3"), ("ns/c", "5")]);
    }

    #[test]
    fn a_relist_keeps_the_values_it_confirms_and_takes_the_changed_ones() {
        let mut s = Store::default();
        let mut live = BTreeMap::new();
        use watcher::Event::*;
        s.apply(&mut live, Init, value);
        s.apply(&mut live, InitApply(obj("a", "1")), value);
        s.apply(&mut live, InitApply(obj("b", "2")), value);
        s.apply(&mut live, InitDone, value);
        let key = |live: &BTreeMap<Key, String>, k: &str| live.get_key_value(k).unwrap().0.clone();
        let (a, b) = (key(&live, "ns/a"), key(&live, "ns/b"));
        let held = live["ns/a"].as_ptr();
        s.apply(&mut live, Init, value);
        s.apply(&mut live, InitApply(obj("a", "1")), value);
        s.apply(&mut live, InitApply(obj("b", "3")), value);
        s.apply(&mut live, InitDone, value);
        assert!(Arc::ptr_eq(&key(&live, "ns/a"), &a), "the same, shared");
        assert_eq!(
            live["ns/a"].as_ptr(),
            held,
            "the value held, not the one listed"
        );
        assert!(Arc::ptr_eq(&key(&live, "ns/b"), &b));
        assert_eq!((live["ns/a"].as_str(), live["ns/b"].as_str()), ("1", "3"));
        // Not listed again: gone; listed anew: there.
        s.apply(&mut live, Init, value);
        s.apply(&mut live, InitApply(obj("b", "3")), value);
        s.apply(&mut live, InitApply(obj("c", "4")), value);
        s.apply(&mut live, InitDone, value);
        let got: Vec<(&str, &str)> = live.iter().map(|(k, v)| (&**k, v.as_str())).collect();
        assert_eq!(got, [("ns/b", "3"), ("ns/c", "4")]);
    }

    #[test]
    fn only_a_refusal_of_send_initial_events_means_list_instead() {
        let status = |code: u16, message: &str, field: &str| {
            let s: kube::core::Status = serde_json::from_value(serde_json::json!({
                "code": code, "message": message, "reason": "Invalid", "status": "Failure",
                "details": {"causes": [{"field": field, "message": "Forbidden", "reason": "FieldValueForbidden"}]}
            }))
            .unwrap();
            Err::<(), _>(watcher::Error::WatchStartFailed(kube::Error::Api(
                Box::new(s),
            )))
        };
        assert!(refuses_streaming(&status(
            422,
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden",
            ""
        )));
        assert!(refuses_streaming(&status(
            422,
            "invalid",
            "sendInitialEvents"
        )));
        // RBAC, or an unrelated invalid request: an error to retry, not a fallback.
        assert!(!refuses_streaming(&status(
            403,
            "services is forbidden: cannot watch",
            ""
        )));
        assert!(!refuses_streaming(&status(500, "sendInitialEvents", "")));
        assert!(!refuses_streaming(&Ok::<(), watcher::Error>(())));
        assert!(!refuses_streaming(&Err::<(), _>(
            watcher::Error::NoResourceVersion
        )));
    }

    #[test]
    fn an_unreadable_object_keeps_what_was_known_of_it() {
        let mut s = Store::default();
        let mut live = BTreeMap::new();
        use watcher::Event::*;
        let mut bad = obj("a", "x");
        bad.data
            .as_mut()
            .unwrap()
            .insert("bad".into(), String::new());
        s.apply(&mut live, Init, value);
        s.apply(&mut live, InitApply(obj("a", "1")), value);
        s.apply(&mut live, InitDone, value);
        assert_eq!(
            s.apply(&mut live, Apply(bad.clone()), value),
            Change::Nothing
        );
        assert_eq!(live.get("ns/a").map(String::as_str), Some("1"));
        // Across a re-list as well; one never seen readable is left out.
        let mut bad_b = bad.clone();
        bad_b.metadata.name = Some("b".into());
        s.apply(&mut live, Init, value);
        s.apply(&mut live, InitApply(bad), value);
        s.apply(&mut live, InitApply(bad_b), value);
        s.apply(&mut live, InitDone, value);
        assert_eq!(live.keys().map(|k| &**k).collect::<Vec<_>>(), ["ns/a"]);
        assert_eq!(live["ns/a"], "1");
    }
}
