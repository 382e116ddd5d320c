//! An owned buffer of 16-bit elements for a weight a device copied (a
//! tiled matrix): 64-byte aligned, and from 2 MiB up, in transparent huge
//! pages where the kernel grants them.
//!
//! Why huge pages: a decode step reads every weight once, from memory,
//! and a model file's page cache is itself mapped in 2 MiB pages where the
//! kernel can (`FilePmdMapped` in `/proc/PID/smaps_rollup`: 172 MB of the
//! harness's model, kernel 6.18). Measured on the 2-core AMD EPYC of
//! docs/benchmarks-log.md, one sequence's decode step
//! (`lattice-load-worker --batches`, four rounds, medians): the rows read
//! from a copy in ordinary 4 KiB pages 15.2 ms, from the mapped file
//! 12.4 ms; tiles in 4 KiB pages lost the same way, tiles in 2 MiB pages
//! 11.5 ms. The allocation asks with `madvise(MADV_HUGEPAGE)` before its
//! first write, so the pages are faulted in huge. A process with THP
//! disabled (`prctl(PR_SET_THP_DISABLE)`) gets ordinary pages:
//! `lattice worker` disables THP only once its model is loaded.
//!
//! Must never: hand out memory it did not initialise, or free it with
//! another layout than it was allocated with.

use std::alloc::Layout;
use std::ptr::NonNull;

/// Buffers this large or larger are aligned to, and sized in, huge pages.
const HUGE: usize = 2 << 20;

pub(super) struct Pages {
    ptr: NonNull<u16>,
    len: usize,
    layout: Layout,
}

// SAFETY: `Pages` owns its allocation alone (like a `Vec<u16>`), and only
// hands out shared borrows through `&self` and mutable ones through
// `&mut self`.
#[allow(unsafe_code)]
unsafe impl Send for Pages {}
#[allow(unsafe_code)]
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` zeroed elements; `None` when the allocator has no memory
    /// (or `len` overflows a layout).
    pub(super) fn zeroed(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(2)?.max(2);
        let layout = if bytes >= HUGE {
            Layout::from_size_align(bytes.next_multiple_of(HUGE), HUGE).ok()?
        } else {
            Layout::from_size_align(bytes, 64).ok()?
        };
        // Not `alloc_zeroed`: for an alignment past the allocator's own it
        // zeroes the memory itself, faulting every page in before the
        // advice below could ask for huge ones (measured: 2 MiB of huge
        // pages out of 362 MB of weights).
        // SAFETY: `layout` has a non-zero size (at least 2 bytes).
        #[allow(unsafe_code)]
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(raw.cast::<u16>())?;
        #[cfg(target_os = "linux")]
        if layout.align() == HUGE {
            // SAFETY: the range is the allocation just made, whole, and
            // `MADV_HUGEPAGE` changes no contents, only how pages are
            // backed. A refusal (THP off) leaves ordinary pages.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE);
            }
        }
        // SAFETY: the allocation holds `layout.size()` bytes; zeroing them
        // initialises every element.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::write_bytes(raw, 0, layout.size());
        }
        Some(Self { ptr, len, layout })
    }

    pub(super) fn as_slice(&self) -> &[u16] {
        // SAFETY: `ptr` holds `len` initialised (zeroed, then written)
        // elements, aligned for u16, owned by `self`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr(), self.len)
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as in `as_slice`, and `&mut self` is the only borrow.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len)
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated by `alloc_zeroed` with this very layout.
        #[allow(unsafe_code)]
        unsafe {
            std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buffers_are_cache_line_aligned_and_large_ones_huge_page_aligned() {
        for (len, align) in [
            (1usize, 64usize),
            (1000, 64),
            (HUGE / 2, HUGE),
            (HUGE, HUGE),
        ] {
            let mut p = Pages::zeroed(len).unwrap();
            assert_eq!(p.as_slice().len(), len);
            assert_eq!(p.as_slice().as_ptr() as usize % align, 0, "{len} elements");
            assert!(p.as_slice().iter().all(|&v| v == 0));
            p.as_mut_slice()[len - 1] = 7;
            assert_eq!(p.as_slice()[len - 1], 7);
        }
    }
}
