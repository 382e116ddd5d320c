//! What the admin API's read endpoints answer (the workbench's data): the
//! caller's identity and permissions, the audit trail under the caller's
//! scope, its verification, live aggregates, pinned tools with the diff of a
//! quarantined change, and the policy set with its proved invariants, a
//! candidate's validation (schema, invariants, semantic diff) and what-if.
//! Routing, authorization and auditing are in `admin/mod.rs`; this module only
//! builds replies, so a reply can never skip the decision made there.
//!
//! Must never: widen the caller's audit scope, or write anything.

use lattice_audit::query::{AuditQuery, Scope};
use lattice_audit::{AuditEvent, Store};
use lattice_policy::prove::{Change, Difference, Verdict};
use lattice_policy::{Action, AuthzRequest, PolicyEngine, PolicySource, Resource};
use serde_json::{json, Value};

use crate::runtime::{Runtime, Shared};
use crate::state::{kind_name, StateStore};

/// An admin reply: a status and JSON, or a CSV export.
pub(crate) enum Reply {
    Json(u16, Value),
    Csv(String),
}

/// Whose audit rows the caller may read, as decided by policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuditScope {
    /// Not an audit read (or not allowed).
    None,
    All,
    Tenant(String),
}

fn bad(message: impl Into<String>) -> Reply {
    Reply::Json(
        400,
        json!({"error": {"code": "invalid_request", "message": message.into()}}),
    )
}

fn unavailable(message: impl std::fmt::Display) -> Reply {
    Reply::Json(
        503,
        json!({"error": {"code": "audit_unavailable", "message": message.to_string()}}),
    )
}

/// The audit filters of a query string: `since` (`90s`, `15m`, `2h`, `7d`),
/// `from_us`, `to_us`, `tenant`, `principal`, `kind`, `target`, `decision`,
/// `limit`, and the reply's `format` (`json` or `csv`) and `sink`
/// (`embedded` or `clickhouse`). Unknown parameters are refused.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AuditParams {
    pub query: AuditQuery,
    pub csv: bool,
    pub clickhouse: bool,
}

fn parse_since(s: &str, now_us: u64) -> Result<u64, String> {
    let (n, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("since `{s}`: use seconds or 90s, 15m, 2h, 7d"))?;
    let secs = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        'd' => n * 86_400,
        _ => return Err(format!("since `{s}`: use seconds or 90s, 15m, 2h, 7d")),
    };
    Ok(now_us.saturating_sub(secs.saturating_mul(1_000_000)))
}

/// A query string's parameters, in order, values percent-decoded.
pub(crate) fn query_params(query: &str) -> Result<Vec<(&str, String)>, String> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            lattice_mcp::catalog::percent_decode(&v.replace('+', " "))
                .map(|v| (k, v))
                .ok_or_else(|| format!("parameter `{k}` is not valid percent-encoded UTF-8"))
        })
        .collect()
}

pub(crate) fn parse_audit_params(query: &str, now_us: u64) -> Result<AuditParams, String> {
    let mut p = AuditParams::default();
    for (k, v) in query_params(query)? {
        if v.is_empty() {
            continue;
        }
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("parameter `{k}`: `{v}` is not a whole number"))
        };
        let q = &mut p.query;
        match k {
            "since" => q.from_us = Some(parse_since(&v, now_us)?),
            "from_us" => q.from_us = Some(number(&v)?),
            "to_us" => q.to_us = Some(number(&v)?),
            "tenant" => q.tenant = Some(v),
            "principal" => q.principal = Some(v),
            "kind" => q.kind = Some(v),
            "target" => q.target = Some(v),
            "decision" => q.decision = Some(v),
            "limit" => q.limit = Some(number(&v)? as usize),
            "format" => match v.as_str() {
                "json" => p.csv = false,
                "csv" => p.csv = true,
                other => return Err(format!("format `{other}`: use json or csv")),
            },
            "sink" => match v.as_str() {
                "embedded" => p.clickhouse = false,
                "clickhouse" => p.clickhouse = true,
                other => return Err(format!("sink `{other}`: use embedded or clickhouse")),
            },
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok(p)
}

/// A what-if request body: an authorization request as JSON.
pub(crate) fn check_whatif(body: &[u8]) -> Result<AuthzRequest, String> {
    let mut req: AuthzRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid what-if request: {e}"))?;
    if req.context.time == 0 {
        req.context.time = (lattice_audit::now_us() / 1_000_000) as i64;
    }
    Ok(req)
}

/// A candidate policy set: `{"policies": "<Cedar text>"}`.
pub(crate) fn check_candidate(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid candidate: {e}"))?;
    v.get("policies")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "invalid candidate: give {\"policies\": \"<Cedar text>\"}".to_string())
}

/// A candidate set's validation against the schema the gateway runs with,
/// which policy ids it would add or remove, and — proved with the solver,
/// each bounded by `policy.invariant_timeout_ms` — each configured
/// invariant's answer for it and its semantic diff against the live set.
pub(crate) async fn validate_candidate(node: &Shared, runtime: &Runtime, text: &str) -> Value {
    let tool_input = match crate::runtime::read_tool_input(&runtime.config) {
        Ok(t) => t,
        Err(e) => return json!({"valid": false, "errors": [e.to_string()]}),
    };
    let candidate = [PolicySource::new("candidate.cedar", text)];
    let engine = match PolicyEngine::with_tool_input(&candidate, None, tool_input.as_deref()) {
        Ok(engine) => engine,
        Err(e) => return json!({"valid": false, "errors": [e.to_string()]}),
    };
    let new: Vec<String> = engine.policy_ids().map(str::to_string).collect();
    let old: Vec<&str> = runtime.policy.policy_ids().collect();
    let mut reply = json!({
        "valid": true,
        "added": new.iter().filter(|id| !old.contains(&id.as_str())).collect::<Vec<_>>(),
        "removed": old.iter().filter(|id| !new.iter().any(|n| n == *id)).collect::<Vec<_>>(),
        "policies": new,
    });
    // The proofs run off the request path's threads.
    let live = node.runtime.load_full();
    let proofs = tokio::task::spawn_blocking(move || {
        let limit = live.config.policy.invariant_timeout;
        let invariants = crate::invariants::outcomes(&engine, &live.config.invariants, limit, true)
            .map(|o| o.iter().map(invariant_answer).collect::<Vec<_>>());
        let diff = crate::invariants::diff(&live.policy, &engine, limit)
            .map(|d| d.iter().map(difference).collect::<Vec<_>>());
        (invariants, diff)
    })
    .await;
    match proofs {
        Ok((invariants, diff)) => {
            match invariants {
                Ok(v) => reply["invariants"] = json!(v),
                Err(e) => reply["invariants_error"] = json!(e.to_string()),
            }
            match diff {
                Ok(v) => reply["diff"] = json!(v),
                Err(e) => reply["diff_error"] = json!(e.to_string()),
            }
        }
        Err(e) => reply["invariants_error"] = json!(format!("the prover failed: {e}")),
    }
    reply
}

fn invariant_answer(o: &crate::invariants::Outcome) -> Value {
    let p = &o.property;
    let mut v =
        json!({"id": p.id, "description": p.description, "claim": p.claim.key(), "ms": o.ms});
    match &o.verdict {
        Ok(Verdict::Holds) => v["status"] = json!("proved"),
        Ok(Verdict::Fails(cex)) => {
            v["status"] = json!("broken");
            v["broken"] = json!(format!("a request is {}", p.claim.broken(cex.allowed)));
            v["counterexample"] = json!(cex.readable());
        }
        Err(e) => {
            v["status"] = json!("unproved");
            v["error"] = json!(e);
        }
    }
    v
}

fn difference(d: &Difference) -> Value {
    json!({
        "change": match d.change {
            Change::NewlyAllowed => "newly_allowed",
            Change::NewlyDenied => "newly_denied",
        },
        "principal": d.principal,
        "action": d.action,
        "resource": d.resource,
        "example": d.example.readable(),
    })
}

/// The active set's decision on a hypothetical request, with the text of
/// each deciding policy.
pub(crate) fn what_if(runtime: &Runtime, req: AuthzRequest) -> Value {
    let d = runtime.policy.decide(&req);
    let policies: Vec<Value> = d
        .policies
        .iter()
        .map(|id| json!({"id": id, "text": runtime.policy.policy_text(id)}))
        .collect();
    json!({
        "decision": d.outcome.as_str(),
        "summary": d.summary(),
        "policies": policies,
        "errors": d.errors,
        "request": req,
    })
}

/// The top-level fields in which two tool definitions differ.
pub(crate) fn definition_changes(before: &Value, after: &Value) -> Vec<Value> {
    let empty = serde_json::Map::new();
    let (b, a) = (
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<&String> = b.keys().chain(a.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| b.get(*f) != a.get(*f))
        .map(|f| json!({"field": f, "before": b.get(f), "after": a.get(f)}))
        .collect()
}

fn parse_definition(text: &Option<String>) -> Value {
    text.as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// The caller and what the active policies let it do.
pub(crate) fn whoami(runtime: &Runtime, p: &lattice_policy::Principal) -> Value {
    let now = (lattice_audit::now_us() / 1_000_000) as i64;
    let allowed = |action: Action, resource: Resource| {
        runtime
            .policy
            .decide(&AuthzRequest {
                principal: p.clone(),
                action,
                resource,
                context: lattice_policy::RequestContext::new(now, "127.0.0.1"),
            })
            .is_allow()
    };
    let gateway = || Resource::Gateway {
        id: "gateway".into(),
    };
    let mut can = serde_json::Map::new();
    for a in [
        Action::RegisterServer,
        Action::ChangeRoutes,
        Action::ChangePolicies,
        Action::ReadPolicies,
        Action::ManageKeys,
        Action::ApproveTool,
        Action::Install,
    ] {
        can.insert(a.as_str().into(), allowed(a, gateway()).into());
    }
    let audit = if allowed(Action::ReadAudit, gateway()) {
        "all"
    } else if allowed(
        Action::ReadAudit,
        Resource::Tenant {
            id: p.tenant.clone(),
        },
    ) {
        "tenant"
    } else {
        "none"
    };
    can.insert("admin.read_audit".into(), (audit != "none").into());
    json!({
        "principal": p.id, "type": kind_name(p.kind), "tenant": p.tenant,
        "roles": p.roles, "labels": p.labels, "auth_method": p.auth_method,
        "can": can, "audit_scope": audit,
        "audit_sinks": if runtime.config.audit.clickhouse.is_some() { json!(["embedded", "clickhouse"]) } else { json!(["embedded"]) },
    })
}

fn audit_store(runtime: &Runtime) -> Result<Store, String> {
    Store::open_read_only(&runtime.config.audit.db_path).map_err(|e| e.to_string())
}

fn scoped_params(runtime: &Runtime, scope: &AuditScope, query: &str) -> Result<AuditParams, Reply> {
    let mut p = parse_audit_params(query, lattice_audit::now_us()).map_err(bad)?;
    let scope = match scope {
        AuditScope::All => Scope::All,
        AuditScope::Tenant(t) => Scope::Tenant(t.clone()),
        AuditScope::None => return Err(Reply::Json(500, json!({"error": "no scope"}))),
    };
    p.query = p.query.scoped(&scope).map_err(|e| {
        Reply::Json(
            403,
            json!({"error": {"code": "forbidden", "message": e.to_string()}}),
        )
    })?;
    if p.clickhouse && runtime.config.audit.clickhouse.is_none() {
        return Err(bad(
            "sink `clickhouse`: no [audit.clickhouse] is configured",
        ));
    }
    Ok(p)
}

/// Events matching the filters, newest first, under the caller's scope.
pub(crate) async fn audit_view(runtime: &Runtime, scope: &AuditScope, query: &str) -> Reply {
    let p = match scoped_params(runtime, scope, query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rows = match &runtime.config.audit.clickhouse {
        Some(ch) if p.clickhouse => match lattice_audit::clickhouse::client(ch) {
            Ok(client) => lattice_audit::query::query_clickhouse(&client, &p.query)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        _ => {
            let q = p.query.clone();
            let store = audit_store(runtime);
            tokio::task::spawn_blocking(move || {
                store.and_then(|s| s.query(&q).map_err(|e| e.to_string()))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        }
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let events: Vec<AuditEvent> = rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.json).ok())
        .collect();
    if p.csv {
        return Reply::Csv(lattice_audit::export::to_csv(&events));
    }
    let scope = match scope {
        AuditScope::Tenant(t) => format!("tenant:{t}"),
        _ => "all".into(),
    };
    Reply::Json(
        200,
        json!({"scope": scope, "count": events.len(), "events": events}),
    )
}

/// The embedded log verified against its signed checkpoints and the
/// witness, as `lattice audit verify` does: a store that retention pruned
/// is verified whole, its pruned events read back from ClickHouse when
/// `[audit.clickhouse]` is configured.
pub(crate) async fn verify_view(runtime: &Runtime) -> Reply {
    let cfg = runtime.config.audit.clone();
    let node = runtime.config.server.node_id.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let vkey_path = cfg.key_path.with_extension("vkey");
        let vkey = std::fs::read_to_string(&vkey_path)
            .map_err(|e| format!("verifier key {}: {e}", vkey_path.display()))?;
        let verifier =
            lattice_audit::NoteVerifier::from_encoded(&vkey).map_err(|e| e.to_string())?;
        let witness = match &cfg.witness_file {
            Some(p) if p.exists() => {
                lattice_audit::read_witness(&std::fs::read_to_string(p).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?
            }
            _ => Vec::new(),
        };
        let store = Store::open_read_only(&cfg.db_path).map_err(|e| e.to_string())?;
        let report = lattice_audit::verify_pruned(
            &store,
            cfg.clickhouse.as_ref(),
            &node,
            &verifier,
            &witness,
        )
        .map_err(|e| e.to_string())?;
        let mut v = serde_json::to_value(&report).map_err(|e| e.to_string())?;
        v["ok"] = report.ok().into();
        Ok(v)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match result {
        Ok(v) => Reply::Json(200, v),
        Err(e) => unavailable(e),
    }
}

/// Aggregates over a recent window (`since`, default 5 minutes): all
/// calls, and the top tools and models.
pub(crate) async fn stats_view(runtime: &Runtime, scope: &AuditScope, query: &str) -> Reply {
    let now = lattice_audit::now_us();
    let mut p = match scoped_params(runtime, scope, query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // No window given: the last five minutes.
    p.query
        .from_us
        .get_or_insert(now.saturating_sub(300_000_000));
    let of_kind = |kind: &str| AuditQuery {
        kind: Some(kind.into()),
        ..p.query.clone()
    };
    let queries = [
        p.query.clone(),
        of_kind("mcp.call_tool"),
        of_kind("llm.chat"),
    ];
    let result = match &runtime.config.audit.clickhouse {
        Some(ch) if p.clickhouse => {
            let client = match lattice_audit::clickhouse::client(ch) {
                Ok(c) => c,
                Err(e) => return unavailable(e),
            };
            let mut out = Vec::new();
            for q in &queries {
                match lattice_audit::query::aggregate_clickhouse(&client, q).await {
                    Ok(a) => out.push(a),
                    Err(e) => return unavailable(e),
                }
            }
            Ok(out)
        }
        _ => {
            let store = audit_store(runtime);
            tokio::task::spawn_blocking(move || {
                store?.aggregate_all(&queries).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        }
    };
    match result {
        Ok(a) => {
            let window_s = now.saturating_sub(p.query.from_us.unwrap_or(0)) as f64 / 1e6;
            Reply::Json(
                200,
                json!({
                    "now_us": now, "window_s": window_s,
                    "overall": a[0], "top_tools": a[1].top_targets, "top_models": a[2].top_targets,
                }),
            )
        }
        Err(e) => unavailable(e),
    }
}

/// Every pinned tool; a quarantined one with the diff of its change.
pub(crate) fn tools_view(node: &Shared) -> Reply {
    let pins = match StateStore::open(&node.startup.server.data_dir).and_then(|s| s.pinned_tools())
    {
        Ok(p) => p,
        Err(e) => return unavailable(e),
    };
    let tools: Vec<Value> = pins
        .iter()
        .map(|t| {
            let approved = parse_definition(&t.approved_definition);
            let pending = parse_definition(&t.pending_definition);
            let changes = if t.quarantined {
                definition_changes(&approved, &pending)
            } else {
                Vec::new()
            };
            json!({
                "name": lattice_mcp::tools::federated_name(&t.server, &t.tool),
                "server": t.server, "tool": t.tool,
                "approved_hash": t.approved_hash, "pending_hash": t.pending_hash,
                "quarantined": t.quarantined,
                "approved_definition": approved, "pending_definition": pending,
                "changes": changes,
            })
        })
        .collect();
    Reply::Json(200, json!({"tools": tools}))
}

/// Approves a quarantined tool's pending definition.
pub(crate) fn approve_tool(node: &Shared, name: &str) -> Reply {
    let Some((server, tool)) = lattice_mcp::tools::split_federated(name) else {
        return bad(format!(
            "`{name}` is not a federated tool name (<server>__<tool>)"
        ));
    };
    match StateStore::open(&node.startup.server.data_dir).and_then(|s| s.approve_tool(server, tool))
    {
        Ok(hash) => Reply::Json(200, json!({"approved": name, "hash": hash})),
        Err(e) => Reply::Json(
            404,
            json!({"error": {"code": "not_found", "message": e.to_string()}}),
        ),
    }
}

/// The active policy set.
pub(crate) fn policies_view(runtime: &Runtime) -> Value {
    let policies: Vec<Value> = runtime
        .policy
        .policy_ids()
        .map(|id| json!({"id": id, "text": runtime.policy.policy_text(id)}))
        .collect();
    json!({
        "digest": runtime.policy_digest,
        "files": runtime.config.policy.files,
        "shadow": runtime.policy.has_shadow(),
        "policies": policies,
        "invariants": runtime.invariants,
        "invariants_proved_us": runtime.built_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_filters_parse_and_refuse_what_they_do_not_know() {
        let now = 10_000_000_000;
        let p = parse_audit_params(
            "since=15m&principal=alice%40acme&kind=llm.chat&format=csv",
            now,
        )
        .unwrap();
        assert_eq!(p.query.from_us, Some(now - 900_000_000));
        assert_eq!(p.query.principal.as_deref(), Some("alice@acme"));
        assert_eq!(p.query.kind.as_deref(), Some("llm.chat"));
        assert!(p.csv && !p.clickhouse);
        // Empty values are no filter.
        let p = parse_audit_params("target=&decision=deny&since=30", now).unwrap();
        assert_eq!(p.query.target, None);
        assert_eq!(p.query.from_us, Some(now - 30_000_000));
        for (q, msg) in [
            ("colour=red", "unknown parameter `colour`"),
            ("since=soon", "since `soon`"),
            ("limit=-1", "not a whole number"),
            ("format=xml", "format `xml`"),
            ("target=%zz", "percent-encoded"),
        ] {
            let e = parse_audit_params(q, now).unwrap_err();
            assert!(e.contains(msg), "{q}: {e}");
        }
    }

    #[test]
    fn a_definition_change_is_listed_field_by_field() {
        let before = json!({"name": "t", "description": "adds", "inputSchema": {"type": "object"}});
        let after = json!({"name": "t", "description": "adds; also email the result", "inputSchema": {"type": "object"}, "title": "T"});
        let changes = definition_changes(&before, &after);
        assert_eq!(
            changes,
            vec![
                json!({"field": "description", "before": "adds", "after": "adds; also email the result"}),
                json!({"field": "title", "before": null, "after": "T"}),
            ]
        );
    }

    #[test]
    fn what_if_bodies_are_checked() {
        let r = check_whatif(br#"{"principal": {"id": "a", "type": "Human"}, "action": "admin.read_audit", "resource": {"type": "Tenant", "id": "t"}}"#).unwrap();
        assert!(r.context.time > 0);
        let e = check_whatif(
            br#"{"principal": {"id": "a"}, "action": "fly", "resource": {"type": "Gateway"}}"#,
        )
        .unwrap_err();
        assert!(e.contains("fly"), "{e}");
        assert!(check_candidate(b"{}").unwrap_err().contains("policies"));
        assert_eq!(check_candidate(br#"{"policies": "x"}"#).unwrap(), "x");
    }
}
