//! The streamable-HTTP transport (protocol 2025-03-26 and later): one
//! endpoint, POST per message, answers as JSON or as a server-sent-events
//! stream, a session id assigned at `initialize` and sent back on every
//! request (a 404 means the server ended the session: the client starts a
//! new one). Credentials for the upstream come from the gateway's config,
//! never from the agent. A background task holds the server's GET stream
//! open (reconnecting with backoff; a server answering 405 offers none) for
//! what it announces outside any call: list changes and resource updates.
//!
//! Hand-written rather than rmcp's streamable-HTTP client transport:
//! rmcp's transports carry its typed messages, and re-serializing an
//! upstream's answer through them drops what its types do not name
//! (measured in `tests/rmcp_fit.rs`) — a relaying gateway must pass the
//! server's answer as sent.
//!
//! The POSTs travel on lattice-inference-router's upstream connections
//! (hyper's HTTP/1.1 connection, pooled per server and driven by the task
//! that sends the message), not reqwest's pooled client, which runs each
//! connection on a task of its own: a message and its answer each crossed
//! between two tasks (before and after in `docs/benchmarks-log.md`). The
//! GET stream, held open for minutes, stays on reqwest.
//!
//! Must never: read an answer without a bound, send an agent's
//! credentials upstream, follow a redirect, or take a proxy from the
//! environment.

use bytes::Bytes;
use lattice_inference_router::upstream::{self as conns, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

use crate::jsonrpc::{self, Message};
use crate::sse_event::event_data;
use crate::stdio::PROTOCOL_VERSION;
use crate::transport::{Announced, Answer, BoxFuture, CallSink, Kind, Transport};
use crate::upstream::Upstream;
use crate::McpError;

/// Largest upstream answer accepted.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// How to reach a streamable-HTTP (or legacy SSE) server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub name: String,
    pub url: String,
    /// Injected on every request (e.g. the upstream's own API key).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Resolves (and checks) names: the gateway's egress guard.
    pub dns: Option<Dns>,
}

/// A name resolver for the upstream's HTTP client.
#[derive(Clone)]
pub struct Dns(pub Arc<dyn reqwest::dns::Resolve>);

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns(..)")
    }
}

/// The HTTP client of an upstream: no proxy from the environment and no
/// redirects (either could lead past the resolver's checks).
pub(crate) fn client(cfg: &HttpConfig) -> Result<reqwest::Client, McpError> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(Dns(dns)) = &cfg.dns {
        b = b.dns_resolver2(dns.clone());
    }
    b.build().map_err(|e| err(cfg, e.to_string()))
}

/// Relays one SSE event of a call's answer to its sink if it is this
/// call's progress (by its token's JSON text), a log message (one in the
/// answer to this call's POST is this call's) or a server request (so is a
/// request — sampling, elicitation — sent in that answer).
fn relay(call: &CallSink, token: &str, event: &str) {
    let data = event_data(event);
    match jsonrpc::parse(data.as_bytes(), MAX_RESPONSE) {
        Ok(Message::Notification { method, params }) => {
            let mine = params.get("progressToken").map(Value::to_string).as_deref() == Some(token);
            if (method == "notifications/progress" && mine) || method == "notifications/message" {
                let _ = call.sink.send(json!({"method": method, "params": params}));
            }
        }
        Ok(Message::Request { id, method, params }) => {
            let _ = call
                .sink
                .send(json!({"id": id, "method": method, "params": params}));
        }
        _ => {}
    }
}

/// A connected streamable-HTTP server.
pub struct HttpTransport {
    cfg: HttpConfig,
    /// The GET stream's client.
    client: reqwest::Client,
    /// The POSTs' connections.
    conns: Arc<conns::Upstream>,
    /// Sent with every POST: `Accept`, the protocol version, the
    /// configured headers (credentials: marked sensitive).
    headers: HeaderMap,
    session: Arc<Mutex<Option<String>>>,
    announced: Arc<Announced>,
    listener: arc_swap::ArcSwapOption<tokio::task::AbortHandle>,
}

impl Drop for HttpTransport {
    fn drop(&mut self) {
        self.stop_listening();
    }
}

/// How long one GET stream is held before it is opened again.
const STREAM_SPAN: Duration = Duration::from_secs(300);

/// Holds the server's GET stream open and notes what it announces.
async fn listen(
    client: reqwest::Client,
    cfg: HttpConfig,
    session: Arc<Mutex<Option<String>>>,
    announced: Arc<Announced>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut req = client
            .get(&cfg.url)
            .timeout(STREAM_SPAN)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", PROTOCOL_VERSION);
        if let Some(s) = session.lock().await.as_ref() {
            req = req.header("mcp-session-id", s);
        }
        for (k, v) in &cfg.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                tracing::debug!(upstream = %cfg.name, "the server offers no GET stream");
                return;
            }
            Ok(mut r) if r.status().is_success() => {
                backoff = Duration::from_millis(500);
                let mut buf: Vec<u8> = Vec::new();
                while let Ok(Some(chunk)) = r.chunk().await {
                    // Events end with a blank line, `\n\n` or `\r\n\r\n`.
                    buf.extend(chunk.iter().filter(|b| **b != b'\r'));
                    if buf.len() > MAX_RESPONSE {
                        break;
                    }
                    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                        let event: Vec<u8> = buf.drain(..end + 2).collect();
                        note(&announced, &String::from_utf8_lossy(&event)).await;
                    }
                }
            }
            Ok(r) => {
                tracing::debug!(upstream = %cfg.name, status = %r.status(), "the GET stream was refused")
            }
            Err(e) => tracing::debug!(upstream = %cfg.name, error = %e, "the GET stream failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Notes one event of the GET stream.
async fn note(announced: &Announced, event: &str) {
    let data = event_data(event);
    if let Ok(Message::Notification { method, params }) =
        jsonrpc::parse(data.as_bytes(), MAX_RESPONSE)
    {
        announced.note(&method, &params).await;
    }
}

fn err(cfg: &HttpConfig, message: impl Into<String>) -> McpError {
    McpError::Upstream {
        server: cfg.name.clone(),
        message: message.into(),
    }
}

/// The JSON-RPC response with `id` in a JSON or SSE body.
fn find_response(body: &str, sse: bool, id: u64) -> Option<Answer> {
    let candidates: Vec<String> = if sse {
        body.split("\n\n")
            .map(event_data)
            .filter(|d| !d.is_empty())
            .collect()
    } else {
        vec![body.to_string()]
    };
    candidates
        .iter()
        .find_map(|c| match jsonrpc::parse(c.as_bytes(), MAX_RESPONSE) {
            Ok(Message::Response { id: got, outcome }) if got.as_u64() == Some(id) => Some(outcome),
            _ => None,
        })
}

/// Connects, completes the `initialize` handshake, and starts listening on
/// the server's GET stream.
pub async fn start(cfg: HttpConfig) -> Result<Upstream, McpError> {
    crate::tools::check_server_name(&cfg.name)?;
    let (name, timeout) = (cfg.name.clone(), cfg.timeout);
    let transport = HttpTransport::new(cfg)?;
    Upstream::connect(&name, timeout, Box::new(transport)).await
}

/// The headers of every POST.
fn post_headers(cfg: &HttpConfig) -> Result<HeaderMap, McpError> {
    let mut h = HeaderMap::new();
    h.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    h.insert(
        "mcp-protocol-version",
        HeaderValue::from_static(PROTOCOL_VERSION),
    );
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| err(cfg, format!("header `{k}`: not a header name")))?;
        let mut value = HeaderValue::from_str(v)
            .map_err(|_| err(cfg, format!("header `{k}` has a value no header can carry")))?;
        value.set_sensitive(true);
        h.append(name, value);
    }
    Ok(h)
}

impl HttpTransport {
    pub fn new(cfg: HttpConfig) -> Result<Self, McpError> {
        let client = client(&cfg)?;
        let dns = cfg.dns.as_ref().map(|Dns(d)| d.clone());
        let conns = conns::Upstream::new(&cfg.url, None, dns).map_err(|e| err(&cfg, e))?;
        let headers = post_headers(&cfg)?;
        Ok(Self {
            cfg,
            client,
            conns: Arc::new(conns),
            headers,
            session: Arc::new(Mutex::new(None)),
            announced: Arc::default(),
            listener: arc_swap::ArcSwapOption::empty(),
        })
    }

    fn stop_listening(&self) {
        if let Some(l) = self.listener.swap(None) {
            l.abort();
        }
    }

    /// POSTs one message; returns (status, is SSE, body). With `call`, the
    /// events of an SSE answer that are that call's go to its sink as they
    /// arrive.
    async fn post(
        &self,
        message: &Value,
        call: Option<&CallSink>,
    ) -> Result<(u16, bool, String), McpError> {
        let mut headers = self.headers.clone();
        if let Some(s) = self.session.lock().await.as_ref() {
            let id = HeaderValue::from_str(s)
                .map_err(|_| err(&self.cfg, "the session id cannot be a header"))?;
            headers.insert("mcp-session-id", id);
        }
        let mut resp = self
            .conns
            .post(headers, Bytes::from(message.to_string()))
            .await
            .map_err(|e| err(&self.cfg, e))?;
        if let Some(s) = resp
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            *self.session.lock().await = Some(s.to_string());
        }
        let status = resp.status;
        let sse = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let length = resp
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > MAX_RESPONSE as u64) {
            return Err(err(&self.cfg, "the answer is too large"));
        }
        // No token: no progress event is this call's.
        let token = call
            .and_then(|c| c.token.as_ref())
            .map(Value::to_string)
            .unwrap_or_default();
        let mut body: Vec<u8> = Vec::new();
        let mut scanned = 0;
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(&self.cfg, e))? {
            if sse {
                // Events end with a blank line, `\n\n` or `\r\n\r\n`.
                body.extend(chunk.iter().filter(|b| **b != b'\r'));
            } else {
                body.extend_from_slice(&chunk);
            }
            if body.len() > MAX_RESPONSE {
                return Err(err(&self.cfg, "the answer is too large"));
            }
            if let (true, Some(c)) = (sse, call) {
                while let Some(end) = body[scanned..].windows(2).position(|w| w == b"\n\n") {
                    let event = String::from_utf8_lossy(&body[scanned..scanned + end]).to_string();
                    scanned += end + 2;
                    relay(c, &token, &event);
                }
            }
        }
        Ok((status, sse, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A status other than 2xx is an error showing the body's start.
    fn success(&self, status: u16, body: &str) -> Result<(), McpError> {
        if (200..300).contains(&status) {
            return Ok(());
        }
        let start: String = body.chars().take(200).collect();
        Err(err(&self.cfg, format!("HTTP {status}: {start}")))
    }

    async fn exchange(
        &self,
        id: u64,
        message: &Value,
        call: Option<&CallSink>,
    ) -> Result<Answer, McpError> {
        let (status, sse, body) = self.post(message, call).await?;
        if status == 404 && message["method"] != "initialize" {
            return Err(McpError::SessionEnded {
                server: self.cfg.name.clone(),
            });
        }
        self.success(status, &body)?;
        find_response(&body, sse, id)
            .ok_or_else(|| err(&self.cfg, "no response to the request in the answer"))
    }
}

impl Transport for HttpTransport {
    fn protocol_version(&self) -> &'static str {
        PROTOCOL_VERSION
    }

    fn request<'a>(
        &'a self,
        id: u64,
        message: Value,
        kind: Kind<'a>,
    ) -> BoxFuture<'a, Result<Answer, McpError>> {
        let call = match kind {
            Kind::Tool(call) => call,
            Kind::Plain => None,
        };
        Box::pin(async move { self.exchange(id, &message, call).await })
    }

    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), McpError>> {
        Box::pin(async move {
            let (status, _, body) = self.post(&message, None).await?;
            self.success(status, &body)
        })
    }

    fn announced(&self) -> &Announced {
        &self.announced
    }

    /// Judged per request.
    fn is_alive(&self) -> bool {
        true
    }

    /// The session exists: hold the server's GET stream open from now on.
    fn connected(&self) {
        let task = tokio::spawn(listen(
            self.client.clone(),
            self.cfg.clone(),
            self.session.clone(),
            self.announced.clone(),
        ));
        if let Some(old) = self.listener.swap(Some(Arc::new(task.abort_handle()))) {
            old.abort();
        }
    }

    fn end_session(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            *self.session.lock().await = None;
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.stop_listening() })
    }
}

#[cfg(test)]
mod tests {
    use super::{find_response, note, post_headers, HttpConfig};
    use crate::transport::Announced;
    use std::time::Duration;

    fn config(headers: &[(&str, &str)]) -> HttpConfig {
        HttpConfig {
            name: "s".into(),
            url: "http://127.0.0.1:9/mcp".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout: Duration::from_secs(1),
            dns: None,
        }
    }

    /// Every POST's headers: the configured ones marked sensitive (no
    /// debug print shows them), and a header the config cannot send named.
    #[test]
    fn the_configured_headers_go_with_every_post_as_credentials() {
        let h = post_headers(&config(&[("x-api-key", "sk-upstream")])).unwrap();
        assert_eq!(h["accept"], "application/json, text/event-stream");
        assert_eq!(h["mcp-protocol-version"], crate::stdio::PROTOCOL_VERSION);
        assert_eq!(h["x-api-key"], "sk-upstream");
        assert!(h["x-api-key"].is_sensitive());
        assert!(!format!("{h:?}").contains("sk-upstream"));
        let table = [
            (
                ("bad name", "v"),
                "upstream `s`: header `bad name`: not a header name",
            ),
            (
                ("x-key", "a\nb"),
                "upstream `s`: header `x-key` has a value no header can carry",
            ),
        ];
        for ((k, v), want) in table {
            let e = post_headers(&config(&[(k, v)])).unwrap_err();
            assert_eq!(e.to_string(), want, "{k}");
        }
    }

    #[tokio::test]
    async fn the_get_stream_notes_list_changes_and_updates() {
        let a = Announced::default();
        note(&a, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}").await;
        note(&a, "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/resources/updated\",\"params\":{\"uri\":\"x://1\"}}").await;
        note(
            &a,
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/prompts/list_changed\"}",
        )
        .await;
        note(&a, ": a comment").await;
        assert!(a.take_tools());
        assert_eq!(a.take(), (true, false));
        assert_eq!(a.take_updated().await, vec!["x://1".to_string()]);
    }

    #[test]
    fn finds_the_response_in_json_and_sse_bodies() {
        let json = r#"{"jsonrpc":"2.0","id":3,"result":{"ok":true}}"#;
        assert_eq!(find_response(json, false, 3).unwrap().unwrap()["ok"], true);
        assert!(find_response(json, false, 4).is_none());
        let sse = "event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":-1,\"message\":\"x\"}}\n\n";
        assert!(find_response(sse, true, 7).unwrap().is_err());
    }
}
