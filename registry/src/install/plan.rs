//! Planning an install (the files it will write, the pins it seeds) and
//! checking it: trust, a pack's own checks, and the candidate files
//! through the gateway's own loader.
//!
//! Must never: write anything (planning and checking are reads).

use super::*;

/// A planned install: what it will write and seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entry: Entry,
    pub trust: Trust,
    pub files: Vec<FileChange>,
    /// The bytes each file has now (none: absent), checked again before
    /// writing.
    pub expect: Vec<Option<String>>,
    pub server: Option<String>,
    /// Tool pins from the published fingerprints: (tool, hash).
    pub seed: Vec<(String, String)>,
    pub env: Vec<String>,
    pub notes: Vec<String>,
}

impl Plan {
    /// The change as a unified diff, file by file (paths relative to the
    /// config's directory where they are inside it).
    pub fn diff(&self, gw: &Gateway) -> String {
        let dir = gw.dir();
        self.files
            .iter()
            .zip(&self.expect)
            .map(|(f, now)| {
                let name = f
                    .path
                    .strip_prefix(&dir)
                    .unwrap_or(&f.path)
                    .display()
                    .to_string();
                unified(&name, now.as_deref(), Some(&f.after))
            })
            .collect()
    }
}

/// Plans installing `entry` into the gateway.
pub fn plan(gw: &Gateway, entry: &Entry, opts: &Options) -> Result<Plan> {
    plan_on(gw, entry, opts, &View::new())
}

pub(super) fn plan_on(gw: &Gateway, entry: &Entry, opts: &Options, view: &View) -> Result<Plan> {
    if entry.kind == Kind::Template {
        return Err(install_err(
            entry,
            "is a template: it makes a new gateway config (`lattice registry install --into DIR`)",
        ));
    }
    let trust = sign::verify(entry, &gw.trusted()?);
    let config_text = view_read(view, &gw.config_path)?.ok_or_else(|| {
        RegistryError::Gateway(format!("{} does not exist", gw.config_path.display()))
    })?;
    // The config the entry goes into (as an earlier step left it).
    let into = if view.contains_key(&gw.config_path) {
        lattice_gateway::config::parse(&gw.config_path, &config_text)
            .map_err(|e| RegistryError::Gateway(gw_err(e)))?
    } else {
        gw.config.clone()
    };
    let mut inserts = Vec::new();
    let mut files = Vec::new();
    let mut server = None;
    let mut seed = Vec::new();
    let mut env = Vec::new();
    let mut notes = Vec::new();
    let header = |what: &str| {
        format!(
            "# lattice registry: {} ({}), {what}. `lattice registry uninstall {}` removes it.\n",
            entry.id(),
            trust.describe(),
            entry.name
        )
    };
    let footer = format!("# end of {}\n", entry.name);
    match entry.kind {
        Kind::Server => {
            let block = render::server(entry, opts)?;
            if into.mcp_servers.iter().any(|s| s.name == block.name) {
                return Err(install_err(
                    entry,
                    format!(
                        "the gateway already has an MCP server `{}`: choose another name with --as",
                        block.name
                    ),
                ));
            }
            inserts.push(edit::append(
                &config_text,
                &format!("{}{}{footer}", header("an MCP server"), block.toml),
            ));
            seed = entry
                .tools()
                .into_iter()
                .map(|t| (t.name, t.hash))
                .collect();
            server = Some(block.name);
            env = block.env;
            notes = block.notes;
        }
        Kind::PolicyPack => {
            let base = format!("registry/{}", entry.name);
            safe_relative(entry, &base)?;
            let mut policy_inserts = Vec::new();
            for p in entry.doc["policies"].as_array().into_iter().flatten() {
                let rel = format!("{base}/{}", p["file"].as_str().unwrap_or(""));
                safe_relative(entry, &rel)?;
                let path = gw.dir().join(&rel);
                let text = p["text"].as_str().unwrap_or("").to_string();
                match view_read(view, &path)? {
                    Some(now) if now != text => {
                        return Err(install_err(
                            entry,
                            format!(
                                "{} exists with other contents: not overwriting it",
                                path.display()
                            ),
                        ))
                    }
                    _ => {}
                }
                files.push(FileChange {
                    path,
                    before: None,
                    after: text,
                    inserted: Vec::new(),
                });
                policy_inserts.push(
                    edit::add_policy_file(&config_text, &rel).map_err(|m| install_err(entry, m))?,
                );
            }
            // All go right after `[`: inserted last to first, they read in
            // the pack's order.
            inserts.extend(policy_inserts.into_iter().rev());
            if let Some(schema) = entry.doc.get("toolInputSchema").and_then(Value::as_str) {
                match &into.policy.tool_input_schema {
                    None => {
                        let rel = format!("{base}/tool-input.cedarschema");
                        files.push(FileChange {
                            path: gw.dir().join(&rel),
                            before: None,
                            after: schema.to_string(),
                            inserted: Vec::new(),
                        });
                        inserts.push(
                            edit::add_policy_key(&config_text, "tool_input_schema", &rel)
                                .map_err(|m| install_err(entry, m))?,
                        );
                    }
                    Some(existing) => {
                        let now = read(existing)?.unwrap_or_default();
                        if now.trim() != schema.trim() {
                            return Err(install_err(
                                entry,
                                format!(
                                    "the pack reads tool arguments typed by its own ToolInput schema, and the config already has one ({}): merge the pack's into it by hand:\n{schema}",
                                    existing.display()
                                ),
                            ));
                        }
                    }
                }
            }
            let invariants = render::invariants(entry, &into.invariants)?;
            if !invariants.is_empty() {
                inserts.push(edit::append(
                    &config_text,
                    &format!(
                        "{}{invariants}{footer}",
                        header("a policy pack's invariants, proved of every policy change")
                    ),
                ));
            }
            if let Some(roles) = entry.doc.get("requiresRoles").and_then(Value::as_array) {
                let roles: Vec<&str> = roles.iter().filter_map(Value::as_str).collect();
                notes.push(format!(
                    "the pack refers to roles {roles:?}: give them to the principals that need them (`lattice keys create --role ...`)"
                ));
            }
        }
        Kind::ModelPreset => {
            let (block, vars) = render::preset(entry, opts)?;
            inserts.push(edit::append(
                &config_text,
                &format!("{}{block}{footer}", header("model routes")),
            ));
            env = vars;
        }
        Kind::Template => {
            return Err(install_err(
                entry,
                "a template does not install into a config",
            ))
        }
    }
    let inserted: Vec<String> = inserts.iter().map(|i| i.text.clone()).collect();
    let after = edit::apply(&config_text, inserts);
    files.push(FileChange {
        path: gw.config_path.clone(),
        before: Some(config_text),
        after,
        inserted,
    });
    let expect = files
        .iter()
        .map(|f| view_read(view, &f.path))
        .collect::<Result<Vec<_>>>()?;
    for var in &env {
        notes.push(format!(
            "the gateway reads `{var}` from its environment: set it where the gateway runs"
        ));
    }
    Ok(Plan {
        entry: entry.clone(),
        trust,
        files,
        expect,
        server,
        seed,
        env,
        notes,
    })
}

/// The files as `files` would leave them, for the gateway's own loader.
pub(super) fn candidate(
    gw: &Gateway,
    files: &[FileChange],
) -> Result<(Config, lattice_gateway::runtime::Overlay)> {
    let overlay: lattice_gateway::runtime::Overlay = files
        .iter()
        .map(|f| (f.path.clone(), f.after.clone()))
        .collect();
    let text = overlay.get(&gw.config_path).cloned().unwrap_or_default();
    let config = lattice_gateway::config::parse(&gw.config_path, &text)
        .map_err(|e| RegistryError::Gateway(gw_err(e)))?;
    Ok((config, overlay))
}

/// Every check an install passes before it writes anything.
pub fn check(gw: &Gateway, plan: &Plan, opts: &Options) -> Result<()> {
    let entry = &plan.entry;
    match &plan.trust {
        Trust::BadSignature { .. } => {
            return Err(install_err(
                entry,
                format!("refused: {}", plan.trust.describe()),
            ))
        }
        Trust::Unsigned | Trust::Untrusted { .. } if !opts.allow_untrusted => {
            return Err(install_err(
                entry,
                format!(
                    "refused: {} — trust its publisher's key in [[registry.trusted]], or install it anyway with --allow-untrusted",
                    plan.trust.describe()
                ),
            ))
        }
        _ => {}
    }
    if entry.kind == Kind::PolicyPack {
        crate::pack::check(entry, opts.prove_limit)?;
    }
    let (config, overlay) = candidate(gw, &plan.files)?;
    lattice_gateway::runtime::Runtime::build_with(config, &overlay).map_err(|e| {
        install_err(
            entry,
            format!("the gateway would refuse the result: {}", gw_err(e)),
        )
    })?;
    Ok(())
}
