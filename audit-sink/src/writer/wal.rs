//! The WAL checkpointer: copies the audit store's WAL into its database
//! file on a thread of its own (a passive checkpoint: it never waits for
//! the writer, and the writer's own connection never checkpoints, so no
//! commit of a call's decision pays for it).
//!
//! It checkpoints soon after the writer writes (the writer kicks it after
//! every fill), at most once per `EVERY`, and once a second when nothing
//! kicks it. Often and small on purpose: a checkpoint syncs the WAL and
//! the database file, and one that flushed 200 ms of fills at once made the
//! segments' `fdatasync` — the one a call's decision waits for — queue
//! behind it on the disk: at 1,000 req/s the p99 a call waited fell from
//! 2.9 to 1.5 ms when checkpoints came every 50 ms instead of every 200
//! (docs/benchmarks-log.md, "Changes measured"; every second made it 3.9).
//!
//! Must never: wait for the writer, or keep running after the pipeline
//! closed.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Shared;
use crate::AuditError;

/// The least time between two checkpoints.
const EVERY: Duration = Duration::from_millis(50);
/// How long the checkpointer sleeps when nothing kicks it.
const IDLE: Duration = Duration::from_secs(1);

/// What the writer tells the checkpointer: it wrote to the store.
pub(super) struct Kick(SyncSender<()>);

impl Kick {
    /// Never blocks: a kick already waiting is enough.
    pub(super) fn wrote(&self) {
        let _ = self.0.try_send(());
    }
}

/// Starts the checkpointer of the store at `db`; it stops when the
/// pipeline closes or the writer drops its `Kick`.
pub(super) fn start(
    db: PathBuf,
    shared: Arc<Shared>,
) -> Result<(Kick, JoinHandle<()>), AuditError> {
    let (tx, rx) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("audit-wal".into())
        .spawn(move || run(&db, &shared, &rx))
        .map_err(|e| AuditError::Io(e.to_string()))?;
    Ok((Kick(tx), thread))
}

fn run(db: &std::path::Path, shared: &Shared, kicks: &Receiver<()>) {
    let conn = match rusqlite::Connection::open(db) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the audit store to checkpoint its WAL");
            return;
        }
    };
    loop {
        match kicks.recv_timeout(IDLE) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "audit WAL checkpoint failed; retrying");
        }
        std::thread::sleep(EVERY);
    }
}
