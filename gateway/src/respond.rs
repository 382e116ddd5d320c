//! Every answer the gateway itself writes to an agent: a refusal as HTTP
//! (`rejection`: the status, headers and body come from `error.rs`'s one
//! mapping — in OpenAI's error format on `/v1`, with the RFC 9728 metadata
//! URL on an MCP 401) and its JSON-RPC twin (`jsonrpc_refusal`: an MCP
//! error object under the status the refusal maps to), JSON and byte
//! bodies, and the combined steps "record the decision, else answer 503"
//! (`allowed`, `protocol`) that every door uses instead of writing them
//! out; and answers written as they come (`stream_open`, `stream_write`,
//! `sse_message`, `stream_end`: the MCP event streams and the LLM relay).
//! Doors decide what to say; only this module writes it.
//!
//! Must never: write an answer for a call whose decision should have been
//! recorded and was not (the 503 goes out instead), or forward anything.

use bytes::Bytes;
use lattice_audit::AuditEvent;
use lattice_mcp::jsonrpc;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::call::{Call, Door};
use crate::error::{McpRefusal, Rejection};
use crate::runtime::{Runtime, Shared};

/// Writes a refusal (its decision already recorded, or the 503 that says it
/// could not be).
pub async fn rejection(
    session: &mut Session,
    call: &mut Call,
    rejection: &Rejection,
) -> Result<()> {
    let body = if call.door == Door::Llm {
        rejection.openai_body(&call.facts.request_id)
    } else {
        rejection.body(&call.facts.request_id)
    };
    call.refused = Some(rejection.status());
    call.failure = Some(rejection.message());
    let mut resp = ResponseHeader::build(rejection.status(), Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", call.facts.request_id.as_str())?;
    for (name, mut value) in rejection.headers() {
        // MCP clients find the authorization metadata from the 401 (RFC 9728).
        if let (true, Some(url)) = (name == "www-authenticate", &call.mcp.resource_metadata) {
            value.push_str(&format!(", resource_metadata=\"{url}\""));
        }
        resp.insert_header(name, value)?;
    }
    if matches!(
        rejection,
        Rejection::BodyTooLarge { .. }
            | Rejection::HeadersTooLarge(_)
            | Rejection::UriTooLong { .. }
            | Rejection::RequestTimeout
            | Rejection::BadRequest(_)
    ) {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Records a refusal and writes it. Always Ok(true): the answer is written.
pub async fn refusal(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    r: Rejection,
    reason: &str,
) -> Result<bool> {
    let sent = match call.refuse(node, runtime, r, reason) {
        Err(sent) => sent,
        Ok(()) => Rejection::Internal("refusal not recorded".into()),
    };
    rejection(session, call, &sent).await?;
    Ok(true)
}

/// Enters enforcement step `number` of `STEPS` (`Call::enter`). Ok(true):
/// go on. Ok(false): the door broke the order (a bug); the refusal `enter`
/// recorded was answered.
pub async fn step(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    number: u8,
) -> Result<bool> {
    match call.enter(node, runtime, number) {
        Ok(()) => Ok(true),
        Err(r) => {
            rejection(session, call, &r).await?;
            Ok(false)
        }
    }
}

/// Records a refusal with its own decision event and writes it.
pub async fn refusal_event(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    r: Rejection,
    event: AuditEvent,
) -> Result<bool> {
    let sent = match call.refuse_with(node, runtime, r, event) {
        Err(sent) => sent,
        Ok(()) => Rejection::Internal("refusal not recorded".into()),
    };
    rejection(session, call, &sent).await?;
    Ok(true)
}

/// Step 7 for a door that answers itself: records the `allow` decision.
/// Ok(true): go on. Ok(false): it could not be recorded and the 503 was
/// written.
pub async fn allowed(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    event: AuditEvent,
) -> Result<bool> {
    match call.allow(node, runtime, event).await {
        Ok(()) => Ok(true),
        Err(r) => {
            rejection(session, call, &r).await?;
            Ok(false)
        }
    }
}

/// `allowed` for the `allow` event of a policy evaluation.
pub async fn allowed_by(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    evaluation: &lattice_policy::Evaluation,
) -> Result<bool> {
    let event = call.facts.allow_event(evaluation);
    allowed(node, session, call, runtime, event).await
}

/// Protocol messages (initialize, ping, notifications): no action to
/// authorize, recorded all the same; `reply` None answers with no body.
pub async fn protocol(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    status: u16,
    reply: Option<Value>,
) -> Result<bool> {
    let event = call
        .facts
        .protocol_event("protocol message: no action to authorize");
    if !allowed(node, session, call, runtime, event).await? {
        return Ok(true);
    }
    match reply {
        Some(v) => json(session, call, status, &v).await,
        None => {
            let resp = ResponseHeader::build(status, Some(2))?;
            session.write_response_header(Box::new(resp), true).await?;
            Ok(true)
        }
    }
}

/// The JSON-RPC twin of `refusal`: records the refusal (its status and
/// reason from `McpRefusal`'s one mapping) and answers its JSON-RPC error
/// to request `id`.
pub async fn jsonrpc_refusal(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    id: &Value,
    refusal: &McpRefusal,
) -> Result<bool> {
    let status = refusal.status();
    let event = call.facts.refusal_event(status, &refusal.reason(), None);
    let reply = refusal.reply(id);
    jsonrpc_refusal_event(node, session, call, runtime, event, status, reply).await
}

/// `jsonrpc_refusal` with a decision event of the door's own making (one
/// that names a policy evaluation, say).
pub async fn jsonrpc_refusal_event(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    event: AuditEvent,
    status: u16,
    reply: Value,
) -> Result<bool> {
    call.failure = Some(event.reason.clone());
    if let Err(r) = call.deny(node, runtime, event) {
        rejection(session, call, &r).await?;
        return Ok(true);
    }
    json(session, call, status, &reply).await
}

/// Answers an MCP list (tools, prompts, resources) after recording its
/// decision (`reason` says what the agent was shown).
pub async fn listing(
    node: &Shared,
    session: &mut Session,
    call: &mut Call,
    runtime: &Runtime,
    reason: &str,
    id: Value,
    mut result: Value,
) -> Result<bool> {
    let event = call.facts.protocol_event(reason);
    if !allowed(node, session, call, runtime, event).await? {
        return Ok(true);
    }
    if call.mcp.stateless {
        // What an agent may see depends on who it is: never share it.
        result["ttlMs"] = json!(0);
        result["cacheScope"] = json!("private");
    }
    json(session, call, 200, &jsonrpc::result_response(&id, result)).await
}

/// A stateless-era (2026-07-28) MCP result says it is complete.
pub fn shaped(call: &Call, body: &Value) -> Option<Value> {
    match body.get("result") {
        Some(Value::Object(r)) if call.mcp.stateless && !r.contains_key("resultType") => {
            let mut b = body.clone();
            b["result"]["resultType"] = json!("complete");
            Some(b)
        }
        _ => None,
    }
}

/// A JSON answer (an MCP answer carries the session id `initialize` issued).
pub async fn json(
    session: &mut Session,
    call: &mut Call,
    status: u16,
    body: &Value,
) -> Result<bool> {
    let reshaped = shaped(call, body);
    let body = reshaped.as_ref().unwrap_or(body);
    let body = Bytes::from(body.to_string());
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", call.facts.request_id.as_str())?;
    if let Some(sid) = &call.mcp.session_id {
        resp.insert_header("mcp-session-id", sid.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// A whole body of any type, with the door's own extra headers.
pub async fn bytes(
    session: &mut Session,
    call: &mut Call,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let request_id = Some(call.facts.request_id.as_str());
    whole(session, status, content_type, body, request_id, extra).await
}

/// A built-in endpoint's answer (health, metrics, metadata, the workbench's
/// files): no call, no audit.
pub async fn plain(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    whole(session, status, content_type, body.into(), None, extra).await
}

async fn whole(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    request_id: Option<&str>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    if let Some(id) = request_id {
        resp.insert_header("x-request-id", id)?;
    }
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Starts an answer written as it comes: the status, the content type, no
/// caching, chunked, the request id and an MCP session id `initialize`
/// issued.
pub async fn stream_open(
    session: &mut Session,
    call: &Call,
    status: u16,
    content_type: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("transfer-encoding", "chunked")?;
    resp.insert_header("x-request-id", call.facts.request_id.as_str())?;
    if let Some(sid) = &call.mcp.session_id {
        resp.insert_header("mcp-session-id", sid.as_str())?;
    }
    session.write_response_header(Box::new(resp), false).await
}

/// One chunk of a started stream.
pub async fn stream_write(session: &mut Session, chunk: Bytes) -> Result<()> {
    session.write_response_body(Some(chunk), false).await
}

/// Ends a started stream (the agent may be gone by now: nothing to report).
pub async fn stream_end(session: &mut Session) {
    let _ = session.write_response_body(None, true).await;
}

/// One JSON-RPC message as a server-sent event, with an event id if any.
pub fn sse_message(message: &Value, id: Option<&str>) -> Bytes {
    match id {
        Some(id) => Bytes::from(format!("id: {id}\nevent: message\ndata: {message}\n\n")),
        None => Bytes::from(format!("event: message\ndata: {message}\n\n")),
    }
}

/// One `data:` event (OpenAI's stream format).
pub fn sse_data(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}
