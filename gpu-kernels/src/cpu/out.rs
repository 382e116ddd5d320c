//! One block's share of a product's output: its columns of every row,
//! written in place by the block alone while the other blocks write
//! theirs in parallel (no scratch buffer per call, no copy back).
//!
//! Must never: hand out two views of the same columns, or write outside
//! a view (`set` checks its bounds; `gemm` is given exactly them).

/// The output's first value, shared by the blocks of one product (each
/// writes only its own columns).
pub(super) struct Base(pub(super) *mut f32);

// SAFETY: blocks write disjoint columns through `Out` (see `Out::columns`).
#[allow(unsafe_code)]
unsafe impl Sync for Base {}

/// One block's columns of a row-major output: `rows` rows of `cols`
/// values, `stride` apart. Written only through `set` (bounds checked)
/// and `gemm` (given exactly these bounds).
pub(super) struct Out<'a> {
    pub(super) ptr: *mut f32,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) stride: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl Out<'_> {
    /// Columns `o0..o0 + cols` of the `rows × stride` matrix at `base`.
    ///
    /// # Safety
    /// `base` must point at `rows × stride` values that outlive the view,
    /// `o0 + cols <= stride`, and no other live view may hold any of these
    /// columns.
    #[allow(unsafe_code)]
    pub(super) unsafe fn columns(
        base: &Base,
        rows: usize,
        stride: usize,
        o0: usize,
        cols: usize,
    ) -> Self {
        Self {
            // SAFETY: `o0 <= stride`, inside the matrix (the caller's
            // guarantee).
            ptr: unsafe { base.0.add(o0) },
            rows,
            cols,
            stride,
            _out: std::marker::PhantomData,
        }
    }

    /// Row `r`, column `j` of the view.
    #[inline(always)]
    pub(super) fn set(&mut self, r: usize, j: usize, v: f32) {
        debug_assert!(r < self.rows && j < self.cols);
        if r < self.rows && j < self.cols {
            // SAFETY: inside the view (checked), which `columns` made
            // inside the matrix and this view's own.
            #[allow(unsafe_code)]
            unsafe {
                *self.ptr.add(r * self.stride + j) = v
            };
        }
    }
}
