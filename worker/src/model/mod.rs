//! A decoder-only transformer (Llama, Mistral, Qwen2) loaded from a model
//! directory and run on any [`Kernels`] device: one forward pass over a
//! batch of chunks — prompt pieces and single decode tokens of different
//! sequences together — writing keys and values into the paged cache and
//! returning the logits each chunk asks for.
//!
//! Must never: know about requests, sampling or scheduling (the engine
//! owns those), or do arithmetic itself (every numeric step is a kernel,
//! so a device swap changes nothing here).

pub mod config;
pub mod files;

pub use config::{Arch, ModelConfig, RopeScaling};

use crate::error::{file_err, Result, WorkerError};
use files::Tensors;
use lattice_gpu_kernels::{AttnSeq, AttnShape, DType, KernelError, Kernels, KvDtype, Pick};
use std::path::Path;

struct Layer<W> {
    attn_norm: W,
    q: W,
    k: W,
    v: W,
    q_bias: Option<W>,
    k_bias: Option<W>,
    v_bias: Option<W>,
    o: W,
    mlp_norm: W,
    gate: W,
    up: W,
    down: W,
}

/// A model on a device.
pub struct Model<K: Kernels> {
    pub config: ModelConfig,
    /// The dtype most weights are stored in.
    pub dtype: DType,
    /// What the KV cache stores (default: [`KvDtype::auto`] of `dtype`).
    pub kv_dtype: KvDtype,
    kernels: K,
    embed: K::Weight,
    layers: Vec<Layer<K::Weight>>,
    norm: K::Weight,
    lm_head: Option<K::Weight>,
    inv_freq: Vec<f32>,
}

/// The paged KV cache of every layer: `blocks` blocks of `block_size`
/// token slots.
pub struct KvCache<K: Kernels> {
    layers: Vec<K::Kv>,
    pub blocks: usize,
    pub block_size: usize,
}

/// One sequence's share of a forward pass: `tokens` at positions
/// `start..start + tokens.len()`, its block table, and whether the
/// logits of its last token are wanted.
#[derive(Debug, Clone)]
pub struct Chunk<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub blocks: &'a [u32],
    pub logits: bool,
}

/// What a forward pass hands back for one chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The chunk did not ask for logits.
    Nothing,
    /// Its last token's logits, on the host.
    Logits(Vec<f32>),
    /// Its next token, chosen on the device by the [`Pick`] it came with.
    Token(u32),
}

impl<K: Kernels> Model<K> {
    /// Loads `dir`'s `config.json` and weights onto `kernels`' device.
    pub fn load(kernels: K, dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| file_err(&config_path, e))?;
        let config = ModelConfig::parse(&text)?;
        let tensors = Tensors::open(dir)?;
        let c = &config;
        let (h, q, kv) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let get = |name: &str, shape: &[usize]| -> Result<K::Weight> {
            Ok(kernels.weight(tensors.get(name, shape)?)?)
        };
        // Matrices only ever multiplied: the device may lay them out.
        let matrix = |name: &str, shape: &[usize]| -> Result<K::Weight> {
            Ok(kernels.matrix(tensors.get(name, shape)?)?)
        };
        let bias = |name: &str, len: usize| -> Result<Option<K::Weight>> {
            if c.qkv_bias {
                get(name, &[len]).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                q: matrix(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                k: matrix(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                v: matrix(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                q_bias: bias(&format!("{p}.self_attn.q_proj.bias"), q)?,
                k_bias: bias(&format!("{p}.self_attn.k_proj.bias"), kv)?,
                v_bias: bias(&format!("{p}.self_attn.v_proj.bias"), kv)?,
                o: matrix(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: matrix(&format!("{p}.mlp.gate_proj.weight"), &[c.intermediate, h])?,
                up: matrix(&format!("{p}.mlp.up_proj.weight"), &[c.intermediate, h])?,
                down: matrix(&format!("{p}.mlp.down_proj.weight"), &[h, c.intermediate])?,
            });
        }
        let embed = get("model.embed_tokens.weight", &[c.vocab, h])?;
        let lm_head = if c.tie_embeddings {
            None
        } else {
            Some(matrix("lm_head.weight", &[c.vocab, h])?)
        };
        let norm = get("model.norm.weight", &[h])?;
        let dtype = tensors.dtype().ok_or_else(|| WorkerError::Tensor {
            name: "model".into(),
            detail: "no tensors".into(),
        })?;
        tensors.release_pages();
        Ok(Self {
            inv_freq: config.inv_freq(),
            kv_dtype: KvDtype::auto(dtype),
            dtype,
            config,
            kernels,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// The same model with its KV cache stored in `dtype`.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    pub fn kernels(&self) -> &K {
        &self.kernels
    }

    /// Width of one layer's keys (or values) for one token.
    pub fn kv_width(&self) -> usize {
        self.config.kv_heads * self.config.head_dim
    }

    /// Bytes one token's keys and values take over all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.kernels.kv_slot_bytes(self.kv_width(), self.kv_dtype) * self.config.layers
    }

    /// A cache of `blocks` blocks of `block_size` tokens.
    pub fn kv_cache(&self, blocks: usize, block_size: usize) -> Result<KvCache<K>> {
        let slots = blocks * block_size;
        let layers = (0..self.config.layers)
            .map(|_| self.kernels.kv(slots, self.kv_width(), self.kv_dtype))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(KvCache {
            layers,
            blocks,
            block_size,
        })
    }

    /// One forward pass over `chunks`; the logits of each chunk's last
    /// token where it asked for them (empty otherwise).
    pub fn forward(&self, cache: &mut KvCache<K>, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>> {
        let out = self.forward_picking(cache, chunks, &vec![None; chunks.len()])?;
        Ok(out
            .into_iter()
            .map(|n| match n {
                Next::Logits(l) => l,
                Next::Nothing | Next::Token(_) => Vec::new(),
            })
            .collect())
    }

    /// As [`Model::forward`], but a chunk that asks for logits and comes
    /// with a [`Pick`] (`picks[i]`, on a device that
    /// [picks tokens](Kernels::picks_tokens)) gets its next token, chosen
    /// on the device, instead of its logits.
    pub fn forward_picking(
        &self,
        cache: &mut KvCache<K>,
        chunks: &[Chunk<'_>],
        picks: &[Option<Pick>],
    ) -> Result<Vec<Next>> {
        if picks.len() != chunks.len() {
            return Err(WorkerError::Kernel(KernelError::Shape {
                op: "forward",
                detail: format!("{} picks for {} chunks", picks.len(), chunks.len()),
            }));
        }
        self.kernels
            .scope(|| self.forward_on_device(cache, chunks, picks))
    }

    fn forward_on_device(
        &self,
        cache: &mut KvCache<K>,
        chunks: &[Chunk<'_>],
        picks: &[Option<Pick>],
    ) -> Result<Vec<Next>> {
        let c = &self.config;
        let k = &self.kernels;
        let bs = cache.block_size;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut seqs = Vec::with_capacity(chunks.len());
        for ch in chunks {
            let end = ch.start + ch.tokens.len();
            if ch.tokens.is_empty() || end > c.max_positions || ch.blocks.len() * bs < end {
                return Err(WorkerError::Kernel(
                    lattice_gpu_kernels::KernelError::Shape {
                        op: "forward",
                        detail: format!(
                            "{} tokens at {} with {} blocks (context {})",
                            ch.tokens.len(),
                            ch.start,
                            ch.blocks.len(),
                            c.max_positions
                        ),
                    },
                ));
            }
            let first = tokens.len();
            for (i, &t) in ch.tokens.iter().enumerate() {
                let p = ch.start + i;
                tokens.push(t);
                positions.push(p as u32);
                slots.push(ch.blocks[p / bs] * bs as u32 + (p % bs) as u32);
            }
            seqs.push(AttnSeq {
                rows: first..tokens.len(),
                start: ch.start,
                blocks: ch.blocks,
            });
        }
        let n = tokens.len();
        let (qw, kvw) = (c.heads * c.head_dim, self.kv_width());
        let mut x = k.act(n, c.hidden)?;
        let mut normed = k.act(n, c.hidden)?;
        let mut q = k.act(n, qw)?;
        let mut kk = k.act(n, kvw)?;
        let mut vv = k.act(n, kvw)?;
        let mut attn = k.act(n, qw)?;
        let mut delta = k.act(n, c.hidden)?;
        let mut gate = k.act(n, c.intermediate)?;
        let mut up = k.act(n, c.intermediate)?;
        let mut spare = k.act(n, c.intermediate)?;
        let shape = AttnShape {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            block_size: bs,
            window: c.window,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        };
        k.embed(&self.embed, &tokens, &mut x)?;
        for (i, l) in self.layers.iter().enumerate() {
            if i == 0 {
                k.rms_norm(&x, &l.attn_norm, c.rms_eps, &mut normed)?;
            } else {
                k.add_rms_norm(&mut x, &delta, &l.attn_norm, c.rms_eps, &mut normed)?;
            }
            k.matmul_many(
                &normed,
                &[
                    (&l.q, l.q_bias.as_ref()),
                    (&l.k, l.k_bias.as_ref()),
                    (&l.v, l.v_bias.as_ref()),
                ],
                &mut [&mut q, &mut kk, &mut vv],
            )?;
            k.rope(&mut q, c.head_dim, &positions, &self.inv_freq)?;
            k.rope(&mut kk, c.head_dim, &positions, &self.inv_freq)?;
            k.kv_write(&mut cache.layers[i], &kk, &vv, &slots)?;
            k.attention(&q, &cache.layers[i], shape, &seqs, &mut attn)?;
            k.matmul(&attn, &l.o, None, &mut delta)?;
            k.add_rms_norm(&mut x, &delta, &l.mlp_norm, c.rms_eps, &mut normed)?;
            k.matmul_many(
                &normed,
                &[(&l.gate, None), (&l.up, None)],
                &mut [&mut gate, &mut up],
            )?;
            // `up` becomes silu(gate) · up, the down projection's input
            // (written into `spare`, then the two trade places).
            k.silu_mul(&gate, &up, &mut spare)?;
            std::mem::swap(&mut up, &mut spare);
            k.matmul(&up, &l.down, None, &mut delta)?;
        }
        k.add_rms_norm(&mut x, &delta, &self.norm, c.rms_eps, &mut normed)?;
        for a in [x, q, kk, vv, attn, delta, gate, up, spare] {
            k.recycle(a);
        }
        // Each chunk that asks for logits, with its row and its pick.
        let wanted: Vec<(usize, usize, Option<&Pick>)> = seqs
            .iter()
            .zip(chunks)
            .zip(picks)
            .enumerate()
            .filter(|(_, ((_, ch), _))| ch.logits)
            .map(|(i, ((s, _), p))| (i, s.rows.end - 1, p.as_ref().filter(|_| k.picks_tokens())))
            .collect();
        let mut out = vec![Next::Nothing; chunks.len()];
        if wanted.is_empty() {
            k.recycle(normed);
            return Ok(out);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        // The final rows of `part` of the wanted chunks, their logits.
        let logits_of = |part: &[&(usize, usize, Option<&Pick>)]| -> Result<K::Act> {
            let rows: Vec<usize> = part.iter().map(|w| w.1).collect();
            let mut last = k.act(rows.len(), c.hidden)?;
            k.gather_rows(&normed, &rows, &mut last)?;
            let mut logits = k.act(rows.len(), c.vocab)?;
            k.matmul(&last, head, None, &mut logits)?;
            k.recycle(last);
            Ok(logits)
        };
        let (device, host): (Vec<_>, Vec<_>) = wanted.iter().partition(|w| w.2.is_some());
        if !host.is_empty() {
            let on_device = logits_of(&host)?;
            let logits = k.to_host(&on_device)?;
            k.recycle(on_device);
            for (w, row) in host.iter().zip(logits.chunks_exact(c.vocab)) {
                out[w.0] = Next::Logits(row.to_vec());
            }
        }
        if !device.is_empty() {
            let mut logits = logits_of(&device)?;
            let picks: Vec<Pick> = device.iter().filter_map(|w| w.2.cloned()).collect();
            let ids = k.pick(&mut logits, &picks)?;
            k.recycle(logits);
            for (w, id) in device.iter().zip(ids) {
                out[w.0] = Next::Token(id);
            }
        }
        k.recycle(normed);
        Ok(out)
    }
}
