//! An upstream MCP server spoken to over streamable HTTP (protocol
//! 2025-03-26 and later): one endpoint, POST per message, answers as JSON or
//! as a server-sent-events stream, a session id assigned at `initialize`
//! and sent back on every request (re-initialized once if the server says
//! the session ended). Credentials for the upstream come from the gateway's
//! config, never from the agent. A background task holds the server's GET
//! stream open (reconnecting with backoff; a server answering 405 offers
//! none) for what it announces outside any call: list changes and resource
//! updates.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

use crate::jsonrpc::{self, Message};
use crate::stdio::PROTOCOL_VERSION;
use crate::McpError;

/// Largest upstream answer accepted.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// How to reach a streamable-HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub name: String,
    pub url: String,
    /// Injected on every request (e.g. the upstream's own API key).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Where one call's notifications go: the token the upstream was given (its
/// JSON text) and the sink, which gets whole notifications (`{"method",
/// "params"}`): this call's progress, and the log messages sent in the
/// answer to its POST.
pub struct Progress {
    pub token: String,
    pub sink: tokio::sync::mpsc::UnboundedSender<Value>,
}

impl Progress {
    /// Relays one SSE event if it is this call's progress or log message.
    fn relay(&self, event: &str) {
        let data = event_data(event);
        match jsonrpc::parse(data.as_bytes(), MAX_RESPONSE) {
            Ok(Message::Notification { method, params }) => {
                let mine = params.get("progressToken").map(Value::to_string).as_deref()
                    == Some(self.token.as_str());
                // A log message in the answer to this call's POST is this call's.
                if (method == "notifications/progress" && mine) || method == "notifications/message"
                {
                    let _ = self.sink.send(json!({"method": method, "params": params}));
                }
            }
            // So is a request (sampling, elicitation) sent in that answer.
            Ok(Message::Request { id, method, params }) => {
                let _ = self
                    .sink
                    .send(json!({"id": id, "method": method, "params": params}));
            }
            _ => {}
        }
    }
}

/// The data of one server-sent event (its `data:` lines joined).
fn event_data(event: &str) -> String {
    event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A connected streamable-HTTP upstream.
pub struct HttpUpstream {
    cfg: HttpConfig,
    client: reqwest::Client,
    session: Arc<Mutex<Option<String>>>,
    next_id: AtomicU64,
    server_info: Value,
    announced: Arc<crate::stdio::Announced>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            l.abort();
        }
    }
}

/// How long one GET stream is held before it is opened again.
const STREAM_SPAN: Duration = Duration::from_secs(300);

/// Holds the server's GET stream open and notes what it announces.
async fn listen(
    client: reqwest::Client,
    cfg: HttpConfig,
    session: Arc<Mutex<Option<String>>>,
    announced: Arc<crate::stdio::Announced>,
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
async fn note(announced: &crate::stdio::Announced, event: &str) {
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
fn find_response(body: &str, sse: bool, id: u64) -> Option<Result<Value, Value>> {
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

impl HttpUpstream {
    /// Connects and completes the `initialize` handshake.
    pub async fn start(cfg: HttpConfig) -> Result<Self, McpError> {
        crate::tools::check_server_name(&cfg.name)?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| err(&cfg, e.to_string()))?;
        let mut up = Self {
            cfg,
            client,
            session: Arc::new(Mutex::new(None)),
            next_id: AtomicU64::new(1),
            server_info: Value::Null,
            announced: Arc::default(),
            listener: None,
        };
        up.server_info = up.initialize().await?;
        if crate::wants_all_logs(&up.server_info) {
            let _ = up
                .request("logging/setLevel", crate::ALL_LOGS.clone())
                .await;
        }
        up.listener = Some(tokio::spawn(listen(
            up.client.clone(),
            up.cfg.clone(),
            up.session.clone(),
            up.announced.clone(),
        )));
        Ok(up)
    }

    async fn initialize(&self) -> Result<Value, McpError> {
        *self.session.lock().await = None;
        let result = self
            .send_plain(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": crate::CLIENT_CAPABILITIES.clone(),
                    "clientInfo": {"name": "lattice", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        self.post(
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            None,
        )
        .await?;
        Ok(result)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Whether the server said its tools changed since last asked.
    pub fn take_tools_changed(&self) -> bool {
        self.announced.take_tools()
    }

    /// (prompts, resources) lists the server said changed since last asked.
    pub fn take_catalog_changed(&self) -> (bool, bool) {
        self.announced.take()
    }

    /// URIs the server said were updated since last asked.
    pub async fn take_resource_updates(&self) -> Vec<String> {
        self.announced.take_updated().await
    }

    pub fn server_info(&self) -> &Value {
        &self.server_info
    }

    /// A failed send or read: a timeout, or any other transport error.
    fn transport_err(&self, e: reqwest::Error) -> McpError {
        if e.is_timeout() {
            McpError::Timeout {
                server: self.cfg.name.clone(),
                timeout_ms: self.cfg.timeout.as_millis() as u64,
            }
        } else {
            err(&self.cfg, e.to_string())
        }
    }

    /// POSTs one message; returns (status, is SSE, body). With `progress`,
    /// the `notifications/progress` events for that token in an SSE answer
    /// go to the sink as they arrive.
    async fn post(
        &self,
        message: &Value,
        progress: Option<&Progress>,
    ) -> Result<(u16, bool, String), McpError> {
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL_VERSION);
        if let Some(s) = self.session.lock().await.as_ref() {
            req = req.header("mcp-session-id", s);
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        let resp = req
            .body(message.to_string())
            .send()
            .await
            .map_err(|e| self.transport_err(e))?;
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            *self.session.lock().await = Some(s.to_string());
        }
        let status = resp.status().as_u16();
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_RESPONSE)
        {
            return Err(err(&self.cfg, "the answer is too large"));
        }
        let mut resp = resp;
        let mut body: Vec<u8> = Vec::new();
        let mut scanned = 0;
        loop {
            let chunk = resp.chunk().await.map_err(|e| self.transport_err(e))?;
            let Some(chunk) = chunk else { break };
            if sse {
                // Events end with a blank line, `\n\n` or `\r\n\r\n`.
                body.extend(chunk.iter().filter(|b| **b != b'\r'));
            } else {
                body.extend_from_slice(&chunk);
            }
            if body.len() > MAX_RESPONSE {
                return Err(err(&self.cfg, "the answer is too large"));
            }
            if let (true, Some(p)) = (sse, progress) {
                while let Some(end) = body[scanned..].windows(2).position(|w| w == b"\n\n") {
                    let event = String::from_utf8_lossy(&body[scanned..scanned + end]).to_string();
                    scanned += end + 2;
                    p.relay(&event);
                }
            }
        }
        Ok((status, sse, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn send(
        &self,
        method: &str,
        params: Value,
        progress: Option<&Progress>,
    ) -> Result<Value, McpError> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let (status, sse, body) = self
            .post(
                &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
                progress,
            )
            .await?;
        if status == 404 && method != "initialize" {
            return Err(err(&self.cfg, "session ended"));
        }
        if !(200..300).contains(&status) {
            return Err(err(
                &self.cfg,
                format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
            ));
        }
        match find_response(&body, sse, id) {
            Some(Ok(result)) => Ok(result),
            Some(Err(error)) => Err(McpError::from_rpc(&self.cfg.name, &error)),
            None => Err(err(&self.cfg, "no response to the request in the answer")),
        }
    }

    async fn send_plain(&self, method: &str, params: Value) -> Result<Value, McpError> {
        self.send(method, params, None).await
    }

    /// Calls a tool with a progress token; the upstream's progress
    /// notifications for it (in its SSE answer) go to `sink` as they come.
    pub async fn call_tool_with_progress(
        &self,
        name: &str,
        arguments: Value,
        token: Option<Value>,
        sink: tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> Result<Value, McpError> {
        let progress = Progress {
            // No token: no progress event is this call's.
            token: token.as_ref().map(Value::to_string).unwrap_or_default(),
            sink,
        };
        let params = crate::progress::call_params(name, arguments, token.as_ref());
        match self
            .send("tools/call", params.clone(), Some(&progress))
            .await
        {
            Err(McpError::Upstream { message, .. }) if message == "session ended" => {
                self.initialize().await?;
                self.send("tools/call", params, Some(&progress)).await
            }
            other => other,
        }
    }

    /// Sends a request; if the server ended the session, starts a new one
    /// and tries once more.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        match self.send(method, params.clone(), None).await {
            Err(McpError::Upstream { message, .. }) if message == "session ended" => {
                self.initialize().await?;
                self.send(method, params, None).await
            }
            other => other,
        }
    }

    /// Every tool, following `nextCursor` pages (at most 100 pages).
    pub async fn list_tools(&self) -> Result<Vec<Value>, McpError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..crate::tools::MAX_PAGES {
            let page = self
                .request("tools/list", crate::tools::list_params(cursor.as_deref()))
                .await?;
            let (items, next) = crate::tools::read_page(&page).map_err(|e| err(&self.cfg, e))?;
            tools.extend(items);
            cursor = next;
            if cursor.is_none() {
                return Ok(tools);
            }
        }
        Err(err(&self.cfg, "tools/list pages never end"))
    }

    /// Sends the answer to a request the server made.
    pub async fn respond(&self, response: &Value) -> Result<(), McpError> {
        self.post(response, None).await.map(|_| ())
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, McpError> {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::{find_response, note};
    use crate::stdio::Announced;

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
