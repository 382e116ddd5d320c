//! `lattice worker` behind the gateway (issue #15): a `[[backends]]` entry
//! of kind `lattice` pointing at a worker serving a generated tiny model,
//! driven by the real OpenAI Python SDK — a streamed chat with usage, the
//! same chat whole (greedy: the same text), a forced tool call parsed into
//! `tool_calls`, the audit's token counts equal to the worker's usage, the worker's own key injected by the gateway,
//! a bad request answered with the worker's OpenAI error, and the router
//! reading the worker's vLLM-named metrics.

use crate::harness::*;
use crate::llm::{key_with, outcome, sdk};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"
@id("agents-use-models")
permit (principal in Lattice::Role::"agent", action == Lattice::Action::"chat", resource);

@id("admins-see-routes")
permit (principal in Lattice::Role::"admin", action == Lattice::Action::"admin.change_routes", resource);
"#;

struct Worker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker(key: &str) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-qwen");
    let out = Command::new(BIN)
        .args([
            "worker",
            "make-test-model",
            "--arch",
            "qwen2",
            "--dtype",
            "bf16",
            "--out",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "worker",
            "--name",
            "tiny",
            "--threads",
            "1",
            "--kv-cache-mib",
            "64",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--model")
        .arg(&model)
        .env("LATTICE_WORKER_API_KEY", key)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the worker to serve", Duration::from_secs(20), || {
        http(port, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
    });
    // A serving worker turns transparent huge pages off for itself once
    // its model is loaded.
    assert_thp_off(child.id());
    Worker {
        port,
        child,
        _dir: dir,
    }
}

#[test]
fn the_openai_sdk_chats_with_a_lattice_worker_through_the_gateway() {
    let worker = start_worker("sk-worker-secret");
    // The gateway inherits this; the config names the variable, not the key.
    std::env::set_var("LATTICE_TEST_WORKER_KEY", "sk-worker-secret");
    let config = format!(
        r#"
[[backends]]
name = "local-worker"
kind = "lattice"
url = "http://127.0.0.1:{}"
location = "on_prem"
api_key_env = "LATTICE_TEST_WORKER_KEY"
timeout_ms = 30000
health_interval_ms = 200

[[models]]
name = "tiny"
backends = ["local-worker"]
"#,
        worker.port
    );
    let gw = Gateway::start_with(&config, POLICY);
    let key = key_with(&gw, "worker-agent", &[]);
    let t = sdk(&gw, &key, &["worker", "tiny"]);

    // Greedy and fixed length: streamed and whole replies are the same.
    let content = t["chat"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert_eq!(t["stream"]["content"], content);
    assert_eq!(
        (t["stream"]["finish"].clone(), t["chat"]["finish"].clone()),
        (json!(["length"]), json!("length"))
    );
    let usage = &t["stream"]["usage"][0];
    assert_eq!(usage["completion_tokens"], 24);
    assert_eq!(t["chat"]["usage"]["completion_tokens"], 24);
    // The audit holds the worker's counts, for both calls.
    for (call, u) in [(&t["stream"], usage), (&t["chat"], &t["chat"]["usage"])] {
        let (decision, out) = outcome(&gw, call["request_id"].as_str().unwrap());
        assert_eq!(
            (decision.target.as_str(), decision.decision.as_str()),
            ("tiny", "allow")
        );
        assert_eq!(out.upstream.as_deref(), Some("local-worker"));
        assert_eq!(out.tokens_in, u["prompt_tokens"].as_u64());
        assert_eq!(out.tokens_out, u["completion_tokens"].as_u64());
    }
    // A forced tool call (constrained decoding on the worker), parsed into
    // the SDK's tool_calls, its usage audited.
    let tc = &t["tool_call"];
    assert_eq!(tc["finish"], "tool_calls", "{tc}");
    assert_eq!(tc["calls"][0]["name"], "get_weather");
    let city = tc["calls"][0]["arguments"]["city"].as_str().unwrap();
    assert!(city == "Paris" || city == "London", "{tc}");
    let (_, out) = outcome(&gw, tc["request_id"].as_str().unwrap());
    assert_eq!(out.tokens_out, tc["usage"]["completion_tokens"].as_u64());
    // The worker's own validation, in OpenAI's format, through the gateway.
    let bad = &t["bad"];
    assert_eq!(bad["status"], 400, "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("top_k must be -1 (off), 0 (off) or positive, got -7"),
        "{bad}"
    );

    // The router reads the worker's metrics: a long stream in flight shows
    // as the backend's reported load; the agent leaving ends it on the
    // worker too.
    let admin = bearer(&gw.create_key("ops", &["admin"]));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "count"}],
                      "max_tokens": 3000, "ignore_eos": true, "stream": true})
    .to_string();
    let mut agent = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    write!(
        agent,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        bearer(&key),
        body.len()
    )
    .unwrap();
    wait_for(
        "the worker's metrics to show the stream",
        Duration::from_secs(20),
        || {
            let view = http(
                gw.port,
                "GET",
                "/admin/v1/models",
                &[("Authorization", &admin)],
                b"",
            )
            .unwrap()
            .json();
            view["models"][0]["backends"][0]["reported_load"]
                .as_f64()
                .is_some_and(|l| l >= 1.0)
        },
    );
    drop(agent);
    let metric = |name: &str| -> String {
        let text = http(worker.port, "GET", "/metrics", &[], b"").unwrap().body;
        text.lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for(
        "the worker to drop the abandoned stream",
        Duration::from_secs(20),
        || {
            metric("vllm:request_success_total").contains("finished_reason=\"abort\"} 1")
                && metric("vllm:num_requests_running").ends_with(" 0")
        },
    );
}

#[test]
fn without_a_gpu_device_cuda_says_what_is_missing_and_auto_serves_on_the_cpu() {
    assert!(
        !Path::new("/dev/nvidiactl").exists(),
        "this test describes a machine without a GPU"
    );
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let cuda = Command::new(BIN)
        .args(["worker", "--device", "cuda", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(cuda.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&cuda.stderr);
    assert!(
        stderr.contains(
            "--device cuda: no CUDA driver on this machine (libcuda.so could not be loaded"
        ),
        "{stderr}"
    );
    let port = free_port();
    let mut auto = Command::new(BIN)
        .args([
            "worker",
            "--device",
            "auto",
            "--threads",
            "1",
            "--kv-cache-mib",
            "16",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--model")
        .arg(&model)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the worker on the CPU", Duration::from_secs(20), || {
        http(port, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
    });
    let _ = auto.kill();
    let out = auto.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--device auto: no CUDA device") && stderr.contains("serving on the CPU"),
        "{stderr}"
    );
}
