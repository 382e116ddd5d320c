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
