//! Causal attention over the paged KV cache on the CPU: one task per
//! (query row, KV head), each reading its sequence's keys and values
//! through the block table once for all the query heads of the group that
//! shares them (grouped-query attention), not once per head. A prefill
//! chunk on the AVX-512 body goes in tiles instead: one task per few rows
//! of a sequence, each key read once for all their heads (the rows see
//! nearly the same positions; flash attention's tiling of queries). A
//! head's arithmetic is the same in any batch, any group size and any
//! tile: its bits do not depend on which path ran it.
//!
//! Must never: read a slot beyond the sequence's context written so far
//! (a row reads positions past its own only up to its tile's last row,
//! and never weights them), or a block the table does not name (an error,
//! not a panic).

#[cfg(target_arch = "x86_64")]
mod avx512;

use super::{KvCpu, KvRows, Mat, Simd};
use crate::{shape, AttnSeq, AttnShape, KernelError};
use rayon::prelude::*;
use std::ops::Range;

/// Whether query rows of one sequence share their reads of the keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Tiles {
    /// Where the body allows it and there are rows enough to keep every
    /// thread busy (a prefill chunk).
    Auto,
    /// Where the body allows it (tests: against `Never`, bit for bit).
    #[cfg_attr(not(test), allow(dead_code))]
    Always,
    /// One task per query row and KV head.
    #[cfg_attr(not(test), allow(dead_code))]
    Never,
}

/// Tiles are used when there are at least this many per thread.
const TILES_PER_THREAD: usize = 4;

pub(super) fn attention(
    simd: Simd,
    q: &Mat,
    kv: &KvCpu,
    s: AttnShape,
    seqs: &[AttnSeq<'_>],
    out: &mut Mat,
    tiles: Tiles,
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
        tiles,
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
    tiles: Tiles,
}

impl Call<'_> {
    fn run<T: KvElem>(&self, k: &[T], v: &[T], out: &mut Mat) {
        #[cfg(target_arch = "x86_64")]
        if let Some(rows) = self.tile_rows() {
            self.run_tiles(k, v, rows, out);
            return;
        }
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

#[cfg(target_arch = "x86_64")]
impl Call<'_> {
    /// Rows per tile, when rows of a sequence share their reads of the
    /// keys: on the AVX-512 body, without a sliding window (each row of a
    /// tile reads the positions of the tile's last row, and weights only
    /// its own), as many rows as make `MAX_HEADS` heads.
    fn tile_rows(&self) -> Option<usize> {
        let s = self.s;
        let group = s.heads / s.kv_heads;
        if self.tiles == Tiles::Never
            || self.simd != Simd::Avx512
            || s.window.is_some()
            || !s.head_dim.is_multiple_of(16)
            || s.head_dim > avx512::MAX_HEAD_DIM
            || group > avx512::MAX_GROUP
        {
            return None;
        }
        let rows = avx512::MAX_HEADS / group;
        let enough = self.q.rows >= TILES_PER_THREAD * rows * rayon::current_num_threads();
        (rows > 1 && (enough || self.tiles == Tiles::Always)).then_some(rows)
    }

    /// One task per tile of `per_tile` rows (split where a sequence ends),
    /// every KV head in turn.
    fn run_tiles<T: KvElem>(&self, k: &[T], v: &[T], per_tile: usize, out: &mut Mat) {
        let q_width = self.s.heads * self.s.head_dim;
        out.data
            .par_chunks_mut(per_tile * q_width)
            .enumerate()
            .for_each(|(t, o)| {
                let first = t * per_tile;
                let rows = o.len() / q_width;
                let mut r = 0;
                while r < rows {
                    let seq = self.owner[first + r];
                    let mut end = r + 1;
                    while end < rows && self.owner[first + end] == seq {
                        end += 1;
                    }
                    let o = &mut o[r * q_width..end * q_width];
                    self.tile(k, v, &self.seqs[seq], first + r..first + end, o);
                    r = end;
                }
            });
    }

    /// Rows `rows` of one sequence (`o`: their output rows), each KV head
    /// in turn: each key and value of the tile's context read once for all
    /// the heads of all the rows.
    fn tile<T: KvElem>(
        &self,
        k: &[T],
        v: &[T],
        seq: &AttnSeq<'_>,
        rows: Range<usize>,
        o: &mut [f32],
    ) {
        let s = self.s;
        let (hd, bs) = (s.head_dim, s.block_size);
        let span = s.heads / s.kv_heads * hd;
        let q_width = s.heads * hd;
        // Row `r` sees positions `0..=start + (r - seq.rows.start)`.
        let n: Vec<usize> = rows
            .clone()
            .map(|r| seq.start + (r - seq.rows.start) + 1)
            .collect();
        let seen = n.last().copied().unwrap_or(0);
        let slots: Vec<usize> = (0..seen)
            .map(|p| (seq.blocks[p / bs] as usize * bs + p % bs) * self.width)
            .collect();
        let mut qt = vec![0.0f32; rows.len() * span];
        let mut ot = vec![0.0f32; rows.len() * span];
        for kvh in 0..s.kv_heads {
            for (i, r) in rows.clone().enumerate() {
                qt[i * span..][..span]
                    .copy_from_slice(&self.q.data[r * q_width + kvh * span..][..span]);
            }
            let task = avx512::Task {
                k,
                v,
                at: &slots,
                base: kvh * hd,
                hd,
                scale: s.scale,
            };
            // SAFETY: `tile_rows` checked AVX-512F, the head dimension and
            // the group; a tile holds at most `MAX_HEADS` heads; every
            // slot's block was checked against the cache by `attention`,
            // and every row's `n` is at most the tile's context.
            #[allow(unsafe_code)]
            unsafe {
                task.run(&qt, span / hd, &n, &mut ot)
            };
            for i in 0..rows.len() {
                o[i * q_width + kvh * span..][..span].copy_from_slice(&ot[i * span..][..span]);
            }
        }
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
                    // Each position's offset through the block table,
                    // once (not once per head and read).
                    let at: Vec<usize> =
                        (self.first()..=self.pos).map(|p| self.offset(p)).collect();
                    let task = avx512::Task {
                        k: self.k,
                        v: self.v,
                        at: &at,
                        base: 0,
                        hd,
                        scale: self.s.scale,
                    };
                    // SAFETY: `Simd::detect` found AVX-512F; the head
                    // dimension and group are within the body's bounds
                    // (checked above), `q` and `o` hold the group's heads
                    // (one row), and every position's offset is inside the
                    // cache (the block table was checked by `attention`).
                    #[allow(unsafe_code)]
                    unsafe {
                        task.run(q, q.len() / hd, &[at.len()], o)
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
mod tests;
