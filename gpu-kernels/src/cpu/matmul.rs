//! `out = x · wᵀ (+ bias)` on the CPU, weights read in their stored dtype.
//!
//! Three paths. bf16 weights on a CPU with AVX512-BF16 meet the
//! activations rounded to bf16 once, in `vdpbf16ps` tiles, at any number
//! of rows (measured 1.4–2.3× the f32 tile at 1–64 rows and 1.6–2.2×
//! `gemm` at 128–512; llama.cpp's bf16 dot product rounds its activations
//! the same way). Otherwise a few rows (decode) stream each weight row
//! once from memory and dot it with every row of `x` while it sits in L1
//! (memory-bound: what matters is reading bf16 as bf16), and many rows
//! (prefill) convert a block of weight rows to f32 once and hand it to
//! the `gemm` crate (compute-bound: what matters is a tuned
//! micro-kernel). Every path spreads blocks of output rows over the pool,
//! and the tile paths sum a row's products in one order whatever it is
//! batched with. SIMD width is chosen at run time:
//! the bodies are plain Rust compiled three times, with AVX-512, with
//! AVX2+FMA and portably.
//!
//! Must never: call `gemm` without checking the three slices against the
//! dimensions and strides it is given (its entry point is `unsafe`).

use super::ops::bias_values;
use super::out::{Base, Out};
use super::simd::{self, Row};
use super::{Mat, Simd};
use crate::weight::bf16_to_f32;
use crate::{shape, Elems, HostWeight, KernelError, Layout, TILE_CHUNK, TILE_ROWS};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Up to this many rows take the streaming (GEMV) path by default
/// (`Cpu::with_gemv_max_rows` changes it; `lattice-load-worker --kernels`
/// measures both paths). With the AVX-512 tile the GEMV is ahead of
/// `gemm` up to ~128 rows (measured 2026-12-03: 112–159 against 41–105
/// GFLOP/s at 48–64 rows, even at 128, behind at 512).
pub const GEMV_MAX_ROWS: usize = 64;

/// How this CPU multiplies: its SIMD, its threads, up to how many rows
/// the GEMV takes (rather than `gemm`), and whether bf16 weights meet
/// bf16-rounded activations in `vdpbf16ps` at any number of rows
/// (AVX512-BF16) instead.
#[derive(Debug, Clone, Copy)]
pub(super) struct Paths {
    pub simd: Simd,
    pub threads: usize,
    pub gemv_max_rows: usize,
    pub bf16_dot: bool,
}

impl Paths {
    /// What the running CPU offers, with the default GEMV bound.
    pub fn detect(threads: usize) -> Self {
        let simd = Simd::detect();
        #[cfg(target_arch = "x86_64")]
        let bf16_dot = simd == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        let bf16_dot = false;
        Self {
            simd,
            threads,
            gemv_max_rows: GEMV_MAX_ROWS,
            bf16_dot,
        }
    }
}

/// One product of a call: `out = x · wᵀ (+ bias)`.
pub(super) struct Product<'a> {
    pub w: &'a HostWeight,
    pub bias: Option<&'a HostWeight>,
    pub out: &'a mut Mat,
}

pub(super) fn matmul(
    paths: Paths,
    x: &Mat,
    w: &HostWeight,
    bias: Option<&HostWeight>,
    out: &mut Mat,
) -> Result<(), KernelError> {
    matmul_many(paths, x, &mut [Product { w, bias, out }])
}

/// A product of a call, checked: its weight's elements, its output's
/// width and first value, its bias and how many weight rows a block takes.
struct Plan<'a> {
    elems: Elems<'a>,
    tiled: bool,
    n_out: usize,
    block: usize,
    bias: Option<std::borrow::Cow<'a, [f32]>>,
    base: Base,
}

/// Several products of one input in one dispatch over the pool (the
/// attention's Q, K and V; the MLP's gate and up): the input is rounded
/// to bf16 once for all of them, and the threads take blocks of every
/// product from one queue instead of meeting at a barrier after each.
pub(super) fn matmul_many(
    paths: Paths,
    x: &Mat,
    products: &mut [Product<'_>],
) -> Result<(), KernelError> {
    let Paths {
        simd,
        threads,
        gemv_max_rows,
        bf16_dot,
    } = paths;
    let t = x.rows;
    let k = x.cols;
    // Each product checked, its bias read, its blocks sized.
    let mut plans = Vec::with_capacity(products.len());
    for p in products.iter_mut() {
        let [n_out, w_k] = *p.w.shape() else {
            return Err(shape("matmul", format!("{} is not a matrix", p.w.name())));
        };
        if w_k != k || p.out.rows != t || p.out.cols != n_out || p.out.data.len() != t * n_out {
            return Err(shape(
                "matmul",
                format!(
                    "x {}×{} · {} {:?}ᵀ into {}×{}",
                    t,
                    k,
                    p.w.name(),
                    p.w.shape(),
                    p.out.rows,
                    p.out.cols
                ),
            ));
        }
        let bias = p.bias.map(|b| bias_values(b, n_out)).transpose()?;
        let tiled = p.w.layout() == Layout::Tiles;
        if tiled && !bf16_dot {
            return Err(shape(
                "matmul",
                format!(
                    "{} is tiled for `vdpbf16ps`, which this CPU path does not run",
                    p.w.name()
                ),
            ));
        }
        let block = if t <= gemv_max_rows {
            // Enough blocks for every thread to stay busy, small enough
            // to balance: ~8 per thread; whole tiles.
            (n_out / (threads * 8))
                .clamp(16, 512)
                .next_multiple_of(TILE_ROWS)
        } else {
            // 128 weight rows per `gemm` call: measured (`--kernels`)
            // ahead of 512 at 128-row chunks (+10-15%), even at 512-row
            // ones.
            128
        };
        plans.push(Plan {
            elems: p.w.elems(),
            tiled,
            n_out,
            block,
            bias,
            base: Base(p.out.data.as_mut_ptr()),
        });
    }
    if t == 0 {
        return Ok(());
    }
    let many = t > gemv_max_rows;
    // The activations rounded to bf16 once, for `vdpbf16ps`.
    #[cfg(target_arch = "x86_64")]
    let x_bf16: Option<Vec<u16>> =
        if bf16_dot && plans.iter().any(|p| matches!(p.elems, Elems::BF16(_))) {
            let mut v = vec![0u16; x.data.len()];
            #[allow(unsafe_code)]
            v.par_chunks_mut(k.max(1))
                .zip(x.data.par_chunks(k.max(1)))
                // SAFETY: `bf16_dot` is set only where AVX-512F and
                // AVX512-BF16 were detected.
                .for_each(|(d, s)| unsafe { simd::to_bf16_avx512(s, d) });
            Some(v)
        } else {
            None
        };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bf16_dot;
    let jobs: Vec<(usize, usize)> = plans
        .iter()
        .enumerate()
        .flat_map(|(i, p)| (0..p.n_out.div_ceil(p.block)).map(move |b| (i, b)))
        .collect();
    // Each block of output columns is written straight into its columns
    // of its product's output: no zeroed scratch, no copy back.
    jobs.into_par_iter().for_each(|(i, b)| {
        let Plan {
            elems,
            tiled,
            n_out,
            block,
            base,
            ..
        } = &plans[i];
        let (elems, n_out) = (*elems, *n_out);
        let o0 = b * block;
        let ob = (*block).min(n_out - o0);
        // SAFETY: the output holds `t × n_out` values (checked above), and
        // block `b` of product `i` alone takes columns `o0..o0 + ob`
        // (`o0 + ob <= n_out`).
        #[allow(unsafe_code)]
        let mut part = unsafe { Out::columns(base, t, n_out, o0, ob) };
        #[cfg(target_arch = "x86_64")]
        if let (Some(xb), Elems::BF16(w)) = (&x_bf16, elems) {
            let rows = Rows {
                w,
                tiled: *tiled,
                k,
            };
            bf16_block(&rows, o0, ob, xb, &mut part);
            return;
        }
        if many {
            gemm_block(elems, o0, ob, k, x, &mut part);
        } else {
            gemv_block(simd, elems, o0, ob, k, x, &mut part);
        }
    });
    for (p, plan) in products.iter_mut().zip(&plans) {
        if let Some(bias) = &plan.bias {
            for row in p.out.data.chunks_exact_mut(plan.n_out) {
                for (o, b) in row.iter_mut().zip(bias.iter()) {
                    *o += b;
                }
            }
        }
    }
    Ok(())
}

/// Dot products of weight rows `o0..o0+ob` with every row of `x`:
/// `out[r][j] = x[r] · w[o0 + j]`. Rows of `x` are taken a few at
/// a time (4 with AVX-512, 2 with AVX2): each weight element is read and
/// widened once for all of them, so a batch of decoding sequences costs
/// little more than one. With AVX-512 and two rows or more, four weight
/// rows are taken at a time too, so that each activation loaded serves
/// four products: measured (`--kernels`, 2 threads, one noisy run),
/// 1.7–2.2× the single-row body's GFLOP/s at 4–16 rows.
fn gemv_block(
    simd: Simd,
    w: Elems<'_>,
    o0: usize,
    ob: usize,
    k: usize,
    x: &Mat,
    out: &mut Out<'_>,
) {
    let at = Block { w, o0, ob, k, x };
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => {
            // SAFETY: `Simd::detect` found AVX-512F on this CPU.
            #[allow(unsafe_code)]
            unsafe {
                gemv_avx512(&at, out)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => {
            // SAFETY: `Simd::detect` found AVX2, FMA and F16C on this CPU.
            #[allow(unsafe_code)]
            unsafe {
                gemv_avx2(&at, out)
            }
        }
        _ => {
            let mut r0 = 0;
            while r0 < x.rows {
                r0 += match x.rows - r0 {
                    1 => at.rows::<1>(r0, out, simd::dot_rows_portable::<1>),
                    2 => at.rows::<2>(r0, out, simd::dot_rows_portable::<2>),
                    3 => at.rows::<3>(r0, out, simd::dot_rows_portable::<3>),
                    _ => at.rows::<4>(r0, out, simd::dot_rows_portable::<4>),
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn gemv_avx512(at: &Block<'_, '_>, out: &mut Out<'_>) {
    // SAFETY (each call): this function runs only where AVX-512F is.
    match at.w {
        Elems::F32(w) => unsafe { tiles_avx512(at, w, out) },
        Elems::BF16(w) => unsafe { tiles_avx512(at, w, out) },
        Elems::F16(w) => unsafe { tiles_avx512(at, w, out) },
    }
}

/// Rows of `x` four at a time (then the rest), against tiles of weight
/// rows (`simd::dot_tile_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code)]
unsafe fn tiles_avx512<T: simd::Wide16>(at: &Block<'_, '_>, w: &[T], out: &mut Out<'_>) {
    // SAFETY (each call): this function runs only where AVX-512F is.
    let mut r0 = 0;
    while r0 < at.x.rows {
        r0 += match at.x.rows - r0 {
            // One row (decode of one sequence, memory-bound): one weight
            // row at a time, a single sequential stream from memory —
            // measured, four rows' interleaved streams (with or without
            // software prefetch) read the weights at half the rate.
            1 => unsafe { at.tile_rows::<T, 1, 1>(w, r0, out) },
            2 => unsafe { at.tile_rows::<T, 4, 2>(w, r0, out) },
            3 => unsafe { at.tile_rows::<T, 4, 3>(w, r0, out) },
            _ => unsafe { at.tile_rows::<T, 4, 3>(w, r0, out) },
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(unsafe_code)]
unsafe fn gemv_avx2(at: &Block<'_, '_>, out: &mut Out<'_>) {
    // SAFETY (each closure): this function runs only where AVX2, FMA and
    // F16C are.
    let mut r0 = 0;
    while r0 < at.x.rows {
        r0 += match at.x.rows - r0 {
            1 => at.rows::<1>(r0, out, |w, x| unsafe { simd::dot_rows_avx2(w, x) }),
            _ => at.rows::<2>(r0, out, |w, x| unsafe { simd::dot_rows_avx2(w, x) }),
        };
    }
}

/// Weight rows `o0..o0+ob` (of length `k`) against the rows of `x`.
struct Block<'w, 'x> {
    w: Elems<'w>,
    o0: usize,
    ob: usize,
    k: usize,
    x: &'x Mat,
}

impl Block<'_, '_> {
    /// Rows `r0..r0+R` of `x` against the block's weight rows, `O`
    /// weight rows per tile (then one at a time); returns `R`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn tile_rows<T: simd::Wide16, const O: usize, const R: usize>(
        &self,
        w: &[T],
        r0: usize,
        out: &mut Out<'_>,
    ) -> usize {
        let (k, ob) = (self.k, self.ob);
        let xs: [&[f32]; R] = std::array::from_fn(|i| &self.x.row(r0 + i)[..k]);
        let row = |j: usize| &w[(self.o0 + j) * k..(self.o0 + j + 1) * k];
        // SAFETY (both): the caller runs this where AVX-512F is.
        walk_tiles::<O, R>(
            ob,
            r0,
            out,
            |j| unsafe { simd::dot_tile_avx512(&std::array::from_fn(|o| row(j + o)), &xs) },
            |j| unsafe { simd::dot_tile_avx512(&[row(j)], &xs) },
        );
        R
    }

    /// Rows `r0..r0+R` of `x` with `dot`; returns `R`.
    #[inline(always)]
    fn rows<const R: usize>(
        &self,
        r0: usize,
        out: &mut Out<'_>,
        dot: impl Fn(Row<'_>, &[&[f32]; R]) -> [f32; R],
    ) -> usize {
        let (k, ob) = (self.k, self.ob);
        let xs: [&[f32]; R] = std::array::from_fn(|i| &self.x.row(r0 + i)[..k]);
        for j in 0..ob {
            let range = (self.o0 + j) * k..(self.o0 + j + 1) * k;
            let row = match self.w {
                Elems::F32(s) => Row::F32(&s[range]),
                Elems::BF16(s) => Row::BF16(&s[range]),
                Elems::F16(s) => Row::F16(&s[range]),
            };
            for (i, v) in dot(row, &xs).into_iter().enumerate() {
                out.set(r0 + i, j, v);
            }
        }
        R
    }
}

/// A bf16 matrix's rows, `k` elements each, in rows or in tiles.
#[cfg(target_arch = "x86_64")]
struct Rows<'w> {
    w: &'w [u16],
    tiled: bool,
    k: usize,
}

#[cfg(target_arch = "x86_64")]
impl Rows<'_> {
    /// Where row `j`'s elements begin.
    fn row(&self, j: usize) -> &[u16] {
        let k = self.k;
        if self.tiled {
            let tile = j / TILE_ROWS * TILE_ROWS * k;
            &self.w[tile + j % TILE_ROWS * TILE_CHUNK..tile + TILE_ROWS * k]
        } else {
            &self.w[j * k..(j + 1) * k]
        }
    }

    /// The elements from one 32-element chunk of a row to its next
    /// (`simd::dot_tile_bf16`'s `stride`).
    fn stride(&self) -> usize {
        if self.tiled {
            TILE_ROWS * TILE_CHUNK
        } else {
            TILE_CHUNK
        }
    }
}

/// bf16 weight rows `o0..o0+ob` against the bf16-rounded rows of `x`
/// (`xb`, `k` per row) in tiles of 4 weight rows × 3 activation rows
/// (`simd::dot_tile_bf16`). A lone activation row of a matrix in rows
/// takes one weight row at a time (one stream from memory, as the f32
/// tile measured); of a tiled matrix, four (a tile is one stream). The
/// last one or two rows of a batch still take four (the weights are in
/// cache by then). Runs only where `Paths::detect` found AVX-512F and
/// AVX512-BF16.
#[cfg(target_arch = "x86_64")]
fn bf16_block(w: &Rows<'_>, o0: usize, ob: usize, xb: &[u16], out: &mut Out<'_>) {
    let t = xb.len() / w.k.max(1);
    let mut r0 = 0;
    while r0 < t {
        r0 += match (t, t - r0) {
            (1, _) if !w.tiled => bf16_rows::<1, 1>(w, o0, ob, xb, r0, out),
            (_, 1) => bf16_rows::<4, 1>(w, o0, ob, xb, r0, out),
            (_, 2) => bf16_rows::<4, 2>(w, o0, ob, xb, r0, out),
            _ => bf16_rows::<4, 3>(w, o0, ob, xb, r0, out),
        };
    }
}

/// Rows `r0..r0+R` of `xb` against the block; returns `R`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn bf16_rows<const O: usize, const R: usize>(
    w: &Rows<'_>,
    o0: usize,
    ob: usize,
    xb: &[u16],
    r0: usize,
    out: &mut Out<'_>,
) -> usize {
    let (k, stride) = (w.k, w.stride());
    let xs: [&[u16]; R] = std::array::from_fn(|i| &xb[(r0 + i) * k..(r0 + i + 1) * k]);
    // SAFETY (both): `bf16_block` runs only where AVX-512F and
    // AVX512-BF16 were detected.
    walk_tiles::<O, R>(
        ob,
        r0,
        out,
        |j| {
            let ws: [&[u16]; O] = std::array::from_fn(|i| w.row(o0 + j + i));
            unsafe { simd::dot_tile_bf16(&ws, stride, &xs, k) }
        },
        |j| unsafe { simd::dot_tile_bf16(&[w.row(o0 + j)], stride, &xs, k) },
    );
    R
}

/// The block's weight rows `0..ob` in tiles of `O` while `O` are left,
/// then one at a time (`full` and `single`, each given the tile's first
/// weight row `j`), their products with rows `r0..r0+R` of `x` written
/// into `out`: weight row `j + o`, row `r0 + r` at row `r0 + r`, column
/// `j + o`.
#[cfg(target_arch = "x86_64")]
fn walk_tiles<const O: usize, const R: usize>(
    ob: usize,
    r0: usize,
    out: &mut Out<'_>,
    full: impl Fn(usize) -> [[f32; R]; O],
    single: impl Fn(usize) -> [[f32; R]; 1],
) {
    let mut put = |j: usize, tile: &[[f32; R]]| {
        for (o, dots) in tile.iter().enumerate() {
            for (r, v) in dots.iter().enumerate() {
                out.set(r0 + r, j + o, *v);
            }
        }
    };
    let mut j = 0;
    while j < ob {
        if ob - j >= O {
            put(j, &full(j));
            j += O;
        } else {
            put(j, &single(j));
            j += 1;
        }
    }
}

/// Weight rows `o0..o0+ob` converted to f32 once, then `gemm`:
/// `out (t × ob) = x (t × k) · blockᵀ`.
fn gemm_block(w: Elems<'_>, o0: usize, ob: usize, k: usize, x: &Mat, out: &mut Out<'_>) {
    let range = o0 * k..(o0 + ob) * k;
    let converted;
    let block: &[f32] = match w {
        Elems::F32(s) => &s[range],
        Elems::BF16(s) => {
            converted = s[range].iter().map(|&b| bf16_to_f32(b)).collect::<Vec<_>>();
            &converted
        }
        Elems::F16(s) => {
            let mut v = vec![0.0f32; range.len()];
            s[range].convert_to_f32_slice(&mut v);
            converted = v;
            &converted
        }
    };
    sgemm_x_wt(&x.data, x.rows, k, block, ob, out);
}

/// `dst (t × ob) = x (t × k) · w (ob × k)ᵀ`, all row-major (`dst`'s
/// rows `dst.stride` apart).
fn sgemm_x_wt(x: &[f32], t: usize, k: usize, w: &[f32], ob: usize, dst: &mut Out<'_>) {
    if x.len() < t * k || w.len() < ob * k || dst.rows != t || dst.cols != ob {
        return;
    }
    // SAFETY: `x` holds t×k and `w` ob×k elements, and `dst` is a view of
    // t rows × ob columns (checked above) that `Out::columns` made inside
    // its matrix and its own; the strides address exactly those: dst row
    // stride `dst.stride`, column stride 1; lhs row stride k, column
    // stride 1; rhs element (i, o) is w[o·k + i] (row stride 1, column
    // stride k). No slice aliases another.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            t,
            ob,
            k,
            dst.ptr,
            1,
            dst.stride as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests;
