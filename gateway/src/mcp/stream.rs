//! A session's GET stream at the MCP door: list changes (tools from the
//! gateway's own approved view; prompts and resources as the servers
//! announce them) and updates of the resources the session subscribed to,
//! as server-sent events, until the client goes away.
//!
//! Must never: send a session another session's resource updates.

use crate::respond;
use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::json;

use crate::call::Call;
use crate::runtime::{Runtime, Shared};

/// The GET stream of a session: `notifications/tools/list_changed`
/// whenever the approved tools change (resumable with `Last-Event-ID`),
/// a comment every 15 s to keep intermediaries from closing it, until
/// the client goes away.
pub(super) async fn serve_stream(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
) -> Result<bool> {
    let event = ctx.facts.protocol_event("server-to-client stream opened");
    if !crate::respond::allowed(node, session, ctx, runtime, event).await? {
        return Ok(true);
    }
    let Some(hub) = node.mcp.clone() else {
        return Ok(true);
    };
    let mut changes = hub.subscribe();
    let current = *changes.borrow_and_update();
    let mut catalog = hub.subscribe_catalog();
    let mut updates = hub.subscribe_updates();
    let sid = ctx.mcp.sid.clone().unwrap_or_default();
    let mut catalog_seen = *catalog.borrow_and_update();
    // Resumption: events carry the tool set's digest as their id; a
    // client that saw an older set is told at once that it changed.
    let last_seen = session
        .req_header()
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let announce = |digest: u64| {
        let n = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        respond::sse_message(&n, Some(&format!("{digest:016x}")))
    };
    respond::stream_open(session, ctx, 200, "text/event-stream").await?;
    if last_seen.is_some_and(|id| id != format!("{current:016x}")) {
        respond::stream_write(session, announce(current)).await?;
    }
    let mut keepalive = tokio::time::interval(std::time::Duration::from_secs(15));
    keepalive.tick().await;
    loop {
        let chunk = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                announce(*changes.borrow_and_update())
            }
            changed = catalog.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *catalog.borrow_and_update();
                let mut out = Vec::new();
                for (moved, list) in [(now.0 != catalog_seen.0, "prompts"), (now.1 != catalog_seen.1, "resources")] {
                    if moved {
                        let n = json!({"jsonrpc": "2.0", "method": format!("notifications/{list}/list_changed")});
                        out.extend_from_slice(&respond::sse_message(&n, None));
                    }
                }
                catalog_seen = now;
                Bytes::from(out)
            }
            update = updates.recv() => match update {
                Ok((server, uri)) => match node.mcp_sessions.subscribed_as(&sid, &server, &uri) {
                    Some(as_named) => {
                        let n = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": as_named}});
                        respond::sse_message(&n, None)
                    }
                    None => continue,
                },
                // Fell behind: some updates were lost; the client re-reads on the next.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            },
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
            _ = crate::intake::client_gone(session) => break,
        };
        if respond::stream_write(session, chunk).await.is_err() {
            break;
        }
    }
    ctx.failure = Some("stream closed".into());
    respond::stream_end(session).await;
    Ok(true)
}
