//! The admin API, on the agents' listener under `/admin/v1/`. Callers
//! authenticate like agents (API key or JWT); every admin action is a Cedar
//! action on the `Gateway` resource, so who may administer is an ordinary
//! policy, and every call is audited (`admin.*` kinds).
//!
//! - `GET /admin/v1/models`: every route with each backend's live state
//!   (health, ejection, requests in flight, reported load, latency EWMA).
//! - `POST /admin/v1/models`: add a run-time route (the JSON form of one
//!   `[[models]]` entry and the `[[backends]]` it brings), validated against
//!   the running config, applied at once.
//! - `DELETE /admin/v1/models/<name>`: remove a run-time route.
//! - `GET /admin/v1/mcp/servers`: every MCP server, running or not, with its
//!   tool count and source; `POST` registers one (the JSON form of a
//!   `[[mcp_servers]]` entry), started at once; `DELETE .../<name>` stops
//!   and removes a run-time one.
//!
//! Model routes need `admin.change_routes`; MCP servers
//! `admin.register_server`.

use lattice_policy::{Action, AuthzRequest, RequestContext, Resource};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::config::{McpTransport, RawMcpServer};
use crate::error::Rejection;
use crate::keys::StateStore;
use crate::mcp_registry;
use crate::model_store::{self, RuntimeRoute};
use crate::proxy::{Ctx, Gateway};
use crate::runtime::Runtime;

/// `/admin/v1/<collection>[/<item>]` → (collection, item); None for any
/// other path.
fn parse_path(path: &str) -> Option<(&'static str, Option<String>)> {
    let (collection, rest) = if let Some(r) = path.strip_prefix("/admin/v1/models") {
        ("models", r)
    } else {
        ("mcp", path.strip_prefix("/admin/v1/mcp/servers")?)
    };
    match rest.strip_prefix('/') {
        None if rest.is_empty() => Some((collection, None)),
        Some(n) if !n.is_empty() && !n.contains('/') => Some((collection, Some(n.to_string()))),
        _ => None,
    }
}

/// A change an admin call makes, checked before its decision is recorded.
enum Change {
    None,
    Route(RuntimeRoute),
    Server(Box<RawMcpServer>),
}

impl Gateway {
    /// Answers `/admin/v1/...`. Returns Ok(true): the response is written.
    pub(crate) async fn serve_admin(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        runtime: &Runtime,
    ) -> Result<bool> {
        ctx.facts.kind = "admin.request";
        let path = ctx.facts.target.clone();
        let method = session.req_header().method.clone();
        let Some((body, principal)) = self.read_and_authenticate(session, ctx, runtime).await?
        else {
            return Ok(true);
        };
        let Some((collection, route_name)) = parse_path(&path) else {
            return self
                .refuse_and_respond(
                    session,
                    ctx,
                    runtime,
                    Rejection::NotFound,
                    "no such admin path",
                )
                .await;
        };
        let (kind, action) = match (collection, method.as_str(), route_name.is_some()) {
            ("models", "GET", false) => ("admin.models.list", Action::ChangeRoutes),
            ("models", "POST", false) => ("admin.models.add", Action::ChangeRoutes),
            ("models", "DELETE", true) => ("admin.models.remove", Action::ChangeRoutes),
            ("mcp", "GET", false) => ("admin.mcp.list", Action::RegisterServer),
            ("mcp", "POST", false) => ("admin.mcp.add", Action::RegisterServer),
            ("mcp", "DELETE", true) => ("admin.mcp.remove", Action::RegisterServer),
            _ => {
                return self
                    .refuse_and_respond(
                        session,
                        ctx,
                        runtime,
                        Rejection::MethodNotAllowed,
                        "method not allowed on this admin path",
                    )
                    .await
            }
        };
        ctx.facts.kind = kind;
        ctx.facts.action = action.as_str().into();
        ctx.facts.target = route_name.clone().unwrap_or_else(|| collection.into());
        // 5. Authorize.
        let evaluation = runtime.policy.evaluate(&AuthzRequest {
            principal: principal.clone(),
            action,
            resource: Resource::Gateway {
                id: "gateway".into(),
            },
            context: RequestContext::new(
                (lattice_audit::now_us() / 1_000_000) as i64,
                ctx.facts.client_addr_ip(),
            ),
        });
        self.shared.metrics.decision(evaluation.live.outcome);
        if !evaluation.live.is_allow() {
            if let Err(sent) = self.forbid(ctx, runtime, &evaluation) {
                self.respond(session, ctx, &sent).await?;
            }
            return Ok(true);
        }
        // A change is checked before its decision is recorded: an invalid
        // route is a 400, not an allowed call that failed.
        let checked = match kind {
            "admin.models.add" => self.check_new_route(runtime, &body).map(Change::Route),
            "admin.mcp.add" => self
                .check_new_server(runtime, &body)
                .map(|s| Change::Server(Box::new(s))),
            _ => Ok(Change::None),
        };
        let change = match checked {
            Ok(c) => c,
            Err(message) => {
                let r = Rejection::InvalidRequest {
                    message: message.clone(),
                    param: None,
                };
                return self
                    .refuse_and_respond(session, ctx, runtime, r, &message)
                    .await;
            }
        };
        // 7. Record the decision.
        if let Err(r) = self.record_decision(ctx, runtime, ctx.facts.allow_event(&evaluation)) {
            self.respond(session, ctx, &r).await?;
            return Ok(true);
        }
        ctx.facts.decision = "allow";
        let conflict = |name: &str| {
            (
                409,
                json!({"error": {"code": "conflict", "message": format!("`{name}` is defined in the config file; edit the file to change it")}}),
            )
        };
        let missing = |name: &str| {
            (
                404,
                json!({"error": {"code": "not_found", "message": format!("no run-time `{name}`")}}),
            )
        };
        let (status, reply) = match (kind, change, route_name) {
            ("admin.models.list", _, _) => (200, self.models_view(runtime)),
            ("admin.models.add", Change::Route(route), _) => self.apply(|store| {
                store.add_model_route(&route)?;
                Ok(json!({"added": route.name()?}))
            }),
            ("admin.models.remove", _, Some(name)) => {
                if runtime.file_llm.models.iter().any(|m| m.name == name) {
                    conflict(&name)
                } else if !runtime.config.llm.models.iter().any(|m| m.name == name) {
                    missing(&name)
                } else {
                    self.apply(|store| {
                        store.remove_model_route(&name)?;
                        Ok(json!({"removed": name}))
                    })
                }
            }
            ("admin.mcp.list", _, _) => (200, self.servers_view(runtime)),
            ("admin.mcp.add", Change::Server(server), _) => self.apply(|store| {
                store.add_mcp_server(&server)?;
                Ok(json!({"added": server.name()}))
            }),
            ("admin.mcp.remove", _, Some(name)) => {
                if runtime.file_mcp_servers.contains(&name) {
                    conflict(&name)
                } else if !runtime.config.mcp_servers.iter().any(|s| s.name == name) {
                    missing(&name)
                } else {
                    self.apply(|store| {
                        store.remove_mcp_server(&name)?;
                        Ok(json!({"removed": name}))
                    })
                }
            }
            _ => (500, json!({"error": {"code": "internal_error"}})),
        };
        if status >= 400 {
            ctx.failure = Some(reply.to_string());
        }
        self.write_json(session, ctx, status, &reply).await
    }

    fn check_new_route(&self, runtime: &Runtime, body: &[u8]) -> Result<RuntimeRoute, String> {
        let route: RuntimeRoute =
            serde_json::from_slice(body).map_err(|e| format!("invalid route: {e}"))?;
        route.name().map_err(|e| e.to_string())?;
        let mut all = model_store::stored(&runtime.config).map_err(|e| e.to_string())?;
        all.push(route.clone());
        let mut base = runtime.config.clone();
        base.llm = runtime.file_llm.clone();
        model_store::merged(&base, &all).map_err(|e| e.to_string())?;
        Ok(route)
    }

    fn check_new_server(&self, runtime: &Runtime, body: &[u8]) -> Result<RawMcpServer, String> {
        let server: RawMcpServer =
            serde_json::from_slice(body).map_err(|e| format!("invalid MCP server: {e}"))?;
        let mut all = mcp_registry::stored(&runtime.config).map_err(|e| e.to_string())?;
        all.push(server.clone());
        let file: Vec<_> = runtime
            .config
            .mcp_servers
            .iter()
            .filter(|s| runtime.file_mcp_servers.contains(&s.name))
            .cloned()
            .collect();
        let dir = runtime
            .config
            .path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        mcp_registry::merged(&dir, &file, &all).map_err(|e| e.to_string())?;
        Ok(server)
    }

    fn servers_view(&self, runtime: &Runtime) -> Value {
        let status = self
            .shared
            .mcp
            .as_ref()
            .map(|h| h.status())
            .unwrap_or_default();
        let servers: Vec<Value> = runtime
            .config
            .mcp_servers
            .iter()
            .map(|s| {
                let (running, tools) = status
                    .iter()
                    .find(|(n, _, _)| n == &s.name)
                    .map(|(_, r, t)| (*r, *t))
                    .unwrap_or((false, 0));
                let transport = match &s.transport {
                    McpTransport::Stdio { command, .. } => json!({"stdio": command}),
                    McpTransport::Http { url, .. } => json!({"http": url}),
                    McpTransport::Sse { url, .. } => json!({"sse": url}),
                };
                json!({
                    "name": s.name, "transport": transport, "labels": s.labels,
                    "running": running, "tools": tools,
                    "source": if runtime.file_mcp_servers.contains(&s.name) { "config" } else { "run-time" },
                })
            })
            .collect();
        json!({"servers": servers})
    }

    /// Changes the state store and reloads at once.
    fn apply(
        &self,
        change: impl FnOnce(&StateStore) -> Result<Value, crate::GatewayError>,
    ) -> (u16, Value) {
        let result = StateStore::open(&self.shared.startup.server.data_dir)
            .and_then(|store| change(&store))
            .and_then(|v| self.shared.reload().map(|()| v));
        match result {
            Ok(v) => (200, v),
            Err(e) => (
                409,
                json!({"error": {"code": "conflict", "message": e.to_string()}}),
            ),
        }
    }

    fn models_view(&self, runtime: &Runtime) -> Value {
        let from_file = |name: &str| runtime.file_llm.models.iter().any(|m| m.name == name);
        let models: Vec<Value> = self
            .shared
            .inference
            .routes()
            .iter()
            .map(|r| {
                let backends: Vec<Value> = r
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "name": b.spec.name, "kind": b.spec.kind.as_str(), "url": b.spec.url,
                            "location": b.spec.location, "weight": b.spec.weight,
                            "healthy": b.healthy(), "ejected": b.ejected(), "available": b.available(),
                            "outstanding": b.outstanding(), "reported_load": b.reported_load(),
                            "latency_ewma_us": b.ewma_us(), "requests": b.served(),
                        })
                    })
                    .collect();
                json!({
                    "name": r.route.name, "aliases": r.route.aliases, "strategy": r.route.strategy.as_str(),
                    "upstream_model": r.route.upstream_model(), "labels": r.route.labels,
                    "source": if from_file(&r.route.name) { "config" } else { "run-time" },
                    "backends": backends,
                })
            })
            .collect();
        json!({"models": models})
    }
}

#[cfg(test)]
mod tests {
    use super::parse_path;

    #[test]
    fn admin_paths_name_a_collection_and_maybe_an_item() {
        assert_eq!(parse_path("/admin/v1/models"), Some(("models", None)));
        assert_eq!(
            parse_path("/admin/v1/models/m1"),
            Some(("models", Some("m1".into())))
        );
        assert_eq!(
            parse_path("/admin/v1/mcp/servers/x"),
            Some(("mcp", Some("x".into())))
        );
        for bad in [
            "/admin/v1/modelsx",
            "/admin/v1/models/",
            "/admin/v1/models/a/b",
            "/admin/v1/keys",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }
}
