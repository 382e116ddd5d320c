//! Vector math on 512-bit registers shared by the CPU's AVX-512 bodies:
//! `exp` sixteen lanes at a time (attention's softmax, SwiGLU's sigmoid).
//!
//! Why not libm's `expf` per lane: it is a call per value (measured
//! ~10% of attention's time, most of SwiGLU's), and the compiler does not
//! vectorise it.
//!
//! Must never: run on a CPU without AVX-512F (callers check
//! `Simd::detect`), or return a NaN for a finite input.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

use std::arch::x86_64::*;

/// `exp(x)` for sixteen lanes (x ≤ 0 here; any finite x works): Cephes'
/// `expf` — `x = n·ln 2 + r`, a degree-5 polynomial in `r`, scaled by
/// `2ⁿ` with `vscalefps` (which also gives 0 far below the range).
#[target_feature(enable = "avx512f")]
pub(super) fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-120.0));
    let x = _mm512_min_ps(x, _mm512_set1_ps(88.7));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

/// `silu(gate) · up = gate · up / (1 + exp(−gate))` over whole slices
/// (the same length), sixteen values at a time, the tail masked.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let one = _mm512_set1_ps(1.0);
    for i in (0..n).step_by(16) {
        let left = n - i;
        let k: __mmask16 = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        // SAFETY (all three): the mask keeps every access inside the
        // slices (`i + popcount(k) <= n`).
        let (g, u) = unsafe {
            (
                _mm512_maskz_loadu_ps(k, gate.as_ptr().add(i)),
                _mm512_maskz_loadu_ps(k, up.as_ptr().add(i)),
            )
        };
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let v = _mm512_div_ps(_mm512_mul_ps(g, u), _mm512_add_ps(one, e));
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, v) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Simd;

    #[test]
    fn the_vector_exp_is_within_2_ulp_of_expf() {
        if Simd::detect() != Simd::Avx512 {
            return;
        }
        let mut worst = 0u32;
        let xs: Vec<f32> = (0..16 * 2000).map(|i| -90.0 + i as f32 * 0.00285).collect();
        for chunk in xs.chunks_exact(16) {
            // SAFETY: AVX-512F detected above; 16 values loaded.
            #[allow(unsafe_code)]
            let got: [f32; 16] =
                unsafe { std::mem::transmute(exp16(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (x, g) in chunk.iter().zip(got) {
                let want = x.exp();
                if want.is_normal() {
                    worst = worst.max(g.to_bits().abs_diff(want.to_bits()));
                } else {
                    assert!(g.abs() <= f32::MIN_POSITIVE, "exp({x}) = {g}");
                }
            }
        }
        assert!(worst <= 2, "{worst} ulp");
        // SAFETY: AVX-512F detected above.
        #[allow(unsafe_code)]
        let far: [f32; 16] = unsafe { std::mem::transmute(exp16(_mm512_set1_ps(-1e30))) };
        assert_eq!(far, [0.0; 16], "far below the range is exactly 0");
    }

    #[test]
    fn the_vector_silu_matches_the_scalar_one() {
        if Simd::detect() != Simd::Avx512 {
            return;
        }
        // 37 values: two whole vectors and a masked tail.
        let gate: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.9).collect();
        let up: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut out = [7.0f32; 38];
        // SAFETY: AVX-512F detected above.
        unsafe { silu_mul(&gate, &up, &mut out[..37]) };
        for i in 0..37 {
            let want = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
            assert!(
                (out[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{i}: {} vs {want}",
                out[i]
            );
        }
        assert_eq!(out[37], 7.0, "nothing written past the slice");
    }
}
