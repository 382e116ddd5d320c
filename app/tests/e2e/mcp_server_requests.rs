//! Requests an MCP server makes during a tool call (sampling, elicitation)
//! relayed to the caller's client and its answer back (the official suite's
//! sampling and elicitation scenarios cover the happy path with the
//! TypeScript SDK). Here: a client that did not declare the capability is
//! never asked (the server gets an error at once), an answer from another
//! session is refused, and each relayed request is audited.

use crate::harness::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

fn initialize(gw: &Gateway, auth: &str, capabilities: Value) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": {"name": "t", "version": "0"}}});
    let r = http(
        gw.port,
        "POST",
        "/mcp/conf",
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ],
        init.to_string().as_bytes(),
    )
    .unwrap();
    r.header("mcp-session-id").unwrap().to_string()
}

fn post(gw: &Gateway, auth: &str, sid: &str, body: &Value) -> Resp {
    http(
        gw.port,
        "POST",
        "/mcp/conf",
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Mcp-Session-Id", sid),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

/// POSTs a tools/call and reads its event stream line by line.
fn call_streaming(
    gw: &Gateway,
    auth: &str,
    sid: &str,
    body: &Value,
) -> BufReader<std::net::TcpStream> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /mcp/conf HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {sid}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    BufReader::new(s)
}

/// The next `data:` message on the stream.
fn next_message(r: &mut BufReader<std::net::TcpStream>) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(d) = line.trim().strip_prefix("data:") {
            return serde_json::from_str(d.trim()).unwrap();
        }
    }
}

#[test]
fn server_requests_reach_only_a_client_that_can_answer_them() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let gw = Gateway::start_with(
        &format!(
            "[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            peers.join(".venv/bin/python").display(),
            peers.join("conformance_server.py").display(),
        ),
        "@id(\"agents-call\")\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n",
    );
    let auth = bearer(&gw.create_key("sampler", &["agent"]));
    let other = bearer(&gw.create_key("intruder", &["agent"]));
    let sampling = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "test_sampling", "arguments": {"prompt": "2+2?"}}});
    wait_for("the server", std::time::Duration::from_secs(20), || {
        let sid = initialize(&gw, &auth, json!({}));
        post(
            &gw,
            &auth,
            &sid,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .json()["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    });

    // A client without the `sampling` capability is never asked: the
    // server is told no, and the tool reports the failure.
    let plain = initialize(&gw, &auth, json!({}));
    let r = post(&gw, &auth, &plain, &sampling);
    let result = &r.json()["result"];
    assert_eq!(result["isError"], true, "{}", r.body);
    assert!(r.body.contains("sampling"), "{}", r.body);

    // A client that declared it gets the request, under the gateway's id.
    let sid = initialize(&gw, &auth, json!({"sampling": {}}));
    let mut stream = call_streaming(&gw, &auth, &sid, &sampling);
    let request = next_message(&mut stream);
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    assert_eq!(request["params"]["messages"][0]["content"]["text"], "2+2?");
    let gid = request["id"].as_str().unwrap().to_string();
    assert!(gid.starts_with("lattice-"), "{gid}");
    let answer = json!({"jsonrpc": "2.0", "id": gid, "result": {"role": "assistant", "content": {"type": "text", "text": "4"}, "model": "m"}});
    // Another agent's session cannot answer it, nor can a session-less POST.
    let intruder_sid = initialize(&gw, &other, json!({"sampling": {}}));
    let r = post(&gw, &other, &intruder_sid, &answer);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        "no request of this session waits for that answer"
    );
    // The client's own answer goes back to the server.
    let r = post(&gw, &auth, &sid, &answer);
    assert_eq!(r.status, 202, "{}", r.body);
    let result = next_message(&mut stream);
    assert_eq!(result["id"], 7);
    assert_eq!(
        result["result"]["content"][0]["text"], "LLM response: 4",
        "{result}"
    );
    // An answer cannot be replayed.
    assert_eq!(post(&gw, &auth, &sid, &answer).status, 400);

    // Both relays are in the audit trail under the caller (the store is
    // filled from the segments shortly after each write: wait for both).
    let relays = || -> Vec<Value> {
        gw.recent_events(10_000)
            .into_iter()
            .filter(|e| e["kind"] == "mcp.server_request")
            .collect()
    };
    wait_for(
        "both relays in the store",
        std::time::Duration::from_secs(10),
        || relays().len() >= 2,
    );
    let events = relays();
    let decisions: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["principal"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("sampler", "sampling/createMessage", "deny"),
            ("sampler", "sampling/createMessage", "allow"),
        ]
    );
    assert!(events[0]["reason"]
        .as_str()
        .unwrap()
        .contains("did not declare the `sampling` capability"));
}
