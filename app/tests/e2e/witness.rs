//! An outside witness as a real second process: `lattice witness run`
//! polls the gateway, co-signs its checkpoints as it appends, and gives the
//! co-signatures back; `lattice audit verify --witness-key` then holds.
//! Then the attacker — who holds the node key and the disk — rebuilds the
//! store with one edited event and a freshly signed log (even keeping the
//! old co-signatures): the witness refuses the new checkpoints, loudly, and
//! `verify --witness-key` fails naming the first checkpoint no witness
//! co-signed.

use crate::harness::*;
use lattice_audit::testkit::rebuild_signed;
use lattice_audit::{NoteSigner, Store};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The witness process, killed when dropped.
struct WitnessProc(Child);

impl Drop for WitnessProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn verify_with(gw: &Gateway, witness_key: &str) -> (bool, String) {
    let out = gw.lattice(&["audit", "verify", "--witness-key", witness_key]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn a_witness_cosigns_as_the_gateway_appends_and_refuses_a_rewritten_log() {
    let wdir = tempfile::tempdir().unwrap();
    let init = Command::new(BIN)
        .args(["witness", "init", "--name", "witness.test/w1", "--dir"])
        .arg(wdir.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let witness_key = String::from_utf8(init.stdout).unwrap().trim().to_string();
    assert!(witness_key.starts_with("witness.test/w1+"), "{witness_key}");

    let upstream = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "{}\n[audit]\ncheckpoint_interval_ms = 100\nwitnesses = [\"{witness_key}\"]\n",
        route(upstream.port)
    ));
    let node_key = std::fs::read_to_string(gw.path("data/audit-signing.vkey")).unwrap();
    let log = std::fs::File::create(wdir.path().join("witness.log")).unwrap();
    // A log that pushes to the witness (C2SP tlog-witness) instead.
    let pusher = NoteSigner::generate("push.test/log");
    let mut witness = WitnessProc(
        Command::new(BIN)
            .args([
                "witness",
                "run",
                "--interval-ms",
                "100",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--dir")
            .arg(wdir.path())
            .arg("--log")
            .arg(format!("http://127.0.0.1:{}={}", gw.port, node_key.trim()))
            .arg("--accept")
            .arg(format!("push.test/log={}", pusher.verifier().encoded()))
            .env("LATTICE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(witness.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let witness_port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let auth = bearer(&gw.create_key("agent-w", &["agent"]));
    for round in 0..3 {
        for _ in 0..5 {
            assert_eq!(gw.get("/tools/echo/w", &auth).status, 200);
        }
        // Every checkpoint so far gets co-signed while the gateway runs.
        wait_for(
            "every checkpoint co-signed",
            Duration::from_secs(20),
            || verify_with(&gw, &witness_key).0,
        );
        let store = gw.store();
        assert!(
            store.cosignatures().unwrap().len() > round,
            "co-signatures are stored beside the checkpoints"
        );
    }
    let witness_log = || std::fs::read_to_string(wdir.path().join("witness.log")).unwrap();
    assert!(witness_log().contains("co-signed"), "{}", witness_log());
    assert!(!witness_log().contains("REFUSED"), "{}", witness_log());
    assert!(gw.stop().success());

    // The attack: event 2 edited, the store rebuilt, every checkpoint
    // re-signed with the node key, the old co-signatures copied over.
    let signer = NoteSigner::from_encoded(
        &std::fs::read_to_string(gw.path("data/audit-signing.key")).unwrap(),
    )
    .unwrap();
    let db = gw.path("data/audit.db");
    let (sizes, cosignatures) =
        rebuild_signed(&db, &db, &signer, "lattice/test-node/audit", |events| {
            events[2].reason = "nothing to see here".into();
        })
        .unwrap();
    let mut forged = Store::open(&db).unwrap();
    for (size, line) in &cosignatures {
        forged
            .put_cosignatures(*size, std::slice::from_ref(line))
            .unwrap();
    }
    drop(forged);
    // The first checkpoint whose root the edit changed.
    let first_forged = *sizes.iter().find(|s| **s > 2).unwrap();

    // Served again, the rewritten log reaches the witness, which refuses it.
    gw.spawn();
    for _ in 0..3 {
        assert_eq!(gw.get("/tools/echo/w", &auth).status, 200);
    }
    wait_for("the witness to refuse", Duration::from_secs(20), || {
        witness_log().contains("REFUSED to co-sign")
    });
    assert!(
        witness_log().contains("not consistent with size"),
        "{}",
        witness_log()
    );
    let (ok, text) = verify_with(&gw, &witness_key);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "FAILED: the log at size {first_forged} carries no co-signature by witness witness.test/w1"
        )),
        "{text}"
    );
    // Without the witness the forgery verifies: only the witness exposes it.
    let plain = gw.lattice(&["audit", "verify"]);
    assert!(plain.status.success(), "{plain:?}");
    // A one-shot witness run says so with its exit status too.
    let once = Command::new(BIN)
        .args(["witness", "run", "--once", "--dir"])
        .arg(wdir.path())
        .arg("--log")
        .arg(format!("http://127.0.0.1:{}={}", gw.port, node_key.trim()))
        .output()
        .unwrap();
    assert_eq!(once.status.code(), Some(1), "{once:?}");
    assert!(String::from_utf8_lossy(&once.stderr).contains("REFUSED"));
    let metric = |name: &str| -> f64 {
        let r = http(witness_port, "GET", "/metrics", &[], b"").unwrap();
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert!(metric("lattice_witness_refused_total") >= 1.0);
    assert!(metric("lattice_witness_cosigned_total") >= 3.0);

    // The C2SP protocol itself, for a log that pushes: co-signed once, then
    // a stale old size is a 409 naming the size the witness holds.
    let leaves: Vec<[u8; 32]> = [b"a", b"b"]
        .iter()
        .map(|d| lattice_audit::merkle::leaf_hash(*d))
        .collect();
    let note = pusher.sign(&lattice_audit::Checkpoint {
        origin: "push.test/log".into(),
        size: 2,
        root: lattice_audit::merkle::root(&leaves),
    });
    let request = lattice_audit::witness::add_checkpoint_request(0, &[], &note);
    let push = || {
        http(
            witness_port,
            "POST",
            "/add-checkpoint",
            &[],
            request.as_bytes(),
        )
        .unwrap()
    };
    let first = push();
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        first.body.starts_with("\u{2014} witness.test/w1 "),
        "{}",
        first.body
    );
    let again = push();
    assert_eq!(again.status, 409);
    assert_eq!(again.header("content-type"), Some("text/x.tlog.size"));
    assert_eq!(again.body, "2\n");
}
