//! Exporting events as CSV for spreadsheets and SIEM imports. One row per
//! event, fixed columns; a field that a spreadsheet would run as a formula
//! (starting with `=`, `+`, `-`, `@`, tab or CR) is prefixed with `'` so an
//! exported trail cannot carry a formula injection into the reader's tool.

use crate::AuditEvent;

/// The header row's columns, in order.
pub const CSV_COLUMNS: [&str; 23] = [
    "ts_us",
    "node",
    "seq",
    "phase",
    "request_id",
    "trace_id",
    "tenant",
    "principal",
    "auth_method",
    "kind",
    "target",
    "action",
    "decision",
    "policies",
    "reason",
    "schema_result",
    "upstream",
    "status",
    "latency_us",
    "tokens_in",
    "tokens_out",
    "args_hash",
    "result_hash",
];

fn field(out: &mut String, value: &str) {
    let guarded = matches!(
        value.chars().next(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r')
    );
    let quote = guarded || value.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
        if guarded {
            out.push('\'');
        }
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The events as CSV (RFC 4180, CRLF line ends), with a header row.
pub fn to_csv(events: &[AuditEvent]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    for e in events {
        let phase = match e.phase {
            crate::Phase::Decision => "decision",
            crate::Phase::Outcome => "outcome",
        };
        let values = [
            e.ts_us.to_string(),
            e.node.clone(),
            e.seq.to_string(),
            phase.to_string(),
            e.request_id.clone(),
            e.trace_id.clone(),
            e.tenant.clone(),
            e.principal.clone(),
            e.auth_method.clone(),
            e.kind.clone(),
            e.target.clone(),
            e.action.clone(),
            e.decision.clone(),
            e.policies.join(";"),
            e.reason.clone(),
            opt(&e.schema_result),
            opt(&e.upstream),
            opt(&e.status),
            opt(&e.latency_us),
            opt(&e.tokens_in),
            opt(&e.tokens_out),
            opt(&e.args_hash),
            opt(&e.result_hash),
        ];
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, v);
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Phase;

    #[test]
    fn rows_are_quoted_and_formulas_defused() {
        let mut e = AuditEvent::new(Phase::Decision, "r1", "mcp.call_tool");
        e.principal = "alice".into();
        e.target = "=HYPERLINK(\"x\")".into();
        e.reason = "a, \"quoted\"\nreason".into();
        e.policies = vec!["p1".into(), "p2".into()];
        e.status = Some(200);
        let csv = to_csv(&[e]);
        let mut lines = csv.split("\r\n");
        assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
        let row = lines.next().unwrap();
        assert!(row.contains(",alice,"), "{row}");
        assert!(row.contains(",\"'=HYPERLINK(\"\"x\"\")\","), "{row}");
        assert!(row.contains("\"a, \"\"quoted\"\"\nreason\""), "{row}");
        assert!(row.contains(",p1;p2,"), "{row}");
        assert!(row.contains(",200,"), "{row}");
        assert_eq!(row.matches(',').count(), 22 + 1, "{row}");
    }
}
