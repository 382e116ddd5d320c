//! The writer's side jobs: the thread that copies the store's WAL into its
//! database file, the export of signed checkpoints to the witness file, and
//! the outcome written at start for a call the gateway stopped during.
//!
//! Must never: write an event, a leaf or a checkpoint into the store (the
//! writer alone does), or export a checkpoint the store does not hold.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use crate::checkpoint::NoteSigner;
use crate::event::AuditEvent;

/// Copies the store's WAL into its database file every 200 ms (a passive
/// checkpoint: it never waits for the writer), until the pipeline closes.
/// The writer's own connection never does it, so no commit of a call's
/// decision pays for it.
pub(super) fn checkpoint_wal(db: &std::path::Path, shared: &Shared) {
    let conn = match rusqlite::Connection::open(db) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the audit store to checkpoint its WAL");
            return;
        }
    };
    while !shared.closed.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(200));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "audit WAL checkpoint failed; retrying");
        }
    }
}

/// Appends one checkpoint to the witness file as a JSON line and syncs it.
pub(super) fn export(
    path: &std::path::Path,
    signer: &NoteSigner,
    note: &str,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let line = serde_json::json!({ "vkey": signer.verifier().encoded(), "note": note });
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{line}")?;
    f.sync_data()
}

/// The reason an interrupted call's outcome carries.
pub const INTERRUPTED: &str =
    "interrupted: the gateway stopped before this call's outcome was recorded";

/// The outcome recorded at start for a decision left without one.
pub(super) fn interrupted(decision: &AuditEvent) -> AuditEvent {
    let mut e = AuditEvent::new(
        crate::event::Phase::Outcome,
        &decision.request_id,
        &decision.kind,
    );
    e.trace_id.clone_from(&decision.trace_id);
    e.tenant.clone_from(&decision.tenant);
    e.principal.clone_from(&decision.principal);
    e.auth_method.clone_from(&decision.auth_method);
    e.target.clone_from(&decision.target);
    e.action.clone_from(&decision.action);
    e.decision.clone_from(&decision.decision);
    e.upstream.clone_from(&decision.upstream);
    e.client_addr.clone_from(&decision.client_addr);
    e.user_agent.clone_from(&decision.user_agent);
    e.reason = INTERRUPTED.to_string();
    e
}
