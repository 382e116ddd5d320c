//! The stdio upstream against the real `@modelcontextprotocol/server-everything`
//! (installed into test-peers/ by scripts/setup).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_mcp::stdio::{StdioConfig, StdioUpstream};
use lattice_mcp::tools::{definition_hash, federated_name, ArgumentSchema};
use serde_json::json;
use std::time::Duration;

fn everything(name: &str) -> StdioConfig {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../test-peers/node_modules/.bin/mcp-server-everything");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup",
        bin.display()
    );
    StdioConfig {
        name: name.into(),
        command: bin.display().to_string(),
        args: vec!["stdio".into()],
        env: vec![],
        timeout: Duration::from_secs(20),
    }
}

#[tokio::test]
async fn lists_and_calls_tools_of_a_real_stdio_server() {
    let up = StdioUpstream::start(everything("everything"))
        .await
        .unwrap();
    assert_eq!(
        up.server_info()["serverInfo"]["name"],
        "mcp-servers/everything"
    );
    let tools = up.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(
        names.contains(&"echo") && names.contains(&"get-sum"),
        "{names:?}"
    );

    let result = up
        .call_tool("echo", json!({"message": "hi"}))
        .await
        .unwrap();
    assert_eq!(result["content"][0]["text"], "Echo: hi");
    let sum = up
        .call_tool("get-sum", json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert!(
        sum["content"][0]["text"].as_str().unwrap().contains('5'),
        "{sum}"
    );

    // The gateway validates before forwarding, with the tool's own schema.
    let echo = tools.iter().find(|t| t["name"] == "echo").unwrap();
    let schema = ArgumentSchema::compile(&echo["inputSchema"]).unwrap();
    assert!(schema.check(&json!({"message": "hi"})).is_ok());
    let errors = schema.check(&json!({"message": 5})).unwrap_err();
    assert!(
        errors.iter().any(|e| e.starts_with("/message: ")),
        "{errors:?}"
    );
    assert_eq!(federated_name(up.name(), "echo"), "everything__echo");
    assert_eq!(definition_hash(echo).len(), 64);

    // An unknown tool is the upstream's own tool error, passed on as such.
    let result = up.call_tool("no-such-tool", json!({})).await.unwrap();
    assert_eq!(result["isError"], true, "{result}");
    // A method the server lacks is a protocol error with the server's code.
    let err = up
        .request("no/such-method", json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstream `everything` answered with error -32601"),
        "{err}"
    );
}

#[tokio::test]
async fn a_killed_server_fails_fast_with_a_clear_error() {
    let up = StdioUpstream::start(everything("doomed")).await.unwrap();
    assert!(up.is_alive());
    up.kill().await;
    let err = up
        .call_tool("echo", json!({"message": "hi"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("upstream `doomed`") && err.contains("exited"),
        "{err}"
    );
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_a_clear_error() {
    let mut cfg = everything("missing");
    cfg.command = "/nonexistent/mcp-server".into();
    let err = StdioUpstream::start(cfg).await.err().unwrap().to_string();
    assert!(
        err.contains("cannot start `/nonexistent/mcp-server`"),
        "{err}"
    );
}
