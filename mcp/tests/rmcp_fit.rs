//! Why the upstream transports are not rmcp's (the crate header of
//! `lattice-mcp` and `http.rs` say so): rmcp's client transports carry its
//! typed messages (`ServerJsonRpcMessage`), and an upstream's answer passed
//! through them comes out changed — fields its types do not name are
//! dropped, integers become floats. A relaying gateway must hand the agent
//! what the server sent. The table is what a server may legitimately send
//! (the spec allows extra fields and `_meta` everywhere); when rmcp keeps
//! them all, this test fails, and the transports can move onto rmcp.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};

fn through_rmcp(message: &Value) -> Value {
    let typed: rmcp::model::ServerJsonRpcMessage = serde_json::from_value(message.clone()).unwrap();
    serde_json::to_value(&typed).unwrap()
}

#[test]
fn rmcp_typed_messages_change_what_a_server_sent() {
    let cases = [
        // (what the server sent, what is lost)
        (
            json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi", "x-vendor": 1}], "isError": false}}),
            "an extra field of a content block",
        ),
        (
            json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "t", "inputSchema": {"type": "object"}, "x-tool": 3}]}}),
            "an extra field of a tool definition (the gateway pins definitions by hash)",
        ),
        (
            json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "a", "progress": 1}}),
            "an integer progress (it comes out 1.0)",
        ),
        (
            json!({"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 3, "x-y": 1}}),
            "an extra field of a server request",
        ),
    ];
    let kept: Vec<&str> = cases
        .iter()
        .filter(|(sent, _)| through_rmcp(sent) == *sent)
        .map(|(_, what)| *what)
        .collect();
    assert!(
        kept.is_empty(),
        "rmcp now keeps {kept:?}: see whether the transports can move onto it"
    );
    // A result rmcp has no type for passes whole (its `CustomResult`).
    let custom = json!({"jsonrpc": "2.0", "id": 3, "result": {"weird": true}});
    assert_eq!(through_rmcp(&custom), custom);
}
