//! The log's stored subtree roots (`nodes`, `merkle::stored`): the root of
//! every aligned run of 2^8 leaves, of 2^8 such roots, and so on, written
//! after the fill that completes them, from the fills' own leaves (the
//! newest run's kept in memory, a `NodeBuilder`: reading the leaves back
//! cost the store thread 1 µs an event); from the leaves in the store when a fill
//! does not continue the tail, and once for a store older than them, when
//! it is opened for writing. The gateway's start and the
//! proofs read a range through them (O(log n) hashes, not every leaf);
//! `verify` checks each against the leaves under it.
//!
//! Must never: store a root for leaves that are not all in the store, or
//! change a stored root (`INSERT OR IGNORE`).

use rusqlite::{params, Connection, OptionalExtension};

use super::Store;
use crate::merkle::stored::{self, NodeBuilder, StoredNodes, STEP};
use crate::merkle::Hash;
use crate::AuditError;

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;";

const WIDTH: u64 = 1 << STEP;

impl Store {
    /// Stores the roots that `rows` (just inserted) complete: from the rows
    /// themselves while they continue the newest run (`tail`, kept between
    /// fills); otherwise from the store (`extend_nodes`), which gives the
    /// tail back.
    pub(crate) fn add_nodes(&self, rows: &[super::Row]) -> Result<(), AuditError> {
        let Some(end) = rows.iter().map(|r| r.seq + 1).max() else {
            return Ok(());
        };
        let mut slot = self.tail.borrow_mut();
        let continues = |tail: &NodeBuilder| {
            rows.iter()
                .enumerate()
                .all(|(i, r)| r.seq == tail.next() + i as u64)
        };
        // Taken: a failure below leaves no tail (the next fill reads the store).
        let tail = match slot.take() {
            Some(mut tail) if continues(&tail) => {
                // A root every 2^8 leaves: each its own commit.
                for row in rows {
                    push(&self.conn, &mut tail, row.leaf)?;
                }
                tail
            }
            _ => self.extend_nodes(end)?,
        };
        *slot = (tail.next() == end).then_some(tail);
        Ok(())
    }

    /// Stores the roots that the leaves before `end` complete and that
    /// are not stored yet: the runs of 2^8 leaves after the last stored
    /// one (streamed from the leaves; a run with a leaf missing is left
    /// out), and above them each group of 2^8 stored roots made whole.
    /// Returns the builder after the last leaf read (the fills' tail).
    pub(crate) fn extend_nodes(&self, end: u64) -> Result<NodeBuilder, AuditError> {
        let last: Option<i64> =
            self.conn
                .query_row("SELECT max(idx) FROM nodes WHERE level = ?1", [STEP], |r| {
                    r.get(0)
                })?;
        let next = match last {
            Some(i) => i as u64 + 1,
            // None yet: from the first run the store keeps whole.
            None => self.pruned()?.map_or(0, |p| p.size()).div_ceil(WIDTH),
        };
        let mut tail = NodeBuilder::new(STEP, next * WIDTH);
        let tx = self.conn.unchecked_transaction()?;
        self.scan_leaf_range(next * WIDTH, end, |leaves| {
            for leaf in leaves {
                let (idx, hash) = leaf?;
                if idx != tail.next() {
                    // A leaf missing before `idx`: a builder started there
                    // makes no root of the run it is in.
                    tail = NodeBuilder::new(STEP, idx);
                }
                push(&tx, &mut tail, hash)?;
            }
            Ok(())
        })?;
        tx.commit()?;
        Ok(tail)
    }

    /// MTH(D[a:b]) of kept leaves, through the stored roots.
    pub fn kept_root(&self, a: u64, b: u64) -> Result<Hash, AuditError> {
        stored::range_root(self, STEP, a, b)
    }

    /// The stored root of the subtree `index` of 2^`level` leaves.
    pub(crate) fn stored_node(&self, level: u32, index: u64) -> Result<Option<Hash>, AuditError> {
        if !self.has_nodes {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT hash FROM nodes WHERE level = ?1 AND idx = ?2")?;
        let hash: Option<Vec<u8>> = stmt
            .query_row(params![level, index as i64], |r| r.get(0))
            .optional()?;
        hash.map(|h| as_hash(level, index, h)).transpose()
    }
}

impl StoredNodes for Store {
    type Error = AuditError;

    fn nodes(&self, level: u32, from: u64, to: u64) -> Result<Option<Vec<Hash>>, AuditError> {
        if !self.has_nodes {
            return Ok(None);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, hash FROM nodes WHERE level = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
        )?;
        let rows = stmt.query_map(params![level, from as i64, to as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::with_capacity((to - from) as usize);
        for row in rows {
            let (idx, hash) = row?;
            if idx != from + out.len() as u64 {
                return Ok(None);
            }
            out.push(as_hash(level, idx, hash)?);
        }
        Ok((out.len() as u64 == to - from).then_some(out))
    }

    fn leaves_root(&self, a: u64, b: u64) -> Result<Hash, AuditError> {
        self.leaf_range_root(a, b)
    }
}

/// Pushes a leaf into `tail`, storing the root of 2^8 leaves it makes
/// whole (those above are lifted from the stored ones by `put`: a builder
/// started after a group began makes none of that group's).
fn push(conn: &Connection, tail: &mut NodeBuilder, leaf: Hash) -> Result<(), AuditError> {
    let mut whole = None;
    tail.push(leaf, &mut |level, index, root| {
        if level == STEP {
            whole = Some((index, root));
        }
    });
    match whole {
        Some((index, root)) => put(conn, STEP, index, &root),
        None => Ok(()),
    }
}

/// Stores a root, and above it the root of its group once the group is
/// whole.
fn put(conn: &Connection, level: u32, index: u64, hash: &Hash) -> Result<(), AuditError> {
    conn.prepare_cached("INSERT OR IGNORE INTO nodes (level, idx, hash) VALUES (?1, ?2, ?3)")?
        .execute(params![level, index as i64, &hash[..]])?;
    if !(index + 1).is_multiple_of(WIDTH) {
        return Ok(());
    }
    let group = index / WIDTH;
    let mut stmt = conn.prepare_cached(
        "SELECT hash FROM nodes WHERE level = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx",
    )?;
    let below = stmt
        .query_map(
            params![level, (group * WIDTH) as i64, ((group + 1) * WIDTH) as i64],
            |r| r.get::<_, Vec<u8>>(0),
        )?
        .map(|h| as_hash(level, index, h?))
        .collect::<Result<Vec<Hash>, AuditError>>()?;
    if below.len() as u64 == WIDTH {
        put(conn, level + STEP, group, &crate::merkle::root(&below))?;
    }
    Ok(())
}

fn as_hash(level: u32, index: u64, bytes: Vec<u8>) -> Result<Hash, AuditError> {
    bytes.try_into().map_err(|_| {
        AuditError::Corrupt(format!(
            "the stored subtree root {index} of level {level} is not 32 bytes"
        ))
    })
}
