//! Idle memory: fewer malloc arenas, and giving back the heap that start-up alone needed.
//!
//! Measured on an idle `outrider run` (one worker, one request served), nearly all of the
//! resident set is the executable's own code, not heap (the kernel maps a 64 KiB window of a
//! file mapping around every page touched, so start-up code stays resident). Glibc also keeps
//! the memory start-up freed, and gives each thread that allocates its own arena.

/// Most glibc malloc arenas (`M_ARENA_MAX`). Glibc's default is 8 per CPU; each thread that
/// allocates takes an arena of its own until then, and every arena keeps freed memory for
/// reuse. The proxy's allocating threads are its workers and a few helpers, and requests
/// allocate little, so two arenas bound idle memory without measurable contention. Default
/// is 2.
pub const MALLOC_ARENA_MAX: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENA_MAX`]. Call it first thing, before any thread
/// starts; it is a no-op on other C libraries. `MALLOC_ARENA_MAX` in the environment, read by
/// glibc itself at the first allocation, still wins, so an operator can raise it.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tunable; it takes no pointers.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENA_MAX);
        }
    }
}

/// Gives back the heap memory that only start-up needed (parsing and compiling the
/// configuration), once the proxy serves: `malloc_trim` returns glibc's free pages to the
/// kernel. Best effort; a no-op outside glibc. Returns nothing to report: the trim's effect
/// shows in `/stats/prometheus` (`envoy_server_memory_allocated`).
///
/// Deliberately not done: unmapping the executable's start-up code pages with `madvise`. That
/// lowers the resident set `ps` shows but not the real footprint, since those pages stay in
/// the page cache that the container's memory cgroup is charged for.
pub fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_the_process_working() {
        limit_malloc_arenas();
        release_startup_memory();
        let s = format!("{:?}", vec![1, 2, 3]);
        assert_eq!(s, "[1, 2, 3]");
    }
}
