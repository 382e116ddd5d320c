//! The events the segments hold, indexed a block at a time: one `blocks`
//! row per run of consecutive events in one segment (a fill's worth, at
//! most `MAX_EVENTS`), not one row and two index entries per event. A
//! block keeps, for each of its events in log order, where its record is,
//! its Merkle leaf and the fields queries select on (time, tenant, request
//! id), packed in one blob (`body`); beside it the block's time range, its
//! tenants and a filter of its request ids (`ids.rs`), so a query skips
//! blocks without decoding them. Events are
//! read back through the `lattice_log` virtual table (`vtab.rs`).
//!
//! Why not a row per event: at saturation the B-tree inserts of those rows
//! (a row and two index entries per event), their WAL frames and their
//! checkpoints were a tenth of the gateway's CPU (measured: the HTTP
//! route's saturation x1.17 with no fills at all, 2026-12-07).
//!
//! Must never: hold two entries for one seq, or an entry out of log order
//! (a block's entries are `first`, `first + 1`, …, in that order).

use rusqlite::{params, Connection, OptionalExtension};

use super::{ids, Row};
use crate::merkle::Hash;
use crate::AuditError;

/// The `blocks` table: each row the events `first .. first + n`.
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS blocks (
    first INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    seg INTEGER NOT NULL,
    ts_min INTEGER NOT NULL,
    ts_max INTEGER NOT NULL,
    tenants TEXT NOT NULL,
    body BLOB NOT NULL,
    ids BLOB
)";

/// Most events in one block.
pub(crate) const MAX_EVENTS: u64 = 4096;
/// The body's format.
const VERSION: u8 = 1;

/// One event of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) off: u64,
    pub(crate) leaf: Hash,
    pub(crate) ts_us: u64,
    /// An index into the block's `tenants`.
    pub(crate) tenant: u16,
    pub(crate) request_id: String,
}

/// A run of consecutive events in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) first: u64,
    pub(crate) seg: u64,
    pub(crate) tenants: Vec<String>,
    pub(crate) entries: Vec<Entry>,
}

/// A block's row without its body: enough to tell whether a query can
/// skip it.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) first: u64,
    pub(crate) n: u64,
    pub(crate) ts_min: u64,
    pub(crate) ts_max: u64,
    pub(crate) tenants: Vec<String>,
    /// The filter of its request ids (`ids.rs`), when the query has one
    /// to look for and the block has a filter.
    pub(crate) ids: Option<Vec<u8>>,
}

impl Block {
    fn new(first: u64, seg: u64) -> Self {
        Self {
            first,
            seg,
            tenants: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// The index of `tenant` in `tenants`, added if it is not there.
    fn tenant_index(&mut self, tenant: &str) -> u16 {
        let t = match self.tenants.iter().position(|t| t == tenant) {
            Some(t) => t,
            None => {
                self.tenants.push(tenant.to_string());
                self.tenants.len() - 1
            }
        };
        t as u16
    }

    /// Adds the next event (`first + len`).
    fn push(&mut self, off: u64, leaf: Hash, ts_us: u64, tenant: &str, request_id: &str) {
        let tenant = self.tenant_index(tenant);
        self.entries.push(Entry {
            off,
            leaf,
            ts_us,
            tenant,
            request_id: request_id.to_string(),
        });
    }

    /// The seq after the last event.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// The tenant of an entry.
    pub(crate) fn tenant(&self, e: &Entry) -> &str {
        self.tenants
            .get(e.tenant as usize)
            .map_or("", String::as_str)
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1 + self.entries.len() * 90);
        b.push(VERSION);
        for e in &self.entries {
            b.extend_from_slice(&e.off.to_le_bytes());
            b.extend_from_slice(&e.leaf);
            b.extend_from_slice(&e.ts_us.to_le_bytes());
            b.extend_from_slice(&e.tenant.to_le_bytes());
            let id = e.request_id.as_bytes();
            b.extend_from_slice(&(id.len().min(u16::MAX as usize) as u16).to_le_bytes());
            b.extend_from_slice(&id[..id.len().min(u16::MAX as usize)]);
        }
        b
    }

    /// Decodes a block row's tenants and body.
    pub(crate) fn decode(
        first: u64,
        seg: u64,
        tenants: &str,
        body: &[u8],
    ) -> Result<Self, AuditError> {
        let bad = |what: &str| AuditError::Corrupt(format!("audit block {first}: {what}"));
        let tenants: Vec<String> =
            serde_json::from_str(tenants).map_err(|e| bad(&format!("tenants: {e}")))?;
        let (&version, mut rest) = body.split_first().ok_or_else(|| bad("empty body"))?;
        if version != VERSION {
            return Err(bad(&format!("body version {version}")));
        }
        let mut entries = Vec::new();
        while !rest.is_empty() {
            let (fixed, tail) = rest
                .split_at_checked(8 + 32 + 8 + 2 + 2)
                .ok_or_else(|| bad("a truncated entry"))?;
            let u64_at =
                |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().unwrap_or_default());
            let u16_at =
                |i: usize| u16::from_le_bytes(fixed[i..i + 2].try_into().unwrap_or_default());
            let mut leaf = [0u8; 32];
            leaf.copy_from_slice(&fixed[8..40]);
            let len = u16_at(50) as usize;
            let (id, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| bad("a truncated request id"))?;
            let tenant = u16_at(48);
            if tenant as usize >= tenants.len() {
                return Err(bad("a tenant out of range"));
            }
            entries.push(Entry {
                off: u64_at(0),
                leaf,
                ts_us: u64_at(40),
                tenant,
                request_id: String::from_utf8(id.to_vec())
                    .map_err(|_| bad("a request id that is not UTF-8"))?,
            });
            rest = tail;
        }
        Ok(Self {
            first,
            seg,
            tenants,
            entries,
        })
    }

    /// Adds the block's row; refused when a stored event already has one
    /// of its seqs: a row of `events` in its range, or a block that ends
    /// past its first (the last block starting before its end: blocks do
    /// not overlap, so any block reaching into the range is that one).
    pub(crate) fn add(&self, conn: &Connection) -> Result<(), AuditError> {
        let (first, end) = (self.first as i64, self.end() as i64);
        let before: Option<i64> = conn
            .prepare_cached(
                "SELECT first + n FROM blocks WHERE first < ?1 ORDER BY first DESC LIMIT 1",
            )?
            .query_row([end], |r| r.get(0))
            .optional()?;
        let row: Option<i64> = conn
            .prepare_cached("SELECT seq FROM events WHERE seq >= ?1 AND seq < ?2 LIMIT 1")?
            .query_row([first, end], |r| r.get(0))
            .optional()?;
        if before.is_some_and(|e| e > first) || row.is_some() {
            return Err(AuditError::Corrupt(format!(
                "audit events {first}..{end} overlap events already stored"
            )));
        }
        self.put(conn)
    }

    /// Writes the block's row (replacing one with the same `first`).
    pub(crate) fn put(&self, conn: &Connection) -> Result<(), AuditError> {
        let (lo, hi) = self.entries.iter().fold((u64::MAX, 0), |(lo, hi), e| {
            (lo.min(e.ts_us), hi.max(e.ts_us))
        });
        let tenants = serde_json::to_string(&self.tenants)
            .map_err(|e| AuditError::Encoding(e.to_string()))?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO blocks (first, n, seg, ts_min, ts_max, tenants, body, ids)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            self.first as i64,
            self.entries.len() as i64,
            self.seg as i64,
            lo.min(hi) as i64,
            hi as i64,
            tenants,
            self.body(),
            ids::build(self.entries.iter().map(|e| e.request_id.as_str()))
        ])?;
        Ok(())
    }
}

/// Splits rows into the blocks of those whose records are in the segments
/// (runs of consecutive seqs in one segment, `MAX_EVENTS` at most) and the
/// rows that hold their JSON inline (kept a row each in `events`).
pub(crate) fn split(rows: &[Row]) -> (Vec<Block>, Vec<&Row>) {
    let mut blocks: Vec<Block> = Vec::new();
    let mut inline = Vec::new();
    for row in rows {
        let Some(loc) = row.loc else {
            inline.push(row);
            continue;
        };
        let c = &row.columns;
        match blocks.last_mut() {
            Some(b)
                if b.seg == loc.seg
                    && b.end() == row.seq
                    && (b.entries.len() as u64) < MAX_EVENTS => {}
            _ => blocks.push(Block::new(row.seq, loc.seg)),
        }
        if let Some(b) = blocks.last_mut() {
            b.push(loc.off, row.leaf, c.ts_us, &c.tenant, &c.request_id);
        }
    }
    (blocks, inline)
}

/// The block holding `seq`, if one does
/// (the last block starting at or before it: blocks do not overlap).
pub(crate) fn holding(conn: &Connection, seq: u64) -> Result<Option<Block>, AuditError> {
    let row: Option<(i64, i64, i64, String, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT first, n, seg, tenants, body FROM blocks
             WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
        )?
        .query_row([seq as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    match row {
        Some((first, n, seg, tenants, body)) if (first + n) as u64 > seq => {
            Block::decode(first as u64, seg as u64, &tenants, &body).map(Some)
        }
        _ => Ok(None),
    }
}

/// Removes the events before `size` from the blocks: whole blocks, and
/// the first events of the block `size` falls in (kept from `size` on).
pub(crate) fn prune(conn: &Connection, size: u64) -> Result<(), AuditError> {
    if let Some(mut b) = holding(conn, size)? {
        if b.first < size {
            conn.execute("DELETE FROM blocks WHERE first = ?1", [b.first as i64])?;
            b.entries.drain(..(size - b.first) as usize);
            b.first = size;
            b.put(conn)?;
        }
    }
    conn.execute(
        "DELETE FROM blocks WHERE first < ?1 AND first + n <= ?1",
        [size as i64],
    )?;
    Ok(())
}

/// Removes the event `seq` from its block (the block is split around
/// it). For tests: what someone with write access to the store can do.
pub(crate) fn remove(conn: &Connection, seq: u64) -> Result<bool, AuditError> {
    let Some(b) = holding(conn, seq)? else {
        return Ok(false);
    };
    conn.execute("DELETE FROM blocks WHERE first = ?1", [b.first as i64])?;
    let k = (seq - b.first) as usize;
    let after = Block {
        first: seq + 1,
        seg: b.seg,
        tenants: b.tenants.clone(),
        entries: b.entries[k + 1..].to_vec(),
    };
    let before = Block {
        entries: b.entries[..k].to_vec(),
        ..b
    };
    for part in [before, after] {
        if !part.entries.is_empty() {
            part.put(conn)?;
        }
    }
    Ok(true)
}

/// Changes the entry of `seq` in its block (`edit` gets the entry and its
/// tenant). For tests: what someone with write access to the store can
/// do. False when no block holds `seq`.
pub(crate) fn update(
    conn: &Connection,
    seq: u64,
    edit: impl FnOnce(&mut Entry, &mut String),
) -> Result<bool, AuditError> {
    let Some(mut b) = holding(conn, seq)? else {
        return Ok(false);
    };
    let k = (seq - b.first) as usize;
    let mut tenant = b.tenant(&b.entries[k]).to_string();
    edit(&mut b.entries[k], &mut tenant);
    b.entries[k].tenant = b.tenant_index(&tenant);
    b.put(conn)?;
    Ok(true)
}

/// The blocks' heads with `first` in `lo..=hi`, `limit` at most, in seq
/// order (descending when `desc`), with their filters of request ids when
/// `ids`.
pub(crate) fn heads(
    conn: &Connection,
    lo: i64,
    hi: i64,
    desc: bool,
    limit: usize,
    ids: bool,
) -> Result<Vec<Head>, AuditError> {
    let sql = format!(
        "SELECT first, n, ts_min, ts_max, tenants, {} FROM blocks
         WHERE first >= ?1 AND first <= ?2 ORDER BY first {} LIMIT ?3",
        if ids { "ids" } else { "NULL" },
        if desc { "DESC" } else { "ASC" }
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![lo, hi, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<Vec<u8>>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (first, n, ts_min, ts_max, tenants, ids) = row?;
        out.push(Head {
            first: first as u64,
            n: n as u64,
            ts_min: ts_min as u64,
            ts_max: ts_max as u64,
            tenants: serde_json::from_str(&tenants)
                .map_err(|e| AuditError::Corrupt(format!("audit block {first}: tenants: {e}")))?,
            ids,
        });
    }
    Ok(out)
}

/// Where a scan of the blocks from `seq` on starts: the `first` of the
/// last block starting at or before it (it may hold `seq`), else `seq`.
pub(crate) fn start_of(conn: &Connection, seq: i64) -> Result<i64, AuditError> {
    let first: Option<i64> = conn
        .prepare_cached("SELECT MAX(first) FROM blocks WHERE first <= ?1")?
        .query_row([seq], |r| r.get(0))?;
    Ok(first.unwrap_or(seq))
}

/// The block starting at `first`.
pub(crate) fn load(conn: &Connection, first: u64) -> Result<Block, AuditError> {
    let (seg, tenants, body): (i64, String, Vec<u8>) = conn
        .prepare_cached("SELECT seg, tenants, body FROM blocks WHERE first = ?1")?
        .query_row([first as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Block::decode(first, seg as u64, &tenants, &body)
}
