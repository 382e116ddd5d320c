//! Audit shipped to a real ClickHouse server (Debian's clickhouse-server,
//! started here on free ports with its own data directory).

use crate::harness::*;
use lattice_audit::testkit::ClickHouseServer;
use std::time::Duration;

/// The test server (lattice_audit::testkit) with asserting helpers.
pub struct ClickHouse {
    server: ClickHouseServer,
    _dir: tempfile::TempDir,
}

impl ClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ClickHouseServer::start(dir.path().to_path_buf()).unwrap();
        Self { server, _dir: dir }
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn restart(&mut self) {
        self.server.kill();
        self.server.spawn().unwrap();
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Runs a query; returns the body (TSV).
    pub fn query(&self, sql: &str) -> String {
        self.server.query(sql).unwrap()
    }
}

fn clickhouse_config(url: &str, backlog: u64) -> String {
    format!("\n[audit.clickhouse]\nurl = \"{url}\"\nflush_interval_ms = 100\nmax_backlog_events = {backlog}\n")
}

#[test]
fn clickhouse_receives_every_event_and_replays_after_an_outage() {
    let mut ch = ClickHouse::start();
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "{}{}",
        route(upstream.port),
        clickhouse_config(&ch.url(), 100_000)
    ));
    let key = gw.create_key("agent-ch", &["agent"]);
    let auth = bearer(&key);
    // The store once it holds every durable event (an outcome is filled in
    // up to 20 ms after it was written to the segments).
    let local_count = |gw: &Gateway| gw.filled_store().count().unwrap();
    let remote = |ch: &ClickHouse| {
        ch.query(
            "SELECT count(), uniqExact(seq) FROM audit_events WHERE node = 'test-node' FORMAT TSV",
        )
    };
    for _ in 0..40 {
        assert_eq!(gw.get("/tools/echo/a", &auth).status, 200);
    }
    wait_for("events in ClickHouse", Duration::from_secs(20), || {
        let n = local_count(&gw);
        remote(&ch) == format!("{n}\t{n}")
    });

    // ClickHouse dies; calls go on, their events wait in the local store.
    ch.kill();
    for _ in 0..40 {
        assert_eq!(gw.get("/tools/echo/b", &auth).status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    ch.restart();
    // The running gateway's shipper reconnects and replays the backlog in
    // order, from the first `seq` ClickHouse lacks: no gateway restart.
    wait_for("the backlog to drain", Duration::from_secs(30), || {
        let n = local_count(&gw);
        remote(&ch) == format!("{n}\t{n}")
    });
    assert!(gw.stop().success());
    let n = local_count(&gw);
    assert_eq!(remote(&ch), format!("{n}\t{n}"), "every event exactly once");
    // Every call has its decision and its outcome (changes the gateway
    // applies to itself, such as the key created above, are single events).
    let phases = ch.query(
        "SELECT phase, count() FROM audit_events WHERE kind NOT LIKE 'admin.%' GROUP BY phase ORDER BY phase FORMAT TSV",
    );
    let admin: u64 = ch
        .query("SELECT count() FROM audit_events WHERE kind LIKE 'admin.%' FORMAT TSV")
        .trim()
        .parse()
        .unwrap();
    let half = (n as u64 - admin) / 2;
    assert_eq!(phases, format!("decision\t{half}\noutcome\t{half}"));
    // The same log: every leaf hash in ClickHouse is the local one.
    let remote_leaves = ch.query("SELECT seq, leaf_hash FROM audit_events ORDER BY seq FORMAT TSV");
    let local_leaves: Vec<String> = gw
        .store()
        .leaves()
        .unwrap()
        .iter()
        .map(|(i, h)| format!("{i}\t{}", hex::encode(h)))
        .collect();
    assert_eq!(remote_leaves, local_leaves.join("\n"));
    assert_ne!(
        ch.query("SELECT count() FROM audit_checkpoints FORMAT TSV"),
        "0"
    );
    assert_eq!(
        ch.query("SELECT max(v) FROM lattice_migrations FORMAT TSV"),
        "2"
    );

    // `verify` works against ClickHouse: intact, then with a retried
    // (duplicate) batch tolerated, then with an edited row named.
    let verify_ch = || {
        let out = gw.lattice(&["audit", "verify", "--sink", "clickhouse"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, text) = verify_ch();
    assert!(ok, "{text}");
    let columns = "node, seq, leaf_hash, event_id, ts_us, phase, request_id, tenant, principal, kind, target, action, decision, status, latency_us, tokens_in, tokens_out";
    ch.query(&format!("INSERT INTO audit_events ({columns}, event) SELECT {columns}, event FROM audit_events WHERE seq < 5"));
    let (ok, text) = verify_ch();
    assert!(ok, "{text}");
    assert!(text.contains("5 identical duplicate rows"), "{text}");
    let victim =
        ch.query("SELECT min(seq) FROM audit_events WHERE principal = 'agent-ch' FORMAT TSV");
    ch.query(&format!(
        "INSERT INTO audit_events ({columns}, event) SELECT {columns}, replaceAll(event, 'agent-ch', 'agent-xx') FROM audit_events WHERE seq = {victim} LIMIT 1"
    ));
    let (ok, text) = verify_ch();
    assert!(!ok);
    assert!(
        text.contains(&format!("FAILED: event #{victim} (")) && text.contains("was edited"),
        "{text}"
    );

    // The newest rows deleted (the edited copy too): the verifier reads
    // rows only up to the last `seq` ClickHouse holds, but every
    // checkpoint, so the one past the cut says what is gone.
    ch.query(&format!(
        "ALTER TABLE audit_events DELETE WHERE seq >= {victim}"
    ));
    let signed: u64 = ch
        .query("SELECT max(size) FROM audit_checkpoints FORMAT TSV")
        .parse()
        .unwrap();
    wait_for("the rows deleted", Duration::from_secs(30), || {
        ch.query(&format!(
            "SELECT count() FROM audit_events WHERE seq >= {victim} FORMAT TSV"
        )) == "0"
    });
    let (ok, text) = verify_ch();
    assert!(!ok);
    assert!(
        text.starts_with(&format!("FAILED: event #{victim} was deleted")),
        "{text}"
    );
    let out = gw.lattice(&["audit", "verify", "--sink", "clickhouse", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rewritten: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["problem"] == "log_rewritten" && p["size"] == signed)
        .collect();
    assert_eq!(rewritten.len(), 1, "{report}");
    assert_eq!(
        rewritten[0]["detail"],
        format!("the log has only {victim} leaves"),
        "{report}"
    );
}

#[test]
fn a_full_clickhouse_backlog_fails_closed() {
    let upstream = Upstream::start();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        "{}{}",
        route(upstream.port),
        clickhouse_config(&nowhere, 10)
    ));
    let key = gw.create_key("agent-bl", &["agent"]);
    let auth = bearer(&key);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(gw.get("/tools/echo/a", &auth).status);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    let r = gw.get("/tools/echo/a", &auth);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "audit_unavailable");
    // Nothing accepted was lost: the local log verifies.
    gw.assert_verifies(&[]);
}

#[test]
fn queries_are_tenant_scoped_and_aggregates_agree_across_sinks() {
    let ch = ClickHouse::start();
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "{}{}",
        route(upstream.port),
        clickhouse_config(&ch.url(), 100_000)
    ));
    let acme = bearer(&gw.create_key_in("agent-a", "acme", &["agent"]));
    let globex = bearer(&gw.create_key_in("agent-g", "globex", &["agent"]));
    for _ in 0..5 {
        assert_eq!(gw.get("/tools/echo/a", &acme).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            http(
                gw.port,
                "DELETE",
                "/tools/echo/a",
                &[("Authorization", &acme)],
                b""
            )
            .unwrap()
            .status,
            403
        );
    }
    for _ in 0..3 {
        assert_eq!(gw.get("/tools/echo/g", &globex).status, 200);
    }
    assert!(gw.stop().success());
    let local = gw.store().count().unwrap();
    wait_for("events in ClickHouse", Duration::from_secs(20), || {
        ch.query("SELECT count() FROM audit_events FORMAT TSV") == local.to_string()
    });
    // A retried batch: duplicates must not count twice.
    let columns = "node, seq, leaf_hash, event_id, ts_us, phase, request_id, tenant, principal, kind, target, action, decision, status, latency_us, tokens_in, tokens_out, event";
    ch.query(&format!(
        "INSERT INTO audit_events ({columns}) SELECT {columns} FROM audit_events WHERE seq < 10"
    ));

    let query = |args: &[&str]| {
        let mut all = vec!["audit", "query"];
        all.extend_from_slice(args);
        gw.lattice(&all)
    };
    for sink in ["embedded", "clickhouse"] {
        let out = query(&["--sink", sink, "--as-tenant", "acme", "--limit", "1000"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(events.len() >= 14, "{sink}: {}", events.len());
        assert!(
            events.iter().all(|e| e["tenant"] == "acme"),
            "{sink} leaked another tenant"
        );
        let out = query(&["--sink", sink, "--as-tenant", "acme", "--tenant", "globex"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read tenant `globex`"));
    }
    let aggregate = |sink: &str, tenant: &str| {
        let out = query(&["--sink", sink, "--aggregate", "--tenant", tenant]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    for tenant in ["acme", "globex"] {
        let embedded = aggregate("embedded", tenant);
        assert_eq!(embedded, aggregate("clickhouse", tenant), "{tenant}");
        if tenant == "acme" {
            let top = &embedded["top_targets"];
            assert!(
                top.as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t[0] == "echo" && t[1] == 7),
                "{top}"
            );
        }
    }
}

/// Sends `per_thread` keep-alive GETs from each of `threads` threads; each
/// thread stops early on the first error (the gateway going away).
fn load(
    port: u16,
    auth: &str,
    threads: usize,
    per_thread: usize,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..threads)
        .map(|_| {
            let auth = auth.to_string();
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                let mut ids = Vec::with_capacity(per_thread);
                for _ in 0..per_thread {
                    match conn.get("/tools/echo/load", &auth) {
                        Ok((200, id)) => ids.push(id),
                        // Shown when an assertion on the count fails.
                        other => {
                            eprintln!("load stopped after {} calls: {other:?}", ids.len());
                            break;
                        }
                    }
                }
                ids
            })
        })
        .collect()
}

fn drained(ch: &ClickHouse, gw: &mut Gateway) {
    let n = gw.store().count().unwrap();
    let remote =
        || ch.query("SELECT uniqExact(seq) FROM audit_events WHERE node = 'test-node' FORMAT TSV");
    if remote() != n.to_string() {
        gw.spawn();
        wait_for("the backlog to drain", Duration::from_secs(60), || {
            remote() == n.to_string()
        });
        assert!(gw.stop().success());
    }
}

#[test]
fn hundred_thousand_calls_through_a_clickhouse_outage_lose_nothing() {
    let mut ch = ClickHouse::start();
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "{}{}",
        route(upstream.port),
        clickhouse_config(&ch.url(), 1_000_000)
    ));
    let auth = bearer(&gw.create_key("agent-load", &["agent"]));
    let workers = load(gw.port, &auth, 8, 12_500);
    // ClickHouse is killed for 10 s while the load runs.
    wait_for("the load to get going", Duration::from_secs(60), || {
        ch.query("SELECT count() FROM audit_events FORMAT TSV")
            .parse::<u64>()
            .unwrap_or(0)
            > 20_000
    });
    ch.kill();
    std::thread::sleep(Duration::from_secs(10));
    ch.restart();
    let answered: usize = workers.into_iter().map(|w| w.join().unwrap().len()).sum();
    assert_eq!(answered, 100_000, "every call was answered 200");
    assert!(gw.stop().success());
    drained(&ch, &mut gw);
    let counts = ch.query(
        "SELECT phase, count() FROM (SELECT * FROM audit_events WHERE principal = 'agent-load' AND target = 'echo' LIMIT 1 BY node, seq) GROUP BY phase ORDER BY phase FORMAT TSV",
    );
    assert_eq!(counts, "decision\t100000\noutcome\t100000");
    // The 200,000 rows are verified as they are read, two cursors in
    // `seq` order: the verifier's memory does not grow with the log (read
    // whole into memory, as before, it peaked at 216 MB here).
    let (out, peak) = gw.lattice_peak_rss(&["audit", "verify", "--sink", "clickhouse"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = ch.query("SELECT uniqExact(seq) FROM audit_events FORMAT TSV");
    assert!(text.starts_with(&format!("OK: {rows} events")), "{text}");
    eprintln!("verify --sink clickhouse: peak RSS {} MB", peak >> 20);
    assert!(
        peak < 48 << 20,
        "verify --sink clickhouse held {} MB",
        peak >> 20
    );
}

#[test]
fn a_graceful_stop_mid_run_loses_no_accepted_event_in_clickhouse() {
    let ch = ClickHouse::start();
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "{}{}",
        route(upstream.port),
        clickhouse_config(&ch.url(), 1_000_000)
    ));
    let auth = bearer(&gw.create_key("agent-stop", &["agent"]));
    let workers = load(gw.port, &auth, 4, 50_000);
    wait_for("the load to get going", Duration::from_secs(60), || {
        gw.store().count().unwrap() > 5_000
    });
    assert!(gw.stop().success());
    let answered: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(answered.len() < 200_000, "the stop must land mid-run");
    drained(&ch, &mut gw);
    // Every answered call has its decision and its outcome in ClickHouse.
    let in_ch = ch.query(
        "SELECT count() FROM (SELECT * FROM audit_events WHERE principal = 'agent-stop' AND target = 'echo' LIMIT 1 BY node, seq) FORMAT TSV",
    );
    let in_ch: usize = in_ch.parse().unwrap();
    assert!(
        in_ch >= 2 * answered.len(),
        "{in_ch} events for {} answered calls",
        answered.len()
    );
    let sample: Vec<&String> = answered
        .iter()
        .step_by((answered.len() / 50).max(1))
        .collect();
    for id in sample {
        let n = ch.query(&format!(
            "SELECT uniqExact(seq) FROM audit_events WHERE request_id = '{id}' FORMAT TSV"
        ));
        assert_eq!(n, "2", "request {id}");
    }
    gw.assert_verifies(&["--sink", "clickhouse"]);
}

#[test]
fn the_admin_api_reads_clickhouse_under_the_same_scope_and_says_when_it_is_down() {
    let mut ch = ClickHouse::start();
    let upstream = Upstream::start();
    // The starter policies: `admin` reads every tenant, `auditor` its own.
    let gw = Gateway::start(&format!(
        "{}{}",
        route(upstream.port),
        clickhouse_config(&ch.url(), 100_000)
    ));
    let admin = bearer(&gw.create_human_key("olga", "default", &["admin"]));
    let auditor = bearer(&gw.create_human_key("ann", "acme", &["auditor"]));
    let acme = bearer(&gw.create_key_in("agent-a", "acme", &["agent"]));
    let globex = bearer(&gw.create_key_in("agent-g", "globex", &["agent"]));
    for _ in 0..4 {
        assert_eq!(gw.get("/tools/echo/a", &acme).status, 200);
        assert_eq!(gw.get("/tools/echo/g", &globex).status, 200);
    }
    wait_for("events in ClickHouse", Duration::from_secs(20), || {
        let local = gw.filled_store().count().unwrap();
        ch.query("SELECT count() FROM audit_events FORMAT TSV") == local.to_string()
    });
    let read = |path: &str, auth: &str| {
        let r = gw.get(path, auth);
        (r.status, r.json())
    };
    // The auditor's scope is forced on ClickHouse too.
    let (status, body) = read("/admin/v1/audit?sink=clickhouse&limit=1000", &auditor);
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert!(events.len() >= 8, "{}", events.len());
    assert!(events.iter().all(|e| e["tenant"] == "acme"), "{body}");
    let (status, _) = read("/admin/v1/audit?sink=clickhouse&tenant=globex", &auditor);
    assert_eq!(status, 403);
    // The operator sees both tenants, and the stats of both sinks agree.
    let (status, body) = read(
        "/admin/v1/audit?sink=clickhouse&target=echo&limit=1000",
        &admin,
    );
    assert_eq!(status, 200, "{body}");
    let tenants: std::collections::BTreeSet<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"].into_iter().collect());
    let stats = |sink: &str| {
        let (status, body) = read(
            &format!("/admin/v1/stats?since=1h&tenant=globex&sink={sink}"),
            &admin,
        );
        assert_eq!(status, 200, "{body}");
        body["overall"].clone()
    };
    assert_eq!(stats("embedded"), stats("clickhouse"));
    // Only globex's agent (its calls and the key-activation probe) is in globex.
    let top = stats("embedded")["top_principals"].clone();
    assert_eq!(top[0][0], "agent-g", "{top}");
    assert!(
        top[0][1].as_u64().unwrap() >= 4 && top.as_array().unwrap().len() == 1,
        "{top}"
    );

    // ClickHouse dies: reading it is a 503 naming the cause; the embedded
    // store still answers, and the refused read is itself audited.
    ch.kill();
    let r = gw.get("/admin/v1/audit?sink=clickhouse", &admin);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "audit_unavailable");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("clickhouse"),
        "{}",
        r.body
    );
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (ev[0].kind.as_str(), ev[1].status),
        ("admin.audit.query", Some(503))
    );
    let (status, body) = read("/admin/v1/audit?limit=5", &admin);
    assert_eq!(status, 200, "{body}");
}
