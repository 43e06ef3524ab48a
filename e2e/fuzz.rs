//! A bounded fuzz run of the receive path, on the stable toolchain: valid
//! messages from vipd's own encoder and hand-built OPENs, mutated (bit
//! flips, byte changes, truncation, insertion, length-field lies, spliced
//! attributes) and fed through framing, the checks and zettabgp.
//!
//! It fails on a panic anywhere, on zettabgp panicking over bytes vipd's
//! checks accepted, and on any input that takes longer than a second (a
//! watchdog, since zettabgp can loop forever on some input). Duration:
//! VIPD_FUZZ_SECS (default 20). The failing input is printed in hex.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use vipd::bgp::wire::encode::{self, SendCtx};
use vipd::bgp::wire::open::LocalOpen;
use vipd::bgp::wire::update::{check, receive_all, Ctx};
use vipd::bgp::wire::{keepalive, route_refresh, Afi, Notification};
use vipd::config::RouteAttrs;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let attrs = RouteAttrs {
        communities: vec![1, 2, 3],
        large_communities: vec![[1, 2, 3]],
        med: Some(7),
        local_pref: Some(9),
        peers: vec![],
    };
    let mut out = vec![];
    for (ebgp, four) in [(true, true), (false, true), (true, false)] {
        let ctx = SendCtx {
            local_asn: 4_200_000_001,
            ebgp,
            four_octet_as: four,
            next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            next_hop_v6: Some(Ipv6Addr::LOCALHOST),
            next_hop_v6_link_local: (!ebgp).then(|| "fe80::1".parse().unwrap()),
            defaults: RouteAttrs::default(),
            names: vec![],
            v4_via_v6: false,
        };
        let v4: Vec<IpNet> = (0..7u32)
            .map(|i| {
                IpNet::new(
                    IpAddr::V4(Ipv4Addr::from(0x6440_0000 + (i << 8))),
                    24 + i as u8,
                )
                .unwrap()
            })
            .collect();
        let v6: Vec<IpNet> = (0..5u32)
            .map(|i| {
                IpNet::new(
                    IpAddr::V6(Ipv6Addr::from(0x2001_0db8u128 << 96 | i as u128)),
                    128,
                )
                .unwrap()
            })
            .collect();
        let mut b = vec![];
        encode::announce(&mut b, &v4, &attrs, Afi::Ipv4, &ctx).unwrap();
        out.push(b);
        let mut b = vec![];
        encode::announce(&mut b, &v6, &attrs, Afi::Ipv6, &ctx).unwrap();
        out.push(b);
        let mut b = vec![];
        encode::withdraw(&mut b, &v4, Afi::Ipv4);
        encode::withdraw(&mut b, &v6, Afi::Ipv6);
        encode::end_of_rib(&mut b, Afi::Ipv4);
        encode::end_of_rib(&mut b, Afi::Ipv6);
        out.push(b);
    }
    out.push(
        LocalOpen {
            asn: 65002,
            hold_time: 90,
            router_id: Ipv4Addr::new(192, 0, 2, 2),
            families: vec![Afi::Ipv4, Afi::Ipv6],
            capabilities: true,
            refused: vec![],
            graceful_restart: Some(120),
            restart_state: true,
            extended_next_hop: true,
        }
        .encode(),
    );
    out.push(keepalive().to_vec());
    out.push(route_refresh(Afi::Ipv6));
    out.push(Notification::shutdown(2, "bye").encode());
    // One message per seed, so that mutations land in bodies, not framing.
    let mut single = vec![];
    for stream in out {
        let mut b = &stream[..];
        while b.len() >= 19 {
            let l = u16::from_be_bytes([b[16], b[17]]) as usize;
            single.push(b[..l].to_vec());
            b = &b[l..];
        }
    }
    single
}

/// Attribute fragments worth splicing in: the shapes that crash or hang
/// zettabgp when unchecked.
const FRAGMENTS: &[&[u8]] = &[
    &[0x40, 2, 1, 2],
    &[0x40, 2, 7, 2, 1, 0, 0, 0, 1, 0],
    &[0xc0, 8, 3, 1, 2, 3],
    &[0xc0, 32, 5, 1, 2, 3, 4, 5],
    &[0x80, 14, 3, 0, 2, 1],
    &[0x80, 14, 6, 0, 2, 1, 255, 0, 0],
    &[0x80, 15, 4, 0, 2, 1, 255],
    &[0x40, 3, 3, 1, 2, 3],
    &[0xc0, 7, 3, 1, 2, 3],
    &[0x40, 1, 0],
    &[255],
];

fn mutate(r: &mut Rng, mut m: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(4) {
        if m.is_empty() {
            m.push(0);
        }
        let i = r.below(m.len());
        match r.below(8) {
            0 => m[i] ^= 1 << r.below(8),
            1 => m[i] = r.next() as u8,
            2 => m.truncate(i),
            3 => m.insert(i, r.next() as u8),
            4 => {
                // Keep the framing plausible: fix the header length to fit,
                // so the body checks (not just framing) get exercised.
                if m.len() >= 19 {
                    let l = m.len().min(4096) as u16;
                    m[16..18].copy_from_slice(&l.to_be_bytes());
                }
            }
            5 => {
                let f = FRAGMENTS[r.below(FRAGMENTS.len())];
                let at = if m.len() > 23 {
                    23 + r.below(m.len() - 23)
                } else {
                    m.len()
                };
                for (k, b) in f.iter().enumerate() {
                    m.insert(at + k, *b);
                }
                if m.len() >= 23 {
                    // Grow the attribute length with it, as a lying sender would.
                    let wl = u16::from_be_bytes([m[19], m[20]]) as usize;
                    if 23 + wl <= m.len() {
                        let al = u16::from_be_bytes([m[21 + wl], m[22 + wl]]) as usize + f.len();
                        m[21 + wl..23 + wl].copy_from_slice(&(al as u16).to_be_bytes());
                    }
                    let l = m.len().min(4096) as u16;
                    m[16..18].copy_from_slice(&l.to_be_bytes());
                }
            }
            6 => {
                // A lie in a 1- or 2-byte length somewhere in the body.
                if m.len() > 20 {
                    let j = 19 + r.below(m.len() - 19);
                    m[j] = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xff][r.below(8)];
                }
            }
            _ => {
                let j = r.below(m.len());
                m.swap(i, j);
            }
        }
    }
    m
}

#[test]
fn receive_path_survives_mutated_input() {
    let secs: u64 = std::env::var("VIPD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let current: Arc<Mutex<Vec<u8>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let beat = Arc::new(AtomicU64::new(0));
    let decoded = Arc::new(AtomicU64::new(0));
    let (c2, n2, b2, d2) = (
        current.clone(),
        count.clone(),
        beat.clone(),
        decoded.clone(),
    );
    let worker = std::thread::spawn(move || -> Result<(), String> {
        let seeds = seeds();
        let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            for _ in 0..256 {
                let base = seeds[r.below(seeds.len())].clone();
                let mut input = mutate(&mut r, base);
                // Mostly keep the framing right so the body checks get the input.
                if r.below(4) != 0 && input.len() >= 19 && input.len() <= 4096 {
                    let l = input.len() as u16;
                    input[..16].fill(0xff);
                    input[16..18].copy_from_slice(&l.to_be_bytes());
                }
                if input.len() >= 23 && input[18] == 2 {
                    if let Ok(c) = check(
                        &input[19..],
                        Ctx {
                            four_octet_as: true,
                            ebgp: true,
                        },
                    ) {
                        if !c.sanitized.is_empty() {
                            d2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                *c2.lock().unwrap() = input.clone();
                for ctx in [
                    Ctx {
                        four_octet_as: true,
                        ebgp: true,
                    },
                    Ctx {
                        four_octet_as: false,
                        ebgp: false,
                    },
                ] {
                    if receive_all(&input, ctx).is_err() {
                        return Err(format!(
                            "zettabgp panicked on checked input {}",
                            hex(&input)
                        ));
                    }
                }
                n2.fetch_add(1, Ordering::Relaxed);
                b2.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    let mut last = 0;
    let mut stalled = Instant::now();
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let b = beat.load(Ordering::Relaxed);
        if b != last {
            last = b;
            stalled = Instant::now();
        } else if stalled.elapsed() > Duration::from_secs(1) {
            panic!("the receive path hung on {}", hex(&current.lock().unwrap()));
        }
    }
    let res = worker
        .join()
        .unwrap_or_else(|_| Err(format!("panic on input {}", hex(&current.lock().unwrap()))));
    println!(
        "fuzz: {} inputs in {secs} s, {} UPDATEs passed the checks and reached zettabgp",
        count.load(Ordering::Relaxed),
        decoded.load(Ordering::Relaxed)
    );
    res.unwrap();
    assert!(
        count.load(Ordering::Relaxed) > 1000,
        "the fuzzer barely ran"
    );
    assert!(
        decoded.load(Ordering::Relaxed) > 100,
        "mutations never got past the checks"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
