//! Resource subscriptions through the gateway: a session subscribes (policy
//! `read_resource` on the server), the gateway subscribes upstream once, and
//! the server's `notifications/resources/updated` reaches that session's GET
//! stream — not another session's — until it unsubscribes, when the gateway
//! unsubscribes upstream too (seen from the fixture server's side).

use crate::harness::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const POLICY: &str = r#"
@id("agents-use-conf")
permit (principal in Lattice::Role::"agent",
        action in [Lattice::Action::"call_tool", Lattice::Action::"read_resource"], resource);
@id("no-reading-for-outsiders")
forbid (principal, action == Lattice::Action::"read_resource", resource)
when { principal.labels.contains("outsider") };
"#;

/// An MCP session: its key and id.
struct McpSession {
    auth: String,
    sid: String,
}

fn post(gw: &Gateway, s: &McpSession, body: &Value) -> Resp {
    http(
        gw.port,
        "POST",
        "/mcp/conf",
        &[
            ("Authorization", &s.auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Mcp-Session-Id", &s.sid),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

fn start_session(gw: &Gateway, auth: String) -> McpSession {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let r = http(
        gw.port,
        "POST",
        "/mcp/conf",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        init.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        r.json()["result"]["capabilities"]["resources"]["subscribe"],
        true,
        "{}",
        r.body
    );
    let sid = r.header("mcp-session-id").unwrap().to_string();
    McpSession { auth, sid }
}

/// A session's GET stream, read by a background thread.
struct Stream {
    chunks: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Stream {
    /// Everything received so far.
    fn text(&mut self) -> &str {
        while let Ok(c) = self.chunks.try_recv() {
            self.seen.push_str(&c);
        }
        &self.seen
    }
}

fn open_stream(gw: &Gateway, s: &McpSession) -> Stream {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        stream,
        "GET /mcp/conf HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {}\r\n\r\n",
        s.auth, s.sid
    )
    .unwrap();
    let (tx, chunks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).to_string())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut s = Stream {
        chunks,
        seen: String::new(),
    };
    wait_for("the stream to open", Duration::from_secs(10), || {
        s.text().starts_with("HTTP/1.1 200")
    });
    s
}

fn touch(gw: &Gateway, s: &McpSession) -> String {
    let r = post(
        gw,
        s,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "test_update_watched_resource", "arguments": {}}}),
    );
    r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.body))
        .to_string()
}

#[test]
fn resource_updates_reach_only_the_sessions_that_subscribed() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let gw = Gateway::start_with(
        &format!(
            "[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            peers.join(".venv/bin/python").display(),
            peers.join("conformance_server.py").display(),
        ),
        POLICY,
    );
    check_subscriptions(&gw);
}

/// The same through a streamable-HTTP upstream: its updates come on the
/// GET stream the gateway holds open to it.
#[test]
fn resource_updates_from_a_streamable_http_server_arrive_too() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let port = free_port();
    let mut server = std::process::Command::new(peers.join(".venv/bin/python"))
        .arg(peers.join("conformance_server.py"))
        .args(["--http", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let gw = Gateway::start_with(
        &format!(
            "[[mcp_servers]]\nname = \"conf\"\nurl = \"http://127.0.0.1:{port}/mcp/\"\nallow_private_network = true\n"
        ),
        POLICY,
    );
    check_subscriptions(&gw);
    let _ = server.kill();
    let _ = server.wait();
}

fn check_subscriptions(gw: &Gateway) {
    let watcher = start_session(gw, bearer(&gw.create_key("watcher", &["agent"])));
    let bystander = start_session(gw, bearer(&gw.create_key("bystander", &["agent"])));
    let outsider_key = {
        let out = gw.lattice(&[
            "keys", "create", "--agent", "outsider", "--role", "agent", "--label", "outsider",
        ]);
        assert!(out.status.success());
        bearer(String::from_utf8(out.stdout).unwrap().trim())
    };
    wait_for("the server", Duration::from_secs(20), || {
        touch(gw, &bystander) == "not subscribed"
    });
    let mut watching = open_stream(gw, &watcher);
    let mut bystanding = open_stream(gw, &bystander);
    let uri = json!({"uri": "test://watched-resource"});
    let subscribe = |s: &McpSession, method: &str| {
        post(
            gw,
            s,
            &json!({"jsonrpc": "2.0", "id": 2, "method": method, "params": uri}),
        )
    };

    // A subscription without a session is refused; one the policy forbids too.
    let r = http(
        gw.port,
        "POST",
        "/mcp/conf",
        &[
            ("Authorization", &watcher.auth),
            ("Content-Type", "application/json"),
        ],
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": uri})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.json()["error"]["code"], -32600, "{}", r.body);
    wait_for("the outsider's key", Duration::from_secs(10), || {
        gw.get("/tools/none/x", &outsider_key).status != 401
    });
    let outsider = start_session(gw, outsider_key);
    let r = subscribe(&outsider, "resources/subscribe");
    assert_eq!(r.json()["error"]["code"], -32002, "{}", r.body);

    // The watcher subscribes: the gateway subscribes upstream.
    let r = subscribe(&watcher, "resources/subscribe");
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    assert_eq!(touch(gw, &bystander), "update sent");
    wait_for(
        "the update on the watcher's stream",
        Duration::from_secs(10),
        || watching.text().contains("notifications/resources/updated"),
    );
    assert!(watching
        .text()
        .contains("\"uri\":\"test://watched-resource\""));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !bystanding.text().contains("resources/updated"),
        "a session that did not subscribe hears nothing"
    );

    // Unsubscribing: the last one out unsubscribes upstream.
    let r = subscribe(&watcher, "resources/unsubscribe");
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    assert_eq!(touch(gw, &bystander), "not subscribed");
    // Both decisions are audited under the watcher, as reads of the server
    // (recorded before the answer; written by the audit writer soon after).
    let kinds = || -> Vec<Value> {
        gw.recent_events(10_000)
            .into_iter()
            .filter(|e| e["principal"] == "watcher" && e["phase"] == "decision")
            .map(|e| json!([e["kind"], e["decision"], e["action"]]))
            .collect()
    };
    wait_for(
        "the unsubscribe decision in the store",
        Duration::from_secs(5),
        || kinds().iter().any(|k| k[0] == "mcp.unsubscribe_resource"),
    );
    let kinds = kinds();
    for kind in ["mcp.subscribe_resource", "mcp.unsubscribe_resource"] {
        assert!(
            kinds.contains(&json!([kind, "allow", "read_resource"])),
            "{kinds:?}"
        );
    }
}
