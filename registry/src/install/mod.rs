//! Installing entries into a gateway, and taking them back out.
//!
//! An install *plans* (the files it will write: the config with the
//! entry's block, a policy pack's policy files; the tool pins a server's
//! published fingerprints seed), *checks* (trust — a bad signature is
//! always refused, an unsigned or untrusted entry only with
//! `allow_untrusted` —; a policy pack's own tests and invariants; then the
//! candidate files exactly as the gateway would load them: the config
//! parsed and validated, the whole policy set validated against the
//! schema, every configured invariant proved), and only then *applies*:
//! each file written whole (to a temporary file, then renamed), the config
//! last, and a record kept in the state store with each file's bytes
//! before and after and a journal line the gateway audits. A running
//! gateway reloads on its own when the config changes.
//!
//! `uninstall` puts back the bytes a file had before when it still has
//! the bytes the install left; when it changed since (another install,
//! a hand edit), it takes out exactly the text the install inserted
//! (`edit`) and leaves the rest. The result is checked like an install.
//!
//! Files: `plan.rs` (plan and check), `write.rs` (apply, the journal),
//! `remove.rs` (uninstall, update), `template.rs`, `render.rs` (entries as
//! TOML), `edit.rs` (reversible text edits), `diff.rs`.
//!
//! Must never: write a file before every check passed, write a secret's
//! value into the config, or install over a file that changed since the
//! plan was made.

mod diff;
mod edit;
mod plan;
mod remove;
mod render;
mod template;
mod write;

pub use diff::unified;
pub use plan::{check, plan, Plan};
pub use remove::{apply_update, plan_removal, plan_update, uninstall, Removal, Restored, Update};
pub use template::template;
pub use write::{apply, install, refused};

use lattice_gateway::config::Config;
use lattice_gateway::state::installs::{Installed, Journal, Seed};
use lattice_gateway::state::StateStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::entry::{Entry, Kind};
use crate::sign::{self, Trust, TrustedKey};
use crate::{Catalog, RegistryError, Result};

/// What the operator chose for an install.
#[derive(Debug, Clone)]
pub struct Options {
    /// The MCP server's name in the gateway (default: from the entry's).
    pub server_name: Option<String>,
    /// Run a server's package with this program (an installed copy)
    /// instead of its registry's runner (`npx`, `uvx`, `docker`).
    pub command: Option<String>,
    /// Use the server's remote endpoint even where it has a package.
    pub remote: bool,
    /// `--arg NAME=VALUE`: package arguments and preset variables.
    pub args: BTreeMap<String, Vec<String>>,
    /// `--env NAME=GATEWAY_VAR`: which of the gateway's environment
    /// variables holds each variable the server reads.
    pub env: BTreeMap<String, String>,
    /// Install an unsigned entry, or one signed by a key not trusted for
    /// its namespace (said loudly in the audit trail).
    pub allow_untrusted: bool,
    /// Who installs (`cli:<user>`, or the admin API's principal).
    pub by: String,
    /// Longest proof of one invariant.
    pub prove_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            server_name: None,
            command: None,
            remote: false,
            args: BTreeMap::new(),
            env: BTreeMap::new(),
            allow_untrusted: false,
            by: "unknown".into(),
            prove_limit: Duration::from_secs(60),
        }
    }
}

/// A gateway's config, as the installer sees it.
pub struct Gateway {
    pub config_path: PathBuf,
    pub config: Config,
}

fn gw_err(e: lattice_gateway::GatewayError) -> String {
    match e {
        lattice_gateway::GatewayError::Config(m) => m,
        other => other.to_string(),
    }
}

impl Gateway {
    /// Loads and validates the gateway's config.
    pub fn open(config_path: &Path) -> Result<Self> {
        let config = lattice_gateway::config::load(config_path)
            .map_err(|e| RegistryError::Gateway(format!("the gateway's config: {}", gw_err(e))))?;
        Ok(Self {
            config_path: config_path.to_path_buf(),
            config,
        })
    }

    /// The publisher keys the config trusts (`[[registry.trusted]]`).
    pub fn trusted(&self) -> Result<Vec<TrustedKey>> {
        self.config
            .registry
            .trusted
            .iter()
            .map(|t| TrustedKey::new(&t.publisher, &t.key, t.namespaces.clone()))
            .collect()
    }

    /// The bundled catalog and the config's `[registry] catalogs`.
    pub fn catalog(&self) -> Result<Catalog> {
        let mut catalog = Catalog::bundled()?;
        for dir in &self.config.registry.catalogs {
            catalog = catalog.merged(&Catalog::load_dir(dir)?)?;
        }
        Ok(catalog)
    }

    fn dir(&self) -> PathBuf {
        match self.config_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn store(&self) -> Result<StateStore> {
        StateStore::open(&self.config.server.data_dir)
            .map_err(|e| RegistryError::Gateway(format!("the state store: {e}")))
    }

    /// Every installed entry.
    pub fn installed(&self) -> Result<Vec<InstalledEntry>> {
        let store = self.store()?;
        let rows = store
            .installed()
            .map_err(|e| RegistryError::Gateway(e.to_string()))?;
        rows.into_iter().map(InstalledEntry::from_row).collect()
    }
}

/// One file an install writes: its bytes before (none: created) and
/// after, and the exact strings inserted into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: PathBuf,
    pub before: Option<String>,
    pub after: String,
    #[serde(default)]
    pub inserted: Vec<String>,
}

/// What the state store keeps of an install.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The entry as installed (its signature included).
    pub entry: Value,
    pub origin: String,
    pub trust: String,
    /// The MCP server's name in the gateway (server entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub files: Vec<FileChange>,
    /// The gateway's environment variables the entry reads.
    #[serde(default)]
    pub env: Vec<String>,
    pub by: String,
}

/// An installed entry, for `list` and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct InstalledEntry {
    pub name: String,
    pub version: String,
    pub kind: String,
    pub installed_us: i64,
    #[serde(flatten)]
    pub record: Record,
}

impl InstalledEntry {
    fn from_row(row: Installed) -> Result<Self> {
        let record: Record = serde_json::from_str(&row.record).map_err(|e| {
            RegistryError::Gateway(format!(
                "the install record of {} cannot be read: {e}",
                row.name
            ))
        })?;
        Ok(Self {
            name: row.name,
            version: row.version,
            kind: row.kind,
            installed_us: row.installed_us,
            record,
        })
    }

    /// The installed entry, validated again.
    pub fn entry(&self) -> Result<Entry> {
        Entry::from_value(&self.record.origin, self.record.entry.clone())
    }
}

fn install_err(entry: &Entry, message: impl Into<String>) -> RegistryError {
    RegistryError::Install {
        entry: entry.id(),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::io(path, e)),
    }
}

/// A relative path under the config's directory, made of plain parts.
fn safe_relative(entry: &Entry, rel: &str) -> Result<()> {
    let ok = Path::new(rel)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(install_err(
            entry,
            format!("`{rel}` is not a plain relative path"),
        ))
    }
}

/// Files as they are, or as an earlier step of the same change left them.
type View = BTreeMap<PathBuf, Option<String>>;

fn view_read(view: &View, path: &Path) -> Result<Option<String>> {
    match view.get(path) {
        Some(t) => Ok(t.clone()),
        None => read(path),
    }
}
