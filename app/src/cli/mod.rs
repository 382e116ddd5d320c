//! Command implementations. Each returns the process exit code; `Err` is an
//! operational failure (exit 2), a failed check is `ExitCode::FAILURE` (1).

pub mod audit;
pub mod cluster;
pub mod install;
pub mod keys;
pub mod mcp;
pub mod models;
pub mod policy;
pub mod registry;
pub mod stdio_guard;
pub mod up;
pub mod witness;
pub mod worker;

use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The log filter: `LATTICE_LOG` (default `info`). Pingora's own debug
/// output writes whole request and response heads and bodies — injected
/// credentials included — so it stays at `warn` unless `LATTICE_LOG` names
/// a `pingora` target itself.
fn log_filter(spec: Option<&str>) -> String {
    let spec = spec.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    if spec.contains("pingora") {
        spec.to_string()
    } else {
        format!("{spec},pingora_core=warn,pingora_proxy=warn")
    }
}

pub fn init_logging(format: LogFormat) {
    let spec = std::env::var("LATTICE_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(spec.as_deref()))
        .unwrap_or_else(|e| {
            eprintln!("LATTICE_LOG: {e}; logging at info");
            tracing_subscriber::EnvFilter::new(log_filter(None))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The `-c/--config` argument shared by offline commands.
#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    #[arg(short, long, default_value = "lattice.toml")]
    pub config: PathBuf,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<lattice_gateway::config::Config> {
        Ok(lattice_gateway::config::load(&self.config)?)
    }
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Parse and validate a config and its policies without serving.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn config(cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Validate { config } => {
            let cfg = match config.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            match lattice_gateway::runtime::Runtime::build(cfg) {
                Ok(rt) => {
                    println!(
                        "{}: valid ({} routes, {} models, {} backends, {} MCP servers, {} limits, {} policies, {} JWT issuers)",
                        config.config.display(),
                        rt.routes.len(),
                        rt.config.llm.models.len(),
                        rt.config.llm.backends.len(),
                        rt.config.mcp_servers.len(),
                        rt.config.llm.limits.len(),
                        rt.policy.policy_ids().count(),
                        rt.jwt.issuers.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// A serving process runs without transparent huge pages. mimalloc (the
/// binary's allocator) asks for them on its large regions, and where the
/// kernel's THP `defrag` setting is `madvise` (the common default) a page
/// fault there compacts memory synchronously. Measured: in the worker,
/// one stream's first prefill took 306–668 ms against 194–293 ms with
/// them off, and its time to first token 413–502 against 202–203 ms; in
/// the gateway, two runs of the HTTP scenario (one per slot) gave RSS at
/// saturation 64 → 50 and 59 → 50 MB and CPU per request at 1,000 req/s
/// 425 → 372 and 377 → 349 µs (docs/benchmarks-log.md). The flag is the
/// process's (children inherit it); what was already mapped keeps its
/// pages: the worker sets it once its model is loaded and before its KV
/// cache is, so that the weight matrices the CPU copied into tiles keep
/// the huge pages they asked for (read at every step: in ordinary pages
/// one sequence's decode step took ~20% longer; `lattice_gpu_kernels`'
/// `weight/pages.rs`), while the cache does not fault huge pages in at
/// start (measured on a 91 M model with a 1 GiB cache: 1.3–8.3 s from
/// launch to `/health` with the cache in huge pages, 0.6–0.85 s without).
pub(crate) fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("lattice: transparent huge pages stay on ({e})");
    }
}

pub fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    without_transparent_huge_pages();
    let config = lattice_gateway::config::load(path)?;
    let data_dir = config.server.data_dir.clone();
    let registry: std::sync::Arc<dyn lattice_gateway::runtime::RegistryService> =
        std::sync::Arc::new(lattice_registry::service::Service);
    match lattice_gateway::server::run_with(config, Some(registry)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let e = anyhow::Error::new(e).context("the gateway stopped with an error");
            // SQLite names a full disk only sometimes ("disk I/O error" when
            // its shared-memory file cannot grow): say it.
            Err(match full_filesystem(&data_dir) {
                Some(full) => e.context(full),
                None => e,
            })
        }
    }
}

/// "... is full" when the data directory's filesystem has (nearly) no
/// space left for the gateway.
fn full_filesystem(dir: &Path) -> Option<String> {
    let free = lattice_audit::free_bytes(dir)?;
    (free < 1 << 20).then(|| {
        format!(
            "the filesystem of the data directory {} is full ({free} bytes free)",
            dir.display()
        )
    })
}

pub fn demo_upstream(listen: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!("demo echo upstream listening on http://{listen}");
    rt.block_on(lattice_gateway::demo::serve_echo(listen))?;
    Ok(ExitCode::SUCCESS)
}

/// The egress check of a registration's URL before it is stored (its name
/// on what it resolves to now; every connection is checked again).
fn vet_urls(cfg: &lattice_gateway::config::Config, url: Option<&str>) -> Result<(), String> {
    url.map_or(Ok(()), |u| lattice_gateway::egress::vet_url(&cfg.egress, u))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pingora_debug_output_needs_asking_for_by_name() {
        for (spec, filter) in [
            (None, "info,pingora_core=warn,pingora_proxy=warn"),
            (Some(""), "info,pingora_core=warn,pingora_proxy=warn"),
            (Some("debug"), "debug,pingora_core=warn,pingora_proxy=warn"),
            (
                Some("lattice_gateway=trace"),
                "lattice_gateway=trace,pingora_core=warn,pingora_proxy=warn",
            ),
            (
                Some("debug,pingora_proxy=debug"),
                "debug,pingora_proxy=debug",
            ),
        ] {
            assert_eq!(super::log_filter(spec), filter, "{spec:?}");
        }
    }
}
