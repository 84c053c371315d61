//! The process's global allocator: the C library's `malloc`, with a small per-thread cache of
//! freed blocks in front of it on the threads that serve requests.
//!
//! Why: a proxied HTTP/1.1 request makes about 17 heap allocations (header maps, the request
//! future, body and head buffers) and frees them all before the next request. With glibc 2.36
//! each of those costs 75–150 instructions: its own thread cache (tcache) keeps only 7 blocks
//! per size and nothing over 1032 bytes, so a burst of concurrent requests and every request
//! future (about 4 KiB) go through the locked arena path, which was about 15 % of the
//! instructions of a request under callgrind. A free list per size class, private to the
//! thread, makes an allocation and a free a few loads and stores each.
//!
//! What it keeps, and the bounds:
//! - Only threads that called [`enable_thread_cache`] cache anything (the runtime's workers);
//!   every other thread, and every allocation over [`MAX_CACHED_SIZE`] bytes or aligned to
//!   more than 16, goes straight to `malloc`/`free`.
//! - A size class is a glibc chunk size (16-byte steps), and a cached block is allocated with
//!   the largest request of its class, so the cache never makes a block larger than `malloc`
//!   would have: long-lived memory (an idle connection's) is unchanged.
//! - At most [`MAX_BLOCKS_PER_CLASS`] blocks per class and [`MAX_CACHED_BYTES`] bytes per thread
//!   are held; past that a freed block goes back to `malloc`. [`flush_thread_cache`] returns them
//!   all (a worker calls it when it stops).
//! - Any block may be freed on any thread: every block is an ordinary `malloc` block.
//! - The bins themselves (513 list heads and counts, 8 KiB) are static thread-local storage,
//!   present on every thread, caching or not; glibc carves it out of each thread's stack.

#![cfg_attr(not(unix), allow(dead_code))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// The largest allocation (bytes) the per-thread cache keeps: 8 KiB less glibc's 8-byte chunk
/// header, so that the largest class is an 8 KiB chunk. Covers request futures and head
/// buffers; larger buffers are rare per request and cost the same in `malloc` either way.
pub const MAX_CACHED_SIZE: usize = 8 * 1024 - 8;
/// Blocks kept per size class on one thread. Default 32: a burst of 20 concurrent requests
/// (the load harness's 20 connections) frees up to 20 blocks of a class at once.
pub const MAX_BLOCKS_PER_CLASS: u32 = 32;
/// Bytes kept over all classes on one thread. Default 256 KiB, the bound on what the cache adds
/// to an idle process's heap.
pub const MAX_CACHED_BYTES: usize = 256 * 1024;

/// Blocks up to this alignment come from `malloc` (which aligns to 16 on 64-bit Linux).
const MALLOC_ALIGN: usize = 16;
/// Size classes: chunk sizes in 16-byte steps, index = chunk size / 16.
const CLASSES: usize = class_of(MAX_CACHED_SIZE) + 1;

/// The size class of a request of `size` bytes: glibc's chunk size for it (the request plus an
/// 8-byte header, rounded up to 16, at least 32) divided by 16.
const fn class_of(size: usize) -> usize {
    let chunk = (size + 8).div_ceil(16);
    if chunk < 2 { 2 } else { chunk }
}

/// The largest request of a class: what a cached block of that class is allocated with, so
/// that it can serve any request of its class.
const fn class_size(class: usize) -> usize {
    class * 16 - 8
}

/// A free block: its first word links to the next free block of its class.
struct FreeBlock {
    next: *mut FreeBlock,
}

#[derive(Clone, Copy)]
struct Bin {
    head: *mut FreeBlock,
    len: u32,
}

struct Cache {
    enabled: bool,
    bytes: usize,
    bins: [Bin; CLASSES],
}

const EMPTY_BIN: Bin = Bin {
    head: ptr::null_mut(),
    len: 0,
};

thread_local! {
    // A const initialiser and no destructor: access is a plain thread-local load that never
    // allocates and never fails, as an allocator needs.
    static CACHE: UnsafeCell<Cache> = const {
        UnsafeCell::new(Cache { enabled: false, bytes: 0, bins: [EMPTY_BIN; CLASSES] })
    };
}

/// Runs `f` on this thread's cache. The cache is only touched here, and `f` never calls back
/// into the allocator, so the mutable borrow is unique.
#[inline(always)]
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
    CACHE
        // SAFETY: see above; the pointer comes from this thread's own thread-local.
        .try_with(|c| f(unsafe { &mut *c.get() }))
        .ok()
}

/// Lets this thread keep freed blocks for reuse. Call it on threads that allocate and free at a
/// high rate (the proxy's runtime workers), and [`flush_thread_cache`] before such a thread
/// ends; blocks left in the cache of a thread that ends are not returned.
pub fn enable_thread_cache() {
    with_cache(|c| c.enabled = true);
}

/// Returns every block this thread's cache holds to `malloc` and stops caching on this thread.
pub fn flush_thread_cache() {
    with_cache(|c| {
        c.enabled = false;
        c.bytes = 0;
        for bin in c.bins.iter_mut() {
            let mut block = bin.head;
            while !block.is_null() {
                // SAFETY: every block in a bin is a free malloc block whose first word is
                // the link to the next one.
                unsafe {
                    let next = (*block).next;
                    free(block.cast());
                    block = next;
                }
            }
            *bin = EMPTY_BIN;
        }
    });
}

/// Blocks and bytes this thread's cache holds now (for tests and diagnostics).
pub fn thread_cache_usage() -> (usize, usize) {
    with_cache(|c| {
        let blocks = c.bins.iter().map(|b| b.len as usize).sum();
        (blocks, c.bytes)
    })
    .unwrap_or((0, 0))
}

#[cfg(unix)]
unsafe fn malloc(size: usize) -> *mut u8 {
    // SAFETY: the caller's size is non-zero (GlobalAlloc's contract).
    unsafe { libc::malloc(size).cast() }
}

#[cfg(unix)]
unsafe fn free(p: *mut u8) {
    // SAFETY: `p` came from malloc, calloc or realloc.
    unsafe { libc::free(p.cast()) }
}

/// The global allocator; see the crate documentation. `malloc` itself on targets other than
/// Unix.
#[derive(Debug, Default, Clone, Copy)]
pub struct CachingAlloc;

/// True when a layout is served by this module (size classes over `malloc`) rather than by
/// `System`: small enough, and no alignment beyond what `malloc` gives.
#[inline(always)]
fn cacheable(layout: Layout) -> bool {
    cfg!(unix) && layout.size() <= MAX_CACHED_SIZE && layout.align() <= MALLOC_ALIGN
}

#[cfg(unix)]
unsafe impl GlobalAlloc for CachingAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !cacheable(layout) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc(layout) };
        }
        let class = class_of(layout.size());
        let cached = with_cache(|c| {
            let bin = &mut c.bins[class];
            let block = bin.head;
            if block.is_null() {
                return block;
            }
            // SAFETY: a non-null head is a free block of this class.
            bin.head = unsafe { (*block).next };
            bin.len -= 1;
            c.bytes -= class_size(class) + 8;
            block
        });
        match cached {
            Some(block) if !block.is_null() => block.cast(),
            // SAFETY: class_size is at least 24, never zero.
            _ => unsafe { malloc(class_size(class)) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if !cacheable(layout) {
            // SAFETY: `p` came from `alloc` or `realloc` with this layout, which used System.
            return unsafe { System.dealloc(p, layout) };
        }
        let class = class_of(layout.size());
        let kept = with_cache(|c| {
            let bin = &mut c.bins[class];
            let bytes = class_size(class) + 8;
            if !c.enabled || bin.len >= MAX_BLOCKS_PER_CLASS || c.bytes + bytes > MAX_CACHED_BYTES {
                return false;
            }
            let block = p.cast::<FreeBlock>();
            // SAFETY: the block is at least 24 bytes and 16-aligned, and is the caller's to
            // give up: its first word becomes the link.
            unsafe { block.write(FreeBlock { next: bin.head }) };
            bin.head = block;
            bin.len += 1;
            c.bytes += bytes;
            true
        });
        if kept != Some(true) {
            // SAFETY: every block of a cacheable layout is a malloc block.
            unsafe { free(p) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !cacheable(layout) {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // calloc: fresh pages from the kernel are already zero, so it can skip the memset.
        // SAFETY: non-zero count and size.
        unsafe { libc::calloc(1, class_size(class_of(layout.size()))).cast() }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() > MALLOC_ALIGN {
            // SAFETY: forwarded; such blocks always come from System.
            return unsafe { System.realloc(p, layout, new_size) };
        }
        let old_cacheable = layout.size() <= MAX_CACHED_SIZE;
        let new_cacheable = new_size <= MAX_CACHED_SIZE;
        if old_cacheable && new_cacheable && class_of(layout.size()) == class_of(new_size) {
            // Same chunk: the block already has room.
            return p;
        }
        // Either way the block is a malloc block (System uses malloc for these alignments), so
        // realloc can move or resize it; a cacheable result is sized to its class.
        let size = if new_cacheable {
            class_size(class_of(new_size))
        } else {
            new_size
        };
        // SAFETY: `p` is a live malloc block; `size` is non-zero.
        unsafe { libc::realloc(p.cast(), size).cast() }
    }
}

#[cfg(not(unix))]
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_glibc_chunk_sizes() {
        // glibc: chunk = max(32, (request + 8 + 15) & !15).
        for size in 1..=MAX_CACHED_SIZE {
            let chunk = ((size + 8 + 15) & !15).max(32);
            assert_eq!(class_of(size) * 16, chunk, "size {size}");
            assert!(class_size(class_of(size)) >= size);
            assert_eq!(class_of(class_size(class_of(size))), class_of(size));
        }
        assert_eq!(class_of(MAX_CACHED_SIZE) * 16, 8 * 1024);
    }
}
