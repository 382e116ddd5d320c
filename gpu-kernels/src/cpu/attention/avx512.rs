//! The AVX-512 body of CPU attention: one query row's heads of one KV
//! group over its positions, with every inner loop in 512-bit registers —
//! scores sixteen positions at a time (each key read and widened once for
//! all the heads of the group, the sixteen partial dot products summed by
//! one transposing tree instead of sixteen horizontal sums), the
//! exponentials sixteen at a time (a polynomial with `vscalefps`, within
//! 2 ulp of `expf`, in `vmath`), and each head's output held in registers
//! while the values stream past.
//!
//! Why not the portable body compiled for AVX-512: LLVM keeps its scalar
//! order of summation (a horizontal sum per position and head, ~30
//! dependent instructions) and the output in memory; measured with a
//! 16-sequence decode step, attention took ~18% of the step.
//!
//! Must never: read a position outside `first..first + n` (the caller
//! gives each position's offset, checked against the cache), or run on a
//! CPU without AVX-512F (`Simd::detect` decides).

#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

use super::KvElem;
use crate::cpu::vmath::exp16;
use std::arch::x86_64::*;

/// The most query heads per KV head this body takes (the Llama, Mistral
/// and Qwen families use 1 to 8); more take the portable body.
pub(super) const MAX_GROUP: usize = 8;

/// The largest head dimension this body takes (a multiple of 16).
pub(super) const MAX_HEAD_DIM: usize = 256;

/// How many positions ahead the scores loop prefetches keys and values.
const AHEAD: usize = 8;

/// What one task attends with: keys and values of `n` positions (the
/// offset of position `i` in `k` and `v` from `at(i)`, `i < n`), a group
/// of query heads `q` (`group × hd`, one head after another) and its
/// output `o` (the same shape).
pub(super) struct Task<'a, T, F> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub at: F,
    pub n: usize,
    pub hd: usize,
    pub scale: f32,
}

impl<T: KvElem, F: Fn(usize) -> usize> Task<'_, T, F> {
    /// softmax(q·Kᵀ·scale)·V for each head of `q` into `o`.
    ///
    /// # Safety
    /// AVX-512F. `hd` a multiple of 16 up to `MAX_HEAD_DIM`, `q.len() ==
    /// o.len() == group × hd` with `group <= MAX_GROUP`, and `at(i) + hd`
    /// within `k` and `v` for every `i < n` (checked: a position outside
    /// panics on the slice, it is never read).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(&self, q: &[f32], o: &mut [f32]) {
        let (n, hd) = (self.n, self.hd);
        let group = q.len() / hd;
        let padded = n.div_ceil(16) * 16;
        // Head `g`'s scores at `g * padded..`, then its exponentials.
        let mut scores = vec![0.0f32; group * padded];
        let mut sums = [0.0f32; MAX_GROUP];
        // SAFETY (every block below): AVX-512F (this function's
        // feature); loads and stores stay inside slices checked here.
        unsafe {
            self.scores(q, group, padded, &mut scores);
            for (g, sum) in sums.iter_mut().enumerate().take(group) {
                *sum = softmax_numerators(&mut scores[g * padded..][..n]);
            }
            for (g, (oh, sum)) in o.chunks_exact_mut(hd).zip(sums).enumerate() {
                self.weighted_values(&scores[g * padded..][..n], 1.0 / sum, oh);
            }
        }
    }

    /// Every head's scaled scores, sixteen positions at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn scores(&self, q: &[f32], group: usize, padded: usize, scores: &mut [f32]) {
        let (n, hd) = (self.n, self.hd);
        let chunks = hd / 16;
        let scale = _mm512_set1_ps(self.scale);
        // The partial dot products of sixteen positions, per head.
        let mut parts = [[_mm512_setzero_ps(); 16]; MAX_GROUP];
        for block in (0..n).step_by(16) {
            let m = (n - block).min(16);
            for i in 0..m {
                // The key and value of a position a few ahead, fetched
                // while this one is computed: positions sit in scattered
                // blocks, so the hardware cannot guess them.
                if block + i + AHEAD < n {
                    self.prefetch((self.at)(block + i + AHEAD));
                }
                let key = &self.k[(self.at)(block + i)..][..hd];
                let mut kc = [_mm512_setzero_ps(); MAX_HEAD_DIM / 16];
                for (c, kv) in kc.iter_mut().enumerate().take(chunks) {
                    // SAFETY: `key` holds `hd = 16 × chunks` elements.
                    *kv = unsafe { T::load16(key.as_ptr().add(16 * c)) };
                }
                for (g, part) in parts.iter_mut().enumerate().take(group) {
                    let qh = &q[g * hd..][..hd];
                    let mut acc = _mm512_setzero_ps();
                    for (c, kv) in kc.iter().enumerate().take(chunks) {
                        // SAFETY: `qh` holds `hd` values.
                        let qv = unsafe { _mm512_loadu_ps(qh.as_ptr().add(16 * c)) };
                        acc = _mm512_fmadd_ps(qv, *kv, acc);
                    }
                    part[i] = acc;
                }
            }
            for (g, part) in parts.iter_mut().enumerate().take(group) {
                // Positions past the last read nothing: zero partials.
                part[m..].fill(_mm512_setzero_ps());
                let s = _mm512_mul_ps(sum16(part), scale);
                // SAFETY: `scores` holds `group × padded` values and
                // `block + 16 <= padded`.
                unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(g * padded + block), s) };
            }
        }
    }

    /// Asks for the cache lines of the key and the value at `offset`.
    #[inline(always)]
    fn prefetch(&self, offset: usize) {
        for cache in [self.k, self.v] {
            let Some(x) = cache.get(offset..offset + self.hd) else {
                continue;
            };
            let bytes = std::mem::size_of_val(x);
            for line in (0..bytes).step_by(64) {
                // SAFETY: `line < bytes`: inside the slice (and a
                // prefetch never faults).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().cast::<i8>().add(line)) };
            }
        }
    }

    /// `o = inv_sum · Σᵢ wᵢ · vᵢ`, 64 dimensions at a time (four
    /// accumulators in registers), then the rest 16 at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_values(&self, w: &[f32], inv_sum: f32, o: &mut [f32]) {
        let mut d = 0;
        // SAFETY (all three): `d + 16 × C <= hd = o.len()`.
        while d + 64 <= self.hd {
            unsafe { self.values_slice::<4>(w, inv_sum, d, o) };
            d += 64;
        }
        while d + 32 <= self.hd {
            unsafe { self.values_slice::<2>(w, inv_sum, d, o) };
            d += 32;
        }
        while d + 16 <= self.hd {
            unsafe { self.values_slice::<1>(w, inv_sum, d, o) };
            d += 16;
        }
    }

    /// Dimensions `d..d + 16·C` of the weighted sum.
    #[target_feature(enable = "avx512f")]
    unsafe fn values_slice<const C: usize>(
        &self,
        w: &[f32],
        inv_sum: f32,
        d: usize,
        o: &mut [f32],
    ) {
        let mut acc = [_mm512_setzero_ps(); C];
        for (i, &wi) in w.iter().enumerate() {
            let value = &self.v[(self.at)(i) + d..][..16 * C];
            let wv = _mm512_set1_ps(wi);
            for (c, a) in acc.iter_mut().enumerate() {
                // SAFETY: `value` holds `16 × C` elements.
                let vv = unsafe { T::load16(value.as_ptr().add(16 * c)) };
                *a = _mm512_fmadd_ps(wv, vv, *a);
            }
        }
        let scale = _mm512_set1_ps(inv_sum);
        let out = &mut o[d..][..16 * C];
        for (c, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds `16 × C` values.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(*a, scale)) };
        }
    }
}

/// Replaces each score by `exp(score − max)` and returns their sum.
#[target_feature(enable = "avx512f")]
unsafe fn softmax_numerators(s: &mut [f32]) -> f32 {
    let n = s.len();
    let tail = |i: usize| -> __mmask16 {
        let m = (n - i).min(16);
        if m == 16 {
            0xffff
        } else {
            (1u16 << m) - 1
        }
    };
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(16) {
        // SAFETY: the mask keeps the load inside `s`.
        let v = unsafe { _mm512_maskz_loadu_ps(tail(i), s.as_ptr().add(i)) };
        max = _mm512_mask_max_ps(max, tail(i), max, v);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let k = tail(i);
        // SAFETY (both): the mask keeps the load and the store inside `s`.
        let v = unsafe { _mm512_maskz_loadu_ps(k, s.as_ptr().add(i)) };
        let e = exp16(_mm512_sub_ps(v, max));
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr().add(i), k, e) };
        sum = _mm512_mask_add_ps(sum, k, sum, e);
    }
    _mm512_reduce_add_ps(sum)
}

/// `[Σ parts[0], …, Σ parts[15]]`: sixteen horizontal sums as one tree
/// of shuffles and adds (45 instructions for all sixteen).
#[target_feature(enable = "avx512f")]
fn sum16(p: &[__m512; 16]) -> __m512 {
    // Pairs: within each 128-bit lane, [a0+a2, b0+b2, a1+a3, b1+b3].
    let pair =
        |a: __m512, b: __m512| _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let t: [__m512; 8] = std::array::from_fn(|j| pair(p[2 * j], p[2 * j + 1]));
    // Quads: within each 128-bit lane, that lane's sum of 4 sources.
    let quad = |a: __m512, b: __m512| {
        let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    };
    let u: [__m512; 4] = std::array::from_fn(|j| quad(t[2 * j], t[2 * j + 1]));
    // Lanes: (0 + 1, 2 + 3) of each, then all four.
    let lanes = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    };
    let w01 = lanes(u[0], u[1]);
    let w23 = lanes(u[2], u[3]);
    lanes(w01, w23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Simd;

    #[test]
    fn sixteen_sums_at_once_are_sixteen_horizontal_sums() {
        if Simd::detect() != Simd::Avx512 {
            return;
        }
        let vals: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0)
            .collect();
        // SAFETY: AVX-512F detected above; every load reads 16 of `vals`.
        #[allow(unsafe_code)]
        let got: [f32; 16] = unsafe {
            let p: [__m512; 16] =
                std::array::from_fn(|i| _mm512_loadu_ps(vals.as_ptr().add(16 * i)));
            std::mem::transmute(sum16(&p))
        };
        for (i, g) in got.iter().enumerate() {
            let want: f32 = vals[16 * i..16 * i + 16].iter().sum();
            assert!((g - want).abs() < 1e-4, "sum {i}: {g} vs {want}");
        }
    }
}
