//! Notifications of calls in flight on the transports whose notifications
//! arrive on one shared stream (stdio, legacy SSE): which call's sink a
//! `notifications/progress` goes to, by the progress token the gateway gave
//! the upstream (unique per call), and when a `notifications/message` (a log
//! message, which names no call) can be attributed at all.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Mutex;

/// The params of a `tools/call`, asking for progress under `token` if any.
pub fn call_params(name: &str, arguments: Value, token: Option<&Value>) -> Value {
    match token {
        Some(t) => json!({"name": name, "arguments": arguments, "_meta": {"progressToken": t}}),
        None => json!({"name": name, "arguments": arguments}),
    }
}

/// Sinks of the calls in flight, by token (its JSON text), and how many
/// tool calls are in flight on the upstream in all.
#[derive(Clone, Default)]
pub struct ProgressSinks {
    sinks: Arc<Mutex<HashMap<String, UnboundedSender<Value>>>>,
    calls: Arc<AtomicUsize>,
    /// Keys of sinks of calls that asked for no progress.
    quiet: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts a tool call in flight for as long as it lives (even if its
/// future is dropped).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(calls: &Arc<AtomicUsize>) -> Self {
        calls.fetch_add(1, Ordering::AcqRel);
        Self(calls.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ProgressSinks {
    /// Passes a `notifications/progress` to its call's sink, if any (the
    /// sink gets the whole notification: `{"method", "params"}`).
    pub async fn deliver(&self, params: Value) {
        let Some(key) = params.get("progressToken").map(Value::to_string) else {
            return;
        };
        let sink = self.sinks.lock().await.get(&key).cloned();
        if let Some(sink) = sink {
            let _ = sink.send(json!({"method": "notifications/progress", "params": params}));
        }
    }

    /// Passes a `notifications/message` (a log message) to the one call it
    /// can belong to: only when exactly one tool call is in flight on this
    /// upstream and it has a sink. Log messages carry no request id on a
    /// shared stream, so with calls of several callers in flight a message
    /// could be anyone's: it is dropped rather than shown to the wrong
    /// caller. Returns whether it was delivered.
    pub async fn deliver_log(&self, params: Value) -> bool {
        if self.calls.load(Ordering::Acquire) != 1 {
            return false;
        }
        let sinks = self.sinks.lock().await;
        match (sinks.len(), sinks.values().next()) {
            (1, Some(sink)) => sink
                .send(json!({"method": "notifications/message", "params": params}))
                .is_ok(),
            _ => false,
        }
    }

    /// Passes a request the server sent (sampling, elicitation, roots) to the
    /// one call it can belong to, by the rule of `deliver_log`; the sink gets
    /// `{"id", "method", "params"}`, and whoever holds it must answer the
    /// server. Returns whether it was delivered (if not, the transport
    /// answers the server with an error).
    pub async fn deliver_request(&self, id: Value, method: &str, params: Value) -> bool {
        if self.calls.load(Ordering::Acquire) != 1 {
            return false;
        }
        let sinks = self.sinks.lock().await;
        match (sinks.len(), sinks.values().next()) {
            (1, Some(sink)) => sink
                .send(json!({"id": id, "method": method, "params": params}))
                .is_ok(),
            _ => false,
        }
    }

    /// Runs a tool call without a sink, counted as in flight.
    pub async fn counted<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        let _in_flight = InFlight::new(&self.calls);
        call.await
    }

    /// Runs `call` with `sink` registered under `token` (or, for a call
    /// that asked for no progress, a key of its own), counted in flight.
    pub async fn during<T>(
        &self,
        token: Option<&Value>,
        sink: UnboundedSender<Value>,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let key = match token {
            Some(t) => t.to_string(),
            None => format!("quiet-{}", self.quiet.fetch_add(1, Ordering::AcqRel)),
        };
        let _in_flight = InFlight::new(&self.calls);
        self.sinks.lock().await.insert(key.clone(), sink);
        let result = call.await;
        self.sinks.lock().await.remove(&key);
        result
    }
}

/// The message sent to the caller for one upstream notification, if any:
/// progress under the caller's token (when it gave one), a log message at
/// or above the session's level (when it set one).
pub fn for_caller(
    notification: &Value,
    token: Option<&Value>,
    min_rank: Option<usize>,
) -> Option<Value> {
    let mut params = notification.get("params").cloned().unwrap_or(Value::Null);
    match notification.get("method").and_then(Value::as_str)? {
        "notifications/progress" => {
            params["progressToken"] = token?.clone();
            Some(json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params}))
        }
        "notifications/message" => {
            let rank = params
                .get("level")
                .and_then(Value::as_str)
                .and_then(crate::log_rank)?;
            (rank >= min_rank?).then(
                || json!({"jsonrpc": "2.0", "method": "notifications/message", "params": params}),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_log_message_goes_only_to_the_one_call_in_flight() {
        let sinks = ProgressSinks::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let token = json!("t1");
        let log = json!({"level": "info", "data": "step 1"});
        // Nothing in flight: dropped.
        assert!(!sinks.deliver_log(log.clone()).await);
        let s = sinks.clone();
        let l = log.clone();
        let delivered = sinks
            .during(Some(&token), tx, async move {
                let alone = s.deliver_log(l.clone()).await;
                // A second call (without a sink) in flight: ambiguous, dropped.
                let (s2, l2) = (s.clone(), l.clone());
                let crowded = s.counted(async move { s2.deliver_log(l2).await }).await;
                s.deliver(json!({"progressToken": "t1", "progress": 1}))
                    .await;
                (alone, crowded)
            })
            .await;
        assert_eq!(delivered, (true, false));
        assert_eq!(rx.recv().await.unwrap()["method"], "notifications/message");
        let p = rx.recv().await.unwrap();
        assert_eq!(
            (p["method"].clone(), p["params"]["progress"].clone()),
            (json!("notifications/progress"), json!(1))
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(sinks.calls.load(Ordering::Acquire), 0);
    }
}

#[cfg(test)]
mod for_caller_tests {
    use super::for_caller;
    use serde_json::json;

    #[test]
    fn notifications_reach_the_caller_as_it_asked() {
        let progress = json!({"method": "notifications/progress", "params": {"progressToken": "lattice-x", "progress": 5}});
        let mine = json!("client-7");
        let out = for_caller(&progress, Some(&mine), None).unwrap();
        assert_eq!(out["params"]["progressToken"], "client-7");
        // No token given: the upstream's progress is not the caller's business.
        assert_eq!(for_caller(&progress, None, Some(0)), None);
        let log = |level: &str| json!({"method": "notifications/message", "params": {"level": level, "data": "x"}});
        let info = 1;
        assert!(for_caller(&log("warning"), None, Some(info)).is_some());
        assert!(for_caller(&log("info"), None, Some(info)).is_some());
        assert_eq!(for_caller(&log("debug"), None, Some(info)), None);
        // No level set: no logs. An unknown level: dropped.
        assert_eq!(for_caller(&log("error"), Some(&mine), None), None);
        assert_eq!(for_caller(&log("loud"), None, Some(0)), None);
        assert_eq!(
            for_caller(
                &json!({"method": "notifications/other"}),
                Some(&mine),
                Some(0)
            ),
            None
        );
    }
}
