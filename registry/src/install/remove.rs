//! Taking an install back out (byte for byte where the file is as the
//! install left it), and updates (the old version out, the new one in, as
//! one change).
//!
//! Must never: take out text the install did not insert.

use super::plan::{candidate, plan_on};
use super::write::{apply_as, journal, remove_file, write_files};
use super::*;

/// How one file is put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Restored {
    /// The bytes it had before the install.
    Exactly,
    /// It changed since: the install's text taken out, the rest kept.
    InsertionsRemoved,
    /// Created by the install and unchanged: deleted.
    Deleted,
    /// Created by the install but changed since: left in place (no longer
    /// referenced by the config).
    LeftChanged,
}

/// A planned removal.
#[derive(Debug, Clone)]
pub struct Removal {
    pub installed: InstalledEntry,
    /// (path, bytes now, bytes after (none: deleted), how).
    pub files: Vec<(PathBuf, Option<String>, Option<String>, Restored)>,
}

impl Removal {
    pub fn diff(&self, gw: &Gateway) -> String {
        let dir = gw.dir();
        self.files
            .iter()
            .map(|(p, now, after, _)| {
                let name = p.strip_prefix(&dir).unwrap_or(p).display().to_string();
                unified(&name, now.as_deref(), after.as_deref())
            })
            .collect()
    }
}

/// Plans taking `name` back out.
pub fn plan_removal(gw: &Gateway, name: &str) -> Result<Removal> {
    let installed = gw
        .installed()?
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| RegistryError::NotInstalled(name.to_string()))?;
    let mut files = Vec::new();
    for f in installed.record.files.iter().rev() {
        let now = read(&f.path)?;
        let (after, how) = match (&f.before, &now) {
            (_, Some(n)) if *n == f.after => (f.before.clone(), match f.before {
                Some(_) => Restored::Exactly,
                None => Restored::Deleted,
            }),
            (None, _) => (now.clone(), Restored::LeftChanged),
            (Some(_), None) => {
                return Err(RegistryError::Gateway(format!(
                    "{} is gone: cannot take {name} out of it",
                    f.path.display()
                )))
            }
            (Some(_), Some(n)) => (
                Some(edit::remove(n, &f.inserted).map_err(|m| {
                    RegistryError::Gateway(format!(
                        "{} changed since {name} was installed and {name}'s text cannot be taken out ({m}): remove it by hand",
                        f.path.display()
                    ))
                })?),
                Restored::InsertionsRemoved,
            ),
        };
        files.push((f.path.clone(), now, after, how));
    }
    Ok(Removal { installed, files })
}

/// Checks a removal's result like an install's.
fn check_removal(gw: &Gateway, removal: &Removal) -> Result<()> {
    let changes: Vec<FileChange> = removal
        .files
        .iter()
        .filter_map(|(p, _, after, _)| {
            after.as_ref().map(|a| FileChange {
                path: p.clone(),
                before: None,
                after: a.clone(),
                inserted: Vec::new(),
            })
        })
        .collect();
    let (config, overlay) = candidate(gw, &changes)?;
    lattice_gateway::runtime::Runtime::build_with(config, &overlay).map_err(|e| {
        RegistryError::Gateway(format!(
            "the gateway would refuse the config without {}: {}",
            removal.installed.name,
            gw_err(e)
        ))
    })?;
    Ok(())
}

/// Takes an installed entry back out.
pub fn uninstall(gw: &Gateway, name: &str, by: &str) -> Result<Removal> {
    let removal = plan_removal(gw, name)?;
    check_removal(gw, &removal)?;
    let writes: Vec<_> = removal
        .files
        .iter()
        .filter(|f| f.3 != Restored::LeftChanged)
        .map(|(p, now, after, _)| (p.clone(), now.clone(), after.clone()))
        .collect();
    write_files(&writes)?;
    let i = &removal.installed;
    let how: Vec<String> = removal
        .files
        .iter()
        .map(|(p, _, _, how)| format!("{} {how:?}", p.display()))
        .collect();
    gw.store()?
        .record_uninstall(
            name,
            i.record.server.as_deref(),
            &journal(
                "admin.registry.uninstalled",
                format!("{}@{}", i.name, i.version),
                by,
                format!("{} {} removed: {}", i.kind, i.name, how.join(", ")),
            ),
        )
        .map_err(|e| RegistryError::Gateway(e.to_string()))?;
    Ok(removal)
}

/// A planned update: the installed version out, `entry` in, as one change.
pub struct Update {
    pub removal: Removal,
    pub plan: Plan,
}

impl Update {
    /// The whole change, file by file.
    pub fn diff(&self, gw: &Gateway) -> String {
        let dir = gw.dir();
        let mut paths: Vec<&PathBuf> = self.removal.files.iter().map(|f| &f.0).collect();
        paths.extend(self.plan.files.iter().map(|f| &f.path));
        paths.sort();
        paths.dedup();
        paths
            .into_iter()
            .map(|p| {
                let now = read(p).ok().flatten();
                let after = match self.plan.files.iter().find(|f| &f.path == p) {
                    Some(f) => Some(f.after.clone()),
                    None => self
                        .removal
                        .files
                        .iter()
                        .find(|f| &f.0 == p)
                        .and_then(|f| f.2.clone()),
                };
                let name = p.strip_prefix(&dir).unwrap_or(p).display().to_string();
                unified(&name, now.as_deref(), after.as_deref())
            })
            .collect()
    }
}

/// Plans and checks replacing the installed version of `entry.name`.
pub fn plan_update(gw: &Gateway, entry: &Entry, opts: &Options) -> Result<Update> {
    let removal = plan_removal(gw, &entry.name)?;
    let view: View = removal
        .files
        .iter()
        .map(|(p, _, after, _)| (p.clone(), after.clone()))
        .collect();
    let mut plan = plan_on(gw, entry, opts, &view)?;
    // The server's name stays what it was.
    if let (Some(old), Some(_)) = (&removal.installed.record.server, &plan.server) {
        if opts.server_name.is_none() && Some(old) != plan.server.as_ref() {
            let mut o = opts.clone();
            o.server_name = Some(old.clone());
            plan = plan_on(gw, entry, &o, &view)?;
        }
    }
    // Compare-and-swap against the disk, not the intermediate view.
    plan.expect = plan
        .files
        .iter()
        .map(|f| read(&f.path))
        .collect::<Result<Vec<_>>>()?;
    check(gw, &plan, opts)?;
    Ok(Update { removal, plan })
}

/// Applies a planned update: files the old version created and the new
/// one does not are deleted.
pub fn apply_update(gw: &Gateway, update: &Update, opts: &Options) -> Result<()> {
    for (path, now, after, how) in &update.removal.files {
        let kept = update.plan.files.iter().any(|f| &f.path == path);
        if !kept && *how == Restored::Deleted && after.is_none() && &read(path)? == now {
            remove_file(path)?;
        }
    }
    let previous = format!(
        "{}@{}",
        update.removal.installed.name, update.removal.installed.version
    );
    apply_as(
        gw,
        &update.plan,
        opts,
        "admin.registry.updated",
        Some(&previous),
    )
}
