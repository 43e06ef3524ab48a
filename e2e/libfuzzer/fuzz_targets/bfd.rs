//! libFuzzer target: arbitrary bytes through the BFD Control packet
//! checks (RFC 5880 section 6.8.6). No input may panic; whatever passes
//! the checks must survive being encoded and read again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vipd_fuzz::bfd_packet::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse(data) {
        assert!(p.detect_mult != 0 && p.my_disc != 0);
        assert_eq!(parse(&p.encode()), Ok(p));
    }
});
