//! `lattice worker`: a model directory loaded onto a device, the engine
//! started with a KV cache sized from a memory bound, and the OpenAI API
//! served on its own listener (over TLS, with the join answer and an mDNS
//! announcement, in cluster mode: `cluster.rs`).
//!
//! Must never: start serving a model it could not fully load (every
//! refusal names the file, tensor or setting at fault), or size the KV
//! cache beyond its memory bound.

use crate::api::{self, tools::ToolFormat, Served};
use crate::cluster::Joined;
use crate::engine::{self, EngineConfig};
use crate::error::{Result, WorkerError};
use crate::grammar::Grammars;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::text::Text;
use lattice_gpu_kernels::cpu::Cpu;
use lattice_gpu_kernels::cuda::Cuda;
use lattice_gpu_kernels::{Kernels, KvDtype};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything `lattice worker` can be told.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: PathBuf,
    /// The name clients ask for (default: the directory's name).
    pub name: Option<String>,
    pub aliases: Vec<String>,
    pub listen: SocketAddr,
    /// Compute threads (0: one per core).
    pub threads: usize,
    /// On the CPU, keep bf16 products' activations in f32 even where
    /// AVX512-BF16 could multiply them rounded to bf16 (slower; the
    /// reference the other devices are checked against).
    pub f32_activations: bool,
    /// On the CPU, leave bf16 matrices viewed in place in the mapped
    /// files instead of copying them into tiles for `vdpbf16ps` (less
    /// memory, slower products of several rows).
    pub weights_in_place: bool,
    /// What the KV cache stores (`None`: `KvDtype::auto` of the
    /// weights' dtype).
    pub kv_cache_dtype: Option<KvDtype>,
    /// Memory for the KV cache, in MiB.
    pub kv_cache_mib: usize,
    pub block_size: usize,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    /// Tokens one request may hold (default: the model's context).
    pub max_context: Option<usize>,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Cluster mode: TLS, the join answer, the announcement.
    pub cluster: Option<crate::cluster::ClusterOptions>,
    /// Where the forward pass runs.
    pub device: Device,
    /// Called once the model's weights are loaded, before the KV cache
    /// and everything else is allocated (`lattice worker` turns
    /// transparent huge pages off there: the tiled weights keep theirs,
    /// the rest of the process gets none).
    pub loaded: Option<fn()>,
}

/// Where the forward pass runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The first GPU; an error when it cannot be opened.
    Cuda,
    /// The first GPU when it opens, else the CPU
    /// ([`Running::fallback`] says why).
    Auto,
    /// The CUDA device over the kernel emulator (built into this folder):
    /// tests only — slow, and no GPU.
    CudaEmulated(PathBuf),
}

impl Options {
    pub fn new(model: PathBuf, listen: SocketAddr) -> Self {
        Self {
            model,
            name: None,
            aliases: Vec::new(),
            listen,
            threads: 0,
            f32_activations: false,
            weights_in_place: false,
            kv_cache_dtype: None,
            kv_cache_mib: 1024,
            block_size: 16,
            max_batch_tokens: 512,
            max_seqs: 64,
            max_context: None,
            api_key: None,
            max_body_bytes: 4 << 20,
            cluster: None,
            device: Device::Cpu,
            loaded: None,
        }
    }
}

/// A loaded, listening worker.
pub struct Running {
    pub addr: SocketAddr,
    pub name: String,
    pub device: String,
    pub kv_tokens: usize,
    /// What the KV cache stores.
    pub kv_dtype: KvDtype,
    pub parameters: usize,
    pub dtype: &'static str,
    /// Cluster mode: the TLS certificate's fingerprint.
    pub fingerprint: Option<String>,
    /// `Device::Auto` that fell back to the CPU: why the GPU did not open.
    pub fallback: Option<String>,
    served: Arc<Served>,
    listener: tokio::net::TcpListener,
    joined: Option<Joined>,
}

/// Loads the model and binds the listener; [`Running::serve`] serves.
pub async fn start(o: Options) -> Result<Running> {
    let bad = |m: String| WorkerError::Unsupported(m);
    if o.block_size == 0 || o.max_batch_tokens == 0 || o.max_seqs == 0 {
        return Err(bad(
            "block size, batch tokens and sequences must be at least 1".into(),
        ));
    }
    match o.device.clone() {
        Device::CudaEmulated(dir) => {
            start_on(Model::load(Cuda::emulated(&dir)?, &o.model)?, o, None).await
        }
        Device::Cpu => start_on(Model::load(cpu(&o)?, &o.model)?, o, None).await,
        Device::Cuda => start_on(Model::load(Cuda::new(0)?, &o.model)?, o, None).await,
        Device::Auto => match Cuda::new(0) {
            Ok(gpu) => start_on(Model::load(gpu, &o.model)?, o, None).await,
            Err(e) => {
                let model = Model::load(cpu(&o)?, &o.model)?;
                start_on(model, o, Some(e.to_string())).await
            }
        },
    }
}

/// The CPU device as the options ask.
fn cpu(o: &Options) -> Result<Cpu> {
    Ok(Cpu::new(o.threads)?
        .with_bf16_dot(!o.f32_activations)
        .with_tiles(!o.weights_in_place))
}

async fn start_on<K: Kernels>(
    model: Model<K>,
    o: Options,
    fallback: Option<String>,
) -> Result<Running> {
    if let Some(loaded) = o.loaded {
        loaded();
    }
    let bad = |m: String| WorkerError::Unsupported(m);
    let model = match o.kv_cache_dtype {
        Some(d) => model.with_kv_dtype(d),
        None => model,
    };
    let text = Arc::new(Text::load(&o.model, &model.config.eos)?);
    let name = match &o.name {
        Some(n) => n.clone(),
        None => o
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into()),
    };
    let per_block = model.kv_bytes_per_token() * o.block_size;
    let kv_blocks = (o.kv_cache_mib << 20) / per_block.max(1);
    let kv_tokens = kv_blocks * o.block_size;
    let max_context = o
        .max_context
        .unwrap_or(model.config.max_positions)
        .min(model.config.max_positions)
        .min(kv_tokens);
    if max_context < 2 {
        return Err(bad(format!(
            "a KV cache of {} MiB holds {kv_tokens} tokens: too few (one token takes {} bytes)",
            o.kv_cache_mib,
            model.kv_bytes_per_token()
        )));
    }
    let device = model.kernels().device();
    let kv_dtype = model.kv_dtype;
    let parameters = model.config.parameters();
    let dtype = model.dtype.name();
    let metrics = Arc::new(Metrics::new(&name));
    let tool_format = ToolFormat::detect(text.chat.as_ref().map(|t| t.source()));
    let grammars = Grammars::new(&text, model.config.vocab)
        .map(Arc::new)
        .map_err(|e| e.to_string());
    let config = EngineConfig {
        block_size: o.block_size,
        kv_blocks,
        max_batch_tokens: o.max_batch_tokens,
        max_seqs: o.max_seqs,
    };
    let engine = engine::spawn(model, text.clone(), metrics.clone(), config)?;
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .map_err(|e| bad(format!("listen on {}: {e}", o.listen)))?;
    let addr = listener.local_addr().map_err(|e| bad(e.to_string()))?;
    let mut key_hashes: Vec<[u8; 32]> = o
        .api_key
        .as_deref()
        .map(api::key_hash)
        .into_iter()
        .collect();
    let joined = match &o.cluster {
        None => None,
        Some(c) => {
            let mut models = vec![name.clone()];
            models.extend(o.aliases.iter().cloned());
            let device = device.split_whitespace().next().unwrap_or("cpu");
            let j = Joined::new(c, models, device, o.max_seqs as u32, addr)?;
            key_hashes.push(api::key_hash(&j.membership.api_key()));
            Some(j)
        }
    };
    let served = Arc::new(Served {
        name: name.clone(),
        aliases: o.aliases.clone(),
        engine,
        text,
        metrics,
        key_hashes,
        membership: joined.as_ref().map(|j| j.membership.clone()),
        max_body_bytes: o.max_body_bytes,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        tool_format,
        max_context,
        grammars,
    });
    Ok(Running {
        addr,
        name,
        device,
        kv_tokens,
        kv_dtype,
        parameters,
        dtype,
        fingerprint: joined.as_ref().map(|j| j.identity.fingerprint.clone()),
        fallback,
        served,
        listener,
        joined,
    })
}

impl Running {
    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        use axum::serve::ListenerExt;
        let router = api::router(self.served);
        if let Some(joined) = self.joined {
            return joined.serve(self.listener, router, shutdown).await;
        }
        // Tokens go out one small write at a time: without TCP_NODELAY,
        // Nagle's algorithm holds each behind the client's delayed ACK
        // (measured: a stream three times slower than the engine).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| WorkerError::Unsupported(format!("serve: {e}")))
    }
}
