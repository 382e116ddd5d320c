//! The products against weights on the CUDA device: up to
//! [`super::GEMV_MAX_ROWS`] activation rows on Lattice's GEMV kernels (two
//! or three products of one input in one launch), more through cuBLAS
//! (16-bit weights take the activations converted once per group of
//! products, into a buffer kept from step to step).
//!
//! Must never: launch a product whose shapes were not checked against the
//! weight's, or hand cuBLAS a converted input that a later conversion may
//! overwrite before the product ran (both are ordered on the one stream).

use super::backend::{Gemm, Mem};
use super::device::{args, CudaAct, CudaWeight, Scratch};
use super::ops::{elementwise, u32_of, vector};
use super::Cuda;
use crate::{shape, DType, KernelError};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

/// The output features of `x · wᵀ` into `out`, once the shapes agree.
fn product_shape(x: &CudaAct, w: &CudaWeight, out: &CudaAct) -> Result<usize, KernelError> {
    let [outs, inp] = w.shape[..] else {
        return Err(shape("matmul", format!("{} is {:?}", w.name, w.shape)));
    };
    if x.cols != inp || out.rows != x.rows || out.cols != outs {
        return Err(shape(
            "matmul",
            format!(
                "{}×{} · {} {:?}ᵀ into {}×{}",
                x.rows, x.cols, w.name, w.shape, out.rows, out.cols
            ),
        ));
    }
    Ok(outs)
}

/// How many warps share one output feature of a GEMV launch of `outs`
/// outputs over `inp` inputs: the fewest (1, 2, 4 or 8: the warps of a
/// block) that give the launch a warp for each of the 64 slots of every
/// one of `sms` multiprocessors, and no more than the row has steps of 256
/// inputs. One warp per output left the 4,096-output products of a
/// Llama-3-8B layer at 0.48 waves on an H200 (132 SMs), streaming their
/// weights at 57% of its DRAM bandwidth (Nsight Compute, 2026-12-04).
pub(crate) fn gemv_split(outs: usize, inp: usize, sms: usize) -> usize {
    let slots = sms * 64;
    let steps = inp / 256;
    let mut split = 1;
    while split < 8 && outs * split < slots && split * 2 <= steps {
        split *= 2;
    }
    split
}

impl Cuda {
    /// Warps an output for a GEMV launch: forced, or `gemv_split`'s.
    fn split_of(&self, outs: usize, inp: usize) -> usize {
        match self.forced_split.load(std::sync::atomic::Ordering::Relaxed) {
            0 => gemv_split(outs, inp, self.sms),
            n => n,
        }
    }

    /// The GEMV kernels, in groups of up to 8 activation rows.
    fn gemv(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        bias: u64,
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        let (outs, inp) = (out.cols, x.cols);
        let split = self.split_of(outs, inp);
        let (outs_i, in_i, split_i) = (outs as i32, inp as i32, split as i32);
        let cfg = LaunchConfig {
            grid_dim: (outs.div_ceil(8 / split) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut r0 = 0;
        while r0 < x.rows {
            let rows = (x.rows - r0).min(8);
            let name = format!("gemv_{}_r{}", w.dtype.name(), rows.next_power_of_two());
            let xs = x.mem.at(r0 * inp * 4);
            let os = out.mem.at(r0 * outs * 4);
            let rows_i = rows as i32;
            self.gpu.launch(
                &name,
                cfg,
                &mut args![&w.mem.ptr, &xs, &bias, &os, &rows_i, &in_i, &outs_i, &split_i],
            )?;
            r0 += rows;
        }
        Ok(())
    }

    /// `x` in the weights' dtype for cuBLAS (None for f32 weights: cuBLAS
    /// reads `x` itself), in the device's scratch buffer for it.
    fn for_blas(&self, x: &CudaAct, dtype: DType) -> Result<Option<Arc<Mem>>, KernelError> {
        let count = x.rows * x.cols;
        let kernel = match dtype {
            DType::F32 => return Ok(None),
            DType::BF16 => "to_bf16",
            DType::F16 => "to_f16",
        };
        // Two bytes a value, as many 4-byte values as half the count.
        let half = self.scratch(Scratch::Half, count.div_ceil(2))?;
        let n = count as u64;
        self.gpu.launch(
            kernel,
            elementwise(count),
            &mut args![&x.mem.ptr, &half.ptr, &n],
        )?;
        Ok(Some(half))
    }

    /// `out = x · wᵀ (+ bias)` through cuBLAS, `x` read from `xb` (itself,
    /// or its conversion by [`Self::for_blas`]). Row-major `out [rows,
    /// outs]` is column-major `outᵀ [outs, rows] = w · xᵀ`, with `w` read
    /// as the transpose of its column-major `[in, outs]` view.
    fn blas(
        &self,
        x: &CudaAct,
        xb: u64,
        w: &CudaWeight,
        bias: Option<u64>,
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        self.gpu.gemm(&Gemm {
            m: out.cols,
            n: x.rows,
            k: x.cols,
            a: w.mem.ptr,
            b: xb,
            c: out.mem.ptr,
            dtype: w.dtype,
        })?;
        if let Some(b) = bias {
            let (n, cols) = ((out.rows * out.cols) as u64, out.cols as u32);
            self.gpu.launch(
                "add_bias",
                elementwise(out.rows * out.cols),
                &mut args![&out.mem.ptr, &b, &cols, &n],
            )?;
        }
        Ok(())
    }

    /// Two or three products of one input in one go: up to
    /// [`super::GEMV_MAX_ROWS`] rows in one GEMV launch (Q, K and V; gate
    /// and up), more rows through cuBLAS with one conversion of `x` for
    /// all. Other groups: one product each.
    pub(super) fn products(
        &self,
        x: &CudaAct,
        ws: &[(&CudaWeight, Option<&CudaWeight>)],
        outs: &mut [&mut CudaAct],
    ) -> Result<(), KernelError> {
        crate::one_output_each(ws, outs)?;
        let grouped = (2..=3).contains(&ws.len())
            && x.rows > 0
            && ws.iter().all(|(w, _)| w.dtype == ws[0].0.dtype);
        let gemv = x.rows <= self.gemv_max_rows;
        if !grouped || (gemv && x.rows > super::GEMV_MAX_ROWS) {
            for ((w, bias), out) in ws.iter().zip(outs.iter_mut()) {
                self.product(x, w, *bias, out)?;
            }
            return Ok(());
        }
        // Every product's shapes and bias, before any launch; the slots
        // of a missing third product stay 0 (the kernel reads none of it).
        let (mut weights, mut dst, mut biases, mut n) =
            ([0u64; 3], [0u64; 3], [None; 3], [0i32; 3]);
        for (i, ((w, bias), out)) in ws.iter().zip(outs.iter()).enumerate() {
            let outs = product_shape(x, w, out)?;
            weights[i] = w.mem.ptr;
            dst[i] = out.mem.ptr;
            biases[i] = bias.map(|b| vector("matmul bias", b, outs)).transpose()?;
            n[i] = u32_of("matmul", outs)? as i32;
        }
        let dtype = ws[0].0.dtype;
        if !gemv {
            let half = self.for_blas(x, dtype)?;
            let xb = half.as_ref().map_or(x.mem.ptr, |h| h.ptr);
            for (((w, _), out), bias) in ws.iter().zip(outs.iter_mut()).zip(biases) {
                self.blas(x, xb, w, bias, out)?;
            }
            return Ok(());
        }
        // The kernel adds a bias where its address is not 0.
        let biases = biases.map(|b| b.unwrap_or(0));
        let total = n.iter().map(|&v| v as usize).sum::<usize>();
        let split = self.split_of(total, x.cols);
        let split_i = split as i32;
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(8 / split) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let name = format!("gemv3_{}_r{}", dtype.name(), x.rows.next_power_of_two());
        let (rows, inp) = (x.rows as i32, x.cols as i32);
        self.gpu.launch(
            &name,
            cfg,
            &mut args![
                &weights[0],
                &weights[1],
                &weights[2],
                &x.mem.ptr,
                &biases[0],
                &biases[1],
                &biases[2],
                &dst[0],
                &dst[1],
                &dst[2],
                &rows,
                &inp,
                &n[0],
                &n[1],
                &n[2],
                &split_i
            ],
        )
    }

    /// `out = x · wᵀ (+ bias)`: the GEMV up to `gemv_max_rows` rows (in
    /// groups of [`super::GEMV_MAX_ROWS`]), cuBLAS beyond.
    pub(super) fn product(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        let outs = product_shape(x, w, out)?;
        let bias = bias.map(|b| vector("matmul bias", b, outs)).transpose()?;
        if x.rows == 0 {
            return Ok(());
        }
        if x.rows <= self.gemv_max_rows {
            // The kernel adds a bias when its address is not 0.
            return self.gemv(x, w, bias.unwrap_or(0), out);
        }
        let half = self.for_blas(x, w.dtype)?;
        self.blas(x, half.as_ref().map_or(x.mem.ptr, |h| h.ptr), w, bias, out)
    }
}

#[cfg(test)]
mod tests {
    use super::gemv_split;

    #[test]
    fn a_gemv_is_split_until_it_fills_the_gpu_within_its_row() {
        // (outs, inputs, SMs, warps an output).
        let cases = [
            // An H200's 132 SMs, a Llama-3-8B layer: Q and O (4,096 of
            // 4,096) four warps an output; Q, K and V fused (6,144) two;
            // gate and up fused (28,672) one; down (4,096 of 14,336) four.
            (4096, 4096, 132, 4),
            (6144, 4096, 132, 2),
            (28672, 4096, 132, 1),
            (4096, 14336, 132, 4),
            // A short row: never more warps than steps of 256 inputs.
            (8, 2048, 132, 8),
            (8, 1024, 132, 4),
            (8, 255, 132, 1),
            (24, 1320, 1, 4),
            (12, 1000, 1, 2),
            // Already a wave of warps.
            (64, 4096, 1, 1),
            (63, 4096, 1, 2),
        ];
        for (outs, inp, sms, want) in cases {
            assert_eq!(
                gemv_split(outs, inp, sms),
                want,
                "{outs} of {inp} on {sms} SMs"
            );
        }
    }
}
