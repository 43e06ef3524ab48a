//! Who may share one address, pure: the owners of a VIP in, which of them
//! announce it together, which are refused, and whether this node holds
//! it back. The rules (the allocator applies the same ones when it hands
//! out addresses):
//! - The oldest owner holds the address; a younger one joins only if it is
//!   compatible with every owner already in: same traffic policy, and the
//!   same namespace unless both name each other in
//!   `vipd.io/sharing-namespaces` (or `*`).
//! - Under Local, the node announces only while every owner has a ready
//!   local endpoint here: otherwise the router would send one owner's
//!   traffic to a node where kube-proxy drops it.
//! - The owners' communities together must fit in one UPDATE.

use std::collections::BTreeSet;

use crate::config::{community_bytes, RouteAttrs};

/// One owner of an address as the sharing rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub key: &'a str,
    pub uid: &'a str,
    pub namespace: &'a str,
    pub created: i64,
    pub local: bool,
    /// `vipd.io/sharing-namespaces`.
    pub sharing: &'a [String],
    /// Its attributes where it wants the address announced from this
    /// node; `None`: Local, without a ready endpoint here.
    pub attrs: Option<&'a RouteAttrs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    NotShared,
    TooLarge,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The owners announcing and their attributes together.
    pub announce: Option<(BTreeSet<String>, RouteAttrs)>,
    /// `(owner key, why, reason)`.
    pub refused: Vec<(String, Why, String)>,
    /// Why this node holds the address back, when an owner waits.
    pub held: Option<String>,
}

fn policy(local: bool) -> &'static str {
    if local {
        "Local"
    } else {
        "Cluster"
    }
}

/// Why `new` may not join `held`, which holds `addr`.
pub fn conflict(held: &Owner, new: &Owner, addr: &str) -> Option<String> {
    if held.local != new.local {
        return Some(format!(
            "{addr} is held by {} with externalTrafficPolicy {}; owners of one address must have the same policy",
            held.key,
            policy(held.local)
        ));
    }
    let shared =
        super::model::namespaces_share(held.namespace, held.sharing, new.namespace, new.sharing);
    (!shared).then(|| {
        format!(
            "{addr} is held by {} in another namespace; sharing across namespaces needs {} on both Services",
            held.key,
            super::model::ANNOTATION_SHARING_NAMESPACES
        )
    })
}

/// The decision for one address, given its owners in any order.
pub fn decide(addr: &str, owners: &[Owner], room: usize) -> Decision {
    let mut order: Vec<&Owner> = owners.iter().collect();
    order.sort_by(|a, b| (a.created, a.uid, a.key).cmp(&(b.created, b.uid, b.key)));
    let mut d = Decision::default();
    let mut accepted: Vec<&Owner> = vec![];
    for o in order {
        match accepted.iter().find_map(|a| conflict(a, o, addr)) {
            Some(why) => d.refused.push((o.key.to_string(), Why::NotShared, why)),
            None => accepted.push(o),
        }
    }
    if let Some(w) = accepted.iter().find(|o| o.attrs.is_none()) {
        if accepted.len() > 1 {
            d.held = Some(format!(
                "shared with {} (externalTrafficPolicy Local), which has no ready endpoint on this node",
                w.key
            ));
        }
        return d;
    }
    let mut attrs = RouteAttrs::default();
    for o in &accepted {
        merge(&mut attrs, o.attrs.expect("checked above"));
    }
    let bytes = community_bytes(&attrs);
    if bytes > room {
        for o in &accepted {
            let why = format!(
                "the communities of the Services announcing {addr} take {bytes} bytes; one UPDATE has room for {room}"
            );
            d.refused.push((o.key.to_string(), Why::TooLarge, why));
        }
        return d;
    }
    let uids = accepted.iter().map(|o| o.uid.to_string()).collect();
    d.announce = (!accepted.is_empty()).then_some((uids, attrs));
    d
}

/// Several owners of one VIP: their communities add up, the highest
/// LOCAL_PREF and the lowest MED win; the result does not depend on the
/// order of owners.
fn merge(into: &mut RouteAttrs, a: &RouteAttrs) {
    into.communities.extend_from_slice(&a.communities);
    into.large_communities
        .extend_from_slice(&a.large_communities);
    into.local_pref = into.local_pref.max(a.local_pref);
    // One address, one pool: the owners name the same peers.
    into.peers.clone_from(&a.peers);
    into.med = match (into.med, a.med) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    into.normalize();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(
        key: &'a str,
        created: i64,
        local: bool,
        sharing: &'a [String],
        attrs: Option<&'a RouteAttrs>,
    ) -> Owner<'a> {
        Owner {
            key,
            uid: key,
            namespace: key.split_once('/').unwrap().0,
            created,
            local,
            sharing,
            attrs,
        }
    }

    fn comm(c: u32) -> RouteAttrs {
        RouteAttrs {
            communities: vec![c],
            ..Default::default()
        }
    }

    #[test]
    fn another_namespace_joins_only_with_consent_on_both_sides() {
        let (a, b) = (comm(1), comm(2));
        let none: Vec<String> = vec![];
        let to_b = vec!["b".to_string()];
        let any = vec!["*".to_string()];
        let d = decide(
            "198.51.100.1",
            &[
                owner("b/copy", 2, false, &any, Some(&b)),
                owner("a/web", 1, false, &none, Some(&a)),
            ],
            3000,
        );
        assert_eq!(d.announce, Some((["a/web".to_string()].into(), a.clone())));
        assert_eq!(d.refused.len(), 1);
        assert_eq!(d.refused[0].0, "b/copy");
        assert!(
            d.refused[0]
                .2
                .contains("held by a/web in another namespace"),
            "{}",
            d.refused[0].2
        );
        let d = decide(
            "198.51.100.1",
            &[
                owner("a/web", 1, false, &to_b, Some(&a)),
                owner("b/copy", 2, false, &any, Some(&b)),
            ],
            3000,
        );
        assert!(d.refused.is_empty());
        assert_eq!(d.announce.unwrap().1.communities, [1, 2]);
        // Naming a third namespace is no consent to the second.
        let to_c = vec!["c".to_string()];
        let d = decide(
            "198.51.100.1",
            &[
                owner("a/web", 1, false, &to_c, Some(&a)),
                owner("b/copy", 2, false, &any, Some(&b)),
            ],
            3000,
        );
        assert_eq!(d.refused.len(), 1);
        // One namespace shares without asking.
        let d = decide(
            "x",
            &[
                owner("a/one", 1, false, &none, Some(&a)),
                owner("a/two", 2, false, &none, Some(&b)),
            ],
            3000,
        );
        assert_eq!(d.announce.unwrap().0.len(), 2);
    }

    #[test]
    fn local_owners_are_announced_only_where_each_has_an_endpoint() {
        let a = comm(1);
        let none: Vec<String> = vec![];
        let both = [
            owner("a/x", 1, true, &none, Some(&a)),
            owner("a/y", 2, true, &none, None),
        ];
        let d = decide("x", &both, 3000);
        assert_eq!(d.announce, None);
        assert!(d.held.unwrap().contains("a/y"));
        let both = [
            owner("a/x", 1, true, &none, Some(&a)),
            owner("a/y", 2, true, &none, Some(&a)),
        ];
        assert!(decide("x", &both, 3000).announce.is_some());
        // A Cluster owner cannot join a Local one, nor the reverse.
        let mixed = [
            owner("a/x", 1, true, &none, Some(&a)),
            owner("a/y", 2, false, &none, Some(&a)),
        ];
        let d = decide("x", &mixed, 3000);
        assert_eq!(d.announce.unwrap().0, ["a/x".to_string()].into());
        assert_eq!(
            d.refused[0].2,
            "x is held by a/x with externalTrafficPolicy Local; owners of one address must have the same policy"
        );
        // Alone and waiting: nothing, and nothing to explain.
        let d = decide("x", &[owner("a/x", 1, true, &none, None)], 3000);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn owners_whose_communities_do_not_fit_together_are_refused() {
        let none: Vec<String> = vec![];
        let (a, b) = (comm(1), comm(2));
        let d = decide(
            "x",
            &[
                owner("a/x", 1, false, &none, Some(&a)),
                owner("a/y", 2, false, &none, Some(&b)),
            ],
            7,
        );
        assert_eq!(d.announce, None);
        assert_eq!(d.refused.len(), 2);
        assert!(d.refused.iter().all(|r| r.1 == Why::TooLarge));
        assert!(decide(
            "x",
            &[
                owner("a/x", 1, false, &none, Some(&a)),
                owner("a/y", 2, false, &none, Some(&b))
            ],
            8
        )
        .announce
        .is_some());
    }
}
