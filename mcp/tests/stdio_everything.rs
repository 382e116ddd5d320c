//! The stdio upstream against the real `@modelcontextprotocol/server-everything`
//! (installed into test-peers/ by scripts/setup).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_mcp::stdio::{self, StdioConfig};
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
        guard: None,
    }
}

#[tokio::test]
async fn lists_and_calls_tools_of_a_real_stdio_server() {
    let up = stdio::start(everything("everything")).await.unwrap();
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
    let up = stdio::start(everything("doomed")).await.unwrap();
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
    let err = stdio::start(cfg).await.err().unwrap().to_string();
    assert!(
        err.contains("cannot start `/nonexistent/mcp-server`"),
        "{err}"
    );
}

#[tokio::test]
async fn killing_a_server_kills_its_whole_process_group() {
    // A launcher (here a shell; in life `npx`, `uvx`) whose child is the
    // real server: killing only the launcher would leave the child running.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let mut cfg = everything("grouped");
    cfg.args = vec![
        "-c".into(),
        format!(
            "sleep 600 & echo $! > {}; exec {} stdio",
            pidfile.display(),
            cfg.command
        ),
    ];
    cfg.command = "/bin/sh".into();
    let up = stdio::start(cfg).await.unwrap();
    let child: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
    };
    assert!(running(child));
    assert!(up.pid().await.is_some());
    up.kill().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running(child) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !running(child),
        "the launcher's child {child} outlived the kill"
    );
    assert!(!up.is_alive());
}
