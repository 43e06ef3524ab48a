//! libFuzzer target: arbitrary bytes through vipd's whole receive path
//! (framing, header, OPEN and UPDATE checks, zettabgp on what passed).
//! zettabgp panicking on bytes the checks accepted is a finding too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipd_fuzz::bgp::wire::update::{receive_all, Ctx};

fuzz_target!(|data: &[u8]| {
    for ctx in [
        Ctx { four_octet_as: true, ebgp: true },
        Ctx { four_octet_as: false, ebgp: false },
    ] {
        assert!(receive_all(data, ctx).is_ok(), "zettabgp panicked on checked input");
    }
});
