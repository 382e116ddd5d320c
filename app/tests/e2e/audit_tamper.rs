//! `lattice audit verify` against edited, deleted, reordered and rebuilt stores.

use crate::harness::*;
use lattice_audit::NoteSigner;

fn verify(gw: &Gateway, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let out = gw.lattice(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn restore(gw: &Gateway) {
    let data = gw.path("data");
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&gw.path("data.orig"), &data);
}

#[test]
fn verify_names_edited_deleted_reordered_events_and_the_witness_exposes_a_rebuild() {
    let upstream = Upstream::start();
    let extra = format!(
        "{}\n[audit]\ncheckpoint_every = 4\nwitness_file = \"witness.jsonl\"\n",
        route(upstream.port)
    );
    let mut gw = Gateway::start(&extra);
    let key = gw.create_key("agent-a", &["agent"]);
    let auth = bearer(&key);
    for _ in 0..3 {
        assert_eq!(gw.get("/tools/echo/a", &auth).status, 200);
    }
    let denied = http(
        gw.port,
        "DELETE",
        "/tools/echo/a",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(denied.status, 403);
    let deny_seq = gw.events_of(&denied.request_id(), 2)[0].seq;
    for _ in 0..3 {
        assert_eq!(gw.get("/tools/echo/b", &auth).status, 200);
    }
    assert!(gw.stop().success());
    let (ok, text) = verify(&gw, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("witness checkpoints verified"), "{text}");
    copy_dir(&gw.path("data"), &gw.path("data.orig"));

    // Inclusion and consistency proofs verify.
    let out = gw.lattice(&["audit", "prove", "--seq", &deny_seq.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proof: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(proof["verified"], true);
    let sizes: Vec<u64> = gw
        .store()
        .checkpoints()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert!(
        sizes.len() >= 2,
        "checkpoint_every = 4 over 18+ events: {sizes:?}"
    );
    let out = gw.lattice(&["audit", "prove", "--from", &sizes[0].to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proof: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(proof["verified"], true);
    assert_eq!(proof["second_size"], *sizes.last().unwrap());

    // 1. An event edited on disk: the deny becomes an allow.
    //    (Its record in the segments rewritten, CRC and all.)
    lattice_audit::testkit::edit_event(&gw.path("data/audit.db"), deny_seq, |json| {
        json.replace("\"decision\":\"deny\"", "\"decision\":\"allow\"")
    })
    .unwrap();
    let (ok, text) = verify(&gw, &[]);
    assert!(!ok);
    assert!(
        text.contains(&format!("FAILED: event #{deny_seq} (")) && text.contains("was edited"),
        "{text}"
    );
    restore(&gw);

    // 2. A row deleted.
    lattice_audit::testkit::delete_event(&gw.path("data/audit.db"), deny_seq).unwrap();
    let (ok, text) = verify(&gw, &[]);
    assert!(!ok);
    assert!(
        text.contains(&format!("FAILED: event #{deny_seq} was deleted")),
        "{text}"
    );
    restore(&gw);

    // 3. Two rows swapped.
    lattice_audit::testkit::swap_events(&gw.path("data/audit.db"), 1, 2).unwrap();
    let (ok, text) = verify(&gw, &[]);
    assert!(!ok);
    assert!(
        text.contains("FAILED: event #1 (") && text.contains("was reordered: it is event #2"),
        "{text}"
    );
    restore(&gw);

    // 4. The whole store rebuilt from edited events, with a consistent log and
    //    checkpoints re-signed with the node's own key.
    let signer = NoteSigner::from_encoded(
        &std::fs::read_to_string(gw.path("data/audit-signing.key")).unwrap(),
    )
    .unwrap();
    let db = gw.path("data/audit.db");
    lattice_audit::testkit::rebuild_signed(&db, &db, &signer, "lattice/test-node/audit", |e| {
        e[deny_seq as usize].decision = "allow".into();
        e[deny_seq as usize].policies.clear();
    })
    .unwrap();
    // Without the witness the forgery is self-consistent...
    std::fs::write(gw.path("empty-witness.jsonl"), "").unwrap();
    let (ok, text) = verify(
        &gw,
        &[
            "--witness",
            gw.path("empty-witness.jsonl").to_str().unwrap(),
        ],
    );
    assert!(ok, "the forged store should be self-consistent: {text}");
    // ...the exported witness checkpoints expose it.
    let (ok, text) = verify(&gw, &[]);
    assert!(!ok);
    assert!(
        text.contains("FAILED: the store does not match the witness checkpoint at size"),
        "{text}"
    );
}
