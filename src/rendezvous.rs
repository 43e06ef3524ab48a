//! Rendezvous (highest random weight) hashing of VIPs over nodes, pure:
//! every node ranks the nodes for a VIP alike from the same list of names,
//! and a node joining or leaving moves only the VIPs it ranks among the
//! first for. L2 mode picks each VIP's owner by it (`l2::owner`), BGP the
//! nodes that announce an ETP Cluster VIP under `max_announcing_nodes`
//! (`k8s::ecmp`).

use std::net::IpAddr;

/// The ranking's score of a node for a VIP: FNV-1a over both names with a
/// final mix. Written out rather than taken from std's hasher, whose
/// output may change between Rust releases: nodes running two builds of
/// vipd during an upgrade must still rank alike.
pub fn score(lead: IpAddr, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let octets: Vec<u8> = match lead {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    for b in octets.iter().chain([0u8].iter()).chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone leaves close names close.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The first `n` of `nodes` for `vip`: highest score first, ties by name.
pub fn first(vip: IpAddr, nodes: &[String], n: usize) -> Vec<&str> {
    let mut ranked: Vec<(u64, &str)> = nodes.iter().map(|m| (score(vip, m), m.as_str())).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.into_iter().take(n).map(|(_, m)| m).collect()
}

/// Whether `me` is among the first `n` of `nodes` for `vip` (one pass,
/// no sort: counts the nodes that rank above it).
pub fn among_first(vip: IpAddr, me: &str, nodes: &[String], n: usize) -> bool {
    let mine = (score(vip, me), me);
    let above = nodes
        .iter()
        .filter(|m| m.as_str() != me)
        .filter(|m| {
            let s = score(vip, m);
            s > mine.0 || (s == mine.0 && m.as_str() < mine.1)
        })
        .take(n)
        .count();
    above < n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    proptest! {
        /// `among_first` agrees with the sorted ranking; a node leaving
        /// moves only the VIPs it was among the first for, each to one
        /// node.
        #[test]
        fn the_first_n_agree_and_a_node_leaving_moves_only_its_vips(
            v in any::<u32>(), count in 1usize..20, n in 1usize..6, gone in 0usize..20,
        ) {
            let vip = IpAddr::from(std::net::Ipv4Addr::from(v));
            let all = names(count);
            let top = first(vip, &all, n);
            prop_assert_eq!(top.len(), n.min(count));
            for m in &all {
                prop_assert_eq!(among_first(vip, m, &all, n), top.contains(&m.as_str()));
            }
            let gone = &all[gone % count];
            let rest: Vec<String> = all.iter().filter(|m| *m != gone).cloned().collect();
            let after = first(vip, &rest, n);
            if top.contains(&gone.as_str()) {
                let kept: Vec<&&str> = top.iter().filter(|m| **m != gone).collect();
                prop_assert!(kept.iter().all(|m| after.contains(m)));
            } else {
                prop_assert_eq!(&after, &top);
            }
        }
    }
}
