//! What the registry installed into this gateway (`lattice registry
//! install`, the admin API): one row per installed entry with the
//! registry's own record of it (opaque JSON here: the files it changed,
//! their bytes before and after), the tool pins an MCP server entry's
//! published fingerprints seeded, and a journal of installs and removals
//! that the watcher turns into audit events (`admin.registry.*`), so a
//! change made while no gateway runs is audited when one starts.
//!
//! A server installed with published fingerprints is *closed*: a tool it
//! lists that the publisher did not publish is quarantined even where
//! first-seen tools are approved automatically.
//!
//! Must never: change an install row, its pins and its journal entry
//! other than in one transaction.

use rusqlite::{params, OptionalExtension};

use crate::state::StateStore;
use crate::GatewayError;

fn err(e: rusqlite::Error) -> GatewayError {
    GatewayError::from(e)
}

/// One installed entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub kind: String,
    /// The registry's record (JSON text).
    pub record: String,
    pub installed_us: i64,
}

/// A line of the journal: an audit event to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub seq: i64,
    pub at_us: i64,
    /// `admin.registry.installed`, `admin.registry.uninstalled`, ...
    pub kind: String,
    /// The entry, `name@version`.
    pub target: String,
    /// Who did it (`cli:<user>`, or the admin API's principal).
    pub by: String,
    pub reason: String,
}

/// The tools an MCP server entry published: pinned before its first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The server's name in the gateway.
    pub server: String,
    /// (tool, definition hash) as published.
    pub tools: Vec<(String, String)>,
}

impl StateStore {
    fn installs_schema(&self) -> Result<(), GatewayError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS registry_installs (
                    name TEXT PRIMARY KEY,
                    version TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    record TEXT NOT NULL,
                    installed_us INTEGER NOT NULL
                );
                CREATE TABLE IF NOT EXISTS registry_journal (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    at_us INTEGER NOT NULL,
                    kind TEXT NOT NULL,
                    target TEXT NOT NULL,
                    by TEXT NOT NULL,
                    reason TEXT NOT NULL,
                    audited INTEGER NOT NULL DEFAULT 0
                );
                CREATE TABLE IF NOT EXISTS closed_servers (
                    server TEXT PRIMARY KEY,
                    source TEXT NOT NULL
                );",
            )
            .map_err(err)?;
        self.pins_schema()
    }

    /// Records an install (replacing an earlier one of the same name), the
    /// pins it seeds and its journal line, in one transaction.
    pub fn record_install(
        &self,
        installed: &Installed,
        seed: Option<&Seed>,
        journal: &Journal,
    ) -> Result<(), GatewayError> {
        self.installs_schema()?;
        let tx = self.conn.unchecked_transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO registry_installs (name, version, kind, record, installed_us) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET version = ?2, kind = ?3, record = ?4, installed_us = ?5",
            params![
                installed.name,
                installed.version,
                installed.kind,
                installed.record,
                installed.installed_us
            ],
        )
        .map_err(err)?;
        if let Some(seed) = seed {
            let now = lattice_audit::now_us() as i64;
            tx.execute(
                "DELETE FROM tool_pins WHERE server = ?1",
                params![seed.server],
            )
            .map_err(err)?;
            for (tool, hash) in &seed.tools {
                tx.execute(
                    "INSERT INTO tool_pins (server, tool, approved_hash, updated_us) VALUES (?1, ?2, ?3, ?4)",
                    params![seed.server, tool, hash, now],
                )
                .map_err(err)?;
            }
            tx.execute(
                "INSERT INTO closed_servers (server, source) VALUES (?1, ?2)
                 ON CONFLICT (server) DO UPDATE SET source = ?2",
                params![seed.server, installed.name],
            )
            .map_err(err)?;
            tx.execute("UPDATE meta SET v = v + 1 WHERE k = 'pins_generation'", [])
                .map_err(err)?;
        }
        insert_journal(&tx, journal)?;
        tx.commit().map_err(err)
    }

    /// Removes an install, the pins and closure of the server it seeded
    /// (when `server` is given), and journals it, in one transaction.
    pub fn record_uninstall(
        &self,
        name: &str,
        server: Option<&str>,
        journal: &Journal,
    ) -> Result<(), GatewayError> {
        self.installs_schema()?;
        let tx = self.conn.unchecked_transaction().map_err(err)?;
        let n = tx
            .execute(
                "DELETE FROM registry_installs WHERE name = ?1",
                params![name],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!("`{name}` is not installed")));
        }
        if let Some(server) = server {
            tx.execute("DELETE FROM tool_pins WHERE server = ?1", params![server])
                .map_err(err)?;
            tx.execute(
                "DELETE FROM closed_servers WHERE server = ?1",
                params![server],
            )
            .map_err(err)?;
            tx.execute("UPDATE meta SET v = v + 1 WHERE k = 'pins_generation'", [])
                .map_err(err)?;
        }
        insert_journal(&tx, journal)?;
        tx.commit().map_err(err)
    }

    /// Journals an attempt that changed nothing (a refused install).
    pub fn journal(&self, journal: &Journal) -> Result<(), GatewayError> {
        self.installs_schema()?;
        insert_journal(&self.conn, journal)
    }

    /// Every installed entry, by name.
    pub fn installed(&self) -> Result<Vec<Installed>, GatewayError> {
        self.installs_schema()?;
        let mut stmt = self
            .conn
            .prepare("SELECT name, version, kind, record, installed_us FROM registry_installs ORDER BY name")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Installed {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    kind: r.get(2)?,
                    record: r.get(3)?,
                    installed_us: r.get(4)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Journal lines not yet audited, oldest first.
    pub fn journal_pending(&self) -> Result<Vec<Journal>, GatewayError> {
        self.installs_schema()?;
        let mut stmt = self
            .conn
            .prepare("SELECT seq, at_us, kind, target, by, reason FROM registry_journal WHERE audited = 0 ORDER BY seq")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Journal {
                    seq: r.get(0)?,
                    at_us: r.get(1)?,
                    kind: r.get(2)?,
                    target: r.get(3)?,
                    by: r.get(4)?,
                    reason: r.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Marks a journal line as audited.
    pub fn journal_audited(&self, seq: i64) -> Result<(), GatewayError> {
        self.conn
            .execute(
                "UPDATE registry_journal SET audited = 1 WHERE seq = ?1",
                params![seq],
            )
            .map_err(err)?;
        Ok(())
    }

    /// Whether `server`'s tools are closed to the published list.
    pub(crate) fn server_closed(&self, server: &str) -> Result<bool, GatewayError> {
        self.installs_schema()?;
        self.conn
            .query_row(
                "SELECT 1 FROM closed_servers WHERE server = ?1",
                params![server],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(err)
    }
}

fn insert_journal(conn: &rusqlite::Connection, j: &Journal) -> Result<(), GatewayError> {
    conn.execute(
        "INSERT INTO registry_journal (at_us, kind, target, by, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![j.at_us, j.kind, j.target, j.by, j.reason],
    )
    .map_err(err)?;
    Ok(())
}
