//! The error tables of `error`, tested as tables: each refusal's status,
//! code, headers and both body formats; each MCP refusal's JSON-RPC shape.
//!
//! Must never: assert on a message the caller does not see.

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

/// Every refusal → (HTTP status, code, extra header names, OpenAI type).
#[test]
fn refusals_map_to_one_answer_each() {
    let table: Vec<(Rejection, u16, &str, Vec<&str>, &str)> = vec![
        (
            Rejection::BodyTooLarge { limit: 9 },
            413,
            "body_too_large",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::HeadersTooLarge("x".into()),
            431,
            "headers_too_large",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::UriTooLong { limit: 9 },
            414,
            "uri_too_long",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::RequestTimeout,
            408,
            "request_timeout",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::BadRequest("x".into()),
            400,
            "bad_request",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::ClientClosed,
            499,
            "client_closed_request",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::NoCredentials,
            401,
            "unauthenticated",
            vec!["www-authenticate"],
            "authentication_error",
        ),
        (
            Rejection::Unauthenticated("x".into()),
            401,
            "unauthenticated",
            vec!["www-authenticate"],
            "authentication_error",
        ),
        (
            Rejection::NotFound,
            404,
            "not_found",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::UnknownModel("m".into()),
            404,
            "model_not_found",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::InvalidRequest {
                message: "x".into(),
                param: None,
            },
            400,
            "invalid_request",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::RateLimited {
                limit: "l".into(),
                what: "requests",
                retry_after_s: 7,
            },
            429,
            "rate_limit_exceeded",
            vec!["retry-after"],
            "rate_limit_error",
        ),
        (
            Rejection::LimitsUnavailable,
            503,
            "limits_unavailable",
            vec!["retry-after"],
            "server_error",
        ),
        (
            Rejection::HeadTimeout { ms: 10 },
            408,
            "request_timeout",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::TooManyConnections { limit: 3 },
            429,
            "too_many_connections",
            vec!["retry-after"],
            "rate_limit_error",
        ),
        (
            Rejection::MethodNotAllowed,
            405,
            "method_not_allowed",
            vec![],
            "invalid_request_error",
        ),
        (
            Rejection::OriginNotAllowed,
            403,
            "origin_not_allowed",
            vec![],
            "permission_error",
        ),
        (
            Rejection::Forbidden {
                decision_id: "d".into(),
            },
            403,
            "forbidden",
            vec![],
            "permission_error",
        ),
        (
            Rejection::AuditUnavailable,
            503,
            "audit_unavailable",
            vec!["retry-after"],
            "server_error",
        ),
        (
            Rejection::UpstreamFailed("x".into()),
            502,
            "upstream_failed",
            vec![],
            "server_error",
        ),
        (
            Rejection::UpstreamTimeout,
            504,
            "upstream_timeout",
            vec![],
            "server_error",
        ),
        (
            Rejection::Internal("x".into()),
            500,
            "internal_error",
            vec![],
            "server_error",
        ),
    ];
    for (r, status, code, headers, openai_type) in table {
        assert_eq!(r.status(), status, "{r:?}");
        assert_eq!(r.code(), code, "{r:?}");
        let names: Vec<&str> = r.headers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, headers, "{r:?}");
        let body: serde_json::Value = serde_json::from_slice(&r.body("r")).unwrap();
        assert_eq!(body["error"]["code"], code, "{r:?}");
        assert_eq!(body["error"]["message"], r.message(), "{r:?}");
        let openai: serde_json::Value = serde_json::from_slice(&r.openai_body("r")).unwrap();
        assert_eq!(openai["error"]["type"], openai_type, "{r:?}");
    }
}

/// Every MCP refusal → (HTTP status, JSON-RPC code, message, audit reason).
#[test]
fn mcp_refusals_map_to_one_json_rpc_error_each() {
    let table: Vec<(McpRefusal, u16, i64, &str, &str)> = vec![
        (
            McpRefusal::SessionNotFound,
            404,
            -32001,
            "Session not found",
            "unknown, ended or foreign MCP session",
        ),
        (
            McpRefusal::Malformed {
                parse: true,
                message: "eof".into(),
            },
            400,
            -32700,
            "eof",
            "malformed JSON-RPC: eof",
        ),
        (
            McpRefusal::Malformed {
                parse: false,
                message: "no method".into(),
            },
            400,
            -32600,
            "no method",
            "malformed JSON-RPC: no method",
        ),
        (
            McpRefusal::NoPendingRequest,
            400,
            -32600,
            "no request of this session waits for that answer",
            "an answer to no pending request",
        ),
        (
            McpRefusal::Stateless {
                code: -32020,
                message: "header mismatch".into(),
                data: None,
            },
            400,
            -32020,
            "header mismatch",
            "stateless request refused: header mismatch",
        ),
        (
            McpRefusal::UnsupportedVersion("1999-01-01".into()),
            400,
            -32600,
            "Unsupported MCP-Protocol-Version: 1999-01-01",
            "Unsupported MCP-Protocol-Version: 1999-01-01",
        ),
        (
            McpRefusal::UnknownMethod {
                method: "x/y".into(),
                stateless: false,
            },
            200,
            -32601,
            "method `x/y` is not supported",
            "unsupported method `x/y`",
        ),
        (
            McpRefusal::UnknownMethod {
                method: "x/y".into(),
                stateless: true,
            },
            404,
            -32601,
            "method `x/y` is not supported",
            "unsupported method `x/y`",
        ),
        (
            McpRefusal::NeedsSession("initialize first".into()),
            200,
            -32600,
            "initialize first",
            "initialize first",
        ),
        (
            McpRefusal::InvalidParams("bad level".into()),
            200,
            -32602,
            "bad level",
            "bad level",
        ),
    ];
    for (r, status, code, message, reason) in table {
        assert_eq!(r.status(), status, "{r:?}");
        assert_eq!(r.code(), code, "{r:?}");
        assert_eq!(r.message(), message, "{r:?}");
        assert_eq!(r.reason(), reason, "{r:?}");
        let reply = r.reply(&serde_json::json!(7));
        assert_eq!(reply["id"], 7);
        assert_eq!(reply["error"]["code"], code);
        assert_eq!(reply["error"]["message"], message);
    }
    let data = serde_json::json!({"supported": ["2026-07-28"]});
    let r = McpRefusal::Stateless {
        code: -32022,
        message: "v".into(),
        data: Some(data.clone()),
    };
    assert_eq!(r.reply(&serde_json::Value::Null)["error"]["data"], data);
}

/// Which errors a retry can help: (error, retryable).
#[test]
fn errors_say_whether_a_retry_can_help() {
    use lattice_audit::AuditError;
    use std::io::{Error, ErrorKind};
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    let corrupt = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        None,
    );
    let table: Vec<(GatewayError, bool)> = vec![
        (GatewayError::from(busy), true),
        (GatewayError::from(corrupt), false),
        (
            GatewayError::io("keys.db", Error::from(ErrorKind::Interrupted)),
            true,
        ),
        (
            GatewayError::io("keys.db", Error::from(ErrorKind::PermissionDenied)),
            false,
        ),
        (GatewayError::Audit(AuditError::QueueFull), true),
        (GatewayError::Audit(AuditError::WriterFailing), true),
        (GatewayError::Audit(AuditError::Corrupt("x".into())), false),
        (GatewayError::Config("x".into()), false),
        (GatewayError::State("no such key".into()), false),
        (GatewayError::Server("x".into()), false),
    ];
    for (e, retryable) in table {
        assert_eq!(e.retryable(), retryable, "{e}");
    }
    // The wrapped error stays reachable.
    let e = GatewayError::io("k", Error::from(ErrorKind::NotFound));
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(e.to_string(), "k: entity not found");
}
