//! Reading a node's log back from ClickHouse for `verify`, as it is
//! checked: its leaves and its rows come through two cursors in `seq`
//! order (the walk of `verify/walk.rs` merges them), so the verifier holds
//! a row at a time, never the log. Both cursors stop at the size the log
//! had when it was opened: rows shipped while it is read are not half-seen
//! by one cursor and not the other.
//!
//! ClickHouse sorts the rows by `seq` itself (the table is ordered for
//! queries, not by `seq`); past `SORT_IN_MEMORY` bytes it sorts on its
//! disk, so a long log does not need the server's memory either.
//!
//! Must never: hand the walk rows out of `seq` order, drop a row that is
//! not an identical copy of the one before it, or read past the bound.

use std::cell::Cell;

use clickhouse::query::RowCursor;
use clickhouse::{Client, Row};
use serde::Deserialize;
use tokio::runtime::Runtime;

use super::{ch_err, ClickHouseConfig};
use crate::merkle::Hash;
use crate::store::StoredEvent;
use crate::AuditError;

/// Bytes a sort holds in the server's memory before it spills to disk.
const SORT_IN_MEMORY: &str = "268435456";

#[derive(Row, Deserialize)]
struct LeafRow {
    seq: u64,
    leaf_hash: String,
}

#[derive(Row, Deserialize)]
struct LogRow {
    seq: u64,
    leaf_hash: String,
    event: String,
}

#[derive(Row, Deserialize)]
struct NoteRow {
    size: u64,
    note: String,
}

#[derive(Row, Deserialize)]
struct Extent {
    rows: u64,
    last: u64,
}

/// A node's log in ClickHouse, below a `seq` fixed when it was opened.
/// It drives its queries on a current-thread runtime of its own (only its
/// `block_on` is used: the walk asks for rows one at a time), so it is
/// read the same from the CLI and from a gateway's blocking thread.
pub(crate) struct RemoteLog {
    rt: Runtime,
    client: Client,
    node: String,
    below: u64,
    checkpoints: Vec<(u64, String)>,
    duplicates: Cell<u64>,
    events: Cell<u64>,
}

impl RemoteLog {
    /// The whole log as ClickHouse holds it now.
    ///
    /// Its checkpoints are read first, all of them, then where the rows
    /// end: the shipper inserts a checkpoint only after the rows it signs,
    /// so every checkpoint read is covered by rows below the bound, and a
    /// checkpoint past the last row says the newest rows were deleted.
    pub(crate) fn open(cfg: &ClickHouseConfig, node: &str) -> Result<Self, AuditError> {
        let mut log = Self::connect(cfg, node, u64::MAX)?;
        let extent: Extent = log
            .rt
            .block_on(
                log.client
                    .query(
                        "SELECT count() AS rows, max(seq) AS last FROM audit_events WHERE node = ?",
                    )
                    .bind(node)
                    .fetch_one(),
            )
            .map_err(ch_err)?;
        log.below = if extent.rows == 0 { 0 } else { extent.last + 1 };
        Ok(log)
    }

    /// The rows before `below` only, and the checkpoints of smaller sizes
    /// (the part of a log that retention pruned from the embedded store,
    /// which keeps the checkpoint at `below` itself).
    pub(crate) fn below(
        cfg: &ClickHouseConfig,
        node: &str,
        below: u64,
    ) -> Result<Self, AuditError> {
        Self::connect(cfg, node, below)
    }

    /// A client and its runtime, and the checkpoints of sizes below `below`.
    fn connect(cfg: &ClickHouseConfig, node: &str, below: u64) -> Result<Self, AuditError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AuditError::Io(format!("a runtime for the ClickHouse client: {e}")))?;
        let client = super::client(cfg)?;
        let checkpoints = notes(&rt, &client, node, below)?;
        Ok(Self {
            rt,
            client,
            node: node.to_string(),
            below,
            checkpoints,
            duplicates: Cell::new(0),
            events: Cell::new(0),
        })
    }

    /// The signed checkpoints read when it was opened, one note per size.
    pub(crate) fn checkpoints(&self) -> &[(u64, String)] {
        &self.checkpoints
    }

    /// Identical copies of a row (a retried insert) dropped so far by the
    /// last `events` cursor.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    /// Rows handed out so far by the last `events` cursor.
    pub(crate) fn events_read(&self) -> u64 {
        self.events.get()
    }

    /// `SELECT columns ... ORDER BY order` over this node's rows below the
    /// bound, sorted on the server's disk past `SORT_IN_MEMORY`.
    fn cursor<T: Row>(&self, columns: &str, order: &str) -> Result<RowCursor<T>, AuditError> {
        self.client
            .query(&format!(
                "SELECT {columns} FROM audit_events WHERE node = ? AND seq < ? ORDER BY {order}"
            ))
            .bind(&self.node)
            .bind(self.below)
            .with_setting("max_bytes_before_external_sort", SORT_IN_MEMORY)
            .fetch::<T>()
            .map_err(ch_err)
    }

    /// The log's leaves `(seq, hash)` in order, one per `seq`: where rows
    /// of one `seq` disagree on it, the smallest (the walk then finds the
    /// other rows' content is not that leaf).
    pub(crate) fn leaves(
        &self,
    ) -> Result<impl Iterator<Item = Result<(u64, Hash), AuditError>> + '_, AuditError> {
        let mut cursor = self.cursor::<LeafRow>("seq, leaf_hash", "seq, leaf_hash")?;
        let mut last = None;
        Ok(std::iter::from_fn(move || loop {
            let row = match self.rt.block_on(cursor.next()) {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => return Some(Err(ch_err(e))),
            };
            if last == Some(row.seq) {
                continue;
            }
            last = Some(row.seq);
            return Some(leaf(row.seq, &row.leaf_hash).map(|hash| (row.seq, hash)));
        }))
    }

    /// The log's rows in `seq` order, identical copies of a row dropped
    /// and counted; rows that share a `seq` but differ are all handed out,
    /// so the walk names them.
    pub(crate) fn events(
        &self,
    ) -> Result<impl Iterator<Item = Result<StoredEvent, AuditError>> + '_, AuditError> {
        let mut cursor = self.cursor::<LogRow>("seq, leaf_hash, event", "seq, leaf_hash, event")?;
        self.events.set(0);
        self.duplicates.set(0);
        let mut last: Option<LogRow> = None;
        Ok(std::iter::from_fn(move || loop {
            let row = match self.rt.block_on(cursor.next()) {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => return Some(Err(ch_err(e))),
            };
            if let Some(prev) = &last {
                if prev.seq == row.seq && prev.leaf_hash == row.leaf_hash && prev.event == row.event
                {
                    self.duplicates.set(self.duplicates.get() + 1);
                    continue;
                }
            }
            if let Err(e) = leaf(row.seq, &row.leaf_hash) {
                return Some(Err(e));
            }
            self.events.set(self.events.get() + 1);
            let event = StoredEvent {
                seq: row.seq,
                json: row.event.clone(),
            };
            last = Some(row);
            return Some(Ok(event));
        }))
    }
}

fn leaf(seq: u64, hex_hash: &str) -> Result<Hash, AuditError> {
    hex::decode(hex_hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| AuditError::Corrupt(format!("row #{seq}: leaf_hash is not a SHA-256 hex")))
}

/// The signed checkpoints of sizes below `limit`, one note per size.
fn notes(
    rt: &Runtime,
    client: &Client,
    node: &str,
    limit: u64,
) -> Result<Vec<(u64, String)>, AuditError> {
    let notes: Vec<NoteRow> = rt
        .block_on(
            client
                .query("SELECT size, any(note) AS note FROM audit_checkpoints WHERE node = ? AND size < ? GROUP BY size ORDER BY size")
                .bind(node)
                .bind(limit)
                .fetch_all(),
        )
        .map_err(ch_err)?;
    Ok(notes.into_iter().map(|n| (n.size, n.note)).collect())
}
