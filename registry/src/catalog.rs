//! A catalog: entries of every kind, each name with its versions. The
//! bundled catalog (`registry/catalog/`) is compiled into the binary, so
//! it works offline; a directory of entry files is a catalog too (what
//! `lattice registry sync` writes and `lattice registry serve` serves).
//!
//! Versions order by semantic versioning; a version that is not semver
//! sorts below every one that is, then by its text. `latest` is the
//! highest.
//!
//! Must never: hold two entries with the same name and version, or an
//! entry that did not validate.

use crate::entry::{Entry, Kind};
use crate::error::io;
use crate::{RegistryError, Result};
use std::cmp::Ordering;
use std::path::Path;

/// The bundled entries, by path under `registry/catalog/`. A test checks
/// that this list and the folder hold the same files.
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "servers/everything.json",
        include_str!("../catalog/servers/everything.json"),
    ),
    (
        "servers/memory.json",
        include_str!("../catalog/servers/memory.json"),
    ),
    (
        "servers/filesystem.json",
        include_str!("../catalog/servers/filesystem.json"),
    ),
    (
        "servers/time.json",
        include_str!("../catalog/servers/time.json"),
    ),
    (
        "policy-packs/read-only-tools.json",
        include_str!("../catalog/policy-packs/read-only-tools.json"),
    ),
    (
        "policy-packs/no-destructive-without-role.json",
        include_str!("../catalog/policy-packs/no-destructive-without-role.json"),
    ),
    (
        "policy-packs/confidential-on-prem.json",
        include_str!("../catalog/policy-packs/confidential-on-prem.json"),
    ),
    (
        "policy-packs/tenant-audit-readers.json",
        include_str!("../catalog/policy-packs/tenant-audit-readers.json"),
    ),
    (
        "policy-packs/filesystem-path-guard.json",
        include_str!("../catalog/policy-packs/filesystem-path-guard.json"),
    ),
    (
        "model-presets/vllm.json",
        include_str!("../catalog/model-presets/vllm.json"),
    ),
    (
        "model-presets/mlx.json",
        include_str!("../catalog/model-presets/mlx.json"),
    ),
    (
        "model-presets/lattice-worker.json",
        include_str!("../catalog/model-presets/lattice-worker.json"),
    ),
    (
        "model-presets/openai-compatible.json",
        include_str!("../catalog/model-presets/openai-compatible.json"),
    ),
    (
        "templates/quick-start.json",
        include_str!("../catalog/templates/quick-start.json"),
    ),
    (
        "templates/agent-platform.json",
        include_str!("../catalog/templates/agent-platform.json"),
    ),
];

/// Orders two version strings (semver first, then text).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Greater,
        (Err(_), Ok(_)) => Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// By name, then version ascending.
    entries: Vec<Entry>,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn bundled() -> Result<Catalog> {
        let entries = BUNDLED
            .iter()
            .map(|(path, text)| Entry::parse(&format!("bundled:{path}"), text))
            .collect::<Result<Vec<_>>>()?;
        Catalog::from_entries(entries)
    }

    /// Every `*.json` file under `dir` (recursively), each an entry. All
    /// files are read before an error is returned, and the error names
    /// every file that failed.
    pub fn load_dir(dir: &Path) -> Result<Catalog> {
        let mut files = Vec::new();
        collect(dir, &mut files)?;
        files.sort();
        let mut entries = Vec::new();
        let mut failed = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| io(&f, e))?;
            match Entry::parse(&f.display().to_string(), &text) {
                Ok(e) => entries.push(e),
                Err(e) => failed.push(e),
            }
        }
        match failed.len() {
            0 => Catalog::from_entries(entries),
            1 => Err(failed.remove(0)),
            n => Err(RegistryError::Kind {
                origin: dir.display().to_string(),
                message: format!(
                    "{n} entries are invalid:\n{}",
                    failed
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }),
        }
    }

    pub fn from_entries(mut entries: Vec<Entry>) -> Result<Catalog> {
        entries.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| compare_versions(&a.version, &b.version))
        });
        for w in entries.windows(2) {
            if w[0].name == w[1].name && w[0].version == w[1].version {
                return Err(RegistryError::Duplicate {
                    name: w[0].name.clone(),
                    version: w[0].version.clone(),
                    first: w[0].origin.clone(),
                    second: w[1].origin.clone(),
                });
            }
        }
        Ok(Catalog { entries })
    }

    /// This catalog with `other`'s entries added (an entry in both is an
    /// error unless the documents are equal).
    pub fn merged(&self, other: &Catalog) -> Result<Catalog> {
        let mut all = self.entries.clone();
        for e in &other.entries {
            match self.get(&e.name, Some(&e.version)) {
                Some(mine) if mine.doc == e.doc => {}
                _ => all.push(e.clone()),
            }
        }
        Catalog::from_entries(all)
    }

    /// Every entry, by name then version ascending.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether `e` is the highest version of its name.
    pub fn is_latest(&self, e: &Entry) -> bool {
        self.latest(&e.name).is_some_and(|l| l.version == e.version)
    }

    pub fn latest(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.name == name)
    }

    /// `name` at `version` (`None` or `latest`: the highest).
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<&Entry> {
        match version {
            None | Some("latest") => self.latest(name),
            Some(v) => self
                .entries
                .iter()
                .find(|e| e.name == name && e.version == v),
        }
    }

    /// Like `get`, or an error naming what is missing.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&Entry> {
        self.get(name, version).ok_or_else(|| {
            RegistryError::NotFound(match version {
                None | Some("latest") => name.to_string(),
                Some(v) => format!("{name}@{v}"),
            })
        })
    }

    /// Every version of `name`, newest first.
    pub fn versions(&self, name: &str) -> Vec<&Entry> {
        self.entries
            .iter()
            .rev()
            .filter(|e| e.name == name)
            .collect()
    }

    /// The latest version of each entry of `kind` (any kind: `None`)
    /// whose name, title or description contains `text` (any case).
    pub fn search(&self, kind: Option<Kind>, text: &str) -> Vec<&Entry> {
        let needle = text.to_lowercase();
        self.entries
            .iter()
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .filter(|e| self.is_latest(e))
            .filter(|e| {
                needle.is_empty()
                    || e.name.to_lowercase().contains(&needle)
                    || e.description.to_lowercase().contains(&needle)
                    || e.title()
                        .is_some_and(|t| t.to_lowercase().contains(&needle))
            })
            .collect()
    }

    /// Writes `entry` as `<dir>/<kind plural>/<name>@<version>.json`, name
    /// and version percent-encoded (`io.github.acme%2Fweather@1.0.0.json`:
    /// no two entries share a file name); returns the path.
    pub fn write_entry(dir: &Path, entry: &Entry) -> Result<std::path::PathBuf> {
        const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'.')
            .remove(b'-')
            .remove(b'_')
            .remove(b'+');
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, KEEP).to_string();
        let folder = dir.join(entry.kind.plural());
        std::fs::create_dir_all(&folder).map_err(|e| io(&folder, e))?;
        let file = folder.join(format!("{}@{}.json", enc(&entry.name), enc(&entry.version)));
        let text = format!("{:#}\n", entry.doc);
        std::fs::write(&file, text).map_err(|e| io(&file, e))?;
        Ok(file)
    }
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    for item in rd {
        let p = item.map_err(|e| io(dir, e))?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}
