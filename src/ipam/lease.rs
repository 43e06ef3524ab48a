//! Electing one allocator through a `coordination.k8s.io/v1` Lease, the
//! pure part: what a candidate does given the Lease as it last read it,
//! and whether a leader may still allocate. The API calls (get, create,
//! update with the Lease's resourceVersion, so that of two candidates
//! writing at once one gets 409 Conflict) are the task's.
//!
//! Safety rests on one rule: a leader stops allocating well before anyone
//! else may take the Lease. Others take it only once `renewed + duration`
//! has passed on their clock; the leader stops at `renewed_ok + duration *
//! 2/3` on its own, where `renewed_ok` is when it sent the renewal that
//! succeeded (never later than the time written in the Lease). The third
//! left over covers clock skew between nodes and a slow API server.

/// The Lease as read, times in milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `spec.holderIdentity`; `None` after a graceful release.
    pub holder: Option<String>,
    /// `spec.renewTime`.
    pub renewed: i64,
    /// `spec.leaseDurationSeconds`, in milliseconds.
    pub duration: i64,
}

/// What a candidate should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No Lease yet: create it, holding it.
    Create,
    /// Free or expired: update it to hold it (with its resourceVersion).
    Take,
    /// Ours: update the renewal time (with its resourceVersion).
    Renew,
    /// Someone else's and current: look again at `at`.
    WaitUntil { at: i64 },
}

pub fn decide(me: &str, lease: Option<&Lease>, now: i64) -> Action {
    let Some(l) = lease else {
        return Action::Create;
    };
    match l.holder.as_deref() {
        Some(h) if h == me => Action::Renew,
        None => Action::Take,
        Some(_) if now >= l.renewed + l.duration => Action::Take,
        Some(_) => Action::WaitUntil {
            at: l.renewed + l.duration,
        },
    }
}

/// Whether a leader whose last successful renewal was sent at
/// `renewed_ok` may still allocate at `now`.
pub fn may_allocate(renewed_ok: Option<i64>, duration: i64, now: i64) -> bool {
    renewed_ok.is_some_and(|t| now < t + duration * 2 / 3)
}

/// How often a leader renews: three times per lease duration, so that two
/// renewals may fail before it has to stop.
pub fn renew_every(duration: i64) -> i64 {
    (duration / 3).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: i64 = 15_000;

    fn held(by: &str, at: i64) -> Lease {
        Lease {
            holder: Some(by.into()),
            renewed: at,
            duration: D,
        }
    }

    #[test]
    fn each_case() {
        assert_eq!(decide("a", None, 0), Action::Create);
        assert_eq!(decide("a", Some(&held("a", 0)), 5), Action::Renew);
        assert_eq!(
            decide("a", Some(&held("b", 1000)), 2000),
            Action::WaitUntil { at: 1000 + D }
        );
        assert_eq!(decide("a", Some(&held("b", 1000)), 1000 + D), Action::Take);
        let released = Lease {
            holder: None,
            renewed: 1000,
            duration: D,
        };
        assert_eq!(decide("a", Some(&released), 1001), Action::Take);
        assert!(may_allocate(Some(0), D, 9_999));
        assert!(!may_allocate(Some(0), D, 10_000));
        assert!(!may_allocate(None, D, 0));
        assert_eq!(renew_every(D), 5_000);
    }

    /// Two candidates, each with its own clock offset (skew under a fifth
    /// of the duration), acting in any order; writes carry the version they
    /// read and fail on a mismatch, or fail outright (a partition). At no
    /// instant may both allocate.
    #[test]
    fn never_two_allocators() {
        #[derive(Clone, Debug)]
        struct Cand {
            name: &'static str,
            skew: i64,
            renewed_ok: Option<i64>,
        }
        proptest!(ProptestConfig::with_cases(500), |(
            steps in proptest::collection::vec((0usize..2, 1i64..4_000, any::<bool>()), 1..120),
            skew in -2_900i64..2_900,
        )| {
            let mut store: Option<(Lease, u64)> = None;
            let mut cands = [
                Cand { name: "a", skew: 0, renewed_ok: None },
                Cand { name: "b", skew, renewed_ok: None },
            ];
            let mut now = 0i64;
            for (who, dt, reachable) in steps {
                now += dt;
                let c = &mut cands[who];
                let local = now + c.skew;
                // Read, decide, write with the version read.
                let read = store.clone();
                let action = decide(c.name, read.as_ref().map(|(l, _)| l), local);
                let write = matches!(action, Action::Create | Action::Take | Action::Renew);
                if write && reachable {
                    let version = read.as_ref().map(|(_, v)| *v);
                    if store.as_ref().map(|(_, v)| *v) == version {
                        let v = version.unwrap_or(0) + 1;
                        store = Some((held(c.name, local), v));
                        c.renewed_ok = Some(local);
                    }
                }
                // The invariant, on the real clock for both.
                let alloc: Vec<bool> = cands
                    .iter()
                    .map(|c| may_allocate(c.renewed_ok, D, now + c.skew))
                    .collect();
                prop_assert!(!(alloc[0] && alloc[1]), "both allocate at {}: {:?}", now, cands);
            }
        });
    }
}
