//! `lattice-mock-vllm`: a small server that speaks vLLM's API surface, for
//! tests and benchmarks (vLLM itself needs a GPU). It answers
//! `/v1/chat/completions` (streaming and not, with `include_usage` honoured as
//! vLLM does), `/v1/completions`, `/v1/embeddings`, `/v1/models`, `/health`,
//! and `/metrics` with vLLM's metric names. Answers are deterministic: the
//! reply echoes the last user message, one token per word; usage counts
//! words. `system_fingerprint` carries the backend's `--name`, so a client
//! can tell which backend answered.
//!
//! `lattice-mock-vllm --name a --model m [--model m2] [--listen 127.0.0.1:0]
//!  [--first-token-ms N] [--token-ms N] [--api-key K]` prints
//! `mock-vllm listening on ADDR`.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

struct State {
    name: String,
    /// When set, API calls need `Authorization: Bearer <this>` (as vLLM's
    /// `--api-key`); `/health` and `/metrics` stay open.
    api_key: Option<String>,
    models: Vec<String>,
    first_token: Duration,
    per_token: Duration,
    running: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    requests: AtomicU64,
    cancelled: AtomicU64,
    next_id: AtomicU64,
}

/// Counts a request as running while it lives.
struct Running(Arc<State>);

impl Running {
    fn new(s: &Arc<State>) -> Self {
        s.running.fetch_add(1, Ordering::Relaxed);
        s.requests.fetch_add(1, Ordering::Relaxed);
        Self(s.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body fed from a channel: dropped by hyper when the client
/// goes away, which the generator sees as a failed send.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn error(status: u16, message: &str) -> Response<Body> {
    // vLLM's error shape.
    let body = json!({"object": "error", "message": message, "type": "BadRequestError", "param": null, "code": status});
    full(status, "application/json", body.to_string())
}

fn words(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(a) => a.iter().flat_map(words).collect(),
        Value::Object(o) => o.get("text").map(words).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Sleeps, except for zero: tokio rounds every sleep up to its 1 ms timer.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle(s: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if let Some(key) = &s.api_key {
        let presented = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if path.starts_with("/v1/") && presented != Some(key.as_str()) {
            return Ok(error(401, "invalid API key"));
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(error(400, "could not read the body")),
    };
    Ok(match (method.as_str(), path.as_str()) {
        ("GET", "/health") => full(200, "text/plain", ""),
        ("GET", "/v1/models") => {
            let data: Vec<Value> = s
                .models
                .iter()
                .map(
                    |m| json!({"id": m, "object": "model", "created": now_s(), "owned_by": "vllm"}),
                )
                .collect();
            full(
                200,
                "application/json",
                json!({"object": "list", "data": data}).to_string(),
            )
        }
        ("GET", "/metrics") => full(200, "text/plain; version=0.0.4", metrics(&s)),
        ("POST", "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            let req: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return Ok(error(400, &format!("invalid JSON: {e}"))),
            };
            let model = req["model"].as_str().unwrap_or("").to_string();
            if !s.models.contains(&model) {
                return Ok(error(404, &format!("The model `{model}` does not exist.")));
            }
            match path.as_str() {
                "/v1/embeddings" => embeddings(&s, &req, &model),
                p => completion(s, &req, model, p == "/v1/chat/completions").await,
            }
        }
        _ => error(404, &format!("no route {method} {path}")),
    })
}

fn embeddings(s: &Arc<State>, req: &Value, model: &str) -> Response<Body> {
    let _running = Running::new(s);
    let inputs: Vec<Value> = match &req["input"] {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let text = input.to_string();
            tokens += words(input).len().max(1) as u64;
            let mut seed: u64 = 1469598103934665603;
            let vector: Vec<f64> = (0..8)
                .map(|_| {
                    for b in text.bytes() {
                        seed = (seed ^ u64::from(b)).wrapping_mul(1099511628211);
                    }
                    (seed % 2000) as f64 / 1000.0 - 1.0
                })
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    s.prompt_tokens.fetch_add(tokens, Ordering::Relaxed);
    let body = json!({
        "object": "list", "model": model, "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    full(200, "application/json", body.to_string())
}

async fn completion(s: Arc<State>, req: &Value, model: String, chat: bool) -> Response<Body> {
    let (prompt_words, last) = if chat {
        let messages = req["messages"].as_array().cloned().unwrap_or_default();
        let all: usize = messages.iter().map(|m| words(&m["content"]).len()).sum();
        let last = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| words(&m["content"]))
            .unwrap_or_default();
        (all, last)
    } else {
        let w = words(&req["prompt"]);
        (w.len(), w)
    };
    let max = req["max_tokens"]
        .as_u64()
        .or(req["max_completion_tokens"].as_u64())
        .unwrap_or(64) as usize;
    let mut reply: Vec<String> = std::iter::once("echo:".to_string()).chain(last).collect();
    reply.truncate(max.max(1));
    let prompt_tokens = prompt_words.max(1) as u64;
    let completion_tokens = reply.len() as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!(
        "{}-{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        s.name,
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let created = now_s();
    let stream = req["stream"].as_bool().unwrap_or(false);
    if !stream {
        let _running = Running::new(&s);
        let wait = s.first_token + s.per_token * (reply.len().saturating_sub(1) as u32);
        pause(wait).await;
        s.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        s.generation_tokens
            .fetch_add(completion_tokens, Ordering::Relaxed);
        let text = reply.join(" ");
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "stop"})
        };
        let body = json!({
            "id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": s.name, "choices": [choice], "usage": usage,
        });
        return full(200, "application/json", body.to_string());
    }
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let running = Running::new(&s);
    tokio::spawn(async move {
        let _running = running;
        let event = |choices: Value, usage: Value| {
            let mut v = json!({"id": id, "object": chunk_object, "created": created, "model": model, "system_fingerprint": s.name, "choices": choices});
            if !usage.is_null() {
                v["usage"] = usage;
            }
            Bytes::from(format!("data: {v}\n\n"))
        };
        pause(s.first_token).await;
        for (i, word) in reply.iter().enumerate() {
            if i > 0 {
                pause(s.per_token).await;
            }
            let text = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            let choice = if chat {
                let mut delta = json!({"content": text});
                if i == 0 {
                    delta["role"] = json!("assistant");
                }
                json!([{"index": 0, "delta": delta, "finish_reason": null}])
            } else {
                json!([{"index": 0, "text": text, "finish_reason": null}])
            };
            if tx.send(event(choice, Value::Null)).await.is_err() {
                s.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let last = if chat {
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        } else {
            json!([{"index": 0, "text": "", "finish_reason": "stop"}])
        };
        let mut tail = vec![event(last, Value::Null)];
        if include_usage {
            tail.push(event(json!([]), usage));
        }
        tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
        for b in tail {
            if tx.send(b).await.is_err() {
                s.cancelled.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        s.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        s.generation_tokens
            .fetch_add(completion_tokens, Ordering::Relaxed);
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    if let Ok(v) = "text/event-stream".parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn metrics(s: &State) -> String {
    let running = s.running.load(Ordering::Relaxed);
    let mut out = String::new();
    for m in &s.models {
        let l = format!("{{model_name=\"{m}\"}}");
        out.push_str(&format!(
            "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{l} {running}.0\n\
             # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{l} 0.0\n\
             # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{l} {:.3}\n\
             # TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{l} {}.0\n\
             # TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{l} {}.0\n",
            (running as f64 / 100.0).min(1.0),
            s.prompt_tokens.load(Ordering::Relaxed),
            s.generation_tokens.load(Ordering::Relaxed),
        ));
    }
    out.push_str(&format!(
        "# TYPE mock_requests_total counter\nmock_requests_total {}\n\
         # TYPE mock_cancelled_total counter\nmock_cancelled_total {}\n",
        s.requests.load(Ordering::Relaxed),
        s.cancelled.load(Ordering::Relaxed)
    ));
    out
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_string();
    let mut name = "mock".to_string();
    let mut api_key = None;
    let mut models = Vec::new();
    let (mut first_ms, mut token_ms) = (0u64, 0u64);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--listen" => listen = value()?,
            "--name" => name = value()?,
            "--api-key" => api_key = Some(value()?),
            "--model" => models.push(value()?),
            "--first-token-ms" => first_ms = value()?.parse()?,
            "--token-ms" => token_ms = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    if models.is_empty() {
        models.push("mock-model".into());
    }
    let state = Arc::new(State {
        name,
        api_key,
        models,
        first_token: Duration::from_millis(first_ms),
        per_token: Duration::from_millis(token_ms),
        running: AtomicU64::new(0),
        prompt_tokens: AtomicU64::new(0),
        generation_tokens: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        cancelled: AtomicU64::new(0),
        next_id: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("mock-vllm listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let s = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(s.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
