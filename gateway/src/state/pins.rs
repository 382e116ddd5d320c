//! Tool pinning: the hash of each MCP tool's canonical definition is
//! recorded when it is first approved; a tool whose definition later differs
//! is quarantined — invisible and uncallable — until an admin approves the
//! new version (`lattice mcp approve`). Pins live in the state store; the
//! gateway reads them through a cache refreshed when they change.
//!
//! Must never: approve a changed definition without an admin.

use arc_swap::ArcSwap;
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;

use crate::state::StateStore;
use crate::GatewayError;

/// What the pin store says about a definition just seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The approved definition.
    Approved,
    /// First sight, approved now (auto-approval is on).
    FirstApproved,
    /// Not the approved definition (or first sight without auto-approval):
    /// quarantined until approved.
    Quarantined,
}

/// A tool waiting for approval.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pending {
    pub server: String,
    pub tool: String,
    pub approved_hash: Option<String>,
    pub pending_hash: String,
    pub pending_definition: String,
}

/// A tool's pin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pinned {
    pub server: String,
    pub tool: String,
    pub approved_hash: Option<String>,
    pub pending_hash: Option<String>,
    /// A changed (or, without auto-approval, new) definition waits.
    pub quarantined: bool,
    /// The canonical definitions (JSON text) behind the two hashes; the
    /// approved one is unknown for pins made before it was kept.
    pub approved_definition: Option<String>,
    pub pending_definition: Option<String>,
}

fn err(e: rusqlite::Error) -> GatewayError {
    GatewayError::from(e)
}

impl StateStore {
    pub(crate) fn pins_schema(&self) -> Result<(), GatewayError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS tool_pins (
                    server TEXT NOT NULL,
                    tool TEXT NOT NULL,
                    approved_hash TEXT,
                    pending_hash TEXT,
                    pending_definition TEXT,
                    updated_us INTEGER NOT NULL,
                    PRIMARY KEY (server, tool)
                );
                INSERT OR IGNORE INTO meta (k, v) VALUES ('pins_generation', 0);",
            )
            .map_err(err)?;
        // Pins made before approved definitions were kept have only a hash.
        let kept: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('tool_pins') WHERE name = 'approved_definition'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if kept == 0 {
            self.conn
                .execute_batch("ALTER TABLE tool_pins ADD COLUMN approved_definition TEXT")
                .map_err(err)?;
        }
        Ok(())
    }

    fn bump_pins(&self) -> Result<(), GatewayError> {
        self.conn
            .execute("UPDATE meta SET v = v + 1 WHERE k = 'pins_generation'", [])
            .map_err(err)?;
        Ok(())
    }

    /// Records a definition seen upstream and says whether it may be served.
    pub fn observe_tool(
        &self,
        server: &str,
        tool: &str,
        hash: &str,
        definition: &str,
        auto_approve: bool,
    ) -> Result<Seen, GatewayError> {
        self.pins_schema()?;
        let now = lattice_audit::now_us() as i64;
        let approved: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT approved_hash FROM tool_pins WHERE server = ?1 AND tool = ?2",
                params![server, tool],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        let seen = match approved {
            Some(Some(h)) if h == hash => return Ok(Seen::Approved),
            // A server installed from the registry serves what its
            // publisher published, and nothing new without an admin.
            None if auto_approve && !self.server_closed(server)? => {
                self.conn
                    .execute(
                        "INSERT INTO tool_pins (server, tool, approved_hash, approved_definition, updated_us) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![server, tool, hash, definition, now],
                    )
                    .map_err(err)?;
                Seen::FirstApproved
            }
            _ => {
                self.conn
                    .execute(
                        "INSERT INTO tool_pins (server, tool, pending_hash, pending_definition, updated_us) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (server, tool) DO UPDATE SET pending_hash = ?3, pending_definition = ?4, updated_us = ?5",
                        params![server, tool, hash, definition, now],
                    )
                    .map_err(err)?;
                Seen::Quarantined
            }
        };
        self.bump_pins()?;
        Ok(seen)
    }

    /// Approves the pending definition of a tool.
    pub fn approve_tool(&self, server: &str, tool: &str) -> Result<String, GatewayError> {
        self.pins_schema()?;
        let n = self
            .conn
            .execute(
                "UPDATE tool_pins SET approved_hash = pending_hash, approved_definition = pending_definition, pending_hash = NULL, pending_definition = NULL, updated_us = ?3
                 WHERE server = ?1 AND tool = ?2 AND pending_hash IS NOT NULL",
                params![server, tool, lattice_audit::now_us() as i64],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "no pending change for `{server}` tool `{tool}`"
            )));
        }
        self.bump_pins()?;
        self.conn
            .query_row(
                "SELECT approved_hash FROM tool_pins WHERE server = ?1 AND tool = ?2",
                params![server, tool],
                |r| r.get(0),
            )
            .map_err(err)
    }

    /// Tools waiting for approval.
    pub fn pending_tools(&self) -> Result<Vec<Pending>, GatewayError> {
        self.pins_schema()?;
        let mut stmt = self
            .conn
            .prepare("SELECT server, tool, approved_hash, pending_hash, pending_definition FROM tool_pins WHERE pending_hash IS NOT NULL ORDER BY server, tool")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Pending {
                    server: r.get(0)?,
                    tool: r.get(1)?,
                    approved_hash: r.get(2)?,
                    pending_hash: r.get(3)?,
                    pending_definition: r.get(4)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Every tool seen so far: its approved hash, and a pending one when a
    /// changed definition waits for approval.
    pub fn pinned_tools(&self) -> Result<Vec<Pinned>, GatewayError> {
        self.pins_schema()?;
        let mut stmt = self
            .conn
            .prepare("SELECT server, tool, approved_hash, pending_hash, approved_definition, pending_definition FROM tool_pins ORDER BY server, tool")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                let pending: Option<String> = r.get(3)?;
                Ok(Pinned {
                    server: r.get(0)?,
                    tool: r.get(1)?,
                    approved_hash: r.get(2)?,
                    quarantined: pending.is_some(),
                    pending_hash: pending,
                    approved_definition: r.get(4)?,
                    pending_definition: r.get(5)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    fn pins_generation(&self) -> Result<i64, GatewayError> {
        self.pins_schema()?;
        self.conn
            .query_row("SELECT v FROM meta WHERE k = 'pins_generation'", [], |r| {
                r.get(0)
            })
            .map_err(err)
    }

    fn approved_hashes(&self) -> Result<HashMap<(String, String), String>, GatewayError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT server, tool, approved_hash FROM tool_pins WHERE approved_hash IS NOT NULL",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }
}

/// The request path's view of the approved hashes.
#[derive(Default)]
pub struct PinCache {
    approved: ArcSwap<HashMap<(String, String), String>>,
    generation: std::sync::atomic::AtomicI64,
}

impl PinCache {
    /// Reloads if the pins changed; returns the keys whose approval changed.
    pub fn refresh(&self, store: &StateStore) -> Result<Vec<(String, String)>, GatewayError> {
        use std::sync::atomic::Ordering;
        let generation = store.pins_generation()?;
        if generation == self.generation.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let new = store.approved_hashes()?;
        let old = self.approved.load();
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        self.approved.store(Arc::new(new));
        self.generation.store(generation, Ordering::Release);
        Ok(changed)
    }

    /// Whether this definition of the tool is the approved one.
    pub fn approved(&self, server: &str, tool: &str, hash: &str) -> bool {
        self.approved
            .load()
            .get(&(server.to_string(), tool.to_string()))
            .is_some_and(|h| h == hash)
    }
}
