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

use bytes::Bytes;
use lattice_mcp::jsonrpc;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::mcp_endpoint::{shaped, tool_reply};
use crate::mcp_hub::ToolEntry;
use crate::proxy::{Ctx, Gateway};
use crate::runtime::Runtime;

/// The message sent to the caller for one upstream notification, if any:
/// progress under the caller's token (when it gave one), a log message at
/// or above the session's level (when it set one).
pub(crate) fn downstream(
    notification: &Value,
    token: Option<&Value>,
    min_rank: Option<usize>,
) -> Option<Value> {
    let mut params = notification.get("params").cloned().unwrap_or(Value::Null);
    match notification.get("method").and_then(Value::as_str)? {
        "notifications/progress" => {
            params["progressToken"] = token?.clone();
            Some(json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params}))
        }
        "notifications/message" => {
            let rank = params
                .get("level")
                .and_then(Value::as_str)
                .and_then(lattice_mcp::log_rank)?;
            (rank >= min_rank?).then(
                || json!({"jsonrpc": "2.0", "method": "notifications/message", "params": params}),
            )
        }
        _ => None,
    }
}

impl Gateway {
    /// `logging/setLevel`: remembered for the session (a stateful era's);
    /// the answer is `{}`.
    pub(crate) async fn set_log_level(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        runtime: &Runtime,
        id: Value,
        params: &Value,
    ) -> Result<bool> {
        ctx.facts.kind = "mcp.set_log_level";
        let level = params.get("level").and_then(Value::as_str).unwrap_or("");
        let refuse = |code: i64, message: String| {
            let reply = jsonrpc::error_response(&id, code, &message, None);
            (message, reply)
        };
        let problem = match (lattice_mcp::log_rank(level), &ctx.mcp_sid) {
            (None, _) => Some(refuse(
                jsonrpc::INVALID_PARAMS,
                format!(
                    "`level` must be one of {}",
                    lattice_mcp::LOG_LEVELS.join(", ")
                ),
            )),
            (Some(_), None) => Some(refuse(
                jsonrpc::INVALID_REQUEST,
                "logging/setLevel needs a session (initialize first, then send its Mcp-Session-Id)"
                    .into(),
            )),
            (Some(rank), Some(sid)) => {
                self.shared.mcp_sessions.set_log_level(sid, rank);
                None
            }
        };
        match problem {
            Some((message, reply)) => {
                self.answer_refused(session, ctx, runtime, 200, &message, reply)
                    .await
            }
            None => {
                self.answer_protocol(
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
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        entry: &ToolEntry,
        arguments: Value,
        id: Value,
        token: Option<Value>,
        min_rank: Option<usize>,
    ) -> Result<bool> {
        let Some(hub) = self.shared.mcp.clone() else {
            return Ok(true);
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let own_token = json!(format!("lattice-{}", ctx.facts.request_id));
        let mut resp = ResponseHeader::build(200, Some(5))?;
        resp.insert_header("content-type", "text/event-stream")?;
        resp.insert_header("cache-control", "no-cache")?;
        resp.insert_header("transfer-encoding", "chunked")?;
        resp.insert_header("x-request-id", ctx.facts.request_id.as_str())?;
        if let Some(sid) = &ctx.mcp_session_id {
            resp.insert_header("mcp-session-id", sid.as_str())?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        let event = |message: &Value| Bytes::from(format!("event: message\ndata: {message}\n\n"));
        let call = hub.call_with_progress(entry, arguments, own_token, tx);
        tokio::pin!(call);
        let result = loop {
            tokio::select! {
                r = &mut call => break r,
                Some(n) = rx.recv() => {
                    if let Some(m) = downstream(&n, token.as_ref(), min_rank) {
                        session.write_response_body(Some(event(&m)), false).await?;
                    }
                }
            }
        };
        while let Ok(n) = rx.try_recv() {
            if let Some(m) = downstream(&n, token.as_ref(), min_rank) {
                session.write_response_body(Some(event(&m)), false).await?;
            }
        }
        let reply = tool_reply(ctx, entry, &id, result);
        let reply = shaped(ctx, &reply).unwrap_or(reply);
        session
            .write_response_body(Some(event(&reply)), false)
            .await?;
        session.write_response_body(None, true).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::downstream;
    use serde_json::json;

    #[test]
    fn notifications_reach_the_caller_as_it_asked() {
        let progress = json!({"method": "notifications/progress", "params": {"progressToken": "lattice-x", "progress": 5}});
        let mine = json!("client-7");
        let out = downstream(&progress, Some(&mine), None).unwrap();
        assert_eq!(out["params"]["progressToken"], "client-7");
        // No token given: the upstream's progress is not the caller's business.
        assert_eq!(downstream(&progress, None, Some(0)), None);
        let log = |level: &str| json!({"method": "notifications/message", "params": {"level": level, "data": "x"}});
        let info = 1;
        assert!(downstream(&log("warning"), None, Some(info)).is_some());
        assert!(downstream(&log("info"), None, Some(info)).is_some());
        assert_eq!(downstream(&log("debug"), None, Some(info)), None);
        // No level set: no logs. An unknown level: dropped.
        assert_eq!(downstream(&log("error"), Some(&mine), None), None);
        assert_eq!(downstream(&log("loud"), None, Some(0)), None);
        assert_eq!(
            downstream(
                &json!({"method": "notifications/other"}),
                Some(&mine),
                Some(0)
            ),
            None
        );
    }
}
