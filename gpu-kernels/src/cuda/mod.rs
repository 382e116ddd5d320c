//! The CUDA device (issue #16): the kernels are CUDA C++ sources under
//! `gpu-kernels/kernels/` (embedding gather, RMSNorm and its fused residual
//! form, RoPE, SwiGLU, attention over the paged KV cache — split-K decode
//! with its reduction, causal prefill —, KV-cache writes, the GEMV of the
//! decode path, penalties, softmax, argmax and top-k/top-p/min-p
//! sampling), compiled at run time by NVRTC through `cudarc` for the
//! device's architecture; products of many rows go to cuBLAS. Every kernel
//! is compiled for every target architecture in each test run, on machines
//! with no GPU (NVRTC from PyPI; `tests/nvrtc.rs`).
//!
//! [`Cuda`] implements [`crate::Kernels`], so the engine runs on it
//! unchanged, over a backend (`backend.rs`): the CUDA driver, or the kernel
//! emulator (`emu.rs`: every source compiled by g++ and run on host
//! threads), with which the test suite checks the device's host code and
//! kernels against the CPU path on machines without a GPU. NVRTC's code,
//! cuBLAS and speed are checked on a lent GPU (`scripts/gpu-check`).
//!
//! Must never: touch the CUDA driver before checking that its library is
//! present (cudarc panics when it is not), or panic for a missing GPU.

mod backend;
mod device;
mod emu;
mod ops;
mod products;
mod sampling;

pub use device::{include_dir, kernel_names, Cuda, CudaAct, CudaKv, CudaWeight, GEMV_MAX_ROWS};

use crate::KernelError;

/// Prepended to every kernel source.
pub const PRELUDE: &str = include_str!("../../kernels/prelude.cuh");

/// Every kernel source, by name.
pub const SOURCES: &[(&str, &str)] = &[
    ("embed_norm", include_str!("../../kernels/embed_norm.cu")),
    ("rope_swiglu", include_str!("../../kernels/rope_swiglu.cu")),
    ("attention", include_str!("../../kernels/attention.cu")),
    ("sampling", include_str!("../../kernels/sampling.cu")),
    ("linear", include_str!("../../kernels/linear.cu")),
];

/// The architectures the kernels are built for: A100 (sm_80), L40/RTX 40
/// (sm_89), H100/H200 (sm_90).
pub const ARCHS: &[&str] = &["sm_80", "sm_89", "sm_90"];

/// The whole text NVRTC compiles for `source` (`name.cu`), its lines
/// numbered as in each file.
pub fn full_source(name: &str, source: &str) -> String {
    format!("#line 1 \"prelude.cuh\"\n{PRELUDE}\n#line 1 \"{name}.cu\"\n{source}")
}

/// Whether NVRTC's library can be loaded (by name, through the loader's
/// search path: `LD_LIBRARY_PATH`).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library by name with libloading and
    // closes it; no symbol is called.
    #[allow(unsafe_code)]
    unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    }
}

/// Why a CUDA device cannot serve here (its driver, NVRTC or cuBLAS
/// cannot be loaded), or Ok when all three load.
pub fn device_available() -> Result<(), KernelError> {
    // SAFETY: load-by-name probes of the libraries (libloading); no
    // symbol is called.
    #[allow(unsafe_code)]
    let (driver, blas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        return Err(KernelError::Device(
            "no CUDA driver on this machine (libcuda.so could not be loaded: is the NVIDIA driver installed?)".into(),
        ));
    }
    if !nvrtc_available() {
        return Err(KernelError::Device(
            "NVRTC (libnvrtc.so) could not be loaded: the kernels are compiled at start; put the CUDA toolkit's lib64 (or PyPI nvidia-cuda-nvrtc's lib) on LD_LIBRARY_PATH".into(),
        ));
    }
    if !blas {
        return Err(KernelError::Device(
            "cuBLAS (libcublas.so) could not be loaded: put the CUDA toolkit's lib64 (or PyPI nvidia-cublas's lib) on LD_LIBRARY_PATH".into(),
        ));
    }
    Ok(())
}

/// Compiles one kernel source for `arch` (`sm_90`), with the CUDA headers
/// (`cuda_bf16.h`, ...) from `include_dir`. Returns the PTX; an error
/// carries NVRTC's log.
pub fn compile(
    name: &str,
    source: &str,
    arch: &'static str,
    include_dir: &str,
) -> Result<String, KernelError> {
    if !nvrtc_available() {
        return Err(KernelError::Device(
            "NVRTC (libnvrtc.so.12) could not be loaded: put its directory on LD_LIBRARY_PATH (scripts/setup installs it from PyPI)".into(),
        ));
    }
    let options = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: vec![include_dir.to_string()],
        options: vec!["--std=c++17".into(), "-default-device".into()],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(full_source(name, source), options) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(KernelError::Device(
            format!("{name}.cu for {arch}:\n{}", log.to_string_lossy()),
        )),
        Err(e) => Err(KernelError::Device(format!("{name}.cu for {arch}: {e:?}"))),
    }
}

/// The kernels a PTX module defines (its `.entry` names).
pub fn entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
        .map(|rest| rest.split('(').next().unwrap_or(rest).trim().to_string())
        .collect()
}
