//! `lattice models list|add|remove`: model routes. `add` and `remove` change
//! the run-time routes in the state store (validated against the config file
//! first); a running gateway picks the change up within a reload poll.
//! Routes in the config file are changed by editing it.

use anyhow::{bail, Context};
use clap::Subcommand;
use lattice_gateway::state::models::{self, RuntimeRoute};
use lattice_gateway::state::StateStore;
use std::path::PathBuf;
use std::process::ExitCode;

use super::ConfigArg;

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum ModelsCmd {
    /// Every model route: the config file's, then the run-time ones.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Add a run-time route: a model, its aliases and backends — either
    /// `--use-backend` (defined in the config) or one new backend
    /// (`--backend NAME --kind --url`), or a TOML file with `[[backends]]` and
    /// one `[[models]]` entry.
    Add {
        /// The model name agents ask for.
        name: Option<String>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// A backend defined in the config file (repeatable, in priority order).
        #[arg(long = "use-backend")]
        use_backends: Vec<String>,
        /// A new backend's name.
        #[arg(long)]
        backend: Option<String>,
        /// vllm, mlx, lattice or openai.
        #[arg(long, default_value = "vllm")]
        kind: String,
        /// The new backend's root URL (without /v1).
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "on_prem")]
        location: String,
        /// The environment variable holding the new backend's API key.
        #[arg(long)]
        api_key_env: Option<String>,
        #[arg(long, default_value = "least_outstanding")]
        strategy: String,
        /// The model name sent to backends.
        #[arg(long)]
        upstream_model: Option<String>,
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A TOML file with `[[backends]]` and one `[[models]]` entry instead.
        #[arg(long, conflicts_with_all = ["name", "backend", "use_backends"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a run-time route.
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: ModelsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelsCmd::List { config } => {
            let cfg = config.load()?;
            let extra = models::stored(&cfg)?;
            let all = models::merged(&cfg, &extra)?;
            let runtime_names: Vec<&str> = extra.iter().filter_map(|r| r.name().ok()).collect();
            for m in &all.models {
                let source = if runtime_names.contains(&m.name.as_str()) {
                    "run-time"
                } else {
                    "config"
                };
                let backends: Vec<String> = m
                    .backends
                    .iter()
                    .filter_map(|b| all.backends.iter().find(|s| &s.name == b))
                    .map(|b| format!("{} ({} {} {})", b.name, b.kind.as_str(), b.url, b.location))
                    .collect();
                println!(
                    "{}\taliases=[{}]\tstrategy={}\tsource={source}\tbackends: {}",
                    m.name,
                    m.aliases.join(","),
                    m.strategy.as_str(),
                    backends.join(", ")
                );
            }
        }
        ModelsCmd::Add {
            name,
            aliases,
            use_backends,
            backend,
            kind,
            url,
            location,
            api_key_env,
            strategy,
            upstream_model,
            labels,
            file,
            config,
        } => {
            let route: RuntimeRoute = match file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    toml::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.message()))?
                }
                None => {
                    let Some(name) = name else {
                        bail!("give a model name, or --file");
                    };
                    let mut backends = Vec::new();
                    let mut names = use_backends;
                    if let Some(b) = backend {
                        let Some(url) = url else {
                            bail!("--backend needs --url");
                        };
                        backends.push(serde_json::json!({
                            "name": b, "kind": kind, "url": url, "location": location,
                            "api_key_env": api_key_env,
                        }));
                        names.push(b);
                    }
                    if names.is_empty() {
                        bail!("name at least one backend: --use-backend NAME or --backend NAME --url URL");
                    }
                    serde_json::from_value(serde_json::json!({
                        "backends": backends,
                        "models": [{
                            "name": name, "aliases": aliases, "backends": names,
                            "strategy": strategy, "upstream_model": upstream_model, "labels": labels,
                        }],
                    }))?
                }
            };
            let cfg = config.load()?;
            let mut all = models::stored(&cfg)?;
            all.push(route.clone());
            if let Err(e) = models::merged(&cfg, &all) {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            for b in &route.backends {
                if let Err(e) = super::vet_urls(&cfg, Some(b.url())) {
                    eprintln!("run-time model routes: `{}`: {e}", route.name()?);
                    return Ok(ExitCode::FAILURE);
                }
            }
            StateStore::open(&cfg.server.data_dir)?.add_model_route(&route)?;
            println!("added model route `{}`", route.name()?);
        }
        ModelsCmd::Remove { name, config } => {
            let cfg = config.load()?;
            if cfg.llm.models.iter().any(|m| m.name == name) {
                eprintln!(
                    "`{name}` is defined in {}; edit the file to change it",
                    config.config.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            StateStore::open(&cfg.server.data_dir)?.remove_model_route(&name)?;
            println!("removed model route `{name}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}
