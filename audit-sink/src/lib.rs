//! # lattice-audit
//!
//! Owns the audit trail: the audit event and its canonical encoding, the
//! bounded pipeline from the request path to the writer, the embedded SQLite
//! store, the per-node Merkle log (RFC 9162) with Ed25519-signed C2SP
//! checkpoints and witness export, and verification and proofs.
//!
//! Must never: block the request path beyond a bounded, non-blocking enqueue
//! and the bounded wait for its decision's group commit; say a decision is
//! durable before its batch is committed and synced; accept an event it
//! then drops; or treat the database as the proof — the
//! signed log is the proof, the rows are checked against it.

pub mod checkpoint;
pub mod clickhouse;
pub mod event;
pub mod export;
mod journal;
pub mod merkle;
pub mod outage;
pub mod query;
mod segments;
pub mod store;
pub mod testkit;
pub mod verify;
pub mod witness;
mod writer;

pub use checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
pub use event::{now_us, AuditEvent, Phase};
pub use segments::{beyond_store, free_bytes};
pub use store::Store;
pub use verify::{
    prove_consistency, prove_inclusion, read_log, read_witness, verify, verify_clickhouse,
    verify_log, verify_pruned, LogData, Problem, VerifyReport,
};
pub use writer::{
    AuditHandle, AuditPipeline, Durable, OutcomeSlot, PipelineConfig, Retention, GAP, INTERRUPTED,
    PRUNED,
};

/// Everything that can go wrong in the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the decision was not on stable storage within {0} ms")]
    NotDurable(u64),
    #[error("the audit pipeline is closed")]
    Closed,
    #[error("the audit store cannot be written")]
    WriterFailing,
    #[error("the ClickHouse backlog is full")]
    BacklogFull,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("no audit store at {0}")]
    NoStore(String),
    #[error("audit store is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} was pruned from this store by retention: prove it from ClickHouse, or from an export taken before")]
    Pruned(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("encoding: {0}")]
    Encoding(String),
    #[error("i/o: {0}")]
    Io(String),
    #[error("the audit store still refused writes {secs} s into the shutdown ({error}): {unfilled} event(s) are durable in the audit segments but not in the store, and the next start writes them in and signs their checkpoint; {unwritten} event(s) were never written (decisions whose calls were refused, not forwarded; outcomes, whose calls the next start records as interrupted)")]
    Incomplete {
        secs: u64,
        error: String,
        unfilled: usize,
        unwritten: usize,
    },
}
