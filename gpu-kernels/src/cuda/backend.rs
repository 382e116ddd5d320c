//! What the CUDA device needs of a GPU, and the GPU that gives it: device
//! memory by address, copies in and out, a kernel launched by name with
//! cuLaunchKernel's arguments (an array of pointers to each value), and
//! a product through cuBLAS. Two implement it: [`Driver`] (the CUDA driver,
//! through cudarc) and the kernel emulator (`emu.rs`), so the device's
//! host code runs the same against either.
//!
//! Must never: free memory the stream may still use (frees are
//! stream-ordered), or launch before binding the context to the calling
//! thread.

use crate::{DType, KernelError};
use cudarc::cublas::sys as blas;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DriverError, LaunchConfig,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Device memory: its address, and what keeps it allocated.
pub struct Mem {
    pub(super) ptr: u64,
    pub(super) bytes: usize,
    pub(super) _keep: Keep,
}

/// Held only to be dropped with the memory.
pub(super) enum Keep {
    Driver {
        _slice: CudaSlice<u8>,
    },
    /// The emulator's memory: host memory, 16-byte aligned.
    Host {
        _values: Vec<u128>,
    },
}

impl Mem {
    /// The address `bytes` into this memory.
    pub(super) fn at(&self, bytes: usize) -> u64 {
        self.ptr + bytes as u64
    }
}

/// `C = op(A) · B`, column-major, the cuBLAS way: `A` is `k × m` (read
/// transposed), `B` is `k × n`, `C` is `m × n` in f32. `A` and `B` hold
/// `dtype` values; the product accumulates in f32.
pub(super) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub dtype: DType,
}

pub(super) trait Backend: Send + Sync {
    fn alloc(&self, bytes: usize) -> Result<Mem, KernelError>;
    fn upload(&self, dst: &Mem, src: &[u8]) -> Result<(), KernelError>;
    /// Waits for every queued step, then copies.
    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<(), KernelError>;
    fn launch(
        &self,
        name: &str,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
    ) -> Result<(), KernelError>;
    fn gemm(&self, g: &Gemm) -> Result<(), KernelError>;
    fn synchronize(&self) -> Result<(), KernelError>;
    /// Device-to-device copy of `bytes`.
    fn copy(&self, dst: &Mem, src: &Mem, bytes: usize) -> Result<(), KernelError>;
    /// How many calls into the driver (launches, products, allocations,
    /// copies) were queued so far: what a step costs the host.
    fn calls(&self) -> u64 {
        0
    }
    /// Starts (or stops) timing each launch on the GPU.
    fn set_timing(&self, _on: bool) -> Result<(), KernelError> {
        Ok(())
    }
    /// Each launch timed since timing started, by kernel name, in µs of
    /// GPU time (waits for the stream); empty where nothing can time.
    fn timings(&self) -> Result<Vec<(String, f64)>, KernelError> {
        Ok(Vec::new())
    }
}

/// Launches timed with a pair of events each: (kernel, start, end).
type Timed = Vec<(String, CudaEvent, CudaEvent)>;

pub(super) fn driver(what: &str, e: DriverError) -> KernelError {
    KernelError::Device(format!("cuda {what}: {e}"))
}

/// The CUDA driver: one context, its default stream, cuBLAS on it.
pub(super) struct Driver {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    funcs: HashMap<String, CudaFunction>,
    _modules: Vec<Arc<CudaModule>>,
    calls: AtomicU64,
    timing: Mutex<Option<Timed>>,
}

impl Driver {
    pub fn new(
        ctx: Arc<CudaContext>,
        funcs: HashMap<String, CudaFunction>,
        modules: Vec<Arc<CudaModule>>,
    ) -> Result<Self, KernelError> {
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| KernelError::Device(format!("cuBLAS: {e}")))?;
        Ok(Self {
            ctx,
            stream,
            blas: Mutex::new(blas),
            funcs,
            _modules: modules,
            calls: AtomicU64::new(0),
            timing: Mutex::new(None),
        })
    }

    /// When timing, an event recorded on the stream before a launch.
    fn timed_start(&self) -> Result<Option<CudaEvent>, KernelError> {
        if self.timing.lock().is_none() {
            return Ok(None);
        }
        let e = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("event", e))?;
        e.record(&self.stream).map_err(|e| driver("event", e))?;
        Ok(Some(e))
    }

    /// When timing, an event after the launch, kept with its start.
    fn timed_end(&self, name: &str, start: Option<CudaEvent>) -> Result<(), KernelError> {
        let Some(start) = start else {
            return Ok(());
        };
        let end = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("event", e))?;
        end.record(&self.stream).map_err(|e| driver("event", e))?;
        if let Some(t) = self.timing.lock().as_mut() {
            t.push((name.to_string(), start, end));
        }
        Ok(())
    }

    fn bind(&self) -> Result<(), KernelError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the context", e))
    }
}

impl Backend for Driver {
    fn alloc(&self, bytes: usize) -> Result<Mem, KernelError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let t = self.timed_start()?;
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| driver(&format!("allocating {bytes} bytes"), e))?;
        self.timed_end("(allocation, zeroed)", t)?;
        // Event tracking is off: the guard returned beside it does nothing.
        let ptr = slice.device_ptr(&self.stream).0;
        Ok(Mem {
            ptr,
            bytes,
            _keep: Keep::Driver { _slice: slice },
        })
    }

    fn upload(&self, dst: &Mem, src: &[u8]) -> Result<(), KernelError> {
        if src.len() > dst.bytes {
            return Err(KernelError::Device(format!(
                "upload of {} bytes into {}",
                src.len(),
                dst.bytes
            )));
        }
        self.bind()?;
        // SAFETY: dst is live device memory of at least src.len() bytes;
        // from pageable host memory the copy is staged before it returns.
        #[allow(unsafe_code)]
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.ptr, src, self.stream.cu_stream()) }
            .map_err(|e| driver("upload", e))
    }

    fn download(&self, src: &Mem, dst: &mut [u8]) -> Result<(), KernelError> {
        if dst.len() > src.bytes {
            return Err(KernelError::Device(format!(
                "download of {} bytes from {}",
                dst.len(),
                src.bytes
            )));
        }
        self.bind()?;
        self.synchronize()?;
        // SAFETY: src is live device memory of at least dst.len() bytes,
        // and the stream is idle, so the synchronous copy reads finished
        // results.
        #[allow(unsafe_code)]
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(dst, src.ptr) }
            .map_err(|e| driver("download", e))
    }

    fn launch(
        &self,
        name: &str,
        cfg: LaunchConfig,
        args: &mut [*mut c_void],
    ) -> Result<(), KernelError> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| KernelError::Device(format!("kernel {name} is not loaded")))?;
        self.bind()?;
        let t = self.timed_start()?;
        // SAFETY: the caller passes, in order, a pointer to each of the
        // kernel's parameters with its type (device addresses as u64), and
        // checked every buffer's length against the shapes it indexes.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                cfg.grid_dim,
                cfg.block_dim,
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                args,
            )
        }
        .map_err(|e| driver(name, e))?;
        self.timed_end(name, t)
    }

    fn gemm(&self, g: &Gemm) -> Result<(), KernelError> {
        self.bind()?;
        let handle = *self.blas.lock().handle();
        let t = self.timed_start()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let ty = match g.dtype {
            DType::F32 => blas::cudaDataType::CUDA_R_32F,
            DType::BF16 => blas::cudaDataType::CUDA_R_16BF,
            DType::F16 => blas::cudaDataType::CUDA_R_16F,
        };
        // SAFETY: a, b and c are live device buffers of k × m, k × n
        // values of `ty` and m × n floats (checked by the caller), queued
        // on the handle's stream.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::cublas::result::gemm_ex(
                handle,
                blas::cublasOperation_t::CUBLAS_OP_T,
                blas::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                g.a as *const c_void,
                ty,
                k,
                g.b as *const c_void,
                ty,
                k,
                (&beta as *const f32).cast(),
                g.c as *mut c_void,
                blas::cudaDataType::CUDA_R_32F,
                m,
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| KernelError::Device(format!("cuBLAS product: {e}")))?;
        self.timed_end("cublas gemm", t)
    }

    fn synchronize(&self) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(|e| driver("synchronize", e))
    }

    fn copy(&self, dst: &Mem, src: &Mem, bytes: usize) -> Result<(), KernelError> {
        if bytes > dst.bytes || bytes > src.bytes {
            return Err(KernelError::Device("copy beyond a buffer".into()));
        }
        self.bind()?;
        // SAFETY: both are live device buffers of at least `bytes`.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.ptr,
                src.ptr,
                bytes,
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| driver("copy", e))
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn set_timing(&self, on: bool) -> Result<(), KernelError> {
        self.synchronize()?;
        *self.timing.lock() = on.then(Vec::new);
        Ok(())
    }

    fn timings(&self) -> Result<Vec<(String, f64)>, KernelError> {
        self.synchronize()?;
        let timed = self.timing.lock().replace(Vec::new()).unwrap_or_default();
        timed
            .into_iter()
            .map(|(name, start, end)| {
                let ms = start
                    .elapsed_ms(&end)
                    .map_err(|e| driver("event time", e))?;
                Ok((name, f64::from(ms) * 1e3))
            })
            .collect()
    }
}
