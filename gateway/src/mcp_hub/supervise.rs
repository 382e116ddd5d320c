//! Supervision of the MCP upstreams: launch (spawn or connect, initialize,
//! list tools), restart with exponential backoff when a server exits or
//! fails to start, re-list tools when a server announces a change or when
//! due, retire a server's tools when it stops, and follow pin approvals.
//! Must never: let one server's failure stop the others, or publish a
//! tool whose definition changed without quarantining it.

use crate::config::{McpServerConfig, McpTransport};
use crate::state::pins::PinCache;
use crate::state::StateStore;
use arc_swap::ArcSwap;
use lattice_mcp::http::HttpConfig;
use lattice_mcp::stdio::StdioConfig;
use lattice_mcp::tools::{definition_hash, federated_name, ArgumentSchema};
use lattice_mcp::upstream::Upstream;
use lattice_mcp::McpError;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Announce, Pinning, Server, ToolEntry, ToolMap};

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Tools are listed again this often even when a server never says they
/// changed (HTTP servers cannot tell us), so drift is still caught.
pub(super) const RELIST_EVERY: Duration = Duration::from_secs(60);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(super) fn entries(
    config: &McpServerConfig,
    listed: Vec<Value>,
) -> Vec<(String, Arc<ToolEntry>)> {
    let mut out = Vec::new();
    for def in listed {
        let Some(tool) = def.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let schema = match def.get("inputSchema").map(ArgumentSchema::compile) {
            Some(Ok(s)) => Some(Arc::new(s)),
            Some(Err(e)) => {
                tracing::warn!(server = %config.name, tool, error = %e, "tool left out: its inputSchema is refused");
                continue;
            }
            None => None,
        };
        let output_schema = match def.get("outputSchema").map(ArgumentSchema::compile) {
            Some(Ok(s)) => Some(Arc::new(s)),
            Some(Err(e)) => {
                tracing::warn!(server = %config.name, tool, error = %e, "tool left out: its outputSchema is refused");
                continue;
            }
            None => None,
        };
        let name = federated_name(&config.name, &tool);
        let mut definition = def.clone();
        definition["name"] = Value::String(name.clone());
        out.push((
            name,
            Arc::new(ToolEntry {
                server: config.name.clone(),
                tool,
                hash: definition_hash(&def),
                definition,
                schema,
                output_schema,
                server_labels: config.labels.clone(),
            }),
        ));
    }
    out
}

/// Starts (or connects to) a server and lists its tools.
pub(super) async fn launch(
    config: &McpServerConfig,
    pinning: &Pinning,
) -> Result<(Upstream, Vec<Value>), McpError> {
    let up = match &config.transport {
        McpTransport::Stdio { command, args, env } => {
            lattice_mcp::stdio::start(StdioConfig {
                name: config.name.clone(),
                command: command.clone(),
                args: args.clone(),
                env: env.clone(),
                timeout: config.timeout,
                guard: pinning.stdio_guard.clone(),
            })
            .await?
        }
        McpTransport::Sse { url, headers } => {
            lattice_mcp::sse::start(HttpConfig {
                name: config.name.clone(),
                url: url.clone(),
                headers: headers.clone(),
                timeout: config.timeout,
                dns: pinning.dns.clone(),
            })
            .await?
        }
        McpTransport::Http { url, headers } => {
            lattice_mcp::http::start(HttpConfig {
                name: config.name.clone(),
                url: url.clone(),
                headers: headers.clone(),
                timeout: config.timeout,
                dns: pinning.dns.clone(),
            })
            .await?
        }
    };
    let listed = up.list_tools().await?;
    Ok((up, listed))
}

/// Replaces one server's tools in the shared map.
pub(super) fn publish(tools: &ArcSwap<ToolMap>, server: &str, new: Vec<(String, Arc<ToolEntry>)>) {
    let mut map: ToolMap = tools.load().as_ref().clone();
    map.retain(|_, e| e.server != server);
    map.extend(new);
    tools.store(Arc::new(map));
}

/// Lists a running server's tools again when it said they changed, or
/// every `RELIST_EVERY`: new and changed definitions go through pinning
/// (a changed one is quarantined), so a server cannot swap a description
/// in without a restart going unnoticed.
pub(super) async fn relist_if_due(
    server: &Server,
    tools: &ArcSwap<ToolMap>,
    pinning: &Pinning,
    announce: &Announce,
    last: &mut Instant,
) {
    let Some(up) = server.current.load_full() else {
        return;
    };
    for uri in up.take_resource_updates().await {
        let _ = announce.updates.send((server.config.name.clone(), uri));
    }
    // Prompt and resource lists are fetched live: only pass the word on.
    let (prompts, resources) = up.take_catalog_changed();
    if prompts || resources {
        announce.catalog.send_modify(|(p, r)| {
            *p += u64::from(prompts);
            *r += u64::from(resources);
        });
    }
    if !(up.take_tools_changed() || last.elapsed() >= RELIST_EVERY) {
        return;
    }
    *last = Instant::now();
    match up.list_tools().await {
        Ok(listed) => {
            let new = entries(&server.config, listed);
            pinning.observe(&new);
            publish(tools, &server.config.name, new);
        }
        Err(e) => {
            tracing::warn!(server = %server.config.name, error = %e, "listing the tools again failed")
        }
    }
}

/// Keeps one server running: restarts it with backoff whenever it exits.
pub(super) async fn supervise(
    server: Arc<Server>,
    tools: Arc<ArcSwap<ToolMap>>,
    pinning: Pinning,
    announce: Announce,
) {
    let mut backoff = BACKOFF_MIN;
    let mut listed_at = Instant::now();
    loop {
        if server.is_stopped() {
            retire(&server, &tools).await;
            return;
        }
        let alive = server.current.load().as_ref().is_some_and(|u| u.is_alive());
        if alive {
            relist_if_due(&server, &tools, &pinning, &announce, &mut listed_at).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if server.current.load().is_some() {
            tracing::error!(server = %server.config.name, "MCP server exited; restarting");
            server.current.store(None);
        }
        tokio::time::sleep(backoff).await;
        match launch(&server.config, &pinning).await {
            Ok((up, listed)) => {
                let started = Instant::now();
                // The sessions' subscriptions outlive the process.
                for uri in server.subscriptions.lock().await.keys() {
                    if let Err(e) = up.request("resources/subscribe", json!({"uri": uri})).await {
                        tracing::warn!(server = %server.config.name, uri, error = %e, "subscribing again after a restart failed");
                    }
                }
                let new = entries(&server.config, listed);
                pinning.observe(&new);
                publish(&tools, &server.config.name, new);
                server.current.store(Some(Arc::new(up)));
                tracing::info!(server = %server.config.name, "MCP server restarted");
                // Healthy for a while: forget past failures.
                listed_at = Instant::now();
                while !server.is_stopped()
                    && server.current.load().as_ref().is_some_and(|u| u.is_alive())
                {
                    relist_if_due(&server, &tools, &pinning, &announce, &mut listed_at).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = BACKOFF_MIN;
                    }
                }
            }
            Err(e) => {
                tracing::error!(server = %server.config.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "MCP server cannot start");
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Keeps `changes` at the digest of the approved tools (names and
/// definitions): it moves when a server comes or goes, restarts with other
/// tools, or a pin changes. The digest is the same on every gateway serving
/// the same tools, so a client can resume a stream on another replica.
pub(super) async fn watch_tools(
    tools: Arc<ArcSwap<ToolMap>>,
    pins: Arc<PinCache>,
    changes: tokio::sync::watch::Sender<u64>,
) {
    use std::hash::{Hash, Hasher};
    let digest = || {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, entry) in tools.load().iter() {
            if pins.approved(&entry.server, &entry.tool, &entry.hash) {
                name.hash(&mut h);
                entry.hash.hash(&mut h);
            }
        }
        h.finish()
    };
    changes.send_replace(digest());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = digest();
        if now != *changes.borrow() {
            changes.send_replace(now);
        }
    }
}

/// A removed server: its tools go, its process is killed.
pub(super) async fn retire(server: &Server, tools: &ArcSwap<ToolMap>) {
    publish(tools, &server.config.name, Vec::new());
    if let Some(up) = server.current.swap(None) {
        up.kill().await;
    }
    tracing::info!(server = %server.config.name, "MCP server removed");
}

/// Notices approvals made with `lattice mcp approve` and audits them. One
/// connection stays open and the pins are read again only when another
/// connection committed (`PRAGMA data_version`), so an idle gateway does
/// not reopen the state store three times a second.
pub(super) async fn watch_approvals(pinning: Pinning) {
    let mut open: Option<(StateStore, i64)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if open.is_none() {
            let Ok(store) = StateStore::open(&pinning.data_dir) else {
                continue;
            };
            open = Some((store, i64::MIN));
        }
        let Some((store, seen)) = open.as_mut() else {
            continue;
        };
        match store
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
        {
            Ok(v) if v == *seen => continue,
            Ok(v) => *seen = v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the state store's version; reopening it");
                open = None;
                continue;
            }
        }
        match pinning.cache.refresh(store) {
            Ok(changed) => {
                for (server, tool) in changed {
                    let name = federated_name(&server, &tool);
                    tracing::info!(tool = %name, "tool definition approved");
                    pinning.event(
                        "mcp.tool_approved",
                        &name,
                        "allow",
                        "definition approved by an admin",
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot refresh tool pins"),
        }
    }
}
