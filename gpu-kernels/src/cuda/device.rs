//! The CUDA device: one context and one stream on one GPU, the kernels
//! compiled by NVRTC for its architecture at start (the PTX cached on disk
//! by source hash and architecture), cuBLAS for the products of more than
//! [`GEMV_MAX_ROWS`] rows. Every step is queued on the stream; the host
//! waits only when it reads a result ([`crate::Kernels::to_host`]).
//!
//! Small host arrays that every layer of a pass passes again (positions,
//! cache slots, sequence tables, token ids) are uploaded once per pass:
//! the last few uploads are kept and reused when the same values come
//! back.
//!
//! Must never: touch the driver before [`super::device_available`] said
//! its library loads, hand a kernel a buffer of the wrong length (shapes
//! are checked on the host first), or use the stream from two threads at
//! once (the engine owns the device).

use super::backend::{driver, Backend, Driver, Mem};
use super::{full_source, SOURCES};
use crate::{DType, KernelError, KvDtype};
use cudarc::driver::CudaContext;
use cudarc::nvrtc::Ptx;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Products of up to this many activation rows run the GEMV kernels
/// (weights read once, activations in f32); larger ones go to cuBLAS.
pub const GEMV_MAX_ROWS: usize = 8;

/// How many recent uploads of small host arrays are kept for reuse.
const MEMO: usize = 12;

/// Every kernel the device launches, by its `extern "C"` name.
pub fn kernel_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "rope",
        "swiglu",
        "attn_decode_reduce",
        "adjust_logits",
        "pick",
        "to_bf16",
        "to_f16",
        "add_bias",
        "add",
        "gather_rows",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for w in ["f32", "bf16", "f16"] {
        for k in ["embed", "rms_norm", "add_rms_norm"] {
            names.push(format!("{k}_{w}"));
        }
        for r in [1, 2, 4, 8] {
            names.push(format!("gemv_{w}_r{r}"));
            names.push(format!("gemv3_{w}_r{r}"));
        }
    }
    for c in ["f32", "bf16"] {
        for k in [
            "attn_decode",
            "attn_prefill",
            "attn_prefill_tiled",
            "kv_write",
        ] {
            names.push(format!("{k}_{c}"));
        }
    }
    names
}

/// Activations on the GPU: a `rows × cols` f32 matrix, row-major.
pub struct CudaAct {
    pub rows: usize,
    pub cols: usize,
    pub(super) mem: Mem,
}

/// A weight on the GPU, in its stored dtype (vectors in f32).
pub struct CudaWeight {
    pub(super) name: String,
    pub(super) dtype: DType,
    pub(super) shape: Vec<usize>,
    pub(super) mem: Mem,
}

/// One layer's KV cache on the GPU, keys and values in `dtype`.
pub struct CudaKv {
    pub(super) width: usize,
    pub(super) slots: usize,
    pub(super) dtype: KvDtype,
    pub(super) k: Mem,
    pub(super) v: Mem,
}

type Recent<T> = Vec<(Vec<T>, Arc<Mem>)>;

#[derive(Default)]
pub(super) struct Memo {
    u32s: Recent<u32>,
    f32s: Recent<f32>,
}

/// The CUDA device.
pub struct Cuda {
    pub(super) gpu: Box<dyn Backend>,
    pub(super) name: String,
    pub(super) arch: String,
    pub(super) memo: Mutex<Memo>,
    pub(super) gemv_max_rows: usize,
    /// Streaming multiprocessors: a GEMV launch is split so that it has a
    /// warp for each of 64 × this many slots (`products::gemv_split`).
    pub(super) sms: usize,
    /// Warps an output of every GEMV launch, when forced (0: chosen per
    /// launch; `force_gemv_split`).
    pub(super) forced_split: std::sync::atomic::AtomicUsize,
    /// Buffers kept from step to step, one per [`Scratch`] use (every user
    /// is ordered on the one stream).
    pub(super) scratch: Mutex<[Option<Arc<Mem>>; 2]>,
}

/// What a scratch buffer holds between two launches.
#[derive(Clone, Copy)]
pub(super) enum Scratch {
    /// The decode attention's partial results, until their reduction.
    Partial = 0,
    /// Activations in 16 bits, until cuBLAS has read them.
    Half = 1,
}

/// Where the CUDA headers NVRTC needs (`cuda_bf16.h`) are: the
/// `LATTICE_CUDA_INCLUDE` variable, else `$CUDA_HOME/include`, else
/// `/usr/local/cuda/include`.
pub fn include_dir() -> Result<String, KernelError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("LATTICE_CUDA_INCLUDE") {
        candidates.push(d.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(d) = std::env::var(var) {
            candidates.push(PathBuf::from(d).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    candidates
        .iter()
        .find(|d| d.join("cuda_bf16.h").exists())
        .map(|d| d.to_string_lossy().into_owned())
        .ok_or_else(|| {
            KernelError::Device(format!(
                "the CUDA headers (cuda_bf16.h) are not in any of {candidates:?}: set LATTICE_CUDA_INCLUDE to their folder"
            ))
        })
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("lattice/kernels")
}

/// Every kernel the device launches is among those `defined`.
fn all_defined(defined: impl Fn(&str) -> bool) -> Result<(), KernelError> {
    match kernel_names().into_iter().find(|k| !defined(k)) {
        Some(missing) => Err(KernelError::Device(format!(
            "kernel {missing} is in none of the compiled sources"
        ))),
        None => Ok(()),
    }
}

/// PTX of `name` for `arch`: from the disk cache when this exact source
/// was compiled for it before, else compiled by NVRTC (and cached).
fn ptx(name: &str, source: &str, arch: &'static str, include: &str) -> Result<Ptx, KernelError> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (full_source(name, source), arch, include).hash(&mut h);
    let path = cache_dir().join(format!("{name}-{arch}-{:016x}.ptx", h.finish()));
    if let Ok(cached) = std::fs::read_to_string(&path) {
        return Ok(Ptx::from_src(cached));
    }
    let ptx = super::compile(name, source, arch, include)?;
    // A cache that cannot be written only costs the next start a compile.
    if std::fs::create_dir_all(cache_dir()).is_ok() {
        let _ = std::fs::write(&path, &ptx);
    }
    Ok(Ptx::from_src(ptx))
}

/// Keeps what the device's default memory pool frees for its next
/// allocations: by default the pool hands its memory back to the driver at
/// every synchronization, and each step (which ends with one, reading the
/// chosen tokens) would map it again.
fn keep_pool(ctx: &CudaContext) -> Result<(), KernelError> {
    use cudarc::driver::{result, sys};
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut keep = u64::MAX;
    // SAFETY: the device handle is the context's own, and the attribute
    // takes a pointer to a u64 that outlives the call.
    #[allow(unsafe_code)]
    unsafe {
        result::device::get_default_mem_pool(ctx.cu_device()).and_then(|pool| {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
        })
    }
    .map_err(|e| driver("memory pool", e))
}

impl Cuda {
    /// The GPU `ordinal`, its kernels compiled for its architecture.
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        super::device_available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| driver("context", e))?;
        // One stream, used by one thread: cudarc's per-buffer events would
        // only add work to every launch.
        // SAFETY: no buffer exists yet, and every later one lives on this
        // one stream, whose order alone keeps reads after writes.
        #[allow(unsafe_code)]
        unsafe {
            ctx.disable_event_tracking()
        };
        keep_pool(&ctx)?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver("compute capability", e))?;
        if major < 8 {
            return Err(KernelError::Device(format!(
                "compute capability {major}.{minor}: the kernels need 8.0 or newer (bf16)"
            )));
        }
        // NVRTC takes the architecture as a &'static str: a few bytes
        // leaked per device opened.
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let gpu = ctx.name().map_err(|e| driver("device name", e))?;
        let memory = ctx.total_mem().map_err(|e| driver("memory", e))?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| driver("multiprocessor count", e))?;
        let include = include_dir()?;
        let wanted = kernel_names();
        let mut funcs = HashMap::new();
        let mut modules = Vec::new();
        for (name, source) in SOURCES {
            let module = ctx
                .load_module(ptx(name, source, arch, &include)?)
                .map_err(|e| driver(&format!("loading {name}.cu"), e))?;
            for k in &wanted {
                if !funcs.contains_key(k) {
                    if let Ok(f) = module.load_function(k) {
                        funcs.insert(k.clone(), f);
                    }
                }
            }
            modules.push(module);
        }
        all_defined(|k| funcs.contains_key(k))?;
        Ok(Self {
            gpu: Box::new(Driver::new(ctx, funcs, modules)?),
            name: format!("cuda ({gpu}, {arch}, {} GiB)", memory >> 30),
            arch: arch.to_string(),
            memo: Mutex::new(Memo::default()),
            gemv_max_rows: GEMV_MAX_ROWS,
            sms: sms.max(1) as usize,
            forced_split: Default::default(),
            scratch: Mutex::new([None, None]),
        })
    }

    /// The kernel emulator (tests only): every kernel source compiled by
    /// the host's g++ into `dir` and run on host threads, cuBLAS's product
    /// a plain loop. The device's host code is the same as on a GPU.
    pub fn emulated(dir: &Path) -> Result<Self, KernelError> {
        let emu = super::emu::Emu::new(dir)?;
        all_defined(|k| emu.defines(k))?;
        Ok(Self {
            gpu: Box::new(emu),
            name: "cuda (emulated on the host)".into(),
            arch: "emulated".into(),
            memo: Mutex::new(Memo::default()),
            gemv_max_rows: GEMV_MAX_ROWS,
            // One: the checks' small products are split over warps too.
            sms: 1,
            forced_split: Default::default(),
            scratch: Mutex::new([None, None]),
        })
    }

    /// The same device with products of up to `rows` rows on the GEMV
    /// kernels (default [`GEMV_MAX_ROWS`]; 0 sends all to cuBLAS). Past
    /// [`GEMV_MAX_ROWS`], the GEMV runs in groups of that many rows: slow
    /// for long prompts, but every product keeps its activations in f32,
    /// exactly as the CPU path does (the checks use it to tell the
    /// rounding of cuBLAS's 16-bit activations from a real difference).
    pub fn with_gemv_max_rows(mut self, rows: usize) -> Self {
        self.gemv_max_rows = rows;
        self
    }

    /// Every GEMV launch from now on with `split` warps an output (1, 2, 4
    /// or 8; other values round down to one of them), or, with None, as
    /// many as fill the GPU (the default). For measuring the split's gain
    /// on one device (`lattice-gpu-check`).
    pub fn force_gemv_split(&self, split: Option<usize>) {
        let v = split.map_or(0, |n| {
            let n = n.clamp(1, 8);
            1 << n.ilog2()
        });
        self.forced_split
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// The architecture the kernels were compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Calls into the driver so far (kernel launches, products,
    /// allocations, copies), for profiles; 0 on the emulator.
    pub fn driver_calls(&self) -> u64 {
        self.gpu.calls()
    }

    /// Starts (or stops) timing every launch with a pair of events (a
    /// profile: each launch costs the host more while it is on).
    pub fn time_launches(&self, on: bool) -> Result<(), KernelError> {
        self.gpu.set_timing(on)
    }

    /// GPU time by kernel since timing started, the largest first:
    /// (kernel, launches, µs in all). Waits for the stream.
    pub fn launch_times(&self) -> Result<Vec<(String, usize, f64)>, KernelError> {
        let mut by: HashMap<String, (usize, f64)> = HashMap::new();
        for (name, us) in self.gpu.timings()? {
            let e = by.entry(name).or_default();
            e.0 += 1;
            e.1 += us;
        }
        let mut out: Vec<_> = by.into_iter().map(|(n, (c, us))| (n, c, us)).collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(out)
    }

    /// Waits until every queued step is done (for timing).
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.gpu.synchronize()
    }

    /// Device-to-device copy bandwidth (bytes read + written per second)
    /// over `bytes`-sized buffers, the best of `rounds` copies.
    pub fn copy_bandwidth(&self, bytes: usize, rounds: usize) -> Result<f64, KernelError> {
        let src = self.gpu.alloc(bytes)?;
        let dst = self.gpu.alloc(bytes)?;
        let mut best = f64::MAX;
        for _ in 0..rounds.max(2) {
            self.synchronize()?;
            let t = std::time::Instant::now();
            self.gpu.copy(&dst, &src, bytes)?;
            self.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * bytes as f64 / best)
    }

    /// Zeroed device memory for `n` values of 4 bytes.
    pub(super) fn zeros(&self, n: usize) -> Result<Mem, KernelError> {
        self.gpu.alloc(n * 4)
    }

    /// Device memory of at least `n` values of 4 bytes, not zeroed: the
    /// same buffer each time unless a larger one is asked for. Only for
    /// results that every step writes before it reads them.
    pub(super) fn scratch(&self, use_: Scratch, n: usize) -> Result<Arc<Mem>, KernelError> {
        let mut kept = self.scratch.lock();
        let slot = &mut kept[use_ as usize];
        if let Some(m) = slot.as_ref().filter(|m| m.bytes >= n * 4) {
            return Ok(m.clone());
        }
        let m = Arc::new(self.gpu.alloc(n * 4)?);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// `values` on the GPU, reusing a recent upload of the same values.
    pub(super) fn u32s(&self, values: &[u32]) -> Result<Arc<Mem>, KernelError> {
        let mut memo = self.memo.lock();
        self.upload(&mut memo.u32s, values)
    }

    /// As [`Self::u32s`], for f32 values.
    pub(super) fn f32s(&self, values: &[f32]) -> Result<Arc<Mem>, KernelError> {
        let mut memo = self.memo.lock();
        self.upload(&mut memo.f32s, values)
    }

    fn upload<T: bytemuck::Pod + PartialEq>(
        &self,
        recent: &mut Recent<T>,
        values: &[T],
    ) -> Result<Arc<Mem>, KernelError> {
        if let Some((_, m)) = recent.iter().find(|(v, _)| v.as_slice() == values) {
            return Ok(m.clone());
        }
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let m = self.gpu.alloc(bytes.len())?;
        self.gpu.upload(&m, bytes)?;
        let m = Arc::new(m);
        if recent.len() >= MEMO {
            recent.remove(0);
        }
        recent.push((values.to_vec(), m.clone()));
        Ok(m)
    }
}

/// The argument array of a launch: a pointer to each value, in the
/// kernel's parameter order (device memory passed as its `u64` address).
macro_rules! args {
    ($($arg:expr),+ $(,)?) => {
        [$( ($arg) as *const _ as *mut std::ffi::c_void ),+]
    };
}
pub(super) use args;
