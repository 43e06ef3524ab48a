//! The allocator vipd runs on, and handing its free pages back.
//!
//! jemalloc (`tikv-jemallocator`, set in `main.rs`), with one arena. At
//! 50,000 Services glibc's malloc held 72 MiB resident for 47 MiB in use:
//! the cold start parses and frees tens of thousands of objects between
//! the ones it keeps, and glibc's free space stays scattered among them in
//! pieces too small to return. jemalloc keeps each size of object on pages
//! of its own, so freed pages empty out and can be returned: 60 MiB, and
//! a slope under 1 KiB per Service (figures in docs/benchmarks.md, issue
//! 20, with mimalloc's, which held the most).
//!
//! Configured in `main.rs` (`malloc_conf`):
//! - one arena, not jemalloc's four per core: vipd's two workers seldom
//!   allocate at the same instant (event latency did not move), and every
//!   arena keeps free pages of its own;
//! - freed pages returned at once (`dirty_decay_ms:0`), not over ten
//!   seconds: loading 200,000 static prefixes peaked at 67 MiB with the
//!   default decay and 43 without; cold start's CPU at 50,000 Services was
//!   1.20 s against 1.04, within the spread of runs (1.04-1.45). Nor
//!   does an idle vipd keep them (without a background thread, jemalloc
//!   decays only while the process allocates).
//!
//! [`trim`] also returns what a size's partly used pages hold free, after
//! the large one-off jobs: each load of the configuration (at start and on
//! every reload, once its prefixes are in the table), the
//! watch a second after a list or re-list, the allocator after a term's
//! first pass or one that wrote a thousand statuses.

/// Returns every arena's unused pages to the system.
pub fn trim() {
    // MALLCTL_ARENAS_ALL: every arena.
    let name = c"arena.4096.purge";
    // SAFETY: a void mallctl: no value read or written.
    let r = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if r != 0 {
        tracing::debug!(errno = r, "jemalloc purge refused");
    }
}
