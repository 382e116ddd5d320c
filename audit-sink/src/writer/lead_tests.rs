//! Calls that write their own decision (`lead.rs`): durable as
//! `write_decision` returns, after everything queued before them, queued
//! instead when the writer is held; and a write the disk refuses to such a
//! call is retried by the writer thread, with new calls refused meanwhile
//! and nothing lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::event::{parse_canonical, Phase};
use std::time::Duration;

/// A pipeline on a new store (`audit.db` in the directory).
fn start() -> (tempfile::TempDir, NoteSigner, AuditPipeline) {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("test-node");
    let cfg = crate::testkit::pipeline_config(&dir.path().join("audit.db"), &signer).unwrap();
    (dir, signer, AuditPipeline::start(cfg).unwrap())
}

fn decision(call: &str) -> AuditEvent {
    AuditEvent::new(Phase::Decision, call, "http.request")
}

fn outcome(call: &str) -> AuditEvent {
    AuditEvent::new(Phase::Outcome, call, "http.request")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The calls' events as stored, `(phase, request id)` in log order, once
/// the log is checked whole (leaves, checkpoints) and every call settled.
fn logged(db: &std::path::Path, signer: &NoteSigner) -> Vec<(Phase, String)> {
    let store = Store::open_read_only(db).unwrap();
    let report = crate::verify(&store, &signer.verifier(), &[]).unwrap();
    assert!(report.ok(), "{report:?}");
    assert!(
        store.owed_decisions().unwrap().is_empty(),
        "every call settled"
    );
    store
        .events()
        .unwrap()
        .iter()
        .map(|s| {
            let e = parse_canonical(s.json.as_bytes()).unwrap();
            (e.phase, e.request_id)
        })
        .collect()
}

/// Waits (at most 5 s) until `done` holds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < until, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A waiting call writes its decision itself when the writer is free (it is
/// written and durable when `write_decision` returns), behind what was
/// queued before it: here a refusal and its outcome, queued just before.
/// With the writer held by another, it queues and the writer thread writes
/// it.
#[test]
fn a_waiting_call_writes_its_own_decision_after_what_was_queued() {
    // Enough calls that one finds the writer free even on two cores busy
    // with other tests (200 once found it busy every time).
    const CALLS: usize = 1_000;
    let (dir, signer, pipeline) = start();
    let (db, audit, rt) = (dir.path().join("audit.db"), pipeline.handle(), runtime());

    let held = audit.core.lock();
    let (slot, durable) = audit.write_decision(decision("held")).unwrap();
    assert!(!durable.already(), "the writer was held: queued");
    drop(held);
    rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
    slot.record(outcome("held")).unwrap();

    let mut led = 0;
    for i in 0..CALLS {
        let refused = format!("refused-{i}");
        let (slot, _) = audit.record_decision(decision(&refused)).unwrap();
        slot.record(outcome(&refused)).unwrap();
        let before = audit.written();
        let call = format!("call-{i}");
        let (slot, durable) = audit.write_decision(decision(&call)).unwrap();
        if durable.already() {
            led += 1;
            assert!(audit.written() > before, "{call}: durable means written");
        }
        rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
        slot.record(outcome(&call)).unwrap();
    }
    assert!(led > 0, "no call of {CALLS} found the writer free");
    pipeline.shutdown().unwrap();

    let log = logged(&db, &signer);
    assert_eq!(log.len(), 2 + 4 * CALLS);
    let at = |phase: Phase, id: &str| log.iter().position(|(p, r)| *p == phase && r == id);
    for (_, id) in log.iter().filter(|(p, _)| *p == Phase::Outcome) {
        assert!(
            at(Phase::Decision, id) < at(Phase::Outcome, id),
            "the outcome of {id} before its decision"
        );
    }
    for i in 0..CALLS {
        let (refused, call) = (format!("refused-{i}"), format!("call-{i}"));
        assert!(
            at(Phase::Outcome, &refused) < at(Phase::Decision, &call),
            "{call}'s decision overtook what was queued before it"
        );
    }
}

/// Calls from several threads at once, each waiting for its decision:
/// whoever finds the writer free leads, the others queue — those that queue
/// while a writer holds the writer wake no one, and are written by that
/// writer before it lets go (or handed to the writer thread). None is left
/// waiting (each is durable within 2 s; the writer thread would otherwise
/// sleep for the test's hour-long checkpoint interval), and every call's
/// events are in the log once, each outcome after its decision.
#[test]
fn calls_from_many_threads_are_all_made_durable_and_none_is_left_waiting() {
    let (dir, signer, pipeline) = start();
    let (db, audit) = (dir.path().join("audit.db"), pipeline.handle());
    let (threads, calls) = (4, 500);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let audit = audit.clone();
            scope.spawn(move || {
                let rt = runtime();
                for i in 0..calls {
                    let call = format!("t{t}-{i}");
                    let (slot, durable) = audit.write_decision(decision(&call)).unwrap();
                    rt.block_on(durable.wait(Duration::from_secs(2)))
                        .unwrap_or_else(|e| panic!("{call}: {e}"));
                    slot.record(outcome(&call)).unwrap();
                }
            });
        }
    });
    pipeline.shutdown().unwrap();
    let log = logged(&db, &signer);
    assert_eq!(log.len(), 2 * threads * calls);
    let mut decided = std::collections::HashSet::new();
    for (phase, id) in &log {
        match phase {
            Phase::Decision => assert!(decided.insert(id.clone()), "{id} twice"),
            Phase::Outcome => assert!(decided.contains(id), "{id}: outcome first"),
        }
    }
}

/// After a batch written with `CROWDED` decisions or more waiting on it,
/// calls queue for the writer thread for `CROWDED_FOR` even when they find
/// the writer free (under load a leading call holds a request thread in a
/// synced write while its other connections wait); then they lead again.
/// Only calls that returned inside the window are held to it, so a slow
/// machine cannot fail the test: it tries again until a window holds one.
#[test]
fn calls_queue_for_a_while_after_a_crowded_batch_then_lead_again() {
    use super::lead::{CROWDED, CROWDED_FOR};
    let (_dir, _signer, pipeline) = start();
    let (audit, rt) = (pipeline.handle(), runtime());
    let mut checked = 0;
    for attempt in 0..50 {
        // A crowded batch: the writer held while CROWDED calls queue.
        let held = audit.core.lock();
        let queued: Vec<_> = (0..CROWDED)
            .map(|i| {
                let call = format!("crowd-{attempt}-{i}");
                (audit.write_decision(decision(&call)).unwrap(), call)
            })
            .collect();
        let released = std::time::Instant::now();
        drop(held);
        for ((slot, durable), call) in queued {
            assert!(!durable.already(), "{call}: the writer was held");
            rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
            slot.record(outcome(&call)).unwrap();
        }
        // Calls that return before the window can have closed.
        for i in 0.. {
            let call = format!("after-{attempt}-{i}");
            let (slot, durable) = audit.write_decision(decision(&call)).unwrap();
            let led = durable.already();
            let inside = released.elapsed() < CROWDED_FOR;
            rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
            slot.record(outcome(&call)).unwrap();
            if !inside {
                break;
            }
            assert!(
                !led,
                "a call led {:?} after a crowded batch",
                released.elapsed()
            );
            checked += 1;
        }
        if checked > 0 {
            break;
        }
    }
    assert!(
        checked > 0,
        "no call returned inside the window in 50 tries"
    );
    // Past the window, a call that finds the writer free leads again.
    std::thread::sleep(CROWDED_FOR);
    let led = (0..1_000).any(|i| {
        let call = format!("late-{i}");
        let (slot, durable) = audit.write_decision(decision(&call)).unwrap();
        let led = durable.already();
        rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
        slot.record(outcome(&call)).unwrap();
        led
    });
    assert!(led, "no call led again after the window");
    pipeline.shutdown().unwrap();
}

/// Set in the child process the test below runs in: it limits the size of
/// the files the process may write, which would fail every other test of
/// the same process.
const CHILD: &str = "LATTICE_AUDIT_FSIZE_CHILD";

/// The file size limit (`RLIMIT_FSIZE`) of this process, soft part.
fn limit_file_size(bytes: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write the struct passed, nothing else.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = bytes.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

/// The disk refuses a leading call's write (the process may write no
/// file beyond 0 bytes: every write fails with EFBIG): the call does not
/// retry on the request path; its batch goes to the writer thread, the
/// pipeline reports itself failing and refuses new calls with
/// `WriterFailing`, and once writes are taken again the decision is
/// durable, written once, in order.
#[test]
fn a_write_refused_to_a_leading_call_is_retried_by_the_writer_thread() {
    if std::env::var_os(CHILD).is_none() {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "writer::lead_tests::a_write_refused_to_a_leading_call_is_retried_by_the_writer_thread",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success() && out.contains("1 passed"),
            "the child process ({}): {out}{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );
        return;
    }
    let (dir, signer, pipeline) = start();
    let (db, audit, rt) = (dir.path().join("audit.db"), pipeline.handle(), runtime());
    let (slot, durable) = audit.write_decision(decision("before")).unwrap();
    rt.block_on(durable.wait(Duration::from_secs(2))).unwrap();
    slot.record(outcome("before")).unwrap();
    // The writer thread filled them and sleeps long: the writer is free.
    eventually("the writer thread sleeps long", || {
        !audit.shared.lazy_ok.load(Ordering::SeqCst) && audit.written() == 2
    });

    // SAFETY: ignoring SIGXFSZ makes a write past the limit fail with
    // EFBIG instead of killing the process; nothing else handles it.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    limit_file_size(0);
    let (slot, durable) = audit.write_decision(decision("refused write")).unwrap();
    eventually("the pipeline reports itself failing", || !audit.healthy());
    let meanwhile = audit.record_decision(decision("meanwhile")).err();
    limit_file_size(libc::RLIM_INFINITY);

    assert!(!durable.already(), "not durable while the disk refused it");
    assert_eq!(
        meanwhile.map(|e| e.to_string()),
        Some(AuditError::WriterFailing.to_string()),
        "a new call is refused while the writer cannot write"
    );
    rt.block_on(durable.wait(Duration::from_secs(5))).unwrap();
    eventually("the pipeline recovers", || audit.healthy());
    slot.record(outcome("refused write")).unwrap();
    pipeline.shutdown().unwrap();
    let expected = [
        (Phase::Decision, "before"),
        (Phase::Outcome, "before"),
        (Phase::Decision, "refused write"),
        (Phase::Outcome, "refused write"),
    ]
    .map(|(p, r)| (p, r.to_string()));
    assert_eq!(logged(&db, &signer), expected);
}
