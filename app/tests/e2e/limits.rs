//! Step 6 on HTTP routes and MCP calls: `[[limits]]` with `kinds`.

use crate::harness::*;
use std::path::Path;

#[test]
fn request_limits_apply_to_http_routes_and_mcp_calls_by_kind() {
    let upstream = Upstream::start();
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let config = format!(
        "{}\n[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n\n\
         [[limits]]\nname = \"http-calls\"\nper = \"agent\"\nrequests = 2\nwindow_seconds = 31536000\nkinds = [\"http\"]\n\n\
         [[limits]]\nname = \"tool-calls\"\nper = \"agent\"\nrequests = 1\nwindow_seconds = 31536000\nkinds = [\"mcp\"]\n",
        route(upstream.port),
        peers.join(".venv/bin/python").display(),
        peers.join("conformance_server.py").display()
    );
    let policy = format!(
        "{STARTER_POLICY}\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n"
    );
    let gw = Gateway::start_with(&config, &policy);
    let key = bearer(&gw.create_key("limited", &["agent"]));
    // create_key's own readiness probe is a 404 (no such route): not counted.
    let get = || {
        http(
            gw.port,
            "GET",
            "/tools/echo/x",
            &[("Authorization", &key)],
            b"",
        )
        .unwrap()
    };
    assert_eq!(get().status, 200);
    assert_eq!(get().status, 200);
    let refused = get();
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        refused
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    let events = gw.events_of(&refused.request_id(), 2);
    assert_eq!(
        (events[0].decision.as_str(), events[0].status),
        ("deny", Some(429))
    );
    assert!(
        events[0].reason.contains("http-calls"),
        "{}",
        events[0].reason
    );

    let call = || {
        http(
            gw.port,
            "POST",
            "/mcp",
            &[("Authorization", &key), ("Content-Type", "application/json")],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"conf__test_simple_text","arguments":{}}}"#,
        )
        .unwrap()
    };
    let mut first = call();
    wait_for(
        "the MCP fixture",
        std::time::Duration::from_secs(20),
        || {
            first = call();
            first.status == 429 || first.json()["result"].is_object()
        },
    );
    // Either this was the one call the limit allows, or an earlier try was.
    let second = call();
    assert_eq!(second.status, 429, "{}", second.body);
    assert!(second.body.contains("tool-calls"), "{}", second.body);
    // The HTTP limit did not count MCP calls, nor the other way round: the
    // listing (not a call) still works.
    let list = http(
        gw.port,
        "POST",
        "/mcp",
        &[
            ("Authorization", &key),
            ("Content-Type", "application/json"),
        ],
        br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    )
    .unwrap();
    assert_eq!(list.status, 200, "{}", list.body);
    gw.assert_verifies(&[]);
}
