//! Invariants that gate every policy change: the config's `[[invariants]]`
//! are proved of a new policy set (at start, on reload, by `lattice config
//! validate`) with the cvc5 solver, each within `policy.invariant_timeout_ms`.
//! A violated invariant, one not proved in time, or no solver to prove it
//! refuses the set: the caller keeps the old one (and audits the refusal).
//! For review (the admin API's candidate check), every invariant's answer
//! and the semantic diff of two sets, each bounded the same way.
//!
//! Must never: let a set through whose invariants were not all proved.

use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::CedarSymCompiler;
use lattice_policy::prove::{prove, Counterexample, Difference, Property, RawProperty, Verdict};
use lattice_policy::PolicyEngine;
use serde::Serialize;
use std::time::{Duration, Instant};

use crate::GatewayError;

/// An invariant the live set was proved to satisfy.
#[derive(Debug, Clone, Serialize)]
pub struct Proved {
    pub id: String,
    pub description: String,
    pub claim: &'static str,
    pub ms: u64,
}

/// One invariant's answer for a policy set.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub property: Property,
    /// Err: not proved (the time ran out).
    pub verdict: Result<Verdict, String>,
    pub ms: u64,
}

/// Runs `f` on a thread of its own with a runtime of its own: callers may
/// be inside an async runtime, and the solver is a child process.
fn on_own_thread<T: Send>(
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, GatewayError> + Send,
) -> Result<T, GatewayError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| GatewayError::Server(e.to_string()))?;
                f(&rt)
            })
            .join()
            .map_err(|_| GatewayError::Server("the invariant prover panicked".into()))?
    })
}

fn solver() -> Result<CedarSymCompiler<LocalSolver>, GatewayError> {
    let cvc5 = LocalSolver::cvc5_with_args(lattice_policy::prove::CVC5_ARGS).map_err(|e| {
        GatewayError::Config(format!(
            "invariants are configured but the cvc5 solver cannot start ({e}): install it (scripts/setup) or set CVC5"
        ))
    })?;
    CedarSymCompiler::new(cvc5).map_err(|e| GatewayError::Config(e.to_string()))
}

/// Each invariant's answer for the engine's live set, in order; with
/// `all` false, up to the first that does not hold. An error when an
/// invariant is not valid Cedar or the solver cannot start.
pub fn outcomes(
    engine: &PolicyEngine,
    invariants: &[RawProperty],
    limit: Duration,
    all: bool,
) -> Result<Vec<Outcome>, GatewayError> {
    if invariants.is_empty() {
        return Ok(Vec::new());
    }
    let properties = invariants
        .iter()
        .map(|raw| Property::new(raw, engine))
        .collect::<Result<Vec<_>, _>>()?;
    on_own_thread(|rt| {
        rt.block_on(async {
            let mut out = Vec::new();
            for property in properties {
                let mut solver = solver()?;
                let start = Instant::now();
                let verdict = match tokio::time::timeout(
                    limit,
                    prove(engine, &property, &mut solver),
                )
                .await
                {
                    Err(_) => Err(format!("not proved within {} ms", limit.as_millis())),
                    Ok(v) => Ok(v?),
                };
                let holds = matches!(verdict, Ok(Verdict::Holds));
                out.push(Outcome {
                    property,
                    verdict,
                    ms: start.elapsed().as_millis() as u64,
                });
                if !holds && !all {
                    break;
                }
            }
            Ok(out)
        })
    })
}

/// The first invariant the set breaks, with its counterexample; none when
/// every one is proved. An error when one cannot be proved at all.
pub fn violation(
    engine: &PolicyEngine,
    invariants: &[RawProperty],
    limit: Duration,
) -> Result<Option<(Property, Counterexample)>, GatewayError> {
    match outcomes(engine, invariants, limit, false)?.pop() {
        Some(Outcome {
            property,
            verdict: Ok(Verdict::Fails(cex)),
            ..
        }) => Ok(Some((property, *cex))),
        Some(Outcome {
            property,
            verdict: Err(_),
            ..
        }) => Err(GatewayError::Config(format!(
            "invariant `{}` was not proved within {} ms: the policy set is refused",
            property.id,
            limit.as_millis()
        ))),
        _ => Ok(None),
    }
}

/// The counterexample's request, in one line (its entities left out).
pub fn request_line(cex: &Counterexample) -> String {
    cex.text
        .lines()
        .take_while(|l| !l.starts_with("entities"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `outcomes` as a refusal: every invariant proved (with its proof time),
/// or the error naming the first that is not.
pub fn check(
    engine: &PolicyEngine,
    invariants: &[RawProperty],
    limit: Duration,
) -> Result<Vec<Proved>, GatewayError> {
    let mut proved = Vec::new();
    for o in outcomes(engine, invariants, limit, false)? {
        let p = &o.property;
        match o.verdict {
            Ok(Verdict::Holds) => proved.push(Proved {
                id: p.id.clone(),
                description: p.description.clone(),
                claim: p.claim.key(),
                ms: o.ms,
            }),
            Err(_) => {
                return Err(GatewayError::Config(format!(
                    "invariant `{}` was not proved within {} ms: the policy set is refused",
                    p.id,
                    limit.as_millis()
                )))
            }
            Ok(Verdict::Fails(cex)) => {
                return Err(GatewayError::Config(format!(
                    "the policy set breaks invariant `{}`{}: a request is {}. Counterexample: {}",
                    p.id,
                    if p.description.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.description)
                    },
                    p.claim.broken(cex.allowed),
                    request_line(&cex)
                )))
            }
        }
    }
    Ok(proved)
}

/// The semantic diff of two sets, within `limit` in all.
pub fn diff(
    old: &PolicyEngine,
    new: &PolicyEngine,
    limit: Duration,
) -> Result<Vec<Difference>, GatewayError> {
    on_own_thread(|rt| {
        rt.block_on(async {
            let mut solver = solver()?;
            match tokio::time::timeout(limit, lattice_policy::prove::diff(old, new, &mut solver))
                .await
            {
                Err(_) => Err(GatewayError::Config(format!(
                    "the semantic diff did not finish within {} ms",
                    limit.as_millis()
                ))),
                Ok(d) => Ok(d?),
            }
        })
    })
}
