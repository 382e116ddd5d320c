//! Prompts and resources through the MCP endpoint: `prompts/list`,
//! `prompts/get`, `resources/list`, `resources/templates/list` and
//! `resources/read`, federated over every upstream that declares the
//! capability. On `/mcp` prompt names are `<server>__<prompt>` and resource
//! URIs `lattice+mcp://<server>/<encoded URI>` (`lattice_mcp::catalog`); on
//! `/mcp/<server>` both keep the server's own. Policy decides per server:
//! `get_prompt` and `read_resource` on the `McpServer`. A server the
//! principal may not use lists nothing, and its prompts and resources answer
//! exactly like missing ones (the audit tells them apart). A failing
//! upstream is left out of a listing and named in the audit; the others
//! still list.
//!
//! Must never: list or serve a server the principal may not use.

use lattice_mcp::catalog::{federated_template, federated_uri, split_uri};
use lattice_mcp::jsonrpc;
use lattice_mcp::tools::{federated_name, split_federated};
use lattice_mcp::McpError;
use lattice_policy::{Action, AuthzRequest, Evaluation, Principal, RequestContext, Resource};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use super::results::hash;
use crate::call::Call;
use crate::error::McpRefusal;
use crate::runtime::{Runtime, Shared};

/// A listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    Prompts,
    Resources,
    Templates,
}

impl Listing {
    fn method(self) -> &'static str {
        match self {
            Listing::Prompts => "prompts/list",
            Listing::Resources => "resources/list",
            Listing::Templates => "resources/templates/list",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Listing::Prompts => "prompts",
            Listing::Resources => "resources",
            Listing::Templates => "resourceTemplates",
        }
    }
    fn capability(self) -> &'static str {
        match self {
            Listing::Prompts => "prompts",
            Listing::Resources | Listing::Templates => "resources",
        }
    }
    fn action(self) -> Action {
        match self {
            Listing::Prompts => Action::GetPrompt,
            Listing::Resources | Listing::Templates => Action::ReadResource,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Listing::Prompts => "mcp.list_prompts",
            Listing::Resources => "mcp.list_resources",
            Listing::Templates => "mcp.list_resource_templates",
        }
    }
}

/// MCP's "resource not found".
const RESOURCE_NOT_FOUND: i64 = -32002;

fn upstream_error(id: &Value, e: &McpError) -> Value {
    let (code, message) = match e {
        McpError::UpstreamError { code, message, .. } => (*code, message.clone()),
        other => (
            jsonrpc::INTERNAL_ERROR,
            format!("the upstream failed: {other}"),
        ),
    };
    jsonrpc::error_response(id, code, &message, None)
}

fn authorize_server(
    runtime: &Runtime,
    principal: &Principal,
    action: Action,
    server: &str,
    labels: &[String],
    ip: &str,
) -> Evaluation {
    runtime.policy.evaluate(&AuthzRequest {
        principal: principal.clone(),
        action,
        resource: Resource::McpServer {
            id: server.to_string(),
            labels: labels.to_vec(),
        },
        context: RequestContext::new((lattice_audit::now_us() / 1_000_000) as i64, ip),
    })
}

/// The servers in scope the principal may use for `action`.
fn allowed_servers(
    node: &Shared,
    ctx: &Call,
    runtime: &Runtime,
    principal: &Principal,
    action: Action,
) -> (Vec<String>, usize) {
    let Some(hub) = &node.mcp else {
        return (Vec::new(), 0);
    };
    let ip = ctx.facts.client_addr_ip();
    let in_scope: Vec<(String, Vec<String>)> = hub
        .servers()
        .into_iter()
        .filter(|(name, _)| ctx.mcp.scope.as_ref().is_none_or(|s| s == name))
        .collect();
    let total = in_scope.len();
    let allowed = in_scope
        .into_iter()
        .filter(|(name, labels)| {
            authorize_server(runtime, principal, action, name, labels, &ip)
                .live
                .is_allow()
        })
        .map(|(name, _)| name)
        .collect();
    (allowed, total)
}

pub(crate) async fn list_catalog(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    listing: Listing,
) -> Result<bool> {
    ctx.facts.kind = listing.kind();
    ctx.facts.action = listing.action().as_str().into();
    let (allowed, total) = allowed_servers(node, ctx, runtime, principal, listing.action());
    let results = match &node.mcp {
        Some(hub) => {
            hub.list_each(
                &allowed,
                listing.method(),
                listing.key(),
                listing.capability(),
            )
            .await
        }
        None => Vec::new(),
    };
    let scoped = ctx.mcp.scope.is_some();
    let mut items = Vec::new();
    let mut failures = Vec::new();
    for (server, result) in results {
        match result {
            Ok(list) => {
                for mut item in list {
                    if !scoped {
                        rename(&mut item, listing, &server);
                    }
                    items.push(item);
                }
            }
            Err(e) => failures.push(format!("{server}: {e}")),
        }
    }
    let mut reason = format!("{} of {total} servers may be used", allowed.len());
    if !failures.is_empty() {
        reason.push_str(&format!("; left out: {}", failures.join("; ")));
    }
    crate::respond::listing(
        node,
        session,
        ctx,
        runtime,
        &reason,
        id,
        json!({ listing.key(): items }),
    )
    .await
}

/// Resolves the prompt (`prompt`) or resource a request names to (its
/// server, the server's own name for it) and authorizes `get_prompt` /
/// `read_resource` on that server. Policies and the audit see the
/// federated name. None: the refusal was recorded and answered — an
/// unknown and a forbidden target answer alike.
#[allow(clippy::too_many_arguments)]
async fn authorize_item(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: &Value,
    prompt: bool,
    asked: &str,
) -> Result<Option<(String, String, Evaluation)>> {
    let target = match (&ctx.mcp.scope, prompt) {
        (Some(s), _) => Some((s.clone(), asked.to_string())),
        (None, true) => split_federated(asked).map(|(s, n)| (s.to_string(), n.to_string())),
        (None, false) => split_uri(asked),
    };
    ctx.facts.target = match &target {
        Some((s, n)) if prompt => federated_name(s, n),
        Some((s, u)) => federated_uri(s, u),
        None => asked.to_string(),
    };
    let missing = |decision_id: &str| {
        let (code, message) = if prompt {
            (jsonrpc::INVALID_PARAMS, format!("Unknown prompt: {asked}"))
        } else {
            (RESOURCE_NOT_FOUND, format!("Resource not found: {asked}"))
        };
        jsonrpc::error_response(
            id,
            code,
            &message,
            Some(json!({"decision_id": decision_id})),
        )
    };
    let labels = target
        .as_ref()
        .and_then(|(s, _)| node.mcp.as_ref()?.labels(s));
    let (Some((server, original)), Some(labels)) = (target, labels) else {
        let event = ctx.facts.refusal_event(200, "no such server", None);
        let reply = missing(&event.event_id);
        crate::respond::jsonrpc_refusal_event(node, session, ctx, runtime, event, 200, reply)
            .await?;
        return Ok(None);
    };
    ctx.facts.upstream = Some(server.clone());
    let action = if prompt {
        Action::GetPrompt
    } else {
        Action::ReadResource
    };
    let ip = ctx.facts.client_addr_ip();
    let evaluation = authorize_server(runtime, principal, action, &server, &labels, &ip);
    node.metrics.decision(evaluation.live.outcome);
    if !evaluation.live.is_allow() {
        let event = ctx
            .facts
            .refusal_event(200, "denied by policy", Some(&evaluation));
        let reply = missing(&event.event_id);
        crate::respond::jsonrpc_refusal_event(node, session, ctx, runtime, event, 200, reply)
            .await?;
        return Ok(None);
    }
    Ok(Some((server, original, evaluation)))
}

/// `resources/subscribe` / `resources/unsubscribe`: authorized like
/// reading the resource; the session's GET stream then gets
/// `notifications/resources/updated` for it (under the URI the client
/// used). The gateway subscribes upstream once per resource, however
/// many sessions want it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn subscribe_resource(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    params: Value,
    subscribe: bool,
) -> Result<bool> {
    ctx.facts.kind = if subscribe {
        "mcp.subscribe_resource"
    } else {
        "mcp.unsubscribe_resource"
    };
    ctx.facts.action = Action::ReadResource.as_str().into();
    let asked = params["uri"].as_str().unwrap_or("").to_string();
    let Some(sid) = ctx.mcp.sid.clone() else {
        let message = "resource subscriptions need a session (initialize first, then send its Mcp-Session-Id)";
        let refusal = McpRefusal::NeedsSession(message.into());
        return crate::respond::jsonrpc_refusal(node, session, ctx, runtime, &id, &refusal).await;
    };
    let Some((server, original)) =
        admit_item(node, session, ctx, runtime, principal, &id, false, &asked).await?
    else {
        return Ok(true);
    };
    let Some(hub) = &node.mcp else {
        return Ok(true);
    };
    let sessions = &node.mcp_sessions;
    // Sessions that expired without a DELETE release theirs.
    for (server, uri) in sessions.expired_subscriptions() {
        hub.resource_unsubscribe(&server, &uri).await;
    }
    let outcome = if !subscribe {
        if sessions.remove_subscription(&sid, &server, &original) {
            hub.resource_unsubscribe(&server, &original).await;
        }
        Ok(())
    } else if sessions.subscribed_as(&sid, &server, &original).is_some() {
        Ok(())
    } else {
        match hub.resource_subscribe(&server, &original).await {
            Ok(()) => {
                sessions.add_subscription(&sid, &server, &original, &asked);
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let reply = match outcome {
        Ok(()) => jsonrpc::result_response(&id, json!({})),
        Err(e) => {
            ctx.failure = Some(format!("upstream_failed: {e}"));
            upstream_error(&id, &e)
        }
    };
    crate::respond::json(session, ctx, 200, &reply).await
}

/// `authorize_item`, then the allow decision recorded: (server, the
/// server's own name or URI), or None when a refusal was answered.
#[allow(clippy::too_many_arguments)]
async fn admit_item(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: &Value,
    prompt: bool,
    asked: &str,
) -> Result<Option<(String, String)>> {
    let Some((server, original, evaluation)) =
        authorize_item(node, session, ctx, runtime, principal, id, prompt, asked).await?
    else {
        return Ok(None);
    };
    if !crate::respond::allowed_by(node, session, ctx, runtime, &evaluation).await? {
        return Ok(None);
    }
    Ok(Some((server, original)))
}

/// `prompts/get` or `resources/read`: one named target on one server.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn get_catalog_item(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    params: Value,
    prompt: bool,
) -> Result<bool> {
    let (action, key, method) = if prompt {
        ctx.facts.kind = "mcp.get_prompt";
        (Action::GetPrompt, "name", "prompts/get")
    } else {
        ctx.facts.kind = "mcp.read_resource";
        (Action::ReadResource, "uri", "resources/read")
    };
    ctx.facts.action = action.as_str().into();
    let asked = params[key].as_str().unwrap_or("").to_string();
    let Some((server, original, evaluation)) =
        authorize_item(node, session, ctx, runtime, principal, &id, prompt, &asked).await?
    else {
        return Ok(true);
    };
    let limits = &runtime.config.llm.limits;
    if let Err((r, reason)) =
        crate::call::admit(node, limits, principal, crate::limits::CallKind::Mcp).await
    {
        return crate::respond::refusal(node, session, ctx, runtime, r, &reason).await;
    }
    if !crate::respond::allowed_by(node, session, ctx, runtime, &evaluation).await? {
        return Ok(true);
    }
    let Some(hub) = &node.mcp else {
        return Ok(true);
    };
    let mut forwarded = params.clone();
    forwarded[key] = json!(original);
    let reply = match hub.request(&server, method, forwarded).await {
        Ok(mut result) => {
            ctx.result_hash = Some(hash(&result));
            if ctx.mcp.scope.is_none() {
                if prompt {
                    rewrite_prompt_resources(&mut result, &server);
                } else {
                    lattice_mcp::catalog::rewrite_uris(&mut result, "contents", &|u| {
                        federated_uri(&server, u)
                    });
                }
            }
            jsonrpc::result_response(&id, result)
        }
        Err(e) => {
            ctx.failure = Some(format!("upstream_failed: {e}"));
            upstream_error(&id, &e)
        }
    };
    crate::respond::json(session, ctx, 200, &reply).await
}

/// `completion/complete`: suggestions for a prompt's or a resource
/// template's argument, from the server that owns the referenced prompt
/// or template, authorized like using it (`get_prompt` / `read_resource`).
pub(crate) async fn complete(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    id: Value,
    params: Value,
) -> Result<bool> {
    ctx.facts.kind = "mcp.complete";
    let prompt = params["ref"]["type"] == "ref/prompt";
    let (action, key) = if prompt {
        (Action::GetPrompt, "name")
    } else {
        (Action::ReadResource, "uri")
    };
    ctx.facts.action = action.as_str().into();
    let asked = params["ref"][key].as_str().unwrap_or("").to_string();
    let Some((server, original)) =
        admit_item(node, session, ctx, runtime, principal, &id, prompt, &asked).await?
    else {
        return Ok(true);
    };
    let Some(hub) = &node.mcp else {
        return Ok(true);
    };
    let mut forwarded = params.clone();
    forwarded["ref"][key] = json!(original);
    let reply = match hub.request(&server, "completion/complete", forwarded).await {
        Ok(result) => jsonrpc::result_response(&id, result),
        Err(e) => {
            ctx.failure = Some(format!("upstream_failed: {e}"));
            upstream_error(&id, &e)
        }
    };
    crate::respond::json(session, ctx, 200, &reply).await
}

/// Gives a listed item its federated name or URI.
fn rename(item: &mut Value, listing: Listing, server: &str) {
    let (key, f): (&str, &dyn Fn(&str) -> String) = match listing {
        Listing::Prompts => ("name", &|n| federated_name(server, n)),
        Listing::Resources => ("uri", &|u| federated_uri(server, u)),
        Listing::Templates => ("uriTemplate", &|t| federated_template(server, t)),
    };
    if let Some(v) = item.get(key).and_then(Value::as_str).map(f) {
        item[key] = Value::String(v);
    }
}

/// Embedded resources in a prompt's messages get federated URIs.
fn rewrite_prompt_resources(result: &mut Value, server: &str) {
    if let Some(messages) = result.get_mut("messages").and_then(Value::as_array_mut) {
        for m in messages {
            let content = &mut m["content"];
            if content["type"] == "resource" {
                if let Some(uri) = content["resource"]["uri"].as_str() {
                    content["resource"]["uri"] = Value::String(federated_uri(server, uri));
                }
            }
        }
    }
}
