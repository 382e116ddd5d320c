//! `lattice-load-worker --attention`: the CPU attention kernel alone, on
//! the model's attention shape with a bf16 cache (as the worker keeps one
//! for a bf16 model), at growing contexts — what long agent prompts cost
//! once the weights are no longer the whole step.
//!
//! Must never: touch the model or the engine (the kernel is called through
//! `Kernels` directly), or read outside the cache it fills itself.

use super::Args;
use anyhow::Result;
use lattice_gpu_kernels::cpu::Mat;
use lattice_gpu_kernels::{AttnSeq, AttnShape, Kernels, KvDtype};
use std::time::Instant;

/// Sequences of the decode step's batch.
const SEQS: usize = 16;
/// Rows of the prefill chunk (the worker's default chunk).
const CHUNK: usize = 512;
/// Tokens per cache block.
const BLOCK: usize = 16;

/// One table: per context length, a prefill chunk of `CHUNK` rows ending
/// there (one sequence), and a decode step of 1 and of `SEQS` sequences
/// there; each the best of three timed repetitions, with the rate of the
/// products (2 × 2 × heads × head dim per position seen).
pub(super) fn attention(a: &Args) -> Result<()> {
    let cpu = a.cpu()?;
    let hd = a.hidden / a.heads;
    let width = a.kv_heads * hd;
    let shape = AttnShape {
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim: hd,
        block_size: BLOCK,
        window: None,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let val = |i: usize| ((i * 7919 % 2001) as f32 / 1000.0) - 1.0;
    println!(
        "\nattention alone: {} heads over {} KV heads of {hd}, bf16 cache, {} threads",
        a.heads, a.kv_heads, a.threads
    );
    println!("| context | prefill chunk of {CHUNK} rows, ms | GFLOP/s | decode, 1 sequence, ms | GFLOP/s | decode, {SEQS} sequences, ms | GFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    for ctx in [512usize, 1024, 2048, 4096] {
        let per_seq = ctx.div_ceil(BLOCK);
        let slots = SEQS * per_seq * BLOCK;
        let mut kv = cpu.kv(slots, width, KvDtype::BF16)?;
        let k = Mat::from_vec(slots, width, (0..slots * width).map(val).collect())?;
        let v = Mat::from_vec(
            slots,
            width,
            (0..slots * width).map(|i| val(i + 7)).collect(),
        )?;
        let all: Vec<u32> = (0..slots as u32).collect();
        cpu.kv_write(&mut kv, &k, &v, &all)?;
        // Sequence `s` owns blocks `s, s + SEQS, …`: scattered, as a
        // cache that served many requests hands them out.
        let blocks: Vec<Vec<u32>> = (0..SEQS)
            .map(|s| (0..per_seq).map(|b| (b * SEQS + s) as u32).collect())
            .collect();
        let q_width = a.heads * hd;
        let time = |rows: usize, seqs: &[AttnSeq<'_>]| -> Result<f64> {
            let q = Mat::from_vec(
                rows,
                q_width,
                (0..rows * q_width).map(|i| val(i + 3)).collect(),
            )?;
            let mut out = cpu.act(rows, q_width)?;
            let reps = (4 * 1024 * 1024 / (rows * ctx)).clamp(1, 200);
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    cpu.attention(&q, &kv, shape, seqs, &mut out)?;
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            Ok(best)
        };
        let chunk = CHUNK.min(ctx);
        let prefill = time(
            chunk,
            &[AttnSeq {
                rows: 0..chunk,
                start: ctx - chunk,
                blocks: &blocks[0],
            }],
        )?;
        let one = time(
            1,
            &[AttnSeq {
                rows: 0..1,
                start: ctx - 1,
                blocks: &blocks[0],
            }],
        )?;
        let many: Vec<AttnSeq<'_>> = (0..SEQS)
            .map(|s| AttnSeq {
                rows: s..s + 1,
                start: ctx - 1,
                blocks: &blocks[s],
            })
            .collect();
        let batch = time(SEQS, &many)?;
        // Positions seen: a chunk's rows see ctx - chunk + 1 ..= ctx.
        let seen_chunk = (ctx - chunk + 1..=ctx).sum::<usize>() as f64;
        let flop = |positions: f64, secs: f64| 4.0 * (a.heads * hd) as f64 * positions / secs / 1e9;
        println!(
            "| {ctx} | {:.2} | {:.1} | {:.3} | {:.1} | {:.2} | {:.1} |",
            prefill * 1e3,
            flop(seen_chunk, prefill),
            one * 1e3,
            flop(ctx as f64, one),
            batch * 1e3,
            flop((SEQS * ctx) as f64, batch),
        );
    }
    Ok(())
}
