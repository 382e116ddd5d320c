//! The worker's OpenAI API over HTTP, served in-process on a generated
//! tiny model: streamed and whole replies agree, every bad input named in
//! issue #15 gets a clear OpenAI-format error and the worker keeps
//! serving, a model that cannot be served is refused at start by name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use lattice_worker::serve::{self, Options};
use lattice_worker::testmodel::{self, Spec};
use serde_json::{json, Value};

struct Worker {
    _dir: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

async fn start(spec: Spec, key: Option<&str>, max_context: Option<usize>) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    testmodel::write(dir.path(), &spec).unwrap();
    let options = Options {
        name: Some("tiny".into()),
        aliases: vec!["tiny-alias".into()],
        threads: 2,
        kv_cache_mib: 16,
        max_context,
        api_key: key.map(str::to_string),
        max_body_bytes: 64 * 1024,
        ..Options::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
    };
    let running = serve::start(options).await.unwrap();
    let url = format!("http://{}", running.addr);
    tokio::spawn(running.serve(std::future::pending()));
    Worker {
        _dir: dir,
        url,
        client: reqwest::Client::new(),
    }
}

impl Worker {
    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A chat request with `key`, if any.
    async fn send(&self, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut r = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().await.unwrap()
    }

    /// The content deltas and the final usage of a streamed chat.
    async fn stream(&self, body: Value) -> (String, Value, String) {
        let r = self.send(&body, None).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let mut content = String::new();
        let mut usage = Value::Null;
        let mut finish = String::new();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                content.push_str(c);
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                finish = f.to_string();
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        (content, usage, finish)
    }
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                          "max_tokens": 32, "temperature": 0, "ignore_eos": true});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_whole_greedy_replies_are_the_same_tokens() {
    for spec in [Spec::tiny_llama(), Spec::tiny_qwen2()] {
        let w = start(spec, None, None).await;
        let (status, whole) = w
            .post("/v1/chat/completions", &chat(json!({})).to_string())
            .await;
        assert_eq!(status, 200, "{whole}");
        let (streamed, usage, finish) = w
            .stream(chat(
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ))
            .await;
        assert_eq!(
            whole["choices"][0]["message"]["content"].as_str().unwrap(),
            streamed
        );
        assert_eq!(finish, "length");
        assert_eq!(usage["completion_tokens"], 32);
        assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);
        // The second request found the first one's prompt blocks.
        assert!(
            usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_is_a_clear_error_and_the_worker_keeps_serving() {
    let w = start(Spec::tiny_llama(), None, Some(64)).await;
    let long = "the weather in Paris ".repeat(40);
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{\"model\": \"tiny\", ".into(), 400, "the body is not valid JSON: EOF while parsing a value at line 1 column 18", None),
        (chat(json!({"max_tokens": -1})).to_string(), 400, "max_tokens must be at least 1, got -1", None),
        (chat(json!({"model": "gpt-9"})).to_string(), 404, "the model `gpt-9` does not exist (this worker serves `tiny`)", Some("model_not_found")),
        (chat(json!({"messages": [{"role": "user", "content": long}]})).to_string(), 400,
         "this model's maximum context length is 64 tokens; the request has 342 prompt tokens and asks for 32 completion tokens",
         Some("context_length_exceeded")),
        (chat(json!({"temperature": 5})).to_string(), 400, "temperature must be between 0 and 2, got 5", None),
        (chat(json!({"messages": []})).to_string(), 400, "messages must be a non-empty list", None),
        (format!("{{\"model\": \"tiny\", \"pad\": \"{}\"}}", "x".repeat(70_000)), 413, "the body is over the limit of 65536 bytes", None),
    ];
    for (body, status, message, code) in &cases {
        let (got, v) = w.post("/v1/chat/completions", body).await;
        assert_eq!(got, *status, "{v}");
        assert_eq!(v["error"]["message"], *message);
        assert_eq!(v["error"]["code"].as_str(), *code);
        // Still serving after each.
        let (ok, v) = w
            .post(
                "/v1/chat/completions",
                &chat(json!({"max_tokens": 2})).to_string(),
            )
            .await;
        assert_eq!(ok, 200, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_is_required_and_aliases_and_stops_work() {
    let w = start(Spec::tiny_llama(), Some("s3cret"), None).await;
    let body = chat(json!({"model": "tiny-alias", "max_tokens": 8}));
    let r = w.send(&body, None).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = w.send(&body, Some("s3cret")).await;
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // A stop string taken from the middle of that reply cuts it there.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 4, "{text:?}");
    let stop: String = chars[2..4].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let body = chat(json!({"model": "tiny", "max_tokens": 8, "stop": [stop]}));
    let r = w.send(&body, Some("s3cret")).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Health and metrics stay open, as vLLM's do.
    let health = w
        .client
        .get(format!("{}/health", w.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let models = w
        .client
        .get(format!("{}/v1/models", w.url))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    let v: Value = models.json().await.unwrap();
    assert_eq!(v["data"][1]["id"], "tiny-alias");
}

#[tokio::test]
async fn a_model_that_cannot_be_served_is_refused_at_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    testmodel::write(
        dir.path(),
        &Spec {
            shards: 2,
            ..Spec::tiny_llama()
        },
    )
    .unwrap();
    // Sharded models load.
    let ok = serve::start(Options::new(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await;
    assert!(ok.is_ok());
    // Drop a tensor from the index: the worker names it.
    let index = dir.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let file = v["weight_map"]["model.layers.1.mlp.up_proj.weight"]
        .as_str()
        .unwrap()
        .to_string();
    // Rewrite that shard without the tensor.
    let path = dir.path().join(&file);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
    v["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("model.layers.1.mlp.up_proj.weight");
    std::fs::write(&index, v.to_string()).unwrap();
    let err = serve::start(Options::new(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "tensor model.layers.1.mlp.up_proj.weight: missing from the model's safetensors files"
    );
    // No tokenizer: refused, naming the file.
    let dir2 = tempfile::tempdir().unwrap();
    testmodel::write(dir2.path(), &Spec::tiny_qwen2()).unwrap();
    std::fs::remove_file(dir2.path().join("tokenizer.json")).unwrap();
    let err = serve::start(Options::new(
        dir2.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .ends_with("tokenizer.json not found (the worker needs a tokenizer.json)"),
        "{err}"
    );
}

/// `--f32-activations` reaches the CPU device: its name drops the bf16
/// dot path, which the default keeps where this CPU has AVX512-BF16.
#[tokio::test]
async fn f32_activations_turn_the_bf16_dot_path_off() {
    let dir = tempfile::tempdir().unwrap();
    testmodel::write(
        dir.path(),
        &Spec {
            dtype: lattice_gpu_kernels::DType::BF16,
            ..Spec::tiny_llama()
        },
    )
    .unwrap();
    let has = lattice_gpu_kernels::cpu::Cpu::new(1).unwrap().bf16_dot();
    for f32_activations in [false, true] {
        let options = Options {
            threads: 1,
            kv_cache_mib: 4,
            f32_activations,
            ..Options::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
        };
        let running = serve::start(options).await.unwrap();
        assert_eq!(
            running.device.contains("bf16 dot"),
            has && !f32_activations,
            "{f32_activations}: {}",
            running.device
        );
    }
}

/// The KV cache's dtype: bf16 by default for bf16 weights, f32 for f32
/// ones, either when asked; the same memory holds twice the tokens in
/// bf16, and a bf16 cache serves.
#[tokio::test]
async fn the_kv_cache_holds_bf16_or_f32_as_asked() {
    use lattice_gpu_kernels::{DType, KvDtype};
    let mut tokens = std::collections::HashMap::new();
    for (weights, asked, want) in [
        (DType::BF16, None, KvDtype::BF16),
        (DType::F32, None, KvDtype::F32),
        (DType::BF16, Some(KvDtype::F32), KvDtype::F32),
        (DType::F32, Some(KvDtype::BF16), KvDtype::BF16),
    ] {
        let dir = tempfile::tempdir().unwrap();
        testmodel::write(
            dir.path(),
            &Spec {
                dtype: weights,
                ..Spec::tiny_llama()
            },
        )
        .unwrap();
        let options = Options {
            name: Some("m".into()),
            threads: 1,
            kv_cache_mib: 4,
            kv_cache_dtype: asked,
            ..Options::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
        };
        let running = serve::start(options).await.unwrap();
        assert_eq!(
            running.kv_dtype, want,
            "{weights:?} weights, {asked:?} asked"
        );
        tokens.insert(want, running.kv_tokens);
        if want == KvDtype::BF16 && weights == DType::F32 {
            let url = format!("http://{}", running.addr);
            tokio::spawn(running.serve(std::future::pending()));
            let r: Value = reqwest::Client::new()
                .post(format!("{url}/v1/completions"))
                .json(
                    &json!({"model": "m", "prompt": "hello", "max_tokens": 4, "ignore_eos": true}),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["usage"]["completion_tokens"], 4, "{r}");
        }
    }
    assert_eq!(tokens[&KvDtype::BF16], 2 * tokens[&KvDtype::F32]);
}
