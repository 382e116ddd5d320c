//! The server-sent-events filter on a streamed completion: it passes whole
//! events through unchanged, reads the usage chunk (the one whose `choices`
//! is empty and which carries `usage`), and drops that chunk when the agent
//! did not ask for it. Bytes of an incomplete event wait for the rest.

use bytes::Bytes;
use serde_json::Value;

use crate::openai::{usage_of, Usage};

/// Incremental filter over a backend's stream.
#[derive(Debug, Default)]
pub struct UsageFilter {
    buf: Vec<u8>,
    strip: bool,
    /// The usage the stream reported, once seen.
    pub usage: Option<Usage>,
    /// `data: [DONE]` was seen: the stream ended properly.
    pub done: bool,
    /// The backend sent an error event inside the stream.
    pub error: Option<String>,
}

fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

impl UsageFilter {
    /// `strip`: remove the usage chunk from what is forwarded.
    pub fn new(strip: bool) -> Self {
        Self {
            strip,
            ..Self::default()
        }
    }

    /// Takes a chunk from the backend; returns the bytes to forward now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buf.len());
        let mut start = 0;
        while let Some((at, sep)) = event_end(&buf[start..]) {
            let end = start + at + sep;
            if self.keep(&buf[start..start + at]) {
                out.extend_from_slice(&buf[start..end]);
            }
            start = end;
        }
        buf.drain(..start);
        self.buf = buf;
        Bytes::from(out)
    }

    /// The stream ended: whatever incomplete event is left, as it is.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }

    /// Reads one event; false means drop it.
    fn keep(&mut self, event: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(event) else {
            return true;
        };
        // Most events are content chunks: pass them without parsing.
        if !text.contains("[DONE]") && !text.contains("\"usage\"") && !text.contains("\"error\"") {
            return true;
        }
        let data: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        if data.trim() == "[DONE]" {
            self.done = true;
            return true;
        }
        if !data.contains("\"usage\"") && !data.contains("\"error\"") {
            return true;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return true;
        };
        if let Some(e) = v.get("error") {
            self.error = Some(
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error event")
                    .to_string(),
            );
        }
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
            let usage_only = v
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| c.is_empty());
            if self.strip && usage_only {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn usage_is_read_and_stripped_across_chunk_boundaries() {
        let mut f = UsageFilter::new(true);
        let mut out = Vec::new();
        for piece in STREAM.as_bytes().chunks(7) {
            out.extend_from_slice(&f.push(piece));
        }
        out.extend_from_slice(&f.finish());
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("usage"), "{out}");
        assert!(out.starts_with("data: {\"choices\":[{\"delta\""));
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(
            f.usage,
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 1
            })
        );
        assert!(f.done);
    }

    #[test]
    fn usage_the_agent_asked_for_passes_through() {
        let mut f = UsageFilter::new(false);
        let out = f.push(STREAM.as_bytes());
        assert_eq!(&out[..], STREAM.as_bytes());
        assert_eq!(f.usage.map(|u| u.prompt_tokens), Some(4));
    }

    #[test]
    fn an_incomplete_event_waits_and_errors_are_seen() {
        let mut f = UsageFilter::new(true);
        assert!(f
            .push(b"data: {\"error\":{\"message\":\"boom\"}}")
            .is_empty());
        assert_eq!(
            &f.push(b"\r\n\r\n")[..],
            b"data: {\"error\":{\"message\":\"boom\"}}\r\n\r\n"
        );
        assert_eq!(f.error.as_deref(), Some("boom"));
        assert!(!f.done);
    }
}
