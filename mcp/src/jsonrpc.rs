//! JSON-RPC 2.0 as MCP uses it: parsing a message with a size cap and a
//! nesting-depth cap (a hostile body must not exhaust the parser), and the
//! error codes of the specification.

use serde_json::{json, Value};

use crate::McpError;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Has an id and a method.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// Has a method and no id.
    Notification { method: String, params: Value },
    /// Has an id and a result or an error.
    Response {
        id: Value,
        outcome: Result<Value, Value>,
    },
}

/// Deepest nesting accepted anywhere in a message.
pub const MAX_DEPTH: usize = 64;

fn depth_ok(bytes: &[u8], max: usize) -> bool {
    // Counts brackets outside strings: a cheap pre-check that runs before
    // serde_json builds anything.
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parses one message. `max_bytes` bounds the input.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Message, McpError> {
    if bytes.len() > max_bytes {
        return Err(McpError::InvalidRequest(format!(
            "message exceeds {max_bytes} bytes"
        )));
    }
    if !depth_ok(bytes, MAX_DEPTH) {
        return Err(McpError::InvalidRequest(format!(
            "message nests deeper than {MAX_DEPTH}"
        )));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| McpError::Parse(e.to_string()))?;
    from_value(v)
}

/// Classifies an already parsed value.
pub fn from_value(v: Value) -> Result<Message, McpError> {
    let Value::Object(mut o) = v else {
        return Err(McpError::InvalidRequest(
            "a message must be a JSON object".into(),
        ));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(McpError::InvalidRequest("`jsonrpc` must be \"2.0\"".into()));
    }
    let id = o.remove("id");
    if let Some(id) = &id {
        if !(id.is_string() || id.is_i64() || id.is_u64()) {
            return Err(McpError::InvalidRequest(
                "`id` must be a string or an integer".into(),
            ));
        }
    }
    let params = o.remove("params").unwrap_or(Value::Null);
    if !(params.is_null() || params.is_object() || params.is_array()) {
        return Err(McpError::InvalidRequest(
            "`params` must be an object or an array".into(),
        ));
    }
    match (o.remove("method"), id) {
        (Some(Value::String(method)), Some(id)) => Ok(Message::Request { id, method, params }),
        (Some(Value::String(method)), None) => Ok(Message::Notification { method, params }),
        (Some(_), _) => Err(McpError::InvalidRequest("`method` must be a string".into())),
        (None, Some(id)) => {
            let outcome = match (o.remove("result"), o.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(e),
                _ => {
                    return Err(McpError::InvalidRequest(
                        "a response has exactly one of `result` and `error`".into(),
                    ))
                }
            };
            Ok(Message::Response { id, outcome })
        }
        (None, None) => Err(McpError::InvalidRequest(
            "neither a request nor a response".into(),
        )),
    }
}

/// An error response.
pub fn error_response(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(d) = data {
        error["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// A result response.
pub fn result_response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, 1024).unwrap();
        assert!(matches!(m, Message::Request { ref method, .. } if method == "tools/list"));
        let m = parse(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            1024,
        )
        .unwrap();
        assert!(matches!(m, Message::Notification { .. }));
        let m = parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#, 1024).unwrap();
        assert!(matches!(m, Message::Response { outcome: Ok(_), .. }));
    }

    #[test]
    fn refuses_malformed_messages_with_the_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"{not json", "parse error"),
            (b"[1,2]", "must be a JSON object"),
            (
                br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
                "must be \"2.0\"",
            ),
            (
                br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
                "string or an integer",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
                "`method` must be a string",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
                "`params` must be",
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
                "exactly one of",
            ),
        ];
        for (input, want) in cases {
            let err = parse(input, 1024).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bounds_size_and_depth() {
        let big = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "x".repeat(2000)
        );
        assert!(parse(big.as_bytes(), 1024)
            .unwrap_err()
            .to_string()
            .contains("exceeds 1024 bytes"));
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse(deep.as_bytes(), 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("nests deeper"));
        // Brackets inside strings do not count.
        let fine = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
            "[".repeat(100)
        );
        assert!(parse(fine.as_bytes(), 1 << 20).is_ok());
    }
}
