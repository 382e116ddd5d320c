//! End-to-end tests of the `lattice` binary: a real gateway process, a real
//! upstream process, the real audit store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit_tamper;
mod change_audit;
mod clickhouse;
mod cluster;
mod conformance;
mod crash;
mod discovery;
mod disk_full;
mod edge;
mod egress;
mod harness;
mod jwt;
mod limits;
mod llm;
mod mcp;
mod mcp_eras;
mod mcp_registry;
mod mcp_server_requests;
mod mcp_subscriptions;
mod prove;
mod readonly_root;
mod registry;
mod registry_install;
mod retention;
mod secrets;
mod tls;
mod traces;
mod witness;
mod workbench;
mod worker;

use harness::*;
use std::time::Duration;

#[test]
fn http_route_allow_deny_unauthenticated_oversized_each_audited_exactly() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-7", &["agent"]);
    let auth = bearer(&key);

    // Allowed: forwarded with the injected credential, without the agent's token.
    let r = http(
        gw.port,
        "GET",
        "/tools/echo/items/42?full=1",
        &[
            ("Authorization", &auth),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["path"], "/base/items/42?full=1");
    assert_eq!(seen["headers"]["x-upstream-key"], "upstream-secret");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the agent's token went upstream: {seen}"
    );
    assert!(seen["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (ev[0].phase, ev[0].decision.as_str()),
        (lattice_audit::Phase::Decision, "allow")
    );
    assert_eq!(ev[0].policies, vec!["agents-read-demo-routes"]);
    assert_eq!(ev[0].principal, "agent-7");
    assert_eq!(ev[0].auth_method, "api_key");
    assert_eq!(ev[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ev[1].phase, lattice_audit::Phase::Outcome);
    assert_eq!(ev[1].status, Some(200));
    assert!(ev[1].latency_us.is_some());

    // Denied by an explicit forbid: 403 naming the decision id.
    let r = http(
        gw.port,
        "DELETE",
        "/tools/echo/items/42",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    let decision_id = r.json()["error"]["decision_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(ev[0].event_id, decision_id);
    assert_eq!(ev[0].decision, "deny");
    assert_eq!(ev[0].policies, vec!["no-deletes"]);
    assert_eq!(ev[1].status, Some(403));

    // Default deny: no permit for POST; no policy is named.
    let r = http(
        gw.port,
        "POST",
        "/tools/echo/items",
        &[("Authorization", &auth)],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    let ev = gw.events_of(&r.request_id(), 2);
    assert!(ev[0].policies.is_empty());
    assert_eq!(ev[0].reason, "no policy permits (default deny)");

    // Unauthenticated.
    let r = http(gw.port, "GET", "/tools/echo/x", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"lattice\"")
    );
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (
            ev[0].decision.as_str(),
            ev[0].auth_method.as_str(),
            ev[0].status
        ),
        ("deny", "none", Some(401))
    );
    let r = http(
        gw.port,
        "GET",
        "/tools/echo/x",
        &[("Authorization", "Bearer lat_0000_forged")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        ev[0].reason,
        "authentication failed: unknown or revoked API key"
    );

    // Oversized body (limit 4096 in the test config): refused before anything else.
    let big = vec![b'x'; 5000];
    let r = http(
        gw.port,
        "POST",
        "/tools/echo/upload",
        &[("Authorization", &auth)],
        &big,
    )
    .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!((ev[0].decision.as_str(), ev[0].status), ("deny", Some(413)));
    assert_eq!(
        ev[0].principal, "",
        "the body bound comes before authentication"
    );
    assert_eq!(ev[1].status, Some(413));

    // Unknown route.
    let r = gw.get("/tools/nope/x", &auth);
    assert_eq!(r.status, 404);
    gw.events_of(&r.request_id(), 2);

    // Nothing was dropped: the trail verifies.
    gw.assert_verifies(&[]);
    assert!(gw.metric("lattice_decisions_total{outcome=\"allow\"}") >= 1.0);
}

#[test]
fn revoked_key_is_refused() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-r", &["agent"]);
    let list = String::from_utf8(gw.lattice(&["keys", "list"]).stdout).unwrap();
    let id = list
        .lines()
        .find(|l| l.contains("agent-r"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(gw.lattice(&["keys", "revoke", &id]).status.success());
    let port = gw.port;
    wait_for("revocation", Duration::from_secs(10), || {
        http(
            port,
            "GET",
            "/tools/echo/x",
            &[("Authorization", &bearer(&key))],
            b"",
        )
        .unwrap()
        .status
            == 401
    });
}

#[test]
fn reload_rejects_invalid_policy_and_applies_stricter_one() {
    let upstream = Upstream::start();
    let gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-1", &["agent"]);
    let auth = bearer(&key);
    let get = || gw.get("/tools/echo/a", &auth).status;
    assert_eq!(get(), 200);

    // An invalid policy (unknown attribute) is rejected; the old set keeps serving.
    std::fs::write(
        gw.path("policy.cedar"),
        "permit (principal, action, resource) when { resource.no_such_attr == 1 };",
    )
    .unwrap();
    wait_for("the rejected reload", Duration::from_secs(10), || {
        gw.metric("lattice_config_reloads_total{result=\"rejected\"}") >= 1.0
    });
    assert!(gw.log().contains("reload rejected"), "{}", gw.log());
    assert_eq!(get(), 200);

    // A valid, stricter set denies from the next request on.
    let stricter = harness::STARTER_POLICY.replace("context.method == \"GET\" || ", "");
    std::fs::write(gw.path("policy.cedar"), stricter).unwrap();
    wait_for("the applied reload", Duration::from_secs(10), || {
        gw.metric("lattice_config_reloads_total{result=\"applied\"}") >= 1.0
    });
    for _ in 0..5 {
        assert_eq!(get(), 403);
    }
}

#[test]
fn dead_upstream_gives_502_and_is_audited() {
    let mut upstream = Upstream::start();
    let gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-2", &["agent"]);
    let auth = bearer(&key);
    assert_eq!(gw.get("/tools/echo/a", &auth).status, 200);
    upstream.kill();
    let r = gw.get("/tools/echo/a", &auth);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_failed");
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(ev[0].decision, "allow");
    assert_eq!(ev[1].status, Some(502));
    assert!(
        ev[1].reason.starts_with("upstream_failed"),
        "{}",
        ev[1].reason
    );
}

#[test]
fn policy_test_exits_nonzero_on_a_wrong_expectation() {
    let gw = Gateway::start("");
    let good = gw.path("good.toml");
    std::fs::write(&good, "[[case]]\nname = \"get\"\nprincipal = { type = \"Agent\", id = \"a\", roles = [\"agent\"] }\naction = \"http_request\"\nresource = { type = \"HttpRoute\", id = \"echo\", labels = [\"demo\"] }\ncontext = { method = \"GET\", path = \"/\" }\nexpect = \"allow\"\n").unwrap();
    let out = gw.lattice(&["policy", "test", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = gw.path("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("expect = \"allow\"", "expect = \"deny\""),
    )
    .unwrap();
    let out = gw.lattice(&["policy", "test", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL  get  expected deny, got allow by [agents-read-demo-routes]"),
        "{stdout}"
    );
    // An invalid policy set fails `policy check` with Cedar's message.
    std::fs::write(
        gw.path("broken.cedar"),
        "permit (principal, action == Lattice::Action::\"fly\", resource);",
    )
    .unwrap();
    let out = gw.lattice(&[
        "policy",
        "check",
        "--policies",
        gw.path("broken.cedar").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fly"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn graceful_shutdown_loses_no_accepted_event() {
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-3", &["agent"]);
    let auth = bearer(&key);
    let port = gw.port;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                // Until the gateway goes away (bounded in case it never does).
                for _ in 0..20_000 {
                    match http(
                        port,
                        "GET",
                        "/tools/echo/load",
                        &[("Authorization", &auth)],
                        b"",
                    ) {
                        Ok(r) if r.status == 200 => ids.push(r.request_id()),
                        _ => break,
                    }
                }
                ids
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.stop().success());
    let answered: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(!answered.is_empty());
    assert!(
        answered.len() < 4 * 20_000,
        "the shutdown must land mid-run"
    );
    let store = gw.store();
    for id in &answered {
        let events = store.by_request(id).unwrap();
        assert_eq!(
            events.len(),
            2,
            "request {id} lost events after a graceful shutdown"
        );
    }
    gw.assert_verifies(&[]);
}

#[test]
fn every_example_config_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut found = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let config = entry.unwrap().path().join("lattice.toml");
        if config.exists() {
            found += 1;
            let out = std::process::Command::new(BIN)
                .args(["config", "validate", "-c"])
                .arg(&config)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                config.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let policies = config.parent().unwrap().join("policies");
            let test_files: Vec<_> = std::fs::read_dir(&policies)
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.to_string_lossy().ends_with(".tests.toml"))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                !test_files.is_empty(),
                "{} has no policy tests",
                config.display()
            );
            for tests in test_files {
                let out = std::process::Command::new(BIN)
                    .args(["policy", "test"])
                    .arg(&tests)
                    .arg("-c")
                    .arg(&config)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }
    assert!(found >= 2);
}

#[test]
fn unknown_config_key_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lattice.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n[policy]\nfiles = [\"p.cedar\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lattice.toml:3: unknown field `listen_port`"),
        "{err}"
    );
}

#[test]
fn audit_store_failure_fails_closed_with_503_and_loses_nothing() {
    let upstream = Upstream::start();
    let mut gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-f", &["agent"]);
    let auth = bearer(&key);
    let call = || gw.get("/tools/echo/f", &auth);
    assert_eq!(call().status, 200);

    // Break the store under the running gateway: its next write fails.
    let db = rusqlite::Connection::open(gw.path("data/audit.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch("ALTER TABLE events RENAME TO events_away;")
        .unwrap();
    let mut allowed = Vec::new();
    let mut refused = None;
    wait_for("a fail-closed refusal", Duration::from_secs(15), || {
        let r = call();
        match r.status {
            200 => allowed.push(r.request_id()),
            503 => refused = Some(r),
            other => panic!("unexpected status {other}: {}", r.body),
        }
        refused.is_some()
    });
    let refused = refused.unwrap();
    assert_eq!(refused.json()["error"]["code"], "audit_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(gw.metric("lattice_audit_refused_total") >= 1.0);

    // Repair it: the held batch is written, calls flow again, nothing was lost.
    db.execute_batch("ALTER TABLE events_away RENAME TO events;")
        .unwrap();
    drop(db);
    wait_for("recovery", Duration::from_secs(15), || {
        let r = call();
        if r.status == 200 {
            allowed.push(r.request_id());
        }
        r.status == 200
    });
    assert!(gw.stop().success());
    let store = gw.store();
    for id in &allowed {
        assert_eq!(
            store.by_request(id).unwrap().len(),
            2,
            "an allowed call lost its audit events"
        );
    }
    // The refused call was never forwarded. It left no event if it was
    // refused at the queue, or — the call whose decision was queued as the
    // store broke, refused when it was not durable in time — its decision
    // and an outcome that says it was refused.
    let events: Vec<_> = store
        .by_request(&refused.request_id())
        .unwrap()
        .iter()
        .map(|s| lattice_audit::event::parse_canonical(s.json.as_bytes()).unwrap())
        .collect();
    if !events.is_empty() {
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1].status, Some(503), "{events:?}");
        assert!(events[1].reason.contains("not forwarded"), "{events:?}");
    }
    gw.assert_verifies(&[]);
}

#[test]
fn with_on_full_allow_calls_go_through_counted_logged_and_the_trail_shows_the_gap() {
    let upstream = Upstream::start();
    let config = format!(
        "{}\n[audit]\non_full = \"allow\"\ndurable_timeout_ms = 300\n",
        route(upstream.port)
    );
    let mut gw = Gateway::start(&config);
    let auth = bearer(&gw.create_key("agent-g", &["agent"]));
    let call = || gw.get("/tools/echo/g", &auth);
    assert_eq!(call().status, 200);

    // Break the store: calls keep going through, unaudited, counted.
    let db = rusqlite::Connection::open(gw.path("data/audit.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch("ALTER TABLE events RENAME TO events_away;")
        .unwrap();
    wait_for(
        "calls let through unaudited",
        Duration::from_secs(15),
        || {
            assert_eq!(call().status, 200, "on_full = allow never refuses");
            gw.metric("lattice_audit_bypassed_total") >= 3.0
        },
    );
    assert!(gw.log().contains("UNAUDITED"), "each bypass is logged");

    // Repair: the next call's record is preceded by the gap's.
    db.execute_batch("ALTER TABLE events_away RENAME TO events;")
        .unwrap();
    drop(db);
    wait_for("recovery", Duration::from_secs(15), || {
        call().status == 200 && gw.metric("lattice_audit_refused_total") == 0.0 && {
            let store = gw.store();
            store.count().unwrap() > 0
                && store
                    .tail(50)
                    .unwrap()
                    .iter()
                    .any(|e| e.json.contains("\"kind\":\"audit.gap\""))
        }
    });
    let bypassed = gw.metric("lattice_audit_bypassed_total");
    assert!(gw.stop().success());
    let gaps: Vec<_> = gw
        .store()
        .events()
        .unwrap()
        .into_iter()
        .map(|s| lattice_audit::event::parse_canonical(s.json.as_bytes()).unwrap())
        .filter(|e| e.kind == lattice_audit::GAP)
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let counted: f64 = gaps[0]
        .reason
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(
        counted, bypassed,
        "the gap counts every call let through: {}",
        gaps[0].reason
    );
    gw.assert_verifies(&[]);
}

#[test]
fn up_writes_a_starter_and_its_printed_commands_work() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // `up` puts the demo upstream on the next port: both must be free.
    let port = (0..50)
        .map(|_| free_port())
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["up", "--dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    // The demo agent's key comes first, the workbench admin's after it.
    let mut keys = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if let Some(k) = line.trim().strip_prefix("lat_") {
            keys.push(format!("lat_{k}"));
        }
        if keys.len() == 2 {
            break;
        }
    }
    assert_eq!(keys.len(), 2, "two keys printed:\n{printed}");
    let (key, admin) = (keys[0].clone(), keys[1].clone());
    assert!(
        printed.contains(&format!("Workbench:     http://127.0.0.1:{port}/ui/")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "curl -s -H 'Authorization: Bearer {key}' http://127.0.0.1:{port}/tools/echo/hello"
        )),
        "{printed}"
    );
    wait_for("the quick-start gateway", Duration::from_secs(20), || {
        http(port, "GET", "/healthz", &[], b"")
            .map(|r| r.status == 200)
            .unwrap_or(false)
    });
    let auth = bearer(&key);
    // The workbench is served, and the printed admin key logs in as a human admin.
    let ui = http(port, "GET", "/ui/", &[], b"").unwrap();
    assert_eq!(ui.status, 200);
    assert!(ui.body.contains("boot.js"), "{}", ui.body);
    let me = http(
        port,
        "GET",
        "/admin/v1/whoami",
        &[("Authorization", &bearer(&admin))],
        b"",
    )
    .unwrap();
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        (me.json()["type"].clone(), me.json()["audit_scope"].clone()),
        (serde_json::json!("human"), serde_json::json!("all"))
    );
    let mut ok = None;
    wait_for("the demo upstream", Duration::from_secs(10), || {
        let r = http(
            port,
            "GET",
            "/tools/echo/hello",
            &[("Authorization", &auth)],
            b"",
        )
        .unwrap();
        let done = r.status == 200;
        ok = Some(r);
        done
    });
    assert!(ok.unwrap().body.contains("lattice demo echo"));
    let denied = http(
        port,
        "DELETE",
        "/tools/echo/orders/1",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(denied.status, 403);
    assert!(denied.json()["error"]["decision_id"].is_string());
    // The printed chat command's request, against the demo model.
    let chat_body = r#"{"model":"demo-echo","messages":[{"role":"user","content":"hello"}]}"#;
    assert!(printed.contains(chat_body), "{printed}");
    let chat = http(
        port,
        "POST",
        "/v1/chat/completions",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        chat_body.as_bytes(),
    )
    .unwrap();
    assert_eq!(chat.status, 200, "{}", chat.body);
    assert_eq!(
        chat.json()["choices"][0]["message"]["content"],
        "echo: hello"
    );
    let config = dir.path().join("lattice.toml");
    let out = std::process::Command::new(BIN)
        .args(["policy", "test"])
        .arg(dir.path().join("policies/starter.tests.toml"))
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn responses_stream_through_without_buffering() {
    use std::io::{Read, Write};
    let upstream = Upstream::start();
    let gw = Gateway::start(&route(upstream.port));
    let key = gw.create_key("agent-s", &["agent"]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "GET /tools/echo/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // The first event arrives while the upstream is still holding the last.
    while !String::from_utf8_lossy(&seen).contains("data: first") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the first event: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("data: last"));
    assert!(String::from_utf8_lossy(&seen)
        .to_lowercase()
        .contains("content-type: text/event-stream"));
    assert_eq!(
        http(upstream.port, "GET", "/release", &[], b"")
            .unwrap()
            .status,
        200
    );
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("data: last"));
}

#[test]
fn a_silent_upstream_times_out_with_504_and_is_audited() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let gw = Gateway::start(&format!(
        "[[routes]]\nname = \"echo\"\nupstream = \"http://127.0.0.1:{port}\"\nlabels = [\"demo\"]\ntimeout_ms = 300\n"
    ));
    let auth = bearer(&gw.create_key("agent-t", &["agent"]));
    let r = gw.get("/tools/echo/slow", &auth);
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!(
        (ev[0].decision.as_str(), ev[1].status),
        ("allow", Some(504))
    );
    assert!(
        ev[1].reason.starts_with("upstream_timeout"),
        "{}",
        ev[1].reason
    );
    drop(gw);
    holder.join().unwrap();
}
