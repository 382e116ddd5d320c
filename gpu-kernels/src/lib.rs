//! # lattice-gpu-kernels — every numeric step of a forward pass, behind one interface
//!
//! Owns: the [`Kernels`] trait that Lattice Inference's engine calls for
//! each step of a decoder-only transformer (embedding, RMSNorm, matrix
//! products against weights kept in their stored dtype, RoPE, writes to and
//! attention over a paged KV cache, SwiGLU), the host form of a weight
//! ([`HostWeight`]: memory-mapped bytes, viewed in place when aligned), and
//! the multithreaded CPU implementation ([`cpu::Cpu`]). The CUDA twins
//! (issue #16) implement the same trait, so the engine swaps the device
//! and nothing else.
//!
//! Must never: know about models, tokenizers, requests or HTTP; panic on a
//! shape mismatch (a [`KernelError`] names it); hide a missing GPU (a CUDA
//! implementation answers with an error, never a panic).

pub mod check;
pub mod cpu;
pub mod cuda;
mod weight;

pub use weight::{DType, Elems, HostWeight, Layout, TILE_CHUNK, TILE_ROWS};

use std::ops::Range;

/// What a kernel refuses.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("weight {what}: {detail}")]
    Weight { what: String, detail: String },
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    #[error("{0}")]
    Device(String),
}

/// What a KV cache stores its keys and values in. Attention reads them
/// widened to f32 either way; bf16 halves the cache's memory (twice the
/// tokens in the same bytes) and the bytes each decode step reads, at
/// bf16's 8 bits of mantissa — what vLLM stores a bf16 model's cache in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    /// Rounded to nearest (ties to even) when written, on every device.
    BF16,
}

impl KvDtype {
    /// The cache's default for weights stored in `weights`: bf16 for bf16
    /// models (their activations already pass through bf16), f32
    /// otherwise (f16 models keep more mantissa than bf16 would).
    pub fn auto(weights: DType) -> Self {
        match weights {
            DType::BF16 => KvDtype::BF16,
            DType::F32 | DType::F16 => KvDtype::F32,
        }
    }

    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::BF16 => "bf16",
        }
    }
}

/// The geometry of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// Sliding window: a query attends to at most this many positions
    /// (itself included). `None`: the whole context.
    pub window: Option<usize>,
    pub scale: f32,
}

/// One sequence's share of a batched attention call: the query rows it
/// owns, the position of the first of them, and its block table (cache
/// block of each `block_size` positions, in order). Row `rows.start + i`
/// is at position `start + i` and attends causally to positions
/// `0..=start + i`, all of which are already written to the cache.
#[derive(Debug, Clone)]
pub struct AttnSeq<'a> {
    pub rows: Range<usize>,
    pub start: usize,
    pub blocks: &'a [u32],
}

/// How one row of logits becomes a token on the device (see
/// [`Kernels::pick`]): the adjustments first, then greedy (temperature
/// ≤ 0) or a draw. The draw keeps the `top_k` most likely tokens (0: all),
/// drops those less likely than `min_p` × the most likely, keeps the
/// smallest head, by probability, that holds `top_p` of what is left's
/// mass, and takes the token where `uniform` × the kept mass falls when
/// the kept tokens are laid out in id order. The CPU's sampler follows the
/// same rule, so a seed gives the same tokens on either device (but for a
/// draw that lands within rounding of a boundary).
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    /// The request's draw in [0, 1) (unused when greedy).
    pub uniform: f32,
    /// 1.0: off.
    pub repetition: f32,
    pub presence: f32,
    pub frequency: f32,
    /// The tokens whose logits change, each once, in any order.
    pub adjust: Vec<Adjust>,
}

impl Pick {
    /// The largest logit, nothing adjusted.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            uniform: 0.0,
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.0,
            adjust: Vec::new(),
        }
    }
}

/// One token's adjustment, applied in this order: `bias` added; if
/// `seen` (in the prompt or generated), the repetition penalty (positive
/// logits divided, negative ones multiplied); if generated `count` > 0
/// times, `presence + frequency × count` subtracted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjust {
    pub token: u32,
    pub bias: f32,
    pub seen: bool,
    pub count: u32,
}

/// The steps of a forward pass on one device. Activations are f32 rows
/// (`rows × cols`); weights stay in their stored dtype.
pub trait Kernels: Send + Sync + 'static {
    /// Activations: a `rows × cols` matrix of f32 on the device.
    type Act: Send;
    /// A weight on the device: a `[out, in]` matrix or a vector.
    type Weight: Send + Sync;
    /// One layer's KV cache: `slots` rows of `width` keys and of values.
    type Kv: Send;

    /// The device, in words ("cpu (2 threads, avx512)").
    fn device(&self) -> String;
    fn weight(&self, w: HostWeight) -> Result<Self::Weight, KernelError>;
    /// A matrix that is only ever multiplied (`matmul`), never gathered
    /// (`embed`): a device may lay it out for its products (the CPU
    /// tiles bf16 matrices for `vdpbf16ps`). By default, `weight`.
    fn matrix(&self, w: HostWeight) -> Result<Self::Weight, KernelError> {
        self.weight(w)
    }
    fn act(&self, rows: usize, cols: usize) -> Result<Self::Act, KernelError>;
    /// One layer's cache of `slots` rows of `width` keys and values,
    /// stored in `dtype`.
    fn kv(&self, slots: usize, width: usize, dtype: KvDtype) -> Result<Self::Kv, KernelError>;
    /// Bytes one KV slot of one layer takes (keys and values).
    fn kv_slot_bytes(&self, width: usize, dtype: KvDtype) -> usize {
        2 * width * dtype.size()
    }
    /// Runs `f` — a whole forward pass — where this device's steps run
    /// cheapest. The CPU runs it on its own pool, so that its ~10 steps
    /// per layer do not each hand work to the pool and wait for it (a
    /// thread wake-up per step); a device that queues work
    /// asynchronously runs it in place.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// `out[r] = table[tokens[r]]`.
    fn embed(
        &self,
        table: &Self::Weight,
        tokens: &[u32],
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// `out = rmsnorm(x) * weight`.
    fn rms_norm(
        &self,
        x: &Self::Act,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// Fused residual step: `x += delta; out = rmsnorm(x) * weight`.
    fn add_rms_norm(
        &self,
        x: &mut Self::Act,
        delta: &Self::Act,
        weight: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// `out = x · wᵀ (+ bias)`, `w` being `[out_features, in_features]`.
    fn matmul(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// Hands back an activation buffer the caller is done with, for a
    /// later `act` to reuse: a device may keep it rather than free it
    /// (the CPU does: memory freed and allocated again each step came
    /// back from the allocator as fresh pages, faulted in and zeroed by
    /// the kernel every step). By default it is dropped.
    fn recycle(&self, act: Self::Act) {
        drop(act);
    }
    /// Several products of one input, `outs[i] = x · ws[i].0ᵀ (+ ws[i].1)`
    /// (the attention's Q, K and V; the MLP's gate and up), which a device
    /// may run as one dispatch. By default, one `matmul` each.
    fn matmul_many(
        &self,
        x: &Self::Act,
        ws: &[(&Self::Weight, Option<&Self::Weight>)],
        outs: &mut [&mut Self::Act],
    ) -> Result<(), KernelError> {
        one_output_each(ws, outs)?;
        for ((w, bias), out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(x, w, *bias, out)?;
        }
        Ok(())
    }
    /// Rotary position embedding in place (the "rotate half" layout of
    /// Hugging Face checkpoints), each row at `positions[row]`.
    fn rope(
        &self,
        x: &mut Self::Act,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
    ) -> Result<(), KernelError>;
    /// Writes row `r` of `k` and `v` into cache slot `slots[r]`.
    fn kv_write(
        &self,
        kv: &mut Self::Kv,
        k: &Self::Act,
        v: &Self::Act,
        slots: &[u32],
    ) -> Result<(), KernelError>;
    /// Causal attention of each sequence's query rows over its cached
    /// keys and values.
    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Kv,
        shape: AttnShape,
        seqs: &[AttnSeq<'_>],
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// `out = silu(gate) * up`.
    fn silu_mul(
        &self,
        gate: &Self::Act,
        up: &Self::Act,
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// `x += y`.
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), KernelError>;
    /// Copies `rows` of `x` into `out` (`rows.len() × cols`), row-major.
    fn gather_rows(
        &self,
        x: &Self::Act,
        rows: &[usize],
        out: &mut Self::Act,
    ) -> Result<(), KernelError>;
    /// The whole matrix, row-major, on the host.
    fn to_host(&self, x: &Self::Act) -> Result<Vec<f32>, KernelError>;
    /// Whether [`Kernels::pick`] chooses tokens on this device. The CPU
    /// does not: its logits are already where the engine's sampler is.
    fn picks_tokens(&self) -> bool {
        false
    }
    /// One token per row of `logits` (changed in place by the
    /// adjustments), chosen on the device so that only the ids cross to
    /// the host.
    fn pick(&self, logits: &mut Self::Act, picks: &[Pick]) -> Result<Vec<u32>, KernelError> {
        let _ = (logits, picks);
        Err(KernelError::Device(format!(
            "{} does not choose tokens itself",
            self.device()
        )))
    }
}

/// `matmul_many`'s weights and outputs pair up one to one.
pub(crate) fn one_output_each<W, O>(ws: &[W], outs: &[O]) -> Result<(), KernelError> {
    if ws.len() != outs.len() {
        return Err(shape(
            "matmul_many",
            format!("{} weights for {} outputs", ws.len(), outs.len()),
        ));
    }
    Ok(())
}

pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> KernelError {
    KernelError::Shape {
        op,
        detail: detail.into(),
    }
}
