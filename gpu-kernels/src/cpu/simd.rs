//! The GEMV inner loops in x86 SIMD intrinsics: one weight row, read and
//! widened once, dotted with up to `R` activation rows whose accumulators
//! stay in registers.
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

/// AVX-512: 64 elements per step (four registers per row); `R` ≤ 4
/// keeps 16 accumulators and 4 weight registers of the 32.
///
/// # Safety
/// The CPU must support AVX-512F (`Simd::detect`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_rows_avx512<const R: usize>(w: Row<'_>, xs: &[&[f32]; R]) -> [f32; R] {
    let n = xs.iter().fold(w.len(), |n, x| n.min(x.len()));
    let whole = n / 64 * 64;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for c in (0..whole).step_by(64) {
        // SAFETY (every load below): `c + 64 <= whole <= len` of the
        // slice loaded from, and each load reads 16 elements at
        // `c + 16q`, q < 4, through a sub-slice whose indexing checked it.
        let wv: [__m512; 4] = match w {
            Row::F32(s) => {
                let s = &s[c..c + 64];
                unsafe {
                    [
                        _mm512_loadu_ps(s[..16].as_ptr()),
                        _mm512_loadu_ps(s[16..32].as_ptr()),
                        _mm512_loadu_ps(s[32..48].as_ptr()),
                        _mm512_loadu_ps(s[48..].as_ptr()),
                    ]
                }
            }
            Row::BF16(s) => {
                let s = &s[c..c + 64];
                let wide = |h: __m256i| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                };
                unsafe {
                    [
                        wide(_mm256_loadu_si256(s[..16].as_ptr().cast())),
                        wide(_mm256_loadu_si256(s[16..32].as_ptr().cast())),
                        wide(_mm256_loadu_si256(s[32..48].as_ptr().cast())),
                        wide(_mm256_loadu_si256(s[48..].as_ptr().cast())),
                    ]
                }
            }
            Row::F16(s) => {
                let s = &s[c..c + 64];
                unsafe {
                    [
                        _mm512_cvtph_ps(_mm256_loadu_si256(s[..16].as_ptr().cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(s[16..32].as_ptr().cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(s[32..48].as_ptr().cast())),
                        _mm512_cvtph_ps(_mm256_loadu_si256(s[48..].as_ptr().cast())),
                    ]
                }
            }
        };
        for (acc, x) in acc.iter_mut().zip(xs) {
            let x = &x[c..c + 64];
            for q in 0..4 {
                let xv = unsafe { _mm512_loadu_ps(x[16 * q..].as_ptr()) };
                acc[q] = _mm512_fmadd_ps(wv[q], xv, acc[q]);
            }
        }
    }
    let mut out = [0.0f32; R];
    for ((o, a), x) in out.iter_mut().zip(&acc).zip(xs) {
        let v = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        let mut lanes = [0.0f32; 16];
        // SAFETY: `lanes` holds 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        *o = tail(w, x, whole, n, pairwise(lanes));
    }
    out
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
        // SAFETY: as in `dot_rows_avx512`, with 8-element loads at
        // `c + 8q`, q < 4, `c + 32 <= whole`.
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

/// Portable: the same order of operations as the AVX-512 body (four
/// blocks of 16 lanes, pairs of blocks added, then lanes pairwise).
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
