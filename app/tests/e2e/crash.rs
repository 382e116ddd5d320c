//! Durable before forwarding, end to end: a gateway under concurrent load
//! on an HTTP route, MCP `tools/call` and `/v1` chats is killed with
//! SIGKILL, three times. After each restart every call that got an answer
//! has its decision in the store, every decision has an outcome (calls the
//! crash cut short get one saying they were interrupted), and the log
//! verifies.

use crate::harness::*;
use lattice_audit::event::parse_canonical;
use lattice_audit::{Phase, INTERRUPTED};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const POLICY: &str = r#"
@id("agents-everything")
permit (
  principal in Lattice::Role::"agent",
  action in [Lattice::Action::"http_request", Lattice::Action::"call_tool", Lattice::Action::"chat"],
  resource
);
"#;

/// One client's loop: the request ids of the calls answered 200 (counted
/// in `count` as they come), until the gateway goes away.
fn client(
    port: u16,
    auth: String,
    kind: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut answered = Vec::new();
    let json_headers = |accept: &'static str| {
        vec![
            ("Authorization", auth.clone()),
            ("Content-Type", "application/json".to_string()),
            ("Accept", accept.to_string()),
        ]
    };
    for i in 0..100_000 {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let (method, path, headers, body) = match kind {
            0 => ("GET", "/tools/echo/crash", vec![("Authorization", auth.clone())], String::new()),
            1 => (
                "POST",
                "/mcp",
                json_headers("application/json, text/event-stream"),
                json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "mock__echo", "arguments": {"message": "crash"}}}).to_string(),
            ),
            _ => (
                "POST",
                "/v1/chat/completions",
                json_headers("application/json"),
                json!({"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).to_string(),
            ),
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match http(port, method, path, &headers, body.as_bytes()) {
            Ok(r) if r.status == 200 => {
                answered.push(r.request_id());
                count.fetch_add(1, Ordering::Release);
            }
            Ok(r) => panic!("{path} answered {}: {}", r.status, r.body),
            Err(_) => break, // the gateway is gone
        }
    }
    answered
}

#[test]
fn a_killed_gateway_loses_no_decision_of_an_answered_call() {
    let upstream = Upstream::start();
    let mcp = Peer::start("lattice-mock-mcp", &[]);
    // Slow tokens keep chats in flight when the kill lands.
    let llm = Peer::start(
        "lattice-mock-vllm",
        &["--name", "a", "--model", "chat-model", "--token-ms", "20"],
    );
    let config = format!(
        "{}\n[[mcp_servers]]\nname = \"mock\"\nurl = \"http://127.0.0.1:{}/mcp\"\nallow_private_network = true\n\n\
         [[backends]]\nname = \"a\"\nkind = \"vllm\"\nurl = \"http://127.0.0.1:{}\"\ntimeout_ms = 5000\n\n\
         [[models]]\nname = \"chat-model\"\nbackends = [\"a\"]\n",
        route(upstream.port),
        mcp.port,
        llm.port
    );
    let mut gw = Gateway::start_with(&config, POLICY);
    let auth = bearer(&gw.create_key("agent-crash", &["agent"]));
    let mut interrupted_so_far = 0;
    for round in 0..3 {
        if round > 0 {
            gw.spawn();
        }
        wait_for("the MCP tool", Duration::from_secs(20), || {
            client_once(gw.port, &auth)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..9)
            .map(|n| {
                let (auth, stop, count) = (auth.clone(), stop.clone(), count.clone());
                let port = gw.port;
                std::thread::spawn(move || client(port, auth, n % 3, stop, count))
            })
            .collect();
        // Under load for 1.5 s at least, and until 60 calls were answered
        // (a loaded machine answers fewer a second), 30 s at most.
        std::thread::sleep(Duration::from_millis(1500));
        let started = std::time::Instant::now();
        while count.load(Ordering::Acquire) <= 60 && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        gw.crash();
        stop.store(true, Ordering::Release);
        let answered: BTreeSet<String> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        assert!(
            answered.len() > 30,
            "round {round}: too little load: {}",
            answered.len()
        );

        // The restart records the interrupted calls before it serves.
        gw.spawn();
        let store = gw.store();
        // Per call (events of the three kinds under load): decisions, and
        // the reasons of its outcomes.
        let mut phases: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        for stored in store.events().unwrap() {
            let e = parse_canonical(stored.json.as_bytes()).unwrap();
            if !["http.request", "mcp.call_tool", "llm.chat"].contains(&e.kind.as_str()) {
                continue;
            }
            let entry = phases.entry(e.request_id.clone()).or_default();
            match e.phase {
                Phase::Decision => entry.0 += 1,
                Phase::Outcome => entry.1.push(e.reason),
            }
        }
        for id in &answered {
            let (decisions, _) = phases.get(id).cloned().unwrap_or_default();
            assert_eq!(
                decisions, 1,
                "round {round}: answered call {id} has no decision"
            );
        }
        let mut interrupted = 0;
        for (id, (decisions, outcomes)) in &phases {
            // A call may have been answered and still be interrupted: its
            // outcome is written after the answer, and the kill came first.
            if outcomes.iter().any(|r| r == INTERRUPTED) {
                interrupted += 1;
            }
            assert!(
                *decisions == 1 && outcomes.len() == 1,
                "round {round}: call {id} has {decisions} decision(s) and outcomes {outcomes:?}"
            );
        }
        interrupted_so_far = interrupted; // the store keeps every round's
        eprintln!(
            "round {round}: {} calls answered before the kill; {interrupted} interrupted so far",
            answered.len()
        );
        gw.stop();
        gw.assert_verifies(&[]);
    }
    assert!(
        interrupted_so_far > 0,
        "no call was in flight at any of the three kills: the test proved nothing about recovery"
    );
}

/// One MCP call, true when it is answered (the server is federated).
fn client_once(port: u16, auth: &str) -> bool {
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "tools/call", "params": {"name": "mock__echo", "arguments": {"message": "ready"}}});
    http(
        port,
        "POST",
        "/mcp",
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        body.to_string().as_bytes(),
    )
    .is_ok_and(|r| r.status == 200 && !r.body.contains("error"))
}
