//! Tamper detection at the crate level: a real pipeline writes a trail
//! (writer, store, Merkle log, signed checkpoints, witness file), then each
//! row of a table tampers with a fresh copy of the store the way an
//! attacker with write access to the disk would, and `verify` must name
//! what was done. Also: the writer's sequence, a closed pipeline, and proofs
//! read range by range against the same proofs over the whole log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_audit::merkle::{consistency_proof_in, inclusion_proof_in};
use lattice_audit::verify::{
    prove_consistency, prove_inclusion, read_log, read_witness, verify, verify_log, Problem,
    VerifyReport,
};
use lattice_audit::{AuditEvent, AuditPipeline, NoteSigner, Phase, PipelineConfig, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ORIGIN: &str = "lattice/test-node/audit";

/// A trail of `n` decision/outcome pairs; the decision of call 2 is a deny.
struct Trail {
    _dir: tempfile::TempDir,
    db: PathBuf,
    witness: PathBuf,
    signer: NoteSigner,
}

fn write_trail(calls: usize) -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let witness = dir.path().join("witness.jsonl");
    let signer = NoteSigner::generate("test-node");
    let pipeline = AuditPipeline::start(PipelineConfig {
        db_path: db.clone(),
        node: "test-node".into(),
        origin: ORIGIN.into(),
        queue_capacity: 64,
        batch_max: 8,
        checkpoint_every: 4,
        checkpoint_interval: Duration::from_secs(3600),
        witness_file: Some(witness.clone()),
        signer: NoteSigner::from_encoded(&signer.encoded()).unwrap(),
        clickhouse: None,
        retention: Default::default(),
    })
    .unwrap();
    let audit = pipeline.handle();
    for i in 0..calls {
        let request = format!("r-{i}");
        let mut decision = AuditEvent::new(Phase::Decision, &request, "http.request");
        decision.principal = "agent-a".into();
        decision.decision = if i == 2 { "deny" } else { "allow" }.into();
        let (slot, _durable) = audit.record_decision(decision).unwrap();
        let mut outcome = AuditEvent::new(Phase::Outcome, &request, "http.request");
        outcome.status = Some(if i == 2 { 403 } else { 200 });
        slot.record(outcome).unwrap();
    }
    pipeline.shutdown().unwrap();
    Trail {
        _dir: dir,
        db,
        witness,
        signer,
    }
}

impl Trail {
    /// A copy of the store to tamper with.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.db.with_file_name(format!("{name}.db"));
        lattice_audit::testkit::copy_store(&self.db, &to).unwrap();
        to
    }

    /// `verify` (the store read as it is checked), after checking that
    /// the same log read whole into memory (as ClickHouse's is) reads the
    /// same: both readers, one verdict.
    fn verify(&self, db: &Path) -> VerifyReport {
        let witness = read_witness(&std::fs::read_to_string(&self.witness).unwrap()).unwrap();
        let store = Store::open_read_only(db).unwrap();
        let streamed = verify(&store, &self.signer.verifier(), &witness).unwrap();
        let whole = verify_log(
            &read_log(&store).unwrap(),
            &self.signer.verifier(),
            &witness,
        )
        .unwrap();
        assert_eq!(streamed.problems, whole.problems, "{}", db.display());
        assert_eq!(
            (
                streamed.events,
                streamed.log_size,
                streamed.checkpoints_checked
            ),
            (whole.events, whole.log_size, whole.checkpoints_checked)
        );
        streamed
    }
}

fn sql(db: &Path, statements: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(statements)
        .unwrap();
}

#[test]
fn an_untouched_trail_verifies_in_order_with_its_checkpoints() {
    let trail = write_trail(9);
    let store = Store::open_read_only(&trail.db).unwrap();
    let events = store.events().unwrap();
    assert_eq!(events.len(), 18, "a decision and an outcome per call");
    for (i, e) in events.iter().enumerate() {
        let event: AuditEvent = serde_json::from_str(&e.json).unwrap();
        assert_eq!(event.seq, i as u64, "the writer numbers events in order");
        assert_eq!(event.node, "test-node");
    }
    let report = trail.verify(&trail.db);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.log_size, 18);
    let sizes: Vec<u64> = store
        .checkpoints()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert!(
        sizes.len() >= 2,
        "at least every batch past 4 events: {sizes:?}"
    );
    assert_eq!(sizes.last(), Some(&18), "a final checkpoint at shutdown");
    assert_eq!(report.checkpoints_checked, sizes.len());
    assert_eq!(
        report.witness_checkpoints_checked,
        report.checkpoints_checked
    );
}

/// (what the attacker does, to a copy of the store, what verify must say)
type Tamper = (&'static str, fn(&Path), fn(&Problem) -> bool);

#[test]
fn each_kind_of_tampering_is_named() {
    let trail = write_trail(6);
    let table: &[Tamper] = &[
        (
            "edited: the deny becomes an allow (its segment record rewritten, CRC and all)",
            |db| {
                lattice_audit::testkit::edit_event(db, 4, |json| {
                    json.replace("\"decision\":\"deny\"", "\"decision\":\"allow\"")
                })
                .unwrap()
            },
            |p| matches!(p, Problem::Edited { seq: 4, .. }),
        ),
        (
            "deleted",
            |db| lattice_audit::testkit::delete_event(db, 4).unwrap(),
            |p| matches!(p, Problem::Deleted { seq: 4 }),
        ),
        (
            "the newest event deleted (no later leaf shows the gap; the last signed size does)",
            |db| lattice_audit::testkit::delete_event(db, 11).unwrap(),
            |p| matches!(p, Problem::Deleted { seq: 11 }),
        ),
        (
            "reordered: two rows swapped",
            |db| lattice_audit::testkit::swap_events(db, 1, 2).unwrap(),
            |p| {
                matches!(
                    p,
                    Problem::Reordered {
                        seq: 1,
                        belongs_at: 2,
                        ..
                    }
                )
            },
        ),
        (
            "inserted: an event the signed log never had",
            |db| {
                sql(db, "INSERT INTO events (seq, event, ts_us, tenant, request_id) VALUES (100, '{\"request_id\":\"r-forged\",\"seq\":100}', 1, 'acme', 'r-forged');")
            },
            |p| matches!(p, Problem::Inserted { seq: 100, .. }),
        ),
        (
            "a checkpoint's signature broken",
            |db| {
                sql(db, "UPDATE checkpoints SET note = replace(note, '— ', '— x') WHERE size = (SELECT min(size) FROM checkpoints);")
            },
            |p| matches!(p, Problem::BadCheckpoint { .. }),
        ),
        (
            "a leaf of the log replaced",
            |db| lattice_audit::testkit::zero_leaf(db, 3).unwrap(),
            |p| {
                matches!(
                    p,
                    Problem::LogRewritten { .. } | Problem::Edited { seq: 3, .. }
                )
            },
        ),
    ];
    for (i, (what, tamper, expected)) in table.iter().enumerate() {
        let db = trail.copy(&format!("tampered-{i}"));
        tamper(&db);
        let report = trail.verify(&db);
        assert!(!report.ok(), "{what}: not detected");
        assert!(
            report.problems.iter().any(expected),
            "{what}: {:?}",
            report.problems
        );
    }
}

#[test]
fn a_store_rebuilt_and_re_signed_with_the_node_key_is_exposed_only_by_the_witness() {
    let trail = write_trail(6);
    let forged_path = trail.db.with_file_name("forged.db");
    lattice_audit::testkit::rebuild_signed(&trail.db, &forged_path, &trail.signer, ORIGIN, |e| {
        e[4].decision = "allow".into();
    })
    .unwrap();
    let store = Store::open_read_only(&forged_path).unwrap();
    let alone = verify(&store, &trail.signer.verifier(), &[]).unwrap();
    assert!(
        alone.ok(),
        "self-consistent without a witness: {:?}",
        alone.problems
    );
    let report = trail.verify(&forged_path);
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::WitnessMismatch { .. })),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_closed_pipeline_refuses_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = AuditPipeline::start(PipelineConfig {
        db_path: dir.path().join("audit.db"),
        node: "n".into(),
        origin: "lattice/n/audit".into(),
        queue_capacity: 4,
        batch_max: 4,
        checkpoint_every: 100,
        checkpoint_interval: Duration::from_secs(3600),
        witness_file: None,
        signer: NoteSigner::generate("n"),
        clickhouse: None,
        retention: Default::default(),
    })
    .unwrap();
    let audit = pipeline.handle();
    pipeline.shutdown().unwrap();
    let refused = audit.record_decision(AuditEvent::new(Phase::Decision, "r", "http.request"));
    assert!(
        refused.is_err(),
        "a closed pipeline must refuse, never drop silently"
    );
}

/// Where the test below keeps its store for the child it starts.
const CHILD_STORE: &str = "LATTICE_TEST_VERIFY_STORE";

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child of the test below: verifies the store it is given and prints
/// how much its peak memory grew while it did (not run by itself).
#[test]
#[ignore = "run by a_long_log_is_verified_in_bounded_memory, in a process of its own"]
fn verify_in_a_child_and_print_the_peak_growth() {
    let db = PathBuf::from(std::env::var(CHILD_STORE).expect("started by its parent test"));
    let verifier = lattice_audit::NoteVerifier::from_encoded(
        &std::fs::read_to_string(db.with_file_name("vkey")).unwrap(),
    )
    .unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let before = status_kb("VmRSS:");
    let report = verify(&store, &verifier, &[]).unwrap();
    let peak = status_kb("VmHWM:");
    println!(
        "verified={} events={} growth_kb={}",
        report.ok(),
        report.events,
        peak.saturating_sub(before)
    );
}

#[test]
fn a_long_log_is_verified_in_bounded_memory() {
    // 80,000 events of about 440 bytes: 35 MB of JSON, which a verify that
    // read the log whole held at once (with its leaves and an index of
    // them: over 40 MB); read as it is checked, a few MB.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    std::fs::write(dir.path().join("vkey"), signer.verifier().encoded()).unwrap();
    let mut config = lattice_audit::testkit::pipeline_config(&db, &signer).unwrap();
    config.queue_capacity = 8192;
    config.checkpoint_every = 4096;
    let pipeline = AuditPipeline::start(config).unwrap();
    let audit = pipeline.handle();
    for i in 0..40_000 {
        let request = format!("r-{i}");
        let mut decision = AuditEvent::new(Phase::Decision, &request, "http.request");
        decision.principal = "agent-a".into();
        decision.decision = "allow".into();
        let (slot, durable) = loop {
            match audit.record_decision(decision.clone()) {
                Ok(recorded) => break recorded,
                // The queue is full: the writer catches up.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        drop(durable);
        let mut outcome = AuditEvent::new(Phase::Outcome, &request, "http.request");
        outcome.status = Some(200);
        slot.record(outcome).unwrap();
    }
    pipeline.shutdown().unwrap();

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "verify_in_a_child_and_print_the_peak_growth",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, &db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest may print the test's name on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("verified=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("the child said nothing: {stdout}"));
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap()
            .to_string()
    };
    assert_eq!(field("verified="), "true", "{line}");
    assert_eq!(field("events="), "80000", "{line}");
    let growth_kb: u64 = field("growth_kb=").parse().unwrap();
    assert!(
        growth_kb < 16 * 1024,
        "verifying 80,000 events raised the peak memory by {growth_kb} kB: {line}"
    );
}

#[test]
fn proofs_read_the_leaves_range_by_range_and_match_the_whole_log() {
    // 60 events: the trail's queue holds 64 (nothing waits for them).
    let trail = write_trail(30);
    let verifier = trail.signer.verifier();
    let store = Store::open_read_only(&trail.db).unwrap();
    let log = store.log().unwrap();
    let (frontier, prefix) = store.frontier().unwrap();
    assert_eq!(
        (frontier.size(), frontier.root(), prefix.size()),
        (60, log.frontier().root(), 0)
    );
    let hex = |path: Vec<[u8; 32]>| path.into_iter().map(hex::encode).collect::<Vec<_>>();
    for seq in 0..60 {
        let proof = prove_inclusion(&store, &verifier, seq).unwrap();
        assert!(proof.verified, "#{seq}");
        let whole = inclusion_proof_in(&log, seq, proof.tree_size).unwrap();
        assert_eq!(proof.path, hex(whole), "#{seq} in {}", proof.tree_size);
    }
    let sizes: Vec<u64> = store.checkpoints().unwrap().iter().map(|c| c.0).collect();
    assert!(sizes.len() > 4, "{sizes:?}");
    for &first in &sizes {
        let proof = prove_consistency(&store, &verifier, first, None).unwrap();
        assert!(proof.verified, "{first} -> {}", proof.second_size);
        let whole = consistency_proof_in(&log, first, proof.second_size).unwrap();
        assert_eq!(proof.path, hex(whole), "{first} -> {}", proof.second_size);
    }

    // A leaf missing from a range a proof reads is an error that says
    // where, not a proof over a shorter log.
    let db = trail.copy("gap");
    lattice_audit::testkit::delete_event(&db, 4).unwrap();
    let store = Store::open_read_only(&db).unwrap();
    let gap = "the audit log has a gap at leaf 4; run `lattice audit verify`";
    let err = prove_inclusion(&store, &verifier, 40).unwrap_err();
    assert_eq!(err.to_string(), format!("audit store is corrupt: {gap}"));
    // From a size between 16 and 32 to 60 reads the root of leaves 0..16
    // (from 8 it does not: that first tree is a whole subtree of the
    // second, and its proof stands).
    let first = *sizes.iter().find(|&&s| s > 16 && s < 32).unwrap();
    let err = prove_consistency(&store, &verifier, first, None).unwrap_err();
    assert_eq!(err.to_string(), format!("audit store is corrupt: {gap}"));
    assert_eq!(
        store.frontier().unwrap_err().to_string(),
        format!("audit store is corrupt: {gap}")
    );
}
