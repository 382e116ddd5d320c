//! The kernel emulator: every CUDA source compiled by the host's g++
//! against `gpu-kernels/emu/` (the CUDA dialect on host threads: see
//! `emu.h`), one shared library per source, so the CUDA device's host code
//! and kernels run — slowly, in host memory — on machines without a GPU,
//! and the test suite checks them against the CPU path. cuBLAS's product
//! is a plain loop of the same contract.
//!
//! Why not an existing emulator: none ships for CUDA C++ in the package
//! registries reachable here (numba's simulator runs Python kernels only).
//!
//! Must never: stand in for a GPU in a measurement, or be reached by
//! `lattice worker` (tests only: [`super::Cuda::emulated`]).

use super::backend::{Backend, Gemm, Keep, Mem};
use super::{PRELUDE, SOURCES};
use crate::{DType, KernelError};
use cudarc::driver::LaunchConfig;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

const EMU_H: &str = include_str!("../../emu/emu.h");
const RUNTIME: &str = include_str!("../../emu/runtime.cpp");
const HEADER: &str = include_str!("../../emu/include/cuda_bf16.h");

type Launch =
    unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, u32, u32, u32, *mut *mut c_void) -> i32;
type GemmFn = unsafe extern "C" fn(i32, i32, i32, *const c_void, *const c_void, *mut f32, i32);

pub(super) struct Emu {
    /// Kept loaded: `launchers` and `gemm` point into them.
    _libs: Vec<libloading::Library>,
    /// Each library's `emu_launch`, resolved once.
    launchers: Vec<Launch>,
    /// `emu_gemm` (every library has one; the first's).
    gemm: GemmFn,
    /// Kernel name → index of the library that defines it.
    kernels: HashMap<String, usize>,
}

fn err(what: impl std::fmt::Display) -> KernelError {
    KernelError::Device(format!("kernel emulator: {what}"))
}

fn run(cmd: &mut Command) -> Result<String, KernelError> {
    let out = cmd
        .output()
        .map_err(|e| err(format!("{cmd:?}: {e} (is g++ installed?)")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds (or finds, by hash of everything it is made of) the library of
/// one source in `dir`; returns its path and kernel names.
fn build(dir: &Path, name: &str, source: &str) -> Result<(PathBuf, Vec<String>), KernelError> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (EMU_H, RUNTIME, HEADER, PRELUDE, source).hash(&mut h);
    let stem = format!("{name}-{:016x}", h.finish());
    let lib = dir.join(format!("lib{stem}.so"));
    let names_file = dir.join(format!("{stem}.names"));
    if let (true, Ok(names)) = (lib.exists(), std::fs::read_to_string(&names_file)) {
        return Ok((lib, names.lines().map(str::to_string).collect()));
    }
    // Built apart per process, then renamed into place: test processes
    // running at once each build, and the last rename wins.
    let src = dir.join(format!("{stem}.{}", std::process::id()));
    let write = |rel: &str, text: &str| -> Result<(), KernelError> {
        let p = src.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| err(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&p, text).map_err(|e| err(format!("{}: {e}", p.display())))
    };
    write("emu.h", EMU_H)?;
    write("runtime.cpp", RUNTIME)?;
    write("include/cuda_bf16.h", HEADER)?;
    write("include/cuda_fp16.h", HEADER)?;
    write("prelude.cuh", PRELUDE)?;
    write(&format!("{name}.cu"), source)?;
    let unit =
        format!("#include \"runtime.cpp\"\n#include \"prelude.cuh\"\n#include \"{name}.cu\"\n");
    write("probe.cpp", &unit)?;
    let gxx = |args: &[&str]| {
        let mut c = Command::new("g++");
        c.current_dir(&src).args([
            "-std=c++20",
            "-O2",
            // CUDA code reads one type's bytes as another's (a uint4 as
            // four __half2); nvcc allows it, so must g++.
            "-fno-strict-aliasing",
            // Fibers switch stacks with _longjmp, which fortified glibc
            // refuses.
            "-U_FORTIFY_SOURCE",
            "-fPIC",
            "-Iinclude",
            "-Wno-unknown-pragmas",
        ]);
        c.args(args);
        c
    };
    run(&mut gxx(&["-c", "probe.cpp", "-o", "probe.o"]))?;
    // The kernels: the unmangled (extern "C") functions the source
    // defines, less the emulator's own.
    let symbols =
        run(Command::new("nm")
            .current_dir(&src)
            .args(["--defined-only", "-g", "probe.o"]))?;
    let names: Vec<String> = symbols
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "T", sym] if !sym.starts_with("_Z") && !sym.starts_with("emu_") => {
                Some(sym.to_string())
            }
            _ => None,
        })
        .collect();
    let mut full = unit;
    for n in &names {
        full.push_str(&format!(
            "static int reg_{n} = emu_register(\"{n}\", &{n});\n"
        ));
    }
    write("unit.cpp", &full)?;
    run(&mut gxx(&[
        "-shared",
        "-Wl,-z,defs",
        "unit.cpp",
        "-o",
        "lib.so",
    ]))?;
    std::fs::write(src.join("names"), names.join("\n"))
        .map_err(|e| err(format!("{}: {e}", src.display())))?;
    let place = |from: &str, to: &Path| {
        std::fs::rename(src.join(from), to).map_err(|e| err(format!("{}: {e}", to.display())))
    };
    place("lib.so", &lib)?;
    place("names", &names_file)?;
    let _ = std::fs::remove_dir_all(&src);
    Ok((lib, names))
}

impl Emu {
    /// Every source built into `dir` (kept there: a later run with the
    /// same sources loads them without compiling).
    pub fn new(dir: &Path) -> Result<Self, KernelError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let mut libs = Vec::new();
        let mut launchers = Vec::new();
        let mut gemm = None;
        let mut kernels = HashMap::new();
        for (name, source) in SOURCES {
            let (path, names) = build(dir, name, source)?;
            // SAFETY: a library this function just built from the kernel
            // sources and the emulator runtime; its initialisers only fill
            // the kernel registry.
            #[allow(unsafe_code)]
            let lib = unsafe { libloading::Library::new(&path) }
                .map_err(|e| err(format!("loading {}: {e}", path.display())))?;
            // SAFETY: runtime.cpp defines both with these signatures; the
            // pointers stay valid while `_libs` holds the library.
            #[allow(unsafe_code)]
            let (launch, g) = unsafe {
                (
                    *lib.get::<Launch>(b"emu_launch\0")
                        .map_err(|e| err(format!("emu_launch: {e}")))?,
                    *lib.get::<GemmFn>(b"emu_gemm\0")
                        .map_err(|e| err(format!("emu_gemm: {e}")))?,
                )
            };
            for n in names {
                kernels.insert(n, launchers.len());
            }
            launchers.push(launch);
            gemm.get_or_insert(g);
            libs.push(lib);
        }
        Ok(Self {
            _libs: libs,
            launchers,
            gemm: gemm.ok_or_else(|| err("no kernel source"))?,
            kernels,
        })
    }

    /// Whether a source defines the kernel `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.kernels.contains_key(name)
    }

    fn host(&self, bytes: usize) -> Mem {
        let mut v = vec![0u128; bytes.div_ceil(16).max(1)];
        let ptr = v.as_mut_ptr() as u64;
        Mem {
            ptr,
            bytes,
            _keep: Keep::Host { _values: v },
        }
    }
}

impl Backend for Emu {
    fn alloc(&self, bytes: usize) -> Result<Mem, KernelError> {
        Ok(self.host(bytes))
    }

    fn upload(&self, dst: &Mem, src: &[u8]) -> Result<(), KernelError> {
        if src.len() > dst.bytes {
            return Err(err("upload beyond the buffer"));
        }
        // SAFETY: dst's address is its own live allocation of at least
        // src.len() bytes, written only through such copies and kernels.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst.ptr as *mut u8, src.len())
        };
        Ok(())
    }

    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<(), KernelError> {
        if dst.len() > src.bytes {
            return Err(err("download beyond the buffer"));
        }
        // SAFETY: as above; launches are synchronous, so nothing writes it.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(src.ptr as *const u8, dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    fn launch(
        &self,
        name: &str,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
    ) -> Result<(), KernelError> {
        let f = self
            .kernels
            .get(name)
            .and_then(|&i| self.launchers.get(i))
            .ok_or_else(|| err(format!("kernel {name} is in no source")))?;
        let cname = CString::new(name).map_err(err)?;
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        // SAFETY: emu_launch has this signature in runtime.cpp; `args`
        // holds a pointer to each of the kernel's parameters, in order and
        // of its type (the caller's contract, as with cuLaunchKernel).
        #[allow(unsafe_code)]
        let rc = unsafe {
            f(
                cname.as_ptr(),
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                cfg.shared_mem_bytes,
                args.as_mut_ptr(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => Err(err(format!("kernel {name} is not registered"))),
            2 => Err(err(format!(
                "{name}: a block of {b:?} threads is not whole warps (at most 1,024)"
            ))),
            _ => Err(err(format!(
                "{name}: its threads wait on each other forever (a barrier some thread never reaches)"
            ))),
        }
    }

    fn gemm(&self, g: &Gemm) -> Result<(), KernelError> {
        let dtype = match g.dtype {
            DType::F32 => 0,
            DType::BF16 => 1,
            DType::F16 => 2,
        };
        // SAFETY: emu_gemm has this signature in runtime.cpp; a, b and c
        // are live buffers of the sizes the caller checked.
        #[allow(unsafe_code)]
        unsafe {
            (self.gemm)(
                g.m as i32,
                g.n as i32,
                g.k as i32,
                g.a as *const c_void,
                g.b as *const c_void,
                g.c as *mut f32,
                dtype,
            );
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        Ok(())
    }

    fn copy(&self, dst: &Mem, src: &Mem, bytes: usize) -> Result<(), KernelError> {
        if bytes > dst.bytes || bytes > src.bytes {
            return Err(err("copy beyond a buffer"));
        }
        // SAFETY: two live allocations of at least `bytes`.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy(src.ptr as *const u8, dst.ptr as *mut u8, bytes)
        };
        Ok(())
    }
}
