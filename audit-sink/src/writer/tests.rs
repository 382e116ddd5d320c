//! The journal's replay at start: what a writer made durable in the journal
//! and never filled into the store (the process was killed) is in the store
//! after the next start, in order, with the Merkle log and the owed
//! decisions as if it had been written directly; a journal that does not
//! continue the store stops the start with an error naming both ends.

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
