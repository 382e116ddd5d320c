//! The gateway's engine (policy slices and the decision memo) against Cedar
//! deciding every request with the whole set: generated request sequences
//! drawn from small domains, so memo keys collide often (same caller and
//! route, other paths or times, a bad address, a duplicated attribute), and
//! every decision — outcome, deciding policies, errors — must be Cedar's.
//! Must never: check the engine against anything but Cedar itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

use crate::engine::{PolicyEngine, PolicySource};
use crate::request::{
    Action, AuthzRequest, ContextValue, Principal, PrincipalKind, RequestContext, Resource,
};

const STARTER: &str = include_str!("../../examples/quickstart/policies/starter.cedar");

/// Policies that read the path, the time, the address and the tool input.
const MORE: &str = r#"
@id("no-admin-paths")
forbid (principal, action == Lattice::Action::"http_request", resource)
when { context.path like "/admin*" };

@id("office-hours")
forbid (principal, action == Lattice::Action::"chat", resource)
when { context.time > 100 && !context.client_ip.isInRange(ip("10.0.0.0/8")) };

@id("small-payments")
permit (principal in Lattice::Role::"agent", action == Lattice::Action::"call_tool", resource)
when { context.input has amount && context.input.amount < 100 };

@id("humans-read-tools")
permit (principal is Lattice::Human, action == Lattice::Action::"list_tools", resource);
"#;

const TOOL_INPUT: &str = "namespace Lattice { type ToolInput = { amount?: Long }; }";

fn engine() -> PolicyEngine {
    PolicyEngine::with_tool_input(
        &[
            PolicySource::new("starter.cedar", STARTER),
            PolicySource::new("more.cedar", MORE),
        ],
        Some(&[PolicySource::new("shadow.cedar", MORE)]),
        Some(TOOL_INPUT),
    )
    .unwrap()
    .without_request_validation()
}

fn pick<'a>(options: &'a [&'a str], i: usize) -> &'a str {
    options[i % options.len()]
}

fn request(n: [usize; 10]) -> AuthzRequest {
    let roles: &[&[&str]] = &[&["agent"], &[], &["admin"], &["agent", "auditor"]];
    let principal = Principal {
        kind: if n[0].is_multiple_of(3) {
            PrincipalKind::Human
        } else {
            PrincipalKind::Agent
        },
        id: pick(&["a", "b"], n[1]).into(),
        tenant: pick(&["t1", "t2"], n[2]).into(),
        roles: roles[n[3] % roles.len()]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        labels: vec![],
        auth_method: "api_key".into(),
    };
    let labels = |i: usize| -> Vec<String> { [vec![], vec!["demo".to_string()]][i % 2].clone() };
    let ip = pick(&["10.0.0.1", "192.168.1.1", "not-an-ip"], n[6]);
    let time = [0, 200][n[7] % 2];
    let mut context = RequestContext::new(time, ip);
    let (action, resource) = match n[4] % 6 {
        0 | 1 => {
            context = context
                .with("method", pick(&["GET", "DELETE", "POST"], n[5]))
                .with("path", pick(&["/a", "/admin/x", "/b"], n[8]));
            (
                Action::HttpRequest,
                Resource::HttpRoute {
                    id: "r".into(),
                    labels: labels(n[9]),
                },
            )
        }
        2 => {
            context = context
                .with("backend", "b")
                .with("backend_location", pick(&["local", "remote"], n[8]));
            (
                Action::Chat,
                Resource::Model {
                    id: "m".into(),
                    labels: labels(n[9]),
                },
            )
        }
        3 => {
            let amount = [None, Some(5), Some(500)][n[8] % 3];
            if let Some(a) = amount {
                context = context.with_value(
                    "input",
                    ContextValue::Record([("amount".to_string(), ContextValue::Long(a))].into()),
                );
            }
            (Action::CallTool, Resource::tool("pay", "s", "high"))
        }
        4 => (
            Action::ListTools,
            Resource::McpServer {
                id: "s".into(),
                labels: vec![],
            },
        ),
        _ => (
            Action::ReadAudit,
            Resource::Tenant {
                id: pick(&["t1", "t2"], n[9]).into(),
            },
        ),
    };
    // Now and then a context that names `time` twice: building it fails.
    if n[5] % 7 == 6 {
        context = context.with_value("time", ContextValue::Long(1));
    }
    AuthzRequest {
        principal,
        action,
        resource,
        context,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_memo_and_the_slices_decide_as_cedar_does_with_the_whole_set(
        seq in prop::collection::vec(prop::array::uniform10(0usize..12), 1..120)
    ) {
        let e = engine();
        for n in seq {
            let req = request(n);
            let got = e.evaluate(&req);
            prop_assert_eq!(&got.live, &e.decide_by_cedar(&req, false), "live: {:?}", req);
            prop_assert_eq!(got.shadow.as_ref(), Some(&e.decide_by_cedar(&req, true)), "shadow: {:?}", req);
        }
    }
}

/// The memo answers a repeated request (its key for the starter set:
/// caller, route and method) even when an attribute no policy reads changes
/// — the path, the client's address —; an address Cedar's `ip` refuses goes
/// to Cedar every time, with Cedar's own error.
#[test]
fn a_repeated_request_is_answered_from_the_memo() {
    let e = PolicyEngine::new(&[PolicySource::new("starter.cedar", STARTER)], None)
        .unwrap()
        .without_request_validation();
    let mut req = request([1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let first = e.decide(&req);
    assert!(first.is_allow(), "{first:?}");
    assert_eq!(e.memo_len(), 1);
    // The starter set does not read the path: same key.
    req.context = req.context.clone().with("path", "/elsewhere");
    assert_eq!(e.decide(&req), first);
    assert_eq!(e.memo_len(), 1);
    // Nor the client's address (the request builds from both).
    req.context.client_ip = "192.168.7.7".into();
    assert_eq!(e.decide(&req), first);
    assert_eq!(e.memo_len(), 1);
    // An address Cedar refuses: denied with Cedar's error, never memoized.
    req.context.client_ip = "not-an-ip".into();
    let refused = e.decide(&req);
    assert!(!refused.is_allow(), "{refused:?}");
    assert_eq!(refused, e.decide_by_cedar(&req, false));
    assert!(
        refused.errors.iter().any(|m| m.contains("not-an-ip")),
        "{refused:?}"
    );
    assert_eq!(e.memo_len(), 1);
    req.context.client_ip = "10.0.0.1".into();
    // It reads the method: a new key, and Cedar's own answer.
    req.context = req.context.clone().with("method", "DELETE");
    let d = e.decide(&req);
    assert_eq!(d.policies, vec!["no-deletes".to_string()]);
    assert_eq!(e.memo_len(), 2);
}
