//! The element-wise and row-wise steps on the CPU: embedding lookup,
//! RMSNorm, residual add, RoPE, SwiGLU, KV-cache writes.
//!
//! Must never: read a weight in another dtype than stored, or index
//! outside a matrix (shapes are checked before any loop).

use super::{KvCpu, KvRows, Mat, Simd};
use crate::{shape, Elems, HostWeight, KernelError, Layout};
use rayon::prelude::*;
use std::borrow::Cow;

pub(super) fn embed(table: &HostWeight, tokens: &[u32], out: &mut Mat) -> Result<(), KernelError> {
    let [vocab, hidden] = table.shape() else {
        return Err(shape("embed", "the table is not a matrix"));
    };
    let (vocab, hidden) = (*vocab, *hidden);
    if table.layout() != Layout::Rows {
        return Err(shape("embed", format!("{} is not in rows", table.name())));
    }
    if out.rows != tokens.len() || out.cols != hidden {
        return Err(shape(
            "embed",
            format!("{} tokens into {}×{}", tokens.len(), out.rows, out.cols),
        ));
    }
    let elems = table.elems();
    let mut row = Vec::with_capacity(hidden);
    for (r, &t) in tokens.iter().enumerate() {
        let t = t as usize;
        if t >= vocab {
            return Err(KernelError::Token {
                token: t as u32,
                vocab,
            });
        }
        row.clear();
        elems.extend_f32(t * hidden..(t + 1) * hidden, &mut row);
        out.data[r * hidden..(r + 1) * hidden].copy_from_slice(&row);
    }
    Ok(())
}

/// A vector weight's values as f32: borrowed when stored as f32 (the CPU
/// device converts vectors once at load, `Cpu::weight`), converted
/// otherwise.
fn vector<'w>(
    w: &'w HostWeight,
    len: usize,
    op: &'static str,
) -> Result<Cow<'w, [f32]>, KernelError> {
    if w.shape() != [len] {
        return Err(shape(
            op,
            format!("{} is {:?}, expected [{len}]", w.name(), w.shape()),
        ));
    }
    Ok(match w.elems() {
        Elems::F32(s) => Cow::Borrowed(&s[..len]),
        other => {
            let mut v = Vec::with_capacity(len);
            other.extend_f32(0..len, &mut v);
            Cow::Owned(v)
        }
    })
}

pub(super) fn rms_norm(
    x: &Mat,
    w: &HostWeight,
    eps: f32,
    out: &mut Mat,
) -> Result<(), KernelError> {
    let cols = x.cols;
    let weight = vector(w, cols, "rms_norm")?;
    out.data
        .par_chunks_mut(cols)
        .zip(x.data.par_chunks(cols))
        .for_each(|(o, row)| {
            let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, v), g) in o.iter_mut().zip(row).zip(weight.iter()) {
                *o = v * inv * g;
            }
        });
    Ok(())
}

pub(super) fn add(x: &mut Mat, y: &Mat) {
    for (a, b) in x.data.iter_mut().zip(&y.data) {
        *a += b;
    }
}

pub(super) fn rope(
    x: &mut Mat,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
) -> Result<(), KernelError> {
    let half = head_dim / 2;
    if head_dim == 0
        || !head_dim.is_multiple_of(2)
        || !x.cols.is_multiple_of(head_dim)
        || inv_freq.len() != half
    {
        return Err(shape(
            "rope",
            format!(
                "{} columns, head_dim {head_dim}, {} frequencies",
                x.cols,
                inv_freq.len()
            ),
        ));
    }
    if positions.len() != x.rows {
        return Err(shape(
            "rope",
            format!("{} positions for {} rows", positions.len(), x.rows),
        ));
    }
    let cols = x.cols;
    x.data
        .par_chunks_mut(cols)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            let (sin, cos): (Vec<f32>, Vec<f32>) =
                inv_freq.iter().map(|f| (pos as f32 * f).sin_cos()).unzip();
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * cos[i] - x1 * sin[i];
                    b[i] = x1 * cos[i] + x0 * sin[i];
                }
            }
        });
    Ok(())
}

pub(super) fn silu_mul(simd: Simd, gate: &Mat, up: &Mat, out: &mut Mat) {
    out.data
        .par_chunks_mut(4096)
        .zip(gate.data.par_chunks(4096).zip(up.data.par_chunks(4096)))
        .for_each(|(o, (g, u))| {
            #[cfg(target_arch = "x86_64")]
            if simd == Simd::Avx512 {
                // SAFETY: `Simd::detect` found AVX-512F on this CPU.
                #[allow(unsafe_code)]
                unsafe {
                    super::vmath::silu_mul(g, u, o)
                };
                return;
            }
            let _ = simd;
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

pub(super) fn kv_write(kv: &mut KvCpu, k: &Mat, v: &Mat, slots: &[u32]) -> Result<(), KernelError> {
    let w = kv.width;
    if k.cols != w || v.cols != w || k.rows != slots.len() || v.rows != slots.len() {
        return Err(shape(
            "kv_write",
            format!(
                "k {}×{}, v {}×{} into width {w} for {} slots",
                k.rows,
                k.cols,
                v.rows,
                v.cols,
                slots.len()
            ),
        ));
    }
    let capacity = kv.k.len() / w.max(1);
    if let Some(s) = slots.iter().find(|&&s| s as usize >= capacity) {
        return Err(shape("kv_write", format!("slot {s} of {capacity}")));
    }
    for (r, &slot) in slots.iter().enumerate() {
        let at = slot as usize * w..(slot as usize + 1) * w;
        put(&mut kv.k, at.clone(), k.row(r));
        put(&mut kv.v, at, v.row(r));
    }
    Ok(())
}

/// `src` into `rows[at]`, rounded to the cache's dtype (bf16: to nearest,
/// ties to even, as the CUDA device's `__float2bfloat16`).
fn put(rows: &mut KvRows, at: std::ops::Range<usize>, src: &[f32]) {
    match rows {
        KvRows::F32(d) => d[at].copy_from_slice(src),
        KvRows::BF16(d) => {
            for (d, s) in d[at].iter_mut().zip(src) {
                *d = half::bf16::from_f32(*s).to_bits();
            }
        }
    }
}

/// The f32 value of a vector weight's elements (biases).
pub(super) fn bias_values(b: &HostWeight, len: usize) -> Result<Cow<'_, [f32]>, KernelError> {
    vector(b, len, "bias")
}
