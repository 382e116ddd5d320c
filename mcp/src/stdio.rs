//! An upstream MCP server spoken to over stdio: the gateway spawns the
//! command (killed when the upstream is dropped), sends newline-delimited
//! JSON-RPC on its stdin, and a reader task matches responses on stdout to
//! pending requests by id. The server's stderr goes to the logs. Every
//! request has a timeout; a dead server fails its pending requests at once.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Mutex};

use crate::jsonrpc::{self, Message};
use crate::progress::ProgressSinks;
use crate::McpError;

/// The protocol version Lattice asks stdio upstreams for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Longest line accepted from an upstream.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// How to start a stdio server.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Extra environment (secrets are injected here, never from the agent).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// What a server announced outside any call (on stdout, its legacy SSE
/// stream or its streamable-HTTP GET stream), until the hub asks.
#[derive(Debug, Default)]
pub struct Announced {
    tools: AtomicBool,
    prompts: AtomicBool,
    resources: AtomicBool,
    /// URIs of `notifications/resources/updated` not yet taken (bounded).
    updated: Mutex<Vec<String>>,
}

/// Most resource updates held between two takes; more are dropped (a
/// subscriber re-reads the resource anyway).
const MAX_UPDATES: usize = 1024;

impl Announced {
    /// Notes a list change or a resource update; false for other methods.
    pub async fn note(&self, method: &str, params: &Value) -> bool {
        let flag = match method {
            "notifications/tools/list_changed" => &self.tools,
            "notifications/prompts/list_changed" => &self.prompts,
            "notifications/resources/list_changed" => &self.resources,
            "notifications/resources/updated" => {
                self.note_updated(params).await;
                return true;
            }
            _ => return false,
        };
        flag.store(true, Ordering::Release);
        true
    }

    /// Whether the tool list changed since last asked.
    pub fn take_tools(&self) -> bool {
        self.tools.swap(false, Ordering::AcqRel)
    }

    /// (prompts, resources) changed since last asked.
    pub fn take(&self) -> (bool, bool) {
        (
            self.prompts.swap(false, Ordering::AcqRel),
            self.resources.swap(false, Ordering::AcqRel),
        )
    }

    /// Notes a `notifications/resources/updated`'s URI.
    async fn note_updated(&self, params: &Value) {
        if let Some(uri) = params.get("uri").and_then(Value::as_str) {
            let mut updated = self.updated.lock().await;
            if updated.len() < MAX_UPDATES && !updated.iter().any(|u| u == uri) {
                updated.push(uri.to_string());
            }
        }
    }

    /// The URIs updated since last asked.
    pub async fn take_updated(&self) -> Vec<String> {
        std::mem::take(&mut *self.updated.lock().await)
    }
}

/// A running stdio upstream.
pub struct StdioUpstream {
    name: String,
    timeout: Duration,
    child: Mutex<Child>,
    stdin: Arc<Mutex<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    announced: Arc<Announced>,
    progress: ProgressSinks,
    server_info: Value,
}

fn upstream_err(server: &str, message: impl Into<String>) -> McpError {
    McpError::Upstream {
        server: server.to_string(),
        message: message.into(),
    }
}

impl StdioUpstream {
    /// Spawns the server and completes the `initialize` handshake.
    pub async fn start(cfg: StdioConfig) -> Result<Self, McpError> {
        crate::tools::check_server_name(&cfg.name)?;
        let name = cfg.name.clone();
        let mut child = Command::new(&cfg.command)
            .args(&cfg.args)
            .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| upstream_err(&name, format!("cannot start `{}`: {e}", cfg.command)))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(upstream_err(&name, "no stdio pipes"));
        };
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(log_stderr(name.clone(), stderr));
        let progress = ProgressSinks::default();
        let announced: Arc<Announced> = Arc::default();
        let stdin = Arc::new(Mutex::new(stdin));
        tokio::spawn(read_stdout(
            name.clone(),
            stdout,
            stdin.clone(),
            pending.clone(),
            alive.clone(),
            announced.clone(),
            progress.clone(),
        ));
        let mut upstream = Self {
            name,
            timeout: cfg.timeout,
            child: Mutex::new(child),
            stdin,
            pending,
            next_id: AtomicU64::new(1),
            alive,
            announced,
            progress,
            server_info: Value::Null,
        };
        let init = upstream
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": crate::CLIENT_CAPABILITIES.clone(),
                    "clientInfo": {"name": "lattice", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
            .await?;
        upstream.server_info = init;
        upstream
            .notify("notifications/initialized", json!({}))
            .await?;
        if crate::wants_all_logs(&upstream.server_info) {
            let _ = upstream
                .request("logging/setLevel", crate::ALL_LOGS.clone())
                .await;
        }
        Ok(upstream)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `initialize` result (protocol version, capabilities, server info).
    pub fn server_info(&self) -> &Value {
        &self.server_info
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
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

    async fn write(&self, message: &Value) -> Result<(), McpError> {
        if !self.is_alive() {
            return Err(upstream_err(&self.name, "the server has exited"));
        }
        let mut line = message.to_string();
        line.push('\n');
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| upstream_err(&self.name, e.to_string()))?;
        stdin
            .flush()
            .await
            .map_err(|e| upstream_err(&self.name, e.to_string()))
    }

    pub async fn notify(&self, method: &str, params: Value) -> Result<(), McpError> {
        self.write(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await
    }

    /// Sends a request and waits (bounded) for its result.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, McpError> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        if let Err(e) = self
            .write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await
        {
            self.pending.lock().await.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(McpError::from_rpc(&self.name, &error)),
            Ok(Err(_)) => Err(upstream_err(
                &self.name,
                "the server exited before answering",
            )),
            Err(_) => {
                self.pending.lock().await.remove(&id);
                Err(McpError::Timeout {
                    server: self.name.clone(),
                    timeout_ms: self.timeout.as_millis() as u64,
                })
            }
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
            let (items, next) =
                crate::tools::read_page(&page).map_err(|e| upstream_err(&self.name, e))?;
            tools.extend(items);
            cursor = next;
            if cursor.is_none() {
                return Ok(tools);
            }
        }
        Err(upstream_err(&self.name, "tools/list pages never end"))
    }

    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, McpError> {
        self.progress
            .counted(self.request("tools/call", json!({"name": name, "arguments": arguments})))
            .await
    }

    /// Calls a tool with a progress token: the upstream's
    /// `notifications/progress` for it go to `sink` until the call ends. The
    /// token must be unique to this call (the gateway makes its own).
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

    /// Sends the answer to a request the server made.
    pub async fn respond(&self, response: &Value) -> Result<(), McpError> {
        self.write(response).await
    }

    /// Kills the server process.
    pub async fn kill(&self) {
        let _ = self.child.lock().await.kill().await;
        self.alive.store(false, Ordering::Release);
    }

    /// The server's process id, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.child.lock().await.id()
    }
}

async fn log_stderr(name: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(upstream = %name, "{}", line.chars().take(2000).collect::<String>());
    }
}

#[allow(clippy::too_many_arguments)] // the reader's share of the upstream's state
async fn read_stdout(
    name: String,
    stdout: tokio::process::ChildStdout,
    stdin: Arc<Mutex<ChildStdin>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    announced: Arc<Announced>,
    progress: ProgressSinks,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(n) if n > MAX_LINE => {
                tracing::error!(upstream = %name, "a line longer than {MAX_LINE} bytes; dropping the connection");
                break;
            }
            Ok(_) => {}
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match jsonrpc::parse(text, MAX_LINE) {
            Ok(Message::Response { id, outcome }) => {
                if let Some(id) = id.as_u64() {
                    if let Some(tx) = pending.lock().await.remove(&id) {
                        let _ = tx.send(outcome);
                    }
                }
            }
            Ok(Message::Notification { method, params }) => {
                if announced.note(&method, &params).await {
                } else if method == "notifications/progress" {
                    progress.deliver(params).await;
                } else if method == "notifications/message" && !progress.deliver_log(params).await {
                    tracing::debug!(upstream = %name, "a log message no single call can own; not relayed");
                }
            }
            Ok(Message::Request { id, method, params }) => {
                // Sampling, elicitation, roots: to the one call in flight,
                // whose client answers; otherwise no client can.
                if !progress.deliver_request(id.clone(), &method, params).await {
                    tracing::debug!(upstream = %name, method, "a server request no single call can own; refused");
                    let why = format!("no client can answer `{method}` now (it is only relayed during a tool call, alone in flight on this server)");
                    let mut line = crate::refuse_server_request(&id, &why).to_string();
                    line.push('\n');
                    let mut stdin = stdin.lock().await;
                    let _ = stdin.write_all(line.as_bytes()).await;
                    let _ = stdin.flush().await;
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "unparseable line from the server")
            }
        }
    }
    alive.store(false, Ordering::Release);
    // Fail whatever is still waiting: dropping the senders wakes them.
    pending.lock().await.clear();
    tracing::warn!(upstream = %name, "the server's output closed");
}
