//! Tool fingerprints for a server entry: start the server, list its
//! tools, and hash each definition exactly as the gateway's tool pinning
//! does (`lattice_mcp::tools::definition_hash`), so that a published
//! fingerprint and the pin a gateway records for the same definition are
//! the same string. `lattice registry fingerprint -- <command> [args]`
//! prints them as the `tools` of an entry's `dev.lattice` data.
//!
//! Must never: hash a definition other than as the server sent it.

use crate::{RegistryError, Result};
use lattice_mcp::stdio::StdioConfig;
use lattice_mcp::tools::definition_hash;
use serde_json::{json, Value};
use std::time::Duration;

/// One tool: its name, hash, and what its annotations claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub name: String,
    pub hash: String,
    pub definition: Value,
}

/// Fingerprints of every tool the stdio server `command args` lists.
pub async fn stdio(
    command: &str,
    args: &[String],
    env: &[(String, String)],
) -> Result<Vec<Fingerprint>> {
    let err = |e: lattice_mcp::McpError| RegistryError::Remote {
        url: format!("stdio:{command}"),
        message: e.to_string(),
    };
    let up = lattice_mcp::stdio::start(StdioConfig {
        name: "fingerprint".into(),
        command: command.to_string(),
        args: args.to_vec(),
        env: env.to_vec(),
        timeout: Duration::from_secs(30),
        guard: None,
    })
    .await
    .map_err(err)?;
    let tools = up.list_tools().await;
    up.kill().await;
    let mut out: Vec<Fingerprint> = tools
        .map_err(err)?
        .into_iter()
        .map(|def| Fingerprint {
            name: def["name"].as_str().unwrap_or("").to_string(),
            hash: definition_hash(&def),
            definition: def,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The `tools` of an entry's `dev.lattice` data: name and hash, with the
/// risk its annotations suggest (`destructiveHint` → `destructive`,
/// `readOnlyHint` → `read`, otherwise `write`) for the publisher to review.
pub fn tools_meta(prints: &[Fingerprint]) -> Value {
    Value::Array(
        prints
            .iter()
            .map(|f| {
                let hint = |k: &str| f.definition["annotations"][k].as_bool();
                let risk = if hint("readOnlyHint") == Some(true) {
                    "read"
                } else if hint("destructiveHint") == Some(false) {
                    "write"
                } else {
                    "destructive"
                };
                json!({"name": f.name, "hash": f.hash, "risk": risk})
            })
            .collect(),
    )
}
