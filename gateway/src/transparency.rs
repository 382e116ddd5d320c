//! The door outside witnesses use (`/audit/v1/`): read-only, the node's
//! signed checkpoints with the consistency proofs between them, and the
//! one write a witness makes — its co-signatures, accepted only when they
//! verify against a witness key in `audit.witnesses` and a checkpoint this
//! node signed. Nothing here is an agent's call: no policy, no audit event
//! (the co-signatures are stored in the audit store itself).
//!
//! - `GET /audit/v1/checkpoints?after=S`: up to 64 checkpoints larger than
//!   `S`, in size order, each with the proof from the one before it (the
//!   first from `S`): `{"checkpoints": [{"size", "note", "proof": [base64]}]}`.
//! - `POST /audit/v1/cosignatures` `{"size", "cosignatures": "— ...\n"}`.
//!
//! Must never: store a co-signature that does not verify, or answer with
//! anything but checkpoints, proofs and hashes (no event leaves here).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lattice_audit::merkle::Nodes;
use lattice_audit::witness::{cosigns, note_body};
use lattice_audit::Store;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::respond;
use crate::runtime::Shared;

/// Most checkpoints in one answer.
const PAGE: usize = 64;
/// Largest co-signature body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Answers a request under `/audit/v1/`; false when the path is not one.
pub async fn serve(node: &Shared, session: &mut Session, path: &str) -> Result<bool> {
    let method = session.req_header().method.clone();
    let (status, body) = match (method.as_str(), path) {
        ("GET", "/audit/v1/checkpoints") => {
            let after = query_after(session.req_header().uri.query());
            let db = node.startup.audit.db_path.clone();
            match tokio::task::spawn_blocking(move || checkpoints(&db, after)).await {
                Ok(Ok(v)) => (200, v),
                Ok(Err(e)) => (503, json!({"error": e})),
                Err(e) => (500, json!({"error": e.to_string()})),
            }
        }
        ("POST", "/audit/v1/cosignatures") => match read_body(session).await? {
            Some(body) => cosignatures(node, &body).await,
            None => (413, json!({"error": "the body is too large"})),
        },
        _ => return Ok(false),
    };
    respond::plain(
        session,
        status,
        "application/json",
        body.to_string(),
        &[("cache-control", "no-store".to_string())],
    )
    .await?;
    Ok(true)
}

/// `after=S` of a query string (0 when absent or not a number).
fn query_after(query: Option<&str>) -> u64 {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("after="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The page of checkpoints after `after`, chained by consistency proofs.
fn checkpoints(db: &std::path::Path, after: u64) -> std::result::Result<Value, String> {
    let store = Store::open_read_only(db).map_err(|e| e.to_string())?;
    let page = store
        .checkpoints_after(after, PAGE)
        .map_err(|e| e.to_string())?;
    let log = match page.last() {
        Some(_) => store.log().map_err(|e| e.to_string())?,
        None => Default::default(),
    };
    let mut from = after;
    let mut out = Vec::with_capacity(page.len());
    for (size, note) in page {
        if log.size() < size {
            return Err("the store has fewer leaves than a checkpoint".into());
        }
        let proof = match from {
            0 => Vec::new(),
            m => lattice_audit::merkle::consistency_proof_in(&log, m, size).ok_or_else(|| {
                format!(
                    "no consistency proof from size {m}: retention pruned this log up to size {}",
                    log.prefix.size()
                )
            })?,
        };
        let proof: Vec<String> = proof.iter().map(|h| B64.encode(h)).collect();
        out.push(json!({"size": size, "note": note, "proof": proof}));
        from = size;
    }
    Ok(json!({ "checkpoints": out }))
}

async fn read_body(session: &mut Session) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Ok(None);
        }
    }
    Ok(Some(body))
}

/// Stores the lines that co-sign this node's checkpoint of `size` by a
/// configured witness.
async fn cosignatures(node: &Shared, body: &[u8]) -> (u16, Value) {
    let witnesses = &node.startup.audit.witnesses;
    if witnesses.is_empty() {
        return (
            404,
            json!({"error": "this gateway trusts no witness (audit.witnesses)"}),
        );
    }
    let parsed: Option<(u64, String)> = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        Some((
            v.get("size")?.as_u64()?,
            v.get("cosignatures")?.as_str()?.to_string(),
        ))
    });
    let Some((size, lines)) = parsed else {
        return (
            400,
            json!({"error": "expected {\"size\": N, \"cosignatures\": \"— ...\"}"}),
        );
    };
    let db = node.startup.audit.db_path.clone();
    let note = tokio::task::spawn_blocking(move || {
        let store = Store::open_read_only(&db).ok()?;
        store
            .checkpoints_after(size.saturating_sub(1), 1)
            .ok()?
            .into_iter()
            .find(|(s, _)| *s == size)
            .map(|(_, note)| note)
    })
    .await
    .ok()
    .flatten();
    let Some(note) = note else {
        return (
            404,
            json!({"error": format!("no checkpoint of size {size}")}),
        );
    };
    let body = note_body(&note).unwrap_or_default();
    let valid: Vec<String> = lines
        .lines()
        .filter(|l| witnesses.iter().any(|w| cosigns(body, l, w)))
        .map(str::to_string)
        .collect();
    if valid.is_empty() {
        return (
            400,
            json!({"error": format!("no line co-signs the checkpoint of size {size} by a trusted witness")}),
        );
    }
    let n = valid.len();
    match node.audit.add_cosignatures(size, valid) {
        Ok(()) => (200, json!({ "stored": n })),
        Err(e) => (503, json!({ "error": e.to_string() })),
    }
}

#[cfg(test)]
mod tests {
    use super::query_after;

    #[test]
    fn after_is_read_from_the_query() {
        for (query, after) in [
            (None, 0),
            (Some("after=12"), 12),
            (Some("x=1&after=7"), 7),
            (Some("after=-1"), 0),
            (Some("after="), 0),
        ] {
            assert_eq!(query_after(query), after, "{query:?}");
        }
    }
}
