//! The witness at the crate level, as a table of `add-checkpoint` requests
//! in order (C2SP tlog-witness): a log's consistent checkpoints are
//! co-signed in the C2SP cosignature/v1 format — checked here through
//! azul's `signed_note` — and a log rebuilt with one edited event and
//! re-signed with the node key (the attacker holds it) is refused, kept as
//! evidence, and the witness's state survives a restart without rolling
//! back. The proofs are made by this crate's Merkle code and checked by
//! azul's `tlog_tiles`, so the two agree on RFC 6962.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use lattice_audit::merkle::{consistency_proof, leaf_hash, root};
use lattice_audit::witness::{
    add_checkpoint_request, CosignatureSigner, CosignatureVerifier, Witness,
};
use lattice_audit::{Checkpoint, NoteSigner};

const ORIGIN: &str = "lattice/node-a/audit";
const WITNESS: &str = "witness.example/w1";
const NOW: u64 = 1_790_000_000;

fn leaves(n: usize, edited: Option<usize>) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            let text = if Some(i) == edited {
                format!("event {i}, edited")
            } else {
                format!("event {i}")
            };
            leaf_hash(text.as_bytes())
        })
        .collect()
}

/// The signed note of the log of `leaves`.
fn note(signer: &NoteSigner, leaves: &[[u8; 32]]) -> String {
    signer.sign(&Checkpoint {
        origin: ORIGIN.into(),
        size: leaves.len() as u64,
        root: root(leaves),
    })
}

/// `add-checkpoint` for the log `to`, from size `old` of the same log.
fn request(signer: &NoteSigner, to: &[[u8; 32]], old: usize) -> String {
    let proof = if old == 0 || old == to.len() {
        vec![]
    } else {
        consistency_proof(to, old).unwrap()
    };
    add_checkpoint_request(old as u64, &proof, &note(signer, to))
}

#[test]
fn consistent_checkpoints_are_cosigned_and_a_rewritten_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("witness.db");
    let node = NoteSigner::generate("node-a");
    let stranger = NoteSigner::generate("node-a");
    let witness_key = CosignatureSigner::generate(WITNESS);
    let verifier = CosignatureVerifier::from_encoded(&witness_key.verifier_key()).unwrap();
    let encoded_key = witness_key.encoded();
    let logs = vec![(ORIGIN.to_string(), node.verifier().encoded())];
    let mut witness = Witness::open(&db, witness_key.at(NOW), &logs).unwrap();

    let honest = leaves(12, None);
    // The attacker rebuilds the log with event 2 edited and signs it with
    // the node key.
    let forged = leaves(14, Some(2));
    let other_origin = add_checkpoint_request(
        0,
        &[],
        &NoteSigner::generate("node-b").sign(&Checkpoint {
            origin: "lattice/node-b/audit".into(),
            size: 1,
            root: root(&honest[..1]),
        }),
    );
    // (what is sent, the status expected, what the answer or reason says)
    let table: Vec<(&str, String, u16, &str)> = vec![
        (
            "the first checkpoint",
            request(&node, &honest[..4], 0),
            200,
            "",
        ),
        (
            "a stale old size",
            request(&node, &honest[..8], 0),
            409,
            "4\n",
        ),
        (
            "the next, with its proof",
            request(&node, &honest[..8], 4),
            200,
            "",
        ),
        (
            "the rebuilt log, re-signed with the node key",
            request(&node, &forged, 8),
            422,
            "history was rewritten",
        ),
        (
            "the same size with another root",
            request(&node, &forged[..8], 8),
            422,
            "this log forked",
        ),
        (
            "a checkpoint another key signed",
            request(&stranger, &honest[..12], 8),
            403,
            "not signed by the log",
        ),
        (
            "an unknown log",
            other_origin,
            404,
            "unknown log `lattice/node-b/audit`",
        ),
        (
            "an old size above the checkpoint's",
            request(&node, &honest[..8], 0).replacen("old 0", "old 9", 1),
            400,
            "old size 9 is above",
        ),
        ("not a request", "hello\n".into(), 400, "malformed"),
        (
            "a bad proof from the held size",
            add_checkpoint_request(8, &[[7; 32]], &note(&node, &honest)),
            422,
            "history was rewritten",
        ),
        (
            "the honest log goes on",
            request(&node, &honest, 8),
            200,
            "",
        ),
    ];
    for (what, body, status, says) in &table {
        match witness.add_checkpoint(body.as_bytes()) {
            Ok(lines) => {
                assert_eq!(*status, 200, "{what}: co-signed, expected {status}");
                // A C2SP cosignature: appended to the checkpoint, it is a
                // note signature azul's signed_note verifies with our key.
                let note_text = body.split_once("\n\n").unwrap().1;
                let cosigned = format!("{note_text}{lines}");
                let parsed = signed_note::Note::from_bytes(cosigned.as_bytes()).unwrap();
                let known = signed_note::VerifierList::new(vec![Box::new(verifier.clone())]);
                let (verified, _) = parsed.verify(&known).unwrap();
                assert_eq!(verified.len(), 1, "{what}");
                assert_eq!(
                    verifier.timestamp(parsed.text(), verified[0].signature()),
                    Some(NOW)
                );
            }
            Err(refusal) => {
                assert_eq!(refusal.status, *status, "{what}: {refusal:?}");
                let said = if *status == 409 {
                    &refusal.body
                } else {
                    &refusal.reason
                };
                assert!(said.contains(says), "{what}: {said}");
            }
        }
    }
    let held = witness.witnessed(ORIGIN).unwrap().unwrap();
    assert_eq!((held.size, held.root), (12, root(&honest)));
    // The refusals of checkpoints the log really signed are kept as
    // evidence of misbehaviour; the stranger's and the garbage are not.
    let evidence = witness.refusals(ORIGIN).unwrap();
    let statuses: Vec<u16> = evidence.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [409, 422, 422, 400, 422], "{evidence:?}");

    // A restart keeps the state: the log cannot be rolled back.
    drop(witness);
    let signer = CosignatureSigner::from_encoded(&encoded_key).unwrap();
    let mut witness = Witness::open(&db, signer, &logs).unwrap();
    let refusal = witness
        .add_checkpoint(request(&node, &honest[..8], 4).as_bytes())
        .unwrap_err();
    assert_eq!((refusal.status, refusal.body.as_str()), (409, "12\n"));
}

#[test]
fn keys_round_trip_and_a_wrong_key_is_refused_with_its_reason() {
    let key = CosignatureSigner::generate(WITNESS);
    let again = CosignatureSigner::from_encoded(&key.encoded()).unwrap();
    assert_eq!(again.verifier_key(), key.verifier_key());
    assert!(key.verifier_key().starts_with("witness.example/w1+"));
    // A log signing key is not a witness key (its type byte is 0x01).
    let node = NoteSigner::generate("node-a");
    assert!(CosignatureSigner::from_encoded(&node.encoded()).is_err());
    let err = CosignatureVerifier::from_encoded(&node.verifier().encoded()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a cosignature/v1 verifier key"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = Witness::open(
        &dir.path().join("w.db"),
        key,
        &[(ORIGIN.into(), "not-a-key".into())],
    );
    let err = bad.err().unwrap().to_string();
    assert!(
        err.contains("log `lattice/node-a/audit`: verifier key `not-a-key`"),
        "{err}"
    );
}

/// The line with the last byte of its signature changed.
fn flip_last_byte(line: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (head, blob) = line.trim_end().rsplit_once(' ').unwrap();
    let mut raw = b64.decode(blob).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    format!("{head} {}", b64.encode(raw))
}

#[test]
fn stored_cosignatures_are_checked_line_by_line_against_their_checkpoint() {
    let node = NoteSigner::generate("node-a");
    let key = CosignatureSigner::generate(WITNESS).at(NOW);
    let verifier = CosignatureVerifier::from_encoded(&key.verifier_key()).unwrap();
    let other = CosignatureSigner::generate("witness.example/w2").at(NOW);
    let dir = tempfile::tempdir().unwrap();
    let logs = vec![(ORIGIN.to_string(), node.verifier().encoded())];
    let mut witness = Witness::open(&dir.path().join("w.db"), key, &logs).unwrap();
    let mut other_witness = Witness::open(&dir.path().join("w2.db"), other, &logs).unwrap();
    let log = leaves(8, None);
    let (four, eight) = (note(&node, &log[..4]), note(&node, &log));
    let line4 = witness
        .add_checkpoint(request(&node, &log[..4], 0).as_bytes())
        .unwrap();
    let line8 = witness
        .add_checkpoint(request(&node, &log, 4).as_bytes())
        .unwrap();
    let foreign = other_witness
        .add_checkpoint(request(&node, &log[..4], 0).as_bytes())
        .unwrap();
    let checkpoints = vec![(4, four), (8, eight)];
    // (stored lines, the first checkpoint without a co-signature)
    type Row = (Vec<(u64, String)>, Option<u64>);
    let table: Vec<Row> = vec![
        (vec![(4, line4.clone()), (8, line8.clone())], None),
        (vec![(4, line4.clone())], Some(8)),
        (vec![(8, line8.clone())], Some(4)),
        // A line of size 4 stored under size 8 co-signs nothing there.
        (vec![(4, line4.clone()), (8, line4.clone())], Some(8)),
        // Another witness's co-signature is not this witness's.
        (vec![(4, foreign), (8, line8.clone())], Some(4)),
        (vec![(4, flip_last_byte(&line4)), (8, line8)], Some(4)),
        (vec![], Some(4)),
    ];
    for (i, (stored, expected)) in table.iter().enumerate() {
        let stored: Vec<(u64, String)> = stored
            .iter()
            .map(|(s, l)| (*s, l.trim_end().to_string()))
            .collect();
        assert_eq!(
            lattice_audit::witness::first_not_cosigned(&checkpoints, &stored, &verifier),
            *expected,
            "row {i}"
        );
    }
}
