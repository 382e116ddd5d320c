//! MCP servers registered at run time (`lattice mcp add`, `POST
//! /admin/v1/mcp/servers`): stored in the state store as the JSON form of a
//! `[[mcp_servers]]` entry, validated by the same code as the config file's,
//! and merged after them whenever the runtime is built. A change bumps a
//! generation the watcher polls; the hub then starts and stops servers to
//! match. Store secrets as `env_from`/`headers_from` (names of the gateway's
//! environment variables), not literal values: the state store is not a
//! secret store.

use rusqlite::{params, OptionalExtension};
use std::path::{Path, PathBuf};

use crate::config::{build_mcp_server, Config, McpServerConfig, RawMcpServer};
use crate::keys::StateStore;
use crate::GatewayError;

fn err(e: rusqlite::Error) -> GatewayError {
    GatewayError::State(e.to_string())
}

impl StateStore {
    fn mcp_schema(&self) -> Result<(), GatewayError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS mcp_servers (
                    name TEXT PRIMARY KEY,
                    spec TEXT NOT NULL,
                    created_us INTEGER NOT NULL
                );
                INSERT OR IGNORE INTO meta (k, v) VALUES ('mcp_generation', 0);",
            )
            .map_err(err)
    }

    /// Stores a server (validated against the config by the caller).
    pub fn add_mcp_server(&self, server: &RawMcpServer) -> Result<(), GatewayError> {
        self.mcp_schema()?;
        let spec = serde_json::to_string(server).map_err(|e| GatewayError::State(e.to_string()))?;
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO mcp_servers (name, spec, created_us) VALUES (?1, ?2, ?3)",
                params![server.name(), spec, lattice_audit::now_us() as i64],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "a run-time MCP server `{}` exists already; remove it first",
                server.name()
            )));
        }
        self.bump_mcp()
    }

    /// Removes a run-time server. Errors if there is none by that name.
    pub fn remove_mcp_server(&self, name: &str) -> Result<(), GatewayError> {
        self.mcp_schema()?;
        let n = self
            .conn
            .execute("DELETE FROM mcp_servers WHERE name = ?1", params![name])
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "no run-time MCP server `{name}`"
            )));
        }
        self.bump_mcp()
    }

    /// Every run-time server, oldest first.
    pub fn mcp_servers(&self) -> Result<Vec<RawMcpServer>, GatewayError> {
        self.mcp_schema()?;
        let mut stmt = self
            .conn
            .prepare("SELECT spec FROM mcp_servers ORDER BY created_us, name")
            .map_err(err)?;
        let specs = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        specs
            .iter()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| GatewayError::State(format!("a stored MCP server: {e}")))
            })
            .collect()
    }

    /// Bumped by every change (read-only: the watcher polls it).
    pub fn mcp_generation(&self) -> Result<i64, GatewayError> {
        self.conn
            .query_row("SELECT v FROM meta WHERE k = 'mcp_generation'", [], |r| {
                r.get(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(err)
    }

    fn bump_mcp(&self) -> Result<(), GatewayError> {
        self.conn
            .execute("UPDATE meta SET v = v + 1 WHERE k = 'mcp_generation'", [])
            .map_err(err)?;
        Ok(())
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
/// a run-time server may not reuse a name.
pub fn merged(
    config_dir: &Path,
    file: &[McpServerConfig],
    extra: &[RawMcpServer],
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
        let built = build_mcp_server(raw.clone(), &resolve, &bad)?;
        if all.iter().any(|s| s.name == built.name) {
            return Err(bad("the name is taken".into()));
        }
        all.push(built);
    }
    Ok(all)
}
