//! The segments' replay at start: what a writer made durable in the
//! segments and never filled into the store (the process was killed) is in
//! the store after the next start, in order, with the Merkle log and the
//! owed decisions as if it had been written directly; so is what a legacy
//! journal held (which is then removed); segments that do not continue the
//! store stop the start with an error naming both ends. And the store gets
//! a row only for a segment record that is synced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::event::{parse_canonical, Phase};
use crate::store::Row;
use rows::store_rows;
use store_thread::MAX_BACKLOG;

fn config(db: &std::path::Path, signer: &NoteSigner) -> PipelineConfig {
    crate::testkit::pipeline_config(db, signer).unwrap()
}

/// A store holding one finished call (two events).
fn store_with_one_call(db: &std::path::Path, signer: &NoteSigner) {
    let pipeline = AuditPipeline::start(config(db, signer)).unwrap();
    let audit = pipeline.handle();
    let (slot, durable) = audit
        .record_decision(AuditEvent::new(Phase::Decision, "first", "http.request"))
        .unwrap();
    drop(durable);
    slot.record(AuditEvent::new(Phase::Outcome, "first", "http.request"))
        .unwrap();
    pipeline.shutdown().unwrap();
}

/// An event as the writer numbers it.
fn numbered(seq: u64, phase: Phase, request: &str) -> AuditEvent {
    let mut e = AuditEvent::new(phase, request, "http.request");
    e.node = "test-node".into();
    e.seq = seq;
    e.decision = "allow".into();
    e
}

/// An event as the writer appends it.
fn journaled(seq: u64, phase: Phase, request: &str, settles: Option<&Entry>) -> Entry {
    let e = numbered(seq, phase, request);
    Entry {
        seq,
        json: e.canonical(),
        owes: (phase == Phase::Decision).then(|| e.event_id.clone()),
        settles: settles.and_then(|d| d.owes.clone()),
    }
}

/// Appends entries to the segments of the store at `db`, synced.
fn append(db: &std::path::Path, entries: &[&Entry]) {
    let store = Store::open_read_only(db).unwrap();
    let after = store.last_segment().unwrap().unwrap_or(0);
    drop(store);
    let mut segments = Segments::open(db, segments::SIZE, after).unwrap();
    segments.append(entries.iter().copied(), true).unwrap();
}

/// A store with one call, then a finished call and a call cut after its
/// decision beyond it (in the segments, or in a legacy journal), started
/// again: everything is in the store, the cut call recorded interrupted.
fn replayed_at_start(legacy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    if legacy {
        // A store written before segments: its events' JSON inline.
        let mut store = Store::open(&db).unwrap();
        let first = [
            numbered(0, Phase::Decision, "first"),
            numbered(1, Phase::Outcome, "first"),
        ];
        store
            .append(&first.iter().map(Row::of).collect::<Vec<_>>(), &[], &[])
            .unwrap();
    } else {
        store_with_one_call(&db, &signer);
    }

    // A busy writer appended three more events and was killed before it
    // filled them in: a finished call and a call cut after its decision.
    let done = journaled(2, Phase::Decision, "done", None);
    let done_outcome = journaled(3, Phase::Outcome, "done", Some(&done));
    let cut = journaled(4, Phase::Decision, "cut", None);
    if legacy {
        // A journal of the writer before segments: it also holds events
        // already filled (as a fill left them before it was reused).
        let mut buf = Vec::new();
        let old: Vec<Entry> = (0..2)
            .map(|s| journaled(s, Phase::Decision, "old", None))
            .collect();
        for e in old.iter().chain([&done, &done_outcome, &cut]) {
            crate::journal::encode(e, &mut buf);
        }
        std::fs::write(crate::journal::path_of(&db), &buf).unwrap();
    } else {
        append(&db, &[&done, &done_outcome, &cut]);
    }
    let store = Store::open(&db).unwrap();
    assert_eq!(store.count().unwrap(), 2);
    // What the CLI shows of a stopped gateway: the store and, beyond it,
    // the segments.
    let beyond: Vec<u64> = crate::beyond_store(&db, &store)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(beyond, [2, 3, 4]);
    drop(store);

    let pipeline = AuditPipeline::start(config(&db, &signer)).unwrap();
    assert_eq!(
        pipeline.recovered(),
        1,
        "the cut call is recorded as interrupted"
    );
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let events: Vec<AuditEvent> = store
        .events()
        .unwrap()
        .iter()
        .map(|s| parse_canonical(s.json.as_bytes()).unwrap())
        .collect();
    let seen: Vec<(u64, &str, Phase)> = events
        .iter()
        .map(|e| (e.seq, e.request_id.as_str(), e.phase))
        .collect();
    assert_eq!(
        seen,
        [
            (0, "first", Phase::Decision),
            (1, "first", Phase::Outcome),
            (2, "done", Phase::Decision),
            (3, "done", Phase::Outcome),
            (4, "cut", Phase::Decision),
            (5, "cut", Phase::Outcome),
        ]
    );
    assert_eq!(events[5].reason, INTERRUPTED);
    assert!(store.owed_decisions().unwrap().is_empty());
    let report = crate::verify(&store, &signer.verifier(), &[]).unwrap();
    assert!(report.ok(), "{report:?}");

    // Started again, nothing is written twice.
    let pipeline = AuditPipeline::start(config(&db, &signer)).unwrap();
    assert_eq!(pipeline.recovered(), 0);
    pipeline.shutdown().unwrap();
    assert_eq!(Store::open_read_only(&db).unwrap().count().unwrap(), 6);
    assert!(
        !crate::journal::path_of(&db).exists(),
        "a legacy journal is removed once replayed"
    );
}

#[test]
fn what_the_segments_hold_beyond_the_store_is_written_in_at_start() {
    replayed_at_start(false);
}

#[test]
fn what_a_legacy_journal_holds_beyond_the_store_is_written_in_at_start() {
    replayed_at_start(true);
}

#[test]
fn segments_that_do_not_continue_the_store_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    store_with_one_call(&db, &signer);
    // The store's own segment ends at event #1; a later one starts at #5.
    let mut segments = Segments::open(&db, segments::SIZE, 1).unwrap();
    let ahead = journaled(5, Phase::Decision, "ahead", None);
    segments.rotate().unwrap();
    segments.append([&ahead].into_iter(), true).unwrap();
    drop(segments);
    let err = AuditPipeline::start(config(&db, &signer))
        .err()
        .expect("the start fails");
    assert!(
        err.to_string()
            .starts_with("audit store is corrupt: the audit segments jump from event #1 to #5 in "),
        "{err}"
    );
    // Without the store's own segment, the first event beyond it is #5.
    std::fs::remove_file(segments::dir_of(&db).join(segments::file_name(1))).unwrap();
    let err = AuditPipeline::start(config(&db, &signer))
        .err()
        .expect("the start fails");
    assert_eq!(
        err.to_string(),
        "audit store is corrupt: the audit segments continue the log at 5 but the store ends at 2"
    );
    assert_eq!(Store::open_read_only(&db).unwrap().count().unwrap(), 2);
}

/// A writer as `AuditPipeline::start` builds it, without its thread (with
/// its store thread).
fn writer(db: &std::path::Path, signer: &NoteSigner) -> Writer {
    let cfg = config(db, signer);
    let store = Store::open(&cfg.db_path).unwrap();
    store.no_auto_checkpoints().unwrap();
    let segments = Segments::open(&cfg.db_path, segments::SIZE, 0).unwrap();
    let frontier = store.log().unwrap().frontier();
    Writer::new(
        cfg,
        (store, segments),
        (frontier, Frontier::default()),
        0,
        (Arc::new(Shared::default()), None),
    )
    .unwrap()
}

/// The writer's store, once the store thread did everything handed to it.
fn stored(w: &Writer) -> parking_lot::MutexGuard<'_, Store> {
    w.store.drain();
    w.store.db.lock()
}

fn batch(n: usize) -> Vec<Queued> {
    (0..n)
        .map(|i| Queued {
            event: AuditEvent::new(Phase::Decision, &format!("r{i}"), "http.request"),
            owes: false,
            settles: None,
            durable: None,
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// `PRAGMA synchronous` of the writer's connection: 2 is FULL, 1 NORMAL.
fn synchronous(w: &Writer) -> i64 {
    stored(w)
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap()
}

/// Outcomes of the calls in `batch(n)`: nothing waits on them.
fn outcomes(n: usize) -> Vec<Queued> {
    (0..n)
        .map(|i| Queued {
            event: AuditEvent::new(Phase::Outcome, &format!("r{i}"), "http.request"),
            owes: false,
            settles: Some(format!("decision-{i}")),
            durable: None,
        })
        .collect()
}

/// The store is filled behind the segments, never synced, and only with
/// events whose segment records are synced: a batch of outcomes alone is
/// appended unsynced, and a fill syncs the segments before it writes them.
#[test]
fn the_store_gets_rows_only_for_synced_segment_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let mut w = writer(&db, &signer);

    // A busy batch of decisions: appended and synced, then filled unsynced.
    w.write_batch(&mut batch(5), false);
    assert_eq!((stored(&w).count().unwrap(), w.pending.len()), (0, 5));
    assert_eq!(w.durable, 5, "a decision's batch is synced");
    assert_eq!(crate::beyond_store(&db, &stored(&w)).unwrap().len(), 5);
    w.fill();
    assert_eq!(stored(&w).count().unwrap(), 5);
    assert_eq!(synchronous(&w), 1, "a fill is not synced");
    assert!(crate::beyond_store(&db, &stored(&w)).unwrap().is_empty());

    // Outcomes alone: appended unsynced, and no row for them until a sync
    // covers them: the next decision's, or after `UNSYNCED_WAIT` one of
    // their own.
    w.write_batch(&mut outcomes(2), false);
    assert_eq!(w.durable, 5, "nothing waits on outcomes: no sync");
    assert!(w.fill_wait().unwrap() <= IDLE_FILL, "looked at again soon");
    w.fill_chunk();
    assert_eq!((w.durable, stored(&w).count().unwrap()), (5, 5));
    std::thread::sleep(IDLE_FILL);
    let wait = w.fill_wait().unwrap();
    assert!(
        wait > IDLE_FILL && wait < UNSYNCED_WAIT,
        "then not before UNSYNCED_WAIT: {wait:?}"
    );
    std::thread::sleep(UNSYNCED_WAIT);
    assert_eq!(w.fill_wait(), Some(Duration::ZERO));
    w.fill_chunk();
    assert_eq!(w.durable, 7, "synced before the store got their rows");
    assert_eq!(stored(&w).count().unwrap(), 7);

    // Decisions behind unsynced outcomes: the chunk takes only what the
    // sync covers, oldest first, `FILL_CHUNK` at most.
    w.write_batch(&mut outcomes(1), false);
    w.write_batch(&mut batch(FILL_CHUNK + 2), false);
    assert_eq!(w.durable, 8 + FILL_CHUNK as u64 + 2);
    w.fill_chunk();
    assert_eq!(stored(&w).count().unwrap(), 7 + FILL_CHUNK as u64);
    assert_eq!(w.pending.len(), 3);
    assert_eq!(w.pending[0].0.seq, 7 + FILL_CHUNK as u64, "oldest first");
    assert!(w.pending_since.is_some(), "the rest is still owed a fill");
    w.write_batch(&mut outcomes(1), false);
    w.fill_chunk();
    assert_eq!(w.pending.len(), 1, "the unsynced outcome waits");
    assert_eq!(synchronous(&w), 1, "chunks are not synced");

    // A signed checkpoint syncs the segments, fills, and commits synced.
    w.checkpoint();
    assert_eq!(synchronous(&w), 2);
    assert!(w.pending.is_empty() && w.pending_since.is_none());
    let size = 8 + FILL_CHUNK as u64 + 3;
    assert_eq!(w.durable, size);
    assert_eq!(
        stored(&w).checkpoints().unwrap().last().map(|c| c.0),
        Some(size)
    );
    let report = crate::verify(&stored(&w), &signer.verifier(), &[]).unwrap();
    assert!(report.ok(), "{report:?}");
}

/// `store_rows` leaves out of `owed` and `settled` exactly the decisions
/// settled among the same rows (one transaction adds and removes them),
/// whatever their order, and keeps the others.
#[test]
fn a_call_settled_in_the_same_commit_never_touches_owed() {
    let pending = |entries: Vec<Entry>| -> Vec<Pending> {
        entries
            .into_iter()
            .map(|e| {
                let columns = Columns::from_json(&e.json).unwrap();
                (e, [0; 32], columns, None)
            })
            .collect()
    };
    let a = journaled(0, Phase::Decision, "a", None);
    let b = journaled(1, Phase::Decision, "b", None);
    let a_done = journaled(2, Phase::Outcome, "a", Some(&a));
    let earlier = journaled(9, Phase::Decision, "earlier", None);
    let earlier_done = journaled(3, Phase::Outcome, "earlier", Some(&earlier));
    let id = |e: &Entry| e.owes.clone().unwrap();
    type Case = (&'static str, Vec<Entry>, Vec<(String, u64)>, Vec<String>);
    let table: Vec<Case> = vec![
        (
            "a decision and its outcome",
            vec![a.clone(), a_done.clone()],
            vec![],
            vec![],
        ),
        (
            "a decision alone owes",
            vec![a.clone(), b.clone()],
            vec![(id(&a), 0), (id(&b), 1)],
            vec![],
        ),
        (
            "one settled, one still owed",
            vec![a.clone(), b.clone(), a_done.clone()],
            vec![(id(&b), 1)],
            vec![],
        ),
        (
            "an outcome of an earlier commit's decision",
            vec![earlier_done.clone()],
            vec![],
            vec![id(&earlier)],
        ),
        (
            "an outcome before its decision cancels too",
            vec![a_done.clone(), a.clone()],
            vec![],
            vec![],
        ),
    ];
    for (what, entries, owed, settled) in table {
        let n = entries.len();
        let (rows, mut got_owed, got_settled) = store_rows(pending(entries));
        got_owed.sort_by_key(|(_, seq)| *seq);
        assert_eq!(rows.len(), n, "{what}: every event is a row");
        assert_eq!((got_owed, got_settled), (owed, settled), "{what}");
    }
}

/// Waits (at most 2 s) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(2);
    while !done() {
        assert!(Instant::now() < until, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An outcome goes to the writer without waking it while the writer looks
/// for such outcomes by itself within `LAZY_WAIT` (journaled entries wait
/// for their fill), and through the queue once the writer sleeps long (the
/// test's checkpoint interval is an hour): written promptly either way.
#[test]
fn outcomes_are_written_whether_the_writer_is_about_to_wake_or_asleep() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("test-node");
    let pipeline = AuditPipeline::start(config(&dir.path().join("audit.db"), &signer)).unwrap();
    let audit = pipeline.handle();
    let shared = audit.shared.clone();
    let rt = runtime();
    for (call, asleep) in [("soon", false), ("asleep", true), ("soon again", false)] {
        let before = audit.written();
        let (slot, durable) = audit
            .record_decision(AuditEvent::new(Phase::Decision, call, "http.request"))
            .unwrap();
        rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
        if asleep {
            // The decision is filled into the store `IDLE_FILL` on; then the
            // writer sleeps for the checkpoint interval.
            eventually("the writer sleeps long", || {
                !shared.lazy_ok.load(Ordering::SeqCst)
            });
        }
        slot.record(AuditEvent::new(Phase::Outcome, call, "http.request"))
            .unwrap();
        eventually(&format!("{call}: the outcome is written"), || {
            audit.written() == before + 2
        });
        assert_eq!(audit.depth(), 0, "{call}");
    }
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&dir.path().join("audit.db")).unwrap();
    assert_eq!(store.count().unwrap(), 6);
    assert!(store.owed_decisions().unwrap().is_empty());
}

/// An outcome handed over lazily never goes into the log before its
/// decision, even when the call did not wait for the decision to be
/// durable (a refusal) and the outcome followed at once.
#[test]
fn an_outcome_handed_over_lazily_follows_its_decision_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let pipeline = AuditPipeline::start(config(&db, &signer)).unwrap();
    let audit = pipeline.handle();
    let rt = runtime();
    let mut lazy = 0;
    for i in 0..2_000 {
        let call = format!("call-{i}");
        let (slot, durable) = audit
            .record_decision(AuditEvent::new(Phase::Decision, &call, "http.request"))
            .unwrap();
        if i % 8 == 0 {
            // Now and then a call that waits: the writer has journaled
            // entries awaiting their fill, so it takes outcomes lazily.
            rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
        }
        lazy += usize::from(audit.shared.lazy_ok.load(Ordering::SeqCst));
        slot.record(AuditEvent::new(Phase::Outcome, &call, "http.request"))
            .unwrap();
    }
    assert!(lazy > 0, "some outcomes went beside the queue");
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let mut decided = std::collections::HashSet::new();
    for stored in store.events().unwrap() {
        let e = parse_canonical(stored.json.as_bytes()).unwrap();
        match e.phase {
            Phase::Decision => assert!(decided.insert(e.request_id)),
            Phase::Outcome => assert!(
                decided.contains(&e.request_id),
                "the outcome of {} at seq {} before its decision",
                e.request_id,
                e.seq
            ),
        }
    }
    assert_eq!(decided.len(), 2_000);
    assert!(store.owed_decisions().unwrap().is_empty());
}

/// The WAL is copied into the database file soon after the writer fills
/// the store (the writer's own connection never checkpoints: without the
/// checkpointer the file would stay at its first pages while the WAL grew).
#[test]
fn the_checkpointer_copies_what_the_writer_filled_into_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let pipeline = AuditPipeline::start(config(&db, &signer)).unwrap();
    let audit = pipeline.handle();
    let empty = std::fs::metadata(&db).unwrap().len();
    for i in 0..2_000 {
        audit
            .record(AuditEvent::new(
                Phase::Outcome,
                &format!("r{i}"),
                "http.request",
            ))
            .unwrap();
    }
    audit.flush().unwrap();
    // 2,000 rows (where each event is, its indexed columns, its leaf) of
    // well over 50 bytes each with their index entries, once copied.
    eventually("the database file holds the events", || {
        std::fs::metadata(&db).unwrap().len() > empty + 100_000
    });
    pipeline.shutdown().unwrap();
}

/// The store thread writes the store off the writer's lock: while the
/// store is held (a slow disk, a long commit), decisions the writer thread
/// writes are still made durable, until `MAX_BACKLOG` rows wait for the
/// store; then the writer waits for it (memory stays bounded), a flush
/// waits too, and once the store is free everything is in it.
#[test]
fn decisions_do_not_wait_for_the_store_until_its_backlog_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let pipeline = AuditPipeline::start(config(&db, &signer)).unwrap();
    let audit = pipeline.handle();
    let store = audit.core.lock().as_ref().unwrap().store.db.clone();
    let rt = runtime();
    let held = store.lock();
    let mut made = 0;
    loop {
        let event = AuditEvent::new(Phase::Decision, &format!("r{made}"), "http.request");
        // Queued for the writer thread (never written by its own call).
        let (_slot, durable) = audit.record_decision(event).unwrap();
        if rt.block_on(durable.wait(Duration::from_secs(2))).is_err() {
            break;
        }
        made += 1;
        assert!(made <= MAX_BACKLOG + 2 * FILL_LAG, "the backlog is bounded");
    }
    assert!(
        made >= MAX_BACKLOG,
        "made durable with the store held: {made}"
    );
    let flushing = {
        let audit = audit.clone();
        std::thread::spawn(move || audit.flush())
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!flushing.is_finished(), "a flush waits for the store");
    drop(held);
    flushing.join().unwrap().unwrap();
    assert_eq!(store.lock().count().unwrap(), made as u64 + 1);
    pipeline.shutdown().unwrap();
}
