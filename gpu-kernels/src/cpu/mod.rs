//! The CPU device: f32 activations, weights read in their stored dtype,
//! every step spread over a rayon pool of its own (`threads`), SIMD chosen
//! at run time (AVX-512, AVX2+FMA, or portable code).
//!
//! Must never: use the global rayon pool (the worker's other threads
//! must not compete with the forward pass), or allocate per element.

mod attention;
mod matmul;
mod ops;
mod out;
mod simd;
mod vmath;

use crate::{shape, AttnSeq, AttnShape, HostWeight, KernelError, Kernels, KvDtype};
use std::collections::TryReserveError;

/// A `rows × cols` f32 matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, KernelError> {
        if data.len() != rows * cols {
            return Err(shape(
                "mat",
                format!("{} values for {rows}×{cols}", data.len()),
            ));
        }
        Ok(Self { rows, cols, data })
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// One layer's KV cache: keys and values, `slots × width` each.
#[derive(Debug)]
pub struct KvCpu {
    pub width: usize,
    pub k: KvRows,
    pub v: KvRows,
}

/// A cache's keys or values, in the cache's dtype (bf16 as its bits).
#[derive(Debug)]
pub enum KvRows {
    F32(Vec<f32>),
    BF16(Vec<u16>),
}

impl KvRows {
    /// `n` zeros in `dtype`, or an error when the memory is not there.
    fn zeros(n: usize, dtype: KvDtype) -> Result<Self, KernelError> {
        fn zeroed<T: Clone + Default>(n: usize) -> Result<Vec<T>, TryReserveError> {
            let mut v = Vec::new();
            v.try_reserve_exact(n)?;
            v.resize(n, T::default());
            Ok(v)
        }
        let fail = |e: TryReserveError| {
            KernelError::Device(format!("KV cache of {n} {} values: {e}", dtype.name()))
        };
        Ok(match dtype {
            KvDtype::F32 => KvRows::F32(zeroed(n).map_err(fail)?),
            KvDtype::BF16 => KvRows::BF16(zeroed(n).map_err(fail)?),
        })
    }

    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What SIMD the running CPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Portable,
}

impl Simd {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if avx2 {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }
    fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Portable => "portable",
        }
    }
}

/// The CPU device.
pub struct Cpu {
    pool: rayon::ThreadPool,
    paths: matmul::Paths,
    /// Whether `matrix` tiles bf16 matrices for `vdpbf16ps`
    /// (`with_tiles`).
    tiles: bool,
    /// Activation buffers handed back by `recycle`, for `act` to reuse
    /// (at most `SPARE_BUFFERS`).
    spare: parking_lot::Mutex<Vec<Vec<f32>>>,
}

/// How many recycled activation buffers the CPU keeps: a forward pass
/// holds about a dozen at once, so two passes' worth; the memory kept is
/// bounded by the largest step's activations.
const SPARE_BUFFERS: usize = 24;

impl Cpu {
    /// A device with `threads` worker threads (0: one per core).
    pub fn new(threads: usize) -> Result<Self, KernelError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("lattice-cpu-{i}"))
            .build()
            .map_err(|e| KernelError::Device(format!("cpu thread pool: {e}")))?;
        Ok(Self {
            pool,
            paths: matmul::Paths::detect(threads),
            tiles: true,
            spare: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The same device with portable code only (tests compare the paths).
    pub fn with_simd(mut self, simd: Simd) -> Self {
        self.paths.simd = simd;
        self.paths.bf16_dot &= simd == Simd::Avx512;
        self
    }

    /// Products of up to `rows` activation rows stream the weights
    /// (GEMV); larger ones convert blocks of weights for `gemm`.
    pub fn with_gemv_max_rows(mut self, rows: usize) -> Self {
        self.paths.gemv_max_rows = rows;
        self
    }

    /// Whether bf16 weights meet bf16-rounded activations in `vdpbf16ps`
    /// at any number of rows, where the CPU has AVX512-BF16 (the default
    /// there); `false`: f32 activations throughout, the GEMV for a few
    /// rows and `gemm` for many (the reference the GPU's kernels are
    /// checked against).
    pub fn with_bf16_dot(mut self, on: bool) -> Self {
        self.paths.bf16_dot = on && matmul::Paths::detect(1).bf16_dot;
        self
    }

    /// Whether `matrix` copies bf16 matrices into tiles (`Layout::Tiles`)
    /// where bf16 weights meet bf16 activations in `vdpbf16ps` (the
    /// default: measured faster with the weights read from memory), or
    /// leaves them viewed in place (`false`: no copy, the file's pages
    /// shared with the page cache). Applies to matrices loaded after it.
    pub fn with_tiles(mut self, on: bool) -> Self {
        self.tiles = on;
        self
    }

    /// Whether bf16 weights meet bf16-rounded activations here
    /// (`with_bf16_dot`).
    pub fn bf16_dot(&self) -> bool {
        self.paths.bf16_dot
    }

    pub fn threads(&self) -> usize {
        self.paths.threads
    }
}

fn same(op: &'static str, a: &Mat, b: &Mat) -> Result<(), KernelError> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(shape(
            op,
            format!("{}×{} against {}×{}", a.rows, a.cols, b.rows, b.cols),
        ));
    }
    Ok(())
}

impl Kernels for Cpu {
    type Act = Mat;
    type Weight = HostWeight;
    type Kv = KvCpu;

    fn device(&self) -> String {
        let bf16 = if self.paths.bf16_dot {
            ", bf16 dot"
        } else {
            ""
        };
        format!(
            "cpu ({} threads, {}{bf16})",
            self.paths.threads,
            self.paths.simd.name()
        )
    }

    fn weight(&self, w: HostWeight) -> Result<HostWeight, KernelError> {
        // Vectors (norm scales, biases) are read whole at every step:
        // converted to f32 once here, the steps borrow them. Matrices stay
        // in their stored dtype, viewed in place.
        if let [n] = *w.shape() {
            if w.dtype() != crate::DType::F32 {
                let mut v = Vec::with_capacity(n);
                w.elems().extend_f32(0..n, &mut v);
                return HostWeight::owned_f32(w.name(), vec![n], v);
            }
        }
        Ok(w)
    }

    fn matrix(&self, w: HostWeight) -> Result<HostWeight, KernelError> {
        if self.tiles && self.paths.bf16_dot {
            if let Some(tiled) = w.tiled() {
                return Ok(tiled);
            }
        }
        self.weight(w)
    }

    /// A zeroed `rows × cols` matrix, in the smallest recycled buffer
    /// that holds it when there is one.
    fn act(&self, rows: usize, cols: usize) -> Result<Mat, KernelError> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| shape("act", format!("{rows}×{cols} overflows")))?;
        let reused = {
            let mut spare = self.spare.lock();
            let best = spare
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= n)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| spare.swap_remove(i))
        };
        let mut data = reused.unwrap_or_default();
        data.clear();
        data.resize(n, 0.0);
        Ok(Mat { rows, cols, data })
    }

    fn recycle(&self, act: Mat) {
        let mut spare = self.spare.lock();
        if spare.len() < SPARE_BUFFERS {
            spare.push(act.data);
        }
    }

    fn kv(&self, slots: usize, width: usize, dtype: KvDtype) -> Result<KvCpu, KernelError> {
        let n = slots
            .checked_mul(width)
            .ok_or_else(|| KernelError::Device("KV cache size overflows".into()))?;
        Ok(KvCpu {
            width,
            k: KvRows::zeros(n, dtype)?,
            v: KvRows::zeros(n, dtype)?,
        })
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        // Inside, each step's `install` finds itself on the pool already
        // and runs in place.
        self.pool.install(f)
    }

    fn embed(&self, table: &HostWeight, tokens: &[u32], out: &mut Mat) -> Result<(), KernelError> {
        ops::embed(table, tokens, out)
    }

    fn rms_norm(
        &self,
        x: &Mat,
        weight: &HostWeight,
        eps: f32,
        out: &mut Mat,
    ) -> Result<(), KernelError> {
        same("rms_norm", x, out)?;
        self.pool.install(|| ops::rms_norm(x, weight, eps, out))
    }

    fn add_rms_norm(
        &self,
        x: &mut Mat,
        delta: &Mat,
        weight: &HostWeight,
        eps: f32,
        out: &mut Mat,
    ) -> Result<(), KernelError> {
        same("add_rms_norm", x, delta)?;
        same("add_rms_norm", x, out)?;
        self.pool.install(|| {
            ops::add(x, delta);
            ops::rms_norm(x, weight, eps, out)
        })
    }

    fn matmul(
        &self,
        x: &Mat,
        w: &HostWeight,
        bias: Option<&HostWeight>,
        out: &mut Mat,
    ) -> Result<(), KernelError> {
        self.pool
            .install(|| matmul::matmul(self.paths, x, w, bias, out))
    }

    fn matmul_many(
        &self,
        x: &Mat,
        ws: &[(&HostWeight, Option<&HostWeight>)],
        outs: &mut [&mut Mat],
    ) -> Result<(), KernelError> {
        crate::one_output_each(ws, outs)?;
        let mut products: Vec<matmul::Product<'_>> = ws
            .iter()
            .zip(outs.iter_mut())
            .map(|(&(w, bias), out)| matmul::Product { w, bias, out })
            .collect();
        self.pool
            .install(|| matmul::matmul_many(self.paths, x, &mut products))
    }

    fn rope(
        &self,
        x: &mut Mat,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
    ) -> Result<(), KernelError> {
        self.pool
            .install(|| ops::rope(x, head_dim, positions, inv_freq))
    }

    fn kv_write(&self, kv: &mut KvCpu, k: &Mat, v: &Mat, slots: &[u32]) -> Result<(), KernelError> {
        ops::kv_write(kv, k, v, slots)
    }

    fn attention(
        &self,
        q: &Mat,
        kv: &KvCpu,
        shape: AttnShape,
        seqs: &[AttnSeq<'_>],
        out: &mut Mat,
    ) -> Result<(), KernelError> {
        self.pool.install(|| {
            let tiles = attention::Tiles::Auto;
            attention::attention(self.paths.simd, q, kv, shape, seqs, out, tiles)
        })
    }

    fn silu_mul(&self, gate: &Mat, up: &Mat, out: &mut Mat) -> Result<(), KernelError> {
        same("silu_mul", gate, up)?;
        same("silu_mul", gate, out)?;
        let simd = self.paths.simd;
        self.pool.install(|| ops::silu_mul(simd, gate, up, out));
        Ok(())
    }

    fn add(&self, x: &mut Mat, y: &Mat) -> Result<(), KernelError> {
        same("add", x, y)?;
        ops::add(x, y);
        Ok(())
    }

    fn gather_rows(&self, x: &Mat, rows: &[usize], out: &mut Mat) -> Result<(), KernelError> {
        if out.rows != rows.len() || out.cols != x.cols {
            return Err(shape("gather_rows", "output is not rows × cols"));
        }
        for (i, &r) in rows.iter().enumerate() {
            if r >= x.rows {
                return Err(shape("gather_rows", format!("row {r} of {}", x.rows)));
            }
            out.data[i * x.cols..(i + 1) * x.cols].copy_from_slice(x.row(r));
        }
        Ok(())
    }

    fn to_host(&self, x: &Mat) -> Result<Vec<f32>, KernelError> {
        Ok(x.data.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recycled buffer comes back from `act` zeroed, whatever it held,
    /// in the shape asked; the smallest one that fits is taken, and a
    /// request larger than every spare gets a buffer of its own.
    #[test]
    fn recycled_activations_come_back_zeroed() {
        let cpu = Cpu::new(1).unwrap();
        let mut small = cpu.act(2, 4).unwrap();
        small.data.fill(3.0);
        let mut big = cpu.act(8, 16).unwrap();
        big.data.fill(5.0);
        let (small_at, big_at) = (small.data.as_ptr(), big.data.as_ptr());
        cpu.recycle(big);
        cpu.recycle(small);
        let a = cpu.act(1, 6).unwrap();
        assert_eq!((a.rows, a.cols), (1, 6));
        assert_eq!(a.data, vec![0.0; 6]);
        assert_eq!(a.data.as_ptr(), small_at, "the smallest spare that fits");
        let b = cpu.act(4, 32).unwrap();
        assert_eq!(b.data, vec![0.0; 128]);
        assert_eq!(b.data.as_ptr(), big_at);
        let c = cpu.act(16, 16).unwrap();
        assert_eq!(c.data, vec![0.0; 256], "no spare is left: a new buffer");
    }
}
