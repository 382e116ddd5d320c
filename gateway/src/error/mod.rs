//! Errors and refusals, and the one place that maps them to answers.
//! `GatewayError` is what library calls return; `Rejection` is what the
//! enforcement path answers a caller with over HTTP (status, JSON body or
//! OpenAI's error body, headers); `McpRefusal` is its JSON-RPC twin, what
//! the MCP door answers a message it refuses with (HTTP status, JSON-RPC
//! error code, message, data, and the audit reason). Both are tables, and
//! tested as tables.
//!
//! Must never: map one refusal to two answers, or leak an internal
//! error's detail to the caller.

use bytes::Bytes;
use serde_json::json;

/// Errors of the gateway library. Each says whether trying again, unchanged,
/// can help (`retryable`); the variants that wrap another error keep it as
/// their `source()` (its message is in theirs too, so a one-line report
/// reads whole).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The config or a file it names is wrong: fix it first.
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Policy(#[from] lattice_policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] lattice_audit::AuditError),
    /// The state store refused a change (no such key, a duplicate name...).
    #[error("state store: {0}")]
    State(String),
    /// The state database itself failed.
    #[error("state store: {source}")]
    Database {
        #[source]
        source: rusqlite::Error,
    },
    #[error("server: {0}")]
    Server(String),
    /// A file or socket failed; `context` names it.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl GatewayError {
    /// An I/O error with the path or operation it concerns.
    pub fn io(context: impl std::fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            source,
        }
    }

    /// True when the same operation may succeed if tried again unchanged: a
    /// busy or locked database, an interrupted or timed-out I/O, a full or
    /// failing audit pipeline. Config, policy and refused changes need a fix.
    pub fn retryable(&self) -> bool {
        use lattice_audit::AuditError as A;
        use std::io::ErrorKind as K;
        match self {
            Self::Database { source } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Io { source, .. } => matches!(
                source.kind(),
                K::Interrupted | K::WouldBlock | K::TimedOut | K::ConnectionRefused
            ),
            Self::Audit(a) => matches!(
                a,
                A::QueueFull | A::WriterFailing | A::BacklogFull | A::ClickHouse(_)
            ),
            Self::Config(_) | Self::Policy(_) | Self::State(_) | Self::Server(_) => false,
        }
    }
}

impl From<rusqlite::Error> for GatewayError {
    fn from(source: rusqlite::Error) -> Self {
        Self::Database { source }
    }
}

/// Why a call is refused. Each variant maps to exactly one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Step 1: the body exceeds `server.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// Step 1: the request's headers exceed `server.max_header_bytes` or
    /// `server.max_headers` (what was over, in words).
    HeadersTooLarge(String),
    /// Step 1: the request target exceeds `server.max_uri_bytes`.
    UriTooLong { limit: u64 },
    /// Step 1: the client stopped sending its body for longer than
    /// `server.body_read_timeout_ms`.
    RequestTimeout,
    /// Before step 1: the request head did not arrive within
    /// `server.header_read_timeout_ms` of its first byte.
    HeadTimeout { ms: u64 },
    /// Before step 1: the client address holds
    /// `server.max_connections_per_client` connections already.
    TooManyConnections { limit: u64 },
    /// Step 1: malformed request framing or headers.
    BadRequest(String),
    /// The client closed its connection before the answer was written (a
    /// client may always leave: not an error of the gateway's). Recorded
    /// as 499, nginx's convention; the client never reads it.
    ClientClosed,
    /// Step 2: no credentials presented.
    NoCredentials,
    /// Step 2: invalid credentials.
    Unauthenticated(String),
    /// Step 3: no such (visible) target.
    NotFound,
    /// Step 3: no such (visible) model; unknown and forbidden look alike.
    UnknownModel(String),
    /// Step 4: the request does not have the target's shape.
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// Step 6: a rate limit or token budget is spent.
    RateLimited {
        limit: String,
        what: &'static str,
        retry_after_s: u64,
    },
    /// The target does not take this method.
    MethodNotAllowed,
    /// A browser origin that may not call the MCP endpoint (DNS rebinding).
    OriginNotAllowed,
    /// Step 5: the policy denied; names the decision (audit event) id.
    Forbidden { decision_id: String },
    /// Step 6: fail-closed limits apply and the shared counters (Redis)
    /// cannot be reached.
    LimitsUnavailable,
    /// Step 7: the audit pipeline cannot accept the decision (fail closed).
    AuditUnavailable,
    /// Step 8: the upstream failed before answering.
    UpstreamFailed(String),
    /// Step 8: the upstream did not answer in time.
    UpstreamTimeout,
    /// A fault of the gateway itself.
    Internal(String),
}

/// A JSON-RPC message the MCP door refuses, answered as a JSON-RPC error.
/// Each variant maps to exactly one HTTP status and one error code.
#[derive(Debug, Clone, PartialEq)]
pub enum McpRefusal {
    /// An `Mcp-Session-Id` that is unknown, ended or another principal's.
    SessionNotFound,
    /// The body is not one JSON-RPC message (`parse`: not even JSON).
    Malformed { parse: bool, message: String },
    /// A client's answer that no server request of its session waits for.
    NoPendingRequest,
    /// A stateless-era request whose headers disagree with its body, or
    /// that names a version this gateway does not speak (`data` says which).
    Stateless {
        code: i64,
        message: String,
        data: Option<serde_json::Value>,
    },
    /// A stateful-era `MCP-Protocol-Version` this gateway does not speak.
    UnsupportedVersion(String),
    /// A method the gateway does not serve (HTTP 404 in the stateless era).
    UnknownMethod { method: String, stateless: bool },
    /// A method that needs a session, sent without one.
    NeedsSession(String),
    /// Parameters the method cannot take.
    InvalidParams(String),
}

impl McpRefusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::SessionNotFound => 404,
            Self::Malformed { .. }
            | Self::NoPendingRequest
            | Self::Stateless { .. }
            | Self::UnsupportedVersion(_) => 400,
            Self::UnknownMethod {
                stateless: true, ..
            } => 404,
            Self::UnknownMethod { .. } | Self::NeedsSession(_) | Self::InvalidParams(_) => 200,
        }
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        use lattice_mcp::jsonrpc as rpc;
        match self {
            Self::SessionNotFound => -32001,
            Self::Malformed { parse: true, .. } => rpc::PARSE_ERROR,
            Self::Malformed { .. }
            | Self::NoPendingRequest
            | Self::UnsupportedVersion(_)
            | Self::NeedsSession(_) => rpc::INVALID_REQUEST,
            Self::Stateless { code, .. } => *code,
            Self::UnknownMethod { .. } => rpc::METHOD_NOT_FOUND,
            Self::InvalidParams(_) => rpc::INVALID_PARAMS,
        }
    }

    /// The error message the client reads.
    pub fn message(&self) -> String {
        match self {
            Self::SessionNotFound => "Session not found".into(),
            Self::Malformed { message, .. } => message.clone(),
            Self::NoPendingRequest => "no request of this session waits for that answer".into(),
            Self::Stateless { message, .. } => message.clone(),
            Self::UnsupportedVersion(v) => format!("Unsupported MCP-Protocol-Version: {v}"),
            Self::UnknownMethod { method, .. } => format!("method `{method}` is not supported"),
            Self::NeedsSession(m) | Self::InvalidParams(m) => m.clone(),
        }
    }

    /// Why the audit trail says it was refused.
    pub fn reason(&self) -> String {
        match self {
            Self::SessionNotFound => "unknown, ended or foreign MCP session".into(),
            Self::Malformed { message, .. } => format!("malformed JSON-RPC: {message}"),
            Self::NoPendingRequest => "an answer to no pending request".into(),
            Self::Stateless { message, .. } => format!("stateless request refused: {message}"),
            Self::UnknownMethod { method, .. } => format!("unsupported method `{method}`"),
            other => other.message(),
        }
    }

    /// The JSON-RPC error response to request `id`.
    pub fn reply(&self, id: &serde_json::Value) -> serde_json::Value {
        let data = match self {
            Self::Stateless { data, .. } => data.clone(),
            _ => None,
        };
        lattice_mcp::jsonrpc::error_response(id, self.code(), &self.message(), data)
    }
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BodyTooLarge { .. } => 413,
            Rejection::HeadersTooLarge(_) => 431,
            Rejection::UriTooLong { .. } => 414,
            Rejection::RequestTimeout | Rejection::HeadTimeout { .. } => 408,
            Rejection::TooManyConnections { .. } => 429,
            Rejection::BadRequest(_) => 400,
            Rejection::ClientClosed => 499,
            Rejection::NoCredentials | Rejection::Unauthenticated(_) => 401,
            Rejection::NotFound | Rejection::UnknownModel(_) => 404,
            Rejection::InvalidRequest { .. } => 400,
            Rejection::RateLimited { .. } => 429,
            Rejection::MethodNotAllowed => 405,
            Rejection::OriginNotAllowed => 403,
            Rejection::Forbidden { .. } => 403,
            Rejection::AuditUnavailable | Rejection::LimitsUnavailable => 503,
            Rejection::UpstreamFailed(_) => 502,
            Rejection::UpstreamTimeout => 504,
            Rejection::Internal(_) => 500,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BodyTooLarge { .. } => "body_too_large",
            Rejection::HeadersTooLarge(_) => "headers_too_large",
            Rejection::UriTooLong { .. } => "uri_too_long",
            Rejection::RequestTimeout | Rejection::HeadTimeout { .. } => "request_timeout",
            Rejection::TooManyConnections { .. } => "too_many_connections",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::ClientClosed => "client_closed_request",
            Rejection::NoCredentials | Rejection::Unauthenticated(_) => "unauthenticated",
            Rejection::NotFound => "not_found",
            Rejection::UnknownModel(_) => "model_not_found",
            Rejection::InvalidRequest { .. } => "invalid_request",
            Rejection::RateLimited { .. } => "rate_limit_exceeded",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::Forbidden { .. } => "forbidden",
            Rejection::AuditUnavailable => "audit_unavailable",
            Rejection::LimitsUnavailable => "limits_unavailable",
            Rejection::UpstreamFailed(_) => "upstream_failed",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::Internal(_) => "internal_error",
        }
    }

    /// The message the caller reads; the audit reason may say more.
    pub fn message(&self) -> String {
        match self {
            Rejection::BodyTooLarge { limit } => {
                format!("request body exceeds the limit of {limit} bytes")
            }
            Rejection::HeadersTooLarge(what) => format!("request headers too large: {what}"),
            Rejection::RequestTimeout => "the request body stopped arriving; the call was not forwarded".into(),
            Rejection::UriTooLong { limit } => {
                format!("request target exceeds the limit of {limit} bytes")
            }
            Rejection::HeadTimeout { ms } => format!(
                "the request head did not arrive within {ms} ms of its first byte; the connection is closed"
            ),
            Rejection::TooManyConnections { limit } => format!(
                "this address holds {limit} open connections, the most one client may; close one and retry"
            ),
            Rejection::BadRequest(m) => m.clone(),
            Rejection::ClientClosed => "the client closed the connection before the answer".into(),
            Rejection::NoCredentials => "missing bearer token".into(),
            Rejection::Unauthenticated(m) => m.clone(),
            Rejection::NotFound => "no such route".into(),
            Rejection::UnknownModel(m) => {
                format!("The model `{m}` does not exist or you do not have access to it.")
            }
            Rejection::InvalidRequest { message, .. } => message.clone(),
            Rejection::RateLimited {
                limit,
                what,
                retry_after_s,
            } => format!(
                "Rate limit reached: the {what} allowed by limit `{limit}` are spent; retry after {retry_after_s} s."
            ),
            Rejection::MethodNotAllowed => "method not allowed".into(),
            Rejection::OriginNotAllowed => "this origin may not call the MCP endpoint".into(),
            Rejection::Forbidden { .. } => "denied by policy".into(),
            Rejection::AuditUnavailable => {
                "the audit trail cannot record this call right now; it was not forwarded".into()
            }
            Rejection::LimitsUnavailable => {
                "the rate limits that apply to this call cannot be counted right now (the shared counter store is unreachable); it was not forwarded".into()
            }
            Rejection::UpstreamFailed(_) => "the upstream failed".into(),
            Rejection::UpstreamTimeout => "the upstream did not answer in time".into(),
            Rejection::Internal(_) => "the gateway failed; the call was not completed".into(),
        }
    }

    /// The JSON body: `{"error": {"code", "message", "request_id", "decision_id"?}}`.
    pub fn body(&self, request_id: &str) -> Bytes {
        let mut err = json!({
            "code": self.code(),
            "message": self.message(),
            "request_id": request_id,
        });
        if let Rejection::Forbidden { decision_id } = self {
            err["decision_id"] = json!(decision_id);
        }
        Bytes::from(json!({ "error": err }).to_string())
    }

    /// The body in OpenAI's error format, for the `/v1` API:
    /// `{"error": {"message", "type", "param", "code", "request_id"}}`.
    pub fn openai_body(&self, request_id: &str) -> Bytes {
        let kind = match self.status() {
            400 | 404 | 405 | 408 | 413 | 414 | 431 | 499 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "server_error",
        };
        let param = match self {
            Rejection::InvalidRequest { param, .. } => param.as_deref(),
            Rejection::UnknownModel(_) => Some("model"),
            _ => None,
        };
        let code = match self {
            Rejection::Unauthenticated(_) | Rejection::NoCredentials => "invalid_api_key",
            other => other.code(),
        };
        let decision = match self {
            Rejection::Forbidden { decision_id } => Some(decision_id.as_str()),
            _ => None,
        };
        lattice_inference_router::openai::error_body(
            &self.message(),
            kind,
            param,
            Some(code),
            request_id,
            decision,
        )
    }

    /// Extra response headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Rejection::Unauthenticated(m) => vec![(
                "www-authenticate",
                format!(
                    "Bearer realm=\"lattice\", error=\"invalid_token\", error_description=\"{}\"",
                    m.replace(['"', '\\'], "'")
                ),
            )],
            // RFC 6750 §3.1: no error code when no credentials were presented.
            Rejection::NoCredentials => {
                vec![("www-authenticate", "Bearer realm=\"lattice\"".into())]
            }
            Rejection::AuditUnavailable
            | Rejection::LimitsUnavailable
            | Rejection::TooManyConnections { .. } => {
                vec![("retry-after", "1".into())]
            }
            Rejection::RateLimited { retry_after_s, .. } => {
                vec![("retry-after", retry_after_s.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
