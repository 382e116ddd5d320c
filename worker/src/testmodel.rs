//! Tiny models made on the spot: deterministic random weights in a real
//! Hugging Face directory layout (`config.json`, safetensors — one file or
//! shards with an index —, a byte-level BPE `tokenizer.json`,
//! `tokenizer_config.json` with a chat template, `generation_config.json`).
//! No model can be downloaded where Lattice is tested, so the tests, the
//! benchmarks and `lattice worker --make-test-model` make their own.
//!
//! Must never: be mistaken for a trained model — the weights are noise,
//! and the output is only meaningful compared with another implementation
//! of the same files.

use crate::error::{file_err, Result, WorkerError};
use crate::model::Arch;
use lattice_gpu_kernels::check::Rng;
use lattice_gpu_kernels::DType;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The chat format a tiny model's template and special tokens follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `<|start_header_id|>role<|end_header_id|>`, tool calls as JSON
    /// (Llama 3.1).
    Llama3,
    /// `<|im_start|>role`, tool calls in `<tool_call>` tags (Qwen 2.5,
    /// Hermes).
    Hermes,
    /// `[INST] ... [/INST]`, tool calls as a JSON list after
    /// `[TOOL_CALLS]`, call ids of nine letters and digits (Mistral 7B
    /// Instruct v0.3).
    Mistral,
}

/// What to make.
#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: Arch,
    pub flavor: Flavor,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub dtype: DType,
    pub tie_embeddings: bool,
    /// Llama 3.1's RoPE scaling in `config.json`.
    pub llama3_rope: bool,
    pub max_positions: usize,
    /// Weight files: 1 is `model.safetensors`, more are shards with an index.
    pub shards: usize,
    pub seed: u64,
}

impl Spec {
    /// A Llama of hidden 128, head_dim 32, 2 KV heads, 2 layers.
    pub fn tiny_llama() -> Self {
        Self {
            arch: Arch::Llama,
            flavor: Flavor::Llama3,
            hidden: 128,
            intermediate: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            dtype: DType::F32,
            tie_embeddings: false,
            llama3_rope: true,
            max_positions: 2048,
            shards: 1,
            seed: 7,
        }
    }

    /// A Mistral (a sliding window; its own tool-call format).
    pub fn tiny_mistral() -> Self {
        Self {
            arch: Arch::Mistral,
            flavor: Flavor::Mistral,
            llama3_rope: false,
            seed: 13,
            ..Self::tiny_llama()
        }
    }

    /// A Qwen2 (Q/K/V biases, tied embeddings, Hermes tool calls).
    pub fn tiny_qwen2() -> Self {
        Self {
            arch: Arch::Qwen2,
            flavor: Flavor::Hermes,
            tie_embeddings: true,
            llama3_rope: false,
            seed: 11,
            ..Self::tiny_llama()
        }
    }
}

/// Special tokens of both flavors (the tokenizer carries all of them).
pub const SPECIALS: &[&str] = &[
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<tool_call>",
    "</tool_call>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_CALLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
];

/// Words whose byte-level pieces get merges (so common text is a few
/// tokens, as with a real vocabulary).
const WORDS: &[&str] = &[
    "the",
    "and",
    "to",
    "of",
    "is",
    "you",
    "a",
    "in",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "tool",
    "call",
    "name",
    "arguments",
    "weather",
    "city",
    "json",
    "true",
    "false",
    "hello",
    "world",
    "user",
    "assistant",
    "system",
    "function",
    "parameters",
    "type",
    "object",
    "string",
    "properties",
    "required",
    "number",
    "Paris",
    "London",
    "get",
    "answer",
];

/// GPT-2's byte-to-character table of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

/// `tokenizer.json` of a byte-level BPE over the bytes, merges for
/// [`WORDS`] and the [`SPECIALS`]; its size.
pub fn tokenizer_json() -> (Value, usize) {
    let table = byte_chars();
    let mut vocab: BTreeMap<String, usize> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for c in &table {
        order.push(c.to_string());
    }
    let mut merges: Vec<String> = Vec::new();
    for word in WORDS {
        for prefixed in [format!(" {word}"), (*word).to_string()] {
            let pieces: Vec<String> = prefixed
                .bytes()
                .map(|b| table[b as usize].to_string())
                .collect();
            let mut acc = pieces[0].clone();
            for p in &pieces[1..] {
                let merged = format!("{acc}{p}");
                if !order.contains(&merged) {
                    merges.push(format!("{acc} {p}"));
                    order.push(merged.clone());
                }
                acc = merged;
            }
        }
    }
    for (i, t) in order.iter().enumerate() {
        vocab.insert(t.clone(), i);
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Qwen's tool-call tags are ordinary added tokens: they stay in
            // decoded text, where the tool-call parser finds them.
            let special = !s.contains("tool_call");
            json!({"id": order.len() + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": special})
        })
        .collect();
    let size = order.len() + SPECIALS.len();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    (tok, size)
}

/// The id of special token `s` in [`tokenizer_json`].
pub fn special_id(s: &str) -> Option<u32> {
    let (_, size) = tokenizer_json();
    SPECIALS
        .iter()
        .position(|x| *x == s)
        .map(|i| (size - SPECIALS.len() + i) as u32)
}

fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for v in values {
        match dtype {
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes()),
        }
    }
    out
}

/// Tensors of at least this many values are filled by all cores, in
/// chunks of [`FILL_CHUNK`] values, each from its own seed (an 8B-shaped
/// model is ~7 billion values: one core took ~50 s of a lent GPU's
/// minutes). Smaller ones — every tiny test model's — come from the one
/// sequence, as before.
const PARALLEL_FILL: usize = 1 << 22;
const FILL_CHUNK: usize = 1 << 20;

/// `n` values `offset + scale · uniform`, encoded in `dtype`: chunk `i`
/// drawn from a seed made of one draw of `rng` and `i`, so the bytes
/// depend only on `rng`, never on the number of threads.
fn fill_parallel(rng: &mut Rng, n: usize, scale: f32, offset: f32, dtype: DType) -> Vec<u8> {
    rng.uniform();
    let base = rng.0;
    let chunks = n.div_ceil(FILL_CHUNK);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(chunks);
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); chunks];
    std::thread::scope(|scope| {
        for (t, mine) in parts.chunks_mut(chunks.div_ceil(threads)).enumerate() {
            let first = t * chunks.div_ceil(threads);
            scope.spawn(move || {
                for (j, part) in mine.iter_mut().enumerate() {
                    let i = first + j;
                    let mut r = Rng((base ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
                    let len = FILL_CHUNK.min(n - i * FILL_CHUNK);
                    let values: Vec<f32> = (0..len).map(|_| offset + scale * r.uniform()).collect();
                    *part = encode(&values, dtype);
                }
            });
        }
    });
    parts.concat()
}

fn st_dtype(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
    }
}

/// The vocabulary size a spec's `config.json` declares (the tokenizer's,
/// rounded up to 64 as real checkpoints pad it).
pub fn vocab_size() -> usize {
    tokenizer_json().1.div_ceil(64) * 64
}

/// Writes a model of `spec` into `dir` (created if missing).
pub fn write(dir: &Path, spec: &Spec) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let vocab = vocab_size();
    let (h, hd) = (spec.hidden, spec.hidden / spec.heads);
    let (q, kv) = (spec.heads * hd, spec.kv_heads * hd);
    let mut rng = Rng(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let bytes = if n >= PARALLEL_FILL {
            fill_parallel(&mut rng, n, scale, offset, spec.dtype)
        } else {
            let values: Vec<f32> = (0..n).map(|_| offset + scale * rng.uniform()).collect();
            encode(&values, spec.dtype)
        };
        tensors.push((name, shape, bytes));
    };
    let lin = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    // Tied embeddings are also the output head: smaller, so the logits
    // spread over several tokens instead of one.
    let embed_scale = if spec.tie_embeddings { 0.1 } else { 1.0 };
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, h],
        embed_scale,
        0.0,
    );
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![h], 0.1, 1.0);
        add(
            format!("{p}.self_attn.q_proj.weight"),
            vec![q, h],
            lin(h),
            0.0,
        );
        add(
            format!("{p}.self_attn.k_proj.weight"),
            vec![kv, h],
            lin(h),
            0.0,
        );
        add(
            format!("{p}.self_attn.v_proj.weight"),
            vec![kv, h],
            lin(h),
            0.0,
        );
        if spec.arch == Arch::Qwen2 {
            add(format!("{p}.self_attn.q_proj.bias"), vec![q], 0.1, 0.0);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv], 0.1, 0.0);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv], 0.1, 0.0);
        }
        add(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, q],
            lin(q),
            0.0,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.1,
            1.0,
        );
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![spec.intermediate, h],
            lin(h),
            0.0,
        );
        add(
            format!("{p}.mlp.up_proj.weight"),
            vec![spec.intermediate, h],
            lin(h),
            0.0,
        );
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, spec.intermediate],
            lin(spec.intermediate),
            0.0,
        );
    }
    add("model.norm.weight".into(), vec![h], 0.1, 1.0);
    if !spec.tie_embeddings {
        add("lm_head.weight".into(), vec![vocab, h], lin(h), 0.0);
    }
    write_weights(dir, spec, &tensors)?;
    write_json(dir, "config.json", &config_json(spec, vocab))?;
    write_json(dir, "tokenizer.json", &tokenizer_json().0)?;
    write_json(dir, "tokenizer_config.json", &tokenizer_config(spec.flavor))?;
    let eos = eos_ids(spec.flavor);
    write_json(
        dir,
        "generation_config.json",
        &json!({"bos_token_id": bos_id(spec.flavor), "eos_token_id": eos, "temperature": 0.6, "top_p": 0.9}),
    )?;
    Ok(())
}

fn write_weights(dir: &Path, spec: &Spec, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let shards = spec.shards.max(1);
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (s, group) in tensors.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, shards)
        };
        let mut views = Vec::new();
        for (name, shape, bytes) in group {
            let view =
                TensorView::new(st_dtype(spec.dtype), shape.clone(), bytes).map_err(|e| {
                    WorkerError::Tensor {
                        name: name.clone(),
                        detail: e.to_string(),
                    }
                })?;
            views.push((name.clone(), view));
            weight_map.insert(name.clone(), json!(file));
        }
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, None, &path).map_err(|e| file_err(&path, e))?;
    }
    if shards > 1 {
        write_json(
            dir,
            "model.safetensors.index.json",
            &json!({"metadata": {}, "weight_map": weight_map}),
        )?;
    }
    Ok(())
}

fn config_json(spec: &Spec, vocab: usize) -> Value {
    let arch = match spec.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let mut c = json!({
        "architectures": [arch.0],
        "model_type": arch.1,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": if spec.arch == Arch::Qwen2 { 1_000_000.0 } else { 500_000.0 },
        "max_position_embeddings": spec.max_positions,
        "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_embeddings,
        "bos_token_id": bos_id(spec.flavor),
        "eos_token_id": eos_ids(spec.flavor),
        "torch_dtype": match spec.dtype { DType::F32 => "float32", DType::F16 => "float16", DType::BF16 => "bfloat16" },
    });
    if spec.arch == Arch::Qwen2 {
        c["sliding_window"] = json!(spec.max_positions);
        c["max_window_layers"] = json!(spec.layers);
        c["use_sliding_window"] = json!(false);
    }
    if spec.llama3_rope {
        c["rope_scaling"] = json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_type": "llama3"});
    }
    c
}

fn bos_id(flavor: Flavor) -> Option<u32> {
    match flavor {
        Flavor::Llama3 => special_id("<|begin_of_text|>"),
        Flavor::Hermes => None,
        Flavor::Mistral => special_id("<s>"),
    }
}

fn eos_ids(flavor: Flavor) -> Vec<u32> {
    let names: &[&str] = match flavor {
        Flavor::Llama3 => &["<|end_of_text|>", "<|eot_id|>"],
        Flavor::Hermes => &["<|im_end|>", "<|endoftext|>"],
        Flavor::Mistral => &["</s>"],
    };
    names.iter().filter_map(|n| special_id(n)).collect()
}

fn tokenizer_config(flavor: Flavor) -> Value {
    match flavor {
        Flavor::Llama3 => json!({
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "chat_template": crate::testmodel::templates::LLAMA3,
            "model_max_length": 131072,
        }),
        Flavor::Hermes => json!({
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "chat_template": crate::testmodel::templates::HERMES,
            "model_max_length": 32768,
        }),
        Flavor::Mistral => json!({
            "bos_token": "<s>",
            "eos_token": "</s>",
            "chat_template": crate::testmodel::templates::MISTRAL,
            "model_max_length": 32768,
        }),
    }
}

fn write_json(dir: &Path, name: &str, v: &Value) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(v).map_err(|e| file_err(&path, e))?;
    std::fs::write(&path, text).map_err(|e| file_err(&path, e))
}

/// Chat templates in the two formats, trimmed from the published ones
/// (Llama 3.1's and Qwen 2.5's) but keeping their structure: system
/// prompt, tool definitions, tool calls and tool results.
pub mod templates {
    pub const LLAMA3: &str = concat!(
        "{{- bos_token }}",
        "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}",
        "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}",
        "{%- if tools is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}",
        "{{- system_message }}",
        "{%- if tools is not none %}{{- '\\nGiven the following functions, respond with a JSON for a function call with its proper arguments that best answers the given prompt.\\n\\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\\n\\n' }}",
        "{%- for t in tools %}{{- t | tojson }}{{- '\\n\\n' }}{%- endfor %}{%- endif %}",
        "{{- '<|eot_id|>' }}",
        "{%- for message in messages %}",
        "{%- if message.role == 'assistant' and message.tool_calls %}",
        "{%- set tool_call = message.tool_calls[0].function %}",
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{{- '{\"name\": \"' + tool_call.name + '\", \"parameters\": ' }}{{- tool_call.arguments | tojson }}{{- '}' }}{{- '<|eot_id|>' }}",
        "{%- elif message.role == 'tool' or message.role == 'ipython' %}",
        "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}{%- if message.content is mapping %}{{- message.content | tojson }}{%- else %}{{- message.content }}{%- endif %}{{- '<|eot_id|>' }}",
        "{%- else %}",
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}",
        "{%- endif %}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}",
    );

    pub const HERMES: &str = concat!(
        "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}",
        "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}",
        "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}",
        "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}",
        "{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}",
        "{%- for message in messages %}",
        "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}",
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
        "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}",
        "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}",
        "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}",
        "{%- elif message.role == 'tool' %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}",
        "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}",
        "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    );

    /// Mistral 7B Instruct v0.3's, trimmed: the tools before the last
    /// user message, calls after `[TOOL_CALLS]` with ids of exactly nine
    /// characters (the published template refuses any other), results in
    /// `[TOOL_RESULTS]`.
    pub const MISTRAL: &str = concat!(
        "{{- bos_token }}",
        "{%- for message in messages %}",
        "{%- if message.role == 'user' %}",
        "{%- if tools and loop.last %}{{- '[AVAILABLE_TOOLS] ' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}",
        "{{- '[INST] ' + message.content + '[/INST]' }}",
        "{%- elif message.role == 'assistant' and message.tool_calls %}",
        "{{- '[TOOL_CALLS] [' }}",
        "{%- for tool_call in message.tool_calls %}",
        "{%- if tool_call.id is not string or tool_call.id | length != 9 %}{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}{%- endif %}",
        "{%- set f = tool_call.function %}",
        "{{- '{\"name\": \"' + f.name + '\", \"arguments\": ' + f.arguments | tojson + ', \"id\": \"' + tool_call.id + '\"}' }}",
        "{%- if not loop.last %}{{- ', ' }}{%- endif %}",
        "{%- endfor %}",
        "{{- ']' + eos_token }}",
        "{%- elif message.role == 'assistant' %}",
        "{{- ' ' + message.content + eos_token }}",
        "{%- elif message.role == 'tool' %}",
        "{{- '[TOOL_RESULTS] {\"content\": ' + message.content | tojson + ', \"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}",
        "{%- endif %}",
        "{%- endfor %}",
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_large_tensor_is_filled_alike_every_time_and_in_every_chunk() {
        let n = PARALLEL_FILL + FILL_CHUNK / 2;
        let a = fill_parallel(&mut Rng(77), n, 0.5, 1.0, DType::BF16);
        let b = fill_parallel(&mut Rng(77), n, 0.5, 1.0, DType::BF16);
        assert_eq!(a.len(), n * 2);
        assert_eq!(a, b);
        let values: Vec<f32> = a
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        // offset 1 ± 0.5: every value in [0.5, 1.5], none left unfilled.
        assert!(values.iter().all(|v| (0.5..=1.5).contains(v)));
        // Chunks differ from one another (each has its own seed), and the
        // last, partial one is there.
        let chunk = |i: usize| &values[i * FILL_CHUNK..(i * FILL_CHUNK + 64).min(n)];
        assert_ne!(chunk(0), chunk(1));
        assert_ne!(chunk(1), chunk(PARALLEL_FILL / FILL_CHUNK));
        let other = fill_parallel(&mut Rng(79), n, 0.5, 1.0, DType::BF16);
        assert_ne!(a, other);
    }
}
