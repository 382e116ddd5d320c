//! The OpenAI request bodies the worker accepts, and their validation
//! into what the engine runs: every out-of-range value is refused with an
//! OpenAI-format error naming the parameter, before anything is queued.
//!
//! Must never: queue a request the engine cannot finish (a prompt longer
//! than the context, a `max_tokens` below 1, `n` above 1), or ignore a
//! parameter it does not honour — what is not supported is refused.

use super::ApiError;
use crate::engine::sampler::Sampling;
use crate::text::GenerationDefaults;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// `/v1/chat/completions` and `/v1/completions` bodies (one type: the
/// fields they share are most of them).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Body {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub prompt: Option<Value>,
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Option<Value>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<i64>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
    pub ignore_eos: bool,
    pub user: Option<String>,
}

/// What a valid request asks of the engine.
#[derive(Debug, Clone)]
pub struct Params {
    pub sampling: Sampling,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

fn range(name: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::param(
            name,
            format!("{name} must be between {lo} and {hi}, got {x}"),
        )),
        other => Ok(other.map(|x| x as f32)),
    }
}

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::bad("the body must be a JSON object".to_string()));
        }
        serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
    }

    /// Validates the sampling and stopping parameters; `chat` selects the
    /// chat API's form of `logprobs` (a boolean with `top_logprobs`) over
    /// the completions API's (a number).
    pub fn params(
        &self,
        chat: bool,
        defaults: &GenerationDefaults,
        vocab: usize,
    ) -> Result<Params, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::param(
                    "n",
                    format!("n must be 1 (one choice per request), got {n}"),
                ));
            }
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_name = if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        if let Some(m) = max {
            if m < 1 {
                return Err(ApiError::param(
                    max_name,
                    format!("{max_name} must be at least 1, got {m}"),
                ));
            }
        }
        let temperature = range("temperature", self.temperature, 0.0, 2.0)?;
        let top_p = range("top_p", self.top_p, 0.0, 1.0)?;
        if top_p == Some(0.0) {
            return Err(ApiError::param(
                "top_p",
                "top_p must be above 0".to_string(),
            ));
        }
        let min_p = range("min_p", self.min_p, 0.0, 1.0)?;
        let presence = range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let frequency = range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let repetition = range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)?;
        let top_k = match self.top_k {
            Some(k) if k < -1 => {
                return Err(ApiError::param(
                    "top_k",
                    format!("top_k must be -1 (off), 0 (off) or positive, got {k}"),
                ))
            }
            Some(k) if k > 0 => k as usize,
            Some(_) => 0,
            None => defaults.top_k.unwrap_or(0),
        };
        let logprobs = if chat {
            match (&self.logprobs, self.top_logprobs) {
                (Some(Value::Bool(true)), n) => Some(n.unwrap_or(0)),
                (Some(Value::Bool(false)) | None, Some(_)) => {
                    return Err(ApiError::param(
                        "top_logprobs",
                        "top_logprobs needs logprobs: true".to_string(),
                    ))
                }
                (Some(Value::Bool(false)) | None, None) => None,
                (Some(other), _) => {
                    return Err(ApiError::param(
                        "logprobs",
                        format!("logprobs must be a boolean, got {other}"),
                    ))
                }
            }
        } else {
            match &self.logprobs {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().ok_or_else(|| {
                    ApiError::param("logprobs", format!("logprobs must be a number, got {v}"))
                })?),
            }
        };
        if let Some(n) = logprobs {
            if !(0..=20).contains(&n) {
                return Err(ApiError::param(
                    "top_logprobs",
                    format!("at most 20 alternatives, got {n}"),
                ));
            }
        }
        let stop: Vec<String> = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::param(
                        "stop",
                        "stop must be a string or a list of strings".to_string(),
                    )
                })?,
            Some(_) => {
                return Err(ApiError::param(
                    "stop",
                    "stop must be a string or a list of strings".to_string(),
                ))
            }
        };
        if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::param(
                "stop",
                "at most 16 stop strings of 1 to 256 bytes".to_string(),
            ));
        }
        let mut logit_bias = Vec::new();
        for (k, v) in self.logit_bias.iter().flatten() {
            let id: u32 = k
                .parse()
                .ok()
                .filter(|id| (*id as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::param(
                        "logit_bias",
                        format!("logit_bias key {k} is not a token id of this model"),
                    )
                })?;
            if !(-100.0..=100.0).contains(v) {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("logit_bias values must be between -100 and 100, got {v}"),
                ));
            }
            logit_bias.push((id, *v as f32));
        }
        if let Some(bad) = self
            .stop_token_ids
            .iter()
            .flatten()
            .find(|t| **t as usize >= vocab)
        {
            return Err(ApiError::param(
                "stop_token_ids",
                format!("{bad} is not a token id of this model"),
            ));
        }
        Ok(Params {
            sampling: Sampling {
                temperature: temperature.or(defaults.temperature).unwrap_or(1.0),
                top_p: top_p.or(defaults.top_p).unwrap_or(1.0),
                top_k,
                min_p: min_p.unwrap_or(0.0),
                seed: self.seed,
                repetition_penalty: repetition.unwrap_or(1.0),
                presence_penalty: presence.unwrap_or(0.0),
                frequency_penalty: frequency.unwrap_or(0.0),
                logit_bias,
                logprobs: logprobs.map(|n| n as usize),
            },
            max_tokens: max.map(|m| m as usize),
            stop,
            stop_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each bad value, as a table: the parameter named and the message.
    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"max_tokens": -1}"#,
                "max_tokens",
                "max_tokens must be at least 1, got -1",
            ),
            (
                r#"{"max_completion_tokens": 0}"#,
                "max_completion_tokens",
                "max_completion_tokens must be at least 1, got 0",
            ),
            (
                r#"{"temperature": 3}"#,
                "temperature",
                "temperature must be between 0 and 2, got 3",
            ),
            (r#"{"top_p": 0}"#, "top_p", "top_p must be above 0"),
            (
                r#"{"top_k": -5}"#,
                "top_k",
                "top_k must be -1 (off), 0 (off) or positive, got -5",
            ),
            (
                r#"{"n": 2}"#,
                "n",
                "n must be 1 (one choice per request), got 2",
            ),
            (
                r#"{"presence_penalty": -2.5}"#,
                "presence_penalty",
                "presence_penalty must be between -2 and 2, got -2.5",
            ),
            (
                r#"{"logprobs": true, "top_logprobs": 21}"#,
                "top_logprobs",
                "at most 20 alternatives, got 21",
            ),
            (
                r#"{"top_logprobs": 2}"#,
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ),
            (
                r#"{"stop": 3}"#,
                "stop",
                "stop must be a string or a list of strings",
            ),
            (
                r#"{"logit_bias": {"999999": 5}}"#,
                "logit_bias",
                "logit_bias key 999999 is not a token id of this model",
            ),
            (
                r#"{"logit_bias": {"5": 500}}"#,
                "logit_bias",
                "logit_bias values must be between -100 and 100, got 500",
            ),
        ];
        for (body, param, message) in cases {
            let b = Body::parse(body.as_bytes()).unwrap();
            let err = b
                .params(true, &GenerationDefaults::default(), 1000)
                .unwrap_err();
            assert_eq!(
                (err.param.as_deref(), err.message.as_str()),
                (Some(*param), *message),
                "{body}"
            );
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn malformed_json_and_wrong_types_are_clear_errors() {
        let err = Body::parse(b"{\"model\": ").unwrap_err();
        assert!(
            err.message
                .starts_with("the body is not valid JSON: EOF while parsing"),
            "{}",
            err.message
        );
        let err = Body::parse(b"[1]").unwrap_err();
        assert_eq!(err.message, "the body must be a JSON object");
        let err = Body::parse(br#"{"temperature": "hot"}"#).unwrap_err();
        assert!(
            err.message
                .starts_with("invalid request: invalid type: string \"hot\", expected f64"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_model_directory_supplies_defaults_the_request_overrides() {
        let d = GenerationDefaults {
            temperature: Some(0.6),
            top_p: Some(0.9),
            top_k: None,
        };
        let p = Body::parse(b"{}").unwrap().params(true, &d, 10).unwrap();
        assert_eq!((p.sampling.temperature, p.sampling.top_p), (0.6, 0.9));
        let p = Body::parse(br#"{"temperature": 0}"#)
            .unwrap()
            .params(true, &d, 10)
            .unwrap();
        assert_eq!(p.sampling.temperature, 0.0);
    }
}
