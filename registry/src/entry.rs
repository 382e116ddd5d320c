//! One catalog entry: a JSON document whose `$schema` says its kind,
//! validated against that kind's schema (`registry/schemas/`, compiled
//! once) before anything reads it.
//!
//! Must never: hand out an `Entry` that its schema refused, or guess a
//! kind (an unknown `$schema` is an error naming the ones known).

use crate::{RegistryError, Result};
use serde_json::Value;
use std::sync::OnceLock;

/// What `_meta` holds publishers' data under (the official registry's
/// key); Lattice's own data and signatures live inside it.
pub const PUBLISHER_PROVIDED: &str = "io.modelcontextprotocol.registry/publisher-provided";
/// Lattice's additions to a server entry, under [`PUBLISHER_PROVIDED`].
pub const LATTICE_META: &str = "dev.lattice";

/// The kinds of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An MCP server (`server.json`).
    Server,
    PolicyPack,
    ModelPreset,
    Template,
}

/// The official `server.json` schema versions read as servers (the format
/// is the same but for additions; the newest is what Lattice writes).
pub const SERVER_SCHEMAS: &[&str] = &[
    "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
    "https://static.modelcontextprotocol.io/schemas/2025-10-17/server.schema.json",
    "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json",
];

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Server,
        Kind::PolicyPack,
        Kind::ModelPreset,
        Kind::Template,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::PolicyPack => "policy-pack",
            Kind::ModelPreset => "model-preset",
            Kind::Template => "template",
        }
    }

    /// The `$schema` an entry of this kind declares (the newest, for
    /// servers).
    pub fn schema_url(self) -> &'static str {
        match self {
            Kind::Server => SERVER_SCHEMAS[0],
            Kind::PolicyPack => "https://lattice.dev/schemas/2026-12-01/policy-pack.schema.json",
            Kind::ModelPreset => "https://lattice.dev/schemas/2026-12-01/model-preset.schema.json",
            Kind::Template => "https://lattice.dev/schemas/2026-12-01/template.schema.json",
        }
    }

    /// The path segment of the kind in the API and in catalog folders.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Server => "servers",
            Kind::PolicyPack => "policy-packs",
            Kind::ModelPreset => "model-presets",
            Kind::Template => "templates",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s || k.plural() == s)
    }

    fn from_schema(url: &str) -> Option<Kind> {
        if SERVER_SCHEMAS.contains(&url) {
            return Some(Kind::Server);
        }
        Kind::ALL.into_iter().find(|k| k.schema_url() == url)
    }

    fn schema_text(self) -> &'static str {
        match self {
            Kind::Server => include_str!("../schemas/server.schema.json"),
            Kind::PolicyPack => include_str!("../schemas/policy-pack.schema.json"),
            Kind::ModelPreset => include_str!("../schemas/model-preset.schema.json"),
            Kind::Template => include_str!("../schemas/template.schema.json"),
        }
    }

    /// The kind's compiled schema (compiled on first use).
    fn validator(self) -> Result<&'static jsonschema::Validator> {
        static COMPILED: OnceLock<Vec<std::result::Result<jsonschema::Validator, String>>> =
            OnceLock::new();
        let all = COMPILED.get_or_init(|| {
            Kind::ALL
                .iter()
                .map(|k| {
                    let schema: Value =
                        serde_json::from_str(k.schema_text()).map_err(|e| e.to_string())?;
                    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
                })
                .collect()
        });
        let i = Kind::ALL.iter().position(|k| *k == self).unwrap_or(0);
        match &all[i] {
            Ok(v) => Ok(v),
            Err(e) => Err(RegistryError::Kind {
                origin: format!("registry/schemas/{}.schema.json", self.as_str()),
                message: format!("the bundled schema does not compile: {e}"),
            }),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub description: String,
    /// The document as published (signature included).
    pub doc: Value,
    /// Where it was read from (a file, `bundled:…`, a registry URL).
    pub origin: String,
}

/// A tool as the publisher published it (server entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPin {
    pub name: String,
    /// `lattice-mcp`'s definition hash of the published definition.
    pub hash: String,
    pub risk: Option<String>,
    pub labels: Vec<String>,
    pub destructive: Option<bool>,
    pub read_only: Option<bool>,
}

impl Entry {
    /// Parses and validates `text` read from `origin`.
    pub fn parse(origin: &str, text: &str) -> Result<Entry> {
        let doc: Value = serde_json::from_str(text).map_err(|e| RegistryError::Json {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        Entry::from_value(origin, doc)
    }

    /// Validates an already parsed document.
    pub fn from_value(origin: &str, doc: Value) -> Result<Entry> {
        let kind_err = |message: String| RegistryError::Kind {
            origin: origin.to_string(),
            message,
        };
        let Some(obj) = doc.as_object() else {
            return Err(kind_err("an entry is a JSON object".into()));
        };
        let known = || {
            Kind::ALL
                .iter()
                .map(|k| k.schema_url())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let kind = match obj.get("$schema").and_then(Value::as_str) {
            None => {
                return Err(kind_err(format!(
                    "no `$schema`: an entry names its kind by its schema ({})",
                    known()
                )))
            }
            Some(url) => Kind::from_schema(url).ok_or_else(|| {
                kind_err(format!(
                    "unknown `$schema` {url}: the kinds are {}",
                    known()
                ))
            })?,
        };
        let str_of = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (name, version) = (str_of("name"), str_of("version"));
        let label = if name.is_empty() {
            "the entry".to_string()
        } else {
            format!("{name}@{version}")
        };
        let violations: Vec<String> = kind
            .validator()?
            .iter_errors(&doc)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("  {}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        if !violations.is_empty() {
            return Err(RegistryError::Schema {
                origin: origin.to_string(),
                entry: label,
                kind: kind.as_str(),
                violations: violations.join("\n"),
            });
        }
        let entry = Entry {
            kind,
            description: str_of("description"),
            name,
            version,
            doc,
            origin: origin.to_string(),
        };
        entry.check_names()?;
        Ok(entry)
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The namespace of the name (before the slash).
    pub fn namespace(&self) -> &str {
        self.name.split('/').next().unwrap_or("")
    }

    pub fn title(&self) -> Option<&str> {
        self.doc.get("title").and_then(Value::as_str)
    }

    /// Lattice's data of a server entry (`_meta` → publisher-provided →
    /// `dev.lattice`).
    pub fn lattice_meta(&self) -> Option<&Value> {
        self.doc
            .get("_meta")?
            .get(PUBLISHER_PROVIDED)?
            .get(LATTICE_META)
    }

    /// The tools a server entry publishes.
    pub fn tools(&self) -> Vec<ToolPin> {
        let Some(tools) = self
            .lattice_meta()
            .and_then(|m| m.get("tools"))
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        tools
            .iter()
            .map(|t| ToolPin {
                name: t["name"].as_str().unwrap_or("").to_string(),
                hash: t["hash"].as_str().unwrap_or("").to_string(),
                risk: t.get("risk").and_then(Value::as_str).map(str::to_string),
                labels: t
                    .get("labels")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                destructive: t.get("destructive").and_then(Value::as_bool),
                read_only: t.get("read_only").and_then(Value::as_bool),
            })
            .collect()
    }

    /// What the schema cannot say: names that must be unique within the
    /// entry are.
    fn check_names(&self) -> Result<()> {
        let (list, field, what) = match self.kind {
            Kind::Server => (
                self.lattice_meta().and_then(|m| m.get("tools")),
                "name",
                "tool",
            ),
            Kind::PolicyPack => (self.doc.get("policies"), "file", "policy file"),
            Kind::ModelPreset => (self.doc.get("backends"), "name", "backend"),
            Kind::Template => (None, "", ""),
        };
        let mut seen = std::collections::BTreeSet::new();
        for item in list.and_then(Value::as_array).into_iter().flatten() {
            let n = item[field].as_str().unwrap_or("");
            if !seen.insert(n) {
                return Err(RegistryError::Schema {
                    origin: self.origin.clone(),
                    entry: self.id(),
                    kind: self.kind.as_str(),
                    violations: format!("  {what} `{n}` is listed twice"),
                });
            }
        }
        if self.kind == Kind::ModelPreset {
            let backends: std::collections::BTreeSet<&str> = self.doc["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["name"].as_str())
                .collect();
            for m in self.doc["models"].as_array().into_iter().flatten() {
                for b in m["backends"].as_array().into_iter().flatten() {
                    let b = b.as_str().unwrap_or("");
                    if !backends.contains(b) {
                        return Err(RegistryError::Schema {
                            origin: self.origin.clone(),
                            entry: self.id(),
                            kind: self.kind.as_str(),
                            violations: format!(
                                "  model `{}` names backend `{b}`, which the preset does not define",
                                m["name"].as_str().unwrap_or("")
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
