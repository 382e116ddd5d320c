//! The embedded state store, `state.db` in the data directory: API keys
//! (created once and shown once, stored as SHA-256 hashes, revoked), tool
//! pins (`pins`), and what is registered at run time — MCP servers
//! (`mcp_servers`) and model routes (`models`) — in one table per kind
//! (`registry`); what the Lattice Registry installed (`installs`). Every change bumps a generation that running gateways poll.
//!
//! This module alone opens `state.db` (the layer test checks it). Must
//! never: store a secret in the clear, or serve the request path directly
//! (the path reads caches: `identity::KeyCache`, `state::pins::PinCache`).

pub mod installs;
pub mod mcp_servers;
pub mod models;
pub mod pins;
pub mod registry;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::GatewayError;
use lattice_policy::PrincipalKind;

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "lat_";

/// A stored key (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    /// An agent's or a human's (workbench user's) key.
    pub kind: PrincipalKind,
    /// The principal id (an agent's or a human's name).
    pub agent: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub labels: Vec<String>,
    pub created_us: i64,
    pub revoked_us: Option<i64>,
}

/// The embedded state store.
pub struct StateStore {
    pub(crate) conn: Connection,
}

pub(crate) fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn now_us() -> i64 {
    lattice_audit::now_us() as i64
}

impl StateStore {
    pub fn open(data_dir: &Path) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| GatewayError::State(format!("{}: {e}", data_dir.display())))?;
        let conn = Connection::open(data_dir.join("state.db")).map_err(state_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(state_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(state_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY,
                hash BLOB NOT NULL UNIQUE,
                agent TEXT NOT NULL,
                tenant TEXT NOT NULL,
                roles TEXT NOT NULL,
                labels TEXT NOT NULL,
                created_us INTEGER NOT NULL,
                revoked_us INTEGER
            );
            CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
            INSERT OR IGNORE INTO meta (k, v) VALUES ('keys_generation', 0);",
        )
        .map_err(state_err)?;
        // Stores made before human keys existed hold agents' keys only.
        let has_kind: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('api_keys') WHERE name = 'kind'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(state_err)?
            > 0;
        if !has_kind {
            conn.execute_batch(
                "ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'",
            )
            .map_err(state_err)?;
        }
        Ok(Self { conn })
    }

    /// Creates a key and returns it with its secret, which is not stored.
    pub fn create_key(
        &self,
        kind: PrincipalKind,
        agent: &str,
        tenant: &str,
        roles: &[String],
        labels: &[String],
    ) -> Result<(ApiKey, String), GatewayError> {
        if agent.is_empty() || tenant.is_empty() {
            return Err(GatewayError::State(
                "agent and tenant must not be empty".into(),
            ));
        }
        let mut id_bytes = [0u8; 6];
        let mut secret_bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
        let id = hex::encode(id_bytes);
        let secret = format!("{KEY_PREFIX}{id}_{}", B64URL.encode(secret_bytes));
        let key = ApiKey {
            id: id.clone(),
            kind,
            agent: agent.to_string(),
            tenant: tenant.to_string(),
            roles: roles.to_vec(),
            labels: labels.to_vec(),
            created_us: now_us(),
            revoked_us: None,
        };
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        self.conn
            .execute(
                "INSERT INTO api_keys (id, hash, agent, tenant, roles, labels, created_us, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    &hash_key(&secret)[..],
                    agent,
                    tenant,
                    json(roles),
                    json(labels),
                    key.created_us,
                    kind_name(kind)
                ],
            )
            .map_err(state_err)?;
        self.bump()?;
        Ok((key, secret))
    }

    /// Revokes a key by id. Errors if no such active key exists.
    pub fn revoke_key(&self, id: &str) -> Result<(), GatewayError> {
        let n = self
            .conn
            .execute(
                "UPDATE api_keys SET revoked_us = ?1 WHERE id = ?2 AND revoked_us IS NULL",
                params![now_us(), id],
            )
            .map_err(state_err)?;
        if n == 0 {
            return Err(GatewayError::State(format!("no active key with id `{id}`")));
        }
        self.bump()
    }

    fn bump(&self) -> Result<(), GatewayError> {
        self.conn
            .execute("UPDATE meta SET v = v + 1 WHERE k = 'keys_generation'", [])
            .map_err(state_err)?;
        Ok(())
    }

    pub fn generation(&self) -> Result<i64, GatewayError> {
        self.conn
            .query_row("SELECT v FROM meta WHERE k = 'keys_generation'", [], |r| {
                r.get(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(state_err)
    }

    /// All keys, with their hashes.
    pub fn keys(&self) -> Result<Vec<([u8; 32], ApiKey)>, GatewayError> {
        let mut stmt = self
            .conn
            .prepare("SELECT hash, id, agent, tenant, roles, labels, created_us, revoked_us, kind FROM api_keys ORDER BY created_us")
            .map_err(state_err)?;
        let rows = stmt
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(0)?;
                let roles: String = r.get(4)?;
                let labels: String = r.get(5)?;
                Ok((
                    hash,
                    ApiKey {
                        id: r.get(1)?,
                        kind: if r.get::<_, String>(8)? == "human" {
                            PrincipalKind::Human
                        } else {
                            PrincipalKind::Agent
                        },
                        agent: r.get(2)?,
                        tenant: r.get(3)?,
                        roles: serde_json::from_str(&roles).unwrap_or_default(),
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                        created_us: r.get(6)?,
                        revoked_us: r.get(7)?,
                    },
                ))
            })
            .map_err(state_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, key) = row.map_err(state_err)?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| GatewayError::State(format!("key {} has a malformed hash", key.id)))?;
            out.push((hash, key));
        }
        Ok(out)
    }
}

/// The stored (and printed) name of a principal kind.
pub fn kind_name(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::Agent => "agent",
        PrincipalKind::Human => "human",
    }
}

fn state_err(e: rusqlite::Error) -> GatewayError {
    GatewayError::from(e)
}
