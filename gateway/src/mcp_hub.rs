//! The gateway's MCP upstreams: started at boot on a runtime of their own
//! (their pipes are driven there, whatever thread a request runs on), their
//! tools listed once and indexed by federated name with compiled argument
//! schemas and definition hashes. A server that fails to start is logged and
//! left out; the others serve.

use lattice_mcp::stdio::{StdioConfig, StdioUpstream};
use lattice_mcp::tools::{definition_hash, federated_name, ArgumentSchema};
use lattice_mcp::McpError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::McpServerConfig;
use crate::GatewayError;

/// One federated tool.
pub struct ToolEntry {
    pub server: String,
    /// The upstream's own name for it.
    pub tool: String,
    /// The definition as the agent sees it (federated name).
    pub definition: Value,
    pub schema: Option<Arc<ArgumentSchema>>,
    pub hash: String,
    pub server_labels: Vec<String>,
}

/// The upstreams and their tools.
pub struct McpHub {
    runtime: tokio::runtime::Runtime,
    upstreams: BTreeMap<String, Arc<StdioUpstream>>,
    pub tools: BTreeMap<String, Arc<ToolEntry>>,
}

impl McpHub {
    /// Starts every configured server and lists its tools.
    pub fn start(servers: &[McpServerConfig]) -> Result<Self, GatewayError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mcp-upstreams")
            .enable_all()
            .build()
            .map_err(|e| GatewayError::Server(e.to_string()))?;
        let mut upstreams = BTreeMap::new();
        let mut tools = BTreeMap::new();
        for s in servers {
            let cfg = StdioConfig {
                name: s.name.clone(),
                command: s.command.clone(),
                args: s.args.clone(),
                env: s.env.clone(),
                timeout: s.timeout,
            };
            let started = runtime.block_on(async {
                let up = StdioUpstream::start(cfg).await?;
                let listed = up.list_tools().await?;
                Ok::<_, McpError>((up, listed))
            });
            let (up, listed) = match started {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(server = %s.name, error = %e, "MCP server unavailable; the others keep serving");
                    continue;
                }
            };
            for def in listed {
                let Some(tool) = def.get("name").and_then(Value::as_str).map(str::to_string) else {
                    continue;
                };
                let schema = match def.get("inputSchema").map(ArgumentSchema::compile) {
                    Some(Ok(s)) => Some(Arc::new(s)),
                    Some(Err(e)) => {
                        tracing::warn!(server = %s.name, tool, error = %e, "tool left out: its inputSchema is refused");
                        continue;
                    }
                    None => None,
                };
                let name = federated_name(&s.name, &tool);
                let mut definition = def.clone();
                definition["name"] = Value::String(name.clone());
                tools.insert(
                    name,
                    Arc::new(ToolEntry {
                        server: s.name.clone(),
                        tool,
                        hash: definition_hash(&def),
                        definition,
                        schema,
                        server_labels: s.labels.clone(),
                    }),
                );
            }
            tracing::info!(server = %s.name, tools = tools.len(), "MCP server ready");
            upstreams.insert(s.name.clone(), Arc::new(up));
        }
        Ok(Self {
            runtime,
            upstreams,
            tools,
        })
    }

    /// Calls a tool on its upstream (on the hub's runtime).
    pub async fn call(&self, entry: &ToolEntry, arguments: Value) -> Result<Value, McpError> {
        let up = self
            .upstreams
            .get(&entry.server)
            .cloned()
            .ok_or_else(|| McpError::Upstream {
                server: entry.server.clone(),
                message: "not running".into(),
            })?;
        let tool = entry.tool.clone();
        self.runtime
            .spawn(async move { up.call_tool(&tool, arguments).await })
            .await
            .map_err(|e| McpError::Upstream {
                server: entry.server.clone(),
                message: e.to_string(),
            })?
    }
}
