//! Errors and refusals, and the one place that maps them to HTTP responses.
//! `GatewayError` is what library calls return; `Rejection` is what the
//! enforcement path answers a caller with (status, JSON body, headers).

use bytes::Bytes;
use serde_json::json;

/// Errors of the gateway library.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Policy(#[from] lattice_policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] lattice_audit::AuditError),
    #[error("state store: {0}")]
    State(String),
    #[error("server: {0}")]
    Server(String),
    #[error("{0}")]
    Io(String),
}

/// Why a call is refused. Each variant maps to exactly one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Step 1: the body exceeds `server.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// Step 1: malformed request framing or headers.
    BadRequest(String),
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
    /// Step 7: the audit pipeline cannot accept the decision (fail closed).
    AuditUnavailable,
    /// Step 8: the upstream failed before answering.
    UpstreamFailed(String),
    /// Step 8: the upstream did not answer in time.
    UpstreamTimeout,
    /// A fault of the gateway itself.
    Internal(String),
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BodyTooLarge { .. } => 413,
            Rejection::BadRequest(_) => 400,
            Rejection::NoCredentials | Rejection::Unauthenticated(_) => 401,
            Rejection::NotFound | Rejection::UnknownModel(_) => 404,
            Rejection::InvalidRequest { .. } => 400,
            Rejection::RateLimited { .. } => 429,
            Rejection::MethodNotAllowed => 405,
            Rejection::OriginNotAllowed => 403,
            Rejection::Forbidden { .. } => 403,
            Rejection::AuditUnavailable => 503,
            Rejection::UpstreamFailed(_) => 502,
            Rejection::UpstreamTimeout => 504,
            Rejection::Internal(_) => 500,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BodyTooLarge { .. } => "body_too_large",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::NoCredentials | Rejection::Unauthenticated(_) => "unauthenticated",
            Rejection::NotFound => "not_found",
            Rejection::UnknownModel(_) => "model_not_found",
            Rejection::InvalidRequest { .. } => "invalid_request",
            Rejection::RateLimited { .. } => "rate_limit_exceeded",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::Forbidden { .. } => "forbidden",
            Rejection::AuditUnavailable => "audit_unavailable",
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
            Rejection::BadRequest(m) => m.clone(),
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
            400 | 404 | 405 | 413 => "invalid_request_error",
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
            Rejection::AuditUnavailable => vec![("retry-after", "1".into())],
            Rejection::RateLimited { retry_after_s, .. } => {
                vec![("retry-after", retry_after_s.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_names_the_decision() {
        let r = Rejection::Forbidden {
            decision_id: "d-1".into(),
        };
        let body: serde_json::Value = serde_json::from_slice(&r.body("r-1")).unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(body["error"]["decision_id"], "d-1");
        assert_eq!(body["error"]["request_id"], "r-1");
    }

    #[test]
    fn unauthenticated_has_www_authenticate_without_quotes_injection() {
        let r = Rejection::Unauthenticated("bad \"token\"".into());
        let (name, value) = &r.headers()[0];
        assert_eq!(*name, "www-authenticate");
        assert!(
            value.contains("error_description=\"bad 'token'\""),
            "{value}"
        );
    }
}
