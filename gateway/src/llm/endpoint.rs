//! The agent-facing OpenAI API: `POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings` and `GET /v1/models`. Every call walks
//! the enforcement path: bounded body, authentication, the OpenAI request
//! shape, the model route, policy (`chat` or `embed` on the Model, evaluated
//! once per backend with that backend's name and location in the context, so
//! a deployment constraint narrows the backends a principal may reach), rate
//! limits and token budgets, the decision recorded, then forwarded by the
//! inference router with a retry on another allowed backend only while no
//! byte has reached the agent. Usage read from the backend (asked for on
//! every stream, and removed from the stream when the agent did not ask) is
//! recorded on the outcome event and charged to the budgets.
//!
//! Errors are in OpenAI's format. A model that does not exist and a model the
//! principal may not use are answered identically (404 `model_not_found`);
//! the audit tells them apart.
//!
//! Must never: retry after the first byte, or send a backend the agent's
//! credentials.

use bytes::Bytes;
use lattice_inference_router::openai::{self, Endpoint, Usage};
use lattice_inference_router::{BackendState, InferenceError, Resolved, UsageFilter};
use lattice_policy::{Action, AuthzRequest, Evaluation, Principal, RequestContext, Resource};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::json;
use std::sync::Arc;

use crate::call::Call;
use crate::error::Rejection;
use crate::limits::CallKind;
use crate::runtime::{Runtime, Shared};

/// The most of a non-streamed backend answer the gateway holds.
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// At most this many backends are tried for one call.
const MAX_ATTEMPTS: usize = 3;

fn now_s() -> u64 {
    lattice_audit::now_us() / 1_000_000
}

use crate::intake::client_gone;

fn authorize(
    runtime: &Runtime,
    principal: &Principal,
    action: Action,
    resolved: &Resolved,
    backend: &BackendState,
    ip: &str,
) -> Evaluation {
    runtime.policy.evaluate(&AuthzRequest {
        principal: principal.clone(),
        action,
        resource: Resource::Model {
            id: resolved.route.name.clone(),
            labels: resolved.route.labels.clone(),
        },
        context: RequestContext::new(now_s() as i64, ip)
            .with("backend", backend.spec.name.clone())
            .with("backend_location", backend.spec.location.clone()),
    })
}

/// Answers `/v1/...`. Returns Ok(true): the response is written.
pub async fn serve(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
) -> Result<bool> {
    ctx.facts.kind = "llm.request";
    let path = ctx.facts.target.clone();
    let endpoint = Endpoint::from_path(&path);
    let method = session.req_header().method.clone();
    if endpoint.is_none() && path != "/v1/models" {
        return crate::respond::refusal(
            node,
            session,
            ctx,
            runtime,
            Rejection::NotFound,
            "no such API path",
        )
        .await;
    }
    let wanted = if endpoint.is_some() {
        http::Method::POST
    } else {
        http::Method::GET
    };
    if method != wanted {
        let reason = format!("{path} takes {wanted}");
        return crate::respond::refusal(
            node,
            session,
            ctx,
            runtime,
            Rejection::MethodNotAllowed,
            &reason,
        )
        .await;
    }
    // 1 and 2. Bound and read the body (routing depends on `model`), authenticate.
    let Some((body, principal)) =
        crate::intake::read_and_authenticate(node, session, ctx, runtime).await?
    else {
        return Ok(true);
    };
    let Some(endpoint) = endpoint else {
        return list_models(node, session, ctx, runtime, &principal).await;
    };
    ctx.facts.kind = endpoint.kind();
    let action = if endpoint.is_embedding() {
        Action::Embed
    } else {
        Action::Chat
    };
    ctx.facts.action = action.as_str().into();
    // 4. The request's shape (checked first: without a model name there
    //    is nothing to resolve).
    if !crate::respond::step(node, session, ctx, runtime, 4).await? {
        return Ok(true);
    }
    let prepared = match openai::check_request(endpoint, &body) {
        Ok(p) => p,
        Err(e) => {
            let param = match &e {
                InferenceError::BadRequest { param, .. } => param.clone(),
                _ => None,
            };
            let r = Rejection::InvalidRequest {
                message: e.to_string(),
                param,
            };
            let reason = format!("invalid request: {e}");
            return crate::respond::refusal(node, session, ctx, runtime, r, &reason).await;
        }
    };
    ctx.facts.target.clone_from(&prepared.model);
    let Some(admitted) =
        admit_call(node, session, ctx, runtime, &principal, action, &prepared).await?
    else {
        return Ok(true);
    };
    forward(node, session, ctx, runtime, &principal, &prepared, admitted).await
}

/// A call past step 7: its route, the allowed backends, the one to try first.
struct Admitted {
    resolved: Arc<Resolved>,
    candidates: Vec<Arc<BackendState>>,
    index: usize,
}

/// Steps 3, 5, 6 and 7: the model resolved, policy per backend (the allowed
/// ones are the candidates), limits, the first backend chosen and the
/// decision recorded. None: a refusal was recorded and answered.
async fn admit_call(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    action: Action,
    prepared: &openai::Prepared,
) -> Result<Option<Admitted>> {
    // 3. Resolve the model.
    if !crate::respond::step(node, session, ctx, runtime, 3).await? {
        return Ok(None);
    }
    let Some(resolved) = node.inference.resolve(&prepared.model) else {
        let r = Rejection::UnknownModel(prepared.model.clone());
        crate::respond::refusal(node, session, ctx, runtime, r, "no such model").await?;
        return Ok(None);
    };
    ctx.facts.target.clone_from(&resolved.route.name);
    // 5. Authorize, once per backend: the allowed ones are the candidates.
    if !crate::respond::step(node, session, ctx, runtime, 5).await? {
        return Ok(None);
    }
    let ip = ctx.facts.client_addr_ip();
    let mut allowed: Vec<(Arc<BackendState>, Evaluation)> = Vec::new();
    let mut first_denial: Option<Evaluation> = None;
    for b in &resolved.backends {
        let evaluation = authorize(runtime, principal, action, &resolved, b, &ip);
        if evaluation.shadow_disagrees() {
            node.metrics.shadow_disagreements.inc();
        }
        if evaluation.live.is_allow() {
            allowed.push((b.clone(), evaluation));
        } else if first_denial.is_none() {
            first_denial = Some(evaluation);
        }
    }
    if allowed.is_empty() {
        let evaluation = first_denial;
        if let Some(ev) = &evaluation {
            node.metrics.decision(ev.live.outcome);
        }
        let mut event = ctx.facts.refusal_event(
            404,
            "denied by policy on every backend of the model",
            evaluation.as_ref(),
        );
        if event.reason.is_empty() {
            event.reason = "denied by policy on every backend of the model".into();
        }
        crate::respond::refusal_event(
            node,
            session,
            ctx,
            runtime,
            Rejection::UnknownModel(prepared.model.clone()),
            event,
        )
        .await?;
        return Ok(None);
    }
    let candidates: Vec<Arc<BackendState>> = allowed.iter().map(|(b, _)| b.clone()).collect();
    // 6. Rate limits and budgets.
    if !crate::respond::step(node, session, ctx, runtime, 6).await? {
        return Ok(None);
    }
    let limits = &runtime.config.llm.limits;
    if let Err((r, reason)) = crate::call::admit(node, limits, principal, CallKind::Llm).await {
        crate::respond::refusal(node, session, ctx, runtime, r, &reason).await?;
        return Ok(None);
    }
    // Pick the first backend, then 7. record the decision.
    let strategy = resolved.route.strategy;
    let Some(index) = node.inference.choose(strategy, &candidates, &[]) else {
        crate::respond::refusal(
            node,
            session,
            ctx,
            runtime,
            Rejection::Internal("no candidate backend".into()),
            "no candidate backend",
        )
        .await?;
        return Ok(None);
    };
    node.metrics.decision(allowed[index].1.live.outcome);
    ctx.facts.upstream = Some(candidates[index].spec.name.clone());
    if !crate::respond::allowed_by(node, session, ctx, runtime, &allowed[index].1).await? {
        return Ok(None);
    }
    Ok(Some(Admitted {
        resolved,
        candidates,
        index,
    }))
}

/// Step 8: the first backend, then another allowed one only while no byte
/// has reached the agent; usage charged to the budgets after the answer.
async fn forward(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
    prepared: &openai::Prepared,
    admitted: Admitted,
) -> Result<bool> {
    let Admitted {
        resolved,
        candidates,
        mut index,
    } = admitted;
    let (endpoint, strategy) = (prepared.endpoint, resolved.route.strategy);
    // 8. Forward: another backend only while nothing reached the agent.
    if !crate::respond::step(node, session, ctx, runtime, 8).await? {
        return Ok(true);
    }
    let upstream_body = prepared.upstream_body(resolved.route.upstream_model());
    let headers = vec![
        ("traceparent", ctx.traceparent.clone()),
        ("x-request-id", ctx.facts.request_id.clone()),
    ];
    let mut tried = Vec::new();
    let mut last_failure: Option<InferenceError> = None;
    while tried.len() < MAX_ATTEMPTS {
        tried.push(index);
        let backend = candidates[index].clone();
        ctx.facts.upstream = Some(backend.spec.name.clone());
        let attempt = tokio::select! {
            r = node.inference.send(&backend, endpoint, upstream_body.clone(), headers.clone()) => r,
            _ = client_gone(session) => {
                ctx.failure = Some("client_closed: the agent went away before an answer".into());
                return Ok(true);
            }
        };
        let failure = match attempt {
            Ok(mut upstream) => {
                let outcome = if prepared.stream {
                    relay_stream(session, ctx, &mut upstream, prepared.strip_usage).await
                } else {
                    relay_whole(session, ctx, &mut upstream).await
                };
                match outcome {
                    Ok(Relayed::Done) => {
                        charge(node, runtime, principal, ctx).await;
                        return Ok(true);
                    }
                    Ok(Relayed::NothingSent(e)) => e,
                    Err(e) => {
                        charge(node, runtime, principal, ctx).await;
                        return Err(e);
                    }
                }
            }
            Err(InferenceError::Status { status, body, .. }) if status < 500 && status != 429 => {
                // The request's own fault: the agent sees the backend's answer.
                ctx.failure = Some(format!("backend answered {status}"));
                crate::respond::bytes(session, ctx, status, "application/json", body, &[]).await?;
                return Ok(true);
            }
            Err(e) => e,
        };
        tracing::warn!(request_id = %ctx.facts.request_id, backend = %backend.spec.name, error = %failure, "backend attempt failed before the first byte");
        last_failure = Some(failure);
        match node.inference.choose(strategy, &candidates, &tried) {
            Some(next) => index = next,
            None => break,
        }
    }
    let rejection = match &last_failure {
        Some(InferenceError::Timeout { .. }) => Rejection::UpstreamTimeout,
        Some(e) => Rejection::UpstreamFailed(e.to_string()),
        None => Rejection::UpstreamFailed("no backend tried".into()),
    };
    crate::respond::rejection(session, ctx, &rejection).await?;
    ctx.failure = Some(format!(
        "{}: {} backend(s) tried: {}",
        rejection.code(),
        tried.len(),
        last_failure.map(|e| e.to_string()).unwrap_or_default()
    ));
    Ok(true)
}

/// Charges the call's reported usage to the budgets (a call whose usage
/// never arrived, e.g. a stream cut short, charges nothing).
async fn charge(node: &Shared, runtime: &Runtime, principal: &Principal, ctx: &Call) {
    if let Some(u) = &ctx.llm.usage {
        let limits = &runtime.config.llm.limits;
        if let Err(cause) = node
            .limiter
            .charge(limits, principal, total(u), now_s())
            .await
        {
            tracing::error!(%cause, principal = %principal.id, tokens = total(u), "tokens could not be charged to the shared budgets");
        }
    }
}

async fn list_models(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
    principal: &Principal,
) -> Result<bool> {
    ctx.facts.kind = "llm.models";
    ctx.facts.target = "models".into();
    let ip = ctx.facts.client_addr_ip();
    let routes = node.inference.routes();
    let mut data = Vec::new();
    for r in &routes {
        let visible = r.backends.iter().any(|b| {
            [Action::Chat, Action::Embed]
                .into_iter()
                .any(|a| authorize(runtime, principal, a, r, b, &ip).live.is_allow())
        });
        if !visible {
            continue;
        }
        data.push(
            json!({"id": r.route.name, "object": "model", "created": 0, "owned_by": "lattice"}),
        );
        for alias in &r.route.aliases {
            data.push(json!({"id": alias, "object": "model", "created": 0, "owned_by": "lattice", "root": r.route.name}));
        }
    }
    let visible = data.iter().filter(|d| d.get("root").is_none()).count();
    let event = ctx
        .facts
        .protocol_event(&format!("{visible} of {} models visible", routes.len()));
    if !crate::respond::allowed(node, session, ctx, runtime, event).await? {
        return Ok(true);
    }
    let body = Bytes::from(json!({"object": "list", "data": data}).to_string());
    crate::respond::bytes(session, ctx, 200, "application/json", body, &[]).await?;
    Ok(true)
}

/// A non-streamed answer: held whole (a failure before its end may still
/// go to another backend), usage read, then written.
async fn relay_whole(
    session: &mut Session,
    ctx: &mut Call,
    upstream: &mut lattice_inference_router::UpstreamResponse,
) -> Result<Relayed> {
    let mut answer = Vec::new();
    loop {
        let next = tokio::select! {
            c = upstream.next_chunk() => c,
            _ = client_gone(session) => {
                ctx.failure = Some("client_closed: the agent went away before the answer".into());
                return Ok(Relayed::Done);
            }
        };
        match next {
            None => break,
            Some(Ok(c)) => {
                answer.extend_from_slice(&c);
                if answer.len() > MAX_ANSWER {
                    return Ok(Relayed::NothingSent(InferenceError::Backend {
                        backend: upstream.backend.spec.name.clone(),
                        message: format!("answer larger than {MAX_ANSWER} bytes"),
                    }));
                }
            }
            Some(Err(e)) => return Ok(Relayed::NothingSent(e)),
        }
    }
    ctx.llm.usage = openai::usage_in(&answer);
    let content_type = upstream.content_type.clone();
    crate::respond::bytes(
        session,
        ctx,
        upstream.status,
        &content_type,
        Bytes::from(answer),
        &[],
    )
    .await?;
    Ok(Relayed::Done)
}

/// A stream: the agent's response starts with the first chunk (a backend
/// that fails before it can still be replaced); then chunks pass through
/// the usage filter as they come.
async fn relay_stream(
    session: &mut Session,
    ctx: &mut Call,
    upstream: &mut lattice_inference_router::UpstreamResponse,
    strip_usage: bool,
) -> Result<Relayed> {
    let mut filter = UsageFilter::new(strip_usage);
    let mut started = false;
    loop {
        let next = tokio::select! {
            c = upstream.next_chunk() => c,
            _ = client_gone(session) => {
                // After `[DONE]` the agent has everything: closing is no failure.
                if !filter.done {
                    ctx.failure = Some("client_closed: the agent went away mid-stream; the backend request was cancelled".into());
                }
                break;
            }
        };
        let chunk = match next {
            Some(Ok(c)) => c,
            None if !started => {
                return Ok(Relayed::NothingSent(InferenceError::Backend {
                    backend: upstream.backend.spec.name.clone(),
                    message: "the stream ended before its first byte".into(),
                }))
            }
            Some(Err(e)) if !started => return Ok(Relayed::NothingSent(e)),
            None => {
                let rest = filter.finish();
                if !rest.is_empty() {
                    let _ = crate::respond::stream_write(session, rest).await;
                }
                if !filter.done {
                    ctx.failure = Some(
                        "stream_incomplete: the backend closed the stream without [DONE]".into(),
                    );
                }
                break;
            }
            Some(Err(e)) => {
                // Bytes already reached the agent: no retry; say why in-band.
                let event = crate::respond::sse_data(
                    &json!({"error": {"message": format!("the backend failed mid-stream: {e}"), "type": "server_error", "code": "upstream_failed", "request_id": ctx.facts.request_id}}),
                );
                crate::respond::stream_write(session, event).await?;
                ctx.failure = Some(format!("upstream_failed mid-stream: {e}"));
                break;
            }
        };
        let out = filter.push(&chunk);
        if !started {
            ctx.llm.ttft_us = Some(ctx.start.elapsed().as_micros() as u64);
            crate::respond::stream_open(session, ctx, upstream.status, &upstream.content_type)
                .await?;
            started = true;
        }
        if !out.is_empty()
            && crate::respond::stream_write(session, out).await.is_err()
            && !filter.done
        {
            ctx.failure = Some(
                "client_closed: the agent went away mid-stream; the backend request was cancelled"
                    .into(),
            );
            break;
        }
    }
    ctx.llm.usage = filter.usage;
    if let Some(e) = filter.error {
        ctx.failure
            .get_or_insert(format!("backend error event: {e}"));
    }
    let agent_gone = ctx
        .failure
        .as_deref()
        .is_some_and(|f| f.starts_with("client_closed"));
    if !agent_gone {
        crate::respond::stream_end(session).await;
    }
    Ok(Relayed::Done)
}

/// How a relay ended.
enum Relayed {
    /// The answer (or as much as could be) was written.
    Done,
    /// The backend failed before a byte reached the agent: another may try.
    NothingSent(InferenceError),
}

/// Tokens of a usage, prompt + completion.
pub fn total(u: &Usage) -> u64 {
    u.prompt_tokens + u.completion_tokens
}
