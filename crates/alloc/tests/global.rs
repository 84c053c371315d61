//! The caching allocator as this test binary's global allocator: every allocation of the test
//! harness and of these tests goes through it.

use std::alloc::{GlobalAlloc, Layout};

use outrider_alloc::{
    CachingAlloc, MAX_BLOCKS_PER_CLASS, MAX_CACHED_BYTES, MAX_CACHED_SIZE, enable_thread_cache,
    flush_thread_cache, thread_cache_usage,
};

#[global_allocator]
static GLOBAL: CachingAlloc = CachingAlloc;

/// Fills `len` bytes at `p` with a pattern derived from `seed`.
fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: the caller owns `len` bytes at `p`.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

fn check(p: *const u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: as in fill.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, seed.wrapping_add(i as u8), "byte {i} of {len}");
    }
}

#[test]
fn freed_blocks_are_reused_within_bounds_and_flushed() {
    std::thread::spawn(|| {
        enable_thread_cache();
        let layout = Layout::from_size_align(4000, 8).expect("layout");
        // SAFETY: non-zero layout; each block is freed once with the layout it came with.
        unsafe {
            let a = GLOBAL.alloc(layout);
            GLOBAL.dealloc(a, layout);
            let b = GLOBAL.alloc(layout);
            assert_eq!(a, b, "the freed block serves the next request of its class");
            // A request of a smaller size in the same class gets it too.
            GLOBAL.dealloc(b, layout);
            let small = Layout::from_size_align(3995, 8).expect("layout");
            let c = GLOBAL.alloc(small);
            assert_eq!(a, c);
            GLOBAL.dealloc(c, small);
        }
        // Many blocks of one class: at most MAX_BLOCKS_PER_CLASS stay.
        let blocks: Vec<Box<[u8; 1000]>> = (0..100).map(|_| Box::new([7u8; 1000])).collect();
        drop(blocks);
        let (held, bytes) = thread_cache_usage();
        assert!(held <= MAX_BLOCKS_PER_CLASS as usize + 2, "held {held}");
        assert!(bytes <= MAX_CACHED_BYTES);
        // Many classes of large blocks: the byte budget holds.
        let big: Vec<Vec<u8>> = (0..200)
            .map(|i| vec![1u8; MAX_CACHED_SIZE - i * 16])
            .collect();
        drop(big);
        let (_, bytes) = thread_cache_usage();
        assert!(bytes <= MAX_CACHED_BYTES, "{bytes} bytes cached");
        flush_thread_cache();
        assert_eq!(thread_cache_usage(), (0, 0));
    })
    .join()
    .expect("thread");
}

#[test]
fn zeroed_and_reallocated_blocks_keep_their_contract() {
    std::thread::spawn(|| {
        enable_thread_cache();
        for size in [
            1usize,
            8,
            24,
            25,
            100,
            1032,
            1033,
            4096,
            MAX_CACHED_SIZE,
            20_000,
        ] {
            let layout = Layout::from_size_align(size, 8).expect("layout");
            // SAFETY: non-zero layouts; blocks freed once with their current layout.
            unsafe {
                // Dirty a block of this class, free it into the cache, then ask for zeroes.
                let dirty = GLOBAL.alloc(layout);
                fill(dirty, size, 0xAB);
                GLOBAL.dealloc(dirty, layout);
                let z = GLOBAL.alloc_zeroed(layout);
                assert!((0..size).all(|i| z.add(i).read() == 0), "zeroed {size}");
                // Grow and shrink across classes and past the cached range: contents stay.
                fill(z, size, 3);
                let grown = GLOBAL.realloc(z, layout, size * 3 + 5);
                check(grown, size, 3);
                let grown_layout = Layout::from_size_align(size * 3 + 5, 8).expect("layout");
                let shrunk = GLOBAL.realloc(grown, grown_layout, size.div_ceil(2));
                check(shrunk, size.div_ceil(2), 3);
                GLOBAL.dealloc(
                    shrunk,
                    Layout::from_size_align(size.div_ceil(2), 8).expect("l"),
                );
            }
        }
        flush_thread_cache();
    })
    .join()
    .expect("thread");
}

#[test]
fn over_aligned_blocks_bypass_the_cache() {
    enable_thread_cache();
    for align in [32usize, 64, 4096] {
        let layout = Layout::from_size_align(100, align).expect("layout");
        // SAFETY: non-zero layout, freed once.
        unsafe {
            let p = GLOBAL.alloc(layout);
            assert_eq!(p as usize % align, 0);
            fill(p, 100, 1);
            let q = GLOBAL.realloc(p, layout, 5000);
            assert_eq!(q as usize % align, 0);
            check(q, 100, 1);
            GLOBAL.dealloc(q, Layout::from_size_align(5000, align).expect("layout"));
        }
    }
    flush_thread_cache();
}

/// Threads with and without the cache allocate, write, hand blocks to each other and free them
/// in random order; every block keeps its contents until freed.
#[test]
fn cross_thread_stress_keeps_contents() {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, u8)>(64);
    let consumer = std::thread::spawn(move || {
        enable_thread_cache();
        let mut got = 0usize;
        for (v, seed) in rx {
            check(v.as_ptr(), v.len(), seed);
            got += 1;
        }
        flush_thread_cache();
        got
    });
    let producers: Vec<_> = (0..3u64)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                if t != 0 {
                    enable_thread_cache();
                }
                let mut rng = fastrand::Rng::with_seed(t);
                let mut live: Vec<(Vec<u8>, u8)> = Vec::new();
                for i in 0..20_000u32 {
                    let size = match rng.u8(..4) {
                        0 => rng.usize(1..64),
                        1 => rng.usize(64..1100),
                        2 => rng.usize(1100..MAX_CACHED_SIZE + 200),
                        _ => rng.usize(1..20_000),
                    };
                    let seed = (i % 251) as u8;
                    let mut v = Vec::with_capacity(size);
                    v.extend((0..size).map(|j| seed.wrapping_add(j as u8)));
                    if rng.bool() {
                        // Grow it in place or by moving; the contents must follow.
                        let extra = rng.usize(0..3000);
                        v.extend((size..size + extra).map(|j| seed.wrapping_add(j as u8)));
                    }
                    if i % 7 == 0 {
                        let _ = tx.send((v, seed));
                    } else {
                        live.push((v, seed));
                    }
                    if live.len() > 64 || rng.u8(..4) == 0 {
                        let k = rng.usize(..live.len().max(1));
                        if k < live.len() {
                            let (v, seed) = live.swap_remove(k);
                            check(v.as_ptr(), v.len(), seed);
                        }
                    }
                }
                for (v, seed) in live {
                    check(v.as_ptr(), v.len(), seed);
                }
                flush_thread_cache();
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().expect("producer");
    }
    let got = consumer.join().expect("consumer");
    assert_eq!(got, 3 * 20_000usize.div_ceil(7));
}
