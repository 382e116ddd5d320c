//! Proofs about the live policy set for every possible request, not for
//! examples: Cedar's symbolic compiler (`cedar-policy-symcc`) turns the set
//! and a property into SMT, and the solver it is handed (cvc5, a process
//! the caller starts) answers. A property is itself Cedar: a policy set
//! whose permits describe requests, and a claim about them —
//!
//! - `never_allows`: the live set allows none of the described requests
//!   (the two sets are disjoint);
//! - `always_allows`: the live set allows every described request (the
//!   description implies the set);
//!
//! or a whole reference policy set (permits and forbids) and how the live
//! set compares with it, request by request:
//!
//! - `allows_at_most`: the live set allows nothing the reference does not
//!   (the live set implies the reference: an envelope it must stay in);
//! - `equivalent_to`: the two sets decide every request alike.
//!
//! A property that fails comes with a counterexample: a concrete request
//! and entities, which the engine itself decides again
//! (`PolicyEngine::decide_concrete`) so a counterexample the engine would
//! not decide as claimed is an error, never a verdict.
//!
//! Must never: call a property proved that the solver did not prove for
//! every request environment of the schema, or start a process itself.

use cedar_policy::{Entities, PolicySet, Request};
use cedar_policy_symcc::solver::Solver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicySet};
use serde::Deserialize;

use crate::engine::{compile, PolicyEngine, PolicySource};
use crate::PolicyError;

/// The arguments every proof starts cvc5 with: the solver's own time limit
/// (a backstop behind the caller's), and its extended string theory —
/// without it, cvc5 refuses the `str.contains` that a Cedar `like` pattern
/// with an inner wildcard (`"*..*"`) compiles to.
pub const CVC5_ARGS: [&str; 2] = ["--tlimit=60000", "--strings-exp"];

/// What a property claims of the requests its policies describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    NeverAllows,
    AlwaysAllows,
    AllowsAtMost,
    Equivalent,
}

impl Claim {
    /// The key it is written under in an invariants file.
    pub fn key(self) -> &'static str {
        match self {
            Claim::NeverAllows => "never_allows",
            Claim::AlwaysAllows => "always_allows",
            Claim::AllowsAtMost => "allows_at_most",
            Claim::Equivalent => "equivalent_to",
        }
    }

    /// How a counterexample breaks the claim, given the live set's decision.
    pub fn broken(self, live_allows: bool) -> &'static str {
        match (self, live_allows) {
            (Claim::NeverAllows, _) => "allowed by the policy set, which must never allow it",
            (Claim::AlwaysAllows, _) => "denied by the policy set, which must always allow it",
            (Claim::AllowsAtMost, _) => {
                "allowed by the policy set and denied by the reference set it must stay within"
            }
            (Claim::Equivalent, true) => {
                "allowed by the policy set and denied by the reference set it must equal"
            }
            (Claim::Equivalent, false) => {
                "denied by the policy set and allowed by the reference set it must equal"
            }
        }
    }

    /// What the live set and the property's policies decide for a
    /// counterexample (live first). `Equivalent`: either way round.
    fn expected(self) -> &'static [(bool, bool)] {
        match self {
            Claim::NeverAllows => &[(true, true)],
            Claim::AlwaysAllows => &[(false, true)],
            Claim::AllowsAtMost => &[(true, false)],
            Claim::Equivalent => &[(true, false), (false, true)],
        }
    }
}

/// One property (an invariant), as written in an invariants file or the
/// config: an id, what it means in words, and exactly one claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawProperty {
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_allows: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always_allows: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allows_at_most: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equivalent_to: Option<String>,
}

/// A checked property: its description parsed and validated against the
/// schema.
#[derive(Debug, Clone)]
pub struct Property {
    pub id: String,
    pub description: String,
    pub claim: Claim,
    requests: PolicySet,
}

impl Property {
    /// Parses and validates a property against the engine's schema.
    pub fn new(raw: &RawProperty, engine: &PolicyEngine) -> Result<Self, PolicyError> {
        let given = [
            (Claim::NeverAllows, &raw.never_allows),
            (Claim::AlwaysAllows, &raw.always_allows),
            (Claim::AllowsAtMost, &raw.allows_at_most),
            (Claim::Equivalent, &raw.equivalent_to),
        ];
        let mut given = given
            .into_iter()
            .filter_map(|(claim, text)| text.as_ref().map(|t| (claim, t)));
        let (claim, text) = match (given.next(), given.next()) {
            (Some(one), None) => one,
            _ => return Err(PolicyError::Invalid {
                file: format!("invariant `{}`", raw.id),
                message:
                    "give exactly one of never_allows, always_allows, allows_at_most, equivalent_to"
                        .into(),
            }),
        };
        let source = PolicySource::new(format!("invariant `{}`", raw.id), text.clone());
        let requests = compile(engine.schema(), &[source])?.set;
        let describes = matches!(claim, Claim::NeverAllows | Claim::AlwaysAllows);
        if describes
            && requests
                .policies()
                .any(|p| p.effect() == cedar_policy::Effect::Forbid)
        {
            return Err(PolicyError::Invalid {
                file: format!("invariant `{}`", raw.id),
                message: "describe the requests with permit policies (a forbid describes none)"
                    .into(),
            });
        }
        Ok(Self {
            id: raw.id.clone(),
            description: raw.description.clone(),
            claim,
            requests,
        })
    }
}

/// A request that breaks a property.
#[derive(Debug, Clone)]
pub struct Counterexample {
    pub request: Request,
    pub entities: Entities,
    /// Principal, action, resource, context and entities, in words.
    pub text: String,
    /// What the live set decides for it (true: allowed).
    pub allowed: bool,
}

impl Counterexample {
    /// The request, then each entity it names but the actions (the schema
    /// declares those), one per line as Cedar's entity JSON.
    pub fn readable(&self) -> String {
        let mut out: Vec<String> = self
            .text
            .lines()
            .take_while(|l| !l.starts_with("entities"))
            .map(str::to_string)
            .collect();
        for entity in self.entities.iter() {
            if entity.uid().type_name().to_string() != "Lattice::Action" {
                out.push(match entity.to_json_value() {
                    Ok(json) => format!("entity {json}"),
                    Err(_) => format!("entity {}", entity.uid()),
                });
            }
        }
        out.join("\n")
    }
}

/// The answer for one property.
#[derive(Debug, Clone)]
pub enum Verdict {
    Holds,
    Fails(Box<Counterexample>),
}

fn symcc_err(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Prove(e.to_string())
}

/// Proves `property` of the engine's live set, request environment by
/// request environment of the schema.
pub async fn prove<S: Solver>(
    engine: &PolicyEngine,
    property: &Property,
    solver: &mut CedarSymCompiler<S>,
) -> Result<Verdict, PolicyError> {
    let schema = engine.schema();
    let authorizer = cedar_policy::Authorizer::new();
    for env in schema.request_envs() {
        let live =
            CompiledPolicySet::compile(engine.live_set(), &env, schema).map_err(symcc_err)?;
        let theirs =
            CompiledPolicySet::compile(&property.requests, &env, schema).map_err(symcc_err)?;
        let found = match property.claim {
            Claim::NeverAllows => solver
                .check_disjoint_with_counterexample_opt(&live, &theirs)
                .await
                .map_err(symcc_err)?,
            Claim::AlwaysAllows => solver
                .check_implies_with_counterexample_opt(&theirs, &live)
                .await
                .map_err(symcc_err)?,
            Claim::AllowsAtMost => solver
                .check_implies_with_counterexample_opt(&live, &theirs)
                .await
                .map_err(symcc_err)?,
            Claim::Equivalent => match solver
                .check_implies_with_counterexample_opt(&live, &theirs)
                .await
                .map_err(symcc_err)?
            {
                Some(found) => Some(found),
                None => solver
                    .check_implies_with_counterexample_opt(&theirs, &live)
                    .await
                    .map_err(symcc_err)?,
            },
        };
        if let Some(found) = found {
            // Both decisions again, by the engine's own authorizer.
            let allowed = engine.decide_concrete(&found.request, &found.entities);
            let other = authorizer
                .is_authorized(&found.request, &property.requests, &found.entities)
                .decision()
                == cedar_policy::Decision::Allow;
            if !property.claim.expected().contains(&(allowed, other)) {
                return Err(PolicyError::Prove(format!(
                    "invariant `{}`: the solver's counterexample is {} by the live set and {} by the property's policies, which does not break the property: {found}",
                    property.id,
                    if allowed { "allowed" } else { "denied" },
                    if other { "allowed" } else { "denied" },
                )));
            }
            return Ok(Verdict::Fails(Box::new(Counterexample {
                text: found.to_string(),
                request: found.request,
                entities: found.entities,
                allowed,
            })));
        }
    }
    Ok(Verdict::Holds)
}

/// Which way a kind of request changed between two sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The new set allows some such requests the old one denied.
    NewlyAllowed,
    /// The new set denies some such requests the old one allowed.
    NewlyDenied,
}

/// One kind of request (a principal type, an action, a resource type)
/// whose decisions differ, with an example request.
#[derive(Debug, Clone)]
pub struct Difference {
    pub change: Change,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub example: Box<Counterexample>,
}

/// The semantic difference of two policy sets (validated against the same
/// schema): every kind of request either set allows that the other does
/// not, with an example that `new` and `old` decide as claimed.
pub async fn diff<S: Solver>(
    old: &PolicyEngine,
    new: &PolicyEngine,
    solver: &mut CedarSymCompiler<S>,
) -> Result<Vec<Difference>, PolicyError> {
    let schema = new.schema();
    let mut out = Vec::new();
    for env in schema.request_envs() {
        let a = CompiledPolicySet::compile(old.live_set(), &env, schema).map_err(symcc_err)?;
        let b = CompiledPolicySet::compile(new.live_set(), &env, schema).map_err(symcc_err)?;
        for (change, from, to) in [
            (Change::NewlyAllowed, &b, &a),
            (Change::NewlyDenied, &a, &b),
        ] {
            // A request `from` allows and `to` does not.
            let Some(found) = solver
                .check_implies_with_counterexample_opt(from, to)
                .await
                .map_err(symcc_err)?
            else {
                continue;
            };
            let (now, before) = (
                new.decide_concrete(&found.request, &found.entities),
                old.decide_concrete(&found.request, &found.entities),
            );
            if now == before || now != (change == Change::NewlyAllowed) {
                return Err(PolicyError::Prove(format!(
                    "the solver's example is decided {now} by the new set and {before} by the old: {found}"
                )));
            }
            out.push(Difference {
                change,
                principal: env.principal().to_string(),
                action: env.action().to_string(),
                resource: env.resource().to_string(),
                example: Box::new(Counterexample {
                    text: found.to_string(),
                    request: found.request,
                    entities: found.entities,
                    allowed: now,
                }),
            });
        }
    }
    Ok(out)
}
