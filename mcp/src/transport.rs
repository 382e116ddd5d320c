//! What every upstream transport offers the one client (`upstream`), and
//! the routing the two stream transports share.
//!
//! `Transport` moves JSON-RPC messages to one server and brings back the
//! answer to a request: over stdio (`stdio`), streamable HTTP (`http`) or
//! legacy HTTP+SSE (`sse`). The client above it does the protocol —
//! `initialize`, paging, calls, timeouts, a new session when one ended.
//!
//! `Inbox` is where a stream transport (stdio's stdout, the legacy SSE
//! stream: one stream for every message the server sends) routes what
//! arrives: answers to their pending requests by id, list changes and
//! resource updates to `Announced`, a call's progress, log messages and
//! server requests to that call's sink (`progress`). Streamable HTTP
//! answers each request on its own POST and needs none of it.
//!
//! Must never: wait without the client's bound, or hand one caller's
//! notification to another caller's sink.

use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Mutex};

use crate::jsonrpc::Message;
use crate::progress::ProgressSinks;
use crate::McpError;

/// A transport's future (transports are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A server's answer to a request: its `result`, or its `error` object.
pub type Answer = Result<Value, Value>;

/// Where one tool call's own messages go: progress under the token the
/// gateway gave the upstream (unique per call), and, where they can be
/// attributed to the call, log messages and server requests. The sink gets
/// whole messages: `{"method", "params"}`, or `{"id", "method", "params"}`
/// for a request, which whoever holds the sink must answer.
pub struct CallSink {
    pub token: Option<Value>,
    pub sink: tokio::sync::mpsc::UnboundedSender<Value>,
}

/// What a request is, for what the server says about it while it runs.
#[derive(Clone, Copy)]
pub enum Kind<'a> {
    /// Anything but a tool call: nothing is attributed to it.
    Plain,
    /// A tool call, counted in flight; with a sink, its messages go there.
    Tool(Option<&'a CallSink>),
}

/// One way to reach one upstream server.
pub trait Transport: Send + Sync {
    /// The protocol version the client asks this transport's server for.
    fn protocol_version(&self) -> &'static str;

    /// Sends a request (`message`, whose id is `id`) and resolves to the
    /// server's answer. Unbounded: the client bounds it, and a dropped
    /// future leaves nothing behind. A server that says the session ended
    /// is `McpError::SessionEnded`.
    fn request<'a>(
        &'a self,
        id: u64,
        message: Value,
        kind: Kind<'a>,
    ) -> BoxFuture<'a, Result<Answer, McpError>>;

    /// Sends a notification or the answer to a server's request.
    fn send(&self, message: Value) -> BoxFuture<'_, Result<(), McpError>>;

    /// What the server announced outside any call.
    fn announced(&self) -> &Announced;

    /// Whether the server can still be reached without reconnecting.
    fn is_alive(&self) -> bool;

    /// The handshake is done (streamable HTTP starts its GET stream here).
    fn connected(&self) {}

    /// Forgets the session the server ended (before a new `initialize`).
    fn end_session(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Stops it: a stdio server's process group is killed; a stream is
    /// closed.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// The server's process id, for a server the gateway runs.
    fn pid(&self) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async { None })
    }
}

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

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// The routing of one shared stream's messages (see the module header).
pub struct Inbox {
    name: String,
    /// What a request still waiting is told when the stream ends.
    gone: &'static str,
    pending: Pending,
    alive: AtomicBool,
    announced: Announced,
    progress: ProgressSinks,
}

/// Removes a pending request however its wait ends (a timeout drops it).
struct Ticket(Pending, u64);

impl Drop for Ticket {
    fn drop(&mut self) {
        let id = self.1;
        match self.0.try_lock() {
            Ok(mut pending) => {
                pending.remove(&id);
            }
            Err(_) => {
                let pending = self.0.clone();
                tokio::spawn(async move { pending.lock().await.remove(&id) });
            }
        }
    }
}

impl Inbox {
    /// `gone`: the error of a request whose answer can no longer come.
    pub fn new(name: &str, gone: &'static str) -> Self {
        Self {
            name: name.to_string(),
            gone,
            pending: Pending::default(),
            alive: AtomicBool::new(true),
            announced: Announced::default(),
            progress: ProgressSinks::default(),
        }
    }

    fn gone(&self) -> McpError {
        McpError::Upstream {
            server: self.name.clone(),
            message: self.gone.to_string(),
        }
    }

    pub fn announced(&self) -> &Announced {
        &self.announced
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Registers request `id`, sends it with `send`, and waits for its
    /// answer on the stream; a tool call is counted in flight and its sink
    /// registered for as long as it runs.
    pub async fn exchange(
        &self,
        id: u64,
        kind: Kind<'_>,
        send: impl Future<Output = Result<(), McpError>>,
    ) -> Result<Answer, McpError> {
        if !self.is_alive() {
            return Err(self.gone());
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        let _ticket = Ticket(self.pending.clone(), id);
        let wait = async {
            send.await?;
            rx.await.map_err(|_| self.gone())
        };
        match kind {
            Kind::Plain => wait.await,
            Kind::Tool(None) => self.progress.counted(wait).await,
            Kind::Tool(Some(call)) => {
                self.progress
                    .during(call.token.as_ref(), call.sink.clone(), wait)
                    .await
            }
        }
    }

    /// Routes one message the server sent. Returns the answer to send back
    /// for a server request no single call can own (the one relayed only
    /// during a tool call alone in flight on this server).
    pub async fn dispatch(&self, message: Message) -> Option<Value> {
        match message {
            Message::Response { id, outcome } => {
                let waiting = match id.as_u64() {
                    Some(i) => self.pending.lock().await.remove(&i),
                    None => None,
                };
                if let Some(tx) = waiting {
                    let _ = tx.send(outcome);
                }
            }
            Message::Notification { method, params } => {
                if self.announced.note(&method, &params).await {
                } else if method == "notifications/progress" {
                    self.progress.deliver(params).await;
                } else if method == "notifications/message"
                    && !self.progress.deliver_log(params).await
                {
                    tracing::debug!(upstream = %self.name, "a log message no single call can own; not relayed");
                }
            }
            Message::Request { id, method, params } => {
                if !self
                    .progress
                    .deliver_request(id.clone(), &method, params)
                    .await
                {
                    tracing::debug!(upstream = %self.name, method, "a server request no single call can own; refused");
                    let why = format!("no client can answer `{method}` now (it is only relayed during a tool call, alone in flight on this server)");
                    return Some(crate::refuse_server_request(&id, &why));
                }
            }
        }
        None
    }

    /// The stream ended: every request still waiting fails at once.
    pub async fn close(&self) {
        self.alive.store(false, Ordering::Release);
        self.pending.lock().await.clear(); // dropped senders wake the waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Message {
        crate::jsonrpc::parse(v.to_string().as_bytes(), 1 << 20).unwrap_or_else(|e| {
            unreachable!("{e}");
        })
    }

    #[tokio::test]
    async fn answers_reach_their_request_and_a_closed_stream_fails_the_rest() {
        let inbox = Inbox::new("s", "the stream ended");
        let answered = inbox.exchange(1, Kind::Plain, async { Ok(()) });
        let answer = async {
            tokio::task::yield_now().await;
            inbox
                .dispatch(parse(
                    json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": 1}}),
                ))
                .await
        };
        let (got, reply) = tokio::join!(answered, answer);
        assert_eq!(got.ok().and_then(Result::ok), Some(json!({"ok": 1})));
        assert!(reply.is_none());
        assert!(
            inbox.pending.lock().await.is_empty(),
            "the ticket removed it"
        );

        let waiting = inbox.exchange(2, Kind::Plain, async { Ok(()) });
        let end = async {
            tokio::task::yield_now().await;
            inbox.close().await;
        };
        let (got, ()) = tokio::join!(waiting, end);
        let err = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "upstream `s`: the stream ended");
        assert!(!inbox.is_alive());
    }

    #[tokio::test]
    async fn a_server_request_no_call_owns_is_refused_and_list_changes_noted() {
        let inbox = Inbox::new("s", "gone");
        let reply = inbox
            .dispatch(parse(
                json!({"jsonrpc": "2.0", "id": 9, "method": "sampling/createMessage", "params": {}}),
            ))
            .await;
        let reply = reply.unwrap_or_default();
        assert_eq!(reply["id"], 9);
        assert_eq!(reply["error"]["code"], -32601);
        assert!(inbox
            .dispatch(parse(
                json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            ))
            .await
            .is_none());
        assert!(inbox.announced().take_tools());
        assert!(!inbox.announced().take_tools(), "taken once");
    }

    #[tokio::test]
    async fn a_tool_call_alone_in_flight_gets_its_progress_logs_and_requests() {
        let inbox = Inbox::new("s", "gone");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let call = CallSink {
            token: Some(json!("t-1")),
            sink: tx,
        };
        let running = inbox.exchange(3, Kind::Tool(Some(&call)), async { Ok(()) });
        let server = async {
            tokio::task::yield_now().await;
            for m in [
                json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t-1", "progress": 1}}),
                json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "other", "progress": 1}}),
                json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}),
                json!({"jsonrpc": "2.0", "id": 5, "method": "elicitation/create", "params": {}}),
                json!({"jsonrpc": "2.0", "id": 3, "result": {}}),
            ] {
                assert!(inbox.dispatch(parse(m)).await.is_none());
            }
        };
        let (got, ()) = tokio::join!(running, server);
        assert!(got.is_ok());
        let mut methods = Vec::new();
        while let Ok(m) = rx.try_recv() {
            methods.push(m["method"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(
            methods,
            [
                "notifications/progress",
                "notifications/message",
                "elicitation/create"
            ]
        );
    }
}
