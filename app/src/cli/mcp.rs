//! `lattice mcp add|list|remove|tools|pending|approve`: MCP servers and tool
//! pinning. `add` and `remove` change the run-time servers in the state store
//! (validated with the config file first); a running gateway starts or stops
//! them within a reload poll. Approvals are picked up and audited within a
//! moment.

use anyhow::bail;
use clap::Subcommand;
use lattice_gateway::config::RawMcpServer;
use lattice_gateway::state::mcp_servers;
use lattice_gateway::state::StateStore;
use std::path::Path;
use std::process::ExitCode;

use super::ConfigArg;

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum McpCmd {
    /// Register an MCP server at run time: a stdio command or a
    /// streamable-HTTP URL.
    Add {
        /// 1-32 of a-z, 0-9 and '-'.
        name: String,
        /// A stdio server's command.
        #[arg(long, conflicts_with = "url")]
        command: Option<String>,
        /// An argument of the command (repeatable).
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
        /// A streamable-HTTP server's endpoint.
        #[arg(long)]
        url: Option<String>,
        /// The URL is a legacy HTTP+SSE server's stream.
        #[arg(long, requires = "url")]
        sse: bool,
        /// NAME=GATEWAY_VAR: environment for a stdio server, read from the
        /// gateway's (repeatable).
        #[arg(long = "env-from")]
        env_from: Vec<String>,
        /// NAME=GATEWAY_VAR: an HTTP header for a URL server, read from the
        /// gateway's environment (repeatable).
        #[arg(long = "header-from")]
        headers_from: Vec<String>,
        /// An operator label such as `risk:high` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every MCP server: the config file's, then the run-time ones.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a run-time MCP server.
    Remove {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The tools seen so far, with their pinned definition hashes.
    Tools {
        /// Only this server's tools.
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Tools whose definition changed upstream and wait for approval.
    Pending {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Approve a quarantined tool's new definition (`<server>__<tool>`).
    Approve {
        tool: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn pairs(
    items: &[String],
    what: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("{what} `{item}` is not NAME=GATEWAY_VAR");
        };
        map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    Ok(map)
}

pub fn run(cmd: McpCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        McpCmd::Add {
            name,
            command,
            args,
            url,
            sse,
            env_from,
            headers_from,
            labels,
            timeout_ms,
            config,
        } => {
            let mut spec =
                serde_json::json!({"name": name, "labels": labels, "timeout_ms": timeout_ms});
            match (command, url) {
                (Some(c), None) => {
                    spec["command"] = c.into();
                    spec["args"] = args.into();
                    spec["env_from"] = pairs(&env_from, "--env-from")?.into();
                }
                (None, Some(u)) => {
                    spec["url"] = u.into();
                    if sse {
                        spec["transport"] = "sse".into();
                    }
                    spec["headers_from"] = pairs(&headers_from, "--header-from")?.into();
                }
                _ => bail!("give --command or --url"),
            }
            let raw: RawMcpServer = serde_json::from_value(spec)?;
            let cfg = config.load()?;
            let mut all = mcp_servers::stored(&cfg)?;
            all.push(raw.clone());
            let dir = config.config.parent().unwrap_or(Path::new("."));
            if let Err(e) = mcp_servers::merged(
                dir,
                &cfg.mcp_servers,
                &all,
                &cfg.mcp.allow_commands,
                &cfg.egress,
            ) {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            if let Err(e) = super::vet_urls(&cfg, raw.url()) {
                eprintln!("run-time MCP server `{}`: {e}", raw.name());
                return Ok(ExitCode::FAILURE);
            }
            StateStore::open(&cfg.server.data_dir)?.add_mcp_server(&raw)?;
            println!("registered MCP server `{}`", raw.name());
        }
        McpCmd::List { config } => {
            let cfg = config.load()?;
            let extra = mcp_servers::stored(&cfg)?;
            let dir = config.config.parent().unwrap_or(Path::new("."));
            let file: Vec<String> = cfg.mcp_servers.iter().map(|s| s.name.clone()).collect();
            for s in mcp_servers::merged(
                dir,
                &cfg.mcp_servers,
                &extra,
                &cfg.mcp.allow_commands,
                &cfg.egress,
            )? {
                let transport = match &s.transport {
                    lattice_gateway::config::McpTransport::Stdio { command, .. } => {
                        format!("stdio {command}")
                    }
                    lattice_gateway::config::McpTransport::Http { url, .. } => {
                        format!("http {url}")
                    }
                    lattice_gateway::config::McpTransport::Sse { url, .. } => format!("sse {url}"),
                };
                let source = if file.contains(&s.name) {
                    "config"
                } else {
                    "run-time"
                };
                println!(
                    "{}\t{transport}\tlabels=[{}]\tsource={source}",
                    s.name,
                    s.labels.join(",")
                );
            }
        }
        McpCmd::Remove { name, config } => {
            let cfg = config.load()?;
            if cfg.mcp_servers.iter().any(|s| s.name == name) {
                eprintln!(
                    "`{name}` is defined in {}; edit the file to change it",
                    config.config.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            StateStore::open(&cfg.server.data_dir)?.remove_mcp_server(&name)?;
            println!("removed MCP server `{name}`");
        }
        McpCmd::Tools { server, config } => {
            let store = StateStore::open(&config.load()?.server.data_dir)?;
            for t in store.pinned_tools()? {
                if server.as_ref().is_some_and(|s| s != &t.server) {
                    continue;
                }
                println!("{}", serde_json::to_string(&t)?);
            }
        }
        McpCmd::Pending { config } => {
            let store = StateStore::open(&config.load()?.server.data_dir)?;
            for p in store.pending_tools()? {
                println!("{}", serde_json::to_string(&p)?);
            }
        }
        McpCmd::Approve { tool, config } => {
            let (server, name) = lattice_mcp::tools::split_federated(&tool).ok_or_else(|| {
                anyhow::anyhow!("`{tool}` is not a federated tool name (<server>__<tool>)")
            })?;
            let store = StateStore::open(&config.load()?.server.data_dir)?;
            let hash = store.approve_tool(server, name)?;
            println!("approved {tool} at {hash}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
