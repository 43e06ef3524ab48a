//! A Service's attribute annotations as route attributes, under the
//! platform's policy (`[kubernetes] service_*`): pure. An annotation that
//! does not parse, or carries more values than the bound, keeps the
//! Service off the wire (fail closed: the same route without the
//! communities its owner asked for, NO_EXPORT say, could leak where it
//! must not). A value the policy does not allow is dropped alone, and the
//! rest applies.

use super::model::*;
use crate::config::{
    parse_community, parse_large_community, RouteAttrs, ServiceAttrPolicy,
    MAX_ANNOTATION_COMMUNITIES, MAX_ANNOTATION_LARGE_COMMUNITIES,
};

/// Why none of a Service's addresses is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrError {
    /// An annotation does not parse.
    Unreadable(String),
    /// An annotation carries more values than vipd takes.
    TooMany(String),
}

/// A value the policy does not allow: `(annotation, reason)`.
pub type Dropped = (&'static str, String);

/// The values of a list annotation, at most `max + 1` of them: enough to
/// tell it is over the bound without walking a 256 KiB annotation.
fn items(v: &str, max: usize) -> Vec<&str> {
    v.split([',', ' '])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .take(max + 1)
        .collect()
}

fn bounded<'a>(ann: &str, v: &'a str, max: usize) -> Result<Vec<&'a str>, AttrError> {
    let list = items(v, max);
    if list.len() > max {
        return Err(AttrError::TooMany(format!(
            "{ann} carries more than {max} values, the most one annotation may"
        )));
    }
    Ok(list)
}

fn community(c: u32) -> String {
    format!("{}:{}", c >> 16, c & 0xffff)
}

/// The attributes a Service's annotations ask for, less what `policy`
/// does not allow (returned in `dropped`).
pub fn parse(
    svc: &ServiceInfo,
    policy: &ServiceAttrPolicy,
    dropped: &mut Vec<Dropped>,
) -> Result<RouteAttrs, AttrError> {
    let mut a = RouteAttrs::default();
    let ann = &svc.annotations;
    let unreadable = |name: &str, e: String| AttrError::Unreadable(format!("{name}: {e}"));
    if let Some(v) = ann.get(ANNOTATION_COMMUNITIES) {
        let n = ANNOTATION_COMMUNITIES;
        for x in bounded(n, v, MAX_ANNOTATION_COMMUNITIES)? {
            let c = parse_community(x).map_err(|e| unreadable(n, e))?;
            if policy.community_allowed(c) {
                a.communities.push(c);
            } else {
                let why = "is not allowed (kubernetes.service_communities)";
                dropped.push((n, format!("{} {why}", community(c))));
            }
        }
    }
    if let Some(v) = ann.get(ANNOTATION_LARGE_COMMUNITIES) {
        let n = ANNOTATION_LARGE_COMMUNITIES;
        for x in bounded(n, v, MAX_ANNOTATION_LARGE_COMMUNITIES)? {
            let c = parse_large_community(x).map_err(|e| unreadable(n, e))?;
            if policy.large_allowed(&c) {
                a.large_communities.push(c);
            } else {
                let why = "is not allowed (kubernetes.service_large_communities)";
                dropped.push((n, format!("{}:{}:{} {why}", c[0], c[1], c[2])));
            }
        }
    }
    for (n, key, allowed, slot) in [
        (
            ANNOTATION_LOCAL_PREF,
            "service_local_pref",
            policy.local_pref,
            &mut a.local_pref,
        ),
        (ANNOTATION_MED, "service_med", policy.med, &mut a.med),
    ] {
        let Some(v) = ann.get(n) else { continue };
        let x: u32 = v
            .trim()
            .parse()
            .map_err(|_| unreadable(n, format!("{v:?} is not a 32-bit number")))?;
        if (allowed.low..=allowed.high).contains(&x) {
            *slot = Some(x);
        } else {
            dropped.push((n, format!("{x} is not allowed (kubernetes.{key})")));
        }
    }
    a.normalize();
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommunityPattern, Span};

    fn svc(ann: &[(&str, &str)]) -> ServiceInfo {
        ServiceInfo {
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn well_known_communities_are_dropped_and_the_rest_applies() {
        let mut d = vec![];
        let s = svc(&[
            (
                ANNOTATION_COMMUNITIES,
                "65535:666, 65010:7, 65535:65281 0:65002",
            ),
            (ANNOTATION_LOCAL_PREF, "300"),
        ]);
        let a = parse(&s, &ServiceAttrPolicy::default(), &mut d).unwrap();
        assert_eq!(a.communities, [(65010 << 16) | 7]);
        assert_eq!(a.local_pref, Some(300));
        let dropped: Vec<&str> = d.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            dropped,
            [
                "65535:666 is not allowed (kubernetes.service_communities)",
                "65535:65281 is not allowed (kubernetes.service_communities)",
                "0:65002 is not allowed (kubernetes.service_communities)",
            ]
        );
    }

    #[test]
    fn a_policy_narrows_values_and_ranges() {
        let p = ServiceAttrPolicy {
            communities: vec![CommunityPattern::parse("65010:100-199").unwrap()],
            local_pref: Span { low: 0, high: 200 },
            med: Span { low: 10, high: 10 },
            ..Default::default()
        };
        let mut d = vec![];
        let s = svc(&[
            (ANNOTATION_COMMUNITIES, "65010:100,65010:200,65010:199"),
            (ANNOTATION_LOCAL_PREF, "201"),
            (ANNOTATION_MED, "10"),
        ]);
        let a = parse(&s, &p, &mut d).unwrap();
        assert_eq!(a.communities, [(65010 << 16) | 100, (65010 << 16) | 199]);
        assert_eq!((a.local_pref, a.med), (None, Some(10)));
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[1],
            (
                ANNOTATION_LOCAL_PREF,
                "201 is not allowed (kubernetes.service_local_pref)".into()
            )
        );
    }

    #[test]
    fn unreadable_or_oversized_annotations_refuse_the_service() {
        let p = ServiceAttrPolicy::default();
        let mut d = vec![];
        let bad = svc(&[(ANNOTATION_COMMUNITIES, "65010:x")]);
        assert!(
            matches!(parse(&bad, &p, &mut d), Err(AttrError::Unreadable(r)) if r.starts_with("vipd.io/communities: \"65010:x\""))
        );
        let med = svc(&[(ANNOTATION_MED, "-1")]);
        assert!(matches!(
            parse(&med, &p, &mut d),
            Err(AttrError::Unreadable(_))
        ));
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("65010:{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let at = svc(&[(ANNOTATION_COMMUNITIES, &list(MAX_ANNOTATION_COMMUNITIES))]);
        assert_eq!(
            parse(&at, &p, &mut d).unwrap().communities.len(),
            MAX_ANNOTATION_COMMUNITIES
        );
        let over = svc(&[(ANNOTATION_COMMUNITIES, &list(1100))]);
        assert!(matches!(
            parse(&over, &p, &mut d),
            Err(AttrError::TooMany(_))
        ));
        let large = (0..=MAX_ANNOTATION_LARGE_COMMUNITIES)
            .map(|i| format!("1:2:{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let over = svc(&[(ANNOTATION_LARGE_COMMUNITIES, &large)]);
        assert!(matches!(
            parse(&over, &p, &mut d),
            Err(AttrError::TooMany(_))
        ));
        assert!(d.is_empty());
    }
}
