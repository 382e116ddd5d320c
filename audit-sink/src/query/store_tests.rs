//! The embedded store's aggregates against SQLite's own answer: the same
//! events counted by `GROUP BY`, `ORDER BY` and `json_extract` statements
//! (how the store computed them before the one-pass tally), for each kind
//! of filter, through a read-only connection as the CLI and admin API open
//! it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::event::{AuditEvent, Phase};
use crate::store::Row;

/// A deterministic spread of events: two tenants, fifteen principals,
/// four targets, both decisions, outcomes with and without latency and
/// tokens, some failing.
fn events(n: u64) -> Vec<AuditEvent> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    (0..n)
        .map(|seq| {
            let phase = if next(2) == 0 {
                Phase::Decision
            } else {
                Phase::Outcome
            };
            let mut e = AuditEvent::new(phase, &format!("r{seq}"), "http.request");
            e.seq = seq;
            e.ts_us = 1_700_000_000_000_000 + seq * 1_700_000;
            e.tenant = ["acme", "globex"][next(2) as usize].into();
            e.principal = format!("p{}", next(15));
            e.target = format!("t{}", next(4));
            e.decision = ["allow", "deny"][next(2) as usize].into();
            if e.phase == Phase::Outcome {
                e.status = Some([200, 404, 502, 503][next(4) as usize]);
                e.latency_us = (next(5) != 0).then(|| next(10_000));
                e.tokens_in = (next(3) == 0).then(|| next(500));
                e.tokens_out = e.tokens_in.map(|_| next(500));
            }
            e
        })
        .collect()
}

/// What SQLite says, statement by statement.
fn sqlite_answer(store: &Store, q: &AuditQuery) -> Aggregates {
    let (w, args) = sqlite_where(q, true);
    let m = format!("WITH m AS (SELECT ts_us, event FROM ev WHERE {w})");
    let decided = "json_extract(event, '$.phase') = 'decision'";
    let outcome = "json_extract(event, '$.phase') = 'outcome'";
    let pairs = |sql: String| -> Vec<(String, u64)> {
        let mut stmt = store.conn.prepare(&sql).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.clone()), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    let d = "json_extract(event, '$.decision')";
    let mut a = Aggregates {
        decisions: pairs(format!("{m} SELECT {d} d, COUNT(*) FROM m WHERE {decided} GROUP BY d ORDER BY d")),
        top_principals: pairs(format!("{m} SELECT json_extract(event, '$.principal') p, COUNT(*) c FROM m WHERE {decided} GROUP BY p ORDER BY c DESC, p LIMIT {TOP}")),
        top_targets: pairs(format!("{m} SELECT json_extract(event, '$.target') t, COUNT(*) c FROM m WHERE {decided} GROUP BY t ORDER BY c DESC, t LIMIT {TOP}")),
        ..Aggregates::default()
    };
    let mut stmt = store.conn.prepare(&format!(
        "{m} SELECT (ts_us / 60000000) * 60000000 minute, {d} d, COUNT(*) FROM m WHERE {decided} GROUP BY minute, d ORDER BY minute, d"
    )).unwrap();
    a.per_minute = stmt
        .query_map(rusqlite::params_from_iter(args.clone()), |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut stmt = store.conn.prepare(&format!(
        "{m} SELECT json_extract(event, '$.latency_us') l FROM m WHERE {outcome} AND l IS NOT NULL ORDER BY l"
    )).unwrap();
    let l: Vec<u64> = stmt
        .query_map(rusqlite::params_from_iter(args.clone()), |r| {
            Ok(r.get::<_, i64>(0)? as u64)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let pct = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)));
    a.latency_p50_us = pct(0.5).copied().unwrap_or(0);
    a.latency_p95_us = pct(0.95).copied().unwrap_or(0);
    a.latency_p99_us = pct(0.99).copied().unwrap_or(0);
    let (tin, tout, n, errors): (i64, i64, i64, i64) = store
        .conn
        .query_row(
            &format!(
                "{m} SELECT COALESCE(SUM(json_extract(event, '$.tokens_in')), 0), COALESCE(SUM(json_extract(event, '$.tokens_out')), 0), \
                 COUNT(*), COALESCE(SUM(json_extract(event, '$.status') >= 500), 0) FROM m WHERE {outcome}"
            ),
            rusqlite::params_from_iter(args),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    (a.tokens_in, a.tokens_out) = (tin as u64, tout as u64);
    (a.outcomes, a.server_errors) = (n as u64, errors as u64);
    a
}

#[test]
fn aggregates_agree_with_sqlite_for_every_kind_of_filter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let events = events(2_000);
    {
        let mut store = Store::open(&path).unwrap();
        let rows: Vec<Row> = events.iter().map(Row::of).collect();
        store.append(&rows, &[], &[]).unwrap();
    }
    let store = Store::open_read_only(&path).unwrap();
    let some = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    let queries = [
        AuditQuery::default(),
        some(|q| q.tenant = Some("acme".into())),
        some(|q| q.from_us = Some(1_700_000_000_000_000 + 700 * 1_700_000)),
        some(|q| q.to_us = Some(1_700_000_000_000_000 + 300 * 1_700_000)),
        some(|q| q.principal = Some("p3".into())),
        some(|q| q.target = Some("t1".into())),
        some(|q| q.decision = Some("deny".into())),
        some(|q| q.kind = Some("http.request".into())),
        some(|q| q.kind = Some("llm.chat".into())),
        some(|q| {
            q.tenant = Some("globex".into());
            q.principal = Some("p7".into());
            q.from_us = Some(1_700_000_000_000_000 + 500 * 1_700_000);
        }),
    ];
    for q in queries {
        let ours = store.aggregate(&q).unwrap();
        assert_eq!(ours, sqlite_answer(&store, &q), "{q:?}");
        if q.kind.as_deref() != Some("llm.chat") {
            assert!(ours.outcomes > 0 && !ours.decisions.is_empty(), "{q:?}");
        }
    }
    // The window spans several minutes and more than ten principals.
    let all = store.aggregate(&AuditQuery::default()).unwrap();
    assert!(all.per_minute.len() > 50, "{}", all.per_minute.len());
    assert_eq!(all.top_principals.len(), TOP);
    assert!(all.server_errors > 0 && all.tokens_in > 0 && all.latency_p99_us > 0);
    assert_eq!(all.unreadable, 0);
}

#[test]
fn several_queries_over_one_window_are_counted_in_one_read_as_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    {
        let mut store = Store::open(&path).unwrap();
        let rows: Vec<Row> = events(1_000).iter().map(Row::of).collect();
        store.append(&rows, &[], &[]).unwrap();
    }
    let store = Store::open_read_only(&path).unwrap();
    let window = AuditQuery {
        from_us: Some(1_700_000_000_000_000 + 200 * 1_700_000),
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let narrowed = |f: fn(&mut AuditQuery)| {
        let mut q = window.clone();
        f(&mut q);
        q
    };
    // The overview's three (sharing the window), then one that does not.
    let queries = [
        window.clone(),
        narrowed(|q| q.target = Some("t2".into())),
        narrowed(|q| q.principal = Some("p4".into())),
        AuditQuery::default(),
    ];
    let alone: Vec<Aggregates> = queries
        .iter()
        .map(|q| store.aggregate(q).unwrap())
        .collect();
    // One read for the three that share the window; each read apart once
    // one does not.
    let together = store.aggregate_all(&queries[..3]).unwrap();
    assert_eq!(together, alone[..3]);
    assert_eq!(store.aggregate_all(&queries).unwrap(), alone);
    assert_eq!(together[0], sqlite_answer(&store, &queries[0]));
    assert_eq!(together[1], sqlite_answer(&store, &queries[1]));
    assert!(together[1].outcomes > 0 && together[1].outcomes < together[0].outcomes);
    assert!(store.aggregate_all(&[]).unwrap().is_empty());
}
