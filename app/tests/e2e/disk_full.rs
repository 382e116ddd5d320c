//! A data volume that fills up under load: calls are refused with 503
//! `audit_unavailable` (fail closed: nothing forwarded without its
//! record), the outage is logged when it starts and when it ends — not a
//! line per refused call (176,431 ERROR lines in 8 s before) —, calls are
//! served again as soon as space is freed, without a restart; a gateway
//! stopped while the volume is full exits (with an error naming what the
//! store lacks) instead of retrying forever; and every call that was
//! answered has its decision and its outcome in a trail — and a witness
//! file — that verifies.
//!
//! The data directory is a size-limited tmpfs mounted over the gateway's
//! `data/` (mounting needs root: elsewhere the test says it was skipped);
//! a filler file takes what is left of it.

use super::harness::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The mount, undone however the test ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| Mounted(dir.to_path_buf()))
}

/// Writes zeros until the volume refuses more: ENOSPC.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, not {e}");
            return;
        }
    }
}

const OUTAGE: &str = "the audit trail cannot record decisions";

/// Load in 2 s runs until at least `refused` calls were refused (space
/// the store's files already hold — the segment, a WAL that grew before —
/// takes some calls first, more on a busy machine), at most 30 runs.
fn load_until_refused(gw: &Gateway, auth: &str, refused: u64) -> Load {
    let mut all = Load {
        answered: 0,
        not_2xx: 0,
    };
    for _ in 0..30 {
        let l = wrk(gw.port, "/tools/echo/full", auth, 8, 2);
        all.answered += l.answered;
        all.not_2xx += l.not_2xx;
        if all.not_2xx >= refused {
            break;
        }
    }
    all
}

#[test]
fn a_full_data_volume_refuses_calls_logs_the_outage_once_and_recovers_losing_nothing() {
    let upstream = Upstream::start();
    let config = format!(
        "{}\n[audit]\nwitness_file = \"data/witness.jsonl\"\n",
        route(upstream.port)
    );
    let mut gw = Gateway::prepare(&config, STARTER_POLICY);
    let Some(_mount) = mount_tmpfs(&gw.path("data"), "96m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    gw.spawn();
    let key = gw.create_key("agent-full", &["agent"]);
    let auth = bearer(&key);
    let path = "/tools/echo/full";
    assert_eq!(gw.get(path, &auth).status, 200);
    let mut served = 1;
    // Room at start: no warning of a cramped volume.
    assert!(
        !gw.log().contains("segments' filesystem has"),
        "{}",
        gw.log()
    );

    // The volume fills: the segments' preallocated space takes a few more
    // decisions, then the store's writes fail and calls are refused.
    let filler = gw.path("data/filler");
    fill(&filler);
    let loading = std::time::Instant::now();
    let full = load_until_refused(&gw, &auth, 1_000);
    let tens = loading.elapsed().as_secs() / 10;
    served += full.ok();
    assert!(full.not_2xx >= 1_000, "calls were not refused: {full:?}");
    let r = gw.get(path, &auth);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("\"audit_unavailable\""), "{}", r.body);
    assert!(
        gw.metric("lattice_audit_refused_total") >= (full.not_2xx + 1) as f64,
        "every refusal is counted"
    );
    let log = gw.log();
    // Not a line per call: the writer's retries (one per 2 s at most) and
    // the outage's start, then a count every 10 s.
    let errors = log.matches("ERROR").count() as u64;
    assert!(
        errors < 50 + 10 * tens,
        "{errors} ERROR lines for {} refused calls",
        full.not_2xx
    );
    let lines = log.matches(OUTAGE).count() as u64;
    assert!(
        (1..=2 + tens).contains(&lines),
        "{lines} log lines for {} refused calls:\n{}",
        full.not_2xx,
        &log[log.len().saturating_sub(4000)..]
    );
    assert!(log.contains("refused (fail closed)"), "{log}");
    // The writer's checkpoints (one or more a second) refused by the full
    // witness file: once at the start, a count every 10 s (14 ERROR lines
    // in seconds before).
    let witness = log.matches("export audit checkpoint").count() as u64;
    assert!(
        witness <= 2 + tens,
        "{witness} lines of refused witness exports:\n{}",
        &log[log.len().saturating_sub(4000)..]
    );

    // Space is freed: calls are served again, no restart.
    std::fs::remove_file(&filler).unwrap();
    wait_for("calls served again", Duration::from_secs(30), || {
        let ok = gw.get(path, &auth).status == 200;
        served += u64::from(ok);
        ok
    });
    let after = wrk(gw.port, path, &auth, 8, 2);
    served += after.ok();
    assert_eq!(after.not_2xx, 0, "{after:?}");
    assert!(
        gw.log().contains(&format!("{OUTAGE}: over")),
        "the end of the outage is logged:\n{}",
        gw.log()
    );

    // Full again, and stopped while full: the shutdown gives up on the
    // store after its patience (it once retried forever, the process never
    // exiting), says what the store lacks, and exits with an error.
    fill(&filler);
    let again = load_until_refused(&gw, &auth, 1);
    served += again.ok();
    assert!(again.not_2xx > 0, "{again:?}");
    let status = gw.stop_within(Duration::from_secs(30));
    let log = gw.log();
    let tail = &log[log.len().saturating_sub(3000)..];
    let status = status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM:\n{tail}"));
    assert!(!status.success(), "{tail}");
    assert!(log.contains("the next start writes them in"), "{tail}");

    // Space again: the next start writes in what the store lacked, and
    // nothing answered is missing from the trail.
    std::fs::remove_file(&filler).unwrap();
    gw.spawn();
    assert_eq!(gw.get(path, &auth).status, 200);
    served += 1;
    assert!(gw.stop().success());
    let store = gw.filled_store();
    let n = store.count().unwrap();
    assert!(n >= 2 * served, "{n} events for {served} calls answered");
    assert_eq!(store.oldest_owed().unwrap(), None, "an outcome is owed");
    gw.assert_verifies(&[]);
}

/// A new gateway whose data volume has no room at all exits at once with
/// an error that says the disk is full (SQLite alone said "disk I/O error:
/// Error code 4874" for the state store's shared-memory file), and starts
/// once there is room.
#[test]
fn a_gateway_started_on_a_full_volume_says_the_disk_is_full() {
    let mut gw = Gateway::prepare(&route(free_port()), STARTER_POLICY);
    let Some(_mount) = mount_tmpfs(&gw.path("data"), "96m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    fill(&gw.path("data/filler"));
    gw.launch();
    let status = gw.exit_within(Duration::from_secs(30));
    let log = gw.log();
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("the filesystem of the data directory")
            && log.contains("is full (0 bytes free)"),
        "{log}"
    );
    // Nothing half-written stays behind to stop the next start once there
    // is room (a signing key cut short once did, for good).
    std::fs::remove_file(gw.path("data/filler")).unwrap();
    gw.spawn();
    assert!(gw.stop().success(), "{}", gw.log());
    gw.assert_verifies(&[]);
}

/// The witness file's volume is full while the data volume is not: calls
/// are served (the witness file is not on the request path), each refused
/// export is not a line of its own (one per checkpoint before: 30 ERROR
/// lines in 3 s at ten checkpoints a second), the end is logged once
/// there is room, and the trail and the witness file verify.
#[test]
fn a_full_witness_volume_is_logged_once_and_calls_go_on() {
    let upstream = Upstream::start();
    let config = format!(
        "{}\n[audit]\nwitness_file = \"witness/witness.jsonl\"\ncheckpoint_interval_ms = 100\ncheckpoint_every = 200\n",
        route(upstream.port)
    );
    let mut gw = Gateway::prepare(&config, STARTER_POLICY);
    let Some(_mount) = mount_tmpfs(&gw.path("witness"), "1m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    gw.spawn();
    let key = gw.create_key("agent-witness", &["agent"]);
    let auth = bearer(&key);
    assert_eq!(gw.get("/tools/echo/w", &auth).status, 200);
    let filler = gw.path("witness/filler");
    fill(&filler);
    let load = wrk(gw.port, "/tools/echo/w", &auth, 8, 3);
    assert!(load.answered > 100 && load.not_2xx == 0, "{load:?}");
    let log = gw.log();
    let refused = log.matches("export audit checkpoint").count();
    assert!(
        (1..=2).contains(&refused),
        "{refused} lines of refused witness exports:\n{}",
        &log[log.len().saturating_sub(4000)..]
    );
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        "the witness file taken again",
        Duration::from_secs(30),
        || {
            assert_eq!(gw.get("/tools/echo/w", &auth).status, 200);
            gw.log().contains("reach the witness file again")
        },
    );
    assert!(gw.stop().success(), "{}", gw.log());
    gw.assert_verifies(&[]);
}

/// A gateway started with less room than its next audit segment needs
/// warns at start (and calls are still served while the current segment
/// has room); one with room does not (the first test's start).
#[test]
fn a_start_with_little_room_warns_before_calls_are_refused() {
    let upstream = Upstream::start();
    let mut gw = Gateway::prepare(&route(upstream.port), STARTER_POLICY);
    let Some(_mount) = mount_tmpfs(&gw.path("data"), "64m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    // 24 MiB left: the current segment takes 16 of them, its spare would
    // need 16 more.
    let mut filler = std::fs::File::create(gw.path("data/filler")).unwrap();
    filler.write_all(&vec![0u8; 40 << 20]).unwrap();
    filler.sync_all().unwrap();
    gw.spawn();
    let key = gw.create_key("agent-cramped", &["agent"]);
    assert_eq!(gw.get("/tools/echo/c", &bearer(&key)).status, 200);
    let log = gw.log();
    assert!(
        log.contains("the audit segments' filesystem has")
            && log.contains("MiB free: the next segment takes 16 MiB"),
        "{log}"
    );
}
