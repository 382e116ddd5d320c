//! The GEMV inner loops in x86 SIMD intrinsics: with AVX-512, a tile of
//! weight rows × activation rows whose accumulators stay in registers;
//! with AVX2, one weight row, read and widened once, dotted with up to
//! `R` activation rows; with AVX512-BF16, bf16 weights against
//! bf16-rounded activations in tiles like the AVX-512 one.
//!
//! Why intrinsics and not the portable bodies the compiler vectorises:
//! measured, LLVM kept the portable loop's accumulators on the stack and
//! chose between a vector and a scalar path at run time, so a decode step
//! ran at ~6 G weight elements/s per core from L3 and a batch of four
//! rows cost four times one. (`pulp`, which `gemm` uses, could replace
//! this module; it was not needed for three loops.)
//!
//! Must never: load past a slice's end — every load reads a chunk whose
//! bounds the loop took from the slice itself (`chunks_exact`, checked
//! sub-slices) — or sum a row's products in an order that depends on `R`
//! (a sequence's logits must not depend on what it is batched with).
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One weight row in its stored dtype.
#[derive(Clone, Copy)]
pub(super) enum Row<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [half::f16]),
}

impl Row<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Row::F32(s) => s.len(),
            Row::BF16(s) => s.len(),
            Row::F16(s) => s.len(),
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            Row::F32(s) => s[i],
            Row::BF16(s) => crate::weight::bf16_to_f32(s[i]),
            Row::F16(s) => s[i].to_f32(),
        }
    }
}

/// Sum of `v`'s lanes pairwise (halves added until one is left).
#[inline(always)]
fn pairwise<const N: usize>(mut v: [f32; N]) -> f32 {
    let mut width = N / 2;
    while width > 0 {
        for l in 0..width {
            v[l] += v[l + width];
        }
        width /= 2;
    }
    v[0]
}

/// The products past the last whole chunk, added in order.
#[inline(always)]
fn tail(w: Row<'_>, x: &[f32], from: usize, n: usize, mut s: f32) -> f32 {
    for (i, xi) in x.iter().enumerate().take(n).skip(from) {
        s += w.get(i) * xi;
    }
    s
}

/// The length of the shortest slice of a tile.
#[cfg(target_arch = "x86_64")]
fn shortest<W, X>(ws: &[&[W]], xs: &[&[X]]) -> usize {
    let w = ws.iter().map(|w| w.len()).min();
    let x = xs.iter().map(|x| x.len()).min();
    w.unwrap_or(0).min(x.unwrap_or(0))
}

/// A weight element type the AVX-512 tile loads 16 of at a time, widened
/// to f32.
#[cfg(target_arch = "x86_64")]
pub(super) trait Wide16: Copy {
    /// `s[..16]` as 16 f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `s` must hold at least 16 elements.
    unsafe fn wide16(s: &[Self]) -> __m512;
    fn to_f32(self) -> f32;
}

#[cfg(target_arch = "x86_64")]
impl Wide16 for f32 {
    #[inline(always)]
    unsafe fn wide16(s: &[f32]) -> __m512 {
        // SAFETY: the caller guarantees 16 elements and AVX-512F.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    fn to_f32(self) -> f32 {
        self
    }
}

/// bf16, as its bits.
#[cfg(target_arch = "x86_64")]
impl Wide16 for u16 {
    #[inline(always)]
    unsafe fn wide16(s: &[u16]) -> __m512 {
        // SAFETY: the caller guarantees 16 elements and AVX-512F.
        unsafe {
            let h = _mm256_loadu_si256(s.as_ptr().cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    fn to_f32(self) -> f32 {
        crate::weight::bf16_to_f32(self)
    }
}

#[cfg(target_arch = "x86_64")]
impl Wide16 for half::f16 {
    #[inline(always)]
    unsafe fn wide16(s: &[half::f16]) -> __m512 {
        // SAFETY: the caller guarantees 16 elements and AVX-512F (whose
        // foundation includes the 512-bit half conversion).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast())) }
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// The AVX-512 tile keeps two independent accumulators per product: with
/// one, a single row's decode waits on each multiply-add's latency
/// (measured ~12% slower than four); two, each over alternate 16-element
/// chunks, still leave room for a 4 × 3 tile in the 32 registers.
/// Elements per step of the AVX-512 tile: two chains of 16.
#[cfg(target_arch = "x86_64")]
const STEP: usize = 32;

/// AVX-512, a tile of `O` weight rows × `R` activation rows: each 16
/// weights widened once serve `R` rows, each 16 activations loaded once
/// serve `O` weight rows, so the loads per multiply-add fall from
/// 1 + 1/R (one weight row at a time) to 1/O + 1/R — what keeps the
/// activations of a 16-row batch, which live in L2, from bounding it.
/// `O × R × 2` ≤ 24 keeps the accumulators and the weights in the 32
/// registers. Each product `(o, r)` is two 16-lane accumulators
/// over alternate 16-element chunks, in order, added, then their lanes
/// pairwise, then the tail: the same order for any `O` and `R`.
///
/// # Safety
/// The CPU must support AVX-512F (`Simd::detect`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_tile_avx512<T: Wide16, const O: usize, const R: usize>(
    ws: &[&[T]; O],
    xs: &[&[f32]; R],
) -> [[f32; R]; O] {
    let n = shortest(ws, xs);
    let whole = n / STEP * STEP;
    // The two chains as two arrays: one array of both (a third
    // dimension) was measured spilling to the stack, at a third of the
    // speed.
    let mut even = [[_mm512_setzero_ps(); R]; O];
    let mut odd = [[_mm512_setzero_ps(); R]; O];
    for c in (0..whole).step_by(STEP) {
        // SAFETY (both): `c + STEP <= whole <= n`, the length of every
        // slice, and `chunk` reads 16 elements at `c` and at `c + 16`.
        unsafe {
            chunk(ws, xs, c, &mut even);
            chunk(ws, xs, c + 16, &mut odd);
        }
    }
    let mut out = [[0.0f32; R]; O];
    for o in 0..O {
        for r in 0..R {
            let mut lanes = [0.0f32; 16];
            let v = _mm512_add_ps(even[o][r], odd[o][r]);
            // SAFETY: `lanes` holds 16 floats.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            let mut s = pairwise(lanes);
            for i in whole..n {
                s += ws[o][i].to_f32() * xs[r][i];
            }
            out[o][r] = s;
        }
    }
    out
}

/// One 16-element chunk at `at` of the tile into `acc`.
///
/// # Safety
/// AVX-512F; every slice of `ws` and `xs` holds `at + 16` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn chunk<T: Wide16, const O: usize, const R: usize>(
    ws: &[&[T]; O],
    xs: &[&[f32]; R],
    at: usize,
    acc: &mut [[__m512; R]; O],
) {
    // SAFETY: the caller guarantees `at + 16` elements in every slice.
    let wv: [__m512; O] = std::array::from_fn(|o| unsafe { T::wide16(&ws[o][at..at + 16]) });
    for r in 0..R {
        let xv = unsafe { _mm512_loadu_ps(xs[r][at..at + 16].as_ptr()) };
        for o in 0..O {
            acc[o][r] = _mm512_fmadd_ps(wv[o], xv, acc[o][r]);
        }
    }
}

/// `src` rounded to bf16 (to nearest, ties to even), 16 at a time.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16 (`Cpu::bf16_dot`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let whole = n / 16 * 16;
    for c in (0..whole).step_by(16) {
        // SAFETY: `c + 16 <= whole <= n`, the length of both slices; the
        // load reads 16 floats at `c`, the store writes 16 halves there.
        unsafe {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src[c..c + 16].as_ptr()));
            _mm256_storeu_si256(
                dst[c..c + 16].as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
    }
    for i in whole..n {
        dst[i] = half::bf16::from_f32(src[i]).to_bits();
    }
}

/// AVX512-BF16, a tile of `O` bf16 weight rows × `R` activation rows
/// already rounded to bf16: `vdpbf16ps` multiplies 32 pairs and adds them
/// into 16 f32 lanes per instruction, twice the products of an f32
/// multiply-add, with nothing to widen (measured 1.4–2.3× the f32 tile at
/// 1–64 rows, 1.6–2.2× `gemm` at 128–512). The activations lose the bits
/// bf16 does not keep, as on the GPU's tensor cores and in llama.cpp's
/// bf16 dot product. Like the f32 tile, each product is two accumulator
/// chains over alternate 32-element chunks (one chain made a single row
/// wait on the instruction's latency), added, then their lanes in
/// `_mm512_reduce_add_ps`'s fixed order, then the tail in order: the same
/// for any `O` and `R`, so a row's result does not depend on its batch.
/// `O × R × 2` ≤ 24 keeps the accumulators and the weights in registers.
///
/// Each weight row is read 32 elements at a time, `stride` elements
/// apart: 32 for a row of a matrix in rows, `TILE_ROWS × 32` for a row of
/// a tiled one (`Layout::Tiles`, each slice then starting at the row's
/// first chunk). Each `xs` row holds `k` contiguous elements.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16. (A weight slice too
/// short for `k` elements at `stride` is a bounds-check panic, not a
/// read outside it.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn dot_tile_bf16<const O: usize, const R: usize>(
    ws: &[&[u16]; O],
    stride: usize,
    xs: &[&[u16]; R],
    k: usize,
) -> [[f32; R]; O] {
    let whole = k / 64 * 64;
    let mut even = [[_mm512_setzero_ps(); R]; O];
    let mut odd = [[_mm512_setzero_ps(); R]; O];
    for c in (0..whole).step_by(64) {
        // SAFETY (both): the caller's CPU has AVX-512F and AVX512-BF16;
        // `pairs_chunk` slices what it reads.
        unsafe {
            pairs_chunk(ws, stride, xs, c, &mut even);
            pairs_chunk(ws, stride, xs, c + 32, &mut odd);
        }
    }
    let at = |i: usize| i / 32 * stride + i % 32;
    let mut out = [[0.0f32; R]; O];
    for o in 0..O {
        for r in 0..R {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(even[o][r], odd[o][r]));
            for i in whole..k {
                s +=
                    crate::weight::bf16_to_f32(ws[o][at(i)]) * crate::weight::bf16_to_f32(xs[r][i]);
            }
            out[o][r] = s;
        }
    }
    out
}

/// One 32-pair chunk, the one at element `at` (a multiple of 32) of each
/// row, of a bf16 tile into `acc`.
///
/// # Safety
/// AVX-512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn pairs_chunk<const O: usize, const R: usize>(
    ws: &[&[u16]; O],
    stride: usize,
    xs: &[&[u16]; R],
    at: usize,
    acc: &mut [[__m512; R]; O],
) {
    // SAFETY (both): 64 bytes reinterpreted as 32 bf16 — the same size,
    // any bits are a valid value.
    let pairs = |v: __m512i| -> __m512bh { unsafe { std::mem::transmute::<__m512i, __m512bh>(v) } };
    let w_at = at / 32 * stride;
    // SAFETY (every load): each reads the 32 halves of a slice of 32,
    // bounds-checked by the indexing that made it.
    let wv: [__m512bh; O] = std::array::from_fn(|o| {
        pairs(unsafe { _mm512_loadu_si512(ws[o][w_at..w_at + 32].as_ptr().cast()) })
    });
    for r in 0..R {
        let xv = pairs(unsafe { _mm512_loadu_si512(xs[r][at..at + 32].as_ptr().cast()) });
        for o in 0..O {
            acc[o][r] = _mm512_dpbf16_ps(acc[o][r], wv[o], xv);
        }
    }
}

/// AVX2 + FMA: 32 elements per step (four registers per row); `R` ≤ 2
/// keeps 8 accumulators and 4 weight registers of the 16.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (`Simd::detect`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_avx2<const R: usize>(w: Row<'_>, xs: &[&[f32]; R]) -> [f32; R] {
    let n = xs.iter().fold(w.len(), |n, x| n.min(x.len()));
    let whole = n / 32 * 32;
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    for c in (0..whole).step_by(32) {
        // SAFETY (every load below): `c + 32 <= whole <= len` of the
        // slice loaded from, and each load reads 8 elements at `c + 8q`,
        // q < 4, through a sub-slice whose indexing checked it.
        let wv: [__m256; 4] = match w {
            Row::F32(s) => {
                let s = &s[c..c + 32];
                unsafe {
                    [
                        _mm256_loadu_ps(s[..8].as_ptr()),
                        _mm256_loadu_ps(s[8..16].as_ptr()),
                        _mm256_loadu_ps(s[16..24].as_ptr()),
                        _mm256_loadu_ps(s[24..].as_ptr()),
                    ]
                }
            }
            Row::BF16(s) => {
                let s = &s[c..c + 32];
                let wide = |h: __m128i| {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                };
                unsafe {
                    [
                        wide(_mm_loadu_si128(s[..8].as_ptr().cast())),
                        wide(_mm_loadu_si128(s[8..16].as_ptr().cast())),
                        wide(_mm_loadu_si128(s[16..24].as_ptr().cast())),
                        wide(_mm_loadu_si128(s[24..].as_ptr().cast())),
                    ]
                }
            }
            Row::F16(s) => {
                let s = &s[c..c + 32];
                unsafe {
                    [
                        _mm256_cvtph_ps(_mm_loadu_si128(s[..8].as_ptr().cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(s[8..16].as_ptr().cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(s[16..24].as_ptr().cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(s[24..].as_ptr().cast())),
                    ]
                }
            }
        };
        for (acc, x) in acc.iter_mut().zip(xs) {
            let x = &x[c..c + 32];
            for q in 0..4 {
                let xv = unsafe { _mm256_loadu_ps(x[8 * q..].as_ptr()) };
                acc[q] = _mm256_fmadd_ps(wv[q], xv, acc[q]);
            }
        }
    }
    let mut out = [0.0f32; R];
    for ((o, a), x) in out.iter_mut().zip(&acc).zip(xs) {
        let v = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        *o = tail(w, x, whole, n, pairwise(lanes));
    }
    out
}

/// Portable: four blocks of 16 lanes, pairs of blocks added, then lanes
/// pairwise.
pub(super) fn dot_rows_portable<const R: usize>(w: Row<'_>, xs: &[&[f32]; R]) -> [f32; R] {
    let n = xs.iter().fold(w.len(), |n, x| n.min(x.len()));
    let whole = n / 64 * 64;
    let mut acc = [[0.0f32; 64]; R];
    let mut wv = [0.0f32; 64];
    for c in (0..whole).step_by(64) {
        for (l, v) in wv.iter_mut().enumerate() {
            *v = w.get(c + l);
        }
        for (acc, x) in acc.iter_mut().zip(xs) {
            for ((a, wl), xl) in acc.iter_mut().zip(&wv).zip(&x[c..c + 64]) {
                *a += wl * xl;
            }
        }
    }
    std::array::from_fn(|r| {
        let a = &acc[r];
        let lanes: [f32; 16] =
            std::array::from_fn(|l| (a[l] + a[32 + l]) + (a[16 + l] + a[48 + l]));
        tail(w, xs[r], whole, n, pairwise(lanes))
    })
}
