//! The config file as written: serde types that reject unknown keys (the
//! file and line come from the TOML parser), with their defaults. Only
//! `config::parse` reads them; nothing else in the gateway sees raw values.
//!
//! Must never: default a value silently where the file is wrong.

use serde::Deserialize;

use super::RawMcpServer;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) auth: RawAuth,
    pub(super) policy: RawPolicy,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) demo_upstream: Option<RawDemo>,
    #[serde(default)]
    pub(super) mcp: RawMcp,
    #[serde(default)]
    pub(super) mcp_servers: Vec<RawMcpServer>,
    #[serde(default)]
    pub(super) backends: Vec<super::llm::RawBackend>,
    #[serde(default)]
    pub(super) models: Vec<super::llm::RawModel>,
    #[serde(default)]
    pub(super) limits: Vec<super::llm::RawLimit>,
    #[serde(default)]
    pub(super) egress: super::egress::RawEgress,
    /// Properties every policy set must satisfy (proved at start, on
    /// reload and by `lattice config validate`).
    #[serde(default)]
    pub(super) invariants: Vec<lattice_policy::prove::RawProperty>,
    #[serde(default)]
    pub(super) cluster: super::cluster::RawCluster,
    #[serde(default)]
    pub(super) telemetry: super::telemetry::RawTelemetry,
    #[serde(default)]
    pub(super) registry: super::registry::RawRegistry,
    #[serde(default)]
    pub(super) discovery: Option<super::discovery::RawDiscovery>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    /// Browser origins allowed to call `/mcp` (requests without `Origin` are
    /// not browsers and pass; any other origin gets 403).
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    /// The endpoint's public URL, named in the RFC 9728 metadata. Default:
    /// `http://<Host>/mcp` from each request.
    #[serde(default)]
    pub(super) resource_url: Option<String>,
    /// Approve a tool's definition the first time it is seen (later changes
    /// are quarantined either way).
    #[serde(default = "d_true")]
    pub(super) auto_approve_first_seen: bool,
    /// The key that signs session ids; replicas sharing it accept each
    /// other's sessions. Default: `<data_dir>/mcp-session.key`, created.
    #[serde(default)]
    pub(super) session_key_file: Option<String>,
    /// How long an MCP session lives after `initialize`.
    #[serde(default = "d_session_ttl")]
    pub(super) session_ttl_seconds: u64,
    /// The stdio commands a run-time registration may start (none by
    /// default: the admin API and the CLI register HTTP and SSE servers).
    #[serde(default)]
    pub(super) allow_commands: Vec<RawCommandRule>,
}

/// `[[mcp.allow_commands]]`: a program and a pattern per argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommandRule {
    pub(super) program: String,
    #[serde(default)]
    pub(super) args: Vec<String>,
}

pub(super) fn d_session_ttl() -> u64 {
    super::DEFAULT_MCP_SESSION_TTL_S
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: String,
    #[serde(default = "d_node")]
    pub(super) node_id: String,
    #[serde(default = "d_data_dir")]
    pub(super) data_dir: String,
    #[serde(default = "d_max_body")]
    pub(super) max_body_bytes: u64,
    #[serde(default = "d_max_header_bytes")]
    pub(super) max_header_bytes: u64,
    #[serde(default = "d_max_headers")]
    pub(super) max_headers: u64,
    #[serde(default = "d_max_uri_bytes")]
    pub(super) max_uri_bytes: u64,
    #[serde(default = "d_body_read_ms")]
    pub(super) body_read_timeout_ms: u64,
    #[serde(default = "d_keepalive_s")]
    pub(super) keepalive_idle_timeout_s: u64,
    #[serde(default = "d_header_read_ms")]
    pub(super) header_read_timeout_ms: u64,
    #[serde(default = "d_max_conns")]
    pub(super) max_connections_per_client: u64,
    #[serde(default = "d_grace")]
    pub(super) grace_period_seconds: u64,
    #[serde(default = "d_grace")]
    pub(super) graceful_shutdown_timeout_seconds: u64,
    #[serde(default = "d_threads")]
    pub(super) threads: usize,
    #[serde(default = "d_reload_ms")]
    pub(super) reload_poll_ms: u64,
    #[serde(default)]
    pub(super) tls: Option<super::tls::RawTls>,
}

pub(super) fn d_node() -> String {
    "node-1".into()
}
pub(super) fn d_data_dir() -> String {
    "lattice-data".into()
}
pub(super) fn d_max_body() -> u64 {
    1024 * 1024
}
pub(super) fn d_max_header_bytes() -> u64 {
    64 * 1024
}
pub(super) fn d_max_headers() -> u64 {
    100
}
pub(super) fn d_max_uri_bytes() -> u64 {
    8 * 1024
}
pub(super) fn d_body_read_ms() -> u64 {
    30_000
}
pub(super) fn d_keepalive_s() -> u64 {
    60
}
pub(super) fn d_header_read_ms() -> u64 {
    10_000
}
pub(super) fn d_max_conns() -> u64 {
    1024
}
pub(super) fn d_grace() -> u64 {
    5
}
pub(super) fn d_threads() -> usize {
    2
}
pub(super) fn d_reload_ms() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default = "d_true")]
    pub(super) api_keys: bool,
    #[serde(default)]
    pub(super) jwt: Vec<RawJwt>,
    #[serde(default)]
    pub(super) mtls: Vec<super::tls::RawMtls>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            api_keys: true,
            jwt: Vec::new(),
            mtls: Vec::new(),
        }
    }
}

pub(super) fn d_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) jwks_file: Option<String>,
    #[serde(default)]
    pub(super) jwks_url: Option<String>,
    #[serde(default = "d_jwks_refresh")]
    pub(super) jwks_refresh_seconds: u64,
    #[serde(default = "d_algs")]
    pub(super) algorithms: Vec<String>,
    #[serde(default = "d_sub")]
    pub(super) agent_claim: String,
    #[serde(default)]
    pub(super) tenant_claim: Option<String>,
    #[serde(default = "d_tenant")]
    pub(super) default_tenant: String,
    #[serde(default)]
    pub(super) roles_claim: Option<String>,
    #[serde(default)]
    pub(super) labels_claim: Option<String>,
    #[serde(default = "d_leeway")]
    pub(super) leeway_seconds: u64,
    /// `agent` (default) or `human`: an identity provider for people (the
    /// workbench) makes `Lattice::Human` principals.
    #[serde(default)]
    pub(super) principal_type: Option<String>,
}

impl Default for RawMcp {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            resource_url: None,
            auto_approve_first_seen: true,
            session_key_file: None,
            session_ttl_seconds: d_session_ttl(),
            allow_commands: Vec::new(),
        }
    }
}

pub(super) fn d_jwks_refresh() -> u64 {
    300
}
pub(super) fn d_algs() -> Vec<String> {
    vec!["EdDSA".into(), "ES256".into(), "RS256".into()]
}
pub(super) fn d_sub() -> String {
    "sub".into()
}
pub(super) fn d_tenant() -> String {
    "default".into()
}
pub(super) fn d_leeway() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) files: Vec<String>,
    #[serde(default)]
    pub(super) shadow_files: Vec<String>,
    /// Cedar schema text declaring `type ToolInput` (namespace `Lattice`):
    /// the type of `context.input` on `call_tool`.
    #[serde(default)]
    pub(super) tool_input_schema: Option<String>,
    /// Longest proof of one invariant; past it, the set is refused.
    #[serde(default = "d_invariant_ms")]
    pub(super) invariant_timeout_ms: u64,
}

pub(super) fn d_invariant_ms() -> u64 {
    30_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default = "d_queue")]
    pub(super) queue_capacity: usize,
    #[serde(default = "d_batch")]
    pub(super) batch_max: usize,
    #[serde(default)]
    pub(super) on_full: OnFull,
    #[serde(default)]
    pub(super) durability: Durability,
    #[serde(default = "d_durable_ms")]
    pub(super) durable_timeout_ms: u64,
    #[serde(default = "d_cp_every")]
    pub(super) checkpoint_every: u64,
    #[serde(default = "d_cp_ms")]
    pub(super) checkpoint_interval_ms: u64,
    #[serde(default)]
    pub(super) witness_file: Option<String>,
    #[serde(default)]
    pub(super) witnesses: Vec<String>,
    #[serde(default)]
    pub(super) clickhouse: Option<RawClickHouse>,
    #[serde(default)]
    pub(super) retention: Option<RawRetention>,
}

/// `[audit.retention]`: `max_age = "30d"`, `max_size = "2GiB"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    #[serde(default)]
    pub(super) max_age: Option<String>,
    #[serde(default)]
    pub(super) max_size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClickHouse {
    pub(super) url: String,
    #[serde(default = "d_ch_db")]
    pub(super) database: String,
    #[serde(default = "d_ch_user")]
    pub(super) user: String,
    #[serde(default)]
    pub(super) password_env: Option<String>,
    #[serde(default = "d_ch_batch")]
    pub(super) batch_max: usize,
    #[serde(default = "d_cp_ms")]
    pub(super) flush_interval_ms: u64,
    #[serde(default = "d_ch_backlog")]
    pub(super) max_backlog_events: u64,
    /// PEM CA certificates for an `https://` URL (default: Mozilla's roots).
    #[serde(default)]
    pub(super) ca_file: Option<String>,
}

pub(super) fn d_ch_db() -> String {
    "default".into()
}
pub(super) fn d_ch_user() -> String {
    "default".into()
}
pub(super) fn d_ch_batch() -> usize {
    10_000
}
pub(super) fn d_ch_backlog() -> u64 {
    1_000_000
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            queue_capacity: d_queue(),
            batch_max: d_batch(),
            on_full: OnFull::default(),
            durability: Durability::default(),
            durable_timeout_ms: d_durable_ms(),
            checkpoint_every: d_cp_every(),
            checkpoint_interval_ms: d_cp_ms(),
            witness_file: None,
            witnesses: Vec::new(),
            clickhouse: None,
            retention: None,
        }
    }
}

pub(super) fn d_queue() -> usize {
    10_000
}
pub(super) fn d_batch() -> usize {
    1_000
}
pub(super) fn d_cp_every() -> u64 {
    1_000
}
pub(super) fn d_cp_ms() -> u64 {
    1_000
}

pub(super) fn d_durable_ms() -> u64 {
    5_000
}

/// When a call is forwarded, relative to its decision's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the decision is committed and synced to disk (the default).
    #[default]
    Durable,
    /// As soon as the decision is queued: a crash or power loss loses the
    /// decisions still queued (at most `queue_capacity` events) of calls
    /// that may already have been forwarded and answered.
    Async,
}

/// What happens when the audit pipeline cannot accept an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Refuse the call with 503 (the default: fail closed).
    #[default]
    Deny,
    /// Let the call through unaudited, with a loud log and metric.
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) upstream: String,
    #[serde(default)]
    pub(super) labels: Vec<String>,
    #[serde(default = "d_timeout")]
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) credential: Option<RawCredential>,
}

pub(super) fn d_timeout() -> u64 {
    30_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) header: String,
    #[serde(default)]
    pub(super) value: Option<String>,
    #[serde(default)]
    pub(super) env: Option<String>,
    /// Written before the value, e.g. "Bearer ".
    #[serde(default)]
    pub(super) prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDemo {
    pub(super) listen: String,
}
