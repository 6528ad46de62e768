//! The process's allocator: mimalloc, counting the bytes that are allocated and not yet freed.
//!
//! Resident memory alone cannot tell a leak from memory the allocator keeps for reuse; the live
//! count can. `/status` reports it as `heap_live_bytes`. It covers Rust's allocations only: RocksDB
//! allocates through the C library, and `/status` reports its share as `storage_memory_bytes`.
//! One relaxed atomic add per allocation and per free is the whole cost.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use mimalloc::MiMalloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// mimalloc with a count of live bytes; install it with `#[global_allocator]`.
pub struct CountingAllocator;

/// Bytes allocated through [`CountingAllocator`] and not freed. Zero where another allocator is
/// installed (tests, the benchmark binary).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to mimalloc with the caller's arguments unchanged; the counter is
// only arithmetic on the sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { MiMalloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}
