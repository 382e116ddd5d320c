//! Policy slices: for each (action, principal kind), the policies of a set
//! whose scope can match a request of that shape. Cedar's authorizer
//! evaluates every policy of the set it is given; a policy whose scope names
//! another action (or another principal type) evaluates to false before its
//! conditions are read, so leaving it out changes neither the decision, nor
//! the deciding policies, nor the errors. Slicing is decided from the scope
//! alone (`action ==`, `action in [...]` with the schema's action groups,
//! `principal ==`, `principal is`); anything else keeps the policy in.
//!
//! Must never: leave out a policy that could be satisfied by a request of
//! its slice's shape — when in doubt a policy stays in every slice.

use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, Schema,
};
use std::collections::HashSet;

use crate::authorize::Conditions;
use crate::build::Builder;
use crate::memo::{reads, Reads};
use crate::request::{Action, PrincipalKind};
use crate::PolicyError;

const KINDS: [PrincipalKind; 2] = [PrincipalKind::Agent, PrincipalKind::Human];

/// The conditions of one policy set per (action, principal kind), indexed
/// by `index`, with the context attributes its policies read; and the whole
/// set's, whose conditions every slice shares.
#[derive(Debug, Clone)]
pub(crate) struct Slices {
    sets: Vec<(Conditions, Reads)>,
    whole: Conditions,
}

fn index(action: Action, kind: PrincipalKind) -> usize {
    let a = Action::ALL
        .iter()
        .position(|x| *x == action)
        .unwrap_or_default();
    let k = match kind {
        PrincipalKind::Agent => 0,
        PrincipalKind::Human => 1,
    };
    a * KINDS.len() + k
}

impl Slices {
    pub(crate) fn new(
        schema: &Schema,
        builder: &Builder,
        set: &PolicySet,
    ) -> Result<Self, PolicyError> {
        let whole = Conditions::of(set);
        let actions = schema
            .action_entities()
            .map_err(|e| PolicyError::Schema(format!("action entities: {e}")))?;
        let mut sets = Vec::with_capacity(Action::ALL.len() * KINDS.len());
        for action in Action::ALL {
            let uid = builder
                .uid("Action", action.as_str())
                .map_err(PolicyError::Schema)?;
            // The action and every group it belongs to.
            let mut names: HashSet<EntityUid> = actions
                .ancestors(&uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default();
            names.insert(uid);
            for kind in KINDS {
                let principal_type = builder.type_name(kind.type_name());
                let mut slice = PolicySet::new();
                for policy in set.policies() {
                    if may_apply(policy, &names, principal_type) {
                        slice
                            .add(policy.clone())
                            .map_err(|e| PolicyError::Schema(format!("policy slice: {e}")))?;
                    }
                }
                sets.push((whole.shared(&slice), reads(&slice)));
            }
        }
        Ok(Self { sets, whole })
    }

    /// The policies that may apply to a request of this action and principal
    /// kind (the whole set if no slice exists, which cannot happen: every
    /// action has one).
    pub(crate) fn get(&self, action: Action, kind: PrincipalKind) -> (&Conditions, &Reads) {
        match self.sets.get(index(action, kind)) {
            Some((conditions, reads)) => (conditions, reads),
            None => (&self.whole, &Reads::Whole),
        }
    }
}

/// False only when the scope rules the request out: the action is not the
/// one (or in a group) the policy names, or the principal's type is not the
/// one the policy names.
fn may_apply(
    policy: &Policy,
    actions: &HashSet<EntityUid>,
    principal_type: Option<&EntityTypeName>,
) -> bool {
    let action_ok = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => actions.contains(&uid),
        ActionConstraint::In(list) => list.iter().any(|uid| actions.contains(uid)),
    };
    let principal_ok = match (policy.principal_constraint(), principal_type) {
        (_, None) => true,
        (PrincipalConstraint::Eq(uid), Some(t)) => uid.type_name() == t,
        (PrincipalConstraint::Is(is), Some(t)) | (PrincipalConstraint::IsIn(is, _), Some(t)) => {
            &is == t
        }
        (PrincipalConstraint::Any, _) | (PrincipalConstraint::In(_), _) => true,
    };
    action_ok && principal_ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::str::FromStr;

    /// Each scope form, and the slices it lands in: a table.
    #[test]
    fn each_scope_form_lands_in_the_slices_it_can_match() {
        let text = r#"
            @id("any") permit (principal, action, resource);
            @id("http-eq") permit (principal, action == Lattice::Action::"http_request", resource);
            @id("chat-in") permit (principal, action in [Lattice::Action::"chat", Lattice::Action::"embed"], resource);
            @id("human-is") permit (principal is Lattice::Human, action, resource);
            @id("agent-eq") forbid (principal == Lattice::Agent::"a", action == Lattice::Action::"chat", resource);
            @id("role-in") permit (principal in Lattice::Role::"r", action == Lattice::Action::"chat", resource);
            @id("agent-is-in") permit (principal is Lattice::Agent in Lattice::Role::"r", action, resource);
        "#;
        let mut set = PolicySet::new();
        for p in PolicySet::from_str(text).unwrap().policies() {
            let id = p.annotation("id").unwrap_or("?").to_string();
            set.add(p.new_id(cedar_policy::PolicyId::new(&id))).unwrap();
        }
        let schema = crate::schema().unwrap();
        let builder = Builder::new().unwrap();
        let slices = Slices::new(&schema, &builder, &set).unwrap();
        let table: [(Action, PrincipalKind, &[&str]); 6] = [
            (
                Action::HttpRequest,
                PrincipalKind::Agent,
                &["agent-is-in", "any", "http-eq"],
            ),
            (
                Action::HttpRequest,
                PrincipalKind::Human,
                &["any", "http-eq", "human-is"],
            ),
            (
                Action::Chat,
                PrincipalKind::Agent,
                &["agent-eq", "agent-is-in", "any", "chat-in", "role-in"],
            ),
            (
                Action::Chat,
                PrincipalKind::Human,
                &["any", "chat-in", "human-is", "role-in"],
            ),
            (
                Action::Embed,
                PrincipalKind::Agent,
                &["agent-is-in", "any", "chat-in"],
            ),
            (Action::Install, PrincipalKind::Human, &["any", "human-is"]),
        ];
        for (action, kind, want) in table {
            assert_eq!(
                slices.get(action, kind).0.ids(),
                want.to_vec(),
                "{action} {kind:?}"
            );
        }
        // Every (action, kind) has its slice.
        for action in Action::ALL {
            for kind in KINDS {
                assert!(slices.sets.get(index(action, kind)).is_some());
            }
        }
    }
}
