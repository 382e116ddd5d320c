//! Retention of the embedded audit store beside a real ClickHouse, and
//! ClickHouse over TLS (a TLS-only Debian clickhouse-server presenting a
//! self-signed certificate made here with rcgen).

use crate::clickhouse::ClickHouse;
use crate::harness::*;
use lattice_audit::testkit::ClickHouseServer;
use std::time::Duration;

const MAX: u64 = 256 * 1024;

fn calls(gw: &Gateway, auth: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(gw.get("/tools/echo/a", auth).status, 200);
    }
}

fn used(gw: &Gateway) -> u64 {
    gw.store().used_bytes().unwrap()
}

fn pruned_before(gw: &Gateway) -> u64 {
    gw.store().pruned().unwrap().map_or(0, |f| f.size())
}

#[test]
fn retention_keeps_the_store_small_prunes_only_what_clickhouse_holds_and_verify_spans_both() {
    let mut ch = ClickHouse::start();
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "{}\n[audit]\ncheckpoint_every = 50\n\n[audit.clickhouse]\nurl = \"{}\"\nflush_interval_ms = 100\n\n[audit.retention]\nmax_size = \"256KiB\"\n",
        route(upstream.port),
        ch.url()
    ));
    let auth = bearer(&gw.create_key("agent-rt", &["agent"]));
    let remote = |ch: &ClickHouse| -> u64 {
        ch.query("SELECT count() FROM audit_events WHERE node = 'test-node' FORMAT TSV")
            .parse()
            .unwrap()
    };

    // 1. Well past the limit: the store is pruned back under it, and only
    // of what ClickHouse holds.
    calls(&gw, &auth, 1_500);
    wait_for(
        "the store back under its limit",
        Duration::from_secs(30),
        || used(&gw) <= MAX && pruned_before(&gw) > 0,
    );
    assert!(gw.metric("lattice_audit_pruned_before") > 0.0);
    let out = gw.lattice(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("that retention pruned from the store were read from ClickHouse"),
        "{text}"
    );
    // The workbench's verification status (the admin API, inside the
    // running gateway) checks the same whole log.
    let admin = bearer(&gw.create_human_key("root", "default", &["admin"]));
    let r = http(
        gw.port,
        "GET",
        "/admin/v1/audit/verify",
        &[("Authorization", &admin)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["pruned_before"], 0, "{report}");
    assert!(report["from_clickhouse"].as_u64().unwrap() > 0, "{report}");

    // 2. ClickHouse down: the store grows past its limit rather than lose
    // an event that is not shipped.
    wait_for("everything shipped", Duration::from_secs(30), || {
        remote(&ch) == gw.store().log_size().unwrap()
    });
    let shipped = remote(&ch);
    ch.kill();
    calls(&gw, &auth, 1_500);
    std::thread::sleep(Duration::from_millis(1_500));
    let store = gw.store();
    let size = store.log_size().unwrap();
    let kept_from = pruned_before(&gw);
    assert!(
        kept_from <= shipped,
        "pruned to {kept_from}, ClickHouse had {shipped}"
    );
    assert_eq!(
        store.range(shipped, usize::MAX >> 1).unwrap().len() as u64,
        size - shipped,
        "every unshipped event is still in the store"
    );
    assert!(used(&gw) > MAX, "held back: {} bytes", used(&gw));
    assert!(
        gw.log()
            .contains("are not in ClickHouse yet: they are kept until shipped"),
        "{}",
        gw.log()
    );

    // 3. ClickHouse back: the backlog ships, pruning resumes, and the whole
    // log verifies across both sinks.
    ch.restart();
    wait_for(
        "the backlog shipped and pruned",
        Duration::from_secs(60),
        || used(&gw) <= MAX && pruned_before(&gw) > shipped,
    );
    assert!(gw.stop().success());
    let out = gw.lattice(&["audit", "verify", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], report["log_size"], "{report}");
    // Every event checked: the pruned ones read back from ClickHouse.
    assert_eq!(report["pruned_before"], 0, "{report}");
    assert_eq!(
        report["from_clickhouse"].as_u64(),
        Some(pruned_before(&gw)),
        "{report}"
    );
}

#[test]
fn clickhouse_over_tls_ships_and_verifies_and_a_wrong_ca_is_refused_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let ch_dir = dir.path().join("clickhouse");
    std::fs::create_dir_all(&ch_dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let server =
        ClickHouseServer::start_tls(ch_dir, &cert.cert.pem(), &cert.signing_key.serialize_pem())
            .unwrap();
    let url = server.url();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();

    let upstream = Upstream::start();
    let section = |ca: &std::path::Path| {
        format!(
            "\n[audit.clickhouse]\nurl = \"{url}\"\nca_file = \"{}\"\nflush_interval_ms = 100\n",
            ca.display()
        )
    };
    let mut gw = Gateway::start(&format!("{}{}", route(upstream.port), section(&ca)));
    let auth = bearer(&gw.create_key("agent-tls", &["agent"]));
    calls(&gw, &auth, 20);
    // Shipping over TLS: ClickHouse holds every event the store does.
    let verify_ch = |gw: &Gateway| {
        let out = gw.lattice(&["audit", "verify", "--sink", "clickhouse"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    wait_for(
        "events in ClickHouse over TLS",
        Duration::from_secs(30),
        || {
            let n = gw.store().count().unwrap();
            let (ok, text, _) = verify_ch(&gw);
            ok && text.starts_with(&format!("OK: {n} events"))
        },
    );
    assert!(gw.stop().success());
    let (ok, text, err) = verify_ch(&gw);
    assert!(ok, "{text}{err}");

    // The wrong CA: refused, naming the URL and why.
    let config = std::fs::read_to_string(gw.config()).unwrap();
    std::fs::write(
        gw.config(),
        config.replace(&ca.display().to_string(), &wrong.display().to_string()),
    )
    .unwrap();
    let (ok, text, err) = verify_ch(&gw);
    assert!(!ok, "{text}");
    assert!(
        err.contains(&format!("reading the log from ClickHouse at {url}"))
            && err.contains("invalid peer certificate"),
        "{err}"
    );
    // A gateway with the wrong CA ships nothing and says so, with the URL.
    gw.spawn();
    calls(&gw, &auth, 3);
    wait_for("the shipping error", Duration::from_secs(20), || {
        let log = gw.log();
        log.contains("cannot ship audit events to ClickHouse") && log.contains(&url)
    });
    assert!(
        gw.log().contains("invalid peer certificate"),
        "{}",
        gw.log()
    );
    drop(server);
}
