//! The layer rules of ARCHITECTURE.md, checked on the source: every
//! `crate::` path a gateway module names points to a strictly lower layer;
//! doors never import `proxy`, `server` or each other; `config` imports
//! nothing of the gateway but `error`; only `state` opens `state.db`; only
//! `respond` writes an answer to the agent; the
//! files of one folder do not import each other in a circle; no library
//! crate depends on the `lattice` binary package or on GPU code. The
//! checker is plain functions over source text, so its own tests feed it
//! violations and watch it catch them.

#![allow(clippy::expect_used)] // a test: a broken tree should stop it loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The gateway's top-level modules, lowest layer first. A module may name
/// only modules of a strictly lower layer. Keep in step with ARCHITECTURE.md.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("metrics", 0),
    ("demo", 0),
    ("outage", 0),
    ("config", 1),
    ("state", 2),
    ("cluster", 2),
    ("discovered", 2),
    ("otlp", 2),
    ("limits", 3),
    ("egress", 2),
    ("identity", 3),
    ("invariants", 3),
    ("tls", 4),
    ("mcp_hub", 3),
    ("runtime", 4),
    ("change_audit", 5),
    ("conn", 5),
    ("enforce", 5),
    ("reload", 6),
    ("discovery", 6),
    ("call", 6),
    ("respond", 7),
    ("spans", 7),
    ("intake", 8),
    ("route", 9),
    ("mcp", 9),
    ("llm", 9),
    ("admin", 9),
    ("ui", 9),
    ("transparency", 9),
    ("proxy", 10),
    ("server", 11),
];

/// The doors: one per protocol, beside each other, never importing each
/// other or the dispatch above them.
const DOORS: &[&str] = &["route", "mcp", "llm", "admin", "ui", "transparency"];

/// What `config` may import: only the error type.
const CONFIG_MAY_IMPORT: &[&str] = &["error"];

/// Modules on the request path, whose functions stay short enough to read.
const REQUEST_PATH: &[&str] = &[
    "call", "respond", "intake", "enforce", "route", "mcp", "llm", "admin", "ui", "proxy",
    "limits", "identity",
];

/// The longest a request-path function may be, in lines.
const MAX_FN_LINES: usize = 120;

/// The longest a source file may be, tests not counted, in lines.
const MAX_FILE_LINES: usize = 700;

/// Library crates must not depend on these packages.
const FORBIDDEN_DEPS: &[&str] = &["lattice", "lattice-gpu-kernels", "cudarc"];

/// The crates that may link GPU code (never the binary's package): the
/// kernels themselves, the worker that runs them, and the benchmarks that
/// measure it.
const GPU_LINKERS: &[&str] = &[
    "lattice-gpu-kernels",
    "lattice-worker",
    "lattice-load-tests",
];

/// A source file: its path under `src/` and its text.
struct Source {
    rel: String,
    text: String,
}

/// The code of a file without comments and without its test module
/// (tests, at the end by convention, may reach anywhere).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find("//") {
            // Crude but enough here: `//` inside a string literal is rare in
            // import lines, and a false cut only drops what follows.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The first segment after each `crate::` (grouped imports included):
/// `crate::a::b`, `crate::{a::b, c}` name `a` and `c`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `lattice_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => ident.push(c),
                    _ if item_start && !ident.is_empty() => {
                        refs.insert(std::mem::take(&mut ident));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !ident.is_empty() {
                refs.insert(ident);
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                refs.insert(ident);
            }
        }
    }
    refs
}

/// Sibling files a file of a folder names (`super::x`, `crate::<folder>::x`).
fn sibling_refs(code: &str, folder: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for prefix in ["super::".to_string(), format!("crate::{folder}::")] {
        let mut rest = code;
        while let Some(i) = rest.find(&prefix) {
            rest = &rest[i + prefix.len()..];
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if siblings.contains(&ident) {
                refs.insert(ident);
            }
        }
    }
    refs
}

/// The top-level module a file belongs to (`mcp/endpoint.rs` → `mcp`).
fn top_module(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Every rule the sources break, as readable lines.
fn violations(sources: &[Source]) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut out = Vec::new();
    let mut folders: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for src in sources {
        let module = top_module(&src.rel);
        if module == "lib" {
            continue;
        }
        let code = code(&src.text);
        let Some(&own) = layer.get(module) else {
            out.push(format!(
                "{}: module `{module}` has no layer in LAYERS",
                src.rel
            ));
            continue;
        };
        for r in crate_refs(&code) {
            if r == module || !layer.contains_key(r.as_str()) {
                continue; // itself, or a re-export at the crate root
            }
            if DOORS.contains(&module) && (r == "proxy" || r == "server") {
                out.push(format!("{}: door `{module}` imports `{r}`", src.rel));
            } else if DOORS.contains(&module) && DOORS.contains(&r.as_str()) {
                out.push(format!("{}: door `{module}` imports door `{r}`", src.rel));
            } else if module == "config" && !CONFIG_MAY_IMPORT.contains(&r.as_str()) {
                out.push(format!("{}: `config` imports `{r}`", src.rel));
            } else if layer[r.as_str()] >= own {
                out.push(format!(
                    "{}: `{module}` (layer {own}) imports `{r}` (layer {})",
                    src.rel,
                    layer[r.as_str()]
                ));
            }
        }
        let header: Vec<&str> = src
            .text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim())
            .collect();
        if header.is_empty() || !header.join(" ").contains("Must never") {
            out.push(format!(
                "{}: no `//!` header saying what it owns and what it must never do",
                src.rel
            ));
        }
        if module != "state" && (code.contains("state.db") || code.contains("Connection::open")) {
            out.push(format!(
                "{}: only `state` opens the state database",
                src.rel
            ));
        }
        if module != "respond" && code.contains("write_response_") {
            out.push(format!(
                "{}: only `respond` writes an answer to the agent",
                src.rel
            ));
        }
        if let Some((folder, file)) = src.rel.split_once('/') {
            let file = file.strip_suffix(".rs").unwrap_or(file);
            if file != "mod" && !file.contains('/') {
                folders
                    .entry(folder.to_string())
                    .or_default()
                    .insert(file.to_string(), code);
            }
        }
    }
    for (folder, files) in &folders {
        let names: BTreeSet<String> = files.keys().cloned().collect();
        let edges: BTreeMap<&str, BTreeSet<String>> = files
            .iter()
            .map(|(f, code)| {
                let mut refs = sibling_refs(code, folder, &names);
                refs.remove(f);
                (f.as_str(), refs)
            })
            .collect();
        if let Some(cycle) = find_cycle(&edges) {
            out.push(format!(
                "{folder}/: files import each other in a circle: {cycle}"
            ));
        }
    }
    out
}

/// Files over `MAX_FILE_LINES` and request-path functions over
/// `MAX_FN_LINES` (a function runs from its `fn` line to the closing brace
/// at its own indentation, as rustfmt writes it).
fn size_violations(sources: &[Source], request_path: bool) -> Vec<String> {
    let mut out = Vec::new();
    for src in sources {
        let lines: Vec<&str> = src.text.lines().collect();
        let end = lines
            .iter()
            .position(|l| l.trim_start().starts_with("#[cfg(test)]"))
            .unwrap_or(lines.len());
        if end > MAX_FILE_LINES {
            out.push(format!(
                "{}: {end} lines (at most {MAX_FILE_LINES})",
                src.rel
            ));
        }
        if !request_path || !REQUEST_PATH.contains(&top_module(&src.rel)) {
            continue;
        }
        for (i, line) in lines[..end].iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let sig = ["pub(crate) ", "pub(super) ", "pub ", ""]
                .iter()
                .filter_map(|vis| trimmed.strip_prefix(vis))
                .map(|rest| rest.strip_prefix("async ").unwrap_or(rest))
                .find_map(|rest| rest.strip_prefix("fn "));
            let Some(sig) = sig else { continue };
            let name: String = sig
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let close = format!("{indent}}}");
            let Some(len) = lines[i + 1..end].iter().position(|l| *l == close) else {
                continue; // a declaration without a body
            };
            if len + 2 > MAX_FN_LINES {
                out.push(format!(
                    "{}: fn {name} is {} lines (at most {MAX_FN_LINES})",
                    src.rel,
                    len + 2
                ));
            }
        }
    }
    out
}

/// A cycle in a directed graph, as `a → b → a`, if there is one.
fn find_cycle(edges: &BTreeMap<&str, BTreeSet<String>>) -> Option<String> {
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<&str> = path[i..].to_vec();
            cycle.push(n);
            return Some(cycle.join(" → "));
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m.as_str(), edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// Library crates (every workspace member but the binary package) that
/// depend on a forbidden package.
fn crate_violations(manifests: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, text) in manifests {
        let Ok(doc) = text.parse::<toml::Table>() else {
            out.push(format!("{name}: Cargo.toml does not parse"));
            continue;
        };
        let package = doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        if package == "lattice" {
            continue; // the binary links everything
        }
        for section in ["dependencies", "build-dependencies"] {
            let Some(deps) = doc.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for dep in deps.keys() {
                let gpu_allowed = GPU_LINKERS.contains(&package) && dep != "lattice";
                if FORBIDDEN_DEPS.contains(&dep.as_str()) && !gpu_allowed {
                    out.push(format!(
                        "{name}: library crate `{package}` depends on `{dep}`"
                    ));
                }
            }
        }
    }
    out
}

fn read_sources(dir: &Path, base: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_sources(&p, base, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p
                .strip_prefix(base)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("read source");
            out.push(Source { rel, text });
        }
    }
}

#[test]
fn the_gateway_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    read_sources(&src, &src, &mut sources);
    assert!(sources.len() > 20, "read the gateway's sources");
    let found = violations(&sources);
    assert!(
        found.is_empty(),
        "layer rules broken:\n{}",
        found.join("\n")
    );
    // Every module in LAYERS exists, so the table cannot rot.
    for (module, _) in LAYERS {
        assert!(
            sources.iter().any(|s| top_module(&s.rel) == *module),
            "LAYERS names `{module}`, which is not a module of the gateway"
        );
    }
}

#[test]
fn files_and_request_path_functions_stay_readable() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut read = 0;
    for entry in std::fs::read_dir(&root).expect("workspace") {
        let src = entry.expect("entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mut sources = Vec::new();
        read_sources(&src, &src, &mut sources);
        read += sources.len();
        let is_gateway = src.ends_with("gateway/src");
        found.extend(size_violations(&sources, is_gateway));
    }
    assert!(read > 60, "read the workspace's sources ({read})");
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_library_crate_depends_on_the_binary_or_gpu_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .expect("workspace manifest")
        .parse()
        .expect("parses");
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("members");
    let manifests: Vec<(String, String)> = members
        .iter()
        .filter_map(|m| m.as_str())
        .map(|m| {
            let text = std::fs::read_to_string(root.join(m).join("Cargo.toml")).expect("manifest");
            (format!("{m}/Cargo.toml"), text)
        })
        .collect();
    assert!(manifests
        .iter()
        .any(|(_, t)| t.contains("name = \"lattice\"")));
    let found = crate_violations(&manifests);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

// The checker's own tests: each rule, broken once on purpose.

fn src(rel: &str, text: &str) -> Source {
    Source {
        rel: rel.into(),
        text: format!("//! A module. Must never: break a rule.\n{text}"),
    }
}

#[test]
fn a_module_without_a_header_is_caught() {
    let mut s = src("call.rs", "");
    s.text = "//! Owns calls.\nfn f() {}\n".into();
    assert_eq!(
        violations(&[s]),
        ["call.rs: no `//!` header saying what it owns and what it must never do"]
    );
}

#[test]
fn a_door_that_imports_proxy_is_caught() {
    let found = violations(&[src("mcp/endpoint.rs", "use crate::proxy::Gateway;\n")]);
    assert_eq!(found, ["mcp/endpoint.rs: door `mcp` imports `proxy`"]);
}

#[test]
fn doors_importing_each_other_are_caught_in_grouped_imports_too() {
    let found = violations(&[src(
        "llm/endpoint.rs",
        "use crate::{call::Call, mcp::serve};\nfn f() { crate::admin::x(); }\n",
    )]);
    assert_eq!(
        found,
        [
            "llm/endpoint.rs: door `llm` imports door `admin`",
            "llm/endpoint.rs: door `llm` imports door `mcp`",
        ]
    );
}

#[test]
fn config_importing_anything_but_error_is_caught() {
    let found = violations(&[src(
        "config/mod.rs",
        "use crate::GatewayError;\nuse crate::error::X;\nfn f() { crate::identity::jwt::x(); }\n",
    )]);
    assert_eq!(found, ["config/mod.rs: `config` imports `identity`"]);
}

#[test]
fn an_upward_import_is_caught_and_tests_and_comments_are_not_read() {
    let found = violations(&[src(
        "runtime.rs",
        "// crate::proxy in a comment\nuse crate::respond;\n#[cfg(test)]\nmod tests { use crate::server; }\n",
    )]);
    assert_eq!(
        found,
        ["runtime.rs: `runtime` (layer 4) imports `respond` (layer 7)"]
    );
}

#[test]
fn opening_the_state_database_outside_state_is_caught() {
    let found = violations(&[
        src(
            "admin/mod.rs",
            "fn f(d: &Path) { Connection::open(d.join(\"x\")); }\n",
        ),
        src(
            "state/mod.rs",
            "fn f(d: &Path) { Connection::open(d.join(\"state.db\")); }\n",
        ),
    ]);
    assert_eq!(
        found,
        ["admin/mod.rs: only `state` opens the state database"]
    );
}

#[test]
fn a_door_writing_its_own_answer_is_caught() {
    let found = violations(&[
        src(
            "llm/endpoint.rs",
            "async fn f(s: &mut Session) { s.write_response_body(None, true).await; }\n",
        ),
        src(
            "respond.rs",
            "async fn f(s: &mut Session) { s.write_response_body(None, true).await; }\n",
        ),
    ]);
    assert_eq!(
        found,
        ["llm/endpoint.rs: only `respond` writes an answer to the agent"]
    );
}

#[test]
fn files_of_a_folder_in_a_circle_are_caught() {
    let found = violations(&[
        src("mcp/endpoint.rs", "use super::relay::relay_call;\n"),
        src("mcp/relay.rs", "use crate::mcp::results::x;\n"),
        src("mcp/results.rs", "use super::endpoint::y;\n"),
    ]);
    assert_eq!(
        found,
        ["mcp/: files import each other in a circle: endpoint → relay → results → endpoint"]
    );
}

#[test]
fn a_module_without_a_layer_is_caught() {
    let found = violations(&[src("worker.rs", "fn f() {}\n")]);
    assert_eq!(found, ["worker.rs: module `worker` has no layer in LAYERS"]);
}

#[test]
fn a_library_depending_on_the_binary_or_gpu_code_is_caught() {
    let manifests = vec![
        (
            "gateway/Cargo.toml".to_string(),
            "[package]\nname = \"lattice-gateway\"\n[dependencies]\nlattice = { path = \"../app\" }\n".to_string(),
        ),
        (
            "app/Cargo.toml".to_string(),
            "[package]\nname = \"lattice\"\n[dependencies]\nlattice-gpu-kernels = { path = \"../gpu-kernels\" }\n".to_string(),
        ),
        (
            "mcp/Cargo.toml".to_string(),
            "[package]\nname = \"lattice-mcp\"\n[dependencies]\ncudarc = \"0.17\"\n".to_string(),
        ),
        (
            "worker/Cargo.toml".to_string(),
            "[package]\nname = \"lattice-worker\"\n[dependencies]\nlattice-gpu-kernels = { path = \"../gpu-kernels\" }\nlattice = { path = \"../app\" }\n".to_string(),
        ),
    ];
    assert_eq!(
        crate_violations(&manifests),
        [
            "gateway/Cargo.toml: library crate `lattice-gateway` depends on `lattice`",
            "mcp/Cargo.toml: library crate `lattice-mcp` depends on `cudarc`",
            "worker/Cargo.toml: library crate `lattice-worker` depends on `lattice`",
        ]
    );
}

#[test]
fn a_long_file_and_a_long_request_path_function_are_caught() {
    let long_fn = format!(
        "pub async fn serve() {{\n{}}}\n\nfn short() {{\n}}\n",
        "    x();\n".repeat(MAX_FN_LINES)
    );
    let long_file = "// x\n".repeat(MAX_FILE_LINES + 1) + "#[cfg(test)]\nmod tests {}\n";
    let found = size_violations(
        &[
            src("mcp/endpoint.rs", &long_fn),
            src("config/mod.rs", &long_fn),
            Source {
                rel: "state/mod.rs".into(),
                text: long_file,
            },
        ],
        true,
    );
    assert_eq!(
        found,
        [
            format!(
                "mcp/endpoint.rs: fn serve is {} lines (at most {MAX_FN_LINES})",
                MAX_FN_LINES + 2
            ),
            format!(
                "state/mod.rs: {} lines (at most {MAX_FILE_LINES})",
                MAX_FILE_LINES + 1
            ),
        ]
    );
}
