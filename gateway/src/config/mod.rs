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
mod egress;
mod limits;
mod llm;
mod mcp;
mod raw;
mod sections;
mod telemetry;
mod tls;

pub use cluster::{ClusterConfig, RedisConfig};
pub use egress::{parse_host, refusal, EgressConfig};
pub use limits::{CallKind, LimitSpec, OnUnavailable, Per};
pub use llm::{build as build_llm, LlmConfig, RawBackend, RawLimit, RawModel};
pub use mcp::{build_mcp_server, McpServerConfig, McpTransport, RawMcpServer, ToolOverride};
use raw::*;
pub use raw::{Durability, OnFull};
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
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[server]\nlisten = \"127.0.0.1:8080\"\n[policy]\nfiles = [\"p.cedar\"]\n";

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = parse(Path::new("/etc/lattice/lattice.toml"), MINIMAL).unwrap();
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        assert_eq!(c.policy.files, vec![PathBuf::from("/etc/lattice/p.cedar")]);
        assert_eq!(c.audit.on_full, OnFull::Deny);
        assert_eq!(c.audit.durability, Durability::Durable);
        assert_eq!(c.audit.durable_timeout, Duration::from_secs(5));
        assert!(c.auth.api_keys);
    }

    #[test]
    fn the_replica_example_parses_and_cluster_settings_name_what_is_wrong() {
        // Without what this machine lacks: the environment variable, the
        // certificate files.
        let example: String = include_str!("../../../examples/replicas/replica.toml")
            .lines()
            .filter(|l| {
                ![
                    "password_env",
                    "[server.tls]",
                    "cert_file",
                    "key_file",
                    "ca_file",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(Path::new("/etc/lattice/lattice.toml"), &example).unwrap();
        let redis = c.cluster.redis.as_ref().unwrap();
        assert_eq!(redis.url, "rediss://redis.internal:6380/0");
        assert_eq!(redis.timeout, Duration::from_millis(250));
        assert_eq!(c.llm.limits.len(), 2);
        let with = |cluster: &str| format!("{MINIMAL}[cluster]\n{cluster}\n");
        for (cluster, message) in [
            (
                "redis = \"http://r:6379\"",
                "is not a redis:// or rediss:// URL",
            ),
            (
                "redis = \"redis://:secret@r:6379\"",
                "must not carry a password",
            ),
            (
                "redis = \"redis://r\"\npassword_env = \"LATTICE_TEST_UNSET_VAR_7\"",
                "names `LATTICE_TEST_UNSET_VAR_7`, which is not set",
            ),
            (
                "redis = \"redis://r\"\nca_file = \"ca.pem\"",
                "cluster.ca_file needs a rediss:// URL",
            ),
            ("password_env = \"X\"", "need cluster.redis"),
            (
                "redis = \"redis://r\"\nkey_prefx = \"x\"",
                "unknown field `key_prefx`",
            ),
        ] {
            let err = parse(Path::new("l.toml"), &with(cluster))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{cluster}: {err}");
        }
    }

    #[test]
    fn server_edge_bounds_have_defaults_and_refuse_zero() {
        let c = parse(Path::new("l.toml"), MINIMAL).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_connections_per_client, 1024);
        assert_eq!(c.server.keepalive_idle_timeout_s, 60);
        let with = |line: &str| MINIMAL.replacen("\n[policy]", &format!("\n{line}\n[policy]"), 1);
        // (line, Ok((header ms, connections)) or Err(message))
        type Want = Result<(u64, u64), &'static str>;
        let cases: &[(&str, Want)] = &[
            ("header_read_timeout_ms = 500", Ok((500, 1024))),
            ("max_connections_per_client = 8", Ok((10_000, 8))),
            (
                "max_connections_per_client = 0",
                Err("server.max_connections_per_client must be positive"),
            ),
            (
                "header_read_timout_ms = 5",
                Err("unknown field `header_read_timout_ms`"),
            ),
        ];
        for (line, want) in cases {
            let got = parse(Path::new("l.toml"), &with(line));
            match (got, want) {
                (Ok(c), Ok((ms, conns))) => assert_eq!(
                    (
                        c.server.header_read_timeout.as_millis() as u64,
                        c.server.max_connections_per_client
                    ),
                    (*ms, *conns),
                    "{line}"
                ),
                (Err(e), Err(m)) => assert!(e.to_string().contains(m), "{line}: {e}"),
                (got, _) => panic!("{line}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_command_rule_allows_its_program_with_whole_matching_arguments_only() {
        let rule = CommandRule {
            program: "/usr/bin/npx".into(),
            args: vec!["-y".into(), "@modelcontextprotocol/server-[a-z-]+".into()],
        };
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (program, given, allowed) in [
            (
                "/usr/bin/npx",
                args(&["-y", "@modelcontextprotocol/server-memory"]),
                true,
            ),
            (
                "npx",
                args(&["-y", "@modelcontextprotocol/server-memory"]),
                false,
            ),
            (
                "/usr/bin/npx",
                args(&["-y", "@modelcontextprotocol/server-memory; rm -rf /"]),
                false,
            ),
            (
                "/usr/bin/npx",
                args(&["-y", "x@modelcontextprotocol/server-memory"]),
                false,
            ),
            ("/usr/bin/npx", args(&["-y"]), false),
            (
                "/usr/bin/npx",
                args(&["-y", "@modelcontextprotocol/server-memory", "--extra"]),
                false,
            ),
            ("/bin/sh", args(&["-c", "touch x"]), false),
        ] {
            assert_eq!(rule.allows(program, &given), allowed, "{program} {given:?}");
        }
        let text =
            format!("{MINIMAL}[[mcp.allow_commands]]\nprogram = \"/bin/x\"\nargs = [\"(\"]\n");
        let err = parse(Path::new("lattice.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mcp.allow_commands `/bin/x`: pattern `(`"),
            "{err}"
        );
    }

    #[test]
    fn audit_retention_reads_ages_and_sizes_and_names_what_is_wrong() {
        let day = Duration::from_secs(86_400);
        for (body, expected) in [
            ("max_age = \"30d\"", Ok((Some(30 * day), None))),
            (
                "max_age = \"12h\"\nmax_size = \"2GiB\"",
                Ok((Some(Duration::from_secs(43_200)), Some(2u64 << 30))),
            ),
            ("max_size = \"500MB\"", Ok((None, Some(500_000_000)))),
            ("max_size = \"64KiB\"", Ok((None, Some(65_536)))),
            (
                "max_age = \"30 days\"",
                Err("audit.retention.max_age: `30 days`: the unit must be one of s, m, h, d"),
            ),
            (
                "max_age = \"0d\"",
                Err("audit.retention.max_age: `0d` must be more than zero"),
            ),
            (
                "max_size = \"lots\"",
                Err("audit.retention.max_size: `lots` is not a size"),
            ),
            (
                "max_size = \"5TB\"",
                Err("the unit must be one of B, KB, MB, GB, KiB, MiB, GiB"),
            ),
            ("", Err("[audit.retention] needs max_age, max_size or both")),
            ("max_rows = 5", Err("unknown field `max_rows`")),
        ] {
            let text = format!("{MINIMAL}[audit.retention]\n{body}\n");
            let got = parse(Path::new("lattice.toml"), &text)
                .map(|c| (c.audit.retention.max_age, c.audit.retention.max_bytes))
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{body}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{body}: {got}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn audit_durability_is_durable_or_async_and_nothing_else() {
        for (value, expected) in [
            ("\"durable\"", Ok(Durability::Durable)),
            ("\"async\"", Ok(Durability::Async)),
            (
                "\"fast\"",
                Err("unknown variant `fast`, expected `durable` or `async`"),
            ),
        ] {
            let text = format!("{MINIMAL}[audit]\ndurability = {value}\n");
            let got = parse(Path::new("lattice.toml"), &text)
                .map(|c| c.audit.durability)
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => {
                    assert!(
                        got.contains(want) && got.contains("lattice.toml:6:"),
                        "{got}"
                    )
                }
                (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn unknown_key_is_rejected_with_file_and_line() {
        let text = format!("{MINIMAL}[audit]\nqueue_capacity = 5\nqueue_capacty = 6\n");
        let err = parse(Path::new("x/lattice.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x/lattice.toml:7:"), "{err}");
        assert!(err.contains("unknown field `queue_capacty`"), "{err}");
    }

    #[test]
    fn route_validation() {
        let text = format!("{MINIMAL}[[routes]]\nname = \"w\"\nupstream = \"ftp://x\"\n");
        let err = parse(Path::new("l.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("must start with http://"), "{err}");
        let text = format!("{MINIMAL}[[routes]]\nname = \"w\"\nupstream = \"http://127.0.0.1:9/api/\"\n[routes.credential]\nheader = \"x-api-key\"\nvalue = \"s3cret\"\n");
        let c = parse(Path::new("l.toml"), &text).unwrap();
        let r = &c.routes[0];
        assert_eq!(r.upstream.base_path, "/api");
        assert_eq!(r.upstream.port, 9);
        assert_eq!(r.credential.as_ref().unwrap().1, "s3cret");
    }

    #[test]
    fn mcp_servers_need_one_transport_and_pass_the_egress_check() {
        let with = |server: &str| format!("{MINIMAL}[[mcp_servers]]\nname = \"s\"\n{server}");
        let err = |server: &str| {
            parse(Path::new("l.toml"), &with(server))
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("exactly one of command and url"));
        assert!(err("command = \"x\"\nurl = \"http://a.example/mcp\"\n").contains("exactly one"));
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.5",
            "169.254.169.254",
            "localhost",
            "[::1]",
            "[fd00::1]",
            // Every textual form of loopback an HTTP client accepts.
            "127.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "[::ffff:127.0.0.1]",
            "0",
        ] {
            let e = err(&format!("url = \"http://{private}:8080/mcp\"\n"));
            assert!(e.contains("allow_private_network"), "{private}: {e}");
        }
        let ok = parse(
            Path::new("l.toml"),
            &with("url = \"http://127.0.0.1:9/mcp\"\nallow_private_network = true\n"),
        )
        .unwrap();
        assert!(matches!(
            ok.mcp_servers[0].transport,
            McpTransport::Http { .. }
        ));
        let ok = parse(
            Path::new("l.toml"),
            &with("url = \"https://mcp.example.com/mcp\"\n"),
        )
        .unwrap();
        assert!(matches!(
            ok.mcp_servers[0].transport,
            McpTransport::Http { .. }
        ));
        assert!(err("command = \"x\"\nheaders = { a = \"b\" }\n").contains("url servers only"));
        let bad_name = format!("{MINIMAL}[[mcp_servers]]\nname = \"Bad_Name\"\ncommand = \"x\"\n");
        assert!(parse(Path::new("l.toml"), &bad_name)
            .unwrap_err()
            .to_string()
            .contains("must be 1-32"));
    }

    #[test]
    fn jwt_issuer_needs_audience_and_one_key_source() {
        let text =
            format!("{MINIMAL}[[auth.jwt]]\nissuer = \"i\"\naudiences = []\njwks_file = \"k\"\n");
        assert!(parse(Path::new("l.toml"), &text)
            .unwrap_err()
            .to_string()
            .contains("audience"));
        let text = format!("{MINIMAL}[[auth.jwt]]\nissuer = \"i\"\naudiences = [\"a\"]\n");
        assert!(parse(Path::new("l.toml"), &text)
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
    }
}
