//! `lattice mcp pending|approve`: tool pinning. A running gateway picks an
//! approval up within a moment and audits it.

use clap::Subcommand;
use lattice_gateway::keys::StateStore;
use std::process::ExitCode;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum McpCmd {
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

pub fn run(cmd: McpCmd) -> anyhow::Result<ExitCode> {
    match cmd {
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
