//! The forward pass's steps on the CUDA device: shapes checked on the
//! host, then one or two kernel launches queued on the stream (the
//! products: `products.rs`).
//!
//! Must never: launch a kernel on buffers whose lengths were not checked
//! against the shape it indexes with, or wait for the GPU except to hand
//! a result to the host.

use super::device::{args, CudaAct, CudaKv, CudaWeight, Scratch};
use super::Cuda;
use crate::{shape, AttnSeq, AttnShape, DType, Elems, HostWeight, KernelError, Kernels, KvDtype};
use cudarc::driver::LaunchConfig;

/// Threads per block of the row-wise kernels (norms, copies).
const ROW_THREADS: u32 = 512;
/// Warps per block of the attention kernels.
const ATTN_WARPS: u32 = 4;
/// Largest head dimension the attention kernels hold in registers.
const MAX_HEAD_DIM: usize = 256;
/// Largest head dimension of the tiled prefill attention.
const TILED_MAX_HEAD_DIM: usize = 128;

/// One block of `threads` per row.
pub(super) fn grid(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernels that read or write a KV cache, one entry point per cache
/// dtype (`attention.cu`'s `FOR_CACHES`).
#[derive(Clone, Copy)]
enum CacheOp {
    Write,
    Decode,
    Prefill,
    PrefillTiled,
}

fn kernel(op: CacheOp, dtype: KvDtype) -> &'static str {
    match (op, dtype) {
        (CacheOp::Write, KvDtype::F32) => "kv_write_f32",
        (CacheOp::Write, KvDtype::BF16) => "kv_write_bf16",
        (CacheOp::Decode, KvDtype::F32) => "attn_decode_f32",
        (CacheOp::Decode, KvDtype::BF16) => "attn_decode_bf16",
        (CacheOp::Prefill, KvDtype::F32) => "attn_prefill_f32",
        (CacheOp::Prefill, KvDtype::BF16) => "attn_prefill_bf16",
        (CacheOp::PrefillTiled, KvDtype::F32) => "attn_prefill_tiled_f32",
        (CacheOp::PrefillTiled, KvDtype::BF16) => "attn_prefill_tiled_bf16",
    }
}

/// A grid-stride launch over `n` elements.
pub(super) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn same(op: &'static str, a: &CudaAct, b: &CudaAct) -> Result<(), KernelError> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(shape(
            op,
            format!("{}×{} against {}×{}", a.rows, a.cols, b.rows, b.cols),
        ));
    }
    Ok(())
}

/// A vector weight's address (vectors are f32 on the device).
pub(super) fn vector(op: &'static str, w: &CudaWeight, len: usize) -> Result<u64, KernelError> {
    if w.dtype != DType::F32 || w.shape != [len] {
        return Err(shape(
            op,
            format!(
                "{} is {} {:?}, wanted a vector of {len}",
                w.name,
                w.dtype.name(),
                w.shape
            ),
        ));
    }
    Ok(w.mem.ptr)
}

pub(super) fn u32_of(op: &'static str, n: usize) -> Result<u32, KernelError> {
    u32::try_from(n).map_err(|_| shape(op, format!("{n} does not fit 32 bits")))
}

impl Kernels for Cuda {
    type Act = CudaAct;
    type Weight = CudaWeight;
    type Kv = CudaKv;

    fn device(&self) -> String {
        self.name.clone()
    }

    fn weight(&self, w: HostWeight) -> Result<CudaWeight, KernelError> {
        // Vectors (norm scales, biases) in f32, as the CPU keeps them;
        // matrices in their stored dtype, in rows.
        if w.layout() != crate::Layout::Rows {
            return Err(KernelError::Weight {
                what: w.name().to_string(),
                detail: "tiled for the CPU; the GPU reads rows".into(),
            });
        }
        let elems = w.elems();
        let (dtype, bytes): (DType, std::borrow::Cow<'_, [u8]>) = match (elems, w.shape().len()) {
            (Elems::F32(s), _) => (DType::F32, bytemuck::cast_slice(s).into()),
            (e, 1) => {
                let mut v = Vec::with_capacity(e.len());
                e.extend_f32(0..e.len(), &mut v);
                (DType::F32, bytemuck::cast_slice(&v).to_vec().into())
            }
            (Elems::BF16(s), _) => (DType::BF16, bytemuck::cast_slice(s).into()),
            (Elems::F16(s), _) => (DType::F16, bytemuck::cast_slice(s).into()),
        };
        let mem = self.gpu.alloc(bytes.len())?;
        self.gpu.upload(&mem, &bytes)?;
        Ok(CudaWeight {
            name: w.name().to_string(),
            dtype,
            shape: w.shape().to_vec(),
            mem,
        })
    }

    fn act(&self, rows: usize, cols: usize) -> Result<CudaAct, KernelError> {
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| shape("act", format!("{rows}×{cols} overflows")))?;
        Ok(CudaAct {
            rows,
            cols,
            mem: self.zeros(n)?,
        })
    }

    fn kv(&self, slots: usize, width: usize, dtype: KvDtype) -> Result<CudaKv, KernelError> {
        let bytes = slots
            .checked_mul(width)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| KernelError::Device("KV cache size overflows".into()))?;
        Ok(CudaKv {
            width,
            slots,
            dtype,
            k: self.gpu.alloc(bytes)?,
            v: self.gpu.alloc(bytes)?,
        })
    }

    fn embed(
        &self,
        table: &CudaWeight,
        tokens: &[u32],
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        let [vocab, cols] = table.shape[..] else {
            return Err(shape("embed", format!("table {:?}", table.shape)));
        };
        if out.rows != tokens.len() || out.cols != cols {
            return Err(shape("embed", "output is not tokens × hidden"));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(KernelError::Token { token: t, vocab });
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let ids = self.u32s(tokens)?;
        let c = cols as i32;
        self.gpu.launch(
            &format!("embed_{}", table.dtype.name()),
            grid(tokens.len(), ROW_THREADS),
            &mut args![&table.mem.ptr, &ids.ptr, &out.mem.ptr, &c],
        )
    }

    fn rms_norm(
        &self,
        x: &CudaAct,
        weight: &CudaWeight,
        eps: f32,
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        same("rms_norm", x, out)?;
        let w = vector("rms_norm", weight, x.cols)?;
        let c = x.cols as i32;
        self.gpu.launch(
            "rms_norm_f32",
            grid(x.rows, ROW_THREADS),
            &mut args![&x.mem.ptr, &w, &eps, &out.mem.ptr, &c],
        )
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaAct,
        delta: &CudaAct,
        weight: &CudaWeight,
        eps: f32,
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        same("add_rms_norm", x, delta)?;
        same("add_rms_norm", x, out)?;
        let w = vector("add_rms_norm", weight, x.cols)?;
        let c = x.cols as i32;
        self.gpu.launch(
            "add_rms_norm_f32",
            grid(x.rows, ROW_THREADS),
            &mut args![&x.mem.ptr, &delta.mem.ptr, &w, &eps, &out.mem.ptr, &c],
        )
    }

    fn matmul_many(
        &self,
        x: &CudaAct,
        ws: &[(&CudaWeight, Option<&CudaWeight>)],
        outs: &mut [&mut CudaAct],
    ) -> Result<(), KernelError> {
        self.products(x, ws, outs)
    }

    fn matmul(
        &self,
        x: &CudaAct,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        self.product(x, w, bias, out)
    }

    fn rope(
        &self,
        x: &mut CudaAct,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
    ) -> Result<(), KernelError> {
        if head_dim == 0
            || !x.cols.is_multiple_of(head_dim)
            || positions.len() != x.rows
            || inv_freq.len() != head_dim / 2
        {
            return Err(shape(
                "rope",
                format!(
                    "{}×{} with head_dim {head_dim}, {} positions, {} frequencies",
                    x.rows,
                    x.cols,
                    positions.len(),
                    inv_freq.len()
                ),
            ));
        }
        if x.rows == 0 {
            return Ok(());
        }
        let heads = (x.cols / head_dim) as i32;
        let (pos, freq) = (self.u32s(positions)?, self.f32s(inv_freq)?);
        let hd = head_dim as i32;
        let cfg = LaunchConfig {
            grid_dim: (x.rows as u32, heads as u32, 1),
            block_dim: ((head_dim / 2).next_multiple_of(32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        self.gpu.launch(
            "rope",
            cfg,
            &mut args![&x.mem.ptr, &pos.ptr, &freq.ptr, &heads, &hd],
        )
    }

    fn kv_write(
        &self,
        kv: &mut CudaKv,
        k: &CudaAct,
        v: &CudaAct,
        slots: &[u32],
    ) -> Result<(), KernelError> {
        same("kv_write", k, v)?;
        if k.cols != kv.width || slots.len() != k.rows {
            return Err(shape(
                "kv_write",
                format!("{}×{} into width {}", k.rows, k.cols, kv.width),
            ));
        }
        if let Some(&s) = slots.iter().find(|&&s| s as usize >= kv.slots) {
            return Err(shape("kv_write", format!("slot {s} of {}", kv.slots)));
        }
        if k.rows == 0 {
            return Ok(());
        }
        let ids = self.u32s(slots)?;
        let width = kv.width as u32;
        self.gpu.launch(
            kernel(CacheOp::Write, kv.dtype),
            grid(k.rows, ROW_THREADS),
            &mut args![&k.mem.ptr, &v.mem.ptr, &ids.ptr, &kv.k.ptr, &kv.v.ptr, &width],
        )
    }

    fn attention(
        &self,
        q: &CudaAct,
        kv: &CudaKv,
        s: AttnShape,
        seqs: &[AttnSeq<'_>],
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        same("attention", q, out)?;
        if s.head_dim == 0
            || s.head_dim > MAX_HEAD_DIM
            || s.kv_heads == 0
            || !s.heads.is_multiple_of(s.kv_heads)
            || q.cols != s.heads * s.head_dim
            || kv.width != s.kv_heads * s.head_dim
            || s.block_size == 0
        {
            return Err(shape(
                "attention",
                format!(
                    "{} heads of {} over {} KV heads (at most {MAX_HEAD_DIM} per head), q {}×{}, cache width {}",
                    s.heads, s.head_dim, s.kv_heads, q.rows, q.cols, kv.width
                ),
            ));
        }
        // Each sequence as the kernels' `Seq` {start, rows, row0,
        // block_off}, decode (one row) and prefill apart; one table of
        // every block table.
        let mut tables: Vec<u32> = Vec::new();
        let (mut decode, mut prefill) = (Vec::new(), Vec::new());
        let (mut longest, mut most_rows) = (0usize, 0usize);
        for sq in seqs {
            let end = sq.start + sq.rows.len();
            if sq.rows.end > q.rows || sq.blocks.len() * s.block_size < end {
                return Err(shape(
                    "attention",
                    format!(
                        "rows {:?} at {} with {} blocks",
                        sq.rows,
                        sq.start,
                        sq.blocks.len()
                    ),
                ));
            }
            if let Some(&b) = sq
                .blocks
                .iter()
                .find(|&&b| (b as usize + 1) * s.block_size > kv.slots)
            {
                return Err(shape(
                    "attention",
                    format!("block {b} beyond the cache's {} slots", kv.slots),
                ));
            }
            if sq.rows.is_empty() {
                continue;
            }
            let entry = [
                u32_of("attention", sq.start)?,
                u32_of("attention", sq.rows.len())?,
                u32_of("attention", sq.rows.start)?,
                u32_of("attention", tables.len())?,
            ];
            tables.extend_from_slice(sq.blocks);
            if sq.rows.len() == 1 {
                decode.extend_from_slice(&entry);
                longest = longest.max(end);
            } else {
                prefill.extend_from_slice(&entry);
                most_rows = most_rows.max(sq.rows.len());
            }
        }
        let tables = self.u32s(&tables)?;
        let (heads, kv_heads, hd) = (s.heads as u32, s.kv_heads as u32, s.head_dim as i32);
        let (bs, window) = (s.block_size as u32, s.window.map_or(0, |w| w as u32));
        let scale = s.scale;
        if !decode.is_empty() {
            let n = decode.len() / 4;
            let table = self.u32s(&decode)?;
            // Split-K: each block's warps walk at most 32 positions (one
            // position is a chain of dependent loads and a warp reduction:
            // a block that walks a whole context is latency-bound), and
            // long contexts give every multiprocessor work.
            let splits = longest.div_ceil(32).clamp(1, 64) as u32;
            // Every block writes its partial before the reduction reads it.
            let partial = self.scratch(
                Scratch::Partial,
                n * s.heads * splits as usize * (2 + s.head_dim),
            )?;
            let cfg = LaunchConfig {
                grid_dim: (heads, n as u32, splits),
                block_dim: (ATTN_WARPS * 32, 1, 1),
                shared_mem_bytes: ATTN_WARPS * (2 + s.head_dim as u32) * 4,
            };
            self.gpu.launch(
                kernel(CacheOp::Decode, kv.dtype),
                cfg,
                &mut args![
                    &q.mem.ptr,
                    &kv.k.ptr,
                    &kv.v.ptr,
                    &tables.ptr,
                    &table.ptr,
                    &partial.ptr,
                    &heads,
                    &kv_heads,
                    &hd,
                    &bs,
                    &scale,
                    &window
                ],
            )?;
            let cfg = LaunchConfig {
                grid_dim: (heads, n as u32, 1),
                block_dim: (32, 1, 1),
                shared_mem_bytes: 0,
            };
            self.gpu.launch(
                "attn_decode_reduce",
                cfg,
                &mut args![&partial.ptr, &table.ptr, &out.mem.ptr, &heads, &hd, &splits],
            )?;
        }
        if !prefill.is_empty() {
            let n = prefill.len() / 4;
            let table = self.u32s(&prefill)?;
            // Tiles of 16 query rows sharing each key tile up to head_dim
            // 128 (their shared memory stays under the 48 KB every GPU
            // gives a launch); one warp per row beyond.
            let (kernel, rows_per_block, smem) = if s.head_dim <= TILED_MAX_HEAD_DIM {
                let hd = s.head_dim as u32;
                (
                    kernel(CacheOp::PrefillTiled, kv.dtype),
                    16,
                    (16 * hd + 32 * (hd + 1) + 32 * hd + 128) * 4,
                )
            } else {
                (kernel(CacheOp::Prefill, kv.dtype), ATTN_WARPS as usize, 0)
            };
            let cfg = LaunchConfig {
                grid_dim: (heads, most_rows.div_ceil(rows_per_block) as u32, n as u32),
                block_dim: (ATTN_WARPS * 32, 1, 1),
                shared_mem_bytes: smem,
            };
            self.gpu.launch(
                kernel,
                cfg,
                &mut args![
                    &q.mem.ptr,
                    &kv.k.ptr,
                    &kv.v.ptr,
                    &tables.ptr,
                    &table.ptr,
                    &out.mem.ptr,
                    &heads,
                    &kv_heads,
                    &hd,
                    &bs,
                    &scale,
                    &window
                ],
            )?;
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &CudaAct, up: &CudaAct, out: &mut CudaAct) -> Result<(), KernelError> {
        same("silu_mul", gate, up)?;
        same("silu_mul", gate, out)?;
        let n = gate.rows * gate.cols;
        let n64 = n as u64;
        self.gpu.launch(
            "swiglu",
            elementwise(n),
            &mut args![&gate.mem.ptr, &up.mem.ptr, &out.mem.ptr, &n64],
        )
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) -> Result<(), KernelError> {
        same("add", x, y)?;
        let n = x.rows * x.cols;
        let n64 = n as u64;
        self.gpu.launch(
            "add",
            elementwise(n),
            &mut args![&x.mem.ptr, &y.mem.ptr, &n64],
        )
    }

    fn gather_rows(
        &self,
        x: &CudaAct,
        rows: &[usize],
        out: &mut CudaAct,
    ) -> Result<(), KernelError> {
        if out.rows != rows.len() || out.cols != x.cols {
            return Err(shape("gather_rows", "output is not rows × cols"));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(shape("gather_rows", format!("row {r} of {}", x.rows)));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let ids = self.u32s(&ids)?;
        let cols = x.cols as u32;
        self.gpu.launch(
            "gather_rows",
            grid(rows.len(), ROW_THREADS),
            &mut args![&x.mem.ptr, &ids.ptr, &out.mem.ptr, &cols],
        )
    }

    fn to_host(&self, x: &CudaAct) -> Result<Vec<f32>, KernelError> {
        let mut out = vec![0f32; x.rows * x.cols];
        self.gpu
            .download(&x.mem, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    fn picks_tokens(&self) -> bool {
        true
    }

    fn pick(&self, logits: &mut CudaAct, picks: &[crate::Pick]) -> Result<Vec<u32>, KernelError> {
        self.pick_rows(logits, picks)
    }
}
