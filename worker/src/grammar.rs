//! Constrained decoding with `llguidance` (the grammar engine vLLM,
//! llama.cpp and mistral.rs use): structured output (`response_format`
//! with a JSON schema, or any JSON object) and forced tool calls
//! (`tool_choice` `required` or a named function), as a token mask the
//! sampler applies at every step — so the output always parses.
//!
//! Must never: let a token through that the grammar refuses (a grammar in
//! an error state allows only the end of sequence), or accept a schema it
//! cannot enforce (the request is refused with the engine's reason).

use crate::api::tools::ToolFormat;
use crate::engine::Constraint;
use crate::error::{Result, WorkerError};
use crate::text::Text;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;

/// A model's grammar compiler (its token trie is built once).
pub struct Grammars {
    factory: Arc<ParserFactory>,
    vocab: usize,
    stop_ids: Vec<u32>,
    /// Hermes tags are single tokens of this tokenizer (as in Qwen 2.5's):
    /// the grammar names them as tokens (llguidance treats every added
    /// `<...>` token as special, never as its letters).
    tag_tokens: bool,
    /// Mistral's `[TOOL_CALLS]` token, named by its id.
    mistral_calls: Option<u32>,
}

impl Grammars {
    /// For `text`'s tokenizer over a model of `vocab` logits.
    pub fn new(text: &Text, vocab: usize) -> Result<Self> {
        let err = |e: String| WorkerError::Tokenizer(format!("grammar engine: {e}"));
        let mut bt = toktrie_hf_tokenizers::ByteTokenizer::from_tokenizer(text.tokenizer().clone())
            .map_err(|e| err(e.to_string()))?;
        if !text.stop_ids.is_empty() {
            bt.set_eos_tokens(&text.stop_ids);
        }
        let env = bt
            .into_tok_env(Some(vocab))
            .map_err(|e| err(e.to_string()))?;
        let factory = ParserFactory::new_simple(&env).map_err(|e| err(e.to_string()))?;
        let tag_tokens =
            text.token_to_id("<tool_call>").is_some() && text.token_to_id("</tool_call>").is_some();
        Ok(Self {
            factory: Arc::new(factory),
            vocab,
            stop_ids: text.stop_ids.clone(),
            tag_tokens,
            mistral_calls: text.token_to_id("[TOOL_CALLS]"),
        })
    }

    fn compile(
        &self,
        grammar: TopLevelGrammar,
    ) -> std::result::Result<Box<dyn Constraint>, String> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Box::new(Llg {
            matcher,
            vocab: self.vocab,
            stop_ids: self.stop_ids.clone(),
        }))
    }

    /// Output that is one JSON value valid against `schema` (compact: no
    /// whitespace between tokens unless the schema asks for it).
    pub fn json_schema(&self, schema: &Value) -> std::result::Result<Box<dyn Constraint>, String> {
        self.compile(TopLevelGrammar::from_json_schema(compact(schema)))
    }

    /// Output that is a call of one of `tools` (OpenAI tool definitions) in
    /// the model's tool-call format.
    pub fn tool_call(
        &self,
        format: ToolFormat,
        tools: &[Value],
    ) -> std::result::Result<Box<dyn Constraint>, String> {
        let args_key = match format {
            ToolFormat::Llama3 => "parameters",
            _ => "arguments",
        };
        let calls: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let name = f.get("name")?.as_str()?;
                let params = f.get("parameters").cloned().unwrap_or(json!({"type": "object"}));
                Some(json!({"type": "object", "properties": {"name": {"const": name}, args_key: params},
                            "required": ["name", args_key], "additionalProperties": false}))
            })
            .collect();
        if calls.is_empty() {
            return Err("no function in `tools` to call".into());
        }
        let schema = compact(&json!({"anyOf": calls}));
        let lark = match format {
            // The tags as tokens when they are single tokens, as letters
            // otherwise.
            ToolFormat::Hermes if self.tag_tokens => {
                format!(
                    "start: <tool_call> \"\\n\" call \"\\n\" </tool_call>\ncall: %json {schema}\n"
                )
            }
            ToolFormat::Hermes => format!(
                "start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {schema}\n"
            ),
            // A list of one call, after the `[TOOL_CALLS]` token (by id:
            // llguidance names a token `<[id]>`) where the tokenizer has it.
            ToolFormat::Mistral => {
                let tag = self
                    .mistral_calls
                    .map_or_else(|| "\"[TOOL_CALLS]\"".to_string(), |id| format!("<[{id}]>"));
                format!("start: {tag} \" [\" call \"]\"\ncall: %json {schema}\n")
            }
            _ => format!("start: call\ncall: %json {schema}\n"),
        };
        self.compile(TopLevelGrammar::from_lark(lark))
    }
}

/// `schema` with compact whitespace unless it sets its own.
fn compact(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(o) = s.as_object_mut() {
        o.entry("x-guidance")
            .or_insert(json!({"whitespace_flexible": false}));
    }
    s
}

struct Llg {
    matcher: Matcher,
    vocab: usize,
    stop_ids: Vec<u32>,
}

impl Constraint for Llg {
    fn mask(&mut self) -> Option<Vec<bool>> {
        let mut out = vec![false; self.vocab];
        match self.matcher.compute_mask_or_eos() {
            Ok(m) => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = m.is_allowed(i as u32);
                }
            }
            Err(_) => {
                for &t in &self.stop_ids {
                    if let Some(o) = out.get_mut(t as usize) {
                        *o = true;
                    }
                }
            }
        }
        Some(out)
    }

    fn accept(&mut self, token: u32) {
        let _ = self.matcher.consume_token(token);
    }

    fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
