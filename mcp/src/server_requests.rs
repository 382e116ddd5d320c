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

/// The client capability a server request needs.
pub fn needed_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// Why a server request made during a call cannot go to the caller's
/// client, if it cannot: a method the gateway does not relay, a call
/// without a session to answer in, a capability the client did not declare
/// (`caps`), or a call not made accepting an event stream.
pub fn why_not_relayed(
    method: &str,
    has_session: bool,
    caps: &[String],
    streamed: bool,
) -> Option<String> {
    match (needed_capability(method), has_session) {
        (None, _) => Some(format!("`{method}` is not a request the gateway relays")),
        (Some(_), false) => Some("the call has no session to answer in".to_string()),
        (Some(cap), true) if !caps.iter().any(|c| c == cap) => {
            Some(format!("the client did not declare the `{cap}` capability"))
        }
        _ if !streamed => Some(
            "the call was not made accepting an event stream, so nothing can reach the client"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::why_not_relayed;

    /// (method, has a session, declared capabilities, streamed, refused because)
    type Case<'a> = (&'a str, bool, &'a [String], bool, Option<&'a str>);

    #[test]
    fn server_requests_reach_only_a_client_that_can_answer() {
        let sampling = vec!["sampling".to_string()];
        let table: &[Case] = &[
            ("sampling/createMessage", true, &sampling, true, None),
            (
                "sampling/createMessage",
                true,
                &sampling,
                false,
                Some("not made accepting an event stream"),
            ),
            (
                "sampling/createMessage",
                false,
                &sampling,
                true,
                Some("no session"),
            ),
            (
                "elicitation/create",
                true,
                &sampling,
                true,
                Some("did not declare the `elicitation` capability"),
            ),
            (
                "roots/list",
                true,
                &[],
                true,
                Some("did not declare the `roots` capability"),
            ),
            (
                "tools/call",
                true,
                &sampling,
                true,
                Some("is not a request the gateway relays"),
            ),
        ];
        for (method, session, caps, streamed, why) in table {
            let got = why_not_relayed(method, *session, caps, *streamed);
            match (why, &got) {
                (None, None) => {}
                (Some(part), Some(text)) => assert!(text.contains(part), "{method}: {text}"),
                _ => panic!("{method}: {got:?}"),
            }
        }
    }
}
