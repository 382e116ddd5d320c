//! A gateway whose root filesystem is read-only, as a hardened container
//! runs it (`readOnlyRootFilesystem`, only the data directory writable),
//! keeps its audit trail under load: SQLite's temporary files (a
//! statement journal that outgrows memory) have nowhere to go there, and
//! the audit store's fills once failed with "disk I/O error" after a few
//! seconds of load, every call refused with 503 from then on; and the
//! operator's aggregates over the window failed the same way.
//!
//! Runs the gateway in a mount namespace of its own (`unshare -m`, which
//! needs root): `/`, `/tmp` and `/var/tmp` mounted read-only there, the
//! gateway's directory mounted writable, no `TMPDIR`.

use super::harness::*;
use std::process::Command;

/// Mounts `/`, `/tmp` and `/var/tmp` read-only in the namespace, the
/// gateway's directory (`$1`) writable, then runs the rest of the
/// arguments from `/` without a temporary directory in the environment.
const READ_ONLY_ROOT: &str = r#"set -e
dir=$1; shift
for t in /tmp /var/tmp; do
  mount --bind "$t" "$t"
  mount -o remount,bind,ro "$t"
done
mount -o remount,bind,ro /
mount --bind "$dir" "$dir"
mount -o remount,bind,rw "$dir"
if touch /var/tmp/.rw-probe /tmp/.rw-probe /.rw-probe 2>/dev/null; then
  echo "the root filesystem is still writable" >&2
  exit 97
fi
cd /
exec env -u TMPDIR -u SQLITE_TMPDIR "$@"
"#;

/// Whether this machine lets the test make a mount namespace.
fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-m", "mount", "--bind", "/tmp", "/tmp"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_read_only_root_filesystem_keeps_the_audit_trail_under_load() {
    if !namespaces_work() {
        // Not root, or no mount namespaces (a restricted container): the
        // read-only root cannot be made here.
        eprintln!("skipped: `unshare -m` needs root and mount namespaces");
        return;
    }
    let upstream = Upstream::start();
    let mut gw = Gateway::prepare(&route(upstream.port), STARTER_POLICY);
    let dir = gw.dir.path().to_str().unwrap().to_string();
    gw.wrapper = ["unshare", "-m", "sh", "-c", READ_ONLY_ROOT, "sh", &dir]
        .map(String::from)
        .to_vec();
    gw.spawn();
    let key = gw.create_key("agent-ro", &["agent"]);
    let auth = bearer(&key);
    assert_eq!(gw.get("/tools/echo/ro", &auth).status, 200);

    // Sustained load: fills of 128 events, each with the `owed` statements
    // that outgrew memory when journaled.
    let load = wrk(gw.port, "/tools/echo/ro", &auth, 32, 8);
    let served = load.ok();
    assert!(served > 1_000, "too little load to mean anything: {load:?}");
    assert_eq!(
        load.not_2xx,
        0,
        "calls were refused under a read-only root: {load:?}\n{}",
        gw.log()
    );
    let r = gw.get("/tools/echo/ro", &auth);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !gw.log().contains("audit store write failed"),
        "{}",
        gw.log()
    );
    // The operator's overview reads the window's aggregates: hundreds of
    // thousands of events, which SQLite's temporary tables and sorter once
    // spilled to a temporary file ("disk I/O error", 503).
    let admin = bearer(&gw.create_human_key("olga", "default", &["admin"]));
    let r = gw.get("/admin/v1/stats?since=1h", &admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let stats: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let outcomes = stats["overall"]["outcomes"].as_u64().unwrap();
    assert!(outcomes > served, "{outcomes} outcomes for {served} calls");

    // Every call wrk saw answered is in the trail, decision and outcome.
    assert!(gw.stop().success());
    let store = gw.filled_store();
    let n = store.count().unwrap();
    assert!(n >= 2 * served, "{n} events for {served} calls");
    assert_eq!(
        store.oldest_owed().unwrap(),
        None,
        "a decision owes its outcome"
    );
    gw.assert_verifies(&[]);
}
