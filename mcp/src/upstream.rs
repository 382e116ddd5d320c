//! One upstream MCP server, whichever transport reaches it.

use serde_json::Value;

use crate::http::HttpUpstream;
use crate::stdio::StdioUpstream;
use crate::McpError;

pub enum Upstream {
    Stdio(Box<StdioUpstream>),
    Http(Box<HttpUpstream>),
}

impl Upstream {
    pub fn name(&self) -> &str {
        match self {
            Upstream::Stdio(u) => u.name(),
            Upstream::Http(u) => u.name(),
        }
    }

    /// A stdio server is alive while its process runs; an HTTP server is
    /// judged per request.
    pub fn is_alive(&self) -> bool {
        match self {
            Upstream::Stdio(u) => u.is_alive(),
            Upstream::Http(_) => true,
        }
    }

    pub async fn list_tools(&self) -> Result<Vec<Value>, McpError> {
        match self {
            Upstream::Stdio(u) => u.list_tools().await,
            Upstream::Http(u) => u.list_tools().await,
        }
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, McpError> {
        match self {
            Upstream::Stdio(u) => u.call_tool(name, arguments).await,
            Upstream::Http(u) => u.call_tool(name, arguments).await,
        }
    }
}
