//! The official MCP registry API over a catalog, read-only, as an axum
//! router (`lattice registry serve` puts it on a socket; the tests call
//! it without one):
//!
//! - `GET /v0.1/servers` — `cursor`, `limit` (1–100, default 30),
//!   `search` (substring of the name), `version` (`latest` or exact),
//!   `updated_since`; `{servers: [{server, _meta}], metadata: {nextCursor,
//!   count}}`.
//! - `GET /v0.1/servers/{name}/versions` and `.../versions/{version}`
//!   (`latest` allowed), the name URL-encoded (`io.github.x%2Fy`).
//! - `/v0` answers the same.
//! - Lattice's other kinds in the same shape under
//!   `/v0.1/lattice/{policy-packs|model-presets|templates|servers}`, each
//!   item `{entry, _meta}`.
//!
//! Entries of a file catalog carry no publication times, so every entry
//! is returned for `updated_since` (a client syncing changes never misses
//! one) and none names `publishedAt`.
//!
//! Must never: serve an entry other than as it was published (signatures
//! must verify on the other side), or let a cursor select anything but a
//! position in the listing.

use crate::catalog::{compare_versions, Catalog};
use crate::entry::{Entry, Kind};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

pub const DEFAULT_LIMIT: usize = 30;
pub const MAX_LIMIT: usize = 100;
const OFFICIAL: &str = "io.modelcontextprotocol.registry/official";

/// The router over `catalog`.
pub fn router(catalog: Arc<Catalog>) -> Router {
    let mut r = Router::new();
    for prefix in ["/v0.1", "/v0"] {
        r = r
            .route(&format!("{prefix}/servers"), get(list_servers))
            .route(
                &format!("{prefix}/servers/{{name}}/versions"),
                get(server_versions),
            )
            .route(
                &format!("{prefix}/servers/{{name}}/versions/{{version}}"),
                get(server_version),
            )
            .route(&format!("{prefix}/lattice/{{kind}}"), get(list_kind))
            .route(
                &format!("{prefix}/lattice/{{kind}}/{{name}}/versions"),
                get(kind_versions),
            )
            .route(
                &format!("{prefix}/lattice/{{kind}}/{{name}}/versions/{{version}}"),
                get(kind_version),
            );
    }
    r.route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(catalog)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// One listed entry with the registry's metadata.
fn item(catalog: &Catalog, e: &Entry, key: &str) -> Value {
    let mut v = serde_json::Map::new();
    v.insert(key.into(), e.doc.clone());
    v.insert(
        "_meta".into(),
        json!({OFFICIAL: {"status": "active", "isLatest": catalog.is_latest(e)}}),
    );
    Value::Object(v)
}

fn cursor_of(e: &Entry) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}\n{}", e.name, e.version))
}

/// A listing of `kind`'s entries by the query; items under `key`.
pub fn list(
    catalog: &Catalog,
    kind: Kind,
    q: &HashMap<String, String>,
    key: &str,
) -> Result<Value, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let after = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let text = URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| bad("invalid cursor: use the nextCursor of a listing".into()))?;
            let (name, version) = text
                .split_once('\n')
                .ok_or_else(|| bad("invalid cursor: use the nextCursor of a listing".into()))?;
            Some((name.to_string(), version.to_string()))
        }
    };
    if let Some(t) = q.get("updated_since") {
        // RFC 3339, checked for shape: `2025-08-07T13:15:04Z`.
        let ok = t.len() >= 20 && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b'T';
        if !ok {
            return Err(bad("updated_since must be an RFC 3339 date-time".into()));
        }
    }
    let search = q.get("search").map(|s| s.to_lowercase());
    let version = q.get("version");
    let entries = catalog
        .entries()
        .iter()
        .filter(|e| e.kind == kind)
        .filter(|e| {
            search
                .as_ref()
                .is_none_or(|s| e.name.to_lowercase().contains(s))
        })
        .filter(|e| match version.map(String::as_str) {
            None => true,
            Some("latest") => catalog.is_latest(e),
            Some(v) => e.version == v,
        })
        // Entries are ordered by name, then version: resume after the
        // cursor's.
        .skip_while(|e| {
            after
                .as_ref()
                .is_some_and(|(n, v)| match e.name.as_str().cmp(n.as_str()) {
                    Ordering::Less => true,
                    Ordering::Equal => compare_versions(&e.version, v) != Ordering::Greater,
                    Ordering::Greater => false,
                })
        });
    let page: Vec<&Entry> = entries.take(limit + 1).collect();
    let more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    let mut metadata = json!({"count": page.len()});
    if more {
        if let Some(last) = page.last() {
            metadata["nextCursor"] = json!(cursor_of(last));
        }
    }
    let items: Vec<Value> = page.iter().map(|e| item(catalog, e, key)).collect();
    let list_key = if key == "server" {
        "servers"
    } else {
        "entries"
    };
    let mut out = serde_json::Map::new();
    out.insert(list_key.into(), Value::Array(items));
    out.insert("metadata".into(), metadata);
    Ok(Value::Object(out))
}

fn reply(r: Result<Value, (StatusCode, String)>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err((s, m)) => error(s, &m),
    }
}

fn versions_of(catalog: &Catalog, kind: Kind, name: &str, key: &str) -> Response {
    let all: Vec<Value> = catalog
        .versions(name)
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| item(catalog, e, key))
        .collect();
    if all.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            &format!("{} not found", kind_word(kind)),
        );
    }
    let list_key = if key == "server" {
        "servers"
    } else {
        "entries"
    };
    let count = all.len();
    let mut out = serde_json::Map::new();
    out.insert(list_key.into(), Value::Array(all));
    out.insert("metadata".into(), json!({"count": count}));
    Json(Value::Object(out)).into_response()
}

fn version_of(catalog: &Catalog, kind: Kind, name: &str, version: &str, key: &str) -> Response {
    match catalog.get(name, Some(version)).filter(|e| e.kind == kind) {
        Some(e) => Json(item(catalog, e, key)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!("{} version not found", kind_word(kind)),
        ),
    }
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Server => "Server",
        Kind::PolicyPack => "Policy pack",
        Kind::ModelPreset => "Model preset",
        Kind::Template => "Template",
    }
}

type Shared = State<Arc<Catalog>>;

async fn list_servers(State(c): Shared, Query(q): Query<HashMap<String, String>>) -> Response {
    reply(list(&c, Kind::Server, &q, "server"))
}

async fn server_versions(State(c): Shared, Path(name): Path<String>) -> Response {
    versions_of(&c, Kind::Server, &name, "server")
}

async fn server_version(
    State(c): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    version_of(&c, Kind::Server, &name, &version, "server")
}

fn no_kind(kind: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "no kind `{kind}`: the kinds are {}",
            Kind::ALL.map(Kind::plural).join(", ")
        ),
    )
}

async fn list_kind(
    State(c): Shared,
    Path(kind): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match Kind::parse(&kind) {
        Some(k) => reply(list(&c, k, &q, "entry")),
        None => no_kind(&kind),
    }
}

async fn kind_versions(State(c): Shared, Path((kind, name)): Path<(String, String)>) -> Response {
    match Kind::parse(&kind) {
        Some(k) => versions_of(&c, k, &name, "entry"),
        None => no_kind(&kind),
    }
}

async fn kind_version(
    State(c): Shared,
    Path((kind, name, version)): Path<(String, String, String)>,
) -> Response {
    match Kind::parse(&kind) {
        Some(k) => version_of(&c, k, &name, &version, "entry"),
        None => no_kind(&kind),
    }
}
