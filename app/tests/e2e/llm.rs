//! The OpenAI-compatible API in front of two `lattice-mock-vllm` backends
//! (vLLM's API surface, started as processes so they can be killed), driven
//! by the real OpenAI Python SDK: routing, failover, deployment constraints
//! by policy, token budgets, usage in the audit, cancellation.

use crate::harness::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
@id("agents-use-models")
permit (principal in Lattice::Role::"agent", action in [Lattice::Action::"chat", Lattice::Action::"embed"], resource);

@id("confidential-stays-on-prem")
forbid (principal, action in [Lattice::Action::"chat", Lattice::Action::"embed"], resource)
when { principal.labels.contains("confidential") && context.backend_location != "on_prem" };
"#;

/// A `lattice-mock-vllm` process.
pub struct MockVllm {
    pub port: u16,
    peer: Option<Peer>,
}

impl MockVllm {
    pub fn start(name: &str, models: &[&str], token_ms: u64) -> Self {
        Self::start_with(name, models, token_ms, &[])
    }

    pub fn start_with(name: &str, models: &[&str], token_ms: u64, extra: &[&str]) -> Self {
        let token_ms = token_ms.to_string();
        let mut args = vec!["--name", name, "--token-ms", &token_ms];
        for m in models {
            args.extend(["--model", m]);
        }
        args.extend_from_slice(extra);
        let peer = Peer::start("lattice-mock-vllm", &args);
        Self {
            port: peer.port,
            peer: Some(peer),
        }
    }

    /// SIGKILL: connections reset, nothing answers any more.
    pub fn kill(&mut self) {
        self.peer.take();
    }

    pub fn metric(&self, name: &str) -> f64 {
        http(self.port, "GET", "/metrics", &[], b"")
            .map(|r| r.body)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn backends(a: &MockVllm, b: &MockVllm) -> String {
    format!(
        r#"
[[backends]]
name = "onprem-a"
kind = "vllm"
url = "http://127.0.0.1:{}"
location = "on_prem"
timeout_ms = 5000
health_interval_ms = 300

[[backends]]
name = "cloud-b"
kind = "vllm"
url = "http://127.0.0.1:{}"
location = "cloud"
timeout_ms = 5000
health_interval_ms = 300

[[models]]
name = "chat-model"
aliases = ["chat"]
backends = ["onprem-a", "cloud-b"]

[[models]]
name = "embed-model"
backends = ["onprem-a"]
"#,
        a.port, b.port
    )
}

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/.venv/bin/python");
    assert!(p.exists(), "run scripts/setup (the OpenAI Python SDK)");
    p
}

fn sdk_command(gw: &Gateway, key: &str, args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-peers/openai_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .arg(format!("http://127.0.0.1:{}", gw.port))
        .arg(key)
        .args(args);
    cmd
}

pub(crate) fn sdk(gw: &Gateway, key: &str, args: &[&str]) -> Value {
    let out = sdk_command(gw, key, args).output().unwrap();
    assert!(
        out.status.success(),
        "openai_client.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn key_with(gw: &Gateway, agent: &str, labels: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--agent", agent, "--role", "agent"];
    for l in labels {
        args.extend(["--label", l]);
    }
    let out = gw.lattice(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = gw.port;
    wait_for("the key to be active", Duration::from_secs(10), || {
        http(
            port,
            "GET",
            "/v1/models",
            &[("Authorization", &bearer(&key))],
            b"",
        )
        .map(|r| r.status == 200)
        .unwrap_or(false)
    });
    key
}

/// The error object of an SDK error body (the SDK hands over `error`'s
/// content or the whole body, depending on the version).
fn error_object(e: &Value) -> &Value {
    let body = &e["body"];
    if body.get("error").is_some() {
        &body["error"]
    } else {
        body
    }
}

/// A one-message chat completion with this `Authorization` value.
fn chat_as(gw: &Gateway, authorization: &str, model: &str) -> Resp {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    http(
        gw.port,
        "POST",
        "/v1/chat/completions",
        &[
            ("Authorization", authorization),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

pub(crate) fn outcome(
    gw: &Gateway,
    request_id: &str,
) -> (lattice_audit::AuditEvent, lattice_audit::AuditEvent) {
    let events = gw.events_of(request_id, 2);
    (events[0].clone(), events[1].clone())
}

#[test]
fn openai_sdk_chat_stream_completion_embeddings_and_errors_with_usage_audited() {
    let a = MockVllm::start("onprem-a", &["chat-model", "embed-model"], 0);
    let b = MockVllm::start("cloud-b", &["chat-model"], 0);
    let gw = Gateway::start_with(&backends(&a, &b), POLICY);
    let key = key_with(&gw, "sdk-agent", &[]);
    let t = sdk(&gw, &key, &["tour", "chat", "embed-model"]);

    let models: Vec<&str> = t["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models, vec!["chat-model", "chat", "embed-model"]);

    // Plain chat through the alias; the audit's tokens are the backend's usage.
    assert_eq!(t["chat"]["content"], "echo: hello there gateway");
    let (decision, out) = outcome(&gw, t["chat"]["request_id"].as_str().unwrap());
    assert_eq!(
        (
            decision.kind.as_str(),
            decision.target.as_str(),
            decision.decision.as_str()
        ),
        ("llm.chat", "chat-model", "allow")
    );
    assert_eq!(decision.policies, vec!["agents-use-models".to_string()]);
    assert_eq!(out.status, Some(200));
    assert_eq!(out.tokens_in, t["chat"]["usage"]["prompt_tokens"].as_u64());
    assert_eq!(
        out.tokens_out,
        t["chat"]["usage"]["completion_tokens"].as_u64()
    );
    assert_eq!(out.upstream.as_deref(), t["chat"]["backend"].as_str());

    // A stream the agent asked no usage for: the gateway asked, recorded it,
    // and removed the usage chunk from what the agent got.
    assert_eq!(t["stream"]["content"], "echo: hello there gateway");
    assert_eq!(t["stream"]["usage_chunks"], json!([]));
    let (_, out) = outcome(&gw, t["stream"]["request_id"].as_str().unwrap());
    assert_eq!((out.tokens_in, out.tokens_out), (Some(3), Some(4)));
    assert!(out.ttft_us.is_some_and(|t| t > 0), "{out:?}");
    // One that asked gets it, and the audit agrees with it.
    let usage = &t["stream_usage"]["usage_chunks"][0];
    let (_, out) = outcome(&gw, t["stream_usage"]["request_id"].as_str().unwrap());
    assert_eq!(out.tokens_in, usage["prompt_tokens"].as_u64());
    assert_eq!(out.tokens_out, usage["completion_tokens"].as_u64());
    assert_eq!(
        t["stream_usage"]["usage_chunks"].as_array().unwrap().len(),
        1
    );

    assert_eq!(t["completion"]["text"], "echo: one two");
    let (d, out) = outcome(&gw, t["completion"]["request_id"].as_str().unwrap());
    assert_eq!(d.kind, "llm.completion");
    assert_eq!(
        out.tokens_out,
        t["completion"]["usage"]["completion_tokens"].as_u64()
    );

    assert_eq!(
        (
            t["embeddings"]["count"].as_u64(),
            t["embeddings"]["dims"].as_u64()
        ),
        (Some(2), Some(8))
    );
    let (d, out) = outcome(&gw, t["embeddings"]["request_id"].as_str().unwrap());
    assert_eq!((d.kind.as_str(), d.action.as_str()), ("llm.embed", "embed"));
    assert_eq!(out.upstream.as_deref(), Some("onprem-a"));
    assert_eq!(
        out.tokens_in,
        t["embeddings"]["usage"]["prompt_tokens"].as_u64()
    );

    // Errors, in OpenAI's format, as the SDK raises them.
    let e = &t["unknown_model"];
    assert_eq!(
        (e["status"].as_u64(), e["type"].as_str()),
        (Some(404), Some("NotFoundError"))
    );
    assert_eq!(error_object(e)["code"], "model_not_found");
    assert_eq!(error_object(e)["param"], "model");
    let e = &t["empty_messages"];
    assert_eq!(e["status"].as_u64(), Some(400));
    assert_eq!(error_object(e)["param"], "messages");
    assert_eq!(error_object(e)["type"], "invalid_request_error");
    let e = &t["bad_key"];
    assert_eq!(
        (e["status"].as_u64(), e["type"].as_str()),
        (Some(401), Some("AuthenticationError"))
    );
    assert_eq!(error_object(e)["code"], "invalid_api_key");
    // Each refusal is audited too.
    let rid = error_object(&t["unknown_model"])["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (d, _) = outcome(&gw, &rid);
    assert_eq!(
        (d.decision.as_str(), d.status, d.reason.as_str()),
        ("deny", Some(404), "no such model")
    );
    gw.assert_verifies(&[]);
}

#[test]
fn a_confidential_agent_is_kept_to_on_prem_backends_by_policy() {
    let mut a = MockVllm::start("onprem-a", &["chat-model", "embed-model"], 0);
    let b = MockVllm::start("cloud-b", &["chat-model"], 0);
    let gw = Gateway::start_with(&backends(&a, &b), POLICY);
    let secret = key_with(&gw, "secret-agent", &["confidential"]);
    let plain = key_with(&gw, "plain-agent", &[]);
    let chat = |key: &str| chat_as(&gw, &bearer(key), "chat-model");
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let r = chat(&secret);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["system_fingerprint"], "onprem-a");
        let (d, _) = outcome(&gw, &r.request_id());
        assert_eq!(d.upstream.as_deref(), Some("onprem-a"));
        let r = chat(&plain);
        assert_eq!(r.status, 200, "{}", r.body);
        used.insert(r.json()["system_fingerprint"].as_str().unwrap().to_string());
    }
    assert_eq!(
        used.len(),
        2,
        "the plain agent is spread over both backends: {used:?}"
    );

    // With the on-prem backend gone, the confidential agent is refused
    // rather than sent to the cloud; the plain agent moves to the cloud.
    a.kill();
    let r = chat(&secret);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "server_error");
    let (d, out) = outcome(&gw, &r.request_id());
    assert_eq!(d.upstream.as_deref(), Some("onprem-a"));
    assert_eq!(out.upstream.as_deref(), Some("onprem-a"));
    let served_by_b = b.metric("mock_requests_total");
    for _ in 0..3 {
        let r = chat(&plain);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["system_fingerprint"], "cloud-b");
    }
    assert_eq!(b.metric("mock_requests_total"), served_by_b + 3.0);
    // The confidential agent does not see a model it cannot use at all.
    let models = gw.get("/v1/models", &bearer(&secret)).json();
    assert_eq!(models["data"].as_array().unwrap().len(), 3);
    gw.assert_verifies(&[]);
}

#[test]
fn a_backend_killed_mid_run_loses_only_streams_already_started() {
    let mut a = MockVllm::start("onprem-a", &["chat-model", "embed-model"], 40);
    let b = MockVllm::start("cloud-b", &["chat-model"], 40);
    let gw = Gateway::start_with(&backends(&a, &b), POLICY);
    let key = key_with(&gw, "load-agent", &[]);
    let child = sdk_command(&gw, &key, &["load", "chat-model", "48", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("traffic on backend a", Duration::from_secs(20), || {
        a.metric("mock_requests_total") >= 6.0
    });
    a.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), 48);
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    for f in &failed {
        assert_eq!(f["started"], true, "a call failed before streaming: {f}");
    }
    assert!(
        failed.len() <= 6,
        "at most the streams in flight on a: {failed:#?}"
    );
    let by_b = results
        .iter()
        .filter(|r| r["backend"] == "cloud-b" && r["ok"] == true)
        .count();
    assert!(
        by_b >= 48 - 6 - 6 - failed.len(),
        "traffic moved to b: {by_b}"
    );
    // Every call is audited with exactly a decision and an outcome.
    for r in &results {
        let rid = r["request_id"].as_str().expect("request id");
        let (_, out) = outcome(&gw, rid);
        if r["ok"] == true {
            assert_eq!(out.reason, "", "{out:?}");
        } else {
            assert!(out.reason.contains("mid-stream"), "{out:?}");
        }
    }
    gw.assert_verifies(&[]);
}

#[test]
fn a_token_budget_spent_mid_run_answers_429_from_then_on() {
    let a = MockVllm::start("onprem-a", &["chat-model", "embed-model"], 0);
    let b = MockVllm::start("cloud-b", &["chat-model"], 0);
    let limits = "\n[[limits]]\nname = \"daily-tokens\"\nper = \"agent\"\ntokens = 30\nwindow_seconds = 31536000\n";
    let gw = Gateway::start_with(&(backends(&a, &b) + limits), POLICY);
    let key = key_with(&gw, "budget-agent", &[]);
    let calls: Vec<Value> =
        serde_json::from_value(sdk(&gw, &key, &["until429", "chat", "7"])).unwrap();
    let statuses: Vec<u64> = calls
        .iter()
        .map(|c| c["status"].as_u64().unwrap())
        .collect();
    // 4 prompt + 5 completion tokens a call: 27 < 30 after three, 36 after four.
    assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429, 429]);
    let spent: u64 = calls[..4]
        .iter()
        .map(|c| {
            c["usage"]["prompt_tokens"].as_u64().unwrap()
                + c["usage"]["completion_tokens"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(spent, 36);
    let refused = &calls[4];
    assert_eq!(refused["type"], "RateLimitError");
    assert!(
        refused["retry_after"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(error_object(refused)["code"], "rate_limit_exceeded");
    // The audit holds the same token counts as the backend reported.
    for c in &calls[..4] {
        let (_, out) = outcome(&gw, c["request_id"].as_str().unwrap());
        assert_eq!(out.tokens_in, c["usage"]["prompt_tokens"].as_u64());
        assert_eq!(out.tokens_out, c["usage"]["completion_tokens"].as_u64());
    }
    let rid = error_object(refused)["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (d, _) = outcome(&gw, &rid);
    assert_eq!((d.decision.as_str(), d.status), ("deny", Some(429)));
    assert!(d.reason.contains("daily-tokens"), "{}", d.reason);
    // The budget is per agent: another agent is still served.
    let other = key_with(&gw, "other-agent", &[]);
    let calls: Vec<Value> =
        serde_json::from_value(sdk(&gw, &other, &["until429", "chat", "1"])).unwrap();
    assert_eq!(calls[0]["status"], 200);
}

#[test]
fn an_agent_that_disconnects_mid_stream_cancels_the_backend_request() {
    let a = MockVllm::start("onprem-a", &["chat-model", "embed-model"], 150);
    let b = MockVllm::start("cloud-b", &["chat-model"], 150);
    let gw = Gateway::start_with(&backends(&a, &b), POLICY);
    let key = key_with(&gw, "impatient-agent", &[]);
    let body = json!({"model": "embed-model", "stream": true, "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}]});
    // embed-model lives on backend a only; chat on it is allowed by policy.
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        bearer(&key),
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    let n = s.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rid = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_string();
    drop(s);
    wait_for(
        "the backend to see the cancellation",
        Duration::from_secs(5),
        || a.metric("mock_cancelled_total") >= 1.0,
    );
    assert_eq!(a.metric("vllm:num_requests_running"), 0.0);
    let (_, out) = outcome(&gw, &rid);
    assert!(out.reason.starts_with("client_closed"), "{out:?}");
    gw.assert_verifies(&[]);
}

#[test]
fn model_routes_change_at_run_time_through_the_cli_and_the_admin_api() {
    let a = MockVllm::start("onprem-a", &["chat-model", "embed-model"], 0);
    let b = MockVllm::start("cloud-b", &["chat-model"], 0);
    let policy = format!(
        "{POLICY}\n@id(\"admins-change-routes\")\npermit (principal in Lattice::Role::\"admin\", action == Lattice::Action::\"admin.change_routes\", resource);\n"
    );
    // The run-time backends below are on loopback: the operator lists it.
    let config = format!("{}\n[egress]\nallow = [\"127.0.0.1\"]\n", backends(&a, &b));
    let gw = Gateway::start_with(&config, &policy);
    let agent = key_with(&gw, "route-agent", &[]);
    let admin = bearer(&gw.create_key("ops", &["admin"]));
    let chat = |model: &str| chat_as(&gw, &bearer(&agent), model);
    let admin_call = |method: &str, path: &str, auth: &str, body: &str| {
        http(
            gw.port,
            method,
            path,
            &[
                ("Authorization", auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };

    // The CLI adds a route on a backend of the config file; the running
    // gateway serves it after its next reload poll.
    let out = gw.lattice(&[
        "models",
        "add",
        "extra-model",
        "--use-backend",
        "onprem-a",
        "--upstream-model",
        "chat-model",
        "--alias",
        "extra",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the run-time route", Duration::from_secs(10), || {
        chat("extra").status == 200
    });
    assert_eq!(chat("extra").json()["system_fingerprint"], "onprem-a");
    let list = String::from_utf8(gw.lattice(&["models", "list"]).stdout).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("extra-model\t") && l.contains("source=run-time")),
        "{list}"
    );
    // A route that names an unknown backend is refused by the CLI.
    let out = gw.lattice(&["models", "add", "broken", "--use-backend", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`nowhere`"),
        "{out:?}"
    );

    // The admin API: policy decides who may use it.
    let r = admin_call("GET", "/admin/v1/models", &bearer(&agent), "");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin_call("GET", "/admin/v1/models", &admin, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let models = r.json()["models"].as_array().unwrap().clone();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["chat-model", "embed-model", "extra-model"]);
    assert_eq!(models[2]["source"], "run-time");
    assert_eq!(models[0]["backends"][0]["healthy"], true);
    assert!(models[0]["backends"][0]["requests"].as_u64().is_some());

    // Add a route with its own backend: served at once.
    let posted = json!({
        "backends": [{"name": "b-direct", "kind": "vllm", "url": format!("http://127.0.0.1:{}", b.port), "location": "cloud"}],
        "models": [{"name": "posted-model", "backends": ["b-direct"], "upstream_model": "chat-model"}],
    });
    let r = admin_call("POST", "/admin/v1/models", &admin, &posted.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let r = chat("posted-model");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["system_fingerprint"], "cloud-b");
    let bad = json!({"models": [{"name": "orphan", "backends": ["missing"]}]});
    let r = admin_call("POST", "/admin/v1/models", &admin, &bad.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`missing`"),
        "{}",
        r.body
    );
    let r = admin_call("POST", "/admin/v1/models", &admin, "{not json");
    assert_eq!(r.status, 400, "{}", r.body);

    // Removal: config routes are the file's; run-time ones go at once.
    let r = admin_call("DELETE", "/admin/v1/models/chat-model", &admin, "");
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin_call("DELETE", "/admin/v1/models/posted-model", &admin, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(chat("posted-model").status, 404);
    let out = gw.lattice(&["models", "remove", "extra-model"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the route to go", Duration::from_secs(10), || {
        chat("extra").status == 404
    });

    // Every admin call is audited under its own kind.
    let store = gw.filled_store();
    let kinds: Vec<String> = store
        .tail(500)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str::<lattice_audit::AuditEvent>(&e.json).unwrap())
        .filter(|e| e.kind.starts_with("admin."))
        .map(|e| format!("{}:{}", e.kind, e.decision))
        .collect();
    for k in [
        "admin.models.list:deny",
        "admin.models.list:allow",
        "admin.models.add:allow",
        "admin.models.add:deny",
        "admin.models.remove:allow",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    gw.assert_verifies(&[]);
}

#[test]
fn backends_are_health_checked_and_get_their_own_key_never_the_agents() {
    let keyed = MockVllm::start_with("keyed", &["gpt-x"], 0, &["--api-key", "sk-backend-secret"]);
    let mut local = MockVllm::start("local", &["gpt-x"], 0);
    let local_port = local.port;
    // The gateway inherits this; the config names the variable, not the key.
    std::env::set_var("LATTICE_TEST_BACKEND_KEY", "sk-backend-secret");
    let config = format!(
        r#"
[[backends]]
name = "local"
kind = "mlx"
url = "http://127.0.0.1:{local_port}"
health_interval_ms = 200

[[backends]]
name = "keyed"
kind = "openai"
url = "http://127.0.0.1:{}"
location = "cloud"
api_key_env = "LATTICE_TEST_BACKEND_KEY"
health_interval_ms = 200

[[models]]
name = "gpt-x"
strategy = "priority"
backends = ["local", "keyed"]
"#,
        keyed.port
    );
    let policy = format!(
        "{POLICY}\npermit (principal in Lattice::Role::\"admin\", action == Lattice::Action::\"admin.change_routes\", resource);\n"
    );
    let gw = Gateway::start_with(&config, &policy);
    let agent = key_with(&gw, "priority-agent", &[]);
    let admin = bearer(&gw.create_key("ops", &["admin"]));
    let chat = || chat_as(&gw, &bearer(&agent), "gpt-x");
    let healthy = |backend: &str| -> bool {
        let view = http(
            gw.port,
            "GET",
            "/admin/v1/models",
            &[("Authorization", &admin)],
            b"",
        )
        .unwrap()
        .json();
        view["models"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == backend)
            .map(|b| b["healthy"] == true)
            .unwrap()
    };
    // Priority: the first backend serves while it is up.
    let r = chat();
    assert_eq!(
        (r.status, r.json()["system_fingerprint"].as_str()),
        (200, Some("local")),
        "{}",
        r.body
    );
    // Down: the health check takes it out; the keyed backend serves, which
    // it does only when it gets its own key (the agent's would be refused).
    local.kill();
    wait_for(
        "the health check to mark local down",
        Duration::from_secs(5),
        || !healthy("local"),
    );
    let r = chat();
    assert_eq!(
        (r.status, r.json()["system_fingerprint"].as_str()),
        (200, Some("keyed")),
        "{}",
        r.body
    );
    assert_eq!(keyed.metric("mock_requests_total"), 1.0);
    let metrics = http(gw.port, "GET", "/metrics", &[], b"").unwrap().body;
    assert!(
        metrics.contains(
            "lattice_backend_available{backend=\"local\",kind=\"mlx\",location=\"on_prem\"} 0\n"
        ),
        "{metrics}"
    );
    assert_eq!(
        gw.metric(
            "lattice_backend_available{backend=\"keyed\",kind=\"openai\",location=\"cloud\"}"
        ),
        1.0
    );
    assert!(gw.metric("lattice_llm_tokens_total{model=\"gpt-x\",direction=\"out\"}") >= 2.0);
    // Back up on the same port: marked healthy again, and preferred again.
    let _local = MockVllm::start_with(
        "local",
        &["gpt-x"],
        0,
        &["--listen", &format!("127.0.0.1:{local_port}")],
    );
    wait_for(
        "the health check to mark local up",
        Duration::from_secs(5),
        || healthy("local"),
    );
    let r = chat();
    assert_eq!(r.json()["system_fingerprint"], "local", "{}", r.body);
}

#[test]
fn slow_backends_time_out_and_bad_requests_get_openai_errors_each_audited() {
    // `slow` takes 3 s to answer; its timeout is 300 ms. `fast` answers at once.
    let slow = MockVllm::start_with("slow", &["m"], 0, &["--first-token-ms", "3000"]);
    let fast = MockVllm::start("fast", &["m"], 0);
    let config = format!(
        r#"
[[backends]]
name = "slow"
kind = "vllm"
url = "http://127.0.0.1:{}"
timeout_ms = 300

[[backends]]
name = "fast"
kind = "vllm"
url = "http://127.0.0.1:{}"

[[models]]
name = "m"
strategy = "priority"
backends = ["slow", "fast"]

[[models]]
name = "only-slow"
upstream_model = "m"
backends = ["slow"]
"#,
        slow.port, fast.port
    );
    let gw = Gateway::start_with(&config, POLICY);
    let key = bearer(&key_with(&gw, "timing-agent", &[]));
    let post = |body: &[u8]| {
        http(
            gw.port,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", &key),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .unwrap()
    };
    let chat = |model: &str| chat_as(&gw, &key, model);
    // The slow backend times out before answering: the call moves on.
    let r = chat("m");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["system_fingerprint"], "fast");
    let (d, out) = outcome(&gw, &r.request_id());
    assert_eq!(
        (d.upstream.as_deref(), out.upstream.as_deref()),
        (Some("slow"), Some("fast"))
    );
    // With nowhere else to go: 504 in OpenAI's format.
    let r = chat("only-slow");
    assert_eq!(r.status, 504, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("server_error"), Some("upstream_timeout"))
    );
    let (_, out) = outcome(&gw, &r.request_id());
    assert!(
        out.reason.contains("did not answer within 300 ms"),
        "{out:?}"
    );

    // Malformed JSON, a wrong shape, an oversized body (max 4096 bytes here),
    // a wrong method, an unknown path: each gets its OpenAI error and is
    // audited with exactly one decision and one outcome.
    let mut refused = Vec::new();
    let r = post(b"{\"model\": ");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("could not parse the JSON body"));
    refused.push(r);
    let r = post(br#"{"model": "m", "messages": "hello"}"#);
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("messages")),
        "{}",
        r.body
    );
    refused.push(r);
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]})
        .to_string();
    let r = post(big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    refused.push(r);
    let r = http(
        gw.port,
        "GET",
        "/v1/chat/completions",
        &[("Authorization", &key)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 405, "{}", r.body);
    refused.push(r);
    let r = http(
        gw.port,
        "POST",
        "/v1/images/generations",
        &[("Authorization", &key)],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    refused.push(r);
    for r in &refused {
        let (d, out) = outcome(&gw, &r.request_id());
        assert_eq!(
            (d.decision.as_str(), d.status, out.status),
            ("deny", Some(r.status), Some(r.status)),
            "{d:?}"
        );
    }
    gw.assert_verifies(&[]);
}
