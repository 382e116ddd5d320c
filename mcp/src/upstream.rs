//! One upstream MCP server, whichever transport reaches it.

use serde_json::Value;

use crate::http::HttpUpstream;
use crate::sse::SseUpstream;
use crate::stdio::StdioUpstream;
use crate::McpError;

pub enum Upstream {
    Stdio(Box<StdioUpstream>),
    Http(Box<HttpUpstream>),
    Sse(Box<SseUpstream>),
}

impl Upstream {
    pub fn name(&self) -> &str {
        match self {
            Upstream::Stdio(u) => u.name(),
            Upstream::Http(u) => u.name(),
            Upstream::Sse(u) => u.name(),
        }
    }

    /// A stdio server is alive while its process runs; an HTTP server is
    /// judged per request.
    pub fn is_alive(&self) -> bool {
        match self {
            Upstream::Stdio(u) => u.is_alive(),
            Upstream::Http(_) => true,
            Upstream::Sse(u) => u.is_alive(),
        }
    }

    pub async fn list_tools(&self) -> Result<Vec<Value>, McpError> {
        match self {
            Upstream::Stdio(u) => u.list_tools().await,
            Upstream::Http(u) => u.list_tools().await,
            Upstream::Sse(_) => self.list_all("tools/list", "tools").await,
        }
    }

    /// True once since the server said its tool list changed (on its
    /// stream: stdout, the legacy SSE stream, or the streamable-HTTP GET
    /// stream).
    pub fn take_tools_changed(&self) -> bool {
        match self {
            Upstream::Stdio(u) => u.take_tools_changed(),
            Upstream::Sse(u) => u.take_tools_changed(),
            Upstream::Http(u) => u.take_tools_changed(),
        }
    }

    /// (prompts, resources): the server said the list changed since last
    /// asked.
    /// URIs of resources the server said were updated since last asked.
    pub async fn take_resource_updates(&self) -> Vec<String> {
        match self {
            Upstream::Stdio(u) => u.take_resource_updates().await,
            Upstream::Sse(u) => u.take_resource_updates().await,
            Upstream::Http(u) => u.take_resource_updates().await,
        }
    }

    pub fn take_catalog_changed(&self) -> (bool, bool) {
        match self {
            Upstream::Stdio(u) => u.take_catalog_changed(),
            Upstream::Sse(u) => u.take_catalog_changed(),
            Upstream::Http(u) => u.take_catalog_changed(),
        }
    }

    /// Any request.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        match self {
            Upstream::Stdio(u) => u.request(method, params).await,
            Upstream::Http(u) => u.request(method, params).await,
            Upstream::Sse(u) => u.request(method, params).await,
        }
    }

    /// The capabilities the server declared at `initialize`.
    pub fn capabilities(&self) -> Value {
        let info = match self {
            Upstream::Stdio(u) => u.server_info(),
            Upstream::Http(u) => u.server_info(),
            Upstream::Sse(u) => u.server_info(),
        };
        info.get("capabilities").cloned().unwrap_or(Value::Null)
    }

    /// Every item of a paged list (`prompts/list` → `prompts`, ...),
    /// following `nextCursor` (at most `MAX_PAGES` pages).
    pub async fn list_all(&self, method: &str, key: &str) -> Result<Vec<Value>, McpError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..crate::tools::MAX_PAGES {
            let page = self
                .request(method, crate::tools::list_params(cursor.as_deref()))
                .await?;
            let (got, next) =
                crate::catalog::read_list(&page, key).map_err(|message| McpError::Upstream {
                    server: self.name().to_string(),
                    message,
                })?;
            items.extend(got);
            cursor = next;
            if cursor.is_none() {
                return Ok(items);
            }
        }
        Err(McpError::Upstream {
            server: self.name().to_string(),
            message: format!("{method} pages never end"),
        })
    }

    /// A tool call whose notifications go to `sink` as whole notifications:
    /// its progress (stdio and legacy SSE deliver them on the stream the
    /// gateway reads, streamable HTTP in the call's event-stream answer), and
    /// its log messages where they can be attributed to it (always on
    /// streamable HTTP; on a shared stream only while it is the one call in
    /// flight).
    pub async fn call_tool_with_progress(
        &self,
        name: &str,
        arguments: Value,
        token: Option<Value>,
        sink: tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> Result<Value, McpError> {
        match self {
            Upstream::Stdio(u) => {
                u.call_tool_with_progress(name, arguments, token, sink)
                    .await
            }
            Upstream::Http(u) => {
                u.call_tool_with_progress(name, arguments, token, sink)
                    .await
            }
            Upstream::Sse(u) => {
                u.call_tool_with_progress(name, arguments, token, sink)
                    .await
            }
        }
    }

    /// Sends the answer to a request the server made (a JSON-RPC response).
    pub async fn respond(&self, response: &Value) -> Result<(), McpError> {
        match self {
            Upstream::Stdio(u) => u.respond(response).await,
            Upstream::Http(u) => u.respond(response).await,
            Upstream::Sse(u) => u.respond(response).await,
        }
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, McpError> {
        match self {
            Upstream::Stdio(u) => u.call_tool(name, arguments).await,
            Upstream::Http(u) => u.call_tool(name, arguments).await,
            Upstream::Sse(u) => u.call_tool(name, arguments).await,
        }
    }
}
