//! The `[[mcp_servers]]` section: the raw entry (also the JSON form of a
//! server registered at run time), its validation (name, one transport, the
//! egress check, secrets from the environment) and the validated form.
//!
//! Must never: accept an entry that fails the one validation every
//! registration path shares.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

use super::Upstream;
use crate::GatewayError;

fn d_timeout() -> u64 {
    30_000
}

/// One `[[mcp_servers]]` entry as written (also the JSON form of a server
/// registered at run time).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    name: String,
    /// A stdio server: the command to spawn...
    #[serde(default)]
    command: Option<String>,
    /// ...or a streamable-HTTP server's endpoint.
    #[serde(default)]
    url: Option<String>,
    /// For a `url` server: `streamable-http` (the default) or `sse` (the
    /// legacy HTTP+SSE transport of protocol 2024-11-05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transport: Option<String>,
    /// HTTP headers sent to an HTTP server (its credentials).
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// HTTP headers read from the gateway's environment: NAME = "GATEWAY_VAR".
    #[serde(default)]
    headers_from: std::collections::BTreeMap<String, String>,
    /// Allow an HTTP server on a loopback, private or link-local address.
    #[serde(default)]
    allow_private_network: bool,
    #[serde(default)]
    args: Vec<String>,
    /// Literal environment for the server.
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Environment read from the gateway's own: NAME = "GATEWAY_VAR".
    #[serde(default)]
    env_from: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
    /// `[mcp_servers.tools.<tool>]`: what the operator says of a tool,
    /// over what the server claims (its own name for the tool).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    tools: std::collections::BTreeMap<String, ToolOverride>,
}

/// The operator's word on one tool: labels added to the server's, a risk,
/// and hints that replace the server's annotations (which are only a
/// server's claims: the MCP specification calls them untrusted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolOverride {
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub destructive: Option<bool>,
    #[serde(default)]
    pub idempotent: Option<bool>,
    #[serde(default)]
    pub open_world: Option<bool>,
}

impl RawMcpServer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the entry asks to reach a private address (the config file
    /// may; a run-time registration may not).
    pub fn allows_private_network(&self) -> bool {
        self.allow_private_network
    }

    /// A URL server's URL.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// A stdio server's program and arguments.
    pub fn command(&self) -> Option<(&str, &[String])> {
        self.command.as_deref().map(|c| (c, self.args.as_slice()))
    }
}

/// An upstream MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    pub name: String,
    pub transport: McpTransport,
    pub labels: Vec<String>,
    pub timeout: Duration,
    /// Per tool (the server's own name): the operator's overrides.
    pub tools: std::collections::BTreeMap<String, ToolOverride>,
}

impl McpServerConfig {
    /// Whether `other` runs the same server the same way (everything but
    /// the per-tool overrides is equal).
    pub fn same_process(&self, other: &Self) -> bool {
        self.name == other.name
            && self.transport == other.transport
            && self.labels == other.labels
            && self.timeout == other.timeout
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// Spawned and supervised by the gateway.
    Stdio {
        command: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// Streamable HTTP.
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
    /// The legacy HTTP+SSE transport: `url` is the SSE stream.
    Sse {
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// Validates one MCP server entry: a name that federates unambiguously,
/// exactly one transport, the egress check of a literal address (a name is
/// checked on what it resolves to, at connect time), secrets read from the
/// environment. `resolve` makes a relative command path absolute.
pub fn build_mcp_server(
    m: RawMcpServer,
    resolve: &dyn Fn(&str) -> PathBuf,
    bad: &dyn Fn(String) -> GatewayError,
    egress: &super::EgressConfig,
) -> Result<McpServerConfig, GatewayError> {
    lattice_mcp::tools::check_server_name(&m.name).map_err(|e| bad(format!("mcp_servers: {e}")))?;
    let from_env = |pairs: std::collections::BTreeMap<String, String>,
                    vars: std::collections::BTreeMap<String, String>|
     -> Result<Vec<(String, String)>, GatewayError> {
        let mut out: Vec<(String, String)> = pairs.into_iter().collect();
        for (name, var) in vars {
            let value = std::env::var(&var).map_err(|_| {
                bad(format!(
                    "MCP server `{}`: environment variable `{var}` is not set",
                    m.name
                ))
            })?;
            out.push((name, value));
        }
        Ok(out)
    };
    let transport = match (m.command, m.url) {
        (Some(command), None) => {
            if m.transport.is_some() {
                return Err(bad(format!(
                    "MCP server `{}`: transport applies to url servers only",
                    m.name
                )));
            }
            if !m.headers.is_empty() || !m.headers_from.is_empty() {
                return Err(bad(format!(
                    "MCP server `{}`: headers apply to url servers only",
                    m.name
                )));
            }
            let command = if command.contains('/') {
                resolve(&command).display().to_string()
            } else {
                command
            };
            McpTransport::Stdio {
                command,
                args: m.args,
                env: from_env(m.env, m.env_from)?,
            }
        }
        (None, Some(url)) => {
            if !m.env.is_empty() || !m.env_from.is_empty() || !m.args.is_empty() {
                return Err(bad(format!(
                    "MCP server `{}`: args and env apply to command servers only",
                    m.name
                )));
            }
            let parsed =
                Upstream::parse(&url).map_err(|e| bad(format!("MCP server `{}`: {e}", m.name)))?;
            if !m.allow_private_network {
                egress.check_literal(&parsed.host).map_err(|e| {
                    bad(format!(
                        "MCP server `{}`: {e} (or, in the config file, set allow_private_network = true)",
                        m.name
                    ))
                })?;
            }
            let headers = from_env(m.headers, m.headers_from)?;
            match m.transport.as_deref() {
                None | Some("streamable-http") => McpTransport::Http { url, headers },
                Some("sse") => McpTransport::Sse { url, headers },
                Some(other) => {
                    return Err(bad(format!(
                        "MCP server `{}`: transport `{other}` is not streamable-http or sse",
                        m.name
                    )))
                }
            }
        }
        _ => {
            return Err(bad(format!(
                "MCP server `{}` needs exactly one of command and url",
                m.name
            )))
        }
    };
    Ok(McpServerConfig {
        name: m.name,
        transport,
        labels: m.labels,
        timeout: Duration::from_millis(m.timeout_ms.max(1)),
        tools: m.tools,
    })
}
