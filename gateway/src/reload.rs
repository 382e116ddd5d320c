//! Hot reload: the watcher polls the config file, the policy files, file
//! JWKS, the key store, the run-time registrations and the registry's
//! journal (audited); a change builds a
//! whole new `Runtime`, which replaces the serving one only if it built
//! completely, so an invalid config or policy set is rejected, audited and
//! logged while the old one keeps serving. Remote JWKS are refreshed here
//! too. What a reload changed is audited (`change_audit`).
//!
//! Must never: swap in a partly built runtime, or block the request path.

use crate::config::{self, JwksSource};
use crate::identity::jwt::parse_jwks;
use crate::runtime::{Runtime, Shared};
use crate::state::StateStore;
use crate::GatewayError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Reloads from the config file. On any error the current runtime stays.
pub fn reload(shared: &Shared) -> Result<(), GatewayError> {
    let path = shared.runtime.load().config.path.clone();
    let result = config::load(&path).and_then(Runtime::build);
    match result {
        Ok(new) => {
            if let Err(e) =
                crate::discovered::configure(&shared.inference, &new.config, &shared.discovered)
            {
                shared.metrics.reload("rejected");
                tracing::error!(error = %e, "model routes rejected; the previous config stays in force");
                return Err(GatewayError::Config(e.to_string()));
            }
            shared.egress.set(new.config.egress.clone());
            if let Some(hub) = &shared.mcp {
                hub.sync(&new.config.mcp_servers);
            }
            if new.config.server != shared.startup.server
                || new.config.audit != shared.startup.audit
                || new.config.cluster != shared.startup.cluster
                || new.config.telemetry != shared.startup.telemetry
            {
                tracing::warn!(
                    "[server], [audit], [cluster] and [telemetry] changes take effect only after a restart"
                );
            }
            if let Some(summary) = crate::change_audit::reload_summary(&shared.runtime.load(), &new)
            {
                crate::change_audit::record(
                    &shared.audit,
                    "admin.config.applied",
                    "config",
                    "allow",
                    &summary,
                );
            }
            shared.runtime.store(Arc::new(new));
            shared.metrics.reload("applied");
            tracing::info!(config = %path.display(), "config and policies reloaded");
            Ok(())
        }
        Err(e) => {
            shared.metrics.reload("rejected");
            tracing::error!(error = %e, "reload rejected; the previous config and policies keep serving");
            let reason = format!("rejected, the previous config keeps serving: {e}");
            crate::change_audit::record(
                &shared.audit,
                "admin.config.rejected",
                "config",
                "deny",
                &reason,
            );
            Err(e)
        }
    }
}

fn fingerprint(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Polls the watched files, the key store and JWKS URLs until `stop` is set.
pub fn spawn_watcher(
    shared: Arc<Shared>,
    data_dir: &Path,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, GatewayError> {
    let store = StateStore::open(data_dir)?;
    let poll = shared.startup.server.reload_poll;
    std::thread::Builder::new()
        .name("lattice-watcher".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "watcher cannot start; hot reload is off");
                    return;
                }
            };
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .ok();
            let mut last = fingerprint(&shared.runtime.load().watched_files());
            let mut models_generation = store.models_generation().unwrap_or(0);
            let mut mcp_generation = store.mcp_generation().unwrap_or(0);
            let mut jwks_fetched: HashMap<usize, Instant> = HashMap::new();
            while !stop.load(Ordering::Acquire) {
                let current = fingerprint(&shared.runtime.load().watched_files());
                let generation = store.models_generation().unwrap_or(models_generation);
                let mcp = store.mcp_generation().unwrap_or(mcp_generation);
                if current != last || generation != models_generation || mcp != mcp_generation {
                    let _ = reload(&shared);
                    last = fingerprint(&shared.runtime.load().watched_files());
                    models_generation = generation;
                    mcp_generation = mcp;
                }
                let before = shared.keys.active();
                match shared.keys.refresh(&store) {
                    Ok(true) => {
                        let after = shared.keys.active();
                        for (kind, target, reason) in
                            crate::change_audit::key_changes(&before, &after)
                        {
                            if let (Some(cluster), "admin.keys.revoked") = (&shared.cluster, kind) {
                                let revoked = crate::cluster::Revoked::Key(target.clone());
                                if let Err(cause) = cluster.revoke_blocking(&revoked, 0) {
                                    tracing::error!(%cause, key = %target, "a revoked API key could not be shared: other replicas accept it until they learn otherwise");
                                }
                            }
                            crate::change_audit::record(
                                &shared.audit,
                                kind,
                                &target,
                                "allow",
                                &reason,
                            );
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "cannot refresh API keys"),
                }
                crate::change_audit::registry_journal(&shared.audit, &store);
                if let Some(client) = &client {
                    refresh_jwks(&rt, client, &shared.runtime.load(), &mut jwks_fetched);
                }
                std::thread::sleep(poll);
            }
        })
        .map_err(|e| GatewayError::Server(e.to_string()))
}

fn refresh_jwks(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    runtime: &Runtime,
    fetched: &mut HashMap<usize, Instant>,
) {
    for issuer in &runtime.jwt.issuers {
        let JwksSource::Url(url) = &issuer.config.jwks else {
            continue;
        };
        // Keyed by the issuer object, so a reload (new, empty key set) fetches at once.
        let id = Arc::as_ptr(issuer) as usize;
        if fetched
            .get(&id)
            .is_some_and(|t| t.elapsed() < issuer.config.jwks_refresh)
        {
            continue;
        }
        fetched.insert(id, Instant::now());
        let result = rt.block_on(async {
            let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            resp.text().await.map_err(|e| e.to_string())
        });
        match result.and_then(|text| parse_jwks(&text)) {
            Ok(keys) => {
                tracing::info!(url, keys = keys.len(), "JWKS refreshed");
                issuer.set_keys(keys);
            }
            Err(e) => {
                tracing::error!(url, error = %e, "JWKS refresh failed; keeping the previous keys")
            }
        }
    }
}
