//! The MCP door's entry, `/mcp` and `/mcp/<server>`: the HTTP side of the
//! streamable-HTTP transport (scope, allowed origins, methods, steps 1 and
//! 2, the session a stateful era's `Mcp-Session-Id` names, GET streams and
//! DELETE), then each JSON-RPC message (`message`: parsing, answers to
//! server requests, the protocol era's rules) and its method (`dispatch`):
//! protocol messages are answered here, tools by `tools`, prompts,
//! resources and completions by `catalog`. Also the RFC 9728 metadata the
//! 401 points to.
//!
//! Must never: answer a method without recording its decision.

use lattice_mcp::jsonrpc::{self, Message};
use lattice_policy::Principal;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use super::catalog::Listing;
use crate::call::Call;
use crate::error::{McpRefusal, Rejection};
use crate::runtime::{Runtime, Shared};
use lattice_mcp::session::EraHeaders;

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
                let refusal = McpRefusal::SessionNotFound;
                return crate::respond::jsonrpc_refusal(
                    node,
                    session,
                    ctx,
                    runtime,
                    &Value::Null,
                    &refusal,
                )
                .await;
            }
        },
    };
    ctx.mcp.sid = claims.as_ref().map(|c| c.sid.clone());
    ctx.mcp.caps = claims.as_ref().map(|c| c.caps.clone()).unwrap_or_default();
    if method != http::Method::POST {
        return stream_or_end(node, session, ctx, runtime, &method, claims).await;
    }
    message(node, session, ctx, runtime, &body, principal, &era_headers).await
}

/// GET (a session's event stream) and DELETE (the session ends, its
/// resource subscriptions with it): both need a session.
async fn stream_or_end(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    method: &http::Method,
    claims: Option<lattice_mcp::session::SessionClaims>,
) -> Result<bool> {
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
        return super::stream::serve_stream(node, session, ctx, runtime).await;
    }
    ctx.facts.kind = "mcp.session_end";
    let Some(c) = claims else {
        let r = Rejection::BadRequest("DELETE needs an Mcp-Session-Id".into());
        return crate::respond::refusal(node, session, ctx, runtime, r, "DELETE without a session")
            .await;
    };
    node.mcp_sessions.end(&c.sid);
    if let Some(cluster) = &node.cluster {
        let ttl = runtime.config.mcp.session_ttl_seconds;
        let ended = crate::cluster::Revoked::Session(c.sid.clone());
        if let Err(cause) = cluster.revoke(&ended, ttl).await {
            tracing::error!(%cause, "an ended MCP session could not be shared: other replicas accept it until its tokens expire");
        }
    }
    if let Some(hub) = &node.mcp {
        for (server, uri) in node.mcp_sessions.take_subscriptions(&c.sid) {
            hub.resource_unsubscribe(&server, &uri).await;
        }
    }
    crate::respond::protocol(node, session, ctx, runtime, 204, None).await
}

/// Step 3 for one JSON-RPC message: parsed with bounds; a notification or
/// a client's answer to a server request is answered here; a request must
/// keep its protocol era's rules, then goes to `dispatch`.
async fn message(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    body: &[u8],
    principal: Principal,
    era_headers: &EraHeaders,
) -> Result<bool> {
    // 3. The message.
    if !crate::respond::step(node, session, ctx, runtime, 3).await? {
        return Ok(true);
    }
    let message = match jsonrpc::parse(body, ctx.max_body as usize) {
        Ok(m) => m,
        Err(e) => {
            let refusal = McpRefusal::Malformed {
                parse: matches!(e, lattice_mcp::McpError::Parse(_)),
                message: e.to_string(),
            };
            return crate::respond::jsonrpc_refusal(
                node,
                session,
                ctx,
                runtime,
                &Value::Null,
                &refusal,
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
                let refusal = McpRefusal::NoPendingRequest;
                return crate::respond::jsonrpc_refusal(node, session, ctx, runtime, &id, &refusal)
                    .await;
            }
            return crate::respond::protocol(node, session, ctx, runtime, 202, None).await;
        }
    };
    ctx.facts.target.clone_from(&method);
    // The protocol era's own rules.
    if lattice_mcp::session::is_stateless(&method, &params, era_headers) && method != "initialize" {
        if let Err((code, message)) =
            lattice_mcp::session::check_stateless(&method, &params, era_headers)
        {
            let data = (code == lattice_mcp::session::UNSUPPORTED_PROTOCOL_VERSION)
                .then(|| json!({"supported": [lattice_mcp::session::STATELESS], "requested": lattice_mcp::session::meta_version(&params)}));
            let refusal = McpRefusal::Stateless {
                code,
                message,
                data,
            };
            return crate::respond::jsonrpc_refusal(node, session, ctx, runtime, &id, &refusal)
                .await;
        }
        ctx.mcp.stateless = true;
    } else if let Some(v) = &era_headers.protocol_version {
        if method != "initialize" && !lattice_mcp::session::SESSION_VERSIONS.contains(&v.as_str()) {
            let refusal = McpRefusal::UnsupportedVersion(v.clone());
            return crate::respond::jsonrpc_refusal(node, session, ctx, runtime, &id, &refusal)
                .await;
        }
    }
    dispatch(node, session, ctx, runtime, principal, id, method, params).await
}

/// One request, by method.
#[allow(clippy::too_many_arguments)] // one call's parts
async fn dispatch(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: Principal,
    id: Value,
    method: String,
    params: Value,
) -> Result<bool> {
    match method.as_str() {
        "server/discover" | "initialize" | "ping" => {
            let result = protocol_result(node, ctx, &principal, &method, &params);
            let reply = jsonrpc::result_response(&id, result);
            crate::respond::protocol(node, session, ctx, runtime, 200, Some(reply)).await
        }
        "tools/list" => super::tools::list_tools(node, session, ctx, runtime, &principal, id).await,
        "logging/setLevel" => {
            super::relay::set_log_level(node, session, ctx, runtime, id, &params).await
        }
        "prompts/list"
        | "resources/list"
        | "resources/templates/list"
        | "completion/complete"
        | "prompts/get"
        | "resources/subscribe"
        | "resources/unsubscribe"
        | "resources/read" => {
            catalog(node, session, ctx, runtime, principal, id, method, params).await
        }
        "tools/call" => {
            super::tools::call_tool(node, session, ctx, runtime, &principal, id, params).await
        }
        other => {
            let refusal = McpRefusal::UnknownMethod {
                method: other.to_string(),
                stateless: ctx.mcp.stateless,
            };
            crate::respond::jsonrpc_refusal(node, session, ctx, runtime, &id, &refusal).await
        }
    }
}

/// The result of a protocol method the gateway answers itself
/// (`server/discover`, `initialize`, `ping`); `initialize` opens a session.
fn protocol_result(
    node: &Shared,
    ctx: &mut Call,
    principal: &Principal,
    method: &str,
    params: &Value,
) -> Value {
    let gateway_version = env!("CARGO_PKG_VERSION");
    match method {
        "server/discover" => {
            ctx.facts.kind = "mcp.discover";
            lattice_mcp::server::discover_result(gateway_version)
        }
        "initialize" => {
            ctx.facts.kind = "mcp.initialize";
            let asked = params["protocolVersion"].as_str().unwrap_or("");
            let version = lattice_mcp::server::negotiate(asked);
            // The client's capabilities the gateway relays requests for.
            let caps = lattice_mcp::server::relayable_capabilities(params);
            let token = node
                .mcp_sessions
                .issue_with(principal, version.as_str(), caps);
            ctx.mcp.session_id = Some(token);
            lattice_mcp::server::initialize_result(version, gateway_version)
        }
        _ => {
            ctx.facts.kind = "mcp.ping";
            json!({})
        }
    }
}

/// Prompts, resources and completions, federated by `catalog`.
#[allow(clippy::too_many_arguments)] // one call's parts
async fn catalog(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: Principal,
    id: Value,
    method: String,
    params: Value,
) -> Result<bool> {
    let listing = match method.as_str() {
        "prompts/list" => Some(Listing::Prompts),
        "resources/list" => Some(Listing::Resources),
        "resources/templates/list" => Some(Listing::Templates),
        _ => None,
    };
    if let Some(listing) = listing {
        return super::catalog::list_catalog(node, session, ctx, runtime, &principal, id, listing)
            .await;
    }
    match method.as_str() {
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
        _ => {
            super::catalog::get_catalog_item(
                node, session, ctx, runtime, &principal, id, params, false,
            )
            .await
        }
    }
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
