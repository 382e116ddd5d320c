//! The enforcement path as data and as pure functions. `STEPS` is the order
//! every call follows (ARCHITECTURE.md's chart is checked against it by a
//! test); the functions below do each step's work without a socket, so the
//! doors (`route`, `mcp`, `llm`, `admin`) run them in order, entering each
//! by its number (`Call::enter`).
//!
//! Must never: do I/O, or turn an error into an allow.

use lattice_audit::{AuditEvent, Phase};
use lattice_policy::{Action, AuthzRequest, Evaluation, Principal, RequestContext, Resource};
use std::sync::Arc;

use crate::config::Route;
use crate::error::Rejection;
use crate::identity::mtls::PeerIdentity;
use crate::runtime::Runtime;
use crate::{identity::KeyCache, state::KEY_PREFIX};

/// One step of the enforcement path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub number: u8,
    pub name: &'static str,
    /// The crate that acts.
    pub owner: &'static str,
    /// What the caller gets when the step refuses.
    pub refusal: &'static str,
}

/// The order every call follows. Steps 4 (schema), 6 (rate limits) and 9
/// (response validation) have no work on HTTP routes yet; they are listed so
/// the order stays data as MCP and LLM traffic land.
pub const STEPS: [Step; 10] = [
    Step {
        number: 1,
        name: "bound the input",
        owner: "gateway",
        refusal: "413 / 400",
    },
    Step {
        number: 2,
        name: "authenticate",
        owner: "gateway",
        refusal: "401 + WWW-Authenticate",
    },
    Step {
        number: 3,
        name: "resolve the target",
        owner: "gateway",
        refusal: "404",
    },
    Step {
        number: 4,
        name: "validate the request schema",
        owner: "mcp / inference-router",
        refusal: "400 / isError",
    },
    Step {
        number: 5,
        name: "authorize",
        owner: "policy-engine",
        refusal: "403 naming the decision id",
    },
    Step {
        number: 6,
        name: "rate limits and budgets",
        owner: "gateway",
        refusal: "429 + Retry-After",
    },
    Step {
        number: 7,
        name: "record the decision",
        owner: "audit-sink",
        refusal: "503 (fail closed)",
    },
    Step {
        number: 8,
        name: "forward with injected credentials",
        owner: "gateway",
        refusal: "502 / 504",
    },
    Step {
        number: 9,
        name: "validate the response",
        owner: "mcp / inference-router",
        refusal: "error result",
    },
    Step {
        number: 10,
        name: "record the outcome",
        owner: "audit-sink",
        refusal: "(none: after the fact)",
    },
];

/// Step 1: the declared body size.
pub fn check_content_length(value: Option<&[u8]>, limit: u64) -> Result<Option<u64>, Rejection> {
    let Some(raw) = value else {
        return Ok(None);
    };
    let n = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| Rejection::BadRequest("Content-Length is not a number".into()))?;
    if n > limit {
        return Err(Rejection::BodyTooLarge { limit });
    }
    Ok(Some(n))
}

/// Step 1: the request head within `[server]`'s bounds — header lines by
/// bytes and by number (431), the request target (414).
pub fn check_head(
    req: &pingora::http::RequestHeader,
    server: &crate::config::ServerConfig,
) -> Result<(), Rejection> {
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len()) as u64;
    if target > server.max_uri_bytes {
        return Err(Rejection::UriTooLong {
            limit: server.max_uri_bytes,
        });
    }
    let count = req.headers.len() as u64;
    if count > server.max_headers {
        return Err(Rejection::HeadersTooLarge(format!(
            "{count} header fields, over the limit of {}",
            server.max_headers
        )));
    }
    let bytes: u64 = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum();
    if bytes > server.max_header_bytes {
        return Err(Rejection::HeadersTooLarge(format!(
            "{bytes} bytes of header fields, over the limit of {}",
            server.max_header_bytes
        )));
    }
    Ok(())
}

/// Step 2: a principal from the connection's verified client certificate
/// (mapped by `[[auth.mtls]]`) or the `Authorization` header — one of the
/// two: a mapped certificate with a bearer token beside it is refused.
pub fn authenticate(
    authorization: Option<&[u8]>,
    peer: Option<&PeerIdentity>,
    runtime: &Runtime,
    keys: &KeyCache,
) -> Result<Principal, Rejection> {
    if let Some(peer) = peer {
        match (peer.principal(&runtime.config.auth.mtls), authorization) {
            (Some(p), None) => return Ok(p),
            (Some(p), Some(_)) => {
                return Err(Rejection::Unauthenticated(format!(
                    "the client certificate ({}) already identifies `{}`: send no Authorization header with it",
                    peer.describe(),
                    p.id
                )))
            }
            (None, None) => {
                return Err(Rejection::Unauthenticated(format!(
                    "the client certificate ({}) is not mapped to a principal ([[auth.mtls]])",
                    peer.describe()
                )))
            }
            (None, Some(_)) => {}
        }
    }
    let raw = authorization.ok_or(Rejection::NoCredentials)?;
    let value = std::str::from_utf8(raw)
        .map_err(|_| Rejection::Unauthenticated("malformed Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Rejection::Unauthenticated("Authorization must be `Bearer <token>`".into())
        })?;
    if token.starts_with(KEY_PREFIX) {
        if !runtime.config.auth.api_keys {
            return Err(Rejection::Unauthenticated("API keys are disabled".into()));
        }
        let key = keys
            .lookup(token)
            .ok_or_else(|| Rejection::Unauthenticated("unknown or revoked API key".into()))?;
        return Ok(Principal {
            kind: key.kind,
            id: key.agent,
            tenant: key.tenant,
            roles: key.roles,
            labels: key.labels,
            auth_method: "api_key".into(),
        });
    }
    if runtime.jwt.issuers.is_empty() {
        return Err(Rejection::Unauthenticated(
            "unknown API key format and no JWT issuer is configured".into(),
        ));
    }
    runtime
        .jwt
        .verify(token)
        .map_err(Rejection::Unauthenticated)
}

/// Step 3: `/tools/<route>/<rest>` to a route and the rest of the path
/// (always starting with `/`).
pub fn resolve_route(runtime: &Runtime, path: &str) -> Result<(Arc<Route>, String), Rejection> {
    let rest = path.strip_prefix("/tools/").ok_or(Rejection::NotFound)?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let route = runtime
        .routes
        .get(name)
        .cloned()
        .ok_or(Rejection::NotFound)?;
    if tail
        .split('/')
        .any(|seg| seg == ".." || seg.eq_ignore_ascii_case("%2e%2e"))
    {
        return Err(Rejection::BadRequest(
            "path traversal is not allowed".into(),
        ));
    }
    Ok((route, tail.to_string()))
}

/// Step 5: the authorization request of an HTTP route call.
pub fn http_request(
    principal: &Principal,
    route: &Route,
    method: &str,
    path: &str,
    client_ip: &str,
    time: i64,
) -> AuthzRequest {
    AuthzRequest {
        principal: principal.clone(),
        action: Action::HttpRequest,
        resource: Resource::HttpRoute {
            id: route.name.clone(),
            labels: route.labels.clone(),
        },
        context: RequestContext::new(time, client_ip)
            .with("method", method)
            .with("path", path),
    }
}

/// Facts about a call gathered along the path, from which events are made.
#[derive(Debug, Clone, Default)]
pub struct CallFacts {
    pub request_id: String,
    pub trace_id: String,
    pub kind: &'static str,
    pub principal: Option<Principal>,
    pub target: String,
    pub action: String,
    pub client_addr: String,
    pub user_agent: String,
    pub upstream: Option<String>,
    /// The recorded decision, repeated on the outcome event for filtering.
    pub decision: &'static str,
    /// Hash of the call's arguments (MCP tools), on both events.
    pub args_hash: Option<String>,
}

impl CallFacts {
    pub(crate) fn event(&self, phase: Phase) -> AuditEvent {
        let mut e = AuditEvent::new(phase, &self.request_id, self.kind);
        e.trace_id.clone_from(&self.trace_id);
        if let Some(p) = &self.principal {
            e.tenant.clone_from(&p.tenant);
            e.principal.clone_from(&p.id);
            e.auth_method.clone_from(&p.auth_method);
        } else {
            e.auth_method = "none".into();
        }
        e.target.clone_from(&self.target);
        e.action.clone_from(&self.action);
        e.client_addr.clone_from(&self.client_addr);
        e.user_agent.clone_from(&self.user_agent);
        e.upstream.clone_from(&self.upstream);
        e.decision = self.decision.to_string();
        e.args_hash.clone_from(&self.args_hash);
        e
    }

    /// The decision event of a call refused before or by policy.
    /// `status` is what the caller gets.
    pub fn refusal_event(
        &self,
        status: u16,
        reason: &str,
        evaluation: Option<&Evaluation>,
    ) -> AuditEvent {
        let mut e = self.event(Phase::Decision);
        e.decision = "deny".into();
        e.status = Some(status);
        e.reason = reason.to_string();
        if let Some(ev) = evaluation {
            apply_evaluation(&mut e, ev);
        }
        e
    }

    /// The decision event of a message with no action to authorize: MCP
    /// protocol messages, and listings (filtered per item instead).
    pub fn protocol_event(&self, reason: &str) -> AuditEvent {
        let mut e = self.event(Phase::Decision);
        e.decision = "allow".into();
        e.reason = reason.to_string();
        e
    }

    /// The decision event of an allowed call.
    pub fn allow_event(&self, evaluation: &Evaluation) -> AuditEvent {
        let mut e = self.event(Phase::Decision);
        e.decision = "allow".into();
        apply_evaluation(&mut e, evaluation);
        e
    }

    /// The outcome event.
    pub fn outcome_event(&self, status: u16, latency_us: u64, reason: &str) -> AuditEvent {
        let mut e = self.event(Phase::Outcome);
        e.status = Some(status);
        e.latency_us = Some(latency_us);
        e.reason = reason.to_string();
        e
    }
}

fn apply_evaluation(e: &mut AuditEvent, ev: &Evaluation) {
    e.policies.clone_from(&ev.live.policies);
    if !ev.live.errors.is_empty() {
        e.reason = format!("policy errors: {}", ev.live.errors.join("; "));
    } else if !ev.live.is_allow() && ev.live.policies.is_empty() {
        e.reason = "no policy permits (default deny)".into();
    } else if !ev.live.is_allow() {
        e.reason = "forbidden by policy".into();
    }
    if ev.shadow_disagrees() {
        e.shadow_decision = ev.shadow.as_ref().map(|s| s.summary());
    }
}

/// W3C trace context: the incoming `traceparent` if valid, else a new trace.
/// Returns (trace id, the `traceparent` to send upstream with a new span
/// id — the gateway's span —, the caller's span id if it sent one).
pub fn trace_context(incoming: Option<&[u8]>) -> (String, String, Option<String>) {
    let parsed = incoming
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| {
            let parts: Vec<&str> = v.trim().split('-').collect();
            let hex = |s: &str, n: usize| {
                s.len() == n
                    && s.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            };
            (parts.len() == 4
                && hex(parts[0], 2)
                && parts[0] != "ff"
                && hex(parts[1], 32)
                && parts[1] != "0".repeat(32)
                && hex(parts[2], 16)
                && parts[2] != "0".repeat(16)
                && hex(parts[3], 2))
            .then(|| {
                (
                    parts[1].to_string(),
                    parts[3].to_string(),
                    Some(parts[2].to_string()),
                )
            })
        });
    let (trace_id, flags, parent) = parsed.unwrap_or_else(|| {
        (
            hex::encode(rand::random::<[u8; 16]>()),
            "01".to_string(),
            None,
        )
    });
    let span = hex::encode(rand::random::<[u8; 8]>());
    let traceparent = format!("00-{trace_id}-{span}-{flags}");
    (trace_id, traceparent, parent)
}

impl CallFacts {
    /// The caller's IP address, for policy context.
    pub fn client_addr_ip(&self) -> String {
        self.client_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "0.0.0.0".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_in_order() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(s.number as usize, i + 1);
        }
    }

    #[test]
    fn content_length_bounds() {
        assert_eq!(check_content_length(None, 10), Ok(None));
        assert_eq!(check_content_length(Some(b"10"), 10), Ok(Some(10)));
        assert_eq!(
            check_content_length(Some(b"11"), 10),
            Err(Rejection::BodyTooLarge { limit: 10 })
        );
        assert!(matches!(
            check_content_length(Some(b"x"), 10),
            Err(Rejection::BadRequest(_))
        ));
    }

    #[test]
    fn traceparent_is_kept_or_created() {
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, tp, parent) = trace_context(Some(incoming));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.as_deref(), Some("00f067aa0ba902b7"));
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "a new span id is sent upstream"
        );
        let (fresh, _, parent) = trace_context(Some(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ));
        assert_eq!(parent, None, "an invalid traceparent starts a new trace");
        assert_ne!(fresh, "00000000000000000000000000000000");
        assert_eq!(fresh.len(), 32);
    }
}

#[cfg(test)]
mod chart {
    use super::STEPS;

    /// ARCHITECTURE.md's chart of the enforcement path must match `STEPS`.
    #[test]
    fn architecture_chart_matches_steps() {
        let doc = include_str!("../../ARCHITECTURE.md");
        let section = doc
            .split("## The enforcement path")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("ARCHITECTURE.md has a section `## The enforcement path`");
        let rows: Vec<&str> = section
            .lines()
            .filter(|l| {
                l.starts_with("| ")
                    && l.split('|')
                        .nth(1)
                        .is_some_and(|c| c.trim().parse::<u8>().is_ok())
            })
            .collect();
        assert_eq!(rows.len(), STEPS.len(), "chart rows: {rows:#?}");
        for (row, step) in rows.iter().zip(STEPS.iter()) {
            let expected = format!(
                "| {} | {} | {} | {} |",
                step.number, step.name, step.owner, step.refusal
            );
            assert_eq!(*row, expected);
        }
    }
}
