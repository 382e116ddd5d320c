//! What an entry becomes in a gateway's config, as TOML text: an MCP
//! server entry's `[[mcp_servers]]` (the package run the way its registry
//! type runs it, or its remote endpoint; the operator's word on each tool
//! from the published risks), a policy pack's `[[invariants]]`, a model
//! preset's `[[backends]]` and `[[models]]`. Written by hand rather than
//! serialized, so the block reads like a hand-written one.
//!
//! Must never: write a secret's value into the config (secrets become
//! `env_from`/`headers_from`: names of the gateway's environment variables).

use serde_json::Value;
use std::collections::BTreeMap;

use super::Options;
use crate::entry::Entry;
use crate::{RegistryError, Result};

/// A TOML string.
pub(crate) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key, quoted when it is not bare.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        q(k)
    }
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

fn inline(map: &BTreeMap<String, String>) -> String {
    format!(
        "{{ {} }}",
        map.iter()
            .map(|(k, v)| format!("{} = {}", key(k), q(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn err(entry: &Entry, message: String) -> RegistryError {
    RegistryError::Install {
        entry: entry.id(),
        message,
    }
}

/// The gateway's name for a server entry: `--as`, or the last part of the
/// entry's name without a `server-`/`mcp-server-` prefix.
pub(crate) fn server_name(entry: &Entry, opts: &Options) -> Result<String> {
    let name = match &opts.server_name {
        Some(n) => n.clone(),
        None => {
            let last = entry.name.rsplit('/').next().unwrap_or(&entry.name);
            let last = last
                .strip_prefix("mcp-server-")
                .or_else(|| last.strip_prefix("server-"))
                .unwrap_or(last);
            last.to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .trim_matches('-')
                .chars()
                .take(32)
                .collect()
        }
    };
    lattice_mcp::tools::check_server_name(&name)
        .map_err(|e| err(entry, format!("{e} (choose one with --as)")))?;
    Ok(name)
}

/// An MCP server entry as a `[[mcp_servers]]` block.
pub(crate) struct ServerBlock {
    pub name: String,
    pub toml: String,
    /// The gateway's environment variables the block reads.
    pub env: Vec<String>,
    pub notes: Vec<String>,
}

/// The value of an argument the operator gave with `--arg NAME=VALUE`.
fn given<'a>(opts: &'a Options, names: &[&str]) -> Option<&'a Vec<String>> {
    names
        .iter()
        .filter(|n| !n.is_empty())
        .find_map(|n| opts.args.get(*n))
}

/// Package or runtime arguments as command-line words.
fn arguments(entry: &Entry, list: Option<&Value>, opts: &Options) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in list.and_then(Value::as_array).into_iter().flatten() {
        let ty = a["type"].as_str().unwrap_or("positional");
        let name = a["name"].as_str().unwrap_or("");
        let hint = a["valueHint"].as_str().unwrap_or("");
        let label = if name.is_empty() { hint } else { name };
        let values: Vec<String> = match (a["value"].as_str(), given(opts, &[name, hint])) {
            (_, Some(v)) => v.clone(),
            (Some(v), None) => vec![v.to_string()],
            (None, None) => match a["default"].as_str() {
                Some(d) => vec![d.to_string()],
                None if a["isRequired"].as_bool() == Some(true) => {
                    return Err(err(
                        entry,
                        format!(
                            "argument `{label}` is required ({}): pass --arg {label}=VALUE",
                            a["description"].as_str().unwrap_or("no description")
                        ),
                    ))
                }
                None => Vec::new(),
            },
        };
        if values.len() > 1 && a["isRepeated"].as_bool() != Some(true) {
            return Err(err(
                entry,
                format!("argument `{label}` takes one value, not {}", values.len()),
            ));
        }
        for v in values {
            if ty == "named" {
                out.push(name.to_string());
            }
            out.push(v);
        }
    }
    Ok(out)
}

/// Environment variables or headers: literal values the entry fixes, and
/// names of the gateway's variables for the rest (`--env NAME=VAR`, or a
/// required one under its own name).
fn from_env(
    entry: &Entry,
    list: Option<&Value>,
    opts: &Options,
    what: &str,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let (mut literal, mut from) = (BTreeMap::new(), BTreeMap::new());
    for v in list.and_then(Value::as_array).into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let secret = v["isSecret"].as_bool() == Some(true);
        if let Some(var) = opts.env.get(&name) {
            from.insert(name, var.clone());
        } else if let (Some(value), false) = (v["value"].as_str(), secret) {
            // A fixed value the publisher set (`{...}` templates excepted).
            if value.contains('{') {
                return Err(err(
                    entry,
                    format!(
                        "{what} `{name}` is a template (`{value}`): pass --env {name}=GATEWAY_VAR"
                    ),
                ));
            }
            literal.insert(name, value.to_string());
        } else if v["isRequired"].as_bool() == Some(true) {
            return Err(err(
                entry,
                format!(
                    "{what} `{name}` is required ({}): pass --env {name}[=GATEWAY_VAR], the gateway's environment variable that holds it",
                    v["description"].as_str().unwrap_or("no description")
                ),
            ));
        }
    }
    Ok((literal, from))
}

/// Runs the package the way its registry type does.
fn runner(entry: &Entry, p: &Value) -> Result<(String, Vec<String>)> {
    let id = p["identifier"].as_str().unwrap_or("");
    let version = p["version"].as_str().unwrap_or("");
    let ty = p["registryType"].as_str().unwrap_or("");
    let hint = p["runtimeHint"].as_str();
    Ok(match (ty, hint) {
        ("npm", None | Some("npx")) => ("npx".into(), vec!["-y".into(), format!("{id}@{version}")]),
        ("pypi", None | Some("uvx")) => ("uvx".into(), vec![format!("{id}=={version}")]),
        ("oci", None | Some("docker")) => (
            "docker".into(),
            vec!["run".into(), "-i".into(), "--rm".into(), {
                if version.is_empty() || id.contains('@') || id.rsplit('/').next().is_some_and(|l| l.contains(':')) {
                    id.to_string()
                } else {
                    format!("{id}:{version}")
                }
            }],
        ),
        ("nuget", None | Some("dnx")) => ("dnx".into(), vec![format!("{id}@{version}"), "--yes".into()]),
        _ => {
            return Err(err(
                entry,
                format!(
                    "a `{ty}` package{} cannot be run by Lattice: pass --command with the program that runs it",
                    hint.map(|h| format!(" run by `{h}`")).unwrap_or_default()
                ),
            ))
        }
    })
}

/// An MCP server entry's `[[mcp_servers]]` block.
pub(crate) fn server(entry: &Entry, opts: &Options) -> Result<ServerBlock> {
    let name = server_name(entry, opts)?;
    let doc = &entry.doc;
    let stdio = doc["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["transport"]["type"] == "stdio");
    let remote = doc["remotes"].as_array().and_then(|r| r.first());
    let mut lines = vec![
        "[[mcp_servers]]".to_string(),
        format!("name = {}", q(&name)),
    ];
    let mut env_vars = Vec::new();
    let mut notes = Vec::new();
    match (stdio, remote, opts.remote) {
        (Some(p), _, false) => {
            let (program, mut args) = match &opts.command {
                Some(c) => (c.clone(), Vec::new()),
                None => {
                    let (program, mut args) = runner(entry, p)?;
                    // Runtime arguments go to the runner, before the package.
                    let runtime = arguments(entry, p.get("runtimeArguments"), opts)?;
                    let at = if program == "npx" { 1 } else { 0 };
                    for (i, a) in runtime.into_iter().enumerate() {
                        args.insert(at + i, a);
                    }
                    (program, args)
                }
            };
            args.extend(arguments(entry, p.get("packageArguments"), opts)?);
            lines.push(format!("command = {}", q(&program)));
            if !args.is_empty() {
                lines.push(format!("args = {}", list(&args)));
            }
            let (env, env_from) = from_env(
                entry,
                p.get("environmentVariables"),
                opts,
                "environment variable",
            )?;
            if !env.is_empty() {
                lines.push(format!("env = {}", inline(&env)));
            }
            if !env_from.is_empty() {
                env_vars.extend(env_from.values().cloned());
                lines.push(format!("env_from = {}", inline(&env_from)));
            }
        }
        (_, Some(r), _) => {
            let url = r["url"].as_str().unwrap_or("");
            if url.contains('{') {
                return Err(err(entry, format!("the remote URL `{url}` has variables: Lattice does not fill them in yet; install a package or register the URL with `lattice mcp add`")));
            }
            lines.push(format!("url = {}", q(url)));
            if r["type"] == "sse" {
                lines.push("transport = \"sse\"".into());
            }
            let (headers, headers_from) = from_env(entry, r.get("headers"), opts, "header")?;
            if !headers.is_empty() {
                lines.push(format!("headers = {}", inline(&headers)));
            }
            if !headers_from.is_empty() {
                env_vars.extend(headers_from.values().cloned());
                lines.push(format!("headers_from = {}", inline(&headers_from)));
            }
            notes.push(format!("`{name}` is reached at {url}"));
        }
        (None, None, _) | (Some(_), None, true) => {
            return Err(err(
                entry,
                if opts.remote {
                    "has no remote endpoint (install its package instead)".into()
                } else {
                    "has no stdio package and no remote endpoint Lattice can run".into()
                },
            ))
        }
    }
    let labels: Vec<String> = entry
        .lattice_meta()
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if !labels.is_empty() {
        lines.push(format!("labels = {}", list(&labels)));
    }
    // The publisher's word on each tool becomes the operator's: hints the
    // policies read (`resource.destructive`, `resource.read_only`).
    for t in entry.tools() {
        let destructive = t.destructive.or(match t.risk.as_deref() {
            Some("destructive") => Some(true),
            _ => None,
        });
        let read_only = t.read_only.or(match t.risk.as_deref() {
            Some("read") => Some(true),
            Some("write" | "destructive") => Some(false),
            _ => None,
        });
        let mut tool = Vec::new();
        if !t.labels.is_empty() {
            tool.push(format!("labels = {}", list(&t.labels)));
        }
        if let Some(r) = &t.risk {
            tool.push(format!("risk = {}", q(r)));
        }
        if let Some(b) = read_only {
            tool.push(format!("read_only = {b}"));
        }
        if let Some(b) = destructive {
            tool.push(format!("destructive = {b}"));
        }
        if !tool.is_empty() {
            lines.push(String::new());
            lines.push(format!("[mcp_servers.tools.{}]", key(&t.name)));
            lines.extend(tool);
        }
    }
    let published = entry.tools().len();
    if published > 0 {
        notes.push(format!(
            "{published} tools pinned to their published definitions: a tool that differs, or one not published, is quarantined until `lattice mcp approve`"
        ));
    } else {
        notes.push("no published tool fingerprints: the tools are pinned when first seen".into());
    }
    Ok(ServerBlock {
        name,
        toml: lines.join("\n") + "\n",
        env: env_vars,
        notes,
    })
}

/// A policy pack's `never_allows` invariants as `[[invariants]]` — what
/// must never happen holds wherever the pack is installed, so every later
/// policy change must keep it; the other claims (`allows_at_most`, ...)
/// speak of the pack's own set and stay with the pack's checks. Those the
/// config already has word for word are left out; the same id with other
/// text is an error.
pub(crate) fn invariants(
    entry: &Entry,
    existing: &[lattice_policy::prove::RawProperty],
) -> Result<String> {
    let mut out = Vec::new();
    for inv in crate::pack::invariants(entry)?
        .into_iter()
        .filter(|i| i.never_allows.is_some())
    {
        if let Some(e) = existing.iter().find(|e| e.id == inv.id) {
            if *e == inv {
                continue;
            }
            return Err(err(
                entry,
                format!(
                    "its invariant `{}` differs from the config's invariant of that id",
                    inv.id
                ),
            ));
        }
        let mut lines = vec!["[[invariants]]".to_string()];
        let Value::Object(fields) = serde_json::to_value(&inv).unwrap_or(Value::Null) else {
            continue;
        };
        for (k, v) in fields {
            match v {
                Value::String(s) if s.contains('\n') && !s.contains("'''") => {
                    lines.push(format!("{} = '''\n{s}'''", key(&k)));
                }
                Value::Null => {}
                other => lines.push(format!(
                    "{} = {}",
                    key(&k),
                    toml::Value::try_from(other)
                        .map(|v| v.to_string())
                        .map_err(|e| err(entry, format!("invariant `{}`: {e}", inv.id)))?
                )),
            }
        }
        out.push(lines.join("\n"));
    }
    Ok(if out.is_empty() {
        String::new()
    } else {
        out.join("\n\n") + "\n"
    })
}

/// Replaces `{var}` in every string of `v` with the preset's variables.
fn substitute(v: &Value, vars: &BTreeMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (k, val) in vars {
                s = s.replace(&format!("{{{k}}}"), val);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn tables(entry: &Entry, header: &str, items: &[Value]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in items {
        let mut lines = vec![format!("[[{header}]]")];
        for (k, v) in item.as_object().into_iter().flatten() {
            let v =
                toml::Value::try_from(v).map_err(|e| err(entry, format!("{header} `{k}`: {e}")))?;
            lines.push(format!("{} = {v}", key(k)));
        }
        out.push(lines.join("\n"));
    }
    Ok(out)
}

/// A model preset's `[[backends]]` and `[[models]]`, its variables filled
/// in from `--arg` or their defaults; also the environment variables
/// (`api_key_env`) the gateway will read.
pub(crate) fn preset(entry: &Entry, opts: &Options) -> Result<(String, Vec<String>)> {
    let mut vars = BTreeMap::new();
    for (name, spec) in entry.doc["variables"].as_object().into_iter().flatten() {
        let value = match (opts.args.get(name), spec["default"].as_str()) {
            (Some(v), _) if v.len() == 1 => v[0].clone(),
            (Some(v), _) => {
                return Err(err(
                    entry,
                    format!("variable `{name}` takes one value, not {}", v.len()),
                ))
            }
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(err(
                    entry,
                    format!(
                        "variable `{name}` is required ({}): pass --arg {name}=VALUE",
                        spec["description"].as_str().unwrap_or("no description")
                    ),
                ))
            }
        };
        vars.insert(name.clone(), value);
    }
    let doc = substitute(&entry.doc, &vars);
    let empty = Vec::new();
    let backends = doc["backends"].as_array().unwrap_or(&empty);
    let models = doc["models"].as_array().unwrap_or(&empty);
    let env = backends
        .iter()
        .filter_map(|b| b["api_key_env"].as_str())
        .map(str::to_string)
        .collect();
    let mut blocks = tables(entry, "backends", backends)?;
    blocks.extend(tables(entry, "models", models)?);
    Ok((blocks.join("\n\n") + "\n", env))
}
