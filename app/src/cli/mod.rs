//! Command implementations. Each returns the process exit code; `Err` is an
//! operational failure (exit 2), a failed check is `ExitCode::FAILURE` (1).

pub mod audit;
pub mod keys;
pub mod mcp;
pub mod models;
pub mod policy;
pub mod up;
pub mod witness;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LATTICE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
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

pub fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let config = lattice_gateway::config::load(path)?;
    lattice_gateway::server::run(config).context("the gateway stopped with an error")?;
    Ok(ExitCode::SUCCESS)
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
