//! A model's chat template (`tokenizer_config.json`'s `chat_template`,
//! Jinja) rendered with `minijinja` as Hugging Face `transformers` renders
//! it: `messages`, `tools`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, Python string methods (`minijinja-contrib`'s pycompat),
//! `raise_exception`, and a `tojson` that writes what Python's
//! `json.dumps` writes (`", "` and `": "` separators, no HTML escaping),
//! so the prompt is the one the model was trained on.
//!
//! Must never: let a template run unbounded (minijinja has no I/O, and
//! recursion is bounded), or swallow a template error (the request gets
//! it, naming the template).

use crate::error::{Result, WorkerError};
use minijinja::value::{Kwargs, Serde, Value as JValue};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value;

pub struct Template {
    source: String,
    env: Environment<'static>,
    bos: Option<String>,
    eos: Option<String>,
}

/// Python's `json.dumps(v, ensure_ascii=False)`, with `indent` as Python
/// writes it.
pub fn python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let (nl, pad, pad_in) = match indent {
        Some(n) => ("\n", " ".repeat(n * depth), " ".repeat(n * (depth + 1))),
        None => ("", String::new(), String::new()),
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(nl);
                out.push_str(&pad_in);
                python_json(x, indent, depth + 1, out);
            }
            out.push_str(nl);
            out.push_str(&pad);
            out.push(']');
        }
        Value::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(nl);
                out.push_str(&pad_in);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(x, indent, depth + 1, out);
            }
            out.push_str(nl);
            out.push_str(&pad);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(v: JValue, kwargs: Kwargs) -> std::result::Result<JValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

fn raise_exception(msg: String) -> std::result::Result<JValue, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl Template {
    pub fn new(source: String, bos: Option<String>, eos: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.clone())
            .map_err(|e| WorkerError::Tokenizer(format!("chat_template: {e}")))?;
        Ok(Self {
            source,
            env,
            bos,
            eos,
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages` (and `tools`, when given).
    pub fn render(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| WorkerError::Tokenizer(format!("chat_template: {e}")))?;
        tmpl.render(minijinja::context! {
            messages => JValue::from(Serde(messages)),
            tools => tools.map(|t| JValue::from(Serde(t))),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| WorkerError::Tokenizer(format!("chat_template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testmodel::templates;
    use serde_json::json;

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let v = json!({"name": "get_weather", "parameters": {"city": "Zürich <x>", "n": [1, 2]}, "e": {}});
        let mut out = String::new();
        python_json(&v, None, 0, &mut out);
        // Keys in the order written, as a Python dict keeps them
        // (serde_json's `preserve_order`, which llguidance turns on).
        assert_eq!(
            out,
            r#"{"name": "get_weather", "parameters": {"city": "Zürich <x>", "n": [1, 2]}, "e": {}}"#
        );
        let mut pretty = String::new();
        python_json(&json!({"a": [1]}), Some(2), 0, &mut pretty);
        assert_eq!(pretty, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn the_llama3_template_renders_a_chat_with_tools() {
        let t = Template::new(
            templates::LLAMA3.into(),
            Some("<|begin_of_text|>".into()),
            None,
        )
        .unwrap();
        let messages = json!([{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Weather in Paris?"}]);
        let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
        let out = t.render(&messages, Some(&tools), true).unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nBe brief.\n\
             Given the following functions, respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n\
             Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n\
             {\"type\": \"function\", \"function\": {\"name\": \"get_weather\"}}\n\n<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn the_hermes_template_renders_tool_calls_and_results() {
        let t = Template::new(templates::HERMES.into(), None, Some("<|im_end|>".into())).unwrap();
        let messages = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "content": "42"}
        ]);
        let out = t.render(&messages, None, true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_error_is_reported_not_swallowed() {
        let t = Template::new(
            "{{ raise_exception('roles must alternate') }}".into(),
            None,
            None,
        )
        .unwrap();
        let err = t.render(&json!([]), None, true).unwrap_err().to_string();
        assert!(
            err.starts_with("tokenizer: chat_template: invalid operation: roles must alternate"),
            "{err}"
        );
    }
}
