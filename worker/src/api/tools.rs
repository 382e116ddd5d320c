//! Tool calls in a model's output, in the three formats open models are
//! trained on: Hermes / Qwen 2.5 (`<tool_call>{"name": ..., "arguments":
//! {...}}</tool_call>`, several allowed, text before them is content),
//! Llama 3.1 (the whole reply is `{"name": ..., "parameters": {...}}`,
//! optionally after `<|python_tag|>`, several separated by `;`) and
//! Mistral (the whole reply is `[TOOL_CALLS] [{"name": ..., "arguments":
//! {...}}, ...]`; `[TOOL_CALLS]` is a special token, gone from the decoded
//! text, so the list alone is read too). Which one a model speaks is read
//! from its chat template.
//!
//! Must never: report a tool call whose arguments are not a JSON object,
//! or lose the text of a reply that is not a tool call (it stays content).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    Mistral,
    /// The template shows no tool format: replies are content only.
    None,
}

impl ToolFormat {
    /// The format a chat template renders tool calls in.
    pub fn detect(template: Option<&str>) -> Self {
        match template {
            Some(t) if t.contains("<tool_call>") => ToolFormat::Hermes,
            Some(t) if t.contains("[TOOL_CALLS]") => ToolFormat::Mistral,
            Some(t) if t.contains("<|start_header_id|>") && t.contains("tools") => {
                ToolFormat::Llama3
            }
            _ => ToolFormat::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3 => "llama3_json",
            ToolFormat::Mistral => "mistral",
            ToolFormat::None => "none",
        }
    }

    /// Whether `text` (the reply so far) may still turn out to be a tool
    /// call, so a stream holds it back.
    pub fn may_be_call(self, text: &str) -> bool {
        let t = text.trim_start();
        match self {
            ToolFormat::Hermes => "<tool_call>".starts_with(t) || t.starts_with("<tool_call>"),
            ToolFormat::Llama3 => {
                t.is_empty()
                    || t.starts_with('{')
                    || "<|python_tag|>".starts_with(t)
                    || t.starts_with("<|python_tag|>")
            }
            ToolFormat::Mistral => {
                t.is_empty()
                    || t.starts_with('[')
                    || "[TOOL_CALLS]".starts_with(t)
                    || t.starts_with("[TOOL_CALLS]")
            }
            ToolFormat::None => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as JSON text (as the OpenAI API carries it).
    pub arguments: String,
}

fn call(v: &Value, args_key: &str) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get(args_key)
        .or_else(|| v.get("arguments"))
        .or_else(|| v.get("parameters"))?;
    args.is_object().then(|| ToolCall {
        name,
        arguments: args.to_string(),
    })
}

/// The content before the calls and the calls, when `text` holds any.
pub fn parse(format: ToolFormat, text: &str) -> Option<(String, Vec<ToolCall>)> {
    match format {
        ToolFormat::Hermes => {
            let first = text.find("<tool_call>")?;
            let mut calls = Vec::new();
            let mut rest = &text[first..];
            while let Some(start) = rest.find("<tool_call>") {
                let body = &rest[start + "<tool_call>".len()..];
                let (json, next) = match body.find("</tool_call>") {
                    Some(end) => (&body[..end], &body[end + "</tool_call>".len()..]),
                    None => (body, ""),
                };
                let v: Value = serde_json::from_str(json.trim()).ok()?;
                calls.push(call(&v, "arguments")?);
                rest = next;
            }
            Some((text[..first].trim().to_string(), calls))
        }
        ToolFormat::Llama3 => {
            let t = text.trim();
            let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
            if !t.starts_with('{') {
                return None;
            }
            let calls = t
                .split(';')
                .map(|part| {
                    serde_json::from_str::<Value>(part.trim())
                        .ok()
                        .and_then(|v| call(&v, "parameters"))
                })
                .collect::<Option<Vec<_>>>()?;
            Some((String::new(), calls))
        }
        ToolFormat::Mistral => {
            let t = text.trim();
            let t = t.strip_prefix("[TOOL_CALLS]").unwrap_or(t).trim();
            let list: Vec<Value> = serde_json::from_str(t).ok()?;
            let calls = list
                .iter()
                .map(|v| call(v, "arguments"))
                .collect::<Option<Vec<_>>>()?;
            (!calls.is_empty()).then(|| (String::new(), calls))
        }
        ToolFormat::None => None,
    }
}

/// The id of call `i` of a reply: nine letters and digits for Mistral's
/// format (its template refuses any other id when the call comes back),
/// `call_…` otherwise. `seed` is unique to the reply (its id).
pub fn call_id(format: ToolFormat, seed: &str, i: usize) -> String {
    let tail = seed.rsplit('-').next().unwrap_or(seed);
    match format {
        ToolFormat::Mistral => {
            // FNV-1a over the reply id and the index, in base 36.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in seed.bytes().chain(i.to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
            (0..9)
                .map(|k| char::from(DIGITS[((h >> (k * 7)) % 36) as usize]))
                .collect()
        }
        _ => format!("call_{tail}_{i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies and what they parse to, per format, as a table.
    #[test]
    fn replies_parse_into_calls_or_stay_content() {
        type Want<'a> = Option<(&'a str, Vec<(&'a str, &'a str)>)>;
        let cases: &[(ToolFormat, &str, Want)] = &[
            (
                ToolFormat::Hermes,
                "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
                Some(("Let me check.", vec![("get_weather", r#"{"city":"Paris"}"#)])),
            ),
            (
                ToolFormat::Hermes,
                "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": 1}}",
                Some(("", vec![("a", "{}"), ("b", r#"{"x":1}"#)])),
            ),
            (ToolFormat::Hermes, "<tool_call>{\"name\": \"a\", \"arguments\": \"x\"}</tool_call>", None),
            (ToolFormat::Hermes, "just text", None),
            (
                ToolFormat::Llama3,
                "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
                Some(("", vec![("get_weather", r#"{"city":"Paris"}"#)])),
            ),
            (
                ToolFormat::Llama3,
                "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"y\": true}}",
                Some(("", vec![("a", "{}"), ("b", r#"{"y":true}"#)])),
            ),
            (ToolFormat::Llama3, "The weather is fine.", None),
            (ToolFormat::Llama3, "{\"name\": \"a\"", None),
            (
                ToolFormat::Mistral,
                "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
                Some(("", vec![("get_weather", r#"{"city":"Paris"}"#)])),
            ),
            // `[TOOL_CALLS]` decoded away as the special token it is.
            (
                ToolFormat::Mistral,
                " [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]",
                Some(("", vec![("a", "{}"), ("b", r#"{"x":1}"#)])),
            ),
            (ToolFormat::Mistral, "[{\"name\": \"a\", \"arguments\": \"x\"}]", None),
            (ToolFormat::Mistral, "[1, 2]", None),
            (ToolFormat::Mistral, "[]", None),
            (ToolFormat::Mistral, "[See the docs](http://x)", None),
            (ToolFormat::Mistral, "Paris is sunny.", None),
        ];
        for (format, text, want) in cases {
            let got = parse(*format, text);
            let want = want.as_ref().map(|(c, calls)| {
                (
                    c.to_string(),
                    calls
                        .iter()
                        .map(|(n, a)| ToolCall {
                            name: n.to_string(),
                            arguments: a.to_string(),
                        })
                        .collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, want, "{format:?}: {text}");
        }
    }

    #[test]
    fn the_format_is_read_from_the_template_and_streams_hold_back_call_prefixes() {
        use crate::testmodel::templates;
        assert_eq!(
            ToolFormat::detect(Some(templates::HERMES)),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::detect(Some(templates::LLAMA3)),
            ToolFormat::Llama3
        );
        assert_eq!(ToolFormat::detect(Some("{{ messages }}")), ToolFormat::None);
        assert!(ToolFormat::Hermes.may_be_call("<tool"));
        assert!(!ToolFormat::Hermes.may_be_call("Hello"));
        assert!(ToolFormat::Llama3.may_be_call("  {\"na"));
        assert!(!ToolFormat::Llama3.may_be_call("Sure"));
        assert_eq!(
            ToolFormat::detect(Some(templates::MISTRAL)),
            ToolFormat::Mistral
        );
        assert!(ToolFormat::Mistral.may_be_call("[TOOL"));
        assert!(ToolFormat::Mistral.may_be_call(" [{\"na"));
        assert!(!ToolFormat::Mistral.may_be_call("Sure"));
    }

    /// Mistral's template refuses a call id that is not nine letters and
    /// digits when the call comes back: its ids are, and differ per call
    /// and per reply; the other formats keep `call_…`.
    #[test]
    fn call_ids_suit_the_format() {
        let ids: Vec<String> = [
            ("chatcmpl-1f2e", 0),
            ("chatcmpl-1f2e", 1),
            ("chatcmpl-9a9b", 0),
        ]
        .iter()
        .map(|(seed, i)| call_id(ToolFormat::Mistral, seed, *i))
        .collect();
        for id in &ids {
            assert_eq!(id.len(), 9, "{id}");
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
        assert!(
            ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2],
            "{ids:?}"
        );
        assert_eq!(
            call_id(ToolFormat::Hermes, "chatcmpl-1f2e", 1),
            "call_1f2e_1"
        );
    }
}
