//! `lattice-gpu-check`: everything issue #16 asks of a lent GPU, in one
//! run that prints one table and writes it to a file.
//!
//! 1. The device: name, architecture, memory; the kernels compiled by
//!    NVRTC for it (the time that takes).
//! 2. Every kernel against the CPU path on random inputs
//!    (`lattice_gpu_kernels::check`, tolerances stated there).
//! 3. Whole models: the generated test models (Llama and Qwen2, f32 and
//!    bf16) on the GPU against the CPU — logits of a 40-token prompt, and
//!    32 greedy tokens, which must match token for token.
//! 4. The worker's OpenAI API served from the GPU: a chat, non-streamed
//!    and streamed.
//! 5. Speed on a Llama-3-8B-shaped model with random bf16 weights made on
//!    the machine (no download): the device's copy bandwidth, batch-1
//!    decode tokens/s and its fraction of the HBM roofline, batch-32
//!    aggregate decode tokens/s, prefill tokens/s and the time to first
//!    token of a 2,048-token prompt.
//!
//! `lattice-gpu-check [--out FILE] [--layers N] [--skip-bench]
//!    [--scale X] [--tokens N] [--emulated DIR] [--layer-steps N]`
//! (`scripts/gpu-check` builds it here and runs it there.) Exits 1 when a
//! check failed, 2 when no GPU could be opened. `--emulated DIR` runs the
//! checks on the kernel emulator instead of a GPU (no benchmark): the test
//! suite does, smaller (`--scale 0.25 --tokens 4`), so that this program
//! works before a GPU session spends its minutes on it. `--layer-steps N`
//! only times the steps of one decode layer of the 8B shape, each launched
//! N times (`ncu` runs it with N = 1).
//!
//! Must never: report a figure it did not measure in this run, or stop at
//! the first failed check (one lent run must say everything it can).

use anyhow::{bail, Context, Result};
use lattice_gpu_kernels::cpu::Cpu;
use lattice_gpu_kernels::cuda::Cuda;
use lattice_gpu_kernels::{check, DType, Kernels};
use lattice_load_tests::prompt_tokens;
use lattice_worker::engine::sampler::argmax;
use lattice_worker::model::{Chunk, Model};
use lattice_worker::serve::{self, Device, Options};
use lattice_worker::testmodel::{self, Spec};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod profile;

/// HBM3e of the H200, by its datasheet.
const H200_PEAK: f64 = 4.8e12;

struct Report {
    lines: Vec<String>,
    failed: usize,
}

impl Report {
    fn new() -> Self {
        Self {
            lines: Vec::new(),
            failed: 0,
        }
    }
    /// A failed row for `what` when a part of the run failed.
    fn fails(&mut self, what: &str, result: Result<()>) {
        if let Err(e) = result {
            self.row(what, false, &format!("{e:#}"));
        }
    }
    fn row(&mut self, check: &str, ok: bool, detail: &str) {
        if !ok {
            self.failed += 1;
        }
        let line = format!(
            "| {check} | {} | {detail} |",
            if ok { "pass" } else { "**FAIL**" }
        );
        println!("{line}");
        self.lines.push(line);
    }
    fn note(&mut self, text: String) {
        println!("{text}");
        self.lines.push(text);
    }
}

struct Args {
    out: PathBuf,
    layers: usize,
    bench: bool,
    /// Input sizes of the kernel checks (1: as stated in `check`).
    scale: f32,
    /// Greedy tokens of the whole-model checks.
    tokens: usize,
    emulated: Option<PathBuf>,
    /// Only the steps of one decode layer, each launched this many times
    /// (for a profiler such as ncu: `--layer-steps 1`).
    layer_steps: Option<usize>,
}

impl Args {
    /// The device under test: GPU 0, or the emulator.
    fn open(&self) -> Result<Cuda, lattice_gpu_kernels::KernelError> {
        match &self.emulated {
            Some(dir) => Cuda::emulated(dir),
            None => Cuda::new(0),
        }
    }
}

fn parse_args() -> Result<Args> {
    let default_out = std::env::var_os("OUT")
        .map(|o| PathBuf::from(o).join("gpu-check.md"))
        .unwrap_or_else(|| PathBuf::from("gpu-check.md"));
    let mut a = Args {
        out: default_out,
        layers: 32,
        bench: true,
        scale: 1.0,
        tokens: 32,
        emulated: None,
        layer_steps: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--out" => a.out = it.next().context("--out FILE")?.into(),
            "--layers" => a.layers = it.next().context("--layers N")?.parse()?,
            "--skip-bench" => a.bench = false,
            "--scale" => a.scale = it.next().context("--scale X")?.parse()?,
            "--tokens" => a.tokens = it.next().context("--tokens N")?.parse()?,
            "--layer-steps" => a.layer_steps = Some(it.next().context("--layer-steps N")?.parse()?),
            "--emulated" => {
                a.emulated = Some(it.next().context("--emulated DIR")?.into());
                a.bench = false;
            }
            other => bail!("unknown flag {other} (see the header of gpu_check/main.rs)"),
        }
    }
    Ok(a)
}

/// The prompt's last logits, then `n` greedy tokens.
fn greedy<K: Kernels>(model: &Model<K>, prompt: &[u32], n: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    let bs = 16;
    let blocks: Vec<u32> = (0..(prompt.len() + n).div_ceil(bs) as u32).collect();
    let mut cache = model.kv_cache(blocks.len(), bs)?;
    let first = model.forward(
        &mut cache,
        &[Chunk {
            tokens: prompt,
            start: 0,
            blocks: &blocks,
            logits: true,
        }],
    )?;
    let logits = first.into_iter().next().unwrap_or_default();
    let mut tokens = vec![argmax(&logits)];
    while tokens.len() < n {
        let last = [tokens[tokens.len() - 1]];
        let out = model.forward(
            &mut cache,
            &[Chunk {
                tokens: &last,
                start: prompt.len() + tokens.len() - 1,
                blocks: &blocks,
                logits: true,
            }],
        )?;
        tokens.push(argmax(out.first().map_or(&[][..], |v| v)));
    }
    Ok((logits, tokens))
}

/// Logits' relative error, greedy tokens identical before the first
/// difference, the CPU's tokens, the GPU's.
type Compared = (f32, usize, Vec<u32>, Vec<u32>);

fn whole_models(r: &mut Report, dir: &Path, a: &Args) -> Result<()> {
    let n = a.tokens;
    let cases = [
        ("llama f32", Spec::tiny_llama(), 1e-3f32),
        (
            "llama bf16",
            Spec {
                dtype: DType::BF16,
                ..Spec::tiny_llama()
            },
            3e-2,
        ),
        ("qwen2 f32", Spec::tiny_qwen2(), 1e-3),
        (
            "qwen2 bf16",
            Spec {
                dtype: DType::BF16,
                ..Spec::tiny_qwen2()
            },
            3e-2,
        ),
    ];
    for (label, spec, tol) in cases {
        let d = dir.join(label.replace(' ', "-"));
        testmodel::write(&d, &spec)?;
        let prompt = prompt_tokens(40);
        let run = || -> Result<Vec<Compared>> {
            // The CPU with f32 activations: the GEMV's reference.
            let cpu = Model::load(Cpu::new(0)?.with_bf16_dot(false), &d)?;
            let (lc, tc) = greedy(&cpu, &prompt, n)?;
            let mut out = Vec::new();
            // The GPU as it serves (prompts through cuBLAS), then with
            // every product on the GEMV (f32 activations throughout).
            for rows in [lattice_gpu_kernels::cuda::GEMV_MAX_ROWS, usize::MAX] {
                let gpu = Model::load(a.open()?.with_gemv_max_rows(rows), &d)?;
                let (lg, tg) = greedy(&gpu, &prompt, n)?;
                let same = tc.iter().zip(&tg).take_while(|(a, b)| a == b).count();
                out.push((check::rel_err(&lg, &lc), same, tc.clone(), tg));
            }
            Ok(out)
        };
        match run() {
            Ok(paths) => {
                for ((err, same, tc, tg), path) in paths.into_iter().zip(["", ", all on the GEMV"])
                {
                    let tol = if path.is_empty() { tol } else { 1e-3 };
                    r.row(
                        &format!("{label}{path}: logits of a 40-token prompt"),
                        err <= tol,
                        &format!("relative error {err:.2e} (tolerance {tol:.0e})"),
                    );
                    r.row(
                        &format!("{label}{path}: {n} greedy tokens"),
                        same == n,
                        &if same == n {
                            "identical to the CPU's".to_string()
                        } else {
                            format!("first {same} identical; cpu {tc:?}, gpu {tg:?}")
                        },
                    );
                }
            }
            Err(e) => r.row(&format!("{label}: whole model"), false, &format!("{e:#}")),
        }
    }
    Ok(())
}

async fn serve_check(r: &mut Report, dir: &Path, a: &Args) -> Result<()> {
    let d = dir.join("served");
    testmodel::write(&d, &Spec::tiny_llama())?;
    let options = Options {
        device: match &a.emulated {
            Some(e) => Device::CudaEmulated(e.clone()),
            None => Device::Cuda,
        },
        ..Options::new(d, "127.0.0.1:0".parse()?)
    };
    let running = serve::start(options).await?;
    let (url, device) = (format!("http://{}", running.addr), running.device.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(running.serve(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let body = |stream: bool| {
        serde_json::json!({
            "model": "served",
            "messages": [{"role": "user", "content": "say the and to"}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": stream,
        })
    };
    let plain: serde_json::Value = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body(false))
        .send()
        .await?
        .json()
        .await?;
    let tokens = plain["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    r.row(
        "worker on the GPU: a chat, non-streamed",
        tokens > 0 && plain["choices"][0]["message"].is_object(),
        &format!("{device}; {tokens} completion tokens"),
    );
    let streamed = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body(true))
        .send()
        .await?
        .text()
        .await?;
    let chunks = streamed.matches("data: {").count();
    r.row(
        "worker on the GPU: a chat, streamed",
        chunks > 0 && streamed.trim_end().ends_with("data: [DONE]"),
        &format!("{chunks} chunks, then [DONE]"),
    );
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}

/// Seconds of one forward pass over `chunks`, each next token chosen
/// greedily on the device, as the worker serves.
fn timed<K: Kernels>(
    model: &Model<K>,
    cache: &mut lattice_worker::model::KvCache<K>,
    chunks: &[Chunk<'_>],
) -> Result<f64> {
    let picks = vec![Some(lattice_gpu_kernels::Pick::greedy()); chunks.len()];
    let t = Instant::now();
    model.forward_picking(cache, chunks, &picks)?;
    Ok(t.elapsed().as_secs_f64())
}

/// Batch-1 decode tokens/s of `decode` steps after a `prompt`-token
/// prompt in `blocks` (the first four steps warm up).
fn batch1_rate(
    model: &Model<Cuda>,
    cache: &mut lattice_worker::model::KvCache<Cuda>,
    blocks: &[u32],
    prompt: usize,
    decode: usize,
) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..decode {
        let tok = [(i as u32 * 13) % 400];
        let s = timed(
            model,
            cache,
            &[Chunk {
                tokens: &tok,
                start: prompt + i,
                blocks,
                logits: true,
            }],
        )?;
        if i >= 4 {
            total += s;
        }
    }
    Ok((decode - 4) as f64 / total)
}

/// One decode row per sequence: token `toks[s]` at `start` of `tables[s]`.
fn decode_chunks<'a>(
    toks: &'a [[u32; 1]],
    tables: &'a [Vec<u32>],
    start: usize,
    logits: bool,
) -> Vec<Chunk<'a>> {
    toks.iter()
        .zip(tables)
        .map(|(t, b)| Chunk {
            tokens: t,
            start,
            blocks: b,
            logits,
        })
        .collect()
}

fn bench(r: &mut Report, dir: &Path, layers: usize) -> Result<()> {
    let spec = Spec {
        hidden: 4096,
        intermediate: 14336,
        layers,
        heads: 32,
        kv_heads: 8,
        dtype: DType::BF16,
        max_positions: 4096,
        shards: layers.div_ceil(4),
        ..Spec::tiny_llama()
    };
    let d = dir.join("llama-8b-shaped");
    let t = Instant::now();
    testmodel::write(&d, &spec)?;
    let written = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let gpu = Cuda::new(0)?;
    let copy = gpu.copy_bandwidth(2 << 30, 10)?;
    let model = Model::load(gpu, &d)?;
    let loaded = t.elapsed().as_secs_f64();
    let c = &model.config;
    // Every layer and the lm head are read per token; of the embedding
    // table, one row.
    let read = 2.0 * (c.parameters() - c.vocab * c.hidden) as f64;
    r.note(format!(
        "\nModel: {:.2} B parameters in bf16 ({layers} layers, hidden 4096, MLP 14336, 32 heads over 8 KV heads, vocabulary {}), written in {written:.0} s, loaded in {loaded:.0} s; {:.2} GB of weights read per token. Device copy bandwidth (read + written): {:.2} TB/s.\n",
        c.parameters() as f64 / 1e9,
        c.vocab,
        read / 1e9,
        copy / 1e12
    ));
    let bs = 16usize;
    let prefill_len = 2048usize;
    let (prompt, decode, batch) = (128usize, 64usize, 32usize);
    let per_seq = (prompt + decode).div_ceil(bs);
    let long_blocks = (prefill_len + 16).div_ceil(bs);
    let mut cache = model.kv_cache(long_blocks + batch * per_seq, bs)?;
    let long: Vec<u32> = (0..long_blocks as u32).collect();
    let seq_blocks = |s: usize| -> Vec<u32> {
        let first = (long_blocks + s * per_seq) as u32;
        (first..first + per_seq as u32).collect()
    };
    // Prefill and TTFT: a 2,048-token prompt, best of 3 after a warm-up.
    let tokens = prompt_tokens(prefill_len);
    let chunk = [Chunk {
        tokens: &tokens,
        start: 0,
        blocks: &long,
        logits: true,
    }];
    timed(&model, &mut cache, &chunk)?;
    let mut ttft = f64::MAX;
    for _ in 0..3 {
        ttft = ttft.min(timed(&model, &mut cache, &chunk)?);
    }
    let mut kernels = Report::new();
    r.fails(
        "kernels of a prefill",
        profile::kernels_of_step(
            &mut kernels,
            model.kernels(),
            "The prefill of a 2,048-token prompt",
            || timed(&model, &mut cache, &chunk).map(drop),
        ),
    );
    // Batch-1 decode after a 128-token prompt.
    let b0 = seq_blocks(0);
    let p = prompt_tokens(prompt);
    timed(
        &model,
        &mut cache,
        &[Chunk {
            tokens: &p,
            start: 0,
            blocks: &b0,
            logits: false,
        }],
    )?;
    let batch1 = batch1_rate(&model, &mut cache, &b0, prompt, decode)?;
    // The same steps with one warp per GEMV output (the kernels before
    // 2026-12-06): the split's gain, measured in the same run.
    model.kernels().force_gemv_split(Some(1));
    let one_warp = batch1_rate(&model, &mut cache, &b0, prompt, decode);
    model.kernels().force_gemv_split(None);
    let one_warp = one_warp?;
    // The profile's tables go after the figures.
    let mut prof = Report::new();
    prof.note("\n| a whole step, read nothing back (median of 8) | host | queue | finish |".into());
    prof.note("|---|---|---|---|".into());
    let tok = [7u32];
    let mut last = [Chunk {
        tokens: &tok,
        start: prompt + decode - 1,
        blocks: &b0,
        logits: false,
    }];
    r.fails(
        "profile of a batch-1 step",
        profile::step_split(&mut prof, model.kernels(), "batch-1 decode step", || {
            Ok(model.forward(&mut cache, &last).map(drop)?)
        }),
    );
    last[0].logits = true;
    r.fails(
        "kernels of a batch-1 step",
        profile::kernels_of_step(
            &mut kernels,
            model.kernels(),
            "A batch-1 decode step with its token chosen",
            || timed(&model, &mut cache, &last).map(drop),
        ),
    );
    // Batch 32: 32 prompts prefilled together, then decode steps of 32.
    let tables: Vec<Vec<u32>> = (0..batch).map(seq_blocks).collect();
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|s| prompt_tokens(prompt + s).split_off(s))
        .collect();
    let chunks: Vec<Chunk<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(t, b)| Chunk {
            tokens: t,
            start: 0,
            blocks: b,
            logits: false,
        })
        .collect();
    timed(&model, &mut cache, &chunks)?;
    let steps = 32;
    let mut total = 0.0;
    for i in 0..steps {
        let toks: Vec<[u32; 1]> = (0..batch).map(|s| [((i + s) as u32 * 7) % 400]).collect();
        let s = timed(
            &model,
            &mut cache,
            &decode_chunks(&toks, &tables, prompt + i, true),
        )?;
        if i >= 4 {
            total += s;
        }
    }
    let batch32 = (batch * (steps - 4)) as f64 / total;
    let toks: Vec<[u32; 1]> = (0..batch).map(|s| [s as u32 % 400]).collect();
    let step32 = decode_chunks(&toks, &tables, prompt + steps, false);
    r.fails(
        "profile of a batch-32 step",
        profile::step_split(&mut prof, model.kernels(), "batch-32 decode step", || {
            Ok(model.forward(&mut cache, &step32).map(drop)?)
        }),
    );
    r.fails(
        "kernels of a batch-32 step",
        profile::kernels_of_step(
            &mut kernels,
            model.kernels(),
            "A batch-32 decode step, nothing read back",
            || Ok(model.forward(&mut cache, &step32).map(drop)?),
        ),
    );
    let shape = profile::LayerShape {
        hidden: c.hidden,
        intermediate: c.intermediate,
        q: c.heads * c.head_dim,
        kv: model.kv_width(),
        head_dim: c.head_dim,
    };
    r.fails(
        "profile of a layer's steps",
        profile::layer_steps(&mut prof, model.kernels(), &shape, 200),
    );
    r.note("| measure | value |".into());
    r.note("|---|---|".into());
    r.note(format!(
        "| batch-1 decode | {batch1:.1} tokens/s — {:.1}% of the HBM roofline ({:.0} tokens/s at 4.8 TB/s), {:.1}% of the measured copy bandwidth |",
        100.0 * batch1 * read / H200_PEAK,
        H200_PEAK / read,
        100.0 * batch1 * read / copy
    ));
    r.note(format!(
        "| batch-1 decode, one warp per GEMV output (before 2026-12-06) | {one_warp:.1} tokens/s — {:.1}% of the HBM roofline; the split's gain ×{:.2} |",
        100.0 * one_warp * read / H200_PEAK,
        batch1 / one_warp
    ));
    r.note(format!(
        "| batch-32 decode, aggregate | {batch32:.1} tokens/s ({:.2}× batch 1) |",
        batch32 / batch1
    ));
    r.note(format!(
        "| prefill, one 2,048-token prompt | {:.0} tokens/s |",
        prefill_len as f64 / ttft
    ));
    r.note(format!(
        "| time to first token, 2,048-token prompt | {:.1} ms |",
        ttft * 1e3
    ));
    r.failed += prof.failed + kernels.failed;
    r.lines.extend(prof.lines);
    r.lines.extend(kernels.lines);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let a = parse_args()?;
    let mut r = Report::new();
    let t = Instant::now();
    let gpu = match a.open() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("lattice-gpu-check: no GPU: {e}");
            std::process::exit(2);
        }
    };
    r.note(format!(
        "# lattice-gpu-check\n\n{}; kernels compiled (or read from the cache) and loaded in {:.2} s.\n",
        gpu.device(),
        t.elapsed().as_secs_f64()
    ));
    if let Some(reps) = a.layer_steps {
        // The shapes of a Llama-3-8B layer.
        profile::layer_steps(&mut r, &gpu, &profile::LayerShape::llama3_8b(), reps)?;
        return Ok(());
    }
    r.note("| check | result | detail |".into());
    r.note("|---|---|---|".into());
    // The reference with f32 activations (see `check`).
    let cpu = Cpu::new(0)?.with_bf16_dot(false);
    for (case, why) in check::check_all(&gpu, &cpu, a.scale) {
        let detail = match why {
            Some(w) => w,
            None => format!(
                "relative error {:.2e} (tolerance {:.0e})",
                case.err, case.tol
            ),
        };
        r.row(&case.name, case.passed(), &detail);
    }
    drop(gpu);
    let dir = tempfile::tempdir()?;
    if let Err(e) = whole_models(&mut r, dir.path(), &a) {
        r.row("whole models", false, &format!("{e:#}"));
    }
    if let Err(e) = serve_check(&mut r, dir.path(), &a).await {
        r.row("worker on the GPU", false, &format!("{e:#}"));
    }
    if a.bench {
        if let Err(e) = bench(&mut r, dir.path(), a.layers) {
            r.row("benchmark", false, &format!("{e:#}"));
        }
    }
    r.note(format!(
        "\n{} check(s) failed; {:.0} s in all.",
        r.failed,
        t.elapsed().as_secs_f64()
    ));
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&a.out, r.lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    if r.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
