//! Property tests of every parser on a trust boundary: the JSON-RPC framing
//! of MCP, the OpenAI request checks, the config file, server-sent events
//! from upstreams, the audit event's canonical decoding, and tool arguments
//! turned into Cedar values and decided. A bounded number of generated
//! cases runs in every test run (`CASES`); each parser must not panic or
//! hang on any input, and every rejection must say what is wrong. The kept
//! corpus (`CORPUS`) holds inputs that broke parsers elsewhere or sit on an
//! edge; proptest keeps any failing case it finds under
//! `gateway/tests/parsers.proptest-regressions`, and it is replayed first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_audit::event::parse_canonical;
use lattice_audit::{AuditEvent, Phase};
use lattice_inference_router::Endpoint;
use lattice_mcp::jsonrpc::{self, Message};
use lattice_mcp::sse_event::{next_event, parse_event};
use lattice_policy::{
    Action, AuthzRequest, ContextValue, PolicyEngine, PolicySource, Principal, PrincipalKind,
    RequestContext, Resource,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

const CASES: u32 = 200;
const MAX: usize = 1 << 20;

/// Inputs kept on purpose: empty, whitespace, BOM, NUL, deep nesting past
/// the JSON recursion limit, numbers past every integer type, lone
/// surrogates, duplicate keys, wrong types in every field.
fn corpus() -> Vec<Vec<u8>> {
    let mut c: Vec<Vec<u8>> = [
        "",
        " ",
        "\u{feff}{}",
        "\0",
        "null",
        "[]",
        "{}",
        "1e999999",
        "-0",
        "18446744073709551616",
        r#"{"jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":[]}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}"#,
        r#"{"jsonrpc":"2.0","id":{"a":1},"method":7}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
        r#""\ud800""#,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":7,"messages":"x"}"#,
        r#"{"model":"m","messages":[],"stream":"yes"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}],"max_tokens":-1}"#,
        r#"{"model":"m","input":[[1,2],[3]],"n":1e308}"#,
        "[server]\nlisten = \"127.0.0.1:1\"\n[policy]\nfiles = [\"p.cedar\"]\n",
        "[server]\nlisten = 1\n",
        "[[[server]]]",
        "data: {\"a\":1}\n\n",
        "event: endpoint\r\ndata: /m?s=1\r\n\r\n",
        "data:\ndata:\n\n\n\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    c.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    c.push(format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes());
    c.push(vec![0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1]);
    c.push("x".repeat(MAX + 1).into_bytes());
    c
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::from),
        prop_oneof![Just("2.0"), Just("tools/call"), Just("user"), Just("m")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    any::<String>(),
                    prop_oneof![
                        Just("jsonrpc"),
                        Just("id"),
                        Just("method"),
                        Just("params"),
                        Just("result"),
                        Just("error"),
                        Just("model"),
                        Just("messages"),
                        Just("role"),
                        Just("content"),
                        Just("stream"),
                        Just("input"),
                        Just("tools"),
                    ]
                    .prop_map(String::from),
                ],
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..512)
}

fn check_jsonrpc(input: &[u8]) {
    if let Err(e) = jsonrpc::parse(input, MAX) {
        assert!(!e.to_string().trim().is_empty(), "an empty rejection");
    }
}

fn check_openai(input: &[u8]) {
    for endpoint in [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
    ] {
        if let Err(e) = lattice_inference_router::openai::check_request(endpoint, input) {
            assert!(!e.to_string().trim().is_empty(), "an empty rejection");
        }
    }
}

fn check_config(text: &str) {
    let path = Path::new("/nonexistent/lattice.toml");
    if let Err(e) = lattice_gateway::config::parse(path, text) {
        let e = e.to_string();
        assert!(
            e.contains("lattice.toml"),
            "a rejection naming no file: {e}"
        );
    }
}

fn check_sse(input: &[u8]) {
    let mut buf = input.to_vec();
    let mut n = 0;
    while let Some(event) = next_event(&mut buf) {
        let _ = parse_event(&event);
        n += 1;
        assert!(n <= input.len(), "more events than bytes");
    }
}

fn check_canonical(input: &[u8]) {
    if let Err(e) = parse_canonical(input) {
        assert!(!e.trim().is_empty(), "an empty rejection");
    }
}

#[test]
fn the_kept_corpus_goes_through_every_parser() {
    for input in corpus() {
        check_jsonrpc(&input);
        check_openai(&input);
        check_sse(&input);
        check_canonical(&input);
        if let Ok(text) = std::str::from_utf8(&input) {
            check_config(text);
            if let Ok(v) = serde_json::from_str::<Value>(text) {
                decide_with_input(&v);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn jsonrpc_framing_never_panics_and_names_every_rejection(input in bytes(), value in json_value()) {
        check_jsonrpc(&input);
        check_jsonrpc(value.to_string().as_bytes());
    }

    #[test]
    fn a_well_formed_request_reads_back_as_itself(id in any::<i64>(), method in "[a-z/_]{1,24}", params in json_value()) {
        let params = match params { Value::Object(m) => Value::Object(m), _ => json!({}) };
        let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        match jsonrpc::parse(text.as_bytes(), MAX) {
            Ok(Message::Request { id: got, method: m, params: p }) => {
                prop_assert_eq!(got, json!(id));
                prop_assert_eq!(m, method);
                prop_assert_eq!(p, params);
            }
            other => prop_assert!(false, "{text}: {other:?}"),
        }
    }

    #[test]
    fn openai_request_checks_never_panic_and_name_every_rejection(input in bytes(), value in json_value(), model in any::<String>()) {
        check_openai(&input);
        check_openai(value.to_string().as_bytes());
        let mut chat = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let Value::Object(extra) = value {
            for (k, v) in extra {
                chat[k] = v;
            }
        }
        check_openai(chat.to_string().as_bytes());
    }

    #[test]
    fn the_config_parser_never_panics_and_names_its_file(text in any::<String>(), line in any::<String>(), at in 0usize..6) {
        check_config(&text);
        // A valid file with one arbitrary line put somewhere in it.
        let mut lines: Vec<String> = ["[server]", "listen = \"127.0.0.1:8080\"", "[policy]", "files = [\"p.cedar\"]", "[audit]"]
            .iter().map(|s| s.to_string()).collect();
        lines.insert(at.min(lines.len()), line);
        check_config(&lines.join("\n"));
    }

    #[test]
    fn sse_framing_reads_back_the_events_that_were_sent(
        events in prop::collection::vec((prop::option::of("[a-z]{1,8}"), prop::collection::vec("[^\r\n]{0,16}", 1..4)), 0..6),
        crlf in prop::collection::vec(any::<bool>(), 6),
        cuts in prop::collection::vec(0usize..64, 0..8),
        noise in bytes(),
    ) {
        check_sse(&noise);
        // Each event with its own line ends: servers mix them.
        let mut wire = String::new();
        for ((name, data), crlf) in events.iter().zip(&crlf) {
            let eol = if *crlf { "\r\n" } else { "\n" };
            if let Some(n) = name {
                wire.push_str(&format!("event: {n}{eol}"));
            }
            for d in data {
                wire.push_str(&format!("data: {d}{eol}"));
            }
            wire.push_str(eol);
        }
        // Fed in arbitrary chunks, as a network delivers them.
        let bytes = wire.as_bytes();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut at: usize = 0;
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(*cut).min(bytes.len());
            buf.extend_from_slice(&bytes[at..end]);
            at = end;
            while let Some(e) = next_event(&mut buf) {
                got.push(parse_event(&e));
            }
        }
        let want: Vec<(String, String)> = events
            .iter()
            .map(|(n, d)| (n.clone().unwrap_or_else(|| "message".into()), d.join("\n")))
            .collect();
        prop_assert_eq!(got, want);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn canonical_decoding_never_panics_and_round_trips(
        input in bytes(),
        texts in prop::collection::vec(any::<String>(), 6),
        numbers in prop::collection::vec(prop::option::of(any::<u64>()), 3),
        status in prop::option::of(any::<u16>()),
    ) {
        check_canonical(&input);
        let mut e = AuditEvent::new(Phase::Decision, &texts[0], &texts[1]);
        e.principal.clone_from(&texts[2]);
        e.target.clone_from(&texts[3]);
        e.reason.clone_from(&texts[4]);
        e.user_agent.clone_from(&texts[5]);
        e.latency_us = numbers[0];
        e.tokens_in = numbers[1];
        e.ttft_us = numbers[2];
        e.status = status;
        let bytes = e.canonical();
        let back = parse_canonical(&bytes).unwrap();
        prop_assert_eq!(back.canonical(), bytes);
        prop_assert_eq!(back, e);
    }

    #[test]
    fn tool_arguments_become_cedar_values_and_a_decision_whatever_they_are(input in json_value()) {
        decide_with_input(&input);
    }
}

/// A `call_tool` with `input` decided by a policy that reads the input:
/// an answer (allow or deny, with reasons), never a panic.
fn decide_with_input(input: &Value) {
    let policy = r#"
        @id("small-amounts")
        permit (principal, action == Lattice::Action::"call_tool", resource)
        when { context.input has amount && context.input.amount < 100 };
    "#;
    let engine = PolicyEngine::new(&[PolicySource::new("p.cedar", policy)], None).unwrap();
    let Some(value) = ContextValue::from_json(input) else {
        return;
    };
    let req = AuthzRequest {
        principal: Principal {
            kind: PrincipalKind::Agent,
            id: "a".into(),
            tenant: "default".into(),
            roles: vec![],
            labels: vec![],
            auth_method: "api_key".into(),
        },
        action: Action::CallTool,
        resource: Resource::tool("bank__transfer", "bank", "high"),
        context: RequestContext::new(0, "10.0.0.1").with_value("input", value),
    };
    let evaluation = engine.evaluate(&req);
    let allowed = evaluation.live.is_allow();
    let small = input
        .get("amount")
        .and_then(Value::as_i64)
        .is_some_and(|a| a < 100);
    assert_eq!(allowed, small, "{input}");
}
