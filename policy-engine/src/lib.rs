//! # lattice-policy
//!
//! Owns authorization: the Lattice Cedar schema, loading and validating
//! policy sets against it, and the decision function (live set plus an
//! optional shadow set) whose decisions carry the ids of the deciding
//! policies. Also owns the `lattice policy test` case-file format.
//!
//! Must never: do I/O (policy text comes in as strings; `prove` talks to a
//! solver the caller hands it), read a clock (time
//! is a context attribute), or turn an error into an allow — a request that
//! fails validation or a policy that errors during evaluation yields a deny.

mod authorize;
mod build;
mod cases;
mod engine;
mod memo;
#[cfg(test)]
mod memo_tests;
pub mod prove;
mod request;
mod slice;

pub use cases::{run_cases, Case, CaseFile, CaseResult};
pub use engine::{schema, Decision, Evaluation, Outcome, PolicyEngine, PolicySource, SCHEMA_SRC};
pub use request::{
    Action, AuthzRequest, ContextValue, Principal, PrincipalKind, RequestContext, Resource,
};

/// Everything that can go wrong loading policies or test cases.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the Lattice schema does not parse: {0}")]
    Schema(String),
    #[error("{file}: policy does not parse: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("policies do not validate against the Lattice schema:\n{0}")]
    Validation(String),
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    #[error("{file}: {message}")]
    Cases { file: String, message: String },
    #[error("proof: {0}")]
    Prove(String),
}
