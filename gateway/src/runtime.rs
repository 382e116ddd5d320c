//! The live state of a running gateway: the hot-reloadable `Runtime` (config,
//! policy engine, routes, JWT issuers), and `Shared`, what every call reads:
//! the runtime behind an `ArcSwap`, the key cache, the audit handle, the
//! metrics, the MCP hub, the inference router, the limit counters and the
//! MCP session state. Reloading is `reload`'s.
//!
//! Must never: hold a door's logic, or let a runtime that failed to build
//! replace the one serving.

use arc_swap::ArcSwap;
use lattice_audit::AuditHandle;
use lattice_policy::{PolicyEngine, PolicySource};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, JwksSource, Route};
use crate::identity::jwt::{IssuerKeys, JwtVerifier};
use crate::identity::KeyCache;
use crate::metrics::Metrics;
use crate::GatewayError;

/// Everything a config file determines that can change without a restart.
pub struct Runtime {
    pub config: Config,
    pub policy: PolicyEngine,
    pub routes: HashMap<String, Arc<Route>>,
    pub jwt: JwtVerifier,
    /// The config file's own model routes (`config.llm` adds the run-time ones).
    pub file_llm: crate::config::LlmConfig,
    /// Names of the config file's own MCP servers (`config.mcp_servers`
    /// adds the run-time ones).
    pub file_mcp_servers: Vec<String>,
    /// A digest of the policy texts, so a reload can say what changed.
    pub policy_digest: String,
    /// The config's invariants, each proved of `policy` when this was built.
    pub invariants: Vec<crate::invariants::Proved>,
    /// When this runtime was built (and its invariants proved), µs.
    pub built_us: u64,
}

/// Files not yet on disk, by path: what a candidate change would write
/// (a registry install validates its files before writing any).
pub type Overlay = std::collections::BTreeMap<PathBuf, String>;

fn read_file(overlay: &Overlay, f: &Path) -> std::io::Result<String> {
    match overlay.get(f) {
        Some(text) => Ok(text.clone()),
        None => std::fs::read_to_string(f),
    }
}

/// Reads policy files into sources.
pub fn read_policies(files: &[PathBuf]) -> Result<Vec<PolicySource>, GatewayError> {
    read_policies_with(files, &Overlay::new())
}

fn read_policies_with(
    files: &[PathBuf],
    overlay: &Overlay,
) -> Result<Vec<PolicySource>, GatewayError> {
    files
        .iter()
        .map(|f| {
            read_file(overlay, f)
                .map(|text| PolicySource::new(f.display().to_string(), text))
                .map_err(|e| GatewayError::Config(format!("policy file {}: {e}", f.display())))
        })
        .collect()
}

/// The operator's `ToolInput` schema fragment, if the config names one.
pub fn read_tool_input(config: &Config) -> Result<Option<String>, GatewayError> {
    read_tool_input_with(config, &Overlay::new())
}

fn read_tool_input_with(
    config: &Config,
    overlay: &Overlay,
) -> Result<Option<String>, GatewayError> {
    config
        .policy
        .tool_input_schema
        .as_ref()
        .map(|f| {
            read_file(overlay, f).map_err(|e| {
                GatewayError::Config(format!("tool input schema {}: {e}", f.display()))
            })
        })
        .transpose()
}

impl Runtime {
    /// Builds a runtime from a validated config: reads and validates the
    /// policies and loads file-based JWT keys.
    pub fn build(config: Config) -> Result<Self, GatewayError> {
        Self::build_with(config, &Overlay::new())
    }

    /// `build`, reading the files in `overlay` from it instead of the disk:
    /// a candidate change checked exactly as the files would be.
    pub fn build_with(mut config: Config, overlay: &Overlay) -> Result<Self, GatewayError> {
        // Model routes added at run time join the config file's.
        let extra = crate::state::models::stored(&config)?;
        let file_llm = config.llm.clone();
        config.llm = crate::state::models::merged(&config, &extra)?;
        // MCP servers registered at run time join the file's.
        let file_mcp_servers = config.mcp_servers.iter().map(|s| s.name.clone()).collect();
        let config_dir = config
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let extra_mcp = crate::state::mcp_servers::stored(&config)?;
        config.mcp_servers = crate::state::mcp_servers::merged(
            &config_dir,
            &config.mcp_servers,
            &extra_mcp,
            &config.mcp.allow_commands,
            &config.egress,
        )?;
        let live = read_policies_with(&config.policy.files, overlay)?;
        let shadow = if config.policy.shadow_files.is_empty() {
            None
        } else {
            Some(read_policies_with(&config.policy.shadow_files, overlay)?)
        };
        // Requests built by the gateway are typed by construction; see
        // `without_request_validation` for why skipping re-validation is safe.
        let policy_digest = policy_digest(&live, shadow.as_deref());
        let tool_input = read_tool_input_with(&config, overlay)?;
        let policy =
            PolicyEngine::with_tool_input(&live, shadow.as_deref(), tool_input.as_deref())?
                .without_request_validation();
        // A set that breaks an invariant (or cannot be proved) is refused.
        let invariants =
            crate::invariants::check(&policy, &config.invariants, config.policy.invariant_timeout)?;
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
            invariants,
            built_us: lattice_audit::now_us(),
        })
    }

    /// Files whose change triggers a reload.
    pub(crate) fn watched_files(&self) -> Vec<PathBuf> {
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

/// An answer of the registry to the admin API: a JSON body, or the HTTP
/// status and message of a refusal.
pub type RegistryAnswer = Result<serde_json::Value, (u16, String)>;

/// The Lattice Registry as the admin API reaches it. `lattice-registry`
/// implements it (that crate depends on this one, not the other way) and
/// the binary hands it in at start. Every method may block (files, the
/// solver): the admin door calls them off the request threads. `config`
/// is the gateway's config file, read afresh by each call.
pub trait RegistryService: Send + Sync {
    /// Entries (latest versions) matching `search`, of `kind` if given,
    /// each with its trust and the version installed, if any.
    fn catalog(&self, config: &Path, search: &str, kind: Option<&str>) -> RegistryAnswer;
    /// One entry: the document, its trust, and what installing it would
    /// change (the diff), or why it would be refused.
    fn entry(&self, config: &Path, name: &str, version: Option<&str>) -> RegistryAnswer;
    /// What is installed.
    fn installed(&self, config: &Path) -> RegistryAnswer;
    /// Installs `{"name", "version"?, "as"?, "args"?, "env"?}` as `by`.
    fn install(&self, config: &Path, request: &serde_json::Value, by: &str) -> RegistryAnswer;
    /// Uninstalls `name` as `by`.
    fn uninstall(&self, config: &Path, name: &str, by: &str) -> RegistryAnswer;
}

/// Shared by every request.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub keys: KeyCache,
    pub audit: AuditHandle,
    pub metrics: Metrics,
    /// Conditions every call meets while they last, logged once and then
    /// counted (not a line per call).
    pub outages: crate::outage::Outages,
    /// MCP upstreams and their tools (kept in step with the config and the
    /// run-time registrations on every reload).
    pub mcp: Option<Arc<crate::mcp_hub::McpHub>>,
    /// Model routes and backends (their table follows reloads; each
    /// backend's live state survives them).
    pub inference: Arc<lattice_inference_router::Router>,
    /// Rate-limit and budget counters (survive reloads).
    pub limiter: crate::limits::Limiter,
    /// `[cluster] redis`: what replicas share (the limiter's counters, and
    /// revocations).
    pub cluster: Option<Arc<crate::cluster::Redis>>,
    /// `[telemetry]`: the trace export queue.
    pub otlp: Option<crate::otlp::Otlp>,
    /// MCP session signing (stateful protocol eras).
    pub mcp_sessions: lattice_mcp::session::Sessions,
    /// Requests upstream servers made that wait for a client's answer.
    pub server_requests: Arc<lattice_mcp::server_requests::ServerRequests>,
    /// The egress guard every upstream name is resolved through (its allow
    /// list follows reloads).
    pub egress: Arc<crate::egress::Guard>,
    /// Settings fixed at start (listener, data dir, audit): a reload that
    /// changes them is applied for everything else and logged.
    pub startup: Config,
    /// The registry behind `/admin/v1/registry/...` (none: those answer 404).
    pub registry: Option<Arc<dyn RegistryService>>,
    /// Workers that joined by themselves (`[discovery]`).
    pub discovered: crate::discovered::Members,
}

/// A short digest of a policy set (names and texts).
pub fn policy_digest(live: &[PolicySource], shadow: Option<&[PolicySource]>) -> String {
    let mut h = Sha256::new();
    for p in live.iter().chain(shadow.unwrap_or_default()) {
        h.update(p.name.as_bytes());
        h.update([0]);
        h.update(p.text.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}
