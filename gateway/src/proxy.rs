//! The Pingora glue, and only that: `Gateway` implements `ProxyHttp`,
//! answers the built-in endpoints (`/healthz`, `/readyz`, `/metrics`, the
//! RFC 9728 metadata: not audited), starts a `Call` for everything else,
//! dispatches it to its door (`mcp`, `llm`, `admin`, `ui`, else the HTTP
//! tool `route`), runs Pingora's hooks for route calls, and in `logging`
//! writes the one outcome event every decided call owes.
//!
//! Must never: decide or answer a call itself (doors and `respond` do), or
//! skip the outcome event of a call whose decision was recorded.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;

use crate::call::{Call, Door};
use crate::enforce::{self, CallFacts};
use crate::error::Rejection;
use crate::respond;
use crate::runtime::Shared;

/// The proxy service.
pub struct Gateway {
    pub shared: Arc<Shared>,
}

impl Gateway {
    async fn builtin(&self, session: &mut Session, path: &str) -> Result<bool> {
        if path.starts_with("/audit/v1/") {
            return crate::transparency::serve(&self.shared, session, path).await;
        }
        let (status, content_type, body) = match path {
            "/.well-known/oauth-protected-resource"
            | "/.well-known/oauth-protected-resource/mcp" => {
                let runtime = self.shared.runtime.load();
                let metadata = crate::mcp::protected_resource_metadata(session, &runtime);
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
                m.audit_pruned_before
                    .set(self.shared.audit.pruned_before() as i64);
                m.backends(&self.shared.inference.backends());
                (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    m.render(),
                )
            }
            _ => return Ok(false),
        };
        respond::plain(session, status, content_type, body, &[]).await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Call;

    fn new_ctx(&self) -> Call {
        Call::new(self.shared.startup.server.max_body_bytes)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Call) -> Result<bool> {
        crate::conn::head_read(session);
        let path = session.req_header().uri.path().to_string();
        if self.builtin(session, &path).await? {
            return Ok(true);
        }
        if path == "/ui" || path.starts_with("/ui/") {
            crate::ui::serve(session, &path).await?;
            return Ok(true);
        }
        let runtime = self.shared.runtime.load_full();
        // Body reads (the doors' and Pingora's while forwarding) wait at
        // most this long for the next bytes.
        session.set_read_timeout(Some(runtime.config.server.body_read_timeout));
        // An idle HTTP/1.1 connection is closed after this long (Pingora's
        // default keeps it forever; `Connection: close` is still honoured).
        if session.req_header().version == http::Version::HTTP_11 {
            session.set_keepalive(Some(runtime.config.server.keepalive_idle_timeout_s));
        }
        let req = session.req_header();
        let (trace_id, traceparent, trace_parent) =
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
        ctx.trace_parent = trace_parent;
        let node = &self.shared;
        if ctx.facts.target == "/mcp" || ctx.facts.target.starts_with("/mcp/") {
            ctx.door = Door::Mcp;
            return crate::mcp::serve(node, session, ctx, &runtime).await;
        }
        if ctx.facts.target.starts_with("/admin/") {
            ctx.door = Door::Admin;
            return crate::admin::serve(node, session, ctx, &runtime).await;
        }
        if ctx.facts.target.starts_with("/v1/") {
            ctx.door = Door::Llm;
            return crate::llm::serve(node, session, ctx, &runtime).await;
        }
        ctx.door = Door::Route;
        match crate::route::enforce(node, session, ctx, &runtime).await {
            Ok(()) => Ok(false),
            Err(rejection) => {
                respond::rejection(session, ctx, &rejection).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Call,
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

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Call) -> Result<Box<HttpPeer>> {
        crate::route::peer(&self.shared, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Call,
    ) -> Result<()> {
        crate::route::upstream_request(ctx, upstream)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Call,
    ) -> Result<()> {
        resp.insert_header("x-request-id", ctx.facts.request_id.as_str())?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Call,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Retrying a refused connection to the same upstream helps nobody.
        e.set_retry(false);
        e
    }

    /// A client that leaves is not an error of the gateway's: its call's
    /// outcome records it (499), the log does not cry ERROR.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Call, e: &Error) -> bool {
        client_left(e)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Call) -> FailToProxy {
        let rejection = match e.etype() {
            ErrorType::HTTPStatus(413) => Rejection::BodyTooLarge {
                limit: ctx.max_body,
            },
            ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => {
                Rejection::RequestTimeout
            }
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Rejection::UpstreamTimeout
            }
            _ if client_left(e) => Rejection::ClientClosed,
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
        if !written && respond::rejection(session, ctx, &rejection).await.is_err() {
            tracing::debug!("could not write the error response; the client is gone");
        }
        ctx.failure = Some(format!("{}: {e}", rejection.code()));
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Call) {
        crate::conn::request_done(session);
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
        crate::spans::export(&self.shared, ctx, status);
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
        if let Some(u) = &ctx.llm.usage {
            self.shared.metrics.tokens(&ctx.facts.target, u);
            event.tokens_in = Some(u.prompt_tokens);
            event.tokens_out = Some(u.completion_tokens);
        }
        event.ttft_us = ctx.llm.ttft_us;
        let recorded = match ctx.outcome_slot.take() {
            Some(slot) => slot.record(event),
            // The decision went unaudited (audit.on_full = allow): best effort.
            None => self.shared.audit.record(event),
        };
        match recorded {
            Ok(()) => self.shared.outages.outcome.log_clear(),
            Err(e) => self
                .shared
                .outages
                .outcome
                .log_hit(&e, "answered without their outcome event"),
        }
    }
}

/// The client closed or broke its connection (not a timeout: a client too
/// slow to send is refused with 408).
fn client_left(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}
