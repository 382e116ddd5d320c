//! A call's trace, built once the call is over from what the call already
//! recorded: a server span for the call (its span id is the one the
//! gateway sent upstream in `traceparent`, its parent the caller's span),
//! and a child span per enforcement step entered, from its start to the
//! next step's (in time) — the forwarding step is the client span of the upstream
//! call. Attributes follow OpenTelemetry's conventions: GenAI on LLM calls
//! (`gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.usage.*`, the
//! time to the first token), MCP on MCP calls (`mcp.method.name`,
//! `gen_ai.tool.name`, `mcp.session.id`), HTTP's status and client
//! address, and the audit's own ids (`lattice.request_id`,
//! `lattice.decision`) so a trace leads to its audit events.
//!
//! Sampling: a caller's `traceparent` decides for its trace (its sampled
//! flag); a new trace is sampled at `telemetry.sample_ratio`, by its id.
//!
//! Must never: put a prompt, an argument, a credential or a result in a
//! span, or slow the call (the spans are queued, `otlp.rs`).

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span, Status};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::call::{Call, Door};
use crate::enforce::STEPS;
use crate::otlp::{attr, attr_f64, attr_int};
use crate::runtime::Shared;

/// Queues the call's spans, if traces are exported and this one is sampled.
pub fn export(node: &Shared, call: &Call, status: u16) {
    let Some(otlp) = &node.otlp else {
        return;
    };
    let Some((trace_id, root_id, sampled_flag)) = ids(&call.traceparent) else {
        return;
    };
    let sampled = match call.trace_parent {
        Some(_) => sampled_flag,
        None => by_ratio(&trace_id, otlp.sample_ratio),
    };
    if !sampled {
        return;
    }
    let (now, now_at) = (SystemTime::now(), Instant::now());
    let nanos = |at: Instant| -> u64 {
        let t = now - now_at.saturating_duration_since(at);
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    let parent = call
        .trace_parent
        .as_deref()
        .and_then(|p| hex::decode(p).ok())
        .unwrap_or_default();
    let failed = status == 0 || status >= 500;
    let mut spans = vec![Span {
        trace_id: trace_id.clone(),
        span_id: root_id.clone(),
        parent_span_id: parent,
        name: root_name(call),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: nanos(call.start),
        end_time_unix_nano: nanos(now_at),
        attributes: root_attributes(call, status),
        status: Some(Status {
            code: if failed {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
            message: if failed {
                call.failure.clone().unwrap_or_default()
            } else {
                String::new()
            },
        }),
        ..Span::default()
    }];
    // In the order they were entered: a door may take a step early (the
    // LLM door checks the schema, step 4, before it resolves the model).
    let mut entered: Vec<(u8, Instant)> = call
        .entered
        .iter()
        .enumerate()
        .filter_map(|(n, t)| t.map(|t| (n as u8, t)))
        .collect();
    entered.sort_by_key(|(_, t)| *t);
    for (i, (number, start)) in entered.iter().enumerate() {
        let end = entered.get(i + 1).map(|(_, t)| *t).unwrap_or(now_at);
        let Some(step) = STEPS.iter().find(|s| s.number == *number) else {
            continue;
        };
        let forward = *number == 8;
        let mut attributes = vec![attr_int("lattice.step", i64::from(*number))];
        if let (true, Some(upstream)) = (forward, &call.facts.upstream) {
            attributes.push(attr("server.address", upstream.clone()));
        }
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: rand::random::<[u8; 8]>().to_vec(),
            parent_span_id: root_id.clone(),
            name: step.name.to_string(),
            kind: if forward {
                SpanKind::Client
            } else {
                SpanKind::Internal
            } as i32,
            start_time_unix_nano: nanos(*start),
            end_time_unix_nano: nanos(end),
            attributes,
            ..Span::default()
        });
    }
    otlp.send(spans);
}

/// (trace id, the gateway's span id, sampled) from the `traceparent` the
/// gateway sent upstream.
fn ids(traceparent: &str) -> Option<(Vec<u8>, Vec<u8>, bool)> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [_, trace, span, flags] = parts.as_slice() else {
        return None;
    };
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        hex::decode(trace).ok()?,
        hex::decode(span).ok()?,
        flags & 1 == 1,
    ))
}

/// A new trace is sampled when its id's last 8 bytes, as a fraction of
/// 2^64, fall under the ratio (the same answer on every replica).
fn by_ratio(trace_id: &[u8], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let tail: [u8; 8] = trace_id
        .get(8..16)
        .and_then(|t| t.try_into().ok())
        .unwrap_or([0; 8]);
    (u64::from_be_bytes(tail) as f64) < ratio * (u64::MAX as f64)
}

fn operation(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "llm.chat" => "chat",
        "llm.completion" => "text_completion",
        "llm.embed" => "embeddings",
        _ => return None,
    })
}

fn mcp_method(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "mcp.call_tool" => "tools/call",
        "mcp.list_tools" => "tools/list",
        "mcp.read_resource" => "resources/read",
        "mcp.list_resources" => "resources/list",
        "mcp.get_prompt" => "prompts/get",
        "mcp.list_prompts" => "prompts/list",
        "mcp.initialize" => "initialize",
        _ => return None,
    })
}

fn root_name(call: &Call) -> String {
    let (kind, target) = (call.facts.kind, &call.facts.target);
    match (call.door, operation(kind), mcp_method(kind)) {
        (Door::Llm, Some(op), _) => format!("{op} {target}"),
        (Door::Mcp, _, Some(method)) if kind == "mcp.call_tool" => format!("{method} {target}"),
        (Door::Mcp, _, Some(method)) => method.to_string(),
        _ => format!("{kind} {target}"),
    }
}

fn root_attributes(call: &Call, status: u16) -> Vec<KeyValue> {
    let f = &call.facts;
    let mut a = vec![
        attr("lattice.request_id", f.request_id.clone()),
        attr("lattice.kind", f.kind),
        attr("lattice.decision", f.decision),
        attr_int("http.response.status_code", i64::from(status)),
    ];
    if let Some(p) = &f.principal {
        a.push(attr("enduser.id", p.id.clone()));
        a.push(attr("lattice.tenant", p.tenant.clone()));
        a.push(attr("lattice.auth_method", p.auth_method.clone()));
    }
    if let Some(ip) = f.client_addr.rsplit_once(':').map(|(ip, _)| ip) {
        a.push(attr("client.address", ip.trim_matches(['[', ']'])));
    }
    if let Some(upstream) = &f.upstream {
        a.push(attr("lattice.upstream", upstream.clone()));
    }
    if let Some(op) = operation(f.kind) {
        a.push(attr("gen_ai.operation.name", op));
        a.push(attr("gen_ai.request.model", f.target.clone()));
        if let Some(u) = &call.llm.usage {
            a.push(attr_int(
                "gen_ai.usage.input_tokens",
                u.prompt_tokens as i64,
            ));
            a.push(attr_int(
                "gen_ai.usage.output_tokens",
                u.completion_tokens as i64,
            ));
        }
        if let Some(ttft) = call.llm.ttft_us {
            a.push(attr_f64(
                "gen_ai.server.time_to_first_token",
                ttft as f64 / 1e6,
            ));
        }
    }
    if let Some(method) = mcp_method(f.kind) {
        a.push(attr("mcp.method.name", method));
        if f.kind == "mcp.call_tool" {
            a.push(attr("gen_ai.operation.name", "execute_tool"));
            a.push(attr("gen_ai.tool.name", f.target.clone()));
        }
        if let Some(sid) = &call.mcp.sid {
            a.push(attr("mcp.session.id", sid.clone()));
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_traceparent_sent_upstream() {
        let (t, s, sampled) =
            ids("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(hex::encode(t), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex::encode(s), "b7ad6b7169203331");
        assert!(sampled);
        assert!(
            !ids("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .unwrap()
                .2
        );
        assert!(ids("garbage").is_none());
    }

    #[test]
    fn ratio_sampling_is_decided_by_the_trace_id() {
        let low = hex::decode("00000000000000000000000000000001").unwrap();
        let high = hex::decode("0000000000000000ffffffffffffff00").unwrap();
        // (trace id, ratio, sampled)
        for (id, ratio, want) in [
            (&low, 0.0, false),
            (&low, 0.5, true),
            (&high, 0.5, false),
            (&high, 1.0, true),
        ] {
            assert_eq!(by_ratio(id, ratio), want, "{} at {ratio}", hex::encode(id));
        }
    }
}
