//! MCP servers registered at run time (`lattice mcp add`, `POST
//! /admin/v1/mcp/servers`): stored in the state store as the JSON form of a
//! `[[mcp_servers]]` entry, validated by the same code as the config file's,
//! and merged after them whenever the runtime is built. A change bumps a
//! generation the watcher polls; the hub then starts and stops servers to
//! match. Store secrets as `env_from`/`headers_from` (names of the gateway's
//! environment variables), not literal values: the state store is not a
//! secret store.
//!
//! Must never: store a server that fails the config's own validation.

use std::path::{Path, PathBuf};

use crate::config::{
    build_mcp_server, CommandRule, Config, EgressConfig, McpServerConfig, RawMcpServer,
};
use crate::state::registry::MCP_SERVERS;
use crate::state::StateStore;
use crate::GatewayError;

impl StateStore {
    /// Stores a server (validated against the config by the caller).
    pub fn add_mcp_server(&self, server: &RawMcpServer) -> Result<(), GatewayError> {
        self.registry_add(&MCP_SERVERS, server.name(), server)
    }

    /// Removes a run-time server. Errors if there is none by that name.
    pub fn remove_mcp_server(&self, name: &str) -> Result<(), GatewayError> {
        self.registry_remove(&MCP_SERVERS, name)
    }

    /// Every run-time server, oldest first.
    pub fn mcp_servers(&self) -> Result<Vec<RawMcpServer>, GatewayError> {
        self.registry_list(&MCP_SERVERS)
    }

    /// Bumped by every change.
    pub fn mcp_generation(&self) -> Result<i64, GatewayError> {
        self.registry_generation(&MCP_SERVERS)
    }
}

/// The run-time servers stored under the config's data directory.
pub fn stored(config: &Config) -> Result<Vec<RawMcpServer>, GatewayError> {
    if !config.server.data_dir.join("state.db").exists() {
        return Ok(Vec::new());
    }
    StateStore::open(&config.server.data_dir)?.mcp_servers()
}

/// The config file's servers followed by the run-time ones, each validated;
/// a run-time server may not reuse a name, starts a stdio command only
/// when a rule of `mcp.allow_commands` allows it, and reaches a private
/// address only when `[egress] allow` names it (never by asking for
/// `allow_private_network` itself).
pub fn merged(
    config_dir: &Path,
    file: &[McpServerConfig],
    extra: &[RawMcpServer],
    allow: &[CommandRule],
    egress: &EgressConfig,
) -> Result<Vec<McpServerConfig>, GatewayError> {
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            config_dir.join(p)
        }
    };
    let mut all = file.to_vec();
    for raw in extra {
        let name = raw.name().to_string();
        let bad = |m: String| GatewayError::Config(format!("run-time MCP server `{name}`: {m}"));
        if let Some((program, args)) = raw.command() {
            if !allow.iter().any(|r| r.allows(program, args)) {
                return Err(bad(format!(
                    "the stdio command `{program}` with arguments {args:?} is not allowed at run time (add a rule to [[mcp.allow_commands]] in the config file, or register an HTTP server)"
                )));
            }
        }
        if raw.allows_private_network() {
            return Err(bad(
                "allow_private_network can be set in the config file only; list the address in [egress] allow".into(),
            ));
        }
        let built = build_mcp_server(raw.clone(), &resolve, &bad, egress)?;
        if all.iter().any(|s| s.name == built.name) {
            return Err(bad("the name is taken".into()));
        }
        all.push(built);
    }
    Ok(all)
}
