//! Reading an OpenAI-style chat stream (server-sent events) as it arrives:
//! bytes in, `data:` payloads out, then each payload as a content delta, the
//! end, or the gateway's in-band error event.

use serde_json::Value;

/// Splits a byte stream into the data of complete events.
#[derive(Debug, Default)]
pub struct Parser {
    buf: String,
    pending: Vec<u8>,
}

impl Parser {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        // Keep an incomplete UTF-8 sequence for the next chunk.
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text: Vec<u8> = self.pending.drain(..valid).collect();
        self.buf
            .push_str(&String::from_utf8_lossy(&text).replace("\r\n", "\n"));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

/// What one event means to a chat view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Text(String),
    Done,
    Nothing,
}

/// One event's data: content to append, the end, or an error.
pub fn chat_delta(data: &str) -> Result<Delta, String> {
    if data.trim() == "[DONE]" {
        return Ok(Delta::Done);
    }
    let v: Value =
        serde_json::from_str(data).map_err(|e| format!("unreadable stream event: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(crate::view::error_text(
            502,
            &serde_json::json!({"error": err}),
        ));
    }
    Ok(v.pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map_or(Delta::Nothing, |s| Delta::Text(s.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_utf8_boundaries() {
        let mut p = Parser::default();
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\"}}]}\r\n\r\n: keepalive\n\ndata: [DONE]\n\n";
        let bytes = stream.as_bytes();
        let mut events = Vec::new();
        for chunk in bytes.chunks(5) {
            events.extend(p.push(chunk));
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(chat_delta(&events[0]), Ok(Delta::Text("h\u{e9}".into())));
        assert_eq!(chat_delta(&events[1]), Ok(Delta::Done));
    }

    #[test]
    fn an_in_band_error_event_is_an_error() {
        let e = chat_delta(
            r#"{"error":{"message":"backend failed mid-stream","type":"upstream_error"}}"#,
        );
        assert_eq!(e, Err("502: backend failed mid-stream".to_string()));
        assert_eq!(
            chat_delta(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#),
            Ok(Delta::Nothing)
        );
        assert!(chat_delta("not json").is_err());
    }
}
