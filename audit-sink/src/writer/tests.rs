//! The journal's replay at start: what a writer made durable in the journal
//! and never filled into the store (the process was killed) is in the store
//! after the next start, in order, with the Merkle log and the owed
//! decisions as if it had been written directly; a journal that does not
//! continue the store stops the start with an error naming both ends. And
//! the journal lets entries go only once a synced commit holds them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::event::{parse_canonical, Phase};

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

/// An event as the writer journals it.
fn journaled(seq: u64, phase: Phase, request: &str, settles: Option<&Entry>) -> Entry {
    let mut e = AuditEvent::new(phase, request, "http.request");
    e.node = "test-node".into();
    e.seq = seq;
    e.decision = "allow".into();
    Entry {
        seq,
        json: e.canonical(),
        owes: (phase == Phase::Decision).then(|| e.event_id.clone()),
        settles: settles.and_then(|d| d.owes.clone()),
    }
}

#[test]
fn what_the_journal_holds_beyond_the_store_is_written_in_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    store_with_one_call(&db, &signer);

    // A busy writer journaled three more events and was killed before it
    // filled them in: a finished call and a call cut after its decision.
    let done = journaled(2, Phase::Decision, "done", None);
    let done_outcome = journaled(3, Phase::Outcome, "done", Some(&done));
    let cut = journaled(4, Phase::Decision, "cut", None);
    let mut journal = Journal::open(&journal::path_of(&db)).unwrap();
    // Two already filled (as a fill leaves them before the journal is
    // reused) and three not.
    let old: Vec<Entry> = (0..2)
        .map(|s| journaled(s, Phase::Decision, "old", None))
        .collect();
    journal
        .append(old.iter().chain([&done, &done_outcome, &cut]), true)
        .unwrap();
    drop(journal);
    let store = Store::open(&db).unwrap();
    assert_eq!(store.count().unwrap(), 2);
    // What the CLI shows of a stopped gateway: the store and, beyond it,
    // the journal.
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
}

#[test]
fn a_journal_that_does_not_continue_the_store_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    store_with_one_call(&db, &signer);
    let mut journal = Journal::open(&journal::path_of(&db)).unwrap();
    let ahead = journaled(5, Phase::Decision, "ahead", None);
    journal.append([&ahead].into_iter(), true).unwrap();
    drop(journal);
    let err = AuditPipeline::start(config(&db, &signer))
        .err()
        .expect("the start fails");
    assert_eq!(
        err.to_string(),
        "audit store is corrupt: the audit journal continues the log at 5 but the store ends at 2"
    );
    assert_eq!(Store::open_read_only(&db).unwrap().count().unwrap(), 2);
}

/// A writer as `AuditPipeline::start` builds it, without its thread.
fn writer(db: &std::path::Path, signer: &NoteSigner) -> Writer {
    let cfg = config(db, signer);
    let store = Store::open(&cfg.db_path).unwrap();
    store.no_auto_checkpoints().unwrap();
    let journal = Journal::open(&journal::path_of(&cfg.db_path)).unwrap();
    let frontier = store.log().unwrap().frontier();
    Writer::new(
        cfg,
        (store, journal),
        (frontier, Frontier::default()),
        0,
        Arc::new(Shared::default()),
    )
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

/// `PRAGMA synchronous` of the writer's connection: 2 is FULL, 1 NORMAL.
fn synchronous(w: &Writer) -> i64 {
    w.store
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap()
}

/// The journal lets entries go only once a synced commit holds them: a
/// fill of journaled entries is not synced and the journal keeps them; a
/// checkpoint (synced) or a commit of entries the journal never held
/// (synced) restarts it; `settle` syncs even with nothing pending.
#[test]
fn the_journal_keeps_what_no_synced_commit_holds_yet() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let mut w = writer(&db, &signer);

    // A busy batch: journaled, then filled without a sync.
    w.write_batch(&mut batch(5), false);
    assert_eq!((w.store.count().unwrap(), w.pending.len()), (0, 5));
    w.fill();
    assert_eq!(w.store.count().unwrap(), 5);
    assert_eq!(
        synchronous(&w),
        1,
        "a fill of journaled entries is not synced"
    );
    assert!(!w.journal.is_empty(), "the journal still holds them");
    assert_eq!(crate::journaled(&db).unwrap().len(), 5);

    // A signed checkpoint is a synced commit: now the journal may restart.
    w.checkpoint();
    assert_eq!(synchronous(&w), 2);
    assert!(w.journal.is_empty());
    assert_eq!(w.store.checkpoints().unwrap().last().map(|c| c.0), Some(5));

    // A small batch is journaled too (a synced SQLite commit costs more
    // than the journal's one write), and filled behind in chunks: the
    // oldest `FILL_CHUNK` first, never synced.
    w.write_batch(&mut batch(1), false);
    assert_eq!((w.store.count().unwrap(), w.pending.len()), (5, 1));
    w.write_batch(&mut batch(FILL_CHUNK + 2), false);
    w.fill_chunk();
    assert_eq!(w.store.count().unwrap(), 5 + FILL_CHUNK as u64);
    assert_eq!(w.pending.len(), 3);
    assert_eq!(w.pending[0].0.seq, 5 + FILL_CHUNK as u64, "oldest first");
    assert!(w.pending_since.is_some(), "the rest is still owed a fill");
    w.fill_chunk();
    assert!(w.pending.is_empty() && w.pending_since.is_none());
    assert_eq!(synchronous(&w), 1, "chunks are not synced");
    assert_eq!(crate::journaled(&db).unwrap().len(), FILL_CHUNK + 3);

    // Journaled, filled unsynced, then settled with nothing pending: one
    // synced commit of the log size.
    w.write_batch(&mut batch(4), false);
    w.fill();
    assert_eq!(synchronous(&w), 1);
    w.settle();
    assert_eq!(synchronous(&w), 2);
    assert!(w.journal.is_empty());
    let synced: i64 = w
        .store
        .conn
        .query_row("SELECT size FROM synced WHERE id = 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(synced, 5 + FILL_CHUNK as i64 + 3 + 4);
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
                (e, [0; 32], columns)
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (call, asleep) in [("soon", false), ("asleep", true), ("soon again", false)] {
        let before = audit.written();
        let (slot, durable) = audit
            .record_decision(AuditEvent::new(Phase::Decision, call, "http.request"))
            .unwrap();
        rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
        if asleep {
            // The decision is filled into the store 2 ms on; then the
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
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
    // 2,000 events of ~500 bytes of JSON each: at least 1 MB once copied.
    eventually("the database file holds the events", || {
        std::fs::metadata(&db).unwrap().len() > empty + 1_000_000
    });
    pipeline.shutdown().unwrap();
}
