//! MCP protocol eras at `/mcp`: sessions of the stateful eras (signed
//! `Mcp-Session-Id`, bound to the principal, ended by DELETE, valid after a
//! restart and on a second replica sharing the key), and the stateless
//! 2026-07-28 era (`server/discover`, the SEP-2243 header checks).

use crate::harness::*;
use serde_json::{json, Value};

const POLICY: &str = "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n";

fn everything() -> String {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../test-peers/node_modules/.bin/mcp-server-everything");
    assert!(bin.exists(), "run scripts/setup");
    format!(
        "[[mcp_servers]]\nname = \"everything\"\ncommand = \"{}\"\nargs = [\"stdio\"]\n",
        bin.display()
    )
}

fn post(port: u16, key: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut all = vec![
        ("Authorization", key),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    all.extend_from_slice(headers);
    http(port, "POST", "/mcp", &all, body.to_string().as_bytes()).unwrap()
}

fn list() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
}

#[test]
fn sessions_are_signed_bound_ended_and_survive_a_restart_and_a_replica() {
    let mut gw = Gateway::start_with(&everything(), POLICY);
    let key = bearer(&gw.create_key("session-agent", &["agent"]));
    let other = bearer(&gw.create_key("other-agent", &["agent"]));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let r = post(gw.port, &key, &[], &init);
    assert_eq!(r.json()["result"]["protocolVersion"], "2025-11-25");
    let sid = r
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    let with = |sid: &str| {
        [
            ("Mcp-Session-Id", sid.to_string()),
            ("MCP-Protocol-Version", "2025-11-25".to_string()),
        ]
    };
    let h = with(&sid);
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = post(gw.port, &key, &hs, &list());
    assert_eq!(r.status, 200, "{}", r.body);
    // Another principal cannot ride the session; a forged one is unknown.
    let r = post(gw.port, &other, &hs, &list());
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (404, Some(-32001)),
        "{}",
        r.body
    );
    let forged = format!("{}x", &sid[..sid.len() - 1]);
    let r = post(gw.port, &key, &[("Mcp-Session-Id", &forged)], &list());
    assert_eq!(r.status, 404, "{}", r.body);
    // An unsupported protocol version header is refused.
    let r = post(
        gw.port,
        &key,
        &[("MCP-Protocol-Version", "1999-01-01")],
        &list(),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // A restart keeps the session (the key lives in the data directory).
    gw.stop();
    gw.spawn();
    let r = post(gw.port, &key, &hs, &list());
    assert_eq!(r.status, 200, "after a restart: {}", r.body);

    // A second replica that shares the session key (and the key store).
    let replica_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(replica_dir.path().join("data")).unwrap();
    std::fs::copy(
        gw.path("data/state.db"),
        replica_dir.path().join("data/state.db"),
    )
    .unwrap();
    let mut replica = Gateway::prepare(
        &format!(
            "[mcp]\nsession_key_file = \"{}\"\n\n{}",
            gw.path("data/mcp-session.key").display(),
            everything()
        ),
        POLICY,
    );
    copy_dir(&replica_dir.path().join("data"), &replica.path("data"));
    replica.spawn();
    let r = post(replica.port, &key, &hs, &list());
    assert_eq!(r.status, 200, "on a replica: {}", r.body);

    // DELETE ends it here.
    let d = http(
        gw.port,
        "DELETE",
        "/mcp",
        &[("Authorization", &key), ("Mcp-Session-Id", &sid)],
        b"",
    )
    .unwrap();
    assert_eq!(d.status, 204, "{}", d.body);
    let r = post(gw.port, &key, &hs, &list());
    assert_eq!(r.status, 404, "{}", r.body);
    let d = http(gw.port, "DELETE", "/mcp", &[("Authorization", &key)], b"").unwrap();
    assert_eq!(d.status, 400, "{}", d.body);
    let events = gw.events_of(&d.request_id(), 2);
    assert_eq!(
        (events[0].kind.as_str(), events[0].decision.as_str()),
        ("mcp.session_end", "deny")
    );
    gw.assert_verifies(&[]);
}

#[test]
fn the_stateless_era_discovers_and_checks_mirrored_headers() {
    let gw = Gateway::start_with(&everything(), POLICY);
    let key = bearer(&gw.create_key("modern-agent", &["agent"]));
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"}, "io.modelcontextprotocol/clientCapabilities": {}});
    let v = ("MCP-Protocol-Version", "2026-07-28");

    let discover = json!({"jsonrpc": "2.0", "id": "d", "method": "server/discover", "params": {"_meta": meta}});
    let r = post(
        gw.port,
        &key,
        &[v, ("Mcp-Method", "server/discover")],
        &discover,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let result = &r.json()["result"];
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["supportedVersions"][0], "2026-07-28");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "lattice"
    );
    assert!(
        r.header("mcp-session-id").is_none(),
        "no sessions in the stateless era"
    );

    let listing =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}});
    let mut r = post(gw.port, &key, &[v, ("Mcp-Method", "tools/list")], &listing);
    wait_for("the tools", std::time::Duration::from_secs(20), || {
        r = post(gw.port, &key, &[v, ("Mcp-Method", "tools/list")], &listing);
        r.json()["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    });
    let result = &r.json()["result"];
    assert_eq!(
        (result["resultType"].as_str(), result["cacheScope"].as_str()),
        (Some("complete"), Some("private"))
    );

    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "everything__echo", "arguments": {"message": "hi"}, "_meta": meta}});
    let r = post(
        gw.port,
        &key,
        &[
            v,
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "everything__echo"),
        ],
        &call,
    );
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "Echo: hi",
        "{}",
        r.body
    );
    assert_eq!(r.json()["result"]["resultType"], "complete");

    // Headers that disagree with the body: -32020, HTTP 400, never forwarded.
    for (headers, needle) in [
        (
            vec![
                v,
                ("Mcp-Method", "tools/list"),
                ("Mcp-Name", "everything__echo"),
            ],
            "Mcp-Method",
        ),
        (
            vec![
                v,
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "everything__get-sum"),
            ],
            "Mcp-Name",
        ),
        (
            vec![v, ("Mcp-Method", "tools/call")],
            "missing required Mcp-Name",
        ),
        (
            vec![
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "everything__echo"),
            ],
            "MCP-Protocol-Version",
        ),
    ] {
        let r = post(gw.port, &key, &headers, &call);
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{}",
            r.body
        );
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{}",
            r.body
        );
        let events = gw.events_of(&r.request_id(), 2);
        assert_eq!(
            (events[0].decision.as_str(), events[1].status),
            ("deny", Some(400))
        );
    }
    // A version the gateway does not speak: -32022 naming what it does.
    let future = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}}});
    let r = post(
        gw.port,
        &key,
        &[
            ("MCP-Protocol-Version", "2099-01-01"),
            ("Mcp-Method", "tools/list"),
        ],
        &future,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (400, Some(-32022)),
        "{}",
        r.body
    );
    assert_eq!(r.json()["error"]["data"]["supported"][0], "2026-07-28");
    // An unknown method: 404 in this era.
    let unknown =
        json!({"jsonrpc": "2.0", "id": 5, "method": "nope/nothing", "params": {"_meta": meta}});
    let r = post(
        gw.port,
        &key,
        &[v, ("Mcp-Method", "nope/nothing")],
        &unknown,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_i64()),
        (404, Some(-32601)),
        "{}",
        r.body
    );
    gw.assert_verifies(&[]);
}

#[test]
fn argument_level_rules_are_ordinary_policies_on_context_input() {
    let policy = "@id(\"agents-call-tools\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n\
        @id(\"small-sums-only\")\nforbid (principal, action == Lattice::Action::\"call_tool\", resource == Lattice::Tool::\"everything__get-sum\")\n\
        when { context.input has a && context.input.a >= 100 };\n";
    let mut gw = Gateway::prepare(&everything(), policy);
    std::fs::write(
        gw.path("tool-input.cedarschema"),
        "namespace Lattice { type ToolInput = { a?: Long, b?: Long, message?: String }; }\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(gw.config()).unwrap().replace(
        "files = [\"policy.cedar\"]",
        "files = [\"policy.cedar\"]\ntool_input_schema = \"tool-input.cedarschema\"",
    );
    std::fs::write(gw.config(), config).unwrap();
    gw.spawn();
    let key = bearer(&gw.create_key("summing-agent", &["agent"]));
    let call = |a: Value| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "everything__get-sum", "arguments": {"a": a, "b": 1}}});
        post(gw.port, &key, &[], &body)
    };
    let mut r = call(json!(2));
    wait_for("the tool", std::time::Duration::from_secs(20), || {
        r = call(json!(2));
        r.json()["result"]["content"].is_array()
    });
    assert!(
        r.json()["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains('3'),
        "{}",
        r.body
    );
    // Over the limit: a tool error naming the decision, never forwarded.
    let r = call(json!(150));
    let result = &r.json()["result"];
    assert_eq!(result["isError"], true, "{}", r.body);
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("Denied by policy for these arguments"),
        "{text}"
    );
    let events = gw.events_of(&r.request_id(), 2);
    assert_eq!(events[0].decision, "deny");
    assert_eq!(events[0].policies, vec!["small-sums-only".to_string()]);
    assert!(text.contains(&events[0].event_id), "{text}");
    // A fraction is no Long to Cedar: the rule errors, and an error denies.
    let r = call(json!(150.5));
    assert_eq!(r.json()["result"]["isError"], true, "{}", r.body);
    // Another tool is untouched by the rule.
    let echo = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "everything__echo", "arguments": {"message": "still fine"}}});
    assert_eq!(
        post(gw.port, &key, &[], &echo).json()["result"]["content"][0]["text"],
        "Echo: still fine"
    );

    // The same rule, tested offline with `lattice policy test`.
    std::fs::write(
        gw.path("sums.tests.toml"),
        "[[case]]\nname = \"big sums are refused\"\nprincipal = { type = \"Agent\", id = \"a\", roles = [\"agent\"] }\naction = \"call_tool\"\n\
         resource = { type = \"Tool\", id = \"everything__get-sum\", server = \"everything\" }\ncontext = { input = { a = 150, b = 1 } }\n\
         expect = \"deny\"\nexpect_policies = [\"small-sums-only\"]\n\n\
         [[case]]\nname = \"small sums pass\"\nprincipal = { type = \"Agent\", id = \"a\", roles = [\"agent\"] }\naction = \"call_tool\"\n\
         resource = { type = \"Tool\", id = \"everything__get-sum\", server = \"everything\" }\ncontext = { input = { a = 2, b = 1 } }\n\
         expect = \"allow\"\n",
    )
    .unwrap();
    let out = gw.lattice(&[
        "policy",
        "test",
        gw.path("sums.tests.toml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    gw.assert_verifies(&[]);
}
