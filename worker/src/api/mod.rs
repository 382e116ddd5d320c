//! The worker's OpenAI API on its own listener (axum): `/v1/chat/completions`
//! (the model's chat template, tools, streams with usage),
//! `/v1/completions`, `/v1/models`, `/health` and `/metrics`. Requests are
//! bounded in size, authenticated with a bearer key when one is
//! configured (the gateway injects its backend key), validated, and
//! answered with OpenAI-format errors; the engine does the rest.
//!
//! Must never: hold the engine on a slow client (events are buffered per
//! request and a client that leaves cancels its sequence), or answer with
//! anything but an OpenAI-format error body on failure.

pub mod openai;
pub mod reply;
pub mod tools;

use crate::engine::{Constraint, EngineHandle, Event, Request};
use crate::grammar::Grammars;
use crate::metrics::Metrics;
use crate::text::Text;
use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use openai::Body;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::mpsc::unbounded_channel;
use tools::ToolFormat;

/// An OpenAI-format error.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad(message: String) -> Self {
        Self {
            status: 400,
            message,
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }
    pub fn param(param: &str, message: String) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::bad(message)
        }
    }
    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

/// What the API serves.
pub struct Served {
    /// The name clients ask for, and its aliases.
    pub name: String,
    pub aliases: Vec<String>,
    pub engine: EngineHandle,
    pub text: Arc<Text>,
    pub metrics: Arc<Metrics>,
    /// SHA-256 of each bearer key accepted (the operator's, the cluster's);
    /// none: no key is required.
    pub key_hashes: Vec<[u8; 32]>,
    /// Cluster mode: the answer to a gateway's join challenge.
    pub membership: Option<Arc<crate::cluster::Membership>>,
    pub max_body_bytes: usize,
    pub created: u64,
    pub tool_format: ToolFormat,
    /// Tokens one request may hold (prompt and completion).
    pub max_context: usize,
    /// The grammar engine, or why it could not be built for this model.
    pub grammars: Result<Arc<Grammars>, String>,
}

pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn router(served: Arc<Served>) -> Router {
    let membership = served.membership.clone();
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError {
                status: 404,
                kind: "not_found_error",
                ..ApiError::bad("no such endpoint".into())
            }
        })
        .with_state(served);
    match membership {
        Some(m) => router.merge(crate::cluster::join_router(m)),
        None => router,
    }
}

fn authorize(s: &Served, headers: &HeaderMap) -> Result<(), ApiError> {
    check_key(&s.key_hashes, headers)
}

/// The bearer key against the hashes of the keys accepted (none: no key
/// is required).
pub fn check_key(key_hashes: &[[u8; 32]], headers: &HeaderMap) -> Result<(), ApiError> {
    if key_hashes.is_empty() {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(key_hash);
    // Hashes of equal length compared whole: no early exit on the key.
    if given.is_some_and(|g| {
        key_hashes.iter().any(|want| {
            g.iter()
                .zip(want.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
    }) {
        return Ok(());
    }
    Err(ApiError {
        status: 401,
        kind: "authentication_error",
        code: Some("invalid_api_key"),
        ..ApiError::bad("a valid API key is required (Authorization: Bearer ...)".into())
    })
}

async fn read(s: &Served, body: HttpBody) -> Result<Body, ApiError> {
    let bytes = axum::body::to_bytes(body, s.max_body_bytes)
        .await
        .map_err(|_| ApiError {
            status: 413,
            ..ApiError::bad(format!(
                "the body is over the limit of {} bytes",
                s.max_body_bytes
            ))
        })?;
    Body::parse(&bytes)
}

fn check_model(s: &Served, b: &Body) -> Result<(), ApiError> {
    match b.model.as_deref() {
        None => Err(ApiError::param("model", "model is required".into())),
        Some(m) if m == s.name || s.aliases.iter().any(|a| a == m) => Ok(()),
        Some(m) => Err(ApiError {
            status: 404,
            kind: "not_found_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            message: format!(
                "the model `{m}` does not exist (this worker serves `{}`)",
                s.name
            ),
        }),
    }
}

async fn models(State(s): State<Arc<Served>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    let entry = |id: &str| {
        json!({"id": id, "object": "model", "created": s.created, "owned_by": "lattice",
               "root": s.name, "max_model_len": s.max_context})
    };
    let mut data = vec![entry(&s.name)];
    data.extend(s.aliases.iter().map(|a| entry(a)));
    Ok(json_response(&json!({"object": "list", "data": data})))
}

async fn metrics(State(s): State<Arc<Served>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Steps every generation request passes: the key, the body, the model.
async fn accept(s: &Served, headers: &HeaderMap, body: HttpBody) -> Result<Body, ApiError> {
    authorize(s, headers)?;
    let b = read(s, body).await?;
    check_model(s, &b)?;
    Ok(b)
}

async fn chat(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<Response, ApiError> {
    let b = accept(&s, &headers, body).await?;
    let Some(messages) = b.messages.as_ref().filter(|m| !m.is_empty()) else {
        return Err(ApiError::param(
            "messages",
            "messages must be a non-empty list".into(),
        ));
    };
    if let Some(bad) = messages
        .iter()
        .position(|m| m.get("role").and_then(Value::as_str).is_none())
    {
        return Err(ApiError::param(
            "messages",
            format!("messages[{bad}] has no role"),
        ));
    }
    let use_tools = b.tools.as_ref().is_some_and(|t| !t.is_empty())
        && b.tool_choice.as_ref().and_then(Value::as_str) != Some("none");
    let Some(template) = s.text.chat.as_ref() else {
        return Err(ApiError::bad(
            "this model has no chat template: use /v1/completions".into(),
        ));
    };
    let tools = if use_tools {
        b.tools.as_ref().map(|t| Value::Array(t.clone()))
    } else {
        None
    };
    let prompt = template
        .render(&Value::Array(messages.clone()), tools.as_ref(), true)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let tokens = s
        .text
        .encode(&prompt)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let format = if use_tools {
        s.tool_format
    } else {
        ToolFormat::None
    };
    let constraint = match forced_tools(&b, use_tools)? {
        Some(tools) => Some(grammar(&s, Want::Tools(format, tools)).await?),
        None => structured(&s, &b).await?,
    };
    run(&s, &b, true, tokens, format, constraint).await
}

async fn completions(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<Response, ApiError> {
    let b = accept(&s, &headers, body).await?;
    let tokens = match &b.prompt {
        Some(Value::String(p)) => s.text.encode(p).map_err(|e| ApiError::bad(e.to_string()))?,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => s
            .text
            .encode(a[0].as_str().unwrap_or_default())
            .map_err(|e| ApiError::bad(e.to_string()))?,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
            let ids: Vec<u32> = a
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect();
            if let Some(bad) = ids.iter().find(|&&t| t as usize >= s.text.vocab_size()) {
                return Err(ApiError::param(
                    "prompt",
                    format!("{bad} is not a token id of this model"),
                ));
            }
            ids
        }
        _ => {
            return Err(ApiError::param(
                "prompt",
                "prompt must be a string or a list of token ids".into(),
            ))
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::param("prompt", "the prompt is empty".into()));
    }
    let constraint = structured(&s, &b).await?;
    run(&s, &b, false, tokens, ToolFormat::None, constraint).await
}

async fn run(
    s: &Served,
    b: &Body,
    chat: bool,
    tokens: Vec<u32>,
    tools: ToolFormat,
    constraint: Option<Box<dyn Constraint>>,
) -> Result<Response, ApiError> {
    let params = b.params(chat, &s.text.defaults, s.text.vocab_size().max(1))?;
    let ctx = s.max_context;
    let room = ctx.saturating_sub(tokens.len());
    if room == 0 || params.max_tokens.is_some_and(|m| m > room) {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            param: Some("messages".into()),
            ..ApiError::bad(format!(
                "this model's maximum context length is {ctx} tokens; the request has {} prompt tokens{}",
                tokens.len(),
                params.max_tokens.map(|m| format!(" and asks for {m} completion tokens")).unwrap_or_default()
            ))
        });
    }
    let (tx, mut rx) = unbounded_channel();
    let req = Request {
        prompt: tokens,
        max_tokens: params.max_tokens.unwrap_or(room),
        sampling: params.sampling.clone(),
        stop_ids: params.stop_ids.clone(),
        stop: params.stop.clone(),
        ignore_eos: params.ignore_eos,
        constraint,
        events: tx,
    };
    if !s.engine.submit(req) {
        return Err(ApiError {
            status: 503,
            kind: "server_error",
            ..ApiError::bad("the engine has stopped".into())
        });
    }
    let shape = reply::Shape {
        chat,
        id: format!(
            "{}-{}",
            if chat { "chatcmpl" } else { "cmpl" },
            uuid::Uuid::now_v7().simple()
        ),
        created: now(),
        model: b.model.clone().unwrap_or_default(),
        tools,
        logprobs: params.sampling.logprobs.is_some(),
        include_usage: params.include_usage,
        text: s.text.clone(),
    };
    if !params.stream {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            let done = matches!(e, Event::Done { .. });
            events.push(e);
            if done {
                break;
            }
        }
        return match shape.whole(&events) {
            Ok(v) => Ok(json_response(&v)),
            Err(e) => Err(ApiError {
                status: 500,
                kind: "server_error",
                ..ApiError::bad(e)
            }),
        };
    }
    let mut stream = reply::Stream::new(shape);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let (text, over) = stream.event(&e);
            if !text.is_empty() && out_tx.send(text).await.is_err() {
                // The client left: dropping `rx` cancels the sequence.
                return;
            }
            if over {
                return;
            }
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(out_rx)
        .map(|t| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(t)));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        HttpBody::from_stream(body),
    )
        .into_response())
}

/// The tools a call must be made to (`tool_choice` `required`, or one named
/// function), when the request forces a call.
fn forced_tools(b: &Body, use_tools: bool) -> Result<Option<Vec<Value>>, ApiError> {
    let tools = b.tools.clone().unwrap_or_default();
    match &b.tool_choice {
        None => Ok(None),
        Some(Value::String(c)) if c == "auto" || c == "none" => Ok(None),
        Some(Value::String(c)) if c == "required" && use_tools => Ok(Some(tools)),
        Some(v) if use_tools && v.get("type").and_then(Value::as_str) == Some("function") => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let named: Vec<Value> = tools
                .into_iter()
                .filter(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
                .collect();
            if named.is_empty() {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not in tools"),
                ));
            }
            Ok(Some(named))
        }
        Some(v) => Err(ApiError::param(
            "tool_choice",
            format!(
                "tool_choice must be `none`, `auto`, `required` or a function in tools, got {v}"
            ),
        )),
    }
}

/// The constraint `response_format` asks for, if any.
async fn structured(s: &Served, b: &Body) -> Result<Option<Box<dyn Constraint>>, ApiError> {
    let Some(rf) = &b.response_format else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => grammar(s, Want::Json(json!({"type": "object"})))
            .await
            .map(Some),
        Some("json_schema") => {
            let Some(schema) = rf.pointer("/json_schema/schema") else {
                return Err(ApiError::param(
                    "response_format",
                    "json_schema.schema is missing".into(),
                ));
            };
            grammar(s, Want::Json(schema.clone())).await.map(Some)
        }
        other => Err(ApiError::param(
            "response_format",
            format!(
                "response_format type must be text, json_object or json_schema, got {}",
                other.unwrap_or("nothing")
            ),
        )),
    }
}

enum Want {
    Json(Value),
    Tools(ToolFormat, Vec<Value>),
}

/// Compiles a constraint off the async runtime (a large schema takes a
/// while).
async fn grammar(s: &Served, want: Want) -> Result<Box<dyn Constraint>, ApiError> {
    let grammars = match &s.grammars {
        Ok(g) => g.clone(),
        Err(e) => {
            return Err(ApiError::bad(format!(
                "constrained decoding is unavailable for this model: {e}"
            )))
        }
    };
    if let Want::Tools(ToolFormat::None, _) = want {
        return Err(ApiError::param(
            "tool_choice",
            "this model's chat template has no tool-call format to force".into(),
        ));
    }
    let (param, result) = tokio::task::spawn_blocking(move || match want {
        Want::Json(schema) => ("response_format", grammars.json_schema(&schema)),
        Want::Tools(format, tools) => ("tool_choice", grammars.tool_call(format, &tools)),
    })
    .await
    .map_err(|e| ApiError {
        status: 500,
        kind: "server_error",
        ..ApiError::bad(e.to_string())
    })?;
    result.map_err(|e| ApiError::param(param, format!("the grammar engine refused it: {e}")))
}

fn json_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
