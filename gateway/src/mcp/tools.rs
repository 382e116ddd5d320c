//! Tools at the MCP door: `tools/list` shows only the tools the principal
//! may call; `tools/call` resolves the federated name (step 3), authorizes
//! `call_tool` (step 5, before anything about the arguments is revealed),
//! validates the arguments against the tool's `inputSchema` (step 4: a
//! violation is an `isError` result never forwarded), authorizes again
//! with the arguments as `context.input`, applies limits (6), records the
//! decision (7) and forwards (8, through `relay`), checking the result
//! (9, `results`).
//!
//! A tool that does not exist, a quarantined one and one the principal may
//! not call are answered identically (`-32602 Unknown tool`); the audit
//! tells them apart.
//!
//! Must never: forward arguments that failed the schema or the policy.

use lattice_mcp::jsonrpc;
use lattice_mcp::tools::split_federated;
use lattice_policy::{Action, AuthzRequest, ContextValue, Principal, RequestContext, Resource};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};
use std::sync::Arc;

use super::results::{hash, tool_reply};
use crate::call::Call;
use crate::config::ToolOverride;
use crate::limits::CallKind;
use crate::mcp_hub::ToolEntry;
use crate::runtime::{Runtime, Shared};

/// The tool as policies see it: the server's annotations (with the MCP
/// specification's defaults) and labels, then the operator's word from
/// `[mcp_servers.tools.<tool>]`, which wins.
fn tool_resource(runtime: &Runtime, entry: &ToolEntry, name: &str) -> Resource {
    let hints = lattice_mcp::tools::ToolHints::of(&entry.definition);
    static NONE: ToolOverride = ToolOverride {
        labels: Vec::new(),
        risk: None,
        read_only: None,
        destructive: None,
        idempotent: None,
        open_world: None,
    };
    let operator = runtime
        .config
        .mcp_servers
        .iter()
        .find(|s| s.name == entry.server)
        .and_then(|s| s.tools.get(&entry.tool))
        .unwrap_or(&NONE);
    let risk = operator.risk.clone().unwrap_or_else(|| {
        entry
            .server_labels
            .iter()
            .find_map(|l| l.strip_prefix("risk:"))
            .unwrap_or("unknown")
            .to_string()
    });
    let mut labels = entry.server_labels.clone();
    labels.extend(operator.labels.iter().cloned());
    Resource::Tool {
        id: name.to_string(),
        server: entry.server.clone(),
        risk,
        labels,
        read_only: operator.read_only.unwrap_or(hints.read_only),
        destructive: operator.destructive.unwrap_or(hints.destructive),
        idempotent: operator.idempotent.unwrap_or(hints.idempotent),
        open_world: operator.open_world.unwrap_or(hints.open_world),
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
        resource: tool_resource(runtime, entry, name),
        context,
    })
}

pub(super) async fn list_tools(
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
pub(super) async fn call_tool(
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
    // 3. Resolve the tool.
    if !crate::respond::step(node, session, ctx, runtime, 3).await? {
        return Ok(true);
    }
    let entry = split_federated(&name).and_then(|_| node.mcp.as_ref()?.tools().get(&name).cloned());
    let Some(entry) = entry else {
        let event = ctx.facts.refusal_event(200, "no such tool", None);
        let reply = unknown_tool(&id, &name, &event.event_id);
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
        let reply = unknown_tool(&id, &name, &event.event_id);
        return crate::respond::jsonrpc_refusal_event(
            node, session, ctx, runtime, event, 200, reply,
        )
        .await;
    }
    authorize_call(
        node, session, ctx, runtime, principal, id, params, name, arguments, entry,
    )
    .await
}

/// The answer for a tool that does not exist, is quarantined, or may not be
/// called: all alike.
fn unknown_tool(id: &Value, name: &str, decision_id: &str) -> Value {
    jsonrpc::error_response(
        id,
        jsonrpc::INVALID_PARAMS,
        &format!("Unknown tool: {name}"),
        Some(json!({"decision_id": decision_id})),
    )
}

/// Steps 5, 4 and 5 again for a resolved tool: may the principal call it,
/// are the arguments valid, may it call it with them.
#[allow(clippy::too_many_arguments)] // one call's parts
async fn authorize_call(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    params: Value,
    name: String,
    arguments: Value,
    entry: Arc<ToolEntry>,
) -> Result<bool> {
    // 5. Authorize (before validating: a tool the principal may not call
    //    reveals nothing, not even its schema's complaints).
    if !crate::respond::step(node, session, ctx, runtime, 5).await? {
        return Ok(true);
    }
    let ip = ctx.facts.client_addr_ip();
    let visible = authorize_tool(runtime, principal, &entry, &name, &ip, None);
    node.metrics.decision(visible.live.outcome);
    if !visible.live.is_allow() {
        let event = ctx
            .facts
            .refusal_event(200, "denied by policy", Some(&visible));
        let reply = unknown_tool(&id, &name, &event.event_id);
        return crate::respond::jsonrpc_refusal_event(
            node, session, ctx, runtime, event, 200, reply,
        )
        .await;
    }
    // 4. Validate the arguments: a violation is a tool error, never forwarded.
    if !crate::respond::step(node, session, ctx, runtime, 4).await? {
        return Ok(true);
    }
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
    if !crate::respond::step(node, session, ctx, runtime, 5).await? {
        return Ok(true);
    }
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
    forward_call(
        node, session, ctx, runtime, principal, id, params, arguments, entry, evaluation,
    )
    .await
}

/// Steps 6 to 9 for an authorized tool call: limits, the decision
/// recorded, forwarded (streamed when the caller takes a stream and asked
/// for progress or logs), the result checked.
#[allow(clippy::too_many_arguments)] // one call's parts
async fn forward_call(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    params: Value,
    arguments: Value,
    entry: Arc<ToolEntry>,
    evaluation: lattice_policy::Evaluation,
) -> Result<bool> {
    // 6. Rate limits.
    if !crate::respond::step(node, session, ctx, runtime, 6).await? {
        return Ok(true);
    }
    let limits = &runtime.config.llm.limits;
    if let Err((r, reason)) = crate::call::admit(node, limits, principal, CallKind::Mcp).await {
        return crate::respond::refusal(node, session, ctx, runtime, r, &reason).await;
    }
    // 7. Record the decision (`Call::allow` enters the step).
    let mut event = ctx.facts.allow_event(&evaluation);
    event.schema_result = Some("valid".into());
    if !crate::respond::allowed(node, session, ctx, runtime, event).await? {
        return Ok(true);
    }
    // 8. Forward.
    if !crate::respond::step(node, session, ctx, runtime, 8).await? {
        return Ok(true);
    }
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
