//! What the gateway relays to an MCP client while its `tools/call` runs:
//! the upstream's progress notifications (under the caller's own token; the
//! upstream got one the gateway made, so callers cannot see each other's)
//! and log messages (`notifications/message`) at or above the level the
//! session set with `logging/setLevel`, which the gateway answers itself.
//!
//! A log message is relayed only when it belongs to this call: on a
//! streamable-HTTP upstream it came in the answer to this call's POST; on a
//! shared stream (stdio, legacy SSE) it names no call, so it is relayed only
//! while this is the one tool call in flight on that upstream
//! (`lattice_mcp::progress`) — never shown to another caller.
//!
//! Requests a server makes during the call (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`), attributed by the same rule, go to
//! the caller under an id the gateway makes, if its client declared that
//! capability at `initialize`; the client's answer (a POST of a JSON-RPC
//! response in the same session) is sent back to the server under the
//! server's own id. Each relayed request is audited (`mcp.server_request`).
//! Waiting requests live in the gateway process that relayed them.
//!
//! Must never: show one caller another call's notifications or requests.

use crate::respond;
use lattice_mcp::jsonrpc;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use super::results::tool_reply;
use crate::call::Call;
use crate::error::McpRefusal;
use crate::mcp_hub::ToolEntry;
use crate::respond::shaped;
use crate::runtime::{Runtime, Shared};

use lattice_mcp::server_requests::ANSWER_WITHIN;

/// Why a server request cannot go to the caller's client, if it cannot.
fn refusal(ctx: &Call, method: &str, streamed: bool) -> Option<String> {
    lattice_mcp::server_requests::why_not_relayed(
        method,
        ctx.mcp.sid.is_some(),
        &ctx.mcp.caps,
        streamed,
    )
}

/// The audit event of a server's request during `ctx`'s call (its own
/// request id; the caller as principal; the method as target).
fn server_request_event(
    ctx: &Call,
    entry: &ToolEntry,
    request: &Value,
) -> lattice_audit::AuditEvent {
    let mut event = ctx.facts.event(lattice_audit::Phase::Decision);
    event.request_id = uuid::Uuid::now_v7().to_string();
    event.kind = "mcp.server_request".into();
    event.target = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    event.upstream = Some(entry.server.clone());
    event
}

/// A request the server made during `ctx`'s call: relayed to the
/// client when it can answer (the returned message goes on the call's
/// stream), otherwise answered to the server with an error at once.
async fn relay_server_request(
    node: &Shared,
    ctx: &Call,
    entry: &ToolEntry,
    request: &Value,
) -> Option<Value> {
    let hub = node.mcp.clone()?;
    let upstream_id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    if let Some(why) = refusal(ctx, method, true) {
        refuse_server_request(node, ctx, entry, &hub, request, &why).await;
        return None;
    }
    let mut event = server_request_event(ctx, entry, request);
    let sid = ctx.mcp.sid.clone().unwrap_or_default();
    let (id, answer) = node.server_requests.wait_for(&sid).await;
    event.decision = "allow".into();
    event.reason = format!("relayed to the client as `{id}`");
    let _ = node.audit.record(event);
    // The answer goes back to the server whenever it comes.
    let (requests, server) = (
        std::sync::Arc::clone(&node.server_requests),
        entry.server.clone(),
    );
    let gateway_id = id.clone();
    tokio::spawn(async move {
        let response = match tokio::time::timeout(ANSWER_WITHIN, answer).await {
            Ok(Ok(Ok(result))) => {
                json!({"jsonrpc": "2.0", "id": upstream_id, "result": result})
            }
            Ok(Ok(Err(error))) => json!({"jsonrpc": "2.0", "id": upstream_id, "error": error}),
            _ => {
                requests.forget(&gateway_id).await;
                lattice_mcp::refuse_server_request(
                    &upstream_id,
                    "the client did not answer in time",
                )
            }
        };
        if let Err(e) = hub.respond(&server, response).await {
            tracing::warn!(server, error = %e, "could not pass a client's answer to the server");
        }
    });
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    Some(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

/// A `tools/call` answered with plain JSON. The upstream's requests
/// during it cannot reach the client: each is refused to the server
/// with the reason, and audited.
pub(crate) async fn call_unstreamed(
    node: &Shared,
    ctx: &Call,
    entry: &ToolEntry,
    arguments: Value,
) -> Result<Value, lattice_mcp::McpError> {
    let Some(hub) = node.mcp.clone() else {
        return Err(lattice_mcp::McpError::Upstream {
            server: entry.server.clone(),
            message: "MCP is not running".into(),
        });
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let call = hub.call_with_progress(entry, arguments, None, tx);
    tokio::pin!(call);
    loop {
        tokio::select! {
            r = &mut call => return r,
            Some(n) = rx.recv() => {
                if n.get("id").is_some() {
                    let method = n.get("method").and_then(Value::as_str).unwrap_or("");
                    let why = refusal(ctx, method, false).unwrap_or_default();
                    refuse_server_request(node, ctx, entry, &hub, &n, &why).await;
                }
            }
        }
    }
}

/// Answers a server's request with an error, audited as a denial.
async fn refuse_server_request(
    node: &Shared,
    ctx: &Call,
    entry: &ToolEntry,
    hub: &crate::mcp_hub::McpHub,
    request: &Value,
    why: &str,
) {
    let upstream_id = request.get("id").cloned().unwrap_or(Value::Null);
    let mut event = server_request_event(ctx, entry, request);
    event.decision = "deny".into();
    event.reason = format!("{why}; the server was answered with an error");
    let _ = node.audit.record(event);
    let answer = lattice_mcp::refuse_server_request(&upstream_id, why);
    let _ = hub.respond(&entry.server, answer).await;
}

/// What the caller gets for one message from the upstream: a server
/// request relayed (or refused), or a notification as it asked.
async fn for_caller(
    node: &Shared,
    ctx: &Call,
    entry: &ToolEntry,
    message: &Value,
    token: Option<&Value>,
    min_rank: Option<usize>,
) -> Option<Value> {
    if message.get("id").is_some() {
        relay_server_request(node, ctx, entry, message).await
    } else {
        lattice_mcp::progress::for_caller(message, token, min_rank)
    }
}

/// `logging/setLevel`: remembered for the session (a stateful era's);
/// the answer is `{}`.
pub(crate) async fn set_log_level(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    id: Value,
    params: &Value,
) -> Result<bool> {
    ctx.facts.kind = "mcp.set_log_level";
    let level = params.get("level").and_then(Value::as_str).unwrap_or("");
    let problem = match (lattice_mcp::log_rank(level), &ctx.mcp.sid) {
        (None, _) => Some(McpRefusal::InvalidParams(format!(
            "`level` must be one of {}",
            lattice_mcp::LOG_LEVELS.join(", ")
        ))),
        (Some(_), None) => Some(McpRefusal::NeedsSession(
            "logging/setLevel needs a session (initialize first, then send its Mcp-Session-Id)"
                .into(),
        )),
        (Some(rank), Some(sid)) => {
            node.mcp_sessions.set_log_level(sid, rank);
            None
        }
    };
    match problem {
        Some(refusal) => {
            crate::respond::jsonrpc_refusal(node, session, ctx, runtime, &id, &refusal).await
        }
        None => {
            crate::respond::protocol(
                node,
                session,
                ctx,
                runtime,
                200,
                Some(jsonrpc::result_response(&id, json!({}))),
            )
            .await
        }
    }
}

/// A `tools/call` answered as an event stream: the notifications the
/// caller asked for as they come, then the result.
#[allow(clippy::too_many_arguments)] // one call's parts
pub(crate) async fn relay_call(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    entry: &ToolEntry,
    arguments: Value,
    id: Value,
    token: Option<Value>,
    min_rank: Option<usize>,
) -> Result<bool> {
    let Some(hub) = node.mcp.clone() else {
        return Ok(true);
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    // The upstream gets a token of the gateway's only if the caller
    // asked for progress.
    let own_token = token
        .as_ref()
        .map(|_| json!(format!("lattice-{}", ctx.facts.request_id)));
    respond::stream_open(session, ctx, 200, "text/event-stream").await?;
    let event = |message: &Value| respond::sse_message(message, None);
    let call = hub.call_with_progress(entry, arguments, own_token, tx);
    tokio::pin!(call);
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            Some(n) = rx.recv() => {
                if let Some(m) = for_caller(node, ctx, entry, &n, token.as_ref(), min_rank).await {
                    respond::stream_write(session, event(&m)).await?;
                }
            }
        }
    };
    while let Ok(n) = rx.try_recv() {
        if let Some(m) = for_caller(node, ctx, entry, &n, token.as_ref(), min_rank).await {
            respond::stream_write(session, event(&m)).await?;
        }
    }
    let reply = tool_reply(ctx, entry, &id, result);
    let reply = shaped(ctx, &reply).unwrap_or(reply);
    respond::stream_write(session, event(&reply)).await?;
    respond::stream_end(session).await;
    Ok(true)
}
