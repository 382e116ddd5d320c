//! The embedded store's aggregates, counted in one pass over the matching
//! events: each event's JSON is read once and folded here, so a window of
//! millions of events needs neither SQLite's temporary tables nor its
//! sorter — both spill to temporary files, which a read-only root
//! filesystem refuses ("disk I/O error"), and five statements each
//! re-reading the window cost five times the reading. Memory: the distinct
//! principals, targets and minutes, plus 8 bytes per outcome with a
//! latency (the exact percentiles).
//!
//! Must never disagree with ClickHouse's aggregates over the same events
//! (`aggregate_clickhouse`): the same orders, the same nearest-rank
//! percentiles, the same missing-field rules.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::{Aggregates, AuditQuery, TOP};

/// The fields aggregates read from an event (the rest is skipped).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Fields<'a> {
    #[serde(borrow)]
    phase: Cow<'a, str>,
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(borrow)]
    principal: Cow<'a, str>,
    #[serde(borrow)]
    target: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    status: Option<u64>,
    latency_us: Option<u64>,
    tokens_in: Option<u64>,
    tokens_out: Option<u64>,
}

/// Aggregates being counted.
#[derive(Default)]
pub(super) struct Tally {
    decisions: HashMap<String, u64>,
    /// Decisions by minute start (µs), then by decision.
    per_minute: BTreeMap<u64, HashMap<String, u64>>,
    principals: HashMap<String, u64>,
    targets: HashMap<String, u64>,
    latencies: Vec<u64>,
    tokens_in: u64,
    tokens_out: u64,
    outcomes: u64,
    server_errors: u64,
    /// Events whose JSON could not be read (a damaged segment record reads
    /// as empty): not counted, and `lattice audit verify` names them.
    unreadable: u64,
}

const MINUTE_US: u64 = 60_000_000;

/// An event's fields, or None when its JSON cannot be read.
pub(super) fn parse(json: &str) -> Option<Fields<'_>> {
    serde_json::from_str(json).ok()
}

fn bump(map: &mut HashMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// Every key with its count, by key.
fn sorted(map: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = map.into_iter().collect();
    all.sort_unstable();
    all
}

/// The `TOP` keys by count, ties by key.
fn top(map: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = map.into_iter().collect();
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP);
    all
}

impl Tally {
    /// Counts one event (`ts_us`: the store's column) if it matches the
    /// query's event-field filters; the store has already applied the
    /// time window and the tenant.
    #[cfg(test)]
    pub(super) fn add(&mut self, q: &AuditQuery, ts_us: u64, json: &str) {
        match parse(json) {
            Some(f) => self.add_fields(q, ts_us, &f),
            None => self.add_unreadable(),
        }
    }

    /// An event whose JSON could not be read.
    pub(super) fn add_unreadable(&mut self) {
        self.unreadable += 1;
    }

    /// `add`, with the event already read (`parse`): several tallies of
    /// the same window read each event once.
    pub(super) fn add_fields(&mut self, q: &AuditQuery, ts_us: u64, f: &Fields) {
        let wanted = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !(wanted(&q.principal, &f.principal)
            && wanted(&q.kind, &f.kind)
            && wanted(&q.target, &f.target)
            && wanted(&q.decision, &f.decision))
        {
            return;
        }
        match &*f.phase {
            "decision" => {
                bump(&mut self.decisions, &f.decision);
                let minute = self.per_minute.entry(ts_us / MINUTE_US * MINUTE_US);
                bump(minute.or_default(), &f.decision);
                bump(&mut self.principals, &f.principal);
                bump(&mut self.targets, &f.target);
            }
            "outcome" => {
                self.outcomes += 1;
                self.latencies.extend(f.latency_us);
                self.tokens_in += f.tokens_in.unwrap_or(0);
                self.tokens_out += f.tokens_out.unwrap_or(0);
                self.server_errors += u64::from(f.status.is_some_and(|s| s >= 500));
            }
            _ => {}
        }
    }

    pub(super) fn finish(mut self) -> Aggregates {
        self.latencies.sort_unstable();
        let l = &self.latencies;
        // ClickHouse's quantileExact: the element at floor(p * n).
        let pct = |p: f64| -> u64 {
            match l.len() {
                0 => 0,
                n => l[((n as f64 * p) as usize).min(n - 1)],
            }
        };
        Aggregates {
            latency_p50_us: pct(0.5),
            latency_p95_us: pct(0.95),
            latency_p99_us: pct(0.99),
            decisions: sorted(self.decisions),
            per_minute: self
                .per_minute
                .into_iter()
                .flat_map(|(m, ds)| sorted(ds).into_iter().map(move |(d, n)| (m, d, n)))
                .collect(),
            top_principals: top(self.principals),
            top_targets: top(self.targets),
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            outcomes: self.outcomes,
            server_errors: self.server_errors,
            unreadable: self.unreadable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(principal: &str, target: &str, decision: &str) -> String {
        serde_json::json!({
            "phase": "decision", "principal": principal, "target": target,
            "kind": "http", "decision": decision, "reason": "x \"quoted\" \\ escaped",
        })
        .to_string()
    }

    fn outcome(latency: Option<u64>, status: u16, tokens: Option<(u64, u64)>) -> String {
        serde_json::json!({
            "phase": "outcome", "principal": "p", "target": "t", "kind": "http",
            "decision": "allow", "status": status, "latency_us": latency,
            "tokens_in": tokens.map(|t| t.0), "tokens_out": tokens.map(|t| t.1),
        })
        .to_string()
    }

    #[test]
    fn counts_decisions_minutes_and_tops_in_the_orders_clickhouse_uses() {
        let q = AuditQuery::default();
        let mut t = Tally::default();
        // 12 principals: b×3, a×3 (a tie, broken by name), then ten of one
        // call each, of which only the first eight by name make the top 10.
        for _ in 0..3 {
            t.add(&q, 61_000_000, &decision("b", "echo", "allow"));
            t.add(&q, 1_000_000, &decision("a", "echo", "deny"));
        }
        for i in (0..10).rev() {
            t.add(
                &q,
                125_000_000,
                &decision(&format!("p{i}"), "weather", "allow"),
            );
        }
        let a = t.finish();
        assert_eq!(a.decisions, [("allow".into(), 13), ("deny".into(), 3)]);
        assert_eq!(
            a.per_minute,
            [
                (0, "deny".into(), 3),
                (60_000_000, "allow".into(), 3),
                (120_000_000, "allow".into(), 10)
            ]
        );
        let names: Vec<&str> = a.top_principals.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b", "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]
        );
        assert_eq!(a.top_principals[0].1, 3);
        assert_eq!(a.top_targets, [("weather".into(), 10), ("echo".into(), 6)]);
        assert_eq!(a.outcomes, 0);
    }

    #[test]
    fn percentiles_are_nearest_rank_and_missing_fields_count_as_nothing() {
        let q = AuditQuery::default();
        let mut t = Tally::default();
        // Latencies 100..=1 in reverse order, one outcome without one.
        for l in (1..=100).rev() {
            t.add(
                &q,
                0,
                &outcome(Some(l), if l > 98 { 502 } else { 200 }, Some((l, 1))),
            );
        }
        t.add(&q, 0, &outcome(None, 200, None));
        let a = t.finish();
        // floor(p * 100) of 1..=100: the 51st, 96th and 100th values.
        assert_eq!(
            (a.latency_p50_us, a.latency_p95_us, a.latency_p99_us),
            (51, 96, 100)
        );
        assert_eq!((a.outcomes, a.server_errors), (101, 2));
        assert_eq!((a.tokens_in, a.tokens_out), (5050, 100));
        assert!(a.decisions.is_empty() && a.top_principals.is_empty());
        let empty = Tally::default().finish();
        assert_eq!(empty, Aggregates::default());
    }

    #[test]
    fn event_field_filters_narrow_and_unreadable_events_are_counted_apart() {
        let cases: [(AuditQuery, u64); 5] = [
            (AuditQuery::default(), 3),
            (
                AuditQuery {
                    principal: Some("a".into()),
                    ..Default::default()
                },
                2,
            ),
            (
                AuditQuery {
                    target: Some("weather".into()),
                    ..Default::default()
                },
                1,
            ),
            (
                AuditQuery {
                    decision: Some("deny".into()),
                    ..Default::default()
                },
                1,
            ),
            (
                AuditQuery {
                    kind: Some("llm.chat".into()),
                    ..Default::default()
                },
                0,
            ),
        ];
        for (q, want) in cases {
            let mut t = Tally::default();
            t.add(&q, 0, &decision("a", "echo", "allow"));
            t.add(&q, 0, &decision("a", "weather", "deny"));
            t.add(&q, 0, &decision("b", "echo", "allow"));
            t.add(&q, 0, "");
            t.add(&q, 0, "{\"phase\": ");
            let a = t.finish();
            assert_eq!(a.unreadable, 2);
            let got: u64 = a.decisions.iter().map(|d| d.1).sum();
            assert_eq!(got, want, "{q:?}");
        }
    }
}
