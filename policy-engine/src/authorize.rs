//! Cedar's authorization rule over conditions built once per slice.
//!
//! `cedar_policy::Authorizer::is_authorized` rebuilds every policy's
//! condition (its scope and clauses joined into one `Expr`, allocated and
//! dropped) on each call, clones the request, and keeps the partial
//! evaluator's bookkeeping (six vectors, a response rebuilt as policies):
//! together about a fifth of a decision Cedar makes for the gateway. Here
//! each policy's condition is built once, when its slice is built, with
//! Cedar's own `Policy::condition`, and evaluated with Cedar's own
//! `Evaluator::interpret`. What stays ours is the rule that combines them,
//! Cedar's as its authorizer applies it (`Authorizer::is_authorized_core`
//! and `Response::from(PartialResponse)`): a policy is satisfied when its
//! condition is `true`; a policy whose evaluation fails is skipped, its
//! error reported as Cedar's `AuthorizationError`, in the set's order; Cedar
//! allows when some permit is satisfied and no forbid is; the deciding
//! policies are the satisfied forbids when there is one, else the satisfied
//! permits. Lattice then denies on any error (a skipped forbid could have
//! turned a deny into an allow).
//!
//! Must never: evaluate anything but Cedar's own condition of a policy with
//! Cedar's own evaluator, or combine by another rule than Cedar's — the
//! tests check every case of the rule against `Authorizer::is_authorized`,
//! and the engine's property test checks every decision against it.

use cedar_policy_core::ast::{self, Effect, Expr, Literal, PolicyID, SlotEnv, Value, ValueKind};
use cedar_policy_core::authorizer::AuthorizationError;
use cedar_policy_core::entities::Entities;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{Decision, Outcome};

/// One policy: its id, effect, condition and slot values.
#[derive(Debug, Clone)]
struct Condition {
    id: PolicyID,
    effect: Effect,
    expr: Expr,
    env: SlotEnv,
}

impl Condition {
    fn of(p: &ast::Policy) -> Arc<Self> {
        Arc::new(Self {
            id: p.id().clone(),
            effect: p.effect(),
            expr: p.condition(),
            env: p.env().clone(),
        })
    }
}

/// The conditions of a policy set's policies, in the set's order. A slice
/// shares its conditions with the whole set's (`shared`): each policy's
/// expression is built once, however many slices hold it.
#[derive(Debug, Clone)]
pub(crate) struct Conditions(Vec<Arc<Condition>>);

impl Conditions {
    pub(crate) fn of(set: &cedar_policy::PolicySet) -> Self {
        let set: &ast::PolicySet = set.as_ref();
        Self(set.policies().map(Condition::of).collect())
    }

    /// The conditions of `subset`'s policies (a slice of the set these are
    /// the conditions of), in `subset`'s order, shared with these.
    pub(crate) fn shared(&self, subset: &cedar_policy::PolicySet) -> Self {
        let by_id: HashMap<&PolicyID, &Arc<Condition>> =
            self.0.iter().map(|c| (&c.id, c)).collect();
        let subset: &ast::PolicySet = subset.as_ref();
        Self(
            subset
                .policies()
                .map(|p| match by_id.get(p.id()) {
                    Some(c) => Arc::clone(c),
                    // Not of this set (no caller does this): built anew.
                    None => Condition::of(p),
                })
                .collect(),
        )
    }

    /// Decides `request` as Cedar's authorizer would, then denies on any
    /// evaluation error.
    pub(crate) fn decide(
        &self,
        request: &cedar_policy::Request,
        entities: &cedar_policy::Entities,
    ) -> Decision {
        let request: &ast::Request = request.as_ref();
        let entities: &Entities = entities.as_ref();
        let eval = Evaluator::new(request.clone(), entities, Extensions::all_available());
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errors = Vec::new();
        for c in &self.0 {
            match eval.interpret(&c.expr, &c.env) {
                Ok(Value {
                    value: ValueKind::Lit(Literal::Bool(satisfied)),
                    ..
                }) => match (satisfied, c.effect) {
                    (true, Effect::Permit) => permits.push(c.id.as_ref().to_string()),
                    (true, Effect::Forbid) => forbids.push(c.id.as_ref().to_string()),
                    (false, _) => {}
                },
                // Cannot happen: a condition is its parts joined with `&&`,
                // which evaluates to a boolean or fails. Denied all the same.
                Ok(other) => errors.push(format!(
                    "policy `{}`: its condition evaluated to {other}, not a boolean",
                    c.id
                )),
                Err(error) => errors.push(error_text(c.id.clone(), error)),
            }
        }
        let outcome = if errors.is_empty() && forbids.is_empty() && !permits.is_empty() {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let mut policies = if forbids.is_empty() { permits } else { forbids };
        policies.sort();
        Decision {
            outcome,
            policies,
            errors,
        }
    }
}

/// Cedar's message for a policy whose evaluation failed, as
/// `cedar_policy::Response`'s diagnostics give it.
fn error_text(id: PolicyID, error: cedar_policy_core::evaluator::EvaluationError) -> String {
    let core = AuthorizationError::PolicyEvaluationError { id, error };
    cedar_policy::AuthorizationError::from(
        cedar_policy::authorization_errors::PolicyEvaluationError::from(core),
    )
    .to_string()
}

/// Cedar's own decision with `set`, as the engine reports it: what
/// `Conditions::decide` is checked against.
#[cfg(test)]
pub(crate) fn by_cedar(
    set: &cedar_policy::PolicySet,
    request: &cedar_policy::Request,
    entities: &cedar_policy::Entities,
) -> Decision {
    let response = cedar_policy::Authorizer::new().is_authorized(request, set, entities);
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
    let mut policies: Vec<String> = diagnostics
        .reason()
        .map(|p| AsRef::<str>::as_ref(p).to_string())
        .collect();
    policies.sort();
    let outcome = if errors.is_empty() && response.decision() == cedar_policy::Decision::Allow {
        Outcome::Allow
    } else {
        Outcome::Deny
    };
    Decision {
        outcome,
        policies,
        errors,
    }
}

#[cfg(test)]
impl Conditions {
    /// The policies' ids, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.iter().map(|c| c.id.as_ref().to_string()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
#[path = "authorize_tests.rs"]
mod tests;
