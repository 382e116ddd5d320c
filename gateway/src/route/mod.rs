//! The HTTP tool-route door (`[[routes]]`, e.g. `/tools/<name>/...`): the
//! enforcement path up to the decision, run before Pingora proxies the
//! call, and what Pingora needs to forward it — the peer to dial and the
//! upstream request head (the agent's credentials removed, the route's
//! injected). The body streams through Pingora, counted against the cap by
//! the proxy's body hook.
//!
//! Must never: forward a call whose decision is not recorded, or pass the
//! agent's `Authorization`, `Proxy-Authorization` or `X-Api-Key` upstream.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::call::{admit, Call, RouteTarget};
use crate::enforce;
use crate::error::Rejection;
use crate::limits::CallKind;
use crate::runtime::{Runtime, Shared};

fn unix_now() -> i64 {
    (lattice_audit::now_us() / 1_000_000) as i64
}

/// Steps 1 to 7. Ok means forward; Err is the refusal to send (its decision
/// recorded, or the 503 that says it could not be).
pub async fn enforce(
    node: &Shared,
    session: &Session,
    call: &mut Call,
    runtime: &Runtime,
) -> Result<(), Rejection> {
    let req = session.req_header();
    let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes());

    call.enter(node, runtime, 1)?;
    if let Err(r) = enforce::check_head(req, &runtime.config.server)
        .and_then(|()| enforce::check_content_length(header("content-length"), call.max_body))
    {
        return call.refuse(node, runtime, r.clone(), &r.message());
    }
    call.enter(node, runtime, 2)?;
    let peer = crate::identity::mtls::peer(session);
    let principal =
        match enforce::authenticate(header("authorization"), peer.as_ref(), runtime, &node.keys) {
            Ok(p) => p,
            Err(r) => {
                let reason = format!("authentication failed: {}", r.message());
                return call.refuse(node, runtime, r, &reason);
            }
        };
    call.facts.principal = Some(principal.clone());
    call.enter(node, runtime, 3)?;
    let (route, rest) = match enforce::resolve_route(runtime, req.uri.path()) {
        Ok(x) => x,
        Err(r) => return call.refuse(node, runtime, r.clone(), &r.message()),
    };
    call.facts.target.clone_from(&route.name);
    call.facts.upstream = Some(route.upstream.authority());
    // Step 4, the request schema: HTTP routes carry none.
    call.enter(node, runtime, 5)?;
    call.facts.action = "http_request".into();
    let authz = enforce::http_request(
        &principal,
        &route,
        req.method.as_str(),
        &rest,
        &call.facts.client_addr_ip(),
        unix_now(),
    );
    let evaluation = runtime.policy.evaluate(&authz);
    if evaluation.shadow_disagrees() {
        node.metrics.shadow_disagreements.inc();
    }
    node.metrics.decision(evaluation.live.outcome);
    if !evaluation.live.is_allow() {
        return call.forbid(node, runtime, &evaluation);
    }
    call.enter(node, runtime, 6)?;
    let limits = &runtime.config.llm.limits;
    if let Err((r, reason)) = admit(node, limits, &principal, CallKind::Http).await {
        return call.refuse(node, runtime, r, &reason);
    }
    call.allow(node, runtime, call.facts.allow_event(&evaluation))
        .await?;
    let upstream_path = match req.uri.query() {
        Some(q) => format!("{}{rest}?{q}", route.upstream.base_path),
        None => format!("{}{rest}", route.upstream.base_path),
    };
    call.route = Some(RouteTarget {
        route: Arc::clone(&route),
        upstream_path,
    });
    call.enter(node, runtime, 8)?;
    Ok(())
}

fn target(call: &Call) -> pingora::Result<&RouteTarget> {
    call.route
        .as_ref()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route after enforcement"))
}

/// Step 8: the peer to dial, with the route's timeouts.
pub async fn peer(node: &Shared, call: &Call) -> pingora::Result<Box<HttpPeer>> {
    let route = &target(call)?.route;
    let up = &route.upstream;
    // An address in the config file is the operator's own; a name goes
    // through the egress guard, and Pingora dials the address it checked.
    let addr: SocketAddr = match up.host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, up.port),
        Err(_) => {
            let checked = node.egress.resolve(&up.host, up.port).await;
            match checked.map(|a| a.into_iter().next()) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    return Err(Error::explain(
                        ErrorType::ConnectNoRoute,
                        format!("`{}` resolves to no address", up.host),
                    )
                    .into_up())
                }
                Err(reason) => {
                    tracing::warn!(route = %route.name, %reason, "no upstream address");
                    return Err(Error::explain(ErrorType::ConnectNoRoute, reason).into_up());
                }
            }
        }
    };
    let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
    peer.options.connection_timeout = Some(route.timeout.min(std::time::Duration::from_secs(10)));
    peer.options.total_connection_timeout = Some(route.timeout);
    peer.options.read_timeout = Some(route.timeout);
    peer.options.write_timeout = Some(route.timeout);
    Ok(Box::new(peer))
}

/// Step 8: the upstream request head. The agent's own credentials never
/// travel upstream; the route's credential is injected.
pub fn upstream_request(call: &Call, upstream: &mut RequestHeader) -> pingora::Result<()> {
    let target = target(call)?;
    let uri: http::Uri = target
        .upstream_path
        .parse()
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad upstream path"))?;
    upstream.set_uri(uri);
    upstream.remove_header("authorization");
    upstream.remove_header("proxy-authorization");
    upstream.remove_header("x-api-key");
    upstream.insert_header("host", target.route.upstream.authority())?;
    if let Some((name, value)) = &target.route.credential {
        upstream.insert_header(name.clone(), value.clone())?;
    }
    upstream.insert_header("traceparent", call.traceparent.as_str())?;
    upstream.insert_header("x-request-id", call.facts.request_id.as_str())?;
    Ok(())
}
