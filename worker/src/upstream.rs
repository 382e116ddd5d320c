//! `lattice worker --upstream URL`: a Lattice worker in front of another
//! OpenAI-compatible server on the same machine — Apple's `mlx_lm.server`,
//! vLLM, llama.cpp's server — so that machine joins a cluster like any
//! worker (`cluster.rs`: its own TLS certificate, the join answer, the
//! mDNS announcement of the upstream's models) and is reached only with
//! the worker's own authentication. It relays `/v1/chat/completions`,
//! `/v1/completions` and `/v1/models` (bodies as they are, streams as they
//! come), and computes the `/metrics` such servers lack, under vLLM's
//! names: requests running and waiting (`--max-concurrency` bounds the
//! running ones), prompt and generation tokens (from each answer's
//! `usage`), finished requests, time to first token and end-to-end
//! latency — so a gateway routes to it by its load like to any worker.
//!
//! Must never: forward a request without the worker's key check, send the
//! caller's credentials upstream (only `--upstream-key-env`'s), or hold a
//! request body past `max_body_bytes`.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::api::{check_key, key_hash, ApiError};
use crate::cluster::{ClusterOptions, Joined};
use crate::error::{Result, WorkerError};
use crate::metrics::Metrics;

/// What `lattice worker --upstream` is told.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The upstream server's root (`http://127.0.0.1:8080`), without `/v1`.
    pub upstream: String,
    /// What runs there (`mlx`, `vllm`, `llamacpp`, `openai`): announced as
    /// the worker's device.
    pub device: String,
    pub listen: SocketAddr,
    pub api_key: Option<String>,
    /// Sent upstream as `Authorization: Bearer`.
    pub upstream_key: Option<String>,
    pub max_body_bytes: usize,
    /// Requests relayed at once; the rest wait (and count as waiting).
    pub max_concurrency: usize,
    /// How long to wait for the upstream to list its models at start.
    pub wait_for_upstream: Duration,
    pub cluster: Option<ClusterOptions>,
}

struct Relay {
    client: reqwest::Client,
    base: String,
    upstream_key: Option<String>,
    key_hashes: Vec<[u8; 32]>,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    max_body_bytes: usize,
}

/// A started relay; [`RunningRelay::serve`] serves.
pub struct RunningRelay {
    pub addr: SocketAddr,
    pub models: Vec<String>,
    pub fingerprint: Option<String>,
    relay: Arc<Relay>,
    listener: tokio::net::TcpListener,
    joined: Option<Joined>,
}

/// `request` with the upstream's key, if it has one.
fn keyed(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(k) => request.bearer_auth(k),
        None => request,
    }
}

fn bad(m: String) -> WorkerError {
    WorkerError::Unsupported(m)
}

/// The upstream's model ids (`GET /v1/models`), waiting for it to start.
async fn upstream_models(o: &UpstreamOptions, client: &reqwest::Client) -> Result<Vec<String>> {
    let url = format!("{}/v1/models", o.upstream);
    let deadline = Instant::now() + o.wait_for_upstream;
    loop {
        let request = keyed(
            client.get(&url).timeout(Duration::from_secs(5)),
            o.upstream_key.as_deref(),
        );
        let why = match request.send().await {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await.map_err(|e| {
                    bad(format!(
                        "{url} answered something other than a model list: {e}"
                    ))
                })?;
                let models: Vec<String> = body["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect();
                if models.is_empty() {
                    return Err(bad(format!("{url} lists no model")));
                }
                return Ok(models);
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(bad(format!(
                "the upstream did not list its models at {url} within {} ms: {why}",
                o.wait_for_upstream.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reaches the upstream, learns its models and binds the listener.
pub async fn start(o: UpstreamOptions) -> Result<RunningRelay> {
    let base = o.upstream.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(bad(format!("--upstream `{base}` is not an http(s) URL")));
    }
    if o.max_concurrency == 0 {
        return Err(bad("--max-concurrency must be at least 1".into()));
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| bad(format!("HTTP client: {e}")))?;
    let o = UpstreamOptions {
        upstream: base.clone(),
        ..o
    };
    let models = upstream_models(&o, &client).await?;
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .map_err(|e| bad(format!("listen on {}: {e}", o.listen)))?;
    let addr = listener.local_addr().map_err(|e| bad(e.to_string()))?;
    let mut key_hashes: Vec<[u8; 32]> = o.api_key.as_deref().map(key_hash).into_iter().collect();
    let joined = match &o.cluster {
        None => None,
        Some(c) => {
            let j = Joined::new(c, models.clone(), &o.device, o.max_concurrency as u32, addr)?;
            key_hashes.push(key_hash(&j.membership.api_key()));
            Some(j)
        }
    };
    let relay = Arc::new(Relay {
        client,
        base,
        upstream_key: o.upstream_key,
        key_hashes,
        metrics: Arc::new(Metrics::new(&models[0])),
        slots: Arc::new(Semaphore::new(o.max_concurrency)),
        max_body_bytes: o.max_body_bytes,
    });
    Ok(RunningRelay {
        addr,
        fingerprint: joined.as_ref().map(|j| j.identity.fingerprint.clone()),
        models,
        relay,
        listener,
        joined,
    })
}

impl RunningRelay {
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let limit = self.relay.max_body_bytes;
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self.relay);
        match self.joined {
            Some(j) => {
                let router = router.merge(crate::cluster::join_router(j.membership.clone()));
                j.serve(self.listener, router, shutdown).await
            }
            None => axum::serve(self.listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| bad(format!("serve: {e}"))),
        }
    }
}

async fn chat(s: State<Arc<Relay>>, headers: HeaderMap, body: Bytes) -> Response {
    relay(s, headers, body, "/v1/chat/completions").await
}

async fn completions(s: State<Arc<Relay>>, headers: HeaderMap, body: Bytes) -> Response {
    relay(s, headers, body, "/v1/completions").await
}

fn unavailable(message: String) -> Response {
    ApiError {
        status: 502,
        kind: "server_error",
        code: Some("upstream_unavailable"),
        ..ApiError::bad(message)
    }
    .into_response()
}

/// Counts a request as running while it lives (and its slot held).
struct Running {
    metrics: Arc<Metrics>,
    _slot: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
    first: Option<Instant>,
    reason: &'static str,
}

impl Running {
    fn first_byte(&mut self) {
        if self.first.is_none() {
            self.first = Some(Instant::now());
            let m = &self.metrics;
            m.ttft
                .get_or_create(m.model())
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    fn usage(&self, usage: &Value) {
        let m = &self.metrics;
        let count = |k: &str| usage[k].as_u64().unwrap_or(0);
        m.prompt_tokens
            .get_or_create(m.model())
            .inc_by(count("prompt_tokens"));
        m.generation_tokens
            .get_or_create(m.model())
            .inc_by(count("completion_tokens"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.running.get_or_create(m.model()).dec();
        m.e2e
            .get_or_create(m.model())
            .observe(self.started.elapsed().as_secs_f64());
        m.finished(self.reason);
    }
}

async fn relay(
    State(s): State<Arc<Relay>>,
    headers: HeaderMap,
    body: Bytes,
    path: &str,
) -> Response {
    if let Err(e) = check_key(&s.key_hashes, &headers) {
        return e.into_response();
    }
    let stream = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["stream"].as_bool())
        .unwrap_or(false);
    let m = s.metrics.clone();
    m.waiting.get_or_create(m.model()).inc();
    let slot = s.slots.clone().acquire_owned().await;
    m.waiting.get_or_create(m.model()).dec();
    let Ok(slot) = slot else {
        return unavailable("the worker is shutting down".into());
    };
    m.running.get_or_create(m.model()).inc();
    let mut running = Running {
        metrics: m.clone(),
        _slot: slot,
        started: Instant::now(),
        first: None,
        reason: "abort",
    };
    let request = keyed(
        s.client
            .post(format!("{}{path}", s.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body),
        s.upstream_key.as_deref(),
    );
    let mut upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => return unavailable(format!("the upstream did not answer: {e}")),
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/json"));
    if !stream || !status.is_success() {
        let mut whole = Vec::new();
        loop {
            match upstream.chunk().await {
                Ok(Some(c)) => {
                    running.first_byte();
                    whole.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => return unavailable(format!("the upstream broke off: {e}")),
            }
        }
        if status.is_success() {
            if let Ok(v) = serde_json::from_slice::<Value>(&whole) {
                running.usage(&v["usage"]);
                running.reason = finish_reason(&v).unwrap_or("stop");
            }
        } else {
            running.reason = "error";
        }
        return (status, [(header::CONTENT_TYPE, content_type)], whole).into_response();
    }
    // A stream: relayed chunk by chunk; usage and the finish reason read
    // from its events on the way. The agent leaving drops the receiver,
    // which ends the task and, with it, the upstream connection.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut pending = Vec::new();
        loop {
            match upstream.chunk().await {
                Ok(Some(c)) => {
                    running.first_byte();
                    pending.extend_from_slice(&c);
                    read_events(&mut pending, &mut running);
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn finish_reason(v: &Value) -> Option<&'static str> {
    match v["choices"][0]["finish_reason"].as_str()? {
        "length" => Some("length"),
        "tool_calls" => Some("tool_calls"),
        _ => Some("stop"),
    }
}

/// Reads the complete `data:` lines of `pending` (keeping a partial one).
fn read_events(pending: &mut Vec<u8>, running: &mut Running) {
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            continue;
        };
        if v["usage"].is_object() {
            running.usage(&v["usage"]);
        }
        if let Some(r) = finish_reason(&v) {
            running.reason = r;
        }
    }
}

async fn models(State(s): State<Arc<Relay>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&s.key_hashes, &headers) {
        return e.into_response();
    }
    let request = keyed(
        s.client.get(format!("{}/v1/models", s.base)),
        s.upstream_key.as_deref(),
    );
    match request.send().await {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match r.bytes().await {
                Ok(b) => (status, [(header::CONTENT_TYPE, "application/json")], b).into_response(),
                Err(e) => unavailable(format!("the upstream broke off: {e}")),
            }
        }
        Err(e) => unavailable(format!("the upstream did not answer: {e}")),
    }
}

/// Healthy while the upstream answers its own health check (`/health`,
/// else `/v1/models`).
async fn health(State(s): State<Arc<Relay>>) -> Response {
    for path in ["/health", "/v1/models"] {
        let request = keyed(
            s.client
                .get(format!("{}{path}", s.base))
                .timeout(Duration::from_secs(2)),
            s.upstream_key.as_deref(),
        );
        match request.send().await {
            Ok(r) if r.status().is_success() => return "ok".into_response(),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => continue,
            _ => break,
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the upstream is not healthy",
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<Relay>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn options(upstream: &str) -> UpstreamOptions {
        UpstreamOptions {
            upstream: upstream.into(),
            device: "mlx".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            api_key: None,
            upstream_key: None,
            max_body_bytes: 1 << 20,
            max_concurrency: 4,
            wait_for_upstream: Duration::from_millis(300),
            cluster: None,
        }
    }

    #[test]
    fn a_relay_that_cannot_start_says_why() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let table = [
            (options("ftp://127.0.0.1:1"), "is not an http(s) URL".to_string()),
            (
                UpstreamOptions {
                    max_concurrency: 0,
                    ..options("http://127.0.0.1:1")
                },
                "--max-concurrency must be at least 1".to_string(),
            ),
            (
                options(&format!("http://127.0.0.1:{port}/")),
                format!("the upstream did not list its models at http://127.0.0.1:{port}/v1/models within 300 ms"),
            ),
        ];
        for (o, says) in table {
            let e = rt.block_on(start(o)).err().expect("refused").to_string();
            assert!(e.contains(&says), "{e}");
        }
    }

    #[test]
    fn stream_events_give_usage_and_the_finish_reason() {
        let metrics = Arc::new(Metrics::new("m"));
        metrics.running.get_or_create(metrics.model()).inc();
        let mut running = Running {
            metrics: metrics.clone(),
            _slot: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            started: Instant::now(),
            first: None,
            reason: "abort",
        };
        let mut pending = b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DO".to_vec();
        read_events(&mut pending, &mut running);
        assert_eq!(pending, b"data: [DO");
        assert_eq!(running.reason, "length");
        drop(running);
        let text = metrics.render();
        for line in [
            "vllm:prompt_tokens_total{model_name=\"m\"} 7",
            "vllm:generation_tokens_total{model_name=\"m\"} 3",
            "vllm:num_requests_running{model_name=\"m\"} 0",
            "vllm:request_success_total{model_name=\"m\",finished_reason=\"length\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
