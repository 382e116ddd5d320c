//! Traces over OTLP/HTTP (protobuf) to a receiver that stands for the
//! OpenTelemetry collector: a span per call continuing the caller's
//! `traceparent`, a child span per enforcement step (forwarding as a client
//! span), GenAI attributes on an LLM call; a caller's unsampled trace is
//! not exported; with the receiver gone calls are served as before and the
//! lost spans are counted.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crate::harness::*;
use crate::llm::MockVllm;

/// A minimal OTLP/HTTP receiver: decodes each `POST /v1/traces` body and
/// hands its spans to the test.
struct Receiver_ {
    port: u16,
    spans: Receiver<Span>,
}

fn receiver() -> Receiver_ {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path_ok = line.starts_with("POST /v1/traces ");
                    let mut length = 0usize;
                    let mut protobuf = false;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        protobuf |= h == "content-type: application/x-protobuf";
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).unwrap();
                    let decoded = ExportTraceServiceRequest::decode(body.as_slice());
                    let ok = path_ok && protobuf && decoded.is_ok();
                    if let Ok(req) = decoded {
                        for rs in req.resource_spans {
                            for ss in rs.scope_spans {
                                for s in ss.spans {
                                    let _ = tx.send(s);
                                }
                            }
                        }
                    }
                    let status = if ok { "200 OK" } else { "400 Bad Request" };
                    let _ = writer.write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                    );
                }
            });
        }
    });
    Receiver_ { port, spans: rx }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AnyValue::IntValue(i)) => *i,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

/// The spans of `trace` received within a few seconds, up to its step
/// of forwarding (spans of one call are queued together).
fn spans_of(r: &Receiver_, trace: &[u8]) -> Vec<Span> {
    let mut found: Vec<Span> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let done = |f: &[Span]| {
        f.iter()
            .any(|s| s.name == "forward with injected credentials")
    };
    while !done(&found) && std::time::Instant::now() < deadline {
        if let Ok(s) = r.spans.recv_timeout(Duration::from_millis(100)) {
            if s.trace_id == trace {
                found.push(s);
            }
        }
    }
    found
}

fn chat(port: u16, key: &str, traceparent: &str) -> Resp {
    http(
        port,
        "POST",
        "/v1/chat/completions",
        &[
            ("Authorization", key),
            ("Content-Type", "application/json"),
            ("traceparent", traceparent),
        ],
        br#"{"model":"chat-model","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap()
}

const POLICY_EXTRA: &str = "\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"chat\", resource);\n";

#[test]
fn calls_are_traced_to_an_otlp_receiver_with_step_spans_and_gen_ai_attributes() {
    let rx = receiver();
    let vllm = MockVllm::start("gpu", &["chat-model"], 0);
    let upstream = Upstream::start();
    let config = format!(
        "{}\n[[backends]]\nname = \"gpu\"\nkind = \"vllm\"\nurl = \"http://127.0.0.1:{}\"\n\n\
         [[models]]\nname = \"chat-model\"\nbackends = [\"gpu\"]\n\n[egress]\nallow = [\"127.0.0.1\"]\n\n\
         [telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\n",
        route(upstream.port),
        vllm.port,
        rx.port
    );
    let mut gw = Gateway::start_with(&config, &format!("{STARTER_POLICY}{POLICY_EXTRA}"));
    let key = bearer(&gw.create_key("traced-agent", &["agent"]));
    // Not sampled by the caller: never exported.
    let quiet = "11111111111111111111111111111111";
    assert_eq!(
        chat(gw.port, &key, &format!("00-{quiet}-2222222222222222-00")).status,
        200
    );
    // Sampled by the caller.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = chat(gw.port, &key, &format!("00-{trace}-{parent}-01"));
    assert_eq!(r.status, 200, "{}", r.body);
    let trace_bytes = hex::decode(trace).unwrap();
    let spans = spans_of(&rx, &trace_bytes);
    let root = spans
        .iter()
        .find(|s| s.parent_span_id == hex::decode(parent).unwrap())
        .unwrap_or_else(|| panic!("no span continues the caller's: {spans:#?}\n{}", gw.log()));
    assert_eq!(root.name, "chat chat-model");
    assert_eq!(root.kind, 2, "a server span");
    assert_eq!(text(root, "lattice.request_id"), r.request_id());
    assert_eq!(text(root, "lattice.decision"), "allow");
    assert_eq!(text(root, "gen_ai.operation.name"), "chat");
    assert_eq!(text(root, "gen_ai.request.model"), "chat-model");
    let usage = &r.json()["usage"];
    assert_eq!(
        int(root, "gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int(root, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(int(root, "http.response.status_code"), 200);
    assert_eq!(text(root, "enduser.id"), "traced-agent");
    // Each step a child of the call's span, inside it in time.
    let steps: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    for step in [
        "authenticate",
        "authorize",
        "record the decision",
        "forward with injected credentials",
    ] {
        assert!(names.contains(&step), "{step} in {names:?}");
    }
    for s in &steps {
        assert!(
            s.start_time_unix_nano >= root.start_time_unix_nano
                && s.end_time_unix_nano <= root.end_time_unix_nano
                && s.start_time_unix_nano <= s.end_time_unix_nano,
            "{s:?} outside {root:?}"
        );
    }
    let forward = steps
        .iter()
        .find(|s| s.name == "forward with injected credentials")
        .unwrap();
    assert_eq!(forward.kind, 3, "the upstream call is a client span");
    // On an HTTP route, the gateway's span id is the one it sent upstream.
    let route_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = http(
        gw.port,
        "GET",
        "/tools/echo/traced",
        &[
            ("Authorization", &key),
            ("traceparent", &format!("00-{route_trace}-{parent}-01")),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let received = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    let spans = spans_of(&rx, &hex::decode(route_trace).unwrap());
    let call = spans
        .iter()
        .find(|s| s.parent_span_id == hex::decode(parent).unwrap())
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(
        received,
        format!("00-{route_trace}-{}-01", hex::encode(&call.span_id))
    );
    assert_eq!(
        text(call, "lattice.upstream"),
        format!("127.0.0.1:{}", upstream.port),
        "{call:?}"
    );
    // The caller's unsampled trace never arrived (the sampled one, sent
    // after it, did).
    let quiet_bytes = hex::decode(quiet).unwrap();
    assert!(spans.iter().all(|s| s.trace_id != quiet_bytes));
    while let Ok(s) = rx.spans.try_recv() {
        assert_ne!(s.trace_id, quiet_bytes, "an unsampled trace was exported");
    }

    // The receiver goes away: calls are served as before, the loss counted.
    drop(rx);
    gw.stop();
    let dead = free_port();
    let cfg = std::fs::read_to_string(gw.config()).unwrap();
    let cfg = cfg.replace(
        &format!(
            "otlp_endpoint = \"http://127.0.0.1:{}\"",
            receiver_port(&cfg)
        ),
        &format!("otlp_endpoint = \"http://127.0.0.1:{dead}\""),
    );
    std::fs::write(gw.config(), cfg).unwrap();
    gw.spawn();
    for _ in 0..5 {
        assert_eq!(
            chat(gw.port, &key, &format!("00-{trace}-{parent}-01")).status,
            200
        );
    }
    wait_for(
        "the failed export to be counted",
        Duration::from_secs(10),
        || {
            gw.metric("lattice_otlp_export_failures_total") >= 1.0
                && gw.metric("lattice_otlp_spans_dropped_total") >= 5.0
        },
    );
}

fn receiver_port(config: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix("otlp_endpoint = \"http://127.0.0.1:"))
        .map(|rest| rest.trim_end_matches('"').to_string())
        .unwrap()
}
