//! Server-to-client requests (sampling, elicitation, roots) that the
//! gateway relayed to a client and whose answers it waits for: each under
//! an id the gateway gave it, answerable only by the session it went to.
//! Must never: deliver an answer from another session, or wait forever
//! (`ANSWER_WITHIN`).

use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a server's request waits for the client's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Where a client's answer (a result or an error) goes.
type Answer = oneshot::Sender<Result<Value, Value>>;

/// Server requests relayed to a client, waiting for its answer: by the id
/// the gateway gave them, with the session that may answer.
#[derive(Default)]
pub struct ServerRequests(tokio::sync::Mutex<HashMap<String, (String, Answer)>>);

impl ServerRequests {
    /// A new id for a server request relayed for session `sid`, and where
    /// its answer will arrive.
    pub async fn wait_for(&self, sid: &str) -> (String, oneshot::Receiver<Result<Value, Value>>) {
        let id = format!("lattice-{}", uuid::Uuid::now_v7());
        let (tx, rx) = oneshot::channel();
        self.0
            .lock()
            .await
            .insert(id.clone(), (sid.to_string(), tx));
        (id, rx)
    }

    /// Drops a request that will not be answered (timed out, client gone).
    pub async fn forget(&self, id: &str) {
        self.0.lock().await.remove(id);
    }

    /// A client's answer: true when a request of its session waited for it.
    pub async fn complete(&self, id: &str, sid: &str, outcome: Result<Value, Value>) -> bool {
        let mut waiting = self.0.lock().await;
        match waiting.get(id) {
            Some((owner, _)) if owner == sid => {}
            _ => return false,
        }
        match waiting.remove(id) {
            Some((_, tx)) => tx.send(outcome).is_ok(),
            None => false,
        }
    }
}
