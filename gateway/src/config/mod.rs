//! Configuration: one TOML file, parsed into raw types that reject unknown
//! keys (with the file and line), then validated and resolved into the
//! runtime `Config` (paths made absolute, upstream URLs parsed, credentials
//! read from the environment). Nothing here touches the network. Split by
//! section: `raw` (the file as written), `mcp` (`[[mcp_servers]]`), `llm`
//! (`[[backends]]`, `[[models]]`, `[[limits]]`), `limits` (what a limit
//! counts), `cluster` (`[cluster]`: what replicas share). A leaf: it imports nothing of the gateway but `error`.
//!
//! Must never: accept an unknown key, or touch the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::GatewayError;

mod cluster;
mod discovery;
mod egress;
mod limits;
mod llm;
mod mcp;
mod raw;
mod registry;
mod sections;
mod telemetry;
mod tls;

pub use cluster::{ClusterConfig, RedisConfig};
pub use discovery::DiscoveryConfig;
pub use egress::{parse_host, refusal, EgressConfig};
pub use limits::{CallKind, LimitSpec, OnUnavailable, Per};
pub use llm::{build as build_llm, LlmConfig, RawBackend, RawLimit, RawModel};
pub use mcp::{build_mcp_server, McpServerConfig, McpTransport, RawMcpServer, ToolOverride};
use raw::*;
pub use raw::{Durability, OnFull};
pub use registry::{RegistryConfig, TrustedPublisher};
pub use telemetry::{OtlpConfig, TelemetryConfig};
pub use tls::{CertId, ClientAuth, MtlsIdentity, TlsConfig};

/// The JWT signature algorithms Lattice verifies.
pub const SUPPORTED_JWT_ALGS: &[&str] = &["EdDSA", "ES256", "RS256"];

/// How long an MCP session lives after `initialize`, unless configured.
pub const DEFAULT_MCP_SESSION_TTL_S: u64 = 24 * 3600;

// ---------- runtime (validated) ----------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    pub routes: Vec<Route>,
    pub demo_upstream: Option<SocketAddr>,
    pub mcp_servers: Vec<McpServerConfig>,
    pub mcp: McpConfig,
    /// `[egress]`: the private upstreams the operator intends to reach.
    pub egress: EgressConfig,
    /// Model routes, backends and limits.
    pub llm: llm::LlmConfig,
    /// `[[invariants]]`: what every policy set must satisfy, proved.
    pub invariants: Vec<lattice_policy::prove::RawProperty>,
    /// `[cluster]`: state shared with other replicas (Redis).
    pub cluster: ClusterConfig,
    /// `[telemetry]`: traces (OpenTelemetry over OTLP/HTTP).
    pub telemetry: TelemetryConfig,
    /// `[registry]`: trusted publisher keys and catalogs.
    pub registry: RegistryConfig,
    /// `[discovery]`: workers that join by themselves (none: off).
    pub discovery: Option<DiscoveryConfig>,
}

/// Settings of the downstream MCP endpoint.
#[derive(Debug, Clone)]
pub struct McpConfig {
    pub allowed_origins: Vec<String>,
    pub resource_url: Option<String>,
    pub auto_approve_first_seen: bool,
    pub session_key_file: PathBuf,
    pub session_ttl_seconds: u64,
    /// Stdio commands a run-time registration may start.
    pub allow_commands: Vec<CommandRule>,
}

/// A stdio command a run-time MCP registration may start: the program
/// exactly, and one pattern per argument (a regular expression that must
/// match the whole argument), as many arguments as patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRule {
    pub program: String,
    pub args: Vec<String>,
}

impl CommandRule {
    /// Whether `program args...` is this rule's.
    pub fn allows(&self, program: &str, args: &[String]) -> bool {
        program == self.program
            && args.len() == self.args.len()
            && self.args.iter().zip(args).all(|(pattern, arg)| {
                regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(arg))
            })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub node_id: String,
    pub data_dir: PathBuf,
    pub max_body_bytes: u64,
    /// All request header lines together (names, values, separators).
    pub max_header_bytes: u64,
    pub max_headers: u64,
    /// The request target (path and query).
    pub max_uri_bytes: u64,
    /// Longest wait between two reads of a request body (HTTP/1).
    pub body_read_timeout: Duration,
    /// How long an idle HTTP/1.1 keep-alive connection stays open, seconds.
    pub keepalive_idle_timeout_s: u64,
    /// Longest time from a request head's first byte to its last (HTTP/1).
    pub header_read_timeout: Duration,
    /// Open connections one client address may hold at once.
    pub max_connections_per_client: u64,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub threads: usize,
    pub reload_poll: Duration,
    /// `[server.tls]`: TLS (and client certificates) on the listener;
    /// none: plain HTTP.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub api_keys: bool,
    pub jwt: Vec<JwtIssuer>,
    /// `[[auth.mtls]]`: client certificate identities mapped to principals.
    pub mtls: Vec<MtlsIdentity>,
}

/// A trusted token issuer.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub jwks_refresh: Duration,
    pub algorithms: Vec<String>,
    pub agent_claim: String,
    pub tenant_claim: Option<String>,
    pub default_tenant: String,
    pub roles_claim: Option<String>,
    pub labels_claim: Option<String>,
    pub leeway: Duration,
    pub principal_kind: lattice_policy::PrincipalKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub files: Vec<PathBuf>,
    pub shadow_files: Vec<PathBuf>,
    pub tool_input_schema: Option<PathBuf>,
    /// Longest proof of one invariant (a timeout refuses the set).
    pub invariant_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub db_path: PathBuf,
    pub key_path: PathBuf,
    pub queue_capacity: usize,
    pub batch_max: usize,
    pub on_full: OnFull,
    pub durability: Durability,
    /// Longest wait for a decision's group commit before the call is
    /// refused (503).
    pub durable_timeout: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub witness_file: Option<PathBuf>,
    /// Witnesses whose co-signatures of this node's checkpoints are stored
    /// (`POST /audit/v1/cosignatures`).
    pub witnesses: Vec<lattice_audit::witness::CosignatureVerifier>,
    pub clickhouse: Option<lattice_audit::clickhouse::ClickHouseConfig>,
    /// `[audit.retention]`: how long and how large the embedded store keeps.
    pub retention: lattice_audit::Retention,
}

/// An HTTP tool route: `/tools/<name>/...` to an upstream REST service.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub upstream: Upstream,
    pub labels: Vec<String>,
    pub timeout: Duration,
    pub credential: Option<(http::HeaderName, http::HeaderValue)>,
}

/// A parsed upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix on the upstream, without a trailing slash ("" for none).
    pub base_path: String,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "upstream `{url}` must start with http:// or https://"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("upstream `{url}` has no usable host"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("upstream `{url}` has a bad port"))?;
                (h, port)
            }
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if path.contains('?') || path.contains('#') {
            return Err(format!(
                "upstream `{url}` must not have a query or fragment"
            ));
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` as written (for logs and the audit).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Loads and validates a config file.
pub fn load(path: &Path) -> Result<Config, GatewayError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GatewayError::Config(format!("{}: {e}", path.display())))?;
    parse(path, &text)
}

/// Parses and validates config text; `path` locates relative paths and
/// names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, GatewayError> {
    let file = path.display().to_string();
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().to_string();
        GatewayError::Config(match line {
            Some(l) => format!("{file}:{l}: {msg}"),
            None => format!("{file}: {msg}"),
        })
    })?;
    let bad = |m: String| GatewayError::Config(format!("{file}: {m}"));
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let server = sections::server(raw.server, &resolve, &bad)?;
    let data_dir = server.data_dir.clone();
    let jwt = sections::jwt_issuers(raw.auth.jwt, &resolve, &bad)?;
    let mtls = tls::mtls(raw.auth.mtls, server.tls.as_ref(), &bad)?;
    if !raw.auth.api_keys && jwt.is_empty() && mtls.is_empty() {
        return Err(bad(
            "auth: enable api_keys or configure at least one [[auth.jwt]] issuer or [[auth.mtls]] identity".into(),
        ));
    }

    if raw.policy.files.is_empty() {
        return Err(bad("policy.files must name at least one policy file".into()));
    }
    let policy = PolicyConfig {
        files: raw.policy.files.iter().map(|f| resolve(f)).collect(),
        shadow_files: raw.policy.shadow_files.iter().map(|f| resolve(f)).collect(),
        tool_input_schema: raw.policy.tool_input_schema.as_deref().map(resolve),
        invariant_timeout: Duration::from_millis(raw.policy.invariant_timeout_ms.max(1)),
    };
    let mut ids = std::collections::BTreeSet::new();
    for inv in &raw.invariants {
        if inv.id.is_empty() || !ids.insert(inv.id.clone()) {
            return Err(bad(format!(
                "invariants: id `{}` is empty or used twice",
                inv.id
            )));
        }
    }

    let audit = sections::audit(raw.audit, &data_dir, &resolve, &bad)?;
    let routes = sections::routes(raw.routes, &bad)?;

    let demo_upstream = match raw.demo_upstream {
        None => None,
        Some(d) => Some(d.listen.parse().map_err(|_| {
            bad(format!(
                "demo_upstream.listen `{}` is not an address",
                d.listen
            ))
        })?),
    };

    let egress = egress::egress(raw.egress, &bad)?;
    let mut mcp_servers: Vec<McpServerConfig> = Vec::new();
    for m in raw.mcp_servers {
        let built = build_mcp_server(m, &resolve, &bad, &egress)?;
        if mcp_servers.iter().any(|x| x.name == built.name) {
            return Err(bad(format!("MCP server `{}` is defined twice", built.name)));
        }
        mcp_servers.push(built);
    }

    let llm = llm::build(raw.backends, raw.models, raw.limits, &bad, &[])?;
    let cluster = cluster::cluster(raw.cluster, &resolve, &bad)?;
    let telemetry = telemetry::telemetry(raw.telemetry, &bad)?;
    let registry = registry::registry(raw.registry, &resolve, &bad)?;
    let discovery = discovery::discovery(raw.discovery, &bad)?;

    Ok(Config {
        path: path.to_path_buf(),
        server,
        auth: AuthConfig {
            api_keys: raw.auth.api_keys,
            jwt,
            mtls,
        },
        policy,
        audit,
        routes,
        demo_upstream,
        mcp_servers,
        egress,
        invariants: raw.invariants,
        cluster,
        telemetry,
        registry,
        discovery,
        mcp: McpConfig {
            allowed_origins: raw.mcp.allowed_origins,
            resource_url: raw.mcp.resource_url,
            auto_approve_first_seen: raw.mcp.auto_approve_first_seen,
            session_ttl_seconds: raw.mcp.session_ttl_seconds,
            allow_commands: raw
                .mcp
                .allow_commands
                .into_iter()
                .map(|r| {
                    for p in &r.args {
                        regex::Regex::new(p).map_err(|e| {
                            bad(format!(
                                "mcp.allow_commands `{}`: pattern `{p}`: {e}",
                                r.program
                            ))
                        })?;
                    }
                    Ok(CommandRule {
                        program: r.program,
                        args: r.args,
                    })
                })
                .collect::<Result<_, GatewayError>>()?,
            session_key_file: match &raw.mcp.session_key_file {
                Some(f) => resolve(f),
                None => data_dir.join("mcp-session.key"),
            },
        },
        llm,
    })
}

#[cfg(test)]
mod tests;
