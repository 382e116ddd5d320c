//! Migrations of older audit stores, run once when a store is opened for
//! writing: generated columns become plain ones (stores before
//! 2026-12-03), the segment columns are added (before 2026-12-05), and the
//! Merkle leaves move from their own table, `log_leaves`, into a column of
//! `events` (before 2026-12-07: one B-tree insert per event fewer), and
//! blocks get a column for their filters of request ids. Each
//! runs in one transaction and is a no-op on a store that needs none.
//!
//! Must never: change an event's JSON, a leaf or a checkpoint, or leave a
//! store half migrated.

use rusqlite::Connection;

use super::EVENTS;
use crate::AuditError;

/// Whether the store has a table named `name`.
pub(super) fn has_table(conn: &Connection, name: &str) -> Result<bool, AuditError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Whether `events` has a column named `name`.
pub(super) fn has_column(conn: &Connection, name: &str) -> Result<bool, AuditError> {
    table_has_column(conn, "events", name)
}

/// Whether the table `table` has a column named `name`.
pub(super) fn table_has_column(
    conn: &Connection,
    table: &str,
    name: &str,
) -> Result<bool, AuditError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Adds the column of request-id filters to the blocks of a store from
/// before it (2026-12-07): its blocks keep no filter and are read whole
/// by a lookup by request id, as they were; blocks written from now on
/// have one.
pub(super) fn add_block_filters(conn: &Connection) -> Result<(), AuditError> {
    if !table_has_column(conn, "blocks", "ids")? {
        conn.execute_batch("ALTER TABLE blocks ADD COLUMN ids BLOB")?;
    }
    Ok(())
}

/// Adds the segment columns to an older store (its rows keep their JSON
/// inline, and read as before).
pub(super) fn add_segment_columns(conn: &Connection) -> Result<(), AuditError> {
    if !has_column(conn, "seg")? {
        conn.execute_batch(
            "ALTER TABLE events ADD COLUMN seg INTEGER; ALTER TABLE events ADD COLUMN off INTEGER;",
        )?;
    }
    Ok(())
}

/// Moves the leaves of a store that keeps them in `log_leaves` into
/// `events.leaf`, then drops `log_leaves`. A leaf whose event row is
/// missing stops the migration (the store was altered: `lattice audit
/// verify`, which reads the store as it is, names what).
pub(super) fn move_leaves_into_events(conn: &mut Connection) -> Result<(), AuditError> {
    let tx = conn.transaction()?;
    if !has_column(&tx, "leaf")? {
        tx.execute_batch("ALTER TABLE events ADD COLUMN leaf BLOB")?;
    }
    if has_table(&tx, "log_leaves")? {
        let orphan: Option<i64> = tx.query_row(
            "SELECT MIN(idx) FROM log_leaves WHERE idx NOT IN (SELECT seq FROM events)",
            [],
            |r| r.get(0),
        )?;
        if let Some(idx) = orphan {
            return Err(AuditError::Corrupt(format!(
                "log leaf {idx} has no event row, so the leaves cannot move into the events; run `lattice audit verify`"
            )));
        }
        tx.execute_batch(
            "UPDATE events SET leaf = (SELECT hash FROM log_leaves WHERE idx = events.seq);
             DROP TABLE log_leaves;",
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Stores made with generated columns (before 2026-12-03) are rebuilt
/// once, in one transaction: every event's JSON is copied unchanged, the
/// indexed columns are filled from it.
pub(super) fn migrate_generated_columns(conn: &mut Connection) -> Result<(), AuditError> {
    let generated: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_xinfo('events') WHERE hidden != 0",
        [],
        |r| r.get(0),
    )?;
    if generated == 0 {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch(&format!(
        "CREATE TABLE events_migrated {EVENTS};
         INSERT INTO events_migrated (seq, event, ts_us, tenant, request_id)
             SELECT seq, event, json_extract(event, '$.ts_us'), json_extract(event, '$.tenant'),
                    json_extract(event, '$.request_id') FROM events ORDER BY seq;
         DROP TABLE events;
         ALTER TABLE events_migrated RENAME TO events;"
    ))?;
    tx.commit()?;
    Ok(())
}
