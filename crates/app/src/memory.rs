//! Idle memory: fewer malloc arenas, giving back the heap that start-up alone needed, and
//! giving back what a burst of connections needed once they are gone.
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

/// How often the heap trimmer looks at glibc's free memory. Default is 5 s.
pub const HEAP_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Free heap memory that must have come back since the last trim before the trimmer trims
/// again. Default is 4 MiB: about 160 closed keep-alive connections' worth.
pub const HEAP_TRIM_THRESHOLD: usize = 4 * 1024 * 1024;

/// Decides when free heap memory is worth giving back to the kernel.
///
/// glibc keeps memory freed in the middle of its heap, so after a burst of connections closes
/// (10 000 idle keep-alive connections hold about 250 MiB) the process stays that large.
/// `malloc_trim` returns those pages, but it costs a system call per free chunk, so it runs
/// only when at least [`HEAP_TRIM_THRESHOLD`] more bytes are free than at the lowest point
/// since the last trim: memory that was in use (resident) and is now free. Trimmed pages stay
/// counted as free by glibc, which is why the baseline is the low point, not the last value.
#[derive(Debug, Clone)]
pub struct TrimPolicy {
    threshold: usize,
    low: Option<usize>,
}

impl TrimPolicy {
    /// A policy with the given threshold in bytes.
    pub fn new(threshold: usize) -> TrimPolicy {
        TrimPolicy {
            threshold,
            low: None,
        }
    }

    /// Takes the free heap bytes now; true when a trim is due (the low point then restarts
    /// from `free`).
    pub fn observe(&mut self, free: usize) -> bool {
        let low = *self.low.get_or_insert(free);
        if free < low {
            self.low = Some(free);
            return false;
        }
        if free - low >= self.threshold {
            self.low = Some(free);
            return true;
        }
        false
    }
}

/// Starts the heap trimmer thread (`heap-trim`, a small stack), which follows [`TrimPolicy`]
/// every [`HEAP_TRIM_INTERVAL`] for the life of the process. A no-op outside glibc, and when
/// the thread cannot be started (the proxy works without it).
pub fn spawn_heap_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .stack_size(64 * 1024)
            .spawn(|| {
                // SAFETY: mallinfo2 only reads allocator statistics; it takes no pointers.
                let free_now = || unsafe { libc::mallinfo2() }.fordblks;
                let mut policy = TrimPolicy::new(HEAP_TRIM_THRESHOLD);
                // The first sample is taken at once, so that the low point is the idle heap
                // and not whatever a burst left behind by the time of the first tick.
                policy.observe(free_now());
                loop {
                    std::thread::sleep(HEAP_TRIM_INTERVAL);
                    if policy.observe(free_now()) {
                        release_startup_memory();
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::debug!(error = %err, "heap trimmer not started");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_when_memory_in_use_was_freed() {
        let mut p = TrimPolicy::new(100);
        assert!(!p.observe(1000), "the first sample only sets the low point");
        assert!(!p.observe(1050));
        assert!(p.observe(1100), "100 bytes more free than the low point");
        // Trimmed pages stay counted as free: no trim again for the same memory.
        assert!(!p.observe(1100));
        assert!(!p.observe(1150));
        // Connections take the free memory again, then release it: trim again.
        assert!(!p.observe(200));
        assert!(!p.observe(250));
        assert!(p.observe(1200));
    }

    #[test]
    fn trimming_keeps_the_process_working() {
        limit_malloc_arenas();
        release_startup_memory();
        let s = format!("{:?}", vec![1, 2, 3]);
        assert_eq!(s, "[1, 2, 3]");
    }
}
