//! An upstream MCP server spoken to over the legacy HTTP+SSE transport
//! (protocol 2024-11-05): a long-lived `GET` stream whose first `endpoint`
//! event names the URL to `POST` messages to; answers come back as `message`
//! events on the stream and are matched to requests by id. The stream's end
//! marks the upstream dead (the gateway's supervisor reconnects). The POST
//! URL must have the configured URL's origin: a server cannot send the
//! gateway's requests (and injected credentials) elsewhere.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Mutex};

use crate::http::{HttpConfig, MAX_RESPONSE};
use crate::jsonrpc::{self, Message};
use crate::McpError;

/// The protocol version of the SSE transport's era.
pub const SSE_PROTOCOL_VERSION: &str = "2024-11-05";

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// A connected legacy-SSE upstream.
pub struct SseUpstream {
    cfg: HttpConfig,
    client: reqwest::Client,
    endpoint: String,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    progress: crate::progress::ProgressSinks,
    announced: Arc<crate::stdio::Announced>,
    server_info: Value,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SseUpstream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn err(cfg: &HttpConfig, message: impl Into<String>) -> McpError {
    McpError::Upstream {
        server: cfg.name.clone(),
        message: message.into(),
    }
}

/// (event name, data) of one server-sent event.
fn parse_event(text: &str) -> (String, String) {
    let mut name = String::from("message");
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name, data.join("\n"))
}

fn next_event(buf: &mut Vec<u8>) -> Option<String> {
    let (at, sep) = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, 2))
        .or_else(|| {
            buf.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4))
        })?;
    let event: Vec<u8> = buf.drain(..at + sep).collect();
    Some(String::from_utf8_lossy(&event[..at]).replace("\r\n", "\n"))
}

/// Same scheme, host and port.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[allow(clippy::too_many_arguments)] // the reader's share of the upstream's state
async fn read_stream(
    mut response: reqwest::Response,
    pending: Pending,
    progress: crate::progress::ProgressSinks,
    alive: Arc<AtomicBool>,
    announced: Arc<crate::stdio::Announced>,
    mut endpoint: Option<oneshot::Sender<String>>,
    name: String,
) {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_RESPONSE {
            tracing::error!(upstream = %name, "SSE event too large; dropping the stream");
            break;
        }
        while let Some(event) = next_event(&mut buf) {
            let (kind, data) = parse_event(&event);
            if kind == "endpoint" {
                if let Some(tx) = endpoint.take() {
                    let _ = tx.send(data);
                }
                continue;
            }
            match jsonrpc::parse(data.as_bytes(), MAX_RESPONSE) {
                Ok(Message::Response { id, outcome }) => {
                    if let Some(i) = id.as_u64() {
                        if let Some(tx) = pending.lock().await.remove(&i) {
                            let _ = tx.send(outcome);
                        }
                    }
                }
                Ok(Message::Notification { method, params })
                    if method == "notifications/progress" =>
                {
                    progress.deliver(params).await;
                }
                Ok(Message::Notification { method, params })
                    if method == "notifications/message" =>
                {
                    let delivered = progress.deliver_log(params).await;
                    if !delivered {
                        tracing::debug!(upstream = %name, "a log message no single call can own; not relayed");
                    }
                }
                Ok(Message::Request { id, method, params }) => {
                    // Answered by the call's client through `respond`; one
                    // no single call can own waits for the server's timeout.
                    let delivered = progress.deliver_request(id, &method, params).await;
                    if !delivered {
                        tracing::debug!(upstream = %name, method, "a server request no single call can own; not relayed");
                    }
                }
                Ok(Message::Notification { method, params }) => {
                    announced.note(&method, &params).await;
                }
                _ => {}
            }
        }
    }
    alive.store(false, Ordering::Release);
    pending.lock().await.clear(); // dropped senders fail the waiting requests
    tracing::warn!(upstream = %name, "SSE stream ended");
}

impl SseUpstream {
    /// Opens the stream, learns the POST endpoint, and initializes.
    pub async fn start(cfg: HttpConfig) -> Result<Self, McpError> {
        crate::tools::check_server_name(&cfg.name)?;
        let base = reqwest::Url::parse(&cfg.url).map_err(|e| err(&cfg, e.to_string()))?;
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| err(&cfg, e.to_string()))?;
        let mut get = client
            .get(base.clone())
            .header("accept", "text/event-stream");
        for (k, v) in &cfg.headers {
            get = get.header(k.as_str(), v.as_str());
        }
        let response = match tokio::time::timeout(cfg.timeout, get.send()).await {
            Err(_) => return Err(err(&cfg, "the SSE stream did not open in time")),
            Ok(Err(e)) => return Err(err(&cfg, e.to_string())),
            Ok(Ok(r)) if !r.status().is_success() => {
                return Err(err(&cfg, format!("the SSE stream answered {}", r.status())))
            }
            Ok(Ok(r)) => r,
        };
        let pending: Pending = Arc::default();
        let progress = crate::progress::ProgressSinks::default();
        let alive = Arc::new(AtomicBool::new(true));
        let announced: Arc<crate::stdio::Announced> = Arc::default();
        let (tx, rx) = oneshot::channel();
        let reader = tokio::spawn(read_stream(
            response,
            pending.clone(),
            progress.clone(),
            alive.clone(),
            announced.clone(),
            Some(tx),
            cfg.name.clone(),
        ));
        let endpoint = match tokio::time::timeout(cfg.timeout, rx).await {
            Ok(Ok(e)) => e,
            _ => {
                reader.abort();
                return Err(err(&cfg, "no `endpoint` event on the SSE stream"));
            }
        };
        let endpoint = base
            .join(endpoint.trim())
            .map_err(|e| err(&cfg, e.to_string()))?;
        if !same_origin(&base, &endpoint) {
            reader.abort();
            return Err(err(
                &cfg,
                format!("the endpoint {endpoint} is not on the configured origin"),
            ));
        }
        let mut up = Self {
            cfg,
            client,
            endpoint: endpoint.to_string(),
            pending,
            next_id: AtomicU64::new(1),
            alive,
            progress,
            announced,
            server_info: Value::Null,
            reader,
        };
        up.server_info = up
            .request(
                "initialize",
                json!({
                    "protocolVersion": SSE_PROTOCOL_VERSION,
                    "capabilities": crate::CLIENT_CAPABILITIES.clone(),
                    "clientInfo": {"name": "lattice", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        up.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        if crate::wants_all_logs(&up.server_info) {
            let _ = up
                .request("logging/setLevel", crate::ALL_LOGS.clone())
                .await;
        }
        Ok(up)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The `initialize` result.
    pub fn server_info(&self) -> &Value {
        &self.server_info
    }

    /// True once since the server said its tool list changed.
    pub fn take_tools_changed(&self) -> bool {
        self.announced.take_tools()
    }

    /// (prompts, resources) changed since last asked.
    /// URIs the server said were updated since last asked.
    pub async fn take_resource_updates(&self) -> Vec<String> {
        self.announced.take_updated().await
    }

    pub fn take_catalog_changed(&self) -> (bool, bool) {
        self.announced.take()
    }

    /// Alive while its stream is open.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    async fn post(&self, message: &Value) -> Result<(), McpError> {
        let mut req = self
            .client
            .post(&self.endpoint)
            .timeout(self.cfg.timeout)
            .header("content-type", "application/json")
            .body(message.to_string());
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let r = req
            .send()
            .await
            .map_err(|e| err(&self.cfg, e.to_string()))?;
        if !r.status().is_success() {
            return Err(err(&self.cfg, format!("POST answered {}", r.status())));
        }
        Ok(())
    }

    /// Sends the answer to a request the server made.
    pub async fn respond(&self, response: &Value) -> Result<(), McpError> {
        self.post(response).await
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, McpError> {
        self.progress
            .counted(self.request("tools/call", json!({"name": name, "arguments": arguments})))
            .await
    }

    /// Calls a tool with a progress token; the progress notifications for it
    /// that arrive on the stream go to `sink` until the call ends.
    pub async fn call_tool_with_progress(
        &self,
        name: &str,
        arguments: Value,
        token: Option<Value>,
        sink: tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> Result<Value, McpError> {
        let params = crate::progress::call_params(name, arguments, token.as_ref());
        self.progress
            .during(token.as_ref(), sink, self.request("tools/call", params))
            .await
    }

    /// Sends a request and waits (bounded) for its answer on the stream.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = self.post(&message).await {
            self.pending.lock().await.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.cfg.timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(McpError::from_rpc(&self.cfg.name, &error)),
            Ok(Err(_)) => Err(err(&self.cfg, "the SSE stream ended before the answer")),
            Err(_) => {
                self.pending.lock().await.remove(&id);
                Err(McpError::Timeout {
                    server: self.cfg.name.clone(),
                    timeout_ms: self.cfg.timeout.as_millis() as u64,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_parsed() {
        let mut buf =
            b"event: endpoint\ndata: /message?sessionId=1\n\ndata: {\"a\":1}\r\n\r\npartial"
                .to_vec();
        let first = next_event(&mut buf).unwrap();
        assert_eq!(
            parse_event(&first),
            ("endpoint".into(), "/message?sessionId=1".into())
        );
        let second = next_event(&mut buf).unwrap();
        assert_eq!(parse_event(&second), ("message".into(), "{\"a\":1}".into()));
        assert!(next_event(&mut buf).is_none());
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn the_endpoint_must_stay_on_the_configured_origin() {
        let base = reqwest::Url::parse("http://127.0.0.1:3001/sse").unwrap();
        assert!(same_origin(&base, &base.join("/message?s=1").unwrap()));
        assert!(!same_origin(
            &base,
            &base.join("http://169.254.169.254/latest").unwrap()
        ));
        assert!(!same_origin(
            &base,
            &base.join("http://127.0.0.1:3002/message").unwrap()
        ));
    }
}
