//! Secrets stay secret: a canary value for every kind of credential the
//! gateway holds or sees — an HTTP route's injected credential (literal and
//! from the environment), an MCP HTTP server's header and a stdio server's
//! environment (both from the gateway's environment), a model backend's API
//! key, the ClickHouse password, and the agent's own API key — and none of
//! them may appear in the gateway's log (at debug level), the audit trail,
//! any admin API reply, the metrics, or an error body the gateway writes.
//! The canaries are shown to be in use (the keyed backend answers only to
//! its key), so the test cannot pass by never sending them.

use crate::harness::*;
use serde_json::json;
use std::path::Path;

const ROUTE_ENV: &str = "canary-route-env-5f0e2b";
const ROUTE_LITERAL: &str = "canary-route-literal-91c4d7";
const MCP_HEADER: &str = "canary-mcp-header-3a8e61";
const STDIO_ENV: &str = "canary-stdio-env-c27f90";
const LLM_KEY: &str = "canary-llm-key-0d4b13";
const CLICKHOUSE: &str = "canary-clickhouse-e85a22";

#[test]
fn no_credential_appears_in_logs_audit_admin_replies_metrics_or_error_bodies() {
    let upstream = Upstream::start();
    let mcp = Peer::start("lattice-mock-mcp", &[]);
    let llm = Peer::start(
        "lattice-mock-vllm",
        &["--name", "keyed", "--model", "m", "--api-key", LLM_KEY],
    );
    let dead = free_port();
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers");
    let config = format!(
        r#"
[[routes]]
name = "echo"
upstream = "http://127.0.0.1:{up}/base"
labels = ["demo"]
[routes.credential]
header = "x-upstream-key"
env = "LATTICE_CANARY_ROUTE"
prefix = "Bearer "

[[routes]]
name = "down"
upstream = "http://127.0.0.1:{dead}/base"
labels = ["demo"]
timeout_ms = 2000
[routes.credential]
header = "x-upstream-key"
value = "{ROUTE_LITERAL}"

[[mcp_servers]]
name = "mock"
url = "http://127.0.0.1:{mcp}/mcp"
allow_private_network = true
headers_from = {{ authorization = "LATTICE_CANARY_MCP" }}

[[mcp_servers]]
name = "conf"
command = "{python}"
args = ["{server}"]
env_from = {{ API_TOKEN = "LATTICE_CANARY_STDIO" }}

[[backends]]
name = "keyed"
kind = "openai"
url = "http://127.0.0.1:{llm}"
api_key_env = "LATTICE_CANARY_LLM"

[[backends]]
name = "dead"
kind = "openai"
url = "http://127.0.0.1:{dead}"
api_key_env = "LATTICE_CANARY_LLM"
timeout_ms = 2000

[[models]]
name = "m"
backends = ["keyed"]
labels = ["demo"]

[[models]]
name = "gone"
backends = ["dead"]
labels = ["demo"]
upstream_model = "m"

[audit.clickhouse]
url = "http://127.0.0.1:{dead}"
password_env = "LATTICE_CANARY_CH"
flush_interval_ms = 100
"#,
        up = upstream.port,
        mcp = mcp.port,
        llm = llm.port,
        python = peers.join(".venv/bin/python").display(),
        server = peers.join("conformance_server.py").display(),
    );
    let policy = format!(
        "{STARTER_POLICY}\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"call_tool\", resource);\n"
    );
    let mut gw = Gateway::prepare(&config, &policy);
    gw.env = [
        ("LATTICE_LOG", "debug"),
        ("LATTICE_CANARY_ROUTE", ROUTE_ENV),
        ("LATTICE_CANARY_MCP", &format!("Bearer {MCP_HEADER}")),
        ("LATTICE_CANARY_STDIO", STDIO_ENV),
        ("LATTICE_CANARY_LLM", LLM_KEY),
        ("LATTICE_CANARY_CH", CLICKHOUSE),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    gw.spawn();
    let agent_key = gw.create_key("agent-canary", &["agent"]);
    let agent = bearer(&agent_key);
    let admin = bearer(&gw.create_human_key("root", "default", &["admin"]));
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, r: Resp| {
        seen.push((what.to_string(), r.body.clone()));
        r
    };

    // Calls that use every credential, and calls that fail.
    // The demo upstream echoes what it got: the injected credential is in
    // use (its answer is the upstream's own body, not the gateway's).
    let r = gw.get("/tools/echo/a", &agent);
    assert_eq!(r.status, 200);
    assert!(r.body.contains(ROUTE_ENV), "{}", r.body);
    let r = keep("down route", gw.get("/tools/down/a", &agent));
    assert!(r.status >= 500, "{}", r.body);
    let chat = |model: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        gw.post_json("/v1/chat/completions", &agent, &body)
    };
    let r = chat("m");
    assert_eq!(
        r.status, 200,
        "the keyed backend answers only to its key: {}",
        r.body
    );
    let r = keep("dead backend", chat("gone"));
    assert!(r.status >= 500, "{}", r.body);
    wait_for(
        "both MCP servers' tools",
        std::time::Duration::from_secs(30),
        || {
            let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
            let tools = gw.post_json("/mcp", &agent, &list).body;
            tools.contains("mock__echo") && tools.contains("conf__")
        },
    );
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "mock__echo", "arguments": {"message": "hi"}}});
    let r = gw.post_json("/mcp", &agent, &call);
    assert!(r.body.contains("Echo: hi"), "{}", r.body);
    // A bad token, a bad body: the gateway's own error bodies.
    keep("bad key", gw.get("/tools/echo/a", "Bearer lat_not_a_key"));
    keep(
        "bad json",
        http(
            gw.port,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", &agent),
                ("Content-Type", "application/json"),
            ],
            b"{not json",
        )
        .unwrap(),
    );

    // Everything an operator can read.
    for path in [
        "/admin/v1/whoami",
        "/admin/v1/models",
        "/admin/v1/mcp/servers",
        "/admin/v1/mcp/tools",
        "/admin/v1/audit/verify",
        "/admin/v1/policies",
        "/admin/v1/audit?limit=1000",
        "/admin/v1/stats",
    ] {
        let r = http(gw.port, "GET", path, &[("Authorization", &admin)], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        seen.push((path.to_string(), r.body));
    }
    seen.push((
        "metrics".into(),
        http(gw.port, "GET", "/metrics", &[], b"").unwrap().body,
    ));
    assert!(gw.stop().success());
    seen.push(("gateway log".into(), gw.log()));
    let events: Vec<String> = gw
        .store()
        .events()
        .unwrap()
        .into_iter()
        .map(|e| e.json)
        .collect();
    assert!(events.len() > 10);
    seen.push(("audit trail".into(), events.join("\n")));
    let log = gw.log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "the log is at debug level"
    );

    for canary in [
        ROUTE_ENV,
        ROUTE_LITERAL,
        MCP_HEADER,
        STDIO_ENV,
        LLM_KEY,
        CLICKHOUSE,
        agent_key.as_str(),
    ] {
        for (what, text) in &seen {
            let line = text
                .lines()
                .find(|l| l.contains(canary))
                .unwrap_or_default();
            assert!(
                !text.contains(canary),
                "{canary} leaked into {what}: {line}"
            );
        }
    }
}
