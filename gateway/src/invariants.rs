//! Invariants that gate every policy change: the config's `[[invariants]]`
//! are proved of a new policy set (at start, on reload, by `lattice config
//! validate`) with the cvc5 solver, each within `policy.invariant_timeout_ms`.
//! A violated invariant, one not proved in time, or no solver to prove it
//! refuses the set: the caller keeps the old one (and audits the refusal).
//!
//! Must never: let a set through whose invariants were not all proved.

use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::CedarSymCompiler;
use lattice_policy::prove::{prove, Claim, Counterexample, Property, RawProperty, Verdict};
use lattice_policy::PolicyEngine;
use std::time::Duration;

use crate::GatewayError;

/// The first invariant the set breaks, with its counterexample; none when
/// every one is proved. An error when one cannot be proved at all.
pub fn violation(
    engine: &PolicyEngine,
    invariants: &[RawProperty],
    limit: Duration,
) -> Result<Option<(Property, Counterexample)>, GatewayError> {
    if invariants.is_empty() {
        return Ok(None);
    }
    let properties = invariants
        .iter()
        .map(|raw| Property::new(raw, engine))
        .collect::<Result<Vec<_>, _>>()?;
    // A thread of its own: callers may be inside an async runtime.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| GatewayError::Server(e.to_string()))?;
                rt.block_on(async {
                    for p in properties {
                        let cvc5 = LocalSolver::cvc5().map_err(|e| {
                            GatewayError::Config(format!(
                                "invariants are configured but the cvc5 solver cannot start ({e}): install it (scripts/setup) or set CVC5"
                            ))
                        })?;
                        let mut solver = CedarSymCompiler::new(cvc5)
                            .map_err(|e| GatewayError::Config(e.to_string()))?;
                        match tokio::time::timeout(limit, prove(engine, &p, &mut solver)).await {
                            Err(_) => {
                                return Err(GatewayError::Config(format!(
                                    "invariant `{}` was not proved within {} ms: the policy set is refused",
                                    p.id,
                                    limit.as_millis()
                                )))
                            }
                            Ok(Err(e)) => return Err(e.into()),
                            Ok(Ok(Verdict::Holds)) => {}
                            Ok(Ok(Verdict::Fails(cex))) => return Ok(Some((p, *cex))),
                        }
                    }
                    Ok(None)
                })
            })
            .join()
            .map_err(|_| GatewayError::Server("the invariant prover panicked".into()))?
    })
}

/// `violation` as a refusal: Ok when every invariant holds.
pub fn check(
    engine: &PolicyEngine,
    invariants: &[RawProperty],
    limit: Duration,
) -> Result<(), GatewayError> {
    match violation(engine, invariants, limit)? {
        None => Ok(()),
        Some((p, cex)) => {
            let how = p.claim.broken(cex.allowed);
            Err(GatewayError::Config(format!(
                "the policy set breaks invariant `{}`{}: a request is {how}. Counterexample: {}",
                p.id,
                if p.description.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.description)
                },
                cex.text
                    .lines()
                    .take_while(|l| !l.starts_with("entities"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )))
        }
    }
}
