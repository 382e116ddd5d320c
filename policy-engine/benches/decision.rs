//! Decision time with the quick-start policy set: an allow (a permit
//! matches), an explicit deny (a forbid matches) and a default deny. Built
//! with the gateway's global allocator (mimalloc, as `app/src/main.rs`), so
//! a decision's allocations cost what they cost in the gateway.

use criterion::{criterion_group, criterion_main, Criterion};
use lattice_policy::{
    Action, AuthzRequest, PolicyEngine, PolicySource, Principal, PrincipalKind, RequestContext,
    Resource,
};
use std::hint::black_box;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // Each case below changes the request before every call (`n`: the
    // call's number).
    let mut changing = |name: &str, change: &dyn Fn(&mut AuthzRequest, u64)| {
        let mut req = request("GET");
        c.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                change(&mut req, n);
                black_box(gateway.decide(black_box(&req)))
            })
        });
    };
    let set = |req: &mut AuthzRequest, attr: &str, value: String| {
        req.context
            .extra
            .insert(attr.into(), lattice_policy::ContextValue::String(value));
    };
    // Another path every call: the starter set does not read the path, so
    // the decision memo answers.
    changing("decide/allow_new_path", &|req, n| {
        set(req, "path", format!("/orders/{n}"))
    });
    // Another client address every call: the starter set does not read it,
    // so the memo answers; each new address is parsed by Cedar's `ip` once
    // (the request must build from it).
    changing("decide/allow_new_client_ip", &|req, n| {
        req.context.client_ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    });
    // Another method every call: the starter set reads it, so the memo
    // misses and Cedar decides; the entity store is cached. (No permit
    // matches an unknown method: a default deny, after every policy of the
    // slice was evaluated.)
    changing("decide/new_method", &|req, n| {
        set(req, "method", format!("M{n}"))
    });
    // A new principal every call: the entity cache never hits.
    changing("decide/allow_new_principal", &|req, n| {
        req.principal.id = format!("agent-{n}");
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
