//! Whole models on the CUDA device, run in the kernel emulator (no GPU
//! here): the generated Llama (f32) and Qwen2 (bf16, Q/K/V biases, tied
//! embeddings) against the CPU path — the logits of a prompt and of each
//! greedy step, and the greedy tokens themselves. The prompt is 24 tokens,
//! so its products go through the cuBLAS path and the decode steps
//! through the GEMV; a batch of two sequences exercises the mixed
//! attention call.
//!
//! Tolerance: f32 weights 1e-4 relative (the same arithmetic in another
//! order); bf16 weights 2e-2, since the cuBLAS path rounds the prompt's
//! activations to bf16 where the CPU keeps f32.

#![allow(clippy::unwrap_used)]

use lattice_gpu_kernels::check::rel_err;
use lattice_gpu_kernels::cpu::Cpu;
use lattice_gpu_kernels::cuda::Cuda;
use lattice_gpu_kernels::{DType, Kernels};
use lattice_worker::engine::sampler::{argmax, Sampling};
use lattice_worker::engine::{self, EngineConfig, Event, Request};
use lattice_worker::metrics::Metrics;
use lattice_worker::model::{Chunk, Model};
use lattice_worker::testmodel::{self, Spec};
use lattice_worker::text::Text;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;

/// Logits after the prompt and after each of `steps` greedy tokens, of
/// two sequences run together (the second prompt is the first's tail).
fn run<K: Kernels>(model: &Model<K>, steps: usize) -> Vec<Vec<f32>> {
    let bs = 16;
    let prompts: [Vec<u32>; 2] = [
        (0..24u32).map(|i| (i * 37 + 11) % 300).collect(),
        (0..9u32).map(|i| (i * 53 + 5) % 300).collect(),
    ];
    let tables: [Vec<u32>; 2] = [(0..4).collect(), (4..7).collect()];
    let mut cache = model.kv_cache(8, bs).unwrap();
    let chunks: Vec<Chunk<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| Chunk {
            tokens: p,
            start: 0,
            blocks: t,
            logits: true,
        })
        .collect();
    let mut all = model.forward(&mut cache, &chunks).unwrap();
    let mut last: Vec<[u32; 1]> = all.iter().map(|l| [argmax(l)]).collect();
    for s in 0..steps {
        let chunks: Vec<Chunk<'_>> = last
            .iter()
            .zip(prompts.iter().zip(&tables))
            .map(|(t, (p, b))| Chunk {
                tokens: t,
                start: p.len() + s,
                blocks: b,
                logits: true,
            })
            .collect();
        let out = model.forward(&mut cache, &chunks).unwrap();
        last = out.iter().map(|l| [argmax(l)]).collect();
        all.extend(out);
    }
    all
}

fn compare(dir: &Path, spec: &Spec, tol: f32) {
    testmodel::write(dir, spec).unwrap();
    let emu = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
    let gpu = Model::load(Cuda::emulated(&emu).unwrap(), dir).unwrap();
    let cpu = Model::load(Cpu::new(2).unwrap(), dir).unwrap();
    let (g, c) = (run(&gpu, 6), run(&cpu, 6));
    assert_eq!(g.len(), c.len());
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let e = rel_err(a, b);
        assert!(e <= tol, "logits {i}: relative error {e} over {tol}");
        assert_eq!(argmax(a), argmax(b), "greedy token {i}");
    }
}

#[test]
fn a_llama_in_f32_matches_the_cpu_path_on_the_emulated_gpu() {
    let dir = tempfile::tempdir().unwrap();
    compare(dir.path(), &Spec::tiny_llama(), 1e-4);
}

#[test]
fn a_qwen2_in_bf16_matches_the_cpu_path_on_the_emulated_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        dtype: DType::BF16,
        ..Spec::tiny_qwen2()
    };
    compare(dir.path(), &spec, 2e-2);
}

/// Sampled requests (seeded; temperature with top-k, top-p and min-p;
/// the penalties; a logit bias) in one batch, run through the engine on
/// the emulated GPU, where their tokens are chosen on the device, and on
/// the CPU, where the host's sampler draws them: the same tokens, since
/// both follow `Pick`'s rule with the same draws. A request asking for
/// log-probabilities is sampled on the host on either device and gets
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_gives_the_same_tokens_on_the_emulated_gpu_as_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    testmodel::write(dir.path(), &Spec::tiny_llama()).unwrap();
    let emu = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
    let settings = [
        Sampling {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.9,
            seed: Some(11),
            ..Default::default()
        },
        Sampling {
            temperature: 1.2,
            min_p: 0.02,
            repetition_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.3,
            logit_bias: vec![(17, 3.0), (250, -2.0)],
            seed: Some(12),
            ..Default::default()
        },
        Sampling {
            temperature: 0.0,
            frequency_penalty: 1.0,
            ..Default::default()
        },
        Sampling {
            temperature: 0.8,
            seed: Some(13),
            logprobs: Some(2),
            ..Default::default()
        },
    ];
    let gpu = generate(
        Model::load(Cuda::emulated(&emu).unwrap(), dir.path()).unwrap(),
        dir.path(),
        &settings,
    )
    .await;
    let cpu = generate(
        Model::load(Cpu::new(2).unwrap(), dir.path()).unwrap(),
        dir.path(),
        &settings,
    )
    .await;
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert_eq!(g.0, c.0, "request {i}: {:?}", settings[i]);
        assert_eq!(g.0.len(), 16);
    }
    // Log-probabilities only where asked for, on both devices.
    for out in [&gpu, &cpu] {
        assert!(out[3].1.iter().all(|(lp, top)| *lp < 0.0 && top.len() == 2));
        assert!(out[0]
            .1
            .iter()
            .all(|(lp, top)| *lp == 0.0 && top.is_empty()));
    }
}

/// Each request's tokens, with their log-probabilities and alternatives.
type Generated = Vec<(Vec<u32>, Vec<(f32, Vec<(u32, f32)>)>)>;

async fn generate<K: Kernels>(model: Model<K>, dir: &Path, settings: &[Sampling]) -> Generated {
    let text = Arc::new(Text::load(dir, &model.config.eos).unwrap());
    let config = EngineConfig {
        block_size: 16,
        kv_blocks: 32,
        max_batch_tokens: 256,
        max_seqs: 8,
    };
    let handle = engine::spawn(model, text, Arc::new(Metrics::new("tiny")), config).unwrap();
    let mut rxs = Vec::new();
    for (i, sampling) in settings.iter().enumerate() {
        let (tx, rx) = unbounded_channel();
        let prompt = (0..12u32).map(|t| (t * 29 + i as u32 * 5) % 300).collect();
        assert!(handle.submit(Request {
            prompt,
            sampling: sampling.clone(),
            max_tokens: 16,
            stop_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: true,
            constraint: None,
            events: tx,
        }));
        rxs.push(rx);
    }
    let mut out = Vec::new();
    for mut rx in rxs {
        let (mut ids, mut scores) = (Vec::new(), Vec::new());
        while let Some(e) = rx.recv().await {
            match e {
                Event::Token {
                    id, logprob, top, ..
                } => {
                    ids.push(id);
                    scores.push((logprob, top));
                }
                Event::Done { error, .. } => {
                    assert_eq!(error, None);
                    break;
                }
            }
        }
        out.push((ids, scores));
    }
    out
}
