//! A policy pack's own checks, before it is offered or installed: its
//! policies (with its test base and `ToolInput` fragment) compile and
//! validate against the Lattice Cedar schema, every test case gets the
//! decision it expects, and every invariant is proved by the same solver
//! and code the gateway uses for `[[invariants]]` (cvc5, bounded time).
//!
//! Must never: report a pack as passing when a case failed or an
//! invariant was not proved (a solver that cannot start is an error, not
//! a pass).

use crate::entry::{Entry, Kind};
use crate::{RegistryError, Result};
use lattice_policy::prove::RawProperty;
use lattice_policy::{run_cases, Case, CaseFile, PolicyEngine, PolicySource};
use serde_json::Value;
use std::time::Duration;

/// What a pack's checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub cases: usize,
    /// Ids of the invariants proved.
    pub proved: Vec<String>,
}

fn pack_err(entry: &Entry, message: impl Into<String>) -> RegistryError {
    RegistryError::Pack {
        entry: entry.id(),
        message: message.into(),
    }
}

/// The pack's policy files, as policy sources named `<pack>/<file>`.
pub fn policies(entry: &Entry) -> Vec<PolicySource> {
    entry.doc["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            PolicySource::new(
                format!("{}/{}", entry.name, p["file"].as_str().unwrap_or("")),
                p["text"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// The pack's invariants.
pub fn invariants(entry: &Entry) -> Result<Vec<RawProperty>> {
    entry
        .doc
        .get("invariants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| pack_err(entry, format!("an invariant cannot be read: {e}")))
        })
        .collect()
}

/// The engine the pack's tests and proofs run on: its policies over its
/// test base.
pub fn test_engine(entry: &Entry) -> Result<PolicyEngine> {
    let mut sources = policies(entry);
    if let Some(base) = entry.doc.get("testBase").and_then(Value::as_str) {
        sources.push(PolicySource::new(format!("{}/testBase", entry.name), base));
    }
    let input = entry.doc.get("toolInputSchema").and_then(Value::as_str);
    PolicyEngine::with_tool_input(&sources, None, input).map_err(|e| pack_err(entry, e.to_string()))
}

/// Runs every check of a policy pack; `prove_limit` bounds each proof.
pub fn check(entry: &Entry, prove_limit: Duration) -> Result<Report> {
    if entry.kind != Kind::PolicyPack {
        return Err(pack_err(
            entry,
            format!("is a {}, not a policy pack", entry.kind),
        ));
    }
    let engine = test_engine(entry)?;
    let cases = entry.doc["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            serde_json::from_value::<Case>(c.clone()).map_err(|e| {
                pack_err(
                    entry,
                    format!(
                        "test `{}` cannot be read: {e}",
                        c["name"].as_str().unwrap_or("?")
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let file = CaseFile { cases };
    let failed: Vec<String> = run_cases(&engine, &file)
        .into_iter()
        .filter(|r| !r.passed)
        .map(|r| format!("test `{}`: {}", r.name, r.mismatch.unwrap_or_default()))
        .collect();
    if !failed.is_empty() {
        return Err(pack_err(entry, failed.join("; ")));
    }
    let raw = invariants(entry)?;
    let proved = lattice_gateway::invariants::check(&engine, &raw, prove_limit).map_err(|e| {
        pack_err(
            entry,
            match e {
                lattice_gateway::GatewayError::Config(m) => m,
                other => other.to_string(),
            },
        )
    })?;
    Ok(Report {
        cases: file.cases.len(),
        proved: proved.into_iter().map(|p| p.id).collect(),
    })
}
