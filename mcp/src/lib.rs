//! # lattice-mcp
//!
//! Owns MCP as a protocol, with no enforcement in it (that is the
//! gateway's): JSON-RPC message parsing with bounds (`jsonrpc`); the gateway
//! as a server (`server`: versions spoken and negotiated, capabilities and
//! server info, the client capabilities it can relay for — in the official
//! Rust SDK's model types, `rmcp::model`); the server side's state
//! (`session`: signed session tokens, per-session log levels and
//! subscriptions, the stateless era's header rules; `server_requests`:
//! server requests awaiting a client's answer); the tool model the gateway
//! federates (`tools`: the federated naming scheme, canonical definition
//! hashes for pinning, argument validation against `inputSchema`) and
//! prompts and resources (`catalog`: names, URI rewriting); and the
//! gateway as a client of upstream servers: one client (`upstream`: the
//! `initialize` handshake, paging, calls, timeouts, new sessions) over one
//! `transport::Transport` trait, implemented for stdio (`stdio`),
//! streamable HTTP (`http`) and legacy HTTP+SSE (`sse`), with the routing
//! the two stream transports share (`transport::Inbox`) and the
//! attribution of notifications and server requests to the call they
//! belong to (`progress`).
//!
//! On rmcp, and what stays hand-written: rmcp's model types are used for
//! what the gateway writes itself (`server`). The transports are not
//! rmcp's: its client transports carry its typed messages, and an
//! upstream's answer re-serialized through them loses the fields its types
//! do not name and turns integers into floats (`tests/rmcp_fit.rs` measures
//! it, and fails the day rmcp keeps them) — a gateway that relays and pins
//! what servers send must pass it as sent. They move raw JSON-RPC instead,
//! on the crates rmcp's own transports use: `process-wrap` (the child in a
//! process group of its own, killed whole) and `reqwest`. The legacy
//! HTTP+SSE client exists because rmcp no longer has one.
//!
//! Must never: dereference a network `$ref` in a schema, block on an
//! upstream without a timeout, or pass an agent's credentials upstream.

pub mod catalog;
pub mod http;
pub mod jsonrpc;
pub mod progress;
pub mod server;
pub mod server_requests;
pub mod session;
pub mod sse;
pub mod sse_event;
pub mod stdio;
pub mod tools;
pub mod transport;
pub mod upstream;

/// Everything that can go wrong speaking MCP.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("upstream `{server}`: {message}")]
    Upstream { server: String, message: String },
    #[error("upstream `{server}` ended the session")]
    SessionEnded { server: String },
    #[error("upstream `{server}` did not answer within {timeout_ms} ms")]
    Timeout { server: String, timeout_ms: u64 },
    #[error("upstream `{server}` answered with error {code}: {message}")]
    UpstreamError {
        server: String,
        code: i64,
        message: String,
    },
    #[error("invalid name: {0}")]
    Name(String),
    #[error("invalid schema: {0}")]
    Schema(String),
}

impl McpError {
    /// An upstream's JSON-RPC `error` object.
    pub fn from_rpc(server: &str, error: &serde_json::Value) -> Self {
        McpError::UpstreamError {
            server: server.to_string(),
            code: error
                .get("code")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(jsonrpc::INTERNAL_ERROR),
            message: error
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// The params of the `logging/setLevel` the gateway sends an upstream that
/// offers logging: every message. The gateway filters them per session at
/// the level each client set (`logging/setLevel` downstream).
pub static ALL_LOGS: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::json!({"level": "debug"}));

/// Whether an upstream's `initialize` result offers logging.
pub fn wants_all_logs(server_info: &serde_json::Value) -> bool {
    server_info["capabilities"].get("logging").is_some()
}

/// MCP log levels, least severe first (RFC 5424's, as the spec names them).
pub const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// A level's rank in `LOG_LEVELS`, or None for an unknown level.
pub fn log_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

/// The capabilities the gateway declares to every upstream: it can relay
/// sampling and elicitation requests to the client whose call made them
/// (and answers for a client that did not declare them).
pub static CLIENT_CAPABILITIES: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::json!({"sampling": {}, "elicitation": {}}));

/// The error the gateway answers a server's request with when no client can
/// take it.
pub fn refuse_server_request(id: &serde_json::Value, why: &str) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": why}})
}
