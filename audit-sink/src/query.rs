//! Reading the audit trail back: filtered events and aggregates, from the
//! embedded store or ClickHouse, with tenant scoping. A query made under a
//! tenant scope can only ever see that tenant's rows: the scope is applied
//! here, not by callers remembering to add a filter. Aggregates count each
//! event once even where ClickHouse holds duplicates of a retried insert.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoredEvent};
use crate::AuditError;

#[cfg(test)]
mod store_tests;
mod tally;

/// Most rows one query returns.
pub const MAX_LIMIT: usize = 10_000;

/// Filters. Every field narrows; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    pub from_us: Option<u64>,
    pub to_us: Option<u64>,
    pub tenant: Option<String>,
    pub principal: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub decision: Option<String>,
    pub limit: Option<usize>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An operator: every tenant.
    All,
    /// A tenant-scoped auditor.
    Tenant(String),
}

impl AuditQuery {
    /// The query as it may run under `scope`: a tenant scope forces its
    /// tenant, and asking for another tenant is refused.
    pub fn scoped(mut self, scope: &Scope) -> Result<Self, AuditError> {
        if let Scope::Tenant(t) = scope {
            match &self.tenant {
                Some(asked) if asked != t => {
                    return Err(AuditError::Forbidden(format!(
                        "a `{t}` auditor cannot read tenant `{asked}`"
                    )))
                }
                _ => self.tenant = Some(t.clone()),
            }
        }
        Ok(self)
    }

    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, MAX_LIMIT)
    }

    /// `(column, value)` string equality filters.
    fn equalities(&self) -> Vec<(&'static str, &str)> {
        [
            ("tenant", &self.tenant),
            ("principal", &self.principal),
            ("kind", &self.kind),
            ("target", &self.target),
            ("decision", &self.decision),
        ]
        .into_iter()
        .filter_map(|(c, v)| v.as_deref().map(|v| (c, v)))
        .collect()
    }
}

/// Aggregates over the decision and outcome events a query matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Aggregates {
    /// Decision events (one per call) by decision.
    pub decisions: Vec<(String, u64)>,
    /// Decision events per minute: (minute start in µs, decision, count).
    pub per_minute: Vec<(u64, String, u64)>,
    pub top_principals: Vec<(String, u64)>,
    pub top_targets: Vec<(String, u64)>,
    /// Outcome latency percentiles, µs (0 when no outcome matched).
    pub latency_p50_us: u64,
    pub latency_p95_us: u64,
    pub latency_p99_us: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Outcome events, and those with a 5xx status (the error rate).
    pub outcomes: u64,
    pub server_errors: u64,
    /// Events in the window whose record could not be read (a damaged
    /// segment record), not counted above: `lattice audit verify` names
    /// them. Embedded store only; absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub unreadable: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

const TOP: usize = 10;

// ---------- embedded ----------

/// The SQL filter of a query. `event_fields`: also the filters on the
/// event's JSON (the aggregates apply those while folding instead, each
/// event read once).
fn sqlite_where(q: &AuditQuery, event_fields: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses = vec!["1 = 1".to_string()];
    let mut args: Vec<Value> = Vec::new();
    if let Some(f) = q.from_us {
        clauses.push("ts_us >= ?".into());
        args.push(Value::Integer(f as i64));
    }
    if let Some(t) = q.to_us {
        clauses.push("ts_us < ?".into());
        args.push(Value::Integer(t as i64));
    }
    for (col, v) in q.equalities() {
        if col == "tenant" || event_fields {
            clauses.push(format!("{} = ?", field(col)));
            args.push(Value::Text(v.to_string()));
        }
    }
    (clauses.join(" AND "), args)
}

/// An event field in SQL: the indexed `tenant` column, or read from the
/// event's JSON (the store keeps no other column: see `store`).
fn field(name: &str) -> String {
    if name == "tenant" {
        name.to_string()
    } else {
        format!("json_extract(event, '$.{name}')")
    }
}

impl Store {
    /// Matching events, newest first.
    pub fn query(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, AuditError> {
        let (w, mut args) = sqlite_where(q, true);
        args.push(rusqlite::types::Value::Integer(q.limit() as i64));
        let mut stmt = self.conn.prepare(&format!(
            "SELECT seq, event FROM ev WHERE {w} ORDER BY seq DESC LIMIT ?"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            crate::store::stored(r)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Aggregates of the matching events, in one pass (see `tally`).
    pub fn aggregate(&self, q: &AuditQuery) -> Result<Aggregates, AuditError> {
        let mut all = self.aggregate_all(std::slice::from_ref(q))?;
        Ok(all.pop().unwrap_or_default())
    }

    /// Aggregates of several queries, in order. Queries that share their
    /// window and tenant (the workbench overview's: all calls, MCP tools,
    /// models) are counted in one read of the window, each event read once
    /// for all of them; others are read apart.
    pub fn aggregate_all(&self, qs: &[AuditQuery]) -> Result<Vec<Aggregates>, AuditError> {
        let Some(first) = qs.first() else {
            return Ok(Vec::new());
        };
        let window = sqlite_where(first, false);
        if qs.iter().any(|q| sqlite_where(q, false) != window) {
            return qs.iter().map(|q| self.aggregate(q)).collect();
        }
        let (w, args) = window;
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT ts_us, event FROM ev WHERE {w}"))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut tallies: Vec<tally::Tally> = qs.iter().map(|_| tally::Tally::default()).collect();
        while let Some(row) = rows.next()? {
            let ts_us = row.get::<_, i64>(0)? as u64;
            let json = match row.get_ref(1)? {
                rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t).unwrap_or(""),
                _ => "",
            };
            match tally::parse(json) {
                Some(f) => {
                    for (q, t) in qs.iter().zip(&mut tallies) {
                        t.add_fields(q, ts_us, &f);
                    }
                }
                None => tallies.iter_mut().for_each(tally::Tally::add_unreadable),
            }
        }
        Ok(tallies.into_iter().map(tally::Tally::finish).collect())
    }
}

// ---------- ClickHouse ----------

fn ch_where(q: &AuditQuery) -> (String, Vec<String>) {
    let mut clauses = vec!["1 = 1".to_string()];
    let mut args = Vec::new();
    if let Some(f) = q.from_us {
        clauses.push(format!("ts_us >= {f}"));
    }
    if let Some(t) = q.to_us {
        clauses.push(format!("ts_us < {t}"));
    }
    for (col, v) in q.equalities() {
        clauses.push(format!("{col} = ?"));
        args.push(v.to_string());
    }
    (clauses.join(" AND "), args)
}

/// Each event once: duplicates of a retried insert share (node, seq).
fn deduped(w: &str) -> String {
    format!("(SELECT * FROM audit_events WHERE {w} LIMIT 1 BY node, seq)")
}

#[derive(Row, Deserialize)]
struct Pair {
    k: String,
    n: u64,
}

#[derive(Row, Deserialize)]
struct Minute {
    m: u64,
    d: String,
    n: u64,
}

#[derive(Row, Deserialize)]
struct Totals {
    p50: f64,
    p95: f64,
    p99: f64,
    tin: u64,
    tout: u64,
    n: u64,
    errors: u64,
}

#[derive(Row, Deserialize)]
struct EventJson {
    seq: u64,
    event: String,
}

fn bind_all(mut query: clickhouse::query::Query, args: &[String]) -> clickhouse::query::Query {
    for a in args {
        query = query.bind(a.as_str());
    }
    query
}

fn ch_err(e: clickhouse::error::Error) -> AuditError {
    AuditError::ClickHouse(e.to_string())
}

/// Matching events from ClickHouse, newest first, each once.
pub async fn query_clickhouse(
    client: &clickhouse::Client,
    q: &AuditQuery,
) -> Result<Vec<StoredEvent>, AuditError> {
    let (w, args) = ch_where(q);
    let sql = format!(
        "SELECT seq, event FROM {} ORDER BY ts_us DESC, seq DESC LIMIT {}",
        deduped(&w),
        q.limit()
    );
    let rows: Vec<EventJson> = bind_all(client.query(&sql), &args)
        .fetch_all()
        .await
        .map_err(ch_err)?;
    Ok(rows
        .into_iter()
        .map(|r| StoredEvent {
            seq: r.seq,
            json: r.event,
        })
        .collect())
}

/// Aggregates from ClickHouse, counting each event once.
pub async fn aggregate_clickhouse(
    client: &clickhouse::Client,
    q: &AuditQuery,
) -> Result<Aggregates, AuditError> {
    let (w, args) = ch_where(q);
    let decided = deduped(&format!("{w} AND phase = 'decision'"));
    let outcome = deduped(&format!("{w} AND phase = 'outcome'"));
    let pairs = |sql: String| {
        let query = bind_all(client.query(&sql), &args);
        async move {
            let rows: Vec<Pair> = query.fetch_all().await.map_err(ch_err)?;
            Ok::<_, AuditError>(rows.into_iter().map(|p| (p.k, p.n)).collect::<Vec<_>>())
        }
    };
    let mut a = Aggregates {
        decisions: pairs(format!("SELECT decision AS k, count() AS n FROM {decided} GROUP BY k ORDER BY k")).await?,
        top_principals: pairs(format!("SELECT principal AS k, count() AS n FROM {decided} GROUP BY k ORDER BY n DESC, k LIMIT {TOP}")).await?,
        top_targets: pairs(format!("SELECT target AS k, count() AS n FROM {decided} GROUP BY k ORDER BY n DESC, k LIMIT {TOP}")).await?,
        ..Aggregates::default()
    };
    let minutes: Vec<Minute> = bind_all(
        client.query(&format!(
            "SELECT intDiv(ts_us, 60000000) * 60000000 AS m, decision AS d, count() AS n FROM {decided} GROUP BY m, d ORDER BY m, d"
        )),
        &args,
    )
    .fetch_all()
    .await
    .map_err(ch_err)?;
    a.per_minute = minutes.into_iter().map(|r| (r.m, r.d, r.n)).collect();
    // Exact percentiles, nearest rank as the embedded store computes them.
    let t: Totals = bind_all(
        client.query(&format!(
            "SELECT quantileExact(0.5)(toFloat64(latency_us)) AS p50, quantileExact(0.95)(toFloat64(latency_us)) AS p95, \
             quantileExact(0.99)(toFloat64(latency_us)) AS p99, sum(tokens_in) AS tin, sum(tokens_out) AS tout, count() AS n, \
             countIf(status >= 500) AS errors FROM {outcome}"
        )),
        &args,
    )
    .fetch_one()
    .await
    .map_err(ch_err)?;
    if t.n > 0 {
        (a.latency_p50_us, a.latency_p95_us, a.latency_p99_us) =
            (t.p50 as u64, t.p95 as u64, t.p99 as u64);
    }
    (a.tokens_in, a.tokens_out) = (t.tin, t.tout);
    (a.outcomes, a.server_errors) = (t.n, t.errors);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_scope_forces_its_tenant_and_refuses_others() {
        let scope = Scope::Tenant("acme".into());
        let q = AuditQuery::default().scoped(&scope).unwrap();
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        let q = AuditQuery {
            tenant: Some("acme".into()),
            ..Default::default()
        }
        .scoped(&scope)
        .unwrap();
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        let err = AuditQuery {
            tenant: Some("globex".into()),
            ..Default::default()
        }
        .scoped(&scope);
        assert!(err.is_err());
        let q = AuditQuery::default().scoped(&Scope::All).unwrap();
        assert_eq!(q.tenant, None);
    }
}
