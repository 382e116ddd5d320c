//! The downstream MCP endpoint, `POST /mcp`: one JSON-RPC message per
//! request, answered with `application/json` (the streamable-HTTP transport
//! without sessions or server-sent events). Every message walks the
//! enforcement path: bounded body, authentication, JSON-RPC parsing, then
//! per method — `tools/list` shows only the tools the principal may call,
//! and `tools/call` resolves the federated name, validates the arguments
//! against the tool's `inputSchema` (a violation is an `isError` result that
//! never reaches the upstream), authorizes `call_tool`, records the decision,
//! forwards and records the outcome with argument and result hashes.
//!
//! A tool that does not exist and a tool the principal may not call are
//! answered identically (`-32602 Unknown tool`); the audit tells them apart.

use bytes::Bytes;
use lattice_mcp::jsonrpc::{self, Message};
use lattice_mcp::tools::split_federated;
use lattice_policy::{Action, AuthzRequest, ContextValue, Principal, RequestContext, Resource};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use super::catalog::Listing;
use super::results::{hash, tool_reply};
use crate::call::Call;
use crate::error::Rejection;
use crate::limits::CallKind;
use crate::mcp_hub::ToolEntry;
use crate::runtime::{Runtime, Shared};
use lattice_mcp::session::EraHeaders;

/// Protocol versions with `initialize`, preferred first (the stateless
/// 2026-07-28 is served too: `mcp_session.rs`).
pub const VERSIONS: [&str; 4] = lattice_mcp::session::SESSION_VERSIONS;

/// What the endpoint serves: list changes are announced on a session's GET
/// stream (tools from the gateway's own view; prompts and resources as the
/// servers announce them); no resource subscriptions.
static CAPABILITIES: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    json!({
        "tools": {"listChanged": true},
        "prompts": {"listChanged": true},
        "resources": {"subscribe": true, "listChanged": true},
        "completions": {},
        "logging": {},
    })
});

fn tool_resource(entry: &ToolEntry, name: &str) -> Resource {
    let hint = |k: &str| {
        entry.definition["annotations"][k]
            .as_bool()
            .unwrap_or(false)
    };
    let risk = entry
        .server_labels
        .iter()
        .find_map(|l| l.strip_prefix("risk:"))
        .unwrap_or("unknown")
        .to_string();
    Resource::Tool {
        id: name.to_string(),
        server: entry.server.clone(),
        risk,
        labels: entry.server_labels.clone(),
        read_only: hint("readOnlyHint"),
        destructive: hint("destructiveHint"),
    }
}

/// The endpoint's public URL: configured, or from the request's `Host`.
fn resource_url(session: &Session, runtime: &Runtime) -> String {
    if let Some(url) = &runtime.config.mcp.resource_url {
        return url.clone();
    }
    let host = session
        .req_header()
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}/mcp")
}

/// RFC 9728 §3.1: `<scheme>://<authority>/.well-known/oauth-protected-resource<path>`.
pub fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("http", resource));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    format!(
        "{scheme}://{authority}/.well-known/oauth-protected-resource{}",
        path.trim_end_matches('/')
    )
}

/// RFC 9728 protected-resource metadata for the MCP endpoint.
pub fn protected_resource_metadata(session: &Session, runtime: &Runtime) -> Value {
    json!({
        "resource": resource_url(session, runtime),
        "authorization_servers": runtime.jwt.issuers.iter().map(|i| i.config.issuer.clone()).collect::<Vec<_>>(),
        "bearer_methods_supported": ["header"],
        "resource_name": "Lattice MCP gateway",
    })
}

/// Answers `POST /mcp`. Returns Ok(true): the response is written.
pub async fn serve(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
) -> Result<bool> {
    ctx.facts.kind = "mcp.request";
    // `/mcp/<server>`: one server's tools under their own names.
    let scope = ctx
        .facts
        .target
        .strip_prefix("/mcp/")
        .map(|s| s.trim_end_matches('/').to_string());
    ctx.facts.target = "mcp".into();
    if let Some(server) = &scope {
        let known = node
            .mcp
            .as_ref()
            .is_some_and(|hub| hub.tools().values().any(|t| &t.server == server))
            || runtime.config.mcp_servers.iter().any(|m| &m.name == server);
        if !known {
            return crate::respond::refusal(
                node,
                session,
                ctx,
                runtime,
                Rejection::NotFound,
                "no such MCP server",
            )
            .await;
        }
        ctx.mcp.scope = Some(server.clone());
    }
    let url = resource_url(session, runtime);
    ctx.mcp.resource_metadata = Some(metadata_url(&url));
    // DNS rebinding: a browser origin must be listed.
    let origin = session
        .req_header()
        .headers
        .get("origin")
        .map(|o| o.to_str().unwrap_or("").to_string());
    if let Some(origin) = origin {
        if !runtime.config.mcp.allowed_origins.contains(&origin) {
            let reason = format!("origin `{origin}` is not allowed");
            return crate::respond::refusal(
                node,
                session,
                ctx,
                runtime,
                Rejection::OriginNotAllowed,
                &reason,
            )
            .await;
        }
    }
    let method = session.req_header().method.clone();
    if method != http::Method::POST && method != http::Method::DELETE && method != http::Method::GET
    {
        let r = Rejection::MethodNotAllowed;
        return crate::respond::refusal(
            node,
            session,
            ctx,
            runtime,
            r,
            "the MCP endpoint takes POST, GET and DELETE",
        )
        .await;
    }
    // 1 and 2. Bound and read the body (MCP routes on it), authenticate.
    let Some((body, principal)) =
        crate::intake::read_and_authenticate(node, session, ctx, runtime).await?
    else {
        return Ok(true);
    };
    let header = |n: &str| {
        session
            .req_header()
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let era_headers = EraHeaders {
        protocol_version: header("mcp-protocol-version"),
        method: header("mcp-method"),
        name: header("mcp-name"),
    };
    // A session of a stateful era must be one this gateway (or one
    // sharing its key) issued to this principal, and not ended.
    let claims = match header("mcp-session-id") {
        None => None,
        Some(token) => match node.mcp_sessions.verify(&token, &principal) {
            Some(c) => Some(c),
            None => {
                let reply =
                    jsonrpc::error_response(&Value::Null, -32001, "Session not found", None);
                return crate::respond::jsonrpc_refusal(
                    node,
                    session,
                    ctx,
                    runtime,
                    404,
                    "unknown, ended or foreign MCP session",
                    reply,
                )
                .await;
            }
        },
    };
    ctx.mcp.sid = claims.as_ref().map(|c| c.sid.clone());
    ctx.mcp.caps = claims.as_ref().map(|c| c.caps.clone()).unwrap_or_default();
    if method == http::Method::GET {
        ctx.facts.kind = "mcp.stream";
        if claims.is_none() {
            let r = Rejection::BadRequest("the GET stream needs an Mcp-Session-Id".into());
            return crate::respond::refusal(
                node,
                session,
                ctx,
                runtime,
                r,
                "GET without a session",
            )
            .await;
        }
        return serve_stream(node, session, ctx, runtime).await;
    }
    if method == http::Method::DELETE {
        ctx.facts.kind = "mcp.session_end";
        let Some(c) = claims else {
            let r = Rejection::BadRequest("DELETE needs an Mcp-Session-Id".into());
            return crate::respond::refusal(
                node,
                session,
                ctx,
                runtime,
                r,
                "DELETE without a session",
            )
            .await;
        };
        node.mcp_sessions.end(&c.sid);
        if let Some(hub) = &node.mcp {
            for (server, uri) in node.mcp_sessions.take_subscriptions(&c.sid) {
                hub.resource_unsubscribe(&server, &uri).await;
            }
        }
        return crate::respond::protocol(node, session, ctx, runtime, 204, None).await;
    }
    // 3. The message.
    let message = match jsonrpc::parse(&body, ctx.max_body as usize) {
        Ok(m) => m,
        Err(e) => {
            let code = match e {
                lattice_mcp::McpError::Parse(_) => jsonrpc::PARSE_ERROR,
                _ => jsonrpc::INVALID_REQUEST,
            };
            let reply = jsonrpc::error_response(&Value::Null, code, &e.to_string(), None);
            return crate::respond::jsonrpc_refusal(
                node,
                session,
                ctx,
                runtime,
                400,
                &format!("malformed JSON-RPC: {e}"),
                reply,
            )
            .await;
        }
    };
    let (id, method, params) = match message {
        Message::Request { id, method, params } => (id, method, params),
        Message::Notification { method, .. } => {
            ctx.facts.kind = "mcp.notification";
            ctx.facts.target = method;
            return crate::respond::protocol(node, session, ctx, runtime, 202, None).await;
        }
        Message::Response { id, outcome } => {
            // A client answering a request a server made during its call.
            ctx.facts.kind = "mcp.response";
            let answered = match (id.as_str(), &ctx.mcp.sid) {
                (Some(id), Some(sid)) => node.server_requests.complete(id, sid, outcome).await,
                _ => false,
            };
            if !answered {
                let reply = jsonrpc::error_response(
                    &id,
                    jsonrpc::INVALID_REQUEST,
                    "no request of this session waits for that answer",
                    None,
                );
                return crate::respond::jsonrpc_refusal(
                    node,
                    session,
                    ctx,
                    runtime,
                    400,
                    "an answer to no pending request",
                    reply,
                )
                .await;
            }
            return crate::respond::protocol(node, session, ctx, runtime, 202, None).await;
        }
    };
    ctx.facts.target.clone_from(&method);
    // The protocol era's own rules.
    if lattice_mcp::session::is_stateless(&method, &params, &era_headers) && method != "initialize"
    {
        if let Err((code, message)) =
            lattice_mcp::session::check_stateless(&method, &params, &era_headers)
        {
            let data = (code == lattice_mcp::session::UNSUPPORTED_PROTOCOL_VERSION)
                .then(|| json!({"supported": [lattice_mcp::session::STATELESS], "requested": lattice_mcp::session::meta_version(&params)}));
            let reply = jsonrpc::error_response(&id, code, &message, data);
            let reason = format!("stateless request refused: {message}");
            return crate::respond::jsonrpc_refusal(
                node, session, ctx, runtime, 400, &reason, reply,
            )
            .await;
        }
        ctx.mcp.stateless = true;
    } else if let Some(v) = &era_headers.protocol_version {
        if method != "initialize" && !VERSIONS.contains(&v.as_str()) {
            let message = format!("Unsupported MCP-Protocol-Version: {v}");
            let reply = jsonrpc::error_response(&id, jsonrpc::INVALID_REQUEST, &message, None);
            return crate::respond::jsonrpc_refusal(
                node, session, ctx, runtime, 400, &message, reply,
            )
            .await;
        }
    }
    match method.as_str() {
        "server/discover" => {
            ctx.facts.kind = "mcp.discover";
            let result = json!({
                "supportedVersions": std::iter::once(lattice_mcp::session::STATELESS).chain(VERSIONS).collect::<Vec<_>>(),
                "capabilities": CAPABILITIES.clone(),
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "lattice", "version": env!("CARGO_PKG_VERSION")}},
            });
            crate::respond::protocol(
                node,
                session,
                ctx,
                runtime,
                200,
                Some(jsonrpc::result_response(&id, result)),
            )
            .await
        }
        "initialize" => {
            ctx.facts.kind = "mcp.initialize";
            let asked = params["protocolVersion"].as_str().unwrap_or("");
            let version = VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&VERSIONS[0]);
            // The client's capabilities the gateway relays requests for.
            let caps = ["sampling", "elicitation", "roots"]
                .into_iter()
                .filter(|c| params["capabilities"].get(*c).is_some())
                .map(str::to_string)
                .collect();
            ctx.mcp.session_id = Some(node.mcp_sessions.issue_with(&principal, version, caps));
            let result = json!({
                "protocolVersion": version,
                "capabilities": CAPABILITIES.clone(),
                "serverInfo": {"name": "lattice", "version": env!("CARGO_PKG_VERSION")},
            });
            crate::respond::protocol(
                node,
                session,
                ctx,
                runtime,
                200,
                Some(jsonrpc::result_response(&id, result)),
            )
            .await
        }
        "ping" => {
            ctx.facts.kind = "mcp.ping";
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
        "tools/list" => list_tools(node, session, ctx, runtime, &principal, id).await,
        "logging/setLevel" => {
            super::relay::set_log_level(node, session, ctx, runtime, id, &params).await
        }
        "prompts/list" => {
            super::catalog::list_catalog(
                node,
                session,
                ctx,
                runtime,
                &principal,
                id,
                Listing::Prompts,
            )
            .await
        }
        "resources/list" => {
            super::catalog::list_catalog(
                node,
                session,
                ctx,
                runtime,
                &principal,
                id,
                Listing::Resources,
            )
            .await
        }
        "resources/templates/list" => {
            super::catalog::list_catalog(
                node,
                session,
                ctx,
                runtime,
                &principal,
                id,
                Listing::Templates,
            )
            .await
        }
        "completion/complete" => {
            super::catalog::complete(node, session, ctx, runtime, &principal, id, params).await
        }
        "prompts/get" => {
            super::catalog::get_catalog_item(
                node, session, ctx, runtime, &principal, id, params, true,
            )
            .await
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            let subscribe = method == "resources/subscribe";
            super::catalog::subscribe_resource(
                node, session, ctx, runtime, &principal, id, params, subscribe,
            )
            .await
        }
        "resources/read" => {
            super::catalog::get_catalog_item(
                node, session, ctx, runtime, &principal, id, params, false,
            )
            .await
        }
        "tools/call" => call_tool(node, session, ctx, runtime, &principal, id, params).await,
        other => {
            let reply = jsonrpc::error_response(
                &id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("method `{other}` is not supported"),
                None,
            );
            // The stateless era answers an unknown method with HTTP 404.
            let status = if ctx.mcp.stateless { 404 } else { 200 };
            crate::respond::jsonrpc_refusal(
                node,
                session,
                ctx,
                runtime,
                status,
                &format!("unsupported method `{other}`"),
                reply,
            )
            .await
        }
    }
}

/// `call_tool` on a tool; `input` is `context.input` (the validated
/// arguments; empty when only the tool's visibility is asked).
fn authorize_tool(
    runtime: &Runtime,
    principal: &Principal,
    entry: &ToolEntry,
    name: &str,
    ip: &str,
    input: Option<&Value>,
) -> lattice_policy::Evaluation {
    let mut context = RequestContext::new((lattice_audit::now_us() / 1_000_000) as i64, ip);
    if let Some(value) = input.and_then(ContextValue::from_json) {
        if matches!(value, ContextValue::Record(_)) {
            context = context.with_value("input", value);
        }
    }
    runtime.policy.evaluate(&AuthzRequest {
        principal: principal.clone(),
        action: Action::CallTool,
        resource: tool_resource(entry, name),
        context,
    })
}

async fn list_tools(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
) -> Result<bool> {
    ctx.facts.kind = "mcp.list_tools";
    ctx.facts.action = "list_tools".into();
    let ip = ctx.facts.client_addr_ip();
    let scope = ctx.mcp.scope.clone();
    let tools: Vec<Value> = match &node.mcp {
        Some(hub) => hub
            .tools()
            .iter()
            .filter(|(_, entry)| scope.as_ref().is_none_or(|s| &entry.server == s))
            .filter(|(name, entry)| {
                hub.visible(entry)
                    && authorize_tool(runtime, principal, entry, name, &ip, None)
                        .live
                        .is_allow()
            })
            .map(|(_, entry)| {
                let mut d = entry.definition.clone();
                if scope.is_some() {
                    d["name"] = json!(entry.tool);
                }
                d
            })
            .collect(),
        None => Vec::new(),
    };
    let total = node.mcp.as_ref().map_or(0, |h| h.tools().len());
    let reason = format!("{} of {total} tools visible", tools.len());
    crate::respond::listing(
        node,
        session,
        ctx,
        runtime,
        &reason,
        id,
        json!({"tools": tools}),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn call_tool(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    params: Value,
) -> Result<bool> {
    ctx.facts.kind = "mcp.call_tool";
    ctx.facts.action = "call_tool".into();
    let asked = params["name"].as_str().unwrap_or("");
    // Policies and the audit always see the federated name.
    let name = match &ctx.mcp.scope {
        Some(server) => lattice_mcp::tools::federated_name(server, asked),
        None => asked.to_string(),
    };
    let arguments = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));
    ctx.facts.target.clone_from(&name);
    ctx.facts.args_hash = Some(hash(&arguments));
    let unknown = |decision_id: &str| {
        jsonrpc::error_response(
            &id,
            jsonrpc::INVALID_PARAMS,
            &format!("Unknown tool: {name}"),
            Some(json!({"decision_id": decision_id})),
        )
    };
    // 3. Resolve the tool.
    let entry = split_federated(&name).and_then(|_| node.mcp.as_ref()?.tools().get(&name).cloned());
    let Some(entry) = entry else {
        let event = ctx.facts.refusal_event(200, "no such tool", None);
        let reply = unknown(&event.event_id);
        return crate::respond::jsonrpc_refusal_event(
            node, session, ctx, runtime, event, 200, reply,
        )
        .await;
    };
    ctx.facts.upstream = Some(entry.server.clone());
    if !node.mcp.as_ref().is_some_and(|hub| hub.visible(&entry)) {
        let event = ctx.facts.refusal_event(
            200,
            "quarantined: the tool's definition changed and awaits approval",
            None,
        );
        let reply = unknown(&event.event_id);
        return crate::respond::jsonrpc_refusal_event(
            node, session, ctx, runtime, event, 200, reply,
        )
        .await;
    }
    // 5. Authorize (before validating: a tool the principal may not call
    //    reveals nothing, not even its schema's complaints).
    let ip = ctx.facts.client_addr_ip();
    let visible = authorize_tool(runtime, principal, &entry, &name, &ip, None);
    node.metrics.decision(visible.live.outcome);
    if !visible.live.is_allow() {
        let event = ctx
            .facts
            .refusal_event(200, "denied by policy", Some(&visible));
        let reply = unknown(&event.event_id);
        return crate::respond::jsonrpc_refusal_event(
            node, session, ctx, runtime, event, 200, reply,
        )
        .await;
    }
    // 4. Validate the arguments: a violation is a tool error, never forwarded.
    if let Some(schema) = &entry.schema {
        if let Err(errors) = schema.check(&arguments) {
            let text = format!("Invalid arguments for {name}: {}", errors.join("; "));
            let mut event = ctx.facts.refusal_event(
                200,
                "arguments violate the tool's inputSchema",
                Some(&visible),
            );
            event.decision = "deny".into();
            event.schema_result = Some(format!("invalid: {}", errors.join("; ")));
            let reply = jsonrpc::result_response(
                &id,
                json!({"content": [{"type": "text", "text": text}], "isError": true}),
            );
            return crate::respond::jsonrpc_refusal_event(
                node, session, ctx, runtime, event, 200, reply,
            )
            .await;
        }
    }
    // 5 again, with the validated arguments as `context.input`:
    // argument-level rules are ordinary policies. The tool is visible, so
    // a refusal here is a tool error naming the decision.
    let evaluation = authorize_tool(runtime, principal, &entry, &name, &ip, Some(&arguments));
    if !evaluation.live.is_allow() {
        let event = ctx.facts.refusal_event(
            200,
            "denied by policy for these arguments",
            Some(&evaluation),
        );
        let text = format!(
            "Denied by policy for these arguments (decision {}).",
            event.event_id
        );
        let reply = jsonrpc::result_response(
            &id,
            json!({"content": [{"type": "text", "text": text}], "isError": true}),
        );
        return crate::respond::jsonrpc_refusal_event(
            node, session, ctx, runtime, event, 200, reply,
        )
        .await;
    }
    // 6. Rate limits.
    let limits = &runtime.config.llm.limits;
    if let Err((r, reason)) = crate::call::admit(node, limits, principal, CallKind::Mcp).await {
        return crate::respond::refusal(node, session, ctx, runtime, r, &reason).await;
    }
    // 7. Record the decision.
    let mut event = ctx.facts.allow_event(&evaluation);
    event.schema_result = Some("valid".into());
    if !crate::respond::allowed(node, session, ctx, runtime, event).await? {
        return Ok(true);
    }
    // 8. Forward.
    let Some(hub) = &node.mcp else {
        return Ok(true);
    };
    // A caller that takes an event stream and asked for progress, or set
    // a log level, gets the upstream's notifications for this call as
    // they come.
    let token = params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .cloned();
    let log_level = ctx
        .mcp
        .sid
        .as_deref()
        .and_then(|sid| node.mcp_sessions.log_level(sid));
    let takes_stream = session
        .req_header()
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    // A client that can answer a server's requests gets the stream too.
    let wants = token.is_some() || log_level.is_some() || !ctx.mcp.caps.is_empty();
    if wants && takes_stream && hub.is_running(&entry.server) {
        return super::relay::relay_call(
            node, session, ctx, &entry, arguments, id, token, log_level,
        )
        .await;
    }
    let result = super::relay::call_unstreamed(node, ctx, &entry, arguments).await;
    let reply = tool_reply(ctx, &entry, &id, result);
    crate::respond::json(session, ctx, 200, &reply).await
}

/// The GET stream of a session: `notifications/tools/list_changed`
/// whenever the approved tools change (resumable with `Last-Event-ID`),
/// a comment every 15 s to keep intermediaries from closing it, until
/// the client goes away.
async fn serve_stream(
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
        format!("id: {digest:016x}\nevent: message\ndata: {n}\n\n")
    };
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("transfer-encoding", "chunked")?;
    resp.insert_header("x-request-id", ctx.facts.request_id.as_str())?;
    session.write_response_header(Box::new(resp), false).await?;
    if last_seen.is_some_and(|id| id != format!("{current:016x}")) {
        session
            .write_response_body(Some(Bytes::from(announce(current))), false)
            .await?;
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
                let mut out = String::new();
                for (moved, list) in [(now.0 != catalog_seen.0, "prompts"), (now.1 != catalog_seen.1, "resources")] {
                    if moved {
                        let n = json!({"jsonrpc": "2.0", "method": format!("notifications/{list}/list_changed")});
                        out.push_str(&format!("event: message\ndata: {n}\n\n"));
                    }
                }
                catalog_seen = now;
                out
            }
            update = updates.recv() => match update {
                Ok((server, uri)) => match node.mcp_sessions.subscribed_as(&sid, &server, &uri) {
                    Some(as_named) => {
                        let n = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": as_named}});
                        format!("event: message\ndata: {n}\n\n")
                    }
                    None => continue,
                },
                // Fell behind: some updates were lost; the client re-reads on the next.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            },
            _ = keepalive.tick() => ": keepalive\n\n".to_string(),
            _ = crate::intake::client_gone(session) => break,
        };
        if session
            .write_response_body(Some(Bytes::from(chunk)), false)
            .await
            .is_err()
        {
            break;
        }
    }
    ctx.failure = Some("stream closed".into());
    let _ = session.write_response_body(None, true).await;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::metadata_url;

    #[test]
    fn metadata_urls_follow_rfc_9728() {
        assert_eq!(
            metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8080/mcp/"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://gw.example.com"),
            "https://gw.example.com/.well-known/oauth-protected-resource"
        );
    }
}
