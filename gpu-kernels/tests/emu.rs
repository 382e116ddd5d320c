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
use lattice_gpu_kernels::{Adjust, DType, HostWeight, Kernels, Pick};
use std::path::Path;

fn emulated() -> Cuda {
    Cuda::emulated(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu")).unwrap()
}

#[test]
fn every_kernel_matches_the_cpu_path_in_the_emulator() {
    let gpu = emulated();
    let cpu = Cpu::new(2).unwrap().with_bf16_dot(false);
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
    // The same check for each product of a fused group, before its launch.
    let x8 = gpu.act(2, 8).unwrap();
    let mut wide = gpu.act(2, 5).unwrap();
    let e = gpu
        .matmul_many(&x8, &[(&w, None), (&w, None)], &mut [&mut out, &mut wide])
        .unwrap_err()
        .to_string();
    assert_eq!(e, "shape mismatch in matmul: 2×8 · w [4, 8]ᵀ into 2×5");
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
    let act = lattice_gpu_kernels::check::upload(gpu, &values, rows, vocab).unwrap();
    (values, act)
}

/// `Pick`'s rule, computed on the host in f64: the adjustments (in f32,
/// as documented), then greedy, or softmax at the temperature; the top_k
/// most likely; those at least min_p × the most likely; the smallest head
/// by probability holding top_p of what is left's mass; the draw over the
/// kept tokens laid out in id order.
fn reference(row: &[f32], pick: &Pick) -> u32 {
    let mut row = row.to_vec();
    for a in &pick.adjust {
        let mut v = row[a.token as usize] + a.bias;
        if a.seen && pick.repetition != 1.0 {
            v = if v > 0.0 {
                v / pick.repetition
            } else {
                v * pick.repetition
            };
        }
        if a.count > 0 {
            v -= pick.presence + pick.frequency * a.count as f32;
        }
        row[a.token as usize] = v;
    }
    if pick.temperature <= 0.0 {
        return (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32;
    }
    let t = f64::from(pick.temperature);
    let mx = row.iter().fold(f64::MIN, |m, v| m.max(f64::from(*v) / t));
    let e: Vec<f64> = row.iter().map(|v| (f64::from(*v) / t - mx).exp()).collect();
    let sum: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
    let mut kept: Vec<usize> = (0..p.len()).collect();
    kept.sort_by(|a, b| p[*b].total_cmp(&p[*a]).then(a.cmp(b)));
    if pick.top_k > 0 {
        kept.truncate(pick.top_k as usize);
    }
    let top = p[kept[0]];
    kept.retain(|i| p[*i] >= f64::from(pick.min_p) * top);
    if pick.top_p < 1.0 {
        let mass: f64 = kept.iter().map(|i| p[*i]).sum();
        let mut run = 0.0;
        let n = kept
            .iter()
            .position(|i| {
                run += p[*i];
                run >= f64::from(pick.top_p) * mass
            })
            .map_or(kept.len(), |n| n + 1);
        kept.truncate(n);
    }
    kept.sort_unstable();
    let total: f64 = kept.iter().map(|i| p[*i]).sum();
    let target = f64::from(pick.uniform) * total;
    let mut run = 0.0;
    for i in &kept {
        run += p[*i];
        if run > target {
            return *i as u32;
        }
    }
    kept[kept.len() - 1] as u32
}

fn plain(temperature: f32, top_k: u32, top_p: f32, min_p: f32, uniform: f32) -> Pick {
    Pick {
        temperature,
        top_k,
        top_p,
        min_p,
        uniform,
        ..Pick::greedy()
    }
}

#[test]
fn tokens_chosen_on_the_device_follow_the_documented_rule() {
    let gpu = emulated();
    let (rows, vocab) = (12, 1000);
    let (values, _) = logits(&gpu, rows, vocab, 77);
    let mut rng = lattice_gpu_kernels::check::Rng(5);
    let mut draw = || (rng.uniform() + 1.0) * 0.5;
    // Every filter alone and together, greedy, and the adjustments: a
    // bias, the repetition penalty on seen tokens, presence and frequency
    // on generated ones. Each row of a call has its own settings.
    let settings: Vec<Box<dyn Fn(f32) -> Pick>> = vec![
        Box::new(|u| plain(1.0, 0, 1.0, 0.0, u)),
        Box::new(|u| plain(0.7, 50, 0.9, 0.0, u)),
        Box::new(|u| plain(1.3, 0, 0.5, 0.0, u)),
        Box::new(|u| plain(1.0, 5, 1.0, 0.0, u)),
        Box::new(|u| plain(0.8, 0, 1.0, 0.2, u)),
        Box::new(|u| plain(0.9, 40, 0.8, 0.05, u)),
        Box::new(|u| plain(0.0, 0, 1.0, 0.0, u)),
        Box::new(|u| Pick {
            repetition: 1.3,
            presence: 0.5,
            frequency: 0.25,
            adjust: (0..60)
                .map(|i| Adjust {
                    token: i * 13 % 1000,
                    bias: if i % 7 == 0 { 2.5 } else { 0.0 },
                    seen: i % 2 == 0,
                    count: i % 4,
                })
                .collect(),
            ..plain(0.6, 0, 0.95, 0.0, u)
        }),
    ];
    for round in 0..2 {
        let picks: Vec<Pick> = (0..rows)
            .map(|r| settings[(r + round * 3) % settings.len()](draw()))
            .collect();
        let (_, mut act) = logits(&gpu, rows, vocab, 77);
        let got = gpu.pick(&mut act, &picks).unwrap();
        for r in 0..rows {
            let want = reference(&values[r * vocab..(r + 1) * vocab], &picks[r]);
            assert_eq!(got[r], want, "row {r}: {:?}", picks[r]);
        }
    }
    // A penalty moves the greedy choice off each row's best token.
    let (_, mut act) = logits(&gpu, rows, vocab, 77);
    let greedy = gpu
        .pick(&mut act, &vec![plain(0.0, 0, 1.0, 0.0, 0.0); rows])
        .unwrap();
    let penalised: Vec<Pick> = greedy
        .iter()
        .map(|g| Pick {
            presence: 10.0,
            adjust: vec![Adjust {
                token: *g,
                bias: 0.0,
                seen: true,
                count: 1,
            }],
            ..plain(0.0, 0, 1.0, 0.0, 0.0)
        })
        .collect();
    let (_, mut act) = logits(&gpu, rows, vocab, 77);
    let after = gpu.pick(&mut act, &penalised).unwrap();
    for r in 0..rows {
        assert_ne!(after[r], greedy[r], "row {r}");
    }
    let e = gpu.pick(&mut act, &penalised[..2]).unwrap_err().to_string();
    assert_eq!(e, "shape mismatch in pick: 2 picks for 12 rows");
}

/// `outs × inp` f32 weights times `rows` activation rows on `k`.
fn product<K: Kernels>(k: &K, w: &[f32], x: &[f32], rows: usize, inp: usize) -> Vec<f32> {
    let outs = w.len() / inp;
    let w = k
        .weight(HostWeight::owned_f32("w", vec![outs, inp], w.to_vec()).unwrap())
        .unwrap();
    let xa = lattice_gpu_kernels::check::upload(k, x, rows, inp).unwrap();
    let mut out = k.act(rows, outs).unwrap();
    k.matmul(&xa, &w, None, &mut out).unwrap();
    k.to_host(&out).unwrap()
}

/// Every split the GPU check can force (one warp per output, to measure
/// the split's gain in the same run) gives the CPU path's product, as the
/// split the device chooses does; a split that is not a power of two
/// rounds down to one.
#[test]
fn every_forced_gemv_split_gives_the_cpu_paths_product() {
    let gpu = emulated();
    let cpu = Cpu::new(1).unwrap();
    let (rows, inp, outs) = (3, 2048, 8);
    let mut state = 7u32;
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..outs * inp).map(|_| next()).collect();
    let x: Vec<f32> = (0..rows * inp).map(|_| next()).collect();
    let want = product(&cpu, &w, &x, rows, inp);
    for split in [Some(1), Some(2), Some(3), Some(4), Some(8), Some(64), None] {
        gpu.force_gemv_split(split);
        let got = product(&gpu, &w, &x, rows, inp);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-3, "split {split:?}: max error {err}");
    }
}
