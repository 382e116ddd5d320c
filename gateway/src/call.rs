//! One call's bookkeeping, the core every door shares: what the call is
//! (`CallFacts`, which door it came through), where it stands on the
//! enforcement path, and the one way a decision is recorded (`Call::allow`,
//! `Call::refuse`, `Call::forbid`): the decision event is enqueued with its
//! outcome's queue place reserved, honouring `audit.on_full`, and only then
//! is the call's decision set. A call whose decision is recorded owes
//! exactly one outcome event, written by the proxy's `logging` hook.
//!
//! Must never: write to the agent (that is `respond`), let a call past step
//! 7 whose decision was not recorded (unless `audit.on_full = "allow"` says
//! so, loudly), or know a door's protocol.

use lattice_audit::{AuditEvent, Durable, OutcomeSlot};
use lattice_policy::{Evaluation, Principal};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Durability, OnFull, Route};
use crate::enforce::{CallFacts, STEPS};
use crate::error::Rejection;
use crate::limits::{Admitted, CallKind, LimitSpec, Refusal};
use crate::runtime::{Runtime, Shared};

/// The door a call came through: it decides the shape of every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Door {
    /// An HTTP tool route (`[[routes]]`), proxied by Pingora.
    #[default]
    Route,
    /// `/mcp` and `/mcp/<server>`: JSON-RPC.
    Mcp,
    /// `/v1`: the OpenAI API (refusals in OpenAI's error format).
    Llm,
    /// `/admin/v1`.
    Admin,
}

/// A route call's target, settled by the route door before forwarding.
pub struct RouteTarget {
    pub route: Arc<Route>,
    pub upstream_path: String,
}

/// The MCP door's per-call state.
#[derive(Default)]
pub struct McpCall {
    /// `/mcp/<server>`: the one server this request is scoped to.
    pub scope: Option<String>,
    /// A stateless-era (2026-07-28) request.
    pub stateless: bool,
    /// The session id an `initialize` answer carries.
    pub session_id: Option<String>,
    /// The id inside a valid `Mcp-Session-Id` the request came with.
    pub sid: Option<String>,
    /// The relayable capabilities that session's client declared.
    pub caps: Vec<String>,
    /// The RFC 9728 metadata URL named in a 401.
    pub resource_metadata: Option<String>,
}

/// The LLM door's per-call state, for the outcome event.
#[derive(Default)]
pub struct LlmCall {
    /// Token usage a backend reported.
    pub usage: Option<lattice_inference_router::Usage>,
    /// Time to the first byte of a streamed answer.
    pub ttft_us: Option<u64>,
}

/// One call, from the first byte read to its outcome event.
pub struct Call {
    pub start: Instant,
    pub facts: CallFacts,
    pub door: Door,
    pub traceparent: String,
    /// The caller's span id, from its `traceparent` (none: a new trace).
    pub trace_parent: Option<String>,
    /// When each enforcement step was first entered (by number), for the
    /// call's trace.
    pub(crate) entered: [Option<Instant>; 11],
    pub max_body: u64,
    /// The last enforcement step entered (`STEPS` numbering; 0: none).
    step: u8,
    /// Hash of an MCP tool result, for the outcome event.
    pub result_hash: Option<String>,
    /// True once the decision is settled (recorded, or let through
    /// unaudited under `audit.on_full = allow`): an outcome is then owed.
    pub(crate) decided: bool,
    /// The queue place reserved for the outcome event.
    pub(crate) outcome_slot: Option<OutcomeSlot>,
    /// The status of a refusal we answered ourselves.
    pub(crate) refused: Option<u16>,
    /// Why the call failed after the decision, for the outcome event.
    pub failure: Option<String>,
    pub route: Option<RouteTarget>,
    pub body_seen: u64,
    pub mcp: McpCall,
    pub llm: LlmCall,
}

impl Call {
    pub fn new(max_body: u64) -> Self {
        Self {
            start: Instant::now(),
            facts: CallFacts::default(),
            door: Door::default(),
            traceparent: String::new(),
            trace_parent: None,
            entered: [None; 11],
            max_body,
            step: 0,
            result_hash: None,
            decided: false,
            outcome_slot: None,
            refused: None,
            failure: None,
            route: None,
            body_seen: 0,
            mcp: McpCall::default(),
            llm: LlmCall::default(),
        }
    }

    /// Enters enforcement step `number` of `STEPS`. The path only moves
    /// forward (a step may be entered again, e.g. step 5 after step 4 on
    /// MCP, but never one before the last step that precedes it in the
    /// table); a door that tries otherwise is refused as an internal error,
    /// recorded unless its decision already was, never let through.
    pub fn enter(&mut self, node: &Shared, runtime: &Runtime, number: u8) -> Result<(), Rejection> {
        let Err(r) = self.advance(number) else {
            return Ok(());
        };
        tracing::error!(request_id = %self.facts.request_id, error = %r.message(), "enforcement order broken");
        if self.decided {
            return Err(r);
        }
        let reason = r.message();
        self.refuse(node, runtime, r, &reason)
    }

    /// The order check of `enter`, without the refusal.
    fn advance(&mut self, number: u8) -> Result<(), Rejection> {
        let step = STEPS
            .iter()
            .find(|s| s.number == number)
            .ok_or_else(|| Rejection::Internal(format!("no enforcement step {number}")))?;
        if !step_may_follow(self.step, number) {
            return Err(Rejection::Internal(format!(
                "enforcement step {number} ({}) after step {}",
                step.name, self.step
            )));
        }
        self.step = self.step.max(number);
        if let Some(slot @ None) = self.entered.get_mut(usize::from(number)) {
            *slot = Some(Instant::now());
        }
        Ok(())
    }

    /// Step 7: enqueues a decision event, reserving its outcome's place,
    /// honouring `audit.on_full`; a call that `waits` for it to be durable
    /// writes it itself when the audit writer is free. Err means refuse
    /// (503); Ok holds what says when the decision is durable (none for a
    /// call let through unaudited).
    fn record(
        &mut self,
        node: &Shared,
        runtime: &Runtime,
        event: AuditEvent,
        waits: bool,
    ) -> Result<Option<Durable>, Rejection> {
        let recorded = if waits {
            node.audit.write_decision(event)
        } else {
            node.audit.record_decision(event)
        };
        match recorded {
            Ok((slot, durable)) => {
                self.outcome_slot = Some(slot);
                self.decided = true;
                if !waits {
                    node.outages.audit_recorded();
                }
                Ok(Some(durable))
            }
            Err(e) if runtime.config.audit.on_full == OnFull::Allow => {
                node.metrics.audit_bypassed.inc();
                node.audit.note_bypassed();
                node.outages.unaudited.log_hit(&e, "let through UNAUDITED");
                self.decided = true;
                Ok(None)
            }
            Err(e) => {
                node.metrics.audit_refused.inc();
                node.outages.audit.log_hit(&e, "refused (fail closed)");
                Err(Rejection::AuditUnavailable)
            }
        }
    }

    /// Records an `allow` decision (step 7) and, unless the audit is
    /// asynchronous, waits for it to be on stable storage: nothing is
    /// forwarded before. Err: the 503 to answer.
    pub async fn allow(
        &mut self,
        node: &Shared,
        runtime: &Runtime,
        event: AuditEvent,
    ) -> Result<(), Rejection> {
        self.enter(node, runtime, 7)?;
        let waits = runtime.config.audit.durability == Durability::Durable;
        let durable = self.record(node, runtime, event, waits)?;
        if let (Some(d), true) = (durable, waits) {
            match d.wait(runtime.config.audit.durable_timeout).await {
                Ok(()) => node.outages.audit_recorded(),
                // Queued, written once the store recovers.
                Err(e) if runtime.config.audit.on_full == OnFull::Allow => {
                    node.outages
                        .not_durable
                        .log_hit(&e, "forwarded before their decision was durable");
                }
                Err(e) => {
                    node.metrics.audit_refused.inc();
                    node.outages.audit.log_hit(&e, "refused (fail closed)");
                    return Err(Rejection::AuditUnavailable);
                }
            }
        }
        self.facts.decision = "allow";
        Ok(())
    }

    /// Records a refusal at any step; always Err: the refusal to answer
    /// (or 503 when even the refusal could not be recorded).
    pub fn refuse(
        &mut self,
        node: &Shared,
        runtime: &Runtime,
        rejection: Rejection,
        reason: &str,
    ) -> Result<(), Rejection> {
        let event = self.facts.refusal_event(rejection.status(), reason, None);
        self.refuse_with(node, runtime, rejection, event)
    }

    /// Step 5's refusal: 403 naming the decision event, which records the
    /// deciding policies.
    pub fn forbid(
        &mut self,
        node: &Shared,
        runtime: &Runtime,
        evaluation: &Evaluation,
    ) -> Result<(), Rejection> {
        let event = self
            .facts
            .refusal_event(403, "denied by policy", Some(evaluation));
        let rejection = Rejection::Forbidden {
            decision_id: event.event_id.clone(),
        };
        self.refuse_with(node, runtime, rejection, event)
    }

    /// Records a `deny` decision whose answer the door writes itself (a
    /// JSON-RPC error, say). Err: the 503 to answer instead.
    pub fn deny(
        &mut self,
        node: &Shared,
        runtime: &Runtime,
        event: AuditEvent,
    ) -> Result<(), Rejection> {
        self.record(node, runtime, event, false)?;
        self.facts.decision = "deny";
        Ok(())
    }

    /// Records the decision event of a refusal; an outcome is then owed.
    /// Always Err: `rejection`, or the 503 when it could not be recorded.
    pub fn refuse_with(
        &mut self,
        node: &Shared,
        runtime: &Runtime,
        rejection: Rejection,
        event: AuditEvent,
    ) -> Result<(), Rejection> {
        self.deny(node, runtime, event)?;
        Err(rejection)
    }
}

/// May step `next` follow the last step entered, `last`? Forward always;
/// back only to the steps that a door runs twice or out of table order by
/// design: authorization (5) again after the schema check (4) on MCP, and
/// the schema check (4) before target resolution (3) on `/v1` — each
/// documented in ARCHITECTURE.md.
pub fn step_may_follow(last: u8, next: u8) -> bool {
    next >= last || (next == 3 && last == 4) || (next == 4 && last == 5)
}

/// Step 6: the limits that apply to this principal and kind of call.
/// Err: the refusal (429, or 503 when fail-closed limits cannot be
/// counted) and the audit reason.
pub async fn admit(
    node: &Shared,
    limits: &[LimitSpec],
    principal: &Principal,
    kind: CallKind,
) -> Result<(), (Rejection, String)> {
    let now = lattice_audit::now_us() / 1_000_000;
    match node.limiter.admit(limits, principal, kind, now).await {
        Ok(Admitted { bypassed: None }) => {
            node.outages.limits.log_clear();
            Ok(())
        }
        Ok(Admitted {
            bypassed: Some((names, cause)),
        }) => {
            node.metrics.limits_bypassed.inc();
            // Formatted only when it is logged: most calls of an outage are not.
            node.outages.limits.log_hit(
                &format_args!("{cause} (limits {names:?})"),
                "let through UNCOUNTED (on_unavailable = allow)",
            );
            Ok(())
        }
        Err(Refusal::Exceeded(e)) => {
            let reason = format!(
                "limit `{}` reached ({}); retry after {} s",
                e.limit, e.what, e.retry_after_s
            );
            let r = Rejection::RateLimited {
                limit: e.limit,
                what: e.what,
                retry_after_s: e.retry_after_s,
            };
            Err((r, reason))
        }
        Err(Refusal::Unavailable { limits, cause }) => {
            node.metrics.limits_unavailable.inc();
            let reason = format!(
                "limit(s) {} cannot be counted: {cause}; refused (on_unavailable = deny)",
                limits
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Err((Rejection::LimitsUnavailable, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::step_may_follow;

    /// (last step entered, next step, allowed)
    const ORDER: &[(u8, u8, bool)] = &[
        (0, 1, true),
        (1, 2, true),
        (2, 3, true),
        (3, 5, true),
        (5, 6, true),
        (6, 7, true),
        (7, 8, true),
        (4, 3, true),
        (5, 4, true),
        (4, 5, true),
        (7, 5, false),
        (6, 2, false),
        (8, 7, false),
        (3, 1, false),
    ];

    #[test]
    fn the_path_only_moves_forward_but_for_the_documented_exceptions() {
        for &(last, next, allowed) in ORDER {
            assert_eq!(step_may_follow(last, next), allowed, "{last} -> {next}");
        }
    }
}
