//! `lattice-kernel-compile INCLUDE_DIR [FILE.cu]`: compiles every CUDA
//! kernel (or only FILE.cu, after the same prelude) for every target
//! architecture with NVRTC (no GPU needed) and prints one line per source
//! and architecture, then `entry NAME` for each kernel the last
//! architecture's PTX defines; exits 1 if any fails, with NVRTC's log.
//! The test suite runs it with NVRTC from PyPI on `LD_LIBRARY_PATH`
//! (`tests/nvrtc.rs`), and so does `scripts/gpu-check`.
//!
//! Must never: call the CUDA driver (it runs where there is none).

use lattice_gpu_kernels::cuda::{compile, entries, ARCHS, SOURCES};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(include) = std::env::args().nth(1) else {
        eprintln!("usage: lattice-kernel-compile INCLUDE_DIR (the CUDA headers: cuda_bf16.h, ...)");
        return ExitCode::from(2);
    };
    let extra = std::env::args()
        .nth(2)
        .map(|f| match std::fs::read_to_string(&f) {
            Ok(text) => (f, text),
            Err(e) => (f, format!("#error cannot read the file: {e}")),
        });
    let sources: Vec<(&str, &str)> = match &extra {
        Some((f, text)) => vec![(f.as_str(), text.as_str())],
        None => SOURCES.to_vec(),
    };
    let mut failed = 0;
    let mut defined = Vec::new();
    for (name, source) in sources {
        for arch in ARCHS {
            match compile(name, source, arch, &include) {
                Ok(ptx) => {
                    println!("ok {name} {arch} {}", ptx.len());
                    if Some(arch) == ARCHS.last() {
                        defined.extend(entries(&ptx));
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("FAILED {name} {arch}");
                    eprintln!("{e}");
                }
            }
        }
    }
    for e in defined {
        println!("entry {e}");
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
