//! Retention at the crate level, without ClickHouse: a size limit keeps the
//! store under it while the log keeps growing; an age limit prunes what is
//! older; each prune is an `audit.pruned` event of the signed log; what is
//! kept still verifies and proves (across a restart), a pruned event says
//! it was pruned, and tampering with the kept part or the pruned prefix is
//! still caught. (With ClickHouse: `app/tests/e2e/retention.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_audit::event::parse_canonical;
use lattice_audit::merkle::{consistency_proof_in, inclusion_proof_in};
use lattice_audit::testkit::pipeline_config;
use lattice_audit::verify::{prove_consistency, prove_inclusion, verify, Problem};
use lattice_audit::{
    AuditEvent, AuditPipeline, NoteSigner, Phase, PipelineConfig, Retention, Store, PRUNED,
};
use std::path::Path;
use std::time::Duration;

fn start(db: &Path, signer: &NoteSigner, retention: Retention) -> AuditPipeline {
    AuditPipeline::start(PipelineConfig {
        retention,
        ..pipeline_config(db, signer).unwrap()
    })
    .unwrap()
}

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(Phase::Decision, &format!("r-{i}"), "http.request");
    e.principal = "agent-a".into();
    e.target = "echo".into();
    e.decision = "allow".into();
    // About half a kilobyte per event, like a real call's record.
    e.reason = "x".repeat(400);
    e
}

/// Writes `n` events from `from` on, flushing every 200 and pausing so
/// retention (every 500 ms) gets its turns.
fn write(pipeline: &AuditPipeline, from: u64, n: u64) {
    let audit = pipeline.handle();
    for i in from..from + n {
        audit.record(event(i)).unwrap();
        if i % 200 == 199 {
            audit.flush().unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    audit.flush().unwrap();
}

fn pruned_events(store: &Store) -> Vec<AuditEvent> {
    store
        .events()
        .unwrap()
        .iter()
        .map(|s| parse_canonical(s.json.as_bytes()).unwrap())
        .filter(|e| e.kind == PRUNED)
        .collect()
}

#[test]
fn a_size_limit_keeps_the_store_under_it_and_what_is_kept_still_verifies_and_proves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let max: u64 = 512 * 1024;
    let retention = Retention {
        max_age: None,
        max_bytes: Some(max),
    };
    let pipeline = start(&db, &signer, retention.clone());
    // About 4 MB of events through a 512 KiB store.
    write(&pipeline, 0, 8_000);
    std::thread::sleep(Duration::from_millis(1_500));
    pipeline.shutdown().unwrap();

    let store = Store::open_read_only(&db).unwrap();
    let used = store.used_bytes().unwrap();
    assert!(used <= max, "{used} bytes in use, the limit is {max}");
    let file = std::fs::metadata(&db).unwrap().len();
    assert!(file <= max + 64 * 1024, "the file is {file} bytes");
    // The events' bytes are in the segments (an eighth of the limit each):
    // those wholly pruned are gone, and they count in the limit.
    let segments: Vec<u64> = std::fs::read_dir(db.with_extension("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    let on_disk: u64 = segments.iter().sum();
    assert!(
        used + on_disk <= max + max / 8,
        "{used} bytes in the store and {on_disk} in {} segments, the limit is {max}",
        segments.len()
    );
    let report = verify(&store, &signer.verifier(), &[]).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.pruned_before > 4_000, "{report:?}");
    assert_eq!(report.events, report.log_size - report.pruned_before);
    assert!(report.log_size > 8_000, "the prunes are in the log too");

    // Each prune is in the signed log, saying what it removed and that,
    // with no ClickHouse, those events are gone.
    let prunes = pruned_events(&store);
    assert!(!prunes.is_empty());
    let last = prunes.last().unwrap();
    assert!(
        last.reason.contains("max_size 524288 bytes")
            && last
                .reason
                .contains("no ClickHouse is configured: they are gone"),
        "{}",
        last.reason
    );

    // What is kept still proves; what was pruned says so.
    let newest = report.log_size - 1;
    assert!(
        prove_inclusion(&store, &signer.verifier(), newest - 10)
            .unwrap()
            .verified
    );
    let err = prove_inclusion(&store, &signer.verifier(), 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        "event #3 was pruned from this store by retention: prove it from ClickHouse, or from an export taken before"
    );
    let first_kept = store.checkpoints().unwrap()[0].0;
    assert_eq!(
        first_kept, report.pruned_before,
        "pruned up to a signed checkpoint"
    );
    assert!(
        prove_consistency(&store, &signer.verifier(), first_kept, None)
            .unwrap()
            .verified
    );
    // Read range by range, the pruned part from the prefix's heads: the
    // same proofs as over the kept log read whole.
    let log = store.log().unwrap();
    let hex = |path: Vec<[u8; 32]>| path.into_iter().map(hex::encode).collect::<Vec<_>>();
    for seq in [
        first_kept,
        first_kept + 1,
        (first_kept + newest) / 2,
        newest - 1,
    ] {
        let proof = prove_inclusion(&store, &signer.verifier(), seq).unwrap();
        assert!(proof.verified, "#{seq}");
        let whole = inclusion_proof_in(&log, seq, proof.tree_size).unwrap();
        assert_eq!(proof.path, hex(whole), "#{seq}");
    }
    let proof = prove_consistency(&store, &signer.verifier(), first_kept, None).unwrap();
    let whole = consistency_proof_in(&log, first_kept, proof.second_size).unwrap();
    assert_eq!(proof.path, hex(whole));
    let (frontier, prefix) = store.frontier().unwrap();
    assert_eq!(
        (frontier.root(), prefix.size()),
        (log.frontier().root(), first_kept)
    );
    // The stored roots of 256 leaves: those of the kept log, none of those
    // wholly inside the pruned prefix (its heads stand for them).
    assert_eq!(
        lattice_audit::testkit::subtree_roots(&db, 8).unwrap(),
        report.log_size / 256 - first_kept / 256
    );
    drop(store);

    // A restart goes on appending after the pruned prefix.
    let pipeline = start(&db, &signer, retention);
    write(&pipeline, 8_000, 300);
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let again = verify(&store, &signer.verifier(), &[]).unwrap();
    assert!(again.ok(), "{:?}", again.problems);
    assert!(again.log_size >= report.log_size + 300);
}

#[test]
fn an_age_limit_prunes_older_events_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    // The second ten must still be younger than the limit when the
    // pipeline has shut down: 1.8 s to spare on a loaded machine.
    let retention = Retention {
        max_age: Some(Duration::from_secs(3)),
        max_bytes: None,
    };
    let pipeline = start(&db, &signer, retention);
    write(&pipeline, 0, 100);
    std::thread::sleep(Duration::from_millis(3_500));
    write(&pipeline, 100, 10);
    std::thread::sleep(Duration::from_millis(1_200));
    pipeline.shutdown().unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let report = verify(&store, &signer.verifier(), &[]).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // The flush after the first 100 signed a checkpoint at 100: exactly
    // the old ones went.
    assert_eq!(report.pruned_before, 100, "{report:?}");
    let kept: Vec<String> = store
        .events()
        .unwrap()
        .iter()
        .map(|s| parse_canonical(s.json.as_bytes()).unwrap())
        .filter(|e| e.kind != PRUNED)
        .map(|e| e.request_id)
        .collect();
    assert_eq!(
        kept,
        (100..110).map(|i| format!("r-{i}")).collect::<Vec<_>>()
    );
    let prunes = pruned_events(&store);
    assert_eq!(prunes.len(), 1);
    assert!(
        prunes[0].reason.contains("events #0..#99"),
        "{}",
        prunes[0].reason
    );
    assert!(
        prunes[0].reason.contains("max_age 3 s"),
        "{}",
        prunes[0].reason
    );
}

#[test]
fn tampering_with_a_pruned_store_is_still_caught() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let retention = Retention {
        max_age: Some(Duration::from_secs(2)),
        max_bytes: None,
    };
    let pipeline = start(&db, &signer, retention);
    write(&pipeline, 0, 128);
    std::thread::sleep(Duration::from_millis(2_300));
    // The first 128 are past max_age, the next 64 are not: stop as soon as
    // the first are pruned (a pass each second), long before the others
    // age (a fixed sleep here raced a loaded machine's next pass).
    write(&pipeline, 128, 64);
    let audit = pipeline.handle();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while audit.pruned_before() < 128 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pipeline.shutdown().unwrap();
    let base = verify(
        &Store::open_read_only(&db).unwrap(),
        &signer.verifier(),
        &[],
    )
    .unwrap()
    .pruned_before;
    assert_eq!(base, 128);

    // An edit of a kept event.
    lattice_audit::testkit::edit_event(&db, 140, |json| {
        json.replace("\"principal\":\"agent-a\"", "\"principal\":\"agent-b\"")
    })
    .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let report = verify(
        &Store::open_read_only(&db).unwrap(),
        &signer.verifier(),
        &[],
    )
    .unwrap();
    assert!(
        matches!(
            report.problems.first(),
            Some(Problem::Edited { seq: 140, .. })
        ),
        "{:?}",
        report.problems
    );
    // Forged heads for the pruned prefix: the kept checkpoints no longer
    // match the log.
    conn.execute("UPDATE pruned SET heads = zeroblob(length(heads))", [])
        .unwrap();
    let report = verify(
        &Store::open_read_only(&db).unwrap(),
        &signer.verifier(),
        &[],
    )
    .unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::LogRewritten { size, .. } if *size == base)),
        "{:?}",
        report.problems
    );
}
