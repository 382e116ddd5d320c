//! Text in and out of a model: the tokenizer (`tokenizer.json` through the
//! `tokenizers` crate), the special tokens and defaults of
//! `tokenizer_config.json` and `generation_config.json`, incremental
//! detokenization for streams, and the chat template (`chat.rs`).
//!
//! Must never: emit half a UTF-8 character in a stream (text is held back
//! until the bytes decode), or render a chat without the model's own
//! template when it has one.

pub mod chat;

use crate::error::{file_err, Result, WorkerError};
use crate::model::config::token_ids;
use serde_json::Value;
use std::path::Path;
use tokenizers::Tokenizer;

/// Defaults a model directory suggests for sampling
/// (`generation_config.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
}

/// A model's text side.
pub struct Text {
    tokenizer: Tokenizer,
    pub chat: Option<chat::Template>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// Every id that ends a generation.
    pub stop_ids: Vec<u32>,
    pub defaults: GenerationDefaults,
}

fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| file_err(path, e))
}

impl Text {
    /// Loads `dir`'s tokenizer and configs; `config_eos` are the ids of
    /// `config.json`'s `eos_token_id`.
    pub fn load(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(WorkerError::Tokenizer(format!(
                "{} not found (the worker needs a tokenizer.json)",
                path.display()
            )));
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| WorkerError::Tokenizer(format!("{}: {e}", path.display())))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let gc = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let bos = token_text(tc.get("bos_token"));
        let eos = token_text(tc.get("eos_token"));
        let mut stop_ids = config_eos.to_vec();
        stop_ids.extend(token_ids(&gc.get("eos_token_id").cloned()));
        if let Some(id) = eos.as_deref().and_then(|e| tokenizer.token_to_id(e)) {
            stop_ids.push(id);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let chat = match tc.get("chat_template") {
            Some(Value::String(s)) => {
                Some(chat::Template::new(s.clone(), bos.clone(), eos.clone())?)
            }
            // A list of named templates: the one named "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(|s| chat::Template::new(s.to_string(), bos.clone(), eos.clone()))
                .transpose()?,
            _ => None,
        };
        let f = |k: &str| gc.get(k).and_then(Value::as_f64).map(|v| v as f32);
        Ok(Self {
            tokenizer,
            chat,
            bos,
            eos,
            stop_ids,
            defaults: GenerationDefaults {
                temperature: f("temperature"),
                top_p: f("top_p"),
                top_k: gc.get("top_k").and_then(Value::as_u64).map(|v| v as usize),
            },
        })
    }

    /// Token ids of `text`; special tokens written in the text are parsed
    /// as such (a rendered chat template holds them).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| WorkerError::Tokenizer(e.to_string()))
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| WorkerError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The tokenizer's text of every id (for grammar engines).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Streams text as tokens arrive: the text of the last few tokens is
/// decoded again with each new one, and only what is complete is emitted
/// (the way Hugging Face's text-generation-inference does it).
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// Adds `id`; the new text it completes (possibly empty).
    pub fn push(&mut self, text: &Text, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = text.decode(&self.ids[self.prefix..self.read])?;
        let after = text.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let new = after
                .get(before.len()..)
                .map(str::to_string)
                .unwrap_or_default();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }
}
