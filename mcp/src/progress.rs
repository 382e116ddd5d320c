//! Progress notifications of calls in flight: which call's sink a
//! `notifications/progress` goes to, by the progress token the gateway gave
//! the upstream (unique per call). Shared by the transports whose
//! notifications arrive on one stream the gateway reads (stdio, legacy SSE).

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Mutex;

/// The params of a `tools/call` that asks for progress under `token`.
pub fn call_params(name: &str, arguments: Value, token: &Value) -> Value {
    json!({"name": name, "arguments": arguments, "_meta": {"progressToken": token}})
}

/// Sinks of the calls in flight, by token (its JSON text).
#[derive(Clone, Default)]
pub struct ProgressSinks(Arc<Mutex<HashMap<String, UnboundedSender<Value>>>>);

impl ProgressSinks {
    /// Passes a `notifications/progress`'s params to its call's sink, if any.
    pub async fn deliver(&self, params: Value) {
        let Some(key) = params.get("progressToken").map(Value::to_string) else {
            return;
        };
        let sink = self.0.lock().await.get(&key).cloned();
        if let Some(sink) = sink {
            let _ = sink.send(params);
        }
    }

    /// Runs `call` with `sink` registered under `token`.
    pub async fn during<T>(
        &self,
        token: &Value,
        sink: UnboundedSender<Value>,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let key = token.to_string();
        self.0.lock().await.insert(key.clone(), sink);
        let result = call.await;
        self.0.lock().await.remove(&key);
        result
    }
}
