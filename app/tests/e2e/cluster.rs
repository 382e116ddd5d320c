//! Replicas that share `[cluster] redis` (a real Debian `redis-server`,
//! started here on a free port): a limit admits its count once across all
//! replicas, a token budget spent on one is spent on the other and stays
//! spent across restarts; while Redis is down, fail-closed limits refuse
//! with 503 (audited, naming the cause), fail-open ones let calls through
//! and unlimited calls keep flowing; when Redis is back, counting resumes
//! without a restart.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::llm::MockVllm;

/// A `redis-server` on a free loopback port, with nothing persisted.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        assert!(
            std::path::Path::new("/usr/bin/redis-server").exists(),
            "run scripts/setup (redis-server)"
        );
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("redis-server", Duration::from_secs(10), || ping(port));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis answers PING on `port`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

const POLICY_EXTRA: &str = "\npermit (principal in Lattice::Role::\"agent\", action == Lattice::Action::\"chat\", resource);\n";

fn config(redis: &RedisServer, upstream: &Upstream, vllm: &MockVllm, limits: &str) -> String {
    format!(
        "{}\n[[backends]]\nname = \"gpu\"\nkind = \"vllm\"\nurl = \"http://127.0.0.1:{}\"\n\n\
         [[models]]\nname = \"chat-model\"\nbackends = [\"gpu\"]\n\n\
         [egress]\nallow = [\"127.0.0.1\"]\n\n[cluster]\nredis = \"{}\"\n{limits}",
        route(upstream.port),
        vllm.port,
        redis.url()
    )
}

fn chat(gw: &Gateway, key: &str) -> Resp {
    http(
        gw.port,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", key), ("Content-Type", "application/json")],
        br#"{"model":"chat-model","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap()
}

#[test]
fn two_replicas_count_one_limit_and_one_budget_and_a_restart_keeps_what_was_spent() {
    let redis = RedisServer::start();
    let upstream = Upstream::start();
    let vllm = MockVllm::start("gpu", &["chat-model"], 0);
    // Windows of a year, aligned to the epoch: the test never straddles one.
    let limits = "\n[[limits]]\nname = \"route-calls\"\nper = \"agent\"\nrequests = 100\nwindow_seconds = 31536000\nkinds = [\"http\"]\n\n\
                  [[limits]]\nname = \"daily-tokens\"\nper = \"agent\"\ntokens = 30\nwindow_seconds = 31536000\nkinds = [\"llm\"]\n";
    let cfg = config(&redis, &upstream, &vllm, limits);
    let policy = format!("{STARTER_POLICY}{POLICY_EXTRA}");
    let mut a = Gateway::start_with(&cfg, &policy);
    let mut b = Gateway::start_with(&cfg, &policy);
    // The same agent holds a key on each replica.
    let (ka, kb) = (
        bearer(&a.create_key("agent-x", &["agent"])),
        bearer(&b.create_key("agent-x", &["agent"])),
    );

    // 100 requests a year, counted once for both replicas.
    let mut served = 0;
    for i in 0..104 {
        let (gw, key) = if i % 2 == 0 { (&a, &ka) } else { (&b, &kb) };
        let r = gw.get(&format!("/tools/echo/{i}"), key);
        match r.status {
            200 => served += 1,
            429 => assert!(r.body.contains("route-calls"), "{}", r.body),
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!(served, 100, "100 in total across both replicas, not 200");
    assert_eq!(a.get("/tools/echo/more", &ka).status, 429);
    assert_eq!(b.get("/tools/echo/more", &kb).status, 429);

    // 4 prompt + 5 completion tokens a call: spent on A, refused on B.
    for _ in 0..4 {
        assert_eq!(chat(&a, &ka).status, 200);
    }
    // Tokens are charged once the answer is relayed: B sees them a moment
    // after A's caller got its answer.
    let mut refused = chat(&b, &kb);
    wait_for(
        "B to see the budget A spent",
        Duration::from_secs(5),
        || {
            refused = chat(&b, &kb);
            refused.status == 429
        },
    );
    assert!(refused.body.contains("daily-tokens"), "{}", refused.body);

    // Both replicas restart: what was spent stays spent.
    a.stop();
    b.stop();
    a.spawn();
    b.spawn();
    let after = chat(&a, &ka);
    assert_eq!(after.status, 429, "{}", after.body);
    assert!(after.body.contains("daily-tokens"), "{}", after.body);
    assert_eq!(b.get("/tools/echo/after", &kb).status, 429);
    // Another agent has its own counts.
    let other = bearer(&b.create_key("agent-y", &["agent"]));
    assert_eq!(b.get("/tools/echo/y", &other).status, 200);
    assert_eq!(chat(&b, &other).status, 200);
    a.assert_verifies(&[]);
    b.assert_verifies(&[]);
}

#[test]
fn while_redis_is_down_fail_closed_limits_refuse_with_503_and_counting_resumes_when_it_returns() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start();
    let vllm = MockVllm::start("gpu", &["chat-model"], 0);
    let limits = "\n[[limits]]\nname = \"closed\"\nper = \"agent\"\nonly = [\"agent-closed\"]\nrequests = 1000\nwindow_seconds = 31536000\n\n\
                  [[limits]]\nname = \"open\"\nper = \"agent\"\nonly = [\"agent-open\"]\nrequests = 1000\nwindow_seconds = 31536000\non_unavailable = \"allow\"\n";
    let cfg = config(&redis, &upstream, &vllm, limits);
    let gw = Gateway::start_with(&cfg, &format!("{STARTER_POLICY}{POLICY_EXTRA}"));
    let closed = bearer(&gw.create_key("agent-closed", &["agent"]));
    let open = bearer(&gw.create_key("agent-open", &["agent"]));
    let free = bearer(&gw.create_key("agent-free", &["agent"]));
    for key in [&closed, &open, &free] {
        assert_eq!(gw.get("/tools/echo/up", key).status, 200);
    }

    redis.kill();
    let r = gw.get("/tools/echo/down", &closed);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json()["error"]["code"],
        "limits_unavailable",
        "{}",
        r.body
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let ev = gw.events_of(&r.request_id(), 2);
    assert_eq!((ev[0].decision.as_str(), ev[0].status), ("deny", Some(503)));
    assert!(
        ev[0].reason.contains("`closed` cannot be counted")
            && ev[0].reason.contains(&format!("127.0.0.1:{}", redis.port)),
        "{}",
        ev[0].reason
    );
    // A chat of the same agent is refused the same way; others flow.
    assert_eq!(chat(&gw, &closed).status, 503);
    assert_eq!(gw.get("/tools/echo/down", &free).status, 200);
    assert_eq!(chat(&gw, &free).status, 200);
    // A fail-open limit lets its calls through, uncounted and counted as such.
    assert_eq!(gw.get("/tools/echo/down", &open).status, 200);
    assert!(gw.metric("lattice_limits_bypassed_total") >= 1.0);
    assert!(gw.metric("lattice_limits_unavailable_total") >= 2.0);

    // Redis returns (empty): the same gateway counts again.
    redis.spawn();
    wait_for("counting to resume", Duration::from_secs(10), || {
        gw.get("/tools/echo/back", &closed).status == 200
    });
    gw.assert_verifies(&[]);
}

#[test]
fn a_session_ended_and_a_key_revoked_on_one_replica_are_refused_by_the_other_within_a_second() {
    use serde_json::json;
    let redis = RedisServer::start();
    let cluster = format!("[cluster]\nredis = \"{}\"\n", redis.url());
    let a = Gateway::start_with(&cluster, STARTER_POLICY);
    let key = bearer(&a.create_key("agent-session", &["agent"]));
    let doomed = bearer(&a.create_key("agent-doomed", &["agent"]));
    // B shares A's MCP session key and a copy of its key store.
    let mut b = Gateway::prepare(
        &format!(
            "[mcp]\nsession_key_file = \"{}\"\n\n{cluster}",
            a.path("data/mcp-session.key").display()
        ),
        STARTER_POLICY,
    );
    std::fs::create_dir_all(b.path("data")).unwrap();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        if a.path("data").join(f).exists() {
            std::fs::copy(a.path("data").join(f), b.path("data").join(f)).unwrap();
        }
    }
    b.spawn();

    let mcp = |gw: &Gateway, headers: &[(&str, &str)], body: &serde_json::Value| {
        let mut all = vec![
            ("Authorization", key.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        all.extend_from_slice(headers);
        http(gw.port, "POST", "/mcp", &all, body.to_string().as_bytes()).unwrap()
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let sid = mcp(&a, &[], &init)
        .header("mcp-session-id")
        .expect("a session id")
        .to_string();
    let with = [
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(mcp(&b, &with, &list).status, 200, "B serves A's session");

    // Ended on A: refused by B within a second.
    let d = http(
        a.port,
        "DELETE",
        "/mcp",
        &[("Authorization", &key), ("Mcp-Session-Id", &sid)],
        b"",
    )
    .unwrap();
    assert_eq!(d.status, 204, "{}", d.body);
    wait_for(
        "B to refuse the ended session",
        Duration::from_secs(1),
        || mcp(&b, &with, &list).status == 404,
    );

    // Revoked on A (the CLI writes A's key store): refused by B within a
    // second, though B's own store still holds it as active.
    assert_eq!(b.get("/admin/v1/whoami", &doomed).status, 200);
    let listed = String::from_utf8(a.lattice(&["keys", "list"]).stdout).unwrap();
    let id = listed
        .lines()
        .find(|l| l.contains("agent-doomed"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(a.lattice(&["keys", "revoke", &id]).status.success());
    // A notices its own store within its poll (100 ms here), then shares.
    wait_for(
        "B to refuse the revoked key",
        Duration::from_secs(1),
        || b.get("/admin/v1/whoami", &doomed).status == 401,
    );
    assert_eq!(
        b.get("/admin/v1/whoami", &key).status,
        200,
        "others still work"
    );

    // A replica that starts later learns both from what Redis kept.
    let mut c = Gateway::prepare(
        &format!(
            "[mcp]\nsession_key_file = \"{}\"\n\n{cluster}",
            a.path("data/mcp-session.key").display()
        ),
        STARTER_POLICY,
    );
    std::fs::create_dir_all(c.path("data")).unwrap();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        if b.path("data").join(f).exists() {
            std::fs::copy(b.path("data").join(f), c.path("data").join(f)).unwrap();
        }
    }
    c.spawn();
    wait_for("C to catch up", Duration::from_secs(5), || {
        c.get("/admin/v1/whoami", &doomed).status == 401 && mcp(&c, &with, &list).status == 404
    });
    assert_eq!(c.get("/admin/v1/whoami", &key).status, 200);
}
