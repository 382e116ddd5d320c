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
use lattice_worker::engine::sampler::argmax;
use lattice_worker::model::{Chunk, Model};
use lattice_worker::testmodel::{self, Spec};
use std::path::Path;

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
