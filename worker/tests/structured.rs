//! Constrained decoding on generated tiny models (their weights are noise,
//! so only the grammar makes the output parse): structured output with a
//! JSON schema at temperature 1.0, and forced tool calls in the Llama 3
//! and Hermes/Qwen formats parsed into `tool_calls`, whole and streamed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use lattice_worker::serve::{self, Options};
use lattice_worker::testmodel::{self, Flavor, Spec};
use serde_json::{json, Value};

async fn start(spec: Spec) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    testmodel::write(dir.path(), &spec).unwrap();
    let options = Options {
        name: Some("tiny".into()),
        threads: 2,
        kv_cache_mib: 32,
        ..Options::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap())
    };
    let running = serve::start(options).await.unwrap();
    let url = format!("http://{}", running.addr);
    tokio::spawn(running.serve(std::future::pending()));
    (dir, url)
}

async fn post(url: &str, body: &Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "celsius": {"type": "integer", "minimum": -50, "maximum": 50},
            "sunny": {"type": "boolean"},
            "wind": {"enum": ["calm", "breeze", "storm"]}
        },
        "required": ["city", "celsius", "sunny", "wind"],
        "additionalProperties": false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sampled_replies_with_a_schema_all_parse_and_validate() {
    let (_dir, url) = start(Spec::tiny_llama()).await;
    let schema = weather_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut distinct = std::collections::BTreeSet::new();
    for i in 0..20 {
        let body = json!({"model": "tiny", "temperature": 1.0, "seed": i, "max_tokens": 200,
            "messages": [{"role": "user", "content": "Weather report as JSON"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}});
        let (status, text) = post(&url, &body).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(content)
            .unwrap_or_else(|e| panic!("reply {i} does not parse ({e}): {content}"));
        assert!(
            validator.is_valid(&parsed),
            "reply {i} does not validate: {content}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        distinct.insert(content.to_string());
    }
    // Sampled, not fixed: the noise model still varies within the grammar.
    assert!(distinct.len() > 1, "{distinct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_tool_calls_parse_in_every_format_whole_and_streamed() {
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
         "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "London"]}},
                        "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
         "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                        "required": ["zone"], "additionalProperties": false}}}
    ]);
    for spec in [Spec::tiny_llama(), Spec::tiny_qwen2(), Spec::tiny_mistral()] {
        let arch = format!("{:?}", spec.arch);
        let mistral = spec.flavor == Flavor::Mistral;
        let (_dir, url) = start(spec).await;
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "get_time"}}),
        ] {
            let body = json!({"model": "tiny", "temperature": 1.0, "seed": 3, "max_tokens": 100,
                "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                "tools": tools, "tool_choice": choice});
            let (status, text) = post(&url, &body).await;
            assert_eq!(status, 200, "{arch}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            let choice0 = &v["choices"][0];
            assert_eq!(choice0["finish_reason"], "tool_calls", "{arch}: {text}");
            let call = &choice0["message"]["tool_calls"][0];
            let name = call["function"]["name"].as_str().unwrap();
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            match name {
                "get_weather" => assert!(
                    args["city"] == "Paris" || args["city"] == "London",
                    "{args}"
                ),
                "get_time" => assert!(args["zone"] == "UTC" || args["zone"] == "CET", "{args}"),
                other => panic!("{arch}: called {other}"),
            }
            if choice.is_object() {
                assert_eq!(name, "get_time");
            }
            assert_eq!(call["type"], "function");
            // The call and its result go back to the model: Mistral's
            // template takes only ids of nine letters and digits.
            let id = call["id"].as_str().unwrap();
            if mistral {
                assert!(
                    id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{arch}: {id}"
                );
            }
            let follow = json!({"model": "tiny", "max_tokens": 4, "tools": tools, "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": id, "content": "sunny"}]});
            let (status, text) = post(&url, &follow).await;
            assert_eq!(status, 200, "{arch}: {text}");
            // Streamed: the call arrives as one tool_calls delta.
            let mut streamed = body.clone();
            streamed["stream"] = json!(true);
            let (status, text) = post(&url, &streamed).await;
            assert_eq!(status, 200);
            let deltas: Vec<Value> = text
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter(|e| *e != "[DONE]")
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let call_delta = deltas
                .iter()
                .find(|d| !d["choices"][0]["delta"]["tool_calls"].is_null())
                .unwrap();
            let c = &call_delta["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(
                (c["index"].clone(), c["function"]["name"].clone()),
                (json!(0), json!(name)),
                "{arch}"
            );
            assert!(deltas
                .iter()
                .any(|d| d["choices"][0]["finish_reason"] == "tool_calls"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_tool_choices_it_cannot_enforce_are_refused_clearly() {
    let (_dir, url) = start(Spec::tiny_qwen2()).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
            "json_schema.schema is missing",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format",
            "response_format type must be text, json_object or json_schema, got yaml",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a"}}], "tool_choice": {"type": "function", "function": {"name": "b"}}}),
            "tool_choice",
            "tool_choice names `b`, which is not in tools",
        ),
    ];
    for (extra, param, message) in cases {
        let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, text) = post(&url, &body).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (
                status,
                v["error"]["param"].as_str(),
                v["error"]["message"].as_str()
            ),
            (400, Some(param), Some(message))
        );
    }
    // A schema the engine rejects names the engine's reason.
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}});
    let (status, text) = post(&url, &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("the grammar engine refused it"), "{text}");
}
