//! Model routes added at run time (`lattice models add`, `POST
//! /admin/v1/models`). Each is stored in the state store as the JSON form of
//! the same `[[backends]]` and `[[models]]` entries a config file holds (one
//! model, the backends it brings), validated by the same code, and merged
//! after the config file's routes whenever the runtime is built. A change
//! bumps a generation the watcher polls, so running gateways reload.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::keys::StateStore;
use crate::llm_config::{self, LlmConfig, RawBackend, RawModel};
use crate::GatewayError;

/// One run-time route: a model and the backends it defines (it may also
/// name backends of the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeRoute {
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    pub models: Vec<RawModel>,
}

impl RuntimeRoute {
    /// The route's model name (exactly one model per run-time route).
    pub fn name(&self) -> Result<&str, GatewayError> {
        match self.models.as_slice() {
            [m] => Ok(m.name()),
            _ => Err(GatewayError::Config(
                "a run-time route holds exactly one [[models]] entry".into(),
            )),
        }
    }
}

fn err(e: rusqlite::Error) -> GatewayError {
    GatewayError::State(e.to_string())
}

impl StateStore {
    fn models_schema(&self) -> Result<(), GatewayError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS model_routes (
                    name TEXT PRIMARY KEY,
                    spec TEXT NOT NULL,
                    created_us INTEGER NOT NULL
                );
                INSERT OR IGNORE INTO meta (k, v) VALUES ('models_generation', 0);",
            )
            .map_err(err)
    }

    /// Stores a route (already validated against the config by the caller).
    pub fn add_model_route(&self, route: &RuntimeRoute) -> Result<(), GatewayError> {
        self.models_schema()?;
        let name = route.name()?.to_string();
        let spec = serde_json::to_string(route).map_err(|e| GatewayError::State(e.to_string()))?;
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO model_routes (name, spec, created_us) VALUES (?1, ?2, ?3)",
                params![name, spec, lattice_audit::now_us() as i64],
            )
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "a run-time route `{name}` exists already; remove it first"
            )));
        }
        self.bump_models()
    }

    /// Removes a run-time route. Errors if there is none by that name.
    pub fn remove_model_route(&self, name: &str) -> Result<(), GatewayError> {
        self.models_schema()?;
        let n = self
            .conn
            .execute("DELETE FROM model_routes WHERE name = ?1", params![name])
            .map_err(err)?;
        if n == 0 {
            return Err(GatewayError::State(format!(
                "no run-time model route `{name}`"
            )));
        }
        self.bump_models()
    }

    /// Every run-time route, oldest first.
    pub fn model_routes(&self) -> Result<Vec<RuntimeRoute>, GatewayError> {
        self.models_schema()?;
        let mut stmt = self
            .conn
            .prepare("SELECT spec FROM model_routes ORDER BY created_us, name")
            .map_err(err)?;
        let specs = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        specs
            .iter()
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| GatewayError::State(format!("a stored model route: {e}")))
            })
            .collect()
    }

    /// Bumped by every change (read-only: the watcher polls it).
    pub fn models_generation(&self) -> Result<i64, GatewayError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT v FROM meta WHERE k = 'models_generation'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(err)
    }

    fn bump_models(&self) -> Result<(), GatewayError> {
        self.conn
            .execute(
                "UPDATE meta SET v = v + 1 WHERE k = 'models_generation'",
                [],
            )
            .map_err(err)?;
        Ok(())
    }
}

/// The config file's model routes followed by the run-time ones, validated
/// together (a run-time route may not reuse a name or alias).
pub fn merged(config: &Config, extra: &[RuntimeRoute]) -> Result<LlmConfig, GatewayError> {
    let bad = |m: String| GatewayError::Config(format!("run-time model routes: {m}"));
    let mut all = config.llm.clone();
    for route in extra {
        let built = llm_config::build(
            route.backends.clone(),
            route.models.clone(),
            Vec::new(),
            &|m| bad(format!("`{}`: {m}", route.name().unwrap_or("?"))),
            &all.backends,
        )?;
        all.backends.extend(built.backends);
        all.models.extend(built.models);
    }
    lattice_inference_router::router::validate(&all.backends, &all.models)
        .map_err(|e| bad(e.to_string()))?;
    Ok(all)
}

/// The run-time routes stored under the config's data directory (none when
/// it has no state store yet).
pub fn stored(config: &Config) -> Result<Vec<RuntimeRoute>, GatewayError> {
    if !config.server.data_dir.join("state.db").exists() {
        return Ok(Vec::new());
    }
    StateStore::open(&config.server.data_dir)?.model_routes()
}
