//! Things registered at run time (model routes, MCP servers) in the state
//! store: one table per kind of thing, rows of (name, JSON spec), and a
//! generation in `meta` bumped by every change so running gateways notice.
//!
//! Must never: take a table name from input.

use rusqlite::{params, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::StateStore;
use crate::GatewayError;

/// One kind of registered thing. The names are constants, never input.
pub struct Registry {
    pub table: &'static str,
    pub generation: &'static str,
    /// How errors name it ("model route", "MCP server").
    pub what: &'static str,
}

pub const MODEL_ROUTES: Registry = Registry {
    table: "model_routes",
    generation: "models_generation",
    what: "model route",
};

pub const MCP_SERVERS: Registry = Registry {
    table: "mcp_servers",
    generation: "mcp_generation",
    what: "MCP server",
};

fn err(e: rusqlite::Error) -> GatewayError {
    GatewayError::from(e)
}

impl StateStore {
    fn registry_schema(&self, r: &Registry) -> Result<(), GatewayError> {
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    name TEXT PRIMARY KEY,
                    spec TEXT NOT NULL,
                    created_us INTEGER NOT NULL
                );
                INSERT OR IGNORE INTO meta (k, v) VALUES ('{}', 0);",
                r.table, r.generation
            ))
            .map_err(err)
    }

    /// Adds an entry; errors if one by that name exists.
    pub fn registry_add<T: Serialize>(
        &self,
        r: &Registry,
        name: &str,
        item: &T,
    ) -> Result<(), GatewayError> {
        self.registry_schema(r)?;
        let spec = serde_json::to_string(item).map_err(|e| GatewayError::State(e.to_string()))?;
        let n = self
            .conn
            .execute(
                &format!(
                    "INSERT OR IGNORE INTO {} (name, spec, created_us) VALUES (?1, ?2, ?3)",
                    r.table
                ),
                params![name, spec, lattice_audit::now_us() as i64],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "a run-time {} `{name}` exists already; remove it first",
                r.what
            )));
        }
        self.registry_bump(r)
    }

    /// Removes an entry; errors if there is none by that name.
    pub fn registry_remove(&self, r: &Registry, name: &str) -> Result<(), GatewayError> {
        self.registry_schema(r)?;
        let n = self
            .conn
            .execute(
                &format!("DELETE FROM {} WHERE name = ?1", r.table),
                params![name],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "no run-time {} `{name}`",
                r.what
            )));
        }
        self.registry_bump(r)
    }

    /// Every entry, oldest first.
    pub fn registry_list<T: DeserializeOwned>(&self, r: &Registry) -> Result<Vec<T>, GatewayError> {
        self.registry_schema(r)?;
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT spec FROM {} ORDER BY created_us, name",
                r.table
            ))
            .map_err(err)?;
        let specs = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        specs
            .iter()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| GatewayError::State(format!("a stored {}: {e}", r.what)))
            })
            .collect()
    }

    /// Bumped by every change (read-only: the watcher polls it).
    pub fn registry_generation(&self, r: &Registry) -> Result<i64, GatewayError> {
        self.conn
            .query_row(
                &format!("SELECT v FROM meta WHERE k = '{}'", r.generation),
                [],
                |row| row.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(err)
    }

    fn registry_bump(&self, r: &Registry) -> Result<(), GatewayError> {
        self.conn
            .execute(
                &format!("UPDATE meta SET v = v + 1 WHERE k = '{}'", r.generation),
                [],
            )
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_added_listed_removed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.registry_generation(&MCP_SERVERS).unwrap(), 0);
        store
            .registry_add(&MCP_SERVERS, "a", &serde_json::json!({"n": 1}))
            .unwrap();
        store
            .registry_add(&MCP_SERVERS, "b", &serde_json::json!({"n": 2}))
            .unwrap();
        let e = store
            .registry_add(&MCP_SERVERS, "a", &serde_json::json!({}))
            .unwrap_err();
        assert!(
            e.to_string().contains("MCP server `a` exists already"),
            "{e}"
        );
        let listed: Vec<serde_json::Value> = store.registry_list(&MCP_SERVERS).unwrap();
        assert_eq!(
            listed,
            vec![serde_json::json!({"n": 1}), serde_json::json!({"n": 2})]
        );
        assert!(
            store
                .registry_list::<serde_json::Value>(&MODEL_ROUTES)
                .unwrap()
                .is_empty(),
            "kinds are apart"
        );
        store.registry_remove(&MCP_SERVERS, "a").unwrap();
        assert!(store.registry_remove(&MCP_SERVERS, "a").is_err());
        assert_eq!(store.registry_generation(&MCP_SERVERS).unwrap(), 3);
    }
}
