//! Worker scenario (issue #15): Lattice Inference on the CPU, on a
//! generated Llama of a few hundred million parameters in bf16 (its
//! weights are noise; speed does not depend on them).
//!
//! 1. The machine's read bandwidth on the worker's threads (best of one
//!    stream and four streams at once, probed before and after the decode)
//!    and its copy bandwidth (STREAM-style: bytes read + written per
//!    second), and the decode rooflines they imply (weight bytes per token).
//! 2. Batch-1 prefill and decode tokens/s of the worker's forward pass, and
//!    of candle-transformers' Llama on the same files and threads (bf16 as
//!    stored, and upcast to f32 at load, its faster CPU path).
//! 3. Aggregate generation tokens/s with 1, 4 and 16 concurrent streams
//!    through the worker's HTTP API, with time to first token p50 / p99.
//!
//! `cargo run --release -p lattice-load-tests --bin lattice-load-worker --
//!    [--hidden 1024] [--layers 16] [--intermediate 2816] [--heads 16]
//!    [--kv-heads 4] [--threads 2] [--prompt 128] [--decode 64]
//!    [--stream-tokens 64] [--skip-candle] [--kernels] [--engine-only]
//!    [--batches] [--decode-only] [--attention]`
//!
//! `--attention` measures instead the attention kernel alone, by context
//! length (`worker/attention.rs`).
//!
//! `--decode-only` stops after the batch-1 prefill and decode figures of
//! the worker's forward pass (for profiling one sequence's step).
//!
//! `--engine-only` runs only the engine-alone step (1, 4 and 16 requests
//! submitted in-process), for profiling the scheduler.
//!
//! `--batches` measures only the time of one decode step of the forward
//! pass by the number of sequences in it (1 to 64 rows, each with a
//! `--prompt`-token context): what continuous batching costs per row.
//!
//! `--kernels` measures instead the matmul paths of the CPU device
//! (streaming GEMV; `vdpbf16ps` on bf16-rounded activations, where the
//! CPU has AVX512-BF16; `gemm` on converted weight blocks) at each number
//! of activation rows, on the MLP's weight shapes: where one overtakes
//! the other.

use anyhow::{bail, Context, Result};
use candle_core::{DType as CDType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;
use futures_util::StreamExt;
use lattice_gpu_kernels::cpu::Cpu;
use lattice_gpu_kernels::DType;
use lattice_load_tests::{percentile, prompt_tokens};
use lattice_worker::model::{Chunk, Model};
use lattice_worker::serve::{self, Options};
use lattice_worker::testmodel::{self, Spec};
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "worker/attention.rs"]
mod attention;

/// Arguments (`--help` lists them with their defaults; the module header
/// says what each mode measures).
#[derive(clap::Parser)]
#[command(
    about = "Lattice Inference on the CPU: bandwidth roofline, batch-1 prefill and decode, concurrent streams"
)]
struct Args {
    /// Hidden size of the generated model.
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 16)]
    layers: usize,
    /// MLP intermediate size.
    #[arg(long, default_value_t = 2816)]
    intermediate: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 16)]
    heads: usize,
    /// Key/value heads (grouped-query attention).
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 64)]
    decode: usize,
    /// Tokens each concurrent stream generates through the HTTP API.
    #[arg(long, default_value_t = 64)]
    stream_tokens: usize,
    /// Leave candle-transformers' Llama out of the comparison.
    #[arg(long = "skip-candle", action = clap::ArgAction::SetFalse)]
    candle: bool,
    /// Measure the CPU device's matmul paths instead.
    #[arg(long)]
    kernels: bool,
    /// Only the engine alone (1, 4 and 16 requests in-process).
    #[arg(long)]
    engine_only: bool,
    /// Only one decode step's time by the number of sequences in it.
    #[arg(long)]
    batches: bool,
    /// Stop after batch-1 prefill and decode.
    #[arg(long)]
    decode_only: bool,
    /// Measure the attention kernel alone, by context length.
    #[arg(long)]
    attention: bool,
    /// The worker's `--weights-in-place`: bf16 matrices left in the
    /// mapped file instead of tiled.
    #[arg(long = "weights-in-place")]
    in_place: bool,
}

impl Args {
    /// The CPU device the engine runs on, as the arguments ask.
    fn cpu(&self) -> Result<Cpu> {
        Ok(Cpu::new(self.threads)?.with_tiles(!self.in_place))
    }
}

fn parse_args() -> Result<Args> {
    let a = <Args as clap::Parser>::parse();
    if a.prompt + a.decode > 1024 || a.stream_tokens > 512 || a.layers > 64 {
        bail!("bounded scenario: prompt + decode ≤ 1024, stream tokens ≤ 512, layers ≤ 64");
    }
    Ok(a)
}

/// Copy bandwidth in bytes per second (read + written, as STREAM counts
/// a copy), best of 5, one thread (`memcpy`).
fn copy_bandwidth() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    2.0 * n as f64 / best
}

/// Read bandwidth in bytes per second with `threads` threads, each reading
/// its share of a 512 MiB buffer (what a decode step does with the
/// weights: read them once, write nothing), best of 5 passes of each of two
/// access patterns: one sequential stream, and four streams at once (as
/// the GEMV reads four weight rows). One stream alone under-measured this
/// machine: on 2026-12-07 it gave 33.7-35.7 GB/s in one run while the
/// decode read its weights at 46.7 (and 45.5 against four streams' 52.8
/// in a later probe), so the decode was "139% of the read roofline".
fn read_bandwidth(threads: usize) -> f64 {
    let n = 512usize << 20;
    let buf: Vec<u64> = (0..n / 8).map(|i| i as u64).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        for read in [one_stream as fn(&[u64]) -> u64, four_streams] {
            let t = Instant::now();
            let sum: u64 = std::thread::scope(|sc| {
                let parts: Vec<_> = buf
                    .chunks(buf.len().div_ceil(threads.max(1)))
                    .map(|c| sc.spawn(move || read(c)))
                    .collect();
                parts.into_iter().map(|h| h.join().unwrap_or(0)).sum()
            });
            std::hint::black_box(sum);
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    n as f64 / best
}

/// Sums `part` front to back.
fn one_stream(part: &[u64]) -> u64 {
    part.iter().fold(0u64, |a, b| a.wrapping_add(*b))
}

/// Sums the four quarters of `part` side by side (four sequential streams
/// in flight, four independent sums each).
fn four_streams(part: &[u64]) -> u64 {
    let q = part.len() / 4 / 4 * 4;
    let (a, rest) = part.split_at(q);
    let (b, rest) = rest.split_at(q);
    let (c, rest) = rest.split_at(q);
    let (d, tail) = rest.split_at(q);
    let mut acc = [0u64; 16];
    for (((w, x), y), z) in a
        .chunks_exact(4)
        .zip(b.chunks_exact(4))
        .zip(c.chunks_exact(4))
        .zip(d.chunks_exact(4))
    {
        for i in 0..4 {
            acc[i] = acc[i].wrapping_add(w[i]);
            acc[4 + i] = acc[4 + i].wrapping_add(x[i]);
            acc[8 + i] = acc[8 + i].wrapping_add(y[i]);
            acc[12 + i] = acc[12 + i].wrapping_add(z[i]);
        }
    }
    acc.iter().chain(tail).fold(0u64, |s, v| s.wrapping_add(*v))
}

/// (prefill tokens/s, decode tokens/s) of the worker's forward pass.
fn ours(dir: &Path, a: &Args, prompt: usize, decode: usize) -> Result<(f64, f64)> {
    let model = Model::load(a.cpu()?, dir)?;
    let bs = 16;
    let blocks: Vec<u32> = (0..(prompt + decode).div_ceil(bs) as u32).collect();
    let mut cache = model.kv_cache(blocks.len(), bs)?;
    let tokens = prompt_tokens(prompt);
    let mut prefill = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        model.forward(
            &mut cache,
            &[Chunk {
                tokens: &tokens,
                start: 0,
                blocks: &blocks,
                logits: true,
            }],
        )?;
        prefill = prefill.min(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    for i in 0..decode {
        let tok = [(i as u32 * 13) % 400];
        model.forward(
            &mut cache,
            &[Chunk {
                tokens: &tok,
                start: prompt + i,
                blocks: &blocks,
                logits: true,
            }],
        )?;
    }
    Ok((
        prompt as f64 / prefill,
        decode as f64 / t.elapsed().as_secs_f64(),
    ))
}

/// The time of one decode step by the number of sequences in it: each
/// sequence's `prompt` tokens are computed first (512 tokens a pass), then
/// 8 steps of one token per sequence are timed for each batch size.
/// `weights` is the number of weights a token is multiplied by.
fn batches(dir: &Path, a: &Args, prompt: usize, weights: f64) -> Result<()> {
    const MAX: usize = 64;
    const STEPS: usize = 8;
    let model = Model::load(a.cpu()?, dir)?;
    let bs = 16;
    let per_seq = (prompt + 5 * STEPS).div_ceil(bs);
    let mut cache = model.kv_cache(MAX * per_seq, bs)?;
    let blocks: Vec<Vec<u32>> = (0..MAX)
        .map(|s| (0..per_seq).map(|b| (s * per_seq + b) as u32).collect())
        .collect();
    let tokens = prompt_tokens(prompt);
    let mut pos = vec![0usize; MAX];
    let per_pass = (512 / prompt.max(1)).max(1);
    for first in (0..MAX).step_by(per_pass) {
        let seqs = first..(first + per_pass).min(MAX);
        let chunks: Vec<Chunk<'_>> = seqs
            .clone()
            .map(|s| Chunk {
                tokens: &tokens,
                start: 0,
                blocks: &blocks[s],
                logits: false,
            })
            .collect();
        model.forward(&mut cache, &chunks)?;
        for s in seqs {
            pos[s] = prompt;
        }
    }
    println!("\n| sequences in the step | ms per step | tokens/s | GFLOP/s of the products |");
    println!("|---|---|---|---|");
    for n in [1usize, 4, 16, 32, 64] {
        let t = Instant::now();
        for i in 0..STEPS {
            let tok: Vec<[u32; 1]> = (0..n).map(|s| [((i * 13 + s) % 400) as u32]).collect();
            let chunks: Vec<Chunk<'_>> = (0..n)
                .map(|s| Chunk {
                    tokens: &tok[s],
                    start: pos[s],
                    blocks: &blocks[s],
                    logits: true,
                })
                .collect();
            model.forward(&mut cache, &chunks)?;
            for p in &mut pos[..n] {
                *p += 1;
            }
        }
        let step = t.elapsed().as_secs_f64() / STEPS as f64;
        println!(
            "| {n} | {:.1} | {:.0} | {:.0} |",
            step * 1e3,
            n as f64 / step,
            2.0 * weights * n as f64 / step / 1e9
        );
    }
    Ok(())
}

/// The same with candle-transformers' Llama (its threads: rayon's global
/// pool, sized by `RAYON_NUM_THREADS`).
fn candle(dir: &Path, dtype: CDType, prompt: usize, decode: usize) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let bytes = std::fs::read(dir.join("model.safetensors"))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, dtype, &dev)?;
    let cfg: llama::LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let cfg = cfg.into_config(false);
    let m = llama::Llama::load(vb, &cfg)?;
    let tokens = prompt_tokens(prompt);
    let input = Tensor::new(tokens.as_slice(), &dev)?.unsqueeze(0)?;
    let mut prefill = f64::MAX;
    for _ in 0..3 {
        let mut cache = llama::Cache::new(true, dtype, &cfg, &dev)?;
        let t = Instant::now();
        m.forward(&input, 0, &mut cache)?;
        prefill = prefill.min(t.elapsed().as_secs_f64());
    }
    let mut cache = llama::Cache::new(true, dtype, &cfg, &dev)?;
    m.forward(&input, 0, &mut cache)?;
    let t = Instant::now();
    for i in 0..decode {
        let tok = Tensor::new(&[(i as u32 * 13) % 400], &dev)?.unsqueeze(0)?;
        m.forward(&tok, prompt + i, &mut cache)?;
    }
    Ok((
        prompt as f64 / prefill,
        decode as f64 / t.elapsed().as_secs_f64(),
    ))
}

/// Aggregate tokens/s and TTFT p50 / p99 (ms) of `n` concurrent streams.
async fn streams(url: &str, n: usize, tokens: usize, prompt: usize) -> Result<(f64, f64, f64)> {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = client.clone();
        let url = url.to_string();
        let words: Vec<String> = (0..prompt / 2)
            .map(|w| format!("w{}", (w * 7 + i) % 97))
            .collect();
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"model": "bench", "prompt": words.join(" "), "max_tokens": tokens,
                                          "ignore_eos": true, "temperature": 0, "stream": true,
                                          "stream_options": {"include_usage": true}});
            let start = Instant::now();
            let r = client.post(format!("{url}/v1/completions")).json(&body).send().await?;
            let mut s = r.bytes_stream();
            let mut first = None;
            let mut all = Vec::new();
            while let Some(b) = s.next().await {
                let b = b?;
                if first.is_none() && b.windows(6).any(|w| w == b"\"text\"") {
                    first = Some(start.elapsed());
                }
                all.extend_from_slice(&b);
            }
            // Tokens generated, from the usage the last chunk reports (a
            // token whose text is held back — part of a character — has
            // no chunk of its own).
            let text = String::from_utf8_lossy(&all);
            let generated = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .find_map(|v| v["usage"]["completion_tokens"].as_u64())
                .context("no usage in the stream")?;
            anyhow::Ok((first.unwrap_or_default(), generated as usize))
        }));
    }
    let mut ttft = Vec::new();
    let mut total = 0;
    for t in tasks {
        let (first, chunks) = t.await??;
        ttft.push(first);
        total += chunks;
    }
    let secs = t0.elapsed().as_secs_f64();
    ttft.sort();
    Ok((
        total as f64 / secs,
        percentile(&ttft, 0.50),
        percentile(&ttft, 0.99),
    ))
}

/// Tokens/s of `n` greedy requests of `tokens` tokens through the engine
/// alone (no HTTP).
async fn engine_only(dir: &Path, a: &Args, n: usize, tokens: usize) -> Result<f64> {
    use lattice_worker::engine::{self, sampler::Sampling, EngineConfig, Event, Request};
    let model = Model::load(a.cpu()?, dir)?;
    let text = std::sync::Arc::new(lattice_worker::text::Text::load(dir, &model.config.eos)?);
    let metrics = std::sync::Arc::new(lattice_worker::metrics::Metrics::new("bench"));
    let config = EngineConfig {
        block_size: 16,
        kv_blocks: 1024,
        max_batch_tokens: 512,
        max_seqs: 64,
    };
    let handle = engine::spawn(model, text, metrics, config)?;
    let t = Instant::now();
    let mut rxs = Vec::new();
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        handle.submit(Request {
            prompt: prompt_tokens(64 + i),
            sampling: Sampling {
                temperature: 0.0,
                ..Default::default()
            },
            max_tokens: tokens,
            stop_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: true,
            constraint: None,
            events: tx,
        });
        rxs.push(rx);
    }
    let mut total = 0;
    for mut rx in rxs {
        while let Some(e) = rx.recv().await {
            match e {
                Event::Token { .. } => total += 1,
                Event::Done { .. } => break,
            }
        }
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// GFLOP/s of the CPU device's matmul paths on `[n_out, k]` bf16
/// weights, for each number of activation rows.
fn kernels(a: &Args) -> Result<()> {
    use lattice_gpu_kernels::{HostWeight, Kernels};
    println!("| rows | weight | GEMV GFLOP/s | bf16 dot GFLOP/s | bf16 dot, weights from memory, in rows | the same, in tiles | gemm GFLOP/s |");
    println!("|---|---|---|---|---|---|---|");
    for (n_out, k) in [(a.intermediate, a.hidden), (a.hidden, a.intermediate)] {
        let bits: Vec<u16> = (0..n_out * k)
            .map(|i| ((((i * 7919) % 2001) as f32 / 1000.0 - 1.0).to_bits() >> 16) as u16)
            .collect();
        let w = HostWeight::owned_u16("w", DType::BF16, vec![n_out, k], bits.clone())?;
        // Copies enough to overflow the last-level cache (~96 MB in all),
        // taken in turn: weights read from memory, as a decode step reads
        // them; in rows as stored, and tiled as the worker loads them
        // where it has AVX512-BF16 (`Kernels::matrix`).
        let copies = (96usize << 20).div_ceil(2 * n_out * k);
        let cold: Vec<HostWeight> = (0..copies)
            .map(|_| HostWeight::owned_u16("w", DType::BF16, vec![n_out, k], bits.clone()))
            .collect::<Result<_, _>>()?;
        // The f32-activation paths forced at every size; the bf16 dot
        // path as the worker runs it (its blocks sized as the GEMV's up
        // to `GEMV_MAX_ROWS`, as `gemm`'s past it).
        let gemv = Cpu::new(a.threads)?
            .with_gemv_max_rows(usize::MAX)
            .with_bf16_dot(false);
        let dot = Cpu::new(a.threads)?;
        let gemm = Cpu::new(a.threads)?
            .with_gemv_max_rows(0)
            .with_bf16_dot(false);
        let tiled: Vec<HostWeight> = (0..copies)
            .map(|_| {
                dot.matrix(HostWeight::owned_u16(
                    "w",
                    DType::BF16,
                    vec![n_out, k],
                    bits.clone(),
                )?)
            })
            .collect::<Result<_, _>>()?;
        let has_dot = dot.bf16_dot();
        for rows in [1usize, 2, 4, 8, 16, 24, 32, 48, 64, 128, 512] {
            let mut rate = [0.0f64; 5];
            let single = std::slice::from_ref(&w);
            let runs: [(&Cpu, &[HostWeight]); 5] = [
                (&gemv, single),
                (&dot, single),
                (&dot, &cold),
                (&dot, &tiled),
                (&gemm, single),
            ];
            for ((dev, ws), r) in runs.into_iter().zip(rate.iter_mut()) {
                if std::ptr::eq(dev, &dot) && !has_dot {
                    continue;
                }
                let x = dev.act(rows, k)?;
                let mut out = dev.act(rows, n_out)?;
                let reps = (256 / rows).max(4);
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = Instant::now();
                    for i in 0..reps {
                        dev.matmul(&x, &ws[i % ws.len()], None, &mut out)?;
                    }
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                *r = 2.0 * (rows * n_out * k) as f64 / best / 1e9;
            }
            let dot = |r: f64| {
                if has_dot {
                    format!("{r:.1}")
                } else {
                    "— (no AVX512-BF16)".into()
                }
            };
            println!(
                "| {rows} | {n_out}×{k} | {:.1} | {} | {} | {} | {:.1} |",
                rate[0],
                dot(rate[1]),
                dot(rate[2]),
                dot(rate[3]),
                rate[4]
            );
        }
    }
    Ok(())
}

/// The engine alone with 1, 4 and 16 requests, a line each.
async fn engine_alone(dir: &Path, a: &Args) -> Result<()> {
    for n in [1usize, 4, 16] {
        println!(
            "engine alone, {n} requests: {:.1} tokens/s",
            engine_only(dir, a, n, a.stream_tokens).await?
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = parse_args()?;
    if a.kernels {
        return kernels(&a);
    }
    if a.attention {
        return attention::attention(&a);
    }
    let dir = tempfile::tempdir()?;
    let spec = Spec {
        hidden: a.hidden,
        layers: a.layers,
        intermediate: a.intermediate,
        heads: a.heads,
        kv_heads: a.kv_heads,
        dtype: DType::BF16,
        llama3_rope: false,
        ..Spec::tiny_llama()
    };
    testmodel::write(dir.path(), &spec)?;
    let cfg = lattice_worker::model::ModelConfig::parse(&std::fs::read_to_string(
        dir.path().join("config.json"),
    )?)?;
    let params = cfg.parameters();
    // The lm head and every layer are read per token; the embedding table
    // only one row.
    let read_per_token = 2.0 * (params - cfg.vocab * cfg.hidden) as f64;
    let copy = copy_bandwidth();
    let bw = read_bandwidth(a.threads);
    println!(
        "model: {:.0} M parameters, bf16, {} layers, hidden {}",
        params as f64 / 1e6,
        a.layers,
        a.hidden
    );
    println!(
        "read bandwidth ({} threads): {:.1} GB/s; copy bandwidth (read + written, 1 thread): {:.1} GB/s",
        a.threads,
        bw / 1e9,
        copy / 1e9
    );
    println!(
        "decode roofline: {:.1} tokens/s at the read bandwidth, {:.1} at the copy bandwidth ({:.0} MB read per token)",
        bw / read_per_token,
        copy / read_per_token,
        read_per_token / 1e6
    );
    if a.engine_only {
        return engine_alone(dir.path(), &a).await;
    }
    if a.batches {
        return batches(dir.path(), &a, a.prompt, read_per_token / 2.0);
    }
    let (pf, dc) = ours(dir.path(), &a, a.prompt, a.decode)?;
    // Probed again right after the decode (the machine is shared: its
    // bandwidth moves from minute to minute); the roofline is the higher.
    let after = read_bandwidth(a.threads);
    println!(
        "read bandwidth again after the decode: {:.1} GB/s (the roofline below uses {:.1})",
        after / 1e9,
        bw.max(after) / 1e9
    );
    let bw = bw.max(after);
    println!("\n| engine | prefill tokens/s ({} tokens) | decode tokens/s (batch 1) | weights read, GB/s | % of read roofline | % of copy roofline |", a.prompt);
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, p: f64, d: f64, bytes: f64| {
        println!(
            "| {name} | {p:.0} | {d:.1} | {:.1} | {:.0}% | {:.0}% |",
            d * bytes / 1e9,
            100.0 * d * bytes / bw,
            100.0 * d * bytes / copy
        )
    };
    row("Lattice worker (bf16 as stored)", pf, dc, read_per_token);
    if a.decode_only {
        return Ok(());
    }
    if a.candle {
        for (name, dtype) in [
            ("candle 0.11 Llama, bf16", CDType::BF16),
            ("candle 0.11 Llama, upcast to f32", CDType::F32),
        ] {
            let (p, d) = candle(dir.path(), dtype, a.prompt, a.decode)?;
            let bytes = read_per_token * if dtype == CDType::F32 { 2.0 } else { 1.0 };
            row(name, p, d, bytes);
        }
    }
    engine_alone(dir.path(), &a).await?;
    let options = Options {
        name: Some("bench".into()),
        threads: a.threads,
        weights_in_place: a.in_place,
        kv_cache_mib: 2048,
        ..Options::new(dir.path().to_path_buf(), "127.0.0.1:0".parse()?)
    };
    let running = serve::start(options).await?;
    let url = format!("http://{}", running.addr);
    tokio::spawn(running.serve(std::future::pending()));
    println!("\n| concurrent streams | aggregate tokens/s | vs 1 stream | TTFT p50 / p99 (ms) |");
    println!("|---|---|---|---|");
    let mut one = 0.0;
    for n in [1usize, 4, 16] {
        let (tps, p50, p99) = streams(&url, n, a.stream_tokens, 64).await?;
        if n == 1 {
            one = tps;
        }
        println!(
            "| {n} | {tps:.1} | {:.2}× | {p50:.0} / {p99:.0} |",
            tps / one
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
