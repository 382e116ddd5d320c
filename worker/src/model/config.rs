//! `config.json` of a Hugging Face model directory, read into what the
//! forward pass needs: one decoder shape with the architectures'
//! differences as data (Q/K/V biases, sliding window, RoPE scaling, tied
//! embeddings).
//!
//! Must never: accept a setting it would silently ignore — an activation,
//! a RoPE scaling or a windowing scheme the forward pass does not
//! implement is refused with its name.

use crate::error::{Result, WorkerError};
use serde::Deserialize;
use serde_json::Value;

/// The architectures served, by their `architectures[0]` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub const SUPPORTED: &'static [(&'static str, Arch)] = &[
        ("LlamaForCausalLM", Arch::Llama),
        ("MistralForCausalLM", Arch::Mistral),
        ("Qwen2ForCausalLM", Arch::Qwen2),
    ];
}

/// How positions are scaled before the rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (every frequency scaled).
    Linear {
        factor: f32,
    },
    /// Llama 3.1: low frequencies scaled by `factor`, high ones kept,
    /// a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

/// The decoder's shape and behaviour.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub window: Option<usize>,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

#[derive(Deserialize)]
struct Raw {
    architectures: Option<Vec<String>>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn need<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| WorkerError::Config(format!("`{field}` is missing")))
}

/// Token ids written as a number or a list of numbers.
pub(crate) fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    pub fn parse(text: &str) -> Result<Self> {
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| WorkerError::Config(e.to_string()))?;
        let names = raw.architectures.clone().unwrap_or_default();
        let Some(name) = names.first() else {
            return Err(WorkerError::Config("`architectures` is missing".into()));
        };
        let Some(&(_, arch)) = Arch::SUPPORTED.iter().find(|(n, _)| n == name) else {
            let known: Vec<&str> = Arch::SUPPORTED.iter().map(|(n, _)| *n).collect();
            return Err(WorkerError::Unsupported(format!(
                "architecture {name} (served: {})",
                known.join(", ")
            )));
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(WorkerError::Unsupported(format!(
                    "hidden_act {act} (served: silu)"
                )));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(WorkerError::Unsupported("mlp_bias = true".into()));
        }
        let hidden = need(raw.hidden_size, "hidden_size")?;
        let heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(WorkerError::Config(format!(
                "{heads} attention heads cannot share {kv_heads} key/value heads"
            )));
        }
        let head_dim = raw.head_dim.unwrap_or(hidden / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(WorkerError::Config(format!(
                "head_dim {head_dim} is not even"
            )));
        }
        let window = match arch {
            Arch::Mistral => raw.sliding_window,
            Arch::Qwen2 if raw.use_sliding_window == Some(true) => {
                return Err(WorkerError::Unsupported(
                    "Qwen2 with use_sliding_window = true".into(),
                ))
            }
            _ => None,
        };
        Ok(Self {
            arch,
            hidden,
            intermediate: need(raw.intermediate_size, "intermediate_size")?,
            layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab: need(raw.vocab_size, "vocab_size")?,
            rms_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: raw.rope_theta.unwrap_or(10_000.0) as f32,
            rope_scaling: rope_scaling(raw.rope_scaling.as_ref())?,
            max_positions: need(raw.max_position_embeddings, "max_position_embeddings")?,
            tie_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || raw.attention_bias == Some(true),
            window,
            bos: token_ids(&raw.bos_token_id).first().copied(),
            eos: token_ids(&raw.eos_token_id),
        })
    }

    /// The rotary embedding's frequency of each pair of a head's
    /// dimensions, scaling applied (as Hugging Face computes them, in f32).
    pub fn inv_freq(&self) -> Vec<f32> {
        let hd = self.head_dim;
        let base: Vec<f32> = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f32 / hd as f32))
            .collect();
        match self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            } => {
                let low_wavelen = orig / low_freq_factor;
                let high_wavelen = orig / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (orig / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Parameters of the decoder (embeddings and head included once each
    /// when tied).
    pub fn parameters(&self) -> usize {
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        let attn = h * q + 2 * h * kv + q * h + if self.qkv_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * h * self.intermediate;
        let per_layer = attn + mlp + 2 * h;
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab * h
        };
        self.vocab * h + self.layers * per_layer + h + head
    }
}

fn rope_scaling(v: Option<&Value>) -> Result<RopeScaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f32> {
        v.get(k)
            .and_then(Value::as_f64)
            .map(|f| f as f32)
            .ok_or_else(|| WorkerError::Config(format!("rope_scaling.{k} is missing")))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(WorkerError::Unsupported(format!(
            "rope_scaling type {other} (served: default, linear, llama3)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA31: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,
      "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,
      "num_key_value_heads":8,"vocab_size":128256,"rms_norm_eps":1e-5,"rope_theta":500000.0,
      "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
      "original_max_position_embeddings":8192,"rope_type":"llama3"},
      "max_position_embeddings":131072,"hidden_act":"silu","bos_token_id":128000,
      "eos_token_id":[128001,128008,128009],"tie_word_embeddings":false}"#;

    #[test]
    fn llama_3_1_reads_with_its_rope_scaling_and_eos_list() {
        let c = ModelConfig::parse(LLAMA31).unwrap();
        assert_eq!(
            (c.arch, c.head_dim, c.kv_heads, c.qkv_bias),
            (Arch::Llama, 128, 8, false)
        );
        assert_eq!(c.eos, [128001, 128008, 128009]);
        assert_eq!(c.parameters(), 8_030_261_248);
        let f = c.inv_freq();
        // The highest frequency is kept, the lowest divided by the factor.
        assert_eq!(f[0], 1.0);
        let unscaled = 1.0 / 500000f32.powf(126.0 / 128.0);
        assert!((f[63] - unscaled / 8.0).abs() < 1e-12);
    }

    /// What each architecture is refused for, as a table.
    #[test]
    fn what_cannot_be_served_is_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            (r#"{"architectures":["GPT2LMHeadModel"]}"#,
             "unsupported model: architecture GPT2LMHeadModel (served: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"),
            (r#"{"hidden_size":8}"#, "config.json: `architectures` is missing"),
            (r#"{"architectures":["LlamaForCausalLM"],"hidden_act":"gelu"}"#,
             "unsupported model: hidden_act gelu (served: silu)"),
            (r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":3}"#,
             "config.json: 4 attention heads cannot share 3 key/value heads"),
            (r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_attention_heads":4,
                "intermediate_size":8,"num_hidden_layers":1,"vocab_size":10,"max_position_embeddings":8,
                "rope_scaling":{"rope_type":"yarn","factor":4.0}}"#,
             "unsupported model: rope_scaling type yarn (served: default, linear, llama3)"),
            (r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"num_attention_heads":4,"use_sliding_window":true}"#,
             "unsupported model: Qwen2 with use_sliding_window = true"),
            (r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"num_attention_heads":4}"#,
             "config.json: `intermediate_size` is missing"),
        ];
        for (text, want) in cases {
            let err = ModelConfig::parse(text).unwrap_err().to_string();
            assert_eq!(&err, want, "{text}");
        }
    }

    #[test]
    fn qwen2_has_qkv_biases_and_mistral_its_window() {
        let base = r#""hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
            "intermediate_size":128,"num_hidden_layers":2,"vocab_size":100,"max_position_embeddings":256"#;
        let q = ModelConfig::parse(&format!(r#"{{"architectures":["Qwen2ForCausalLM"],{base},"sliding_window":4096,"use_sliding_window":false}}"#)).unwrap();
        assert_eq!((q.qkv_bias, q.window), (true, None));
        let m = ModelConfig::parse(&format!(
            r#"{{"architectures":["MistralForCausalLM"],{base},"sliding_window":4096}}"#
        ))
        .unwrap();
        assert_eq!((m.qkv_bias, m.window), (false, Some(4096)));
    }
}
