//! Plain helpers the pages share: error texts from API replies, query
//! strings, short hashes, numbers.

use serde_json::Value;

/// The message a failed API call shows: the status and the gateway's own
/// words (admin API and OpenAI error shapes alike).
pub fn error_text(status: u16, body: &Value) -> String {
    let e = &body["error"];
    let msg = e["message"]
        .as_str()
        .or_else(|| e.as_str())
        .or_else(|| e["code"].as_str())
        .or_else(|| body.as_str())
        .unwrap_or("no details");
    format!("{status}: {msg}")
}

/// `k=v&...` with values percent-encoded; empty values left out.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", enc(v.trim())))
        .collect::<Vec<_>>()
        .join("&")
}

/// The first 12 hex digits of a `sha256:...` hash.
pub fn short_hash(h: &str) -> String {
    let hex = h.rsplit(':').next().unwrap_or(h);
    hex.chars().take(12).collect()
}

/// Microseconds as a short duration.
pub fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// A ratio as a percentage.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn helpers() {
        assert_eq!(
            error_text(
                403,
                &json!({"error": {"code": "forbidden", "message": "denied by policy"}})
            ),
            "403: denied by policy"
        );
        assert_eq!(
            error_text(404, &json!({"error": {"code": "not_found"}})),
            "404: not_found"
        );
        assert_eq!(error_text(500, &json!("boom")), "500: boom");
        assert_eq!(
            query_string(&[("principal", "alice@acme"), ("kind", ""), ("since", "15m")]),
            "principal=alice%40acme&since=15m"
        );
        assert_eq!(short_hash("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(micros(1_500), "1.5 ms");
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(1, 0), "–");
    }
}
