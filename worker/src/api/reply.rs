//! What the worker answers: OpenAI chat and text completions, whole or as
//! a server-sent event stream, assembled from the engine's events — with
//! tool calls parsed out of the reply, log-probabilities in each API's
//! form, and usage (with cached prompt tokens) in the last chunk when the
//! client asked for it.
//!
//! Must never: send a stream chunk after `[DONE]`, or report usage that
//! differs from the engine's.

use super::tools::{self, ToolFormat};
use crate::engine::{Event, Usage};
use crate::text::Text;
use serde_json::{json, Value};
use std::sync::Arc;

/// A generated token, its log-probability and the top alternatives.
type Scored = (u32, f32, Vec<(u32, f32)>);

/// The facts every chunk and reply of one request repeats.
pub struct Shape {
    pub chat: bool,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Tool calls are looked for in this format (`None`: no tools).
    pub tools: ToolFormat,
    pub logprobs: bool,
    pub include_usage: bool,
    pub text: Arc<Text>,
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

impl Shape {
    fn token_text(&self, id: u32) -> String {
        self.text.decode(&[id]).unwrap_or_default()
    }

    fn chat_logprob(&self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
        let entry = |id: u32, lp: f32| {
            let t = self.token_text(id);
            json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
        };
        let mut e = entry(id, logprob);
        e["top_logprobs"] = Value::Array(top.iter().map(|(t, lp)| entry(*t, *lp)).collect());
        e
    }

    fn completion_logprobs(&self, toks: &[Scored], offset: usize) -> Value {
        let mut tokens = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        let mut at = offset;
        for (id, lp, top) in toks {
            let t = self.token_text(*id);
            offsets.push(at);
            at += t.len();
            tokens.push(t);
            lps.push(*lp);
            let m: serde_json::Map<String, Value> = top
                .iter()
                .map(|(i, l)| (self.token_text(*i), json!(l)))
                .collect();
            tops.push(Value::Object(m));
        }
        json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }

    fn envelope(&self, choices: Value, usage: Option<&Usage>, chunk: bool) -> Value {
        let object = match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        };
        let mut v = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = usage_json(u);
        }
        v
    }

    /// The whole reply from all of a request's events.
    pub fn whole(&self, events: &[Event]) -> Result<Value, String> {
        let mut text = String::new();
        let mut toks = Vec::new();
        let mut done = None;
        for e in events {
            match e {
                Event::Token {
                    id,
                    text: t,
                    logprob,
                    top,
                } => {
                    text.push_str(t);
                    toks.push((*id, *logprob, top.clone()));
                }
                Event::Done {
                    finish,
                    text: t,
                    usage,
                    error,
                } => {
                    if let Some(err) = error {
                        return Err(err.clone());
                    }
                    text.push_str(t);
                    done = Some((*finish, *usage));
                }
            }
        }
        let Some((finish, usage)) = done else {
            return Err("the engine stopped before the request finished".into());
        };
        if !self.chat {
            let lp = self.logprobs.then(|| self.completion_logprobs(&toks, 0));
            let choice =
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish.as_str()});
            return Ok(self.envelope(json!([choice]), Some(&usage), false));
        }
        let mut message = json!({"role": "assistant", "content": text});
        let mut reason = finish.as_str();
        if let Some((content, calls)) = tools::parse(self.tools, &text) {
            message["content"] = if content.is_empty() {
                Value::Null
            } else {
                json!(content)
            };
            message["tool_calls"] = calls_json(self.tools, &calls, &self.id, false);
            reason = "tool_calls";
        }
        let lp = self.logprobs.then(|| {
            json!({"content": toks.iter().map(|(id, lp, top)| self.chat_logprob(*id, *lp, top)).collect::<Vec<_>>()})
        });
        let choice =
            json!({"index": 0, "message": message, "logprobs": lp, "finish_reason": reason});
        Ok(self.envelope(json!([choice]), Some(&usage), false))
    }
}

fn calls_json(format: ToolFormat, calls: &[tools::ToolCall], id: &str, indexed: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({"id": tools::call_id(format, id, i), "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}});
                if indexed {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// Turns a request's events into stream chunks, one event at a time.
pub struct Stream {
    shape: Shape,
    /// Reply text held back while it may be a tool call.
    held: String,
    /// Content has started: no tool call can follow any more.
    content_started: bool,
    emitted_text: usize,
    started: bool,
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

impl Stream {
    pub fn new(shape: Shape) -> Self {
        Self {
            shape,
            held: String::new(),
            content_started: false,
            emitted_text: 0,
            started: false,
        }
    }

    fn delta_chunk(&self, delta: Value, lp: Option<Value>, finish: Option<&str>) -> String {
        let choice = if self.shape.chat {
            json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": lp, "finish_reason": finish})
        };
        sse(&self.shape.envelope(json!([choice]), None, true))
    }

    fn text_out(&mut self, t: &str) -> Option<String> {
        if t.is_empty() {
            return None;
        }
        if self.shape.tools != ToolFormat::None && !self.content_started {
            self.held.push_str(t);
            if self.shape.tools.may_be_call(&self.held) {
                return None;
            }
            self.content_started = true;
            return Some(std::mem::take(&mut self.held));
        }
        Some(t.to_string())
    }

    /// The SSE text for one event (possibly empty); `true` when the
    /// stream is over (`[DONE]` written).
    pub fn event(&mut self, e: &Event) -> (String, bool) {
        let mut out = String::new();
        if !self.started && self.shape.chat {
            out.push_str(&self.delta_chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                None,
            ));
        }
        self.started = true;
        match e {
            Event::Token {
                id,
                text,
                logprob,
                top,
            } => {
                let lp = self.shape.logprobs.then(|| {
                    if self.shape.chat {
                        json!({"content": [self.shape.chat_logprob(*id, *logprob, top)]})
                    } else {
                        self.shape
                            .completion_logprobs(&[(*id, *logprob, top.clone())], self.emitted_text)
                    }
                });
                match self.text_out(text) {
                    Some(t) => {
                        self.emitted_text += t.len();
                        out.push_str(&self.delta_chunk(json!({"content": t}), lp, None));
                    }
                    // Log-probabilities still go out with an empty delta.
                    None if lp.is_some() => out.push_str(&self.delta_chunk(json!({}), lp, None)),
                    None => {}
                }
                (out, false)
            }
            Event::Done {
                finish,
                text,
                usage,
                error,
            } => {
                if let Some(err) = error {
                    let v = json!({"error": {"message": err, "type": "server_error", "code": 500}});
                    out.push_str(&sse(&v));
                    out.push_str("data: [DONE]\n\n");
                    return (out, true);
                }
                let mut reason = finish.as_str();
                if let Some(t) = self.text_out(text) {
                    out.push_str(&self.delta_chunk(json!({"content": t}), None, None));
                }
                if !self.held.is_empty() {
                    let held = std::mem::take(&mut self.held);
                    match tools::parse(self.shape.tools, &held) {
                        Some((content, calls)) if self.shape.chat => {
                            if !content.is_empty() {
                                out.push_str(&self.delta_chunk(
                                    json!({"content": content}),
                                    None,
                                    None,
                                ));
                            }
                            let delta = json!({"tool_calls": calls_json(self.shape.tools, &calls, &self.shape.id, true)});
                            out.push_str(&self.delta_chunk(delta, None, None));
                            reason = "tool_calls";
                        }
                        _ => out.push_str(&self.delta_chunk(json!({"content": held}), None, None)),
                    }
                }
                out.push_str(&self.delta_chunk(json!({}), None, Some(reason)));
                if self.shape.include_usage {
                    out.push_str(&sse(&self.shape.envelope(json!([]), Some(usage), true)));
                }
                out.push_str("data: [DONE]\n\n");
                (out, true)
            }
        }
    }
}
