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

/// A property with `requests` under `claim`'s key; None: under both
/// `never_allows` and `always_allows` (a property that says too much).
fn raw(id: &str, claim: Option<Claim>, requests: &str) -> RawProperty {
    let text = Some(requests.to_string());
    let mut raw = RawProperty {
        id: id.into(),
        ..RawProperty::default()
    };
    match claim {
        None => (raw.never_allows, raw.always_allows) = (text.clone(), text),
        Some(Claim::NeverAllows) => raw.never_allows = text,
        Some(Claim::AlwaysAllows) => raw.always_allows = text,
        Some(Claim::AllowsAtMost) => raw.allows_at_most = text,
        Some(Claim::Equivalent) => raw.equivalent_to = text,
    }
    raw
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
    let none = RawProperty {
        id: "none".into(),
        ..RawProperty::default()
    };
    for (raw, message) in [
        (
            raw("both", None, DELETES),
            "exactly one of never_allows, always_allows, allows_at_most, equivalent_to",
        ),
        (
            none,
            "exactly one of never_allows, always_allows, allows_at_most, equivalent_to",
        ),
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

const AGENTS_CALL_TOOLS_PERMIT: &str = "\n@id(\"agents-call-tools\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n";

#[tokio::test]
async fn a_set_stays_within_an_envelope_and_leaving_it_is_shown_by_a_request() {
    // The envelope: the starter set plus tool calls (permits and a forbid:
    // a whole policy set, not a description).
    let envelope = format!("{STARTER}{AGENTS_CALL_TOOLS_PERMIT}");
    let e = engine(STARTER);
    let p = property(&e, "within", Claim::AllowsAtMost, &envelope);
    assert!(matches!(verdict(&e, &p).await, Verdict::Holds));
    // The wider set leaves the starter envelope: a tool call the engine
    // allows and the reference denies.
    let wider = engine(&envelope);
    let p = property(&wider, "within-starter", Claim::AllowsAtMost, STARTER);
    let Verdict::Fails(cex) = verdict(&wider, &p).await else {
        panic!("the wider set leaves the envelope");
    };
    assert!(cex.allowed, "{}", cex.text);
    assert!(wider.decide_concrete(&cex.request, &cex.entities));
    assert!(!e.decide_concrete(&cex.request, &cex.entities));
    assert!(cex.text.contains("call_tool"), "{}", cex.text);
    assert_eq!(
        Claim::AllowsAtMost.broken(cex.allowed),
        "allowed by the policy set and denied by the reference set it must stay within"
    );
}

#[tokio::test]
async fn equivalent_sets_are_proved_alike_and_a_difference_is_shown_either_way() {
    // The same set written differently: the demo-route permit split in two.
    let split = STARTER.replace(
        "(context.method == \"GET\" || context.method == \"HEAD\")",
        "context.method == \"GET\"",
    ) + "\n@id(\"agents-head-demo-routes\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"http_request\", resource) when { resource.labels.contains(\"demo\") && context.method == \"HEAD\" };\n";
    assert_ne!(split, STARTER);
    let e = engine(STARTER);
    let p = property(&e, "same", Claim::Equivalent, &split);
    assert!(matches!(verdict(&e, &p).await, Verdict::Holds));
    // A set with one more permit differs: live allows, reference denies...
    let wider = engine(&format!("{STARTER}{AGENTS_CALL_TOOLS_PERMIT}"));
    let p = property(&wider, "same", Claim::Equivalent, STARTER);
    let Verdict::Fails(cex) = verdict(&wider, &p).await else {
        panic!("one more permit is not equivalent");
    };
    assert!(cex.allowed && !e.decide_concrete(&cex.request, &cex.entities));
    // ...and the other way round: live denies, reference allows.
    let p = property(
        &e,
        "same",
        Claim::Equivalent,
        &format!("{STARTER}{AGENTS_CALL_TOOLS_PERMIT}"),
    );
    let Verdict::Fails(cex) = verdict(&e, &p).await else {
        panic!("one permit fewer is not equivalent");
    };
    assert!(!cex.allowed && wider.decide_concrete(&cex.request, &cex.entities));
    assert_eq!(
        Claim::Equivalent.broken(cex.allowed),
        "denied by the policy set and allowed by the reference set it must equal"
    );
}
