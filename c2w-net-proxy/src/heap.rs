//! Live heap accounting for the browser build. A WebAssembly memory only ever grows, so its size
//! cannot say whether the memory a burst of connections took was given back; the allocator can.
//! In the wasm module every allocation goes through [`CountingAllocator`], which keeps the
//! bytes currently allocated and their high-water mark for `NetProxy.stats()` (`heapBytes`,
//! `heapPeakBytes`). Natively the runner reports its RSS instead and keeps the system
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator (dlmalloc on wasm32) with two counters beside it.
pub struct CountingAllocator {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingAllocator {
    /// A counter starting at zero.
    pub const fn new() -> Self {
        Self {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated and not yet freed (as requested, without the allocator's overhead).
    pub fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The most bytes ever allocated at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn grew(&self, by: usize) {
        let now = self.live.fetch_add(by, Ordering::Relaxed) + by;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn shrank(&self, by: usize) {
        self.live.fetch_sub(by, Ordering::Relaxed);
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the counters only observe sizes and never touch the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            self.grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            self.grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        self.shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // On failure the old block stays allocated and counted.
            if new_size >= layout.size() {
                self.grew(new_size - layout.size());
            } else {
                self.shrank(layout.size() - new_size);
            }
        }
        new
    }
}

/// The allocator of the whole WebAssembly module.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
pub static HEAP: CountingAllocator = CountingAllocator::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_live_and_the_peak() {
        let heap = CountingAllocator::new();
        let small = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: sizes are non-zero; every block is freed with the layout it was made with.
        unsafe {
            let a = heap.alloc(small);
            let b = heap.alloc_zeroed(small);
            assert_eq!(heap.live_bytes(), 200);
            let a = heap.realloc(a, small, 1000);
            assert_eq!(heap.live_bytes(), 1100);
            let a = heap.realloc(a, Layout::from_size_align(1000, 8).unwrap(), 10);
            assert_eq!(heap.live_bytes(), 110);
            heap.dealloc(a, Layout::from_size_align(10, 8).unwrap());
            heap.dealloc(b, small);
        }
        assert_eq!(heap.live_bytes(), 0);
        assert_eq!(heap.peak_bytes(), 1100);
    }
}
