//! `lattice worker`: serve a local model with Lattice Inference
//! (`lattice-worker`), and `lattice worker make-test-model`, which writes
//! a tiny random model for tests and benchmarks.
//!
//! Must never: take a secret on the command line (the API key and the
//! cluster secret come from environment variables), or start on a device
//! it does not have.

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use lattice_gpu_kernels::{DType, KvDtype};
use lattice_inference_router::join::ClusterSecret;
use lattice_worker::cluster::ClusterOptions;
use lattice_worker::model::Arch;
use lattice_worker::serve::{self, Device, Options};
use lattice_worker::testmodel::{self, Flavor, Spec};
use lattice_worker::upstream::UpstreamOptions;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    cmd: Option<WorkerCmd>,
    /// A Hugging Face model directory (config.json, *.safetensors,
    /// tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the OpenAI API listens.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// The model's name in the API (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Another name the model answers to (repeatable).
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// The device: `cpu`, `cuda` (an error naming what is missing when it
    /// cannot serve) or `auto` (CUDA when it can, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// On the CPU, keep the activations of bf16 products in f32 where
    /// AVX512-BF16 would round them to bf16 (slower, closest to f32).
    #[arg(long)]
    f32_activations: bool,
    /// On the CPU, leave bf16 weight matrices viewed in place in the
    /// mapped model files instead of copying them into tiles for
    /// AVX512-BF16 (less memory, slower batches).
    #[arg(long)]
    weights_in_place: bool,
    /// What the KV cache stores: `auto` (bf16 for bf16 weights, else
    /// f32), `f32` or `bf16` (half the memory per token).
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: String,
    /// Memory for the KV cache, in MiB: requests wait when it is full.
    #[arg(long, default_value_t = 1024)]
    kv_cache_mib: usize,
    /// Tokens per KV-cache block (the unit of prefix caching).
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Tokens one engine step computes at most (bounds the stall a long
    /// prompt causes the streams already decoding).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Requests in the running batch at most.
    #[arg(long, default_value_t = 64)]
    max_seqs: usize,
    /// Tokens a request may hold, prompt and completion (default: the
    /// model's context, bounded by the KV cache).
    #[arg(long)]
    max_context: Option<usize>,
    /// Environment variable holding the API key clients must send as
    /// `Authorization: Bearer` (unset or empty: no key required).
    #[arg(long, default_value = "LATTICE_WORKER_API_KEY")]
    api_key_env: String,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Environment variable holding the cluster secret (`lattice cluster
    /// init`). When it is set the worker joins that cluster: it serves over
    /// TLS with a certificate of its own, answers gateways' join
    /// challenges, accepts the cluster's key and announces itself over mDNS.
    #[arg(long, default_value = "LATTICE_CLUSTER_SECRET")]
    cluster_secret_env: String,
    /// The worker's name in the cluster (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where this worker runs, as policies see it (`context.backend_location`).
    #[arg(long, default_value = "on_prem")]
    location: String,
    /// A label announced with the worker (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Do not announce over mDNS (gateways must list this worker as a peer).
    #[arg(long)]
    no_announce: bool,
    /// The address announced (default: the listener's; every interface's
    /// when listening on 0.0.0.0).
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
    /// Instead of a model: relay to this OpenAI-compatible server on the
    /// same machine (`mlx_lm.server`, vLLM, llama.cpp's server), with the
    /// worker's authentication, cluster membership and metrics.
    #[arg(long, conflicts_with = "model")]
    upstream: Option<String>,
    /// What the upstream is (`mlx`, `vllm`, `llamacpp`, `openai`): announced
    /// as the worker's device.
    #[arg(long, default_value = "mlx", requires = "upstream")]
    kind: String,
    /// Environment variable holding the key the upstream requires (unset:
    /// none).
    #[arg(long, default_value = "LATTICE_UPSTREAM_API_KEY")]
    upstream_key_env: String,
    /// Requests relayed to the upstream at once; the rest wait.
    #[arg(long, default_value_t = 8)]
    max_concurrency: usize,
}

#[derive(Subcommand)]
enum WorkerCmd {
    /// Write a tiny model with random weights (for tests and benchmarks:
    /// its output is noise).
    MakeTestModel(TestModelArgs),
}

#[derive(Args)]
struct TestModelArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "llama")]
    arch: ArchArg,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DTypeArg,
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[arg(long, default_value_t = 256)]
    intermediate: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Weight files (more than 1: shards with an index).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    #[arg(long, default_value_t = 4096)]
    max_positions: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchArg {
    Llama,
    Mistral,
    Qwen2,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    F32,
    F16,
    Bf16,
}

pub fn run(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    if let Some(WorkerCmd::MakeTestModel(t)) = a.cmd {
        let base = match t.arch {
            ArchArg::Qwen2 => Spec::tiny_qwen2(),
            _ => Spec::tiny_llama(),
        };
        let spec = Spec {
            arch: match t.arch {
                ArchArg::Llama => Arch::Llama,
                ArchArg::Mistral => Arch::Mistral,
                ArchArg::Qwen2 => Arch::Qwen2,
            },
            flavor: match t.arch {
                ArchArg::Qwen2 => Flavor::Hermes,
                ArchArg::Mistral => Flavor::Mistral,
                ArchArg::Llama => Flavor::Llama3,
            },
            dtype: match t.dtype {
                DTypeArg::F32 => DType::F32,
                DTypeArg::F16 => DType::F16,
                DTypeArg::Bf16 => DType::BF16,
            },
            hidden: t.hidden,
            intermediate: t.intermediate,
            layers: t.layers,
            heads: t.heads,
            kv_heads: t.kv_heads,
            shards: t.shards,
            max_positions: t.max_positions,
            ..base
        };
        let (h, kv) = (t.heads, t.kv_heads);
        if h == 0 || !t.hidden.is_multiple_of(h) || kv == 0 || !h.is_multiple_of(kv) {
            bail!("hidden must divide into heads, and heads into kv-heads");
        }
        let out = t.out;
        testmodel::write(&out, &spec)?;
        println!("wrote a test model to {}", out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if a.upstream.is_some() {
        return relay(a);
    }
    let Some(model) = a.model.clone() else {
        bail!("--model DIR is required (a Hugging Face model directory), or --upstream URL");
    };
    let device = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => {
            if let Err(e) = lattice_gpu_kernels::cuda::device_available() {
                bail!("--device cuda: {e}");
            }
            Device::Cuda
        }
        "auto" => match lattice_gpu_kernels::cuda::device_available() {
            Ok(()) => Device::Auto,
            Err(e) => {
                eprintln!(
                    "lattice worker: --device auto: no CUDA device ({e}); serving on the CPU"
                );
                Device::Cpu
            }
        },
        other => bail!("--device `{other}` is not one of cpu, cuda, auto"),
    };
    let kv_cache_dtype = match a.kv_cache_dtype.as_str() {
        "auto" => None,
        "f32" => Some(KvDtype::F32),
        "bf16" => Some(KvDtype::BF16),
        other => bail!("--kv-cache-dtype `{other}` is not one of auto, f32, bf16"),
    };
    let api_key = std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty());
    let cluster = cluster_options(&a)?;
    let options = Options {
        name: a.name,
        aliases: a.aliases,
        threads: a.threads,
        f32_activations: a.f32_activations,
        weights_in_place: a.weights_in_place,
        // Once the model is loaded, before the KV cache: the tiled weights
        // keep the huge pages they asked for (see
        // `super::without_transparent_huge_pages`).
        loaded: Some(super::without_transparent_huge_pages),
        kv_cache_dtype,
        kv_cache_mib: a.kv_cache_mib,
        block_size: a.block_size,
        max_batch_tokens: a.max_batch_tokens,
        max_seqs: a.max_seqs,
        max_context: a.max_context,
        api_key,
        max_body_bytes: a.max_body_bytes,
        cluster,
        device,
        ..Options::new(model, a.listen)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let keyed = options.api_key.is_some();
        let cluster = options.cluster.clone();
        let running = serve::start(options).await.context("lattice worker")?;
        print_membership(cluster.as_ref(), running.fingerprint.as_ref());
        if let Some(why) = &running.fallback {
            eprintln!("lattice worker: --device auto: the GPU did not open ({why}); serving on the CPU");
        }
        eprintln!(
            "lattice worker: serving `{}` ({:.1} M parameters, {}) on {}://{} — {}, KV cache {} tokens in {}{}",
            running.name,
            running.parameters as f64 / 1e6,
            running.dtype,
            if cluster.is_some() { "https" } else { "http" },
            running.addr,
            running.device,
            running.kv_tokens,
            running.kv_dtype.name(),
            if keyed { ", API key required" } else { "" }
        );
        running.serve(shutdown()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Cluster mode, when the secret's variable is set.
fn cluster_options(a: &WorkerArgs) -> anyhow::Result<Option<ClusterOptions>> {
    match std::env::var(&a.cluster_secret_env) {
        Ok(text) if !text.trim().is_empty() => {
            let secret = ClusterSecret::parse(&text)
                .with_context(|| format!("${}", a.cluster_secret_env))?;
            Ok(Some(ClusterOptions {
                secret,
                node: a.node_name.clone().unwrap_or_else(host_name),
                location: a.location.clone(),
                labels: a.labels.clone(),
                announce: !a.no_announce,
                advertise: a.advertise,
            }))
        }
        _ => Ok(None),
    }
}

fn print_membership(cluster: Option<&ClusterOptions>, fingerprint: Option<&String>) {
    if let (Some(c), Some(fp)) = (cluster, fingerprint) {
        eprintln!(
            "lattice worker: member of cluster {} ({}), certificate {fp}; {}",
            c.secret.cluster_id(),
            c.location,
            if c.announce {
                "announced over mDNS"
            } else {
                "not announced (--no-announce)"
            }
        );
    }
}

/// `--upstream`: relay to a local OpenAI-compatible server.
fn relay(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let cluster = cluster_options(&a)?;
    let options = UpstreamOptions {
        upstream: a.upstream.clone().unwrap_or_default(),
        device: a.kind.clone(),
        listen: a.listen,
        api_key: std::env::var(&a.api_key_env).ok().filter(|k| !k.is_empty()),
        upstream_key: std::env::var(&a.upstream_key_env)
            .ok()
            .filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_bytes,
        max_concurrency: a.max_concurrency,
        wait_for_upstream: std::time::Duration::from_secs(60),
        cluster: cluster.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let upstream = options.upstream.clone();
        let running = lattice_worker::upstream::start(options)
            .await
            .context("lattice worker --upstream")?;
        print_membership(cluster.as_ref(), running.fingerprint.as_ref());
        eprintln!(
            "lattice worker: relaying `{}` to {upstream} ({}) on {}://{}",
            running.models.join("`, `"),
            a.kind,
            if cluster.is_some() { "https" } else { "http" },
            running.addr
        );
        running.serve(shutdown()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The host's name (`/etc/hostname`, else `HOSTNAME`, else `worker`).
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
