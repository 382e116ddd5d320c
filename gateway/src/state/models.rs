//! Model routes added at run time (`lattice models add`, `POST
//! /admin/v1/models`). Each is stored in the state store as the JSON form of
//! the same `[[backends]]` and `[[models]]` entries a config file holds (one
//! model, the backends it brings), validated by the same code, and merged
//! after the config file's routes whenever the runtime is built. A change
//! bumps a generation the watcher polls, so running gateways reload.
//!
//! Must never: store a route that fails the config's own validation.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::config::{build_llm, LlmConfig, RawBackend, RawModel};
use crate::state::registry::MODEL_ROUTES;
use crate::state::StateStore;
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

impl StateStore {
    /// Stores a route (already validated against the config by the caller).
    pub fn add_model_route(&self, route: &RuntimeRoute) -> Result<(), GatewayError> {
        self.registry_add(&MODEL_ROUTES, route.name()?, route)
    }

    /// Removes a run-time route. Errors if there is none by that name.
    pub fn remove_model_route(&self, name: &str) -> Result<(), GatewayError> {
        self.registry_remove(&MODEL_ROUTES, name)
    }

    /// Every run-time route, oldest first.
    pub fn model_routes(&self) -> Result<Vec<RuntimeRoute>, GatewayError> {
        self.registry_list(&MODEL_ROUTES)
    }

    /// Bumped by every change.
    pub fn models_generation(&self) -> Result<i64, GatewayError> {
        self.registry_generation(&MODEL_ROUTES)
    }
}

/// The config file's model routes followed by the run-time ones, validated
/// together (a run-time route may not reuse a name or alias, and its
/// backends reach a private address only when `[egress] allow` names it).
pub fn merged(config: &Config, extra: &[RuntimeRoute]) -> Result<LlmConfig, GatewayError> {
    let bad = |m: String| GatewayError::Config(format!("run-time model routes: {m}"));
    let mut all = config.llm.clone();
    for route in extra {
        let name = route.name().unwrap_or("?");
        let built = build_llm(
            route.backends.clone(),
            route.models.clone(),
            Vec::new(),
            &|m| bad(format!("`{name}`: {m}")),
            &all.backends,
        )?;
        for b in &built.backends {
            let host = url::Url::parse(&b.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .ok_or_else(|| bad(format!("`{name}`: backend `{}` has no host", b.name)))?;
            config
                .egress
                .check_literal(&host)
                .map_err(|e| bad(format!("`{name}`: backend `{}`: {e}", b.name)))?;
        }
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
