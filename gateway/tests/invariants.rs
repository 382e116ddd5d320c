//! Invariants gate a policy change: the counterexample that refuses a new
//! set is allowed by the new set and denied by the old one, as the engine
//! itself decides them (the real cvc5 solver).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_gateway::invariants::{check, violation};
use lattice_policy::prove::RawProperty;
use lattice_policy::{PolicyEngine, PolicySource};
use std::time::Duration;

const STARTER: &str = include_str!("../../examples/quickstart/policies/starter.cedar");

fn engine(text: &str) -> PolicyEngine {
    PolicyEngine::new(&[PolicySource::new("p.cedar", text)], None).unwrap()
}

fn no_tool_calls() -> RawProperty {
    RawProperty {
        id: "no-tool-calls".into(),
        description: "Agents call no MCP tool".into(),
        never_allows: Some(
            r#"permit (principal is Lattice::Agent, action == Lattice::Action::"call_tool", resource);"#
                .into(),
        ),
        ..RawProperty::default()
    }
}

#[test]
fn the_counterexample_of_a_refused_change_is_allowed_by_the_new_set_and_denied_by_the_old() {
    let limit = Duration::from_secs(30);
    let old = engine(STARTER);
    assert!(check(&old, &[no_tool_calls()], limit).is_ok());
    let new = engine(&format!(
        "{STARTER}\n@id(\"agents-call-tools\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n"
    ));
    let (property, cex) = violation(&new, &[no_tool_calls()], limit)
        .unwrap()
        .expect("the new permit breaks the invariant");
    assert_eq!(property.id, "no-tool-calls");
    assert!(new.decide_concrete(&cex.request, &cex.entities));
    assert!(!old.decide_concrete(&cex.request, &cex.entities));
    let refusal = check(&new, &[no_tool_calls()], limit)
        .unwrap_err()
        .to_string();
    assert!(
        refusal.contains("breaks invariant `no-tool-calls` (Agents call no MCP tool)")
            && refusal.contains("call_tool"),
        "{refusal}"
    );
}

#[test]
fn a_proof_that_cannot_finish_in_time_refuses_the_set() {
    // A solver that takes two seconds before it answers anything (the real
    // cvc5 behind a delay), and a 200 ms bound.
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow-cvc5");
    std::fs::write(&slow, "#!/bin/sh\nsleep 2\nexec cvc5 \"$@\"\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&slow)
        .status()
        .unwrap();
    // This test runs in a process of its own (nextest).
    std::env::set_var("CVC5", &slow);
    let e = engine(STARTER);
    // A property the solver must be asked about (the set has permits for
    // these requests, and a forbid).
    let no_deletes = RawProperty {
        id: "no-deletes".into(),
        description: String::new(),
        never_allows: Some(
            r#"permit (principal, action == Lattice::Action::"http_request", resource) when { context.method == "DELETE" };"#
                .into(),
        ),
        ..RawProperty::default()
    };
    let err = check(&e, &[no_deletes], Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "invariant `no-deletes` was not proved within 200 ms: the policy set is refused"
        ),
        "{err}"
    );
}
