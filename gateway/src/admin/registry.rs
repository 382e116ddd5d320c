//! The admin API's registry endpoints (`admin.install`): the catalog, one
//! entry with what installing it would change, what is installed, install
//! and uninstall. The work is the registry's (`RegistryService`, handed in
//! by the binary); this module parses the request and runs the work off
//! the request threads, then reloads so the change serves at once.
//!
//! Over the API an entry installs only when it is trusted (bundled, or
//! signed by a key in `[[registry.trusted]]`) and runs its package the way
//! its registry runs it: no `--allow-untrusted` and no `--command` from a
//! network caller — those stay with whoever holds the host.
//!
//! Must never: run the registry's blocking work on a request thread, or
//! accept a command to run from the request.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::views::Reply;
use crate::runtime::{RegistryAnswer, RegistryService, Runtime, Shared};

/// The query's parameters, percent-decoded (the last of a repeated one).
pub(super) fn params(query: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(super::views::query_params(query)?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
}

/// What an install request may say.
const INSTALL_KEYS: &[&str] = &["name", "version", "as", "args", "env"];

/// The install request, checked before its decision is recorded; its
/// entry name is the audit target.
pub(super) fn check_install(body: &[u8]) -> Result<Value, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid install request: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("an install request is a JSON object".into());
    };
    if let Some(k) = obj.keys().find(|k| !INSTALL_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{k}` in the install request (known: {})",
            INSTALL_KEYS.join(", ")
        ));
    }
    if !obj.get("name").is_some_and(Value::is_string) {
        return Err("the install request needs `name`, the entry's name".into());
    }
    Ok(v)
}

/// One registry endpoint's request.
pub(super) enum Call {
    Catalog {
        search: String,
        kind: Option<String>,
    },
    Entry {
        name: String,
        version: Option<String>,
    },
    Installed,
    Install(Value),
    Uninstall(String),
}

async fn blocking(
    service: Arc<dyn RegistryService>,
    f: impl FnOnce(&dyn RegistryService) -> RegistryAnswer + Send + 'static,
) -> RegistryAnswer {
    tokio::task::spawn_blocking(move || f(service.as_ref()))
        .await
        .unwrap_or_else(|e| Err((500, format!("the registry failed: {e}"))))
}

/// The reply to an allowed registry call.
pub(super) async fn reply(node: &Shared, runtime: &Runtime, by: String, call: Call) -> Reply {
    let Some(service) = node.registry.clone() else {
        return Reply::Json(
            404,
            json!({"error": {"code": "not_found", "message": "this gateway has no registry"}}),
        );
    };
    let config: PathBuf = runtime.config.path.clone();
    let changes = matches!(call, Call::Install(_) | Call::Uninstall(_));
    let answer = match call {
        Call::Catalog { search, kind } => {
            blocking(service, move |s| {
                s.catalog(&config, &search, kind.as_deref())
            })
            .await
        }
        Call::Entry { name, version } => {
            blocking(service, move |s| {
                s.entry(&config, &name, version.as_deref())
            })
            .await
        }
        Call::Installed => blocking(service, move |s| s.installed(&config)).await,
        Call::Install(request) => {
            blocking(service, move |s| s.install(&config, &request, &by)).await
        }
        Call::Uninstall(name) => blocking(service, move |s| s.uninstall(&config, &name, &by)).await,
    };
    match answer {
        Ok(v) => {
            if changes {
                // Serve the change now, not at the watcher's next poll.
                if let Err(e) = crate::reload::reload(node) {
                    return Reply::Json(
                        500,
                        json!({"error": {"code": "reload_failed", "message": format!("written, but the reload failed: {e}")}, "result": v}),
                    );
                }
            }
            Reply::Json(200, v)
        }
        Err((status, message)) => {
            let code = match status {
                404 => "not_found",
                409 => "conflict",
                400 | 422 => "refused",
                _ => "internal_error",
            };
            Reply::Json(status, json!({"error": {"code": code, "message": message}}))
        }
    }
}
