//! The `[[limits]]` section as the gateway uses it: whom a limit counts,
//! which kinds of calls, and how much per window. The counting itself is
//! `crate::limits`.
//!
//! Must never: import anything of the gateway above `config`.

use lattice_policy::Principal;
use std::time::Duration;

/// Whom a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Agent,
    Tenant,
}

/// What kind of call a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `/v1` (the only kind that spends tokens).
    Llm,
    /// MCP `tools/call`, `prompts/get`, `resources/read`.
    Mcp,
    /// HTTP tool routes.
    Http,
}

impl CallKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "llm" => Some(Self::Llm),
            "mcp" => Some(Self::Mcp),
            "http" => Some(Self::Http),
            _ => None,
        }
    }
}

/// What a limit does when the shared counter store (`[cluster] redis`)
/// cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Refuse the calls it applies to (503): the default.
    Deny,
    /// Let them through uncounted, with an error log and
    /// `lattice_limits_bypassed_total`.
    Allow,
}

/// A configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    pub name: String,
    pub per: Per,
    /// Agent or tenant ids it applies to; empty: every one.
    pub only: Vec<String>,
    /// Requests per window.
    pub requests: Option<u64>,
    /// Tokens (prompt + completion) per window.
    pub tokens: Option<u64>,
    pub window: Duration,
    /// The kinds of calls it counts.
    pub kinds: Vec<CallKind>,
    /// When the shared counter store is unreachable.
    pub on_unavailable: OnUnavailable,
}

impl LimitSpec {
    pub(crate) fn subject<'a>(&self, p: &'a Principal) -> Option<&'a str> {
        let id = match self.per {
            Per::Agent => p.id.as_str(),
            Per::Tenant => p.tenant.as_str(),
        };
        (self.only.is_empty() || self.only.iter().any(|o| o == id)).then_some(id)
    }
}
