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

use super::{full_source, SOURCES};
use crate::{DType, KernelError};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
};
use cudarc::nvrtc::Ptx;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
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
        "penalties",
        "softmax",
        "argmax",
        "sample",
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
        }
    }
    for c in ["f32", "bf16"] {
        for k in ["attn_decode", "attn_prefill", "kv_write"] {
            names.push(format!("{k}_{c}"));
        }
    }
    names
}

/// Activations on the GPU: a `rows × cols` f32 matrix, row-major.
pub struct CudaAct {
    pub rows: usize,
    pub cols: usize,
    pub(super) buf: CudaSlice<f32>,
}

/// A weight on the GPU, in its stored dtype (vectors in f32).
pub struct CudaWeight {
    pub(super) name: String,
    pub(super) dtype: DType,
    pub(super) shape: Vec<usize>,
    pub(super) buf: WeightBuf,
}

pub(super) enum WeightBuf {
    F32(CudaSlice<f32>),
    /// bf16 or f16 bits.
    Half(CudaSlice<u16>),
}

/// One layer's KV cache on the GPU (f32 keys and values, as on the CPU).
pub struct CudaKv {
    pub(super) width: usize,
    pub(super) slots: usize,
    pub(super) k: CudaSlice<f32>,
    pub(super) v: CudaSlice<f32>,
}

#[derive(Default)]
pub(super) struct Memo {
    u32s: Vec<(Vec<u32>, Arc<CudaSlice<u32>>)>,
    f32s: Vec<(Vec<f32>, Arc<CudaSlice<f32>>)>,
}

/// The CUDA device.
pub struct Cuda {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) blas: Mutex<CudaBlas>,
    funcs: HashMap<String, CudaFunction>,
    // Kept so the functions' module outlives them explicitly.
    _modules: Vec<Arc<CudaModule>>,
    pub(super) name: String,
    pub(super) arch: String,
    pub(super) memo: Mutex<Memo>,
    pub(super) gemv_max_rows: usize,
}

pub(super) fn driver(what: &str, e: DriverError) -> KernelError {
    KernelError::Device(format!("cuda {what}: {e}"))
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
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver("compute capability", e))?;
        if major < 8 {
            return Err(KernelError::Device(format!(
                "compute capability {major}.{minor}: the kernels need 8.0 or newer (bf16)"
            )));
        }
        // NVRTC takes the architecture as a &'static str: one per process.
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let gpu = ctx.name().map_err(|e| driver("device name", e))?;
        let memory = ctx.total_mem().map_err(|e| driver("memory", e))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| KernelError::Device(format!("cuBLAS: {e}")))?;
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
        if let Some(missing) = wanted.iter().find(|k| !funcs.contains_key(*k)) {
            return Err(KernelError::Device(format!(
                "kernel {missing} is in none of the compiled sources"
            )));
        }
        Ok(Self {
            ctx,
            stream,
            blas: Mutex::new(blas),
            funcs,
            _modules: modules,
            name: format!("cuda ({gpu}, {arch}, {} GiB)", memory >> 30),
            arch: arch.to_string(),
            memo: Mutex::new(Memo::default()),
            gemv_max_rows: GEMV_MAX_ROWS,
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

    /// The architecture the kernels were compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Waits until every queued step is done (for timing).
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(|e| driver("synchronize", e))
    }

    /// Free and total bytes of GPU memory.
    pub fn memory(&self) -> Result<(usize, usize), KernelError> {
        self.ctx.mem_get_info().map_err(|e| driver("memory", e))
    }

    /// Device-to-device copy bandwidth (bytes read + written per second)
    /// over `bytes`-sized buffers, the best of `rounds` copies.
    pub fn copy_bandwidth(&self, bytes: usize, rounds: usize) -> Result<f64, KernelError> {
        let n = bytes / 4;
        let src = self.zeros(n)?;
        let mut dst = self.zeros(n)?;
        let mut best = f64::MAX;
        for _ in 0..rounds.max(2) {
            self.synchronize()?;
            let t = std::time::Instant::now();
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(|e| driver("copy", e))?;
            self.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * (n * 4) as f64 / best)
    }

    pub(super) fn func(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.funcs
            .get(name)
            .ok_or_else(|| KernelError::Device(format!("kernel {name} is not loaded")))
    }

    pub(super) fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, KernelError> {
        self.stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| driver(&format!("allocating {n} floats"), e))
    }

    pub(super) fn zeros_u16(&self, n: usize) -> Result<CudaSlice<u16>, KernelError> {
        self.stream
            .alloc_zeros::<u16>(n.max(1))
            .map_err(|e| driver(&format!("allocating {n} halves"), e))
    }

    /// `values` on the GPU, reusing a recent upload of the same values.
    pub(super) fn u32s(&self, values: &[u32]) -> Result<Arc<CudaSlice<u32>>, KernelError> {
        let mut memo = self.memo.lock();
        self.upload(&mut memo.u32s, values)
    }

    /// As [`Self::u32s`], for f32 values.
    pub(super) fn f32s(&self, values: &[f32]) -> Result<Arc<CudaSlice<f32>>, KernelError> {
        let mut memo = self.memo.lock();
        self.upload(&mut memo.f32s, values)
    }

    fn upload<T: DeviceRepr + Copy + Default + PartialEq>(
        &self,
        recent: &mut Vec<(Vec<T>, Arc<CudaSlice<T>>)>,
        values: &[T],
    ) -> Result<Arc<CudaSlice<T>>, KernelError> {
        if let Some((_, s)) = recent.iter().find(|(v, _)| v.as_slice() == values) {
            return Ok(s.clone());
        }
        // A buffer of no elements cannot be allocated: one unread instead.
        let padded: Vec<T> = if values.is_empty() {
            vec![T::default()]
        } else {
            values.to_vec()
        };
        let s = Arc::new(
            self.stream
                .clone_htod(&padded)
                .map_err(|e| driver("upload", e))?,
        );
        if recent.len() >= MEMO {
            recent.remove(0);
        }
        recent.push((values.to_vec(), s.clone()));
        Ok(s)
    }
}

/// A launch: the kernel `$name` with `$cfg` and the arguments in order.
/// Arguments are references to device buffers or to scalars that live
/// until the launch returns.
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let name: &str = &$name;
        let f = $dev.func(name)?;
        let mut b = $dev.stream.launch_builder(f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, $arg); )+
        // SAFETY: the host checked every buffer's length against the
        // shapes the kernel indexes with before this launch, and the
        // arguments match the kernel's parameter list in order and type.
        #[allow(unsafe_code)]
        let r = unsafe { b.launch($cfg) };
        r.map(|_| ()).map_err(|e| $crate::cuda::device::driver(name, e))
    }};
}
pub(super) use launch;
