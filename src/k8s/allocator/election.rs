//! The Lease's API calls: campaign until this node holds it, renew it
//! while leading, release it on a graceful stop. The decisions are
//! [`crate::ipam::lease`]'s; every call here is bounded by a timeout, and
//! every write carries the resourceVersion read, so that of two candidates
//! writing at once the API server turns one away with 409 Conflict.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;
use tracing::{info, warn};

use crate::ipam::lease::{self as plan, Action};

pub fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// One candidate's view of the Lease.
#[derive(Clone)]
pub struct Election {
    pub api: Api<Lease>,
    pub name: String,
    pub me: String,
    /// Milliseconds.
    pub duration: i64,
}

/// A leadership won: shared with the renewal task.
pub struct Term {
    /// When the last successful write of the Lease was sent; `i64::MIN`
    /// before any.
    pub renewed_ok: AtomicI64,
    /// Set when another holder was seen: this term is over for good.
    pub lost: AtomicBool,
}

impl Term {
    pub fn may_allocate(&self, duration: i64) -> bool {
        let t = self.renewed_ok.load(Ordering::SeqCst);
        !self.lost.load(Ordering::SeqCst)
            && plan::may_allocate((t != i64::MIN).then_some(t), duration, now_ms())
    }
}

/// A call that failed: turned away with 409 (someone else wrote first),
/// or anything else (unreachable, timed out, refused).
enum Fail {
    Conflict,
    Other(String),
}

impl From<Fail> for String {
    fn from(f: Fail) -> String {
        match f {
            Fail::Conflict => "409 Conflict".into(),
            Fail::Other(s) => s,
        }
    }
}

pub enum Outcome {
    /// The write succeeded: the Lease as stored.
    Held(Box<Lease>),
    /// Someone else holds it; look again at this time (ms).
    Wait(i64),
}

fn from_api(l: &Lease) -> plan::Lease {
    let spec = l.spec.as_ref();
    plan::Lease {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        renewed: spec
            .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
            .map_or(0, |t| t.0.as_millisecond()),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .map_or(15_000, |d| i64::from(d) * 1000),
    }
}

impl Election {
    fn timeout(&self) -> Duration {
        Duration::from_millis(plan::renew_every(self.duration) as u64)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Fail> {
        match tokio::time::timeout(self.timeout(), f).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(Fail::Conflict),
            Ok(Err(e)) => Err(Fail::Other(format!("{what} Lease {}: {e}", self.name))),
            Err(_) => Err(Fail::Other(format!(
                "{what} Lease {}: no answer in {:?}",
                self.name,
                self.timeout()
            ))),
        }
    }

    pub async fn read(&self) -> Result<Option<Lease>, String> {
        Ok(self
            .bounded("reading", self.api.get_opt(&self.name))
            .await?)
    }

    /// One step of the campaign (or a renewal): read, decide, write.
    /// `Ok(Held)` only when this node's write was accepted.
    pub async fn step(&self, holder: &mut Option<String>) -> Result<Outcome, String> {
        let current = self.read().await?;
        let view = current.as_ref().map(from_api);
        *holder = view.as_ref().and_then(|v| v.holder.clone());
        let sent = now_ms();
        match plan::decide(&self.me, view.as_ref(), sent) {
            Action::WaitUntil { at } => Ok(Outcome::Wait(at)),
            Action::Create => {
                let l = self.held(None, sent);
                let pp = PostParams::default();
                let r = self.api.create(&pp, &l);
                self.written(self.bounded("creating", r).await)
            }
            action => {
                let old = current.expect("decide returns Create without a Lease");
                let taken = action == Action::Take;
                let l = self.held(Some((old, taken)), sent);
                let pp = PostParams::default();
                let r = self.api.replace(&self.name, &pp, &l);
                self.written(self.bounded("updating", r).await)
            }
        }
    }

    fn written(&self, r: Result<Lease, Fail>) -> Result<Outcome, String> {
        match r {
            Ok(l) => Ok(Outcome::Held(Box::new(l))),
            // Another candidate wrote first (409 Conflict, or AlreadyExists
            // for a create): read again.
            Err(Fail::Conflict) => Ok(Outcome::Wait(now_ms())),
            Err(Fail::Other(e)) => Err(e),
        }
    }

    /// The Lease held by this node, renewed at `at` (from `old`, with its
    /// resourceVersion, when there is one).
    fn held(&self, old: Option<(Lease, bool)>, at: i64) -> Lease {
        let t = MicroTime(k8s_openapi::jiff::Timestamp::from_millisecond(at).unwrap_or_default());
        let (metadata, spec, taken) = match old {
            Some((l, taken)) => (l.metadata, l.spec.unwrap_or_default(), taken),
            None => (
                ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                LeaseSpec::default(),
                true,
            ),
        };
        let transitions = spec.lease_transitions.unwrap_or(0);
        Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.me.clone()),
                lease_duration_seconds: Some((self.duration / 1000) as i32),
                acquire_time: if taken {
                    Some(t.clone())
                } else {
                    spec.acquire_time
                },
                renew_time: Some(t),
                lease_transitions: Some(if taken && spec.holder_identity.is_some() {
                    transitions + 1
                } else {
                    transitions
                }),
                ..spec
            }),
        }
    }

    /// Keeps the term's Lease renewed three times per duration, until
    /// another holder is seen (the term is then lost) or `stop`.
    pub async fn renew(&self, term: Arc<Term>, stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(plan::renew_every(self.duration) as u64);
        let mut failing = false;
        while !*stop.borrow() {
            tokio::time::sleep(every).await;
            if *stop.borrow() {
                return;
            }
            let sent = now_ms();
            let mut holder = None;
            match self.step(&mut holder).await {
                Ok(Outcome::Held(_)) => {
                    term.renewed_ok.store(sent, Ordering::SeqCst);
                    if std::mem::take(&mut failing) {
                        info!(lease = %self.name, "allocator lease renewed again");
                    }
                }
                Ok(Outcome::Wait(_)) if holder.as_deref().is_some_and(|h| h != self.me) => {
                    warn!(lease = %self.name, holder = ?holder, "allocator lease taken by another node: no longer allocating");
                    term.lost.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(Outcome::Wait(_)) => {}
                Err(e) => {
                    if !failing {
                        warn!("{e}; allocating stops if the lease cannot be renewed in time");
                    }
                    failing = true;
                }
            }
        }
    }

    /// Gives the Lease up (holder cleared), so that another candidate takes
    /// it at once rather than after the duration.
    pub async fn release(&self) {
        let Ok(Some(mut l)) = self.read().await else {
            return;
        };
        let spec = l.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.me) {
            return;
        }
        spec.holder_identity = None;
        let pp = PostParams::default();
        let r = self.api.replace(&self.name, &pp, &l);
        match self.bounded("releasing", r).await {
            Ok(_) => info!(lease = %self.name, "allocator lease released"),
            Err(e) => warn!(
                "{}; the next allocator waits for it to expire",
                String::from(e)
            ),
        }
    }
}
