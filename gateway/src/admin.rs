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
//!
//! `GET` and both changes need `admin.change_routes`.

use lattice_policy::{Action, AuthzRequest, RequestContext, Resource};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::error::Rejection;
use crate::keys::StateStore;
use crate::model_store::{self, RuntimeRoute};
use crate::proxy::{Ctx, Gateway};
use crate::runtime::Runtime;

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
        let route_name = path.strip_prefix("/admin/v1/models/").map(str::to_string);
        let (kind, action) = match (method.as_str(), path.as_str(), &route_name) {
            ("GET", "/admin/v1/models", _) => ("admin.models.list", Action::ChangeRoutes),
            ("POST", "/admin/v1/models", _) => ("admin.models.add", Action::ChangeRoutes),
            ("DELETE", _, Some(n)) if !n.is_empty() && !n.contains('/') => {
                ("admin.models.remove", Action::ChangeRoutes)
            }
            (_, "/admin/v1/models", _) | (_, _, Some(_)) => {
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
            _ => {
                return self
                    .refuse_and_respond(
                        session,
                        ctx,
                        runtime,
                        Rejection::NotFound,
                        "no such admin path",
                    )
                    .await
            }
        };
        ctx.facts.kind = kind;
        ctx.facts.action = action.as_str().into();
        ctx.facts.target = route_name.clone().unwrap_or_else(|| "models".into());
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
        let change = match kind {
            "admin.models.add" => match self.check_new_route(runtime, &body) {
                Ok(route) => Some(route),
                Err(message) => {
                    let r = Rejection::InvalidRequest {
                        message: message.clone(),
                        param: None,
                    };
                    return self
                        .refuse_and_respond(session, ctx, runtime, r, &message)
                        .await;
                }
            },
            _ => None,
        };
        // 7. Record the decision.
        if let Err(r) = self.record_decision(ctx, runtime, ctx.facts.allow_event(&evaluation)) {
            self.respond(session, ctx, &r).await?;
            return Ok(true);
        }
        ctx.facts.decision = "allow";
        let (status, reply) = match (kind, change, route_name) {
            ("admin.models.list", _, _) => (200, self.models_view(runtime)),
            ("admin.models.add", Some(route), _) => self.apply(|store| {
                store.add_model_route(&route)?;
                Ok(json!({"added": route.name()?}))
            }),
            ("admin.models.remove", _, Some(name)) => {
                if runtime.file_llm.models.iter().any(|m| m.name == name) {
                    (
                        409,
                        json!({"error": {"code": "conflict", "message": format!("`{name}` is defined in the config file; edit the file to change it")}}),
                    )
                } else {
                    self.apply(|store| {
                        store.remove_model_route(&name)?;
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
