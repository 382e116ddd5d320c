//! Changes the gateway applies to itself are audited: keys created and
//! revoked with the CLI, reloads (policies, run-time MCP servers) and
//! rejected reloads.

use crate::harness::*;
use lattice_audit::AuditEvent;
use std::time::Duration;

fn changes(gw: &Gateway) -> Vec<AuditEvent> {
    gw.store()
        .tail(500)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str::<AuditEvent>(&e.json).unwrap())
        .filter(|e| e.kind.starts_with("admin.keys.") || e.kind.starts_with("admin.config."))
        .collect()
}

fn wait_change(gw: &Gateway, what: &str, pred: impl Fn(&AuditEvent) -> bool) -> AuditEvent {
    let mut found = None;
    wait_for(what, Duration::from_secs(10), || {
        found = changes(gw).into_iter().find(|e| pred(e));
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn key_store_changes_and_reloads_are_audited() {
    let gw = Gateway::start(&allow_test_peer_commands());
    let out = gw.lattice(&[
        "keys",
        "create",
        "--agent",
        "audited-agent",
        "--role",
        "agent",
    ]);
    assert!(out.status.success());
    let e = wait_change(&gw, "the key's creation", |e| {
        e.kind == "admin.keys.created"
    });
    assert!(e.reason.contains("audited-agent"), "{}", e.reason);
    let id = e.target.clone();
    let out = gw.lattice(&["keys", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_change(&gw, "the revocation", |e| {
        e.kind == "admin.keys.revoked" && e.target == id
    });

    // A policy edit is applied and says so; a broken one is rejected and says so.
    let policy = gw.path("policy.cedar");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{text}\nforbid (principal, action, resource) when {{ context.client_ip == ip(\"10.9.9.9\") }};\n")).unwrap();
    let e = wait_change(&gw, "the applied reload", |e| {
        e.kind == "admin.config.applied"
    });
    assert!(e.reason.starts_with("policies "), "{}", e.reason);
    std::fs::write(
        &policy,
        "permit (principal, action == Lattice::Action::\"no_such_action\", resource);\n",
    )
    .unwrap();
    let e = wait_change(&gw, "the rejected reload", |e| {
        e.kind == "admin.config.rejected"
    });
    assert_eq!(e.decision, "deny");
    assert!(
        e.reason.contains("previous config keeps serving"),
        "{}",
        e.reason
    );
    std::fs::write(&policy, &text).unwrap();

    // A run-time MCP server registration shows in the applied change.
    let peers = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let out = gw.lattice(&[
        "mcp",
        "add",
        "conf",
        "--command",
        peers.join(".venv/bin/python").to_str().unwrap(),
        "--arg",
        peers.join("conformance_server.py").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = wait_change(&gw, "the MCP server in a reload", |e| {
        e.kind == "admin.config.applied" && e.reason.contains("MCP servers added [\"conf\"]")
    });
    assert_eq!(e.auth_method, "local");
    gw.assert_verifies(&[]);
}
