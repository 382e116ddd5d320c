//! The CUDA device's host code and every kernel, run in the kernel
//! emulator (g++ and host threads: `gpu-kernels/emu`) on this machine
//! without a GPU, against the CPU path: each step of the forward pass on
//! random inputs, with the tolerances `lattice_gpu_kernels::check` states.
//! What only a GPU can show — NVRTC's code, cuBLAS, speed — is left to
//! `scripts/gpu-check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_gpu_kernels::check::check_all;
use lattice_gpu_kernels::cpu::Cpu;
use lattice_gpu_kernels::cuda::Cuda;
use lattice_gpu_kernels::{DType, HostWeight, Kernels};
use std::path::Path;

fn emulated() -> Cuda {
    Cuda::emulated(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu")).unwrap()
}

#[test]
fn every_kernel_matches_the_cpu_path_in_the_emulator() {
    let gpu = emulated();
    let cpu = Cpu::new(2).unwrap();
    let results = check_all(&gpu, &cpu, 0.25);
    let mut failed = Vec::new();
    for (case, why) in &results {
        println!(
            "{:<60} {:.2e} (tolerance {:.0e}) {}",
            case.name,
            case.err,
            case.tol,
            why.as_deref().unwrap_or("")
        );
        if !case.passed() {
            failed.push(case.name.clone());
        }
    }
    assert!(results.len() > 40, "{} cases", results.len());
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
fn a_wrong_shape_is_an_error_before_any_launch() {
    let gpu = emulated();
    let w = gpu
        .weight(HostWeight::owned_f32("w", vec![4, 8], vec![0.5; 32]).unwrap())
        .unwrap();
    let x = gpu.act(2, 7).unwrap();
    let mut out = gpu.act(2, 4).unwrap();
    let e = gpu.matmul(&x, &w, None, &mut out).unwrap_err().to_string();
    assert_eq!(e, "shape mismatch in matmul: 2×7 · w [4, 8]ᵀ into 2×4");
    let table = gpu
        .weight(HostWeight::owned_u16("t", DType::BF16, vec![3, 8], vec![0; 24]).unwrap())
        .unwrap();
    let mut rows = gpu.act(1, 8).unwrap();
    let e = gpu.embed(&table, &[3], &mut rows).unwrap_err().to_string();
    assert_eq!(e, "token id 3 is outside the vocabulary of 3");
}

/// Logits of `rows` × `vocab`, distinct values, through an embedding
/// gather (the trait's only upload).
fn logits(
    gpu: &Cuda,
    rows: usize,
    vocab: usize,
    seed: u64,
) -> (Vec<f32>, lattice_gpu_kernels::cuda::CudaAct) {
    let mut rng = lattice_gpu_kernels::check::Rng(seed);
    let values: Vec<f32> = (0..rows * vocab).map(|_| 4.0 * rng.uniform()).collect();
    let table = gpu
        .weight(HostWeight::owned_f32("logits", vec![rows, vocab], values.clone()).unwrap())
        .unwrap();
    let mut act = gpu.act(rows, vocab).unwrap();
    let ids: Vec<u32> = (0..rows as u32).collect();
    gpu.embed(&table, &ids, &mut act).unwrap();
    (values, act)
}

/// The documented rule, computed exactly on the host: softmax at the
/// temperature; keep the tokens of probability ≥ t, t the largest
/// threshold keeping at least top_k tokens and top_p of the mass, raised
/// to min_p · the largest probability; draw in index order.
fn reference(row: &[f32], temperature: f32, top_k: usize, top_p: f32, min_p: f32, u: f32) -> u32 {
    let mx = row.iter().fold(f32::MIN, |m, v| m.max(*v / temperature));
    let e: Vec<f64> = row
        .iter()
        .map(|v| f64::from((v / temperature - mx).exp()))
        .collect();
    let sum: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // top_k 0 is off: no bound from it.
    let by_k = if top_k == 0 {
        f64::INFINITY
    } else {
        sorted[top_k.min(sorted.len()) - 1]
    };
    let mut mass = 0.0;
    let mut by_p = sorted[sorted.len() - 1];
    for v in &sorted {
        mass += v;
        if mass >= f64::from(top_p) {
            by_p = *v;
            break;
        }
    }
    let t = by_k.min(by_p).max(f64::from(min_p) * sorted[0]);
    let total: f64 = p.iter().filter(|v| **v >= t).sum();
    let target = f64::from(u) * total;
    let mut run = 0.0;
    let mut pick = 0;
    for (i, v) in p.iter().enumerate() {
        if *v >= t {
            pick = i;
            run += v;
            if run > target {
                break;
            }
        }
    }
    pick as u32
}

#[test]
fn sampling_on_the_device_follows_the_documented_rule() {
    let gpu = emulated();
    let (rows, vocab) = (12, 1000);
    let (values, act) = logits(&gpu, rows, vocab, 77);
    // Greedy: the largest logit of each row.
    let greedy = gpu.argmax_rows(&act).unwrap();
    for (r, g) in greedy.iter().enumerate() {
        let row = &values[r * vocab..(r + 1) * vocab];
        let best = (0..vocab).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        assert_eq!(*g as usize, best, "row {r}");
    }
    // Sampling: the same draws give the reference's tokens, for several
    // settings.
    let mut rng = lattice_gpu_kernels::check::Rng(5);
    for (temperature, top_k, top_p, min_p) in [
        (1.0, 0, 1.0, 0.0),
        (0.7, 50, 0.9, 0.0),
        (1.3, 0, 0.5, 0.0),
        (1.0, 5, 1.0, 0.0),
        (0.8, 0, 1.0, 0.2),
    ] {
        let draws: Vec<f32> = (0..rows).map(|_| (rng.uniform() + 1.0) * 0.5).collect();
        let got = gpu
            .sample_rows(&act, temperature, top_k, top_p, min_p, &draws)
            .unwrap();
        for r in 0..rows {
            let row = &values[r * vocab..(r + 1) * vocab];
            let want = reference(row, temperature, top_k as usize, top_p, min_p, draws[r]);
            assert_eq!(
                got[r], want,
                "row {r}, temperature {temperature}, top_k {top_k}, top_p {top_p}, min_p {min_p}"
            );
        }
    }
    // Penalties: a seen token's logit falls; the greedy choice moves off a
    // row's best token once it is penalised hard enough.
    let (_, mut act) = logits(&gpu, rows, vocab, 77);
    let seen: Vec<Vec<(u32, u32)>> = greedy.iter().map(|g| vec![(*g, 3)]).collect();
    gpu.penalize(&mut act, &seen, 1.0, 10.0, 10.0).unwrap();
    let after = gpu.argmax_rows(&act).unwrap();
    for r in 0..rows {
        assert_ne!(after[r], greedy[r], "row {r}");
    }
}
