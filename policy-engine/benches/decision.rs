//! Decision time with the quick-start policy set: an allow (a permit
//! matches), an explicit deny (a forbid matches) and a default deny.

use criterion::{criterion_group, criterion_main, Criterion};
use lattice_policy::{
    Action, AuthzRequest, PolicyEngine, PolicySource, Principal, PrincipalKind, RequestContext,
    Resource,
};
use std::hint::black_box;

const STARTER: &str = include_str!("../../examples/quickstart/policies/starter.cedar");

fn request(method: &str) -> AuthzRequest {
    AuthzRequest {
        principal: Principal {
            kind: PrincipalKind::Agent,
            id: "demo-agent".into(),
            tenant: "default".into(),
            roles: vec!["agent".into()],
            labels: vec![],
            auth_method: "api_key".into(),
        },
        action: Action::HttpRequest,
        resource: Resource::HttpRoute {
            id: "echo".into(),
            labels: vec!["demo".into()],
        },
        context: RequestContext::new(1_700_000_000, "127.0.0.1")
            .with("method", method)
            .with("path", "/orders/1"),
    }
}

fn decisions(c: &mut Criterion) {
    let engine = match PolicyEngine::new(&[PolicySource::new("starter.cedar", STARTER)], None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("the starter policies do not load: {e}");
            return;
        }
    };
    let mut n = 0u64;
    // The gateway's engine: requests typed by construction, not re-validated.
    let gateway = engine.clone().without_request_validation();
    for (name, method) in [
        ("allow", "GET"),
        ("forbid", "DELETE"),
        ("default_deny", "POST"),
    ] {
        let req = request(method);
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| black_box(gateway.decide(black_box(&req))))
        });
        c.bench_function(&format!("validated/{name}"), |b| {
            b.iter(|| black_box(engine.decide(black_box(&req))))
        });
    }
    // Another path every call: the starter set does not read the path, so
    // the decision memo answers.
    let mut req = request("GET");
    c.bench_function("decide/allow_new_path", |b| {
        b.iter(|| {
            n += 1;
            req.context.extra.insert(
                "path".into(),
                lattice_policy::ContextValue::String(format!("/orders/{n}")),
            );
            black_box(gateway.decide(black_box(&req)))
        })
    });
    // Another client address every call: the memo (keyed on the address)
    // misses and Cedar decides; the entity store is cached.
    let mut req = request("GET");
    c.bench_function("decide/allow_new_client_ip", |b| {
        b.iter(|| {
            n += 1;
            req.context.client_ip =
                format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            black_box(gateway.decide(black_box(&req)))
        })
    });
    // A new principal every call: the entity cache never hits.
    let mut req = request("GET");
    c.bench_function("decide/allow_new_principal", |b| {
        b.iter(|| {
            n += 1;
            req.principal.id = format!("agent-{n}");
            black_box(gateway.decide(black_box(&req)))
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
