//! The AVX-512 body of CPU attention: the heads of one KV group for one
//! query row, or for a tile of rows of one sequence, over their positions,
//! with every inner loop in 512-bit registers — scores sixteen positions at
//! a time (each key read and widened once for all the heads of all the
//! rows, the sixteen partial dot products summed by one transposing tree
//! instead of sixteen horizontal sums), the exponentials sixteen at a time
//! (a polynomial with `vscalefps`, within 2 ulp of `expf`, in `vmath`), and
//! the outputs of up to four heads held in registers while the values
//! stream past (each value read once for them).
//!
//! Why not the portable body compiled for AVX-512: LLVM keeps its scalar
//! order of summation (a horizontal sum per position and head, ~30
//! dependent instructions) and the output in memory; measured with a
//! 16-sequence decode step, attention took ~18% of the step.
//!
//! Must never: read a position outside the offsets the caller gives
//! (checked against the cache), weight a position past a row's own `n`,
//! make a head's result depend on the other heads or rows of its task, or
//! run on a CPU without AVX-512F (`Simd::detect` decides).
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

use super::KvElem;
use crate::cpu::vmath::exp16;
use std::arch::x86_64::*;

/// The most query heads per KV head this body takes (the Llama, Mistral
/// and Qwen families use 1 to 8); more take the portable body.
pub(super) const MAX_GROUP: usize = 8;

/// The most heads one task scores at once: a tile's rows × its group.
pub(super) const MAX_HEADS: usize = 16;

/// The largest head dimension this body takes (a multiple of 16).
pub(super) const MAX_HEAD_DIM: usize = 256;

/// How many positions ahead the scores loop prefetches keys, and the
/// values loop values.
const AHEAD: usize = 8;

/// The most heads whose weighted sums are built from one read of the
/// values (four heads × four registers of a 64-wide slice: sixteen
/// accumulators, within the 32 registers).
const VALUE_HEADS: usize = 4;

/// What one task attends with: keys and values of up to `at.len()`
/// positions (position `i`'s key and value start at `at[i] + base` in `k`
/// and `v`), a head dimension and the scores' scale.
pub(super) struct Task<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub at: &'a [usize],
    pub base: usize,
    pub hd: usize,
    pub scale: f32,
}

impl<T: KvElem> Task<'_, T> {
    /// For each row `r` of `q` (`group` heads of `hd`, one after
    /// another): softmax(q·Kᵀ·scale)·V of each head over positions
    /// `0..n[r]`, into the same place of `o`. Each key is read once for
    /// every head of every row, each value once for up to
    /// `VALUE_HEADS` heads of a row. A head's arithmetic does not depend
    /// on the other rows or heads of the task.
    ///
    /// # Safety
    /// AVX-512F. `hd` a multiple of 16 up to `MAX_HEAD_DIM`, `group` at
    /// most `MAX_GROUP`, `q.len() == o.len() == n.len() × group × hd` with
    /// at most `MAX_HEADS` heads, every `n[r] <= at.len()`, and `at[i] +
    /// base + hd` within `k` and `v` for every `i` (checked: a position
    /// outside panics on the slice, it is never read).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(&self, q: &[f32], group: usize, n: &[usize], o: &mut [f32]) {
        let hd = self.hd;
        let heads = q.len() / hd;
        let most = n.iter().copied().max().unwrap_or(0);
        let padded = most.div_ceil(16) * 16;
        // Head `h`'s scores at `h * padded..`, then its exponentials.
        let mut scores = vec![0.0f32; heads * padded];
        // SAFETY (every block below): AVX-512F (this function's
        // feature); loads and stores stay inside slices checked here.
        unsafe {
            // The common head dimensions with their key in registers.
            match hd / 16 {
                4 => self.scores::<4>(q, heads, most, padded, &mut scores),
                8 => self.scores::<8>(q, heads, most, padded, &mut scores),
                _ => self.scores::<0>(q, heads, most, padded, &mut scores),
            }
            for (r, &nr) in n.iter().enumerate() {
                let mut inv = [0.0f32; MAX_GROUP];
                for (g, inv) in inv.iter_mut().enumerate().take(group) {
                    let h = r * group + g;
                    *inv = 1.0 / softmax_numerators(&mut scores[h * padded..][..nr]);
                }
                let row = &scores[r * group * padded..][..group * padded];
                let out = &mut o[r * group * hd..][..group * hd];
                self.weighted_values(row, padded, nr, &inv[..group], out);
            }
        }
    }

    /// Every head's scaled scores over positions `0..n`, sixteen
    /// positions at a time. `CH`: the head dimension's 16-lane chunks when
    /// known at compile time (its loops unrolled, the key held in
    /// registers), or 0.
    #[target_feature(enable = "avx512f")]
    unsafe fn scores<const CH: usize>(
        &self,
        q: &[f32],
        heads: usize,
        n: usize,
        padded: usize,
        scores: &mut [f32],
    ) {
        let hd = self.hd;
        let chunks = if CH > 0 { CH } else { hd / 16 };
        let scale = _mm512_set1_ps(self.scale);
        // The partial dot products of sixteen positions, per head.
        let mut parts = [[_mm512_setzero_ps(); 16]; MAX_HEADS];
        for block in (0..n).step_by(16) {
            let m = (n - block).min(16);
            for i in 0..m {
                // The key of a position a few ahead, fetched while this
                // one is computed: positions sit in scattered blocks, so
                // the hardware cannot guess them.
                if let Some(&ahead) = self.at.get(block + i + AHEAD) {
                    prefetch(self.k, ahead + self.base, self.hd);
                }
                let key = &self.k[self.at[block + i] + self.base..][..hd];
                let mut kc = [_mm512_setzero_ps(); MAX_HEAD_DIM / 16];
                for (c, kv) in kc.iter_mut().enumerate().take(chunks) {
                    // SAFETY: `key` holds `hd = 16 × chunks` elements.
                    *kv = unsafe { T::load16(key.as_ptr().add(16 * c)) };
                }
                for (h, part) in parts.iter_mut().enumerate().take(heads) {
                    let qh = &q[h * hd..][..hd];
                    let mut acc = _mm512_setzero_ps();
                    for (c, kv) in kc.iter().enumerate().take(chunks) {
                        // SAFETY: `qh` holds `hd` values.
                        let qv = unsafe { _mm512_loadu_ps(qh.as_ptr().add(16 * c)) };
                        acc = _mm512_fmadd_ps(qv, *kv, acc);
                    }
                    part[i] = acc;
                }
            }
            for (h, part) in parts.iter_mut().enumerate().take(heads) {
                // Positions past the last read nothing: zero partials.
                part[m..].fill(_mm512_setzero_ps());
                let s = _mm512_mul_ps(sum16(part), scale);
                // SAFETY: `scores` holds `heads × padded` values and
                // `block + 16 <= padded`.
                unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(h * padded + block), s) };
            }
        }
    }

    /// `o_g = inv_g · Σᵢ w_gᵢ · vᵢ` for the heads `g` of one row (`w`: head
    /// `g`'s numerators at `g * padded..`, `n` of them), up to
    /// `VALUE_HEADS` heads per read of the values, 64 dimensions at a time
    /// and then the rest 16 at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_values(
        &self,
        w: &[f32],
        padded: usize,
        n: usize,
        inv: &[f32],
        o: &mut [f32],
    ) {
        let group = inv.len();
        let mut h0 = 0;
        while h0 < group {
            let hs = (group - h0).min(VALUE_HEADS);
            let mut at = Slice {
                w,
                padded,
                n,
                inv,
                h0,
                d: 0,
            };
            // SAFETY (all): `d + 16 × C <= hd`, `h0 + hs <= group`.
            while at.d + 64 <= self.hd {
                unsafe { self.values_by_heads::<4>(hs, &at, o) };
                at.d += 64;
            }
            while at.d + 32 <= self.hd {
                unsafe { self.values_by_heads::<2>(hs, &at, o) };
                at.d += 32;
            }
            while at.d + 16 <= self.hd {
                unsafe { self.values_by_heads::<1>(hs, &at, o) };
                at.d += 16;
            }
            h0 += hs;
        }
    }

    /// `values_slice` for `hs` heads (1 to `VALUE_HEADS`), each a
    /// compile-time count so its accumulators stay in registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn values_by_heads<const C: usize>(&self, hs: usize, at: &Slice<'_>, o: &mut [f32]) {
        // SAFETY: the caller's guarantee, with `H == hs`.
        unsafe {
            match hs {
                1 => self.values_slice::<1, C>(at, o),
                2 => self.values_slice::<2, C>(at, o),
                3 => self.values_slice::<3, C>(at, o),
                _ => self.values_slice::<4, C>(at, o),
            }
        }
    }

    /// Dimensions `d..d + 16·C` of the weighted sums of heads `h0..h0 +
    /// H`: each value read once for the `H` heads.
    #[target_feature(enable = "avx512f")]
    unsafe fn values_slice<const H: usize, const C: usize>(&self, at: &Slice<'_>, o: &mut [f32]) {
        let mut acc = [[_mm512_setzero_ps(); C]; H];
        let ws: [&[f32]; H] = std::array::from_fn(|h| &at.w[(at.h0 + h) * at.padded..][..at.n]);
        for i in 0..at.n {
            // As for the keys: the values' positions are scattered, and
            // the scores pass is long gone from this cache level.
            if let Some(&ahead) = self.at.get(i + AHEAD) {
                prefetch(self.v, ahead + self.base + at.d, 16 * C);
            }
            let value = &self.v[self.at[i] + self.base + at.d..][..16 * C];
            // SAFETY: `value` holds `16 × C` elements.
            let vv: [__m512; C] =
                std::array::from_fn(|c| unsafe { T::load16(value.as_ptr().add(16 * c)) });
            for (a, w) in acc.iter_mut().zip(&ws) {
                let wv = _mm512_set1_ps(w[i]);
                for (a, v) in a.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(wv, *v, *a);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            let scale = _mm512_set1_ps(at.inv[at.h0 + h]);
            let out = &mut o[(at.h0 + h) * self.hd + at.d..][..16 * C];
            for (c, a) in a.iter().enumerate() {
                // SAFETY: `out` holds `16 × C` values.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(*a, scale)) };
            }
        }
    }
}

/// Where one slice of weighted sums reads its weights and writes.
struct Slice<'a> {
    w: &'a [f32],
    padded: usize,
    n: usize,
    inv: &'a [f32],
    h0: usize,
    d: usize,
}

/// Asks for the cache lines of `len` elements of `cache` at `offset`.
#[inline(always)]
fn prefetch<T>(cache: &[T], offset: usize, len: usize) {
    let Some(x) = cache.get(offset..offset + len) else {
        return;
    };
    let bytes = std::mem::size_of_val(x);
    for line in (0..bytes).step_by(64) {
        // SAFETY: `line < bytes`: inside the slice (and a prefetch never
        // faults).
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().cast::<i8>().add(line))
        };
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
