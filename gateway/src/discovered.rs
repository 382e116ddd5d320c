//! The workers that joined by themselves (`[discovery]`): who they are and
//! the backends and model routes they add. Members live in memory only (a
//! restarted gateway admits each again when it proves membership again);
//! the discovery task (`discovery.rs`) changes them, and every
//! configuration of the inference router — a reload's or the task's — goes
//! through `configure`, so the config file's routes and the members' always
//! travel together.
//!
//! A discovered backend is `discovered-<name>-<fingerprint prefix>`, of the
//! kind it announced, at the address it was reached at, with the location
//! it announced (so `context.backend_location` policies apply to it as to a
//! configured one), pinned to its certificate and sent the cluster's key for
//! it. Each model it serves becomes a route of its own — unless the config
//! already routes that name: the operator's routes are never changed by a
//! worker.
//!
//! Must never: let a member take a model name or alias the config routes,
//! or hold a member whose proof was not checked.

use arc_swap::ArcSwap;
use lattice_inference_router::join::Announcement;
use lattice_inference_router::{BackendKind, BackendSpec, ModelRoute, Router};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, DiscoveryConfig};
use crate::GatewayError;

/// A worker that proved membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub announcement: Announcement,
    /// Where it was reached (`https://ip:port`).
    pub url: String,
    /// How it was found: `mdns` or `peer`.
    pub via: &'static str,
    /// The backend's name.
    pub backend: String,
    pub joined_us: u64,
}

impl Member {
    pub fn new(announcement: Announcement, url: String, via: &'static str) -> Self {
        let name: String = announcement
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(32)
            .collect();
        let fp = &announcement.fingerprint[..8.min(announcement.fingerprint.len())];
        Self {
            backend: format!("discovered-{name}-{fp}"),
            announcement,
            url,
            via,
            joined_us: lattice_audit::now_us(),
        }
    }

    fn spec(&self, d: &DiscoveryConfig) -> BackendSpec {
        let a = &self.announcement;
        BackendSpec {
            name: self.backend.clone(),
            kind: BackendKind::parse(&a.kind).unwrap_or(BackendKind::Lattice),
            url: self.url.clone(),
            location: a.location.clone(),
            weight: 1,
            api_key: Some(d.secret.api_key(&a.fingerprint)),
            timeout: d.timeout,
            health_interval: d.interval,
            pin: Some(a.fingerprint.clone()),
        }
    }
}

/// The members now.
#[derive(Default)]
pub struct Members(ArcSwap<Vec<Arc<Member>>>);

impl Members {
    pub fn list(&self) -> Arc<Vec<Arc<Member>>> {
        self.0.load_full()
    }

    pub fn set(&self, members: Vec<Arc<Member>>) {
        self.0.store(Arc::new(members));
    }
}

/// The backends and routes of `config` followed by the members'. Also
/// returns the model names members announced that the config already
/// routes (not taken).
pub fn merged(
    config: &Config,
    members: &[Arc<Member>],
) -> (Vec<BackendSpec>, Vec<ModelRoute>, Vec<String>) {
    let mut backends = config.llm.backends.clone();
    let mut routes = config.llm.models.clone();
    let Some(d) = &config.discovery else {
        return (backends, routes, Vec::new());
    };
    let taken = |name: &str| {
        config
            .llm
            .models
            .iter()
            .any(|r| r.name == name || r.aliases.iter().any(|a| a == name))
    };
    let mut skipped = Vec::new();
    let mut discovered: BTreeMap<String, ModelRoute> = BTreeMap::new();
    for m in members {
        backends.push(m.spec(d));
        for model in &m.announcement.models {
            if taken(model) {
                if !skipped.contains(model) {
                    skipped.push(model.clone());
                }
                continue;
            }
            let route = discovered
                .entry(model.clone())
                .or_insert_with(|| ModelRoute {
                    name: model.clone(),
                    aliases: Vec::new(),
                    backends: Vec::new(),
                    strategy: d.strategy,
                    upstream_model: None,
                    labels: Vec::new(),
                });
            route.backends.push(m.backend.clone());
        }
    }
    routes.extend(discovered.into_values());
    (backends, routes, skipped)
}

/// Configures the router with the config's routes and the members'.
pub fn configure(
    router: &Router,
    config: &Config,
    members: &Members,
) -> Result<Vec<String>, GatewayError> {
    let (backends, routes, skipped) = merged(config, &members.list());
    router
        .configure(&backends, &routes)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    Ok(skipped)
}
