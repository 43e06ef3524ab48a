//! libFuzzer target: the UPDATE encoder. Arbitrary bytes become route
//! attributes (any number of communities and large communities, MED,
//! LOCAL_PREF), a session context (eBGP/iBGP, 2- or 4-octet AS, next hops
//! with and without a link-local) and a prefix set. Every message written
//! must be at most 4,096 bytes and pass vipd's own receive checks with
//! every prefix announced; a refusal must write nothing, and nothing
//! within the community budget may be refused.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use vipd_fuzz::attrs::RouteAttrs;
use vipd_fuzz::wire::encode::{self, SendCtx};
use vipd_fuzz::wire::update::{check, Ctx};
use vipd_fuzz::wire::{check_header, Afi, MsgType, HEADER_LEN, MAX_MESSAGE_LEN};

/// Reads little pieces off the input; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let flags = b.u8();
    let (ebgp, four, v6, ll) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, flags & 8 != 0);
    // Counts up to 2,047 and 1,023: past what one message holds.
    let (nc, nl) = (b.u16() & 0x7ff, b.u16() & 0x3ff);
    let seed = b.u32();
    let a = RouteAttrs {
        communities: (0..nc as u32).map(|i| i.wrapping_mul(seed | 1)).collect(),
        large_communities: (0..nl as u32).map(|i| [seed, i, i ^ seed]).collect(),
        med: (flags & 16 != 0).then(|| b.u32()),
        local_pref: (flags & 32 != 0).then(|| b.u32()),
        peers: vec![],
    };
    let ctx = SendCtx {
        local_asn: b.u32().max(1),
        ebgp,
        four_octet_as: four,
        next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        next_hop_v6: Some("2001:db8::1".parse().unwrap()),
        next_hop_v6_link_local: ll.then(|| "fe80::1".parse().unwrap()),
        defaults: RouteAttrs {
            communities: (0..u32::from(b.u8())).collect(),
            ..Default::default()
        },
        names: vec![],
        v4_via_v6: false,
    };
    let mut prefixes: Vec<IpNet> = vec![];
    while !b.0.is_empty() && prefixes.len() < 2000 {
        let len = b.u8();
        prefixes.push(if v6 {
            let bits = (u128::from(b.u32()) << 96) | u128::from(b.u32());
            Ipv6Net::new(Ipv6Addr::from(bits), len % 129).unwrap().trunc().into()
        } else {
            Ipv4Net::new(Ipv4Addr::from(b.u32()), len % 33).unwrap().trunc().into()
        });
    }
    let afi = if v6 { Afi::Ipv6 } else { Afi::Ipv4 };
    let rx = Ctx { four_octet_as: four, ebgp };
    let mut out = vec![];
    let within = encode::community_bytes(&ctx.seen(&a)) <= encode::COMMUNITY_ROOM;
    match encode::announce(&mut out, &prefixes, &a, afi, &ctx) {
        Ok(n) => assert_eq!(messages(&out, rx), (n, prefixes.len())),
        Err(_) => assert!(out.is_empty() && !within, "refused within the budget"),
    }
    out.clear();
    encode::withdraw(&mut out, &prefixes, afi);
    messages(&out, rx);
});

/// Checks each message of a stream: header, length, vipd's UPDATE checks.
/// Returns how many messages and announced prefixes it held.
fn messages(mut out: &[u8], rx: Ctx) -> (usize, usize) {
    let (mut n, mut announced) = (0, 0);
    while !out.is_empty() {
        let (t, len) = check_header(out[..HEADER_LEN].try_into().unwrap()).expect("a valid header");
        assert!(t == MsgType::Update && len <= MAX_MESSAGE_LEN);
        let c = check(&out[HEADER_LEN..len], rx).expect("passes our own checks");
        assert_eq!(c.treat_as_withdraw, None);
        announced += c.announced;
        n += 1;
        out = &out[len..];
    }
    (n, announced)
}
