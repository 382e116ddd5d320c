//! The events as one table: blocks read back as written, and
//! `lattice_log` answers every constraint and order the way a plain scan
//! of the same events would, over rows and blocks mixed; pruning inside a
//! block, and a seq stored twice refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::blocks::{self, Block};
use super::*;
use crate::event::{AuditEvent, Phase};
use crate::segments::Loc;

/// An event in a segment (the segment need not exist: `lattice_log`
/// reads only where it is).
fn in_segment(seq: u64, seg: u64, tenant: &str, ts_us: u64) -> Row {
    Row {
        seq,
        json: Vec::new(),
        loc: Some(Loc {
            seg,
            off: seq * 100,
        }),
        leaf: [seq as u8; 32],
        columns: Columns {
            ts_us,
            tenant: tenant.into(),
            request_id: format!("r-{}", seq / 2),
        },
    }
}

fn inline(seq: u64, tenant: &str, ts_us: u64) -> Row {
    let mut e = AuditEvent::new(Phase::Decision, &format!("r-{}", seq / 2), "http.request");
    e.seq = seq;
    e.tenant = tenant.into();
    e.ts_us = ts_us;
    Row::of(&e)
}

/// (seq, seg, ts_us, tenant, request_id, leaf) as `lattice_log` returns it.
type LogRow = (i64, Option<i64>, i64, String, String, Option<Vec<u8>>);

fn select(store: &Store, tail: &str) -> Vec<LogRow> {
    let sql = format!("SELECT seq, seg, ts_us, tenant, request_id, leaf FROM lattice_log {tail}");
    let mut stmt = store.conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn as_log(r: &Row) -> LogRow {
    (
        r.seq as i64,
        r.loc.map(|l| l.seg as i64),
        r.columns.ts_us as i64,
        r.columns.tenant.clone(),
        r.columns.request_id.clone(),
        Some(r.leaf.to_vec()),
    )
}

/// 40 inline rows, then 7,000 events in blocks: two segments, blocks cut
/// at the segment and at `MAX_EVENTS`, written in fills of various sizes;
/// three tenants; time runs with the seq but jumps back once.
fn mixed() -> (tempfile::TempDir, Store, Vec<Row>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("a.db")).unwrap();
    let tenant = |i: u64| ["acme", "globex", "initech"][(i % 7 % 3) as usize];
    let ts = |i: u64| {
        if (3000..3100).contains(&i) {
            1_000 + i
        } else {
            10_000 + i
        }
    };
    let mut all: Vec<Row> = (0..40).map(|i| inline(i, tenant(i), ts(i))).collect();
    store.append(&all, &[], &[]).unwrap();
    let mut seq = 40;
    for fill in [1, 7, 960, 6000, 32] {
        let rows: Vec<Row> = (seq..seq + fill)
            .map(|i| in_segment(i, if i < 2500 { 1 } else { 2 }, tenant(i), ts(i)))
            .collect();
        store.append_unsynced(&rows, &[], &[]).unwrap();
        all.extend(rows);
        seq += fill;
    }
    (dir, store, all)
}

#[test]
fn events_in_segments_are_stored_in_blocks_not_rows() {
    let (_dir, store, all) = mixed();
    let rows: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 40, "only the inline events have rows");
    let blocks: Vec<(i64, i64, i64)> = {
        let mut stmt = store
            .conn
            .prepare("SELECT first, n, seg FROM blocks ORDER BY first")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    // Fills of 1, 7 and 960 (to 1008), 6,000 cut at the segment (2,500)
    // and at 4,096 events, then 32.
    assert_eq!(
        blocks,
        vec![
            (40, 1, 1),
            (41, 7, 1),
            (48, 960, 1),
            (1008, 1492, 1),
            (2500, 4096, 2),
            (6596, 412, 2),
            (7008, 32, 2),
        ]
    );
    assert_eq!(store.count().unwrap(), all.len() as u64);
    assert_eq!(store.log_size().unwrap(), all.len() as u64);
    assert_eq!(store.first_segment().unwrap(), Some(1));
    assert_eq!(store.last_segment().unwrap(), Some(2));
}

#[test]
fn the_log_answers_every_constraint_and_order_as_a_scan_of_its_events_would() {
    let (_dir, store, all) = mixed();
    type Pred = fn(&Row) -> bool;
    let table: &[(&str, Pred)] = &[
        ("", |_| true),
        ("WHERE seq = 5", |r| r.seq == 5),
        ("WHERE seq = 2500", |r| r.seq == 2500),
        ("WHERE seq = 99999", |_| false),
        ("WHERE seq >= 38 AND seq < 49", |r| {
            (38..49).contains(&r.seq)
        }),
        ("WHERE seq > 7030", |r| r.seq > 7030),
        ("WHERE seq <= 3", |r| r.seq <= 3),
        ("WHERE seq > 10 AND seq < 5", |_| false),
        ("WHERE ts_us >= 4000 AND ts_us < 4100", |r| {
            (4000..4100).contains(&r.columns.ts_us)
        }),
        ("WHERE ts_us = 13010", |r| r.columns.ts_us == 13010),
        ("WHERE tenant = 'globex'", |r| r.columns.tenant == "globex"),
        ("WHERE tenant = 'nobody'", |_| false),
        ("WHERE request_id = 'r-1250'", |r| {
            r.columns.request_id == "r-1250"
        }),
        ("WHERE request_id = 'r-7'", |r| {
            r.columns.request_id == "r-7"
        }),
        (
            "WHERE tenant = 'acme' AND seq <= 100 AND ts_us > 10010",
            |r| r.columns.tenant == "acme" && r.seq <= 100 && r.columns.ts_us > 10010,
        ),
        ("WHERE seq IN (3, 41, 1007, 1008, 7039)", |r| {
            [3, 41, 1007, 1008, 7039].contains(&r.seq)
        }),
        ("WHERE seq = '5'", |r| r.seq == 5),
    ];
    for (filter, pred) in table {
        let expected: Vec<LogRow> = all.iter().filter(|r| pred(r)).map(as_log).collect();
        let asc = select(&store, &format!("{filter} ORDER BY seq"));
        assert_eq!(asc, expected, "{filter} ORDER BY seq");
        let mut desc = select(&store, &format!("{filter} ORDER BY seq DESC"));
        desc.reverse();
        assert_eq!(desc, expected, "{filter} ORDER BY seq DESC");
        let limited = select(&store, &format!("{filter} ORDER BY seq DESC LIMIT 3"));
        let newest: Vec<LogRow> = expected.iter().rev().take(3).cloned().collect();
        assert_eq!(limited, newest, "{filter} ORDER BY seq DESC LIMIT 3");
    }
    // A join looks events up one at a time (mostly in the block read
    // last), with and without other constraints on them.
    for (on, expected) in [
        ("", all.len() - 1),
        (" AND b.ts_us >= 0", all.len() - 1),
        (
            " AND b.tenant = 'acme'",
            all[1..]
                .iter()
                .filter(|r| r.columns.tenant == "acme")
                .count(),
        ),
        (" AND b.ts_us < 5000", 100),
    ] {
        let pairs: i64 = store
            .conn
            .query_row(
                &format!("SELECT COUNT(*) FROM lattice_log a JOIN lattice_log b ON b.seq = a.seq + 1{on}"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pairs as usize, expected, "joined on b.seq = a.seq + 1{on}");
    }
    // The leaves and the views over both.
    let log = store.log().unwrap();
    assert_eq!(log.leaves, all.iter().map(|r| r.leaf).collect::<Vec<_>>());
    assert_eq!(
        store.leaf_range(2490, 2510).unwrap(),
        all[2490..2510].iter().map(|r| r.leaf).collect::<Vec<_>>()
    );
    assert_eq!(store.first_since(13_000).unwrap(), Some(3100));
    // Events with their leaves, a page at a time (the ClickHouse shipper's
    // read), across the rows, a segment's end and the last block.
    for (from, limit) in [(0, 50), (2490, 20), (7030, 100)] {
        let got: Vec<(u64, Vec<u8>)> = store
            .range(from, limit)
            .unwrap()
            .into_iter()
            .map(|(seq, _, leaf)| (seq, leaf))
            .collect();
        let expected: Vec<(u64, Vec<u8>)> = all
            .iter()
            .skip(from as usize)
            .take(limit)
            .map(|r| (r.seq, r.leaf.to_vec()))
            .collect();
        assert_eq!(got, expected, "range({from}, {limit})");
    }
}

#[test]
fn pruning_inside_a_block_keeps_the_events_from_the_size_on() {
    let (_dir, mut store, all) = mixed();
    for size in [20_u64, 44, 1008, 3000] {
        let mut frontier = Frontier::new();
        for r in &all[..size as usize] {
            frontier.push(r.leaf);
        }
        store.prune(&frontier).unwrap();
        let kept = select(&store, "ORDER BY seq");
        let expected: Vec<LogRow> = all[size as usize..].iter().map(as_log).collect();
        assert_eq!(kept, expected, "pruned to {size}");
        assert_eq!(store.count().unwrap(), all.len() as u64 - size);
    }
    assert_eq!(store.first_segment().unwrap(), Some(2));
}

#[test]
fn an_event_stored_twice_is_refused_and_nothing_of_its_batch_stays() {
    let (_dir, mut store, all) = mixed();
    let n = all.len() as u64;
    for (what, rows) in [
        ("a block over a block", vec![in_segment(100, 1, "acme", 1)]),
        ("a block over rows", vec![in_segment(39, 1, "acme", 1)]),
        ("a row over a block", vec![inline(2000, "acme", 1)]),
        (
            "a batch whose last event is taken",
            (n - 1..n + 5)
                .map(|i| in_segment(i, 2, "acme", 1))
                .collect(),
        ),
    ] {
        let err = store.append(&rows, &[], &[]).unwrap_err();
        assert!(
            matches!(err, AuditError::Corrupt(ref m) if m.contains("already stored")),
            "{what}: {err}"
        );
        assert_eq!(store.count().unwrap(), n, "{what}");
    }
}

#[test]
fn a_block_reads_back_as_written_and_a_damaged_one_is_named() {
    let (_dir, store, _all) = mixed();
    let block = blocks::load(&store.conn, 1008).unwrap();
    assert_eq!(block.entries.len(), 1492);
    assert_eq!(block.tenants.len(), 3);
    let (tenants, body): (String, Vec<u8>) = store
        .conn
        .query_row(
            "SELECT tenants, body FROM blocks WHERE first = 1008",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(Block::decode(1008, 1, &tenants, &body).unwrap(), block);
    for (what, tenants, body, error) in [
        ("empty", tenants.as_str(), &body[..0], "empty body"),
        (
            "cut",
            tenants.as_str(),
            &body[..body.len() - 3],
            "truncated",
        ),
        (
            "a later version",
            tenants.as_str(),
            &[9u8][..],
            "body version 9",
        ),
        ("tenants", "[\"acme\"]", &body[..], "a tenant out of range"),
        ("tenants not JSON", "acme", &body[..], "tenants"),
    ] {
        let err = Block::decode(1008, 1, tenants, body).unwrap_err();
        assert!(
            err.to_string().contains("audit block 1008") && err.to_string().contains(error),
            "{what}: {err}"
        );
    }
}

/// The rows of `SELECT … WHERE request_id = ?`, or the error.
fn by_request(store: &Store, id: &str) -> Result<Vec<i64>, String> {
    let mut stmt = store
        .conn
        .prepare("SELECT seq FROM lattice_log WHERE request_id = ?1 ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([id], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

#[test]
fn a_lookup_by_request_id_decodes_only_the_blocks_its_filter_lets_through() {
    let (_dir, store, _all) = mixed();
    // Blocks 1008.. and 6596.. cannot be decoded any more; r-1250 is in
    // block 2500.., r-600 in block 1008...
    store
        .conn
        .execute(
            "UPDATE blocks SET body = x'09' WHERE first IN (1008, 6596)",
            [],
        )
        .unwrap();
    assert_eq!(by_request(&store, "r-1250"), Ok(vec![2500, 2501]));
    assert_eq!(by_request(&store, "r-7"), Ok(vec![14, 15]));
    assert_eq!(by_request(&store, "nobody"), Ok(vec![]));
    // The damage is there for a lookup the filter lets through, and for
    // every lookup once the blocks have no filters.
    let err = by_request(&store, "r-600").unwrap_err();
    assert!(err.contains("audit block 1008"), "{err}");
    store
        .conn
        .execute("UPDATE blocks SET ids = NULL", [])
        .unwrap();
    let err = by_request(&store, "r-1250").unwrap_err();
    assert!(err.contains("audit block 1008"), "{err}");
}

/// A store from before the filters (its `blocks` without `ids`): read
/// as it is when opened read-only; opened for writing, it gets the column,
/// its blocks are read whole and the blocks written after have filters.
#[test]
fn a_store_from_before_the_filters_reads_and_gets_them_from_then_on() {
    let (dir, store, mut all) = mixed();
    store
        .conn
        .execute_batch("ALTER TABLE blocks DROP COLUMN ids")
        .unwrap();
    drop(store);
    let path = dir.path().join("a.db");
    let expected = |all: &[Row], id: &str| -> Vec<i64> {
        all.iter()
            .filter(|r| r.columns.request_id == id)
            .map(|r| r.seq as i64)
            .collect()
    };
    let old = Store::open_read_only(&path).unwrap();
    for id in ["r-7", "r-1250", "r-3519"] {
        assert_eq!(
            by_request(&old, id),
            Ok(expected(&all, id)),
            "read-only {id}"
        );
    }
    drop(old);
    let mut store = Store::open(&path).unwrap();
    let rows: Vec<Row> = (7040..7100)
        .map(|i| in_segment(i, 2, "acme", 20_000 + i))
        .collect();
    store.append_unsynced(&rows, &[], &[]).unwrap();
    all.extend(rows);
    let filters: Vec<(i64, bool)> = {
        let mut stmt = store
            .conn
            .prepare("SELECT first, ids IS NOT NULL FROM blocks WHERE first >= 6596 ORDER BY first")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(filters, vec![(6596, false), (7008, false), (7040, true)]);
    for id in ["r-7", "r-1250", "r-3519", "r-3530", "r-3549"] {
        assert_eq!(by_request(&store, id), Ok(expected(&all, id)), "{id}");
    }
}
