//! `prove` with the real solver (Debian's cvc5, installed by scripts/setup):
//! properties of the starter policy set that hold, and ones that fail with
//! a counterexample the engine itself decides as the proof claims.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::CedarSymCompiler;
use lattice_policy::prove::{prove, Claim, Property, RawProperty, Verdict};
use lattice_policy::{PolicyEngine, PolicySource};

const STARTER: &str = include_str!("../../examples/quickstart/policies/starter.cedar");

fn engine(text: &str) -> PolicyEngine {
    PolicyEngine::new(&[PolicySource::new("starter.cedar", text)], None).unwrap()
}

fn raw(id: &str, claim: Option<Claim>, requests: &str) -> RawProperty {
    let text = Some(requests.to_string());
    RawProperty {
        id: id.into(),
        description: String::new(),
        never_allows: if claim == Some(Claim::AlwaysAllows) {
            None
        } else {
            text.clone()
        },
        always_allows: if claim == Some(Claim::NeverAllows) {
            None
        } else {
            text
        },
    }
}

fn property(engine: &PolicyEngine, id: &str, claim: Claim, requests: &str) -> Property {
    Property::new(&raw(id, Some(claim), requests), engine).unwrap()
}

async fn verdict(engine: &PolicyEngine, p: &Property) -> Verdict {
    let cvc5 = LocalSolver::cvc5().expect("cvc5 (scripts/setup installs it)");
    let mut solver = CedarSymCompiler::new(cvc5).unwrap();
    prove(engine, p, &mut solver).await.unwrap()
}

const DELETES: &str = r#"permit (principal, action == Lattice::Action::"http_request", resource) when { context.method == "DELETE" };"#;
const AGENTS_GET_DEMO: &str = r#"permit (principal in Lattice::Role::"agent", action == Lattice::Action::"http_request", resource) when { resource.labels.contains("demo") && context.method == "GET" };"#;
const AGENTS_CALL_TOOLS: &str =
    r#"permit (principal is Lattice::Agent, action == Lattice::Action::"call_tool", resource);"#;

#[tokio::test]
async fn properties_of_the_starter_set_hold_for_every_request() {
    let e = engine(STARTER);
    for (id, claim, requests) in [
        ("no-deletes", Claim::NeverAllows, DELETES),
        ("agents-read-demo", Claim::AlwaysAllows, AGENTS_GET_DEMO),
        ("no-tool-calls", Claim::NeverAllows, AGENTS_CALL_TOOLS),
    ] {
        let p = property(&e, id, claim, requests);
        assert!(matches!(verdict(&e, &p).await, Verdict::Holds), "{id}");
    }
}

#[tokio::test]
async fn a_broken_property_comes_with_a_counterexample_the_engine_agrees_with() {
    // A permit for tool calls breaks "no tool calls".
    let more = format!(
        "{STARTER}\n@id(\"agents-call-tools\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n"
    );
    let e = engine(&more);
    let p = property(&e, "no-tool-calls", Claim::NeverAllows, AGENTS_CALL_TOOLS);
    let Verdict::Fails(cex) = verdict(&e, &p).await else {
        panic!("the added permit breaks the property");
    };
    assert!(cex.allowed, "{}", cex.text);
    assert!(e.decide_concrete(&cex.request, &cex.entities));
    assert!(cex.text.contains("call_tool"), "{}", cex.text);
    // Without the permit that lets agents read demo routes, "agents read
    // demo routes" fails with a request the engine denies.
    let fewer = STARTER.replace(
        "@id(\"agents-read-demo-routes\")\npermit",
        "@id(\"agents-read-demo-routes\")\nforbid",
    );
    assert_ne!(fewer, STARTER);
    let e = engine(&fewer);
    let p = property(&e, "agents-read-demo", Claim::AlwaysAllows, AGENTS_GET_DEMO);
    let Verdict::Fails(cex) = verdict(&e, &p).await else {
        panic!("without the permit the property fails");
    };
    assert!(!cex.allowed, "{}", cex.text);
    assert!(!e.decide_concrete(&cex.request, &cex.entities));
}

#[test]
fn a_property_must_describe_requests_with_one_claim_and_valid_cedar() {
    let e = engine(STARTER);
    let typo = r#"permit (principal, action == Lattice::Action::"http_requets", resource);"#;
    let forbid = r#"forbid (principal, action, resource);"#;
    let mut none = raw("none", None, DELETES);
    none.never_allows = None;
    none.always_allows = None;
    for (raw, message) in [
        (
            raw("both", None, DELETES),
            "exactly one of never_allows, always_allows",
        ),
        (none, "exactly one of never_allows, always_allows"),
        (
            raw("typo", Some(Claim::NeverAllows), typo),
            "invariant `typo`",
        ),
        (
            raw("forbid", Some(Claim::NeverAllows), forbid),
            "describe the requests with permit policies",
        ),
    ] {
        let err = Property::new(&raw, &e).unwrap_err().to_string();
        assert!(err.contains(message), "{}: {err}", raw.id);
    }
}
