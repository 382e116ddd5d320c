//! The OpenAI API shapes the gateway checks and rewrites: which endpoint, the
//! request checks (step 4 of the enforcement path), the body sent upstream
//! (the route's upstream model name; `stream_options.include_usage` asked
//! for on every stream), usage, and errors in OpenAI's format.

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use crate::InferenceError;

/// The agent-facing endpoints that reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            _ => None,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
        }
    }

    /// The audit kind.
    pub fn kind(self) -> &'static str {
        match self {
            Self::ChatCompletions => "llm.chat",
            Self::Completions => "llm.completion",
            Self::Embeddings => "llm.embed",
        }
    }

    /// Whether the policy action is `embed` (else `chat`).
    pub fn is_embedding(self) -> bool {
        self == Self::Embeddings
    }
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub endpoint: Endpoint,
    /// The model the agent asked for (a route name or alias).
    pub model: String,
    pub stream: bool,
    /// The agent did not ask for the usage chunk: the gateway asked for it
    /// and removes it from what the agent receives.
    pub strip_usage: bool,
    body: Map<String, Value>,
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

fn bad(message: impl Into<String>, param: Option<&str>) -> InferenceError {
    InferenceError::BadRequest {
        message: message.into(),
        param: param.map(str::to_string),
    }
}

/// Step 4: the request must have the endpoint's OpenAI shape.
pub fn check_request(endpoint: Endpoint, body: &[u8]) -> Result<Prepared, InferenceError> {
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    let Value::Object(obj) = body else {
        return Err(bad("The request body must be a JSON object.", None));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(bad("`model` must be a non-empty string.", Some("model"))),
        None => return Err(bad("You must provide a model parameter.", Some("model"))),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`stream` must be a boolean.", Some("stream"))),
    };
    match endpoint {
        Endpoint::ChatCompletions => {
            let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
                return Err(bad(
                    "`messages` is required and must be an array.",
                    Some("messages"),
                ));
            };
            if messages.is_empty() {
                return Err(bad("`messages` must not be empty.", Some("messages")));
            }
            for (i, m) in messages.iter().enumerate() {
                let param = format!("messages[{i}].role");
                match m.get("role").and_then(Value::as_str) {
                    Some(r) if ROLES.contains(&r) => {}
                    Some(r) => {
                        return Err(bad(
                            format!("Invalid value for `role`: `{r}`; expected one of {ROLES:?}."),
                            Some(&param),
                        ))
                    }
                    None => return Err(bad("Each message needs a string `role`.", Some(&param))),
                }
            }
        }
        Endpoint::Completions => match obj.get("prompt") {
            Some(Value::String(_)) => {}
            Some(Value::Array(a)) if !a.is_empty() => {}
            _ => {
                return Err(bad(
                    "`prompt` is required: a string or a non-empty array.",
                    Some("prompt"),
                ))
            }
        },
        Endpoint::Embeddings => {
            match obj.get("input") {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::Array(a)) if !a.is_empty() => {}
                _ => {
                    return Err(bad(
                        "`input` is required: a non-empty string or array.",
                        Some("input"),
                    ))
                }
            }
            if stream {
                return Err(bad("Embeddings cannot be streamed.", Some("stream")));
            }
        }
    }
    for key in ["max_tokens", "max_completion_tokens", "n"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some() => {}
            Some(_) => {
                return Err(bad(
                    format!("`{key}` must be a non-negative integer."),
                    Some(key),
                ))
            }
        }
    }
    let asked_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Prepared {
        endpoint,
        model,
        stream,
        strip_usage: stream && !asked_usage,
        body: obj,
    })
}

impl Prepared {
    /// The body sent to a backend: the route's upstream model name, and on a
    /// stream `stream_options.include_usage = true` so usage is always known.
    /// Always re-encoded from the parsed request (a duplicate key the
    /// gateway read one way never reaches a backend that might read it
    /// another), without copying it first.
    pub fn upstream_body(&self, upstream_model: &str) -> Bytes {
        let body = Upstream {
            body: &self.body,
            model: upstream_model,
            usage: self.stream,
        };
        // Serializing parsed JSON values into memory cannot fail.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// The request as sent upstream: `body` with `model` replaced and, when
/// `usage`, `stream_options.include_usage` set (`stream_options` made an
/// object when it was not one).
struct Upstream<'a> {
    body: &'a Map<String, Value>,
    model: &'a str,
    usage: bool,
}

impl Serialize for Upstream<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.body {
            match k.as_str() {
                "model" => map.serialize_entry(k, self.model)?,
                "stream_options" if self.usage => map.serialize_entry(k, &WithUsage(v))?,
                _ => map.serialize_entry(k, v)?,
            }
        }
        // `model` is always there: `check_request` requires it.
        if self.usage && !self.body.contains_key("stream_options") {
            map.serialize_entry("stream_options", &WithUsage(&Value::Null))?;
        }
        map.end()
    }
}

/// `stream_options` with `include_usage: true` (its other options kept
/// when it is an object).
struct WithUsage<'a>(&'a Value);

impl Serialize for WithUsage<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(obj) = self.0.as_object() {
            for (k, v) in obj.iter().filter(|(k, _)| *k != "include_usage") {
                map.serialize_entry(k, v)?;
            }
        }
        map.serialize_entry("include_usage", &true)?;
        map.end()
    }
}

/// Token usage as a backend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The `usage` object of a response or of a stream's usage chunk.
pub fn usage_of(v: &Value) -> Option<Usage> {
    usage_from(v.get("usage")?)
}

/// A `usage` object's counts.
fn usage_from(usage: &Value) -> Option<Usage> {
    let u = usage.as_object()?;
    let prompt_tokens = u.get("prompt_tokens")?.as_u64()?;
    let completion_tokens = u
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
    })
}

/// The usage of a whole (non-streamed) answer, read without building the
/// rest of it: the other keys are checked as JSON and skipped. The last
/// `usage` key counts, as for `serde_json::Value` (and most clients).
pub fn usage_in(answer: &[u8]) -> Option<Usage> {
    let LastUsage(usage) = serde_json::from_slice(answer).ok()?;
    usage_from(&usage?)
}

/// The value of an object's last `usage` key.
struct LastUsage(Option<Value>);

impl<'de> Deserialize<'de> for LastUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = LastUsage;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LastUsage, A::Error> {
                let mut usage = None;
                while let Some(IsUsage(is)) = map.next_key()? {
                    if is {
                        usage = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(LastUsage(usage))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// Whether a key is `usage` (read without copying it).
struct IsUsage(bool);

impl<'de> Deserialize<'de> for IsUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = IsUsage;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<IsUsage, E> {
                Ok(IsUsage(k == "usage"))
            }
        }
        d.deserialize_str(Key)
    }
}

/// An error body in OpenAI's format:
/// `{"error": {"message", "type", "param", "code"}}`, plus the gateway's
/// `request_id` (and `decision_id` when a decision refused it).
pub fn error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
    request_id: &str,
    decision_id: Option<&str>,
) -> Bytes {
    let mut err = json!({
        "message": message,
        "type": kind,
        "param": param,
        "code": code,
        "request_id": request_id,
    });
    if let Some(d) = decision_id {
        err["decision_id"] = json!(d);
    }
    Bytes::from(json!({ "error": err }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoint: Endpoint, body: &str) -> Result<Prepared, InferenceError> {
        check_request(endpoint, body.as_bytes())
    }

    fn param_of(r: Result<Prepared, InferenceError>) -> Option<String> {
        match r {
            Err(InferenceError::BadRequest { param, .. }) => param,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn chat_requests_are_checked() {
        let ok = check(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(ok.model, "m");
        assert!(!ok.stream && !ok.strip_usage);
        assert_eq!(
            param_of(check(Endpoint::ChatCompletions, r#"{"messages":[]}"#)),
            Some("model".into())
        );
        assert_eq!(
            param_of(check(
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[]}"#
            )),
            Some("messages".into())
        );
        assert_eq!(
            param_of(check(
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"wizard"}]}"#
            )),
            Some("messages[0].role".into())
        );
        assert_eq!(
            param_of(check(
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#
            )),
            Some("max_tokens".into())
        );
        assert_eq!(
            param_of(check(Endpoint::ChatCompletions, "{not json")),
            None
        );
        assert_eq!(
            param_of(check(Endpoint::Embeddings, r#"{"model":"e"}"#)),
            Some("input".into())
        );
        assert_eq!(
            param_of(check(
                Endpoint::Embeddings,
                r#"{"model":"e","input":"x","stream":true}"#
            )),
            Some("stream".into())
        );
    }

    #[test]
    fn streams_ask_for_usage_and_strip_it_only_when_the_agent_did_not() {
        let p = check(
            Endpoint::ChatCompletions,
            r#"{"model":"alias","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert!(p.stream && p.strip_usage);
        let up: Value = serde_json::from_slice(&p.upstream_body("real-model")).unwrap();
        assert_eq!(up["model"], "real-model");
        assert_eq!(up["stream_options"]["include_usage"], true);

        let asked = check(
            Endpoint::ChatCompletions,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user"}]}"#,
        )
        .unwrap();
        assert!(!asked.strip_usage);
    }

    #[test]
    fn the_upstream_body_is_the_request_with_the_model_and_usage_rewritten() {
        // The reference: the parsed request copied, then changed.
        let reference = |body: &str, model: &str, stream: bool| -> Value {
            let mut v: Value = serde_json::from_str(body).unwrap();
            v["model"] = json!(model);
            if stream {
                match v.get_mut("stream_options").and_then(Value::as_object_mut) {
                    Some(o) => {
                        o.insert("include_usage".into(), json!(true));
                    }
                    None => v["stream_options"] = json!({"include_usage": true}),
                }
            }
            v
        };
        let m = r#""messages":[{"role":"user","content":"hi \"there\" \u00e9"}]"#;
        for body in [
            format!(r#"{{"model":"alias",{m}}}"#),
            format!(r#"{{"model":"alias","stream":false,"max_tokens":16,{m},"zzz":[1,2.5,null]}}"#),
            format!(r#"{{"model":"alias","stream":true,{m}}}"#),
            format!(
                r#"{{"stream":true,"stream_options":{{"include_usage":false,"x":1}},"model":"alias",{m}}}"#
            ),
            format!(r#"{{"model":"alias","stream":true,"stream_options":null,{m}}}"#),
            format!(r#"{{"model":"alias","stream":true,"stream_options":"odd",{m}}}"#),
        ] {
            let p = check(Endpoint::ChatCompletions, &body).unwrap();
            let sent: Value = serde_json::from_slice(&p.upstream_body("real-model")).unwrap();
            assert_eq!(sent, reference(&body, "real-model", p.stream), "{body}");
        }
        // A duplicate key reaches the backend once, as the gateway read it.
        let p = check(
            Endpoint::ChatCompletions,
            &format!(r#"{{"model":"a","max_tokens":1,"max_tokens":9,{m}}}"#),
        )
        .unwrap();
        let sent = String::from_utf8(p.upstream_body("real").to_vec()).unwrap();
        assert_eq!(sent.matches("max_tokens").count(), 1, "{sent}");
        assert!(sent.contains(r#""max_tokens":9"#), "{sent}");
    }

    #[test]
    fn usage_is_read() {
        let v = json!({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
        assert_eq!(
            usage_of(&v),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        assert_eq!(usage_of(&json!({"usage": null})), None);
        // From a whole answer's bytes, as `usage_of` reads the parsed answer.
        for answer in [
            r#"{"id":"x","choices":[{"message":{"content":"a \"usage\": 1"}}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
            r#"{"u\u0073age":{"prompt_tokens":7,"completion_tokens":"3"}}"#,
            r#"{"usage":{"prompt_tokens":7}}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"prompt_tokens":"7"}}"#,
            r#"{"choices":[]}"#,
            r#"{"usage":{"prompt_tokens":7}} trailing"#,
            r#"[1]"#,
            "",
        ] {
            let whole = serde_json::from_str::<Value>(answer).ok();
            assert_eq!(
                usage_in(answer.as_bytes()),
                whole.as_ref().and_then(usage_of),
                "{answer}"
            );
        }
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":7,"completion_tokens":3}}"#),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
    }
}
