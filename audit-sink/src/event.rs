//! The audit event and its canonical encoding. The canonical encoding is the
//! compact JSON of `AuditEvent` with its fields in declaration order; its
//! leaf hash is what the Merkle log commits to. Adding a field is a format
//! change: bump `FORMAT_VERSION`.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::merkle::{leaf_hash, Hash};

/// Version of the canonical encoding, carried in every event.
pub const FORMAT_VERSION: u32 = 2;

/// Whether an event records a decision (before forwarding) or an outcome
/// (after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Decision,
    Outcome,
}

/// One audit event. The writer fills `node` and `seq`; everything else is set
/// by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub v: u32,
    /// UUIDv7.
    pub event_id: String,
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The gateway node that wrote it.
    pub node: String,
    /// Position in this node's log (the Merkle leaf index).
    pub seq: u64,
    pub phase: Phase,
    pub request_id: String,
    pub trace_id: String,
    pub tenant: String,
    /// Agent or human id; empty when authentication failed.
    pub principal: String,
    /// `api_key`, `jwt`, or `none`.
    pub auth_method: String,
    /// `http.request`, `mcp.call_tool`, `llm.chat`, `auth.failed`, `admin.*`...
    pub kind: String,
    /// The route, tool, model or admin object.
    pub target: String,
    /// The Cedar action, or empty when none was evaluated.
    pub action: String,
    /// `allow`, `deny`, or `error`.
    pub decision: String,
    /// Ids of the policies that decided.
    pub policies: Vec<String>,
    /// Why, in words: a denial reason, an authentication failure, an error.
    pub reason: String,
    /// What the shadow policy set would have decided, when it disagrees.
    pub shadow_decision: Option<String>,
    pub schema_result: Option<String>,
    pub upstream: Option<String>,
    pub status: Option<u16>,
    pub latency_us: Option<u64>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub args_hash: Option<String>,
    pub result_hash: Option<String>,
    pub client_addr: String,
    pub user_agent: String,
    /// Time to the first byte of a streamed answer, µs (format 2). Absent
    /// fields are not encoded, so format-1 events re-encode unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_us: Option<u64>,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl AuditEvent {
    /// A new event with a fresh UUIDv7 id and the current time; the other
    /// fields empty.
    pub fn new(phase: Phase, request_id: &str, kind: &str) -> Self {
        Self {
            v: FORMAT_VERSION,
            event_id: uuid::Uuid::now_v7().to_string(),
            ts_us: now_us(),
            node: String::new(),
            seq: 0,
            phase,
            request_id: request_id.to_string(),
            trace_id: String::new(),
            tenant: String::new(),
            principal: String::new(),
            auth_method: String::new(),
            kind: kind.to_string(),
            target: String::new(),
            action: String::new(),
            decision: String::new(),
            policies: Vec::new(),
            reason: String::new(),
            shadow_decision: None,
            schema_result: None,
            upstream: None,
            status: None,
            latency_us: None,
            tokens_in: None,
            tokens_out: None,
            args_hash: None,
            result_hash: None,
            client_addr: String::new(),
            user_agent: String::new(),
            ttft_us: None,
        }
    }

    /// The canonical encoding.
    pub fn canonical(&self) -> Vec<u8> {
        // Most events encode to 400–700 bytes: one allocation, not a
        // doubling series of them.
        let mut out = Vec::with_capacity(768);
        // Serializing a struct of strings, integers and options cannot fail.
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    /// The Merkle leaf hash of the canonical encoding.
    pub fn leaf(&self) -> Hash {
        leaf_hash(&self.canonical())
    }
}

/// Parses stored bytes and checks that they are canonical: the bytes of a
/// re-encoded event must be identical, so whitespace or key-order edits are
/// detected as edits.
pub fn parse_canonical(bytes: &[u8]) -> Result<AuditEvent, String> {
    let event: AuditEvent =
        serde_json::from_slice(bytes).map_err(|e| format!("not an audit event: {e}"))?;
    if event.canonical() != bytes {
        return Err("not in canonical encoding".into());
    }
    Ok(event)
}
