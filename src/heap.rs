//! What the system allocator keeps. glibc returns freed memory to the
//! system only from the top of its heap: after a large list (tens of
//! thousands of objects parsed, converted and dropped), the free space
//! left between live blocks stays resident for the life of the process.
//! [`trim`] hands it back: the watch calls it a second after a list or a
//! re-list (once the daemon has taken it in), the allocator after a pass
//! that wrote a thousand statuses. Not after every burst: it holds the
//! allocator's locks for milliseconds, on the path events take.
//!
//! Measured against mimalloc in docs/benchmarks.md (issue 20): mimalloc
//! held the re-list's peak flat but kept more resident at every size.

/// Returns the free pages of every glibc arena to the system (no-op
/// elsewhere). Takes the arenas' locks for a few milliseconds.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
