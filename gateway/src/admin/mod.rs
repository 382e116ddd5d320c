//! The admin API, on the agents' listener under `/admin/v1/`: what the
//! workbench and the CLI's remote commands call. Callers authenticate like
//! agents (API key or JWT; humans have `Lattice::Human` principals); every
//! admin action is a Cedar action, so who may administer is an ordinary
//! policy, and every call is audited (`admin.*` kinds), reads included.
//!
//! - `GET whoami`: the caller and what it may do (no action needed).
//! - `GET|POST models`, `DELETE models/<name>`: model routes with each
//!   backend's live state; add or remove a run-time route
//!   (`admin.change_routes`).
//! - `GET|POST mcp/servers`, `DELETE mcp/servers/<name>`: MCP servers
//!   (`admin.register_server`).
//! - `GET mcp/tools`, `POST mcp/tools/<server>__<tool>/approve`: pinned
//!   tools with the diff of a quarantined change; approve it
//!   (`admin.approve_tool`).
//! - `GET audit` (JSON or `format=csv`), `GET audit/verify`, `GET stats`:
//!   the trail, its verification, and live aggregates (`admin.read_audit`,
//!   on `Gateway` for every tenant or on the caller's `Tenant` for its own).
//! - `GET policies`, `POST policies/validate`, `POST policies/whatif`: the
//!   active set, a candidate set's errors, a hypothetical decision
//!   (`admin.read_policies`).
//! - `GET registry/catalog`, `GET registry/entries/<name>`, `GET|POST
//!   registry/installed`, `DELETE registry/installed/<name>`: the Lattice
//!   Registry's catalog, an entry with the diff installing it would make,
//!   what is installed, install and uninstall (`admin.install`;
//!   `registry.rs`).
//!
//! Must never: answer an admin call whose Cedar admin action was not
//! authorized and recorded, or change state outside `state`.

use lattice_policy::{Action, AuthzRequest, Evaluation, Principal, RequestContext, Resource};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

mod registry;
mod views;

use crate::call::Call;
use crate::config::{McpTransport, RawMcpServer};
use crate::error::Rejection;
use crate::runtime::{Runtime, Shared};
use crate::state::mcp_servers;
use crate::state::models::{self, RuntimeRoute};
use crate::state::StateStore;
use views::{AuditScope, Reply};

/// One admin endpoint, with the item its path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Whoami,
    Models,
    AddModel,
    RemoveModel(String),
    Servers,
    AddServer,
    RemoveServer(String),
    Tools,
    ApproveTool(String),
    Audit,
    AuditVerify,
    Stats,
    Policies,
    ValidatePolicies,
    WhatIf,
    RegistryCatalog,
    RegistryEntry(String),
    RegistryInstalled,
    RegistryInstall,
    RegistryUninstall(String),
}

impl Endpoint {
    /// The endpoint a method and path name, or the refusal: 404 for an
    /// unknown path, 405 for a known path and another method.
    pub(crate) fn route(method: &str, path: &str) -> Result<Self, Rejection> {
        let rest = path.strip_prefix("/admin/v1/").ok_or(Rejection::NotFound)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Rejection::NotFound);
        }
        let item = |i: usize| parts[i].to_string();
        let (get, post, delete) = (method == "GET", method == "POST", method == "DELETE");
        let found = match parts.as_slice() {
            ["whoami"] => get.then_some(Endpoint::Whoami),
            ["models"] if get => Some(Endpoint::Models),
            ["models"] => post.then_some(Endpoint::AddModel),
            ["models", _] => delete.then(|| Endpoint::RemoveModel(item(1))),
            ["mcp", "servers"] if get => Some(Endpoint::Servers),
            ["mcp", "servers"] => post.then_some(Endpoint::AddServer),
            ["mcp", "servers", _] => delete.then(|| Endpoint::RemoveServer(item(2))),
            ["mcp", "tools"] => get.then_some(Endpoint::Tools),
            ["mcp", "tools", _, "approve"] => post.then(|| Endpoint::ApproveTool(item(2))),
            ["audit"] => get.then_some(Endpoint::Audit),
            ["audit", "verify"] => get.then_some(Endpoint::AuditVerify),
            ["stats"] => get.then_some(Endpoint::Stats),
            ["policies"] => get.then_some(Endpoint::Policies),
            ["policies", "validate"] => post.then_some(Endpoint::ValidatePolicies),
            ["policies", "whatif"] => post.then_some(Endpoint::WhatIf),
            ["registry", "catalog"] => get.then_some(Endpoint::RegistryCatalog),
            // Entry names are `namespace/name`: two path segments.
            ["registry", "entries", ns, name] => {
                get.then(|| Endpoint::RegistryEntry(format!("{ns}/{name}")))
            }
            ["registry", "installed"] if get => Some(Endpoint::RegistryInstalled),
            ["registry", "installed"] => post.then_some(Endpoint::RegistryInstall),
            ["registry", "installed", ns, name] => {
                delete.then(|| Endpoint::RegistryUninstall(format!("{ns}/{name}")))
            }
            _ => return Err(Rejection::NotFound),
        };
        found.ok_or(Rejection::MethodNotAllowed)
    }

    /// The audit kind and the Cedar action (None: authentication is enough).
    fn kind_action(&self) -> (&'static str, Option<Action>) {
        use Endpoint::*;
        match self {
            Whoami => ("admin.whoami", None),
            Models => ("admin.models.list", Some(Action::ChangeRoutes)),
            AddModel => ("admin.models.add", Some(Action::ChangeRoutes)),
            RemoveModel(_) => ("admin.models.remove", Some(Action::ChangeRoutes)),
            Servers => ("admin.mcp.list", Some(Action::RegisterServer)),
            AddServer => ("admin.mcp.add", Some(Action::RegisterServer)),
            RemoveServer(_) => ("admin.mcp.remove", Some(Action::RegisterServer)),
            Tools => ("admin.tools.list", Some(Action::ApproveTool)),
            ApproveTool(_) => ("admin.tools.approve", Some(Action::ApproveTool)),
            Audit => ("admin.audit.query", Some(Action::ReadAudit)),
            AuditVerify => ("admin.audit.verify", Some(Action::ReadAudit)),
            Stats => ("admin.audit.stats", Some(Action::ReadAudit)),
            Policies => ("admin.policies.list", Some(Action::ReadPolicies)),
            ValidatePolicies => ("admin.policies.validate", Some(Action::ReadPolicies)),
            WhatIf => ("admin.policies.whatif", Some(Action::ReadPolicies)),
            RegistryCatalog => ("admin.registry.catalog", Some(Action::Install)),
            RegistryEntry(_) => ("admin.registry.entry", Some(Action::Install)),
            RegistryInstalled => ("admin.registry.list", Some(Action::Install)),
            RegistryInstall => ("admin.registry.install", Some(Action::Install)),
            RegistryUninstall(_) => ("admin.registry.uninstall", Some(Action::Install)),
        }
    }

    /// The audit target: the named item, or the collection.
    fn target(&self, path: &str) -> String {
        use Endpoint::*;
        match self {
            RemoveModel(n) | RemoveServer(n) | ApproveTool(n) | RegistryEntry(n)
            | RegistryUninstall(n) => n.clone(),
            _ => path.trim_start_matches("/admin/v1/").to_string(),
        }
    }
}

/// A change an admin call makes, checked before its decision is recorded.
enum Change {
    None,
    Route(RuntimeRoute),
    Server(Box<RawMcpServer>),
    WhatIf(Box<AuthzRequest>),
    Candidate(String),
    Registry(registry::Call),
}

/// Answers `/admin/v1/...`. Returns Ok(true): the response is written.
pub async fn serve(
    node: &Shared,
    session: &mut Session,
    ctx: &mut Call,
    runtime: &Runtime,
) -> Result<bool> {
    ctx.facts.kind = "admin.request";
    let path = ctx.facts.target.clone();
    let method = session.req_header().method.clone();
    let query = session.req_header().uri.query().unwrap_or("").to_string();
    let Some((body, principal)) =
        crate::intake::read_and_authenticate(node, session, ctx, runtime).await?
    else {
        return Ok(true);
    };
    let endpoint = match Endpoint::route(method.as_str(), &path) {
        Ok(e) => e,
        Err(r) => {
            let reason = r.message();
            return crate::respond::refusal(node, session, ctx, runtime, r, &reason).await;
        }
    };
    let (kind, action) = endpoint.kind_action();
    ctx.facts.kind = kind;
    ctx.facts.target = endpoint.target(&path);
    if endpoint == Endpoint::RegistryInstall {
        // The entry is the target (a bad body is refused below).
        if let Some(name) = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
        {
            ctx.facts.target = name;
        }
    }
    if let Some(a) = action {
        ctx.facts.action = a.as_str().into();
    }
    // 5. Authorize.
    if !crate::respond::step(node, session, ctx, runtime, 5).await? {
        return Ok(true);
    }
    let (evaluation, scope) = authorize_admin(ctx, runtime, &principal, action);
    node.metrics.decision(evaluation.live.outcome);
    if !evaluation.live.is_allow() {
        if let Err(sent) = ctx.forbid(node, runtime, &evaluation) {
            crate::respond::rejection(session, ctx, &sent).await?;
        }
        return Ok(true);
    }
    // A change is checked before its decision is recorded: an invalid
    // route is a 400, not an allowed call that failed.
    let checked = match &endpoint {
        Endpoint::AddModel => check_new_route(runtime, &body).map(Change::Route),
        Endpoint::AddServer => {
            check_new_server(runtime, &body).map(|s| Change::Server(Box::new(s)))
        }
        Endpoint::WhatIf => views::check_whatif(&body).map(|r| Change::WhatIf(Box::new(r))),
        Endpoint::ValidatePolicies => views::check_candidate(&body).map(Change::Candidate),
        Endpoint::RegistryCatalog => registry::params(&query).map(|p| {
            Change::Registry(registry::Call::Catalog {
                search: p.get("search").cloned().unwrap_or_default(),
                kind: p.get("kind").filter(|k| !k.is_empty()).cloned(),
            })
        }),
        Endpoint::RegistryEntry(name) => registry::params(&query).map(|p| {
            Change::Registry(registry::Call::Entry {
                name: name.clone(),
                version: p.get("version").filter(|v| !v.is_empty()).cloned(),
            })
        }),
        Endpoint::RegistryInstalled => Ok(Change::Registry(registry::Call::Installed)),
        Endpoint::RegistryInstall => {
            registry::check_install(&body).map(|v| Change::Registry(registry::Call::Install(v)))
        }
        Endpoint::RegistryUninstall(name) => {
            Ok(Change::Registry(registry::Call::Uninstall(name.clone())))
        }
        _ => Ok(Change::None),
    };
    let change = match checked {
        Ok(c) => vet_hosts(runtime, c).await,
        Err(e) => Err(e),
    };
    let change = match change {
        Ok(c) => c,
        Err(message) => {
            let r = Rejection::InvalidRequest {
                message: message.clone(),
                param: None,
            };
            return crate::respond::refusal(node, session, ctx, runtime, r, &message).await;
        }
    };
    // 7. Record the decision (`Call::allow` enters the step).
    if !crate::respond::allowed_by(node, session, ctx, runtime, &evaluation).await? {
        return Ok(true);
    }
    let reply = admin_reply(node, runtime, &principal, endpoint, change, scope, &query).await;
    let (status, content_type, body, attachment) = match reply {
        Reply::Json(status, v) => (status, "application/json", v.to_string(), None),
        Reply::Csv(text) => (200, "text/csv; charset=utf-8", text, Some("audit.csv")),
    };
    if status >= 400 {
        ctx.failure = Some(body.clone());
    }
    let mut extra = vec![("cache-control", "no-store".to_string())];
    if let Some(name) = attachment {
        extra.push((
            "content-disposition",
            format!("attachment; filename=\"{name}\""),
        ));
    }
    crate::respond::bytes(session, ctx, status, content_type, body.into(), &extra).await?;
    Ok(true)
}

/// The decision on an admin call. Reading the audit trail is allowed on
/// the whole gateway (every tenant) or, failing that, on the caller's
/// own tenant; `whoami` needs no permission beyond authentication.
fn authorize_admin(
    ctx: &Call,
    runtime: &Runtime,
    principal: &Principal,
    action: Option<Action>,
) -> (Evaluation, AuditScope) {
    let decide = |action: Action, resource: Resource| {
        runtime.policy.evaluate(&AuthzRequest {
            principal: principal.clone(),
            action,
            resource,
            context: RequestContext::new(
                (lattice_audit::now_us() / 1_000_000) as i64,
                ctx.facts.client_addr_ip(),
            ),
        })
    };
    let gateway = || Resource::Gateway {
        id: "gateway".into(),
    };
    match action {
        None => (
            Evaluation {
                live: lattice_policy::Decision {
                    outcome: lattice_policy::Outcome::Allow,
                    policies: Vec::new(),
                    errors: Vec::new(),
                },
                shadow: None,
            },
            AuditScope::None,
        ),
        Some(Action::ReadAudit) => {
            let all = decide(Action::ReadAudit, gateway());
            if all.live.is_allow() {
                return (all, AuditScope::All);
            }
            let own = decide(
                Action::ReadAudit,
                Resource::Tenant {
                    id: principal.tenant.clone(),
                },
            );
            let scope = if own.live.is_allow() {
                AuditScope::Tenant(principal.tenant.clone())
            } else {
                AuditScope::None
            };
            (own, scope)
        }
        Some(a) => (decide(a, gateway()), AuditScope::None),
    }
}

/// What an allowed admin call answers.
async fn admin_reply(
    node: &Shared,
    runtime: &Runtime,
    principal: &Principal,
    endpoint: Endpoint,
    change: Change,
    scope: AuditScope,
    query: &str,
) -> Reply {
    let conflict = |name: &str| {
        Reply::Json(
            409,
            json!({"error": {"code": "conflict", "message": format!("`{name}` is defined in the config file; edit the file to change it")}}),
        )
    };
    let missing = |name: &str| {
        Reply::Json(
            404,
            json!({"error": {"code": "not_found", "message": format!("no run-time `{name}`")}}),
        )
    };
    match (endpoint, change) {
        (Endpoint::Whoami, _) => Reply::Json(200, views::whoami(runtime, principal)),
        (Endpoint::Models, _) => Reply::Json(200, models_view(node, runtime)),
        (Endpoint::AddModel, Change::Route(route)) => apply(node, |store| {
            store.add_model_route(&route)?;
            Ok(json!({"added": route.name()?}))
        }),
        (Endpoint::RemoveModel(name), _) => {
            if runtime.file_llm.models.iter().any(|m| m.name == name) {
                conflict(&name)
            } else if !runtime.config.llm.models.iter().any(|m| m.name == name) {
                missing(&name)
            } else {
                apply(node, |store| {
                    store.remove_model_route(&name)?;
                    Ok(json!({"removed": name}))
                })
            }
        }
        (Endpoint::Servers, _) => Reply::Json(200, servers_view(node, runtime)),
        (Endpoint::AddServer, Change::Server(server)) => apply(node, |store| {
            store.add_mcp_server(&server)?;
            Ok(json!({"added": server.name()}))
        }),
        (Endpoint::RemoveServer(name), _) => {
            if runtime.file_mcp_servers.contains(&name) {
                conflict(&name)
            } else if !runtime.config.mcp_servers.iter().any(|s| s.name == name) {
                missing(&name)
            } else {
                apply(node, |store| {
                    store.remove_mcp_server(&name)?;
                    Ok(json!({"removed": name}))
                })
            }
        }
        (Endpoint::Tools, _) => views::tools_view(node),
        (Endpoint::ApproveTool(name), _) => views::approve_tool(node, &name),
        (Endpoint::Audit, _) => views::audit_view(runtime, &scope, query).await,
        (Endpoint::AuditVerify, _) => views::verify_view(runtime).await,
        (Endpoint::Stats, _) => views::stats_view(runtime, &scope, query).await,
        (Endpoint::Policies, _) => Reply::Json(200, views::policies_view(runtime)),
        (Endpoint::ValidatePolicies, Change::Candidate(text)) => {
            Reply::Json(200, views::validate_candidate(node, runtime, &text).await)
        }
        (Endpoint::WhatIf, Change::WhatIf(req)) => Reply::Json(200, views::what_if(runtime, *req)),
        (_, Change::Registry(call)) => {
            let by = format!(
                "{}:{}",
                crate::state::kind_name(principal.kind),
                principal.id
            );
            registry::reply(node, runtime, by, call).await
        }
        _ => Reply::Json(500, json!({"error": {"code": "internal_error"}})),
    }
}

/// The egress check of the names a registration will dial, on what they
/// resolve to now (every connection is checked again, by the guard).
async fn vet_hosts(runtime: &Runtime, change: Change) -> Result<Change, String> {
    let urls: Vec<String> = match &change {
        Change::Server(s) => s.url().map(str::to_string).into_iter().collect(),
        Change::Route(r) => r.backends.iter().map(|b| b.url().to_string()).collect(),
        _ => Vec::new(),
    };
    if urls.is_empty() {
        return Ok(change);
    }
    let allow = runtime.config.egress.clone();
    tokio::task::spawn_blocking(move || {
        urls.iter()
            .try_for_each(|u| crate::egress::vet_url(&allow, u))
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(change)
}

fn check_new_route(runtime: &Runtime, body: &[u8]) -> Result<RuntimeRoute, String> {
    let route: RuntimeRoute =
        serde_json::from_slice(body).map_err(|e| format!("invalid route: {e}"))?;
    route.name().map_err(|e| e.to_string())?;
    let mut all = models::stored(&runtime.config).map_err(|e| e.to_string())?;
    all.push(route.clone());
    let mut base = runtime.config.clone();
    base.llm = runtime.file_llm.clone();
    models::merged(&base, &all).map_err(|e| e.to_string())?;
    Ok(route)
}

fn check_new_server(runtime: &Runtime, body: &[u8]) -> Result<RawMcpServer, String> {
    let server: RawMcpServer =
        serde_json::from_slice(body).map_err(|e| format!("invalid MCP server: {e}"))?;
    let mut all = mcp_servers::stored(&runtime.config).map_err(|e| e.to_string())?;
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
    mcp_servers::merged(
        &dir,
        &file,
        &all,
        &runtime.config.mcp.allow_commands,
        &runtime.config.egress,
    )
    .map_err(|e| e.to_string())?;
    Ok(server)
}

fn servers_view(node: &Shared, runtime: &Runtime) -> Value {
    let status = node.mcp.as_ref().map(|h| h.status()).unwrap_or_default();
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
    node: &Shared,
    change: impl FnOnce(&StateStore) -> Result<Value, crate::GatewayError>,
) -> Reply {
    let result = StateStore::open(&node.startup.server.data_dir)
        .and_then(|store| change(&store))
        .and_then(|v| crate::reload::reload(node).map(|()| v));
    match result {
        Ok(v) => Reply::Json(200, v),
        Err(e) => Reply::Json(
            409,
            json!({"error": {"code": "conflict", "message": e.to_string()}}),
        ),
    }
}

fn models_view(node: &Shared, runtime: &Runtime) -> Value {
    let from_file = |name: &str| runtime.file_llm.models.iter().any(|m| m.name == name);
    let members = node.discovered.list();
    let models: Vec<Value> = node
        .inference
        .routes()
        .iter()
        .map(|r| {
            let backends: Vec<Value> = r
                .backends
                .iter()
                .map(|b| {
                    let mut v = json!({
                        "name": b.spec.name, "kind": b.spec.kind.as_str(), "url": b.spec.url,
                        "location": b.spec.location, "weight": b.spec.weight,
                        "healthy": b.healthy(), "ejected": b.ejected(), "available": b.available(),
                        "outstanding": b.outstanding(), "reported_load": b.reported_load(),
                        "latency_ewma_us": b.ewma_us(), "requests": b.served(),
                        "origin": if b.spec.pin.is_some() { "discovered" } else { "configured" },
                    });
                    if let Some(m) = members.iter().find(|m| m.backend == b.spec.name) {
                        let a = &m.announcement;
                        v["node"] = json!(a.name);
                        v["device"] = json!(a.device);
                        v["capacity"] = json!(a.capacity);
                        v["node_labels"] = json!(a.labels);
                        v["found_via"] = json!(m.via);
                        v["fingerprint"] = json!(a.fingerprint);
                        v["joined_us"] = json!(m.joined_us);
                    }
                    v
                })
                .collect();
            let source = if from_file(&r.route.name) {
                "config"
            } else if r.backends.iter().all(|b| b.spec.pin.is_some()) {
                "discovered"
            } else {
                "run-time"
            };
            json!({
                "name": r.route.name, "aliases": r.route.aliases, "strategy": r.route.strategy.as_str(),
                "upstream_model": r.route.upstream_model(), "labels": r.route.labels,
                "source": source,
                "backends": backends,
            })
        })
        .collect();
    json!({"models": models})
}

#[cfg(test)]
mod tests {
    use super::Endpoint;
    use crate::error::Rejection;

    #[test]
    fn admin_paths_name_an_endpoint_and_maybe_an_item() {
        assert_eq!(
            Endpoint::route("GET", "/admin/v1/models"),
            Ok(Endpoint::Models)
        );
        assert_eq!(
            Endpoint::route("DELETE", "/admin/v1/models/m1"),
            Ok(Endpoint::RemoveModel("m1".into()))
        );
        assert_eq!(
            Endpoint::route("DELETE", "/admin/v1/mcp/servers/x"),
            Ok(Endpoint::RemoveServer("x".into()))
        );
        assert_eq!(
            Endpoint::route("POST", "/admin/v1/mcp/tools/s__t/approve"),
            Ok(Endpoint::ApproveTool("s__t".into()))
        );
        assert_eq!(
            Endpoint::route("GET", "/admin/v1/audit/verify"),
            Ok(Endpoint::AuditVerify)
        );
        assert_eq!(
            Endpoint::route("POST", "/admin/v1/policies/whatif"),
            Ok(Endpoint::WhatIf)
        );
        assert_eq!(
            Endpoint::route(
                "GET",
                "/admin/v1/registry/entries/dev.lattice/read-only-tools"
            ),
            Ok(Endpoint::RegistryEntry(
                "dev.lattice/read-only-tools".into()
            ))
        );
        assert_eq!(
            Endpoint::route("POST", "/admin/v1/registry/installed"),
            Ok(Endpoint::RegistryInstall)
        );
        assert_eq!(
            Endpoint::route(
                "DELETE",
                "/admin/v1/registry/installed/io.github.x/server-y"
            ),
            Ok(Endpoint::RegistryUninstall("io.github.x/server-y".into()))
        );
        assert_eq!(
            Endpoint::route("GET", "/admin/v1/registry/entries/just-a-name"),
            Err(Rejection::NotFound)
        );
        for bad in [
            "/admin/v1/modelsx",
            "/admin/v1/models/",
            "/admin/v1/models/a/b",
            "/admin/v1/keys",
            "/admin/v1//models",
            "/admin/v2/models",
        ] {
            assert_eq!(
                Endpoint::route("GET", bad),
                Err(Rejection::NotFound),
                "{bad}"
            );
        }
        // A known path with another method is a 405, not a 404.
        assert_eq!(
            Endpoint::route("DELETE", "/admin/v1/models"),
            Err(Rejection::MethodNotAllowed)
        );
        assert_eq!(
            Endpoint::route("GET", "/admin/v1/mcp/tools/s__t/approve"),
            Err(Rejection::MethodNotAllowed)
        );
    }
}
