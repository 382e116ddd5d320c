//! `lattice_log`: every stored event as one row, in log order, read from
//! the two places rows live — `events` (a row per event: stores written
//! before blocks, and events whose JSON is inline) and `blocks` (a row per
//! run of events in the segments, `blocks.rs`). The read views `ev` and
//! `lv` select from it, so every query of the store reads events as one
//! table. Columns: `seq`, `event` (the inline JSON, else NULL), `seg`,
//! `off`, `ts_us`, `tenant`, `request_id`, `leaf`.
//!
//! Constraints on `seq`, `ts_us`, `tenant` and `request_id` are used to
//! skip what cannot match (a block outside the seq or time range,
//! without the tenant, or whose filter of request ids rules the id out
//! (`ids.rs`) is not decoded; `events` is read through its
//! indexes), and `ORDER BY seq` in either direction is produced without a
//! sort; SQLite still checks every constraint on the rows returned. Both
//! sources are read a page at a time and merged by `seq`.
//!
//! Written by hand: a virtual table is SQLite's way to present a derived
//! table with its own index, and rusqlite's `vtab` is the binding; the
//! cursor runs its queries on the connection that reads it (as SQLite's own
//! FTS5 does), so it sees that connection's snapshot and transaction.
//!
//! Must never: return a row twice, drop a stored row, or return rows out of
//! the order it said it produces.

#![allow(unsafe_code)] // rusqlite's vtab traits are `unsafe impl`s by design

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ffi::{c_int, CStr};
use std::marker::PhantomData;

use rusqlite::ffi;
use rusqlite::types::Value;
use rusqlite::vtab::{
    Context, Filters, IndexConstraintOp, IndexInfo, Module, VTab, VTabConnection, VTabCursor,
};
use rusqlite::Connection;

use super::blocks::{self, Block, Head};
use super::ids;
use crate::AuditError;

/// Registers the table on a connection (usable as `lattice_log`).
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    const MODULE: Module<LogTab> = Module::eponymous_only_module();
    conn.create_module(c"lattice_log", &MODULE, None)
}

const SEQ: c_int = 0;
const TS: c_int = 4;
const TENANT: c_int = 5;
const REQUEST: c_int = 6;
/// `idx_num` bits: the order produced.
const DESC: c_int = 1;
/// Rows of `events` read per query, blocks' heads per query.
const PAGE: usize = 256;
const HEADS: usize = 64;

#[repr(C)]
struct LogTab {
    /// Base class. Must be first.
    base: ffi::sqlite3_vtab,
    db: *mut ffi::sqlite3,
    /// Whether `blocks` has filters of request ids (a store from before
    /// them, opened read-only, has not).
    ids: bool,
}

unsafe impl<'vtab> VTab<'vtab> for LogTab {
    type Aux = ();
    type Cursor = LogCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module: &[u8],
        _database: &[u8],
        _table: &[u8],
        _args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        // SAFETY: the handle outlives the table (SQLite disconnects a
        // table before it closes the connection).
        let db = unsafe { db.handle() };
        // SAFETY: as in `open`: a connection that closes nothing, used only
        // here.
        let conn = unsafe { Connection::from_handle(db)? };
        let ids = super::migrate::table_has_column(&conn, "blocks", "ids").map_err(module_error)?;
        let tab = Self {
            base: ffi::sqlite3_vtab::default(),
            db,
            ids,
        };
        Ok((
            Cow::Borrowed(
                c"CREATE TABLE x(seq INTEGER, event TEXT, seg INTEGER, off INTEGER, ts_us INTEGER, tenant TEXT, request_id TEXT, leaf BLOB)",
            ),
            tab,
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        let mut used: Vec<(usize, &'static str)> = Vec::new();
        let mut cost = 1e7;
        for (i, c) in info.constraints().enumerate() {
            if !c.is_usable() {
                continue;
            }
            use IndexConstraintOp::*;
            let code = match (c.column(), c.operator()) {
                (SEQ, SQLITE_INDEX_CONSTRAINT_EQ) => "s=",
                (SEQ, SQLITE_INDEX_CONSTRAINT_GT) => "s>",
                (SEQ, SQLITE_INDEX_CONSTRAINT_GE) => "s>=",
                (SEQ, SQLITE_INDEX_CONSTRAINT_LT) => "s<",
                (SEQ, SQLITE_INDEX_CONSTRAINT_LE) => "s<=",
                (TS, SQLITE_INDEX_CONSTRAINT_EQ) => "t=",
                (TS, SQLITE_INDEX_CONSTRAINT_GT) => "t>",
                (TS, SQLITE_INDEX_CONSTRAINT_GE) => "t>=",
                (TS, SQLITE_INDEX_CONSTRAINT_LT) => "t<",
                (TS, SQLITE_INDEX_CONSTRAINT_LE) => "t<=",
                (TENANT, SQLITE_INDEX_CONSTRAINT_EQ) => "n=",
                (REQUEST, SQLITE_INDEX_CONSTRAINT_EQ) => "r=",
                _ => continue,
            };
            cost /= match code {
                "s=" => 1e6,
                "r=" => 1e3,
                _ => 10.0,
            };
            used.push((i, code));
        }
        for (argv, (i, _)) in used.iter().enumerate() {
            let mut u = info.constraint_usage(*i);
            u.set_argv_index(argv as c_int + 1);
            u.set_omit(false);
        }
        let mut idx_num = 0;
        let order: Vec<(c_int, bool)> = info
            .order_bys()
            .map(|o| (o.column(), o.is_order_by_desc()))
            .collect();
        if let [(SEQ, desc)] = order[..] {
            info.set_order_by_consumed(true);
            if desc {
                idx_num |= DESC;
            }
        }
        info.set_idx_num(idx_num);
        let codes: Vec<&str> = used.iter().map(|(_, c)| *c).collect();
        info.set_idx_str(&codes.join(","));
        info.set_estimated_cost(cost);
        Ok(true)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<LogCursor<'vtab>> {
        // SAFETY: a connection that does not own the handle (dropping it
        // closes nothing); used only while SQLite runs this table's cursor.
        let conn = unsafe { Connection::from_handle(self.db)? };
        Ok(LogCursor {
            base: ffi::sqlite3_vtab_cursor::default(),
            conn,
            plan: Plan::default(),
            legacy: Legacy::default(),
            blocks: Blocks::default(),
            ids: self.ids,
            row: None,
            phantom: PhantomData,
        })
    }
}

/// What a scan may skip: inclusive seq and time bounds, a tenant, a
/// request id; and its order.
#[derive(Debug, Clone)]
struct Plan {
    lo: i64,
    hi: i64,
    ts_lo: i64,
    ts_hi: i64,
    tenant: Option<String>,
    request_id: Option<String>,
    desc: bool,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            lo: i64::MIN,
            hi: i64::MAX,
            ts_lo: i64::MIN,
            ts_hi: i64::MAX,
            tenant: None,
            request_id: None,
            desc: false,
        }
    }
}

impl Plan {
    /// Narrows the plan by one constraint (values of other types narrow
    /// nothing: SQLite checks them on every row).
    fn narrow(&mut self, code: &str, v: Value) {
        match (code, v) {
            ("s=", Value::Integer(v)) => (self.lo, self.hi) = (self.lo.max(v), self.hi.min(v)),
            ("s>", Value::Integer(v)) => self.lo = self.lo.max(v.saturating_add(1)),
            ("s>=", Value::Integer(v)) => self.lo = self.lo.max(v),
            ("s<", Value::Integer(v)) => self.hi = self.hi.min(v.saturating_sub(1)),
            ("s<=", Value::Integer(v)) => self.hi = self.hi.min(v),
            ("t=", Value::Integer(v)) => {
                (self.ts_lo, self.ts_hi) = (self.ts_lo.max(v), self.ts_hi.min(v))
            }
            ("t>", Value::Integer(v)) => self.ts_lo = self.ts_lo.max(v.saturating_add(1)),
            ("t>=", Value::Integer(v)) => self.ts_lo = self.ts_lo.max(v),
            ("t<", Value::Integer(v)) => self.ts_hi = self.ts_hi.min(v.saturating_sub(1)),
            ("t<=", Value::Integer(v)) => self.ts_hi = self.ts_hi.min(v),
            ("n=", Value::Text(t)) => self.tenant = Some(t),
            ("r=", Value::Text(r)) => self.request_id = Some(r),
            _ => {}
        }
    }

    fn empty(&self) -> bool {
        self.lo > self.hi || self.ts_lo > self.ts_hi
    }

    /// Whether a block (by its head) may hold a matching event.
    fn may_hold(&self, h: &Head) -> bool {
        let last = (h.first + h.n).saturating_sub(1) as i64;
        h.n > 0
            && (h.first as i64) <= self.hi
            && last >= self.lo
            && (h.ts_min as i64) <= self.ts_hi
            && (h.ts_max as i64) >= self.ts_lo
            && self.tenant.as_ref().is_none_or(|t| h.tenants.contains(t))
            && self
                .request_id
                .as_ref()
                .zip(h.ids.as_ref())
                .is_none_or(|(r, f)| ids::may_hold(f, r))
    }
}

/// One row.
#[derive(Debug, Clone)]
struct Rec {
    seq: i64,
    event: Option<String>,
    seg: Option<i64>,
    off: Option<i64>,
    ts_us: i64,
    tenant: String,
    request_id: String,
    leaf: Option<Vec<u8>>,
}

/// What a source has left to read, a page at a time by the key it is
/// ordered by: inclusive bounds, narrowed past each full page.
#[derive(Default)]
struct Keyset {
    lo: i64,
    hi: i64,
    done: bool,
}

impl Keyset {
    fn new(lo: i64, hi: i64, done: bool) -> Self {
        Self { lo, hi, done }
    }

    /// The bounds to read, unless nothing is left.
    fn next(&mut self) -> Option<(i64, i64)> {
        if self.lo > self.hi {
            self.done = true;
        }
        (!self.done).then_some((self.lo, self.hi))
    }

    /// After a page whose last key is `last`: a full page narrows the
    /// bounds past it, a short one ends the source.
    fn read(&mut self, last: Option<i64>, full: bool, desc: bool) {
        match (last, full) {
            (Some(last), true) if desc => self.hi = last.saturating_sub(1),
            (Some(last), true) => self.lo = last.saturating_add(1),
            _ => self.done = true,
        }
    }
}

/// `events`' rows, a page at a time.
#[derive(Default)]
struct Legacy {
    rows: VecDeque<Rec>,
    /// The seqs left to read.
    keys: Keyset,
}

impl Legacy {
    fn fill(&mut self, conn: &Connection, plan: &Plan) -> rusqlite::Result<()> {
        if !self.rows.is_empty() {
            return Ok(());
        }
        let Some((lo, hi)) = self.keys.next() else {
            return Ok(());
        };
        let mut sql = String::from(
            "SELECT seq, event, seg, off, ts_us, tenant, request_id, leaf FROM events WHERE seq >= ?1 AND seq <= ?2",
        );
        let mut args: Vec<Value> = vec![Value::Integer(lo), Value::Integer(hi)];
        if plan.ts_lo > i64::MIN {
            args.push(Value::Integer(plan.ts_lo));
            sql.push_str(&format!(" AND ts_us >= ?{}", args.len()));
        }
        if plan.ts_hi < i64::MAX {
            args.push(Value::Integer(plan.ts_hi));
            sql.push_str(&format!(" AND ts_us <= ?{}", args.len()));
        }
        if let Some(t) = &plan.tenant {
            args.push(Value::Text(t.clone()));
            sql.push_str(&format!(" AND tenant = ?{}", args.len()));
        }
        if let Some(r) = &plan.request_id {
            args.push(Value::Text(r.clone()));
            sql.push_str(&format!(" AND request_id = ?{}", args.len()));
        }
        sql.push_str(if plan.desc {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        sql.push_str(&format!(" LIMIT {PAGE}"));
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(Rec {
                seq: r.get(0)?,
                event: r.get(1)?,
                seg: r.get(2)?,
                off: r.get(3)?,
                ts_us: r.get(4)?,
                tenant: r.get(5)?,
                request_id: r.get(6)?,
                leaf: r.get(7)?,
            })
        })?;
        for row in rows {
            self.rows.push_back(row?);
        }
        let last = self.rows.back().map(|r| r.seq);
        self.keys.read(last, self.rows.len() == PAGE, plan.desc);
        Ok(())
    }
}

/// The blocks' events, a block at a time.
#[derive(Default)]
struct Blocks {
    heads: VecDeque<Head>,
    rows: VecDeque<Rec>,
    /// The blocks' `first`s left to list.
    keys: Keyset,
    /// The last block decoded (a join looks rows up one at a time).
    cached: Option<Block>,
}

impl Blocks {
    fn fill(&mut self, conn: &Connection, plan: &Plan, ids: bool) -> Result<(), AuditError> {
        while self.rows.is_empty() {
            let Some(head) = self.next_head(conn, plan, ids)? else {
                return Ok(());
            };
            if !plan.may_hold(&head) {
                continue;
            }
            let block = match self.cached.take() {
                Some(b) if b.first == head.first && b.entries.len() as u64 == head.n => b,
                _ => blocks::load(conn, head.first)?,
            };
            // Only the entries in the seq range are looked at, and only
            // those that match become rows (a join's lookup takes one).
            let (first, n) = (block.first as i64, block.entries.len() as i64);
            let from = plan.lo.saturating_sub(first).clamp(0, n) as usize;
            let to = plan.hi.saturating_sub(first).saturating_add(1).clamp(0, n) as usize;
            let tenant = match &plan.tenant {
                None => None,
                Some(t) => match block.tenants.iter().position(|x| x == t) {
                    Some(i) => Some(i as u16),
                    None => {
                        self.cached = Some(block);
                        continue;
                    }
                },
            };
            let mut recs: Vec<Rec> = Vec::new();
            for (i, e) in block.entries.iter().enumerate().take(to).skip(from) {
                let ts = e.ts_us as i64;
                if ts < plan.ts_lo
                    || ts > plan.ts_hi
                    || tenant.is_some_and(|t| t != e.tenant)
                    || plan.request_id.as_ref().is_some_and(|r| *r != e.request_id)
                {
                    continue;
                }
                recs.push(Rec {
                    seq: first + i as i64,
                    event: None,
                    seg: Some(block.seg as i64),
                    off: Some(e.off as i64),
                    ts_us: ts,
                    tenant: block.tenant(e).to_string(),
                    request_id: e.request_id.clone(),
                    leaf: Some(e.leaf.to_vec()),
                });
            }
            if plan.desc {
                recs.reverse();
            }
            self.rows.extend(recs);
            self.cached = Some(block);
        }
        Ok(())
    }

    fn next_head(
        &mut self,
        conn: &Connection,
        plan: &Plan,
        ids: bool,
    ) -> Result<Option<Head>, AuditError> {
        if self.heads.is_empty() {
            if let Some((lo, hi)) = self.keys.next() {
                let with_ids = ids && plan.request_id.is_some();
                let page = blocks::heads(conn, lo, hi, plan.desc, HEADS, with_ids)?;
                let last = page.last().map(|h| h.first as i64);
                self.keys.read(last, page.len() == HEADS, plan.desc);
                self.heads.extend(page);
            }
        }
        Ok(self.heads.pop_front())
    }
}

#[repr(C)]
struct LogCursor<'vtab> {
    /// Base class. Must be first.
    base: ffi::sqlite3_vtab_cursor,
    conn: Connection,
    plan: Plan,
    legacy: Legacy,
    blocks: Blocks,
    /// Whether blocks have filters of request ids.
    ids: bool,
    row: Option<Rec>,
    phantom: PhantomData<&'vtab LogTab>,
}

fn module_error(e: AuditError) -> rusqlite::Error {
    match e {
        AuditError::Sqlite(e) => e,
        e => rusqlite::Error::ModuleError(e.to_string()),
    }
}

impl LogCursor<'_> {
    /// Moves to the next row of the merge (the lower seq first, or the
    /// higher when descending).
    fn advance(&mut self) -> rusqlite::Result<()> {
        self.legacy.fill(&self.conn, &self.plan)?;
        self.blocks
            .fill(&self.conn, &self.plan, self.ids)
            .map_err(module_error)?;
        let take_legacy = match (self.legacy.rows.front(), self.blocks.rows.front()) {
            (Some(a), Some(b)) => (a.seq <= b.seq) != self.plan.desc || a.seq == b.seq,
            (Some(_), None) => true,
            _ => false,
        };
        self.row = if take_legacy {
            self.legacy.rows.pop_front()
        } else {
            self.blocks.rows.pop_front()
        };
        Ok(())
    }
}

unsafe impl VTabCursor for LogCursor<'_> {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        let mut plan = Plan {
            desc: idx_num & DESC != 0,
            ..Plan::default()
        };
        for (i, code) in idx_str
            .unwrap_or("")
            .split(',')
            .filter(|c| !c.is_empty())
            .enumerate()
        {
            plan.narrow(code, args.get::<Value>(i)?);
        }
        let cached = self.blocks.cached.take();
        // One event looked up in the block read last (a join's lookups go
        // through the log in order): no listing.
        let hit = cached.as_ref().filter(|b| {
            plan.lo == plan.hi && b.first as i64 <= plan.lo && plan.lo < b.end() as i64
        });
        let heads: VecDeque<Head> = hit
            .map(|b| Head {
                first: b.first,
                n: b.entries.len() as u64,
                ts_min: 0,
                ts_max: i64::MAX as u64,
                tenants: b.tenants.clone(),
                ids: None,
            })
            .into_iter()
            .collect();
        // Blocks are listed from the one holding `lo` (it starts at or
        // before it).
        let start = if plan.empty() || plan.lo == i64::MIN || hit.is_some() {
            plan.lo
        } else {
            blocks::start_of(&self.conn, plan.lo).map_err(module_error)?
        };
        let listed = plan.empty() || hit.is_some();
        self.legacy = Legacy {
            keys: Keyset::new(plan.lo, plan.hi, plan.empty()),
            ..Legacy::default()
        };
        self.blocks = Blocks {
            heads,
            keys: Keyset::new(start, plan.hi, listed),
            cached,
            ..Blocks::default()
        };
        self.plan = plan;
        self.advance()
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.advance()
    }

    fn eof(&self) -> bool {
        self.row.is_none()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        let Some(r) = &self.row else {
            return ctx.set_result(&Value::Null);
        };
        match i {
            0 => ctx.set_result(r.seq),
            1 => ctx.set_result(&r.event),
            2 => ctx.set_result(r.seg),
            3 => ctx.set_result(r.off),
            4 => ctx.set_result(r.ts_us),
            5 => ctx.set_result(&r.tenant),
            6 => ctx.set_result(&r.request_id),
            _ => ctx.set_result(&r.leaf),
        }
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.row.as_ref().map_or(0, |r| r.seq))
    }
}
