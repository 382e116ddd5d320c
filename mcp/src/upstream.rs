//! The one MCP client: an upstream server over any `Transport`. It does the
//! protocol the transports share — the `initialize` handshake (and a new
//! one when a streamable-HTTP server ended the session), asking a server
//! that offers logging for every message, paging through lists, tool calls
//! with their progress, the bound on every request — and the transports
//! only move messages.
//!
//! Must never: wait on a server without the configured timeout, or pass an
//! agent's credentials upstream (the transports add only configured ones).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::transport::{CallSink, Kind, Transport};
use crate::McpError;

/// A connected upstream server.
pub struct Upstream {
    name: String,
    timeout: Duration,
    transport: Box<dyn Transport>,
    next_id: AtomicU64,
    server_info: Value,
}

impl Upstream {
    /// Completes the `initialize` handshake over `transport`.
    pub async fn connect(
        name: &str,
        timeout: Duration,
        transport: Box<dyn Transport>,
    ) -> Result<Self, McpError> {
        let mut up = Self {
            name: name.to_string(),
            timeout,
            transport,
            next_id: AtomicU64::new(1),
            server_info: Value::Null,
        };
        match up.initialize().await {
            Ok(info) => up.server_info = info,
            Err(e) => {
                up.transport.close().await;
                return Err(e);
            }
        }
        up.transport.connected();
        if crate::wants_all_logs(&up.server_info) {
            let _ = up
                .request("logging/setLevel", crate::ALL_LOGS.clone())
                .await;
        }
        Ok(up)
    }

    async fn initialize(&self) -> Result<Value, McpError> {
        let params = json!({
            "protocolVersion": self.transport.protocol_version(),
            "capabilities": crate::CLIENT_CAPABILITIES.clone(),
            "clientInfo": {"name": "lattice", "version": env!("CARGO_PKG_VERSION")},
        });
        let result = self.once("initialize", &params, Kind::Plain).await?;
        self.transport
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(result)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `initialize` result (protocol version, capabilities, server info).
    pub fn server_info(&self) -> &Value {
        &self.server_info
    }

    /// The capabilities the server declared at `initialize`.
    pub fn capabilities(&self) -> Value {
        self.server_info
            .get("capabilities")
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// A stdio server is alive while its process runs, a legacy-SSE server
    /// while its stream is open; a streamable-HTTP server is judged per
    /// request.
    pub fn is_alive(&self) -> bool {
        self.transport.is_alive()
    }

    /// True once since the server said its tool list changed (on its
    /// stream: stdout, the legacy SSE stream, or the streamable-HTTP GET
    /// stream).
    pub fn take_tools_changed(&self) -> bool {
        self.transport.announced().take_tools()
    }

    /// (prompts, resources): the server said the list changed since last
    /// asked.
    pub fn take_catalog_changed(&self) -> (bool, bool) {
        self.transport.announced().take()
    }

    /// URIs of resources the server said were updated since last asked.
    pub async fn take_resource_updates(&self) -> Vec<String> {
        self.transport.announced().take_updated().await
    }

    /// One request, bounded by the timeout.
    async fn once(&self, method: &str, params: &Value, kind: Kind<'_>) -> Result<Value, McpError> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        match tokio::time::timeout(self.timeout, self.transport.request(id, message, kind)).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(McpError::from_rpc(&self.name, &error)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(McpError::Timeout {
                server: self.name.clone(),
                timeout_ms: self.timeout.as_millis() as u64,
            }),
        }
    }

    /// A request; if the server ended the session, a new one is started and
    /// the request tried once more.
    async fn exchange(
        &self,
        method: &str,
        params: Value,
        kind: Kind<'_>,
    ) -> Result<Value, McpError> {
        match self.once(method, &params, kind).await {
            Err(McpError::SessionEnded { .. }) => {
                self.transport.end_session().await;
                self.initialize().await?;
                self.once(method, &params, kind).await
            }
            other => other,
        }
    }

    /// Any request.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        self.exchange(method, params, Kind::Plain).await
    }

    /// Every item of a paged list (`tools/list` → `tools`, ...), following
    /// `nextCursor` (at most `MAX_PAGES` pages).
    pub async fn list_all(&self, method: &str, key: &str) -> Result<Vec<Value>, McpError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..crate::tools::MAX_PAGES {
            let page = self
                .request(method, crate::tools::list_params(cursor.as_deref()))
                .await?;
            let (got, next) =
                crate::catalog::read_list(&page, key).map_err(|message| self.err(message))?;
            items.extend(got);
            cursor = next;
            if cursor.is_none() {
                return Ok(items);
            }
        }
        Err(self.err(format!("{method} pages never end")))
    }

    fn err(&self, message: String) -> McpError {
        McpError::Upstream {
            server: self.name.clone(),
            message,
        }
    }

    /// Every tool.
    pub async fn list_tools(&self) -> Result<Vec<Value>, McpError> {
        self.list_all("tools/list", "tools").await
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, McpError> {
        let params = crate::progress::call_params(name, arguments, None);
        self.exchange("tools/call", params, Kind::Tool(None)).await
    }

    /// A tool call whose own messages go to `sink`: its progress under
    /// `token` (which must be unique to this call: the gateway makes its
    /// own), and its log messages and server requests where they can be
    /// attributed to it (always on streamable HTTP, which answers each call
    /// on its own stream; on a shared stream only while it is the one call
    /// in flight).
    pub async fn call_tool_with_progress(
        &self,
        name: &str,
        arguments: Value,
        token: Option<Value>,
        sink: tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> Result<Value, McpError> {
        let params = crate::progress::call_params(name, arguments, token.as_ref());
        let call = CallSink { token, sink };
        self.exchange("tools/call", params, Kind::Tool(Some(&call)))
            .await
    }

    /// Sends the answer to a request the server made (a JSON-RPC response).
    pub async fn respond(&self, response: &Value) -> Result<(), McpError> {
        self.transport.send(response.clone()).await
    }

    /// Stops the server: a stdio server's whole process group is killed, a
    /// stream closed.
    pub async fn kill(&self) {
        self.transport.close().await;
    }

    /// The server's process id, for a stdio server still running.
    pub async fn pid(&self) -> Option<u32> {
        self.transport.pid().await
    }
}
