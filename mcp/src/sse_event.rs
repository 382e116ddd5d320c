//! Server-sent events as MCP servers send them (the legacy HTTP+SSE
//! transport's stream, streamable HTTP's answers and GET stream): framing a
//! byte stream into events, and an event's name and data. The one reader
//! of SSE text in the gateway, property-tested against arbitrary input
//! (`gateway/tests/parsers.rs`).
//!
//! Must never: panic on any input, or hold more than the caller's buffer.

/// (event name, data) of one server-sent event.
pub fn parse_event(text: &str) -> (String, String) {
    let mut name = String::from("message");
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (name, data.join("\n"))
}

/// The data of one event (its `data:` lines, joined).
pub fn event_data(event: &str) -> String {
    parse_event(event).1
}

/// Takes the first complete event (ended by a blank line, `\n\n` or
/// `\r\n\r\n`) off the front of `buf`, line ends made `\n`.
pub fn next_event(buf: &mut Vec<u8>) -> Option<String> {
    // Whichever blank line comes first.
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let (at, sep) = match (lf, crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let event: Vec<u8> = buf.drain(..at + sep).collect();
    Some(String::from_utf8_lossy(&event[..at]).replace("\r\n", "\n"))
}
