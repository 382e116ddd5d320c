//! Every CUDA kernel compiles for every target architecture (sm_80, sm_89,
//! sm_90), here, without a GPU: NVRTC and the CUDA headers come from PyPI
//! (`scripts/setup` installs them into `test-peers/.venv`), and
//! `lattice-kernel-compile` runs with NVRTC on its `LD_LIBRARY_PATH`. A
//! broken kernel fails with NVRTC's log; without a driver, the CUDA device
//! says what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_gpu_kernels::cuda::{device_available, kernel_names, ARCHS, SOURCES};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `site-packages/nvidia` of the test venv.
fn nvidia() -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/.venv/lib");
    let python = std::fs::read_dir(&lib)
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().starts_with("python3"))
        })
        .map(|e| e.path().join("site-packages/nvidia"));
    match python {
        Some(p) if p.join("cuda_nvrtc/lib").exists() => p,
        _ => panic!("NVRTC from PyPI is missing: run scripts/setup"),
    }
}

fn compile(extra: &[&Path]) -> Output {
    let nvidia = nvidia();
    Command::new(env!("CARGO_BIN_EXE_lattice-kernel-compile"))
        .arg(nvidia.join("cuda_runtime/include"))
        .args(extra)
        .env("LD_LIBRARY_PATH", nvidia.join("cuda_nvrtc/lib"))
        .output()
        .unwrap()
}

#[test]
fn every_kernel_compiles_for_every_target_architecture() {
    let out = compile(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, _) in SOURCES {
        for arch in ARCHS {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("ok {name} {arch} "))),
                "{name} for {arch} missing from:\n{stdout}"
            );
        }
    }
    let compiled = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(compiled, SOURCES.len() * ARCHS.len());
    // Every kernel the device launches by name is defined by a source.
    let defined: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("entry "))
        .collect();
    for name in kernel_names() {
        assert!(
            defined.contains(&name.as_str()),
            "{name} is launched but no source defines it; defined: {defined:?}"
        );
    }
}

#[test]
fn a_kernel_that_does_not_compile_fails_with_the_compilers_log() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.cu");
    std::fs::write(
        &broken,
        "extern \"C\" __global__ void k(float* x) { x[0] = undefined_thing; }\n",
    )
    .unwrap();
    let out = compile(&[&broken]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("identifier \"undefined_thing\" is undefined"),
        "{stderr}"
    );
}

#[test]
fn the_cuda_device_says_what_is_missing() {
    let available = device_available();
    let opened = lattice_gpu_kernels::cuda::Cuda::new(0).map(|_| ());
    if Path::new("/dev/nvidiactl").exists() {
        // A GPU machine: the libraries load, or the error names the one
        // that does not.
        if let Err(e) = available {
            let e = e.to_string();
            assert!(e.contains("NVRTC") || e.contains("cuBLAS"), "{e}");
        }
    } else {
        let e = available.unwrap_err().to_string();
        assert!(e.contains("no CUDA driver on this machine"), "{e}");
        // Opening the device says the same, instead of cudarc's panic.
        assert_eq!(opened.unwrap_err().to_string(), e);
    }
}
