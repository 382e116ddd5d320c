//! Durable before forwarding, at the crate level: a decision's `Durable`
//! resolves only once its batch is committed (another connection reads it),
//! one commit serves many waiting decisions, and a pipeline that starts on a
//! store with decisions left without outcomes (the gateway stopped between
//! the two) records each as interrupted — and only those.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_audit::event::parse_canonical;
use lattice_audit::testkit::pipeline_config;
use lattice_audit::verify::verify;
use lattice_audit::{AuditEvent, AuditPipeline, NoteSigner, Phase, Store, INTERRUPTED};
use std::path::Path;
use std::time::Duration;

fn start(db: &Path, signer: &NoteSigner) -> AuditPipeline {
    AuditPipeline::start(pipeline_config(db, signer).unwrap()).unwrap()
}

fn decision(request: &str) -> AuditEvent {
    let mut e = AuditEvent::new(Phase::Decision, request, "mcp.call_tool");
    e.principal = "agent-a".into();
    e.target = "files__delete".into();
    e.decision = "allow".into();
    e
}

/// The events of one request, parsed.
fn events_of(db: &Path, request: &str) -> Vec<AuditEvent> {
    let store = Store::open_read_only(db).unwrap();
    store
        .by_request(request)
        .unwrap()
        .iter()
        .map(|s| parse_canonical(s.json.as_bytes()).unwrap())
        .collect()
}

/// The events of one request on stable storage: those the segments hold
/// beyond the store (read first: the store only grows, so what it holds
/// when read next covers everything before), and the store's.
fn durable_events_of(db: &Path, request: &str) -> Vec<AuditEvent> {
    let store = Store::open_read_only(db).unwrap();
    let journaled: Vec<AuditEvent> = lattice_audit::beyond_store(db, &store)
        .unwrap()
        .iter()
        .map(|s| parse_canonical(s.json.as_bytes()).unwrap())
        .filter(|e| e.request_id == request)
        .collect();
    let mut events = events_of(db, request);
    for e in journaled {
        if !events.iter().any(|s| s.seq == e.seq) {
            events.push(e);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_durable_only_once_committed_and_one_commit_serves_many() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let pipeline = start(&db, &signer);
    let audit = pipeline.handle();
    // Many calls at once, each waiting for its own decision's commit.
    let calls = 200;
    let waits: Vec<_> = (0..calls)
        .map(|i| {
            let (audit, db) = (audit.clone(), db.clone());
            tokio::spawn(async move {
                let request = format!("r-{i}");
                let (slot, durable) = audit.record_decision(decision(&request)).unwrap();
                durable.wait(Duration::from_secs(10)).await.unwrap();
                // Durable means on stable storage: a separate reader finds it
                // now, in the segments or already in the store.
                let seen = tokio::task::spawn_blocking(move || durable_events_of(&db, &request))
                    .await
                    .unwrap();
                assert_eq!(seen.len(), 1, "the decision is on disk when durable");
                assert_eq!(seen[0].phase, Phase::Decision);
                let mut outcome =
                    AuditEvent::new(Phase::Outcome, &seen[0].request_id, "mcp.call_tool");
                outcome.status = Some(200);
                slot.record(outcome).unwrap();
            })
        })
        .collect();
    for w in waits {
        w.await.unwrap();
    }
    let commits = audit.commits();
    eprintln!("{} events in {commits} commits", 2 * calls);
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&db).unwrap();
    assert_eq!(store.count().unwrap(), 2 * calls);
    assert!(store.owed_decisions().unwrap().is_empty());
    // Group commit: one sync served many waiting calls, never one each.
    assert!(
        commits < calls,
        "{calls} concurrent decisions took {commits} commits"
    );
}

#[test]
fn decisions_left_without_outcomes_are_recorded_as_interrupted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipeline = start(&db, &signer);
    let audit = pipeline.handle();
    // A finished call, a standalone event (owes nothing), and two calls
    // whose outcomes never come: the process stops after their decisions.
    let (slot, durable) = audit.record_decision(decision("done")).unwrap();
    rt.block_on(durable.wait(Duration::from_secs(10))).unwrap();
    let mut outcome = AuditEvent::new(Phase::Outcome, "done", "mcp.call_tool");
    outcome.status = Some(200);
    slot.record(outcome).unwrap();
    audit
        .record(AuditEvent::new(
            Phase::Decision,
            "change-1",
            "admin.mcp_server_added",
        ))
        .unwrap();
    let mut left = Vec::new();
    for request in ["cut-1", "cut-2"] {
        let (slot, durable) = audit.record_decision(decision(request)).unwrap();
        rt.block_on(durable.wait(Duration::from_secs(10))).unwrap();
        left.push(slot); // never used: as if the process died here
    }
    pipeline.shutdown().unwrap();
    drop(left);

    let pipeline = start(&db, &signer);
    assert_eq!(pipeline.recovered(), 2);
    pipeline.shutdown().unwrap();
    for request in ["cut-1", "cut-2"] {
        let events = events_of(&db, request);
        assert_eq!(events.len(), 2, "{request}: {events:?}");
        let outcome = &events[1];
        assert_eq!(outcome.phase, Phase::Outcome);
        assert_eq!(outcome.reason, INTERRUPTED);
        assert_eq!(outcome.status, None);
        assert_eq!(
            (
                outcome.principal.as_str(),
                outcome.target.as_str(),
                outcome.decision.as_str()
            ),
            ("agent-a", "files__delete", "allow"),
            "the interrupted outcome names the call"
        );
    }
    assert_eq!(events_of(&db, "done").len(), 2);
    assert_eq!(
        events_of(&db, "change-1").len(),
        1,
        "a standalone event owes nothing"
    );

    // A third start finds nothing owed; the log still verifies.
    let pipeline = start(&db, &signer);
    assert_eq!(pipeline.recovered(), 0);
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let report = verify(&store, &signer.verifier(), &[]).unwrap();
    assert!(report.ok(), "{report:?}");
}

#[test]
fn a_consistent_read_sees_one_snapshot_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut writer = Store::open(&db).unwrap();
    let row = |seq: u64| {
        let mut e = decision(&format!("r-{seq}"));
        e.seq = seq;
        lattice_audit::store::Row::of(&e)
    };
    writer.append(&[row(0), row(1)], &[], &[]).unwrap();
    let reader = Store::open_read_only(&db).unwrap();
    let (leaves, events) = reader
        .read_consistent(|s| {
            let leaves = s.leaves()?.len();
            // The writer appends between the two reads.
            writer.append(&[row(2)], &[], &[])?;
            Ok((leaves, s.events()?.len()))
        })
        .unwrap();
    assert_eq!((leaves, events), (2, 2), "one snapshot");
    // Outside the snapshot the new row is there.
    assert_eq!(reader.events().unwrap().len(), 3);
}
