//! The stored subtree roots (`store/nodes.rs`) on a log long enough to
//! have two levels of them (66,600 events: 260 roots of 256 leaves, one of
//! 65,536): the gateway's start and the proofs read through them and
//! agree with the log read whole; a leaf deleted under a root no longer
//! stops the start (`verify` names it); a root overwritten is named by
//! `verify` and set aside by the start and the proofs, which then read
//! the leaves; a store without them gets them when opened for writing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_audit::merkle::{consistency_proof_in, inclusion_proof_in};
use lattice_audit::testkit::{
    copy_store, delete_event, forget_subtree_roots, set_subtree_root, subtree_roots,
};
use lattice_audit::verify::{prove_consistency, prove_inclusion, verify, Problem};
use lattice_audit::{AuditEvent, AuditPipeline, NoteSigner, Phase, Store};
use std::path::Path;
use std::time::Duration;

const CALLS: u64 = 33_300;
const EVENTS: u64 = 2 * CALLS;

fn write_log(db: &Path, signer: &NoteSigner, calls: u64) {
    let mut config = lattice_audit::testkit::pipeline_config(db, signer).unwrap();
    config.queue_capacity = 8192;
    config.checkpoint_every = 4096;
    let pipeline = AuditPipeline::start(config).unwrap();
    let audit = pipeline.handle();
    for i in 0..calls {
        let request = format!("r-{i}");
        let decision = AuditEvent::new(Phase::Decision, &request, "http.request");
        let (slot, durable) = loop {
            match audit.record_decision(decision.clone()) {
                Ok(recorded) => break recorded,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        drop(durable);
        slot.record(AuditEvent::new(Phase::Outcome, &request, "http.request"))
            .unwrap();
    }
    pipeline.shutdown().unwrap();
}

fn heads(store: &Store, from_leaves: bool) -> Result<(u64, Vec<[u8; 32]>), String> {
    let read = if from_leaves {
        store.frontier_from_leaves()
    } else {
        store.frontier()
    };
    read.map(|(f, _)| (f.size(), f.heads()))
        .map_err(|e| e.to_string())
}

#[test]
fn the_start_and_the_proofs_read_through_the_stored_roots_and_verify_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let signer = NoteSigner::generate("test-node");
    let verifier = signer.verifier();
    write_log(&db, &signer, CALLS);
    assert_eq!(subtree_roots(&db, 8).unwrap(), EVENTS / 256);
    assert_eq!(subtree_roots(&db, 16).unwrap(), 1);

    let store = Store::open_read_only(&db).unwrap();
    let log = store.log().unwrap();
    assert_eq!(log.leaves.len() as u64, EVENTS);
    let whole = log.frontier();
    assert_eq!(
        heads(&store, false).unwrap(),
        (EVENTS, whole.heads()),
        "the start's heads"
    );
    let hex = |path: Vec<[u8; 32]>| path.into_iter().map(hex::encode).collect::<Vec<_>>();
    for seq in (0..EVENTS).step_by(4_999).chain([EVENTS - 1]) {
        let proof = prove_inclusion(&store, &verifier, seq).unwrap();
        assert!(proof.verified, "#{seq}");
        let want = inclusion_proof_in(&log, seq, proof.tree_size).unwrap();
        assert_eq!(proof.path, hex(want), "#{seq} in {}", proof.tree_size);
    }
    let sizes: Vec<u64> = store.checkpoints().unwrap().iter().map(|c| c.0).collect();
    assert!(sizes.len() > 10, "{sizes:?}");
    for &first in sizes.iter().step_by(3) {
        let proof = prove_consistency(&store, &verifier, first, None).unwrap();
        assert!(proof.verified, "{first} -> {}", proof.second_size);
        let want = consistency_proof_in(&log, first, proof.second_size).unwrap();
        assert_eq!(proof.path, hex(want), "{first} -> {}", proof.second_size);
    }
    assert!(verify(&store, &verifier, &[]).unwrap().ok());
    drop(store);

    // A leaf deleted under a stored root: the start reads the root, not
    // the leaf; the leaves read whole stop at the gap (verify names it:
    // `each_kind_of_tampering_is_named`).
    let gap = dir.path().join("gap.db");
    copy_store(&db, &gap).unwrap();
    delete_event(&gap, 1000).unwrap();
    let store = Store::open_read_only(&gap).unwrap();
    assert_eq!(heads(&store, false).unwrap(), (EVENTS, whole.heads()));
    assert_eq!(
        heads(&store, true).unwrap_err(),
        "audit store is corrupt: the audit log has a gap at leaf 1000; run `lattice audit verify`"
    );
    drop(store);

    // Stored roots overwritten: verify names them; the start sets the
    // roots aside (the newest checkpoint's root does not match) and reads
    // the leaves, and so do proofs through them.
    let bad = dir.path().join("bad.db");
    copy_store(&db, &bad).unwrap();
    set_subtree_root(&bad, 8, 3, &[7; 32]).unwrap();
    set_subtree_root(&bad, 16, 0, &[7; 32]).unwrap();
    let store = Store::open_read_only(&bad).unwrap();
    let report = verify(&store, &verifier, &[]).unwrap();
    assert_eq!(
        report.problems,
        vec![
            Problem::BadSubtreeRoot { level: 8, index: 3 },
            Problem::BadSubtreeRoot {
                level: 16,
                index: 0
            }
        ]
    );
    assert_eq!(
        report.problems[0].to_string(),
        "the stored subtree root of leaves 768..1024 does not match them (level 8, #3): proofs through it would not verify"
    );
    assert_ne!(heads(&store, false).unwrap().1, whole.heads());
    let (checked, _) = store.checked_frontier().unwrap();
    assert_eq!(checked.heads(), whole.heads());
    // A proof through them would not verify: the leaves make it instead.
    for seq in [5, EVENTS - 1] {
        let proof = prove_inclusion(&store, &verifier, seq).unwrap();
        assert!(proof.verified, "#{seq}");
        let want = inclusion_proof_in(&log, seq, proof.tree_size).unwrap();
        assert_eq!(proof.path, hex(want), "#{seq}");
    }
    let proof = prove_consistency(&store, &verifier, sizes[0], None).unwrap();
    assert!(proof.verified);
    drop(store);
    // A gateway started on it signs on from the leaves' head: its new
    // checkpoints are consistent with the old ones (only the two roots
    // are wrong).
    write_log(&bad, &signer, 10);
    let store = Store::open_read_only(&bad).unwrap();
    let report = verify(&store, &verifier, &[]).unwrap();
    assert_eq!(report.log_size, EVENTS + 20);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    drop(store);

    // A store without them (as before they were kept) gets them back when
    // opened for writing, and the start reads through them again.
    let old = dir.path().join("old.db");
    copy_store(&db, &old).unwrap();
    forget_subtree_roots(&old).unwrap();
    assert_eq!(subtree_roots(&old, 8).unwrap(), 0);
    let store = Store::open_read_only(&old).unwrap();
    assert_eq!(heads(&store, false).unwrap(), (EVENTS, whole.heads()));
    drop(store);
    drop(Store::open(&old).unwrap());
    assert_eq!(subtree_roots(&old, 8).unwrap(), EVENTS / 256);
    assert_eq!(subtree_roots(&old, 16).unwrap(), 1);
    delete_event(&old, 1000).unwrap();
    let store = Store::open_read_only(&old).unwrap();
    assert_eq!(heads(&store, false).unwrap(), (EVENTS, whole.heads()));
}
