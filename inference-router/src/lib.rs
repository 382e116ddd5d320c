//! # lattice-inference-router
//!
//! Owns the inference half of the gateway below the enforcement path: the
//! model route table (a model name and its aliases → backends, with a
//! strategy), each backend's live state (outstanding requests, latency EWMA,
//! active health, passive ejection, load read from vLLM's Prometheus
//! metrics), backend selection, the OpenAI request and response shapes the
//! gateway needs (request checks, the body sent upstream with
//! `stream_options.include_usage`, usage, the server-sent-events filter that
//! reads and strips the usage chunk), the connections requests travel on to
//! backends (`upstream`: pooled per backend, driven on the calling task;
//! public, since lattice-mcp sends its streamable-HTTP POSTs on the same
//! connections), and the health checks (reqwest, on a runtime of its own).
//!
//! It must never authorize, audit or rate-limit (the gateway does that before
//! it calls here), never see or forward an agent's credentials (backends get
//! only their own configured key), and never retry on its own: the gateway
//! retries, and only before the first byte reached the agent.

pub mod backend;
pub mod join;
pub mod openai;
pub mod pin;
pub mod router;
pub mod select;
pub mod sse;
pub mod upstream;

pub use backend::{BackendKind, BackendSpec, BackendState};
pub use openai::{Endpoint, Prepared, Usage};
pub use router::{ModelRoute, Resolved, Router, UpstreamResponse};
pub use select::Strategy;
pub use sse::UsageFilter;

/// Errors of the inference router.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InferenceError {
    /// The agent's request does not have the OpenAI shape.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// A route table that cannot be built.
    #[error("model routes: {0}")]
    Config(String),
    /// The backend could not be reached or broke off before answering.
    #[error("backend {backend}: {message}")]
    Backend { backend: String, message: String },
    /// The backend did not answer (or send the next chunk) in time.
    #[error("backend {backend} did not answer within {timeout_ms} ms")]
    Timeout { backend: String, timeout_ms: u64 },
    /// The backend answered with an error status.
    #[error("backend {backend} answered {status}")]
    Status {
        backend: String,
        status: u16,
        body: bytes::Bytes,
    },
    /// The router's own runtime failed.
    #[error("inference runtime: {0}")]
    Runtime(String),
}

impl InferenceError {
    /// Whether the backend itself is at fault (connection, timeout, 5xx,
    /// 429): such a failure ejects the backend for a while and may be retried
    /// on another one. A 4xx is the request's fault and is passed through.
    pub fn is_backend_fault(&self) -> bool {
        match self {
            InferenceError::Backend { .. } | InferenceError::Timeout { .. } => true,
            InferenceError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
