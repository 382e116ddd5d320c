//! The store's indexed columns: written from the event, equal to what its
//! JSON says; rows inserted many to a statement; and the migrations of
//! stores whose columns were generated and of those that kept their leaves
//! in a table of their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::event::{AuditEvent, Phase};

fn event(seq: u64, tenant: &str, request: &str) -> AuditEvent {
    let mut e = AuditEvent::new(Phase::Decision, request, "http.request");
    e.seq = seq;
    e.tenant = tenant.into();
    e.ts_us = 1_700_000_000_000_000 + seq;
    e
}

/// Every row's columns against its JSON, as SQLite reads the JSON.
fn mismatches(store: &Store) -> i64 {
    store
        .conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE ts_us IS NOT json_extract(event, '$.ts_us')
                OR tenant IS NOT json_extract(event, '$.tenant')
                OR request_id IS NOT json_extract(event, '$.request_id')",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Both connections keep SQLite's temporary storage in memory: the
/// writer's statement journals (a fill's `owed` statements and
/// `auto_vacuum`'s pointer-map pages need one; on disk each transaction's
/// was a new temporary file) and whatever a read sorts — on a read-only
/// root filesystem there is nowhere else to put them.
#[test]
fn both_connections_keep_temporary_storage_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let writer = Store::open(&path).unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    for (name, store) in [("writer", &writer), ("reader", &reader)] {
        let temp_store: i64 = store
            .conn
            .query_row("PRAGMA temp_store", [], |r| r.get(0))
            .unwrap();
        assert_eq!(temp_store, 2, "{name}: 2 is MEMORY");
    }
}

#[test]
fn the_indexed_columns_are_the_events_own_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("a.db")).unwrap();
    let rows: Vec<Row> = (0..4)
        .map(|i| {
            Row::of(&event(
                i,
                ["acme", "globex"][i as usize % 2],
                &format!("r{i}"),
            ))
        })
        .collect();
    store.append(&rows, &[], &[]).unwrap();
    assert_eq!(mismatches(&store), 0);
    let found: Vec<u64> = store
        .by_request("r2")
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(found, vec![2]);
    assert_eq!(store.first_since(1_700_000_000_000_003).unwrap(), Some(3));
    // A column that disagrees with its JSON is what the check above finds.
    store
        .conn
        .execute("UPDATE events SET tenant = 'other' WHERE seq = 1", [])
        .unwrap();
    assert_eq!(mismatches(&store), 1);
}

#[test]
fn a_store_with_generated_columns_is_migrated_with_every_event_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let events: Vec<AuditEvent> = (0..3).map(|i| event(i, "acme", &format!("r{i}"))).collect();
    {
        // The schema of the stores made before (0.x, 2026-11).
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                event TEXT NOT NULL,
                ts_us INTEGER GENERATED ALWAYS AS (json_extract(event, '$.ts_us')) VIRTUAL,
                tenant TEXT GENERATED ALWAYS AS (json_extract(event, '$.tenant')) VIRTUAL,
                principal TEXT GENERATED ALWAYS AS (json_extract(event, '$.principal')) VIRTUAL,
                kind TEXT GENERATED ALWAYS AS (json_extract(event, '$.kind')) VIRTUAL,
                decision TEXT GENERATED ALWAYS AS (json_extract(event, '$.decision')) VIRTUAL,
                request_id TEXT GENERATED ALWAYS AS (json_extract(event, '$.request_id')) VIRTUAL
            );
            CREATE INDEX events_tenant_time ON events (tenant, ts_us);
            CREATE INDEX events_request ON events (request_id);",
        )
        .unwrap();
        for e in &events {
            let json = String::from_utf8(e.canonical()).unwrap();
            conn.execute(
                "INSERT INTO events (seq, event) VALUES (?1, ?2)",
                params![e.seq as i64, json],
            )
            .unwrap();
        }
    }
    let mut store = Store::open(&path).unwrap();
    let columns: Vec<(String, i64)> = store
        .conn
        .prepare("SELECT name, hidden FROM pragma_table_xinfo('events')")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plain = |n: &str| (n.to_string(), 0);
    assert_eq!(
        columns,
        [
            "seq",
            "event",
            "ts_us",
            "tenant",
            "request_id",
            "seg",
            "off",
            "leaf"
        ]
        .map(plain),
        "no generated column is left; the segment and leaf columns are added"
    );
    let stored: Vec<String> = store
        .events()
        .unwrap()
        .into_iter()
        .map(|e| e.json)
        .collect();
    let before: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8(e.canonical()).unwrap())
        .collect();
    assert_eq!(stored, before);
    assert_eq!(mismatches(&store), 0);
    let indexes: i64 = store
        .conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 2);
    // Appending continues after the migrated rows; a second open is a no-op.
    store
        .append(&[Row::of(&event(3, "acme", "r3"))], &[], &[])
        .unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.count().unwrap(), 4);
    assert_eq!(store.by_request("r1").unwrap()[0].seq, 1);
    let q = crate::query::AuditQuery {
        kind: Some("http.request".into()),
        ..Default::default()
    };
    assert_eq!(store.query(&q).unwrap().len(), 4);
}

/// Turns a store into the schema before 2026-12-07: leaves in
/// `log_leaves`, no `leaf` column.
fn with_leaf_table(path: &Path) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE log_leaves (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);
         INSERT INTO log_leaves (idx, hash) SELECT seq, leaf FROM events;
         ALTER TABLE events DROP COLUMN leaf;",
    )
    .unwrap();
}

#[test]
fn rows_go_in_many_to_a_statement_and_read_back_each_with_its_leaf() {
    // 16 + 16 + 5: two multi-row statements and five single ones.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("a.db")).unwrap();
    let rows: Vec<Row> = (0..37)
        .map(|i| Row::of(&event(i, "acme", &format!("r{i}"))))
        .collect();
    store.append(&rows, &[], &[]).unwrap();
    let leaves = store.leaves().unwrap();
    let expected: Vec<(u64, Hash)> = rows.iter().map(|r| (r.seq, r.leaf)).collect();
    assert_eq!(leaves, expected);
    let json: Vec<String> = store
        .events()
        .unwrap()
        .into_iter()
        .map(|e| e.json)
        .collect();
    let written: Vec<String> = rows
        .iter()
        .map(|r| String::from_utf8(r.json.clone()).unwrap())
        .collect();
    assert_eq!(json, written);
    assert_eq!(mismatches(&store), 0);
    assert_eq!(store.log_size().unwrap(), 37);
    assert_eq!(
        store.leaf_range(30, 37).unwrap(),
        expected[30..].iter().map(|l| l.1).collect::<Vec<_>>()
    );
    // A seq taken twice fails the whole transaction: nothing of it stays.
    let again: Vec<Row> = (37..60)
        .chain([40])
        .map(|i| Row::of(&event(i, "acme", "x")))
        .collect();
    assert!(store.append(&again, &[], &[]).is_err());
    assert_eq!(store.count().unwrap(), 37);
}

#[test]
fn a_store_with_a_leaf_table_is_read_as_it_is_and_migrated_with_every_leaf_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let rows: Vec<Row> = (0..20)
        .map(|i| Row::of(&event(i, "acme", &format!("r{i}"))))
        .collect();
    let mut store = Store::open(&path).unwrap();
    store.append(&rows, &[], &[]).unwrap();
    let log = store.log().unwrap().leaves;
    drop(store);
    with_leaf_table(&path);

    // Read-only (the CLI, `lattice audit verify`): read where they are.
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.log().unwrap().leaves, log);
    assert_eq!(reader.range(18, 5).unwrap().len(), 2);
    drop(reader);

    let mut store = Store::open(&path).unwrap();
    assert!(!migrate::has_table(&store.conn, "log_leaves").unwrap());
    assert_eq!(store.log().unwrap().leaves, log);
    assert_eq!(store.events().unwrap().len(), 20);
    store
        .append(&[Row::of(&event(20, "acme", "r20"))], &[], &[])
        .unwrap();
    assert_eq!(store.log_size().unwrap(), 21);
    drop(store);
    // A second open is a no-op.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.leaves().unwrap().len(), 21);
}

#[test]
fn a_leaf_without_its_event_row_stops_the_migration_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let rows: Vec<Row> = (0..4).map(|i| Row::of(&event(i, "acme", "r"))).collect();
    Store::open(&path).unwrap().append(&rows, &[], &[]).unwrap();
    with_leaf_table(&path);
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM events WHERE seq = 2", [])
        .unwrap();
    let err = Store::open(&path).err().expect("the migration refuses");
    assert_eq!(
        err.to_string(),
        AuditError::Corrupt(
            "log leaf 2 has no event row, so the leaves cannot move into the events; run `lattice audit verify`".into()
        )
        .to_string()
    );
    let conn = Connection::open(&path).unwrap();
    assert!(migrate::has_table(&conn, "log_leaves").unwrap());
    assert!(!migrate::has_column(&conn, "leaf").unwrap());
}

/// The stored roots of 256 leaves as fills bring the leaves: from the
/// rows while they continue the last run, from the store when a fill
/// skips a leaf (its run then has no root), and from the rows again after.
#[test]
fn subtree_roots_follow_the_fills_and_skip_a_run_with_a_leaf_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("a.db")).unwrap();
    let rows: Vec<Row> = (0..1300).map(|i| Row::of(&event(i, "acme", "r"))).collect();
    let leaves: Vec<Hash> = rows.iter().map(|r| r.leaf).collect();
    // A fill per range; leaf 300 never comes.
    for (a, b) in [(0, 100), (100, 300), (301, 1100), (1100, 1300)] {
        store.append(&rows[a..b], &[], &[]).unwrap();
    }
    let stored: Vec<(i64, Vec<u8>)> = store
        .conn
        .prepare("SELECT idx, hash FROM nodes WHERE level = 8 ORDER BY idx")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<(i64, Vec<u8>)> = [0, 2, 3, 4]
        .into_iter()
        .map(|i: usize| {
            (
                i as i64,
                crate::merkle::root(&leaves[i * 256..(i + 1) * 256]).to_vec(),
            )
        })
        .collect();
    assert_eq!(stored, want);
}
