//! The embedded audit store: one SQLite file (WAL) in the data directory,
//! beside its segments (`segments`, `<db stem>.segments/`), which hold the
//! events' bytes. The events the segments hold are indexed a block at a
//! time (`blocks`: one row per run of consecutive events in one segment,
//! with, per event, where its record is, its Merkle leaf and its time,
//! tenant and request id; `blocks.rs`); `events` keeps a row per event for
//! what was written before blocks and for events whose canonical JSON is
//! inline (`append` of `Row::of`, a legacy journal's entries). Rows are
//! written by `rows.rs`. Reads go through the connection's views over both
//! (`lattice_log`, a virtual table, `vtab.rs`): `ev`, whose `event` is the
//! JSON either way (the SQL function `lattice_event` reads a segment
//! record), and `lv`, the leaves as `(idx, hash)`; queries read other
//! fields from the JSON. Older stores are migrated once, at open
//! (`migrate`). `checkpoints` holds the signed checkpoint notes, and
//! `owed` the decisions whose call's outcome is not written yet (kept in
//! the same transactions as the events, so after a crash the gateway knows
//! which calls were interrupted; not part of the signed log). Retention
//! prunes the oldest events (with their leaves) and checkpoints up to a
//! checkpointed size and keeps, in `pruned`, the heads of the perfect
//! subtrees that covered them: enough to keep appending and to prove
//! everything later (`merkle::range_root_after`; the leaves are read in
//! `store/leaves.rs`). `nodes` keeps the roots of the log's aligned
//! subtrees of 2^8, 2^16 … leaves, so a tree head or a proof reads
//! O(log n) hashes (`store/nodes.rs`).
//!
//! Must never: change a stored event, leaf or checkpoint in place, or
//! prune anything but a prefix of the log ending at a signed checkpoint.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;

use crate::merkle::{Frontier, Hash};
use crate::segments;
use crate::AuditError;
pub use rows::{Columns, Row};

/// The columns of `events`.
const EVENTS: &str = "(
    seq INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seg INTEGER,
    off INTEGER,
    leaf BLOB
)";

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS events_tenant_time ON events (tenant, ts_us);
CREATE INDEX IF NOT EXISTS events_request ON events (request_id);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS owed (
    event_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (size, line)
);
CREATE TABLE IF NOT EXISTS pruned (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL,
    heads BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL
);
";

/// Leaves `(index, hash)` as a store or another sink hands them out.
pub type Leaves<'a> = dyn Iterator<Item = Result<(u64, Hash), AuditError>> + 'a;
/// Event rows as a store or another sink hands them out.
pub type Events<'a> = dyn Iterator<Item = Result<StoredEvent, AuditError>> + 'a;

/// A `(seq, event)` row. An event whose segment record is missing or
/// damaged reads as empty (it then matches no leaf: verify names it).
pub(crate) fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get::<_, i64>(0)? as u64,
        json: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
    })
}

/// The events as read: `lattice_log` (the rows of `events` and the events
/// of `blocks`, `vtab.rs`) with each event's JSON from its segment record
/// (rows written before segments hold it inline).
const READ_VIEW: &str = "CREATE TEMP VIEW IF NOT EXISTS ev AS
    SELECT seq, CASE WHEN seg IS NULL THEN event ELSE lattice_event(seg, off) END AS event,
           ts_us, tenant, request_id FROM lattice_log";
/// The same, for a store older than blocks opened read-only.
const READ_VIEW_ROWS: &str = "CREATE TEMP VIEW IF NOT EXISTS ev AS
    SELECT seq, CASE WHEN seg IS NULL THEN event ELSE lattice_event(seg, off) END AS event,
           ts_us, tenant, request_id FROM events";
/// The same, for a store older than segments opened read-only.
const READ_VIEW_INLINE: &str = "CREATE TEMP VIEW IF NOT EXISTS ev AS
    SELECT seq, event, ts_us, tenant, request_id FROM events";
/// The Merkle log's leaves as read: `(idx, hash)`, one per event row that
/// has one (a row inserted by hand without a leaf is not in the log, and
/// `verify` names it).
const LEAF_VIEW: &str = "CREATE TEMP VIEW IF NOT EXISTS lv AS
    SELECT seq AS idx, leaf AS hash FROM lattice_log WHERE leaf IS NOT NULL";
/// The same, for a store older than blocks opened read-only.
const LEAF_VIEW_ROWS: &str = "CREATE TEMP VIEW IF NOT EXISTS lv AS
    SELECT seq AS idx, leaf AS hash FROM events WHERE leaf IS NOT NULL";
/// The same, for a store that keeps them in their own table (before
/// 2026-12-07) opened read-only.
const LEAF_VIEW_TABLE: &str =
    "CREATE TEMP VIEW IF NOT EXISTS lv AS SELECT idx, hash FROM log_leaves";

/// A connection to the store. A writing connection syncs every commit
/// (`synchronous = FULL`) but the writer's fills of events the segments hold
/// (`append_unsynced`).
pub struct Store {
    pub(crate) conn: Connection,
    /// Whether commits are synced now.
    synced: bool,
    /// Whether it has the stored subtree roots (`nodes.rs`; a store older
    /// than them opened read-only has not).
    has_nodes: bool,
    /// The newest run of leaves not yet whole, as the fills bring them
    /// (`nodes.rs`); `None` until read from the store.
    tail: std::cell::RefCell<Option<crate::merkle::stored::NodeBuilder>>,
}

/// The events with their leaves, `(seq, event, hash)`: over blocks one
/// scan (a leaf is beside its event), otherwise the two views joined.
const PAIRED_VIEW: &str = "CREATE TEMP VIEW IF NOT EXISTS evl AS
    SELECT seq, CASE WHEN seg IS NULL THEN event ELSE lattice_event(seg, off) END AS event,
           leaf AS hash FROM lattice_log WHERE leaf IS NOT NULL";
const PAIRED_VIEW_JOIN: &str = "CREATE TEMP VIEW IF NOT EXISTS evl AS
    SELECT e.seq AS seq, e.event AS event, l.hash AS hash FROM ev e JOIN lv l ON l.idx = e.seq";

/// One stored event row, as read back (bytes unparsed, for verification).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub json: String,
}

impl Store {
    /// Opens (creating if needed) the store for writing.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut conn = Connection::open(path)?;
        // Pruned pages go back to the file system (a new store only: SQLite
        // fixes this when the first table is created).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Statement journals in memory: a fill's `owed` statements and the
        // pointer-map pages of `auto_vacuum` need one. On disk each went
        // into a new temporary file (an open, an inode and a write pair per
        // journaled page), and where no temporary directory is writable (a
        // read-only root filesystem) the fill failed and every call after
        // it was refused.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS events {EVENTS};{SCHEMA}"
        ))?;
        migrate::migrate_generated_columns(&mut conn)?;
        migrate::add_segment_columns(&conn)?;
        migrate::move_leaves_into_events(&mut conn)?;
        conn.execute_batch(INDEXES)?;
        conn.execute_batch(blocks::SCHEMA)?;
        migrate::add_block_filters(&conn)?;
        conn.execute_batch(nodes::SCHEMA)?;
        read_view(&conn, path, Layout::Blocks)?;
        let store = Self {
            conn,
            synced: true,
            has_nodes: true,
            tail: Default::default(),
        };
        // A store older than its subtree roots gets them now, once.
        store.extend_nodes(store.log_size()?)?;
        Ok(store)
    }

    /// Synced commits (`FULL`) or not (`NORMAL`: in WAL mode still atomic
    /// and in order; a power cut can lose only the newest unsynced commits,
    /// and any later synced commit makes every earlier one durable).
    fn sync_commits(&mut self, on: bool) -> Result<(), AuditError> {
        if self.synced != on {
            let mode = if on { "FULL" } else { "NORMAL" };
            self.conn.pragma_update(None, "synchronous", mode)?;
            self.synced = on;
        }
        Ok(())
    }

    /// Leaves WAL checkpoints (copying the log into the database file) to
    /// another connection, off this one's commits.
    pub(crate) fn no_auto_checkpoints(&self) -> Result<(), AuditError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Opens an existing store read-only (for the CLI and queries).
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        if !path.exists() {
            return Err(AuditError::NoStore(path.display().to_string()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Whatever a query sorts or materializes stays in memory too: on a
        // read-only root filesystem SQLite has nowhere to put a temporary
        // file (the aggregates, which did, now count in one pass).
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let layout = if migrate::has_table(&conn, "log_leaves")? {
            Layout::LeafTable {
                segments: migrate::has_column(&conn, "seg")?,
            }
        } else if migrate::has_table(&conn, "blocks")? {
            Layout::Blocks
        } else if migrate::has_column(&conn, "seg")? {
            Layout::Rows
        } else {
            Layout::Inline
        };
        read_view(&conn, path, layout)?;
        let has_nodes = migrate::has_table(&conn, "nodes")?;
        Ok(Self {
            conn,
            synced: false,
            has_nodes,
            tail: Default::default(),
        })
    }

    /// Runs `read` inside one read transaction: everything it reads is the
    /// same snapshot of the store, however the writer appends meanwhile.
    pub fn read_consistent<T>(
        &self,
        read: impl FnOnce(&Self) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let result = read(self);
        let _ = self.conn.execute_batch("ROLLBACK");
        result
    }

    /// Appends events and their leaves in one transaction, durable when
    /// this returns (the commit is synced). `owed`: (event id, seq) of decisions that owe an
    /// outcome; `settled`: event ids of decisions whose outcome is among the
    /// rows.
    pub fn append(
        &mut self,
        rows: &[Row],
        owed: &[(String, u64)],
        settled: &[String],
    ) -> Result<(), AuditError> {
        self.sync_commits(true)?;
        self.insert(rows, owed, settled)
    }

    /// As `append`, not synced: for events the segments already hold
    /// durably (a start writes in again what a power cut lost).
    pub(crate) fn append_unsynced(
        &mut self,
        rows: &[Row],
        owed: &[(String, u64)],
        settled: &[String],
    ) -> Result<(), AuditError> {
        self.sync_commits(false)?;
        self.insert(rows, owed, settled)
    }

    /// The decisions whose outcome was never written (the gateway stopped
    /// between the two), in log order.
    pub fn owed_decisions(&self) -> Result<Vec<StoredEvent>, AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT e.seq, e.event FROM owed o JOIN ev e ON e.seq = o.seq ORDER BY e.seq",
        )?;
        let rows = stmt.query_map([], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a signed checkpoint, synced (and with it every event before).
    pub fn put_checkpoint(&mut self, size: u64, root: &Hash, note: &str) -> Result<(), AuditError> {
        self.sync_commits(true)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (size, root, note) VALUES (?1, ?2, ?3)",
            params![size as i64, &root[..], note],
        )?;
        Ok(())
    }

    /// Stores witness co-signature lines of the checkpoint of `size`.
    pub fn put_cosignatures(&mut self, size: u64, lines: &[String]) -> Result<(), AuditError> {
        self.sync_commits(true)?;
        let tx = self.conn.transaction()?;
        for line in lines {
            tx.execute(
                "INSERT OR IGNORE INTO cosignatures (size, line) VALUES (?1, ?2)",
                params![size as i64, line],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every stored co-signature line: (checkpoint size, line).
    pub fn cosignatures(&self) -> Result<Vec<(u64, String)>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT size, line FROM cosignatures ORDER BY size")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` signed checkpoints larger than `after`, in size order.
    pub fn checkpoints_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT size, note FROM checkpoints WHERE size > ?1 ORDER BY size LIMIT ?2")?;
        let rows = stmt.query_map([after as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// All event rows in `seq` order.
    pub fn events(&self) -> Result<Vec<StoredEvent>, AuditError> {
        self.scan_events(|events| events.collect())
    }

    /// Hands `read` the event rows in `seq` order, one at a time, read as
    /// it asks for them.
    pub fn scan_events<T>(
        &self,
        read: impl FnOnce(&mut Events<'_>) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, event FROM ev ORDER BY seq")?;
        let rows = stmt.query_map([], stored)?;
        let mut events = rows.map(|row| row.map_err(AuditError::from));
        read(&mut events)
    }

    /// Up to `limit` events from `from` on, in order, with their leaf hashes.
    pub fn range(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String, Vec<u8>)>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, event, hash FROM evl WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map([from as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                r.get(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last `n` events, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<StoredEvent>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, event FROM ev ORDER BY seq DESC LIMIT ?1")?;
        let rows = stmt.query_map([n as i64], stored)?;
        let mut out: Vec<StoredEvent> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Events of one request, in order.
    pub fn by_request(&self, request_id: &str) -> Result<Vec<StoredEvent>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, event FROM ev WHERE request_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([request_id], stored)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Signed checkpoint notes in size order: (size, note).
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT size, note FROM checkpoints ORDER BY size")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The pruned prefix of the log, if retention pruned any: the frontier
    /// at the size pruned up to.
    pub fn pruned(&self) -> Result<Option<Frontier>, AuditError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row("SELECT size, heads FROM pruned WHERE id = 0", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((size, heads)) = row else {
            return Ok(None);
        };
        let heads: Vec<Hash> = heads
            .chunks(32)
            .map(|c| c.try_into())
            .collect::<Result<_, _>>()
            .map_err(|_| AuditError::Corrupt("the pruned prefix's heads are not hashes".into()))?;
        Frontier::from_heads(size as u64, &heads)
            .map(Some)
            .ok_or_else(|| {
                AuditError::Corrupt(format!(
                    "the pruned prefix of size {size} has {} heads",
                    heads.len()
                ))
            })
    }

    /// Removes the events, leaves, checkpoints, co-signatures and subtree
    /// roots before `prefix.size()` (the frontier at that size, kept in
    /// their place) in one transaction. The caller picks a size with a signed checkpoint.
    pub fn prune(&mut self, prefix: &Frontier) -> Result<(), AuditError> {
        let size = prefix.size() as i64;
        let heads: Vec<u8> = prefix.heads().concat();
        self.sync_commits(true)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM events WHERE seq < ?1", [size])?;
        blocks::prune(&tx, size as u64)?;
        tx.execute("DELETE FROM checkpoints WHERE size < ?1", [size])?;
        tx.execute("DELETE FROM cosignatures WHERE size < ?1", [size])?;
        // Subtree roots wholly inside the prefix: its heads stand for them.
        tx.execute("DELETE FROM nodes WHERE ((idx + 1) << level) <= ?1", [size])?;
        tx.execute(
            "INSERT OR REPLACE INTO pruned (id, size, heads) VALUES (0, ?1, ?2)",
            params![size, heads],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// While the file is larger than `max` bytes, returns free pages to
    /// the file system, at most 4,096 per call (stores created with
    /// incremental auto-vacuum; a no-op on older ones, whose free pages are
    /// reused by later writes instead).
    pub fn release_pages_over(&self, max: u64) -> Result<(), AuditError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let over = (pages * size - max as i64) / size.max(1) + 1;
        if over > 0 {
            let n = over.min(4_096);
            // Each step frees one page: step it to the end.
            let mut stmt = self
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({n})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        Ok(())
    }

    /// Bytes in use: the database's pages that hold data.
    pub fn used_bytes(&self) -> Result<u64, AuditError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(((pages - free) * size).max(0) as u64)
    }

    /// The first kept event written at or after `ts_us`, if any.
    pub fn first_since(&self, ts_us: u64) -> Result<Option<u64>, AuditError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM lattice_log WHERE ts_us >= ?1 ORDER BY seq LIMIT 1",
                [ts_us as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.map(|s| s as u64))
    }

    /// The largest signed checkpoint size in `after+1..=upto`.
    pub fn checkpoint_at_most(&self, after: u64, upto: u64) -> Result<Option<u64>, AuditError> {
        let size: Option<i64> = self.conn.query_row(
            "SELECT MAX(size) FROM checkpoints WHERE size > ?1 AND size <= ?2",
            [after as i64, upto as i64],
            |r| r.get(0),
        )?;
        Ok(size.map(|s| s as u64))
    }

    /// The oldest decision still owing an outcome, if any.
    pub fn oldest_owed(&self) -> Result<Option<u64>, AuditError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT MIN(seq) FROM owed", [], |r| r.get(0))?;
        Ok(seq.map(|s| s as u64))
    }

    /// Number of events (rows), for tests and status.
    pub fn count(&self) -> Result<u64, AuditError> {
        let n: i64 = self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM events) + (SELECT IFNULL(SUM(n), 0) FROM blocks)",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// The newest segment a kept event is in, if any is.
    pub(crate) fn last_segment(&self) -> Result<Option<u64>, AuditError> {
        self.segment_of(
            "SELECT seg FROM lattice_log WHERE seg IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
    }

    /// The oldest segment a kept event is in, if any is.
    pub(crate) fn first_segment(&self) -> Result<Option<u64>, AuditError> {
        self.segment_of(
            "SELECT seg FROM lattice_log WHERE seg IS NOT NULL ORDER BY seq ASC LIMIT 1",
        )
    }

    /// The segment one of the two queries above answers, if any.
    fn segment_of(&self, sql: &'static str) -> Result<Option<u64>, AuditError> {
        let seg: Option<i64> = self.conn.query_row(sql, [], |r| r.get(0)).optional()?;
        Ok(seg.map(|s| s as u64))
    }
}

/// Which tables a store keeps its events in (older stores opened
/// read-only are read as they are).
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `events` rows and `blocks` (this version's).
    Blocks,
    /// `events` rows with their leaves (2026-12-07, before blocks).
    Rows,
    /// `events` rows, leaves in `log_leaves`; `segments`: whether rows may
    /// point into the segments.
    LeafTable { segments: bool },
    /// `events` rows with their JSON inline, without `log_leaves`.
    Inline,
}

/// Registers `lattice_event(seg, off)` (an event's JSON from its segment
/// record) and `lattice_log`, and creates the views reads go through: `ev`
/// (events), `lv` (the log's leaves) and `evl` (both, paired).
fn read_view(conn: &Connection, db: &Path, layout: Layout) -> Result<(), AuditError> {
    segments::register(conn, db)?;
    vtab::register(conn)?;
    let (events, leaves) = match layout {
        Layout::Blocks => (READ_VIEW, LEAF_VIEW),
        Layout::Rows => (READ_VIEW_ROWS, LEAF_VIEW_ROWS),
        Layout::LeafTable { segments: true } => (READ_VIEW_ROWS, LEAF_VIEW_TABLE),
        Layout::LeafTable { segments: false } => (READ_VIEW_INLINE, LEAF_VIEW_TABLE),
        Layout::Inline => (READ_VIEW_INLINE, LEAF_VIEW_ROWS),
    };
    conn.execute_batch(events)?;
    conn.execute_batch(leaves)?;
    conn.execute_batch(match layout {
        Layout::Blocks => PAIRED_VIEW,
        _ => PAIRED_VIEW_JOIN,
    })?;
    Ok(())
}

pub(crate) mod blocks;
mod ids;
mod leaves;
#[cfg(test)]
mod log_tests;
mod migrate;
mod nodes;
mod rows;
#[cfg(test)]
mod tests;
mod vtab;
