//! The live state of a running gateway: the hot-reloadable `Runtime` (config,
//! policy engine, routes, JWT issuers) behind an `ArcSwap`, the key cache,
//! the audit handle and the metrics. Also the watcher that reloads config and
//! policies when their files change: a new runtime replaces the old one only
//! if it builds completely, so an invalid config or policy set is rejected
//! and logged while the old one keeps serving.

use arc_swap::ArcSwap;
use lattice_audit::AuditHandle;
use lattice_policy::{PolicyEngine, PolicySource};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::{self, Config, JwksSource, Route};
use crate::jwt::{parse_jwks, IssuerKeys, JwtVerifier};
use crate::keys::{KeyCache, StateStore};
use crate::metrics::Metrics;
use crate::GatewayError;

/// Everything a config file determines that can change without a restart.
pub struct Runtime {
    pub config: Config,
    pub policy: PolicyEngine,
    pub routes: HashMap<String, Arc<Route>>,
    pub jwt: JwtVerifier,
    /// The config file's own model routes (`config.llm` adds the run-time ones).
    pub file_llm: crate::llm_config::LlmConfig,
    /// Names of the config file's own MCP servers (`config.mcp_servers`
    /// adds the run-time ones).
    pub file_mcp_servers: Vec<String>,
    /// A digest of the policy texts, so a reload can say what changed.
    pub policy_digest: String,
}

/// Reads policy files into sources.
pub fn read_policies(files: &[PathBuf]) -> Result<Vec<PolicySource>, GatewayError> {
    files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|text| PolicySource::new(f.display().to_string(), text))
                .map_err(|e| GatewayError::Config(format!("policy file {}: {e}", f.display())))
        })
        .collect()
}

/// The operator's `ToolInput` schema fragment, if the config names one.
pub fn read_tool_input(config: &Config) -> Result<Option<String>, GatewayError> {
    config
        .policy
        .tool_input_schema
        .as_ref()
        .map(|f| {
            std::fs::read_to_string(f).map_err(|e| {
                GatewayError::Config(format!("tool input schema {}: {e}", f.display()))
            })
        })
        .transpose()
}

impl Runtime {
    /// Builds a runtime from a validated config: reads and validates the
    /// policies and loads file-based JWT keys.
    pub fn build(mut config: Config) -> Result<Self, GatewayError> {
        // Model routes added at run time join the config file's.
        let extra = crate::model_store::stored(&config)?;
        let file_llm = config.llm.clone();
        config.llm = crate::model_store::merged(&config, &extra)?;
        // MCP servers registered at run time join the file's.
        let file_mcp_servers = config.mcp_servers.iter().map(|s| s.name.clone()).collect();
        let config_dir = config
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let extra_mcp = crate::mcp_registry::stored(&config)?;
        config.mcp_servers =
            crate::mcp_registry::merged(&config_dir, &config.mcp_servers, &extra_mcp)?;
        let live = read_policies(&config.policy.files)?;
        let shadow = if config.policy.shadow_files.is_empty() {
            None
        } else {
            Some(read_policies(&config.policy.shadow_files)?)
        };
        // Requests built by the gateway are typed by construction; see
        // `without_request_validation` for why skipping re-validation is safe.
        let policy_digest = crate::change_audit::policy_digest(&live, shadow.as_deref());
        let tool_input = read_tool_input(&config)?;
        let policy =
            PolicyEngine::with_tool_input(&live, shadow.as_deref(), tool_input.as_deref())?
                .without_request_validation();
        let mut jwt = JwtVerifier::default();
        for issuer in &config.auth.jwt {
            let keys = IssuerKeys::new(issuer.clone()).map_err(GatewayError::Config)?;
            jwt.issuers.push(Arc::new(keys));
        }
        let routes = config
            .routes
            .iter()
            .map(|r| (r.name.clone(), Arc::new(r.clone())))
            .collect();
        Ok(Self {
            config,
            policy,
            routes,
            jwt,
            file_llm,
            file_mcp_servers,
            policy_digest,
        })
    }

    /// Files whose change triggers a reload.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config.path.clone()];
        files.extend(self.config.policy.files.iter().cloned());
        files.extend(self.config.policy.shadow_files.iter().cloned());
        files.extend(self.config.policy.tool_input_schema.iter().cloned());
        for j in &self.config.auth.jwt {
            if let JwksSource::File(f) = &j.jwks {
                files.push(f.clone());
            }
        }
        files
    }
}

/// Shared by every request.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub keys: KeyCache,
    pub audit: AuditHandle,
    pub metrics: Metrics,
    /// MCP upstreams and their tools (kept in step with the config and the
    /// run-time registrations on every reload).
    pub mcp: Option<Arc<crate::mcp_hub::McpHub>>,
    /// Model routes and backends (their table follows reloads; each
    /// backend's live state survives them).
    pub inference: Arc<lattice_inference_router::Router>,
    /// Rate-limit and budget counters (survive reloads).
    pub limiter: crate::limits::Limiter,
    /// MCP session signing (stateful protocol eras).
    pub mcp_sessions: crate::mcp_session::Sessions,
    /// Requests upstream servers made that wait for a client's answer.
    pub server_requests: crate::mcp_relay::ServerRequests,
    /// Settings fixed at start (listener, data dir, audit): a reload that
    /// changes them is applied for everything else and logged.
    pub startup: Config,
}

impl Shared {
    /// Reloads from the config file. On any error the current runtime stays.
    pub fn reload(&self) -> Result<(), GatewayError> {
        let path = self.runtime.load().config.path.clone();
        let result = config::load(&path).and_then(Runtime::build);
        match result {
            Ok(new) => {
                if let Err(e) = self
                    .inference
                    .configure(&new.config.llm.backends, &new.config.llm.models)
                {
                    self.metrics.reload("rejected");
                    tracing::error!(error = %e, "model routes rejected; the previous config stays in force");
                    return Err(GatewayError::Config(e.to_string()));
                }
                if let Some(hub) = &self.mcp {
                    hub.sync(&new.config.mcp_servers);
                }
                if new.config.server != self.startup.server
                    || new.config.audit != self.startup.audit
                {
                    tracing::warn!("[server] and [audit] changes take effect only after a restart");
                }
                if let Some(summary) =
                    crate::change_audit::reload_summary(&self.runtime.load(), &new)
                {
                    crate::change_audit::record(
                        &self.audit,
                        "admin.config.applied",
                        "config",
                        "allow",
                        &summary,
                    );
                }
                self.runtime.store(Arc::new(new));
                self.metrics.reload("applied");
                tracing::info!(config = %path.display(), "config and policies reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reload("rejected");
                tracing::error!(error = %e, "reload rejected; the previous config and policies keep serving");
                let reason = format!("rejected, the previous config keeps serving: {e}");
                crate::change_audit::record(
                    &self.audit,
                    "admin.config.rejected",
                    "config",
                    "deny",
                    &reason,
                );
                Err(e)
            }
        }
    }
}

fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Polls the watched files, the key store and JWKS URLs until `stop` is set.
pub fn spawn_watcher(
    shared: Arc<Shared>,
    data_dir: &Path,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, GatewayError> {
    let store = StateStore::open(data_dir)?;
    let poll = shared.startup.server.reload_poll;
    std::thread::Builder::new()
        .name("lattice-watcher".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "watcher cannot start; hot reload is off");
                    return;
                }
            };
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .ok();
            let mut last = fingerprint(&shared.runtime.load().watched_files());
            let mut models_generation = store.models_generation().unwrap_or(0);
            let mut mcp_generation = store.mcp_generation().unwrap_or(0);
            let mut jwks_fetched: HashMap<usize, Instant> = HashMap::new();
            while !stop.load(Ordering::Acquire) {
                let current = fingerprint(&shared.runtime.load().watched_files());
                let generation = store.models_generation().unwrap_or(models_generation);
                let mcp = store.mcp_generation().unwrap_or(mcp_generation);
                if current != last || generation != models_generation || mcp != mcp_generation {
                    let _ = shared.reload();
                    last = fingerprint(&shared.runtime.load().watched_files());
                    models_generation = generation;
                    mcp_generation = mcp;
                }
                let before = shared.keys.active();
                match shared.keys.refresh(&store) {
                    Ok(true) => {
                        let after = shared.keys.active();
                        for (kind, target, reason) in
                            crate::change_audit::key_changes(&before, &after)
                        {
                            crate::change_audit::record(
                                &shared.audit,
                                kind,
                                &target,
                                "allow",
                                &reason,
                            );
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot refresh API keys"),
                }
                if let Some(client) = &client {
                    refresh_jwks(&rt, client, &shared.runtime.load(), &mut jwks_fetched);
                }
                std::thread::sleep(poll);
            }
        })
        .map_err(|e| GatewayError::Server(e.to_string()))
}

fn refresh_jwks(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    runtime: &Runtime,
    fetched: &mut HashMap<usize, Instant>,
) {
    for issuer in &runtime.jwt.issuers {
        let JwksSource::Url(url) = &issuer.config.jwks else {
            continue;
        };
        // Keyed by the issuer object, so a reload (new, empty key set) fetches at once.
        let id = Arc::as_ptr(issuer) as usize;
        if fetched
            .get(&id)
            .is_some_and(|t| t.elapsed() < issuer.config.jwks_refresh)
        {
            continue;
        }
        fetched.insert(id, Instant::now());
        let result = rt.block_on(async {
            let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            resp.text().await.map_err(|e| e.to_string())
        });
        match result.and_then(|text| parse_jwks(&text)) {
            Ok(keys) => {
                tracing::info!(url, keys = keys.len(), "JWKS refreshed");
                issuer.set_keys(keys);
            }
            Err(e) => {
                tracing::error!(url, error = %e, "JWKS refresh failed; keeping the previous keys")
            }
        }
    }
}
