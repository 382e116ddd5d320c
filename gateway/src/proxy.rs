//! The Pingora glue: `Gateway` implements `ProxyHttp` and calls the steps of
//! `enforce.rs` in their order. Built-in endpoints (`/healthz`, `/readyz`,
//! `/metrics`) are answered before the enforcement path and not audited.
//! Every call that enters the path gets exactly one decision event and, when
//! that was recorded, exactly one outcome event.

use async_trait::async_trait;
use bytes::Bytes;
use lattice_audit::{AuditEvent, OutcomeSlot};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{OnFull, Route};
use crate::enforce::{self, CallFacts};
use crate::error::Rejection;
use crate::runtime::{Runtime, Shared};

/// The proxy service.
pub struct Gateway {
    pub shared: Arc<Shared>,
}

/// Per-request state.
pub struct Ctx {
    pub(crate) start: Instant,
    pub(crate) facts: CallFacts,
    pub(crate) traceparent: String,
    route: Option<Arc<Route>>,
    upstream_path: String,
    pub(crate) max_body: u64,
    body_seen: u64,
    /// Hash of an MCP tool result, for the outcome event.
    pub(crate) result_hash: Option<String>,
    /// The RFC 9728 metadata URL named in a 401 from `/mcp`.
    pub(crate) resource_metadata: Option<String>,
    /// True once the decision is settled (recorded, or let through
    /// unaudited under `audit.on_full = allow`): an outcome is then owed.
    decided: bool,
    /// The queue place reserved for the outcome event.
    outcome_slot: Option<OutcomeSlot>,
    /// The status of a refusal we answered ourselves.
    refused: Option<u16>,
    /// Why the call failed after the decision, for the outcome event.
    pub(crate) failure: Option<String>,
    /// `/mcp/<server>`: the one server this MCP request is scoped to.
    pub(crate) mcp_scope: Option<String>,
    /// A stateless-era (2026-07-28) MCP request.
    pub(crate) mcp_stateless: bool,
    /// The session id an MCP `initialize` answer carries.
    pub(crate) mcp_session_id: Option<String>,
    /// The id inside a valid `Mcp-Session-Id` the request came with.
    pub(crate) mcp_sid: Option<String>,
    /// The relayable capabilities that session's client declared.
    pub(crate) mcp_caps: Vec<String>,
    /// The `/v1` API: refusals in OpenAI's error format.
    pub(crate) openai: bool,
    /// Token usage a backend reported.
    pub(crate) usage: Option<lattice_inference_router::Usage>,
    /// Time to the first byte of a streamed answer.
    pub(crate) ttft_us: Option<u64>,
}

/// Resolves when the caller closes its connection (the request body having
/// been read); never otherwise.
pub(crate) async fn client_gone(session: &mut Session) {
    if session
        .as_downstream_mut()
        .read_body_or_idle(true)
        .await
        .is_err()
    {
        return;
    }
    std::future::pending::<()>().await;
}

fn unix_now() -> i64 {
    (lattice_audit::now_us() / 1_000_000) as i64
}

impl Gateway {
    /// Enqueues a decision event, reserving its outcome's place, honouring
    /// `audit.on_full`. Err means refuse (503).
    pub(crate) fn record_decision(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        event: AuditEvent,
    ) -> Result<(), Rejection> {
        match self.shared.audit.record_decision(event) {
            Ok(slot) => {
                ctx.outcome_slot = Some(slot);
                ctx.decided = true;
                Ok(())
            }
            Err(e) if runtime.config.audit.on_full == OnFull::Allow => {
                self.shared.metrics.audit_bypassed.inc();
                tracing::error!(error = %e, "audit pipeline cannot accept an event; letting the call through UNAUDITED (audit.on_full = allow)");
                ctx.decided = true;
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.audit_refused.inc();
                tracing::error!(error = %e, "audit pipeline cannot accept an event; refusing the call (fail closed)");
                Err(Rejection::AuditUnavailable)
            }
        }
    }

    /// Steps 1 to 7. Ok means forward; Err is the refusal to send.
    async fn enforce(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        runtime: &Runtime,
    ) -> Result<(), Rejection> {
        let req = session.req_header();
        let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());

        // 1. Bound the input.
        if let Err(r) = enforce::check_content_length(header("content-length"), ctx.max_body) {
            return self.refuse(ctx, runtime, r.clone(), &r.message());
        }
        // 2. Authenticate.
        let principal =
            match enforce::authenticate(header("authorization"), runtime, &self.shared.keys) {
                Ok(p) => p,
                Err(r) => {
                    let reason = format!("authentication failed: {}", r.message());
                    return self.refuse(ctx, runtime, r, &reason);
                }
            };
        ctx.facts.principal = Some(principal.clone());
        // 3. Resolve the target.
        let (route, rest) = match enforce::resolve_route(runtime, req.uri.path()) {
            Ok(x) => x,
            Err(r) => return self.refuse(ctx, runtime, r.clone(), &r.message()),
        };
        ctx.facts.target.clone_from(&route.name);
        ctx.facts.upstream = Some(route.upstream.authority());
        // 4. Request schema: HTTP routes carry none.
        // 5. Authorize.
        ctx.facts.action = "http_request".into();
        let authz = enforce::http_request(
            &principal,
            &route,
            req.method.as_str(),
            &rest,
            &ctx.facts.client_addr_ip(),
            unix_now(),
        );
        let evaluation = runtime.policy.evaluate(&authz);
        if evaluation.shadow_disagrees() {
            self.shared.metrics.shadow_disagreements.inc();
        }
        self.shared.metrics.decision(evaluation.live.outcome);
        if !evaluation.live.is_allow() {
            return self.forbid(ctx, runtime, &evaluation);
        }
        // 6. Rate limits.
        let limits = &runtime.config.llm.limits;
        if let Err((r, reason)) = self
            .admit(limits, &principal, crate::limits::CallKind::Http)
            .await
        {
            return self.refuse(ctx, runtime, r, &reason);
        }
        // 7. Record the decision.
        self.record_decision(ctx, runtime, ctx.facts.allow_event(&evaluation))?;
        ctx.facts.decision = "allow";
        ctx.route = Some(route.clone());
        ctx.upstream_path = match req.uri.query() {
            Some(q) => format!("{}{rest}?{q}", route.upstream.base_path),
            None => format!("{}{rest}", route.upstream.base_path),
        };
        Ok(())
    }

    /// Steps 1 and 2 for endpoints that route on the body: bounds and reads
    /// it whole, then authenticates. None: a refusal was recorded and sent.
    pub(crate) async fn read_and_authenticate(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        runtime: &Runtime,
    ) -> Result<Option<(Vec<u8>, lattice_policy::Principal)>> {
        let header = |n: &str| {
            session
                .req_header()
                .headers
                .get(n)
                .map(|v| v.as_bytes().to_vec())
        };
        let (content_length, authorization) = (header("content-length"), header("authorization"));
        if let Err(r) = enforce::check_content_length(content_length.as_deref(), ctx.max_body) {
            self.refuse_and_respond(session, ctx, runtime, r.clone(), &r.message())
                .await?;
            return Ok(None);
        }
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > ctx.max_body {
                let r = Rejection::BodyTooLarge {
                    limit: ctx.max_body,
                };
                self.refuse_and_respond(session, ctx, runtime, r.clone(), &r.message())
                    .await?;
                return Ok(None);
            }
        }
        match enforce::authenticate(authorization.as_deref(), runtime, &self.shared.keys) {
            Ok(p) => {
                ctx.facts.principal = Some(p.clone());
                Ok(Some((body, p)))
            }
            Err(r) => {
                let reason = format!("authentication failed: {}", r.message());
                self.refuse_and_respond(session, ctx, runtime, r, &reason)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Step 6: the limits that apply to this principal and kind of call.
    /// Err: the refusal (429) and the audit reason.
    pub(crate) async fn admit(
        &self,
        limits: &[crate::limits::LimitSpec],
        principal: &lattice_policy::Principal,
        kind: crate::limits::CallKind,
    ) -> Result<(), (Rejection, String)> {
        let now = lattice_audit::now_us() / 1_000_000;
        self.shared
            .limiter
            .admit(limits, principal, kind, now)
            .await
            .map_err(|e| {
                let reason = format!(
                    "limit `{}` reached ({}); retry after {} s",
                    e.limit, e.what, e.retry_after_s
                );
                let r = Rejection::RateLimited {
                    limit: e.limit,
                    what: e.what,
                    retry_after_s: e.retry_after_s,
                };
                (r, reason)
            })
    }

    pub(crate) fn refuse(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        rejection: Rejection,
        reason: &str,
    ) -> Result<(), Rejection> {
        let event = ctx.facts.refusal_event(rejection.status(), reason, None);
        self.refuse_with(ctx, runtime, rejection, event)
    }

    /// Step 5's refusal: 403 naming the decision event, which records the
    /// deciding policies.
    pub(crate) fn forbid(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        evaluation: &lattice_policy::Evaluation,
    ) -> Result<(), Rejection> {
        let event = ctx
            .facts
            .refusal_event(403, "denied by policy", Some(evaluation));
        let rejection = Rejection::Forbidden {
            decision_id: event.event_id.clone(),
        };
        self.refuse_with(ctx, runtime, rejection, event)
    }

    /// Records the decision event of a refusal; an outcome is then owed.
    pub(crate) fn refuse_with(
        &self,
        ctx: &mut Ctx,
        runtime: &Runtime,
        rejection: Rejection,
        event: AuditEvent,
    ) -> Result<(), Rejection> {
        self.record_decision(ctx, runtime, event)?;
        ctx.facts.decision = "deny";
        Err(rejection)
    }

    pub(crate) async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        rejection: &Rejection,
    ) -> Result<()> {
        let body = if ctx.openai {
            rejection.openai_body(&ctx.facts.request_id)
        } else {
            rejection.body(&ctx.facts.request_id)
        };
        ctx.refused = Some(rejection.status());
        ctx.failure = Some(rejection.message());
        let mut resp = ResponseHeader::build(rejection.status(), Some(4))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.facts.request_id.as_str())?;
        for (name, mut value) in rejection.headers() {
            // MCP clients find the authorization metadata from the 401 (RFC 9728).
            if let (true, Some(url)) = (name == "www-authenticate", &ctx.resource_metadata) {
                value.push_str(&format!(", resource_metadata=\"{url}\""));
            }
            resp.insert_header(name, value)?;
        }
        if matches!(
            rejection,
            Rejection::BodyTooLarge { .. } | Rejection::BadRequest(_)
        ) {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }

    async fn builtin(&self, session: &mut Session, path: &str) -> Result<bool> {
        let (status, content_type, body) = match path {
            "/.well-known/oauth-protected-resource"
            | "/.well-known/oauth-protected-resource/mcp" => {
                let runtime = self.shared.runtime.load();
                let metadata = crate::mcp_endpoint::protected_resource_metadata(session, &runtime);
                (200, "application/json", metadata.to_string())
            }
            "/healthz" => (200, "text/plain", "ok\n".to_string()),
            "/readyz" => {
                if self.shared.audit.healthy() {
                    (200, "text/plain", "ready\n".to_string())
                } else {
                    (
                        503,
                        "text/plain",
                        "audit pipeline unavailable\n".to_string(),
                    )
                }
            }
            "/metrics" => {
                let m = &self.shared.metrics;
                m.audit_queue_depth.set(self.shared.audit.depth() as i64);
                m.audit_events_written
                    .set(self.shared.audit.written() as i64);
                m.backends(&self.shared.inference.backends());
                (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    m.render(),
                )
            }
            _ => return Ok(false),
        };
        let mut resp = ResponseHeader::build(status, Some(2))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
    }
}

impl CallFacts {
    pub(crate) fn client_addr_ip(&self) -> String {
        self.client_addr
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "0.0.0.0".into())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            facts: CallFacts::default(),
            traceparent: String::new(),
            route: None,
            upstream_path: String::new(),
            max_body: self.shared.startup.server.max_body_bytes,
            body_seen: 0,
            result_hash: None,
            resource_metadata: None,
            decided: false,
            outcome_slot: None,
            refused: None,
            failure: None,
            mcp_scope: None,
            mcp_stateless: false,
            mcp_session_id: None,
            mcp_sid: None,
            mcp_caps: Vec::new(),
            openai: false,
            usage: None,
            ttft_us: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        if self.builtin(session, &path).await? {
            return Ok(true);
        }
        if path == "/ui" || path.starts_with("/ui/") {
            crate::ui::serve(session, &path).await?;
            return Ok(true);
        }
        let runtime = self.shared.runtime.load_full();
        let req = session.req_header();
        let (trace_id, traceparent) =
            enforce::trace_context(req.headers.get("traceparent").map(|v| v.as_bytes()));
        ctx.facts = CallFacts {
            request_id: uuid::Uuid::now_v7().to_string(),
            trace_id,
            kind: "http.request",
            target: path,
            client_addr: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.to_string())
                .unwrap_or_default(),
            user_agent: req
                .headers
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .chars()
                .take(256)
                .collect(),
            ..CallFacts::default()
        };
        ctx.traceparent = traceparent;
        if ctx.facts.target == "/mcp" || ctx.facts.target.starts_with("/mcp/") {
            return self.serve_mcp(session, ctx, &runtime).await;
        }
        if ctx.facts.target.starts_with("/admin/") {
            return self.serve_admin(session, ctx, &runtime).await;
        }
        if ctx.facts.target.starts_with("/v1/") {
            return self.serve_llm(session, ctx, &runtime).await;
        }
        match self.enforce(session, ctx, &runtime).await {
            Ok(()) => Ok(false),
            Err(rejection) => {
                self.respond(session, ctx, &rejection).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > ctx.max_body {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body exceeds the limit",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx.route.clone().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no route after enforcement")
        })?;
        let up = &route.upstream;
        let addr: SocketAddr = match up.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, up.port),
            Err(_) => tokio::net::lookup_host((up.host.as_str(), up.port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    Error::explain(
                        ErrorType::ConnectNoRoute,
                        format!("cannot resolve upstream host {}", up.host),
                    )
                })?,
        };
        let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
        peer.options.connection_timeout =
            Some(route.timeout.min(std::time::Duration::from_secs(10)));
        peer.options.total_connection_timeout = Some(route.timeout);
        peer.options.read_timeout = Some(route.timeout);
        peer.options.write_timeout = Some(route.timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let route = ctx.route.clone().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no route after enforcement")
        })?;
        let uri: http::Uri = ctx
            .upstream_path
            .parse()
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad upstream path"))?;
        upstream.set_uri(uri);
        // The agent's own credentials never travel upstream.
        upstream.remove_header("authorization");
        upstream.remove_header("proxy-authorization");
        upstream.remove_header("x-api-key");
        upstream.insert_header("host", route.upstream.authority())?;
        if let Some((name, value)) = &route.credential {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        upstream.insert_header("traceparent", ctx.traceparent.as_str())?;
        upstream.insert_header("x-request-id", ctx.facts.request_id.as_str())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.facts.request_id.as_str())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Retrying a refused connection to the same upstream helps nobody.
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let rejection = match e.etype() {
            ErrorType::HTTPStatus(413) => Rejection::BodyTooLarge {
                limit: ctx.max_body,
            },
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Rejection::UpstreamTimeout
            }
            _ => match e.esource() {
                ErrorSource::Upstream => Rejection::UpstreamFailed(e.to_string()),
                ErrorSource::Downstream => {
                    Rejection::BadRequest("the client connection failed".into())
                }
                ErrorSource::Internal | ErrorSource::Unset => Rejection::Internal(e.to_string()),
            },
        };
        let code = rejection.status();
        let written = session.response_written().is_some();
        if !written && self.respond(session, ctx, &rejection).await.is_err() {
            tracing::debug!("could not write the error response; the client is gone");
        }
        ctx.failure = Some(format!("{}: {e}", rejection.code()));
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.facts.request_id.is_empty() {
            return; // a built-in endpoint
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.refused)
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        self.shared.metrics.request(ctx.facts.kind, status);
        self.shared.metrics.latency.observe(elapsed.as_secs_f64());
        if !ctx.decided {
            return; // the decision itself could not be recorded: the caller got 503
        }
        let reason = match (&ctx.failure, e) {
            (Some(f), _) => f.clone(),
            (None, Some(err)) => err.to_string(),
            (None, None) => String::new(),
        };
        let mut event = ctx
            .facts
            .outcome_event(status, elapsed.as_micros() as u64, &reason);
        event.result_hash = ctx.result_hash.take();
        if let Some(u) = &ctx.usage {
            self.shared.metrics.tokens(&ctx.facts.target, u);
            event.tokens_in = Some(u.prompt_tokens);
            event.tokens_out = Some(u.completion_tokens);
        }
        event.ttft_us = ctx.ttft_us;
        let recorded = match ctx.outcome_slot.take() {
            Some(slot) => slot.record(event),
            // The decision went unaudited (audit.on_full = allow): best effort.
            None => self.shared.audit.record(event),
        };
        if let Err(e) = recorded {
            tracing::error!(request_id = %ctx.facts.request_id, error = %e, "the outcome event of a call could not be recorded");
        }
    }
}
