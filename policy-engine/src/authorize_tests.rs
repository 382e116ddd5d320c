//! Each case of Cedar's authorization rule, decided by `Conditions` and by
//! Cedar's `Authorizer`: a table. Must never: expect anything but what
//! Cedar's own authorizer answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cedar_policy::{Context, Entities, EntityUid, PolicyId, PolicySet, Request};
use std::str::FromStr;

use super::{by_cedar, Conditions};
use crate::engine::Outcome;

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

/// A set whose policies get the ids given, in order (`;;` separates them).
fn set(policies: &[(&str, &str)]) -> PolicySet {
    let mut set = PolicySet::new();
    for (id, text) in policies {
        let p = cedar_policy::Policy::parse(None, *text).unwrap();
        set.add(p.new_id(PolicyId::new(*id))).unwrap();
    }
    set
}

fn request() -> (Request, Entities) {
    let context = Context::from_json_value(
        serde_json::json!({"method": "GET", "n": 3, "tags": ["a"]}),
        None,
    )
    .unwrap();
    let request = Request::new(
        uid(r#"Lattice::Agent::"a""#),
        uid(r#"Lattice::Action::"http_request""#),
        uid(r#"Lattice::HttpRoute::"r""#),
        context,
        None,
    )
    .unwrap();
    let entities = Entities::from_json_value(
        serde_json::json!([
            {"uid": {"type": "Lattice::Agent", "id": "a"}, "attrs": {"tenant": "t1"},
             "parents": [{"type": "Lattice::Role", "id": "agent"}]},
            {"uid": {"type": "Lattice::HttpRoute", "id": "r"}, "attrs": {}, "parents": []}
        ]),
        None,
    )
    .unwrap();
    (request, entities)
}

const ALL: &str = "permit (principal, action, resource);";
const GET: &str = r#"permit (principal, action, resource) when { context.method == "GET" };"#;
const POST: &str = r#"permit (principal, action, resource) when { context.method == "POST" };"#;
const FORBID: &str = "forbid (principal in Lattice::Role::\"agent\", action, resource);";
const FORBID_NO: &str = "forbid (principal == Lattice::Agent::\"b\", action, resource);";
const MISSING: &str = "permit (principal, action, resource) when { context.nope == 1 };";
const FORBID_MISSING: &str = "forbid (principal, action, resource) when { principal.nope };";
const NOT_BOOL: &str = "permit (principal, action, resource) when { context.n };";
const OVERFLOW: &str =
    "forbid (principal, action, resource) when { context.n * 9223372036854775807 > 0 };";

/// Policies (id, text), the outcome, the deciding policies, how many errors.
type Row = (
    &'static [(&'static str, &'static str)],
    Outcome,
    &'static [&'static str],
    usize,
);

#[test]
fn each_case_of_the_rule_decides_as_cedars_authorizer() {
    let table: [Row; 13] = [
        (&[], Outcome::Deny, &[], 0),
        (&[("p", ALL)], Outcome::Allow, &["p"], 0),
        (&[("p", POST)], Outcome::Deny, &[], 0),
        (&[("b", GET), ("a", ALL)], Outcome::Allow, &["a", "b"], 0),
        (&[("p", ALL), ("f", FORBID)], Outcome::Deny, &["f"], 0),
        (
            &[("p", ALL), ("f", FORBID), ("g", FORBID)],
            Outcome::Deny,
            &["f", "g"],
            0,
        ),
        (&[("p", ALL), ("f", FORBID_NO)], Outcome::Allow, &["p"], 0),
        // Cedar allows (the erroring permit is skipped); Lattice denies.
        (&[("p", ALL), ("e", MISSING)], Outcome::Deny, &["p"], 1),
        // A forbid that errors is skipped by Cedar: Lattice denies.
        (
            &[("p", GET), ("e", FORBID_MISSING)],
            Outcome::Deny,
            &["p"],
            1,
        ),
        (&[("e", NOT_BOOL)], Outcome::Deny, &[], 1),
        // Errors come in the set's order, an overflow among them.
        (
            &[("z", MISSING), ("o", OVERFLOW), ("a", NOT_BOOL)],
            Outcome::Deny,
            &[],
            3,
        ),
        // An id with a quote and a newline: raw in the deciding policies,
        // as Cedar writes it in an error.
        (&[("a\"b\nc", ALL)], Outcome::Allow, &["a\"b\nc"], 0),
        (&[("a\"b\nc", MISSING)], Outcome::Deny, &[], 1),
    ];
    let (request, entities) = request();
    for (policies, outcome, deciding, errors) in table {
        let set = set(policies);
        let got = Conditions::of(&set).decide(&request, &entities);
        let want = by_cedar(&set, &request, &entities);
        assert_eq!(got, want, "{policies:?}");
        assert_eq!(got.outcome, outcome, "{policies:?}");
        assert_eq!(got.policies, deciding.to_vec(), "{policies:?}");
        assert_eq!(got.errors.len(), errors, "{policies:?}: {:?}", got.errors);
    }
}

/// A slice's conditions are the whole set's own (one expression per
/// policy, however many slices hold it), in the slice's order; a policy
/// the whole set lacks is built anew.
#[test]
fn a_slice_shares_the_whole_sets_conditions() {
    let whole = Conditions::of(&set(&[("a", ALL), ("b", GET), ("c", FORBID)]));
    let subset = set(&[("c", FORBID), ("a", ALL), ("z", POST)]);
    let slice = whole.shared(&subset);
    let core: &cedar_policy_core::ast::PolicySet = subset.as_ref();
    let order: Vec<&str> = core.policies().map(|p| p.id().as_ref()).collect();
    let ids: Vec<&str> = slice.0.iter().map(|c| c.id.as_ref()).collect();
    assert_eq!(ids, order);
    for c in &slice.0 {
        let in_whole = whole.0.iter().find(|w| w.id == c.id);
        match c.id.as_ref() {
            "z" => assert!(in_whole.is_none()),
            _ => assert!(std::sync::Arc::ptr_eq(c, in_whole.unwrap()), "{}", c.id),
        }
    }
}
