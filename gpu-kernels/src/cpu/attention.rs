//! Causal attention over the paged KV cache on the CPU: one task per
//! (query row, KV head), each reading its sequence's keys and values
//! through the block table once for all the query heads of the group that
//! shares them (grouped-query attention), not once per head. A head's
//! arithmetic is the same in any batch and any group size.
//!
//! Must never: read a slot beyond the sequence's context (positions past
//! the query's own are masked by not being read at all), or a block the
//! table does not name (an error, not a panic).

#[cfg(target_arch = "x86_64")]
mod avx512;

use super::{KvCpu, KvRows, Mat, Simd};
use crate::{shape, AttnSeq, AttnShape, KernelError};
use rayon::prelude::*;

pub(super) fn attention(
    simd: Simd,
    q: &Mat,
    kv: &KvCpu,
    s: AttnShape,
    seqs: &[AttnSeq<'_>],
    out: &mut Mat,
) -> Result<(), KernelError> {
    let width = s.heads * s.head_dim;
    if s.kv_heads == 0
        || s.heads == 0
        || !s.heads.is_multiple_of(s.kv_heads)
        || s.block_size == 0
        || s.head_dim == 0
    {
        return Err(shape(
            "attention",
            format!(
                "{} heads of {} over {} KV heads, blocks of {}",
                s.heads, s.head_dim, s.kv_heads, s.block_size
            ),
        ));
    }
    if q.cols != width
        || out.cols != width
        || out.rows != q.rows
        || kv.width != s.kv_heads * s.head_dim
    {
        return Err(shape(
            "attention",
            format!(
                "q {}×{}, out {}×{}, cache width {}",
                q.rows, q.cols, out.rows, out.cols, kv.width
            ),
        ));
    }
    // Which sequence owns each row, checked once.
    let mut owner = vec![usize::MAX; q.rows];
    let slots = kv.k.len() / kv.width.max(1);
    for (i, seq) in seqs.iter().enumerate() {
        if seq.rows.end > q.rows {
            return Err(shape(
                "attention",
                format!("rows {:?} of {}", seq.rows, q.rows),
            ));
        }
        let ctx = seq.start + seq.rows.len();
        if seq.blocks.len() * s.block_size < ctx {
            return Err(shape(
                "attention",
                format!("{} blocks for a context of {ctx}", seq.blocks.len()),
            ));
        }
        if let Some(b) = seq
            .blocks
            .iter()
            .find(|&&b| (b as usize + 1) * s.block_size > slots)
        {
            return Err(shape("attention", format!("block {b} outside the cache")));
        }
        owner[seq.rows.clone()].iter_mut().for_each(|o| *o = i);
    }
    if owner.contains(&usize::MAX) {
        return Err(shape("attention", "a query row belongs to no sequence"));
    }
    let at = Call {
        simd,
        q,
        s,
        seqs,
        owner: &owner,
        width: kv.width,
    };
    match (&kv.k, &kv.v) {
        (KvRows::F32(k), KvRows::F32(v)) => at.run(k, v, out),
        (KvRows::BF16(k), KvRows::BF16(v)) => at.run(k, v, out),
        _ => {
            return Err(shape(
                "attention",
                "keys and values stored in different dtypes",
            ))
        }
    }
    Ok(())
}

/// A cache element, read widened to f32.
trait KvElem: Copy + Send + Sync {
    fn f32(self) -> f32;

    /// Sixteen elements at `p`, widened to f32.
    ///
    /// # Safety
    /// AVX-512F; `p` points at sixteen readable elements.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's guarantee.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

/// bf16, as its bits.
impl KvElem for u16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }

    /// Widened by a shift into the top half of an f32.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's guarantee (32 bytes at `p`).
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }
}

/// One attention call, checked.
struct Call<'a> {
    simd: Simd,
    q: &'a Mat,
    s: AttnShape,
    seqs: &'a [AttnSeq<'a>],
    owner: &'a [usize],
    /// Values per cache slot (all KV heads).
    width: usize,
}

impl Call<'_> {
    fn run<T: KvElem>(&self, k: &[T], v: &[T], out: &mut Mat) {
        let s = self.s;
        let q_width = s.heads * s.head_dim;
        // The query heads of KV head `kvh` are `kvh * group..`, adjacent
        // in a row of `q` and of `out`.
        let group = s.heads / s.kv_heads;
        out.data
            .par_chunks_mut(group * s.head_dim)
            .enumerate()
            .for_each(|(task, o)| {
                let (row, kvh) = (task / s.kv_heads, task % s.kv_heads);
                let seq = &self.seqs[self.owner[row]];
                let pos = seq.start + (row - seq.rows.start);
                let qs =
                    &self.q.data[row * q_width + kvh * group * s.head_dim..][..group * s.head_dim];
                let at = Head {
                    k,
                    v,
                    width: self.width,
                    s,
                    blocks: seq.blocks,
                    pos,
                    kvh,
                };
                at.one(self.simd, qs, o);
            });
    }
}

/// One query row's view of one KV head of its sequence.
struct Head<'a, T> {
    k: &'a [T],
    v: &'a [T],
    width: usize,
    s: AttnShape,
    blocks: &'a [u32],
    pos: usize,
    kvh: usize,
}

impl<T: KvElem> Head<'_, T> {
    /// The first position the query sees (its window's start).
    fn first(&self) -> usize {
        self.s
            .window
            .map_or(0, |w| (self.pos + 1).saturating_sub(w))
    }

    /// Where position `p`'s key (and value) of this KV head starts in
    /// the cache, through the block table.
    fn offset(&self, p: usize) -> usize {
        let bs = self.s.block_size;
        let slot = self.blocks[p / bs] as usize * bs + p % bs;
        slot * self.width + self.kvh * self.s.head_dim
    }

    fn one(&self, simd: Simd, q: &[f32], o: &mut [f32]) {
        match simd {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                let hd = self.s.head_dim;
                if hd.is_multiple_of(16)
                    && hd <= avx512::MAX_HEAD_DIM
                    && q.len() / hd <= avx512::MAX_GROUP
                {
                    let first = self.first();
                    let task = avx512::Task {
                        k: self.k,
                        v: self.v,
                        at: |i: usize| self.offset(first + i),
                        n: self.pos + 1 - first,
                        hd,
                        scale: self.s.scale,
                    };
                    // SAFETY: `Simd::detect` found AVX-512F; the head
                    // dimension and group are within the body's bounds
                    // (checked above), `q` and `o` hold the group's heads,
                    // and every position's offset is inside the cache
                    // (the block table was checked by `attention`).
                    #[allow(unsafe_code)]
                    unsafe {
                        task.run(q, o)
                    };
                    return;
                }
                // SAFETY: `Simd::detect` found AVX-512F (and with it AVX2
                // and FMA) on this CPU.
                #[allow(unsafe_code)]
                unsafe {
                    self.one_avx512(q, o)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                // SAFETY: `Simd::detect` found AVX2, FMA and F16C on this
                // CPU.
                #[allow(unsafe_code)]
                unsafe {
                    self.one_avx2(q, o)
                }
            }
            _ => self.body::<false>(q, o),
        }
    }

    /// The same body compiled for 512-bit registers: the 16-lane dot
    /// product in one register, sixteen values widened and scaled per
    /// instruction.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    fn one_avx512(&self, q: &[f32], o: &mut [f32]) {
        self.body::<true>(q, o)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn one_avx2(&self, q: &[f32], o: &mut [f32]) {
        self.body::<true>(q, o)
    }

    /// The query heads of the group (`q` and `o` hold them one after
    /// another): for each head, softmax(q·Kᵀ·scale) · V over positions
    /// `first..=pos`, each key and value read once for all heads.
    #[inline(always)]
    fn body<const FMA: bool>(&self, q: &[f32], o: &mut [f32]) {
        let s = self.s;
        let hd = s.head_dim;
        let group = q.len() / hd.max(1);
        let pos = self.pos;
        let first = self.first();
        let n = pos + 1 - first;
        // One buffer per task: head `g`'s scores at `g * n..`, then one
        // value per head, its running max and, once the scores are
        // exponentiated, their sum.
        let mut buf = vec![0.0f32; group * (n + 1)];
        let (scores, per_head) = buf.split_at_mut(group * n);
        per_head.fill(f32::NEG_INFINITY);
        for (i, p) in (first..=pos).enumerate() {
            let k = &self.k[self.offset(p)..][..hd];
            for (g, (qh, m)) in q.chunks_exact(hd).zip(per_head.iter_mut()).enumerate() {
                let v = dot::<FMA, T>(qh, k) * s.scale;
                *m = m.max(v);
                scores[g * n + i] = v;
            }
        }
        for (head, m) in scores.chunks_exact_mut(n).zip(per_head.iter_mut()) {
            let mut sum = 0.0f32;
            for v in head.iter_mut() {
                *v = (*v - *m).exp();
                sum += *v;
            }
            *m = sum;
        }
        let sums = per_head;
        o.iter_mut().for_each(|x| *x = 0.0);
        for (i, p) in (first..=pos).enumerate() {
            let v = &self.v[self.offset(p)..][..hd];
            for (g, oh) in o.chunks_exact_mut(hd).enumerate() {
                let w = scores[g * n + i] / sums[g];
                for (o, v) in oh.iter_mut().zip(v) {
                    let v = v.f32();
                    *o = if FMA { w.mul_add(v, *o) } else { *o + w * v };
                }
            }
        }
    }
}

/// `a · b` over 16 accumulators (one AVX-512 register, two AVX2 ones).
#[inline(always)]
fn dot<const FMA: bool, T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let whole = n / L * L;
    let mut acc = [0.0f32; L];
    for (ca, cb) in a[..whole].chunks_exact(L).zip(b[..whole].chunks_exact(L)) {
        for l in 0..L {
            let b = cb[l].f32();
            acc[l] = if FMA {
                ca[l].mul_add(b, acc[l])
            } else {
                acc[l] + ca[l] * b
            };
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in whole..n {
        s += a[i] * b[i].f32();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KvDtype;

    /// Two sequences over scattered blocks, one of them with a sliding
    /// window, caches in f32 and in bf16 (written through `kv_write`),
    /// every body this CPU runs: against a direct computation on the
    /// values the cache holds. The shapes cover a head dimension the
    /// AVX-512 body refuses (8) and ones it takes (16, 64, 80: 64 + 16),
    /// groups of 1, 2, 3 and 8 query heads per KV head, and contexts of
    /// one to three blocks of sixteen positions (the last one partial).
    #[test]
    fn paged_attention_matches_a_direct_computation() {
        for (heads, kv_heads, hd) in [(4, 2, 8), (4, 2, 64), (6, 2, 16), (8, 1, 32), (2, 2, 80)] {
            matches_a_direct_computation(heads, kv_heads, hd);
        }
    }

    fn matches_a_direct_computation(heads: usize, kv_heads: usize, hd: usize) {
        let bs = 4;
        let group = heads / kv_heads;
        let kvw = kv_heads * hd;
        let slots = 64 * bs;
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let raw_k: Vec<f32> = (0..slots * kvw).map(val).collect();
        let raw_v: Vec<f32> = (0..slots * kvw).map(|i| val(i + 13)).collect();
        let seq_a = [5u32, 2, 9, 11, 40, 33, 17, 60, 3, 22, 50];
        let seq_b = [1u32, 7];
        // a: 3 new rows at positions 37..40 (ctx 40); b: 1 row at position 6.
        let q = Mat::from_vec(
            4,
            heads * hd,
            (0..4 * heads * hd).map(|i| val(i + 5)).collect(),
        )
        .unwrap();
        for dtype in [KvDtype::F32, KvDtype::BF16] {
            let mut kv = KvCpu {
                width: kvw,
                k: KvRows::zeros(slots * kvw, dtype).unwrap(),
                v: KvRows::zeros(slots * kvw, dtype).unwrap(),
            };
            let all: Vec<u32> = (0..slots as u32).collect();
            let k_rows = Mat::from_vec(slots, kvw, raw_k.clone()).unwrap();
            let v_rows = Mat::from_vec(slots, kvw, raw_v.clone()).unwrap();
            super::super::ops::kv_write(&mut kv, &k_rows, &v_rows, &all).unwrap();
            let held = |x: &f32| match dtype {
                KvDtype::F32 => *x,
                KvDtype::BF16 => half::bf16::from_f32(*x).to_f32(),
            };
            let kf: Vec<f32> = raw_k.iter().map(held).collect();
            let vf: Vec<f32> = raw_v.iter().map(held).collect();
            if dtype == KvDtype::BF16 {
                assert_ne!(kf, raw_k, "the bf16 cache rounds");
            }
            for window in [None, Some(3), Some(20)] {
                let shape = AttnShape {
                    heads,
                    kv_heads,
                    head_dim: hd,
                    block_size: bs,
                    window,
                    scale: 0.35,
                };
                let seqs = [
                    AttnSeq {
                        rows: 0..3,
                        start: 37,
                        blocks: &seq_a,
                    },
                    AttnSeq {
                        rows: 3..4,
                        start: 6,
                        blocks: &seq_b,
                    },
                ];
                // Every body this CPU can run (AVX-512 implies AVX2).
                let mut simds = vec![Simd::detect(), Simd::Portable];
                if Simd::detect() == Simd::Avx512 {
                    simds.push(Simd::Avx2);
                }
                for simd in simds {
                    let mut out = Mat::zeros(4, heads * hd);
                    attention(simd, &q, &kv, shape, &seqs, &mut out).unwrap();
                    for (row, blocks, pos) in [
                        (0usize, &seq_a[..], 37usize),
                        (1, &seq_a[..], 38),
                        (2, &seq_a[..], 39),
                        (3, &seq_b[..], 6),
                    ] {
                        for h in 0..heads {
                            let kvh = h / group;
                            let qh = &q.data[row * heads * hd + h * hd..][..hd];
                            let first = window.map_or(0, |w: usize| (pos + 1).saturating_sub(w));
                            let slot =
                                |p: usize| (blocks[p / bs] as usize * bs + p % bs) * kvw + kvh * hd;
                            let sc: Vec<f64> = (first..=pos)
                                .map(|p| {
                                    (0..hd)
                                        .map(|d| f64::from(qh[d]) * f64::from(kf[slot(p) + d]))
                                        .sum::<f64>()
                                        * 0.35
                                })
                                .collect();
                            let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                            let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                            let z: f64 = e.iter().sum();
                            for d in 0..hd {
                                let want: f64 = (first..=pos)
                                    .zip(&e)
                                    .map(|(p, w)| w / z * f64::from(vf[slot(p) + d]))
                                    .sum();
                                let got = out.data[row * heads * hd + h * hd + d];
                                assert!(
                                    (f64::from(got) - want).abs() < 1e-5,
                                    "{heads}/{kv_heads}×{hd} {dtype:?} {window:?} {simd:?} row {row} head {h}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_block_table_too_short_for_the_context_is_an_error() {
        let kv = KvCpu {
            width: 8,
            k: KvRows::F32(vec![0.0; 64]),
            v: KvRows::F32(vec![0.0; 64]),
        };
        let q = Mat::zeros(1, 8);
        let mut out = Mat::zeros(1, 8);
        let shape = AttnShape {
            heads: 1,
            kv_heads: 1,
            head_dim: 8,
            block_size: 4,
            window: None,
            scale: 1.0,
        };
        let seqs = [AttnSeq {
            rows: 0..1,
            start: 4,
            blocks: &[0],
        }];
        let err = attention(Simd::Portable, &q, &kv, shape, &seqs, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shape mismatch in attention: 1 blocks for a context of 5"
        );
    }
}
