//! Applying a checked plan: each file written whole, the config last, only
//! if nothing changed since the plan; the record and the journal line in
//! the state store; refusals journaled.
//!
//! Must never: write over a file that changed since it was read.

use super::*;

/// Writes `text` to `path` whole: a temporary file beside it, renamed.
pub(super) fn write_whole(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!(
        "{}.lattice-tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, text).map_err(|e| crate::error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| crate::error::io(path, e))
}

pub(super) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::error::io(path, e)),
    }
    // Directories the registry made, left empty.
    let mut dir = path.parent();
    while let Some(d) = dir {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        if d.file_name().is_some_and(|n| n == "registry") {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Writes each file unless one changed since `expect` was read; the
/// config (the last of `files`) last.
pub(super) fn write_files(files: &[(PathBuf, Option<String>, Option<String>)]) -> Result<()> {
    for (path, expect, _) in files {
        if &read(path)? != expect {
            return Err(RegistryError::Gateway(format!(
                "{} changed while the change was prepared: nothing was written; try again",
                path.display()
            )));
        }
    }
    for (path, _, new) in files {
        match new {
            Some(text) => write_whole(path, text)?,
            None => remove_file(path)?,
        }
    }
    Ok(())
}

pub(super) fn journal(kind: &str, target: String, by: &str, reason: String) -> Journal {
    Journal {
        seq: 0,
        at_us: lattice_audit::now_us() as i64,
        kind: kind.into(),
        target,
        by: by.into(),
        reason,
    }
}

fn trust_words(trust: &Trust) -> String {
    if trust.is_trusted() {
        trust.describe()
    } else {
        format!("INSTALLED WITH --allow-untrusted: {}", trust.describe())
    }
}

/// Writes a checked plan and records it.
pub fn apply(gw: &Gateway, plan: &Plan, opts: &Options) -> Result<()> {
    apply_as(gw, plan, opts, "admin.registry.installed", None)
}

pub(super) fn apply_as(
    gw: &Gateway,
    plan: &Plan,
    opts: &Options,
    kind: &str,
    previous: Option<&str>,
) -> Result<()> {
    let store = gw.store()?;
    let writes: Vec<_> = plan
        .files
        .iter()
        .zip(&plan.expect)
        .map(|(f, now)| (f.path.clone(), now.clone(), Some(f.after.clone())))
        .collect();
    write_files(&writes)?;
    let record = Record {
        entry: plan.entry.doc.clone(),
        origin: plan.entry.origin.clone(),
        trust: plan.trust.describe(),
        server: plan.server.clone(),
        files: plan.files.clone(),
        env: plan.env.clone(),
        by: opts.by.clone(),
    };
    let installed = Installed {
        name: plan.entry.name.clone(),
        version: plan.entry.version.clone(),
        kind: plan.entry.kind.as_str().into(),
        record: serde_json::to_string(&record).unwrap_or_default(),
        installed_us: lattice_audit::now_us() as i64,
    };
    let seed = plan
        .server
        .as_ref()
        .filter(|_| !plan.seed.is_empty())
        .map(|s| Seed {
            server: s.clone(),
            tools: plan.seed.clone(),
        });
    let mut reason = format!(
        "{} {} from {}; {}",
        plan.entry.kind,
        plan.entry.id(),
        plan.entry.origin,
        trust_words(&plan.trust)
    );
    if let Some(p) = previous {
        reason = format!("{reason}; replaces {p}");
    }
    if let Some(s) = &plan.server {
        reason.push_str(&format!(
            "; MCP server `{s}`, {} tools pinned as published",
            plan.seed.len()
        ));
    }
    store
        .record_install(
            &installed,
            seed.as_ref(),
            &journal(kind, plan.entry.id(), &opts.by, reason),
        )
        .map_err(|e| RegistryError::Gateway(e.to_string()))
}

/// Journals a refused install (the gateway audits it), then returns the
/// refusal.
pub fn refused(gw: &Gateway, entry: &Entry, by: &str, error: RegistryError) -> RegistryError {
    if let Ok(store) = gw.store() {
        let _ = store.journal(&journal(
            "admin.registry.refused",
            entry.id(),
            by,
            format!("install refused, nothing changed: {error}"),
        ));
    }
    error
}

/// Plans, checks and applies; a refusal is journaled and changes nothing.
pub fn install(gw: &Gateway, entry: &Entry, opts: &Options) -> Result<Plan> {
    let run = || -> Result<Plan> {
        if let Some(i) = gw.installed()?.into_iter().find(|i| i.name == entry.name) {
            return Err(install_err(
                entry,
                format!(
                    "version {} is installed: `lattice registry update {}` changes it",
                    i.version, entry.name
                ),
            ));
        }
        let plan = plan(gw, entry, opts)?;
        check(gw, &plan, opts)?;
        Ok(plan)
    };
    let plan = run().map_err(|e| refused(gw, entry, &opts.by, e))?;
    apply(gw, &plan, opts)?;
    Ok(plan)
}
